//! The memory a read or write moves data to or from, as a safe type.
//!
//! An [`IoBuffers`] is a list of memory pieces, each valid for reads and
//! writes for the buffers' lifetime `'a`. It is only ever filled from
//! values that carry that guarantee themselves: vm-memory
//! [`VolatileSlice`]s (guest memory the front mapped) and `&mut [u8]`.
//! So the model can hand pieces of it to the drive without any `unsafe`
//! contract on the seam; the drive turns them into iovecs once, right
//! where `preadv`/`pwritev` need them ([`super::drive::Drive::transfer`]).
//!
//! The list lives in a [`BufferStorage`] the caller keeps across requests,
//! so filling it does not allocate once it has grown to the largest
//! request seen.

use std::marker::PhantomData;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// One piece: start address and length. Stored as integers so that the
/// storage holds no pointers between requests (and is `Send`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    addr: usize,
    len: usize,
}

impl Piece {
    /// The piece as an iovec for `preadv`/`pwritev`.
    pub(crate) fn iovec(self) -> libc::iovec {
        libc::iovec {
            iov_base: self.addr as *mut libc::c_void,
            iov_len: self.len,
        }
    }

    pub(crate) fn len(self) -> usize {
        self.len
    }
}

/// Reusable room for the pieces of one request's buffers.
#[derive(Debug, Default)]
pub struct BufferStorage {
    pieces: Vec<Piece>,
}

impl BufferStorage {
    /// Room for `pieces` pieces before the first request grows it.
    pub fn with_capacity(pieces: usize) -> BufferStorage {
        BufferStorage {
            pieces: Vec::with_capacity(pieces),
        }
    }

    /// Starts an empty buffer list in this storage.
    pub fn start(&mut self) -> IoBuffers<'_> {
        self.pieces.clear();
        IoBuffers {
            pieces: &mut self.pieces,
            len: 0,
            _memory: PhantomData,
        }
    }
}

/// The buffers of one read or write, in request order.
///
/// Invariant: every piece is valid for reads and writes of its length for
/// `'a` (the constructors only take values that guarantee it). Other users
/// of the memory (a guest) may change it concurrently, so it is only ever
/// accessed through volatile copies or system calls.
pub struct IoBuffers<'a> {
    pieces: &'a mut Vec<Piece>,
    len: u64,
    _memory: PhantomData<&'a mut [u8]>,
}

impl<'a> IoBuffers<'a> {
    /// Appends a slice of (guest) memory. The slice's dirty bitmap is not
    /// touched: whoever maps memory the device will write marks it.
    pub fn push<B: BitmapSlice>(&mut self, slice: VolatileSlice<'a, B>) {
        if slice.is_empty() {
            return;
        }
        let addr = slice.ptr_guard_mut().as_ptr() as usize;
        self.pieces.push(Piece {
            addr,
            len: slice.len(),
        });
        self.len += slice.len() as u64;
    }

    /// Appends a byte buffer of ours.
    pub fn push_bytes(&mut self, bytes: &'a mut [u8]) {
        self.push(VolatileSlice::from(bytes));
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces.
    pub fn count(&self) -> usize {
        self.pieces.len()
    }

    /// Drops every piece (the storage stays allocated).
    pub fn clear(&mut self) {
        self.pieces.clear();
        self.len = 0;
    }

    /// The pieces covering bytes `[start, start + len)` of the buffers
    /// (fewer when the buffers are shorter). Nothing is copied.
    pub(crate) fn range(&self, start: u64, len: u64) -> Range<'_> {
        Range {
            pieces: self.pieces.iter(),
            skip: start,
            want: len,
        }
    }

    /// The pieces covering bytes `[start, start + len)` as volatile
    /// slices.
    fn volatile_range(&self, start: u64, len: u64) -> impl Iterator<Item = VolatileSlice<'_, ()>> {
        self.range(start, len).map(|p| {
            // SAFETY: a range piece lies inside a piece of these buffers,
            // valid for reads and writes of its length for `'a` (the
            // invariant), which outlives the `'_` borrow; its other users
            // access it through volatile accesses too.
            unsafe { VolatileSlice::new(p.addr as *mut u8, p.len) }
        })
    }

    /// Copies bytes `[start, start + dst.len())` of the buffers into `dst`
    /// (what lies past their end is left alone).
    pub(crate) fn copy_out(&self, start: u64, dst: &mut [u8]) {
        let mut at = 0;
        for s in self.volatile_range(start, dst.len() as u64) {
            at += s.copy_to(&mut dst[at..]);
        }
    }

    /// Copies `src` into bytes `[start, start + src.len())` of the buffers
    /// (what lies past their end is not copied).
    pub(crate) fn copy_in(&self, start: u64, src: &[u8]) {
        let mut at = 0;
        for s in self.volatile_range(start, src.len() as u64) {
            s.copy_from(&src[at..at + s.len()]);
            at += s.len();
        }
    }

    /// The pieces as volatile slices, for copying with ordinary code
    /// (test doubles, small transfers).
    pub fn slices(&self) -> impl Iterator<Item = VolatileSlice<'_, ()>> + '_ {
        self.pieces.iter().map(|p| {
            // SAFETY: by the invariant of `IoBuffers`, the piece is valid
            // for reads and writes of `p.len` bytes for `'a`, which
            // outlives the `'_` borrow the slice is tied to; its other
            // users access it through volatile accesses too.
            unsafe { VolatileSlice::new(p.addr as *mut u8, p.len) }
        })
    }
}

/// Pieces of a byte range of an [`IoBuffers`] (see [`IoBuffers::range`]).
#[derive(Clone)]
pub(crate) struct Range<'b> {
    pieces: std::slice::Iter<'b, Piece>,
    skip: u64,
    want: u64,
}

impl Iterator for Range<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        while self.want > 0 {
            let p = self.pieces.next()?;
            let plen = p.len as u64;
            if self.skip >= plen {
                self.skip -= plen;
                continue;
            }
            let take = (plen - self.skip).min(self.want);
            // In bounds: `skip < plen` and `take <= plen - skip`.
            let piece = Piece {
                addr: p.addr + self.skip as usize,
                len: take as usize,
            };
            self.want -= take;
            self.skip = 0;
            return Some(piece);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_asked_bytes_without_copying() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let (pa, pb) = (a.as_ptr() as usize, b.as_ptr() as usize);
        let mut storage = BufferStorage::default();
        let mut bufs = storage.start();
        bufs.push_bytes(&mut a);
        bufs.push_bytes(&mut []);
        bufs.push_bytes(&mut b);
        assert_eq!((bufs.len(), bufs.count()), (30, 2));
        let got: Vec<_> = bufs.range(5, 10).map(|p| (p.addr, p.len)).collect();
        assert_eq!(got, [(pa + 5, 5), (pb, 5)]);
        let got: Vec<_> = bufs.range(12, 18).map(|p| (p.addr, p.len)).collect();
        assert_eq!(got, [(pb + 2, 18)]);
        assert_eq!(bufs.range(3, 0).count(), 0);
        // Past the end: only what exists.
        assert_eq!(bufs.range(25, 100).map(|p| p.len).sum::<usize>(), 5);
    }

    #[test]
    fn slices_read_and_write_the_pushed_memory() {
        let mut a = [1u8; 4];
        let mut b = [2u8; 3];
        let mut storage = BufferStorage::default();
        {
            let mut bufs = storage.start();
            bufs.push_bytes(&mut a);
            bufs.push_bytes(&mut b);
            for (i, s) in bufs.slices().enumerate() {
                s.copy_from(&vec![9 + i as u8; s.len()]);
            }
        }
        assert_eq!((a, b), ([9; 4], [10; 3]));
        // A new start begins empty.
        assert!(storage.start().is_empty());
    }
}
