//! Reaching the controller through vsicd's management socket on the host
//! (`--mgmt SOCK`): every admin command travels as the management
//! protocol's raw `admin` command and runs in the controller's own admin
//! layer, so it behaves as through the PF, even while a guest owns the PF.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use vsic::admin::{AdminError, AdminExchange};
use vsic_abi::{hex, AdminCommand, AdminCompletion};

/// How long one command may take before vsicctl gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the management socket.
pub struct MgmtExchange {
    conn: Mutex<(BufReader<UnixStream>, UnixStream)>,
}

fn io_failure(what: &'static str, e: std::io::Error) -> AdminError {
    AdminError::Transport(vsic::Error::System { what, source: e })
}

fn protocol(why: impl Into<String>) -> AdminError {
    AdminError::Protocol(format!("management socket: {}", why.into()))
}

impl MgmtExchange {
    pub fn connect(path: &Path) -> Result<MgmtExchange, AdminError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            AdminError::Transport(vsic::Error::Connect {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| io_failure("setting the management socket's timeout", e))?;
        let reader = stream
            .try_clone()
            .map_err(|e| io_failure("cloning the management socket", e))?;
        Ok(MgmtExchange {
            conn: Mutex::new((BufReader::new(reader), stream)),
        })
    }

    /// Sends one request and returns its `return` value.
    fn call(&self, request: &Value) -> Result<Value, AdminError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let (reader, writer) = &mut *conn;
        let mut line = request.to_string();
        line.push('\n');
        writer
            .write_all(line.as_bytes())
            .map_err(|e| io_failure("writing to the management socket", e))?;
        let mut reply = String::new();
        let n = reader
            .read_line(&mut reply)
            .map_err(|e| io_failure("reading from the management socket", e))?;
        if n == 0 {
            return Err(protocol("the daemon closed the connection"));
        }
        let reply: Value =
            serde_json::from_str(&reply).map_err(|e| protocol(format!("reply not JSON: {e}")))?;
        if let Some(v) = reply.get("return") {
            return Ok(v.clone());
        }
        let err = &reply["error"];
        Err(protocol(format!(
            "{}: {}",
            err["class"].as_str().unwrap_or("?"),
            err["desc"].as_str().unwrap_or("no description")
        )))
    }
}

fn field(v: &Value, name: &str) -> Result<u64, AdminError> {
    v[name]
        .as_u64()
        .ok_or_else(|| protocol(format!("no \"{name}\" in the completion: {v}")))
}

impl AdminExchange for MgmtExchange {
    fn exchange(
        &self,
        command: &[u8; AdminCommand::LEN],
        payload: &[u8],
        in_capacity: usize,
    ) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
        let r = self.call(&json!({
            "execute": "admin",
            "arguments": {
                "command": hex::encode(command),
                "payload": hex::encode(payload),
                "capacity": in_capacity,
            },
        }))?;
        let data = hex::decode(r["payload"].as_str().unwrap_or_default())
            .map_err(|e| protocol(format!("payload: {e}")))?;
        let status =
            u16::try_from(field(&r, "code")?).map_err(|_| protocol("status code out of range"))?;
        let completion = AdminCompletion {
            status,
            payload_len: data.len() as u32,
            result0: field(&r, "result0")?,
            result1: field(&r, "result1")?,
        };
        Ok((completion, data))
    }
}
