//! A virtio-blk descriptor chain in guest memory (virtio 1.3, 2.7.5 and
//! 5.2.6): walking the descriptor table ([`DescWalk`]), splitting the chain
//! into its two byte streams ([`Chain::gather`]), and reading, writing and
//! zeroing those streams in guest memory ([`Chain::read`], [`Chain::write`],
//! [`Chain::zero`], [`Chain::ranges`]).
//!
//! A request is two byte streams: what the driver wrote (device-readable
//! descriptors: the 16-byte header, then data-out) and what the device
//! writes (device-writable descriptors: data-in, then the status byte as the
//! very last byte). With VIRTIO_F_VERSION_1 the driver may split these
//! streams across descriptors any way it likes, so nothing here assumes one
//! descriptor per part. What the streams mean is [`super::request`]'s job.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::config_space::{MAX_CHAIN_DESCRIPTORS, MAX_TRANSFER};
use crate::controller::target::{DmaAccess, DmaWindows};

/// Descriptors walked before a chain is declared endless. The queue's own
/// chain iterator is bounded too; this bounds any other descriptor source.
const WALK_LIMIT: usize = 1 << 17;

/// Longest stream of any chain: the largest transfer plus room for the
/// header, the status byte and an admin command. A longer chain is refused
/// with its status byte alone; nothing else of it is read or written.
const STREAM_LIMIT: u64 = MAX_TRANSFER + 4096;

/// The descriptors of one split-ring chain, read from guest memory:
/// direct ones from the queue's table, then at most one indirect table.
///
/// The queue library's own chain iterator ends a chain silently once it
/// passes 2^32 bytes, which would make the device take a data byte for the
/// status byte; this walk has no such limit, so the last descriptor is
/// always the driver's. It ends after as many descriptors as the table
/// holds; a chain still pointing on then (a loop, a bad index, unreadable
/// memory) ends with a descriptor whose NEXT flag is set, which
/// [`Chain::gather`] treats as a chain without an end.
pub struct DescWalk<'m, 'w, M> {
    mem: &'m M,
    /// In enforced DMA mode, the windows an indirect table must lie in to
    /// be read; one outside them is not followed (see [`DescWalk::within`]).
    windows: Option<&'w DmaWindows>,
    table: u64,
    entries: u32,
    next: Option<u32>,
    indirect: bool,
    ttl: u32,
}

impl<'m, 'w, M: GuestMemoryBackend> DescWalk<'m, 'w, M> {
    /// The chain whose head is `head` in the descriptor table at `table`
    /// of a queue of `size` entries.
    pub fn new(mem: &'m M, table: u64, size: u16, head: u16) -> Self {
        DescWalk {
            mem,
            windows: None,
            table,
            entries: u32::from(size),
            next: Some(u32::from(head)),
            indirect: false,
            ttl: u32::from(size),
        }
    }

    /// Reads an indirect table only when it lies inside `windows` (when
    /// given): one outside them ends the walk with the indirect descriptor
    /// itself, whose buffer the DMA check then refuses, so not a byte of it
    /// is read.
    pub fn within(mut self, windows: Option<&'w DmaWindows>) -> Self {
        self.windows = windows;
        self
    }
}

impl<M: GuestMemoryBackend> Iterator for DescWalk<'_, '_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        let index = self.next.take()?;
        if index >= self.entries || self.ttl == 0 {
            return None;
        }
        self.ttl -= 1;
        let at = self.table.checked_add(u64::from(index) * 16)?;
        let desc: Descriptor = self.mem.read_obj(GuestAddress(at)).ok()?;
        if desc.refers_to_indirect_table() {
            let len = desc.len();
            let outside = self
                .windows
                .is_some_and(|w| !w.permits(desc.addr().0, u64::from(len), DmaAccess::Read));
            // One level only, a whole number of descriptors (virtio 1.3,
            // 2.7.5.3.1), inside the DMA windows when they are enforced.
            #[allow(clippy::manual_is_multiple_of)]
            if self.indirect || len == 0 || len % 16 != 0 || outside {
                return Some(desc);
            }
            self.indirect = true;
            self.table = desc.addr().0;
            self.entries = len / 16;
            self.ttl = self.entries;
            self.next = Some(0);
            return self.next();
        }
        if desc.has_next() {
            self.next = Some(u32::from(desc.next()));
        }
        Some(desc)
    }
}

/// One guest-memory buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// Which of a chain's two byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Device-readable: header, then data-out.
    Readable,
    /// Device-writable: data-in, then the status byte.
    Writable,
}

/// A descriptor chain split into its readable and writable streams.
///
/// Kept per queue and reused, so parsing does not allocate once the vectors
/// have grown to the largest chain seen.
#[derive(Debug, Default)]
pub struct Chain {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
    /// Non-empty descriptors walked, stored or not.
    descriptors: usize,
    /// Guest address of the status byte: the last byte of the last
    /// non-empty device-writable descriptor, if guest memory backs it.
    status: Option<GuestAddress>,
    /// The first thing found wrong with the chain's shape.
    defect: Option<&'static str>,
}

impl Chain {
    pub fn new() -> Chain {
        Chain {
            readable: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS),
            writable: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS),
            ..Chain::default()
        }
    }

    /// Walks `descs` and records the two streams. The walk continues past a
    /// defect so the status byte can still be found and an error reported.
    pub fn gather<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        descs: impl IntoIterator<Item = Descriptor>,
    ) {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.descriptors = 0;
        self.status = None;
        self.defect = None;
        let mut last_writable: Option<Segment> = None;
        let mut count = 0usize;
        let mut region = RegionHint::default();
        let mut open_end = false;
        for desc in descs {
            count += 1;
            if count > WALK_LIMIT {
                // No end in sight: the status byte cannot be located.
                open_end = true;
                break;
            }
            // Still set on the last descriptor only if the walk was cut
            // short, or for an indirect descriptor that could not be
            // followed.
            open_end = desc.has_next() || desc.refers_to_indirect_table();
            if desc.len() == 0 {
                continue;
            }
            self.descriptors += 1;
            let seg = Segment {
                addr: desc.addr().0,
                len: desc.len(),
            };
            let in_memory = region.check(mem, seg.addr, u64::from(seg.len));
            if !in_memory {
                self.note("buffer outside guest memory");
            }
            let stored = self.readable.len() + self.writable.len();
            if stored >= MAX_CHAIN_DESCRIPTORS {
                self.note("too many descriptors");
            }
            if desc.is_write_only() {
                self.writable_len += u64::from(seg.len);
                last_writable = Some(seg);
                if stored < MAX_CHAIN_DESCRIPTORS {
                    self.writable.push(seg);
                }
            } else {
                if last_writable.is_some() {
                    self.note("device-readable buffer after a device-writable one");
                }
                self.readable_len += u64::from(seg.len);
                if stored < MAX_CHAIN_DESCRIPTORS {
                    self.readable.push(seg);
                }
            }
        }
        if open_end {
            // The end, and with it the status byte, cannot be located.
            last_writable = None;
            self.note("descriptor chain does not end");
        }
        self.status = last_writable.and_then(|seg| {
            let addr = seg.addr.checked_add(u64::from(seg.len) - 1)?;
            region.check(mem, addr, 1).then_some(GuestAddress(addr))
        });
    }

    fn note(&mut self, defect: &'static str) {
        self.defect.get_or_insert(defect);
    }

    /// The first thing found wrong with the chain's shape, if any.
    pub fn defect(&self) -> Option<&'static str> {
        self.defect
    }

    /// Non-empty descriptors walked, stored or not.
    pub fn descriptors(&self) -> usize {
        self.descriptors
    }

    /// Where the status byte goes, if the chain has a usable one.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        self.status
    }

    /// Length of a stream in bytes.
    pub fn len(&self, stream: Stream) -> u64 {
        match stream {
            Stream::Readable => self.readable_len,
            Stream::Writable => self.writable_len,
        }
    }

    /// Whether a stream is longer than any request may be: the device
    /// then writes nothing but the status byte.
    pub fn oversized(&self) -> bool {
        self.readable_len > STREAM_LIMIT || self.writable_len > STREAM_LIMIT
    }

    /// Bytes of data-in: the writable stream without the status byte.
    pub fn data_in_len(&self) -> u64 {
        self.writable_len.saturating_sub(1)
    }

    /// The stored buffers of `stream`, in chain order.
    pub fn segments(&self, stream: Stream) -> &[Segment] {
        match stream {
            Stream::Readable => &self.readable,
            Stream::Writable => &self.writable,
        }
    }

    /// The guest ranges covering `len` bytes of `stream` from `offset`.
    /// Yields fewer bytes than asked when the stream is shorter.
    pub fn ranges(&self, stream: Stream, offset: u64, len: u64) -> Ranges<'_> {
        Ranges {
            segs: self.segments(stream).iter(),
            skip: offset,
            left: len,
        }
    }

    /// Copies `buf.len()` bytes of `stream` from `offset` out of guest
    /// memory. False when the stream is too short or memory is missing.
    pub fn read<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        stream: Stream,
        offset: u64,
        buf: &mut [u8],
    ) -> bool {
        let mut done = 0usize;
        for (addr, n) in self.ranges(stream, offset, buf.len() as u64) {
            let Some(dst) = buf.get_mut(done..done + n) else {
                return false;
            };
            if mem.read_slice(dst, addr).is_err() {
                return false;
            }
            done += n;
        }
        done == buf.len()
    }

    /// Copies `buf` into `stream` at `offset`. False when it does not fit or
    /// memory is missing.
    pub fn write<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        stream: Stream,
        offset: u64,
        buf: &[u8],
    ) -> bool {
        let mut done = 0usize;
        for (addr, n) in self.ranges(stream, offset, buf.len() as u64) {
            let Some(src) = buf.get(done..done + n) else {
                return false;
            };
            if mem.write_slice(src, addr).is_err() {
                return false;
            }
            done += n;
        }
        done == buf.len()
    }

    /// Zeroes `len` bytes of `stream` from `offset`.
    pub fn zero<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        stream: Stream,
        offset: u64,
        len: u64,
    ) -> bool {
        static ZEROES: [u8; 4096] = [0; 4096];
        let mut done = 0u64;
        for (addr, n) in self.ranges(stream, offset, len) {
            let mut at = 0usize;
            while at < n {
                let chunk = (n - at).min(ZEROES.len());
                let Some(target) = addr.0.checked_add(at as u64) else {
                    return false;
                };
                if mem
                    .write_slice(&ZEROES[..chunk], GuestAddress(target))
                    .is_err()
                {
                    return false;
                }
                at += chunk;
            }
            done += n as u64;
        }
        done == len
    }
}

/// The guest-memory region a chain's last checked buffer lay in. A
/// chain's buffers almost always share one region, so checking them
/// against it spares a search of the memory map per descriptor. Only
/// valid while the memory map it came from is: one chain walk.
#[derive(Default)]
struct RegionHint {
    /// `[start, end)` of the region, in guest addresses.
    known: Option<(u64, u64)>,
}

impl RegionHint {
    /// Whether guest memory backs all of `[addr, addr + len)`.
    fn check<M: GuestMemoryBackend>(&mut self, mem: &M, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if let Some((start, stop)) = self.known {
            if addr >= start && end <= stop {
                return true;
            }
        }
        let Some(region) = mem.find_region(GuestAddress(addr)) else {
            return false;
        };
        let start = region.start_addr().0;
        let Some(stop) = start.checked_add(region.len()) else {
            return mem.check_range(GuestAddress(addr), len as usize);
        };
        self.known = Some((start, stop));
        // A buffer may run on into the next region when regions touch.
        end <= stop || mem.check_range(GuestAddress(addr), len as usize)
    }
}

/// Iterator over guest ranges of a stream window (see [`Chain::ranges`]).
pub struct Ranges<'a> {
    segs: std::slice::Iter<'a, Segment>,
    skip: u64,
    left: u64,
}

impl Iterator for Ranges<'_> {
    type Item = (GuestAddress, usize);

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            let seg = self.segs.next()?;
            let seg_len = u64::from(seg.len);
            if self.skip >= seg_len {
                self.skip -= seg_len;
                continue;
            }
            // Overflow only for buffers already refused as outside memory.
            let start = seg.addr.checked_add(self.skip)?;
            let n = (seg_len - self.skip).min(self.left);
            self.skip = 0;
            self.left -= n;
            return Some((GuestAddress(start), n as usize));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap<()>, table: u64, index: u16, desc: (u64, u32, u16, u16)) {
        let (addr, len, flags, next) = desc;
        let at = GuestAddress(table + u64::from(index) * 16);
        mem.write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    #[test]
    fn a_chain_past_4_gib_is_walked_to_its_real_status_byte() {
        let mem = memory();
        put(&mem, TABLE, 0, (0x8000, 16, NEXT, 1));
        // 65 writable descriptors of 64 MiB aliasing one buffer (the queue
        // library's iterator would stop after 63 of them), then the status.
        for i in 1..=65 {
            put(&mem, TABLE, i, (0x10000, 64 << 20, NEXT | WRITE, i + 1));
        }
        put(&mem, TABLE, 66, (0x9000, 1, WRITE, 0));
        let mut chain = Chain::new();
        chain.gather(&mem, DescWalk::new(&mem, TABLE, 128, 0));
        assert_eq!(chain.status_addr(), Some(GuestAddress(0x9000)));
        assert_eq!(chain.len(Stream::Writable), 65 * (64 << 20) + 1);
        assert!(chain.oversized());
    }

    #[test]
    fn a_looping_chain_has_no_status_byte() {
        let mem = memory();
        put(&mem, TABLE, 0, (0x8000, 16, NEXT, 1));
        put(&mem, TABLE, 1, (0x9000, 512, NEXT | WRITE, 0));
        let mut chain = Chain::new();
        let descs: Vec<_> = DescWalk::new(&mem, TABLE, 8, 0).collect();
        assert_eq!(
            descs.len(),
            8,
            "ends after as many descriptors as the table holds"
        );
        chain.gather(&mem, descs);
        assert_eq!(chain.status_addr(), None);
        // An index past the table ends the walk too.
        put(&mem, TABLE, 1, (0x9000, 512, NEXT | WRITE, 9));
        chain.gather(&mem, DescWalk::new(&mem, TABLE, 8, 0));
        assert_eq!(chain.status_addr(), None);
    }

    #[test]
    fn an_indirect_table_is_followed_once() {
        let mem = memory();
        let indirect = 0x4000;
        put(&mem, TABLE, 0, (indirect, 3 * 16, INDIRECT, 0));
        put(&mem, indirect, 0, (0x8000, 16, NEXT, 1));
        put(&mem, indirect, 1, (0xa000, 512, NEXT | WRITE, 2));
        put(&mem, indirect, 2, (0x9000, 1, WRITE, 0));
        let mut chain = Chain::new();
        chain.gather(&mem, DescWalk::new(&mem, TABLE, 8, 0));
        assert_eq!(chain.status_addr(), Some(GuestAddress(0x9000)));
        assert_eq!(chain.data_in_len(), 512);
        // A nested indirect table is not followed: no end, no status.
        put(&mem, indirect, 2, (indirect, 16, INDIRECT, 0));
        chain.gather(&mem, DescWalk::new(&mem, TABLE, 8, 0));
        assert_eq!(chain.status_addr(), None);
    }

    #[test]
    fn an_indirect_table_outside_the_dma_windows_is_not_read() {
        use vsic_abi::admin::{FLAG_DMA_READ, FLAG_DMA_WRITE};
        use vsic_abi::records::DmaWindow;
        let mem = memory();
        let indirect = 0x4000;
        put(&mem, TABLE, 0, (indirect, 3 * 16, INDIRECT, 0));
        put(&mem, indirect, 0, (0x8000, 16, NEXT, 1));
        put(&mem, indirect, 1, (0xa000, 512, NEXT | WRITE, 2));
        put(&mem, indirect, 2, (0x9000, 1, WRITE, 0));
        let everything_but = |hole: u64| {
            DmaWindows::default()
                .with(DmaWindow {
                    start: 0,
                    len: hole,
                    flags: FLAG_DMA_READ | FLAG_DMA_WRITE,
                })
                .unwrap()
                .with(DmaWindow {
                    start: hole + 0x1000,
                    len: 1 << 20,
                    flags: FLAG_DMA_READ | FLAG_DMA_WRITE,
                })
                .unwrap()
        };
        let covered = everything_but(0x20000);
        let descs: Vec<_> = DescWalk::new(&mem, TABLE, 8, 0)
            .within(Some(&covered))
            .collect();
        assert_eq!(descs.len(), 3, "a covered table is followed");
        let holed = everything_but(indirect);
        let descs: Vec<_> = DescWalk::new(&mem, TABLE, 8, 0)
            .within(Some(&holed))
            .collect();
        assert_eq!(descs.len(), 1, "the table outside the windows was read");
        assert!(descs[0].refers_to_indirect_table());
        let mut chain = Chain::new();
        chain.gather(&mem, descs);
        assert_eq!(chain.status_addr(), None);
        assert_eq!(
            chain.segments(Stream::Readable),
            [Segment {
                addr: indirect,
                len: 48
            }],
            "the table is the buffer the DMA check refuses"
        );
    }
}
