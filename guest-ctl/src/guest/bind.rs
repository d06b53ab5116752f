//! Handing VSICs to drivers: `vsic list`, `vsic bind --kernel`,
//! `vsic bind --vfio --user U`, `vsic unbind`. What happens to the
//! function's slots and group node when it changes hands is
//! [`super::handover`]'s job.

use std::path::Path;

use serde_json::json;
use vsic_abi::virtio::Function;

use super::handover::{dma_mode_for, open_pf_and_detach_every_slot, program_dma, take_from_user};
use crate::failure::Failure;
use crate::functions::{lookup_user, Functions, Named, KERNEL_DRIVER, VFIO_DRIVER};
use crate::pf;
use crate::report::Report;
use crate::table::Table;
use vsic_abi::admin::DmaMode;

pub fn functions() -> Result<Report, Failure> {
    let funcs = Functions::system();
    let states = funcs.scan();
    let mut table = Table::new(&["function", "address", "driver", "disk", "group", "owner"]);
    let mut rows = Vec::new();
    for s in &states {
        let name = match s.function {
            Some((Function::Pf, _)) => "pf".to_string(),
            Some((Function::Vsic(n), _)) => format!("vsic {n}"),
            None => "?".to_string(),
        };
        let dash = || "-".to_string();
        table.row(vec![
            name.clone(),
            s.address.clone(),
            s.driver.clone().unwrap_or_else(|| "none".into()),
            s.disk
                .as_ref()
                .map(|d| format!("/dev/{d}"))
                .unwrap_or_else(dash),
            s.iommu_group.map(|g| g.to_string()).unwrap_or_else(dash),
            s.vfio_owner
                .map(|u| format!("uid {u}"))
                .unwrap_or_else(dash),
        ]);
        rows.push(json!({
            "function": name,
            "named_by": match s.function { Some((_, Named::Serial)) => json!("serial"), Some((_, Named::Map)) => json!("map"), None => json!(null) },
            "address": s.address,
            "driver": s.driver,
            "disk": s.disk,
            "iommu_group": s.iommu_group,
            "vfio_owner": s.vfio_owner,
        }));
    }
    if states.is_empty() {
        return Err(Failure::local(
            "listing the controller's functions",
            "no-pf",
            "no virtio-blk PCI functions in this machine (is this the guest?)",
        ));
    }
    Ok(Report::new(table.render(), json!({ "functions": rows })))
}

/// `vsic bind --kernel` / `vsic bind --vfio --user U`.
pub fn bind(n: u32, user: Option<&str>) -> Result<Report, Failure> {
    let funcs = Functions::system();
    let target = if user.is_some() {
        VFIO_DRIVER
    } else {
        KERNEL_DRIVER
    };
    let context = format!("handing VSIC {n} to {target}");
    let owner = match user {
        Some(u) => Some(
            lookup_user(u, Path::new("/etc/passwd"))
                .map_err(|e| Failure::usage(&context, e.to_string()))?,
        ),
        None => None,
    };
    let _lock = pf::lock(&context)?;
    let addr = pf::locate_vsic(&funcs, n)?;
    let current = funcs.driver(&addr);
    take_from_user(
        &funcs,
        &addr,
        current.as_deref(),
        owner.map(|(uid, _)| uid),
        || open_pf_and_detach_every_slot(&funcs, n),
    )
    .map_err(|e| Failure::local_error(&context, "pci", e))?;
    // Before any driver or user can reach the function: fail closed.
    program_dma(&funcs, n, dma_mode_for(owner.map(|(uid, _)| uid)))
        .map_err(|e| Failure::local_error(&context, "pci", e))?;
    if current.as_deref() != Some(target) {
        funcs
            .bind(&addr, target)
            .map_err(|e| Failure::local_error(&context, "pci", e))?;
    }
    if let Err(e) = funcs.record(Function::Vsic(n), &addr) {
        log::warn!("cannot update {}: {e}", funcs.map_path().display());
    }
    match owner {
        Some((uid, gid)) => {
            let node = funcs
                .give_group(&addr, uid, gid)
                .map_err(|e| Failure::local_error(&context, "pci", e))?;
            let human = format!(
                "VSIC {n} ({addr}) is on vfio-pci; {} belongs to uid {uid} (mode 0600)\n",
                node.display()
            );
            Ok(Report::new(
                human,
                json!({ "vsic": n, "address": addr, "driver": VFIO_DRIVER, "group": node, "uid": uid }),
            ))
        }
        None => {
            let disk = funcs
                .wait_for_disk(&addr, Function::Vsic(n))
                .map_err(|e| Failure::local_error(&context, "pci", e))?;
            let human = format!("VSIC {n} ({addr}) is on virtio_blk as /dev/{disk}\n");
            Ok(Report::new(
                human,
                json!({ "vsic": n, "address": addr, "driver": KERNEL_DRIVER, "disk": disk }),
            ))
        }
    }
}

pub fn unbind(n: u32) -> Result<Report, Failure> {
    let funcs = Functions::system();
    let context = format!("taking VSIC {n} from its driver");
    let _lock = pf::lock(&context)?;
    let addr = pf::locate_vsic(&funcs, n)?;
    let current = funcs.driver(&addr);
    take_from_user(&funcs, &addr, current.as_deref(), None, || {
        open_pf_and_detach_every_slot(&funcs, n)
    })
    .map_err(|e| Failure::local_error(&context, "pci", e))?;
    program_dma(&funcs, n, DmaMode::Enforced)
        .map_err(|e| Failure::local_error(&context, "pci", e))?;
    funcs
        .unbind(&addr)
        .map_err(|e| Failure::local_error(&context, "pci", e))?;
    // Still VSIC n: keep it in the map, an unbound function cannot name itself.
    if let Err(e) = funcs.record(Function::Vsic(n), &addr) {
        log::warn!("cannot update {}: {e}", funcs.map_path().display());
    }
    let was = current.unwrap_or_else(|| "no driver".into());
    Ok(Report::new(
        format!("VSIC {n} ({addr}) taken from {was}; it has no driver now\n"),
        json!({ "vsic": n, "address": addr, "previous_driver": was }),
    ))
}
