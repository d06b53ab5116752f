//! The drive timing model against the real daemon, seen by a driver that
//! builds its chains by hand (`common::RawDriver`): completions scheduled
//! by the model come back out of order with their data and status intact
//! at every queue depth, a FLUSH comes back after every earlier write, and
//! a queue stop or a disconnect with completions still scheduled loses
//! none and writes none into a ring that is gone.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vsic::DmaBuffer;
use vsic_abi::virtio::{
    SECTOR_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 256;
/// Three descriptors per request: room for 85 in flight.
const QUEUE_SIZE: u16 = 256;
/// Requests per round of writes.
const ROUND: u64 = 64;

/// A daemon with one VSIC of one queue, a 4 MiB VSA attached at slot 0,
/// and the drive model `toml`.
fn daemon_with_model(tag: &str, toml: &str) -> Daemon {
    let dir = ScratchDir::new(&format!("{tag}-model"));
    let model = dir.path("model.toml");
    std::fs::write(&model, toml).expect("write the model file");
    let d = Daemon::start_with(
        tag,
        Setup {
            vsics: 1,
            queues: 1,
            extra_args: vec!["--drive-model".into(), model.display().to_string()],
            ..Setup::default()
        },
    );
    // The daemon read the file at start.
    drop(dir);
    let admin = d.admin();
    let v = admin.vsa_create(BLOCKS * BLOCK as u64, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    d
}

/// One request in flight: what it is and where its buffers are.
struct InFlight {
    block: u64,
    kind: u32,
    data: Option<DmaBuffer>,
    status: DmaBuffer,
}

fn sector_of(block: u64) -> u64 {
    block * BLOCK as u64 / SECTOR_SIZE
}

/// Puts a read or write of `block` on the queue (a write carries
/// `pattern(block)`); FLUSH when `kind` says so.
fn submit(drv: &mut RawDriver, kind: u32, block: u64, flights: &mut HashMap<u16, InFlight>) {
    let data = (kind != VIRTIO_BLK_T_FLUSH).then(|| {
        let mut buf = drv.alloc(BLOCK);
        if kind == VIRTIO_BLK_T_OUT {
            buf.as_mut_slice().copy_from_slice(&pattern(block, BLOCK));
        } else {
            buf.as_mut_slice().fill(0xee);
        }
        buf
    });
    let bufs: Vec<_> = data
        .iter()
        .map(|b| vsic::virtqueue::Buf {
            iova: b.iova(),
            len: BLOCK as u32,
            device_writes: kind == VIRTIO_BLK_T_IN,
        })
        .collect();
    let sent = drv.send(kind, sector_of(block), &bufs, true);
    let previous = flights.insert(
        sent.head,
        InFlight {
            block,
            kind,
            data,
            status: sent.status,
        },
    );
    assert!(
        previous.is_none(),
        "head {} reused while in flight",
        sent.head
    );
}

/// Reaps `n` completions, checking each one's status, used length and
/// (for reads) data; returns the requests in completion order.
fn reap_checked(
    drv: &mut RawDriver,
    n: usize,
    flights: &mut HashMap<u16, InFlight>,
) -> Vec<InFlight> {
    let mut order = Vec::with_capacity(n);
    for i in 0..n {
        let used = drv
            .reap(IO_TIMEOUT)
            .unwrap_or_else(|| panic!("{i} of {n} completions within {IO_TIMEOUT:?}"));
        let done = flights
            .remove(&used.head)
            .unwrap_or_else(|| panic!("completion of head {} not in flight", used.head));
        assert_eq!(
            done.status.as_slice()[0],
            VIRTIO_BLK_S_OK,
            "block {} kind {}",
            done.block,
            done.kind
        );
        let want_len = if done.kind == VIRTIO_BLK_T_IN {
            BLOCK + 1
        } else {
            1
        };
        assert_eq!(
            used.len as usize, want_len,
            "used.len of kind {}",
            done.kind
        );
        if done.kind == VIRTIO_BLK_T_IN {
            let data = done.data.as_ref().expect("read buffer");
            assert_same(data.as_slice(), &pattern(done.block, BLOCK), "read data");
        }
        order.push(done);
    }
    order
}

/// Pairs (i, j), i < j, completed in the opposite order of submission.
fn inversions(submitted: &[u64], completed: &[u64]) -> usize {
    let pos: HashMap<u64, usize> = completed.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    let mut n = 0;
    for (i, a) in submitted.iter().enumerate() {
        for b in &submitted[i + 1..] {
            if pos[a] > pos[b] {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn scheduled_completions_come_back_out_of_order_and_intact_at_every_queue_depth() {
    // Latencies spread from 20 µs to 3 ms, on enough units that requests
    // rarely queue: later requests often complete first.
    let d = daemon_with_model(
        "ooo",
        r#"
        [model]
        units = 64
        read = { percentiles = [{ p = 10, latency = "20us" }, { p = 50, latency = "300us" }, { p = 100, latency = "3ms" }] }
        write = { latency = "500us", jitter = "450us" }
        "#,
    );
    let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
    let mut flights = HashMap::new();
    // Write every block (in rounds of ROUND), then read them back.
    for round in 0..BLOCKS / ROUND {
        for i in 0..ROUND {
            submit(&mut drv, VIRTIO_BLK_T_OUT, round * ROUND + i, &mut flights);
        }
        reap_checked(&mut drv, ROUND as usize, &mut flights);
    }
    let mut rng = Rng(7);
    let mut out_of_order = 0;
    for qd in [1usize, 2, 4, 8, 16, 32, 64, 80] {
        for _round in 0..3 {
            let blocks: Vec<u64> =
                (0..qd)
                    .map(|_| rng.next_u64() % BLOCKS)
                    .fold(Vec::new(), |mut v, b| {
                        if !v.contains(&b) {
                            v.push(b);
                        }
                        v
                    });
            for &b in &blocks {
                submit(&mut drv, VIRTIO_BLK_T_IN, b, &mut flights);
            }
            let done = reap_checked(&mut drv, blocks.len(), &mut flights);
            let completed: Vec<u64> = done.iter().map(|f| f.block).collect();
            let n = inversions(&blocks, &completed);
            if qd == 1 {
                assert_eq!(n, 0);
            }
            out_of_order += n;
        }
        println!("qd={qd} out_of_order_pairs_so_far={out_of_order}");
    }
    assert!(flights.is_empty());
    assert!(
        out_of_order > 0,
        "with latencies from 20 µs to 3 ms some later request must complete first"
    );
}

#[test]
fn no_completion_comes_back_before_its_model_time_and_fixed_latency_keeps_fifo_at_every_queue_depth(
) {
    // Fixed 300 µs reads on 4 units: of a batch put on the ring at once,
    // the k-th (from 0) is due no earlier than (k / 4 + 1) × 300 µs after
    // the batch was put there (the worker takes it later still), and with
    // one latency for all the batch completes in the order it was taken.
    // The driver looks at the used ring without sleeping, so a completion
    // written even a few microseconds before its time is seen as early.
    const LATENCY: Duration = Duration::from_micros(300);
    const UNITS: usize = 4;
    let d = daemon_with_model(
        "never-early",
        r#"
        [model]
        units = 4
        read = { latency = "300us" }
        "#,
    );
    let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
    let mut flights = HashMap::new();
    let mut worst_margin = Duration::MAX;
    for qd in [1usize, 2, 3, 4, 5, 8, 16, 32, 64, 80] {
        for round in 0..3u64 {
            let start = Instant::now();
            for k in 0..qd as u64 {
                submit(
                    &mut drv,
                    VIRTIO_BLK_T_IN,
                    (round * 7 + k) % BLOCKS,
                    &mut flights,
                );
            }
            let mut order = Vec::with_capacity(qd);
            for k in 0..qd {
                let used = drv
                    .reap_spinning(IO_TIMEOUT)
                    .unwrap_or_else(|| panic!("qd {qd}: {k} of {qd} within {IO_TIMEOUT:?}"));
                let took = start.elapsed();
                let f = flights.remove(&used.head).expect("in flight");
                assert_eq!(f.status.as_slice()[0], VIRTIO_BLK_S_OK, "qd {qd}");
                assert_eq!(used.len as usize, BLOCK + 1, "qd {qd}");
                let earliest = LATENCY * (k / UNITS + 1) as u32;
                assert!(
                    took >= earliest,
                    "qd {qd} round {round}: completion {k} came back {took:?} after the batch, \
                     before its model time {earliest:?}"
                );
                worst_margin = worst_margin.min(took - earliest);
                order.push((f.block, used.head));
            }
            let blocks: Vec<u64> = order.iter().map(|(b, _)| *b).collect();
            let want: Vec<u64> = (0..qd as u64).map(|k| (round * 7 + k) % BLOCKS).collect();
            assert_eq!(blocks, want, "qd {qd} round {round}: completion order");
        }
    }
    assert!(flights.is_empty());
    println!(
        "closest_to_model_time_us={:.1}",
        worst_margin.as_secs_f64() * 1e6
    );
}

#[test]
fn a_flush_completes_after_every_earlier_write() {
    // Writes take 1 to 9 ms on 8 units; FLUSH itself 10 µs: without the
    // barrier it would overtake every write before it.
    let d = daemon_with_model(
        "flush-order",
        r#"
        [model]
        units = 8
        write = { latency = "5ms", jitter = "4ms" }
        flush = { latency = "10us" }
        "#,
    );
    let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
    let mut flights = HashMap::new();
    let mut overtaken = 0;
    for round in 0..10u64 {
        let before: Vec<u64> = (0..8).map(|i| round * 16 + i).collect();
        for &b in &before {
            submit(&mut drv, VIRTIO_BLK_T_OUT, b, &mut flights);
        }
        submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &mut flights);
        for i in 8..12 {
            submit(&mut drv, VIRTIO_BLK_T_OUT, round * 16 + i, &mut flights);
        }
        let done = reap_checked(&mut drv, 13, &mut flights);
        let flush_at = done
            .iter()
            .position(|f| f.kind == VIRTIO_BLK_T_FLUSH)
            .expect("the flush completed");
        for (i, f) in done.iter().enumerate() {
            if f.kind == VIRTIO_BLK_T_OUT && before.contains(&f.block) {
                assert!(
                    i < flush_at,
                    "round {round}: write of block {} completed after the FLUSH issued after it: {:?}",
                    f.block,
                    done.iter().map(|f| (f.kind, f.block)).collect::<Vec<_>>()
                );
            }
        }
        // Later writes may complete first (the queue is not serialised).
        overtaken += done[..flush_at]
            .iter()
            .filter(|f| f.kind == VIRTIO_BLK_T_OUT && !before.contains(&f.block))
            .count();
    }
    println!("writes_after_the_flush_that_completed_before_it={overtaken}");
    assert!(overtaken > 0, "the FLUSH held back writes issued after it");
}

#[test]
fn a_queue_stop_completes_every_scheduled_request_before_it_returns() {
    let d = daemon_with_model(
        "stop",
        r#"
        [model]
        units = 16
        read = { latency = "5s" }
        "#,
    );
    let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
    let mut flights = HashMap::new();
    for b in 0..8 {
        submit(&mut drv, VIRTIO_BLK_T_IN, b, &mut flights);
    }
    // Let the worker take them: their completions are 5 s away.
    thread::sleep(Duration::from_millis(300));
    assert!(drv.vq.pop_used().is_none(), "completed before their time");
    let start = Instant::now();
    let base = drv.transport.stop_queue(0).expect("GET_VRING_BASE");
    let took = start.elapsed();
    println!("queue_stop_ms={:.3}", took.as_secs_f64() * 1e3);
    assert!(took < Duration::from_secs(2), "the stop waited {took:?}");
    assert_eq!(base, 8, "the worker took all eight");
    // Every request the stop counts as taken is in the used ring now.
    let mut seen = 0;
    while let Some(used) = drv.vq.pop_used() {
        let f = flights.remove(&used.head).expect("in flight");
        assert_eq!(f.status.as_slice()[0], VIRTIO_BLK_S_OK);
        assert_eq!(used.len as usize, BLOCK + 1);
        seen += 1;
    }
    assert_eq!(seen, 8, "completions lost by the stop");
}

#[test]
fn a_disconnect_drops_scheduled_completions_and_the_next_driver_is_served() {
    let d = daemon_with_model(
        "disconnect",
        r#"
        [model]
        units = 4
        read = { latency = "1s" }
        write = { latency = "50us" }
        "#,
    );
    {
        let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
        let mut flights = HashMap::new();
        for b in 0..8 {
            submit(&mut drv, VIRTIO_BLK_T_IN, b, &mut flights);
        }
        thread::sleep(Duration::from_millis(200));
        // Gone with eight completions scheduled.
    }
    let mut drv = RawDriver::open(&d.vsic_socket(0), 16 << 20, QUEUE_SIZE);
    let mut flights = HashMap::new();
    submit(&mut drv, VIRTIO_BLK_T_OUT, 3, &mut flights);
    reap_checked(&mut drv, 1, &mut flights);
    // Past the old completions' due time: none shows up in this ring.
    thread::sleep(Duration::from_millis(1500));
    submit(&mut drv, VIRTIO_BLK_T_IN, 3, &mut flights);
    reap_checked(&mut drv, 1, &mut flights);
    assert!(drv.vq.pop_used().is_none(), "a stray completion");
    let log = d.log();
    assert!(!log.contains("panicked"), "log:\n{log}");
}

/// Runs vsicd with `args` (and a scratch socket dir and drive) until it
/// exits, which it must do at once; its status and stderr.
fn vsicd_refuses(dir: &ScratchDir, args: &[String]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsicd"))
        .arg("--socket-dir")
        .arg(dir.path("sockets"))
        .arg("--drive")
        .arg(format!("{},size=64M", dir.path("drive.img").display()))
        .args(args)
        .output()
        .expect("run vsicd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_drive_model_stops_vsicd_with_the_place_and_the_reason() {
    let dir = ScratchDir::new("bad-model");
    let model = dir.path("model.toml");
    std::fs::write(
        &model,
        "[model]\nunits = 4\nread = { latency = \"5us\", jitter = \"9us\" }\n",
    )
    .unwrap();
    let file = model.display().to_string();
    let (code, err) = vsicd_refuses(&dir, &["--drive-model".into(), file.clone()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("model.read") && err.contains("jitter"),
        "{err}"
    );
    let (code, err) = vsicd_refuses(
        &dir,
        &[
            "--drive-model".into(),
            dir.path("none.toml").display().to_string(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read"), "{err}");
    // The file and the command-line model do not mix.
    let (code, err) = vsicd_refuses(
        &dir,
        &["--drive-model".into(), file, "--service-latency=5us".into()],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, err) = vsicd_refuses(&dir, &["--service-units=0".into()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("service-units"), "{err}");
}

#[test]
fn back_to_back_requests_on_a_timed_queue_never_wait_for_the_lost_kick_watch() {
    // A driver that submits its next request the moment the last one
    // completes (polling), one at a time: the worker completes each at its
    // due time and must still take the next one at once. A request left in
    // the ring would wait for the 250 ms lost-kick watch.
    let d = daemon_with_model(
        "back-to-back",
        r#"
        [model]
        units = 4
        read = { latency = "20us" }
        "#,
    );
    let dev = d.open_vsic(0, 1, vsic::CompletionMode::Interrupt);
    let mut buf = dev.alloc_dma(BLOCK).expect("DMA buffer");
    let start = Instant::now();
    let n = 1000;
    for i in 0..n {
        dev.read_at(
            0,
            vsic::VsaHandle::new(0),
            (i % BLOCKS) * BLOCK as u64,
            &mut buf,
        )
        .unwrap_or_else(|e| panic!("read {i}: {e}"));
    }
    let took = start.elapsed();
    println!(
        "back_to_back_reads={n} took_ms={:.1}",
        took.as_secs_f64() * 1e3
    );
    let log = d.log();
    assert!(
        !log.contains("without a notification") && !log.contains("runs ahead"),
        "requests were left in the ring:\n{log}"
    );
    assert!(
        took < Duration::from_secs(10),
        "{n} reads of 20 us took {took:?}"
    );
}
