//! A misbehaving driver against the real daemon: requests beyond the
//! advertised limits, descriptors aliasing one huge buffer, throttled
//! requests while the frontend stops a queue or the daemon is told to stop,
//! zero-length requests, QoS for the zeroing requests, and what a hostile
//! VSIC costs another one.
//!
//! The driver is `common::RawDriver`: the `vsic` library's vhost-user
//! transport with a split queue written by hand, so a test can put any
//! descriptor chain on it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vsic::transport::Transport;
use vsic::virtqueue::Buf;
use vsic::{CompletionMode, DmaBuffer, Request, VsaHandle, VsaRange};
use vsic_abi::virtio::{
    SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vsic_abi::window::slot_base;

const SLOT0: VsaHandle = VsaHandle { slot: 0 };
/// How long a refused request may take, however large it claims to be.
const PROMPT: Duration = Duration::from_secs(1);

/// A daemon whose VSIC 0 has `vsa` bytes at slot 0 (if any) and a QoS
/// limit of `bytes_per_sec` (0 = none).
fn daemon_with(tag: &str, vsa: u64, bytes_per_sec: u64) -> Daemon {
    let d = Daemon::start_with(
        tag,
        Setup {
            vsics: 2,
            queues: 1,
            ..Setup::default()
        },
    );
    let admin = d.admin();
    if vsa > 0 {
        let v = admin.vsa_create(vsa, 0).expect("create");
        admin.attach(0, 0, &v.token, false).expect("attach");
    }
    if bytes_per_sec > 0 {
        admin.set_qos(0, bytes_per_sec, 0).expect("set QoS");
    }
    d
}

#[test]
fn a_huge_read_of_an_unattached_slot_under_qos_fails_at_once() {
    let d = daemon_with("huge-read", 0, 1_000_000);
    let mut drv = RawDriver::open(&d.vsic_socket(0), (129 << 20) as usize, 16);
    let data = drv.alloc(128 << 20);
    let sent = drv.send(
        VIRTIO_BLK_T_IN,
        slot_base(1) / SECTOR_SIZE,
        &[writable(&data, 128 << 20)],
        true,
    );
    let done = drv
        .wait(&sent, Duration::from_secs(10))
        .expect("a 128 MiB read of nothing at 1 MB/s completes");
    assert_eq!(done.status, VIRTIO_BLK_S_IOERR);
    println!("huge_read_refused_ms={:.3}", done.took.as_secs_f64() * 1e3);
    assert!(done.took < PROMPT, "refused after {:?}", done.took);
    assert_eq!(done.used.len, 0, "only the status byte was written");
    assert!(
        d.log().contains("maximum transfer"),
        "the log names the reason:\n{}",
        d.log()
    );
}

#[test]
fn descriptors_aliasing_one_buffer_are_refused_with_their_status_at_once() {
    let d = daemon_with("aliased", 4 * MIB, 0);
    let mut drv = RawDriver::open(&d.vsic_socket(0), (65 << 20) as usize, 512);
    let big = drv.alloc(64 << 20);
    let aliases = vec![writable(&big, 64 << 20); 250];
    // The status byte on its own, then as the last byte of the last alias.
    for separate_status in [true, false] {
        let sent = drv.send(VIRTIO_BLK_T_IN, 0, &aliases, separate_status);
        let done = drv.wait(&sent, Duration::from_secs(60)).expect("completes");
        let status = if separate_status {
            done.status
        } else {
            big.as_slice()[(64 << 20) - 1]
        };
        assert_eq!(
            status,
            VIRTIO_BLK_S_IOERR,
            "separate status: {separate_status}: {done:?}; log:\n{}",
            d.log()
        );
        println!(
            "aliased_chain_refused_ms={:.3} separate_status={separate_status}",
            done.took.as_secs_f64() * 1e3
        );
        assert!(done.took < PROMPT, "refused after {:?}", done.took);
        assert_eq!(done.used.len, 0, "only the status byte was written");
    }
    // More data segments than seg_max, each small and within the VSA: the
    // request is well within the maximum transfer but still refused.
    let small = drv.alloc(4096);
    let segments = vec![writable(&small, 4096); 300];
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &segments, true);
    let done = drv.wait(&sent, Duration::from_secs(10)).expect("completes");
    assert_eq!(done.status, VIRTIO_BLK_S_IOERR, "300 segments > seg_max");
    // The same read in seg_max segments is served.
    let segments = vec![writable(&small, 4096); 254];
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &segments, true);
    let done = drv.wait(&sent, Duration::from_secs(10)).expect("completes");
    assert_eq!(done.status, VIRTIO_BLK_S_OK, "254 segments");
    let log = d.log();
    assert!(log.contains("maximum transfer"), "log:\n{log}");
    assert!(log.contains("seg_max"), "log:\n{log}");
    assert!(!log.contains("not a multiple of 512"), "log:\n{log}");
}

/// Starts a throttled read big enough to put VSIC 0 deep in QoS debt,
/// then a second request that must wait for it.
fn throttled_pair(drv: &mut RawDriver) -> (Sent, Sent, Vec<DmaBuffer>) {
    let first_buf = drv.alloc(16 << 20);
    let first = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&first_buf, 16 << 20)], true);
    let second_buf = drv.alloc(4096);
    let second = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&second_buf, 4096)], true);
    (first, second, vec![first_buf, second_buf])
}

#[test]
fn a_queue_stop_returns_at_once_while_a_throttled_request_waits() {
    let d = daemon_with("stop-throttled", 32 * MIB, 1_000_000);
    let mut drv = RawDriver::open(&d.vsic_socket(0), (24 << 20) as usize, 16);
    let (first, _second, _bufs) = throttled_pair(&mut drv);
    // The first request may take its time (it is 16 s worth of budget);
    // whatever it does, a queue stop must not wait for the QoS delay.
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let base = drv.transport.stop_queue(0).expect("GET_VRING_BASE");
    let took = start.elapsed();
    println!("queue_stop_ms={:.3}", took.as_secs_f64() * 1e3);
    assert!(
        took < Duration::from_secs(1),
        "the queue stop took {took:?}"
    );
    let done = drv.wait(&first, Duration::ZERO);
    assert_eq!(
        u32::from(base),
        u32::from(done.is_some()),
        "next_avail counts exactly the requests completed: {done:?}"
    );
}

#[test]
fn sigterm_with_a_throttled_request_in_flight_exits_promptly() {
    let mut d = daemon_with("sigterm-throttled", 32 * MIB, 1_000_000);
    let mut drv = RawDriver::open(&d.vsic_socket(0), (24 << 20) as usize, 16);
    let (_first, _second, _bufs) = throttled_pair(&mut drv);
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let stopped = d.stop(Duration::from_secs(5));
    println!("sigterm_exit_ms={:.1}", start.elapsed().as_secs_f64() * 1e3);
    assert!(
        stopped,
        "vsicd did not exit cleanly within 5 s of SIGTERM ({:?})",
        start.elapsed()
    );
    drop(drv);
}

#[test]
fn zero_length_requests_are_checked_like_any_other() {
    let d = daemon_with("zero-length", 4 * MIB, 0);
    let admin = d.admin();
    let dev = d.open_vsic(0, 1, CompletionMode::Polling);
    let status = |kind: u32, offset: u64| {
        dev.raw_request(0, kind, offset / SECTOR_SIZE, &[], &[])
            .expect("raw request")
            .status
    };
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        assert_eq!(status(kind, 0), VIRTIO_BLK_S_OK, "{kind}: start of the VSA");
        assert_eq!(status(kind, 4 * MIB), VIRTIO_BLK_S_OK, "{kind}: its end");
        assert_eq!(
            status(kind, 4 * MIB + 512),
            VIRTIO_BLK_S_IOERR,
            "{kind}: past its end"
        );
        assert_eq!(
            status(kind, slot_base(1)),
            VIRTIO_BLK_S_IOERR,
            "{kind}: unattached slot"
        );
    }
    admin.vsic_disable(0).expect("disable");
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        assert_eq!(status(kind, 0), VIRTIO_BLK_S_IOERR, "{kind}: disabled VSIC");
    }
}

#[test]
fn discard_and_write_zeroes_are_charged_to_the_byte_budget() {
    let d = daemon_with("zeroing-qos", 8 * MIB, 2 * MIB);
    let dev = d.open_vsic(0, 1, CompletionMode::Polling);
    let range = [VsaRange::new(0, 4 * MIB)];
    for (what, req) in [
        ("write-zeroes", Request::write_zeroes(SLOT0, &range)),
        ("discard", Request::discard(SLOT0, &range)),
    ] {
        // Let any earlier debt run out, then zero 4 MiB at 2 MiB/s.
        thread::sleep(Duration::from_millis(200));
        assert_eq!(run_one(&dev, 0, req), Ok(()), "{what}");
        let start = Instant::now();
        read_back(&dev, 0, 0, 4096);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1500),
            "the read after a 4 MiB {what} at 2 MiB/s waited only {took:?}"
        );
    }
}

/// Megabytes per second VSIC 1 reads for `span`, 1 MiB at a time.
fn throughput(dev: &vsic::Device, span: Duration) -> f64 {
    let mut buf = dev.alloc_dma(1 << 20).expect("alloc");
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < span {
        dev.read_at(0, SLOT0, 0, &mut buf).expect("read");
        bytes += 1 << 20;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// A driver on VSIC 0 sending, until `stop`, nothing but a 64 MiB read of
/// an unattached slot, a chain of 250 aliases of 64 MiB, and a valid 1 MiB
/// read; each waits for the previous one. Returns how many completed.
fn hostile_driver(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut drv = RawDriver::open(&socket, (66 << 20) as usize, 256);
        let big = drv.alloc(64 << 20);
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let requests: [(u64, Vec<Buf>); 3] = [
                (slot_base(1) / SECTOR_SIZE, vec![writable(&big, 64 << 20)]),
                (0, vec![writable(&big, 64 << 20); 250]),
                (0, vec![writable(&big, 1 << 20)]),
            ];
            for (sector, data) in requests {
                let s = drv.send(VIRTIO_BLK_T_IN, sector, &data, true);
                if drv.wait(&s, Duration::from_secs(30)).is_none() {
                    return done;
                }
                done += 1;
            }
        }
        done
    })
}

/// Prints `alone_mbps`, then `hostile_mbps` and `ratio` with VSIC 0's
/// hostile driver (see [`hostile_driver`]) unthrottled and throttled to
/// 1 MB/s: what VSIC 1 reads per second alone and beside it, measured in
/// the same run. Run with `--nocapture` to see the figures; the bound
/// checked is generous (the machine is shared), the figures are the point.
#[test]
fn a_hostile_vsic_leaves_another_its_throughput() {
    let d = daemon_with("hostile-neighbour", 8 * MIB, 0);
    let admin = d.admin();
    let v = admin.vsa_create(8 * MIB, 0).expect("create");
    admin.attach(1, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(1, 1, CompletionMode::Polling);
    let span = Duration::from_secs(2);
    throughput(&dev, Duration::from_millis(200));
    let alone = throughput(&dev, span);
    println!("alone_mbps={alone:.1}");
    for (throttle, qos) in [("unthrottled", 0), ("throttled", 1_000_000)] {
        admin.set_qos(0, qos, 0).expect("set QoS");
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = hostile_driver(d.vsic_socket(0), Arc::clone(&stop));
        thread::sleep(Duration::from_millis(200));
        let beside = throughput(&dev, span);
        stop.store(true, Ordering::Relaxed);
        let requests = hostile.join().expect("hostile driver");
        let ratio = beside / alone;
        println!(
            "hostile={throttle} hostile_mbps={beside:.1} ratio={ratio:.2} hostile_requests={requests}"
        );
        assert!(
            ratio > 0.1,
            "VSIC 1 fell from {alone:.1} to {beside:.1} MB/s beside a {throttle} hostile VSIC"
        );
    }
    assert_eq!(
        stats_of(&admin, 1).0.protection_violations,
        0,
        "VSIC 1 saw none of it"
    );
}

/// A frontend may have missed configuration changes while the device was
/// stopped (QEMU ignores them): every start announces one.
#[test]
fn every_start_announces_the_configuration() {
    let d = daemon_with("start-announces", 4 * MIB, 0);
    for round in 0..2 {
        let dev = d.open_vsic(0, 1, CompletionMode::Polling);
        let fd = dev
            .config_interrupt_fd()
            .expect("the vhost-user transport delivers configuration changes");
        assert!(
            eventfd_fired(fd, Duration::from_secs(2)),
            "open {round}: no configuration change announced at start"
        );
        assert_eq!(dev.capacity().expect("capacity"), 4 * MIB);
    }
}

/// Until the frontend has read the configuration announced at start, a
/// GET_ID waits for it, but never long; once read, GET_ID answers at once.
#[test]
fn get_id_waits_briefly_for_the_announced_configuration() {
    let d = daemon_with("get-id-settles", 4 * MIB, 0);
    let get_id = |drv: &mut RawDriver| {
        let id = drv.alloc(vsic_abi::virtio::SERIAL_LEN);
        let buf = writable(&id, vsic_abi::virtio::SERIAL_LEN);
        let sent = drv.send(vsic_abi::virtio::VIRTIO_BLK_T_GET_ID, 0, &[buf], true);
        let done = drv
            .wait(&sent, Duration::from_secs(5))
            .expect("GET_ID completes");
        assert_eq!(done.status, VIRTIO_BLK_S_OK);
        assert_eq!(&id.as_slice()[..10], b"vsic-vsic0");
        done.took
    };
    // This driver never reads the configuration: its GET_ID is let go.
    let mut ignoring = RawDriver::open(&d.vsic_socket(0), 1 << 20, 16);
    let took = get_id(&mut ignoring);
    assert!(took < Duration::from_secs(1), "GET_ID took {took:?}");
    drop(ignoring);
    // This one reads it after starting the device: no wait.
    let mut reading = RawDriver::open(&d.vsic_socket(0), 1 << 20, 16);
    let mut capacity = [0u8; 8];
    reading
        .transport
        .read_config(0, &mut capacity)
        .expect("GET_CONFIG");
    assert_eq!(u64::from_le_bytes(capacity), 4 * MIB / SECTOR_SIZE);
    let took = get_id(&mut reading);
    assert!(took < Duration::from_millis(300), "GET_ID took {took:?}");
}
