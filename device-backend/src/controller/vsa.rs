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
        Self {
            layout: RwLock::new(layout),
        }
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

/// Maps `[offset, offset + len)` of a VSA onto drive ranges, in request
/// order, merging extents that are contiguous on one drive. `None` if any
/// byte of the range lies outside the map (callers check bounds first).
/// The whole range is checked before anything is yielded; the ranges
/// themselves are computed as they are taken, so nothing is allocated.
pub fn map_range(
    layout: &VsaLayout,
    extent_size: u64,
    offset: u64,
    len: u64,
) -> Option<Segments<'_>> {
    let end = offset.checked_add(len)?;
    if end > layout.size || extent_size == 0 {
        return None;
    }
    if len > 0 {
        for logical in offset / extent_size..=(end - 1) / extent_size {
            let ext = layout.extents.get(usize::try_from(logical).ok()?)?;
            ext.index
                .checked_mul(extent_size)?
                .checked_add(extent_size)?;
        }
    }
    Some(Segments {
        extents: &layout.extents,
        extent_size,
        start: offset,
        pos: offset,
        end,
    })
}

/// The drive ranges of a VSA range (see [`map_range`]).
pub struct Segments<'a> {
    extents: &'a [super::state::PhysExtent],
    extent_size: u64,
    /// Where the request starts, and how far it has been mapped.
    start: u64,
    pos: u64,
    end: u64,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        let mut seg: Option<Segment> = None;
        while self.pos < self.end {
            let within = self.pos % self.extent_size;
            let piece = (self.extent_size - within).min(self.end - self.pos);
            // Checked by map_range: a failure here ends the iteration early.
            let ext = self
                .extents
                .get(usize::try_from(self.pos / self.extent_size).ok()?)?;
            let drive_offset = ext
                .index
                .checked_mul(self.extent_size)?
                .checked_add(within)?;
            match &mut seg {
                Some(s) if s.drive == ext.drive && s.offset + s.len == drive_offset => {
                    s.len += piece
                }
                Some(_) => break,
                None => {
                    seg = Some(Segment {
                        drive: ext.drive,
                        offset: drive_offset,
                        len: piece,
                        request_offset: self.pos - self.start,
                    })
                }
            }
            self.pos += piece;
        }
        seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(drive: u32, index: u64) -> PhysExtent {
        PhysExtent { drive, index }
    }

    #[test]
    fn maps_and_merges_contiguous_extents() {
        let l = VsaLayout {
            size: 4 * 100,
            extents: vec![e(0, 5), e(0, 6), e(1, 2), e(0, 9)],
            deleted: false,
        };
        let segs: Vec<Segment> = map_range(&l, 100, 50, 300).unwrap().collect();
        assert_eq!(
            segs,
            vec![
                Segment {
                    drive: 0,
                    offset: 550,
                    len: 150,
                    request_offset: 0
                },
                Segment {
                    drive: 1,
                    offset: 200,
                    len: 100,
                    request_offset: 150
                },
                Segment {
                    drive: 0,
                    offset: 900,
                    len: 50,
                    request_offset: 250
                },
            ]
        );
        assert!(map_range(&l, 100, 399, 2).is_none());
        assert!(map_range(&l, 100, u64::MAX, 2).is_none());
        assert_eq!(map_range(&l, 100, 400, 0).unwrap().count(), 0);
        // A map shorter than the VSA's size: refused before any range is yielded.
        let short = VsaLayout {
            size: 300,
            extents: vec![e(0, 5), e(0, 6)],
            deleted: false,
        };
        assert!(map_range(&short, 100, 150, 100).is_none());
        assert_eq!(map_range(&short, 100, 150, 50).unwrap().count(), 1);
    }
}
