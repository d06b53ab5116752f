//! Requests and replies of the control-plane service, as JSON objects.
//!
//! | request | descriptors | reply |
//! |---|---|---|
//! | `{"v":1,"op":"attach","vsic":N,"slot":S,"read_only":B}` | the capability file, open for reading | `{"v":1,"reply":"attached"}` |
//! | `{"v":1,"op":"detach","vsic":N,"slot":S}` | none | `{"v":1,"reply":"detached"}` |
//! | `{"v":1,"op":"dma","bytes":B}` | none | `{"v":1,"reply":"dma","page_size":P,"gpas":[...]}` + the huge-page file |
//! | `{"v":1,"op":"dma-locate"}` | a huge-page file | `{"v":1,"reply":"dma-pages","gpas":[...]}`: where its pages are now |
//!
//! Any request may instead get `{"v":1,"reply":"refused","status":NAME,"message":TEXT}`.

use serde_json::{json, Value};

/// Protocol version spoken by this build.
pub const VERSION: u64 = 1;
/// Largest message either side sends; a DMA reply of 1024 pages fits.
pub const MAX_MESSAGE: usize = 64 << 10;

/// What an application asks the control plane for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Attach the VSA of the capability file sent along to `slot` of
    /// `vsic`, which the asking user must own.
    Attach {
        vsic: u32,
        slot: u32,
        read_only: bool,
    },
    /// Detach `slot` of `vsic`, which the asking user must own.
    Detach { vsic: u32, slot: u32 },
    /// At least `bytes` of pinned DMA memory (rounded up to whole pages).
    Dma { bytes: u64 },
    /// Where the pages of the huge-page file sent along are now (asked
    /// after pinning them: pinning may move pages).
    DmaLocate,
}

/// Why the control plane said no: a stable status name and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: String,
    pub message: String,
}

impl Refusal {
    pub fn new(status: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            status: status.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

/// The control plane's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Attached,
    Detached,
    /// Sent with the huge-page file: page `i` of it is at `gpas[i]`.
    Dma {
        page_size: u64,
        gpas: Vec<u64>,
    },
    /// Page `i` of the file sent with the request is at `gpas[i]`.
    DmaPages { gpas: Vec<u64> },
    Refused(Refusal),
}

fn field_u32(v: &Value, name: &str) -> Result<u32, String> {
    v.get(name)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("'{name}' must be a number from 0 to {}", u32::MAX))
}

fn parse_object(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    match v.get("v").and_then(Value::as_u64) {
        Some(VERSION) => Ok(v),
        Some(other) => Err(format!(
            "protocol version {other} (this side speaks {VERSION})"
        )),
        None => Err("no protocol version 'v'".into()),
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            Request::Attach {
                vsic,
                slot,
                read_only,
            } => {
                json!({"v": VERSION, "op": "attach", "vsic": vsic, "slot": slot, "read_only": read_only})
            }
            Request::Detach { vsic, slot } => {
                json!({"v": VERSION, "op": "detach", "vsic": vsic, "slot": slot})
            }
            Request::Dma { bytes } => json!({"v": VERSION, "op": "dma", "bytes": bytes}),
            Request::DmaLocate => json!({"v": VERSION, "op": "dma-locate"}),
        };
        v.to_string().into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, String> {
        let v = parse_object(bytes)?;
        match v.get("op").and_then(Value::as_str) {
            Some("attach") => Ok(Request::Attach {
                vsic: field_u32(&v, "vsic")?,
                slot: field_u32(&v, "slot")?,
                read_only: match v.get("read_only") {
                    None => false,
                    Some(b) => b.as_bool().ok_or("'read_only' must be true or false")?,
                },
            }),
            Some("detach") => Ok(Request::Detach {
                vsic: field_u32(&v, "vsic")?,
                slot: field_u32(&v, "slot")?,
            }),
            Some("dma") => Ok(Request::Dma {
                bytes: v
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .ok_or("'bytes' must be a number")?,
            }),
            Some("dma-locate") => Ok(Request::DmaLocate),
            Some(op) => Err(format!("unknown operation '{op}'")),
            None => Err("no operation 'op'".into()),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            Reply::Attached => json!({"v": VERSION, "reply": "attached"}),
            Reply::Detached => json!({"v": VERSION, "reply": "detached"}),
            Reply::Dma { page_size, gpas } => {
                json!({"v": VERSION, "reply": "dma", "page_size": page_size, "gpas": gpas})
            }
            Reply::DmaPages { gpas } => json!({"v": VERSION, "reply": "dma-pages", "gpas": gpas}),
            Reply::Refused(r) => {
                json!({"v": VERSION, "reply": "refused", "status": r.status, "message": r.message})
            }
        };
        v.to_string().into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        let v = parse_object(bytes)?;
        let text = |name: &str| -> Result<String, String> {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("'{name}' must be a string"))
        };
        let gpas = || -> Result<Vec<u64>, String> {
            v.get("gpas")
                .and_then(Value::as_array)
                .ok_or("'gpas' must be an array")?
                .iter()
                .map(|g| g.as_u64().ok_or_else(|| "'gpas' must hold numbers".to_string()))
                .collect()
        };
        match v.get("reply").and_then(Value::as_str) {
            Some("attached") => Ok(Reply::Attached),
            Some("detached") => Ok(Reply::Detached),
            Some("dma") => {
                let page_size = v
                    .get("page_size")
                    .and_then(Value::as_u64)
                    .ok_or("'page_size' must be a number")?;
                Ok(Reply::Dma {
                    page_size,
                    gpas: gpas()?,
                })
            }
            Some("dma-pages") => Ok(Reply::DmaPages { gpas: gpas()? }),
            Some("refused") => Ok(Reply::Refused(Refusal::new(
                text("status")?,
                text("message")?,
            ))),
            Some(other) => Err(format!("unknown reply '{other}'")),
            None => Err("no 'reply'".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Attach {
                vsic: 3,
                slot: 15,
                read_only: true,
            },
            Request::Detach { vsic: 0, slot: 1 },
            Request::Dma { bytes: 4 << 20 },
            Request::DmaLocate,
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Attached,
            Reply::Detached,
            Reply::Dma {
                page_size: 2 << 20,
                gpas: vec![0x4000_0000, 0x4020_0000],
            },
            Reply::DmaPages {
                gpas: vec![0x4020_0000],
            },
            Reply::Refused(Refusal::new("not-owner", "VSIC 1 belongs to uid 1002")),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"op":"attach"}"#, "no protocol version"),
            (r#"{"v":2,"op":"attach"}"#, "version 2"),
            (r#"{"v":1}"#, "no operation"),
            (r#"{"v":1,"op":"format"}"#, "unknown operation 'format'"),
            (r#"{"v":1,"op":"attach","slot":1}"#, "'vsic'"),
            (r#"{"v":1,"op":"attach","vsic":-1,"slot":1}"#, "'vsic'"),
            (
                r#"{"v":1,"op":"attach","vsic":4294967296,"slot":1}"#,
                "'vsic'",
            ),
            (
                r#"{"v":1,"op":"attach","vsic":1,"slot":1,"read_only":"yes"}"#,
                "'read_only'",
            ),
            (r#"{"v":1,"op":"dma","bytes":"lots"}"#, "'bytes'"),
        ];
        for (text, expected) in cases {
            let err = Request::decode(text.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(Request::decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn malformed_replies_are_errors() {
        for text in [
            r#"{"v":1,"reply":"dma","page_size":4096,"gpas":["x"]}"#,
            r#"{"v":1,"reply":"dma","gpas":[]}"#,
            r#"{"v":1,"reply":"dma-pages"}"#,
            r#"{"v":1,"reply":"refused","status":1}"#,
            r#"{"v":1,"reply":"maybe"}"#,
        ] {
            assert!(Reply::decode(text.as_bytes()).is_err(), "{text}");
        }
    }
}
