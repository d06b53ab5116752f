//! Discovery: `query-commands`, `query-version`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{args, Context, Registry};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

fn query_commands(_: &Context, a: Value) -> Result<Value, CommandError> {
    let NoArgs {} = args(a)?;
    let r = super::registry();
    Ok(Value::Array(
        r.all()
            .map(|c| json!({"name": c.name, "help": c.help}))
            .collect(),
    ))
}

fn query_version(_: &Context, a: Value) -> Result<Value, CommandError> {
    let NoArgs {} = args(a)?;
    Ok(json!({"vsicd": env!("CARGO_PKG_VERSION"), "protocol": 1}))
}
