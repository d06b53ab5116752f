//! Controller tests of the volatile write-back cache and the power cut:
//! what reads see, what FLUSH and early destaging make durable, what a cut
//! loses (all or a seeded subset), requests while the power is off, the
//! cache and the zeroing of discarded and freed extents, concurrency.
//! A child of `tests`, whose helpers it uses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::controller::{ConfigError, CutReport, OpenError, PowerError, VolatileCacheConfig};

const S: usize = 512;

fn cached(pool: &Pool, size: u64, cut_seed: Option<u64>) -> Arc<Controller> {
    let mut cfg = pool.config();
    cfg.volatile_cache = Some(VolatileCacheConfig { size, cut_seed });
    Controller::open(cfg).expect("open pool with a volatile cache")
}

/// A VSA of `size` bytes on VSIC 0, slot 0.
fn setup(c: &Controller, size: u64, stripe: u64) -> CapToken {
    let (_, t) = create(c, size, stripe);
    ok(attach(c, 0, 0, &t, false));
    t
}

fn powered_off(r: Result<impl std::fmt::Debug, IoError>) {
    is_err(r, |e| matches!(e, IoError::PoweredOff));
}

/// Unflushed writes are read back (whole and partial overlaps), lost by a
/// cut; flushed ones survive it and a restart without the cache.
#[test]
fn reads_see_unflushed_writes_and_a_cut_loses_exactly_them() {
    let pool = Pool::new("wc-cut", 2);
    let c = cached(&pool, 1 << 20, None);
    setup(&c, 4 * ES, 2);
    let flushed = pattern(2 * ES as usize, 1);
    write(&c, 0, 0, &flushed).unwrap();
    c.flush(0, 0).unwrap();
    assert_eq!(c.unflushed_bytes(), 0);
    // Unflushed: one run over both drives, then overlapping rewrites.
    let a = pattern(16 * S, 2);
    let b = pattern(3 * S, 3);
    let far = pattern(4 * S, 4);
    write(&c, 0, ES - 8 * S as u64, &a).unwrap();
    write(&c, 0, ES - 2 * S as u64, &b).unwrap();
    write(&c, 0, 3 * ES, &far).unwrap();
    let mut expect = flushed.clone();
    expect.resize(4 * ES as usize, 0);
    let at = |o: u64| o as usize;
    expect[at(ES) - 8 * S..at(ES) + 8 * S].copy_from_slice(&a);
    expect[at(ES) - 2 * S..at(ES) + S].copy_from_slice(&b);
    expect[at(3 * ES)..at(3 * ES) + 4 * S].copy_from_slice(&far);
    assert_eq!(c.unflushed_bytes(), (16 + 4) * S as u64);
    assert!(read(&c, 0, 0, 4 * ES as usize).unwrap() == expect);
    // A read partly over cached sectors, starting inside the run.
    let part = read(&c, 0, ES - 3 * S as u64, 6 * S).unwrap();
    assert!(part[..] == expect[at(ES) - 3 * S..at(ES) + 3 * S]);

    assert_eq!(
        c.power_cut().unwrap(),
        CutReport {
            dropped: 20,
            kept: 0
        }
    );
    assert_eq!(c.unflushed_bytes(), 0);
    c.power_on().unwrap();
    let back = read(&c, 0, 0, 4 * ES as usize).unwrap();
    let mut survivors = flushed.clone();
    survivors.resize(4 * ES as usize, 0);
    assert!(back == survivors, "the cut kept exactly the flushed data");

    // Flushed data is on the drives: a restart without the cache sees it.
    write(&c, 0, 3 * ES, &far).unwrap();
    c.flush(0, 0).unwrap();
    drop(c);
    let c = pool.open();
    survivors[at(3 * ES)..at(3 * ES) + 4 * S].copy_from_slice(&far);
    assert!(read(&c, 0, 0, 4 * ES as usize).unwrap() == survivors);
}

/// While the power is off every data-plane request fails and counts as an
/// error, not a protection violation; admin commands still work and their
/// metadata survives; power-on serves again.
#[test]
fn requests_fail_while_the_power_is_off() {
    let pool = Pool::new("wc-off", 1);
    let c = cached(&pool, 1 << 20, None);
    setup(&c, 4 * ES, 0);
    write(&c, 0, 0, &pattern(S, 1)).unwrap();
    c.power_cut().unwrap();
    assert!(c.powered_off());
    assert_eq!(c.power_cut(), Err(PowerError::AlreadyOff));
    powered_off(read(&c, 0, 0, S));
    powered_off(write(&c, 0, 0, &pattern(S, 2)));
    powered_off(c.flush(0, 0));
    powered_off(c.discard(0, 0, 0, 4096, false));
    let s = vsic_stats(&c, 0);
    assert_eq!((s.errors, s.protection_violations), (4, 0));
    // The admin plane answers, and what it commits is durable.
    let (id, _) = create(&c, ES, 0);
    c.power_on().unwrap();
    assert_eq!(c.power_on(), Err(PowerError::AlreadyOn));
    assert!(read(&c, 0, 0, S).unwrap().iter().all(|&b| b == 0));
    write(&c, 0, 0, &pattern(S, 3)).unwrap();
    drop(c);
    let c = pool.open();
    assert!(vsa_list(&c).iter().any(|v| v.vsa_id == id));
}

/// Without a volatile cache a cut loses nothing (completed writes are on
/// the drives) but still stops the data plane until power-on.
#[test]
fn without_the_cache_a_cut_only_stops_serving() {
    let pool = Pool::new("wc-none", 1);
    let c = pool.open();
    setup(&c, 4 * ES, 0);
    let data = pattern(8 * S, 5);
    write(&c, 0, 0, &data).unwrap();
    assert_eq!(c.power_cut().unwrap(), CutReport::default());
    powered_off(read(&c, 0, 0, S));
    c.power_on().unwrap();
    assert!(read(&c, 0, 0, 8 * S).unwrap() == data);
}

/// A cache smaller than the data written destages early: what it wrote
/// out survives a cut, the rest (at most the cache's size) is lost.
#[test]
fn a_full_cache_destages_early() {
    const CACHE: u64 = 64 << 10;
    let pool = Pool::new("wc-full", 1);
    let c = cached(&pool, CACHE, None);
    setup(&c, 8 * ES, 0);
    let data = pattern(4 * ES as usize, 6);
    // One request larger than the cache, then small ones.
    write(&c, 0, 0, &data[..2 * ES as usize]).unwrap();
    for i in 0..(2 * ES as usize / (8 * S)) {
        let o = 2 * ES as usize + i * 8 * S;
        write(&c, 0, o as u64, &data[o..o + 8 * S]).unwrap();
        assert!(c.unflushed_bytes() <= CACHE);
    }
    assert!(read(&c, 0, 0, data.len()).unwrap() == data);
    let cut = c.power_cut().unwrap();
    assert!(
        cut.dropped > 0 && cut.dropped * S as u64 <= CACHE,
        "{cut:?}"
    );
    c.power_on().unwrap();
    let back = read(&c, 0, 0, data.len()).unwrap();
    let lost = cut.dropped as usize * S;
    assert!(back[..data.len() - lost] == data[..data.len() - lost]);
    assert!(back[data.len() - lost..].iter().all(|&b| b == 0));
}

/// With a seed a cut keeps a random subset of the dirty sectors, each
/// whole or not at all, and the same seed keeps the same subset.
#[test]
fn a_seeded_cut_keeps_a_random_subset_of_sectors() {
    let mut kept_sets = Vec::new();
    for round in 0..2 {
        let pool = Pool::new(&format!("wc-seed{round}"), 1);
        let c = cached(&pool, 4 << 20, Some(42));
        setup(&c, 16 * ES, 0);
        let data = pattern(1024 * S, 7);
        write(&c, 0, 0, &data).unwrap();
        let cut = c.power_cut().unwrap();
        assert_eq!(cut.dropped + cut.kept, 1024);
        assert!((400..=624).contains(&cut.kept), "{cut:?}");
        c.power_on().unwrap();
        let back = read(&c, 0, 0, data.len()).unwrap();
        let mut kept = Vec::new();
        for (i, (got, want)) in back.chunks(S).zip(data.chunks(S)).enumerate() {
            if got == want {
                kept.push(i);
            } else {
                assert!(got.iter().all(|&b| b == 0), "sector {i} is torn");
            }
        }
        assert_eq!(kept.len() as u64, cut.kept);
        kept_sets.push(kept);
    }
    assert_eq!(kept_sets[0], kept_sets[1]);
}

/// DISCARD and WRITE_ZEROES drop the cached sectors they cover (whole or
/// in part): a later FLUSH must not write the old data back.
#[test]
fn discard_drops_cached_sectors() {
    let pool = Pool::new("wc-discard", 1);
    let c = cached(&pool, 1 << 20, None);
    setup(&c, 4 * ES, 0);
    let data = pattern(64 * S, 8);
    write(&c, 0, 0, &data).unwrap();
    c.discard(0, 0, 8 * S as u64, 8 * S as u64, false).unwrap();
    c.discard(0, 0, 32 * S as u64, 4 * S as u64, true).unwrap();
    let mut expect = data.clone();
    expect[8 * S..16 * S].fill(0);
    expect[32 * S..36 * S].fill(0);
    assert!(read(&c, 0, 0, 64 * S).unwrap() == expect);
    c.flush(0, 0).unwrap();
    c.power_cut().unwrap();
    c.power_on().unwrap();
    assert!(read(&c, 0, 0, 64 * S).unwrap() == expect);
}

/// Extents freed while their data is still cached are zeroed on the drive
/// and dropped from the cache: a later FLUSH must not write the deleted
/// VSA's data into extents another VSA now owns.
#[test]
fn freed_extents_do_not_get_cached_data_back() {
    let pool = Pool::new("wc-free", 1);
    let c = cached(&pool, 4 << 20, None);
    let t = setup(&c, 4 * ES, 0);
    write(&c, 0, 0, &pattern(4 * ES as usize, 9)).unwrap();
    ok(with_token(&c, Opcode::VsaDelete, &t, 0));
    setup(&c, 4 * ES, 0);
    c.flush(0, 0).unwrap();
    assert!(
        read(&c, 0, 0, 4 * ES as usize)
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "a new VSA on freed extents reads zeroes after a flush"
    );
}

/// Writers, readers, flushers and a small cache (so destages run all the
/// time) on shared drives: every reader sees its own last write, and after
/// the final FLUSH a cut loses nothing.
#[test]
fn concurrent_writes_reads_and_flushes_stay_coherent() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 1000;
    let pool = Pool::new("wc-race", 2);
    let c = cached(&pool, 16 << 10, None);
    for v in 0..THREADS as u32 {
        let (_, t) = create(&c, 2 * ES, 2);
        ok(attach(&c, v, 0, &t, false));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.flush(0, 1).unwrap();
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|v| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let block = pattern(8 * S, (v * ROUNDS + r) as u8);
                    // Straddles the two drives' extents.
                    let at = ES - 4 * S as u64 + (r % 4) * S as u64;
                    write(&c, v as u32, at, &block).unwrap();
                    let back = read(&c, v as u32, at, 8 * S).unwrap();
                    assert!(back == block, "VSIC {v} round {r}: stale read");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    flusher.join().unwrap();
    c.flush(0, 0).unwrap();
    assert_eq!(c.power_cut().unwrap(), CutReport::default());
    c.power_on().unwrap();
    for v in 0..THREADS {
        let r = ROUNDS - 1;
        let at = ES - 4 * S as u64 + (r % 4) * S as u64;
        let block = pattern(8 * S, (v * ROUNDS + r) as u8);
        assert!(read(&c, v as u32, at, 8 * S).unwrap() == block);
    }
}

#[test]
fn bad_volatile_cache_configs_are_refused() {
    let pool = Pool::new("wc-config", 1);
    let mut cfg = pool.config();
    cfg.volatile_cache = Some(VolatileCacheConfig {
        size: 1000,
        cut_seed: None,
    });
    assert!(matches!(
        Controller::open(cfg.clone()),
        Err(OpenError::Config(ConfigError::VolatileCacheSize(1000)))
    ));
    cfg.volatile_cache = Some(VolatileCacheConfig {
        size: 1 << 20,
        cut_seed: None,
    });
    cfg.cache_mode = CacheMode::WriteThrough;
    assert!(matches!(
        Controller::open(cfg),
        Err(OpenError::Config(ConfigError::VolatileCacheWriteThrough))
    ));
}
