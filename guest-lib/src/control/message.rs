//! Requests and replies of the control-plane service, as JSON objects.
//!
//! | request | descriptors | reply |
//! |---|---|---|
//! | `{"v":1,"op":"attach","vsic":N,"slot":S,"read_only":B}` | the capability file, open for reading | `{"v":1,"reply":"attached"}` |
//! | `{"v":1,"op":"detach","vsic":N,"slot":S}` | none | `{"v":1,"reply":"detached"}` |
//! | `{"v":1,"op":"dma","bytes":B}` | none | `{"v":1,"reply":"dma","page_size":P,"gpas":[...]}` + the huge-page file |
//! | `{"v":1,"op":"dma-locate"}` | a huge-page file | `{"v":1,"reply":"dma-pages","gpas":[...]}`: where its pages are now |
//! | `{"v":1,"op":"dma-register","vsic":N}` | a huge-page file, pinned by the sender | `{"v":1,"reply":"dma-registered","windows":[[START,LEN],...]}`: the windows added to VSIC N (none in open DMA mode); root only |
//! | `{"v":1,"op":"dma-unregister"}` | none | `{"v":1,"reply":"dma-unregistered","windows":[[START,LEN],...]}`: every window this connection registered, now removed |
//!
//! Windows registered on a connection are removed when it closes, too.
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
    /// Let VSIC `vsic` reach the pages of the huge-page file sent along,
    /// which the sender (root) allocated and pinned itself, until this
    /// connection unregisters them or closes.
    DmaRegister { vsic: u32 },
    /// Remove every window this connection registered.
    DmaUnregister,
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
    DmaPages {
        gpas: Vec<u64>,
    },
    /// The DMA windows (start, length) a register request added.
    DmaRegistered {
        windows: Vec<(u64, u64)>,
    },
    /// The DMA windows (start, length) an unregister request removed.
    DmaUnregistered {
        windows: Vec<(u64, u64)>,
    },
    Refused(Refusal),
}

/// Why bytes received are not a message of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
    #[error("protocol version {0} (this side speaks {VERSION})")]
    Version(u64),
    #[error("no protocol version 'v'")]
    NoVersion,
    /// A field is missing or of the wrong kind.
    #[error("'{name}' must {what}")]
    Field { name: String, what: &'static str },
    #[error("unknown operation '{0}'")]
    UnknownOperation(String),
    #[error("no operation 'op'")]
    NoOperation,
    #[error("unknown reply '{0}'")]
    UnknownReply(String),
    #[error("no 'reply'")]
    NoReply,
}

fn bad_field(name: &str, what: &'static str) -> MessageError {
    MessageError::Field {
        name: name.to_string(),
        what,
    }
}

fn field_u32(v: &Value, name: &str) -> Result<u32, MessageError> {
    // u32::MAX, spelt out: the message is a &'static str.
    const WHAT: &str = "be a number from 0 to 4294967295";
    v.get(name)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad_field(name, WHAT))
}

fn parse_object(bytes: &[u8]) -> Result<Value, MessageError> {
    let v: Value = serde_json::from_slice(bytes).map_err(MessageError::NotJson)?;
    if !v.is_object() {
        return Err(MessageError::NotObject);
    }
    match v.get("v").and_then(Value::as_u64) {
        Some(VERSION) => Ok(v),
        Some(other) => Err(MessageError::Version(other)),
        None => Err(MessageError::NoVersion),
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
            Request::DmaRegister { vsic } => {
                json!({"v": VERSION, "op": "dma-register", "vsic": vsic})
            }
            Request::DmaUnregister => json!({"v": VERSION, "op": "dma-unregister"}),
        };
        v.to_string().into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, MessageError> {
        let v = parse_object(bytes)?;
        match v.get("op").and_then(Value::as_str) {
            Some("attach") => Ok(Request::Attach {
                vsic: field_u32(&v, "vsic")?,
                slot: field_u32(&v, "slot")?,
                read_only: match v.get("read_only") {
                    None => false,
                    Some(b) => b
                        .as_bool()
                        .ok_or_else(|| bad_field("read_only", "be true or false"))?,
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
                    .ok_or_else(|| bad_field("bytes", "be a number"))?,
            }),
            Some("dma-locate") => Ok(Request::DmaLocate),
            Some("dma-register") => Ok(Request::DmaRegister {
                vsic: field_u32(&v, "vsic")?,
            }),
            Some("dma-unregister") => Ok(Request::DmaUnregister),
            Some(op) => Err(MessageError::UnknownOperation(op.to_string())),
            None => Err(MessageError::NoOperation),
        }
    }
}

/// Windows as `[start, length]` pairs.
fn pairs(windows: &[(u64, u64)]) -> Vec<[u64; 2]> {
    windows.iter().map(|&(s, l)| [s, l]).collect()
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
            Reply::DmaRegistered { windows } => {
                json!({"v": VERSION, "reply": "dma-registered", "windows": pairs(windows)})
            }
            Reply::DmaUnregistered { windows } => {
                json!({"v": VERSION, "reply": "dma-unregistered", "windows": pairs(windows)})
            }
            Reply::Refused(r) => {
                json!({"v": VERSION, "reply": "refused", "status": r.status, "message": r.message})
            }
        };
        v.to_string().into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, MessageError> {
        let v = parse_object(bytes)?;
        let text = |name: &str| -> Result<String, MessageError> {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad_field(name, "be a string"))
        };
        let gpas = || -> Result<Vec<u64>, MessageError> {
            v.get("gpas")
                .and_then(Value::as_array)
                .ok_or_else(|| bad_field("gpas", "be an array"))?
                .iter()
                .map(|g| g.as_u64().ok_or_else(|| bad_field("gpas", "hold numbers")))
                .collect()
        };
        let windows = || -> Result<Vec<(u64, u64)>, MessageError> {
            const WHAT: &str = "be an array of [start, length] pairs";
            v.get("windows")
                .and_then(Value::as_array)
                .ok_or_else(|| bad_field("windows", WHAT))?
                .iter()
                .map(|w| match w.as_array().map(Vec::as_slice) {
                    Some([s, l]) => s.as_u64().zip(l.as_u64()),
                    _ => None,
                })
                .map(|w| w.ok_or_else(|| bad_field("windows", WHAT)))
                .collect()
        };
        match v.get("reply").and_then(Value::as_str) {
            Some("attached") => Ok(Reply::Attached),
            Some("detached") => Ok(Reply::Detached),
            Some("dma") => {
                let page_size = v
                    .get("page_size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad_field("page_size", "be a number"))?;
                Ok(Reply::Dma {
                    page_size,
                    gpas: gpas()?,
                })
            }
            Some("dma-pages") => Ok(Reply::DmaPages { gpas: gpas()? }),
            Some("dma-registered") => Ok(Reply::DmaRegistered {
                windows: windows()?,
            }),
            Some("dma-unregistered") => Ok(Reply::DmaUnregistered {
                windows: windows()?,
            }),
            Some("refused") => Ok(Reply::Refused(Refusal::new(
                text("status")?,
                text("message")?,
            ))),
            Some(other) => Err(MessageError::UnknownReply(other.to_string())),
            None => Err(MessageError::NoReply),
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
            Request::DmaRegister { vsic: 2 },
            Request::DmaUnregister,
        ] {
            assert_eq!(
                Request::decode(&r.encode()).map_err(|e| e.to_string()),
                Ok(r)
            );
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
            Reply::DmaRegistered {
                windows: vec![(0x4000_0000, 0x40_0000), (0x8000_0000, 0x20_0000)],
            },
            Reply::DmaUnregistered { windows: vec![] },
            Reply::Refused(Refusal::new("not-owner", "VSIC 1 belongs to uid 1002")),
        ] {
            assert_eq!(Reply::decode(&r.encode()).map_err(|e| e.to_string()), Ok(r));
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
            (r#"{"v":1,"op":"dma-register"}"#, "'vsic'"),
        ];
        for (text, expected) in cases {
            let err = Request::decode(text.as_bytes()).unwrap_err().to_string();
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
            r#"{"v":1,"reply":"dma-registered"}"#,
            r#"{"v":1,"reply":"dma-registered","windows":[[1]]}"#,
            r#"{"v":1,"reply":"dma-registered","windows":[[1,-2]]}"#,
        ] {
            assert!(Reply::decode(text.as_bytes()).is_err(), "{text}");
        }
    }
}
