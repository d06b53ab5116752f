//! The command table: every command is a name, a one-line description and
//! a handler. Command modules register theirs (see `commands`); the
//! dispatcher looks names up here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::protocol::{CommandError, ErrorClass};
use crate::controller::Controller;
use crate::front::channel::ConfigChangeSink;
use crate::workbench::Workbench;

/// What a handler can reach.
pub struct Context {
    pub controller: Arc<Controller>,
    /// Fault rules and traces around the controller.
    pub workbench: Arc<Workbench>,
    /// Where admin commands report VSICs whose capacity changed.
    pub config_changes: Arc<dyn ConfigChangeSink>,
}

/// A command handler: its arguments (`{}` when the request had none) to a
/// return value or an error.
pub type Handler = fn(&Context, Value) -> Result<Value, CommandError>;

/// One registered command.
#[derive(Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    pub help: &'static str,
    pub handler: Handler,
}

/// Every command, by name.
#[derive(Default)]
pub struct Registry {
    commands: BTreeMap<&'static str, Command>,
}

impl Registry {
    /// Adds a command. A name registered twice is a programming error,
    /// caught by the registry's test.
    pub fn add(&mut self, name: &'static str, help: &'static str, handler: Handler) {
        let old = self.commands.insert(
            name,
            Command {
                name,
                help,
                handler,
            },
        );
        debug_assert!(old.is_none(), "management command {name} registered twice");
    }

    pub fn get(&self, name: &str) -> Option<&Command> {
        self.commands.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Command> {
        self.commands.values()
    }

    /// Runs one request's command.
    pub fn dispatch(
        &self,
        ctx: &Context,
        name: &str,
        arguments: Option<Value>,
    ) -> Result<Value, CommandError> {
        let command = self.get(name).ok_or_else(|| {
            CommandError::new(
                ErrorClass::CommandNotFound,
                format!("no command {name:?} (query-commands lists them)"),
            )
        })?;
        let arguments = match arguments {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err(CommandError::invalid("\"arguments\" must be an object")),
        };
        (command.handler)(ctx, arguments)
    }
}

/// Decodes a handler's arguments into its own struct (which should deny
/// unknown fields): a missing, mistyped or unknown argument is
/// InvalidArguments.
pub fn args<T: DeserializeOwned>(arguments: Value) -> Result<T, CommandError> {
    serde_json::from_value(arguments).map_err(|e| CommandError::invalid(e.to_string()))
}

/// Checks that a command which takes no arguments got none (`{}`, or no
/// `arguments` at all): anything else is InvalidArguments.
pub fn no_args(arguments: Value) -> Result<(), CommandError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoArgs {}
    let NoArgs {} = args(arguments)?;
    Ok(())
}
