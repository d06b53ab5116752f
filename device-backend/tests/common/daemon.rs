//! The real `vsicd` for end-to-end tests: scratch directories, the daemon
//! on scratch drive files, its sockets and logs. Every wait is bounded and
//! every daemon is killed when its handle drops.
//!
//! vsicctl's tests include this file by path, so it uses std and libc only
//! (both packages depend on libc); what a test suite adds on top (clients,
//! command runs) lives in its own harness.

#![allow(dead_code)] // each test suite uses a different part of the harness

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A fresh scratch directory; removed on Drop unless the test failed.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "{}-test-{tag}-{}-{n}",
            env!("CARGO_PKG_NAME"),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch directory");
        ScratchDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Keep the evidence (drives, daemon logs) when a test failed.
        if std::thread::panicking() {
            eprintln!("scratch directory kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// How to start the daemon.
#[derive(Debug, Clone)]
pub struct Setup {
    pub vsics: u32,
    pub queues: u16,
    /// Size of each drive file, one entry per drive.
    pub drives: Vec<&'static str>,
    /// Existing drives (block devices) given by path; when not empty they
    /// replace the drive files of `drives`.
    pub devices: Vec<PathBuf>,
    pub extent_size: &'static str,
    pub write_through: bool,
    /// More `vsicd` arguments, as given (e.g. `--fault RULE`,
    /// `--service-latency=50us`).
    pub extra_args: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            vsics: 4,
            queues: 4,
            drives: vec!["64M", "64M"],
            devices: Vec::new(),
            extent_size: "1M",
            write_through: false,
            extra_args: Vec::new(),
        }
    }
}

/// The `vsicd` executable. Cargo names it to vsicd's own tests; the tests
/// of other packages find it in the target directory, above the `deps/`
/// folder holding their executable, unless `$VSICD` names it.
fn vsicd_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_vsicd") {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("VSICD") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join("vsicd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "vsicd binary not found next to {} or its parents: run `cargo build -p vsicd` first",
        exe.display()
    );
}

/// A running `vsicd`; SIGKILLed on Drop.
pub struct Daemon {
    child: Option<Child>,
    pub setup: Setup,
    starts: u32,
    pub dir: ScratchDir,
}

impl Daemon {
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, Setup::default())
    }

    pub fn start_with(tag: &str, setup: Setup) -> Daemon {
        let dir = ScratchDir::new(tag);
        let mut daemon = Daemon {
            child: None,
            setup,
            starts: 0,
            dir,
        };
        daemon.spawn();
        daemon
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path(&format!("vsicd-{start}.log"))
    }

    /// Starts the daemon on this directory's drives and waits until every
    /// socket accepts connections (the daemon says so on stdout).
    fn spawn(&mut self) {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = fs::File::create(&log_path).expect("create daemon log");
        let mut cmd = Command::new(vsicd_binary());
        cmd.arg("--socket-dir").arg(self.dir.path("sockets"));
        if self.setup.devices.is_empty() {
            for (n, size) in self.setup.drives.iter().enumerate() {
                cmd.arg("--drive").arg(format!(
                    "{},size={size}",
                    self.dir.path(&format!("drive{n}.img")).display()
                ));
            }
        }
        for device in &self.setup.devices {
            cmd.arg("--drive").arg(device);
        }
        cmd.args([
            "--vsics",
            &self.setup.vsics.to_string(),
            "--queues",
            &self.setup.queues.to_string(),
        ])
        .args(["--extent-size", self.setup.extent_size]);
        if self.setup.write_through {
            cmd.args(["--cache", "write-through"]);
        }
        cmd.args(&self.setup.extra_args);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn vsicd");
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "vsicd exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if fs::read_to_string(&log_path).is_ok_and(|l| l.contains("vsicd: listening on")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vsicd not ready within {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no clean shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean stop: SIGTERM, then waits (at most `timeout`) for the exit.
    /// Returns whether the daemon exited with status 0 in time.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) } == 0;
        let deadline = Instant::now() + timeout;
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the daemon (if running) and starts it again on the same
    /// drives, as after a crash (or after [`Daemon::stop`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the daemon process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The log of the current run.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    pub fn pf_socket(&self) -> PathBuf {
        self.dir.path("sockets").join("pf.sock")
    }

    pub fn vsic_socket(&self, vsic: u32) -> PathBuf {
        self.dir.path("sockets").join(format!("vsic{vsic}.sock"))
    }

    /// The management socket (the default, in the socket directory).
    pub fn mgmt_socket(&self) -> PathBuf {
        self.dir.path("sockets").join("mgmt.sock")
    }

    /// The `vhost-user:` device spec of the PF.
    pub fn pf_spec(&self) -> String {
        format!("vhost-user:{}", self.pf_socket().display())
    }

    /// The `vhost-user:` device spec of VSIC `vsic`.
    pub fn vsic_spec(&self, vsic: u32) -> String {
        format!("vhost-user:{}", self.vsic_socket(vsic).display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
