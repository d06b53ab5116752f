//! The `VhostUserBackend` of one PCI function for one frontend connection:
//! feature negotiation, the configuration space, and the queue workers.
//!
//! Every queue has its own worker thread (`queues_per_thread`), its own
//! vring lock and its own scratch space, so queues never wait on each other.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
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

pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub type Vring = VringRwLock<GuestMemory>;

/// Requests served per hold of a queue's vring lock.
const BATCH: usize = 64;

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
    event_idx: AtomicBool,
    /// Per-queue scratch; each is only ever locked by its queue's worker.
    scratch: Vec<Mutex<Scratch>>,
    /// Notifiers of the worker threads' exit events.
    exits: Mutex<Vec<EventNotifier>>,
    /// The PF's backend-request channel, held unused until disconnect.
    pf_channel: Mutex<Option<Backend>>,
    /// Exit-event descriptors handed to the workers. vhost-user-backend
    /// 0.24 registers them with `into_raw_fd()` and never closes them, so
    /// every connection would leak one per queue; the session closes them
    /// once the last worker (and with it the library's epoll) is gone.
    exit_consumers: Mutex<Vec<RawFd>>,
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
        let scratch = (0..state.num_queues)
            .map(|_| Mutex::new(Scratch::new()))
            .collect();
        FunctionBackend {
            session: Arc::new(Session {
                state,
                mem,
                event_idx: AtomicBool::new(false),
                scratch,
                exits: Mutex::new(Vec::new()),
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

    /// Serves every available request of one queue, in bounded batches: the
    /// vring lock and the shutdown guard are let go between batches, so a
    /// guest that never stops submitting cannot hold off a queue stop
    /// (GET_VRING_BASE) or a clean shutdown.
    fn process_queue(&self, vring: &Vring, queue: u16) {
        let Some(scratch) = self.session.scratch.get(queue as usize) else {
            return;
        };
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        while self.run_batch(vring, queue, &mut scratch) {}
    }

    /// Serves up to [`BATCH`] requests; true when more may be waiting.
    fn run_batch(&self, vring: &Vring, queue: u16, scratch: &mut Scratch) -> bool {
        let s = &*self.session;
        let _running = s.state.quiesce.read().unwrap_or_else(|e| e.into_inner());
        let mem = s.mem.memory();
        let ctx = Context {
            function: s.state.function,
            queue,
            device: &*s.state.device,
            config_changes: &*s.state.notifiers,
            log: &s.state.log,
        };
        let event_idx = s.event_idx.load(Ordering::Relaxed);
        let mut vring = vring.get_mut();
        let mut served = 0;
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    warn!("{} queue {queue}: {e}", s.state.name());
                    return false;
                }
            }
            while served < BATCH {
                let Some(chain) = vring.get_queue_mut().pop_descriptor_chain(&*mem) else {
                    break;
                };
                served += 1;
                let head = chain.head_index();
                let done = handle_chain(&*mem, chain, &ctx, scratch);
                if let Err(e) = vring.add_used(head, done.used_len) {
                    warn!(
                        "{} queue {queue}: cannot complete a request: {e}",
                        s.state.name()
                    );
                    return false;
                }
                // Interrupt per request: requests can be slow (drive I/O,
                // QoS, service model), so a batch should not hold back the
                // ones already done. EVENT_IDX keeps this cheap.
                match vring.needs_notification() {
                    Ok(true) => {
                        if let Err(e) = vring.signal_used_queue() {
                            debug!("{} queue {queue}: interrupt: {e}", s.state.name());
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!("{} queue {queue}: {e}", s.state.name()),
                }
            }
            if served >= BATCH {
                // Notifications stay off: the caller comes straight back.
                return true;
            }
            if !event_idx {
                return false;
            }
            match vring.enable_notification() {
                Ok(true) => continue, // more arrived while notifications were off
                Ok(false) => return false,
                Err(e) => {
                    warn!("{} queue {queue}: {e}", s.state.name());
                    return false;
                }
            }
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

    fn set_event_idx(&self, enabled: bool) {
        self.session.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let state = &self.session.state;
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
        let (Some(vring), Ok(queue)) =
            (vrings.get(device_event as usize), u16::try_from(thread_id))
        else {
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

    use super::*;
    use crate::front::tests::{FakeDevice, DISK_SIZE};

    fn backend(function: Function, num_queues: u16) -> (FunctionBackend, GuestMemory) {
        let state = Arc::new(FunctionState {
            function,
            num_queues,
            device: Arc::new(FakeDevice::new()),
            notifiers: Arc::new(ConfigNotifiers::new(2)),
            quiesce: Arc::new(RwLock::new(())),
            log: RefusalLog::default(),
        });
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        (FunctionBackend::new(state, mem.clone()), mem)
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
