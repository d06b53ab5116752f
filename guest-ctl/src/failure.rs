//! What went wrong, for the user: a message on stderr, an error object in
//! `--json` mode, and the exit code.

use serde_json::{json, Value};
use vsic::admin::AdminError;
use vsicctl::control::ControlError;

/// Exit code of a failed operation (device refusal, file error, transport).
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a command line that cannot be run (clap uses it too).
pub const EXIT_USAGE: i32 = 2;

/// A failed step: what was being done, and why it failed.
#[derive(Debug)]
pub struct Failure {
    /// "creating VSA", "reading capability file x", ...
    pub context: String,
    pub cause: Cause,
}

#[derive(Debug)]
pub enum Cause {
    Admin(AdminError),
    /// The control-plane service refused or could not be reached.
    Control(ControlError),
    /// A local problem (files, arguments) with a short status name of its own.
    Local {
        status: &'static str,
        message: String,
        /// The typed error the message came from, if any.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Failure {
    pub fn admin(context: impl Into<String>, err: AdminError) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Admin(err),
        }
    }

    pub fn file(context: impl Into<String>, message: impl ToString) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Local {
                status: "file-error",
                message: message.to_string(),
                source: None,
            },
        }
    }

    pub fn control(context: impl Into<String>, err: ControlError) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Control(err),
        }
    }

    /// A local problem of its own kind: `no-pf`, `pci`, `store`, ...
    pub fn local(
        context: impl Into<String>,
        status: &'static str,
        message: impl ToString,
    ) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Local {
                status,
                message: message.to_string(),
                source: None,
            },
        }
    }

    /// A local problem of its own kind caused by a typed error: the
    /// error's `Display` is the message, and the error stays the source.
    pub fn local_error(
        context: impl Into<String>,
        status: &'static str,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Local {
                status,
                message: err.to_string(),
                source: Some(Box::new(err)),
            },
        }
    }

    pub fn usage(context: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            context: context.into(),
            cause: Cause::Local {
                status: "usage",
                message: message.into(),
                source: None,
            },
        }
    }

    /// Stable short name: the device status's name for device refusals.
    pub fn status_name(&self) -> String {
        match &self.cause {
            Cause::Admin(AdminError::Device(s)) => s.name().to_string(),
            Cause::Admin(AdminError::UnknownStatus(code)) => format!("unknown-status-{code}"),
            Cause::Admin(AdminError::Transport(_)) => "transport".to_string(),
            Cause::Admin(AdminError::Protocol(_)) => "protocol".to_string(),
            Cause::Control(e) => e.status().to_string(),
            Cause::Local { status, .. } => status.to_string(),
        }
    }

    /// The cause alone, without the context.
    pub fn message(&self) -> String {
        match &self.cause {
            Cause::Admin(AdminError::Device(s)) => s.message().to_string(),
            Cause::Admin(e) => e.to_string(),
            Cause::Control(ControlError::Refused(r)) => r.message.clone(),
            Cause::Control(e) => e.to_string(),
            Cause::Local { message, .. } => message.clone(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match &self.cause {
            Cause::Local {
                status: "usage", ..
            } => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }

    /// The stderr line: `vsicctl: <context>: <message> (<status name>)`.
    pub fn stderr_line(&self) -> String {
        match &self.cause {
            Cause::Admin(AdminError::Device(_)) | Cause::Control(ControlError::Refused(_)) => {
                format!(
                    "vsicctl: {}: {} ({})",
                    self.context,
                    self.message(),
                    self.status_name()
                )
            }
            _ => format!("vsicctl: {}: {}", self.context, self.message()),
        }
    }

    /// The `--json` error document.
    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "status": self.status_name(),
                "message": self.message(),
                "context": self.context,
            }
        })
    }
}

/// `CONTEXT: MESSAGE`, the stderr line without the prefix and status.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.message())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Admin(e) => Some(e),
            Cause::Control(e) => Some(e),
            Cause::Local { source, .. } => source.as_deref().map(|e| e as _),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsic_abi::AdminStatus;

    #[test]
    fn device_refusal_names_its_status_everywhere() {
        let f = Failure::admin("creating VSA", AdminError::Device(AdminStatus::NoSpace));
        assert_eq!(
            f.stderr_line(),
            "vsicctl: creating VSA: not enough free extents on the drives (no-space)"
        );
        assert_eq!(f.exit_code(), EXIT_FAILED);
        assert_eq!(f.to_json()["error"]["status"], "no-space");
        assert_eq!(
            f.to_json()["error"]["message"],
            AdminStatus::NoSpace.message()
        );
    }

    #[test]
    fn local_failures_have_their_own_codes() {
        let u = Failure::usage("choosing the transport", "no");
        assert_eq!(u.exit_code(), EXIT_USAGE);
        assert_eq!(u.to_json()["error"]["status"], "usage");
        let f = Failure::file("reading capability file x", "No such file");
        assert_eq!(f.exit_code(), EXIT_FAILED);
        assert_eq!(
            f.stderr_line(),
            "vsicctl: reading capability file x: No such file"
        );
        let p = Failure::admin("listing", AdminError::UnknownStatus(999));
        assert_eq!(p.status_name(), "unknown-status-999");
    }
}
