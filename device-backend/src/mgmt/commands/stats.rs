//! `query-stats`: every VSIC's counters (read through the admin layer's
//! Stats command, as the PF reports them) with the faults injected per
//! VSIC and per drive.

use std::sync::atomic::Ordering::Relaxed;

use serde::Deserialize;
use serde_json::{json, Value};
use vsic_abi::admin::{ALL_VSICS, MAX_PAYLOAD};
use vsic_abi::records::decode_stats;
use vsic_abi::{AdminCommand, AdminStatus, Opcode};

use crate::controller::target::AdminTarget;
use crate::mgmt::protocol::{CommandError, ErrorClass};
use crate::mgmt::registry::{args, Context, Registry};

pub fn register(r: &mut Registry) {
    r.add(
        "query-stats",
        "counters of every VSIC (or \"vsic\") and its queues, faults injected per VSIC and drive",
        query_stats,
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsArgs {
    vsic: Option<u32>,
}

fn query_stats(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let a: StatsArgs = args(a)?;
    let mut cmd = AdminCommand::new(Opcode::Stats);
    cmd.vsic = a.vsic.unwrap_or(ALL_VSICS);
    let reply = ctx.controller.admin(&cmd.encode(), &[], MAX_PAYLOAD);
    match AdminStatus::from_u16(reply.completion.status) {
        Some(AdminStatus::Ok) => {}
        Some(AdminStatus::NoSuchVsic) => {
            return Err(CommandError::not_found(format!(
                "no VSIC {}",
                a.vsic.unwrap_or_default()
            )))
        }
        other => {
            return Err(CommandError::generic(format!(
                "statistics refused: {}",
                other.map_or("unknown status", AdminStatus::name)
            )))
        }
    }
    let entries = decode_stats(&reply.payload)
        .map_err(|e| CommandError::new(ErrorClass::GenericError, format!("statistics: {e}")))?;
    let faults = &ctx.workbench.faults;
    let vsics: Vec<Value> = entries
        .iter()
        .map(|(v, qs)| {
            let mut j = v.to_json(qs);
            j["faults_injected"] = json!(faults
                .by_vsic
                .get(v.vsic as usize)
                .map_or(0, |c| c.load(Relaxed)));
            j
        })
        .collect();
    let drives: Vec<Value> = faults
        .by_drive
        .iter()
        .enumerate()
        .map(|(d, c)| json!({"drive": d, "faults_injected": c.load(Relaxed)}))
        .collect();
    Ok(json!({"vsics": vsics, "drives": drives}))
}
