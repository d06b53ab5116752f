//! The `VhostUserBackend` of one PCI function for one frontend connection:
//! feature negotiation, the configuration space and its change
//! announcements, the session a connection's workers share, and event
//! dispatch to the queue workers.
//!
//! Every queue has its own worker thread (`queues_per_thread`), its own
//! vring lock and its own scratch space, so queues never wait on each other.
//! What a worker does when woken is [`super::worker`]. A slow timer per
//! worker serves requests whose kick never arrived (see
//! [`super::lost_kick_watch`]).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vsic_abi::virtio::Function;

use super::channel::{ConfigChannel, ConfigNotifiers};
use super::completions::CompletionQueue;
use super::config_space::{
    config_space, device_features, protocol_features, read_config, MAX_QUEUE_SIZE,
};
use super::execute::RefusalLog;
use super::exit_event_leak::AbandonedExitEvents;
use super::poll::PollPolicy;
use super::server::Workarounds;
use super::worker::QueueWorker;
use crate::controller::target::Target;

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
    pub workarounds: Workarounds,
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
    /// Per-queue scheduled completions (drive timing model, see
    /// [`super::completions`]).
    pub(super) completions: Vec<CompletionQueue>,
    /// Notifiers of the worker threads' exit events.
    pub(super) exits: Mutex<Vec<EventNotifier>>,
    /// A backend-request channel held unused until disconnect: the PF's,
    /// or any function's when the socket takeover is switched off.
    pub(super) unused_channel: Mutex<Option<Backend>>,
    /// Set when the workers are told to exit: a QoS wait ends early.
    pub(super) stopping: AtomicBool,
    /// Until when a GET_ID waits for the frontend to read the
    /// configuration announced at the last start; `None` once it did.
    pub(super) refresh: Mutex<Option<Instant>>,
    pub(super) refreshed: Condvar,
    /// Exit-event descriptors handed to the workers, closed when the
    /// session ends (see [`super::exit_event_leak`]).
    pub(super) exit_consumers: AbandonedExitEvents,
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

impl FunctionBackend {
    /// A backend for a new connection, sharing `mem` with the daemon.
    pub fn new(state: Arc<FunctionState>, mem: GuestMemory) -> FunctionBackend {
        let exit_events = AbandonedExitEvents::new(state.workarounds.close_abandoned_exit_events);
        let workers = (0..state.num_queues)
            .map(|_| Mutex::new(QueueWorker::new(state.poll.max())))
            .collect();
        let completions = (0..state.num_queues)
            .map(|_| CompletionQueue::default())
            .collect();
        FunctionBackend {
            session: Arc::new(Session {
                state,
                mem,
                workers,
                completions,
                exits: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                refresh: Mutex::new(None),
                refreshed: Condvar::new(),
                unused_channel: Mutex::new(None),
                exit_consumers: exit_events,
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
        device_features(self.session.state.target.write_through())
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn reset_device(&self) {
        self.drop_completions();
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Ok(queue) = u16::try_from(queue_index) {
            self.complete_all_on_stop(queue);
        }
        Ok(())
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
        let keep = |backend| {
            *self
                .session
                .unused_channel
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(backend);
        };
        let Function::Vsic(vsic) = state.function else {
            // The PF's capacity never changes, but closing the channel would
            // look like a failure to the frontend: keep it open.
            keep(backend);
            return;
        };
        if !state.workarounds.backend_socket_takeover {
            info!(
                "{}: backend-socket-takeover is off: capacity changes are not announced",
                state.name()
            );
            keep(backend);
            return;
        }
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
        self.session.exit_consumers.record(consumer.as_raw_fd());
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
        if u64::from(device_event) == self.completion_event() {
            if let (Some(vring), Ok(queue)) = (vrings.first(), queue) {
                self.completion_tick(vring, queue);
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
