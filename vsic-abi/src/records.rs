//! Fixed-size records returned as admin payloads (identify, list, stats,
//! extent map). Arrays are plain concatenations of records.

use crate::wire::{at_least, exact, get_u32, get_u64, put_u32, put_u64, records};
use crate::window::SLOTS_PER_VSIC;
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

/// Reply to IDENTIFY (64 bytes).
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
    pub const LEN: usize = 64;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u32(&mut b, 0, self.abi_version);
        put_u32(&mut b, 4, self.vsics);
        put_u32(&mut b, 8, self.queues_per_vsic);
        put_u32(&mut b, 12, self.slots_per_vsic);
        put_u64(&mut b, 16, self.extent_size);
        put_u32(&mut b, 24, self.window_shift);
        put_u32(&mut b, 28, self.drives);
        put_u64(&mut b, 32, self.total_extents);
        put_u64(&mut b, 40, self.free_extents);
        put_u32(&mut b, 48, self.vsa_count);
        put_u32(&mut b, 52, self.cache_mode);
        put_u64(&mut b, 56, self.metadata_generation);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        Ok(Self {
            abi_version: get_u32(b, 0),
            vsics: get_u32(b, 4),
            queues_per_vsic: get_u32(b, 8),
            slots_per_vsic: get_u32(b, 12),
            extent_size: get_u64(b, 16),
            window_shift: get_u32(b, 24),
            drives: get_u32(b, 28),
            total_extents: get_u64(b, 32),
            free_extents: get_u64(b, 40),
            vsa_count: get_u32(b, 48),
            cache_mode: get_u32(b, 52),
            metadata_generation: get_u64(b, 56),
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

/// One VSA in a LIST_VSAS reply (48 bytes).
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
    pub const LEN: usize = 48;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u64(&mut b, 0, self.vsa_id);
        put_u64(&mut b, 8, self.size);
        put_u32(&mut b, 16, self.extents);
        put_u32(&mut b, 20, self.stripe);
        put_u32(&mut b, 24, self.live_tokens);
        put_u32(&mut b, 28, self.attachments);
        put_u32(&mut b, 32, self.role);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        Ok(Self {
            vsa_id: get_u64(b, 0),
            size: get_u64(b, 8),
            extents: get_u32(b, 16),
            stripe: get_u32(b, 20),
            live_tokens: get_u32(b, 24),
            attachments: get_u32(b, 28),
            role: get_u32(b, 32),
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

/// One attachment slot inside a [`VsicInfo`] (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotInfo {
    /// 0 when the slot is empty (VSA ids start at 1).
    pub vsa_id: u64,
    pub token_id: u32,
    pub flags: u32,
}

impl SlotInfo {
    pub const LEN: usize = 16;
    pub const FLAG_READ_ONLY: u32 = 1;

    pub fn is_attached(&self) -> bool {
        self.vsa_id != 0
    }
    pub fn read_only(&self) -> bool {
        self.flags & Self::FLAG_READ_ONLY != 0
    }
}

/// One VSIC in a LIST_VSICS reply (32 + 16 × 16 = 288 bytes).
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
    pub const LEN: usize = 32 + SlotInfo::LEN * SLOTS_PER_VSIC as usize;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u32(&mut b, 0, self.vsic);
        put_u32(&mut b, 4, self.enabled as u32);
        put_u32(&mut b, 8, self.queues);
        put_u64(&mut b, 16, self.qos_bytes_per_sec);
        put_u64(&mut b, 24, self.qos_iops);
        for (i, s) in self.slots.iter().enumerate() {
            let o = 32 + i * SlotInfo::LEN;
            put_u64(&mut b, o, s.vsa_id);
            put_u32(&mut b, o + 8, s.token_id);
            put_u32(&mut b, o + 12, s.flags);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        let mut slots = [SlotInfo::default(); SLOTS_PER_VSIC as usize];
        for (i, s) in slots.iter_mut().enumerate() {
            let o = 32 + i * SlotInfo::LEN;
            *s = SlotInfo { vsa_id: get_u64(b, o), token_id: get_u32(b, o + 8), flags: get_u32(b, o + 12) };
        }
        Ok(Self {
            vsic: get_u32(b, 0),
            enabled: get_u32(b, 4) != 0,
            queues: get_u32(b, 8),
            qos_bytes_per_sec: get_u64(b, 16),
            qos_iops: get_u64(b, 24),
            slots,
        })
    }

    pub fn decode_array(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        records(b, Self::LEN)?.map(Self::decode).collect()
    }
}

/// Counters of one VSIC (8 + 10 × 8 = 88 bytes), followed in a STATS reply
/// by `queue_count` [`QueueStats`] records.
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
    pub const LEN: usize = 88;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u32(&mut b, 0, self.vsic);
        put_u32(&mut b, 4, self.queue_count);
        let c = [
            self.reads,
            self.writes,
            self.flushes,
            self.discards,
            self.write_zeroes,
            self.bytes_read,
            self.bytes_written,
            self.errors,
            self.protection_violations,
            self.qos_delayed,
        ];
        for (i, v) in c.iter().enumerate() {
            put_u64(&mut b, 8 + 8 * i, *v);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        let c = |i: usize| get_u64(b, 8 + 8 * i);
        Ok(Self {
            vsic: get_u32(b, 0),
            queue_count: get_u32(b, 4),
            reads: c(0),
            writes: c(1),
            flushes: c(2),
            discards: c(3),
            write_zeroes: c(4),
            bytes_read: c(5),
            bytes_written: c(6),
            errors: c(7),
            protection_violations: c(8),
            qos_delayed: c(9),
        })
    }
}

/// Counters of one queue of a VSIC (40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub queue: u32,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

impl QueueStats {
    pub const LEN: usize = 40;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u32(&mut b, 0, self.queue);
        put_u64(&mut b, 8, self.requests);
        put_u64(&mut b, 16, self.bytes_read);
        put_u64(&mut b, 24, self.bytes_written);
        put_u64(&mut b, 32, self.errors);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        Ok(Self {
            queue: get_u32(b, 0),
            requests: get_u64(b, 8),
            bytes_read: get_u64(b, 16),
            bytes_written: get_u64(b, 24),
            errors: get_u64(b, 32),
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
            .ok_or(DecodeError::BadField { field: "queue_count", value: v.queue_count as u64 })?;
        at_least(b, need)?;
        let qs = records(&b[..need], QueueStats::LEN)?.map(QueueStats::decode).collect::<Result<_, _>>()?;
        b = &b[need..];
        out.push((v, qs));
    }
    Ok(out)
}

/// A run of physically consecutive extents on one drive, in the VSA's
/// logical order (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentRun {
    pub drive: u32,
    pub count: u32,
    pub first_extent: u64,
}

impl ExtentRun {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        put_u32(&mut b, 0, self.drive);
        put_u32(&mut b, 4, self.count);
        put_u64(&mut b, 8, self.first_extent);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        Ok(Self { drive: get_u32(b, 0), count: get_u32(b, 4), first_extent: get_u64(b, 8) })
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
        slots[3] = SlotInfo { vsa_id: 9, token_id: 2, flags: SlotInfo::FLAG_READ_ONLY };
        let v = VsicInfo { vsic: 1, enabled: true, queues: 4, qos_bytes_per_sec: 5, qos_iops: 6, slots };
        let two = [v.encode(), v.encode()].concat();
        let back = VsicInfo::decode_array(&two).unwrap();
        assert_eq!(back, vec![v, v]);
        assert!(back[0].slots[3].read_only() && back[0].slots[3].is_attached());
        assert!(VsicInfo::decode_array(&two[..two.len() - 1]).is_err());
    }

    #[test]
    fn vsa_info_and_extent_runs_round_trip() {
        let v = VsaInfo { vsa_id: 1, size: 2 << 20, extents: 2, stripe: 2, live_tokens: 1, attachments: 0, role: ROLE_STORE };
        assert_eq!(VsaInfo::decode_array(&v.encode()).unwrap(), vec![v]);
        assert_eq!(u32::from_le_bytes(v.encode()[32..36].try_into().unwrap()), ROLE_STORE);
        assert_eq!((role_name(ROLE_NONE), role_name(ROLE_STORE), role_name(9)), (Some("none"), Some("store"), None));
        let r = ExtentRun { drive: 1, count: 3, first_extent: 77 };
        assert_eq!(ExtentRun::decode_array(&r.encode()).unwrap(), vec![r]);
        assert!(ExtentRun::decode_array(&[0u8; 17]).is_err());
    }

    #[test]
    fn stats_round_trip_and_truncation() {
        let v = VsicStats { vsic: 2, reads: 10, protection_violations: 1, ..Default::default() };
        let qs = vec![QueueStats { queue: 0, requests: 4, ..Default::default() }, QueueStats { queue: 1, ..Default::default() }];
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
