//! The capability store: `store init` creates it on a VSIC (a VSA with
//! the store role at slot 0, ext4, mounted) and `store mount` finds it
//! again through the controller after a reboot.

use std::path::Path;

use serde_json::json;
use vsic_abi::records::ROLE_STORE;
use vsic_abi::units::format_size;
use vsic_abi::virtio::Function;

use super::handover::{detach_every_slot, program_dma_with, take_for_store};
use crate::capfile::Reservation;
use crate::failure::Failure;
use crate::functions::{Functions, PciError, KERNEL_DRIVER};
use crate::pf;
use crate::report::Report;
use crate::store;
use vsic_abi::admin::DmaMode;

/// Why the store's disk did not become a mounted file system.
#[derive(Debug, thiserror::Error)]
enum StoreDiskError {
    #[error("/dev/{disk} did not grow to the store's {size} bytes")]
    DidNotGrow { disk: String, size: u64 },
    #[error(transparent)]
    Fs(#[from] store::FsError),
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
    // A VSIC leaving a user keeps none of its attachments: root's VSICs
    // keep theirs, and the next user of this one would inherit them.
    take_for_store(&funcs, &addr, || detach_every_slot(&pf.client, n))
        .map_err(|e| Failure::local_error(&context, "store", e))?;
    // The store is the kernel driver's: open mode, no windows.
    program_dma_with(&pf.client, n, DmaMode::Open)
        .map_err(|e| Failure::local_error(&context, "store", e))?;
    // On the kernel driver before slot 0 is attached: the capacity change
    // reaches virtio_blk only while a driver runs the function (a VSIC
    // attached on vfio-pci or no driver came up as a 0-byte disk).
    let disk = (|| {
        if funcs.driver(&addr).as_deref() != Some(KERNEL_DRIVER) {
            funcs.bind(&addr, KERNEL_DRIVER)?;
        }
        funcs.wait_for_disk(&addr, Function::Vsic(n))
    })()
    .map_err(|e: PciError| Failure::local_error(&context, "store", e))?;
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
    (|| {
        let device = Path::new("/dev").join(&disk);
        // The kernel learns the new capacity from the config-change interrupt.
        let sectors = Path::new("/sys/block").join(&disk).join("size");
        crate::functions::wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&sectors)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                == Some(created.size / 512)
        })
        .map_err(|_| StoreDiskError::DidNotGrow {
            disk: disk.clone(),
            size: created.size,
        })?;
        store::mkfs(&device)?;
        store::mount(&device, mountpoint)?;
        Ok(())
    })()
    .map_err(|e: StoreDiskError| undo(Failure::local_error(&context, "store", e)))?;
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
    let (vsa, n) =
        store::locate(&vsas, &vsics).map_err(|e| Failure::local_error(context, "store", e))?;
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
            store::mount(&device, mountpoint)
                .map_err(|e| Failure::local_error(context, "store", e))?;
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
