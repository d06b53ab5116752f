//! Harness for vsic-kv's tests: the store on a file (through the kernel) or
//! on a VSA of the real `vsicd` (vhost-user), the `vsic-kv` binary, and a
//! RESP load generator that records which updates were acknowledged.

#![allow(dead_code)] // each test file uses a different part of the harness

#[path = "../../../test-support/backend.rs"]
mod backend;
#[path = "../../../../device-backend/tests/common/daemon.rs"]
mod daemon;
#[path = "../../../test-support/mutate.rs"]
pub mod mutate;
#[path = "../../../test-support/resp_check.rs"]
pub mod resp_check;
#[path = "../../../../device-backend/tests/common/rng.rs"]
pub mod rng;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use backend::{free_addr, Backend, Server};
#[allow(unused_imports)] // not every test file uses each of them
pub use daemon::{Daemon, ScratchDir, Setup};
use vsic_kv::{Store, StoreOptions};

pub const KV: &str = env!("CARGO_BIN_EXE_vsic-kv");

impl Backend {
    /// Opens the store in this process (after the tool was killed).
    pub fn open(&self) -> Store {
        let opts = vsic_storage::OpenOptions {
            dma_bytes: 32 << 20,
            ..vsic_storage::OpenOptions::default()
        };
        let dev = vsic_storage::open(&self.spec, &opts)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.spec));
        Store::open(
            dev,
            StoreOptions {
                auto_compact: false,
            },
        )
        .expect("recover the store")
    }

    /// Runs `vsic-kv --dev SPEC args...` to completion.
    pub fn kv(&self, args: &[&str]) -> Output {
        self.kv_env(args, &[])
    }

    pub fn kv_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = Command::new(KV)
            .arg("--dev")
            .arg(&self.spec)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run vsic-kv");
        out
    }

    /// Starts `vsic-kv --dev SPEC serve` on a free loopback port.
    pub fn serve(&self) -> Server {
        let addr = free_addr();
        let child = Command::new(KV)
            .arg("--dev")
            .arg(&self.spec)
            .args(["serve", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vsic-kv serve");
        Server::wait_ready(child, addr, answers_ping)
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether a RESP server on `s` answers PING (vsic-kv or redis-server).
pub fn answers_ping(mut s: TcpStream) -> bool {
    let mut b = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"+PONG\r\n"
}

/// The value a load client writes: derived from key and version, so a
/// read can tell which version it is and whether it is intact.
pub fn load_value(key: &str, version: u64) -> Vec<u8> {
    let len = 20 + (version * 131 % 1500) as usize;
    let unit = format!("{key}@{version};");
    let mut v: Vec<u8> = unit
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len.max(unit.len()))
        .collect();
    v.truncate(len.max(unit.len()));
    v
}

/// Parses a value written by [`load_value`]: (key, version) if intact.
pub fn parse_load_value(v: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let unit = s.split_inclusive(';').next()?;
    let (key, ver) = unit.strip_suffix(';')?.rsplit_once('@')?;
    let version: u64 = ver.parse().ok()?;
    (load_value(key, version) == v).then(|| (key.to_string(), version))
}

/// What the load generator got acknowledged: per key, the highest version
/// answered +OK, and the highest version sent.
#[derive(Default, Debug)]
pub struct Acks {
    pub acked: HashMap<String, u64>,
    pub sent: HashMap<String, u64>,
    pub total_acked: u64,
}

/// `clients` connections, each overwriting its own `keys` keys with
/// increasing versions, `depth` requests pipelined; runs until `stop`.
pub fn load(
    addr: SocketAddr,
    clients: usize,
    keys: usize,
    depth: usize,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Acks>> {
    let acks = Arc::new(Mutex::new(Acks::default()));
    for c in 0..clients {
        let acks = acks.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let Ok(s) = TcpStream::connect(addr) else {
                return;
            };
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let mut version = 0u64;
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                let mut req = Vec::new();
                for _ in 0..depth {
                    version += 1;
                    let key = format!("c{c}:{}", version % keys as u64);
                    let val = load_value(&key, version);
                    req.extend_from_slice(
                        format!(
                            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                            key.len(),
                            val.len()
                        )
                        .as_bytes(),
                    );
                    req.extend_from_slice(&val);
                    req.extend_from_slice(b"\r\n");
                    batch.push((key, version));
                }
                {
                    let mut a = acks.lock().unwrap();
                    for (k, v) in &batch {
                        a.sent.insert(k.clone(), *v);
                    }
                }
                if w.write_all(&req).is_err() {
                    return;
                }
                for (k, v) in batch {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(n) if n > 0 && line == "+OK\r\n" => {
                            let mut a = acks.lock().unwrap();
                            a.acked.insert(k, v);
                            a.total_acked += 1;
                        }
                        Ok(n) if n > 0 => panic!("client {c}: unexpected reply {line:?}"),
                        _ => return,
                    }
                }
            }
        });
    }
    acks
}

/// Checks every acknowledged update against the recovered store: the key
/// holds an intact value of the acknowledged version or of a later one
/// that was sent (in flight at the crash). Returns keys checked.
pub fn check_acks(store: &Store, acks: &Acks) -> usize {
    for (key, &acked) in &acks.acked {
        let v = store
            .get(key.as_bytes())
            .unwrap_or_else(|| panic!("{key}: acknowledged version {acked} lost (key missing)"));
        let (k, version) = parse_load_value(&v).unwrap_or_else(|| {
            panic!(
                "{key}: value corrupt: {:?}",
                String::from_utf8_lossy(&v[..v.len().min(80)])
            )
        });
        assert_eq!(&k, key, "{key}: holds another key's value");
        let sent = acks.sent[key];
        assert!(
            version >= acked && version <= sent,
            "{key}: holds version {version}, acknowledged {acked}, last sent {sent}"
        );
    }
    acks.acked.len()
}

/// Runs `vsic-kv put-seq n`, SIGKILLs it after `kill_after` ack lines,
/// and returns the highest i with `ack k<i>` printed (+1), i.e. how many
/// keys were acknowledged.
pub fn put_seq_killed(b: &Backend, n: u64, kill_after: u64) -> u64 {
    let mut child = Command::new(KV)
        .arg("--dev")
        .arg(&b.spec)
        .args(["put-seq", &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn put-seq");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut acked = 0u64;
    let mut killed = false;
    for line in lines.by_ref() {
        let line = line.expect("read put-seq output");
        if let Some(k) = line.strip_prefix("ack k") {
            let i: u64 = k.parse().expect("ack index");
            assert_eq!(i, acked, "acks arrive in order");
            acked = i + 1;
        } else if line.starts_with("acked=") {
            break;
        }
        if acked >= kill_after && !killed {
            let _ = child.kill();
            killed = true;
        }
    }
    let _ = child.wait();
    assert!(
        killed,
        "put-seq finished ({acked} acks) before it could be killed"
    );
    acked
}
