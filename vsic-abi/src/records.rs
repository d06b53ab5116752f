//! Fixed-size records returned as admin payloads (identify, list, stats,
//! extent map). Arrays are plain concatenations of records.

use crate::layout::{wire_layout, Layout, U32, U64};
use crate::window::SLOTS_PER_VSIC;
use crate::wire::{at_least, records};
use crate::DecodeError;

/// Cache mode of the controller (brief decision 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CacheMode {
    /// Completed writes become durable at the next FLUSH.
    WriteBack = 0,
    /// A completed write is already durable (battery-backed cache).
    WriteThrough = 1,
}

impl CacheMode {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(CacheMode::WriteBack),
            1 => Some(CacheMode::WriteThrough),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::WriteBack => "write-back",
            CacheMode::WriteThrough => "write-through",
        }
    }
}

wire_layout! {
    /// Reply to IDENTIFY as it travels (see [`Identify`]).
    pub struct IdentifyWire(64 bytes) {
        0 => abi_version: U32,
        4 => vsics: U32,
        8 => queues_per_vsic: U32,
        12 => slots_per_vsic: U32,
        16 => extent_size: U64,
        24 => window_shift: U32,
        28 => drives: U32,
        32 => total_extents: U64,
        40 => free_extents: U64,
        48 => vsa_count: U32,
        52 => cache_mode: U32,
        56 => metadata_generation: U64,
    }
}

/// Reply to IDENTIFY, decoded ([`IdentifyWire`], 64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identify {
    pub abi_version: u32,
    pub vsics: u32,
    pub queues_per_vsic: u32,
    pub slots_per_vsic: u32,
    pub extent_size: u64,
    pub window_shift: u32,
    pub drives: u32,
    pub total_extents: u64,
    pub free_extents: u64,
    pub vsa_count: u32,
    pub cache_mode: u32,
    pub metadata_generation: u64,
}

impl Identify {
    pub const LEN: usize = IdentifyWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(IdentifyWire {
            abi_version: self.abi_version.into(),
            vsics: self.vsics.into(),
            queues_per_vsic: self.queues_per_vsic.into(),
            slots_per_vsic: self.slots_per_vsic.into(),
            extent_size: self.extent_size.into(),
            window_shift: self.window_shift.into(),
            drives: self.drives.into(),
            total_extents: self.total_extents.into(),
            free_extents: self.free_extents.into(),
            vsa_count: self.vsa_count.into(),
            cache_mode: self.cache_mode.into(),
            metadata_generation: self.metadata_generation.into(),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = IdentifyWire::read_exact(b)?;
        Ok(Self {
            abi_version: w.abi_version.get(),
            vsics: w.vsics.get(),
            queues_per_vsic: w.queues_per_vsic.get(),
            slots_per_vsic: w.slots_per_vsic.get(),
            extent_size: w.extent_size.get(),
            window_shift: w.window_shift.get(),
            drives: w.drives.get(),
            total_extents: w.total_extents.get(),
            free_extents: w.free_extents.get(),
            vsa_count: w.vsa_count.get(),
            cache_mode: w.cache_mode.get(),
            metadata_generation: w.metadata_generation.get(),
        })
    }
}

/// [`VsaInfo::role`]: an ordinary VSA.
pub const ROLE_NONE: u32 = 0;
/// [`VsaInfo::role`]: the control plane's capability store. Only the PF
/// sets it (VSA_SET_ROLE); at most one VSA of a controller has it.
pub const ROLE_STORE: u32 = 1;

/// Name of a role for listings; `None` for a value this build does not know.
pub fn role_name(role: u32) -> Option<&'static str> {
    match role {
        ROLE_NONE => Some("none"),
        ROLE_STORE => Some("store"),
        _ => None,
    }
}

wire_layout! {
    /// One VSA in a LIST_VSAS reply as it travels (see [`VsaInfo`]).
    pub struct VsaInfoWire(48 bytes) {
        0 => vsa_id: U64,
        8 => size: U64,
        16 => extents: U32,
        20 => stripe: U32,
        24 => live_tokens: U32,
        28 => attachments: U32,
        32 => role: U32,
        36 => reserved: [u8; 12],
    }
}

/// One VSA in a LIST_VSAS reply, decoded ([`VsaInfoWire`], 48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsaInfo {
    pub vsa_id: u64,
    pub size: u64,
    pub extents: u32,
    pub stripe: u32,
    pub live_tokens: u32,
    pub attachments: u32,
    /// [`ROLE_NONE`] or [`ROLE_STORE`] (offset 32; older devices send 0).
    pub role: u32,
}

impl VsaInfo {
    pub const LEN: usize = VsaInfoWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(VsaInfoWire {
            vsa_id: self.vsa_id.into(),
            size: self.size.into(),
            extents: self.extents.into(),
            stripe: self.stripe.into(),
            live_tokens: self.live_tokens.into(),
            attachments: self.attachments.into(),
            role: self.role.into(),
            ..Default::default()
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = VsaInfoWire::read_exact(b)?;
        Ok(Self {
            vsa_id: w.vsa_id.get(),
            size: w.size.get(),
            extents: w.extents.get(),
            stripe: w.stripe.get(),
            live_tokens: w.live_tokens.get(),
            attachments: w.attachments.get(),
            role: w.role.get(),
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

wire_layout! {
    /// One attachment slot inside a [`VsicInfoWire`] (see [`SlotInfo`]).
    pub struct SlotInfoWire(16 bytes) {
        0 => vsa_id: U64,
        8 => token_id: U32,
        12 => flags: U32,
    }
}

/// One attachment slot inside a [`VsicInfo`], decoded ([`SlotInfoWire`],
/// 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotInfo {
    /// 0 when the slot is empty (VSA ids start at 1).
    pub vsa_id: u64,
    pub token_id: u32,
    pub flags: u32,
}

impl SlotInfo {
    pub const LEN: usize = SlotInfoWire::LEN;
    pub const FLAG_READ_ONLY: u32 = 1;

    pub fn is_attached(&self) -> bool {
        self.vsa_id != 0
    }
    pub fn read_only(&self) -> bool {
        self.flags & Self::FLAG_READ_ONLY != 0
    }
}

wire_layout! {
    /// One VSIC in a LIST_VSICS reply as it travels (see [`VsicInfo`]).
    pub struct VsicInfoWire(288 bytes) {
        0 => vsic: U32,
        4 => enabled: U32,
        8 => queues: U32,
        12 => reserved: U32,
        16 => qos_bytes_per_sec: U64,
        24 => qos_iops: U64,
        32 => slots: [SlotInfoWire; SLOTS_PER_VSIC as usize],
    }
}

/// One VSIC in a LIST_VSICS reply, decoded ([`VsicInfoWire`],
/// 32 + 16 × 16 = 288 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsicInfo {
    pub vsic: u32,
    pub enabled: bool,
    pub queues: u32,
    pub qos_bytes_per_sec: u64,
    pub qos_iops: u64,
    pub slots: [SlotInfo; SLOTS_PER_VSIC as usize],
}

impl VsicInfo {
    pub const LEN: usize = VsicInfoWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(VsicInfoWire {
            vsic: self.vsic.into(),
            enabled: u32::from(self.enabled).into(),
            queues: self.queues.into(),
            reserved: U32::ZERO,
            qos_bytes_per_sec: self.qos_bytes_per_sec.into(),
            qos_iops: self.qos_iops.into(),
            slots: self.slots.map(|s| SlotInfoWire {
                vsa_id: s.vsa_id.into(),
                token_id: s.token_id.into(),
                flags: s.flags.into(),
            }),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = VsicInfoWire::read_exact(b)?;
        Ok(Self {
            vsic: w.vsic.get(),
            enabled: w.enabled.get() != 0,
            queues: w.queues.get(),
            qos_bytes_per_sec: w.qos_bytes_per_sec.get(),
            qos_iops: w.qos_iops.get(),
            slots: w.slots.map(|s| SlotInfo {
                vsa_id: s.vsa_id.get(),
                token_id: s.token_id.get(),
                flags: s.flags.get(),
            }),
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

wire_layout! {
    /// Counters of one VSIC as they travel (see [`VsicStats`]).
    pub struct VsicStatsWire(88 bytes) {
        0 => vsic: U32,
        4 => queue_count: U32,
        8 => reads: U64,
        16 => writes: U64,
        24 => flushes: U64,
        32 => discards: U64,
        40 => write_zeroes: U64,
        48 => bytes_read: U64,
        56 => bytes_written: U64,
        64 => errors: U64,
        72 => protection_violations: U64,
        80 => qos_delayed: U64,
    }
}

/// Counters of one VSIC, decoded ([`VsicStatsWire`], 88 bytes), followed in
/// a STATS reply by `queue_count` [`QueueStats`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VsicStats {
    pub vsic: u32,
    pub queue_count: u32,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
    pub protection_violations: u64,
    pub qos_delayed: u64,
}

impl VsicStats {
    pub const LEN: usize = VsicStatsWire::LEN;

    /// These counters and their queues' as one JSON object (`queue_count`
    /// is the length of `queues`).
    #[cfg(feature = "json")]
    pub fn to_json(&self, queues: &[QueueStats]) -> serde_json::Value {
        serde_json::json!({
            "vsic": self.vsic,
            "reads": self.reads,
            "writes": self.writes,
            "flushes": self.flushes,
            "discards": self.discards,
            "write_zeroes": self.write_zeroes,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "errors": self.errors,
            "protection_violations": self.protection_violations,
            "qos_delayed": self.qos_delayed,
            "queues": queues.iter().map(|q| serde_json::json!({
                "queue": q.queue,
                "requests": q.requests,
                "bytes_read": q.bytes_read,
                "bytes_written": q.bytes_written,
                "errors": q.errors,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(VsicStatsWire {
            vsic: self.vsic.into(),
            queue_count: self.queue_count.into(),
            reads: self.reads.into(),
            writes: self.writes.into(),
            flushes: self.flushes.into(),
            discards: self.discards.into(),
            write_zeroes: self.write_zeroes.into(),
            bytes_read: self.bytes_read.into(),
            bytes_written: self.bytes_written.into(),
            errors: self.errors.into(),
            protection_violations: self.protection_violations.into(),
            qos_delayed: self.qos_delayed.into(),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = VsicStatsWire::read_exact(b)?;
        Ok(Self {
            vsic: w.vsic.get(),
            queue_count: w.queue_count.get(),
            reads: w.reads.get(),
            writes: w.writes.get(),
            flushes: w.flushes.get(),
            discards: w.discards.get(),
            write_zeroes: w.write_zeroes.get(),
            bytes_read: w.bytes_read.get(),
            bytes_written: w.bytes_written.get(),
            errors: w.errors.get(),
            protection_violations: w.protection_violations.get(),
            qos_delayed: w.qos_delayed.get(),
        })
    }
}

wire_layout! {
    /// Counters of one queue as they travel (see [`QueueStats`]).
    pub struct QueueStatsWire(40 bytes) {
        0 => queue: U32,
        4 => reserved: U32,
        8 => requests: U64,
        16 => bytes_read: U64,
        24 => bytes_written: U64,
        32 => errors: U64,
    }
}

/// Counters of one queue of a VSIC, decoded ([`QueueStatsWire`], 40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub queue: u32,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

impl QueueStats {
    pub const LEN: usize = QueueStatsWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(QueueStatsWire {
            queue: self.queue.into(),
            reserved: U32::ZERO,
            requests: self.requests.into(),
            bytes_read: self.bytes_read.into(),
            bytes_written: self.bytes_written.into(),
            errors: self.errors.into(),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = QueueStatsWire::read_exact(b)?;
        Ok(Self {
            queue: w.queue.get(),
            requests: w.requests.get(),
            bytes_read: w.bytes_read.get(),
            bytes_written: w.bytes_written.get(),
            errors: w.errors.get(),
        })
    }
}

/// Encodes a STATS reply: each VSIC's record followed by its queues'.
pub fn encode_stats(entries: &[(VsicStats, Vec<QueueStats>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (v, qs) in entries {
        let mut v = *v;
        v.queue_count = qs.len() as u32;
        out.extend_from_slice(&v.encode());
        for q in qs {
            out.extend_from_slice(&q.encode());
        }
    }
    out
}

/// Decodes a STATS reply.
pub fn decode_stats(mut b: &[u8]) -> Result<Vec<(VsicStats, Vec<QueueStats>)>, DecodeError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        at_least(b, VsicStats::LEN)?;
        let v = VsicStats::decode(&b[..VsicStats::LEN])?;
        b = &b[VsicStats::LEN..];
        let need = (v.queue_count as usize)
            .checked_mul(QueueStats::LEN)
            .ok_or(DecodeError::BadField {
                field: "queue_count",
                value: v.queue_count as u64,
            })?;
        at_least(b, need)?;
        let qs = records(&b[..need], QueueStats::LEN)?
            .map(QueueStats::decode)
            .collect::<Result<_, _>>()?;
        b = &b[need..];
        out.push((v, qs));
    }
    Ok(out)
}

wire_layout! {
    /// One run of an EXTENT_MAP reply as it travels (see [`ExtentRun`]).
    pub struct ExtentRunWire(16 bytes) {
        0 => drive: U32,
        4 => count: U32,
        8 => first_extent: U64,
    }
}

/// A run of physically consecutive extents on one drive, in the VSA's
/// logical order, decoded ([`ExtentRunWire`], 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentRun {
    pub drive: u32,
    pub count: u32,
    pub first_extent: u64,
}

impl ExtentRun {
    pub const LEN: usize = ExtentRunWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(ExtentRunWire {
            drive: self.drive.into(),
            count: self.count.into(),
            first_extent: self.first_extent.into(),
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = ExtentRunWire::read_exact(b)?;
        Ok(Self {
            drive: w.drive.get(),
            count: w.count.get(),
            first_extent: w.first_extent.get(),
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

wire_layout! {
    /// One DMA window of a DMA_WINDOW_LIST reply as it travels (see
    /// [`DmaWindow`]).
    pub struct DmaWindowWire(24 bytes) {
        0 => start: U64,
        8 => len: U64,
        16 => flags: U32,
        20 => reserved: U32,
    }
}

/// A guest-physical range a VSIC may address in enforced DMA mode,
/// decoded ([`DmaWindowWire`], 24 bytes). `flags` holds
/// [`crate::admin::FLAG_DMA_READ`] and/or [`crate::admin::FLAG_DMA_WRITE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWindow {
    pub start: u64,
    pub len: u64,
    pub flags: u32,
}

impl DmaWindow {
    pub const LEN: usize = DmaWindowWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(DmaWindowWire {
            start: self.start.into(),
            len: self.len.into(),
            flags: self.flags.into(),
            reserved: U32::ZERO,
        })
    }

    /// The reserved field is ignored: a newer device may use it.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = DmaWindowWire::read_exact(b)?;
        Ok(Self {
            start: w.start.get(),
            len: w.len.get(),
            flags: w.flags.get(),
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_round_trip() {
        let i = Identify {
            abi_version: 1,
            vsics: 4,
            queues_per_vsic: 4,
            slots_per_vsic: SLOTS_PER_VSIC,
            extent_size: 1 << 20,
            window_shift: 40,
            drives: 2,
            total_extents: 1000,
            free_extents: 900,
            vsa_count: 3,
            cache_mode: CacheMode::WriteThrough as u32,
            metadata_generation: 17,
        };
        assert_eq!(Identify::decode(&i.encode()).unwrap(), i);
        assert!(Identify::decode(&[0; 63]).is_err());
    }

    #[test]
    fn vsic_info_round_trip() {
        let mut slots = [SlotInfo::default(); SLOTS_PER_VSIC as usize];
        slots[3] = SlotInfo {
            vsa_id: 9,
            token_id: 2,
            flags: SlotInfo::FLAG_READ_ONLY,
        };
        let v = VsicInfo {
            vsic: 1,
            enabled: true,
            queues: 4,
            qos_bytes_per_sec: 5,
            qos_iops: 6,
            slots,
        };
        let two = [v.encode(), v.encode()].concat();
        let back = VsicInfo::decode_array(&two).unwrap();
        assert_eq!(back, vec![v, v]);
        assert!(back[0].slots[3].read_only() && back[0].slots[3].is_attached());
        assert!(VsicInfo::decode_array(&two[..two.len() - 1]).is_err());
    }

    #[test]
    fn vsa_info_and_extent_runs_round_trip() {
        let v = VsaInfo {
            vsa_id: 1,
            size: 2 << 20,
            extents: 2,
            stripe: 2,
            live_tokens: 1,
            attachments: 0,
            role: ROLE_STORE,
        };
        assert_eq!(VsaInfo::decode_array(&v.encode()).unwrap(), vec![v]);
        assert_eq!(
            u32::from_le_bytes(v.encode()[32..36].try_into().unwrap()),
            ROLE_STORE
        );
        assert_eq!(
            (role_name(ROLE_NONE), role_name(ROLE_STORE), role_name(9)),
            (Some("none"), Some("store"), None)
        );
        let r = ExtentRun {
            drive: 1,
            count: 3,
            first_extent: 77,
        };
        assert_eq!(ExtentRun::decode_array(&r.encode()).unwrap(), vec![r]);
        assert!(ExtentRun::decode_array(&[0u8; 17]).is_err());
    }

    #[test]
    fn stats_round_trip_and_truncation() {
        let v = VsicStats {
            vsic: 2,
            reads: 10,
            protection_violations: 1,
            ..Default::default()
        };
        let qs = vec![
            QueueStats {
                queue: 0,
                requests: 4,
                ..Default::default()
            },
            QueueStats {
                queue: 1,
                ..Default::default()
            },
        ];
        let enc = encode_stats(&[(v, qs.clone())]);
        let dec = decode_stats(&enc).unwrap();
        assert_eq!(dec.len(), 1);
        assert_eq!(dec[0].0.queue_count, 2);
        assert_eq!(dec[0].1, qs);
        assert!(decode_stats(&enc[..enc.len() - 1]).is_err());
        let mut huge = v;
        huge.queue_count = u32::MAX;
        assert!(decode_stats(&huge.encode()).is_err());
    }
}
