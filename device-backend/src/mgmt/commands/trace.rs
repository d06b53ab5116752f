//! `trace-start`, `trace-stop`: per-VSIC request traces of
//! `crate::workbench::trace`.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::mgmt::protocol::CommandError;
use crate::mgmt::registry::{args, Context, Registry};
use crate::workbench::trace::{Format, TraceError};
use crate::workbench::WorkbenchError;

pub fn register(r: &mut Registry) {
    r.add(
        "trace-start",
        "trace VSIC \"vsic\" to \"path\" in \"format\" blktrace (PATH.blktrace.N per queue) or jsonl",
        trace_start,
    );
    r.add(
        "trace-stop",
        "stop VSIC \"vsic\"'s trace; returns its files and event count",
        trace_stop,
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartArgs {
    vsic: u32,
    path: PathBuf,
    #[serde(default = "blktrace")]
    format: Format,
}

fn blktrace() -> Format {
    Format::Blktrace
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopArgs {
    vsic: u32,
}

fn failure(e: WorkbenchError) -> CommandError {
    match e {
        WorkbenchError::Trace(TraceError::NoSuchVsic(n)) => {
            CommandError::not_found(format!("no VSIC {n}"))
        }
        e => CommandError::generic(e.to_string()),
    }
}

fn files(paths: &[PathBuf]) -> Value {
    Value::Array(
        paths
            .iter()
            .map(|p| json!(p.display().to_string()))
            .collect(),
    )
}

fn trace_start(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let a: StartArgs = args(a)?;
    if a.path.as_os_str().is_empty() {
        return Err(CommandError::invalid("\"path\" is empty"));
    }
    let written = ctx
        .workbench
        .trace_start(a.vsic, &a.path, a.format)
        .map_err(failure)?;
    Ok(json!({"files": files(&written)}))
}

fn trace_stop(ctx: &Context, a: Value) -> Result<Value, CommandError> {
    let a: StopArgs = args(a)?;
    let (written, events) = ctx.workbench.trace_stop(a.vsic).map_err(failure)?;
    Ok(json!({"files": files(&written), "events": events}))
}
