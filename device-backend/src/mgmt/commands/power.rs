//! Power: `power-cut`, `power-on` (no arguments) and `query-power`. The
//! model is the controller's (`controller::power`, `controller::wcache`).

use serde_json::{json, Value};

use crate::controller::{PowerError, SECTOR};
use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{no_args, Context, Registry};

pub fn register(r: &mut Registry) {
    r.add(
        "power-cut",
        "cut the controller's power: unflushed writes in the volatile cache are lost \
         (a random half kept with --power-cut-seed); I/O fails until power-on",
        power_cut,
    );
    r.add("power-on", "restore the power after power-cut", power_on);
    r.add(
        "query-power",
        "whether the power is on and the bytes of unflushed writes",
        query_power,
    );
}

fn refused(e: PowerError) -> CommandError {
    CommandError::generic(e.to_string())
}

fn power_cut(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    let cut = ctx.controller.power_cut().map_err(refused)?;
    Ok(json!({
        "dropped-sectors": cut.dropped,
        "kept-sectors": cut.kept,
        "dropped-bytes": cut.dropped * SECTOR,
    }))
}

fn power_on(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    ctx.controller.power_on().map_err(refused)?;
    Ok(json!({}))
}

fn query_power(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    no_args(a)?;
    let c = &ctx.controller;
    Ok(json!({
        "on": !c.powered_off(),
        "volatile-cache": c.config().volatile_cache.map(|v| v.size),
        "unflushed-bytes": c.unflushed_bytes(),
    }))
}
