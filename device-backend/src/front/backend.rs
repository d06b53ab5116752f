//! The `VhostUserBackend` of one PCI function for one frontend connection:
//! feature negotiation, the configuration space and its change
//! announcements, the session a connection's workers share, and event
//! dispatch to the queue workers.
//!
//! Every queue has its own worker thread (`queues_per_thread`), its own
//! vring lock and its own scratch space, so queues never wait on each other.
//! What a worker does when woken is [`super::worker`]. A slow timer per
//! worker serves requests whose kick never arrived (see
//! [`super::notify_watch`]).

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
use crate::controller::target::Target;
use super::execute::RefusalLog;
use super::notify_watch::{WatchTimer, PERIOD};
use super::poll::PollPolicy;
use super::worker::QueueWorker;

pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub type Vring = VringRwLock<GuestMemory>;

/// Longest a GET_ID waits for the frontend to re-read the configuration
/// announced at start (a frontend that ignores the announcement costs its
/// first GET_ID this much, once per start).
const SETTLE_LIMIT: Duration = Duration::from_millis(500);

/// What a function keeps across frontend connections.
pub struct FunctionState {
    pub function: Function,
    pub num_queues: u16,
    pub target: Arc<dyn Target>,
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
            Function::Vsic(n) => self.target.capacity(n),
        }
    }
}

/// One connection's backend. Cloned into every worker thread.
#[derive(Clone)]
pub struct FunctionBackend {
    pub(super) session: Arc<Session>,
}

pub(super) struct Session {
    pub(super) state: Arc<FunctionState>,
    pub(super) mem: GuestMemory,
    /// Per-queue worker state; each is only ever locked by its queue's
    /// worker.
    pub(super) workers: Vec<Mutex<QueueWorker>>,
    /// Notifiers of the worker threads' exit events.
    pub(super) exits: Mutex<Vec<EventNotifier>>,
    /// The PF's backend-request channel, held unused until disconnect.
    pub(super) pf_channel: Mutex<Option<Backend>>,
    /// Set when the workers are told to exit: a QoS wait ends early.
    pub(super) stopping: AtomicBool,
    /// Until when a GET_ID waits for the frontend to read the
    /// configuration announced at the last start; `None` once it did.
    pub(super) refresh: Mutex<Option<Instant>>,
    pub(super) refreshed: Condvar,
    /// Exit-event descriptors handed to the workers. vhost-user-backend
    /// 0.24 registers them with `into_raw_fd()` and never closes them, so
    /// every connection would leak one per queue; the session closes them
    /// once the last worker (and with it the library's epoll) is gone.
    pub(super) exit_consumers: Mutex<Vec<RawFd>>,
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
                Mutex::new(QueueWorker::new(state.poll.max()))
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

    /// Waits until the frontend has read the configuration announced at
    /// the last start (see `acked_features`), at most until the deadline
    /// set then.
    pub(super) fn await_config_read(&self) {
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
mod tests;
