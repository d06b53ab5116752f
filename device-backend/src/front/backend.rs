//! The `VhostUserBackend` of one PCI function for one frontend connection:
//! feature negotiation, the configuration space, and the queue workers.
//!
//! Every queue has its own worker thread (`queues_per_thread`), its own
//! vring lock and its own scratch space, so queues never wait on each other.
//! After serving what is available, a worker may poll its avail ring for a
//! while before it sleeps (see [`super::poll`]). A slow timer per worker
//! serves requests whose kick never arrived (see [`super::notify_watch`]).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vsic_abi::virtio::Function;

use super::channel::{ConfigChannel, ConfigNotifiers};
use super::config_space::{
    config_space, device_features, protocol_features, read_config, MAX_QUEUE_SIZE,
};
use super::device::Device;
use super::execute::{handle_chain, Context, RefusalLog, Scratch};
use super::request::{DescWalk, Stream};
use super::notify_watch::{StallWatch, WatchTimer, PERIOD};
use super::poll::{PollPolicy, SpinWindow};

pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub type Vring = VringRwLock<GuestMemory>;

/// Requests served per hold of a queue's vring lock.
const BATCH: usize = 64;
/// Bytes moved per hold of a queue's vring lock, at most (a batch ends
/// after the request that reaches it). With the maximum transfer this
/// bounds how long a queue stop or a shutdown waits for a batch.
const BATCH_BYTES: u64 = 64 << 20;
/// Longest a QoS wait sleeps before it checks whether the queue was
/// stopped or the connection is ending.
const THROTTLE_SLICE: Duration = Duration::from_millis(10);
/// Longest a GET_ID waits for the frontend to re-read the configuration
/// announced at start (a frontend that ignores the announcement costs its
/// first GET_ID this much, once per start).
const SETTLE_LIMIT: Duration = Duration::from_millis(500);

/// Longest a completed request waits for its interrupt while later ones of
/// the same batch run. One interrupt covers the whole batch when requests
/// are fast; a slow one (drive, QoS, service model) delays the interrupt of
/// those before it by at most its own time.
const INTERRUPT_DELAY: Duration = Duration::from_micros(20);

/// What a function keeps across frontend connections.
pub struct FunctionState {
    pub function: Function,
    pub num_queues: u16,
    pub device: Arc<dyn Device>,
    pub notifiers: Arc<ConfigNotifiers>,
    /// Held for reading while a queue runs requests; shutdown takes it for
    /// writing so no request is cut in half.
    pub quiesce: Arc<RwLock<()>>,
    pub log: RefusalLog,
    /// Polling before sleeping, shared by every function.
    pub poll: Arc<PollPolicy>,
}

impl FunctionState {
    pub fn name(&self) -> String {
        match self.function {
            Function::Pf => "pf".to_string(),
            Function::Vsic(n) => format!("vsic{n}"),
        }
    }

    fn capacity(&self) -> u64 {
        match self.function {
            Function::Pf => 0,
            Function::Vsic(n) => self.device.capacity(n),
        }
    }
}

/// One connection's backend. Cloned into every worker thread.
#[derive(Clone)]
pub struct FunctionBackend {
    session: Arc<Session>,
}

struct Session {
    state: Arc<FunctionState>,
    mem: GuestMemory,
    /// Per-queue worker state; each is only ever locked by its queue's
    /// worker.
    workers: Vec<Mutex<QueueWorker>>,
    /// Notifiers of the worker threads' exit events.
    exits: Mutex<Vec<EventNotifier>>,
    /// The PF's backend-request channel, held unused until disconnect.
    pf_channel: Mutex<Option<Backend>>,
    /// Set when the workers are told to exit: a QoS wait ends early.
    stopping: AtomicBool,
    /// Until when a GET_ID waits for the frontend to read the
    /// configuration announced at the last start; `None` once it did.
    refresh: Mutex<Option<Instant>>,
    refreshed: Condvar,
    /// Exit-event descriptors handed to the workers. vhost-user-backend
    /// 0.24 registers them with `into_raw_fd()` and never closes them, so
    /// every connection would leak one per queue; the session closes them
    /// once the last worker (and with it the library's epoll) is gone.
    exit_consumers: Mutex<Vec<RawFd>>,
}

/// What one queue's worker keeps between wake-ups.
struct QueueWorker {
    scratch: Scratch,
    window: SpinWindow,
    /// When the worker last went to sleep after serving requests.
    idle_since: Option<Instant>,
    /// Requests left waiting without a kick (see [`super::notify_watch`]).
    stall: StallWatch,
    timer: Option<WatchTimer>,
}

/// How serving one batch of requests ended.
enum BatchEnd {
    /// The batch limit was reached: more may be waiting.
    Full,
    /// The avail ring is empty (as far as this batch saw).
    Drained,
    /// The queue cannot be served (broken ring): stop until the next kick.
    Failed,
    /// The VSIC's QoS budget is spent: the next request may be taken after
    /// this long.
    Throttled(Duration),
}

/// Watches one connection's session (see [`FunctionBackend::watch`]).
pub struct SessionWatch(Weak<Session>);

impl SessionWatch {
    /// Waits until every worker has finished its last request and let go
    /// of the session, so the next frontend never shares a ring with it.
    /// Returns false if that takes longer than `limit`.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.0.strong_count() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for fd in self
            .exit_consumers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if is_eventfd(fd) {
                // SAFETY: the descriptor was created by exit_event() and
                // abandoned by the library; nothing else closes it.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Whether `fd` is an open eventfd.
fn is_eventfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|target| target.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

impl FunctionBackend {
    /// A backend for a new connection, sharing `mem` with the daemon.
    pub fn new(state: Arc<FunctionState>, mem: GuestMemory) -> FunctionBackend {
        let workers = (0..state.num_queues)
            .map(|_| {
                Mutex::new(QueueWorker {
                    scratch: Scratch::new(),
                    window: SpinWindow::new(state.poll.max()),
                    idle_since: None,
                    stall: StallWatch::default(),
                    timer: None,
                })
            })
            .collect();
        FunctionBackend {
            session: Arc::new(Session {
                state,
                mem,
                workers,
                exits: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                refresh: Mutex::new(None),
                refreshed: Condvar::new(),
                pf_channel: Mutex::new(None),
                exit_consumers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A handle that tells when this connection's session is gone.
    pub fn watch(&self) -> SessionWatch {
        SessionWatch(Arc::downgrade(&self.session))
    }

    /// Makes every worker thread of this connection exit.
    pub fn stop_workers(&self) {
        self.session.stopping.store(true, Ordering::Release);
        for exit in self
            .session
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Err(e) = exit.notify() {
                warn!(
                    "{}: cannot stop a queue worker: {e}",
                    self.session.state.name()
                );
            }
        }
    }

    /// Gives every queue worker (one per epoll handler, in queue order) a
    /// timer that serves requests whose kick got lost.
    pub fn watch_notifications(
        &self,
        handlers: &[Arc<VringEpollHandler<FunctionBackend>>],
    ) -> io::Result<()> {
        for (handler, worker) in handlers.iter().zip(&self.session.workers) {
            let timer = WatchTimer::new(PERIOD)?;
            handler.register_listener(timer.as_raw_fd(), EventSet::IN, self.watch_event())?;
            worker.lock().unwrap_or_else(|e| e.into_inner()).timer = Some(timer);
        }
        Ok(())
    }

    /// The epoll token of the watch timers: the first one the library
    /// leaves to backends (queues and its own events come before).
    fn watch_event(&self) -> u64 {
        u64::from(self.session.state.num_queues) + 1
    }

    /// A watch-timer tick: serves the queue if requests have waited a
    /// whole period without a kick.
    fn watch_tick(&self, vring: &Vring, queue: u16) {
        let Some(worker) = self.session.workers.get(queue as usize) else {
            return;
        };
        let stalled = {
            let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(timer) = worker.timer.as_mut() {
                timer.consume();
            }
            worker.stall.tick(self.unserved(vring))
        };
        if stalled {
            if self.session.state.log.allow() {
                warn!(
                    "{} queue {queue}: requests waited {PERIOD:?} without a notification; serving them",
                    self.session.state.name()
                );
            }
            self.process_queue(vring, queue);
        }
    }

    /// The queue's next_avail if its avail ring holds requests not taken
    /// yet; `None` if it holds none or the queue is not running.
    fn unserved(&self, vring: &Vring) -> Option<u16> {
        let state = vring.get_ref();
        let queue = state.get_queue();
        if !state.is_enabled() || !queue.ready() {
            return None;
        }
        let avail = queue
            .avail_idx(&*self.session.mem.memory(), Ordering::Acquire)
            .ok()?;
        (avail.0 != queue.next_avail()).then_some(queue.next_avail())
    }

    /// Serves every available request of one queue, in bounded batches: the
    /// vring lock and the shutdown guard are let go between batches, so a
    /// guest that never stops submitting cannot hold off a queue stop
    /// (GET_VRING_BASE) or a clean shutdown.
    ///
    /// Driver notifications stay suppressed while the worker serves and
    /// polls; they are re-enabled, and the ring checked once more, only
    /// before the worker goes back to sleep, so no request is left behind.
    fn process_queue(&self, vring: &Vring, queue: u16) {
        let Some(worker) = self.session.workers.get(queue as usize) else {
            return;
        };
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        let worker = &mut *worker;
        let woke = Instant::now();
        let mut served_any = false;
        // Rounds in a row in which the ring claimed requests but yielded none.
        let mut phantom_rounds = 0;
        loop {
            let served_now = match self.run_batch(vring, queue, &mut worker.scratch) {
                (_, BatchEnd::Failed) => return,
                (_, BatchEnd::Full) => {
                    served_any = true;
                    continue;
                }
                (served, BatchEnd::Throttled(wait)) => {
                    served_any |= served > 0;
                    // No lock is held here: a queue stop, a shutdown or a
                    // disconnect proceeds while this queue waits.
                    if !self.throttle(vring, wait) {
                        return;
                    }
                    continue;
                }
                (served, BatchEnd::Drained) => {
                    if served > 0 && !served_any {
                        // First requests since the worker slept: was the
                        // gap short enough to have been polled across?
                        if let Some(since) = worker.idle_since.take() {
                            worker
                                .window
                                .after_sleep(woke.saturating_duration_since(since));
                        }
                    }
                    served_any |= served > 0;
                    served
                }
            };
            if served_any && self.poll_for_more(vring, worker.window.current()) {
                continue;
            }
            match self.enable_notification(vring, queue) {
                Some(true) if served_now == 0 && phantom_rounds > 0 => {
                    // Twice the ring said requests were waiting and twice
                    // none could be taken: the driver put its avail index
                    // further ahead than the ring is long. Sleep until its
                    // next kick instead of spinning on a broken ring.
                    if self.session.state.log.allow() {
                        warn!(
                            "{} queue {queue}: the driver's avail index runs ahead of the ring; waiting for its next kick",
                            self.session.state.name()
                        );
                    }
                    break;
                }
                Some(true) => {
                    // More arrived while notifications were off.
                    phantom_rounds = if served_now == 0 { phantom_rounds + 1 } else { 0 };
                    continue;
                }
                Some(false) => break,
                None => return,
            }
        }
        if served_any {
            worker.idle_since = Some(Instant::now());
        }
    }

    /// Serves up to [`BATCH`] requests with driver notifications off.
    fn run_batch(&self, vring: &Vring, queue: u16, scratch: &mut Scratch) -> (usize, BatchEnd) {
        let s = &*self.session;
        let _running = s.state.quiesce.read().unwrap_or_else(|e| e.into_inner());
        let mem = s.mem.memory();
        let ctx = Context {
            function: s.state.function,
            queue,
            device: &*s.state.device,
            config_changes: &*s.state.notifiers,
            log: &s.state.log,
            config_settled: &|| self.await_config_read(),
        };
        let mut vring = vring.get_mut();
        if !vring.get_queue().ready() {
            // Stopped (GET_VRING_BASE) since the kick: leave its rings alone.
            return (0, BatchEnd::Drained);
        }
        if let Err(e) = vring.disable_notification() {
            warn!("{} queue {queue}: {e}", s.state.name());
            return (0, BatchEnd::Failed);
        }
        let mut served = 0;
        let mut bytes = 0u64;
        // When the oldest completion not yet signalled was added.
        let mut unsignalled: Option<Instant> = None;
        let end = loop {
            if served == BATCH || bytes >= BATCH_BYTES {
                break BatchEnd::Full;
            }
            if let Some(wait) = self.qos_wait(vring.get_queue(), &*mem) {
                break BatchEnd::Throttled(wait);
            }
            // The queue is driven with this batch's memory guard throughout:
            // the vring's own helpers would load the memory map per call.
            let Some(chain) = vring.get_queue_mut().pop_descriptor_chain(&*mem) else {
                break BatchEnd::Drained;
            };
            served += 1;
            let head = chain.head_index();
            let queue_ref = vring.get_queue();
            let descs = DescWalk::new(&*mem, queue_ref.desc_table(), queue_ref.size(), head);
            let done = handle_chain(&*mem, descs, &ctx, scratch);
            bytes += scratch.chain.len(Stream::Readable) + scratch.chain.len(Stream::Writable);
            if let Err(e) = vring.get_queue_mut().add_used(&*mem, head, done.used_len) {
                warn!(
                    "{} queue {queue}: cannot complete a request: {e}",
                    s.state.name()
                );
                break BatchEnd::Failed;
            }
            let oldest = *unsignalled.get_or_insert_with(Instant::now);
            if oldest.elapsed() >= INTERRUPT_DELAY {
                self.interrupt(&mut vring, &*mem, queue);
                unsignalled = None;
            }
        };
        if unsignalled.is_some() {
            self.interrupt(&mut vring, &*mem, queue);
        }
        (served, end)
    }

    /// How long the next request must wait for its VSIC's QoS budget;
    /// `None` when it may go now or no request is waiting.
    fn qos_wait<M: vm_memory::GuestMemory>(
        &self,
        queue: &virtio_queue::Queue,
        mem: &M,
    ) -> Option<Duration> {
        let state = &self.session.state;
        let Function::Vsic(vsic) = state.function else {
            return None;
        };
        let waiting = queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|avail| avail.0 != queue.next_avail());
        if !waiting {
            return None;
        }
        Some(state.device.qos_wait(vsic)).filter(|w| !w.is_zero())
    }

    /// Waits until the frontend has read the configuration announced at
    /// the last start (see `acked_features`), at most until the deadline
    /// set then.
    fn await_config_read(&self) {
        let s = &*self.session;
        let mut pending = s.refresh.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(deadline) = *pending {
            let now = Instant::now();
            if now >= deadline {
                *pending = None;
                break;
            }
            pending = s
                .refreshed
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps `wait` for the QoS budget, holding no lock, in slices; false
    /// as soon as the queue is stopped or disabled or the workers are told
    /// to exit.
    fn throttle(&self, vring: &Vring, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.session.stopping.load(Ordering::Acquire) {
                return false;
            }
            {
                let state = vring.get_ref();
                if !state.is_enabled() || !state.get_queue().ready() {
                    return false;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep(deadline.saturating_duration_since(now).min(THROTTLE_SLICE));
        }
    }

    /// Signals the used ring if the driver wants it (EVENT_IDX used_event
    /// or the NO_INTERRUPT flag, both read by `needs_notification`).
    fn interrupt<M: vm_memory::GuestMemory>(
        &self,
        vring: &mut vhost_user_backend::VringState<GuestMemory>,
        mem: &M,
        queue: u16,
    ) {
        let name = || self.session.state.name();
        match vring.get_queue_mut().needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    debug!("{} queue {queue}: interrupt: {e}", name());
                }
            }
            Ok(false) => {}
            Err(e) => warn!("{} queue {queue}: {e}", name()),
        }
    }

    /// Re-enables driver notifications; `Some(true)` if requests arrived
    /// meanwhile, `None` if the ring is unusable.
    fn enable_notification(&self, vring: &Vring, queue: u16) -> Option<bool> {
        let mut vring = vring.get_mut();
        if !vring.get_queue().ready() {
            // Stopped while the worker polled: the ring is no longer ours.
            return Some(false);
        }
        match vring.enable_notification() {
            Ok(more) => Some(more),
            Err(e) => {
                warn!("{} queue {queue}: {e}", self.session.state.name());
                None
            }
        }
    }

    /// Watches the avail ring for up to `window`, if the poll policy lets
    /// this worker spin now. True when a request showed up.
    fn poll_for_more(&self, vring: &Vring, window: Duration) -> bool {
        if window.is_zero() {
            return false;
        }
        let policy = &self.session.state.poll;
        let Some(slot) = policy.try_spin() else {
            return false;
        };
        let mem = self.session.mem.memory();
        let mut last = Instant::now();
        let deadline = last + window;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !state.is_enabled() || !queue.ready() {
                    return false;
                }
                match queue.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            let now = Instant::now();
            if now.saturating_duration_since(last) > policy.late_look() {
                // Another thread had this core: sleeping serves better now.
                slot.preempted();
                return false;
            }
            if now >= deadline {
                return false;
            }
            last = now;
            // Poll politely: a driver thread woken meanwhile runs first.
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

impl VhostUserBackend for FunctionBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.session.state.num_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE as usize
    }

    fn features(&self) -> u64 {
        device_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library sets it on every vring; the queues act on it.
    }

    fn acked_features(&self, _features: u64) {
        // SET_FEATURES begins every start of the device. A frontend such
        // as QEMU ignores configuration changes while the device is
        // stopped and keeps the configuration it read before, so one that
        // happened meanwhile (attach, detach, resize) would stay invisible:
        // announce a change on every start. The frontend handles it once
        // the start is complete, re-reads the configuration and tells its
        // driver if the capacity differs.
        //
        // Until the frontend has read the configuration, a GET_ID waits
        // (bounded): QEMU reads it with its big lock held, so a guest that
        // identifies the device after starting it then reads the current
        // capacity; the vsic library does so when it opens a device.
        if let Function::Vsic(vsic) = self.session.state.function {
            let s = &*self.session;
            let mut pending = s.refresh.lock().unwrap_or_else(|e| e.into_inner());
            *pending = Some(Instant::now() + SETTLE_LIMIT);
            if !s.state.notifiers.notify(vsic) {
                *pending = None;
            }
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let state = &self.session.state;
        // Whatever the frontend asks, it now reads the current space.
        *self
            .session
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.session.refreshed.notify_all();
        let space = config_space(state.capacity(), state.num_queues);
        // An empty answer tells the frontend the read failed.
        read_config(&space, offset, size).unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing in the space is writable (no CONFIG_WCE); ignore, as
        // hardware ignores writes to read-only registers.
        debug!(
            "{}: ignoring a {}-byte config write at {offset}",
            self.session.state.name(),
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&self, _mem: GuestMemory) -> io::Result<()> {
        // The daemon updates the GuestMemoryAtomic we share with it.
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        let state = &self.session.state;
        let Function::Vsic(vsic) = state.function else {
            // The PF's capacity never changes, but closing the channel would
            // look like a failure to the frontend: keep it open.
            *self
                .session
                .pf_channel
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(backend);
            return;
        };
        match ConfigChannel::adopt(backend) {
            Ok(channel) => state.notifiers.set(vsic, Some(channel)),
            Err(e) => warn!(
                "{}: no configuration-change notifications: {e}",
                state.name()
            ),
        }
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.session.state.num_queues.min(64))
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        let ours = notifier.try_clone().ok()?;
        self.session
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ours);
        self.session
            .exit_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        // One queue per thread: the thread index is the queue index.
        let queue = u16::try_from(thread_id);
        if u64::from(device_event) == self.watch_event() {
            if let (Some(vring), Ok(queue)) = (vrings.first(), queue) {
                self.watch_tick(vring, queue);
            }
            return Ok(());
        }
        let (Some(vring), Ok(queue)) = (vrings.get(device_event as usize), queue) else {
            return Ok(());
        };
        // Never return an error: it would end this queue's worker thread.
        self.process_queue(vring, queue);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vhost_user_backend::VhostUserDaemon;
    use vm_memory::Bytes;

    use super::*;
    use crate::front::tests::{FakeDevice, DISK_SIZE};

    fn backend(function: Function, num_queues: u16) -> (FunctionBackend, GuestMemory) {
        backend_with(
            function,
            num_queues,
            PollPolicy::off(),
            GuestMemoryMmap::new(),
        )
    }

    fn backend_with(
        function: Function,
        num_queues: u16,
        poll: PollPolicy,
        mem: GuestMemoryMmap<()>,
    ) -> (FunctionBackend, GuestMemory) {
        let state = Arc::new(FunctionState {
            function,
            num_queues,
            device: Arc::new(FakeDevice::new()),
            notifiers: Arc::new(ConfigNotifiers::new(2)),
            quiesce: Arc::new(RwLock::new(())),
            log: RefusalLog::default(),
            poll: Arc::new(poll),
        });
        let mem = GuestMemoryAtomic::new(mem);
        (FunctionBackend::new(state, mem.clone()), mem)
    }

    /// The driver's side of one split virtqueue in guest memory: 16
    /// entries, each request a 512-byte read of its own sector.
    struct Driver {
        mem: GuestMemory,
        submitted: u16,
    }

    impl Driver {
        const SIZE: u16 = 16;
        const DESC: u64 = 0x0;
        const AVAIL: u64 = 0x1000;
        const USED: u64 = 0x2000;
        const BUFS: u64 = 0x10000;

        /// A vring set up as a frontend would, and its driver.
        fn new(mem: &GuestMemory, event_idx: bool) -> (Vring, Driver) {
            let vring = <Vring as VringT<GuestMemory>>::new(mem.clone(), Self::SIZE).unwrap();
            vring.set_queue_size(Self::SIZE);
            vring
                .set_queue_info(Self::DESC, Self::AVAIL, Self::USED)
                .unwrap();
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let driver = Driver {
                mem: mem.clone(),
                submitted: 0,
            };
            (vring, driver)
        }

        fn put<T: vm_memory::ByteValued>(&self, addr: u64, value: T) {
            self.mem
                .memory()
                .write_obj(value, vm_memory::GuestAddress(addr))
                .unwrap();
        }

        fn get<T: vm_memory::ByteValued>(&self, addr: u64) -> T {
            self.mem
                .memory()
                .read_obj(vm_memory::GuestAddress(addr))
                .unwrap()
        }

        /// Buffers of request `n`: header, 512 bytes of data, status.
        fn bufs(n: u16) -> (u64, u64, u64) {
            let base = Self::BUFS + u64::from(n) * 0x1000;
            (base, base + 0x100, base + 0x400)
        }

        /// Adds a read of sector `n` and publishes it; returns whether the
        /// device asked to be notified (EVENT_IDX, or no NO_NOTIFY flag).
        fn submit(&mut self, event_idx: bool) -> bool {
            let n = self.submitted;
            let (header, data, status) = Self::bufs(n);
            self.put(header, vsic_abi::virtio::VIRTIO_BLK_T_IN);
            self.put(header + 8, u64::from(n));
            self.put(status, 0xffu8);
            let head = n % (Self::SIZE / 3) * 3;
            let descs = [(header, 16u32, 1u16), (data, 512, 1 | 2), (status, 1, 2)];
            for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
                let at = Self::DESC + u64::from(head + i as u16) * 16;
                self.put(at, addr);
                self.put(at + 8, len);
                self.put(at + 12, flags);
                self.put(at + 14, head + i as u16 + 1);
            }
            let slot = Self::AVAIL + 4 + u64::from(n % Self::SIZE) * 2;
            self.put(slot, head);
            std::sync::atomic::fence(Ordering::SeqCst);
            self.submitted = n.wrapping_add(1);
            self.put(Self::AVAIL + 2, self.submitted);
            std::sync::atomic::fence(Ordering::SeqCst);
            if event_idx {
                let avail_event: u16 = self.get(Self::USED + 4 + u64::from(Self::SIZE) * 8);
                // vring_need_event(avail_event, new, old)
                self.submitted.wrapping_sub(avail_event).wrapping_sub(1)
                    < self.submitted.wrapping_sub(n)
            } else {
                self.get::<u16>(Self::USED) & 1 == 0
            }
        }

        fn used_idx(&self) -> u16 {
            self.get(Self::USED + 2)
        }

        fn status(&self, n: u16) -> u8 {
            self.get(Self::bufs(n).2)
        }
    }

    /// The vring's call eventfd, as the frontend would read it.
    struct InterruptCounter(std::fs::File);

    impl InterruptCounter {
        /// Interrupts since the last count.
        fn count(&self) -> u64 {
            let mut value = [0u8; 8];
            match std::io::Read::read(&mut &self.0, &mut value) {
                Ok(8) => u64::from_ne_bytes(value),
                _ => 0,
            }
        }
    }

    fn interrupt_counter(vring: &Vring) -> InterruptCounter {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a new descriptor this test owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is open and owned by nobody else.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        vring.set_call(Some(file.try_clone().unwrap()));
        InterruptCounter(file)
    }

    fn guest_memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn serves_what_is_available_and_rearms_notifications() {
        for event_idx in [true, false] {
            let (backend, mem) =
                backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
            let (vring, mut driver) = Driver::new(&mem, event_idx);
            let interrupts = interrupt_counter(&vring);
            assert!(driver.submit(event_idx), "a sleeping device wants kicks");
            driver.submit(event_idx);
            backend.process_queue(&vring, 0);
            assert_eq!(driver.used_idx(), 2, "event_idx={event_idx}");
            let signalled = interrupts.count();
            assert!(
                (1..=2).contains(&signalled),
                "completions are signalled, at most once each: {signalled}"
            );
            assert_eq!((driver.status(0), driver.status(1)), (0, 0));
            assert_eq!(
                driver.get::<[u8; 4]>(Driver::bufs(1).1),
                [10, 11, 12, 13],
                "sector 1 of the fake disk (byte i is i % 251)"
            );
            // Asleep again: the next request must kick.
            assert!(driver.submit(event_idx), "event_idx={event_idx}");
        }
    }

    #[test]
    fn a_stopped_queue_is_left_alone() {
        for event_idx in [true, false] {
            let (backend, mem) =
                backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
            let (vring, mut driver) = Driver::new(&mem, event_idx);
            driver.submit(event_idx);
            let avail_event = Driver::USED + 4 + u64::from(Driver::SIZE) * 8;
            driver.put(avail_event, 0xabcdu16);
            // GET_VRING_BASE after the kick, before the worker ran.
            vring.set_queue_ready(false);
            backend.process_queue(&vring, 0);
            assert_eq!(driver.used_idx(), 0, "event_idx={event_idx}");
            assert_eq!(driver.get::<u16>(Driver::USED), 0, "used flags untouched");
            assert_eq!(
                driver.get::<u16>(avail_event),
                0xabcd,
                "avail_event untouched"
            );
        }
    }

    #[test]
    fn polls_for_requests_that_come_soon_after_a_batch_without_kicks() {
        let window = Duration::from_millis(500);
        for event_idx in [true, false] {
            let (backend, mem) = backend_with(
                Function::Vsic(0),
                1,
                PollPolicy::ignoring_load(window, 2),
                guest_memory(),
            );
            {
                let mut worker = backend.session.workers[0].lock().unwrap();
                while worker.window.current() < window {
                    worker.window.after_sleep(window);
                }
            }
            let (vring, mut driver) = Driver::new(&mem, event_idx);
            driver.submit(event_idx);
            // The driver submits its second request once the first one
            // completed, while the worker polls.
            let second = std::thread::spawn(move || {
                while driver.used_idx() < 1 {
                    std::thread::yield_now();
                }
                let kick = driver.submit(event_idx);
                (driver, kick)
            });
            let interrupts = interrupt_counter(&vring);
            let started = Instant::now();
            backend.process_queue(&vring, 0);
            let (mut driver, kicked) = second.join().unwrap();
            assert!(
                interrupts.count() >= 1,
                "completions found while polling are signalled too"
            );
            assert!(
                !kicked,
                "no kick while the worker polls, event_idx={event_idx}"
            );
            assert_eq!(driver.used_idx(), 2, "served in the same wake-up");
            assert_eq!(driver.status(1), 0);
            assert!(
                started.elapsed() >= window,
                "the worker polled for the whole window after the last request"
            );
            assert!(
                driver.submit(event_idx),
                "notifications are back on once the worker sleeps"
            );
        }
    }

    #[test]
    fn an_avail_index_beyond_the_ring_does_not_keep_the_worker_spinning() {
        for event_idx in [true, false] {
            let (backend, mem) =
                backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
            let (vring, mut driver) = Driver::new(&mem, event_idx);
            driver.submit(event_idx);
            backend.process_queue(&vring, 0);
            assert_eq!(driver.used_idx(), 1);
            // A broken driver claims far more requests than the ring holds.
            driver.put(Driver::AVAIL + 2, 1u16 + 3 * Driver::SIZE);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let worker = std::thread::spawn(move || {
                backend.process_queue(&vring, 0);
                done_tx.send(()).ok();
                (backend, vring)
            });
            assert!(
                done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
                "the worker went back to sleep instead of spinning, event_idx={event_idx}"
            );
            let _ = worker.join();
            assert_eq!(driver.used_idx(), 1, "nothing was made up from the bogus index");
        }
    }

    #[test]
    fn requests_whose_kick_was_lost_are_served_by_the_watch_timer() {
        for event_idx in [true, false] {
            let (backend, mem) =
                backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
            let (vring, mut driver) = Driver::new(&mem, event_idx);
            let interrupts = interrupt_counter(&vring);
            backend.watch_tick(&vring, 0);
            // Published and kicked, but the kick never reached the worker.
            assert!(driver.submit(event_idx));
            backend.watch_tick(&vring, 0);
            assert_eq!(driver.used_idx(), 0, "its kick may still be on its way");
            backend.watch_tick(&vring, 0);
            assert_eq!(driver.used_idx(), 1, "a period without a kick: served");
            assert_eq!(driver.status(0), 0);
            assert!(interrupts.count() >= 1, "and the driver is told");
            // Notifications are back on: the next request kicks as usual.
            assert!(driver.submit(event_idx), "event_idx={event_idx}");
        }
    }

    #[test]
    fn the_watch_timer_leaves_stopped_and_disabled_queues_alone() {
        let (watched, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
        let (vring, mut driver) = Driver::new(&mem, true);
        driver.submit(true);
        vring.set_enabled(false);
        for _ in 0..3 {
            watched.watch_tick(&vring, 0);
        }
        assert_eq!(driver.used_idx(), 0, "disabled");
        vring.set_enabled(true);
        vring.set_queue_ready(false);
        for _ in 0..3 {
            watched.watch_tick(&vring, 0);
        }
        assert_eq!(driver.used_idx(), 0, "stopped (GET_VRING_BASE)");
        // A queue without memory or rings yet is not an error either.
        let (idle, _) = backend(Function::Vsic(0), 1);
        let unset = <Vring as VringT<GuestMemory>>::new(idle.session.mem.clone(), 16).unwrap();
        idle.watch_tick(&unset, 0);
        idle.watch_tick(&unset, 7);
    }

    #[test]
    fn advertises_queues_threads_and_live_capacity() {
        let (vsic, _) = backend(Function::Vsic(0), 3);
        assert_eq!(vsic.num_queues(), 3);
        assert_eq!(vsic.queues_per_thread(), [1, 2, 4]);
        let config = vsic.get_config(0, 8);
        assert_eq!(
            u64::from_le_bytes(config.try_into().unwrap()),
            DISK_SIZE as u64 / 512
        );
        assert_eq!(vsic.get_config(34, 2), 3u16.to_le_bytes());
        assert!(
            vsic.get_config(u32::MAX, 4).is_empty(),
            "absurd ranges fail"
        );

        let (pf, _) = backend(Function::Pf, 1);
        assert_eq!(pf.queues_per_thread(), [1]);
        assert_eq!(pf.get_config(0, 8), [0; 8], "the PF has no storage");
    }

    #[test]
    fn a_session_closes_the_exit_events_the_library_abandons() {
        let (backend, mem) = backend(Function::Vsic(1), 2);
        let session = backend.watch();
        let daemon = VhostUserDaemon::new("test".into(), backend.clone(), mem).unwrap();
        let fds = backend.session.exit_consumers.lock().unwrap().clone();
        assert_eq!(fds.len(), 2, "one exit event per queue worker");
        assert!(fds.iter().all(|&fd| is_eventfd(fd)));
        backend.stop_workers();
        drop(daemon);
        drop(backend);
        assert!(
            session.wait_ended(Duration::from_secs(5)),
            "the workers did not stop"
        );
        assert!(
            fds.iter().all(|&fd| !is_eventfd(fd)),
            "exit events left open"
        );
    }
}
