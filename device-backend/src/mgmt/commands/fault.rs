//! `fault-add`, `fault-list`, `fault-clear`: the fault rules of
//! `crate::workbench::fault`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{args, no_args, Context, Registry};
use crate::workbench::fault::{RuleError, RuleSpec};
use crate::workbench::WorkbenchError;

pub fn register(r: &mut Registry) {
    r.add(
        "fault-add",
        "arm a fault rule (vsic|drive, op, offset+length, action error|delay|corrupt|torn, probability, every, count); returns its id",
        fault_add,
    );
    r.add(
        "fault-list",
        "every armed rule with its matched and injected counts",
        fault_list,
    );
    r.add(
        "fault-clear",
        "remove rule \"id\", or every rule",
        fault_clear,
    );
}

fn fault_add(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let spec: RuleSpec = args(a)?;
    match ctx.workbench.add_fault(&spec) {
        Ok(id) => Ok(json!({"id": id})),
        Err(WorkbenchError::Rule(e @ (RuleError::NoSuchVsic(_) | RuleError::NoSuchDrive(_)))) => {
            Err(CommandError::not_found(e.to_string()))
        }
        Err(e) => Err(CommandError::invalid(e.to_string())),
    }
}

fn fault_list(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    Ok(Value::Array(ctx.workbench.faults.list()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearArgs {
    id: Option<u64>,
}

fn fault_clear(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let a: ClearArgs = args(a)?;
    let n = ctx.workbench.clear_faults(a.id);
    if let (Some(id), 0) = (a.id, n) {
        return Err(CommandError::not_found(format!("no fault rule {id}")));
    }
    Ok(json!({"cleared": n}))
}
