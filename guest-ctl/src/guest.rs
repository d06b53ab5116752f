//! The commands that only make sense inside the guest: handing functions
//! to drivers, the capability store, the control-plane service and its
//! client.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use vsic_abi::records::ROLE_STORE;
use vsic_abi::units::format_size;
use vsic_abi::virtio::Function;
use vsicctl::control::service::Service;
use vsicctl::control::{socket, ControlClient};

use crate::authority::GuestAuthority;
use crate::capfile::Reservation;
use crate::failure::Failure;
use crate::functions::{lookup_user, Functions, Named, KERNEL_DRIVER, VFIO_DRIVER};
use crate::pf;
use crate::report::Report;
use crate::store;
use crate::table::Table;

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
            lookup_user(u, Path::new("/etc/passwd")).map_err(|e| Failure::usage(&context, e))?,
        ),
        None => None,
    };
    let _lock = pf::lock(&context)?;
    let addr = pf::locate_vsic(&funcs, n)?;
    let pci = |e: String| Failure::local(&context, "pci", e);
    let current = funcs.driver(&addr);
    take_from_user(&funcs, &addr, current.as_deref(), owner.map(|(uid, _)| uid), || {
        detach_every_slot(&funcs, n)
    })
    .map_err(pci)?;
    if current.as_deref() != Some(target) {
        funcs.bind(&addr, target).map_err(pci)?;
    }
    if let Err(e) = funcs.record(Function::Vsic(n), &addr) {
        log::warn!("cannot update {}: {e}", funcs.map_path().display());
    }
    match owner {
        Some((uid, gid)) => {
            let node = funcs.give_group(&addr, uid, gid).map_err(pci)?;
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
            let disk = funcs.wait_for_disk(&addr, Function::Vsic(n)).map_err(pci)?;
            let human = format!("VSIC {n} ({addr}) is on virtio_blk as /dev/{disk}\n");
            Ok(Report::new(
                human,
                json!({ "vsic": n, "address": addr, "driver": KERNEL_DRIVER, "disk": disk }),
            ))
        }
    }
}

/// Takes the function at `addr` from whoever may use it now, before it
/// goes to `next` (a uid for vfio-pci; `None` for the kernel or no
/// driver). Refuses while it is in use (a mounted disk, an open VFIO
/// group). On vfio-pci, the group node becomes root's first, so the owner
/// cannot reopen the group between the check and the handover; if the
/// function leaves a user (the node belonged to a uid other than root and
/// `next` is someone else), `detach_all` then empties every slot, while
/// nobody but root can open the function. Attachments root made (on the
/// kernel driver, no driver, or a group node of root's) stay.
pub(crate) fn take_from_user(
    funcs: &Functions,
    addr: &str,
    current: Option<&str>,
    next: Option<u32>,
    detach_all: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    match current {
        Some(VFIO_DRIVER) => {
            let before = funcs.revoke_group(addr)?;
            let in_use = funcs.group_in_use(addr);
            if !matches!(in_use, Ok(false)) {
                if let Some(owner) = before {
                    if let Err(e) = funcs.restore_group(addr, owner) {
                        log::warn!("giving the VFIO group of {addr} back: {e}");
                    }
                }
                in_use?;
                return Err("its VFIO group is open by a process; stop it first".into());
            }
            // No node: nobody could open it, but who had it is unknown.
            let leaves_user = before.is_none_or(|b| b.uid != 0 && Some(b.uid) != next);
            if leaves_user {
                detach_all()?;
            }
            Ok(())
        }
        _ => leave_current_driver(funcs, addr, current),
    }
}

/// Detaches every VSA attached to VSIC `n`, through the PF (the caller
/// holds the control-plane lock).
fn detach_every_slot(funcs: &Functions, n: u32) -> Result<(), String> {
    let pf = pf::open_in_guest(funcs).map_err(|f| format!("opening the PF: {}", f.message()))?;
    let vsics = pf
        .list_vsics()
        .map_err(|e| format!("listing VSIC {n}'s attachments: {e}"))?;
    let info = vsics
        .iter()
        .find(|v| v.vsic == n)
        .ok_or_else(|| format!("the PF does not know VSIC {n}"))?;
    for (slot, s) in info.slots.iter().enumerate() {
        if s.is_attached() {
            let slot = slot as u32;
            pf.detach(n, slot)
                .map_err(|e| format!("detaching VSA {} from slot {slot}: {e}", s.vsa_id))?;
            log::info!("VSIC {n} left its user: detached VSA {} from slot {slot}", s.vsa_id);
        }
    }
    Ok(())
}

/// Refuses to take a function from under its users: a mounted disk, an
/// open VFIO group.
fn leave_current_driver(
    funcs: &Functions,
    addr: &str,
    current: Option<&str>,
) -> Result<(), String> {
    match current {
        Some(VFIO_DRIVER) if funcs.group_in_use(addr)? => {
            Err("its VFIO group is open by a process; stop it first".into())
        }
        Some(_) => match funcs.disk(addr) {
            Some((disk, _)) => funcs.disk_in_use(&disk).map_or(Ok(()), Err),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

pub fn unbind(n: u32) -> Result<Report, Failure> {
    let funcs = Functions::system();
    let context = format!("taking VSIC {n} from its driver");
    let _lock = pf::lock(&context)?;
    let addr = pf::locate_vsic(&funcs, n)?;
    let pci = |e: String| Failure::local(&context, "pci", e);
    let current = funcs.driver(&addr);
    take_from_user(&funcs, &addr, current.as_deref(), None, || {
        detach_every_slot(&funcs, n)
    })
    .map_err(pci)?;
    funcs.unbind(&addr).map_err(pci)?;
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

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mounts").unwrap_or_default()
}

pub fn store_init(n: u32, size: u64, mountpoint: &Path) -> Result<Report, Failure> {
    let context = format!("creating the capability store on VSIC {n}");
    let err = |e: String| Failure::local(&context, "store", e);
    if store::is_mount_point(&mounts(), mountpoint) {
        return Err(err(format!(
            "something is already mounted on {}",
            mountpoint.display()
        )));
    }
    let pf = pf::open(&pf::Route::Guest)?;
    let vsas = pf
        .client
        .list_vsas()
        .map_err(|e| Failure::admin(&context, e))?;
    if let Some(v) = vsas.iter().find(|v| v.role == ROLE_STORE) {
        return Err(err(format!(
            "a store already exists: VSA {} has the store role; mount it with `vsicctl store mount`",
            v.vsa_id
        )));
    }
    let funcs = Functions::system();
    let addr = pf::locate_vsic(&funcs, n)?;
    let vsics = pf
        .client
        .list_vsics()
        .map_err(|e| Failure::admin(&context, e))?;
    let info = vsics.iter().find(|v| v.vsic == n).ok_or_else(|| {
        Failure::admin(
            &context,
            vsic::admin::AdminError::Device(vsic_abi::AdminStatus::NoSuchVsic),
        )
    })?;
    if info.slots.first().is_some_and(|s| s.is_attached()) {
        return Err(err(format!(
            "slot 0 of VSIC {n} already has a VSA attached"
        )));
    }
    let created = pf
        .client
        .vsa_create(size, 1)
        .map_err(|e| Failure::admin(&context, e))?;
    let undo = |why: Failure| {
        let _ = pf.client.detach(n, 0);
        match pf.client.vsa_delete(&created.token) {
            Ok(()) => why,
            Err(e) => Failure::local(
                &context,
                "store",
                format!(
                    "{}; and VSA {} could not be deleted again: {e}",
                    why.message(),
                    created.vsa_id
                ),
            ),
        }
    };
    // The role is what `store mount` trusts: only the PF owner can set it.
    if let Err(e) = pf.client.vsa_set_role(created.vsa_id, ROLE_STORE) {
        return Err(undo(Failure::admin(&context, e)));
    }
    if let Err(e) = pf.client.attach(n, 0, &created.token, false) {
        return Err(undo(Failure::admin(&context, e)));
    }
    let disk = (|| {
        let current = funcs.driver(&addr);
        if current.as_deref() != Some(KERNEL_DRIVER) {
            leave_current_driver(&funcs, &addr, current.as_deref())?;
            funcs.bind(&addr, KERNEL_DRIVER)?;
        }
        let disk = funcs.wait_for_disk(&addr, Function::Vsic(n))?;
        let device = Path::new("/dev").join(&disk);
        // The kernel learns the new capacity from the config-change interrupt.
        let sectors = Path::new("/sys/block").join(&disk).join("size");
        crate::functions::wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&sectors)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                == Some(created.size / 512)
        })
        .map_err(|_| {
            format!(
                "/dev/{disk} did not grow to the store's {} bytes",
                created.size
            )
        })?;
        store::mkfs(&device)?;
        store::mount(&device, mountpoint)?;
        Ok(disk)
    })()
    .map_err(|e: String| undo(err(e)))?;
    if let Err(e) = funcs.record(Function::Vsic(n), &addr) {
        log::warn!("cannot update {}: {e}", funcs.map_path().display());
    }
    let cap = mountpoint.join(store::STORE_CAP);
    let stored = Reservation::claim(&cap, false).and_then(|r| r.store(&created.token));
    if let Err(e) = stored {
        return Err(err(format!(
            "the store is mounted, but its capability could not be written to {}: {e}",
            cap.display()
        )));
    }
    let human = format!(
        "capability store: VSA {} ({}) on VSIC {n} slot 0 = /dev/{disk}, ext4 '{}', mounted on {}; its root capability is {}\n",
        created.vsa_id,
        format_size(created.size),
        store::STORE_LABEL,
        mountpoint.display(),
        cap.display()
    );
    Ok(Report::new(
        human,
        json!({
            "vsa": created.vsa_id, "size": created.size, "vsic": n, "disk": disk,
            "mountpoint": mountpoint, "cap": cap,
        }),
    ))
}

pub fn store_mount(mountpoint: &Path) -> Result<Report, Failure> {
    let context = "mounting the capability store";
    let err = |e: String| Failure::local(context, "store", e);
    // Where the controller says the store is: the VSA with the store role
    // (only the PF owner sets it), at slot 0 of one VSIC. A disk's label
    // proves nothing: a tenant can write any label into a VSA of their own.
    let pf = pf::open(&pf::Route::Guest)?;
    let vsas = pf
        .client
        .list_vsas()
        .map_err(|e| Failure::admin(context, e))?;
    let vsics = pf
        .client
        .list_vsics()
        .map_err(|e| Failure::admin(context, e))?;
    let (vsa, n) = store::locate(&vsas, &vsics).map_err(|e| err(e.to_string()))?;
    let funcs = Functions::system();
    let addr = pf::locate_vsic(&funcs, n)?;
    let disk = match (funcs.driver(&addr).as_deref(), funcs.disk(&addr)) {
        (Some(KERNEL_DRIVER), Some((disk, _))) => disk,
        _ => {
            return Err(err(format!(
                "the store (VSA {vsa}) is at slot 0 of VSIC {n} ({addr}), which has no kernel disk; \
                 hand it to the kernel with `vsicctl vsic bind --vsic {n} --kernel`"
            )))
        }
    };
    if store::device_label(&Path::new("/dev").join(&disk)).as_deref() != Some(store::STORE_LABEL) {
        return Err(err(format!(
            "the store (VSA {vsa}) is /dev/{disk} (VSIC {n}), but it holds no ext4 file system labelled {}",
            store::STORE_LABEL
        )));
    }
    let device = Path::new("/dev").join(&disk);
    let table = mounts();
    let human = match store::mounted_at(&table, &device) {
        Some(at) if at == mountpoint => format!(
            "the capability store /dev/{disk} is already mounted on {}\n",
            at.display()
        ),
        Some(at) => {
            return Err(err(format!(
                "/dev/{disk} is mounted on {} already",
                at.display()
            )))
        }
        None => {
            if store::is_mount_point(&table, mountpoint) {
                return Err(err(format!(
                    "something else is mounted on {}",
                    mountpoint.display()
                )));
            }
            store::mount(&device, mountpoint).map_err(err)?;
            format!(
                "mounted the capability store /dev/{disk} on {}\n",
                mountpoint.display()
            )
        }
    };
    Ok(Report::new(
        human,
        json!({ "disk": disk, "mountpoint": mountpoint, "vsa": vsa, "vsic": n }),
    ))
}

pub fn serve(socket_path: &Path, max_dma: u64) -> Result<Report, Failure> {
    let context = format!("serving on {}", socket_path.display());
    let err = |e: String| Failure::local(&context, "serve", e);
    if let Some(dir) = socket_path.parent() {
        crate::functions::ensure_public_dir(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    }
    // A socket left by a previous run is replaced; anything else is not.
    if let Ok(meta) = std::fs::symlink_metadata(socket_path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err("the path exists and is not a socket".into()));
        }
        if socket::connect(socket_path).is_ok() {
            return Err(err("another service is listening there".into()));
        }
        std::fs::remove_file(socket_path)
            .map_err(|e| err(format!("removing the old socket: {e}")))?;
    }
    let listener = socket::listen(socket_path, 64).map_err(|e| err(e.to_string()))?;
    // Everyone may connect; every request is checked against its sender.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(format!("chmod: {e}")))?;
    eprintln!(
        "vsicctl: control-plane service listening on {}",
        socket_path.display()
    );
    let service = Arc::new(Service::new(
        GuestAuthority::new(Functions::system()),
        max_dma,
    ));
    service.run(listener).map_err(|e| err(e.to_string()))?;
    Ok(Report::new("", json!({})))
}

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
