//! Admin commands: decoding, validation in a fixed order (command, opcode,
//! reserved arguments, flags, payload size, response capacity, arguments),
//! execution and commit. A state-changing command builds the new pool
//! state on a copy, commits it, and only then makes it current: a refused
//! commit leaves the controller exactly as it was (status MetadataIo); a
//! commit that failed on some drive is settled as done or as certainly not
//! applied.
//!
//! Conventions the device follows:
//! - `payload_len` must equal the payload-out bytes received, and both must
//!   be what the opcode takes (64 for a token, else 0): BadPayloadSize.
//! - The reserved fields (arg2, arg3, and the u64 at offset 56, checked by
//!   the decoder) must be zero: InvalidArgument.
//! - FLAG_READ_ONLY is accepted by Attach and CapDerive only; any flag on
//!   another opcode is UnknownFlags. Other fields an opcode does not use
//!   (vsic, slot, arg0, arg1) are ignored.
//! - Sizes are rounded up to whole extents: 0 is ZeroSize, above the window
//!   size TooLarge. Extend must grow and shrink must shrink the rounded size
//!   (else InvalidArgument); a shrink to a non-zero size below one extent is
//!   BelowMinimum.
//! - A token that does not decode, names an unknown VSA or token, or whose
//!   secret or rights do not match is BadToken; only a genuine revoked token
//!   gets RevokedToken.
//! - VSICs start enabled with empty slots. Detach needs no token (the PF is
//!   the privileged control plane), and neither do VsaDeleteById,
//!   VsaResizeById and VsaSetRole: the PF owner manages every VSA by id, as
//!   an NVMe namespace-management owner does (a VSA whose capability is lost
//!   is never stuck). An unknown id is NoSuchVsa.
//! - A list reply that does not fit gets ResponseTooSmall with result0 =
//!   records and result1 = bytes needed.
//!
//! | opcode | result0 | result1 | payload in |
//! |---|---|---|---|
//! | VsaCreate | VSA id | size | root token |
//! | VsaDelete, VsaDeleteById | VSA id | - | - |
//! | VsaExtend, VsaShrink, VsaResizeById | VSA id | new size | - |
//! | VsaSetRole | VSA id | role | - |
//! | Attach | VSA id | VSA size | - |
//! | Detach | VSA id that was attached | - | - |
//! | CapDerive | VSA id | new token id | derived token |
//! | CapRevoke | tokens revoked | attachments removed | new root (root only) |
//! | ListVsas, ListVsics, Stats | records | - | records |
//! | ExtentMap | runs | VSA size | runs |
//! | DmaSetMode | previous mode | - | - |
//! | DmaWindowAdd, DmaWindowRemove | windows held | - | - |
//! | DmaWindowList | windows | mode | DmaWindow records |
//!
//! DMA windows live in the runtime only (never in the metadata): the mode
//! is committed like any VSIC setting, the windows change under the admin
//! mutex by swapping the VSIC's table (see `dma`).

use vsic_abi::admin::{
    ALL_VSICS, DMA_MODE_ENFORCED, DMA_MODE_OPEN, FLAGS_KNOWN, FLAG_DMA_READ, FLAG_DMA_WRITE,
    FLAG_READ_ONLY,
};
use vsic_abi::records::{
    encode_stats, DmaWindow, ExtentRun, Identify, SlotInfo, VsaInfo, VsicInfo, ROLE_NONE,
    ROLE_STORE,
};
use vsic_abi::window::{SLOTS_PER_VSIC, WINDOW_SHIFT, WINDOW_SIZE};
use vsic_abi::{AdminCommand, AdminCompletion, AdminStatus, CapToken, Opcode, Rights};

use super::alloc::{Allocator, NoSpace};
use super::caps;
use super::metadata::{to_runs, CommitError};
use super::runtime;
use super::state::{Attachment, PoolState, VsaRecord};
use super::target::{AdminReply, AdminTarget};
use super::{AdminPlane, Controller};

/// What a successful command returns.
#[derive(Default)]
struct Done {
    result0: u64,
    result1: u64,
    payload: Vec<u8>,
    changed_vsics: Vec<u32>,
}

type Outcome = Result<Done, Refusal>;

/// Arguments no opcode uses (arg2, arg3): reserved, must be zero.
const RESERVED_ARGS: std::ops::RangeFrom<usize> = 2..;

/// Flags each opcode accepts.
fn allowed_flags(op: Opcode) -> u32 {
    match op {
        Opcode::Attach | Opcode::CapDerive => FLAG_READ_ONLY & FLAGS_KNOWN,
        Opcode::DmaWindowAdd => (FLAG_DMA_READ | FLAG_DMA_WRITE) & FLAGS_KNOWN,
        _ => 0,
    }
}

/// Payload-out bytes each opcode needs.
fn payload_out_len(op: Opcode) -> usize {
    match op {
        Opcode::VsaDelete
        | Opcode::VsaExtend
        | Opcode::VsaShrink
        | Opcode::Attach
        | Opcode::CapDerive
        | Opcode::CapRevoke => CapToken::LEN,
        _ => 0,
    }
}

/// Payload-in bytes an opcode always returns (list replies are checked
/// once their length is known).
fn fixed_reply_len(op: Opcode) -> usize {
    match op {
        Opcode::Identify => Identify::LEN,
        Opcode::VsaCreate | Opcode::CapDerive => CapToken::LEN,
        _ => 0,
    }
}

/// The persisted record of a VSIC `vsic_index` accepted (the state always
/// holds at least as many records as the configuration has VSICs).
fn vsic_mut(state: &mut PoolState, n: usize) -> Result<&mut super::state::VsicRecord, AdminStatus> {
    state.vsics.get_mut(n).ok_or(AdminStatus::NoSuchVsic)
}

fn reply(outcome: Outcome) -> AdminReply {
    match outcome {
        Ok(d) => AdminReply {
            completion: AdminCompletion {
                status: AdminStatus::Ok as u16,
                payload_len: d.payload.len() as u32,
                result0: d.result0,
                result1: d.result1,
            },
            payload: d.payload,
            changed_vsics: d.changed_vsics,
        },
        Err(r) => AdminReply {
            completion: AdminCompletion {
                result0: r.result0,
                result1: r.result1,
                ..AdminCompletion::with_status(r.status)
            },
            payload: Vec::new(),
            changed_vsics: Vec::new(),
        },
    }
}

/// A failed command: its status, plus results where they help the driver
/// (ResponseTooSmall says how much room it needs).
struct Refusal {
    status: AdminStatus,
    result0: u64,
    result1: u64,
}

impl From<AdminStatus> for Refusal {
    fn from(status: AdminStatus) -> Self {
        Refusal {
            status,
            result0: 0,
            result1: 0,
        }
    }
}

/// A list reply must fit whole; otherwise the driver learns how many
/// records (result0) in how many bytes (result1) it has to make room for.
fn fits(payload: Vec<u8>, records: usize, capacity: usize) -> Outcome {
    if payload.len() > capacity {
        return Err(Refusal {
            status: AdminStatus::ResponseTooSmall,
            result0: records as u64,
            result1: payload.len() as u64,
        });
    }
    Ok(Done {
        result0: records as u64,
        payload,
        ..Default::default()
    })
}

impl AdminTarget for Controller {
    fn admin(&self, command: &[u8], payload_out: &[u8], capacity: usize) -> AdminReply {
        let cmd = match AdminCommand::decode(command) {
            Ok(c) => c,
            Err(e) => return reply(Err(AdminCommand::decode_status(&e).into())),
        };
        let Some(op) = cmd.opcode() else {
            return reply(Err(AdminStatus::UnknownOpcode.into()));
        };
        if cmd.args[RESERVED_ARGS].iter().any(|&a| a != 0) {
            return reply(Err(AdminStatus::InvalidArgument.into()));
        }
        if cmd.flags & !allowed_flags(op) != 0 {
            return reply(Err(AdminStatus::UnknownFlags.into()));
        }
        if payload_out.len() != cmd.payload_len as usize || payload_out.len() != payload_out_len(op)
        {
            return reply(Err(AdminStatus::BadPayloadSize.into()));
        }
        if capacity < fixed_reply_len(op) {
            return reply(Err(AdminStatus::ResponseTooSmall.into()));
        }
        let mut plane = self.plane();
        let outcome = match op {
            Opcode::Identify => Ok(self.identify(&plane)),
            Opcode::VsicEnable => self.set_enabled(&mut plane, &cmd, true),
            Opcode::VsicDisable => self.set_enabled(&mut plane, &cmd, false),
            Opcode::VsaCreate => self.vsa_create(&mut plane, &cmd),
            Opcode::VsaDelete => self.vsa_delete(&mut plane, payload_out),
            Opcode::VsaExtend => self.vsa_extend(&mut plane, &cmd, payload_out),
            Opcode::VsaShrink => self.vsa_shrink(&mut plane, &cmd, payload_out),
            Opcode::VsaDeleteById => self.vsa_delete_by_id(&mut plane, &cmd),
            Opcode::VsaResizeById => self.vsa_resize_by_id(&mut plane, &cmd),
            Opcode::VsaSetRole => self.vsa_set_role(&mut plane, &cmd),
            Opcode::Attach => self.attach(&mut plane, &cmd, payload_out),
            Opcode::Detach => self.detach(&mut plane, &cmd),
            Opcode::SetQos => self.set_qos(&mut plane, &cmd),
            Opcode::CapDerive => self.cap_derive(&mut plane, &cmd, payload_out),
            Opcode::CapRevoke => self.cap_revoke(&mut plane, payload_out, capacity),
            Opcode::ListVsas => self.list_vsas(&plane, capacity),
            Opcode::ListVsics => self.list_vsics(&plane, capacity),
            Opcode::Stats => self.stats(&cmd, capacity),
            Opcode::ExtentMap => self.extent_map(&plane, &cmd, capacity),
            Opcode::DmaSetMode => self.dma_set_mode(&mut plane, &cmd),
            Opcode::DmaWindowAdd => self.dma_window_add(&cmd),
            Opcode::DmaWindowRemove => self.dma_window_remove(&cmd),
            Opcode::DmaWindowList => self.dma_window_list(&plane, &cmd, capacity),
        };
        reply(outcome)
    }
}

impl Controller {
    // ------------------------------------------------------------ commit

    /// Commits `next` and makes it current; returns the VSICs whose slot-0
    /// capacity changed. On failure nothing changes (status MetadataIo, or
    /// NoSpace when the metadata would not fit in its slot). A write that
    /// failed on some drive is settled one way or the other by
    /// [`MetaStore::commit_settled`](super::metadata::MetaStore::commit_settled),
    /// so the reply always matches what the next start loads.
    pub(super) fn commit(
        &self,
        plane: &mut AdminPlane,
        next: PoolState,
    ) -> Result<Vec<u32>, AdminStatus> {
        if next == plane.state {
            return Ok(Vec::new());
        }
        match plane.store.commit_settled(&plane.state, &next) {
            Ok(()) => {}
            Err(CommitError::TooLarge) => return Err(AdminStatus::NoSpace),
            Err(CommitError::Io(_)) => return Err(AdminStatus::MetadataIo),
        }
        let old = std::mem::replace(&mut plane.state, next);
        let changed = runtime::reconcile(&self.vsics, &mut plane.handles, Some(&old), &plane.state);
        self.zero_pending(plane);
        Ok(changed)
    }

    /// Zeroes the extents on the pending list, then commits them as free.
    /// Runs after the VSA maps stopped pointing at them (and in-flight I/O
    /// drained); a crash in between just repeats the zeroing at next open.
    pub(super) fn zero_pending(&self, plane: &mut AdminPlane) {
        if plane.state.pending_zero.is_empty() {
            return;
        }
        let es = plane.state.extent_size;
        let mut touched = Vec::new();
        for (first, count) in to_runs(&plane.state.pending_zero) {
            let Some(drive) = self.drives.get(first.drive as usize) else {
                continue;
            };
            let zeroed = first
                .index
                .checked_mul(es)
                .zip((count as u64).checked_mul(es))
                .ok_or_else(|| std::io::Error::other("extent offset overflow"))
                .and_then(|(offset, len)| self.zero_drive_range(first.drive, offset, len));
            if let Err(e) = zeroed {
                log::error!(
                    "cannot zero freed extents on {}: {e}; they stay reserved",
                    drive.path().display()
                );
                return;
            }
            if !touched.contains(&first.drive) {
                touched.push(first.drive);
            }
        }
        for d in touched {
            if let Some(Err(e)) = self.drives.get(d as usize).map(|d| d.sync()) {
                log::error!("cannot sync zeroed extents: {e}; they stay reserved");
                return;
            }
        }
        let mut next = plane.state.clone();
        next.pending_zero.clear();
        match plane.store.commit(&next) {
            Ok(_) => plane.state = next,
            Err(e) => {
                log::error!("cannot commit zeroed extents as free: {e:?}; they stay reserved")
            }
        }
    }

    // -------------------------------------------------------- argument checks

    fn vsic_index(&self, vsic: u32) -> Result<usize, AdminStatus> {
        if vsic < self.config.vsics {
            Ok(vsic as usize)
        } else {
            Err(AdminStatus::NoSuchVsic)
        }
    }

    fn slot_index(slot: u32) -> Result<usize, AdminStatus> {
        if slot < SLOTS_PER_VSIC {
            Ok(slot as usize)
        } else {
            Err(AdminStatus::NoSuchSlot)
        }
    }

    /// Size in bytes rounded up to whole extents (ZeroSize, TooLarge).
    fn rounded_size(&self, size: u64) -> Result<u64, AdminStatus> {
        if size == 0 {
            return Err(AdminStatus::ZeroSize);
        }
        if size > WINDOW_SIZE {
            return Err(AdminStatus::TooLarge);
        }
        let es = self.config.extent_size;
        Ok(size.div_ceil(es) * es)
    }

    /// Verifies `token` and that it grants `needed`.
    fn authorize(
        state: &PoolState,
        token: &[u8],
        needed: Rights,
    ) -> Result<(u64, super::state::TokenRecord), AdminStatus> {
        let (vsa_id, rec) = caps::verify(state, token)?;
        if !rec.rights.contains(needed) {
            return Err(AdminStatus::PermissionDenied);
        }
        Ok((vsa_id, rec))
    }

    // ----------------------------------------------------------- commands

    fn identify(&self, plane: &AdminPlane) -> Done {
        let s = &plane.state;
        let id = Identify {
            abi_version: vsic_abi::admin::COMMAND_VERSION as u32,
            vsics: self.config.vsics,
            queues_per_vsic: self.config.queues_per_vsic as u32,
            slots_per_vsic: SLOTS_PER_VSIC,
            extent_size: s.extent_size,
            window_shift: WINDOW_SHIFT,
            drives: s.drives.len() as u32,
            total_extents: s.total_extents(),
            free_extents: Allocator::build(s).free_total(),
            vsa_count: s.vsas.len() as u32,
            cache_mode: self.config.cache_mode as u32,
            metadata_generation: plane.store.generation(),
        };
        Done {
            payload: id.encode().to_vec(),
            ..Default::default()
        }
    }

    fn set_enabled(&self, plane: &mut AdminPlane, cmd: &AdminCommand, enabled: bool) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let mut next = plane.state.clone();
        vsic_mut(&mut next, n)?.enabled = enabled;
        self.commit(plane, next)?;
        Ok(Done::default())
    }

    fn vsa_create(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let size = self.rounded_size(cmd.args[0])?;
        let width = match cmd.args[1] {
            0 => 1,
            w if w <= plane.state.drives.len() as u64 => w as usize,
            _ => return Err(AdminStatus::InvalidArgument.into()),
        };
        let mut next = plane.state.clone();
        let mut alloc = Allocator::build(&next);
        let stripe = alloc
            .choose_stripe(width)
            .ok_or(AdminStatus::InvalidArgument)?;
        let count = (size / next.extent_size) as usize;
        let extents = alloc
            .allocate(&stripe, 0, count)
            .map_err(|NoSpace| AdminStatus::NoSpace)?;
        let id = next.next_vsa_id;
        next.next_vsa_id = id.checked_add(1).ok_or(AdminStatus::NoSpace)?;
        let mut vsa = VsaRecord {
            id,
            size,
            stripe,
            extents,
            tokens: Vec::new(),
            next_token_id: 1,
        };
        let root = caps::mint(&mut vsa, 0, Rights::ALL)?;
        next.vsas.insert(id, vsa);
        self.commit(plane, next)?;
        Ok(Done {
            result0: id,
            result1: size,
            payload: root.encode().to_vec(),
            ..Default::default()
        })
    }

    fn vsa_delete(&self, plane: &mut AdminPlane, token: &[u8]) -> Outcome {
        let (vsa_id, _) = Self::authorize(&plane.state, token, Rights::ADMIN)?;
        self.delete_vsa(plane, vsa_id)
    }

    fn vsa_delete_by_id(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        self.delete_vsa(plane, cmd.args[0])
    }

    /// Deletes VSA `vsa_id` (NoSuchVsa if there is none): detaches it
    /// everywhere, drops its role, and queues its extents for zeroing.
    fn delete_vsa(&self, plane: &mut AdminPlane, vsa_id: u64) -> Outcome {
        let mut next = plane.state.clone();
        let vsa = next.vsas.remove(&vsa_id).ok_or(AdminStatus::NoSuchVsa)?;
        next.pending_zero.extend(vsa.extents);
        if next.store_vsa == vsa_id {
            next.store_vsa = 0;
        }
        for vsic in &mut next.vsics {
            for slot in vsic.slots.iter_mut() {
                if matches!(slot, Some(a) if a.vsa_id == vsa_id) {
                    *slot = None;
                }
            }
        }
        let changed_vsics = self.commit(plane, next)?;
        Ok(Done {
            result0: vsa_id,
            changed_vsics,
            ..Default::default()
        })
    }

    fn vsa_extend(&self, plane: &mut AdminPlane, cmd: &AdminCommand, token: &[u8]) -> Outcome {
        let size = self.rounded_size(cmd.args[0])?;
        let (vsa_id, _) = Self::authorize(&plane.state, token, Rights::ADMIN)?;
        let current = plane
            .state
            .vsas
            .get(&vsa_id)
            .ok_or(AdminStatus::BadToken)?
            .size;
        if size <= current {
            return Err(AdminStatus::InvalidArgument.into());
        }
        self.resize_vsa(plane, vsa_id, size)
    }

    fn vsa_shrink(&self, plane: &mut AdminPlane, cmd: &AdminCommand, token: &[u8]) -> Outcome {
        let size = self.shrink_size(cmd.args[0])?;
        let (vsa_id, _) = Self::authorize(&plane.state, token, Rights::ADMIN)?;
        let current = plane
            .state
            .vsas
            .get(&vsa_id)
            .ok_or(AdminStatus::BadToken)?
            .size;
        if size >= current {
            return Err(AdminStatus::InvalidArgument.into());
        }
        self.resize_vsa(plane, vsa_id, size)
    }

    fn vsa_resize_by_id(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let vsa_id = cmd.args[0];
        let size = self.shrink_size(cmd.args[1])?;
        if !plane.state.vsas.contains_key(&vsa_id) {
            return Err(AdminStatus::NoSuchVsa.into());
        }
        self.resize_vsa(plane, vsa_id, size)
    }

    /// A requested size rounded up to whole extents, refusing a non-zero
    /// size below one extent (BelowMinimum) as well as ZeroSize and TooLarge.
    fn shrink_size(&self, requested: u64) -> Result<u64, AdminStatus> {
        if requested != 0 && requested < self.config.extent_size {
            return Err(AdminStatus::BelowMinimum);
        }
        self.rounded_size(requested)
    }

    /// Grows or shrinks VSA `vsa_id` to `size` (whole extents, checked by
    /// the caller); the same size changes nothing. Shrunk extents are
    /// queued for zeroing.
    fn resize_vsa(&self, plane: &mut AdminPlane, vsa_id: u64, size: u64) -> Outcome {
        let mut next = plane.state.clone();
        let mut alloc = Allocator::build(&next);
        let vsa = next.vsas.get_mut(&vsa_id).ok_or(AdminStatus::NoSuchVsa)?;
        let have = vsa.extents.len();
        let want = (size / self.config.extent_size) as usize;
        let freed = if want > have {
            let more = alloc
                .allocate(&vsa.stripe, have, want - have)
                .map_err(|NoSpace| AdminStatus::NoSpace)?;
            vsa.extents.extend(more);
            Vec::new()
        } else {
            vsa.extents.split_off(want)
        };
        vsa.size = size;
        next.pending_zero.extend(freed);
        let changed_vsics = self.commit(plane, next)?;
        Ok(Done {
            result0: vsa_id,
            result1: size,
            changed_vsics,
            ..Default::default()
        })
    }

    /// Gives VSA arg0 the role arg1 (ROLE_NONE or ROLE_STORE). The store
    /// role belongs to at most one VSA: RoleInUse while another has it.
    fn vsa_set_role(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let vsa_id = cmd.args[0];
        let role = u32::try_from(cmd.args[1]).map_err(|_| AdminStatus::InvalidArgument)?;
        if !plane.state.vsas.contains_key(&vsa_id) {
            return Err(AdminStatus::NoSuchVsa.into());
        }
        let mut next = plane.state.clone();
        match role {
            ROLE_STORE if next.store_vsa != 0 && next.store_vsa != vsa_id => {
                return Err(AdminStatus::RoleInUse.into())
            }
            ROLE_STORE => next.store_vsa = vsa_id,
            ROLE_NONE if next.store_vsa == vsa_id => next.store_vsa = 0,
            ROLE_NONE => {}
            _ => return Err(AdminStatus::InvalidArgument.into()),
        }
        self.commit(plane, next)?;
        Ok(Done {
            result0: vsa_id,
            result1: role as u64,
            ..Default::default()
        })
    }

    fn attach(&self, plane: &mut AdminPlane, cmd: &AdminCommand, token: &[u8]) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let slot = Self::slot_index(cmd.slot)?;
        let read_only = cmd.flags & FLAG_READ_ONLY != 0;
        let needed = if read_only {
            Rights::READ
        } else {
            Rights::READ.union(Rights::WRITE)
        };
        let (vsa_id, rec) = Self::authorize(&plane.state, token, needed)?;
        let mut next = plane.state.clone();
        let target = &mut vsic_mut(&mut next, n)?.slots[slot];
        if target.is_some() {
            return Err(AdminStatus::SlotBusy.into());
        }
        *target = Some(Attachment {
            vsa_id,
            token_id: rec.id,
            read_only,
        });
        let size = next.vsas.get(&vsa_id).map_or(0, |v| v.size);
        let changed_vsics = self.commit(plane, next)?;
        Ok(Done {
            result0: vsa_id,
            result1: size,
            changed_vsics,
            ..Default::default()
        })
    }

    fn detach(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let slot = Self::slot_index(cmd.slot)?;
        let mut next = plane.state.clone();
        let gone = vsic_mut(&mut next, n)?.slots[slot]
            .take()
            .ok_or(AdminStatus::SlotEmpty)?;
        let changed_vsics = self.commit(plane, next)?;
        Ok(Done {
            result0: gone.vsa_id,
            changed_vsics,
            ..Default::default()
        })
    }

    fn set_qos(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let mut next = plane.state.clone();
        let rec = vsic_mut(&mut next, n)?;
        rec.qos_bytes_per_sec = cmd.args[0];
        rec.qos_iops = cmd.args[1];
        self.commit(plane, next)?;
        Ok(Done::default())
    }

    fn cap_derive(&self, plane: &mut AdminPlane, cmd: &AdminCommand, token: &[u8]) -> Outcome {
        let (vsa_id, parent) = caps::verify(&plane.state, token)?;
        let mut rights = parent.rights.minus(Rights::ADMIN);
        if cmd.flags & FLAG_READ_ONLY != 0 {
            rights = rights.minus(Rights::WRITE);
        }
        let mut next = plane.state.clone();
        let vsa = next.vsas.get_mut(&vsa_id).ok_or(AdminStatus::BadToken)?;
        let derived = caps::mint(vsa, parent.id, rights)?;
        self.commit(plane, next)?;
        Ok(Done {
            result0: vsa_id,
            result1: derived.token_id as u64,
            payload: derived.encode().to_vec(),
            ..Default::default()
        })
    }

    fn cap_revoke(&self, plane: &mut AdminPlane, token: &[u8], capacity: usize) -> Outcome {
        let (vsa_id, rec) = caps::verify(&plane.state, token)?;
        // The new root comes back as payload: refuse before changing
        // anything if it could not be delivered.
        if rec.is_root() && capacity < CapToken::LEN {
            return Err(AdminStatus::ResponseTooSmall.into());
        }
        let mut next = plane.state.clone();
        let vsa = next.vsas.get_mut(&vsa_id).ok_or(AdminStatus::BadToken)?;
        let revoked = caps::descendants(vsa, rec.id);
        for t in vsa.tokens.iter_mut().filter(|t| revoked.contains(&t.id)) {
            t.revoked = true;
        }
        let new_root = if rec.is_root() {
            Some(caps::mint(vsa, 0, Rights::ALL)?)
        } else {
            None
        };
        let mut detached = 0u64;
        for vsic in &mut next.vsics {
            for slot in vsic.slots.iter_mut() {
                if matches!(slot, Some(a) if a.vsa_id == vsa_id && revoked.contains(&a.token_id)) {
                    *slot = None;
                    detached += 1;
                }
            }
        }
        let changed_vsics = self.commit(plane, next)?;
        let payload = new_root.map(|t| t.encode().to_vec()).unwrap_or_default();
        Ok(Done {
            result0: revoked.len() as u64,
            result1: detached,
            payload,
            changed_vsics,
        })
    }

    fn list_vsas(&self, plane: &AdminPlane, capacity: usize) -> Outcome {
        let s = &plane.state;
        let mut out = Vec::with_capacity(s.vsas.len() * VsaInfo::LEN);
        for v in s.vsas.values() {
            let info = VsaInfo {
                vsa_id: v.id,
                size: v.size,
                extents: v.extents.len() as u32,
                stripe: v.stripe.len() as u32,
                live_tokens: v.live_tokens() as u32,
                attachments: s.attachment_count(v.id) as u32,
                role: if s.store_vsa == v.id {
                    ROLE_STORE
                } else {
                    ROLE_NONE
                },
            };
            out.extend_from_slice(&info.encode());
        }
        fits(out, s.vsas.len(), capacity)
    }

    fn list_vsics(&self, plane: &AdminPlane, capacity: usize) -> Outcome {
        let mut out = Vec::new();
        let count = self.config.vsics as usize;
        for (n, rec) in plane.state.vsics.iter().enumerate().take(count) {
            let slots = rec.slots.map(|a| {
                a.map_or(SlotInfo::default(), |a| SlotInfo {
                    vsa_id: a.vsa_id,
                    token_id: a.token_id,
                    flags: if a.read_only {
                        SlotInfo::FLAG_READ_ONLY
                    } else {
                        0
                    },
                })
            });
            let info = VsicInfo {
                vsic: n as u32,
                enabled: rec.enabled,
                queues: self.config.queues_per_vsic as u32,
                qos_bytes_per_sec: rec.qos_bytes_per_sec,
                qos_iops: rec.qos_iops,
                slots,
            };
            out.extend_from_slice(&info.encode());
        }
        fits(out, count, capacity)
    }

    fn stats(&self, cmd: &AdminCommand, capacity: usize) -> Outcome {
        let entries: Vec<_> = if cmd.vsic == ALL_VSICS {
            self.vsics
                .iter()
                .enumerate()
                .map(|(n, rt)| rt.stats.snapshot(n as u32))
                .collect()
        } else {
            let n = self.vsic_index(cmd.vsic)?;
            let rt = self.vsics.get(n).ok_or(AdminStatus::NoSuchVsic)?;
            vec![rt.stats.snapshot(n as u32)]
        };
        fits(encode_stats(&entries), entries.len(), capacity)
    }

    fn extent_map(&self, plane: &AdminPlane, cmd: &AdminCommand, capacity: usize) -> Outcome {
        let vsa = plane
            .state
            .vsas
            .get(&cmd.args[0])
            .ok_or(AdminStatus::NoSuchVsa)?;
        let runs = to_runs(&vsa.extents);
        let mut out = Vec::with_capacity(runs.len() * ExtentRun::LEN);
        for (first, count) in &runs {
            out.extend_from_slice(
                &ExtentRun {
                    drive: first.drive,
                    count: *count,
                    first_extent: first.index,
                }
                .encode(),
            );
        }
        let mut done = fits(out, runs.len(), capacity)?;
        done.result1 = vsa.size;
        Ok(done)
    }

    // ------------------------------------------------------ DMA protection

    /// Sets VSIC `vsic`'s DMA mode (arg0); the mode is committed, so a
    /// restart brings an enforced VSIC back enforced.
    fn dma_set_mode(&self, plane: &mut AdminPlane, cmd: &AdminCommand) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let enforced = match cmd.args[0] {
            DMA_MODE_OPEN => false,
            DMA_MODE_ENFORCED => true,
            _ => return Err(AdminStatus::UnknownMode.into()),
        };
        let mut next = plane.state.clone();
        let rec = vsic_mut(&mut next, n)?;
        let before = rec.dma_enforced;
        rec.dma_enforced = enforced;
        self.commit(plane, next)?;
        Ok(Done {
            result0: dma_mode(before),
            ..Default::default()
        })
    }

    fn dma_window_add(&self, cmd: &AdminCommand) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let rt = self.vsics.get(n).ok_or(AdminStatus::NoSuchVsic)?;
        let next = rt.dma.windows().with(DmaWindow {
            start: cmd.args[0],
            len: cmd.args[1],
            flags: cmd.flags,
        })?;
        let held = next.windows().len() as u64;
        rt.dma.set_windows(next);
        Ok(Done {
            result0: held,
            ..Default::default()
        })
    }

    fn dma_window_remove(&self, cmd: &AdminCommand) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let rt = self.vsics.get(n).ok_or(AdminStatus::NoSuchVsic)?;
        let next = rt.dma.windows().without(cmd.args[0], cmd.args[1])?;
        let held = next.windows().len() as u64;
        rt.dma.set_windows(next);
        Ok(Done {
            result0: held,
            ..Default::default()
        })
    }

    fn dma_window_list(&self, plane: &AdminPlane, cmd: &AdminCommand, capacity: usize) -> Outcome {
        let n = self.vsic_index(cmd.vsic)?;
        let rt = self.vsics.get(n).ok_or(AdminStatus::NoSuchVsic)?;
        let table = rt.dma.windows();
        let mut out = Vec::with_capacity(table.windows().len() * DmaWindow::LEN);
        for w in table.windows() {
            out.extend_from_slice(&w.encode());
        }
        let mut done = fits(out, table.windows().len(), capacity)?;
        done.result1 = dma_mode(plane.state.vsics.get(n).is_some_and(|v| v.dma_enforced));
        Ok(done)
    }
}

fn dma_mode(enforced: bool) -> u64 {
    if enforced {
        DMA_MODE_ENFORCED
    } else {
        DMA_MODE_OPEN
    }
}
