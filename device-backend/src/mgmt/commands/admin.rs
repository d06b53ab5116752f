//! `admin`: any PF admin command, run by the controller's own admin layer
//! exactly as the PF runs it (same validation, same statuses), from the
//! host. Two spellings:
//!
//! - raw: `{"command": HEX64, "payload": HEX, "capacity": N}`, the 64-byte
//!   command as the PF would receive it (what `vsicctl --mgmt` sends);
//! - named: `{"opcode": "vsa-create", "vsic", "slot", "flags", "arg0",
//!   "arg1", "payload", "capacity"}`, built into a command here
//!   (payload_len set from the payload).
//!
//! The reply is the completion, refusals included: `{"status": NAME,
//! "code": N, "result0", "result1", "payload": HEX}`.

use serde::Deserialize;
use serde_json::{json, Value};
use vsic_abi::admin::MAX_PAYLOAD;
use vsic_abi::{hex, AdminCommand, AdminStatus, Opcode};

use crate::controller::target::AdminTarget;
use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{args, no_args, Context, Registry};

pub fn register(r: &mut Registry) {
    r.add(
        "admin",
        "run a PF admin command (raw \"command\" hex, or \"opcode\" and fields); replies with its completion",
        admin,
    );
    r.add(
        "query-admin-opcodes",
        "the admin opcode names \"admin\" accepts",
        query_opcodes,
    );
}

/// `VsaCreate` -> `vsa-create`.
pub fn opcode_name(op: Opcode) -> String {
    let mut out = String::new();
    for (i, c) in format!("{op:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn opcode_by_name(name: &str) -> Option<Opcode> {
    Opcode::ALL
        .iter()
        .copied()
        .find(|op| opcode_name(*op) == name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminArgs {
    command: Option<String>,
    opcode: Option<String>,
    vsic: Option<u32>,
    slot: Option<u32>,
    flags: Option<u32>,
    arg0: Option<u64>,
    arg1: Option<u64>,
    #[serde(default)]
    payload: String,
    capacity: Option<usize>,
}

fn decode_hex(what: &str, text: &str) -> Result<Vec<u8>, CommandError> {
    hex::decode(text).map_err(|e| CommandError::invalid(format!("{what}: {e}")))
}

fn admin(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let a: AdminArgs = args(a)?;
    let payload = decode_hex("payload", &a.payload)?;
    let capacity = a.capacity.unwrap_or(MAX_PAYLOAD);
    if capacity > MAX_PAYLOAD {
        return Err(CommandError::invalid(format!(
            "capacity above the largest payload ({MAX_PAYLOAD})"
        )));
    }
    let fields_set = a.vsic.is_some()
        || a.slot.is_some()
        || a.flags.is_some()
        || a.arg0.is_some()
        || a.arg1.is_some();
    let command = match (&a.command, &a.opcode) {
        (Some(raw), None) if !fields_set => decode_hex("command", raw)?,
        (None, Some(name)) => {
            let op = opcode_by_name(name).ok_or_else(|| {
                let known: Vec<String> = Opcode::ALL.iter().map(|o| opcode_name(*o)).collect();
                CommandError::invalid(format!(
                    "unknown opcode {name:?} (one of {})",
                    known.join(", ")
                ))
            })?;
            let mut cmd = AdminCommand::new(op);
            cmd.vsic = a.vsic.unwrap_or(0);
            cmd.slot = a.slot.unwrap_or(0);
            cmd.flags = a.flags.unwrap_or(0);
            cmd.args[0] = a.arg0.unwrap_or(0);
            cmd.args[1] = a.arg1.unwrap_or(0);
            cmd.payload_len = u32::try_from(payload.len())
                .map_err(|_| CommandError::invalid("payload too long"))?;
            cmd.encode().to_vec()
        }
        _ => {
            return Err(CommandError::invalid(
                "give either \"command\" (raw hex) alone or \"opcode\" with its fields",
            ))
        }
    };
    let reply = ctx.controller.admin(&command, &payload, capacity);
    for vsic in &reply.changed_vsics {
        ctx.config_changes.config_changed(*vsic);
    }
    let c = reply.completion;
    let n = reply.payload.len().min(capacity);
    let status = AdminStatus::from_u16(c.status).map_or("unknown", AdminStatus::name);
    Ok(json!({
        "status": status,
        "code": c.status,
        "result0": c.result0,
        "result1": c.result1,
        "payload": hex::encode(&reply.payload[..n]),
    }))
}

fn query_opcodes(_: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    Ok(Value::Array(
        Opcode::ALL
            .iter()
            .map(|op| json!({"name": opcode_name(*op), "code": *op as u16}))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_names_round_trip() {
        assert_eq!(opcode_name(Opcode::VsaCreate), "vsa-create");
        assert_eq!(opcode_name(Opcode::DmaWindowAdd), "dma-window-add");
        for op in Opcode::ALL {
            assert_eq!(opcode_by_name(&opcode_name(op)), Some(op));
        }
        assert_eq!(opcode_by_name("nope"), None);
    }
}
