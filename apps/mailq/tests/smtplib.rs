//! A client nobody here wrote: Python's smtplib (python3, installed by
//! ci/install-deps.sh) sends messages of every class and an extent, over
//! one connection and with SIZE, to `vsic-mailq serve` on a file, and is
//! refused (552) a message over the limit; `list --json` then has exactly
//! what smtplib got accepted, byte for byte.

mod common;

use std::process::Command;

use common::{sha256_hex, Backend};

const SCRIPT: &str = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
def body(i, n):
    lines, k, total = [f"Subject: m{i}"], 0, 0
    while total < n:
        lines.append(("." if k % 5 == 0 else "") + f"m{i} line {k}")
        total += len(lines[-1]) + 2
        k += 1
    return ("\r\n".join(lines) + "\r\n").encode()
with smtplib.SMTP(host, port) as s:
    s.ehlo("py.example")
    assert s.has_extn("pipelining") and s.has_extn("size"), s.esmtp_features
    for i, n in enumerate([300, 2500, 9000, 40000, 120000]):
        s.sendmail(f"py{i}@example.org", [f"a{i}@example.net", "b@example.net"], body(i, n))
        print(f"ok py{i}@example.org {len(body(i, n))}", flush=True)
    try:
        s.sendmail("huge@example.org", ["a@example.net"], body(99, 300000))
        print("huge accepted")
    except smtplib.SMTPSenderRefused as e:
        print(f"refused {e.smtp_code}")
"#;

#[test]
fn python_smtplib_client() {
    let b = Backend::file("smtplib", 32 << 20);
    let mut server = b.serve(&["--workers", "3", "--max-size", "200000"]);
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            SCRIPT,
            &server.addr.ip().to_string(),
            &server.addr.port().to_string(),
        ])
        .output()
        .expect("python3 (installed by ci/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("refused 552\n"), "{stdout}");
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), 5, "{listed:?}");
    // The same bodies, built here: smtplib sends them as they are (CRLF
    // lines, ending in CRLF), dot-stuffed on the wire.
    for (i, m) in listed.iter().enumerate() {
        assert_eq!(m.from, format!("py{i}@example.org"));
        assert_eq!(
            m.to,
            vec![format!("a{i}@example.net"), "b@example.net".into()]
        );
        let shown = b.mailq(&["show", "--id", &m.id.to_string()]);
        assert_eq!(sha256_hex(&shown.stdout), m.sha256);
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(
            text.starts_with(&format!("Subject: m{i}\r\n.m{i} line 0\r\n")),
            "{text:.80}"
        );
        assert!(!text.contains("\r\n..m"), "dot-stuffing undone");
        assert!(stdout.contains(&format!("ok py{i}@example.org {}\n", m.size)));
    }
}
