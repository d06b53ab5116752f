//! Admin commands and completions (PF only).
//!
//! One admin command is one virtio-blk request of type
//! [`crate::virtio::VIRTIO_BLK_T_VSIC_ADMIN`] whose descriptor chain is:
//!
//! | part | direction | bytes |
//! |---|---|---|
//! | virtio-blk header (type, reserved, sector = 0) | driver → device | 16 |
//! | [`AdminCommand`] | driver → device | 64 |
//! | payload out (optional, `payload_len` bytes) | driver → device | ≤ [`MAX_PAYLOAD`] |
//! | [`AdminCompletion`] | device → driver | 32 |
//! | payload in buffer (optional) | device → driver | ≤ [`MAX_PAYLOAD`] |
//! | virtio status byte | device → driver | 1 |
//!
//! The virtio status is OK whenever a completion was written; the outcome of
//! the command itself is the completion's [`AdminStatus`].

use crate::layout::{wire_enum, wire_layout, Layout, U16, U32, U64};
use crate::wire::reserved_zero;
use crate::DecodeError;
use std::fmt;

/// "VSIC" read as a little-endian u32.
pub const COMMAND_MAGIC: u32 = u32::from_le_bytes(*b"VSIC");
/// The command layout version this build speaks.
pub const COMMAND_VERSION: u16 = 1;
/// Largest payload in either direction.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Command flag: the attachment or derived capability is read-only.
pub const FLAG_READ_ONLY: u32 = 1 << 0;
/// Command flag of [`Opcode::DmaWindowAdd`]: the device may read the
/// window (device-readable buffers: request headers, data-out).
pub const FLAG_DMA_READ: u32 = 1 << 1;
/// Command flag of [`Opcode::DmaWindowAdd`]: the device may write the
/// window (device-writable buffers: data-in, status bytes).
pub const FLAG_DMA_WRITE: u32 = 1 << 2;
/// All flags this version defines; any other bit is an error.
pub const FLAGS_KNOWN: u32 = FLAG_READ_ONLY | FLAG_DMA_READ | FLAG_DMA_WRITE;

/// A VSIC's DMA mode ([`Opcode::DmaSetMode`] arg0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum DmaMode {
    /// Every guest address (the default, like an IOMMU pass-through domain).
    Open = 0,
    /// Only the VSIC's DMA windows.
    Enforced = 1,
}

impl DmaMode {
    pub fn from_u64(v: u64) -> Option<DmaMode> {
        match v {
            0 => Some(DmaMode::Open),
            1 => Some(DmaMode::Enforced),
            _ => None,
        }
    }

    /// Stable short name, for the CLI and `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            DmaMode::Open => "open",
            DmaMode::Enforced => "enforced",
        }
    }
}

/// [`DmaMode::Open`] as it travels.
pub const DMA_MODE_OPEN: u64 = DmaMode::Open as u64;
/// [`DmaMode::Enforced`] as it travels.
pub const DMA_MODE_ENFORCED: u64 = DmaMode::Enforced as u64;
/// Most DMA windows one VSIC can hold.
pub const MAX_DMA_WINDOWS: usize = 256;

/// `vsic` value meaning "every VSIC" for [`Opcode::Stats`].
pub const ALL_VSICS: u32 = u32::MAX;

wire_enum! {
    /// Admin opcodes. The argument use of each is in `docs/device-spec.md`.
    pub enum Opcode: u16 {
        /// payload in: [`crate::records::Identify`].
        Identify = 0x01,
        /// `vsic`.
        VsicEnable = 0x10,
        /// `vsic`; detaches nothing, but I/O on a disabled VSIC fails.
        VsicDisable = 0x11,
        /// arg0 = size in bytes (rounded up to whole extents), arg1 = stripe
        /// width in drives (0 = 1). payload in: the new root [`crate::CapToken`].
        /// result0 = VSA id, result1 = size in bytes.
        VsaCreate = 0x20,
        /// payload out: a token with [`crate::Rights::ADMIN`].
        VsaDelete = 0x21,
        /// arg0 = new size (must be larger). payload out: token. result1 = size.
        VsaExtend = 0x22,
        /// arg0 = new size (must be smaller, at least one extent). payload out:
        /// token. result1 = size.
        VsaShrink = 0x23,
        /// PF privilege, no token: arg0 = VSA id. Deletes it like
        /// [`Opcode::VsaDelete`] (for a VSA whose capability is lost).
        /// result0 = VSA id.
        VsaDeleteById = 0x24,
        /// PF privilege, no token: arg0 = VSA id, arg1 = new size (rounded up to
        /// whole extents; larger extends, smaller shrinks, equal changes
        /// nothing). result0 = VSA id, result1 = size.
        VsaResizeById = 0x25,
        /// PF privilege: arg0 = VSA id, arg1 = role ([`crate::records::ROLE_NONE`]
        /// or [`crate::records::ROLE_STORE`]; at most one VSA holds the store
        /// role). Shown in [`crate::records::VsaInfo::role`].
        VsaSetRole = 0x26,
        /// `vsic`, `slot`, flags may hold [`FLAG_READ_ONLY`]. payload out: token.
        Attach = 0x30,
        /// `vsic`, `slot`.
        Detach = 0x31,
        /// `vsic`, arg0 = bytes per second, arg1 = I/Os per second (0 = unlimited).
        SetQos = 0x40,
        /// flags may hold [`FLAG_READ_ONLY`]. payload out: parent token.
        /// payload in: the derived token.
        CapDerive = 0x50,
        /// payload out: token. Revokes it and everything derived from it and
        /// detaches what they attached. A root token is re-keyed: the new root
        /// comes back as payload in.
        CapRevoke = 0x51,
        /// payload in: array of [`crate::records::VsaInfo`]. result0 = count.
        ListVsas = 0x60,
        /// payload in: array of [`crate::records::VsicInfo`]. result0 = count.
        ListVsics = 0x61,
        /// `vsic` (or [`ALL_VSICS`]). payload in: [`crate::records::VsicStats`]
        /// records, each followed by its per-queue records.
        Stats = 0x70,
        /// arg0 = VSA id. payload in: array of [`crate::records::ExtentRun`].
        ExtentMap = 0x71,
        /// `vsic`, arg0 = [`DMA_MODE_OPEN`] or [`DMA_MODE_ENFORCED`]. Changing
        /// the mode keeps the VSIC's windows. result0 = the previous mode.
        DmaSetMode = 0x80,
        /// `vsic`, arg0 = guest-physical start, arg1 = length, flags =
        /// [`FLAG_DMA_READ`] and/or [`FLAG_DMA_WRITE`]. result0 = windows held.
        DmaWindowAdd = 0x81,
        /// `vsic`, arg0 = start, arg1 = length of a window exactly as added.
        /// result0 = windows held.
        DmaWindowRemove = 0x82,
        /// `vsic`. payload in: array of [`crate::records::DmaWindow`], sorted by
        /// start. result0 = count, result1 = mode.
        DmaWindowList = 0x83,
    }
}

wire_enum! {
    /// Outcome of an admin command; every failure has its own code.
    pub enum AdminStatus: u16 {
        Ok = 0,
        BadMagic = 1,
        BadVersion = 2,
        UnknownOpcode = 3,
        BadCommandSize = 4,
        BadPayloadSize = 5,
        InvalidArgument = 6,
        UnknownFlags = 7,
        NoSuchVsic = 8,
        NoSuchSlot = 9,
        NoSuchVsa = 10,
        BadToken = 11,
        RevokedToken = 12,
        PermissionDenied = 13,
        NoSpace = 14,
        SlotBusy = 15,
        SlotEmpty = 16,
        ZeroSize = 17,
        BelowMinimum = 18,
        TooLarge = 19,
        ResponseTooSmall = 20,
        NotPf = 21,
        MetadataIo = 22,
        RoleInUse = 23,
        WindowOverlap = 24,
        TooManyWindows = 25,
        NoSuchWindow = 26,
        WindowOverflow = 27,
        UnknownMode = 28,
    }
}

impl AdminStatus {
    /// Stable short name, for `--json` output and logs.
    pub fn name(self) -> &'static str {
        match self {
            AdminStatus::Ok => "ok",
            AdminStatus::BadMagic => "bad-magic",
            AdminStatus::BadVersion => "bad-version",
            AdminStatus::UnknownOpcode => "unknown-opcode",
            AdminStatus::BadCommandSize => "bad-command-size",
            AdminStatus::BadPayloadSize => "bad-payload-size",
            AdminStatus::InvalidArgument => "invalid-argument",
            AdminStatus::UnknownFlags => "unknown-flags",
            AdminStatus::NoSuchVsic => "no-such-vsic",
            AdminStatus::NoSuchSlot => "no-such-slot",
            AdminStatus::NoSuchVsa => "no-such-vsa",
            AdminStatus::BadToken => "bad-token",
            AdminStatus::RevokedToken => "revoked-token",
            AdminStatus::PermissionDenied => "permission-denied",
            AdminStatus::NoSpace => "no-space",
            AdminStatus::SlotBusy => "slot-busy",
            AdminStatus::SlotEmpty => "slot-empty",
            AdminStatus::ZeroSize => "zero-size",
            AdminStatus::BelowMinimum => "below-minimum",
            AdminStatus::TooLarge => "too-large",
            AdminStatus::ResponseTooSmall => "response-too-small",
            AdminStatus::NotPf => "not-pf",
            AdminStatus::MetadataIo => "metadata-io",
            AdminStatus::RoleInUse => "role-in-use",
            AdminStatus::WindowOverlap => "window-overlap",
            AdminStatus::TooManyWindows => "too-many-windows",
            AdminStatus::NoSuchWindow => "no-such-window",
            AdminStatus::WindowOverflow => "window-overflow",
            AdminStatus::UnknownMode => "unknown-mode",
        }
    }

    /// What a user should read when the command failed this way.
    pub fn message(self) -> &'static str {
        match self {
            AdminStatus::Ok => "success",
            AdminStatus::BadMagic => "the command does not start with the VSIC magic",
            AdminStatus::BadVersion => "the command layout version is not supported by the device",
            AdminStatus::UnknownOpcode => "the device does not know this admin opcode",
            AdminStatus::BadCommandSize => "the admin command is not exactly 64 bytes",
            AdminStatus::BadPayloadSize => "the payload size does not match what the command needs",
            AdminStatus::InvalidArgument => "an argument of the command is out of range",
            AdminStatus::UnknownFlags => "the command sets flags the device does not know",
            AdminStatus::NoSuchVsic => "no VSIC with that number",
            AdminStatus::NoSuchSlot => "no attachment slot with that number",
            AdminStatus::NoSuchVsa => "no VSA with that id",
            AdminStatus::BadToken => {
                "the capability token is not valid (forged or for a deleted VSA)"
            }
            AdminStatus::RevokedToken => "the capability token has been revoked",
            AdminStatus::PermissionDenied => "the capability does not grant this operation",
            AdminStatus::NoSpace => "not enough free extents on the drives",
            AdminStatus::SlotBusy => "that slot already has a VSA attached",
            AdminStatus::SlotEmpty => "that slot has no VSA attached",
            AdminStatus::ZeroSize => "a VSA or DMA window cannot have size zero",
            AdminStatus::BelowMinimum => "a VSA cannot be shrunk below one extent",
            AdminStatus::TooLarge => "the size exceeds what a VSA window can hold",
            AdminStatus::ResponseTooSmall => "the response buffer is too small for the reply",
            AdminStatus::NotPf => "admin commands are only accepted on the PF",
            AdminStatus::MetadataIo => "the device could not commit its metadata to the drives",
            AdminStatus::RoleInUse => "another VSA already has that role (clear it there first)",
            AdminStatus::WindowOverlap => "the DMA window overlaps one the VSIC already has",
            AdminStatus::TooManyWindows => "the VSIC already holds the most DMA windows it can",
            AdminStatus::NoSuchWindow => "the VSIC has no DMA window with that start and length",
            AdminStatus::WindowOverflow => "the DMA window's start plus length overflows 64 bits",
            AdminStatus::UnknownMode => "the device does not know that DMA mode",
        }
    }
}

impl fmt::Display for AdminStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.name())
    }
}

wire_layout! {
    /// The fixed 64-byte admin command as it travels (see [`AdminCommand`]).
    pub struct AdminCommandWire(64 bytes) {
        0 => magic: U32,
        4 => version: U16,
        6 => opcode: U16,
        8 => payload_len: U32,
        12 => flags: U32,
        16 => vsic: U32,
        20 => slot: U32,
        24 => arg0: U64,
        32 => arg1: U64,
        40 => arg2: U64,
        48 => arg3: U64,
        56 => reserved: U64,
    }
}

/// The fixed 64-byte admin command, decoded; its layout is
/// [`AdminCommandWire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCommand {
    /// Raw opcode: kept raw so that unknown ones reach the device and get
    /// [`AdminStatus::UnknownOpcode`].
    pub opcode: u16,
    pub payload_len: u32,
    pub flags: u32,
    pub vsic: u32,
    pub slot: u32,
    pub args: [u64; 4],
}

impl AdminCommand {
    pub const LEN: usize = AdminCommandWire::LEN;

    pub fn new(opcode: Opcode) -> Self {
        Self {
            opcode: opcode as u16,
            payload_len: 0,
            flags: 0,
            vsic: 0,
            slot: 0,
            args: [0; 4],
        }
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u16(self.opcode)
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let [arg0, arg1, arg2, arg3] = self.args.map(U64::new);
        zerocopy::transmute!(AdminCommandWire {
            magic: COMMAND_MAGIC.into(),
            version: COMMAND_VERSION.into(),
            opcode: self.opcode.into(),
            payload_len: self.payload_len.into(),
            flags: self.flags.into(),
            vsic: self.vsic.into(),
            slot: self.slot.into(),
            arg0,
            arg1,
            arg2,
            arg3,
            reserved: U64::ZERO,
        })
    }

    /// Decodes a command, checking size, magic, version and reserved bytes.
    /// The opcode is not checked here (see [`AdminCommand::opcode`]).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = AdminCommandWire::read_exact(b)?;
        let magic = w.magic.get();
        if magic != COMMAND_MAGIC {
            return Err(DecodeError::BadMagic {
                expected: COMMAND_MAGIC,
                got: magic,
            });
        }
        let version = w.version.get();
        if version != COMMAND_VERSION {
            return Err(DecodeError::BadVersion {
                supported: COMMAND_VERSION,
                got: version,
            });
        }
        reserved_zero("reserved", w.reserved.get())?;
        let payload_len = w.payload_len.get();
        if payload_len as usize > MAX_PAYLOAD {
            return Err(DecodeError::BadField {
                field: "payload_len",
                value: payload_len as u64,
            });
        }
        Ok(Self {
            opcode: w.opcode.get(),
            payload_len,
            flags: w.flags.get(),
            vsic: w.vsic.get(),
            slot: w.slot.get(),
            args: [w.arg0, w.arg1, w.arg2, w.arg3].map(U64::get),
        })
    }

    /// The status a device reports for a command that failed to decode.
    pub fn decode_status(err: &DecodeError) -> AdminStatus {
        match err {
            DecodeError::Truncated { .. } | DecodeError::Oversized { .. } => {
                AdminStatus::BadCommandSize
            }
            DecodeError::BadMagic { .. } => AdminStatus::BadMagic,
            DecodeError::BadVersion { .. } => AdminStatus::BadVersion,
            DecodeError::BadField {
                field: "payload_len",
                ..
            } => AdminStatus::BadPayloadSize,
            DecodeError::BadField { .. } | DecodeError::BadText(_) => AdminStatus::InvalidArgument,
        }
    }
}

wire_layout! {
    /// The fixed 32-byte admin completion as it travels (see
    /// [`AdminCompletion`]).
    pub struct AdminCompletionWire(32 bytes) {
        0 => status: U16,
        2 => reserved: U16,
        4 => payload_len: U32,
        8 => result0: U64,
        16 => result1: U64,
        24 => reserved_2: U64,
    }
}

/// The fixed 32-byte admin completion, decoded; its layout is
/// [`AdminCompletionWire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCompletion {
    /// Raw status: a newer device may report codes this build does not know.
    pub status: u16,
    /// Bytes written to the payload-in buffer.
    pub payload_len: u32,
    pub result0: u64,
    pub result1: u64,
}

impl AdminCompletion {
    pub const LEN: usize = AdminCompletionWire::LEN;

    pub fn with_status(status: AdminStatus) -> Self {
        Self {
            status: status as u16,
            payload_len: 0,
            result0: 0,
            result1: 0,
        }
    }

    pub fn ok() -> Self {
        Self::with_status(AdminStatus::Ok)
    }

    pub fn status(&self) -> Option<AdminStatus> {
        AdminStatus::from_u16(self.status)
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(AdminCompletionWire {
            status: self.status.into(),
            payload_len: self.payload_len.into(),
            result0: self.result0.into(),
            result1: self.result1.into(),
            ..Default::default()
        })
    }

    /// Decodes a completion. The reserved fields are ignored: a newer device
    /// may use them.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = AdminCompletionWire::read_exact(b)?;
        let payload_len = w.payload_len.get();
        if payload_len as usize > MAX_PAYLOAD {
            return Err(DecodeError::BadField {
                field: "payload_len",
                value: payload_len as u64,
            });
        }
        Ok(Self {
            status: w.status.get(),
            payload_len,
            result0: w.result0.get(),
            result1: w.result1.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip_and_layout() {
        let mut c = AdminCommand::new(Opcode::Attach);
        c.vsic = 3;
        c.slot = 2;
        c.flags = FLAG_READ_ONLY;
        c.payload_len = 64;
        c.args = [1, 2, 3, 4];
        let b = c.encode();
        assert_eq!(&b[0..4], b"VSIC");
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0x30);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 3);
        assert_eq!(AdminCommand::decode(&b).unwrap(), c);
        assert_eq!(c.opcode(), Some(Opcode::Attach));
    }

    #[test]
    fn command_decode_rejects_bad_input() {
        let good = AdminCommand::new(Opcode::Identify).encode();
        let e = AdminCommand::decode(&good[..63]).unwrap_err();
        assert_eq!(AdminCommand::decode_status(&e), AdminStatus::BadCommandSize);
        let mut long = good.to_vec();
        long.push(0);
        let e = AdminCommand::decode(&long).unwrap_err();
        assert_eq!(AdminCommand::decode_status(&e), AdminStatus::BadCommandSize);
        let mut bad = good;
        bad[0] = b'X';
        let e = AdminCommand::decode(&bad).unwrap_err();
        assert_eq!(AdminCommand::decode_status(&e), AdminStatus::BadMagic);
        let mut bad = good;
        bad[4] = 9;
        let e = AdminCommand::decode(&bad).unwrap_err();
        assert_eq!(AdminCommand::decode_status(&e), AdminStatus::BadVersion);
        let mut bad = good;
        bad[60] = 1;
        assert!(AdminCommand::decode(&bad).is_err());
        let mut bad = AdminCommand::new(Opcode::Identify);
        bad.payload_len = MAX_PAYLOAD as u32 + 1;
        let e = AdminCommand::decode(&bad.encode()).unwrap_err();
        assert_eq!(AdminCommand::decode_status(&e), AdminStatus::BadPayloadSize);
    }

    #[test]
    fn unknown_opcode_decodes_but_is_not_known() {
        let mut c = AdminCommand::new(Opcode::Identify);
        c.opcode = 0x7777;
        let d = AdminCommand::decode(&c.encode()).unwrap();
        assert_eq!(d.opcode(), None);
    }

    #[test]
    fn completion_round_trip() {
        let c = AdminCompletion {
            status: AdminStatus::NoSpace as u16,
            payload_len: 9,
            result0: 5,
            result1: 6,
        };
        assert_eq!(AdminCompletion::decode(&c.encode()).unwrap(), c);
        assert!(AdminCompletion::decode(&[0u8; 31]).is_err());
        assert!(AdminCompletion::decode(&[0u8; 33]).is_err());
    }

    #[test]
    fn statuses_and_opcodes_are_distinct_and_named() {
        let mut codes: Vec<u16> = AdminStatus::ALL.iter().map(|s| *s as u16).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), AdminStatus::ALL.len());
        for s in AdminStatus::ALL {
            assert_eq!(AdminStatus::from_u16(s as u16), Some(s));
            assert!(!s.message().is_empty());
        }
        let mut names: Vec<&str> = AdminStatus::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), AdminStatus::ALL.len());
        for o in Opcode::ALL {
            assert_eq!(Opcode::from_u16(o as u16), Some(o));
        }
    }
}
