//! The wire shape of the management protocol, after QMP: one JSON object
//! per line each way. A request is `{"execute": NAME, "arguments": {...}}`
//! (`arguments` optional, `id` optional and echoed back); a reply is
//! `{"return": VALUE}` or `{"error": {"class": CLASS, "desc": TEXT}}`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The longest request line accepted; a longer one is answered with an
/// error and skipped.
pub const MAX_LINE: usize = 1 << 20;

/// Why a request failed: its class (stable, for scripts) and a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct CommandError {
    pub class: ErrorClass,
    pub desc: String,
    /// For `AdminError`: the admin status name, as the PF reports it.
    pub status: Option<&'static str>,
}

/// The error classes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The line is not a JSON object of the request shape.
    ParseError,
    /// No command of that name.
    CommandNotFound,
    /// The arguments are missing, of the wrong type, unknown or out of range.
    InvalidArguments,
    /// The named VSIC, drive, rule or trace does not exist.
    NotFound,
    /// The controller refused an admin command (see `status`).
    AdminError,
    /// Anything else: an I/O failure on the host, a state conflict.
    GenericError,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::ParseError => "ParseError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::InvalidArguments => "InvalidArguments",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::AdminError => "AdminError",
            ErrorClass::GenericError => "GenericError",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl CommandError {
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> CommandError {
        CommandError {
            class,
            desc: desc.into(),
            status: None,
        }
    }

    pub fn invalid(desc: impl Into<String>) -> CommandError {
        CommandError::new(ErrorClass::InvalidArguments, desc)
    }

    pub fn not_found(desc: impl Into<String>) -> CommandError {
        CommandError::new(ErrorClass::NotFound, desc)
    }

    pub fn generic(desc: impl Into<String>) -> CommandError {
        CommandError::new(ErrorClass::GenericError, desc)
    }
}

/// One parsed request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub execute: String,
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Echoed in the reply, as QMP does.
    #[serde(default)]
    pub id: Option<Value>,
}

/// Parses a request line.
pub fn parse(line: &str) -> Result<Request, CommandError> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| CommandError::new(ErrorClass::ParseError, format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(CommandError::new(
            ErrorClass::ParseError,
            "a request is a JSON object {\"execute\": NAME, \"arguments\": {...}}",
        ));
    }
    let id = value.get("id").cloned();
    serde_json::from_value(value)
        .map_err(|e| CommandError {
            class: ErrorClass::ParseError,
            desc: format!("not a request: {e}"),
            status: None,
        })
        .map(|mut r: Request| {
            r.id = r.id.or(id);
            r
        })
}

/// Encodes a reply line (without the newline).
pub fn reply(result: &Result<Value, CommandError>, id: Option<&Value>) -> String {
    let mut obj = Map::new();
    match result {
        Ok(v) => {
            obj.insert("return".into(), v.clone());
        }
        Err(e) => {
            let mut err = json!({"class": e.class.name(), "desc": e.desc});
            if let Some(s) = e.status {
                err["status"] = json!(s);
            }
            obj.insert("error".into(), err);
        }
    }
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    Value::Object(obj).to_string()
}
