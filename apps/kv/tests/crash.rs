//! kill -9 of `vsic-kv put-seq` mid-stream and of `vsic-kv serve` under
//! load (our clients, which record what was acknowledged, plus
//! redis-benchmark): every acknowledged update is present and intact afterwards. On a
//! file (kernel) and on a VSA of the real vsicd (vhost-user). The serve
//! tests use a small device, so automatic compactions run (and are killed)
//! under the load too.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check_acks, load, put_seq_killed, stdout, Backend};

fn put_seq_kill(b: &Backend) {
    let n = 200_000;
    let mut total_checked = 0;
    for (round, kill_after) in [300u64, 2000, 5000].into_iter().enumerate() {
        let acked = put_seq_killed(b, n, kill_after);
        assert!(acked >= kill_after);
        let o = b.kv(&["verify-seq", &acked.to_string()]);
        assert_eq!(
            stdout(&o),
            format!("present={acked} missing=0 corrupt=0\n"),
            "round {round}: every acknowledged key of {acked}"
        );
        total_checked += acked;
    }
    eprintln!("checked {total_checked} acknowledged puts");
}

#[test]
fn kill_put_seq_mid_stream_on_file() {
    put_seq_kill(&Backend::file("putseq", 128 << 20));
}

#[test]
fn kill_put_seq_mid_stream_on_vsa() {
    put_seq_kill(&Backend::vsa("kv-putseq", 128 << 20));
}

#[test]
fn kill_put_seq_mid_stream_on_write_through_vsa() {
    let b = Backend::vsa_cache("kv-putseq-wt", 128 << 20, true);
    put_seq_kill(&b);
    let o = b.kv(&["stats"]);
    let out = stdout(&o);
    assert!(out.contains("write-through"), "stats: {out}");
}

fn serve_kill(b: &Backend) {
    let mut compactions = 0u64;
    let mut acked_total = 0;
    for round in 0..4 {
        let mut server = b.serve();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = load(server.addr, 16, 64, 8, stop.clone());
        // A client nobody here wrote adds its load: redis-benchmark SETs
        // 1 KiB values on 1000 keys of its own.
        let mut bench = std::process::Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
            .args([
                "-t",
                "set",
                "-n",
                "100000000",
                "-c",
                "8",
                "-P",
                "4",
                "-d",
                "1024",
                "-r",
                "1000",
                "-q",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-benchmark (package redis-tools, installed by ci/install-deps.sh)");
        // Kill once a good number of updates is acknowledged.
        let want = 3000 + round * 1000;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.lock().unwrap().total_acked < want {
            assert!(
                Instant::now() < deadline,
                "round {round}: load made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let bench_status = bench.try_wait().expect("redis-benchmark status");
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let _ = bench.kill();
        let _ = bench.wait();
        assert!(
            bench_status.is_none(),
            "redis-benchmark ended before the kill: {bench_status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        let acks = acks.lock().unwrap();
        let store = b.open();
        let keys = check_acks(&store, &acks);
        let s = store.stats();
        compactions = s.generation - 1;
        acked_total += acks.total_acked;
        eprintln!(
            "round {round}: {} updates acknowledged on {keys} keys, all present; generation {}",
            acks.total_acked, s.generation
        );
    }
    eprintln!("{acked_total} acknowledged updates checked; {compactions} compactions completed across the kills");
    assert!(
        compactions > 0,
        "the small device should have been compacted under load"
    );
}

#[test]
fn kill_serve_under_load_on_file() {
    serve_kill(&Backend::file("serve", 8 << 20));
}

#[test]
fn kill_serve_under_load_on_write_through_vsa() {
    serve_kill(&Backend::vsa_cache("kv-serve-wt", 8 << 20, true));
}

#[test]
fn kill_serve_under_load_on_vsa() {
    serve_kill(&Backend::vsa("kv-serve", 8 << 20));
}

/// `put-seq --connect` against `serve`, the server SIGKILLed mid-stream:
/// verify-seq over what put-seq saw acknowledged (the guest test's check).
fn serve_kill_put_seq_connect(b: &Backend) {
    let server = b.serve();
    let mut child = std::process::Command::new(common::KV)
        .args(["--connect", &server.addr.to_string(), "put-seq", "10000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn put-seq --connect");
    let mut server = server;
    let out = child.stdout.take().unwrap();
    let mut acked = 0u64;
    use std::io::BufRead;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some(i) = line.strip_prefix("ack k") {
            assert_eq!(i.parse::<u64>().unwrap(), acked);
            acked += 1;
            if acked == 2000 {
                server.kill();
            }
        }
    }
    let _ = child.wait();
    assert!(acked >= 2000);
    let o = b.kv(&["verify-seq", &acked.to_string()]);
    assert_eq!(stdout(&o), format!("present={acked} missing=0 corrupt=0\n"));
}

#[test]
fn kill_serve_under_put_seq_connect_on_file() {
    serve_kill_put_seq_connect(&Backend::file("serve-connect", 64 << 20));
}

#[test]
fn kill_serve_under_put_seq_connect_on_vsa() {
    serve_kill_put_seq_connect(&Backend::vsa("kv-serve-connect", 64 << 20));
}
