//! Clients that vanish: a VSIC client disconnecting with requests in
//! flight (or mid-handshake) must not disturb the daemon; the next client
//! of that VSIC works, and other VSICs are served throughout.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vsic::{CompletionMode, Device, Request, VsaHandle, VsaRange};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };

/// Write-then-verify cycles on `dev` until `stop`; counts them in `done`.
fn keep_busy(dev: &Device, stop: &AtomicBool, done: &AtomicU64) {
    let mut round = 0u64;
    let mut buf = dev.alloc_dma(64 << 10).expect("alloc");
    while !stop.load(Ordering::Acquire) {
        let offset = (round % 32) * (64 << 10);
        buf.as_mut_slice()
            .copy_from_slice(&pattern(0xb0b0 + round, 64 << 10));
        dev.write_at(0, SLOT0, offset, &buf)
            .unwrap_or_else(|e| panic!("background write {round}: {e}"));
        let got = read_back(dev, 0, offset, 64 << 10);
        assert_same(&got, buf.as_slice(), &format!("background cycle {round}"));
        done.fetch_add(1, Ordering::Relaxed);
        round += 1;
    }
}

/// Opens VSIC 0, fills both queues with writes and drops the client
/// without waiting for any completion.
fn vanish_mid_io(d: &Daemon, seed: u64) {
    let dev = d.open_vsic(0, 2, CompletionMode::Interrupt);
    let bufs: Vec<_> = (0..16).map(|i| filled(&dev, seed + i, 128 << 10)).collect();
    let ranges: Vec<_> = (0..16u64)
        .map(|i| [VsaRange::new(i * (128 << 10), 128 << 10)])
        .collect();
    for (i, (buf, range)) in bufs.iter().zip(&ranges).enumerate() {
        let mem = [buf.mem()];
        dev.submit((i % 2) as u16, Request::write(SLOT0, &mem, range), i as u64)
            .expect("submit");
    }
    drop(bufs);
    drop(dev);
}

/// Opens VSIC 0 (retrying while the daemon finishes the previous session)
/// and checks a write and read round trip.
fn fresh_client_works(d: &Daemon, seed: u64) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let dev = loop {
        match Device::open(&d.vsic_spec(0), &vsic_options(2, CompletionMode::Polling)) {
            Ok(dev) => break dev,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reconnect not accepted yet: {e}");
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!(
                "no new client accepted on VSIC 0 within {IO_TIMEOUT:?}: {e}; log:\n{}",
                d.log()
            ),
        }
    };
    assert_eq!(dev.capacity().expect("capacity"), 4 * MIB);
    let data = filled(&dev, seed, 256 << 10);
    dev.write_at(1, SLOT0, 3 * MIB, &data)
        .expect("write after reconnect");
    assert_same(
        &read_back(&dev, 0, 3 * MIB, 256 << 10),
        data.as_slice(),
        "after reconnect",
    );
}

#[test]
fn a_client_vanishing_mid_io_leaves_the_daemon_serving() {
    let mut d = Daemon::start("reconnect");
    let admin = d.admin();
    let a = admin.vsa_create(4 * MIB, 0).expect("create A");
    let b = admin.vsa_create(4 * MIB, 0).expect("create B");
    admin.attach(0, 0, &a.token, false).expect("attach A");
    admin.attach(1, 0, &b.token, false).expect("attach B");
    let other = d.open_vsic(1, 1, CompletionMode::Interrupt);
    let stop = AtomicBool::new(false);
    let cycles = AtomicU64::new(0);

    thread::scope(|s| {
        let busy = s.spawn(|| keep_busy(&other, &stop, &cycles));
        let progress = || cycles.load(Ordering::Relaxed);
        for round in 0..4u64 {
            let before = progress();
            vanish_mid_io(&d, 0x1000 * round);
            fresh_client_works(&d, 0x1000 * round + 0x500);
            // VSIC 1 kept moving while VSIC 0's clients came and went.
            assert!(
                wait_until(IO_TIMEOUT, || progress() > before),
                "VSIC 1 stalled during VSIC 0's reconnect {round}"
            );
        }

        // A client that hangs up in the middle of a vhost-user message, and
        // one that connects and says nothing at all.
        let mut half = UnixStream::connect(d.vsic_socket(0)).expect("connect");
        half.write_all(&[1, 0, 0, 0, 1, 0]).expect("half a header");
        drop(half);
        drop(UnixStream::connect(d.vsic_socket(0)).expect("connect"));
        fresh_client_works(&d, 0x9999);

        stop.store(true, Ordering::Release);
        busy.join().expect("the other VSIC's client");
    });
    assert!(cycles.load(Ordering::Relaxed) > 0);
    assert!(d.is_running(), "the daemon survived every disconnect");
    assert_eq!(admin.identify().expect("the PF still answers").vsics, 4);
    assert_eq!(stats_of(&admin, 1).0.errors, 0, "VSIC 1 saw no errors");
    let log = d.log();
    assert!(!log.contains("panicked"), "daemon log:\n{log}");
}
