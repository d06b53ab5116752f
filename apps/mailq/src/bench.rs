//! A load generator: `sessions` SMTP sessions of our own client, each
//! sending messages of `size` bytes one after another (MAIL, RCPT and DATA
//! pipelined, then the content), timing each from MAIL to its 250.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{Client, TransactionError};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub messages: usize,
    pub elapsed: Duration,
    /// Per message, MAIL sent to 250 received.
    pub p50: Duration,
    pub p99: Duration,
}

impl BenchResult {
    pub fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("session {session}: {source}")]
    Io {
        session: usize,
        source: std::io::Error,
    },
    #[error("session {session}: expected {want}, got {got} {text:?}")]
    Reply {
        session: usize,
        want: u16,
        got: u16,
        text: Vec<String>,
    },
    #[error("session {session}: {source}")]
    Transaction {
        session: usize,
        source: TransactionError,
    },
    #[error("a session thread panicked")]
    Panicked,
}

/// The smallest message [`message`] builds.
pub const MIN_SIZE: usize = 64;

/// A message of exactly `size` bytes (at least [`MIN_SIZE`]): CRLF lines
/// of printable text, the last one ending in CRLF too.
pub fn message(session: usize, n: usize, size: usize) -> Vec<u8> {
    message_tagged("", session, n, size)
}

/// [`message`] with `tag` at the start of its subject (`Subject: TAGsS mN`),
/// so that runs with different tags send different bytes; exactly `size`
/// bytes if `size` is at least [`MIN_SIZE`] plus the tag's length.
pub fn message_tagged(tag: &str, session: usize, n: usize, size: usize) -> Vec<u8> {
    let size = size.max(MIN_SIZE + tag.len());
    let mut b = format!("Subject: {tag}s{session} m{n}\r\n\r\n").into_bytes();
    let fill = b'a' + (n % 26) as u8;
    let line = |b: &mut Vec<u8>, len: usize| {
        b.extend(std::iter::repeat_n(fill, len));
        b.extend_from_slice(b"\r\n");
    };
    while size - b.len() > 160 {
        line(&mut b, 76);
    }
    // The rest (at most 160 bytes) as two lines.
    let rest = size - b.len() - 4;
    line(&mut b, rest / 2);
    line(&mut b, rest - rest / 2);
    b
}

/// Runs `sessions` sessions against `addr`, `per_session` messages each.
pub fn run(
    addr: SocketAddr,
    sessions: usize,
    per_session: usize,
    size: usize,
) -> Result<BenchResult, BenchError> {
    let start = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|s| std::thread::spawn(move || session(addr, s, per_session, size)))
        .collect();
    let mut lat = Vec::with_capacity(sessions * per_session);
    for t in threads {
        lat.extend(t.join().map_err(|_| BenchError::Panicked)??);
    }
    let elapsed = start.elapsed();
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    Ok(BenchResult {
        messages: lat.len(),
        elapsed,
        p50: pct(50),
        p99: pct(99),
    })
}

fn session(addr: SocketAddr, s: usize, n: usize, size: usize) -> Result<Vec<Duration>, BenchError> {
    let io = |source| BenchError::Io { session: s, source };
    let (mut c, greet) = Client::connect(addr).map_err(io)?;
    let expect = |want: u16, (got, text): (u16, Vec<String>)| {
        if got == want {
            Ok(())
        } else {
            Err(BenchError::Reply {
                session: s,
                want,
                got,
                text,
            })
        }
    };
    expect(220, (greet, Vec::new()))?;
    c.send(b"EHLO bench.example\r\n").map_err(io)?;
    expect(250, c.reply().map_err(io)?)?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let body = message(s, i, size);
        let t = Instant::now();
        let reply = c
            .transaction(
                &format!("s{s}m{i}@bench.example"),
                &format!("q{s}@bench.example"),
                &body,
            )
            .map_err(|source| BenchError::Transaction { session: s, source })?;
        expect(250, reply)?;
        lat.push(t.elapsed());
    }
    let _ = c.cmd("QUIT");
    Ok(lat)
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_have_the_exact_size() {
        for size in [64, 65, 100, 161, 162, 1024, 4096, 131072] {
            let m = super::message(1, 2, size);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"));
        }
    }
}
