//! Drives a `vsic_mailq::smtp::Session` over a client's bytes the way the
//! server does, and checks what a session must keep to whatever it is sent
//! (shared by `apps/mailq/tests/smtp_garbage.rs` and the `smtp_session`
//! fuzz target, which include this file by path).

use std::sync::Arc;

use vsic_mailq::server::ServeOptions;
use vsic_mailq::smtp::{Event, Session};

/// Runs `input` through a new session, fed in pieces of `piece()` bytes
/// (at least 1), every message stored at once. Checks that the session
/// never waits for a store it did not hand out, stores nothing over the
/// size limit, and comes back asking for input (or quits) within a
/// bounded number of steps. Returns the messages stored and everything
/// the session sent.
pub fn drive(
    opts: &Arc<ServeOptions>,
    input: &[u8],
    mut piece: impl FnMut() -> usize,
) -> (usize, Vec<u8>) {
    let mut s = Session::new(opts.clone());
    let (mut out, mut at, mut stored) = (Vec::new(), 0, 0);
    // Each step feeds a piece (at most one per byte), stores a message
    // (each needs at least a DATA line and its end, many bytes) or ends.
    let limit = 2 * input.len() + 4;
    for _ in 0..limit {
        match s.advance() {
            Event::Store(msg) => {
                assert!(
                    msg.body.len() <= opts.max_size,
                    "a message of {} bytes stored under a limit of {}",
                    msg.body.len(),
                    opts.max_size
                );
                stored += 1;
                s.stored(Ok(stored as u64));
            }
            Event::Waiting => panic!("waiting for a store with no message handed out"),
            Event::Quit => {
                out.extend_from_slice(s.output());
                return (stored, out);
            }
            Event::More => {
                out.extend_from_slice(s.output());
                let n = s.output().len();
                s.sent(n);
                if at == input.len() {
                    return (stored, out);
                }
                let n = piece().max(1).min(input.len() - at);
                s.feed(&input[at..at + n]);
                at += n;
            }
        }
    }
    panic!("no progress after {limit} steps");
}

/// Checks what a session sent for `input` (see [`drive`]): every reply
/// line is a code from 2xx to 5xx, a space or a dash, text and CRLF; the
/// replies are bounded by the lines sent; and no more messages were stored
/// than DATA commands were sent.
pub fn check(input: &[u8], stored: usize, out: &[u8]) {
    assert!(out.ends_with(b"\r\n"), "a reply cut short (or no greeting)");
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.len() >= 5
            && (b'2'..=b'5').contains(&line[0])
            && line[1].is_ascii_digit()
            && line[2].is_ascii_digit()
            && (line[3] == b' ' || line[3] == b'-')
            && line.ends_with(b"\r");
        assert!(ok, "reply line {:?}", String::from_utf8_lossy(line));
    }
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(
        out.len() <= 512 * (lines + 2),
        "{} bytes of replies to {lines} lines",
        out.len()
    );
    let data_commands = input
        .windows(4)
        .filter(|w| w.eq_ignore_ascii_case(b"DATA"))
        .count();
    assert!(
        stored <= data_commands,
        "{stored} messages stored for {data_commands} DATA commands"
    );
}
