//! The on-device layout of vsic-kv, declared once (docs/vsic-kv.md
//! describes the same bytes).
//!
//! ```text
//! block 0, 1        superblock copies, written alternately (highest valid seq wins)
//! region 0          blocks [2, 2 + R)
//! region 1          blocks [2 + R, 2 + 2R)      R = (capacity_blocks - 2) / 2
//! ```
//!
//! The active region holds the log: records from the region's first block
//! on, each starting on a block boundary and padded to whole blocks.
//! All integers are little-endian; checksums are CRC-32C.

/// Every record and superblock is aligned to, and a multiple of, this.
pub const BLOCK: usize = 4096;
pub const SUPERBLOCKS: u64 = 2;
pub const SB_MAGIC: [u8; 8] = *b"VSICKV01";
pub const SB_LEN: usize = 56;
pub const REC_MAGIC: [u8; 4] = *b"KVR1";
pub const REC_HEADER_LEN: usize = 48;
/// Per op: type (1), key length (4), value length (4).
pub const OP_HEADER_LEN: usize = 9;

/// The superblock: which region holds the log and with which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped on every superblock write; the valid copy with the highest
    /// seq is current.
    pub seq: u64,
    /// Bumped at every start: records of an earlier epoch can never follow
    /// records of a later one, so stale records past the end of the log
    /// (written, never acknowledged, before a crash) are never replayed.
    pub epoch: u64,
    /// 0 or 1: the region holding the log.
    pub active: u8,
    /// Generation of the active region's records; every compaction writes
    /// the other region with generation + 1, so older contents of a region
    /// are never mistaken for its records.
    pub generation: u64,
    pub region_blocks: u64,
}

impl Superblock {
    /// Bytes 0..8 magic, 8..16 seq, 16..24 epoch, 24 active, 25..32 zero,
    /// 32..40 generation, 40..48 region_blocks, 48..52 block size,
    /// 52..56 CRC-32C of bytes 0..52; the rest of the block zero.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(&SB_MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24] = self.active;
        b[32..40].copy_from_slice(&self.generation.to_le_bytes());
        b[40..48].copy_from_slice(&self.region_blocks.to_le_bytes());
        b[48..52].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        let crc = crc32c::crc32c(&b[0..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SB_LEN || b[0..8] != SB_MAGIC {
            return None;
        }
        if crc32c::crc32c(&b[0..52]) != u32_at(b, 52) {
            return None;
        }
        let sb = Superblock {
            seq: u64_at(b, 8),
            epoch: u64_at(b, 16),
            active: b[24],
            generation: u64_at(b, 32),
            region_blocks: u64_at(b, 40),
        };
        (sb.active <= 1 && u32_at(b, 48) == BLOCK as u32 && sb.region_blocks > 0).then_some(sb)
    }

    /// First block of region `r`.
    pub fn region_start(&self, r: u8) -> u64 {
        SUPERBLOCKS + u64::from(r) * self.region_blocks
    }
}

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOp {
    Set(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    /// FLUSHALL: every key before it is gone.
    Clear,
}

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_CLEAR: u8 = 3;

impl LogOp {
    fn encoded_len(&self) -> usize {
        OP_HEADER_LEN
            + match self {
                LogOp::Set(k, v) => k.len() + v.len(),
                LogOp::Del(k) => k.len(),
                LogOp::Clear => 0,
            }
    }
}

/// The fixed part of a record, in its first block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub generation: u64,
    pub epoch: u64,
    pub lsn: u64,
    pub blocks: u32,
    pub payload_len: u32,
    pub ops: u32,
}

/// Bytes a record of `ops` occupies before padding.
pub fn record_len(ops: &[LogOp]) -> usize {
    REC_HEADER_LEN + ops.iter().map(LogOp::encoded_len).sum::<usize>()
}

/// Blocks a record of `ops` occupies.
pub fn record_blocks(ops: &[LogOp]) -> usize {
    record_len(ops).div_ceil(BLOCK)
}

/// Writes one record into `out` (which must be `record_blocks(ops)`
/// blocks long; its padding is zeroed).
///
/// Header: 0..4 magic "KVR1", 4..8 CRC-32C of bytes 8..48 and the payload,
/// 8..16 generation, 16..24 epoch, 24..32 lsn, 32..36 blocks, 36..40
/// payload length, 40..44 op count, 44..48 zero. Payload: per op, type
/// (1 set, 2 del, 3 clear), key length u32, value length u32, key, value.
pub fn encode_record(ops: &[LogOp], generation: u64, epoch: u64, lsn: u64, out: &mut [u8]) {
    let len = record_len(ops);
    let blocks = len.div_ceil(BLOCK);
    assert_eq!(out.len(), blocks * BLOCK, "record buffer size");
    out[0..4].copy_from_slice(&REC_MAGIC);
    out[8..16].copy_from_slice(&generation.to_le_bytes());
    out[16..24].copy_from_slice(&epoch.to_le_bytes());
    out[24..32].copy_from_slice(&lsn.to_le_bytes());
    out[32..36].copy_from_slice(&(blocks as u32).to_le_bytes());
    out[36..40].copy_from_slice(&((len - REC_HEADER_LEN) as u32).to_le_bytes());
    out[40..44].copy_from_slice(&(ops.len() as u32).to_le_bytes());
    out[44..48].fill(0);
    let mut p = REC_HEADER_LEN;
    for op in ops {
        let (t, k, v): (u8, &[u8], &[u8]) = match op {
            LogOp::Set(k, v) => (OP_SET, k, v),
            LogOp::Del(k) => (OP_DEL, k, &[]),
            LogOp::Clear => (OP_CLEAR, &[], &[]),
        };
        out[p] = t;
        out[p + 1..p + 5].copy_from_slice(&(k.len() as u32).to_le_bytes());
        out[p + 5..p + 9].copy_from_slice(&(v.len() as u32).to_le_bytes());
        p += OP_HEADER_LEN;
        out[p..p + k.len()].copy_from_slice(k);
        p += k.len();
        out[p..p + v.len()].copy_from_slice(v);
        p += v.len();
    }
    out[len..].fill(0);
    let crc = crc32c::crc32c(&out[8..len]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses the header in a record's first block; None if it is not one.
pub fn decode_header(b: &[u8]) -> Option<RecordHeader> {
    if b.len() < REC_HEADER_LEN || b[0..4] != REC_MAGIC {
        return None;
    }
    let h = RecordHeader {
        crc: u32_at(b, 4),
        generation: u64_at(b, 8),
        epoch: u64_at(b, 16),
        lsn: u64_at(b, 24),
        blocks: u32_at(b, 32),
        payload_len: u32_at(b, 36),
        ops: u32_at(b, 40),
    };
    let len = REC_HEADER_LEN as u64 + u64::from(h.payload_len);
    (h.blocks > 0 && len.div_ceil(BLOCK as u64) == u64::from(h.blocks)).then_some(h)
}

/// Checks a whole record (`h.blocks` blocks) and returns its ops; None if
/// the checksum or the payload does not hold up.
pub fn decode_record(h: &RecordHeader, b: &[u8]) -> Option<Vec<LogOp>> {
    let len = REC_HEADER_LEN + h.payload_len as usize;
    if b.len() < len || crc32c::crc32c(&b[8..len]) != h.crc {
        return None;
    }
    let mut ops = Vec::with_capacity(h.ops as usize);
    let mut p = REC_HEADER_LEN;
    for _ in 0..h.ops {
        if p + OP_HEADER_LEN > len {
            return None;
        }
        let t = b[p];
        let kl = u32_at(b, p + 1) as usize;
        let vl = u32_at(b, p + 5) as usize;
        p += OP_HEADER_LEN;
        if p.checked_add(kl)?.checked_add(vl)? > len {
            return None;
        }
        let k = b[p..p + kl].to_vec();
        let v = b[p + kl..p + kl + vl].to_vec();
        p += kl + vl;
        ops.push(match t {
            OP_SET => LogOp::Set(k, v),
            OP_DEL => LogOp::Del(k),
            OP_CLEAR => LogOp::Clear,
            _ => return None,
        });
    }
    (p == len).then_some(ops)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = Superblock {
            seq: 7,
            epoch: 3,
            active: 1,
            generation: 9,
            region_blocks: 1000,
        };
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b), Some(sb));
        assert_eq!(sb.region_start(1), 1002);
        b[17] ^= 1;
        assert_eq!(Superblock::decode(&b), None);
        assert_eq!(Superblock::decode(&[0u8; BLOCK]), None);
    }

    #[test]
    fn multi_block_record_round_trips_and_any_flipped_byte_is_caught() {
        let ops = vec![
            LogOp::Set(b"big".to_vec(), vec![0x5a; 10_000]),
            LogOp::Del(b"gone".to_vec()),
            LogOp::Clear,
            LogOp::Set(b"k".to_vec(), b"v".to_vec()),
        ];
        let blocks = record_blocks(&ops);
        assert_eq!(blocks, 3);
        let mut b = vec![0xffu8; blocks * BLOCK];
        encode_record(&ops, 4, 2, 17, &mut b);
        let h = decode_header(&b).expect("header");
        assert_eq!((h.generation, h.epoch, h.lsn, h.blocks), (4, 2, 17, 3));
        assert_eq!(decode_record(&h, &b), Some(ops.clone()));
        // A torn write: the last block still holds old bytes.
        for at in [5, 100, BLOCK + 3, 2 * BLOCK + 10] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            let ok = decode_header(&bad).and_then(|h| decode_record(&h, &bad));
            assert_eq!(ok, None, "flip at {at}");
        }
    }
}
