//! Test harness: a real `vsicd` on scratch drive files, and `vsicctl` runs
//! against it.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const VSICS: u32 = 4;
pub const QUEUES: u32 = 2;
pub const DRIVE_SIZE: &str = "256M";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh scratch directory, removed by [`ScratchDir`]'s Drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("vsicctl-test-{tag}-{}-{n}", std::process::id()));
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
        // Keep the evidence (drives, daemon log) when a test failed.
        if std::thread::panicking() {
            eprintln!("scratch directory kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// `vsicd` lives in the target directory's profile folder, next to the
/// `deps/` folder holding this test executable.
fn vsicd_binary() -> PathBuf {
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

/// Starts `vsicd` on the drives and sockets of `dir`, appending to its log.
fn spawn(dir: &ScratchDir) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path("vsicd.log"))
        .expect("open daemon log");
    let drive = |n: u32| {
        format!(
            "{},size={DRIVE_SIZE}",
            dir.path(&format!("drive{n}.img")).display()
        )
    };
    Command::new(vsicd_binary())
        .arg("--socket-dir")
        .arg(dir.path("sockets"))
        .args(["--drive", &drive(0), "--drive", &drive(1)])
        .args([
            "--vsics",
            &VSICS.to_string(),
            "--queues",
            &QUEUES.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .expect("spawn vsicd")
}

/// A running `vsicd` with two 256 MiB drives, 4 VSICs of 2 queues each.
/// Killed on Drop.
pub struct Daemon {
    child: Child,
    pub dir: ScratchDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = ScratchDir::new("vsicd");
        fs::create_dir_all(dir.path("sockets")).expect("create socket directory");
        let child = spawn(&dir);
        let mut daemon = Daemon { child, dir };
        daemon.wait_ready();
        daemon
    }

    /// Kills the daemon without warning (SIGKILL) and starts a new one on
    /// the same drives, as after a crash.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.dir);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vsicd exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if socket.exists() && UnixStream::connect(&socket).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "vsicd did not accept connections on {} within {START_TIMEOUT:?}; log:\n{}",
                    socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path("sockets").join("pf.sock")
    }

    /// The `vhost-user:` device spec of the PF.
    pub fn pf_spec(&self) -> String {
        format!("vhost-user:{}", self.socket().display())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path("vsicd.log")).unwrap_or_default()
    }

    /// Runs `vsicctl --vhost-user PF args...`.
    pub fn ctl(&self, args: &[&str]) -> Outcome {
        let socket = self.socket();
        let mut all: Vec<&str> = vec!["--vhost-user", socket.to_str().expect("utf-8 socket path")];
        all.extend_from_slice(args);
        run_ctl(&all)
    }

    /// Runs a command that must succeed, with `--json`, and parses its output.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        out.assert_success(&self.log());
        out.json()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `vsicctl` run produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn assert_success(&self, context: &str) {
        assert_eq!(self.code, 0, "vsicctl failed: {self:#?}\n{context}");
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }
}

pub fn run_ctl(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_vsicctl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run vsicctl");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
