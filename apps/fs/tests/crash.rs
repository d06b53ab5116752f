//! Crash consistency: `vsic-fs workload` (a deterministic random mix of
//! writes, truncations, renames, links, unlinks, mkdir/rmdir and syncs) is
//! killed with SIGKILL at random points, again and again on the same
//! device. After each kill the file system must mount, pass `check`, and
//! be exactly what the workload's model says after some step K' at or
//! after the last `synced K` the writer printed: a prefix of the
//! operations, with everything synced in it. The same with the power of a
//! vsicd with a volatile write cache cut instead (unflushed sectors lost in
//! any order, a random half kept): then data, commit units and flushes the
//! writer submitted together are torn apart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Backend, FS};
use vsic_fs::workload::{dump, Model, Workload};

/// Steps after the last acknowledged sync within which the state must be
/// found: the workload syncs at least every 40 steps.
const WINDOW: u64 = 200;

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// How a run of the writer ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// SIGKILL: everything the device took survives.
    Kill,
    /// vsicd's power cut, then SIGKILL: unflushed writes are lost.
    PowerCut,
}

fn kill_at_random_points(b: &Backend, iterations: u64) {
    crash_at_random_points(b, iterations, Crash::Kill)
}

fn crash_at_random_points(b: &Backend, iterations: u64, crash: Crash) {
    let mut fs = b.mkfs();
    let mut rng = 0x1234_5678_9abc_def1u64 ^ u64::from(std::process::id());
    let mut total_synced = 0;
    let mut mid_run = 0;
    for iter in 0..iterations {
        let before = dump(&fs).expect("dump");
        drop(fs);
        let seed = next_random(&mut rng);
        let mut child = Command::new(FS)
            .args(["--dev", &b.spec, "workload", "--seed", &seed.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vsic-fs workload");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(k) = line.strip_prefix("synced ") {
                    let _ = tx.send(k.parse::<u64>().expect("synced K"));
                }
            }
        });
        // Let it get going, then kill it at a random moment.
        let started = Instant::now();
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer syncs within 20 s");
        std::thread::sleep(Duration::from_micros(next_random(&mut rng) % 150_000));
        if crash == Crash::PowerCut {
            // No request completes after the cut: every sync the writer
            // reported, before or after it, was durable before it.
            b.mgmt("power-cut");
        }
        child.kill().expect("kill");
        child.wait().expect("reap");
        if crash == Crash::PowerCut {
            b.mgmt("power-on");
        }
        reader.join().expect("reader");
        let synced = rx.try_iter().last().unwrap_or(first);
        assert!(started.elapsed() < Duration::from_secs(30));

        fs = b.mount();
        let report = fs
            .check()
            .unwrap_or_else(|e| panic!("iteration {iter} (seed {seed}): check: {e}"));
        let after = dump(&fs).expect("dump");
        let mut model = Model::from_dump(&before);
        let mut w = Workload::new(seed);
        let mut found = None;
        for k in 0..=synced + WINDOW {
            if k >= synced && model.matches(&after) {
                found = Some(k);
                break;
            }
            model.apply(&w.step());
        }
        let k = found.unwrap_or_else(|| {
            panic!("iteration {iter} (seed {seed}): the file system is no prefix state at or after step {synced}")
        });
        if k > synced {
            mid_run += 1;
        }
        total_synced += synced;
        eprintln!("iteration {iter}: synced {synced}, state of step {k}, {report:?}");
    }
    eprintln!("{iterations} kills, {total_synced} synced steps checked, {mid_run} states past the last acknowledged sync");
}

#[test]
fn kill_the_writer_at_random_points_on_file() {
    kill_at_random_points(&Backend::file("fs-crash", 8 << 20), 40);
}

#[test]
fn kill_the_writer_at_random_points_on_vsa() {
    kill_at_random_points(&Backend::vsa("fs-crash", 8 << 20), 12);
}

#[test]
fn cut_the_power_at_random_points_on_vsa() {
    let seed = 0x5eed ^ u64::from(std::process::id());
    eprintln!("vsicd --power-cut-seed {seed}");
    let b = Backend::vsa_power_cut("fs-power", 8 << 20, "2M", seed, "5ms");
    crash_at_random_points(&b, 30, Crash::PowerCut);
}
