//! Recovery and compaction of the log, in process and through the CLI,
//! on a file and on a VSA of the real vsicd.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{stdout, Backend};
use vsic_kv::layout::BLOCK;
use vsic_kv::{seq_value, Reply, SetCond, Store, StoreOptions, WriteCmd};

fn set(store: &Store, k: &str, v: &[u8]) {
    let r = store.execute(WriteCmd::Set {
        key: k.as_bytes().to_vec(),
        value: v.to_vec(),
        cond: SetCond::Always,
    });
    assert_eq!(r, Reply::Ok, "set {k}");
}

fn flip_byte(path: &std::path::Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x20;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}

/// A torn record ends the log; the intact records written after it in the
/// same (never acknowledged) batch must not come back once new records
/// have been logged over the torn one.
#[test]
fn stale_records_past_a_torn_tail_are_never_replayed() {
    let b = Backend::file("stale", 8 << 20);
    {
        let s = b.open();
        for i in 0..10 {
            set(&s, &format!("a{i}"), format!("old{i}").as_bytes());
        }
    }
    // Record 5 (one block each, region 0 starts at block 2) torn.
    let path = b.image().clone();
    flip_byte(&path, (2 + 5) * BLOCK as u64 + 50);
    {
        let s = b.open();
        assert_eq!(s.read().len(), 5, "the log ends at the torn record");
        set(&s, "x", b"new");
    }
    let s = b.open();
    assert_eq!(s.get(b"x").as_deref(), Some(&b"new"[..]));
    for i in 5..10 {
        assert_eq!(
            s.get(format!("a{i}").as_bytes()),
            None,
            "a{i} resurrected from past the end of the log"
        );
    }
    assert_eq!(s.read().len(), 6);
}

#[test]
fn values_larger_than_a_block_and_every_command_survive_reopen_on_file() {
    every_command_survives_reopen(&Backend::file("big", 32 << 20));
}

#[test]
fn values_larger_than_a_block_and_every_command_survive_reopen_on_vsa() {
    every_command_survives_reopen(&Backend::vsa("kv-big", 32 << 20));
}

fn every_command_survives_reopen(b: &Backend) {
    let big: Vec<u8> = (0..vsic_kv::engine::MAX_VALUE as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    {
        let s = b.open();
        set(&s, "big", &big);
        set(&s, "n", b"41");
        assert_eq!(
            s.execute(WriteCmd::IncrBy(b"n".to_vec(), 1)),
            Reply::Int(42)
        );
        assert_eq!(
            s.execute(WriteCmd::Append(b"n".to_vec(), b"x".to_vec())),
            Reply::Int(3)
        );
        assert_eq!(
            s.execute(WriteCmd::Set {
                key: b"n".to_vec(),
                value: b"no".to_vec(),
                cond: SetCond::Nx
            }),
            Reply::Nil
        );
        assert_eq!(
            s.execute(WriteCmd::MSet(vec![
                (b"m1".to_vec(), b"1".to_vec()),
                (b"m2".to_vec(), b"2".to_vec())
            ])),
            Reply::Ok
        );
        assert_eq!(
            s.execute(WriteCmd::Del(vec![
                b"m1".to_vec(),
                b"m1".to_vec(),
                b"zz".to_vec()
            ])),
            Reply::Int(1)
        );
    }
    let s = b.open();
    assert_eq!(s.get(b"big").as_deref(), Some(&big[..]));
    assert_eq!(s.get(b"n").as_deref(), Some(&b"42x"[..]));
    assert_eq!(s.get(b"m1"), None);
    assert_eq!(s.get(b"m2").as_deref(), Some(&b"2"[..]));
    assert_eq!(s.execute(WriteCmd::FlushAll), Reply::Ok);
    drop(s);
    assert_eq!(b.open().read().len(), 0, "FLUSHALL is logged");
}

/// Updates made while a compaction copies the snapshot are carried over.
fn compaction_keeps_concurrent_updates(b: &Backend) {
    let dev = vsic_storage::open(&b.spec, &vsic_storage::OpenOptions::default()).unwrap();
    let s = Arc::new(
        Store::open(
            dev,
            StoreOptions {
                auto_compact: false,
            },
        )
        .unwrap(),
    );
    for round in 0..3 {
        for i in 0..3000 {
            set(
                &s,
                &format!("k{i}"),
                format!("r{round}-{i}-{}", "p".repeat(i % 300)).as_bytes(),
            );
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) || n < 200 {
                set(
                    &s,
                    &format!("k{}", n % 3000),
                    format!("late-{n}").as_bytes(),
                );
                if n % 7 == 0 {
                    s.execute(WriteCmd::Del(vec![
                        format!("k{}", (n * 13) % 3000).into_bytes()
                    ]));
                }
                n += 1;
            }
            n
        })
    };
    let before = s.stats();
    let report = s.compact().expect("compact");
    done.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        report.after_blocks < before.used_blocks,
        "{report:?} vs {before:?}"
    );
    let want: Vec<(Vec<u8>, Vec<u8>)> = s
        .read()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(s.stats().generation > before.generation);
    drop(s);
    let s = b.open();
    let got: Vec<(Vec<u8>, Vec<u8>)> = s
        .read()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got.len(), want.len(), "{writes} concurrent updates");
    assert!(
        got == want,
        "the reopened store differs from the one before"
    );
}

#[test]
fn compaction_keeps_concurrent_updates_on_file() {
    compaction_keeps_concurrent_updates(&Backend::file("compact", 16 << 20));
}

#[test]
fn compaction_keeps_concurrent_updates_on_vsa() {
    compaction_keeps_concurrent_updates(&Backend::vsa("kv-compact", 16 << 20));
}

/// The process aborts at each step of a compaction; every acknowledged
/// key is there afterwards, and the store still works (and compacts).
fn crash_during_compaction(b: &Backend) {
    let n = 3000;
    let o = b.kv(&["--no-auto-compact", "put-seq", &n.to_string()]);
    assert!(
        stdout(&o).ends_with(&format!("acked={n}\n")),
        "{}",
        stdout(&o)
    );
    // Overwrite a third of them so compaction has garbage to drop.
    let o = b.kv(&["--no-auto-compact", "put-seq", "1000"]);
    assert!(o.status.success());
    let faults = [
        "compact-step:1",
        "compact-step:2",
        "compact-before-switch",
        "compact-after-switch",
    ];
    for fault in faults {
        let o = b.kv_env(&["compact"], &[("VSIC_KV_FAULT", fault)]);
        assert!(!o.status.success(), "{fault}: compact should have aborted");
        let o = b.kv(&["--no-auto-compact", "verify-seq", &n.to_string()]);
        assert_eq!(
            stdout(&o),
            format!("present={n} missing=0 corrupt=0\n"),
            "after a crash at {fault}"
        );
        let o = b.kv(&["--no-auto-compact", "put", "after", fault]);
        assert!(o.status.success());
        let o = b.kv(&["--no-auto-compact", "get", "after"]);
        assert_eq!(stdout(&o), format!("{fault}\n"));
    }
    let o = b.kv(&["compact"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = b.kv(&["verify-seq", &n.to_string()]);
    assert_eq!(stdout(&o), format!("present={n} missing=0 corrupt=0\n"));
    assert_eq!(seq_value(7).len(), 5007, "k7 spans two blocks");
}

#[test]
fn crash_at_every_compaction_step_loses_nothing_on_file() {
    crash_during_compaction(&Backend::file("compact-crash", 64 << 20));
}

#[test]
fn crash_at_every_compaction_step_loses_nothing_on_vsa() {
    crash_during_compaction(&Backend::vsa("kv-compact-crash", 64 << 20));
}
