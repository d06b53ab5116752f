//! The data plane's view of a VSA: its extent map behind a read-write lock.
//! I/O holds the read lock for the whole transfer, so a resize or delete
//! (which takes the write lock) waits for in-flight I/O before any extent
//! it frees can be zeroed or reused.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::state::PhysExtent;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VsaLayout {
    pub size: u64,
    pub extents: Vec<PhysExtent>,
    /// Set when the VSA is deleted: no further I/O reaches it.
    pub deleted: bool,
}

pub struct VsaHandle {
    layout: RwLock<VsaLayout>,
}

impl VsaHandle {
    pub fn new(layout: VsaLayout) -> Self {
        Self { layout: RwLock::new(layout) }
    }
    // A poisoned lock only means a thread panicked while holding it; the
    // layout itself is always replaced whole, so it is still consistent.
    pub fn read(&self) -> RwLockReadGuard<'_, VsaLayout> {
        self.layout.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, VsaLayout> {
        self.layout.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A physically contiguous piece of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub drive: u32,
    /// Byte offset on the drive.
    pub offset: u64,
    pub len: u64,
    /// Byte offset of this piece within the request.
    pub request_offset: u64,
}

/// Maps `[offset, offset + len)` of a VSA onto drive ranges, merging
/// extents that are contiguous on one drive. `None` if any byte of the
/// range lies outside the map (callers check bounds first).
pub fn map_range(layout: &VsaLayout, extent_size: u64, offset: u64, len: u64) -> Option<Vec<Segment>> {
    let end = offset.checked_add(len)?;
    if end > layout.size || extent_size == 0 {
        return None;
    }
    let mut out: Vec<Segment> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let logical = pos / extent_size;
        let within = pos % extent_size;
        let piece = (extent_size - within).min(end - pos);
        let ext = layout.extents.get(usize::try_from(logical).ok()?)?;
        let drive_offset = ext.index.checked_mul(extent_size)?.checked_add(within)?;
        match out.last_mut() {
            Some(last) if last.drive == ext.drive && last.offset + last.len == drive_offset => last.len += piece,
            _ => out.push(Segment { drive: ext.drive, offset: drive_offset, len: piece, request_offset: pos - offset }),
        }
        pos += piece;
    }
    Some(out)
}

/// The iovecs covering bytes `[start, start + len)` of the buffer `iov`
/// describes (no data is copied).
pub fn slice_iov(iov: &[libc::iovec], start: u64, len: u64) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut want = len;
    for v in iov {
        if want == 0 {
            break;
        }
        let vlen = v.iov_len as u64;
        if skip >= vlen {
            skip -= vlen;
            continue;
        }
        let take = (vlen - skip).min(want);
        out.push(libc::iovec {
            iov_base: (v.iov_base as *mut u8).wrapping_add(skip as usize).cast(),
            iov_len: take as usize,
        });
        want -= take;
        skip = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(drive: u32, index: u64) -> PhysExtent {
        PhysExtent { drive, index }
    }

    #[test]
    fn maps_and_merges_contiguous_extents() {
        let l = VsaLayout { size: 4 * 100, extents: vec![e(0, 5), e(0, 6), e(1, 2), e(0, 9)], deleted: false };
        let segs = map_range(&l, 100, 50, 300).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment { drive: 0, offset: 550, len: 150, request_offset: 0 },
                Segment { drive: 1, offset: 200, len: 100, request_offset: 150 },
                Segment { drive: 0, offset: 900, len: 50, request_offset: 250 },
            ]
        );
        assert!(map_range(&l, 100, 399, 2).is_none());
        assert!(map_range(&l, 100, u64::MAX, 2).is_none());
        assert_eq!(map_range(&l, 100, 400, 0).unwrap(), vec![]);
    }

    #[test]
    fn slices_iovecs_without_copying() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let iov = [
            libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: 10 },
            libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 20 },
        ];
        let s = slice_iov(&iov, 5, 10);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].iov_base as usize, a.as_ptr() as usize + 5);
        assert_eq!(s[0].iov_len, 5);
        assert_eq!(s[1].iov_base as usize, b.as_ptr() as usize);
        assert_eq!(s[1].iov_len, 5);
        let s = slice_iov(&iov, 12, 18);
        assert_eq!((s.len(), s[0].iov_len), (1, 18));
    }
}
