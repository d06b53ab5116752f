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
use super::channel::ConfigNotifiers;
use super::device::Device;
use super::execute::RefusalLog;
use super::poll::PollPolicy;

/// Where and how many functions to serve.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    pub socket_dir: PathBuf,
    pub vsics: u32,
    pub queues_per_vsic: u16,
    /// Longest a queue worker polls its ring after serving requests before
    /// it sleeps (adaptive, see [`super::poll`]); zero: never poll.
    pub poll_max: Duration,
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

/// The running front: every function's listener thread.
pub struct Front {
    config: FrontConfig,
    device: Arc<dyn Device>,
    quiesce: Arc<RwLock<()>>,
}

impl Front {
    /// Binds every socket, then starts serving them. When this returns
    /// `Ok`, every socket accepts connections.
    pub fn start(config: FrontConfig, device: Arc<dyn Device>) -> Result<Front, String> {
        if config.queues_per_vsic == 0 || config.queues_per_vsic > 64 {
            return Err(format!(
                "{} queues per VSIC: must be 1 to 64",
                config.queues_per_vsic
            ));
        }
        std::fs::create_dir_all(&config.socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.socket_dir.display()))?;
        let mut listeners = Vec::new();
        for function in config.functions() {
            let path = config.socket_path(function);
            let listener =
                bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
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
                device: Arc::clone(&device),
                notifiers: Arc::clone(&notifiers),
                quiesce: Arc::clone(&quiesce),
                log: RefusalLog::default(),
                poll: Arc::clone(&poll),
            });
            thread::Builder::new()
                .name(format!("{}-listen", state.name()))
                .spawn(move || serve_function(listener, state))
                .map_err(|e| format!("cannot start a listener thread: {e}"))?;
        }
        Ok(Front {
            config,
            device,
            quiesce,
        })
    }

    /// Stops cleanly: waits for requests in flight (none starts after),
    /// makes completed writes durable and removes the sockets. The caller
    /// then exits the process.
    pub fn shutdown(&self) {
        let held = self.quiesce.write().unwrap_or_else(|e| e.into_inner());
        for vsic in 0..self.config.vsics {
            // Best effort: a VSIC with nothing attached has nothing to flush.
            let _ = self.device.flush(vsic, 0);
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
        if let Err(e) = daemon.start(&mut listener) {
            warn!("{name}: accepting a frontend failed: {e}");
            backend.stop_workers();
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        info!("{name}: frontend connected");
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
    use crate::front::tests::{FakeDevice, DISK_SIZE};

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
        };
        let front = Front::start(config.clone(), Arc::new(FakeDevice::new())).unwrap();
        for _round in 0..3 {
            assert_eq!(handshake(&config.socket_path(Function::Pf), 1), 0);
            assert_eq!(
                handshake(&config.socket_path(Function::Vsic(0)), 3),
                DISK_SIZE as u64 / 512
            );
            assert_eq!(handshake(&config.socket_path(Function::Vsic(1)), 3), 0);
        }
        // A second front on the same directory must not steal live sockets.
        let err = Front::start(config.clone(), Arc::new(FakeDevice::new()))
            .err()
            .unwrap();
        assert!(err.contains("another process"), "{err}");
        front.shutdown();
        assert!(!config.socket_path(Function::Pf).exists());
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
