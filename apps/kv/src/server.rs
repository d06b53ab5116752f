//! The Redis-protocol server: one event loop (epoll) that owns the store,
//! as Redis has one; pipelining, many clients, the commands
//! redis-benchmark and redis-cli use, Redis's own error replies.
//!
//! Each round of the loop reads what every ready connection sent, answers
//! reads at once, and collects the updates of all connections; then one
//! [`Engine::commit`] makes them durable together (group commit: one
//! write, one flush) and every answer goes out. A read that follows an
//! update of the same connection waits for the next round, so it sees that
//! update. Between rounds, compaction proceeds step by step.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use crate::engine::{parse_i64, CmdError, Engine, Reply, SetCond, Stats, WriteCmd};
use crate::index::Index;
use crate::resp::{self, Out};

/// Version reported to clients (HELLO, INFO): the Redis command set we
/// follow.
pub const REDIS_VERSION: &str = "7.0.0";

const LISTENER: u64 = 0;
/// Bytes read from one connection per round, so one client cannot starve
/// the others.
const READ_PER_ROUND: usize = 1 << 20;

/// Serves the store on `listener` until the process ends.
pub fn serve(mut engine: Engine, listener: TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id = 1u64;
    // Connections with input left to parse (stopped at a read after an
    // update, or at the per-round limit).
    let mut backlog: HashSet<u64> = HashSet::new();
    let mut background = false;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let timeout = if background || !backlog.is_empty() {
            0
        } else {
            1000
        };
        let n = ep.wait(&mut events, timeout)?;
        let mut touched: Vec<u64> = backlog.drain().collect();
        for ev in &events[..n] {
            let (token, flags) = (ev.u64, ev.events);
            if token == LISTENER {
                accept_all(&listener, &ep, &mut conns, &mut next_id);
                continue;
            }
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            if flags & libc::EPOLLOUT as u32 != 0 {
                c.flush_out(&ep);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                c.read_in(&mut chunk);
                touched.push(token);
            }
        }
        // Parse: answer reads, collect updates.
        let mut cmds: Vec<WriteCmd> = Vec::new();
        {
            let ix = engine.index();
            for id in &touched {
                if let Some(c) = conns.get_mut(id) {
                    if c.parse(&ix, &engine, &mut cmds) {
                        backlog.insert(*id);
                    }
                }
            }
        }
        // One group commit for every update of this round.
        let replies = engine.commit(cmds);
        for id in touched {
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            c.render(&replies);
            c.flush_out(&ep);
            let answered = c.out.is_empty() && !backlog.contains(&id);
            if c.dead || (c.closing && c.out.is_empty()) || (c.eof && answered) {
                let _ = ep.del(c.sock.as_raw_fd());
                conns.remove(&id);
                backlog.remove(&id);
            }
        }
        background = engine.background();
    }
}

fn accept_all(
    listener: &TcpListener,
    ep: &Epoll,
    conns: &mut HashMap<u64, Conn>,
    next_id: &mut u64,
) {
    loop {
        match listener.accept() {
            Ok((sock, _)) => {
                let id = *next_id;
                *next_id += 1;
                if sock.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = sock.set_nodelay(true);
                if ep.add(sock.as_raw_fd(), id, libc::EPOLLIN as u32).is_err() {
                    continue;
                }
                conns.insert(id, Conn::new(sock, id));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors and the like: try again next round.
                log::warn!("accept: {e}");
                return;
            }
        }
    }
}

/// An answer in a connection's order.
enum Piece {
    Bytes(Vec<u8>),
    /// The answer to update number N of this round's commit.
    Update(usize),
}

struct Conn {
    sock: TcpStream,
    id: u64,
    name: Option<Vec<u8>>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    queue: VecDeque<Piece>,
    /// Close once `out` is written (QUIT, protocol error).
    closing: bool,
    /// The peer shut its side: close once everything is answered.
    eof: bool,
    /// The socket failed: drop the connection now.
    dead: bool,
    /// EPOLLOUT is armed.
    want_out: bool,
}

impl Conn {
    fn new(sock: TcpStream, id: u64) -> Conn {
        Conn {
            sock,
            id,
            name: None,
            inbuf: Vec::new(),
            out: Vec::new(),
            queue: VecDeque::new(),
            closing: false,
            eof: false,
            dead: false,
            want_out: false,
        }
    }

    fn read_in(&mut self, chunk: &mut [u8]) {
        let mut total = 0;
        while total < READ_PER_ROUND {
            match self.sock.read(chunk) {
                Ok(0) => {
                    // The peer is done sending; answer what it sent, then close.
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    /// Handles the complete requests in `inbuf`; true if some are left
    /// for the next round (a read after an update of this round).
    fn parse(&mut self, ix: &Index, engine: &Engine, cmds: &mut Vec<WriteCmd>) -> bool {
        let mut start = 0;
        let mut updates = false;
        let mut left = false;
        while !self.closing {
            match resp::parse(&self.inbuf[start..]) {
                Ok(Some((args, used))) => {
                    if args.is_empty() {
                        start += used;
                        continue;
                    }
                    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                    let spec = COMMANDS.iter().find(|(n, _, _)| *n == name).copied();
                    let writes = spec.is_some_and(|(_, _, w)| w);
                    if updates && !writes {
                        left = true;
                        break;
                    }
                    start += used;
                    match self.command(args, spec, ix, engine) {
                        Handled::Now(b) => self.queue.push_back(Piece::Bytes(b)),
                        Handled::Update(cmd) => {
                            self.queue.push_back(Piece::Update(cmds.len()));
                            cmds.push(cmd);
                            updates = true;
                        }
                    }
                    if self.closing {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let mut b = Vec::new();
                    Out(&mut b).error(&format!("ERR {e}"));
                    self.queue.push_back(Piece::Bytes(b));
                    self.closing = true;
                    start = self.inbuf.len();
                    break;
                }
            }
        }
        self.inbuf.drain(..start);
        left
    }

    fn render(&mut self, replies: &[Reply]) {
        while let Some(p) = self.queue.pop_front() {
            match p {
                Piece::Bytes(b) => self.out.extend_from_slice(&b),
                Piece::Update(i) => {
                    let r = replies
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| Reply::Err(CmdError::Storage("no answer".into())));
                    write_reply(&mut Out(&mut self.out), &r);
                }
            }
        }
    }

    fn flush_out(&mut self, ep: &Epoll) {
        let mut done = 0;
        while done < self.out.len() {
            match self.sock.write(&self.out[done..]) {
                Ok(0) => {
                    self.dead = true;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    break;
                }
            }
        }
        self.out.drain(..done);
        let want = !self.out.is_empty() && !self.dead;
        if want != self.want_out {
            let flags = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
            if ep.modify(self.sock.as_raw_fd(), self.id, flags).is_err() {
                self.dead = true;
            }
            self.want_out = want;
        }
    }

    fn command(
        &mut self,
        mut args: Vec<Vec<u8>>,
        spec: Option<(&'static str, i32, bool)>,
        ix: &Index,
        engine: &Engine,
    ) -> Handled {
        let mut b = Vec::new();
        let o = &mut Out(&mut b);
        let Some((name, arity, writes)) = spec else {
            o.error(&unknown_command(&args));
            return Handled::Now(b);
        };
        let argc = args.len() as i32;
        if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
            o.error(&format!(
                "ERR wrong number of arguments for '{name}' command"
            ));
            return Handled::Now(b);
        }
        if writes {
            return match write_command(name, &mut args) {
                Ok(cmd) => Handled::Update(cmd),
                Err(msg) => {
                    o.error(msg);
                    Handled::Now(b)
                }
            };
        }
        match name {
            "ping" => match args.get(1) {
                Some(m) => o.bulk(m),
                None => o.simple("PONG"),
            },
            "echo" => o.bulk(&args[1]),
            "get" => match ix.get(&args[1]) {
                Some(v) => o.bulk(v),
                None => o.nil(),
            },
            "mget" => {
                o.array(args.len() - 1);
                for k in &args[1..] {
                    match ix.get(k) {
                        Some(v) => o.bulk(v),
                        None => o.nil(),
                    }
                }
            }
            "exists" => o.int(args[1..].iter().filter(|k| ix.contains(k)).count() as i64),
            "strlen" => o.int(ix.get(&args[1]).map_or(0, |v| v.len()) as i64),
            "dbsize" => o.int(ix.len() as i64),
            "keys" => {
                let keys = ix.keys(&args[1]);
                o.array(keys.len());
                keys.iter().for_each(|k| o.bulk(k));
            }
            "scan" => scan(ix, &args, o),
            "info" => info(&engine.stats_with(ix), &args, o),
            "config" => config(&args, o),
            "command" => command(&args, o),
            "hello" => self.hello(&args, o),
            "client" => self.client(&args, o),
            "select" => match parse_i64(&args[1]) {
                None => o.error("ERR value is not an integer or out of range"),
                Some(0) => o.simple("OK"),
                Some(_) => o.error("ERR DB index is out of range"),
            },
            "quit" => {
                o.simple("OK");
                self.closing = true;
            }
            _ => unreachable!("every reading command is handled"),
        }
        Handled::Now(b)
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
                    _ => {
                        return o.error(&format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(&args[i])
                        ))
                    }
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
                    o.error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
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

enum Handled {
    Now(Vec<u8>),
    Update(WriteCmd),
}

/// The update an updating command asks for, or its syntax error.
fn write_command(name: &str, args: &mut Vec<Vec<u8>>) -> Result<WriteCmd, &'static str> {
    Ok(match name {
        "set" => {
            let mut cond = SetCond::Always;
            for opt in &args[3..] {
                match (opt.to_ascii_lowercase().as_slice(), cond) {
                    (b"nx", SetCond::Always) => cond = SetCond::Nx,
                    (b"xx", SetCond::Always) => cond = SetCond::Xx,
                    _ => return Err("ERR syntax error"),
                }
            }
            let value = args.swap_remove(2);
            let key = args.swap_remove(1);
            WriteCmd::Set { key, value, cond }
        }
        "del" => WriteCmd::Del(args.split_off(1)),
        "mset" => {
            if args.len() % 2 != 1 {
                return Err("ERR wrong number of arguments for 'mset' command");
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
            if args.len() > 2
                || args.get(1).is_some_and(|a| {
                    !matches!(a.to_ascii_lowercase().as_slice(), b"sync" | b"async")
                })
            {
                return Err("ERR syntax error");
            }
            WriteCmd::FlushAll
        }
        _ => unreachable!("every updating command is handled"),
    })
}

fn scan(ix: &Index, args: &[Vec<u8>], o: &mut Out) {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
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
    let (next, keys) = ix.scan(cursor, count, pattern);
    o.array(2);
    o.bulk(next.to_string().as_bytes());
    o.array(keys.len());
    keys.iter().for_each(|k| o.bulk(k));
}

fn info(s: &Stats, args: &[Vec<u8>], o: &mut Out) {
    let section = args
        .get(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
    let want = |name: &str| {
        matches!(
            section.as_deref(),
            None | Some("all") | Some("everything") | Some("default")
        ) || section.as_deref() == Some(name)
    };
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
             vsic_kv_device:{}\r\nvsic_kv_durability:every update durable before its reply (write + flush; the write alone on a write-through device)\r\n\
             vsic_kv_region_blocks:{}\r\nvsic_kv_used_blocks:{}\r\nvsic_kv_active_region:{}\r\nvsic_kv_generation:{}\r\n\
             vsic_kv_epoch:{}\r\nvsic_kv_group_commits:{}\r\nvsic_kv_records:{}\r\nvsic_kv_compactions:{}\r\n\
             vsic_kv_recovered_records:{}\r\nvsic_kv_flushes:{}\r\nvsic_kv_write_us:{}\r\nvsic_kv_flush_us:{}\r\n\
             vsic_kv_commit_us:{}\r\n\r\n",
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
            s.recovered_records,
            s.flushes,
            s.write_us,
            s.flush_us,
            s.commit_us
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

/// The few epoll calls the loop needs.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, flags: u32) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: valid epoll fd and event.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn add(&self, fd: RawFd, token: u64, flags: u32) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, flags)
    }

    fn modify(&self, fd: RawFd, token: u64, flags: u32) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, flags)
    }

    fn del(&self, fd: RawFd) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> std::io::Result<usize> {
        loop {
            // SAFETY: the buffer holds events.len() entries.
            let n = unsafe {
                libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
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
    let name: String = String::from_utf8_lossy(&args[0])
        .chars()
        .take(128)
        .collect();
    format!("ERR unknown command '{name}', with args beginning with: {rest}")
}

fn write_reply(o: &mut Out, r: &Reply) {
    match r {
        Reply::Ok => o.simple("OK"),
        Reply::Nil => o.nil(),
        Reply::Int(n) => o.int(*n),
        Reply::Err(CmdError::NotInteger) => o.error("ERR value is not an integer or out of range"),
        Reply::Err(CmdError::Overflow) => o.error("ERR increment or decrement would overflow"),
        Reply::Err(CmdError::TooLarge) => {
            o.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
        }
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
    const PARAMS: &[(&str, &str)] = &[
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("save", ""),
        ("databases", "1"),
    ];
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
                    "ping"
                        | "echo"
                        | "dbsize"
                        | "keys"
                        | "scan"
                        | "flushall"
                        | "info"
                        | "config"
                        | "command"
                        | "hello"
                        | "client"
                        | "select"
                        | "quit"
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
