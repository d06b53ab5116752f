//! Test harness: a real `vsicd` on scratch drive files (vsicd's own test
//! harness, [`daemon`]), and `vsicctl` runs against it.

#![allow(dead_code, unused_imports)] // each test file uses a different part of the harness

#[path = "../../../device-backend/tests/common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::Command;

pub use daemon::{Daemon, ScratchDir, Setup};

/// The suite runs vsicctl through the management socket (the `cli_mgmt`
/// test crate: cli.rs's tests once more over the other transport).
pub const VIA_MGMT: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"cli_mgmt");

pub const VSICS: u32 = 4;
pub const QUEUES: u32 = 2;
pub const DRIVE_SIZE: &str = "256M";

/// The daemon every test runs against: two 256 MiB drives, 4 VSICs of 2
/// queues each.
pub fn start_daemon() -> Daemon {
    let setup = Setup {
        vsics: VSICS,
        queues: QUEUES as u16,
        drives: vec![DRIVE_SIZE; 2],
        ..Setup::default()
    };
    Daemon::start_with("vsicd", setup)
}

/// What the vsicctl tests add to the daemon.
impl Daemon {
    /// Runs `vsicctl --vhost-user PF args...`, or, in the `cli_mgmt` test
    /// suite (cli.rs again), `vsicctl --mgmt MGMT_SOCKET args...`.
    pub fn ctl(&self, args: &[&str]) -> Outcome {
        let (flag, socket) = if VIA_MGMT {
            ("--mgmt", self.dir.path("sockets").join("mgmt.sock"))
        } else {
            ("--vhost-user", self.pf_socket())
        };
        let mut all: Vec<&str> = vec![flag, path_str(&socket)];
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
