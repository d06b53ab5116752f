//! `vsicd` on a real block device (a loop device under ci/test.sh): the
//! pool is formatted on it, a VSA written through a VSIC survives a crash
//! restart (after FLUSH) and a clean stop (SIGTERM, with every VSIC
//! disabled), and reads back the same. Destroys the device's contents; see `common::test_block_device`
//! for when it runs.

mod common;

use std::time::Duration;

use common::*;
use vsic::{CompletionMode, VsaHandle};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };
const SIZE: u64 = 4 * MIB;

#[test]
fn vsicd_keeps_vsas_and_data_on_a_block_device_across_restarts() {
    let Some(dev) = test_block_device() else {
        return;
    };
    wipe_start(&dev);
    let setup = Setup {
        devices: vec![dev.clone()],
        ..Setup::default()
    };
    let mut d = Daemon::start_with("block-device", setup);
    let vsa = {
        let admin = d.admin();
        let id = admin.identify().expect("identify");
        assert_eq!(id.drives, 1, "{id:?}");
        assert!(
            id.free_extents * id.extent_size >= 2 * SIZE,
            "room for the test VSA: {id:?}"
        );
        let v = admin
            .vsa_create(SIZE, 0)
            .expect("create a VSA on the block device");
        admin.attach(0, 0, &v.token, false).expect("attach");
        v.vsa_id
    };
    let first = {
        let io = d.open_vsic(0, 1, CompletionMode::Polling);
        let data = filled(&io, 0xb10c, SIZE as usize);
        io.write_at(0, SLOT0, 0, &data).expect("write");
        io.flush(0).expect("flush");
        data.as_slice().to_vec()
    };
    // A crash: what FLUSH made durable comes back.
    d.restart();
    let second = {
        let admin = d.admin();
        let vsas = admin.list_vsas().expect("list VSAs");
        assert!(
            vsas.iter().any(|v| v.vsa_id == vsa && v.size == SIZE),
            "the VSA survived the restart: {vsas:?}"
        );
        let io = d.open_vsic(0, 1, CompletionMode::Polling);
        assert_same(
            &read_back(&io, 0, 0, SIZE as usize),
            &first,
            "after a crash restart",
        );
        // Rewrite half of it without FLUSH, disable every VSIC (whose FLUSH
        // would now be refused), then stop cleanly: the shutdown syncs the
        // drive itself, refusing nothing.
        let data = filled(&io, 0x5ec0, (SIZE / 2) as usize);
        io.write_at(0, SLOT0, SIZE / 2, &data).expect("write");
        for vsic in 0..d.setup.vsics {
            admin.vsic_disable(vsic).expect("disable");
        }
        let mut want = first.clone();
        want[(SIZE / 2) as usize..].copy_from_slice(data.as_slice());
        want
    };
    assert!(
        d.stop(Duration::from_secs(10)),
        "vsicd exits cleanly on SIGTERM; log:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        !log.contains("refused"),
        "the shutdown was refused by a disabled VSIC; log:\n{log}"
    );
    d.restart();
    d.admin().vsic_enable(0).expect("enable");
    let io = d.open_vsic(0, 1, CompletionMode::Polling);
    assert_same(
        &read_back(&io, 0, 0, SIZE as usize),
        &second,
        "after a clean stop",
    );
}
