//! `vsic-mailq send`: streams messages to an SMTP receiver over several
//! sessions and reports every message the moment its 250 has been read,
//! never before: `ack FROM ID` (ID from "queued as ID"). What the crash
//! tests check the queue against after the receiver, or the machine, was
//! killed mid-stream.
//!
//! The sender of each message carries its own checksum: the local part is
//! the SHA-256 of the content (64 hex digits, as many as RFC 5321 allows),
//! the domain names the tag, the session and the message number. So every
//! sender is unique, and `list --json` alone shows whether a stored message
//! is whole (its `sha256` equals its sender's local part), also for a
//! message whose 250 never arrived.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::bench::message_tagged;
use crate::client::{queued_id, Client};
use crate::sha256_hex;

/// What to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub addr: SocketAddr,
    pub sessions: usize,
    /// Messages per session; None: until the receiver stops answering.
    pub messages: Option<usize>,
    /// Content sizes in bytes, used in turn (message n of session s has
    /// `sizes[(s + n) % len]`).
    pub sizes: Vec<usize>,
    /// Makes this run's senders and contents differ from other runs'.
    pub tag: String,
}

/// The smallest size [`SendOptions::sizes`] may hold with tag `tag`.
pub fn min_size(tag: &str) -> usize {
    crate::bench::MIN_SIZE + tag.len() + 1
}

/// Message `n` of session `session`: its sender and its content.
pub fn message(tag: &str, session: usize, n: usize, size: usize) -> (String, Vec<u8>) {
    let body = message_tagged(&format!("{tag} "), session, n, size);
    let from = format!("{}@m{n}.s{session}.{tag}.send.example", sha256_hex(&body));
    (from, body)
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    pub session: usize,
    /// Messages that got their 250.
    pub acked: usize,
    /// Why it stopped early (None: it sent all its messages).
    pub stopped: Option<String>,
}

/// Runs the sessions; every acknowledgement is written to `out` as one
/// line, flushed at once. Returns how each session ended.
pub fn run<W: Write + Send + 'static>(opts: &SendOptions, out: Arc<Mutex<W>>) -> Vec<SessionEnd> {
    let threads: Vec<_> = (0..opts.sessions.max(1))
        .map(|s| {
            let (opts, out) = (opts.clone(), out.clone());
            std::thread::spawn(move || session(&opts, s, &out))
        })
        .collect();
    threads
        .into_iter()
        .enumerate()
        .map(|(s, t)| {
            t.join().unwrap_or_else(|_| SessionEnd {
                session: s,
                acked: 0,
                stopped: Some("the session thread panicked".into()),
            })
        })
        .collect()
}

fn session<W: Write>(opts: &SendOptions, s: usize, out: &Mutex<W>) -> SessionEnd {
    let mut acked = 0;
    let stopped = (|| {
        let (mut c, greet) = Client::connect(opts.addr).map_err(|e| format!("connect: {e}"))?;
        if greet != 220 {
            return Err(format!("greeting {greet}"));
        }
        match c.cmd("EHLO send.example") {
            Ok(250) => {}
            r => return Err(format!("EHLO: {r:?}")),
        }
        let to = format!("q{s}@send.example");
        let mut n = 0;
        while opts.messages.is_none_or(|m| n < m) {
            let size = opts.sizes[(s + n) % opts.sizes.len()];
            let (from, body) = message(&opts.tag, s, n, size);
            let (code, lines) = c
                .transaction(&from, &to, &body)
                .map_err(|e| format!("message {n}: {e}"))?;
            if code != 250 {
                return Err(format!("message {n}: {code} {lines:?}"));
            }
            let id = queued_id(&lines).ok_or_else(|| format!("message {n}: no id in {lines:?}"))?;
            // The 250 has been read: only now is the message reported.
            let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
            writeln!(w, "ack {from} {id}")
                .and_then(|()| w.flush())
                .map_err(|e| format!("writing the acknowledgement: {e}"))?;
            drop(w);
            acked += 1;
            n += 1;
        }
        let _ = c.cmd("QUIT");
        Ok(())
    })()
    .err();
    SessionEnd {
        session: s,
        acked,
        stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_names_the_content() {
        let (from, body) = message("t1", 2, 7, 3000);
        assert_eq!(body.len(), 3000);
        let (local, domain) = from.split_once('@').unwrap();
        assert_eq!(local, sha256_hex(&body));
        assert_eq!(domain, "m7.s2.t1.send.example");
        let (other, _) = message("t2", 2, 7, 3000);
        assert_ne!(from, other, "another tag, another message");
    }
}
