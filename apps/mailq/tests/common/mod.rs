//! Harness for vsic-mailq's tests: the queue on a file (through the kernel)
//! or on a VSA of the real `vsicd` (vhost-user), the `vsic-mailq` binary,
//! and an SMTP client that records which messages got their 250.

#![allow(dead_code)] // each test file uses a different part of the harness

#[path = "../../../../device-backend/tests/common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use daemon::{Daemon, ScratchDir, Setup};
#[allow(unused_imports)] // not every test file drives SMTP itself
pub use vsic_mailq::client::{dot_stuff, Client};

pub const MAILQ: &str = env!("CARGO_BIN_EXE_vsic-mailq");

/// Where a test's queue lives.
pub struct Backend {
    pub spec: String,
    pub dir: ScratchDir,
    /// Keeps vsicd running for vhost-user backends.
    pub daemon: Option<Daemon>,
}

impl Backend {
    /// A fresh file of `size` bytes.
    pub fn file(tag: &str, size: u64) -> Backend {
        let dir = ScratchDir::new(tag);
        let path = dir.path("mailq.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("create the queue file");
        Backend {
            spec: format!("file:{}", path.display()),
            dir,
            daemon: None,
        }
    }

    /// A fresh Maildir-style queue directory (the kernel-path baseline).
    pub fn maildir(tag: &str) -> Backend {
        let dir = ScratchDir::new(tag);
        let path = dir.path("maildir");
        Backend {
            spec: format!("maildir:{}", path.display()),
            dir,
            daemon: None,
        }
    }

    /// A fresh VSA of `size` bytes in slot 0 of VSIC 0 of a real vsicd.
    pub fn vsa(tag: &str, size: u64) -> Backend {
        let d = Daemon::start_with(
            tag,
            Setup {
                vsics: 1,
                queues: 1,
                drives: vec!["256M"],
                ..Setup::default()
            },
        );
        let admin = vsic::admin::AdminClient::open(&d.pf_spec()).expect("open the PF");
        let v = admin.vsa_create(size, 1).expect("create the VSA");
        admin.attach(0, 0, &v.token, false).expect("attach the VSA");
        drop(admin);
        Backend {
            spec: d.vsic_spec(0),
            dir: ScratchDir::new(&format!("{tag}-scratch")),
            daemon: Some(d),
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
        Server::wait_ready(child, addr)
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

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A `vsic-mailq serve` process; SIGKILLed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    fn wait_ready(mut child: Child, addr: SocketAddr) -> Server {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("server exited during start-up: {st}");
            }
            if let Ok(s) = TcpStream::connect(addr) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220 ") {
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
