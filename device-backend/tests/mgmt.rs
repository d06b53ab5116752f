//! The management socket end to end: the protocol's shape, bad input, and
//! every command family (admin, statistics, faults, traces).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Daemon, MgmtClient};
use serde_json::json;

#[test]
fn socket_is_private_and_speaks_qmp_shape() {
    let d = Daemon::start("mgmt-shape");
    let mode = std::fs::metadata(d.mgmt_socket())
        .expect("mgmt socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    let cmds = c.ok("query-commands", json!({}));
    let names: Vec<&str> = cmds
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"query-commands"), "{names:?}");
    assert!(names.contains(&"query-version"), "{names:?}");
    // An id is echoed.
    let r = c.send_line(r#"{"execute": "query-version", "id": 7}"#);
    assert_eq!(r["id"], 7, "{r}");
    assert!(r["return"]["vsicd"].is_string(), "{r}");
}

#[test]
fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let d = Daemon::start("mgmt-bad");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    let class = |r: &serde_json::Value| r["error"]["class"].as_str().unwrap_or("").to_string();
    for (line, want) in [
        ("this is not json", "ParseError"),
        ("{\"execute\": ", "ParseError"),
        ("[1, 2]", "ParseError"),
        ("{\"arguments\": {}}", "ParseError"),
        ("{\"execute\": 5}", "ParseError"),
        ("{\"execute\": \"x\", \"bogus\": 1}", "ParseError"),
        ("{\"execute\": \"no-such-command\"}", "CommandNotFound"),
        (
            "{\"execute\": \"query-version\", \"arguments\": 3}",
            "InvalidArguments",
        ),
        (
            "{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}",
            "InvalidArguments",
        ),
    ] {
        let r = c.send_line(line);
        assert_eq!(class(&r), want, "{line} -> {r}");
        assert!(
            r["error"]["desc"].as_str().is_some_and(|d| !d.is_empty()),
            "{r}"
        );
        // Still usable.
        c.ok("query-version", json!({}));
    }
    // Not UTF-8 and too long: errors too.
    let r = c.send_line(&"x".repeat(2 << 20));
    assert_eq!(class(&r), "ParseError", "{r}");
    c.ok("query-version", json!({}));
    // Every command, an unknown argument: InvalidArguments, nothing done.
    let names: Vec<String> = c
        .ok("query-commands", json!({}))
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x["name"].as_str().expect("a name").to_string())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let r = c.execute(name, json!({"no-such-argument": 1}));
        assert_eq!(class(&r), "InvalidArguments", "{name}: {r}");
        let r = c.execute(name, json!([1]));
        assert_eq!(class(&r), "InvalidArguments", "{name} with an array: {r}");
    }
    assert_eq!(c.ok("fault-list", json!({})), json!([]));
    // Two connections at once.
    let mut c2 = MgmtClient::connect(&d.mgmt_socket());
    c2.ok("query-version", json!({}));
    c.ok("query-version", json!({}));
}

// ------------------------------------------------------------- helpers

use std::time::{Duration, Instant};

use common::{assert_same, filled, pattern, read_back, run_one, Setup, MIB};
use serde_json::Value;
use vsic::{CompletionMode, Device, Error, IoStatus, Request, VsaHandle, VsaRange};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };
const BLOCK: usize = 4096;

/// A daemon with one VSA of `size` attached to VSIC 0 slot 0, opened.
fn with_vsa(tag: &str, setup: Setup, size: u64) -> (Daemon, Device, MgmtClient) {
    let d = Daemon::start_with(tag, setup);
    let admin = d.admin();
    let vsa = admin.vsa_create(size, 0).expect("create");
    admin.attach(0, 0, &vsa.token, false).expect("attach");
    drop(admin);
    let dev = d.open_vsic(0, 2, CompletionMode::Polling);
    let c = MgmtClient::connect(&d.mgmt_socket());
    (d, dev, c)
}

fn read_status(dev: &Device, offset: u64) -> Result<(), Error> {
    let mut buf = dev.alloc_dma(BLOCK).expect("alloc");
    dev.read_at(0, SLOT0, offset, &mut buf)
}

fn write_pattern(dev: &Device, seed: u64, offset: u64, len: usize) -> Result<(), Error> {
    let buf = filled(dev, seed, len);
    dev.write_at(0, SLOT0, offset, &buf)
}

fn is_ioerr(r: &Result<(), Error>) -> bool {
    matches!(r, Err(Error::Io(IoStatus::IoError)))
}

fn vsic_stats(c: &mut MgmtClient, vsic: u32) -> Value {
    let s = c.ok("query-stats", json!({"vsic": vsic}));
    s["vsics"][0].clone()
}

// ------------------------------------------------------------- admin

#[test]
fn admin_over_mgmt_runs_the_pf_admin_layer() {
    let d = Daemon::start("mgmt-admin");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    // Create a VSA by name; the token comes back as payload.
    let r = c.ok("admin", json!({"opcode": "vsa-create", "arg0": 3 * MIB}));
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["code"], 0);
    assert_eq!(r["result1"], 3 * MIB);
    let vsa_id = r["result0"].as_u64().unwrap();
    let token = r["payload"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 128, "a 64-byte token");
    // Attach with it; the PF sees the attachment.
    let r = c.ok(
        "admin",
        json!({"opcode": "attach", "vsic": 1, "slot": 2, "payload": token}),
    );
    assert_eq!(
        (r["status"].as_str(), r["result0"].as_u64()),
        (Some("ok"), Some(vsa_id))
    );
    let vsics = d.admin().list_vsics().expect("list");
    assert_eq!(vsics[1].slots[2].vsa_id, vsa_id);
    // Refusals carry the PF's status names and results.
    let r = c.ok("admin", json!({"opcode": "detach", "vsic": 1, "slot": 3}));
    assert_eq!(
        (r["status"].as_str(), r["code"].as_u64()),
        (Some("slot-empty"), Some(16))
    );
    let pf = d.admin().detach(1, 3).unwrap_err();
    assert_eq!(pf.status().map(|s| s.name()), r["status"].as_str());
    let r = c.ok("admin", json!({"opcode": "list-vsas", "capacity": 8}));
    assert_eq!(r["status"], "response-too-small", "{r}");
    assert_eq!(r["result0"], 1);
    let r = c.ok("admin", json!({"opcode": "vsa-delete-by-id", "arg0": 999}));
    assert_eq!(r["status"], "no-such-vsa");
    // The raw spelling: bytes exactly as the PF gets them.
    let mut raw = vsic_abi::AdminCommand::new(vsic_abi::Opcode::Identify).encode();
    let r = c.ok("admin", json!({"command": vsic_abi::hex::encode(&raw)}));
    assert_eq!(r["status"], "ok");
    assert_eq!(
        r["payload"].as_str().unwrap().len(),
        2 * vsic_abi::records::Identify::LEN
    );
    raw[0] ^= 1;
    let r = c.ok("admin", json!({"command": vsic_abi::hex::encode(&raw)}));
    assert_eq!(r["status"], "bad-magic");
    let r = c.ok("admin", json!({"command": "00"}));
    assert_eq!(r["status"], "bad-command-size");
    // Bad arguments: errors, not completions.
    for bad in [
        json!({}),
        json!({"opcode": "no-such-op"}),
        json!({"opcode": "identify", "command": "00"}),
        json!({"command": "00", "vsic": 1}),
        json!({"command": "zz"}),
        json!({"opcode": "identify", "payload": "abc"}),
        json!({"opcode": "identify", "capacity": 1 << 30}),
        json!({"opcode": "identify", "vsic": -1}),
        json!({"opcode": "identify", "colour": 1}),
    ] {
        assert_eq!(c.err("admin", bad.clone()), "InvalidArguments", "{bad}");
    }
    let ops = c.ok("query-admin-opcodes", json!({}));
    assert!(ops
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["name"] == "dma-window-add"));
}

#[test]
fn statistics_count_requests_and_injections() {
    let (_d, dev, mut c) = with_vsa("mgmt-stats", Setup::default(), 4 * MIB);
    for i in 0..3 {
        write_pattern(&dev, i, i * BLOCK as u64, BLOCK).expect("write");
    }
    read_status(&dev, 0).expect("read");
    dev.flush(0).expect("flush");
    let s = vsic_stats(&mut c, 0);
    assert_eq!(
        (s["writes"].as_u64(), s["reads"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    assert_eq!(s["flushes"], 1);
    assert_eq!(s["bytes_written"], 3 * BLOCK as u64);
    assert_eq!(s["faults_injected"], 0);
    assert_eq!(s["queues"].as_array().unwrap().len(), 4);
    let all = c.ok("query-stats", json!({}));
    assert_eq!(all["vsics"].as_array().unwrap().len(), 4);
    assert_eq!(all["drives"].as_array().unwrap().len(), 2);
    assert_eq!(c.err("query-stats", json!({"vsic": 99})), "NotFound");
    assert_eq!(
        c.err("query-stats", json!({"vsic": "zero"})),
        "InvalidArguments"
    );
}

// ------------------------------------------------------------- faults

#[test]
fn error_rule_fails_exactly_count_reads() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-count", Setup::default(), 4 * MIB);
    let r = c.ok(
        "fault-add",
        json!({"vsic": 0, "op": "read", "action": "error", "count": 3}),
    );
    let id = r["id"].as_u64().expect("an id");
    // Writes are not reads.
    write_pattern(&dev, 1, 0, BLOCK).expect("write unaffected");
    let results: Vec<bool> = (0..6).map(|_| is_ioerr(&read_status(&dev, 0))).collect();
    assert_eq!(results, [true, true, true, false, false, false]);
    let rules = c.ok("fault-list", json!({}));
    assert_eq!(rules[0]["id"], id);
    assert_eq!(
        (rules[0]["matched"].as_u64(), rules[0]["injected"].as_u64()),
        (Some(6), Some(3))
    );
    let s = vsic_stats(&mut c, 0);
    assert_eq!(s["faults_injected"], 3, "{s}");
    assert_eq!(s["errors"], 3, "{s}");
    assert_eq!(c.ok("fault-clear", json!({"id": id}))["cleared"], 1);
    assert_eq!(c.err("fault-clear", json!({"id": id})), "NotFound");
    assert_eq!(c.ok("fault-list", json!({})), json!([]));
}

#[test]
fn error_rule_status_range_flush_discard_and_every() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-kinds", Setup::default(), 4 * MIB);
    // A virtio status of our choosing.
    c.ok(
        "fault-add",
        json!({"vsic": 0, "op": "write", "status": "unsupp", "count": 1}),
    );
    assert!(matches!(
        write_pattern(&dev, 1, 0, BLOCK),
        Err(Error::Io(IoStatus::Unsupported))
    ));
    write_pattern(&dev, 1, 0, BLOCK).expect("second write fine");
    // A byte range: only overlapping reads fail.
    c.ok("fault-clear", json!({}));
    c.ok(
        "fault-add",
        json!({"vsic": 0, "op": "any", "offset": 8192, "length": 4096}),
    );
    assert!(read_status(&dev, 0).is_ok());
    assert!(is_ioerr(&read_status(&dev, 8192)));
    assert!(
        is_ioerr(&read_status(&dev, 4096 + 2048)),
        "overlaps the range's start"
    );
    assert!(read_status(&dev, 12288).is_ok());
    // Flush and discard.
    c.ok("fault-clear", json!({}));
    c.ok("fault-add", json!({"vsic": 0, "op": "flush", "count": 1}));
    assert!(matches!(dev.flush(0), Err(Error::Io(IoStatus::IoError))));
    dev.flush(0).expect("flush again");
    c.ok("fault-add", json!({"vsic": 0, "op": "discard", "count": 1}));
    let ranges = [VsaRange::new(0, BLOCK as u64)];
    assert_eq!(
        run_one(&dev, 0, Request::discard(SLOT0, &ranges)),
        Err(IoStatus::IoError)
    );
    assert_eq!(run_one(&dev, 0, Request::discard(SLOT0, &ranges)), Ok(()));
    // Every third read.
    c.ok("fault-clear", json!({}));
    c.ok("fault-add", json!({"vsic": 0, "op": "read", "every": 3}));
    let results: Vec<bool> = (0..9).map(|_| is_ioerr(&read_status(&dev, 0))).collect();
    assert_eq!(
        results,
        [false, false, true, false, false, true, false, false, true]
    );
    // Another VSIC's rule does not touch VSIC 0.
    c.ok("fault-clear", json!({}));
    c.ok("fault-add", json!({"vsic": 1}));
    assert!(read_status(&dev, 0).is_ok());
}

#[test]
fn probability_rule_fires_within_statistical_bounds() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-prob", Setup::default(), 4 * MIB);
    c.ok(
        "fault-add",
        json!({"vsic": 0, "op": "read", "probability": 0.3, "seed": 11}),
    );
    let n = 400;
    let failed = (0..n).filter(|_| is_ioerr(&read_status(&dev, 0))).count();
    // Binomial(400, 0.3): mean 120, sd ~9.2; six sd either way.
    assert!((65..=175).contains(&failed), "{failed} of {n}");
    let rules = c.ok("fault-list", json!({}));
    assert_eq!(rules[0]["injected"], failed as u64);
    assert_eq!(rules[0]["matched"], n as u64);
}

#[test]
fn delay_rule_delays_the_completion() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-delay", Setup::default(), 4 * MIB);
    c.ok(
        "fault-add",
        json!({"vsic": 0, "op": "read", "action": "delay", "delay": "300ms", "count": 2}),
    );
    for _ in 0..2 {
        let t = Instant::now();
        read_status(&dev, 0).expect("a delayed read still succeeds");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    assert_eq!(c.ok("fault-list", json!({}))[0]["injected"], 2);
}

#[test]
fn corrupt_rule_flips_bits_of_the_data_read_only() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-corrupt", Setup::default(), 4 * MIB);
    write_pattern(&dev, 5, 0, BLOCK).expect("write");
    let want = pattern(5, BLOCK);
    c.ok(
        "fault-add",
        json!({"vsic": 0, "action": "corrupt", "bits": 5, "count": 1}),
    );
    let got = read_back(&dev, 0, 0, BLOCK);
    let flipped: u32 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(flipped, 5, "exactly the asked bits flipped");
    // The drive was not changed: the next read is intact.
    assert_same(&read_back(&dev, 0, 0, BLOCK), &want, "the next read");
    // Corrupting writes makes no sense.
    assert_eq!(
        c.err(
            "fault-add",
            json!({"vsic": 0, "op": "write", "action": "corrupt"})
        ),
        "InvalidArguments"
    );
}

#[test]
fn torn_rule_writes_only_the_first_sectors_and_fails() {
    let (_d, dev, mut c) = with_vsa("mgmt-fault-torn", Setup::default(), 4 * MIB);
    let len = 16 * 512;
    write_pattern(&dev, 1, 0, len).expect("old contents");
    c.ok(
        "fault-add",
        json!({"vsic": 0, "action": "torn", "sectors": 3, "count": 1}),
    );
    assert!(
        is_ioerr(&write_pattern(&dev, 2, 0, len)),
        "a torn write fails"
    );
    let got = read_back(&dev, 0, 0, len);
    let (old, new) = (pattern(1, len), pattern(2, len));
    assert_eq!(
        &got[..3 * 512],
        &new[..3 * 512],
        "the first 3 sectors reached the drive"
    );
    assert_eq!(&got[3 * 512..], &old[3 * 512..], "the rest did not");
    assert_eq!(vsic_stats(&mut c, 0)["faults_injected"], 1);
}

#[test]
fn drive_rules_act_on_the_drive_transfers() {
    let setup = Setup {
        drives: vec!["64M"],
        ..Setup::default()
    };
    let (_d, dev, mut c) = with_vsa("mgmt-fault-drive", setup, 4 * MIB);
    let len = 8 * 512;
    write_pattern(&dev, 1, 0, len).expect("write");
    c.ok("fault-add", json!({"drive": 0, "op": "read", "count": 2}));
    assert!(is_ioerr(&read_status(&dev, 0)));
    assert!(is_ioerr(&read_status(&dev, 0)));
    assert!(read_status(&dev, 0).is_ok());
    c.ok(
        "fault-add",
        json!({"drive": 0, "action": "torn", "sectors": 1, "count": 1}),
    );
    assert!(is_ioerr(&write_pattern(&dev, 2, 0, len)));
    let got = read_back(&dev, 0, 0, len);
    assert_same(
        &got[..512],
        &pattern(2, len)[..512],
        "the torn write's sector",
    );
    assert_same(
        &got[512..],
        &pattern(1, len)[512..],
        "the sectors it never wrote",
    );
    c.ok(
        "fault-add",
        json!({"drive": 0, "action": "corrupt", "bits": 3, "count": 1}),
    );
    let got = read_back(&dev, 0, 0, len);
    let mut want = pattern(2, len)[..512].to_vec();
    want.extend_from_slice(&pattern(1, len)[512..]);
    let flipped: u32 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(flipped, 3);
    c.ok("fault-add", json!({"drive": 0, "op": "flush", "count": 1}));
    assert!(matches!(dev.flush(0), Err(Error::Io(IoStatus::IoError))));
    let stats = c.ok("query-stats", json!({}));
    assert_eq!(stats["drives"][0]["faults_injected"], 5, "{stats}");
    assert_eq!(c.err("fault-add", json!({"drive": 1})), "NotFound");
}

#[test]
fn drive_rule_injections_are_traced_in_the_requests_vsic() {
    let setup = Setup {
        drives: vec!["64M"],
        ..Setup::default()
    };
    let (d, dev, mut c) = with_vsa("mgmt-fault-drive-trace", setup, 4 * MIB);
    let path = d.dir.path("t.jsonl");
    c.ok(
        "trace-start",
        json!({"vsic": 0, "path": path.display().to_string(), "format": "jsonl"}),
    );
    c.ok("fault-add", json!({"drive": 0, "op": "read", "count": 2}));
    for _ in 0..3 {
        let _ = read_status(&dev, 8192);
    }
    c.ok("trace-stop", json!({"vsic": 0}));
    let faults: Vec<Value> = std::fs::read_to_string(&path)
        .expect("trace")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|e| e["event"] == "fault")
        .collect();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert_eq!(faults[0]["action"], "error on drive 0");
    assert_eq!(faults[0]["offset"], 8192);
}

#[test]
fn fault_rules_from_the_command_line() {
    let setup = Setup {
        extra_args: vec![
            "--fault".into(),
            "vsic=0,op=read,action=error,count=2".into(),
        ],
        ..Setup::default()
    };
    let (_d, dev, mut c) = with_vsa("mgmt-fault-cli", setup, 4 * MIB);
    let results: Vec<bool> = (0..3).map(|_| is_ioerr(&read_status(&dev, 0))).collect();
    assert_eq!(results, [true, true, false]);
    assert_eq!(c.ok("fault-list", json!({}))[0]["injected"], 2);
}

#[test]
fn bad_fault_rules_are_refused() {
    let d = Daemon::start("mgmt-fault-bad");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    for (args, class) in [
        (json!({}), "InvalidArguments"),
        (json!({"vsic": 0, "drive": 0}), "InvalidArguments"),
        (json!({"vsic": 9}), "NotFound"),
        (json!({"vsic": 0, "op": "scribble"}), "InvalidArguments"),
        (json!({"vsic": 0, "action": "explode"}), "InvalidArguments"),
        (json!({"vsic": 0, "action": "delay"}), "InvalidArguments"),
        (
            json!({"vsic": 0, "action": "delay", "delay": "5 parsecs"}),
            "InvalidArguments",
        ),
        (json!({"vsic": 0, "probability": 2.0}), "InvalidArguments"),
        (json!({"vsic": 0, "every": 0}), "InvalidArguments"),
        (json!({"vsic": 0, "offset": 5}), "InvalidArguments"),
        (json!({"vsic": 0, "status": 0}), "InvalidArguments"),
        (
            json!({"vsic": 0, "action": "torn", "op": "read"}),
            "InvalidArguments",
        ),
        (json!({"vsic": 0, "colour": "red"}), "InvalidArguments"),
    ] {
        assert_eq!(c.err("fault-add", args.clone()), class, "{args}");
    }
    assert_eq!(c.ok("fault-list", json!({})), json!([]));
    assert_eq!(c.err("fault-list", json!({"x": 1})), "InvalidArguments");
    assert_eq!(c.ok("fault-clear", json!({}))["cleared"], 0);
}

// ------------------------------------------------------------- traces

/// Runs a tool on the trace in `dir` (btt writes files of its own into
/// its working directory); its stdout (the test fails if it fails).
fn run_tool(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (ci/install-deps.sh installs blktrace): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The known workload: on queue 0, 8 writes of 4 KiB, 4 reads (the first
/// failed by a rule), 1 flush; on queue 1, 2 writes of 8 KiB.
fn traced_workload(dev: &Device, c: &mut MgmtClient) {
    for i in 0..8u64 {
        write_pattern(dev, i, i * BLOCK as u64, BLOCK).expect("write");
    }
    c.ok("fault-add", json!({"vsic": 0, "op": "read", "count": 1}));
    assert!(is_ioerr(&read_status(dev, 0)));
    for i in 1..4u64 {
        read_status(dev, i * BLOCK as u64).expect("read");
    }
    dev.flush(0).expect("flush");
    for i in 0..2u64 {
        let buf = filled(dev, 100 + i, 2 * BLOCK);
        dev.write_at(1, SLOT0, MIB + i * 2 * BLOCK as u64, &buf)
            .expect("write on queue 1");
    }
}

#[test]
fn blktrace_trace_reads_in_blkparse_and_btt() {
    let (d, dev, mut c) = with_vsa("mgmt-trace-blk", Setup::default(), 4 * MIB);
    let base = d.dir.path("t");
    let base_s = base.display().to_string();
    let r = c.ok(
        "trace-start",
        json!({"vsic": 0, "path": base_s, "format": "blktrace"}),
    );
    assert_eq!(
        r["files"].as_array().unwrap().len(),
        4,
        "one stream per queue: {r}"
    );
    traced_workload(&dev, &mut c);
    let r = c.ok("trace-stop", json!({"vsic": 0}));
    // 15 requests with queue, issue and completion events, but the failed
    // read is never issued; plus 1 fault message.
    assert_eq!(r["events"], 15 * 3 - 1 + 1, "{r}");
    let text = run_tool(
        &d.dir.0,
        "blkparse",
        &["-i", &base_s, "-f", "%a %d %S %N %e\n"],
    );
    let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    for (prefix, want) in [
        ("Q W ", 10),
        ("D W ", 10),
        ("C W ", 10),
        ("Q R ", 4),
        ("D R ", 3),
        ("C R ", 4),
        ("Q FWS ", 1),
        ("C FWS ", 1),
    ] {
        assert_eq!(count(prefix), want, "{prefix:?} events in\n{text}");
    }
    // Sector, bytes and error of what we did.
    assert!(text.lines().any(|l| l == "C W 56 4096 0"), "{text}");
    assert!(
        text.lines().any(|l| l == "Q W 2064 8192 0"),
        "queue 1's second write: {text}"
    );
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("C ") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(failed, ["C R 0 4096 5"], "the one injected EIO");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("fault rule 1: error read at 0"))
            .count(),
        1,
        "{text}"
    );
    // btt reads the binary dump blkparse makes and reports latencies.
    let dump = d.dir.path("t.bin").display().to_string();
    run_tool(
        &d.dir.0,
        "blkparse",
        &["-q", "-i", &base_s, "-d", &dump, "-O"],
    );
    let report = run_tool(&d.dir.0, "btt", &["-i", &dump]);
    let n_of = |row: &str| -> Option<u64> {
        report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(row))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
    };
    assert_eq!(
        n_of("D2C"),
        Some(13),
        "D2C of 13 data requests issued:\n{report}"
    );
    assert_eq!(
        n_of("Q2Cdm"),
        Some(14),
        "Q2C of 14 data requests:\n{report}"
    );
}

#[test]
fn jsonl_trace_has_every_event() {
    let (d, dev, mut c) = with_vsa("mgmt-trace-jsonl", Setup::default(), 4 * MIB);
    let path = d.dir.path("t.jsonl");
    let r = c.ok(
        "trace-start",
        json!({"vsic": 0, "path": path.display().to_string(), "format": "jsonl"}),
    );
    assert_eq!(r["files"], json!([path.display().to_string()]));
    traced_workload(&dev, &mut c);
    assert_eq!(c.ok("trace-stop", json!({"vsic": 0}))["events"], 45);
    let events: Vec<Value> = std::fs::read_to_string(&path)
        .expect("trace file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 45);
    let n = |event: &str, op: &str| {
        events
            .iter()
            .filter(|e| e["event"] == event && e["op"] == op)
            .count()
    };
    assert_eq!((n("queue", "write"), n("complete", "write")), (10, 10));
    assert_eq!((n("queue", "read"), n("issue", "read")), (4, 3));
    assert_eq!(n("complete", "flush"), 1);
    assert_eq!(n("fault", "read"), 1);
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "complete" && e["status"] != 0)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0]["op"].as_str(), failed[0]["status"].as_u64()),
        (Some("read"), Some(1))
    );
    assert!(events.iter().any(|e| e["queue"] == 1 && e["offset"] == MIB));
    // Stopped: new requests are not traced.
    read_status(&dev, 0).expect("read");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 45);
}

#[test]
fn trace_commands_refuse_bad_input() {
    let d = Daemon::start("mgmt-trace-bad");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    let path = d.dir.path("t").display().to_string();
    assert_eq!(
        c.err("trace-start", json!({"vsic": 9, "path": path})),
        "NotFound"
    );
    assert_eq!(c.err("trace-start", json!({"vsic": 0})), "InvalidArguments");
    assert_eq!(
        c.err("trace-start", json!({"vsic": 0, "path": ""})),
        "InvalidArguments"
    );
    assert_eq!(
        c.err(
            "trace-start",
            json!({"vsic": 0, "path": path, "format": "xml"})
        ),
        "InvalidArguments"
    );
    assert_eq!(
        c.err(
            "trace-start",
            json!({"vsic": 0, "path": "/nonexistent-dir/t"})
        ),
        "GenericError"
    );
    assert_eq!(c.err("trace-stop", json!({"vsic": 0})), "GenericError");
    assert_eq!(c.err("trace-stop", json!({"vsic": 9})), "NotFound");
    c.ok("trace-start", json!({"vsic": 0, "path": path}));
    assert_eq!(
        c.err("trace-start", json!({"vsic": 0, "path": path})),
        "GenericError"
    );
    c.ok("trace-stop", json!({"vsic": 0}));
}

// ------------------------------------------------------------- start-up

#[test]
fn a_bad_fault_rule_on_the_command_line_stops_the_start() {
    let dir = common::ScratchDir::new("mgmt-bad-cli");
    for (rule, says) in [
        ("vsic=0,colour=red", "unknown field"),
        ("vsic=7", "no VSIC 7"),
        ("vsic=0,action=delay", "delay"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsicd"))
            .arg("--socket-dir")
            .arg(dir.path("s"))
            .arg("--drive")
            .arg(format!("{},size=8M", dir.path("d.img").display()))
            .args(["--vsics", "2", "--fault", rule])
            .output()
            .expect("run vsicd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rule}: {stderr}");
        assert!(stderr.contains(says), "{rule}: {stderr}");
    }
}

#[test]
fn the_socket_comes_back_after_a_crash_and_at_a_chosen_path() {
    let mut d = Daemon::start("mgmt-restart");
    MgmtClient::connect(&d.mgmt_socket()).ok("query-version", json!({}));
    // SIGKILL leaves a stale socket: the next start replaces it.
    d.restart();
    MgmtClient::connect(&d.mgmt_socket()).ok("query-version", json!({}));
    let custom = d.dir.path("elsewhere/m.sock");
    let setup = Setup {
        extra_args: vec!["--mgmt".into(), custom.display().to_string()],
        ..Setup::default()
    };
    let d2 = Daemon::start_with("mgmt-path", setup);
    MgmtClient::connect(&custom).ok("query-version", json!({}));
    assert!(
        !d2.mgmt_socket().exists(),
        "no default socket when --mgmt is given"
    );
    // A live socket is not taken over: a second daemon on it fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsicd"))
        .arg("--socket-dir")
        .arg(d2.dir.path("other"))
        .arg("--drive")
        .arg(format!("{},size=8M", d2.dir.path("o.img").display()))
        .arg("--mgmt")
        .arg(&custom)
        .output()
        .expect("run vsicd");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process is serving it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------- drive model

#[test]
fn the_drive_model_changes_at_run_time_through_the_socket() {
    let (_d, dev, mut c) = with_vsa("mgmt-model", Setup::default(), 4 * MIB);
    assert_eq!(c.ok("query-drive-model", json!({})), json!({"on": false}));
    let timed_read = |dev: &Device| {
        let t = Instant::now();
        read_status(dev, 0).expect("read");
        t.elapsed()
    };

    let r = c.ok(
        "drive-model-set",
        json!({"latency": "40ms", "units": 3, "bandwidth": "1G"}),
    );
    assert_eq!(r["on"], true, "{r}");
    assert_eq!(r["drives"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["drives"][0]["units"], 3, "{r}");
    assert_eq!(r["drives"][1]["read"]["fixed-us"], 40_000.0, "{r}");
    for _ in 0..3 {
        let took = timed_read(&dev);
        assert!(
            took >= Duration::from_millis(40),
            "a read took {took:?} under a 40 ms model"
        );
    }

    // A file's text, with one drive its own.
    let text = "[model]\nread = { latency = \"1us\" }\n[drives.1]\nunits = 7\n";
    let r = c.ok("drive-model-set", json!({ "toml": text }));
    assert_eq!(r["drives"][1]["units"], 7, "{r}");
    assert_eq!(c.ok("query-drive-model", json!({})), r);

    // Refusals leave the model as it was.
    for bad in [
        json!({}),
        json!({"units": 0}),
        json!({"toml": "[model]\n[drives.5]\n"}),
        json!({"toml": text, "units": 2}),
    ] {
        let e = c.execute("drive-model-set", bad.clone());
        assert_eq!(e["error"]["class"], "InvalidArguments", "{bad} -> {e}");
    }
    assert_eq!(c.ok("query-drive-model", json!({})), r);

    c.ok("drive-model-set", json!({"latency": "40ms"}));
    assert!(timed_read(&dev) >= Duration::from_millis(40));
    assert_eq!(c.ok("drive-model-off", json!({})), json!({"on": false}));
    let t = Instant::now();
    for _ in 0..10 {
        read_status(&dev, 0).expect("read");
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "10 reads took {took:?} with the model off (40 ms each while on)"
    );
}
