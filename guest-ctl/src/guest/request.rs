//! The service's client commands: `vsicctl request attach|detach`, run by
//! an unprivileged user with a capability file of their own.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use serde_json::json;
use vsicctl::control::ControlClient;

use crate::failure::Failure;
use crate::report::Report;

pub fn request_attach(
    socket_path: &Path,
    n: u32,
    cap: &Path,
    slot: u32,
    read_only: bool,
) -> Result<Report, Failure> {
    let context = format!("asking for {} on VSIC {n} slot {slot}", cap.display());
    // Opened here, with this user's rights: that is the proof of access.
    let file = File::open(cap)
        .map_err(|e| Failure::file(format!("opening capability file {}", cap.display()), e))?;
    let client = ControlClient::connect(socket_path).map_err(|e| Failure::control(&context, e))?;
    client
        .attach(n, slot, &file.as_fd(), read_only)
        .map_err(|e| Failure::control(&context, e))?;
    let mode = if read_only { "read-only" } else { "read-write" };
    Ok(Report::new(
        format!(
            "attached {} to VSIC {n} slot {slot} ({mode})\n",
            cap.display()
        ),
        json!({ "vsic": n, "slot": slot, "read_only": read_only, "window_offset": vsic_abi::window::slot_base(slot) }),
    ))
}

pub fn request_detach(socket_path: &Path, n: u32, slot: u32) -> Result<Report, Failure> {
    let context = format!("asking to detach VSIC {n} slot {slot}");
    let client = ControlClient::connect(socket_path).map_err(|e| Failure::control(&context, e))?;
    client
        .detach(n, slot)
        .map_err(|e| Failure::control(&context, e))?;
    Ok(Report::new(
        format!("detached VSIC {n} slot {slot}\n"),
        json!({ "vsic": n, "slot": slot }),
    ))
}
