//! redis-cli gives the same replies from vsic-kv as from a real
//! redis-server (both on loopback, started here) for a scripted session of
//! the supported commands, including Redis's error replies; redis-benchmark
//! runs against vsic-kv without errors.
//!
//! Needs redis-server and redis-tools (ci/install-deps.sh installs them).

mod common;

use std::process::{Command, Stdio};

use common::{free_addr, Backend, ScratchDir, Server};

/// Commands whose replies must be identical. Key order in multi-key
/// listings differs between the two stores, so KEYS and SCAN only ever
/// match one key here.
const SESSION: &[&[&str]] = &[
    &["PING"],
    &["PING", "hello world"],
    &["ECHO", "echo me"],
    &["SET", "k1", "v1"],
    &["GET", "k1"],
    &["GET", "nosuchkey"],
    &["SET", "k1", "v2", "NX"],
    &["SET", "k1", "v3", "XX"],
    &["GET", "k1"],
    &["SET", "k2", "x", "XX"],
    &["SET", "k2", "x", "NX"],
    &["SET", "k2", "y", "NX", "XX"],
    &["SET", "k2", "y", "BOGUS"],
    &["EXISTS", "k1", "k2", "k1", "nosuchkey"],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MSET", "a", "1", "b"],
    &["MGET", "a", "b", "nosuchkey", "c"],
    &["INCR", "a"],
    &["INCR", "counter"],
    &["DECR", "counter"],
    &["DECR", "counter"],
    &["INCR", "k1"],
    &["SET", "big", "9223372036854775807"],
    &["INCR", "big"],
    &["SET", "neg", "-9223372036854775808"],
    &["DECR", "neg"],
    &["SET", "sp", " 1"],
    &["INCR", "sp"],
    &["APPEND", "k1", "-tail"],
    &["APPEND", "fresh", "start"],
    &["GET", "k1"],
    &["STRLEN", "k1"],
    &["STRLEN", "nosuchkey"],
    &["DBSIZE"],
    &["KEYS", "fre*"],
    &["KEYS", "nomatch*"],
    &["SCAN", "0", "MATCH", "fre?h", "COUNT", "1000"],
    &["SCAN", "notanumber"],
    &["DEL", "a", "b", "nosuchkey", "a"],
    &["EXISTS", "a"],
    &["DBSIZE"],
    &["SELECT", "0"],
    &["SELECT", "zero"],
    &["CLIENT", "SETNAME", "tester"],
    &["CLIENT", "GETNAME"],
    &["CLIENT", "SETNAME", "has space"],
    &["CLIENT", "NOSUCHSUB"],
    &["CONFIG", "GET", "appendonly"],
    &["CONFIG", "GET", "appendfsync"],
    &["CONFIG", "GET", "save"],
    &["HELLO", "4"],
    &["HELLO", "two"],
    &["NOSUCHCOMMAND"],
    &["nosuchcommand", "arg1", "arg 2"],
    &["GET"],
    &["GET", "a", "b"],
    &["SET", "onlykey"],
    &["ECHO"],
    &["DEL"],
    &["EXISTS"],
    &["MGET"],
    &["INCR"],
    &["DECR", "a", "b"],
    &["APPEND", "x"],
    &["STRLEN"],
    &["DBSIZE", "x"],
    &["KEYS"],
    &["SCAN"],
    &["SELECT"],
    &["CLIENT"],
    &["CONFIG"],
    &["FLUSHALL", "BOGUS"],
    &["FLUSHALL"],
    &["DBSIZE"],
    &["GET", "k1"],
];

/// Runs each command with `redis-cli -p PORT ARGS...` and returns the
/// transcript.
fn transcript(port: u16) -> String {
    let mut t = String::new();
    for cmd in SESSION {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(*cmd)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (package redis-tools, installed by ci/install-deps.sh)");
        t += &format!(
            "> {}\n{}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        t += &String::from_utf8_lossy(&out.stderr);
    }
    t
}

fn redis_server(dir: &ScratchDir) -> Server {
    let addr = free_addr();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (package redis-server, installed by ci/install-deps.sh)");
    Server::wait_ready(child, addr, common::answers_ping)
}

#[test]
fn redis_cli_gets_the_same_replies_as_from_redis() {
    let dir = ScratchDir::new("redis");
    let redis = redis_server(&dir);
    let want = transcript(redis.addr.port());
    let b = Backend::file("compat", 16 << 20);
    let kv = b.serve();
    let got = transcript(kv.addr.port());
    if got != want {
        for (g, w) in got.lines().zip(want.lines()) {
            if g != w {
                eprintln!("first difference:\n  vsic-kv: {g}\n  redis:   {w}");
                break;
            }
        }
        panic!("vsic-kv's transcript differs from redis-server's:\n--- vsic-kv\n{got}\n--- redis\n{want}");
    }
    assert!(
        want.contains("ERR wrong number of arguments for 'get' command"),
        "{want}"
    );
}

#[test]
fn info_persistence_and_hello_speak_for_vsic_kv() {
    let b = Backend::file("info", 16 << 20);
    let kv = b.serve();
    let run = |args: &[&str]| {
        let o = Command::new("redis-cli")
            .args(["-p", &kv.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let info = run(&["INFO", "persistence"]);
    assert!(info.starts_with("# Persistence"), "{info}");
    assert!(info.contains("aof_enabled:1"), "{info}");
    assert!(info.contains("vsic_kv_device:file:"), "{info}");
    assert!(!info.contains("# Server"), "{info}");
    let hello = run(&["HELLO", "2"]);
    assert!(hello.contains("proto\n2\n"), "{hello}");
    let count: usize = run(&["COMMAND", "COUNT"]).trim().parse().expect("a count");
    assert_eq!(count, 23);
    assert_eq!(run(&["SELECT", "1"]).trim(), "ERR DB index is out of range");
}

/// A malformed request closes that connection only; the server goes on.
#[test]
fn a_malformed_stream_closes_only_its_connection() {
    use std::io::{Read, Write};
    let b = Backend::file("malformed", 16 << 20);
    let kv = b.serve();
    let mut good = std::net::TcpStream::connect(kv.addr).unwrap();
    let mut bad = std::net::TcpStream::connect(kv.addr).unwrap();
    bad.write_all(b"*1\r\n$x\r\n").unwrap();
    let mut reply = String::new();
    bad.read_to_string(&mut reply)
        .expect("the server closes the bad connection");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply}");
    good.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n$1\r\nv\r\n");
}

#[test]
fn redis_benchmark_runs_against_vsic_kv_without_errors() {
    let b = Backend::file("bench", 64 << 20);
    let kv = b.serve();
    let o = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &kv.addr.port().to_string()])
        .args([
            "-t",
            "ping,set,get,incr,mset",
            "-n",
            "2000",
            "-c",
            "8",
            "-P",
            "4",
            "-d",
            "1024",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (package redis-tools)");
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for test in [
        "PING_INLINE: ",
        "SET: ",
        "GET: ",
        "INCR: ",
        "MSET (10 keys): ",
    ] {
        assert!(out.contains(test), "no result for {test}\n{out}");
    }
    assert!(!out.contains("ERR"), "{out}");
}

/// In one pipeline, every read sees the updates sent before it on the same
/// connection, and the answers come back in order.
#[test]
fn a_pipeline_reads_its_own_updates_in_order() {
    use std::io::{Read, Write};
    let b = Backend::file("pipeline", 16 << 20);
    let kv = b.serve();
    let mut s = std::net::TcpStream::connect(kv.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let script = "SET k v1\r\nGET k\r\nINCR n\r\nINCR n\r\nGET n\r\nSET k v2\r\nAPPEND k x\r\nGET k\r\nDEL k\r\nEXISTS k\r\nPING\r\n";
    let want =
        "+OK\r\n$2\r\nv1\r\n:1\r\n:2\r\n$1\r\n2\r\n+OK\r\n:3\r\n$3\r\nv2x\r\n:1\r\n:0\r\n+PONG\r\n";
    for round in 0..20 {
        let (a, b) = (2 * round + 1, 2 * round + 2);
        let want = want.replace(
            ":1\r\n:2\r\n$1\r\n2",
            &format!(":{a}\r\n:{b}\r\n${}\r\n{b}", b.to_string().len()),
        );
        s.write_all(script.as_bytes()).unwrap();
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want, "round {round}");
    }
}
