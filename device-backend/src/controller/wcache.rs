//! The volatile write-back cache (`vsicd --volatile-cache SIZE`): a model
//! of a controller whose completed writes sit in its RAM until FLUSH, so a
//! power cut ([`super::power`]) can lose them.
//!
//! What it holds: 512-byte sectors of the drives (keyed by drive and drive
//! sector), the newest completed data of each. A write is copied in and
//! completes; a read returns the drive's data with every cached sector laid
//! over it (partial overlaps included); a destage writes the cached sectors
//! to the drive. FLUSH destages every drive and syncs it. When a write does
//! not fit, every drive is destaged first (early destaging, as a real cache
//! may do at any time). DISCARD, WRITE_ZEROES and the zeroing of freed
//! extents bypass the cache: they drop the cached sectors they cover, then
//! zero the drive.
//!
//! Concurrency (queue workers of several VSICs share a drive): per drive,
//! one mutex guards the maps and is held only to copy sectors in or out;
//! a second one serialises destaging, so two destages never write one
//! sector out of order. A destage moves the dirty map aside into
//! `destaging`, which readers still consult, and removes it only once the
//! drive holds its data: a reader that finds a sector in neither map finds
//! it on the drive.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::buffers::{BufferStorage, IoBuffers};
use super::drive::Drive;

/// The cache's granularity in bytes.
pub const SECTOR: u64 = 512;

/// One cached sector's data.
type Sector = Box<[u8; SECTOR as usize]>;
type SectorMap = BTreeMap<u64, Sector>;

/// Largest run a destage writes with one call.
const DESTAGE_RUN: usize = 1 << 20;

#[derive(Default)]
struct Lines {
    /// Completed writes not yet handed to the drive, by drive sector.
    dirty: SectorMap,
    /// What the destage in progress is writing (empty when none).
    destaging: Arc<SectorMap>,
}

#[derive(Default)]
struct DriveCache {
    lines: Mutex<Lines>,
    /// Held by whoever writes cached sectors to the drive, and by whoever
    /// zeroes drive ranges (so no destage writes stale data after them).
    destage: Mutex<()>,
}

impl DriveCache {
    fn lines(&self) -> MutexGuard<'_, Lines> {
        // Every critical section leaves the maps consistent.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn destage_lock(&self) -> MutexGuard<'_, ()> {
        self.destage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a power cut did to the cache, in sectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Dirty sectors lost.
    pub dropped: u64,
    /// Dirty sectors that reached the drive at the cut (a seeded cut only).
    pub kept: u64,
}

/// Why a request cannot use the cache.
fn unaligned() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the volatile cache works in whole 512-byte sectors",
    )
}

pub struct VolatileCache {
    drives: Vec<DriveCache>,
    /// Capacity in sectors.
    capacity: u64,
    /// Sectors held (dirty or being destaged).
    held: AtomicU64,
}

impl VolatileCache {
    /// A cache of `bytes` (a positive multiple of [`SECTOR`]) over `drives`
    /// drives.
    pub fn new(bytes: u64, drives: usize) -> VolatileCache {
        VolatileCache {
            drives: (0..drives).map(|_| DriveCache::default()).collect(),
            capacity: (bytes / SECTOR).max(1),
            held: AtomicU64::new(0),
        }
    }

    /// Bytes of completed writes the drives do not hold yet.
    pub fn dirty_bytes(&self) -> u64 {
        self.held.load(Ordering::Acquire) * SECTOR
    }

    fn cache(&self, d: usize) -> io::Result<&DriveCache> {
        self.drives
            .get(d)
            .ok_or_else(|| io::Error::other("extent on an unknown drive"))
    }

    /// Drive `d`'s cache for a request of `len` bytes at byte `offset`,
    /// which must be whole sectors.
    fn sector_range(&self, d: usize, offset: u64, len: u64) -> io::Result<&DriveCache> {
        if !(offset.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR)) {
            return Err(unaligned());
        }
        self.cache(d)
    }

    /// Writes bytes `[start, start + len)` of `bufs` at byte `offset` of
    /// drive `d` into the cache, destaging every drive of `drives` first
    /// whenever a piece does not fit.
    pub fn write(
        &self,
        drives: &[Arc<Drive>],
        d: usize,
        bufs: &IoBuffers<'_>,
        start: u64,
        len: u64,
        offset: u64,
    ) -> io::Result<usize> {
        let cache = self.sector_range(d, offset, len)?;
        let sectors = len / SECTOR;
        // At most half the cache at a time, so a piece always fits after a
        // destage.
        let piece = (self.capacity / 2).max(1);
        let mut done = 0u64;
        while done < sectors {
            let n = piece.min(sectors - done);
            let data: Vec<(u64, Sector)> = (done..done + n)
                .map(|i| {
                    let mut s: Sector = Box::new([0; SECTOR as usize]);
                    bufs.copy_out(start + i * SECTOR, &mut s[..]);
                    (offset / SECTOR + i, s)
                })
                .collect();
            if self.held.load(Ordering::Acquire) + n > self.capacity {
                self.destage_all(drives)?;
            }
            let mut lines = cache.lines();
            let mut added = 0;
            for (sector, s) in data {
                if lines.dirty.insert(sector, s).is_none() {
                    added += 1;
                }
            }
            self.held.fetch_add(added, Ordering::AcqRel);
            drop(lines);
            done += n;
        }
        Ok(len as usize)
    }

    /// Reads bytes `[offset, offset + len)` of drive `d` into bytes
    /// `[start, start + len)` of `bufs`: the drive's data with the cached
    /// sectors over it.
    pub fn read(
        &self,
        drive: &Drive,
        d: usize,
        bufs: &IoBuffers<'_>,
        start: u64,
        len: u64,
        offset: u64,
    ) -> io::Result<usize> {
        let cache = self.sector_range(d, offset, len)?;
        let (first, end) = (offset / SECTOR, (offset + len) / SECTOR);
        // Copied out under the lock; newest first (dirty over destaging).
        let overlay: BTreeMap<u64, Sector> = {
            let lines = cache.lines();
            let mut found: BTreeMap<u64, Sector> = lines
                .destaging
                .range(first..end)
                .map(|(&k, v)| (k, v.clone()))
                .collect();
            for (&k, v) in lines.dirty.range(first..end) {
                found.insert(k, v.clone());
            }
            found
        };
        if (overlay.len() as u64) < end - first {
            drive.transfer(false, bufs.range(start, len), offset)?;
        }
        for (sector, data) in &overlay {
            bufs.copy_in(start + (sector - first) * SECTOR, &data[..]);
        }
        Ok(len as usize)
    }

    /// Writes drive `d`'s dirty sectors to it (no sync). On failure the
    /// sectors stay cached, except those overwritten meanwhile.
    pub fn destage(&self, drive: &Drive, d: usize) -> io::Result<()> {
        let cache = self.cache(d)?;
        let _serial = cache.destage_lock();
        let batch = {
            let mut lines = cache.lines();
            if lines.dirty.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut lines.dirty));
            lines.destaging = Arc::clone(&batch);
            batch
        };
        let written = write_runs(drive, &batch);
        let mut lines = cache.lines();
        lines.destaging = Arc::default();
        match written {
            Ok(()) => {
                self.held.fetch_sub(batch.len() as u64, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                let mut back = 0;
                for (&k, v) in batch.iter() {
                    if let std::collections::btree_map::Entry::Vacant(slot) = lines.dirty.entry(k) {
                        slot.insert(v.clone());
                    } else {
                        back += 1;
                    }
                }
                // Sectors overwritten meanwhile are counted once, as dirty.
                self.held.fetch_sub(back, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Destages every drive (no sync); the first failure is returned after
    /// trying them all.
    pub fn destage_all(&self, drives: &[Arc<Drive>]) -> io::Result<()> {
        let mut result = Ok(());
        for (d, drive) in drives.iter().enumerate() {
            if let Err(e) = self.destage(drive, d) {
                log::error!(
                    "cannot destage the cache to {}: {e}",
                    drive.path().display()
                );
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Zeroes bytes `[offset, offset + len)` of drive `d` with `zero`,
    /// bypassing the cache: the cached data there is dropped first, and no
    /// destage runs meanwhile.
    pub fn zero<R>(
        &self,
        d: usize,
        offset: u64,
        len: u64,
        zero: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        let cache = self.cache(d)?;
        let _serial = cache.destage_lock();
        {
            let mut lines = cache.lines();
            let (first, end) = (offset / SECTOR, (offset + len).div_ceil(SECTOR));
            let covered: Vec<u64> = lines.dirty.range(first..end).map(|(&k, _)| k).collect();
            let mut dropped = 0;
            for sector in covered {
                let (lo, hi) = (sector * SECTOR, (sector + 1) * SECTOR);
                if offset <= lo && hi <= offset + len {
                    lines.dirty.remove(&sector);
                    dropped += 1;
                } else if let Some(s) = lines.dirty.get_mut(&sector) {
                    // A sector the range covers in part: zero that part.
                    let from = offset.max(lo) - lo;
                    let to = (offset + len).min(hi) - lo;
                    s[from as usize..to as usize].fill(0);
                }
            }
            self.held.fetch_sub(dropped, Ordering::AcqRel);
        }
        zero()
    }

    /// The power cut: every dirty sector is lost, or, with `keep`, those
    /// for which `keep` says true reach their drive first (a write that
    /// fails there is lost too). Waits for a destage in progress: it
    /// finished before the cut.
    pub fn cut(
        &self,
        drives: &[Arc<Drive>],
        mut keep: Option<&mut dyn FnMut() -> bool>,
    ) -> CutReport {
        let mut report = CutReport::default();
        for (d, cache) in self.drives.iter().enumerate() {
            let _serial = cache.destage_lock();
            let lost = std::mem::take(&mut cache.lines().dirty);
            self.held.fetch_sub(lost.len() as u64, Ordering::AcqRel);
            let mut survivors = SectorMap::new();
            for (sector, data) in lost {
                if keep.as_mut().is_some_and(|survives| survives()) {
                    survivors.insert(sector, data);
                } else {
                    report.dropped += 1;
                }
            }
            let count = survivors.len() as u64;
            match drives.get(d).map(|drive| write_runs(drive, &survivors)) {
                Some(Ok(())) => report.kept += count,
                _ => report.dropped += count,
            }
        }
        report
    }
}

/// Writes `sectors` to `drive`, consecutive sectors in one call each (up
/// to [`DESTAGE_RUN`] bytes), through [`Drive::transfer`] like every
/// data-plane write.
fn write_runs(drive: &Drive, sectors: &SectorMap) -> io::Result<()> {
    let mut run: Vec<u8> = Vec::with_capacity(DESTAGE_RUN.min(sectors.len() * SECTOR as usize));
    let mut storage = BufferStorage::with_capacity(1);
    let mut write = |run: &mut Vec<u8>, at: u64| -> io::Result<()> {
        let len = run.len() as u64;
        let mut bufs = storage.start();
        bufs.push_bytes(run);
        drive.transfer(true, bufs.range(0, len), at * SECTOR)?;
        run.clear();
        Ok(())
    };
    let mut run_start = 0u64;
    for (&k, v) in sectors {
        let next = run_start + (run.len() as u64) / SECTOR;
        if !run.is_empty() && (k != next || run.len() >= DESTAGE_RUN) {
            write(&mut run, run_start)?;
        }
        if run.is_empty() {
            run_start = k;
        }
        run.extend_from_slice(&v[..]);
    }
    if !run.is_empty() {
        write(&mut run, run_start)?;
    }
    Ok(())
}
