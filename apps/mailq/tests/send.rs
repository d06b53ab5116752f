//! `vsic-mailq send` (the client the guest crash tests record
//! acknowledgements with) and `serve --stats` / `stats` (the store
//! latencies the guest benchmark reads): send reports a message only after
//! its 250, with the id the 250 names, and a message refused (552 here)
//! never; every reported message is listed with that id and a sha256 equal
//! to its sender's local part; XSTATS counts exactly the stored messages
//! and starts afresh.

mod common;

use std::process::Command;

use common::{Backend, MAILQ};

fn client(args: &[&str]) -> std::process::Output {
    Command::new(MAILQ)
        .args(args)
        .output()
        .expect("run vsic-mailq")
}

#[test]
fn send_reports_only_acknowledged_messages_and_stats_counts_them() {
    let b = Backend::file("send", 16 << 20);
    let mut server = b.serve(&["--workers", "2", "--max-size", "5000", "--stats"]);
    let addr = server.addr.to_string();
    // Message n of session s has size sizes[(s + n) % 3]: session 0 sends
    // 600 and 3000 and is refused at 20000 (552), session 1 sends 3000,
    // session 2 is refused at once.
    let o = client(&[
        "send",
        "--connect",
        &addr,
        "--sessions",
        "3",
        "--messages",
        "4",
        "--sizes",
        "600,3000,20000",
        "--tag",
        "t1",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "sessions stopped early: {stderr}");
    assert!(stderr.contains("552"), "{stderr}");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let mut acked: Vec<(String, u64)> = stdout
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!((w.len(), w[0]), (3, "ack"), "{l}");
            (w[1].to_string(), w[2].parse().unwrap())
        })
        .collect();
    acked.sort();
    let domains: Vec<&str> = acked
        .iter()
        .map(|(f, _)| f.split_once('@').unwrap().1)
        .collect();
    let mut want = vec![
        "m0.s0.t1.send.example",
        "m1.s0.t1.send.example",
        "m0.s1.t1.send.example",
    ];
    want.sort();
    let mut got = domains.clone();
    got.sort();
    assert_eq!(got, want, "acknowledged messages: {stdout}");

    let st = client(&["stats", "--connect", &addr]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let line = String::from_utf8(st.stdout).unwrap();
    assert!(line.starts_with("messages=3 p50_us="), "{line}");
    let st = client(&["stats", "--connect", &addr]);
    assert!(String::from_utf8(st.stdout)
        .unwrap()
        .starts_with("messages=0 "));
    server.kill();

    let mut listed: Vec<(String, u64)> = b
        .list()
        .into_iter()
        .map(|m| {
            let local = m.from.split_once('@').unwrap().0;
            assert_eq!(local, m.sha256, "{} is whole", m.from);
            (m.from, m.id)
        })
        .collect();
    listed.sort();
    assert_eq!(listed, acked, "stored = acknowledged, same ids");
}

#[test]
fn stats_needs_serve_stats() {
    let b = Backend::file("nostats", 16 << 20);
    let _server = b.serve(&[]);
    let o = client(&["stats", "--connect", &_server.addr.to_string()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("502"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `erase` (the guest benchmark's reset between cases) leaves an empty
/// queue that takes new messages.
fn erase_empties(b: &Backend) {
    for round in ["e1", "e2"] {
        let mut server = b.serve(&[]);
        let o = client(&[
            "send",
            "--connect",
            &server.addr.to_string(),
            "--messages",
            "5",
            "--sizes",
            "600,30000",
            "--tag",
            round,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        server.kill();
        assert_eq!(b.list().len(), 5, "round {round}: only this round's");
        let o = b.mailq(&["erase"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(b.list().len(), 0, "round {round}: erased");
    }
}

#[test]
fn erase_empties_the_queue() {
    erase_empties(&Backend::file("erase", 16 << 20));
}

#[test]
fn erase_empties_the_queue_on_maildir() {
    erase_empties(&Backend::maildir("erase-maildir"));
}

/// On a write-through VSA (vsicd --cache=write-through: a completed write
/// is durable and the function offers no FLUSH) the slot queue answers
/// after the writes alone: XSTATS shows commits with no flush time.
#[test]
fn write_through_vsa_commits_without_flush() {
    let b = Backend::vsa_cache("send-wt", 64 << 20, true);
    let mut server = b.serve(&["--stats"]);
    let addr = server.addr.to_string();
    let o = client(&[
        "send",
        "--connect",
        &addr,
        "--sessions",
        "2",
        "--messages",
        "10",
        "--sizes",
        "600,30000",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = client(&["stats", "--connect", &addr]);
    let line = String::from_utf8(st.stdout).unwrap();
    server.kill();
    assert!(line.starts_with("messages=20 "), "{line}");
    assert!(!line.contains(" commits=0 "), "{line}");
    assert!(line.trim_end().ends_with(" flush_us_avg=0"), "{line}");
    assert_eq!(b.list().len(), 20);
}
