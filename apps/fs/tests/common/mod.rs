//! Harness for vsic-fs's tests: the file system on a file (through the
//! kernel) or on a VSA of the real `vsicd` (vhost-user), and its binary.

#![allow(dead_code)] // each test file uses a different part of the harness

#[path = "../../../test-support/backend.rs"]
mod backend;
#[path = "../../../../device-backend/tests/common/daemon.rs"]
mod daemon;

use std::process::{Command, Output, Stdio};

pub use backend::Backend;
use vsic_fs::Fs;

pub const FS: &str = env!("CARGO_BIN_EXE_vsic-fs");

impl Backend {
    fn dev(&self) -> Box<dyn vsic_storage::BlockDevice> {
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
