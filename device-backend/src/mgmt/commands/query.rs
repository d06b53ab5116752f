//! Discovery: `query-commands`, `query-version`.

use serde_json::{json, Value};

use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{no_args, Context, Registry};

pub fn register(r: &mut Registry) {
    r.add(
        "query-commands",
        "every command with a one-line description",
        query_commands,
    );
    r.add(
        "query-version",
        "the daemon's version and the protocol's",
        query_version,
    );
}

fn query_commands(_: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    let r = super::registry();
    Ok(Value::Array(
        r.all()
            .map(|c| json!({"name": c.name, "help": c.help}))
            .collect(),
    ))
}

fn query_version(_: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    Ok(json!({"vsicd": env!("CARGO_PKG_VERSION"), "protocol": 1}))
}
