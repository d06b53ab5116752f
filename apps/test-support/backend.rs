//! Test harness shared by the applications' tests (included by path from
//! each app's `tests/common/mod.rs`, beside vsicd's `daemon.rs`): where a
//! test's device lives (a file through the kernel, or a VSA of the real
//! `vsicd` over vhost-user), and a server process on a loopback port.
//! Each app adds its own methods to [`Backend`] (running its binary).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::daemon::{Daemon, ScratchDir, Setup};

/// Where a test's device lives.
pub struct Backend {
    /// The device spec the app takes (`file:PATH` or `vhost-user:PATH`).
    pub spec: String,
    pub dir: ScratchDir,
    /// The image file of a `file:` backend.
    pub image: Option<PathBuf>,
    /// Keeps vsicd running for vhost-user backends.
    pub daemon: Option<Daemon>,
}

impl Backend {
    /// A fresh file of `size` bytes.
    pub fn file(tag: &str, size: u64) -> Backend {
        let dir = ScratchDir::new(tag);
        let path = dir.path("device.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("create the device file");
        Backend {
            spec: format!("file:{}", path.display()),
            dir,
            image: Some(path),
            daemon: None,
        }
    }

    /// A fresh VSA of `size` bytes, attached in slot 0 of VSIC 0 of a real
    /// vsicd.
    pub fn vsa(tag: &str, size: u64) -> Backend {
        Backend::vsa_cache(tag, size, false)
    }

    /// The same, vsicd in write-through mode when `write_through` (its
    /// functions offer no FLUSH).
    pub fn vsa_cache(tag: &str, size: u64, write_through: bool) -> Backend {
        Backend::vsa_on(
            tag,
            size,
            Setup {
                write_through,
                ..Setup::default()
            },
        )
    }

    /// A fresh VSA of `size` bytes, attached in slot 0 of VSIC 0 of a vsicd
    /// started with `setup` on one VSIC with one queue and one 256 MiB
    /// drive.
    pub fn vsa_on(tag: &str, size: u64, setup: Setup) -> Backend {
        let d = Daemon::start_with(
            tag,
            Setup {
                vsics: 1,
                queues: 1,
                drives: vec!["256M"],
                ..setup
            },
        );
        let admin = vsic::admin::AdminClient::open(&d.pf_spec()).expect("open the PF");
        let v = admin.vsa_create(size, 1).expect("create the VSA");
        admin.attach(0, 0, &v.token, false).expect("attach the VSA");
        drop(admin);
        Backend {
            spec: d.vsic_spec(0),
            dir: ScratchDir::new(&format!("{tag}-scratch")),
            image: None,
            daemon: Some(d),
        }
    }

    /// The image file of a `file:` backend.
    pub fn image(&self) -> &PathBuf {
        self.image.as_ref().expect("a file backend")
    }
}

/// A loopback address nobody listens on (right now).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A server process on a loopback port; SIGKILLed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Waits up to 20 s until `ready` says a fresh connection to `addr`
    /// is served (the connection has a 5 s read timeout).
    pub fn wait_ready(
        mut child: Child,
        addr: SocketAddr,
        ready: impl Fn(TcpStream) -> bool,
    ) -> Server {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("server exited during start-up: {st}");
            }
            if let Ok(s) = TcpStream::connect(addr) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if ready(s) {
                    return Server { child, addr };
                }
            }
            assert!(
                Instant::now() < deadline,
                "server on {addr} not ready within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
