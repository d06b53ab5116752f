//! Admin client: the control plane's view of the PF.
//!
//! Every admin command is one `VIRTIO_BLK_T_VSIC_ADMIN` request on queue 0
//! of the PF, laid out as the documentation of [`vsic_abi::admin`] describes:
//! out = [command, payload], in = [completion, payload-in buffer]. This
//! module only moves bytes; every layout is encoded and decoded by
//! `vsic_abi`.

use vsic_abi::admin::{DmaMode, ALL_VSICS, FLAG_READ_ONLY, MAX_PAYLOAD};
use vsic_abi::records::{
    self, DmaWindow, ExtentRun, Identify, QueueStats, VsaInfo, VsicInfo, VsicStats,
};
use vsic_abi::virtio::{VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_VSIC_ADMIN};
use vsic_abi::{AdminCommand, AdminCompletion, AdminStatus, CapToken, DecodeError, Opcode};

use crate::{Device, OpenOptions, RawReply};

/// The queue admin commands travel on.
const ADMIN_QUEUE: u16 = 0;
/// First payload-in buffer offered for list and stats replies; enough for
/// thousands of records. A reply that does not fit is retried once with
/// [`MAX_PAYLOAD`].
const LIST_CAPACITY: usize = 256 << 10;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The device executed the command and refused it.
    #[error("{} ({})", .0.message(), .0.name())]
    Device(AdminStatus),
    /// The device answered with a status code this build does not know.
    #[error("the device reported status {0}, which this tool does not know")]
    UnknownStatus(u16),
    /// The request did not reach the device or its reply did not come back.
    #[error("cannot talk to the device: {0}")]
    Transport(#[from] crate::Error),
    /// The device's reply does not follow the admin protocol.
    #[error("malformed reply from the device: {0}")]
    Protocol(String),
}

impl AdminError {
    /// The device status behind this error, when the device gave one.
    pub fn status(&self) -> Option<AdminStatus> {
        match self {
            AdminError::Device(s) => Some(*s),
            _ => None,
        }
    }
}

fn protocol(what: &str, e: DecodeError) -> AdminError {
    AdminError::Protocol(format!("{what}: {e}"))
}

/// A VSA just created: its root capability, id and (rounded) size.
#[derive(Debug, Clone)]
pub struct Created {
    pub token: CapToken,
    pub vsa_id: u64,
    pub size: u64,
}

/// One VSIC's counters with the counters of each of its queues.
pub type StatsEntry = (VsicStats, Vec<QueueStats>);

/// DMA memory for the PF: rings plus one request at a time, the largest
/// being a [`MAX_PAYLOAD`] reply.
const PF_MEM_SIZE: usize = 8 << 20;

/// A client for the admin commands of one controller: through its PF, or
/// through another [`AdminExchange`] (e.g. vsicd's management socket on the
/// host, which runs the same admin layer while a guest owns the PF).
pub struct AdminClient {
    channel: Channel,
}

/// How admin commands reach the controller.
enum Channel {
    Pf(Device),
    Exchange(Box<dyn AdminExchange>),
}

/// A way to run one admin command other than the PF's virtqueue.
pub trait AdminExchange: Send + Sync {
    /// Runs the 64-byte `command` (sent as is) with `payload` out and room
    /// for `in_capacity` payload bytes back; returns the completion whatever
    /// its status, and the payload the controller wrote (at most
    /// `completion.payload_len` bytes).
    fn exchange(
        &self,
        command: &[u8; AdminCommand::LEN],
        payload: &[u8],
        in_capacity: usize,
    ) -> Result<(AdminCompletion, Vec<u8>), AdminError>;
}

impl AdminClient {
    /// Opens the PF named by `spec` (e.g. `vhost-user:/run/vsic/pf.sock`).
    pub fn open(spec: &str) -> Result<AdminClient, AdminError> {
        let opts = OpenOptions {
            queues: Some(1),
            mem_size: PF_MEM_SIZE,
            ..OpenOptions::default()
        };
        let device = Device::open(spec, &opts)?;
        Ok(AdminClient::new(device))
    }

    /// Wraps a PF device that is already open.
    pub fn new(device: Device) -> AdminClient {
        AdminClient {
            channel: Channel::Pf(device),
        }
    }

    /// A client whose commands travel through `exchange` instead of a PF.
    pub fn with_exchange(exchange: Box<dyn AdminExchange>) -> AdminClient {
        AdminClient {
            channel: Channel::Exchange(exchange),
        }
    }

    /// The underlying PF device (`None` for another exchange).
    pub fn device(&self) -> Option<&Device> {
        match &self.channel {
            Channel::Pf(d) => Some(d),
            Channel::Exchange(_) => None,
        }
    }

    /// Sends raw descriptor parts as one admin request, with no checking at
    /// all: for exercising the device with malformed chains (PF only).
    pub fn raw(&self, out: &[&[u8]], in_lens: &[usize]) -> Result<RawReply, AdminError> {
        let Some(device) = self.device() else {
            return Err(AdminError::Transport(crate::Error::Unsupported(
                "raw descriptor chains need the PF".into(),
            )));
        };
        Ok(device.raw_request(ADMIN_QUEUE, VIRTIO_BLK_T_VSIC_ADMIN, 0, out, in_lens)?)
    }

    /// Sends `cmd` exactly as given (its `payload_len` is not adjusted) with
    /// `payload` out and a payload-in buffer of `in_capacity` bytes.
    ///
    /// Returns the completion whatever its status, so callers can inspect
    /// refusals; the payload is trimmed to what the device wrote. Fails only
    /// when the exchange itself breaks (transport or protocol).
    pub fn command(
        &self,
        cmd: &AdminCommand,
        payload: &[u8],
        in_capacity: usize,
    ) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
        let encoded = cmd.encode();
        if let Channel::Exchange(x) = &self.channel {
            let (completion, mut data) = x.exchange(&encoded, payload, in_capacity)?;
            let written = completion.payload_len as usize;
            if written > in_capacity || data.len() < written {
                return Err(AdminError::Protocol(format!(
                    "completion claims {written} payload bytes; {} came back, {in_capacity} offered",
                    data.len()
                )));
            }
            data.truncate(written);
            return Ok((completion, data));
        }
        let mut out: Vec<&[u8]> = vec![&encoded];
        if !payload.is_empty() {
            out.push(payload);
        }
        let mut in_lens = vec![AdminCompletion::LEN];
        if in_capacity > 0 {
            in_lens.push(in_capacity);
        }
        let reply = self.raw(&out, &in_lens)?;
        // VSIC functions refuse the admin request type outright, without a
        // completion: that is the NotPf condition, reported by the transport.
        if reply.status == VIRTIO_BLK_S_UNSUPP {
            return Err(AdminError::Device(AdminStatus::NotPf));
        }
        if reply.status != VIRTIO_BLK_S_OK {
            return Err(AdminError::Protocol(format!(
                "virtio status {} instead of a completion",
                reply.status
            )));
        }
        let mut ins = reply.ins.into_iter();
        let completion_bytes = ins
            .next()
            .ok_or_else(|| AdminError::Protocol("no completion buffer in the reply".into()))?;
        let completion =
            AdminCompletion::decode(&completion_bytes).map_err(|e| protocol("completion", e))?;
        let written = completion.payload_len as usize;
        if written > in_capacity {
            return Err(AdminError::Protocol(format!(
                "completion claims {written} payload bytes, but only {in_capacity} were offered"
            )));
        }
        let mut data = ins.next().unwrap_or_default();
        if data.len() < written {
            return Err(AdminError::Protocol(format!(
                "completion claims {written} payload bytes, transport returned {}",
                data.len()
            )));
        }
        data.truncate(written);
        Ok((completion, data))
    }

    /// Sends a command built by the typed methods (setting its payload
    /// length) and turns a refusal into an error.
    fn execute(
        &self,
        cmd: AdminCommand,
        payload: &[u8],
        in_capacity: usize,
    ) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
        accepted(self.send(cmd, payload, in_capacity)?)
    }

    fn send(
        &self,
        mut cmd: AdminCommand,
        payload: &[u8],
        in_capacity: usize,
    ) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
        cmd.payload_len = u32::try_from(payload.len())
            .map_err(|_| AdminError::Device(AdminStatus::BadPayloadSize))?;
        self.command(&cmd, payload, in_capacity)
    }

    /// Like [`AdminClient::execute`] for replies of unknown length: offers
    /// [`LIST_CAPACITY`] first; when that is too small, retries once with the
    /// room the device asked for (result1), or the largest payload when it
    /// did not say.
    fn execute_list(&self, cmd: AdminCommand) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
        let (completion, data) = self.send(cmd, &[], LIST_CAPACITY)?;
        if completion.status() != Some(AdminStatus::ResponseTooSmall) {
            return accepted((completion, data));
        }
        let wanted = usize::try_from(completion.result1).unwrap_or(MAX_PAYLOAD);
        let capacity = if wanted > LIST_CAPACITY {
            wanted.min(MAX_PAYLOAD)
        } else {
            MAX_PAYLOAD
        };
        self.execute(cmd, &[], capacity)
    }

    /// Sends a command with no payload and no reply data.
    fn simple(&self, cmd: AdminCommand) -> Result<AdminCompletion, AdminError> {
        Ok(self.execute(cmd, &[], 0)?.0)
    }

    pub fn identify(&self) -> Result<Identify, AdminError> {
        let (_, data) = self.execute(AdminCommand::new(Opcode::Identify), &[], Identify::LEN)?;
        Identify::decode(&data).map_err(|e| protocol("identify record", e))
    }

    pub fn vsic_enable(&self, vsic: u32) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsicEnable);
        cmd.vsic = vsic;
        self.simple(cmd).map(drop)
    }

    pub fn vsic_disable(&self, vsic: u32) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsicDisable);
        cmd.vsic = vsic;
        self.simple(cmd).map(drop)
    }

    /// Creates a VSA of at least `size` bytes striped over `stripe` drives
    /// (0 = one drive).
    pub fn vsa_create(&self, size: u64, stripe: u32) -> Result<Created, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsaCreate);
        cmd.args[0] = size;
        cmd.args[1] = stripe as u64;
        let (completion, data) = self.execute(cmd, &[], CapToken::LEN)?;
        let token = CapToken::decode(&data).map_err(|e| protocol("new capability", e))?;
        Ok(Created {
            token,
            vsa_id: completion.result0,
            size: completion.result1,
        })
    }

    pub fn vsa_delete(&self, token: &CapToken) -> Result<(), AdminError> {
        self.execute(AdminCommand::new(Opcode::VsaDelete), &token.encode(), 0)
            .map(drop)
    }

    /// Resizes the VSA of `token` to `new_size` bytes and returns its new
    /// size. Extends or shrinks depending on the current size; asking for the
    /// current size changes nothing.
    pub fn vsa_resize(&self, token: &CapToken, new_size: u64) -> Result<u64, AdminError> {
        let current = self
            .list_vsas()?
            .into_iter()
            .find(|v| v.vsa_id == token.vsa_id);
        let opcode = match current {
            Some(v) if v.size == new_size => return Ok(v.size),
            Some(v) if new_size < v.size => Opcode::VsaShrink,
            // A VSA missing from the list gets an extend anyway, so that the
            // device itself says what is wrong with the token.
            _ => Opcode::VsaExtend,
        };
        let mut cmd = AdminCommand::new(opcode);
        cmd.args[0] = new_size;
        let (completion, _) = self.execute(cmd, &token.encode(), 0)?;
        Ok(completion.result1)
    }

    /// Deletes VSA `vsa_id` without a capability (the PF's privilege: for a
    /// VSA whose capability is lost). Detaches it everywhere.
    pub fn vsa_delete_by_id(&self, vsa_id: u64) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsaDeleteById);
        cmd.args[0] = vsa_id;
        self.simple(cmd).map(drop)
    }

    /// Resizes VSA `vsa_id` to `new_size` bytes without a capability (the
    /// PF's privilege) and returns its new size; the same size changes
    /// nothing.
    pub fn vsa_resize_by_id(&self, vsa_id: u64, new_size: u64) -> Result<u64, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsaResizeById);
        cmd.args = [vsa_id, new_size, 0, 0];
        Ok(self.simple(cmd)?.result1)
    }

    /// Gives VSA `vsa_id` a role ([`vsic_abi::records::ROLE_NONE`] or
    /// [`vsic_abi::records::ROLE_STORE`]); only the PF can.
    pub fn vsa_set_role(&self, vsa_id: u64, role: u32) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::VsaSetRole);
        cmd.args = [vsa_id, role as u64, 0, 0];
        self.simple(cmd).map(drop)
    }

    /// Sets VSIC `vsic`'s DMA mode; returns the mode it had.
    pub fn dma_set_mode(&self, vsic: u32, mode: DmaMode) -> Result<DmaMode, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::DmaSetMode);
        cmd.vsic = vsic;
        cmd.args[0] = mode as u64;
        let before = self.simple(cmd)?.result0;
        DmaMode::from_u64(before)
            .ok_or_else(|| AdminError::Protocol(format!("unknown previous DMA mode {before}")))
    }

    /// Adds the DMA window `[start, start + len)` to VSIC `vsic` with
    /// `flags` ([`vsic_abi::admin::FLAG_DMA_READ`] and/or
    /// [`vsic_abi::admin::FLAG_DMA_WRITE`]); returns the windows it holds.
    pub fn dma_window_add(
        &self,
        vsic: u32,
        start: u64,
        len: u64,
        flags: u32,
    ) -> Result<u64, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::DmaWindowAdd);
        cmd.vsic = vsic;
        cmd.flags = flags;
        cmd.args = [start, len, 0, 0];
        Ok(self.simple(cmd)?.result0)
    }

    /// Removes VSIC `vsic`'s DMA window that starts at `start` with length
    /// `len`; returns the windows it still holds.
    pub fn dma_window_remove(&self, vsic: u32, start: u64, len: u64) -> Result<u64, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::DmaWindowRemove);
        cmd.vsic = vsic;
        cmd.args = [start, len, 0, 0];
        Ok(self.simple(cmd)?.result0)
    }

    /// VSIC `vsic`'s DMA mode and windows (sorted by start).
    pub fn dma_windows(&self, vsic: u32) -> Result<(DmaMode, Vec<DmaWindow>), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::DmaWindowList);
        cmd.vsic = vsic;
        let (completion, data) = self.execute_list(cmd)?;
        let mode = DmaMode::from_u64(completion.result1).ok_or_else(|| {
            AdminError::Protocol(format!("unknown DMA mode {}", completion.result1))
        })?;
        let windows = DmaWindow::decode_array(&data).map_err(|e| protocol("DMA windows", e))?;
        Ok((mode, windows))
    }

    /// Attaches the VSA of `token` to `slot` of `vsic`.
    pub fn attach(
        &self,
        vsic: u32,
        slot: u32,
        token: &CapToken,
        read_only: bool,
    ) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::Attach);
        cmd.vsic = vsic;
        cmd.slot = slot;
        if read_only {
            cmd.flags |= FLAG_READ_ONLY;
        }
        self.execute(cmd, &token.encode(), 0).map(drop)
    }

    pub fn detach(&self, vsic: u32, slot: u32) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::Detach);
        cmd.vsic = vsic;
        cmd.slot = slot;
        self.simple(cmd).map(drop)
    }

    /// Limits `vsic` to `bytes_per_sec` and `iops` (0 = unlimited).
    pub fn set_qos(&self, vsic: u32, bytes_per_sec: u64, iops: u64) -> Result<(), AdminError> {
        let mut cmd = AdminCommand::new(Opcode::SetQos);
        cmd.vsic = vsic;
        cmd.args[0] = bytes_per_sec;
        cmd.args[1] = iops;
        self.simple(cmd).map(drop)
    }

    /// Derives a new token from `parent`, read-only when asked.
    pub fn cap_derive(&self, parent: &CapToken, read_only: bool) -> Result<CapToken, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::CapDerive);
        if read_only {
            cmd.flags |= FLAG_READ_ONLY;
        }
        let (_, data) = self.execute(cmd, &parent.encode(), CapToken::LEN)?;
        CapToken::decode(&data).map_err(|e| protocol("derived capability", e))
    }

    /// Revokes `token` and everything derived from it. When `token` was the
    /// root, the device re-keys the VSA and the new root comes back.
    pub fn cap_revoke(&self, token: &CapToken) -> Result<Option<CapToken>, AdminError> {
        let (_, data) = self.execute(
            AdminCommand::new(Opcode::CapRevoke),
            &token.encode(),
            CapToken::LEN,
        )?;
        if data.is_empty() {
            return Ok(None);
        }
        CapToken::decode(&data)
            .map(Some)
            .map_err(|e| protocol("new root capability", e))
    }

    pub fn list_vsas(&self) -> Result<Vec<VsaInfo>, AdminError> {
        let (completion, data) = self.execute_list(AdminCommand::new(Opcode::ListVsas))?;
        let list = VsaInfo::decode_array(&data).map_err(|e| protocol("VSA list", e))?;
        check_count(completion.result0, list.len(), "VSA list")?;
        Ok(list)
    }

    pub fn list_vsics(&self) -> Result<Vec<VsicInfo>, AdminError> {
        let (completion, data) = self.execute_list(AdminCommand::new(Opcode::ListVsics))?;
        let list = VsicInfo::decode_array(&data).map_err(|e| protocol("VSIC list", e))?;
        check_count(completion.result0, list.len(), "VSIC list")?;
        Ok(list)
    }

    /// Counters of one VSIC, or of every VSIC when `vsic` is `None`.
    pub fn stats(&self, vsic: Option<u32>) -> Result<Vec<StatsEntry>, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::Stats);
        cmd.vsic = vsic.unwrap_or(ALL_VSICS);
        let (_, data) = self.execute_list(cmd)?;
        records::decode_stats(&data).map_err(|e| protocol("statistics", e))
    }

    /// The physical extents behind VSA `vsa_id`, in logical order.
    pub fn extent_map(&self, vsa_id: u64) -> Result<Vec<ExtentRun>, AdminError> {
        let mut cmd = AdminCommand::new(Opcode::ExtentMap);
        cmd.args[0] = vsa_id;
        let (_, data) = self.execute_list(cmd)?;
        ExtentRun::decode_array(&data).map_err(|e| protocol("extent map", e))
    }
}

/// Passes a successful exchange through and turns a refusal into an error.
fn accepted(
    (completion, data): (AdminCompletion, Vec<u8>),
) -> Result<(AdminCompletion, Vec<u8>), AdminError> {
    match completion.status() {
        Some(AdminStatus::Ok) => Ok((completion, data)),
        Some(status) => Err(AdminError::Device(status)),
        None => Err(AdminError::UnknownStatus(completion.status)),
    }
}

/// Checks a list reply's record count (result0) against the records received.
fn check_count(reported: u64, received: usize, what: &str) -> Result<(), AdminError> {
    if reported != received as u64 {
        return Err(AdminError::Protocol(format!(
            "{what}: device reports {reported} records but sent {received}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(status: u16) -> AdminCompletion {
        AdminCompletion {
            status,
            payload_len: 0,
            result0: 0,
            result1: 0,
        }
    }

    #[test]
    fn refusals_become_device_errors() {
        let ok = accepted((completion(0), vec![1, 2]));
        assert_eq!(ok.map(|(_, d)| d).ok(), Some(vec![1, 2]));
        let refused = accepted((completion(AdminStatus::NoSpace as u16), Vec::new()));
        assert!(matches!(
            refused,
            Err(AdminError::Device(AdminStatus::NoSpace))
        ));
        let unknown = accepted((completion(999), Vec::new()));
        assert!(matches!(unknown, Err(AdminError::UnknownStatus(999))));
    }

    #[test]
    fn device_errors_show_message_and_name() {
        let e = AdminError::Device(AdminStatus::RevokedToken);
        assert_eq!(
            e.to_string(),
            "the capability token has been revoked (revoked-token)"
        );
        assert_eq!(e.status(), Some(AdminStatus::RevokedToken));
        assert_eq!(AdminError::Protocol("x".into()).status(), None);
        assert!(AdminError::UnknownStatus(77).to_string().contains("77"));
    }

    #[test]
    fn list_counts_must_match_the_records() {
        assert!(check_count(2, 2, "VSA list").is_ok());
        assert!(matches!(
            check_count(3, 2, "VSA list"),
            Err(AdminError::Protocol(_))
        ));
    }
}
