//! Harness for vsic-mailq's tests: the queue on a file (through the kernel)
//! or on a VSA of the real `vsicd` (vhost-user), the `vsic-mailq` binary,
//! and an SMTP client that records which messages got their 250.

#![allow(dead_code)] // each test file uses a different part of the harness

#[path = "../../../test-support/backend.rs"]
mod backend;
#[path = "../../../../device-backend/tests/common/daemon.rs"]
mod daemon;
#[path = "../../../test-support/mutate.rs"]
pub mod mutate;
#[path = "../../../../device-backend/tests/common/rng.rs"]
pub mod rng;
#[path = "../../../test-support/smtp_check.rs"]
pub mod smtp_check;

use std::io::{BufRead, BufReader};

use std::process::{Command, Output, Stdio};

pub use backend::{free_addr, Backend, Server};
#[allow(unused_imports)] // not every test file uses each of them
pub use daemon::{Daemon, ScratchDir, Setup};
#[allow(unused_imports)] // not every test file drives SMTP itself
pub use vsic_mailq::client::{dot_stuff, Client};

pub const MAILQ: &str = env!("CARGO_BIN_EXE_vsic-mailq");

impl Backend {
    /// A fresh Maildir-style queue directory (the kernel-path baseline).
    pub fn maildir(tag: &str) -> Backend {
        let dir = ScratchDir::new(tag);
        let path = dir.path("maildir");
        Backend {
            spec: format!("maildir:{}", path.display()),
            dir,
            image: None,
            daemon: None,
        }
    }

    /// Runs `vsic-mailq --dev SPEC args...` to completion.
    pub fn mailq(&self, args: &[&str]) -> Output {
        Command::new(MAILQ)
            .arg("--dev")
            .arg(&self.spec)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vsic-mailq")
    }

    /// `list --json`, parsed: (id, from, to, size, sha256) per message.
    pub fn list(&self) -> Vec<Listed> {
        let o = self.mailq(&["list", "--json"]);
        assert!(
            o.status.success(),
            "list: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list --json is JSON");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|m| Listed {
                id: m["id"].as_u64().expect("id"),
                from: m["from"].as_str().expect("from").to_string(),
                to: m["to"]
                    .as_array()
                    .expect("to")
                    .iter()
                    .map(|t| t.as_str().expect("to[i]").to_string())
                    .collect(),
                size: m["size"].as_u64().expect("size"),
                sha256: m["sha256"].as_str().expect("sha256").to_string(),
            })
            .collect()
    }

    /// Starts `vsic-mailq --dev SPEC serve` on a free loopback port.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let addr = free_addr();
        let child = Command::new(MAILQ)
            .arg("--dev")
            .arg(&self.spec)
            .args(["serve", "--smtp", &addr.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vsic-mailq serve");
        Server::wait_ready(child, addr, |s| {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220 ")
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    pub from: String,
    pub to: Vec<String>,
    pub size: u64,
    pub sha256: String,
}

/// A message body of about `len` bytes, CRLF lines, some starting with a
/// dot, derived from `tag` so every message is different.
pub fn body(tag: &str, len: usize) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
    let mut i = 0;
    while b.len() < len {
        let line = if i % 7 == 3 {
            format!(".{tag} line {i} starts with a dot\r\n")
        } else {
            format!("{tag} line {i} {}\r\n", "x".repeat(i % 60))
        };
        b.extend_from_slice(line.as_bytes());
        i += 1;
    }
    b
}

pub fn sha256_hex(b: &[u8]) -> String {
    vsic_mailq::sha256_hex(b)
}
