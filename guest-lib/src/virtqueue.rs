//! The split virtqueue (virtio 1.3, 2.7), driver side.
//!
//! The rings live in DMA memory shared with the device. Everything the
//! driver needs to stay consistent (free list, chain lengths, its own ring
//! indices) is kept in host-only shadow state, so a misbehaving device can
//! at worst complete the wrong request, never corrupt the free list or make
//! the driver read outside the rings.

use std::sync::atomic::{fence, AtomicU16, Ordering};

use log::warn;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

use crate::dma::DmaBuffer;
use crate::error::Error;
use crate::transport::QueueAddrs;

/// Largest queue size of a split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESC_LEN: usize = 16;
const USED_ELEM_LEN: usize = 8;
/// Alignment of the used ring; a cache line keeps the driver-written and
/// device-written parts apart.
const USED_ALIGN: usize = 64;

/// Byte offsets of the three parts of a ring block of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub avail: usize,
    pub used: usize,
    pub total: usize,
}

impl RingLayout {
    pub fn new(size: u16) -> RingLayout {
        let n = size as usize;
        let avail = DESC_LEN * n;
        // flags, idx, ring[n], used_event
        let avail_end = avail + 4 + 2 * n + 2;
        let used = avail_end.next_multiple_of(USED_ALIGN);
        // flags, idx, ring[n], avail_event
        let total = used + 4 + USED_ELEM_LEN * n + 2;
        RingLayout { avail, used, total }
    }
}

/// True when an event index says the other side wants a notification:
/// `event` lies in the window `[old, new)` of entries just published.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub iova: u64,
    pub len: u32,
    /// The device writes this buffer (otherwise it reads it).
    pub device_writes: bool,
}

/// A used-ring entry: which chain came back and how many bytes the device
/// says it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// Driver side of one split virtqueue.
pub struct SplitQueue {
    mem: DmaBuffer,
    size: u16,
    layout: RingLayout,
    event_idx: bool,
    /// Shadow descriptor links: the free list and in-flight chains.
    next: Vec<u16>,
    /// Length of the chain headed by each descriptor; 0 = not in flight.
    chain_len: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// Next avail index to fill, and the one last published to the device.
    avail_idx: u16,
    published_idx: u16,
    /// Next used index to consume.
    last_used: u16,
}

// SAFETY: the ring memory belongs to `mem`, which this queue owns; the raw
// pointers derived from it are only used through `&mut self` or atomics.
unsafe impl Send for SplitQueue {}

impl SplitQueue {
    /// Sets up an empty queue in `mem`, which must hold
    /// `RingLayout::new(size).total` bytes and be 16-byte aligned.
    pub fn new(mut mem: DmaBuffer, size: u16, event_idx: bool) -> Result<SplitQueue, Error> {
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "queue size {size} must be a power of two up to {MAX_QUEUE_SIZE}"
            )));
        }
        let layout = RingLayout::new(size);
        if mem.len() < layout.total || mem.iova() & 15 != 0 {
            return Err(Error::InvalidArgument(
                "ring memory too small or misaligned".into(),
            ));
        }
        mem.as_mut_slice().fill(0);
        let n = size as usize;
        // Free list: 0 -> 1 -> ... -> n-1 (the last link is never followed).
        let next = (1..=n).map(|i| (i % n) as u16).collect();
        Ok(SplitQueue {
            mem,
            size,
            layout,
            event_idx,
            next,
            chain_len: vec![0; n],
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Number of chains handed to the device and not yet consumed back.
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&l| l != 0).count()
    }

    /// Where the device finds this queue.
    pub fn addrs(&self) -> QueueAddrs {
        let base = self.mem.iova();
        QueueAddrs {
            size: self.size,
            desc: base,
            avail: base + self.layout.avail as u64,
            used: base + self.layout.used as u64,
        }
    }

    /// The descriptor index the next chain will start at. Lets callers
    /// place per-chain data (request header, status) before adding it.
    pub fn next_head(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    /// Writes a chain and queues it in the avail ring; the device sees it
    /// after [`Self::publish`]. Returns the head descriptor index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        if bufs.is_empty() {
            return Err(Error::InvalidArgument("empty descriptor chain".into()));
        }
        if bufs.len() > self.num_free as usize {
            return Err(if bufs.len() > self.size as usize {
                Error::TooLarge {
                    needed: bufs.len(),
                    queue_size: self.size,
                }
            } else {
                Error::QueueFull
            });
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, buf) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = self.next[idx as usize];
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(idx, buf.iova, buf.len, flags, if last { 0 } else { next });
            if last {
                self.free_head = next;
            } else {
                idx = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        self.chain_len[head as usize] = bufs.len() as u16;
        let slot = self.avail_idx % self.size;
        self.write_u16(self.layout.avail + 4 + 2 * slot as usize, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Makes every added chain visible to the device. Returns whether the
    /// device asked to be notified about them.
    pub fn publish(&mut self) -> bool {
        let old = self.published_idx;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        self.atomic_u16(self.layout.avail + 2)
            .store(new, Ordering::Release);
        self.published_idx = new;
        // The index store must be visible before we read the device's
        // suppression state, or both sides may decide not to notify.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event =
                self.read_u16(self.layout.used + 4 + USED_ELEM_LEN * self.size as usize);
            need_event(avail_event, new, old)
        } else {
            self.read_u16(self.layout.used) & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// Whether the device has returned chains not yet consumed.
    pub fn has_used(&self) -> bool {
        self.device_used_idx() != self.last_used
    }

    /// Consumes one used entry and frees its descriptors. Entries naming a
    /// chain that is not in flight are device bugs: logged and skipped.
    pub fn pop_used(&mut self) -> Option<Used> {
        loop {
            let used_idx = self.device_used_idx();
            if used_idx == self.last_used {
                return None;
            }
            if used_idx.wrapping_sub(self.last_used) > self.size {
                warn!(
                    "device used index {used_idx} runs ahead of {}",
                    self.last_used
                );
            }
            let slot = (self.last_used % self.size) as usize;
            let at = self.layout.used + 4 + USED_ELEM_LEN * slot;
            let id = self.read_u32(at);
            let len = self.read_u32(at + 4);
            self.last_used = self.last_used.wrapping_add(1);
            let chain = usize::try_from(id)
                .ok()
                .and_then(|i| self.chain_len.get(i).copied());
            match chain {
                Some(n) if n > 0 => {
                    let head = id as u16;
                    self.free_chain(head, n);
                    return Some(Used { head, len });
                }
                _ => warn!("device returned descriptor {id}, which is not in flight; ignored"),
            }
        }
    }

    /// Asks the device to signal the interrupt for the next used entry.
    /// Returns whether entries are already waiting (then no signal may come).
    pub fn enable_interrupts(&mut self) -> bool {
        self.enable_interrupts_after(1)
    }

    /// Used entries the device has returned that we have not consumed.
    pub fn used_pending(&self) -> u16 {
        self.device_used_idx().wrapping_sub(self.last_used)
    }

    /// `k` clamped to what can still come back: at least 1, at most the
    /// chains added and not yet consumed (so a wait for them never waits
    /// for entries that cannot arrive).
    pub fn reachable(&self, k: u16) -> u16 {
        k.min(self.avail_idx.wrapping_sub(self.last_used)).max(1)
    }

    /// Asks the device to signal the interrupt only once `k` used entries
    /// beyond those consumed are there ([`Self::reachable`] of `k`): with
    /// event indices the requested event is the `k`-th entry, so entries
    /// before it come back without an interrupt; without them the device
    /// signals every entry. Returns whether the `k` entries are already
    /// there (then no signal may come).
    pub fn enable_interrupts_after(&mut self, k: u16) -> bool {
        let k = self.reachable(k);
        if self.event_idx {
            self.write_u16(
                self.layout.avail + 4 + 2 * self.size as usize,
                self.last_used.wrapping_add(k - 1),
            );
        } else {
            self.write_u16(self.layout.avail, 0);
        }
        fence(Ordering::SeqCst);
        self.used_pending() >= k
    }

    /// Asks the device not to signal interrupts (polling mode). With event
    /// indices this keeps the requested event just behind what we consumed,
    /// which the device never crosses; call again after consuming entries.
    pub fn disable_interrupts(&mut self) {
        if self.event_idx {
            let event = self.last_used.wrapping_sub(1);
            self.write_u16(self.layout.avail + 4 + 2 * self.size as usize, event);
        } else {
            self.write_u16(self.layout.avail, VRING_AVAIL_F_NO_INTERRUPT as u16);
        }
    }

    fn free_chain(&mut self, head: u16, len: u16) {
        let mut tail = head;
        for _ in 1..len {
            tail = self.next[tail as usize];
        }
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.num_free += len;
        self.chain_len[head as usize] = 0;
    }

    fn device_used_idx(&self) -> u16 {
        self.atomic_u16(self.layout.used + 2)
            .load(Ordering::Acquire)
    }

    fn write_desc(&mut self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC_LEN * idx as usize;
        let p = self.ptr(at);
        // SAFETY: idx < size, so the 16-byte descriptor is inside the ring
        // block; descriptors are 16-byte aligned.
        unsafe {
            std::ptr::write_volatile(p.cast::<u64>(), addr.to_le());
            std::ptr::write_volatile(p.add(8).cast::<u32>(), len.to_le());
            std::ptr::write_volatile(p.add(12).cast::<u16>(), flags.to_le());
            std::ptr::write_volatile(p.add(14).cast::<u16>(), next.to_le());
        }
    }

    fn ptr(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset < self.layout.total);
        // SAFETY: every caller passes an offset inside the ring layout,
        // which fits in `mem` (checked in `new`).
        unsafe { self.mem.as_ptr().add(offset) }
    }

    fn atomic_u16(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: the offset is 2-aligned inside the ring block, which lives
        // as long as self; the device accesses it atomically too.
        unsafe { AtomicU16::from_ptr(self.ptr(offset).cast()) }
    }

    fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: aligned, inside the ring block.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr(offset).cast::<u16>()) })
    }

    fn write_u16(&mut self, offset: usize, v: u16) {
        // SAFETY: aligned, inside the ring block.
        unsafe { std::ptr::write_volatile(self.ptr(offset).cast::<u16>(), v.to_le()) }
    }

    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: aligned (used ring is 64-aligned, entries 8 bytes), inside.
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr(offset).cast::<u32>()) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dma::{DmaPool, DmaRegion};
    use std::sync::Arc;

    /// A device model that reads the rings straight from memory.
    pub(crate) struct FakeDevice {
        pub pool: Arc<DmaPool>,
        pub addrs: QueueAddrs,
        pub last_avail: u16,
        pub used_idx: u16,
        pub event_idx: bool,
    }

    impl FakeDevice {
        fn at(&self, iova: u64) -> *mut u8 {
            self.pool.region().host_at(iova, 1).unwrap()
        }
        // SAFETY (rd16, wr16, wr32): `at` returns a pointer into the DMA
        // pool's mapping, checked by host_at; ring fields are naturally
        // aligned in it, and the device side is volatile as a device is.
        fn rd16(&self, iova: u64) -> u16 {
            // SAFETY: see above.
            unsafe { std::ptr::read_volatile(self.at(iova).cast::<u16>()) }
        }
        fn wr16(&self, iova: u64, v: u16) {
            // SAFETY: see above.
            unsafe { std::ptr::write_volatile(self.at(iova).cast::<u16>(), v) }
        }
        fn wr32(&self, iova: u64, v: u32) {
            // SAFETY: see above.
            unsafe { std::ptr::write_volatile(self.at(iova).cast::<u32>(), v) }
        }

        /// Takes the next available chain: (head, its buffers).
        pub fn pop_avail(&mut self) -> Option<(u16, Vec<Buf>)> {
            let n = self.addrs.size;
            let avail_idx = self.rd16(self.addrs.avail + 2);
            if avail_idx == self.last_avail {
                return None;
            }
            let head = self.rd16(self.addrs.avail + 4 + 2 * (self.last_avail % n) as u64);
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut bufs = Vec::new();
            let mut idx = head;
            loop {
                let d = self.addrs.desc + 16 * idx as u64;
                let p = self.at(d);
                // SAFETY: a 16-byte descriptor inside the mapped, 16-byte
                // aligned descriptor table (host_at checked the start).
                let (addr, len, flags, next) = unsafe {
                    (
                        std::ptr::read_volatile(p.cast::<u64>()),
                        std::ptr::read_volatile(p.add(8).cast::<u32>()),
                        std::ptr::read_volatile(p.add(12).cast::<u16>()),
                        std::ptr::read_volatile(p.add(14).cast::<u16>()),
                    )
                };
                bufs.push(Buf {
                    iova: addr,
                    len,
                    device_writes: flags & 2 != 0,
                });
                assert!(bufs.len() <= n as usize, "descriptor loop");
                if flags & 1 == 0 {
                    break;
                }
                idx = next;
            }
            if self.event_idx {
                // Ask for a kick on the very next entry.
                self.wr16(self.addrs.used + 4 + 8 * n as u64, self.last_avail);
            }
            Some((head, bufs))
        }

        /// Returns a chain; reports whether the driver wants an interrupt.
        pub fn push_used(&mut self, head: u16, len: u32) -> bool {
            let n = self.addrs.size;
            let at = self.addrs.used + 4 + 8 * (self.used_idx % n) as u64;
            self.wr32(at, head as u32);
            self.wr32(at + 4, len);
            let old = self.used_idx;
            self.used_idx = self.used_idx.wrapping_add(1);
            self.wr16(self.addrs.used + 2, self.used_idx);
            if self.event_idx {
                let event = self.rd16(self.addrs.avail + 4 + 2 * n as u64);
                need_event(event, self.used_idx, old)
            } else {
                self.rd16(self.addrs.avail) & 1 == 0
            }
        }
    }

    pub(crate) fn setup(size: u16, event_idx: bool) -> (SplitQueue, FakeDevice) {
        let pool = DmaPool::new(Arc::new(DmaRegion::anonymous(1 << 20, 1 << 30).unwrap()));
        let mem = pool.alloc(RingLayout::new(size).total, 4096).unwrap();
        let q = SplitQueue::new(mem, size, event_idx).unwrap();
        let dev = FakeDevice {
            pool,
            addrs: q.addrs(),
            last_avail: 0,
            used_idx: 0,
            event_idx,
        };
        (q, dev)
    }

    fn buf(iova: u64, len: u32, w: bool) -> Buf {
        Buf {
            iova,
            len,
            device_writes: w,
        }
    }

    #[test]
    fn layout_is_aligned_and_sized() {
        let l = RingLayout::new(256);
        assert_eq!(l.avail, 4096);
        assert_eq!(l.used % USED_ALIGN, 0);
        assert!(l.used >= l.avail + 6 + 2 * 256);
        assert_eq!(l.total, l.used + 6 + 8 * 256);
    }

    #[test]
    fn rejects_bad_sizes() {
        let pool = DmaPool::new(Arc::new(DmaRegion::anonymous(1 << 20, 1 << 30).unwrap()));
        for size in [0u16, 3, 100] {
            let mem = pool.alloc(4096, 4096).unwrap();
            assert!(SplitQueue::new(mem, size, false).is_err(), "size {size}");
        }
        let small = pool.alloc(64, 64).unwrap();
        assert!(SplitQueue::new(small, 256, false).is_err());
    }

    #[test]
    fn chains_reach_the_device_intact() {
        let (mut q, mut dev) = setup(8, false);
        let chain = [
            buf(0x1000, 16, false),
            buf(0x2000, 4096, true),
            buf(0x3000, 1, true),
        ];
        let head = q.add_chain(&chain).unwrap();
        assert!(dev.pop_avail().is_none(), "visible before publish");
        assert!(q.publish());
        let (h, bufs) = dev.pop_avail().unwrap();
        assert_eq!(h, head);
        assert_eq!(bufs, chain);
        assert_eq!(q.num_free(), 5);
        dev.push_used(h, 4097);
        assert_eq!(q.pop_used(), Some(Used { head, len: 4097 }));
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.pop_used(), None);
    }

    #[test]
    fn free_list_survives_out_of_order_completion_and_exhaustion() {
        let (mut q, mut dev) = setup(8, false);
        let a = q.add_chain(&[buf(1, 1, false); 3]).unwrap();
        let b = q.add_chain(&[buf(2, 1, false); 2]).unwrap();
        let c = q.add_chain(&[buf(3, 1, false); 3]).unwrap();
        assert_eq!(q.num_free(), 0);
        assert!(matches!(
            q.add_chain(&[buf(4, 1, false)]),
            Err(Error::QueueFull)
        ));
        assert!(matches!(
            q.add_chain(&[buf(4, 1, false); 9]),
            Err(Error::TooLarge { .. })
        ));
        assert!(q.next_head().is_none());
        q.publish();
        for _ in 0..3 {
            dev.pop_avail().unwrap();
        }
        // Complete the middle chain first, then reuse its descriptors.
        dev.push_used(b, 0);
        assert_eq!(q.pop_used().unwrap().head, b);
        assert_eq!(q.num_free(), 2);
        let d = q.add_chain(&[buf(5, 1, false); 2]).unwrap();
        q.publish();
        let (_, bufs) = dev.pop_avail().unwrap();
        assert_eq!(bufs, vec![buf(5, 1, false); 2]);
        for h in [c, a, d] {
            dev.push_used(h, 0);
        }
        let order: Vec<u16> = std::iter::from_fn(|| q.pop_used().map(|u| u.head)).collect();
        assert_eq!(order, vec![c, a, d]);
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.in_flight(), 0);
        // The free list still covers all 8 descriptors exactly once.
        let all = q.add_chain(&[buf(6, 1, false); 8]).unwrap();
        q.publish();
        let (h, bufs) = dev.pop_avail().unwrap();
        assert_eq!((h, bufs.len()), (all, 8));
    }

    #[test]
    fn indices_wrap_past_u16() {
        let (mut q, mut dev) = setup(4, false);
        for i in 0..70_000u32 {
            let head = q
                .add_chain(&[buf(i as u64, 512, true), buf(7, 1, true)])
                .unwrap();
            q.publish();
            let (h, bufs) = dev.pop_avail().unwrap();
            assert_eq!((h, bufs[0].iova), (head, i as u64));
            dev.push_used(h, i);
            assert_eq!(q.pop_used(), Some(Used { head, len: i }));
        }
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn bogus_used_entries_are_skipped() {
        let (mut q, mut dev) = setup(4, false);
        let head = q.add_chain(&[buf(1, 1, true)]).unwrap();
        q.publish();
        dev.pop_avail().unwrap();
        dev.push_used(3, 0); // never submitted
        dev.push_used(999, 0); // out of range
        dev.push_used(head, 1);
        assert_eq!(q.pop_used(), Some(Used { head, len: 1 }));
        assert_eq!(q.pop_used(), None);
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn need_event_math() {
        // Event inside [old, new): notify.
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 8, 3));
        assert!(need_event(3, 8, 3));
        assert!(!need_event(8, 8, 3));
        assert!(!need_event(2, 8, 3));
        // Across the u16 wrap.
        assert!(need_event(65535, 2, 65534));
        assert!(need_event(0, 2, 65534));
        assert!(!need_event(65533, 2, 65534));
        assert!(!need_event(2, 2, 65534));
    }

    #[test]
    fn event_idx_suppresses_kicks_until_device_asks() {
        let (mut q, mut dev) = setup(8, true);
        // The device's avail_event starts at 0: the first publish notifies.
        q.add_chain(&[buf(1, 1, false)]).unwrap();
        assert!(q.publish());
        // The device has not consumed it, so avail_event is still 0: the
        // next entry (index 1) does not cross it.
        q.add_chain(&[buf(2, 1, false)]).unwrap();
        assert!(!q.publish());
        // Device catches up and asks for a kick at its next index (2).
        dev.pop_avail().unwrap();
        dev.pop_avail().unwrap();
        q.add_chain(&[buf(3, 1, false)]).unwrap();
        assert!(q.publish());
        assert!(!q.publish(), "nothing new, no kick");
    }

    #[test]
    fn used_flags_suppress_kicks_without_event_idx() {
        let (mut q, dev) = setup(8, false);
        q.add_chain(&[buf(1, 1, false)]).unwrap();
        assert!(q.publish());
        dev.wr16(dev.addrs.used, VRING_USED_F_NO_NOTIFY as u16);
        q.add_chain(&[buf(2, 1, false)]).unwrap();
        assert!(!q.publish());
    }

    #[test]
    fn an_interrupt_armed_for_k_entries_comes_with_the_kth() {
        let (mut q, mut dev) = setup(8, true);
        q.disable_interrupts();
        let heads: Vec<u16> = (0..3)
            .map(|i| q.add_chain(&[buf(i, 1, true)]).unwrap())
            .collect();
        q.publish();
        for _ in 0..3 {
            dev.pop_avail().unwrap();
        }
        assert!(!q.enable_interrupts_after(3), "nothing back yet");
        assert!(!dev.push_used(heads[0], 1), "first of three: no signal");
        assert!(!dev.push_used(heads[1], 1), "second of three: no signal");
        assert!(dev.push_used(heads[2], 1), "third of three: the signal");
        assert_eq!(q.used_pending(), 3);
        assert!(q.enable_interrupts_after(3), "all three are there");
        // More than can come back is clamped to what is in flight.
        for _ in 0..3 {
            q.pop_used().unwrap();
        }
        let h = q.add_chain(&[buf(9, 1, true)]).unwrap();
        q.publish();
        dev.pop_avail().unwrap();
        assert_eq!(q.reachable(5), 1);
        assert!(!q.enable_interrupts_after(5));
        assert!(dev.push_used(h, 1), "the one in flight signals");
    }

    #[test]
    fn interrupt_suppression_both_ways() {
        for event_idx in [false, true] {
            let (mut q, mut dev) = setup(8, event_idx);
            q.disable_interrupts();
            let mut heads = Vec::new();
            for i in 0..3 {
                heads.push(q.add_chain(&[buf(i, 1, true)]).unwrap());
            }
            q.publish();
            for _ in 0..3 {
                dev.pop_avail().unwrap();
            }
            assert!(
                !dev.push_used(heads[0], 1),
                "polling mode, event_idx={event_idx}"
            );
            q.pop_used().unwrap();
            q.disable_interrupts();
            assert!(
                !dev.push_used(heads[1], 1),
                "polling mode, event_idx={event_idx}"
            );
            q.pop_used().unwrap();
            assert!(!q.enable_interrupts(), "nothing pending");
            assert!(
                dev.push_used(heads[2], 1),
                "interrupt mode, event_idx={event_idx}"
            );
            assert!(q.has_used());
        }
    }
}
