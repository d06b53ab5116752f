//! A small SMTP client: what the tests and `bench` drive the receiver with.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A line-level SMTP client.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    /// Connects and reads the greeting (its code returned).
    pub fn connect(addr: SocketAddr) -> std::io::Result<(Client, u16)> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        let (code, _) = c.reply()?;
        Ok((c, code))
    }

    /// The connection, for writing from another thread while this one
    /// reads replies.
    pub fn writer(&self) -> std::io::Result<TcpStream> {
        self.w.try_clone()
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)
    }

    /// Reads one (possibly multi-line) reply: its code and its lines.
    pub fn reply(&mut self) -> std::io::Result<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_string());
            if last {
                return Ok((code, lines));
            }
        }
    }

    /// Sends a command line and reads its reply code.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<u16> {
        self.send(format!("{line}\r\n").as_bytes())?;
        Ok(self.reply()?.0)
    }

    /// One message: MAIL, RCPT and DATA pipelined, then, after their 250,
    /// 250 and 354, `body` dot-stuffed. Returns the reply to the content
    /// (250 once the server says it is stored), whatever its code.
    pub fn transaction(
        &mut self,
        from: &str,
        to: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<String>), TransactionError> {
        let head = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
        self.send(head.as_bytes())?;
        for (step, want) in [("MAIL", 250), ("RCPT", 250), ("DATA", 354)] {
            let (got, text) = self.reply()?;
            if got != want {
                return Err(TransactionError::Refused {
                    step,
                    want,
                    got,
                    text,
                });
            }
        }
        self.send(&dot_stuff(body))?;
        Ok(self.reply()?)
    }

    pub fn shutdown(&self) {
        let _ = self.w.shutdown(std::net::Shutdown::Both);
    }
}

/// Why [`Client::transaction`] did not get to the reply after the content.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{step}: expected {want}, got {got} {text:?}")]
    Refused {
        step: &'static str,
        want: u16,
        got: u16,
        text: Vec<String>,
    },
}

/// The id in a 250 reply to DATA (`250 2.0.0 Ok: queued as ID`), if it
/// names one.
pub fn queued_id(lines: &[String]) -> Option<u64> {
    let last = lines.last()?;
    last.split_once("queued as ")?.1.trim().parse().ok()
}

/// `body` dot-stuffed and terminated, as sent after DATA's 354.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}
