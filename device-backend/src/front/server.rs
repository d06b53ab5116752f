//! Serving the sockets: one listener per PCI function, each with a thread
//! that accepts one frontend at a time and, when it leaves, waits for the
//! next. The controller and every function's state outlive connections.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vsic_abi::virtio::Function;

use super::backend::{FunctionBackend, FunctionState};
use super::channel::{ConfigChangeSink, ConfigNotifiers};
use super::execute::RefusalLog;
use super::poll::PollPolicy;
use crate::controller::target::Target;

/// Where and how many functions to serve.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    pub socket_dir: PathBuf,
    pub vsics: u32,
    pub queues_per_vsic: u16,
    /// Longest a queue worker polls its ring after serving requests before
    /// it sleeps (adaptive, see [`super::poll`]); zero: never poll.
    pub poll_max: Duration,
    /// Workarounds for peers' bugs, each on by default.
    pub workarounds: Workarounds,
}

/// Workarounds for bugs of the front's peers (QEMU, the vhost crates).
/// Each lives in a module named for what it works around, which documents
/// the upstream behaviour; each can be switched off (`vsicd
/// --disable-workaround NAME`), e.g. to check whether a peer still needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workarounds {
    /// Serve requests whose kick QEMU's TCG lost, on a slow timer per
    /// queue ([`super::lost_kick_watch`]).
    pub lost_kick_watch: bool,
    /// Close the exit-event descriptors vhost-user-backend abandons when
    /// a connection ends ([`super::exit_event_leak`]).
    pub close_abandoned_exit_events: bool,
    /// Take over the backend-request socket vhost's `Backend` hides, to
    /// send configuration changes ([`super::backend_socket_takeover`]).
    /// Off: frontends are not told when a VSIC's capacity changes.
    pub backend_socket_takeover: bool,
}

impl Default for Workarounds {
    fn default() -> Self {
        Workarounds {
            lost_kick_watch: true,
            close_abandoned_exit_events: true,
            backend_socket_takeover: true,
        }
    }
}

impl FrontConfig {
    /// Socket path of a function: `DIR/pf.sock`, `DIR/vsicN.sock`.
    pub fn socket_path(&self, function: Function) -> PathBuf {
        match function {
            Function::Pf => self.socket_dir.join("pf.sock"),
            Function::Vsic(n) => self.socket_dir.join(format!("vsic{n}.sock")),
        }
    }

    fn functions(&self) -> impl Iterator<Item = Function> {
        std::iter::once(Function::Pf).chain((0..self.vsics).map(Function::Vsic))
    }
}

/// Why [`Front::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} queues per VSIC: must be 1 to 64")]
    QueueCount(u16),
    #[error("cannot create {}: {source}", .dir.display())]
    SocketDir { dir: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", .path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot start a listener thread: {0}")]
    Thread(#[source] io::Error),
}

/// The running front: every function's listener thread.
pub struct Front {
    config: FrontConfig,
    target: Arc<dyn Target>,
    quiesce: Arc<RwLock<()>>,
    notifiers: Arc<ConfigNotifiers>,
}

impl Front {
    /// Binds every socket, then starts serving them. When this returns
    /// `Ok`, every socket accepts connections.
    pub fn start(config: FrontConfig, target: Arc<dyn Target>) -> Result<Front, StartError> {
        if config.queues_per_vsic == 0 || config.queues_per_vsic > 64 {
            return Err(StartError::QueueCount(config.queues_per_vsic));
        }
        std::fs::create_dir_all(&config.socket_dir).map_err(|source| StartError::SocketDir {
            dir: config.socket_dir.clone(),
            source,
        })?;
        let mut listeners = Vec::new();
        for function in config.functions() {
            let path = config.socket_path(function);
            let listener = bind(&path).map_err(|source| StartError::Listen {
                path: path.clone(),
                source,
            })?;
            listeners.push((function, listener));
        }
        let notifiers = Arc::new(ConfigNotifiers::new(config.vsics));
        let quiesce = Arc::new(RwLock::new(()));
        let poll = Arc::new(PollPolicy::new(
            config.poll_max,
            PollPolicy::available_cores(),
        ));
        for (function, listener) in listeners {
            let state = Arc::new(FunctionState {
                function,
                num_queues: match function {
                    Function::Pf => 1,
                    Function::Vsic(_) => config.queues_per_vsic,
                },
                target: Arc::clone(&target),
                notifiers: Arc::clone(&notifiers),
                quiesce: Arc::clone(&quiesce),
                log: RefusalLog::default(),
                poll: Arc::clone(&poll),
                workarounds: config.workarounds,
            });
            thread::Builder::new()
                .name(format!("{}-listen", state.name()))
                .spawn(move || serve_function(listener, state))
                .map_err(StartError::Thread)?;
        }
        Ok(Front {
            config,
            target,
            quiesce,
            notifiers,
        })
    }

    /// Where admin commands issued outside the PF (the management socket)
    /// report VSICs whose capacity changed, so their frontends are told.
    pub fn config_changes(&self) -> Arc<dyn ConfigChangeSink> {
        Arc::clone(&self.notifiers) as Arc<dyn ConfigChangeSink>
    }

    /// Stops cleanly: waits for requests in flight (none starts after),
    /// makes completed writes durable and removes the sockets. The caller
    /// then exits the process.
    pub fn shutdown(&self) {
        let held = self.quiesce.write().unwrap_or_else(|e| e.into_inner());
        // The drives themselves, not a FLUSH per VSIC: a disabled VSIC
        // would refuse it (and count a violation), leaving writes unsynced.
        if let Err(e) = self.target.sync_all() {
            error!("shutdown: completed writes may not be durable: {e}");
        }
        for function in self.config.functions() {
            let _ = std::fs::remove_file(self.config.socket_path(function));
        }
        // Keep the queues stopped until the process is gone.
        std::mem::forget(held);
    }
}

/// Binds `path`, replacing a stale socket but never a live one or a file
/// that is not a socket.
fn bind(path: &Path) -> io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // A listener without a path: the front removes the sockets itself.
    Ok(Listener::from(UnixListener::bind(path)?))
}

/// Serves one function forever: one frontend at a time, a fresh device
/// session (queues, memory map, workers) for each.
fn serve_function(mut listener: Listener, state: Arc<FunctionState>) {
    let name = state.name();
    loop {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = FunctionBackend::new(Arc::clone(&state), mem.clone());
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                error!("{name}: cannot set up the device: {e}");
                backend.stop_workers();
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if state.workarounds.lost_kick_watch {
            if let Err(e) = backend.watch_notifications(&daemon.get_epoll_handlers()) {
                // Still usable: only a lost kick would no longer be recovered.
                warn!("{name}: cannot watch for lost queue notifications: {e}");
            }
        }
        if let Err(e) = backend.arm_completion_timers(&daemon.get_epoll_handlers()) {
            // Only the drive timing model needs them: without, scheduled
            // completions wait for the queue's next request.
            warn!("{name}: no completion timers: {e}");
        }
        if let Err(e) = daemon.start(&mut listener) {
            warn!("{name}: accepting a frontend failed: {e}");
            backend.stop_workers();
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        info!("{name}: frontend connected");
        if let Function::Vsic(vsic) = state.function {
            state.target.frontend_joined(vsic);
        }
        match daemon.wait() {
            Ok(())
            | Err(DaemonError::HandleRequest(
                VhostError::Disconnected | VhostError::PartialMessage,
            )) => {
                info!("{name}: frontend disconnected")
            }
            Err(e) => warn!("{name}: frontend connection ended: {e}"),
        }
        if let Function::Vsic(vsic) = state.function {
            state.notifiers.set(vsic, None);
            state.target.frontend_left(vsic);
        }
        let session = backend.watch();
        backend.stop_workers();
        drop(daemon);
        drop(backend);
        while !session.wait_ended(Duration::from_secs(10)) {
            warn!("{name}: still finishing the last frontend's requests");
        }
    }
}

#[cfg(test)]
mod tests {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{
        Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    };
    use vhost::VhostBackend;

    use super::*;
    use crate::front::tests::{FakeTarget, DISK_SIZE};

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vsicd-front-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Connects like a frontend does and reads the capacity.
    fn handshake(path: &Path, queues: u64) -> u64 {
        let mut fe = Frontend::connect(path, 1).unwrap();
        let features = fe.get_features().unwrap();
        assert_ne!(
            features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        let protocol = fe.get_protocol_features().unwrap();
        assert!(
            protocol.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)
        );
        fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)
            .unwrap();
        fe.set_owner().unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), queues);
        fe.set_features(features).unwrap();
        let (_, config) = fe
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0; 60])
            .unwrap();
        assert_eq!(u16::from_le_bytes([config[34], config[35]]) as u64, queues);
        u64::from_le_bytes(config[0..8].try_into().unwrap())
    }

    #[test]
    fn serves_every_function_across_reconnects() {
        let _serial = crate::front::tests::SOCKET_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("serve");
        let config = FrontConfig {
            socket_dir: dir.clone(),
            vsics: 2,
            queues_per_vsic: 3,
            poll_max: Duration::from_micros(50),
            workarounds: Default::default(),
        };
        let front = Front::start(config.clone(), Arc::new(FakeTarget::new())).unwrap();
        for _round in 0..3 {
            assert_eq!(handshake(&config.socket_path(Function::Pf), 1), 0);
            assert_eq!(
                handshake(&config.socket_path(Function::Vsic(0)), 3),
                DISK_SIZE as u64 / 512
            );
            assert_eq!(handshake(&config.socket_path(Function::Vsic(1)), 3), 0);
        }
        // A second front on the same directory must not steal live sockets.
        let err = Front::start(config.clone(), Arc::new(FakeTarget::new()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
        front.shutdown();
        assert!(!config.socket_path(Function::Pf).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A driver's view of one 16-entry split virtqueue in a memfd that
    /// it shares with the daemon, as a VMM would.
    struct SharedQueue {
        mem: std::fs::File,
        published: u16,
    }

    impl SharedQueue {
        const SIZE: u16 = 16;
        /// Where the VMM pretends to have the memory mapped.
        const VMM_BASE: u64 = 0x7000_0000;
        const DESC: u64 = 0x0;
        const AVAIL: u64 = 0x1000;
        const USED: u64 = 0x2000;

        /// Connects a frontend to `path` and starts queue 0 of it.
        fn start(path: &Path) -> (Frontend, SharedQueue, vmm_sys_util::eventfd::EventFd) {
            use std::os::fd::{AsRawFd, FromRawFd};
            use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
            use vmm_sys_util::eventfd::EventFd;

            // SAFETY: memfd_create with a valid name; the result is checked.
            let fd = unsafe { libc::memfd_create(c"vsicd-test".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a fresh descriptor owned by nobody else.
            let mem = unsafe { std::fs::File::from_raw_fd(fd) };
            mem.set_len(1 << 20).unwrap();
            let mut fe = Frontend::connect(path, 1).unwrap();
            fe.set_owner().unwrap();
            let features = fe.get_features().unwrap();
            let wanted = (1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
            fe.set_features(features & wanted).unwrap();
            fe.set_protocol_features(VhostUserProtocolFeatures::MQ)
                .unwrap();
            let region = VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: 1 << 20,
                userspace_addr: Self::VMM_BASE,
                mmap_offset: 0,
                mmap_handle: mem.as_raw_fd(),
            };
            fe.set_mem_table(&[region]).unwrap();
            fe.set_vring_num(0, Self::SIZE).unwrap();
            let rings = VringConfigData {
                queue_max_size: Self::SIZE,
                queue_size: Self::SIZE,
                flags: 0,
                desc_table_addr: Self::VMM_BASE + Self::DESC,
                used_ring_addr: Self::VMM_BASE + Self::USED,
                avail_ring_addr: Self::VMM_BASE + Self::AVAIL,
                log_addr: None,
            };
            fe.set_vring_addr(0, &rings).unwrap();
            fe.set_vring_base(0, 0).unwrap();
            let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            fe.set_vring_call(0, &call).unwrap();
            let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            fe.set_vring_kick(0, &kick).unwrap();
            fe.set_vring_enable(0, true).unwrap();
            (fe, SharedQueue { mem, published: 0 }, kick)
        }

        fn put(&self, addr: u64, bytes: &[u8]) {
            std::os::unix::fs::FileExt::write_all_at(&self.mem, bytes, addr).unwrap();
        }

        fn get<const N: usize>(&self, addr: u64) -> [u8; N] {
            let mut buf = [0u8; N];
            std::os::unix::fs::FileExt::read_exact_at(&self.mem, &mut buf, addr).unwrap();
            buf
        }

        /// Publishes a 512-byte read of sector `n` in descriptors 3n..3n+2
        /// (no kick: that is up to the caller).
        fn publish_read(&mut self, n: u16) {
            let base = 0x10000 + u64::from(n) * 0x1000;
            let mut header = [0u8; 16];
            header[8..].copy_from_slice(&u64::from(n).to_le_bytes());
            self.put(base, &header); // type 0: VIRTIO_BLK_T_IN
            self.put(base + 0x400, &[0xff]);
            let chain = [
                (base, 16u32, 1u16),
                (base + 0x100, 512, 1 | 2),
                (base + 0x400, 1, 2),
            ];
            for (i, (addr, len, flags)) in chain.into_iter().enumerate() {
                let index = 3 * n + i as u16;
                let mut desc = [0u8; 16];
                desc[0..8].copy_from_slice(&addr.to_le_bytes());
                desc[8..12].copy_from_slice(&len.to_le_bytes());
                desc[12..14].copy_from_slice(&flags.to_le_bytes());
                desc[14..16].copy_from_slice(&(index + 1).to_le_bytes());
                self.put(Self::DESC + u64::from(index) * 16, &desc);
            }
            let slot = Self::AVAIL + 4 + u64::from(self.published % Self::SIZE) * 2;
            self.put(slot, &(3 * n).to_le_bytes());
            self.published += 1;
            self.put(Self::AVAIL + 2, &self.published.to_le_bytes());
        }

        fn used_idx(&self) -> u16 {
            u16::from_le_bytes(self.get(Self::USED + 2))
        }

        /// Waits up to `limit` for the used index to reach `n`.
        fn wait_used(&self, n: u16, limit: Duration) -> bool {
            let deadline = std::time::Instant::now() + limit;
            while self.used_idx() != n {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                thread::sleep(Duration::from_millis(5));
            }
            true
        }
    }

    #[test]
    fn serves_requests_whose_kick_never_arrived() {
        let _serial = crate::front::tests::SOCKET_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = test_dir("lost-kick");
        let config = FrontConfig {
            socket_dir: dir.clone(),
            vsics: 1,
            queues_per_vsic: 1,
            poll_max: Duration::ZERO,
            workarounds: Default::default(),
        };
        let front = Front::start(config.clone(), Arc::new(FakeTarget::new())).unwrap();
        let (_fe, mut queue, kick) = SharedQueue::start(&config.socket_path(Function::Vsic(0)));
        // A kicked request first: the worker is up and asleep afterwards.
        queue.publish_read(0);
        kick.write(1).unwrap();
        assert!(
            queue.wait_used(1, Duration::from_secs(5)),
            "kicked request not served"
        );
        // The next request's kick is lost on the way (as when QEMU's TCG
        // sends a notify write to the wrong device).
        queue.publish_read(1);
        assert!(
            queue.wait_used(2, Duration::from_secs(5)),
            "a request without a kick waited forever"
        );
        let status: [u8; 1] = queue.get(0x11400);
        assert_eq!(status, [0], "served as a normal read");
        let data: [u8; 4] = queue.get(0x11100);
        assert_eq!(data, [10, 11, 12, 13], "sector 1 of the fake disk");
        front.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replaces_stale_sockets_but_not_other_files() {
        let dir = test_dir("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // A socket nobody listens on any more.
        drop(UnixListener::bind(dir.join("pf.sock")).unwrap());
        assert!(bind(&dir.join("pf.sock")).is_ok());
        std::fs::write(dir.join("vsic0.sock"), b"data").unwrap();
        assert!(bind(&dir.join("vsic0.sock")).is_err());
        assert_eq!(std::fs::read(dir.join("vsic0.sock")).unwrap(), b"data");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
