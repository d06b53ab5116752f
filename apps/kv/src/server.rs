//! The Redis-protocol server: one thread per connection, pipelining, the
//! commands redis-benchmark and redis-cli use, Redis's own error replies.
//!
//! Updates of a pipeline are all submitted before the first answer is
//! awaited, so they join one group commit; a read waits for the
//! connection's earlier updates first (it must see them).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use crate::engine::{parse_i64, CmdError, Reply, SetCond, Store, WriteCmd};
use crate::resp::{self, Out};

/// Version reported to clients (HELLO, INFO): the Redis command set we
/// follow.
pub const REDIS_VERSION: &str = "7.0.0";

/// Serves `store` on `listener` until the process ends.
pub fn serve(store: Arc<Store>, listener: TcpListener) -> std::io::Result<()> {
    let ids = Arc::new(AtomicU64::new(1));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let store = store.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                if let Err(e) = Conn::new(store, id).run(conn) {
                    log::debug!("connection {id}: {e}");
                }
            })?;
    }
    Ok(())
}

/// What a queued answer still needs.
enum Piece {
    Bytes(Vec<u8>),
    /// The durable answer of an update, arriving on the connection's channel.
    Update,
}

struct Conn {
    store: Arc<Store>,
    id: u64,
    name: Option<Vec<u8>>,
    tx: Sender<Reply>,
    rx: Receiver<Reply>,
    queue: VecDeque<Piece>,
    quit: bool,
}

impl Conn {
    fn new(store: Arc<Store>, id: u64) -> Conn {
        let (tx, rx) = channel();
        Conn {
            store,
            id,
            name: None,
            tx,
            rx,
            queue: VecDeque::new(),
            quit: false,
        }
    }

    fn run(mut self, mut sock: TcpStream) -> std::io::Result<()> {
        let _ = sock.set_nodelay(true);
        let mut inbuf: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut start = 0usize;
        let mut chunk = vec![0u8; 64 << 10];
        let mut out = Vec::with_capacity(16 << 10);
        loop {
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            inbuf.extend_from_slice(&chunk[..n]);
            loop {
                match resp::parse(&inbuf[start..]) {
                    Ok(Some((args, used))) => {
                        start += used;
                        if !args.is_empty() {
                            self.command(args, &mut out);
                        }
                        if self.quit {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.resolve(&mut out);
                        Out(&mut out).error(&format!("ERR {e}"));
                        sock.write_all(&out)?;
                        return Ok(());
                    }
                }
            }
            inbuf.drain(..start);
            start = 0;
            self.resolve(&mut out);
            if !out.is_empty() {
                sock.write_all(&out)?;
                out.clear();
            }
            if self.quit {
                return Ok(());
            }
        }
    }

    /// Waits for every queued update answer and appends all answers, in
    /// order, to `out`.
    fn resolve(&mut self, out: &mut Vec<u8>) {
        while let Some(p) = self.queue.pop_front() {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Update => {
                    let reply = self
                        .rx
                        .recv()
                        .unwrap_or_else(|_| Reply::Err(CmdError::Storage("the log thread has stopped".into())));
                    write_reply(&mut Out(out), &reply);
                }
            }
        }
    }

    fn update(&mut self, cmd: WriteCmd) {
        self.store.submit(cmd, self.tx.clone());
        self.queue.push_back(Piece::Update);
    }

    fn command(&mut self, args: Vec<Vec<u8>>, out: &mut Vec<u8>) {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(&(canonical, arity, writes)) = COMMANDS.iter().find(|(n, _, _)| *n == name) else {
            self.immediate(out, |o| o.error(&unknown_command(&args)));
            return;
        };
        let argc = args.len() as i32;
        if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
            self.immediate(out, |o| o.error(&format!("ERR wrong number of arguments for '{canonical}' command")));
            return;
        }
        if writes {
            self.write_command(canonical, args, out);
        } else {
            // Reads see this connection's earlier updates.
            self.resolve(out);
            self.read_command(canonical, &args, &mut Out(out));
        }
    }

    /// Appends an answer that needs nothing from the log, keeping order.
    fn immediate(&mut self, out: &mut Vec<u8>, f: impl FnOnce(&mut Out)) {
        if self.queue.is_empty() {
            f(&mut Out(out));
        } else {
            let mut b = Vec::new();
            f(&mut Out(&mut b));
            self.queue.push_back(Piece::Bytes(b));
        }
    }

    fn write_command(&mut self, name: &str, mut args: Vec<Vec<u8>>, out: &mut Vec<u8>) {
        let cmd = match name {
            "set" => {
                let mut cond = SetCond::Always;
                for opt in &args[3..] {
                    match (opt.to_ascii_lowercase().as_slice(), cond) {
                        (b"nx", SetCond::Always) => cond = SetCond::Nx,
                        (b"xx", SetCond::Always) => cond = SetCond::Xx,
                        _ => return self.immediate(out, |o| o.error("ERR syntax error")),
                    }
                }
                let value = args.swap_remove(2);
                let key = args.swap_remove(1);
                WriteCmd::Set { key, value, cond }
            }
            "del" => WriteCmd::Del(args.split_off(1)),
            "mset" => {
                if args.len() % 2 != 1 {
                    return self.immediate(out, |o| o.error("ERR wrong number of arguments for 'mset' command"));
                }
                let rest = args.split_off(1);
                let mut pairs = Vec::with_capacity(rest.len() / 2);
                let mut it = rest.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                WriteCmd::MSet(pairs)
            }
            "incr" => WriteCmd::IncrBy(args.swap_remove(1), 1),
            "decr" => WriteCmd::IncrBy(args.swap_remove(1), -1),
            "append" => {
                let v = args.swap_remove(2);
                WriteCmd::Append(args.swap_remove(1), v)
            }
            "flushall" => {
                if args.len() > 2 || args.get(1).is_some_and(|a| !matches!(a.to_ascii_lowercase().as_slice(), b"sync" | b"async")) {
                    return self.immediate(out, |o| o.error("ERR syntax error"));
                }
                WriteCmd::FlushAll
            }
            _ => unreachable!("every writing command is handled"),
        };
        self.update(cmd);
    }

    fn read_command(&mut self, name: &str, args: &[Vec<u8>], o: &mut Out) {
        match name {
            "ping" => match args.get(1) {
                Some(m) => o.bulk(m),
                None => o.simple("PONG"),
            },
            "echo" => o.bulk(&args[1]),
            "get" => match self.store.get(&args[1]) {
                Some(v) => o.bulk(&v),
                None => o.nil(),
            },
            "mget" => {
                let ix = self.store.read();
                o.array(args.len() - 1);
                for k in &args[1..] {
                    match ix.get(k) {
                        Some(v) => o.bulk(v),
                        None => o.nil(),
                    }
                }
            }
            "exists" => {
                let ix = self.store.read();
                o.int(args[1..].iter().filter(|k| ix.contains(k)).count() as i64)
            }
            "strlen" => o.int(self.store.read().get(&args[1]).map_or(0, |v| v.len()) as i64),
            "dbsize" => o.int(self.store.read().len() as i64),
            "keys" => {
                let keys = self.store.read().keys(&args[1]);
                o.array(keys.len());
                keys.iter().for_each(|k| o.bulk(k));
            }
            "scan" => self.scan(args, o),
            "info" => self.info(args, o),
            "config" => config(args, o),
            "command" => command(args, o),
            "hello" => self.hello(args, o),
            "client" => self.client(args, o),
            "select" => match parse_i64(&args[1]) {
                None => o.error("ERR value is not an integer or out of range"),
                Some(0) => o.simple("OK"),
                Some(_) => o.error("ERR DB index is out of range"),
            },
            "quit" => {
                o.simple("OK");
                self.quit = true;
            }
            _ => unreachable!("every reading command is handled"),
        }
    }

    fn scan(&self, args: &[Vec<u8>], o: &mut Out) {
        let Some(cursor) = std::str::from_utf8(&args[1]).ok().and_then(|s| s.parse::<u64>().ok()) else {
            return o.error("ERR invalid cursor");
        };
        let mut count = 10usize;
        let mut pattern: Option<&[u8]> = None;
        let mut i = 2;
        while i < args.len() {
            let opt = args[i].to_ascii_lowercase();
            let Some(val) = args.get(i + 1) else {
                return o.error("ERR syntax error");
            };
            match opt.as_slice() {
                b"count" => match parse_i64(val) {
                    None => return o.error("ERR value is not an integer or out of range"),
                    Some(n) if n < 1 => return o.error("ERR syntax error"),
                    Some(n) => count = n as usize,
                },
                b"match" => pattern = Some(val),
                // Every key is a string.
                b"type" if val.eq_ignore_ascii_case(b"string") => {}
                b"type" => {
                    o.array(2);
                    o.bulk(b"0");
                    o.array(0);
                    return;
                }
                _ => return o.error("ERR syntax error"),
            }
            i += 2;
        }
        let (next, keys) = self.store.read().scan(cursor, count, pattern);
        o.array(2);
        o.bulk(next.to_string().as_bytes());
        o.array(keys.len());
        keys.iter().for_each(|k| o.bulk(k));
    }

    fn info(&self, args: &[Vec<u8>], o: &mut Out) {
        let s = self.store.stats();
        let section = args.get(1).map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
        let want = |name: &str| matches!(section.as_deref(), None | Some("all") | Some("everything") | Some("default")) || section.as_deref() == Some(name);
        let mut text = String::new();
        if want("server") {
            text += &format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nvsic_kv_version:{}\r\nprocess_id:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            );
        }
        if want("persistence") {
            text += &format!(
                "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\n\
                 aof_enabled:1\r\naof_rewrite_in_progress:{}\r\naof_last_write_status:{}\r\n\
                 vsic_kv_device:{}\r\nvsic_kv_durability:every update flushed before its reply\r\n\
                 vsic_kv_region_blocks:{}\r\nvsic_kv_used_blocks:{}\r\nvsic_kv_active_region:{}\r\nvsic_kv_generation:{}\r\n\
                 vsic_kv_epoch:{}\r\nvsic_kv_group_commits:{}\r\nvsic_kv_records:{}\r\nvsic_kv_compactions:{}\r\n\
                 vsic_kv_recovered_records:{}\r\n\r\n",
                u8::from(s.compacting),
                if s.failed { "err" } else { "ok" },
                s.device,
                s.region_blocks,
                s.used_blocks,
                s.active_region,
                s.generation,
                s.epoch,
                s.batches,
                s.records,
                s.compactions,
                s.recovered_records
            );
        }
        if want("keyspace") {
            text += "# Keyspace\r\n";
            if s.keys > 0 {
                text += &format!("db0:keys={},expires=0,avg_ttl=0\r\n", s.keys);
            }
            text += "\r\n";
        }
        o.bulk(text.trim_end_matches("\r\n").as_bytes());
    }

    fn hello(&mut self, args: &[Vec<u8>], o: &mut Out) {
        if let Some(v) = args.get(1) {
            match parse_i64(v) {
                None => return o.error("ERR Protocol version is not an integer or out of range"),
                Some(2) => {}
                Some(_) => return o.error("NOPROTO unsupported protocol version"),
            }
            let mut i = 2;
            while i < args.len() {
                match args[i].to_ascii_lowercase().as_slice() {
                    b"setname" if i + 1 < args.len() => {
                        self.name = Some(args[i + 1].clone());
                        i += 2;
                    }
                    b"auth" if i + 2 < args.len() => i += 3,
                    _ => return o.error(&format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i]))),
                }
            }
        }
        o.array(14);
        o.bulk(b"server");
        o.bulk(b"redis");
        o.bulk(b"version");
        o.bulk(REDIS_VERSION.as_bytes());
        o.bulk(b"proto");
        o.int(2);
        o.bulk(b"id");
        o.int(self.id as i64);
        o.bulk(b"mode");
        o.bulk(b"standalone");
        o.bulk(b"role");
        o.bulk(b"master");
        o.bulk(b"modules");
        o.array(0);
    }

    fn client(&mut self, args: &[Vec<u8>], o: &mut Out) {
        let sub = args[1].to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"setname", 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    o.error("ERR Client names cannot contain spaces, newlines or special characters.");
                } else {
                    self.name = (!args[2].is_empty()).then(|| args[2].clone());
                    o.simple("OK");
                }
            }
            (b"getname", 2) => match &self.name {
                Some(n) => o.bulk(n),
                None => o.nil(),
            },
            (b"id", 2) => o.int(self.id as i64),
            (b"setname" | b"getname" | b"id", _) => o.error(&format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(&sub)
            )),
            _ => o.error(&format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }
}

/// (name, Redis arity, is an update).
const COMMANDS: &[(&str, i32, bool)] = &[
    ("ping", -1, false),
    ("echo", 2, false),
    ("set", -3, true),
    ("get", 2, false),
    ("del", -2, true),
    ("exists", -2, false),
    ("mset", -3, true),
    ("mget", -2, false),
    ("incr", 2, true),
    ("decr", 2, true),
    ("append", 3, true),
    ("strlen", 2, false),
    ("dbsize", 1, false),
    ("keys", 2, false),
    ("scan", -2, false),
    ("flushall", -1, true),
    ("info", -1, false),
    ("config", -2, false),
    ("command", -1, false),
    ("hello", -1, false),
    ("client", -2, false),
    ("select", 2, false),
    ("quit", -1, false),
];

/// Redis's reply to a command it does not know.
fn unknown_command(args: &[Vec<u8>]) -> String {
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let a = String::from_utf8_lossy(a);
        let room = 128 - rest.len();
        let a: String = a.chars().take(room).collect();
        rest += &format!("'{a}' ");
    }
    let name: String = String::from_utf8_lossy(&args[0]).chars().take(128).collect();
    format!("ERR unknown command '{name}', with args beginning with: {rest}")
}

fn write_reply(o: &mut Out, r: &Reply) {
    match r {
        Reply::Ok => o.simple("OK"),
        Reply::Nil => o.nil(),
        Reply::Int(n) => o.int(*n),
        Reply::Err(CmdError::NotInteger) => o.error("ERR value is not an integer or out of range"),
        Reply::Err(CmdError::Overflow) => o.error("ERR increment or decrement would overflow"),
        Reply::Err(CmdError::TooLarge) => o.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
        Reply::Err(e) => o.error(&format!("ERR vsic-kv: {e}")),
    }
}

/// CONFIG GET with what redis-benchmark and redis-cli ask about.
fn config(args: &[Vec<u8>], o: &mut Out) {
    let sub = args[1].to_ascii_lowercase();
    if sub.as_slice() != b"get" {
        return o.error(&format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&args[1])
        ));
    }
    if args.len() < 3 {
        return o.error("ERR wrong number of arguments for 'config|get' command");
    }
    const PARAMS: &[(&str, &str)] = &[("appendonly", "yes"), ("appendfsync", "always"), ("save", ""), ("databases", "1")];
    let mut found: Vec<(&str, &str)> = Vec::new();
    for pat in &args[2..] {
        let pat = pat.to_ascii_lowercase();
        for &(k, v) in PARAMS {
            if crate::index::glob_match(&pat, k.as_bytes()) && !found.iter().any(|(f, _)| *f == k) {
                found.push((k, v));
            }
        }
    }
    o.array(found.len() * 2);
    for (k, v) in found {
        o.bulk(k.as_bytes());
        o.bulk(v.as_bytes());
    }
}

/// COMMAND, COMMAND COUNT, COMMAND DOCS (empty: no documentation here).
fn command(args: &[Vec<u8>], o: &mut Out) {
    match args.get(1).map(|a| a.to_ascii_lowercase()) {
        None => {
            o.array(COMMANDS.len());
            for &(name, arity, writes) in COMMANDS {
                o.array(6);
                o.bulk(name.as_bytes());
                o.int(i64::from(arity));
                o.array(1);
                o.simple(if writes { "write" } else { "readonly" });
                let keyed = !matches!(
                    name,
                    "ping" | "echo" | "dbsize" | "keys" | "scan" | "flushall" | "info" | "config" | "command" | "hello" | "client" | "select" | "quit"
                );
                let (first, last, step) = match name {
                    _ if !keyed => (0, 0, 0),
                    "mset" => (1, -1, 2),
                    "del" | "exists" | "mget" => (1, -1, 1),
                    _ => (1, 1, 1),
                };
                o.int(first);
                o.int(last);
                o.int(step);
            }
        }
        Some(s) if s == b"count" => o.int(COMMANDS.len() as i64),
        Some(s) if s == b"docs" => o.array(0),
        Some(_) => o.error(&format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}
