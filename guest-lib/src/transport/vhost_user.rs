//! vhost-user transport: this process is the frontend (the role QEMU plays
//! for a guest), the device backend serves the socket.
//!
//! The DMA region is one memfd registered with SET_MEM_TABLE at guest
//! physical address [`DMA_IOVA_BASE`]; descriptors carry those addresses.
//! Ring addresses in SET_VRING_ADDR are frontend virtual addresses, as the
//! protocol requires, so the transport translates IOVAs to host pointers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, VhostUserFrontend, VhostUserFrontendReqHandler,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{queue_slot, QueueAddrs, Transport};
use crate::dma::DmaRegion;
use crate::error::Error;

/// Device address of the first byte of the DMA region (1 GiB): any value
/// works, a non-zero one catches drivers that confuse offsets with addresses.
pub const DMA_IOVA_BASE: u64 = 1 << 30;

/// Protocol features the library uses when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// A vhost-user connection to one device function.
pub struct VhostUserTransport {
    path: String,
    channel: Channel,
    device_features: u64,
    protocol: VhostUserProtocolFeatures,
    max_queues: u16,
    region: Arc<DmaRegion>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    config_event: Option<Arc<EventFd>>,
    config_listener: Option<ConfigListener>,
}

impl VhostUserTransport {
    /// Connects to the backend at `path`, negotiates protocol features and
    /// creates a DMA region of `mem_size` bytes (registered once the driver
    /// features are set). Every message exchange gives up after `timeout`.
    pub fn connect(
        path: &str,
        mem_size: usize,
        timeout: Option<Duration>,
    ) -> Result<VhostUserTransport, Error> {
        let connect_error = |e: std::io::Error| Error::Connect {
            path: path.to_string(),
            reason: e.to_string(),
        };
        let sock = UnixStream::connect(path).map_err(connect_error)?;
        let channel = Channel::new(sock, timeout)?;

        let device_features = channel.call("GET_FEATURES", |fe| fe.get_features())?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if device_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = channel.call("GET_PROTOCOL_FEATURES", |fe| fe.get_protocol_features())?;
            protocol = offered & wanted_protocol_features();
            channel.call("SET_PROTOCOL_FEATURES", |fe| {
                fe.set_protocol_features(protocol)
            })?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged, so a refused setup step
                // surfaces here instead of as a silent stall later.
                channel.call("REPLY_ACK", |fe| {
                    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                    Ok(())
                })?;
            }
        }
        let max_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = channel.call("GET_QUEUE_NUM", |fe| fe.get_queue_num())?;
            u16::try_from(n).unwrap_or(u16::MAX).max(1)
        } else {
            1
        };
        channel.call("SET_OWNER", |fe| fe.set_owner())?;
        debug!(
            "{path}: features {device_features:#x}, protocol {:#x}, {max_queues} queue(s)",
            protocol.bits()
        );

        let region = Arc::new(DmaRegion::memfd(mem_size, DMA_IOVA_BASE)?);
        let mut kicks = Vec::with_capacity(max_queues as usize);
        let mut calls = Vec::with_capacity(max_queues as usize);
        for _ in 0..max_queues {
            kicks.push(new_eventfd()?);
            calls.push(new_eventfd()?);
        }

        let (config_event, config_listener) =
            if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
                let event = Arc::new(new_eventfd()?);
                let listener = ConfigListener::start(
                    &channel,
                    Arc::clone(&event),
                    protocol.contains(VhostUserProtocolFeatures::REPLY_ACK),
                )?;
                (Some(event), Some(listener))
            } else {
                (None, None)
            };

        Ok(VhostUserTransport {
            path: path.to_string(),
            channel,
            device_features,
            protocol,
            max_queues,
            region,
            kicks,
            calls,
            config_event,
            config_listener,
        })
    }

    /// Stops queue `index` (GET_VRING_BASE), as a frontend does when its VM
    /// stops or resets; returns the backend's next available index. Once
    /// this returns, the backend no longer touches the queue's rings.
    pub fn stop_queue(&self, index: u16) -> Result<u16, Error> {
        let i = queue_slot(index, self.max_queues)?;
        let base = self
            .channel
            .call("GET_VRING_BASE", |fe| fe.get_vring_base(i))?;
        Ok(base as u16)
    }

    fn host_addr(&self, iova: u64, len: usize) -> Result<u64, Error> {
        self.region
            .host_at(iova, len)
            .map(|p| p as u64)
            .ok_or(Error::NotDmaMemory { iova, len })
    }

    fn register_memory(&self) -> Result<(), Error> {
        let fd = self
            .region
            .fd()
            .ok_or_else(|| Error::transport("SET_MEM_TABLE", "DMA region has no fd to share"))?;
        // The struct grows extra fields with some crate features.
        #[allow(clippy::needless_update)]
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: self.region.iova(),
            memory_size: self.region.len() as u64,
            userspace_addr: self.region.host_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
            ..Default::default()
        };
        self.channel
            .call("SET_MEM_TABLE", |fe| fe.set_mem_table(&[info]).map(drop))
    }
}

impl Transport for VhostUserTransport {
    fn device_features(&self) -> u64 {
        self.device_features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), Error> {
        let mut acked = features & self.device_features;
        // Keeping the protocol-features bit makes rings start disabled until
        // SET_VRING_ENABLE, so the device never sees a half-set-up queue.
        acked |= self.device_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.channel
            .call("SET_FEATURES", |fe| fe.set_features(acked))?;
        self.register_memory()
    }

    fn max_queues(&self) -> u16 {
        self.max_queues
    }

    fn max_queue_size(&self) -> Option<u16> {
        // vhost-user has no way to ask; a too-large size fails SET_VRING_NUM.
        None
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeature(
                "vhost-user CONFIG (configuration space access)",
            ));
        }
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= vsic_abi::virtio::config::LEN)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("config range {offset}+{} out of bounds", buf.len()))
            })?;
        // Always read from offset 0: some backends ignore the offset field.
        let zeros = vec![0u8; end];
        let (_, payload) = self.channel.call("GET_CONFIG", |fe| {
            fe.get_config(0, end as u32, VhostUserConfigFlags::empty(), &zeros)
        })?;
        let src = payload
            .get(start..end)
            .ok_or_else(|| Error::transport("GET_CONFIG", "short reply"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn dma_region(&self) -> &Arc<DmaRegion> {
        &self.region
    }

    fn setup_queue(&mut self, index: u16, addrs: &QueueAddrs) -> Result<(), Error> {
        let i = queue_slot(index, self.max_queues)?;
        let size = addrs.size as usize;
        let config = VringConfigData {
            queue_max_size: addrs.size,
            queue_size: addrs.size,
            flags: 0,
            desc_table_addr: self.host_addr(addrs.desc, 16 * size)?,
            used_ring_addr: self.host_addr(addrs.used, 6 + 8 * size)?,
            avail_ring_addr: self.host_addr(addrs.avail, 6 + 2 * size)?,
            log_addr: None,
        };
        let (kick, call) = match (self.kicks.get(i), self.calls.get(i)) {
            (Some(k), Some(c)) => (k, c),
            _ => {
                return Err(Error::NoSuchQueue {
                    queue: index,
                    queues: self.max_queues,
                })
            }
        };
        let ch = &self.channel;
        ch.call("SET_VRING_NUM", |fe| fe.set_vring_num(i, addrs.size))?;
        ch.call("SET_VRING_ADDR", |fe| fe.set_vring_addr(i, &config))?;
        ch.call("SET_VRING_BASE", |fe| fe.set_vring_base(i, 0))?;
        ch.call("SET_VRING_CALL", |fe| fe.set_vring_call(i, call))?;
        ch.call("SET_VRING_KICK", |fe| fe.set_vring_kick(i, kick))?;
        Ok(())
    }

    fn enable_queues(&mut self, count: u16) -> Result<(), Error> {
        if self.device_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            // Without protocol features a ring starts with its kick fd.
            return Ok(());
        }
        for i in 0..count {
            self.channel.call("SET_VRING_ENABLE", |fe| {
                fe.set_vring_enable(i as usize, true)
            })?;
        }
        Ok(())
    }

    fn notify(&self, index: u16) -> Result<(), Error> {
        let kick = self.kicks.get(index as usize).ok_or(Error::NoSuchQueue {
            queue: index,
            queues: self.max_queues,
        })?;
        kick.write(1).map_err(|e| Error::system("queue kick", e))
    }

    fn queue_interrupt(&self, index: u16) -> Option<&EventFd> {
        self.calls.get(index as usize)
    }

    fn config_interrupt(&self) -> Option<&EventFd> {
        self.config_event.as_deref()
    }
}

impl Drop for VhostUserTransport {
    fn drop(&mut self) {
        if let Some(listener) = self.config_listener.take() {
            listener.stop();
        }
        debug!("{}: disconnected", self.path);
    }
}

/// The request socket to the backend, with every exchange bounded in time.
struct Channel {
    frontend: Mutex<Frontend>,
    timeout: Option<Duration>,
    watchdog: Option<Watchdog>,
}

impl Channel {
    fn new(sock: UnixStream, timeout: Option<Duration>) -> Result<Channel, Error> {
        let watchdog = match timeout {
            Some(_) => {
                let dup = sock
                    .try_clone()
                    .map_err(|e| Error::system("dup of the vhost-user socket", e))?;
                Some(Watchdog::start(OwnedFd::from(dup))?)
            }
            None => None,
        };
        Ok(Channel {
            frontend: Mutex::new(Frontend::from_stream(sock, 1)),
            timeout,
            watchdog,
        })
    }

    /// Runs one exchange with the backend; `step` names it in errors.
    fn call<T>(
        &self,
        step: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, Error> {
        let mut fe = self.frontend.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(w), Some(t)) = (&self.watchdog, self.timeout) {
            w.arm(t);
        }
        let result = f(&mut fe);
        let fired = self.watchdog.as_ref().is_some_and(|w| w.disarm());
        result.map_err(|e| match self.timeout {
            Some(t) if fired => Error::transport(
                step,
                format!(
                    "no reply within {t:?}; connection closed \
                     (is another client already connected to this socket?)"
                ),
            ),
            _ => Error::transport(step, e),
        })
    }
}

/// Shuts the socket down when an exchange overruns its deadline. The vhost
/// crate retries timed-out reads forever, so a socket timeout alone cannot
/// bound a call; a shut-down socket makes the blocked read fail at once.
struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

impl Watchdog {
    fn start(sock: OwnedFd) -> Result<Watchdog, Error> {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vsic-watchdog".into())
            .spawn(move || watch(sock, &theirs))
            .map_err(|e| Error::system("spawning the reply watchdog", e))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn state(&self) -> MutexGuard<'_, WatchState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, timeout: Duration) {
        self.state().deadline = Some(Instant::now() + timeout);
        self.shared.1.notify_one();
    }

    /// Disarms; returns whether the deadline had passed (socket shut down).
    fn disarm(&self) -> bool {
        let mut s = self.state();
        s.deadline = None;
        s.fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state().stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(sock: OwnedFd, shared: &(Mutex<WatchState>, Condvar)) {
    let (lock, cv) = shared;
    let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if s.stop {
            return;
        }
        s = match s.deadline {
            None => cv.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    // SAFETY: shutting down our own duplicate of the socket.
                    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
                    s.fired = true;
                    s.deadline = None;
                    continue;
                }
                cv.wait_timeout(s, d - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
        };
    }
}

fn new_eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| Error::system("eventfd", e))
}

/// Turns the backend's CONFIG_CHANGE_MSG requests into an eventfd signal.
struct ConfigChangeSignal {
    event: Arc<EventFd>,
}

impl VhostUserFrontendReqHandler for ConfigChangeSignal {
    fn handle_config_change(&self) -> std::io::Result<u64> {
        self.event.write(1)?;
        Ok(0)
    }
}

/// A thread serving the backend-to-frontend channel.
struct ConfigListener {
    /// A duplicate of the channel's socket, used to wake the thread on stop.
    wake: OwnedFd,
    thread: JoinHandle<()>,
}

impl ConfigListener {
    fn start(
        channel: &Channel,
        event: Arc<EventFd>,
        reply_ack: bool,
    ) -> Result<ConfigListener, Error> {
        let mut handler = FrontendReqHandler::new(Arc::new(ConfigChangeSignal { event }))
            .map_err(|e| Error::transport("backend request channel", e))?;
        handler.set_reply_ack_flag(reply_ack);
        let tx = handler.get_tx_raw_fd();
        channel.call("SET_BACKEND_REQ_FD", |fe| fe.set_backend_request_fd(&tx))?;
        // SAFETY: dup of a socket fd the handler owns; the copy is ours.
        let dup = unsafe { libc::fcntl(handler.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(Error::system("dup", std::io::Error::last_os_error()));
        }
        // SAFETY: fcntl returned a fresh fd.
        let wake = unsafe { OwnedFd::from_raw_fd(dup) };
        let thread = std::thread::Builder::new()
            .name("vsic-config".into())
            .spawn(move || serve_backend_requests(handler))
            .map_err(|e| Error::system("spawning the config-change thread", e))?;
        Ok(ConfigListener { wake, thread })
    }

    fn stop(self) {
        // SAFETY: shutting down our own duplicate; wakes the blocked recv.
        unsafe { libc::shutdown(self.wake.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.thread.join();
    }
}

fn serve_backend_requests(mut handler: FrontendReqHandler<ConfigChangeSignal>) {
    use vhost::vhost_user::Error as E;
    let mut bad_in_a_row = 0u32;
    loop {
        match handler.handle_request() {
            Ok(_) => bad_in_a_row = 0,
            Err(E::Disconnected | E::SocketBroken(_) | E::SocketError(_) | E::PartialMessage) => {
                return
            }
            Err(e) => {
                // One bad or unknown message is not fatal; a stream of them
                // means the channel is out of sync.
                bad_in_a_row += 1;
                if bad_in_a_row >= 16 {
                    warn!("backend request channel: giving up after repeated errors: {e}");
                    return;
                }
                debug!("backend request channel: {e}");
            }
        }
    }
}
