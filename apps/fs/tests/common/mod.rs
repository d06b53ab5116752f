//! Harness for vsic-fs's tests: the file system on a file (through the
//! kernel) or on a VSA of the real `vsicd` (vhost-user), and its binary.

#![allow(dead_code)] // each test file uses a different part of the harness

#[path = "../../../test-support/backend.rs"]
mod backend;
#[path = "../../../../device-backend/tests/common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub use backend::Backend;
use daemon::Setup;
use vsic_fs::Fs;

pub const FS: &str = env!("CARGO_BIN_EXE_vsic-fs");

impl Backend {
    /// A fresh VSA of `size` bytes on a vsicd whose write cache is
    /// volatile (`--volatile-cache`): a power cut ([`Backend::mgmt`])
    /// keeps a random half of the unflushed sectors (`--power-cut-seed`).
    /// Every FLUSH waits `flush_delay` before it runs (a fault rule), so a
    /// cut at a random moment likely finds a commit's writes in the cache.
    pub fn vsa_power_cut(
        tag: &str,
        size: u64,
        cache: &str,
        seed: u64,
        flush_delay: &str,
    ) -> Backend {
        Backend::vsa_on(
            tag,
            size,
            Setup {
                extra_args: [
                    "--volatile-cache",
                    cache,
                    "--power-cut-seed",
                    &seed.to_string(),
                    "--fault",
                    &format!("vsic=0,op=flush,action=delay,delay={flush_delay}"),
                ]
                .map(String::from)
                .to_vec(),
                ..Setup::default()
            },
        )
    }

    /// Runs a management command without arguments on the backend's
    /// vsicd; its reply line (panics unless it succeeded).
    pub fn mgmt(&self, command: &str) -> String {
        let d = self.daemon.as_ref().expect("a VSA backend");
        let mut s = UnixStream::connect(d.mgmt_socket()).expect("connect to the mgmt socket");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        writeln!(s, "{{\"execute\": \"{command}\"}}").expect("send");
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).expect("reply");
        assert!(reply.contains("\"return\""), "{command}: {reply}");
        reply
    }

    pub fn dev(&self) -> Box<dyn vsic_storage::BlockDevice> {
        let opts = vsic_storage::OpenOptions {
            dma_bytes: 16 << 20,
            ..vsic_storage::OpenOptions::default()
        };
        vsic_storage::open(&self.spec, &opts).unwrap_or_else(|e| panic!("open {}: {e}", self.spec))
    }

    pub fn mkfs(&self) -> Fs {
        Fs::mkfs(self.dev()).expect("mkfs")
    }

    pub fn mount(&self) -> Fs {
        Fs::mount(self.dev()).expect("mount")
    }

    /// Runs `vsic-fs --dev SPEC args...` to completion.
    pub fn fs(&self, args: &[&str]) -> Output {
        Command::new(FS)
            .arg("--dev")
            .arg(&self.spec)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vsic-fs")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
