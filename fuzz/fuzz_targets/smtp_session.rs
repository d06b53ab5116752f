//! Arbitrary bytes as what an SMTP client sends, through the session's
//! state machine (`vsic_mailq::smtp::Session`) the way the server drives
//! it: fed in pieces, every message stored at once.
//!
//! Input: byte 0 chooses the piece size (bits 0-5: 1 to 64 bytes) and the
//! message size limit (bit 6: 16 bytes, so DATA overflows; else the
//! default); the rest is the dialogue. Nothing may panic; the session never
//! waits for a store it did not hand out; it always comes back asking for
//! input or quits, within a bounded number of steps; every reply line is a
//! code from 2xx to 5xx, a space or a dash, text, CRLF; no message stored
//! is over the limit, nor are more stored than DATA commands were sent;
//! and the replies are bounded by the lines sent.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vsic_mailq::server::ServeOptions;
use vsic_mailq::smtp::{Event, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&head, input)) = data.split_first() else {
        return;
    };
    let piece = 1 + usize::from(head & 0x3f);
    let opts = Arc::new(if head & 0x40 != 0 {
        ServeOptions {
            max_size: 16,
            ..ServeOptions::default()
        }
    } else {
        ServeOptions::default()
    });
    let mut s = Session::new(opts.clone());
    let (mut out, mut at, mut stored) = (Vec::new(), 0, 0u64);
    // Each step feeds a piece (at most one per byte), stores a message
    // (each needs at least a DATA line and its end, many bytes) or ends.
    let limit = 2 * input.len() + 4;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= limit, "no progress after {limit} steps");
        match s.advance() {
            Event::Store(msg) => {
                assert!(
                    msg.body.len() <= opts.max_size,
                    "a message of {} bytes stored under a limit of {}",
                    msg.body.len(),
                    opts.max_size
                );
                stored += 1;
                s.stored(Ok(stored));
            }
            Event::Waiting => panic!("waiting for a store with no message handed out"),
            Event::Quit => {
                out.extend_from_slice(s.output());
                break;
            }
            Event::More => {
                out.extend_from_slice(s.output());
                let n = s.output().len();
                s.sent(n);
                if at == input.len() {
                    break;
                }
                let n = piece.min(input.len() - at);
                s.feed(&input[at..at + n]);
                at += n;
            }
        }
    }
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
        .count() as u64;
    assert!(
        stored <= data_commands,
        "{stored} messages stored for {data_commands} DATA commands"
    );
});
