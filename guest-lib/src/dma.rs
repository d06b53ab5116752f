//! DMA memory: one region the device can reach, and an allocator over it.
//!
//! Everything the device reads or writes (rings, request headers, status
//! bytes, data buffers) lives in one [`DmaRegion`] registered with the
//! transport. Every byte has a host address (what this process uses) and a
//! device-visible address, its IOVA (what goes into descriptors).
//!
//! A region is one contiguous host mapping made of [`DmaChunk`]s, each with
//! contiguous IOVAs. A memfd region is a single chunk; pinned huge pages in
//! a guest are one chunk per run of physically adjacent pages. Allocations
//! never straddle two chunks, so every buffer is contiguous for the device.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::mapping::map_rw;

/// Alignment of buffers handed to applications: a page, so they also suit
/// backends that use direct I/O.
pub const BUFFER_ALIGN: usize = 4096;

/// A stretch of a region whose device addresses are contiguous:
/// `[offset, offset + len)` of the mapping is seen by the device at
/// `[iova, iova + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaChunk {
    pub offset: usize,
    pub len: usize,
    pub iova: u64,
}

/// One mapping shared with the device. Unmapped on drop.
#[derive(Debug)]
pub struct DmaRegion {
    host: NonNull<u8>,
    len: usize,
    /// Sorted by offset, covering `[0, len)` without gaps; never empty.
    chunks: Vec<DmaChunk>,
    /// Indices into `chunks`, sorted by IOVA, for device-address lookups.
    by_iova: Vec<usize>,
    fd: Option<OwnedFd>,
}

// SAFETY: the region is plain shared memory; all access goes through raw
// pointers whose users synchronise among themselves (queue locks, buffer
// ownership).
unsafe impl Send for DmaRegion {}
// SAFETY: as for Send.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// A memfd-backed region of `len` bytes whose first byte the device sees
    /// at `iova`. The fd can be passed to another process (vhost-user).
    pub fn memfd(len: usize, iova: u64) -> Result<DmaRegion, Error> {
        check_layout(len, iova)?;
        // SAFETY: the name is a valid C string; the flags are valid.
        let raw = unsafe { libc::memfd_create(c"vsic-dma".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::system(
                "memfd_create",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("DMA region size {len} too large")))?;
        // SAFETY: fd is a valid memfd.
        if unsafe { libc::ftruncate(raw, size) } < 0 {
            return Err(Error::system(
                "ftruncate of the DMA memfd",
                std::io::Error::last_os_error(),
            ));
        }
        let host = map(len, libc::MAP_SHARED, raw)?;
        Ok(DmaRegion::single(host, len, iova, Some(fd)))
    }

    /// An anonymous shared region (no fd): for transports that register
    /// memory by address, and for tests.
    pub fn anonymous(len: usize, iova: u64) -> Result<DmaRegion, Error> {
        check_layout(len, iova)?;
        let host = map(len, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)?;
        Ok(DmaRegion::single(host, len, iova, None))
    }

    fn single(host: NonNull<u8>, len: usize, iova: u64, fd: Option<OwnedFd>) -> DmaRegion {
        DmaRegion {
            host,
            len,
            chunks: vec![DmaChunk {
                offset: 0,
                len,
                iova,
            }],
            by_iova: vec![0],
            fd,
        }
    }

    /// Takes ownership of the mapping `[host, host + len)` (unmapped on
    /// drop) whose chunks are `chunks`: in offset order, covering the
    /// mapping without gaps, page-aligned, with disjoint IOVA ranges.
    ///
    /// # Safety
    /// `host` must be a mapping of `len` bytes made with `mmap` that
    /// nothing else unmaps.
    pub(crate) unsafe fn from_mapping(
        host: NonNull<u8>,
        len: usize,
        chunks: Vec<DmaChunk>,
        fd: Option<OwnedFd>,
    ) -> Result<DmaRegion, Error> {
        let by_iova = check_chunks(len, &chunks)?;
        Ok(DmaRegion {
            host,
            len,
            chunks,
            by_iova,
            fd,
        })
    }

    /// Host address of the first byte.
    pub fn host_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device-visible address of the first byte.
    pub fn iova(&self) -> u64 {
        self.chunks.first().map_or(0, |c| c.iova)
    }

    /// The IOVA-contiguous pieces of the region, in offset order.
    pub fn chunks(&self) -> &[DmaChunk] {
        &self.chunks
    }

    /// The chunk holding byte `offset` of the mapping (the last one for
    /// offsets past the end).
    fn chunk_at_offset(&self, offset: usize) -> &DmaChunk {
        let i = self
            .chunks
            .partition_point(|c| c.offset <= offset)
            .saturating_sub(1);
        &self.chunks[i.min(self.chunks.len() - 1)]
    }

    /// Device-visible address of byte `offset` of the mapping.
    pub fn iova_at(&self, offset: usize) -> Option<u64> {
        if offset >= self.len {
            return None;
        }
        let c = self.chunk_at_offset(offset);
        Some(c.iova + (offset - c.offset) as u64)
    }

    /// Whether `offset` is the first byte of a chunk other than the first:
    /// free blocks never merge across such a boundary.
    fn is_chunk_boundary(&self, offset: usize) -> bool {
        offset != 0
            && self
                .chunks
                .binary_search_by_key(&offset, |c| c.offset)
                .is_ok()
    }

    /// The fd backing the region, when it has one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Offset in the mapping of `[iova, iova + len)`, if that lies inside
    /// one chunk (a range spanning two chunks is not contiguous memory for
    /// the device).
    fn offset_of(&self, iova: u64, len: usize) -> Option<usize> {
        let i = self
            .by_iova
            .partition_point(|&c| self.chunks[c].iova <= iova)
            .checked_sub(1)?;
        let c = &self.chunks[self.by_iova[i]];
        let off = usize::try_from(iova - c.iova).ok()?;
        off.checked_add(len).filter(|&end| end <= c.len)?;
        Some(c.offset + off)
    }

    /// Whether `[iova, iova + len)` lies inside the region.
    pub fn contains(&self, iova: u64, len: usize) -> bool {
        self.offset_of(iova, len).is_some()
    }

    /// Host address of `[iova, iova + len)`, if that lies inside the region.
    pub fn host_at(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let off = self.offset_of(iova, len)?;
        // SAFETY: off + len lies inside a chunk, hence inside the mapping.
        Some(unsafe { self.host.as_ptr().add(off) })
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: host/len describe the mapping made in the constructor.
        unsafe { libc::munmap(self.host.as_ptr().cast(), self.len) };
    }
}

fn check_layout(len: usize, iova: u64) -> Result<(), Error> {
    if len == 0 || len % BUFFER_ALIGN != 0 {
        return Err(Error::InvalidArgument(format!(
            "DMA region size {len} must be a non-zero multiple of {BUFFER_ALIGN}"
        )));
    }
    if iova % BUFFER_ALIGN as u64 != 0 || iova.checked_add(len as u64).is_none() {
        return Err(Error::InvalidArgument(format!(
            "DMA region address {iova:#x} is not usable"
        )));
    }
    Ok(())
}

/// Validates a chunk list; returns the chunk indices sorted by IOVA.
fn check_chunks(len: usize, chunks: &[DmaChunk]) -> Result<Vec<usize>, Error> {
    let bad = |why: String| Err(Error::InvalidArgument(format!("DMA region layout: {why}")));
    if chunks.is_empty() {
        return bad("no chunks".into());
    }
    let mut next = 0usize;
    for c in chunks {
        if c.offset != next {
            return bad(format!(
                "chunk at offset {:#x}, expected {next:#x}",
                c.offset
            ));
        }
        check_layout(c.len, c.iova)?;
        next = match c.offset.checked_add(c.len) {
            Some(n) => n,
            None => return bad("chunk end overflows".into()),
        };
    }
    if next != len {
        return bad(format!("chunks cover {next:#x} bytes of {len:#x}"));
    }
    let mut by_iova: Vec<usize> = (0..chunks.len()).collect();
    by_iova.sort_by_key(|&i| chunks[i].iova);
    for pair in by_iova.windows(2) {
        let (a, b) = (&chunks[pair[0]], &chunks[pair[1]]);
        // check_layout ruled out overflow of iova + len.
        if a.iova + a.len as u64 > b.iova {
            return bad(format!(
                "device addresses {:#x} and {:#x} overlap",
                a.iova, b.iova
            ));
        }
    }
    Ok(by_iova)
}

fn map(len: usize, flags: i32, fd: i32) -> Result<NonNull<u8>, Error> {
    map_rw(len, flags, fd, 0).map_err(|e| Error::system("mmap of the DMA region", e))
}

/// A range of DMA memory given to a request: device address and length.
///
/// Build it from a [`DmaBuffer`] ([`DmaBuffer::range`]); requests check that
/// it lies inside the registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    pub iova: u64,
    pub len: usize,
}

/// First-fit allocator over one region. Free blocks are kept sorted and
/// merged, so long-running programs do not fragment the region.
#[derive(Debug)]
pub struct DmaPool {
    region: Arc<DmaRegion>,
    /// Free blocks as (offset, len), sorted by offset, never adjacent.
    free: Mutex<Vec<(usize, usize)>>,
}

impl DmaPool {
    pub fn new(region: Arc<DmaRegion>) -> Arc<DmaPool> {
        // One free block per chunk: blocks never span two chunks.
        let free = Mutex::new(region.chunks().iter().map(|c| (c.offset, c.len)).collect());
        Arc::new(DmaPool { region, free })
    }

    pub fn region(&self) -> &DmaRegion {
        &self.region
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(self: &Arc<Self>, len: usize, align: usize) -> Result<DmaBuffer, Error> {
        if len == 0 {
            return Err(Error::InvalidArgument(
                "cannot allocate an empty DMA buffer".into(),
            ));
        }
        if !align.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "alignment {align} is not a power of two"
            )));
        }
        let exhausted = Error::DmaExhausted {
            requested: len,
            region: self.region.len(),
        };
        let mut free = lock(&self.free);
        for i in 0..free.len() {
            let (start, size) = free[i];
            let Some(aligned) = start.checked_next_multiple_of(align) else {
                continue;
            };
            let pad = aligned - start;
            let Some(need) = pad.checked_add(len) else {
                return Err(exhausted);
            };
            if need > size {
                continue;
            }
            // Carve [aligned, aligned + len) out of the block, keeping the
            // padding before and the rest after as free blocks.
            let rest = size - need;
            match (pad > 0, rest > 0) {
                (false, false) => {
                    free.remove(i);
                }
                (true, false) => free[i] = (start, pad),
                (false, true) => free[i] = (aligned + len, rest),
                (true, true) => {
                    free[i] = (start, pad);
                    free.insert(i + 1, (aligned + len, rest));
                }
            }
            return Ok(DmaBuffer {
                pool: Arc::clone(self),
                offset: aligned,
                len,
                iova: self.region.iova_at(aligned).unwrap_or(u64::MAX),
            });
        }
        Err(exhausted)
    }

    fn release(&self, offset: usize, len: usize) {
        let mut free = lock(&self.free);
        let i = free.partition_point(|&(s, _)| s < offset);
        free.insert(i, (offset, len));
        // Merge with the next block, then with the previous one, unless
        // they touch at a chunk boundary.
        let joins = |a: (usize, usize), b: (usize, usize)| {
            a.0 + a.1 == b.0 && !self.region.is_chunk_boundary(b.0)
        };
        if i + 1 < free.len() && joins(free[i], free[i + 1]) {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && joins(free[i - 1], free[i]) {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }

    /// Bytes currently free (for diagnostics and tests).
    pub fn free_bytes(&self) -> usize {
        lock(&self.free).iter().map(|&(_, l)| l).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave the free list inconsistent (every
    // update is a single step), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A block of DMA memory owned by the application; returned on drop.
///
/// Do not touch its bytes while a request using them is in flight: the
/// device reads or writes them concurrently. The contents of a fresh buffer
/// are unspecified (memory is recycled without clearing).
#[derive(Debug)]
pub struct DmaBuffer {
    pool: Arc<DmaPool>,
    offset: usize,
    len: usize,
    /// Device address of the first byte (the block lies in one chunk).
    iova: u64,
}

impl DmaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device-visible address of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: offset < region length (the allocator only hands out
        // blocks inside the region).
        unsafe { self.pool.region.host_ptr().add(self.offset) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the block is inside the mapping and owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }

    /// The whole buffer as a request memory range.
    pub fn mem(&self) -> MemRange {
        MemRange {
            iova: self.iova(),
            len: self.len,
        }
    }

    /// `len` bytes at `offset` as a request memory range.
    pub fn range(&self, offset: usize, len: usize) -> Result<MemRange, Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(MemRange {
                iova: self.iova() + offset as u64,
                len,
            }),
            _ => Err(Error::InvalidArgument(format!(
                "range {offset}+{len} exceeds the {}-byte buffer",
                self.len
            ))),
        }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        self.pool.release(self.offset, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1 << 30;

    fn pool(len: usize) -> Arc<DmaPool> {
        DmaPool::new(Arc::new(DmaRegion::anonymous(len, BASE).unwrap()))
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_returned() {
        let p = pool(64 << 10);
        let a = p.alloc(100, 64).unwrap();
        let b = p.alloc(4096, 4096).unwrap();
        let c = p.alloc(1, 8).unwrap();
        assert_eq!(a.iova() % 64, 0);
        assert_eq!(b.iova() % 4096, 0);
        let spans = [(a.iova(), 100u64), (b.iova(), 4096), (c.iova(), 1)];
        for (i, x) in spans.iter().enumerate() {
            for y in &spans[i + 1..] {
                assert!(x.0 + x.1 <= y.0 || y.0 + y.1 <= x.0, "{x:?} overlaps {y:?}");
            }
        }
        drop((a, b, c));
        assert_eq!(p.free_bytes(), 64 << 10);
        // Everything merged back: the whole region is one block again.
        let all = p.alloc(64 << 10, 4096).unwrap();
        assert_eq!(all.iova(), BASE);
    }

    #[test]
    fn exhaustion_is_reported_not_panicked() {
        let p = pool(8192);
        let _a = p.alloc(8192, 4096).unwrap();
        assert!(matches!(p.alloc(1, 1), Err(Error::DmaExhausted { .. })));
        assert!(matches!(p.alloc(0, 1), Err(Error::InvalidArgument(_))));
        assert!(matches!(p.alloc(1, 3), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            p.alloc(usize::MAX, 4096),
            Err(Error::DmaExhausted { .. })
        ));
    }

    #[test]
    fn buffers_are_writable_through_host_pointer() {
        let p = pool(8192);
        let mut a = p.alloc(16, 16).unwrap();
        a.as_mut_slice().copy_from_slice(&[7u8; 16]);
        let host = p.region().host_at(a.iova(), 16).unwrap();
        // SAFETY: host_at checked the range.
        assert_eq!(unsafe { *host.add(15) }, 7);
        assert!(a.range(8, 8).is_ok());
        assert!(a.range(8, 9).is_err());
        assert!(a.range(usize::MAX, 2).is_err());
    }

    #[test]
    fn region_bounds_checks() {
        let r = DmaRegion::memfd(8192, BASE).unwrap();
        assert!(r.fd().is_some());
        assert!(r.contains(BASE, 8192));
        assert!(!r.contains(BASE, 8193));
        assert!(!r.contains(BASE - 1, 1));
        assert!(!r.contains(u64::MAX, 2));
        assert!(DmaRegion::memfd(100, BASE).is_err());
    }

    /// A region of three 8 KiB chunks whose IOVAs are out of order, as
    /// pinned pages of a guest usually are.
    fn chunked() -> Arc<DmaRegion> {
        let len = 3 * 8192;
        let host = map(len, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1).unwrap();
        let chunks = vec![
            DmaChunk {
                offset: 0,
                len: 8192,
                iova: 0x30_0000,
            },
            DmaChunk {
                offset: 8192,
                len: 8192,
                iova: 0x10_0000,
            },
            DmaChunk {
                offset: 16384,
                len: 8192,
                iova: 0x20_0000,
            },
        ];
        // SAFETY: a fresh mapping of `len` bytes.
        Arc::new(unsafe { DmaRegion::from_mapping(host, len, chunks, None) }.unwrap())
    }

    #[test]
    fn chunked_region_translates_each_chunk() {
        let r = chunked();
        assert_eq!(r.iova(), 0x30_0000);
        assert_eq!(r.iova_at(0), Some(0x30_0000));
        assert_eq!(r.iova_at(8192 + 100), Some(0x10_0000 + 100));
        assert_eq!(r.iova_at(3 * 8192), None);
        assert!(r.contains(0x20_0000, 8192));
        assert!(!r.contains(0x20_0000, 8193));
        // Adjacent in the mapping but not for the device: never one range.
        assert!(!r.contains(0x30_0000 + 4096, 8192));
        assert!(!r.contains(0x0f_f000, 4096));
        let host = r.host_at(0x10_0000 + 8, 8).unwrap();
        assert_eq!(host as usize - r.host_ptr() as usize, 8192 + 8);
    }

    #[test]
    fn allocations_never_straddle_chunks() {
        let p = DmaPool::new(chunked());
        // Each chunk is 8 KiB: a 12 KiB block fits nowhere.
        assert!(matches!(
            p.alloc(12288, 4096),
            Err(Error::DmaExhausted { .. })
        ));
        let bufs: Vec<DmaBuffer> = (0..6).map(|_| p.alloc(4096, 4096).unwrap()).collect();
        for b in &bufs {
            assert!(p.region().contains(b.iova(), b.len()), "{:#x}", b.iova());
            let host = p.region().host_at(b.iova(), b.len()).unwrap();
            assert_eq!(host, b.as_ptr());
        }
        drop(bufs);
        // Freed blocks merge within chunks only.
        assert_eq!(p.free_bytes(), 3 * 8192);
        assert!(p.alloc(12288, 4096).is_err());
        let whole = p.alloc(8192, 4096).unwrap();
        assert_eq!(whole.iova(), 0x30_0000);
    }

    #[test]
    fn bad_chunk_layouts_are_refused() {
        let try_layout = |chunks: Vec<DmaChunk>| {
            let host = map(8192, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1).unwrap();
            // SAFETY: a fresh mapping of 8192 bytes.
            unsafe { DmaRegion::from_mapping(host, 8192, chunks, None) }
        };
        let c = |offset, len, iova| DmaChunk { offset, len, iova };
        assert!(try_layout(vec![]).is_err());
        assert!(try_layout(vec![c(0, 4096, 0)]).is_err(), "gap at the end");
        assert!(try_layout(vec![c(0, 4096, 0), c(4096, 4096, 2048)]).is_err());
        assert!(try_layout(vec![c(0, 4096, 8192), c(4096, 4096, 8192)]).is_err());
        assert!(try_layout(vec![c(0, 4096, u64::MAX - 4095), c(4096, 4096, 0)]).is_err());
        assert!(try_layout(vec![c(0, 4096, 8192), c(4096, 4096, 0)]).is_ok());
    }
}
