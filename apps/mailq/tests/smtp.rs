//! An SMTP session against `vsic-mailq serve` on a file: every reply code
//! the receiver gives (220, 250, 354, 221, 500, 501, 503, 552), PIPELINING,
//! SIZE, dot-stuffing undone, and a client cut off mid-DATA leaving nothing
//! behind; then `list --json` and `show` prove what was stored. The same
//! session runs against the slot queue on a file and the Maildir baseline.

mod common;

use common::{body, dot_stuff, sha256_hex, Backend, Client};

#[test]
fn smtp_session_reply_codes_and_stored_message() {
    smtp_session(&Backend::file("smtp", 16 << 20));
}

#[test]
fn smtp_session_reply_codes_and_stored_message_on_maildir() {
    smtp_session(&Backend::maildir("smtp-maildir"));
}

fn smtp_session(b: &Backend) {
    let mut server = b.serve(&["--workers", "2", "--max-size", "20000"]);
    let (mut c, greet) = Client::connect(server.addr).unwrap();
    assert_eq!(greet, 220);

    // Bad sequences and syntax before and after the greeting.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>").unwrap(),
        503,
        "MAIL before EHLO"
    );
    assert_eq!(c.cmd("EHLO").unwrap(), 501, "EHLO without a domain");
    assert_eq!(c.cmd("FROBNICATE").unwrap(), 500);
    assert_eq!(c.cmd("").unwrap(), 500);
    c.send(b"EHLO client.example\r\n").unwrap();
    let (code, lines) = c.reply().unwrap();
    assert_eq!(code, 250);
    assert!(lines.iter().any(|l| l == "250-PIPELINING"), "{lines:?}");
    assert!(lines.iter().any(|l| l.ends_with("SIZE 20000")), "{lines:?}");
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").unwrap(),
        503,
        "RCPT before MAIL"
    );
    assert_eq!(c.cmd("DATA").unwrap(), 503, "DATA before RCPT");
    assert_eq!(
        c.cmd("MAIL FROM:a@example.org").unwrap(),
        501,
        "no angle brackets"
    );
    assert_eq!(c.cmd("MAIL TO:<a@example.org>").unwrap(), 501);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org> SIZE=nope").unwrap(), 501);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org> SIZE=20001").unwrap(),
        552,
        "declared over-size"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org> SIZE=1000").unwrap(), 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>").unwrap(),
        503,
        "nested MAIL"
    );
    assert_eq!(c.cmd("RCPT TO:<>").unwrap(), 501);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").unwrap(), 250);
    assert_eq!(c.cmd("DATA now").unwrap(), 501);
    assert_eq!(c.cmd("NOOP").unwrap(), 250);
    assert_eq!(c.cmd("RSET").unwrap(), 250);
    assert_eq!(c.cmd("DATA").unwrap(), 503, "RSET ended the transaction");

    // Pipelined: MAIL, RCPT, RCPT, DATA in one write.
    let msg = body("pipelined", 3000);
    assert!(
        msg.windows(3).any(|w| w == b"\n.p"),
        "the body has dot lines"
    );
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        .unwrap();
    for want in [250, 250, 250, 354] {
        assert_eq!(c.reply().unwrap().0, want);
    }
    c.send(&dot_stuff(&msg)).unwrap();
    let (code, lines) = c.reply().unwrap();
    assert_eq!(code, 250, "{lines:?}");
    let id: u64 = lines[0].rsplit(' ').next().unwrap().parse().unwrap();

    // Over-size content without a SIZE declaration: 552, nothing stored.
    c.send(b"MAIL FROM:<big@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        .unwrap();
    for want in [250, 250, 354] {
        assert_eq!(c.reply().unwrap().0, want);
    }
    c.send(&dot_stuff(&body("too big", 30_000))).unwrap();
    assert_eq!(c.reply().unwrap().0, 552);
    assert_eq!(c.cmd("NOOP").unwrap(), 250, "the session goes on after 552");
    assert_eq!(c.cmd("QUIT").unwrap(), 221);

    // A client that disconnects mid-DATA.
    let (mut d, _) = Client::connect(server.addr).unwrap();
    d.send(
        b"HELO cut.example\r\nMAIL FROM:<cut@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    )
    .unwrap();
    for want in [250, 250, 250, 354] {
        assert_eq!(d.reply().unwrap().0, want);
    }
    d.send(&body("cut off", 5000)).unwrap();
    d.shutdown();
    drop(d);
    std::thread::sleep(std::time::Duration::from_millis(200));
    server.kill();

    let listed = b.list();
    assert_eq!(listed.len(), 1, "only the accepted message: {listed:?}");
    let m = &listed[0];
    assert_eq!(m.id, id);
    assert_eq!(m.from, "a@example.org");
    assert_eq!(m.to, vec!["b@example.net", "c@example.net"]);
    assert_eq!(m.size, msg.len() as u64);
    assert_eq!(m.sha256, sha256_hex(&msg));
    let shown = b.mailq(&["show", "--id", &id.to_string()]);
    assert!(shown.status.success());
    assert_eq!(
        shown.stdout, msg,
        "show gives the bytes as received, dots unstuffed"
    );
    assert_eq!(b.mailq(&["show", &id.to_string()]).stdout, msg);
    let missing = b.mailq(&["show", "--id", "12345"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no message with id 12345"));
    // delete, then it is gone.
    assert!(b
        .mailq(&["delete", "--id", &id.to_string()])
        .status
        .success());
    assert!(b.list().is_empty());
}

/// `bench` erases the queue, sends what it says over SMTP and prints one
/// key=value line; what it sent is then in the queue, whole.
#[test]
fn bench_sends_what_it_reports() {
    bench_sends(&Backend::file("bench", 16 << 20));
}

#[test]
fn bench_sends_what_it_reports_on_maildir() {
    bench_sends(&Backend::maildir("bench-maildir"));
}

fn bench_sends(b: &Backend) {
    {
        // One message queued before: bench erases it.
        let server = b.serve(&[]);
        let (mut c, _) = Client::connect(server.addr).unwrap();
        c.send(b"HELO x\r\nMAIL FROM:<old@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            .unwrap();
        for want in [250, 250, 250, 354] {
            assert_eq!(c.reply().unwrap().0, want);
        }
        c.send(b"old\r\n.\r\n").unwrap();
        assert_eq!(c.reply().unwrap().0, 250);
    }
    assert_eq!(b.list().len(), 1);
    let o = b.mailq(&[
        "bench",
        "--sessions",
        "3",
        "--size",
        "5000",
        "--messages",
        "30",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8(o.stdout).unwrap();
    assert!(line.starts_with("case=mailq "), "{line}");
    for key in [
        "size=5000 ",
        "sessions=3 ",
        "messages=30 ",
        "msgs_per_s=",
        "p50_us=",
        "p99_us=",
    ] {
        assert!(line.contains(key), "{key} in {line}");
    }
    let listed = b.list();
    assert_eq!(listed.len(), 30);
    for m in &listed {
        let (s, n) = m
            .from
            .trim_end_matches("@bench.example")
            .split_once('m')
            .unwrap();
        let want = vsic_mailq::bench::message(s[1..].parse().unwrap(), n.parse().unwrap(), 5000);
        assert_eq!(m.sha256, sha256_hex(&want), "{}", m.from);
    }
}
