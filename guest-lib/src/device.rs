//! One opened VSIC function: feature negotiation, its queues, request
//! submission and completion.
//!
//! Each queue has its own lock, so different queues can be driven from
//! different threads without contending. Completion callbacks run with no
//! lock held: a callback may submit new requests to the same queue.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
use vsic_abi::virtio::{
    config, DiscardSegment, REQ_HEADER_LEN, SECTOR_SIZE, VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

use crate::blk::{self, Limits, Part, Request, VsaHandle, VsaRange};
use crate::dma::{DmaBuffer, DmaPool, BUFFER_ALIGN};
use crate::error::{Error, IoStatus};
use crate::hugepage::DmaSource;
use crate::hybrid::{self, Found, HybridState};
use crate::transport::Transport;
use crate::virtqueue::{Buf, RingLayout, SplitQueue, MAX_QUEUE_SIZE};

/// How completions are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// The device signals each queue's interrupt eventfd; [`Device::wait`]
    /// sleeps on it. The interrupt is enabled by the waiter, for the
    /// completions it waits for ([`Device::wait_for`]), and off while the
    /// application submits and polls, so completions nobody sleeps on cost
    /// no interrupt; a queue whose eventfd the application took
    /// ([`Device::interrupt_fd`]) keeps it enabled after every poll.
    Interrupt,
    /// The device is asked not to signal; [`Device::wait`] spins on the
    /// used ring. Lowest latency, burns a core.
    Polling,
    /// [`Device::wait`] sleeps on a timer for part of the time the queue's
    /// completions usually take (not at all where the timer wakes too
    /// late), polls the used ring for a bounded time, then enables the
    /// queue's interrupt and sleeps on it; the times adapt per queue (see
    /// [`crate::hybrid`]). Close to polling's latency for less of its CPU.
    /// The waiting thread's timer slack is set to 1 µs.
    Hybrid,
}

/// How to open a function.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Queues to set up; `None` = every queue the device has.
    pub queues: Option<u16>,
    /// Bytes of DMA memory shared with the device (rings, headers and every
    /// buffer from [`Device::alloc_dma`]). A multiple of 4096.
    pub mem_size: usize,
    pub mode: CompletionMode,
    /// Descriptors per queue: a power of two; capped at the device's
    /// largest ring when it states one (virtio-pci does).
    pub queue_size: u16,
    /// Limit for synchronous calls (`read_at`, `raw_request`, ...) and for
    /// each setup message exchanged with the device; `None` waits forever.
    pub sync_timeout: Option<Duration>,
    /// Where VFIO DMA memory comes from: huge pages of our own (needs
    /// CAP_SYS_ADMIN), or memory provided by the control plane (then
    /// `mem_size` is ignored). vhost-user ignores it.
    pub dma: DmaSource,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            queues: None,
            mem_size: 64 << 20,
            mode: CompletionMode::Interrupt,
            queue_size: 256,
            sync_timeout: Some(Duration::from_secs(30)),
            dma: DmaSource::Allocate,
        }
    }
}

/// A finished application request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub user_data: u64,
    pub result: Result<(), IoStatus>,
}

/// The outcome of [`Device::raw_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The virtio status byte.
    pub status: u8,
    /// The device-writable buffers, one per entry of `in_lens`, full length.
    pub ins: Vec<Vec<u8>>,
    /// Bytes the device reports written (including the status byte).
    pub used_len: u32,
}

/// Features the driver understands.
fn driver_features() -> u64 {
    [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_RO,
    ]
    .iter()
    .fold(0, |acc, bit| acc | 1u64 << bit)
}

/// Per-descriptor scratch space in DMA memory: a request headed by
/// descriptor `d` keeps its header, inline discard segment and status byte
/// in slot `d`.
const SLOT_LEN: usize = 64;
const SLOT_SEGMENT: usize = REQ_HEADER_LEN;
const SLOT_STATUS: usize = SLOT_SEGMENT + DiscardSegment::LEN;
/// Written into the status byte before submission: a request the device
/// completes without writing a status reports this.
const STATUS_UNWRITTEN: u8 = 0xff;
const NO_REQUEST: u32 = u32::MAX;

/// Who waits for a request.
enum Owner {
    /// Completes through [`Device::poll`].
    App(u64),
    /// A synchronous call waits for this token.
    Sync(u64),
}

struct InFlight {
    owner: Owner,
    parts_left: usize,
    /// First failing status, or OK.
    status: u8,
    used_len: u32,
    /// Bounce memory of a synchronous call, kept until the device is done.
    bounce: Option<DmaBuffer>,
}

struct SyncDone {
    status: u8,
    used_len: u32,
    bounce: Option<DmaBuffer>,
}

/// Everything behind one queue's lock.
struct QueueState {
    vq: SplitQueue,
    slots: DmaBuffer,
    /// Request index of the chain headed by each descriptor.
    owner_of_head: Vec<u32>,
    requests: Vec<Option<InFlight>>,
    free_requests: Vec<u32>,
    /// Application completions found but not yet delivered.
    ready: VecDeque<Completion>,
    /// An empty buffer kept for the next swap with `ready`.
    spare: VecDeque<Completion>,
    sync_done: Vec<(u64, SyncDone)>,
    /// Synchronous calls that timed out; their completions are dropped.
    abandoned: HashSet<u64>,
    /// What hybrid waits on this queue learned.
    hybrid: HybridState,
    /// Interrupt mode with the eventfd in the application's own event
    /// loop ([`Device::interrupt_fd`]): re-armed after every harvest.
    eager_interrupts: bool,
}

impl QueueState {
    fn slot_ptr(&self, head: u16, offset: usize) -> *mut u8 {
        debug_assert!((head as usize + 1) * SLOT_LEN <= self.slots.len());
        // SAFETY: head < queue size and slots hold SLOT_LEN per descriptor.
        unsafe { self.slots.as_ptr().add(head as usize * SLOT_LEN + offset) }
    }

    fn slot_iova(&self, head: u16, offset: usize) -> u64 {
        self.slots.iova() + (head as usize * SLOT_LEN + offset) as u64
    }

    /// Moves every used entry to `ready` / `sync_done`, then re-arms (or
    /// keeps suppressed) the queue's interrupt.
    fn harvest(&mut self, mode: CompletionMode) {
        loop {
            while let Some(used) = self.vq.pop_used() {
                self.complete_part(used.head, used.len);
            }
            if mode == CompletionMode::Interrupt && self.eager_interrupts {
                // Re-arming and finding new entries means the device may
                // have skipped the signal for them: consume them now.
                if !self.vq.enable_interrupts() {
                    return;
                }
            } else {
                // The interrupt is on only while a waiter sleeps on it; that
                // waiter enables it (Device::wait_step).
                self.vq.disable_interrupts();
                return;
            }
        }
    }

    fn complete_part(&mut self, head: u16, used_len: u32) {
        // SAFETY: the status byte lies in this head's slot; the device is
        // done with it (the chain came back through the used ring).
        let status = unsafe { std::ptr::read_volatile(self.slot_ptr(head, SLOT_STATUS)) };
        let idx = std::mem::replace(&mut self.owner_of_head[head as usize], NO_REQUEST);
        let Some(req) = self.requests.get_mut(idx as usize).and_then(Option::as_mut) else {
            warn!("completion for descriptor {head} matches no request");
            return;
        };
        req.parts_left = req.parts_left.saturating_sub(1);
        req.used_len = req.used_len.saturating_add(used_len);
        if req.status == VIRTIO_BLK_S_OK {
            req.status = status;
        }
        if req.parts_left > 0 {
            return;
        }
        let Some(done) = self.requests.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.free_requests.push(idx);
        match done.owner {
            Owner::App(user_data) => self.ready.push_back(Completion {
                user_data,
                result: IoStatus::from_byte(done.status),
            }),
            Owner::Sync(token) => {
                if !self.abandoned.remove(&token) {
                    let result = SyncDone {
                        status: done.status,
                        used_len: done.used_len,
                        bounce: done.bounce,
                    };
                    self.sync_done.push((token, result));
                }
            }
        }
    }

    fn take_sync(&mut self, token: u64) -> Option<SyncDone> {
        let i = self.sync_done.iter().position(|(t, _)| *t == token)?;
        Some(self.sync_done.swap_remove(i).1)
    }

    /// Whether a wait for `k` completions is over: something already
    /// harvested waits to be polled, or `k` used entries are back (as many
    /// as can come back, [`SplitQueue::reachable`]).
    fn enough(&self, k: u16) -> bool {
        !self.ready.is_empty() || self.vq.used_pending() >= self.vq.reachable(k)
    }
}

/// One opened VSIC (or PF) function.
pub struct Device {
    transport: Box<dyn Transport>,
    pool: Arc<DmaPool>,
    queues: Vec<Mutex<QueueState>>,
    features: u64,
    limits: Limits,
    mode: CompletionMode,
    sync_timeout: Option<Duration>,
    next_token: AtomicU64,
}

impl Device {
    /// Drives a device over any transport: negotiates features and sets up
    /// and starts the queues.
    pub fn with_transport(
        mut transport: Box<dyn Transport>,
        opts: &OpenOptions,
    ) -> Result<Device, Error> {
        let offered = transport.device_features();
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1 (modern virtio)"));
        }
        let features = offered & driver_features();
        transport.set_driver_features(features)?;
        let has = |bit: u32| features & (1u64 << bit) != 0;

        let mut size = opts.queue_size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "queue size {size} must be a power of two from 1 to {MAX_QUEUE_SIZE}"
            )));
        }
        if let Some(max) = transport.max_queue_size().filter(|&m| m > 0) {
            // The size is a wish: a device with smaller rings (QEMU's
            // virtio-pci functions offer 128) gets rings of its maximum.
            if size > max {
                size = 1 << (15 - max.leading_zeros().min(15));
            }
        }

        let mut available = transport.max_queues().max(1);
        if has(VIRTIO_BLK_F_MQ) {
            let mut b = [0u8; 2];
            if transport
                .read_config(config::NUM_QUEUES as u32, &mut b)
                .is_ok()
            {
                let n = u16::from_le_bytes(b);
                if n > 0 {
                    available = available.min(n);
                }
            }
        } else {
            available = 1;
        }
        let count = opts.queues.unwrap_or(available);
        if count == 0 || count > available {
            return Err(Error::InvalidArgument(format!(
                "asked for {count} queue(s); the device has {available}"
            )));
        }

        let limits = read_limits(transport.as_ref(), features, size);
        let pool = DmaPool::new(Arc::clone(transport.dma_region()));
        let mut queues = Vec::with_capacity(count as usize);
        for index in 0..count {
            let ring = pool.alloc(RingLayout::new(size).total, BUFFER_ALIGN)?;
            let mut vq = SplitQueue::new(ring, size, has(VIRTIO_RING_F_EVENT_IDX))?;
            // Every mode starts with the interrupt off: a waiter enables it.
            vq.disable_interrupts();
            let slots = pool.alloc(size as usize * SLOT_LEN, SLOT_LEN)?;
            transport.setup_queue(index, &vq.addrs())?;
            queues.push(Mutex::new(QueueState {
                vq,
                slots,
                owner_of_head: vec![NO_REQUEST; size as usize],
                requests: Vec::new(),
                free_requests: Vec::new(),
                ready: VecDeque::with_capacity(size as usize),
                spare: VecDeque::with_capacity(size as usize),
                sync_done: Vec::new(),
                abandoned: HashSet::new(),
                hybrid: HybridState::new(),
                eager_interrupts: false,
            }));
        }
        transport.enable_queues(count)?;

        let device = Device {
            transport,
            pool,
            queues,
            features,
            limits,
            mode: opts.mode,
            sync_timeout: opts.sync_timeout,
            next_token: AtomicU64::new(1),
        };
        // A frontend may hold a configuration from before the device
        // started (QEMU ignores changes while a vhost-user device is
        // stopped); the VSIC device answers GET_ID once its frontend has
        // the current one (docs/device-spec.md, section 2). Identify it
        // now, so capacity() is current from the start. The answer itself
        // does not matter: a device without GET_ID is still usable.
        if let Err(e) = device.raw_request(
            0,
            vsic_abi::virtio::VIRTIO_BLK_T_GET_ID,
            0,
            &[],
            &[vsic_abi::virtio::SERIAL_LEN],
        ) {
            debug!("GET_ID after start: {e}");
        }
        Ok(device)
    }

    /// Number of queues opened.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The negotiated virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether the device refuses writes (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.has(VIRTIO_BLK_F_RO)
    }

    /// Whether a completed write is already durable: the device offers no
    /// VIRTIO_BLK_F_FLUSH (virtio 1.x, 5.2.5.2; `vsicd --cache
    /// write-through`), so [`Device::flush`] and a flush request complete
    /// at once without reaching it.
    pub fn write_through(&self) -> bool {
        !self.has(VIRTIO_BLK_F_FLUSH)
    }

    /// The per-request limits the device stated.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Size in bytes of what the device exposes at offset 0 (the slot-0
    /// VSA of a VSIC). Read from the device each call: it changes on
    /// attach, detach and resize.
    pub fn capacity(&self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.transport
            .read_config(config::CAPACITY as u32, &mut b)?;
        Ok(u64::from_le_bytes(b).saturating_mul(SECTOR_SIZE))
    }

    /// Allocates `len` bytes of page-aligned DMA memory from the region
    /// registered with the device.
    pub fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, Error> {
        self.pool.alloc(len, BUFFER_ALIGN)
    }

    /// Queues an application request; it completes once, through
    /// [`Device::poll`], with `user_data`. [`Error::QueueFull`] means: poll
    /// and retry. Nothing is queued when an error is returned.
    pub fn submit(&self, queue: u16, req: Request<'_>, user_data: u64) -> Result<(), Error> {
        if let Request::Flush = req {
            if !self.has(VIRTIO_BLK_F_FLUSH) {
                // Without FLUSH the device is write-through: nothing to do.
                let mut q = self.queue(queue)?;
                q.ready.push_back(Completion {
                    user_data,
                    result: Ok(()),
                });
                return Ok(());
            }
        }
        let parts = self.plan(&req)?;
        self.submit_parts(queue, &parts, Owner::App(user_data), &mut None)
    }

    /// Delivers finished requests of `queue` to `cb`; returns how many.
    /// Never blocks. An unknown queue has no completions.
    pub fn poll(&self, queue: u16, cb: &mut dyn FnMut(Completion)) -> usize {
        let mut done = match self.queue(queue) {
            Ok(mut q) => {
                q.harvest(self.mode);
                let spare = std::mem::take(&mut q.spare);
                std::mem::replace(&mut q.ready, spare)
            }
            Err(_) => return 0,
        };
        let n = done.len();
        done.drain(..).for_each(&mut *cb);
        // Hand the emptied buffer back so steady-state polling does not
        // allocate.
        if let Ok(mut q) = self.queue(queue) {
            q.spare = done;
        }
        n
    }

    /// Blocks until `queue` has completions to poll, or the timeout passes
    /// ([`Error::Timeout`]). Interrupt mode sleeps on the queue's eventfd;
    /// polling mode spins; hybrid mode sleeps, spins, then sleeps on the
    /// eventfd ([`CompletionMode::Hybrid`]).
    pub fn wait(&self, queue: u16, timeout: Option<Duration>) -> Result<(), Error> {
        self.wait_for(queue, 1, timeout)
    }

    /// [`Device::wait`] for `n` of the requests in flight on `queue`: returns
    /// once `n` more parts of requests have completed (fewer when fewer are
    /// in flight), or something completed earlier waits to be polled. A
    /// caller that submitted several requests and needs them all (writes
    /// and the flush that covers them) sleeps through the earlier ones: in
    /// interrupt and hybrid mode the device is asked to signal only the
    /// `n`-th. A request split into parts may still be incomplete when
    /// this returns: poll, then wait for what is left.
    pub fn wait_for(&self, queue: u16, n: usize, timeout: Option<Duration>) -> Result<(), Error> {
        let k = u16::try_from(n).unwrap_or(u16::MAX).max(1);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.wait_step(queue, deadline, k)? {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
        }
    }

    /// What hybrid waits on `queue` did so far (all zero in other modes, or
    /// for an unknown queue): how they ended and the current expectation.
    pub fn hybrid_stats(&self, queue: u16) -> hybrid::HybridStats {
        self.queue(queue)
            .map(|q| q.hybrid.stats())
            .unwrap_or_default()
    }

    /// The eventfd the device signals for `queue` (interrupt mode), for use
    /// in an application's own event loop; call [`Device::ack_interrupt`]
    /// when it fires, then [`Device::poll`]. From this call on the queue's
    /// interrupt stays enabled after every poll (the loop sleeps in its own
    /// epoll, not in [`Device::wait`]); completions already back make the
    /// eventfd readable at once. -1 for an unknown queue.
    pub fn interrupt_fd(&self, queue: u16) -> RawFd {
        if queue as usize >= self.queues.len() {
            return -1;
        }
        let Some(fd) = self.transport.queue_interrupt(queue) else {
            return -1;
        };
        if self.mode == CompletionMode::Interrupt {
            if let Ok(mut q) = self.queue(queue) {
                q.eager_interrupts = true;
                if q.vq.enable_interrupts() || !q.ready.is_empty() {
                    // No signal comes for these: make the eventfd say so.
                    let _ = fd.write(1);
                }
            }
        }
        fd.as_raw_fd()
    }

    /// Clears a fired interrupt eventfd.
    pub fn ack_interrupt(&self, queue: u16) {
        if let Some(e) = self.transport.queue_interrupt(queue) {
            let _ = e.read();
        }
    }

    /// An eventfd signalled when the configuration space (capacity)
    /// changes, if the transport delivers that event.
    pub fn config_interrupt_fd(&self) -> Option<RawFd> {
        self.transport.config_interrupt().map(|e| e.as_raw_fd())
    }

    /// Reads `buf.len()` bytes at `offset` of the VSA into `buf`.
    pub fn read_at(
        &self,
        queue: u16,
        vsa: VsaHandle,
        offset: u64,
        buf: &mut DmaBuffer,
    ) -> Result<(), Error> {
        let mem = [buf.mem()];
        let ranges = [VsaRange::new(offset, buf.len() as u64)];
        self.run_sync_request(queue, &Request::read(vsa, &mem, &ranges))
    }

    /// Writes all of `buf` at `offset` of the VSA.
    pub fn write_at(
        &self,
        queue: u16,
        vsa: VsaHandle,
        offset: u64,
        buf: &DmaBuffer,
    ) -> Result<(), Error> {
        let mem = [buf.mem()];
        let ranges = [VsaRange::new(offset, buf.len() as u64)];
        self.run_sync_request(queue, &Request::write(vsa, &mem, &ranges))
    }

    /// Makes every completed write durable.
    pub fn flush(&self, queue: u16) -> Result<(), Error> {
        if !self.has(VIRTIO_BLK_F_FLUSH) {
            let _queue_exists = self.queue(queue)?;
            return Ok(());
        }
        self.run_sync_request(queue, &Request::Flush)
    }

    /// Sends one request of any type and waits for it: a header with
    /// `req_type` and `sector`, the `out` buffers, device-writable buffers of
    /// `in_lens` bytes, and the status byte. Data is copied through DMA
    /// memory. Each buffer is one descriptor, so the device sees exactly
    /// this layout.
    pub fn raw_request(
        &self,
        queue: u16,
        req_type: u32,
        sector: u64,
        out: &[&[u8]],
        in_lens: &[usize],
    ) -> Result<RawReply, Error> {
        let lens = out.iter().map(|o| o.len()).chain(in_lens.iter().copied());
        let mut offsets = Vec::with_capacity(out.len() + in_lens.len());
        let mut total = 0usize;
        for len in lens {
            if u32::try_from(len).is_err() {
                return Err(Error::InvalidArgument(format!(
                    "buffer of {len} bytes is too large"
                )));
            }
            offsets.push(total);
            // Keep each buffer 8-aligned; devices copy faster that way.
            total = total
                .checked_add(len.next_multiple_of(8))
                .ok_or_else(|| Error::InvalidArgument("buffers too large".into()))?;
        }
        let mut bounce = self.pool.alloc(total.max(8), 64)?;
        let (out_offsets, in_offsets) = offsets.split_at(out.len());
        let mut data = Vec::with_capacity(offsets.len());
        for (o, &off) in out.iter().zip(out_offsets) {
            bounce.as_mut_slice()[off..off + o.len()].copy_from_slice(o);
            if !o.is_empty() {
                data.push(Buf {
                    iova: bounce.iova() + off as u64,
                    len: o.len() as u32,
                    device_writes: false,
                });
            }
        }
        for (&len, &off) in in_lens.iter().zip(in_offsets) {
            bounce.as_mut_slice()[off..off + len].fill(0);
            if len > 0 {
                data.push(Buf {
                    iova: bounce.iova() + off as u64,
                    len: len as u32,
                    device_writes: true,
                });
            }
        }
        let part = Part {
            req_type,
            sector,
            data,
            segment: None,
        };
        let done = self.run_sync(queue, std::slice::from_ref(&part), Some(bounce))?;
        let bounce = done
            .bounce
            .ok_or_else(|| Error::transport("raw request", "bounce buffer lost"))?;
        let ins = in_lens
            .iter()
            .zip(in_offsets)
            .map(|(&len, &off)| bounce.as_slice()[off..off + len].to_vec())
            .collect();
        Ok(RawReply {
            status: done.status,
            ins,
            used_len: done.used_len,
        })
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }

    fn queue(&self, queue: u16) -> Result<MutexGuard<'_, QueueState>, Error> {
        let q = self.queues.get(queue as usize).ok_or(Error::NoSuchQueue {
            queue,
            queues: self.num_queues(),
        })?;
        // A panicking callback never runs under this lock, and every state
        // update is completed before unlocking, so poison is harmless.
        Ok(q.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn plan(&self, req: &Request<'_>) -> Result<Vec<Part>, Error> {
        match req {
            Request::Discard { .. } if !self.has(VIRTIO_BLK_F_DISCARD) => {
                return Err(Error::MissingFeature("VIRTIO_BLK_F_DISCARD"))
            }
            Request::WriteZeroes { .. } if !self.has(VIRTIO_BLK_F_WRITE_ZEROES) => {
                return Err(Error::MissingFeature("VIRTIO_BLK_F_WRITE_ZEROES"))
            }
            _ => {}
        }
        blk::plan(req, &self.limits)
    }

    /// Queues all parts of one request, or none of them.
    fn submit_parts(
        &self,
        queue: u16,
        parts: &[Part],
        owner: Owner,
        bounce: &mut Option<DmaBuffer>,
    ) -> Result<(), Error> {
        let region = self.pool.region();
        for buf in parts.iter().flat_map(|p| &p.data) {
            if !region.contains(buf.iova, buf.len as usize) {
                return Err(Error::NotDmaMemory {
                    iova: buf.iova,
                    len: buf.len as usize,
                });
            }
        }
        let needed: usize = parts.iter().map(Part::descriptors).sum();
        let mut q = self.queue(queue)?;
        let size = q.vq.size();
        if needed > size as usize {
            return Err(Error::TooLarge {
                needed,
                queue_size: size,
            });
        }
        if needed > q.vq.num_free() as usize {
            return Err(Error::QueueFull);
        }
        let idx = match q.free_requests.pop() {
            Some(i) => i,
            None => {
                q.requests.push(None);
                (q.requests.len() - 1) as u32
            }
        };
        q.requests[idx as usize] = Some(InFlight {
            owner,
            parts_left: parts.len(),
            status: VIRTIO_BLK_S_OK,
            used_len: 0,
            bounce: bounce.take(),
        });
        let mut chain = Vec::with_capacity(parts.iter().map(Part::descriptors).max().unwrap_or(0));
        for part in parts {
            // Checked above: enough free descriptors for every part.
            let Some(head) = q.vq.next_head() else {
                return Err(Error::QueueFull);
            };
            let header = blk::header(part.req_type, part.sector);
            // SAFETY: the slot of a free head is ours until the chain is
            // published; the ranges lie inside the slot.
            unsafe {
                std::ptr::copy_nonoverlapping(header.as_ptr(), q.slot_ptr(head, 0), header.len());
                std::ptr::write_volatile(q.slot_ptr(head, SLOT_STATUS), STATUS_UNWRITTEN);
            }
            chain.clear();
            chain.push(Buf {
                iova: q.slot_iova(head, 0),
                len: REQ_HEADER_LEN as u32,
                device_writes: false,
            });
            chain.extend_from_slice(&part.data);
            if let Some(seg) = part.segment {
                let bytes = seg.encode();
                // SAFETY: as above.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        q.slot_ptr(head, SLOT_SEGMENT),
                        bytes.len(),
                    )
                };
                chain.push(Buf {
                    iova: q.slot_iova(head, SLOT_SEGMENT),
                    len: DiscardSegment::LEN as u32,
                    device_writes: false,
                });
            }
            chain.push(Buf {
                iova: q.slot_iova(head, SLOT_STATUS),
                len: 1,
                device_writes: true,
            });
            let added = q.vq.add_chain(&chain)?;
            debug_assert_eq!(added, head);
            q.owner_of_head[head as usize] = idx;
        }
        let notify = q.vq.publish();
        drop(q);
        if notify {
            if let Err(e) = self.transport.notify(queue) {
                // The request is in the ring; the next kick will reach it.
                warn!("queue {queue}: notify failed: {e}");
            }
        }
        Ok(())
    }

    /// One bounded wait for `k` completions on `queue`
    /// ([`QueueState::enough`]); true when they are there.
    fn wait_step(&self, queue: u16, deadline: Option<Instant>, k: u16) -> Result<bool, Error> {
        match self.mode {
            CompletionMode::Interrupt => self.sleep_on_interrupt(queue, deadline, k),
            CompletionMode::Polling => self.spin(queue, deadline, k),
            CompletionMode::Hybrid => self.hybrid_wait(queue, deadline, k),
        }
    }

    /// Enables `queue`'s interrupt for the `k`-th completion and sleeps on
    /// it until it fires or the deadline passes; true when the `k`
    /// completions are there.
    fn sleep_on_interrupt(
        &self,
        queue: u16,
        deadline: Option<Instant>,
        k: u16,
    ) -> Result<bool, Error> {
        {
            let mut q = self.queue(queue)?;
            if q.enough(k) || q.vq.enable_interrupts_after(k) {
                return Ok(true);
            }
        }
        let fd = self
            .transport
            .queue_interrupt(queue)
            .ok_or(Error::MissingFeature("queue interrupts"))?;
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short timeout still sleeps.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::system("poll on the queue interrupt", e));
            }
        }
        if r > 0 {
            let _ = fd.read();
        }
        Ok(self.queue(queue)?.enough(k))
    }

    /// Spins on `queue`'s used ring until the `k` completions are there
    /// (true) or the deadline passes (false).
    fn spin(&self, queue: u16, deadline: Option<Instant>, k: u16) -> Result<bool, Error> {
        let mut spins = 0u32;
        loop {
            if self.queue(queue)?.enough(k) {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            spins += 1;
            if spins & 63 == 0 {
                // Let a device thread on the same core run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// One hybrid wait: timer sleep, bounded spin, then the interrupt.
    fn hybrid_wait(&self, queue: u16, deadline: Option<Instant>, k: u16) -> Result<bool, Error> {
        let start = Instant::now();
        let plan = {
            let q = self.queue(queue)?;
            if q.enough(k) {
                return Ok(true);
            }
            q.hybrid.plan()
        };
        let end_of = |phase: Duration| {
            let t = start + phase;
            deadline.map_or(t, |d| d.min(t))
        };
        let asked = end_of(plan.sleep).saturating_duration_since(Instant::now());
        hybrid::sleep(asked);
        // A timer that woke late still leaves the planned polling time.
        let woke = Instant::now();
        let slept = (!asked.is_zero()).then(|| (asked, woke - start));
        let poll_end = end_of(plan.poll_until).max(woke + (plan.poll_until - plan.sleep));
        let poll_end = deadline.map_or(poll_end, |d| d.min(poll_end));
        let found = if self.queue(queue)?.enough(k) {
            Some(if asked.is_zero() {
                Found::AtOnce
            } else {
                Found::FirstLook
            })
        } else if self.spin(queue, Some(poll_end), k)? {
            Some(Found::Polling)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            None
        } else if self.sleep_on_interrupt(queue, deadline, k)? {
            Some(Found::Interrupt)
        } else {
            None
        };
        let elapsed = start.elapsed();
        let mut q = self.queue(queue)?;
        if let Some((asked, took)) = slept {
            q.hybrid.record_sleep(asked, took);
        }
        if let Some(found) = found {
            q.hybrid.record(elapsed, found);
        }
        // Interrupts stay off between waits (harvest keeps them off too).
        q.vq.disable_interrupts();
        Ok(found.is_some() || q.enough(k))
    }

    fn run_sync_request(&self, queue: u16, req: &Request<'_>) -> Result<(), Error> {
        let parts = self.plan(req)?;
        let done = self.run_sync(queue, &parts, None)?;
        IoStatus::from_byte(done.status).map_err(Error::Io)
    }

    /// Submits and waits for one internal request. Application completions
    /// seen meanwhile stay queued for the next [`Device::poll`].
    fn run_sync(
        &self,
        queue: u16,
        parts: &[Part],
        bounce: Option<DmaBuffer>,
    ) -> Result<SyncDone, Error> {
        let deadline = self.sync_timeout.map(|t| Instant::now() + t);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        // A full queue drains as the device works; retry until the deadline.
        // The bounce buffer is only consumed once the request is queued.
        let mut bounce = bounce;
        loop {
            match self.submit_parts(queue, parts, Owner::Sync(token), &mut bounce) {
                Ok(()) => break,
                Err(Error::QueueFull) => {
                    self.queue(queue)?.harvest(self.mode);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::Timeout);
                    }
                    self.wait_step(queue, Some(short_deadline(deadline)), 1)?;
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            {
                let mut q = self.queue(queue)?;
                q.harvest(self.mode);
                if let Some(done) = q.take_sync(token) {
                    return Ok(done);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // The device may still write the bounce buffer: it stays
                    // with the request until the completion arrives.
                    q.abandoned.insert(token);
                    return Err(Error::Timeout);
                }
            }
            // Short slices: another thread may harvest our completion
            // without waking us.
            self.wait_step(queue, Some(short_deadline(deadline)), 1)?;
        }
    }
}

fn short_deadline(deadline: Option<Instant>) -> Instant {
    let slice = Instant::now() + Duration::from_millis(10);
    deadline.map_or(slice, |d| d.min(slice))
}

/// Reads the request limits the device states in its config space.
fn read_limits(t: &dyn Transport, features: u64, queue_size: u16) -> Limits {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    let read_u32 = |offset: usize| {
        let mut b = [0u8; 4];
        t.read_config(offset as u32, &mut b)
            .ok()
            .map(|_| u32::from_le_bytes(b))
    };
    let mut limits = Limits::unlimited(queue_size);
    if has(VIRTIO_BLK_F_SEG_MAX) {
        if let Some(n) = read_u32(config::SEG_MAX).filter(|&n| n > 0) {
            limits.max_segments = limits.max_segments.min(n as usize);
        }
    }
    if has(VIRTIO_BLK_F_SIZE_MAX) {
        if let Some(n) = read_u32(config::SIZE_MAX).filter(|&n| n >= SECTOR_SIZE as u32) {
            limits.max_segment_len = limits.max_segment_len.min(n);
        }
    }
    if has(VIRTIO_BLK_F_DISCARD) {
        limits.max_discard_sectors = read_u32(config::MAX_DISCARD_SECTORS).unwrap_or(0);
    }
    if has(VIRTIO_BLK_F_WRITE_ZEROES) {
        limits.max_write_zeroes_sectors = read_u32(config::MAX_WRITE_ZEROES_SECTORS).unwrap_or(0);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Device>();
        assert_send_sync::<crate::DmaBuffer>();
    }
}
