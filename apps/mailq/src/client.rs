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

    pub fn shutdown(&self) {
        let _ = self.w.shutdown(std::net::Shutdown::Both);
    }
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
