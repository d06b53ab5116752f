//! A function changing hands: refusing while it is in use, taking its
//! VFIO group node from its user, and emptying its slots when it leaves
//! that user. Used by every command that moves a VSIC to another driver or
//! user (bind, unbind, store init).

use vsic::admin::{AdminClient, AdminError};
use vsic_abi::admin::DmaMode;

use crate::failure::Failure;
use crate::functions::{Functions, PciError, KERNEL_DRIVER, VFIO_DRIVER};
use crate::pf;

/// Why a function could not change hands.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("its VFIO group is open by a process; stop it first")]
    GroupOpen,
    /// Its kernel disk is mounted or held (the reason says which).
    #[error("{0}")]
    DiskInUse(String),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Detach(#[from] DetachError),
    #[error("programming VSIC {n}'s DMA protection: {source}")]
    Dma {
        n: u32,
        #[source]
        source: DmaProgramError,
    },
}

/// Why a VSIC's DMA mode could not be set or its windows cleared.
#[derive(Debug, thiserror::Error)]
pub enum DmaProgramError {
    #[error("opening the PF: {}", .0.message())]
    OpenPf(#[source] Box<Failure>),
    #[error("setting the mode: {0}")]
    Mode(#[source] AdminError),
    #[error("listing the windows: {0}")]
    List(#[source] AdminError),
    #[error("removing the window at {start:#x}: {source}")]
    Remove {
        start: u64,
        #[source]
        source: AdminError,
    },
}

/// The DMA mode a VSIC going to `next` gets: `open` for the kernel's
/// driver (and for root's own VFIO applications, which DMA from huge
/// pages they allocate themselves), `enforced` for any other user.
pub(crate) fn dma_mode_for(next: Option<u32>) -> DmaMode {
    match next {
        Some(uid) if uid != 0 => DmaMode::Enforced,
        _ => DmaMode::Open,
    }
}

/// Sets VSIC `n`'s DMA mode to `mode` and removes every window it has,
/// through a PF opened here (the caller holds the control-plane lock and
/// nobody but root can open the function). Called before the function is
/// handed over, so a failure leaves it with root.
pub(super) fn program_dma(funcs: &Functions, n: u32, mode: DmaMode) -> Result<(), HandoverError> {
    let pf = pf::open_in_guest(funcs).map_err(|f| HandoverError::Dma {
        n,
        source: DmaProgramError::OpenPf(Box::new(f)),
    })?;
    program_dma_with(&pf, n, mode)
}

/// [`program_dma`] through a PF the caller has open.
pub(super) fn program_dma_with(
    pf: &AdminClient,
    n: u32,
    mode: DmaMode,
) -> Result<(), HandoverError> {
    let dma = |source| HandoverError::Dma { n, source };
    // Enforced first, so no moment has the new owner's mode with old windows.
    pf.dma_set_mode(n, DmaMode::Enforced)
        .map_err(|e| dma(DmaProgramError::Mode(e)))?;
    let (_, windows) = pf
        .dma_windows(n)
        .map_err(|e| dma(DmaProgramError::List(e)))?;
    for w in windows {
        pf.dma_window_remove(n, w.start, w.len).map_err(|source| {
            dma(DmaProgramError::Remove {
                start: w.start,
                source,
            })
        })?;
    }
    if mode != DmaMode::Enforced {
        pf.dma_set_mode(n, mode)
            .map_err(|e| dma(DmaProgramError::Mode(e)))?;
    }
    log::info!("VSIC {n}: DMA mode {mode:?}, no windows");
    Ok(())
}

/// Why the slots of a VSIC leaving its user could not all be emptied.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("opening the PF: {}", .0.message())]
    OpenPf(#[source] Box<Failure>),
    #[error("listing VSIC {n}'s attachments: {source}")]
    List {
        n: u32,
        #[source]
        source: AdminError,
    },
    #[error("the PF does not know VSIC {0}")]
    UnknownVsic(u32),
    #[error("detaching VSA {vsa} from slot {slot}: {source}")]
    Detach {
        vsa: u64,
        slot: u32,
        #[source]
        source: AdminError,
    },
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
    detach_all: impl FnOnce() -> Result<(), DetachError>,
) -> Result<(), HandoverError> {
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
                return Err(HandoverError::GroupOpen);
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

/// Takes the function at `addr` for the capability store, before its
/// slot 0 is attached: the store is root's (on the kernel driver), so a
/// function leaving a user is emptied first through `detach_all`, as
/// [`take_from_user`] does. A function already on the kernel driver stays
/// as it is.
pub(crate) fn take_for_store(
    funcs: &Functions,
    addr: &str,
    detach_all: impl FnOnce() -> Result<(), DetachError>,
) -> Result<(), HandoverError> {
    let current = funcs.driver(addr);
    if current.as_deref() == Some(KERNEL_DRIVER) {
        return Ok(());
    }
    take_from_user(funcs, addr, current.as_deref(), None, detach_all)
}

/// Opens the PF and empties every slot of VSIC `n` (the caller holds the
/// control-plane lock and does not have the PF open).
pub(super) fn open_pf_and_detach_every_slot(funcs: &Functions, n: u32) -> Result<(), DetachError> {
    let pf = pf::open_in_guest(funcs).map_err(|f| DetachError::OpenPf(Box::new(f)))?;
    detach_every_slot(&pf, n)
}

/// Detaches every VSA attached to VSIC `n`, through the open PF.
pub(super) fn detach_every_slot(pf: &AdminClient, n: u32) -> Result<(), DetachError> {
    let vsics = pf
        .list_vsics()
        .map_err(|source| DetachError::List { n, source })?;
    let info = vsics
        .iter()
        .find(|v| v.vsic == n)
        .ok_or(DetachError::UnknownVsic(n))?;
    for (slot, s) in info.slots.iter().enumerate() {
        if s.is_attached() {
            let slot = slot as u32;
            pf.detach(n, slot).map_err(|source| DetachError::Detach {
                vsa: s.vsa_id,
                slot,
                source,
            })?;
            log::info!(
                "VSIC {n} left its user: detached VSA {} from slot {slot}",
                s.vsa_id
            );
        }
    }
    Ok(())
}

/// Refuses to take a function from under its users: a mounted disk, an
/// open VFIO group.
pub(super) fn leave_current_driver(
    funcs: &Functions,
    addr: &str,
    current: Option<&str>,
) -> Result<(), HandoverError> {
    match current {
        Some(VFIO_DRIVER) if funcs.group_in_use(addr)? => Err(HandoverError::GroupOpen),
        Some(_) => match funcs.disk(addr) {
            Some((disk, _)) => funcs
                .disk_in_use(&disk)
                .map_or(Ok(()), |why| Err(HandoverError::DiskInUse(why))),
            None => Ok(()),
        },
        None => Ok(()),
    }
}
