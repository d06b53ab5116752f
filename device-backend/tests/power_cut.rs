//! The power cut end to end: `vsicd --volatile-cache` with the management
//! commands `power-cut`, `power-on` and `query-power`, driven by a vsic
//! client over vhost-user, bad input included.

mod common;

use common::{assert_same, filled, read_back, Daemon, MgmtClient, Setup, MIB};
use serde_json::json;
use vsic::{CompletionMode, Error, IoStatus, VsaHandle};

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
