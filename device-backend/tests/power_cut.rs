//! The power cut end to end: `vsicd --volatile-cache` with the management
//! commands `power-cut`, `power-on` and `query-power`, driven by a vsic
//! client over vhost-user, bad input included.

mod common;

use common::{
    assert_same, filled, read_back, stats_of, wait_until, writable, Daemon, MgmtClient, RawDriver,
    Setup, IO_TIMEOUT, MIB,
};
use serde_json::json;
use vsic::virtqueue::Buf;
use vsic::{CompletionMode, Error, IoStatus, VsaHandle};
use vsic_abi::virtio::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };

fn cached_daemon(tag: &str, extra: &[&str]) -> Daemon {
    Daemon::start_with(
        tag,
        Setup {
            vsics: 1,
            queues: 1,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..Setup::default()
        },
    )
}

/// A write acknowledged before FLUSH is lost by power-cut, a flushed one
/// is not; while the power is off I/O fails with an I/O error; power-on
/// serves again.
#[test]
fn power_cut_loses_exactly_the_unflushed_writes() {
    let d = cached_daemon("pc-e2e", &["--volatile-cache", "8M"]);
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(0, 1, CompletionMode::Interrupt);
    let mut mgmt = MgmtClient::connect(&d.mgmt_socket());

    let flushed = filled(&dev, 1, MIB as usize);
    dev.write_at(0, SLOT0, 0, &flushed).expect("write");
    dev.flush(0).expect("flush");
    let unflushed = filled(&dev, 2, MIB as usize);
    dev.write_at(0, SLOT0, MIB, &unflushed).expect("write");
    let p = mgmt.ok("query-power", json!({}));
    assert_eq!(
        (&p["on"], &p["unflushed-bytes"], &p["volatile-cache"]),
        (&json!(true), &json!(MIB), &json!(8 * MIB)),
        "{p}"
    );
    assert_same(
        &read_back(&dev, 0, MIB, MIB as usize),
        unflushed.as_slice(),
        "an unflushed write reads back",
    );

    let cut = mgmt.ok("power-cut", json!({}));
    assert_eq!(cut["dropped-bytes"], json!(MIB), "{cut}");
    assert_eq!(cut["kept-sectors"], json!(0), "{cut}");
    assert_eq!(mgmt.ok("query-power", json!({}))["on"], json!(false));
    let mut buf = dev.alloc_dma(4096).expect("alloc");
    assert!(matches!(
        dev.read_at(0, SLOT0, 0, &mut buf),
        Err(Error::Io(IoStatus::IoError))
    ));
    assert!(matches!(dev.flush(0), Err(Error::Io(IoStatus::IoError))));
    // Bad input and a second cut get errors; the connection stays usable.
    assert_eq!(mgmt.err("power-cut", json!({})), "GenericError");
    assert_eq!(mgmt.err("power-on", json!({"seed": 3})), "InvalidArguments");
    mgmt.ok("power-on", json!({}));
    assert_eq!(mgmt.err("power-on", json!({})), "GenericError");

    assert_same(
        &read_back(&dev, 0, 0, MIB as usize),
        flushed.as_slice(),
        "the flushed write survives",
    );
    assert!(
        read_back(&dev, 0, MIB, MIB as usize)
            .iter()
            .all(|&b| b == 0),
        "the unflushed write is gone"
    );
}

/// A FLUSH covers every write taken before it on its queue, completed or
/// not (docs/device-spec.md, Durability): a driver may put its writes and
/// the FLUSH on the ring together. One kick publishes write A, a FLUSH and
/// write B; the timing model holds every completion back 2 s. Once the
/// FLUSH has run, and before any completion is in the used ring, the power
/// is cut: exactly B (the write after the FLUSH) is lost, A survives.
#[test]
fn a_flush_covers_the_writes_before_it_in_one_kick_completed_or_not() {
    let d = cached_daemon(
        "pc-ordered",
        &["--volatile-cache", "8M", "--service-latency", "2s"],
    );
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    let mut drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let mut mgmt = MgmtClient::connect(&d.mgmt_socket());
    let block = |drv: &RawDriver, seed: u64| {
        let mut b = drv.alloc(4096);
        b.as_mut_slice()
            .copy_from_slice(&common::pattern(seed, 4096));
        b
    };
    let readable = |b: &vsic::DmaBuffer| Buf {
        iova: b.iova(),
        len: 4096,
        device_writes: false,
    };
    let (a, b) = (block(&drv, 11), block(&drv, 12));
    // A at sector 0, B at sector 64 (byte 32 KiB).
    let sent = [
        drv.stage(VIRTIO_BLK_T_OUT, 0, &[readable(&a)]),
        drv.stage(VIRTIO_BLK_T_FLUSH, 0, &[]),
        drv.stage(VIRTIO_BLK_T_OUT, 64, &[readable(&b)]),
    ];
    drv.kick();
    assert!(
        wait_until(IO_TIMEOUT, || {
            let s = stats_of(&admin, 0).0;
            (s.writes, s.flushes) == (2, 1)
        }),
        "the device ran the three requests: {:?}",
        stats_of(&admin, 0).0
    );
    assert!(
        drv.vq.pop_used().is_none(),
        "no request has completed yet (the model holds them 2 s)"
    );
    let cut = mgmt.ok("power-cut", json!({}));
    assert_eq!(
        (&cut["dropped-bytes"], &cut["kept-sectors"]),
        (&json!(4096), &json!(0)),
        "only B, after the FLUSH, was unflushed: {cut}"
    );
    mgmt.ok("power-on", json!({}));
    for _ in &sent {
        drv.reap(IO_TIMEOUT).expect("the held completions arrive");
    }
    for s in &sent {
        assert_eq!(s.status.as_slice()[0], 0, "every request succeeded");
    }
    let back = drv.alloc(4096);
    let read = |drv: &mut RawDriver, sector: u64| {
        let r = drv.send(VIRTIO_BLK_T_IN, sector, &[writable(&back, 4096)], true);
        drv.reap(IO_TIMEOUT).expect("read completes");
        assert_eq!(r.status.as_slice()[0], 0, "read status");
        back.as_slice().to_vec()
    };
    assert_same(
        &read(&mut drv, 0),
        a.as_slice(),
        "A, written before the FLUSH and not yet completed, survives the cut",
    );
    assert!(
        read(&mut drv, 64).iter().all(|&x| x == 0),
        "B, written after the FLUSH, is lost"
    );
}

/// With --power-cut-seed a cut keeps some sectors and drops others, each
/// whole.
#[test]
fn a_seeded_power_cut_keeps_whole_sectors() {
    let d = cached_daemon(
        "pc-seed",
        &["--volatile-cache", "8M", "--power-cut-seed", "7"],
    );
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(0, 1, CompletionMode::Interrupt);
    let mut mgmt = MgmtClient::connect(&d.mgmt_socket());
    let data = filled(&dev, 3, MIB as usize);
    dev.write_at(0, SLOT0, 0, &data).expect("write");
    let cut = mgmt.ok("power-cut", json!({}));
    let (kept, dropped) = (
        cut["kept-sectors"].as_u64().unwrap(),
        cut["dropped-sectors"].as_u64().unwrap(),
    );
    assert_eq!(kept + dropped, MIB / 512, "{cut}");
    assert!(kept > 0 && dropped > 0, "{cut}");
    mgmt.ok("power-on", json!({}));
    let back = read_back(&dev, 0, 0, MIB as usize);
    let mut survived = 0;
    for (got, want) in back.chunks(512).zip(data.as_slice().chunks(512)) {
        if got == want {
            survived += 1;
        } else {
            assert!(got.iter().all(|&b| b == 0), "a torn sector");
        }
    }
    assert_eq!(survived, kept);
}

/// The vsicd options are checked: --power-cut-seed needs
/// --volatile-cache, which needs write-back and whole sectors.
#[test]
fn volatile_cache_options_are_checked() {
    let vsicd = env!("CARGO_BIN_EXE_vsicd");
    let dir = common::ScratchDir::new("pc-options");
    let drive = format!("{},size=64M", dir.path("d0").display());
    let sock = dir.path("s");
    for (args, want) in [
        (vec!["--power-cut-seed", "1"], "--volatile-cache"),
        (vec!["--volatile-cache", "1000"], "multiple of 512"),
        (
            vec!["--volatile-cache", "1M", "--cache", "write-through"],
            "write-back",
        ),
    ] {
        let out = std::process::Command::new(vsicd)
            .arg("--socket-dir")
            .arg(&sock)
            .args(["--drive", &drive])
            .args(&args)
            .output()
            .expect("run vsicd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
