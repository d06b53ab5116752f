//! A client of vsicd's management socket for tests: one JSON line out,
//! one back, every read bounded.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub struct MgmtClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl MgmtClient {
    pub fn connect(path: &Path) -> MgmtClient {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set read timeout");
        MgmtClient {
            reader: BufReader::new(stream.try_clone().expect("clone stream")),
            writer: stream,
        }
    }

    /// Sends one raw line and returns the parsed reply.
    pub fn send_line(&mut self, line: &str) -> Value {
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .expect("send request");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("read reply");
        assert!(reply.ends_with('\n'), "reply line incomplete: {reply:?}");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply not JSON ({e}): {reply}"))
    }

    /// Executes a command; the whole reply.
    pub fn execute(&mut self, name: &str, arguments: Value) -> Value {
        let req = serde_json::json!({"execute": name, "arguments": arguments});
        self.send_line(&req.to_string())
    }

    /// Executes a command that must succeed; its return value.
    #[track_caller]
    pub fn ok(&mut self, name: &str, arguments: Value) -> Value {
        let r = self.execute(name, arguments.clone());
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("{name} {arguments} failed: {r}"),
        }
    }

    /// Executes a command that must fail; its error class.
    #[track_caller]
    pub fn err(&mut self, name: &str, arguments: Value) -> String {
        let r = self.execute(name, arguments.clone());
        match r
            .get("error")
            .and_then(|e| e.get("class"))
            .and_then(Value::as_str)
        {
            Some(c) => c.to_string(),
            None => panic!("{name} {arguments} should fail: {r}"),
        }
    }
}
