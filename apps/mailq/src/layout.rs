//! The on-device layout of vsic-mailq, declared once (docs/vsic-mailq.md
//! describes the same bytes).
//!
//! ```text
//! block 0            superblock
//! blocks 1..4        unused (regions start 16 KiB in)
//! class-0 region     n0 slots of 1 KiB   (4 to a block)
//! class-1 region     n1 slots of 4 KiB
//! class-2 region     n2 slots of 16 KiB
//! extent region      ext_blocks blocks of 4 KiB: payloads of larger messages
//! ```
//!
//! Every slot starts with a 64-byte header; an occupied slot's header and
//! payload are both checksummed (CRC-32C), so a torn or stale slot is never
//! taken for a message. All integers are little-endian.

/// Device I/O unit: every write is whole, aligned blocks of this size.
pub const BLOCK: usize = 4096;
pub const SB_MAGIC: [u8; 8] = *b"VSICMQ01";
pub const SB_LEN: usize = 92;
pub const HDR_MAGIC: [u8; 4] = *b"MQM1";
pub const HDR_LEN: usize = 64;
/// Slot sizes of the three classes.
pub const CLASS_SIZES: [usize; 3] = [1024, 4096, 16384];
/// The regions start here (16 KiB, so every slot is aligned to its size).
pub const FIRST_REGION_BLOCK: u64 = 4;

/// How an occupied slot holds its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The payload follows the header in the slot.
    Inline = 1,
    /// The payload is in the extent region at `extent_off`.
    Extent = 2,
}

/// The superblock: where the regions are, and the format's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Chosen at format time; every slot header carries it, so headers left
    /// by an earlier format of the device are never recovered.
    pub nonce: u64,
    /// Slots per class.
    pub slots: [u64; 3],
    /// Byte offset of each class region.
    pub region: [u64; 3],
    /// Byte offset and block count of the extent region.
    pub ext_start: u64,
    pub ext_blocks: u64,
    /// Bumped (and written durably) at every open: message ids are
    /// `epoch << 40 | n`, so an id is never given out twice, not even
    /// after its message was deleted.
    pub epoch: u64,
}

impl Superblock {
    /// Divides a device of `capacity` bytes: a quarter (whole 16 KiB
    /// units) to each class region and to the extent region.
    pub fn for_capacity(capacity: u64, nonce: u64) -> Option<Superblock> {
        let blocks = capacity / BLOCK as u64;
        let quarter = blocks.checked_sub(FIRST_REGION_BLOCK)? / 4 / 4 * 4;
        if quarter < 4 {
            return None;
        }
        let bytes = quarter * BLOCK as u64;
        let mut region = [0u64; 3];
        let mut slots = [0u64; 3];
        let mut at = FIRST_REGION_BLOCK * BLOCK as u64;
        for c in 0..3 {
            region[c] = at;
            slots[c] = bytes / CLASS_SIZES[c] as u64;
            at += bytes;
        }
        Some(Superblock {
            nonce,
            slots,
            region,
            ext_start: at,
            ext_blocks: quarter,
            epoch: 0,
        })
    }

    /// Bytes 0..8 magic, 8..16 nonce, 16..40 slots per class, 40..64
    /// region offsets, 64..72 extent start, 72..80 extent blocks, 80..88
    /// epoch, 88..92 CRC-32C of bytes 0..88; the rest of the block zero.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(&SB_MAGIC);
        put_u64(&mut b, 8, self.nonce);
        for c in 0..3 {
            put_u64(&mut b, 16 + 8 * c, self.slots[c]);
            put_u64(&mut b, 40 + 8 * c, self.region[c]);
        }
        put_u64(&mut b, 64, self.ext_start);
        put_u64(&mut b, 72, self.ext_blocks);
        put_u64(&mut b, 80, self.epoch);
        let crc = crc32c::crc32c(&b[0..88]);
        b[88..92].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The superblock in `b`, if there is an intact one (magic and CRC).
    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SB_LEN || b[0..8] != SB_MAGIC || crc32c::crc32c(&b[0..88]) != u32_at(b, 88) {
            return None;
        }
        let mut sb = Superblock {
            nonce: u64_at(b, 8),
            slots: [0; 3],
            region: [0; 3],
            ext_start: u64_at(b, 64),
            ext_blocks: u64_at(b, 72),
            epoch: u64_at(b, 80),
        };
        for c in 0..3 {
            sb.slots[c] = u64_at(b, 16 + 8 * c);
            sb.region[c] = u64_at(b, 40 + 8 * c);
        }
        Some(sb)
    }

    /// Bytes of device the layout needs (None if it is not a layout this
    /// code writes: regions out of order, misaligned or overflowing).
    pub fn needs(&self) -> Option<u64> {
        let mut at = FIRST_REGION_BLOCK * BLOCK as u64;
        for (c, &size) in CLASS_SIZES.iter().enumerate() {
            if self.region[c] < at || !self.region[c].is_multiple_of(size as u64) {
                return None;
            }
            at = self.slots[c]
                .checked_mul(size as u64)?
                .checked_add(self.region[c])?;
        }
        if self.ext_start < at || !self.ext_start.is_multiple_of(BLOCK as u64) {
            return None;
        }
        self.ext_blocks
            .checked_mul(BLOCK as u64)?
            .checked_add(self.ext_start)
    }

    /// Byte offset of slot `slot` of class `class`.
    pub fn slot_offset(&self, class: usize, slot: u64) -> u64 {
        self.region[class] + slot * CLASS_SIZES[class] as u64
    }

    pub fn ext_end(&self) -> u64 {
        self.ext_start + self.ext_blocks * BLOCK as u64
    }
}

/// An occupied slot's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHeader {
    pub class: u8,
    pub kind: Kind,
    pub nonce: u64,
    pub id: u64,
    /// Length of the envelope at the start of the payload.
    pub env_len: u32,
    /// CRC-32C of the payload (envelope then message).
    pub data_crc: u32,
    /// Length of the message (after the envelope).
    pub body_len: u64,
    /// Extent messages: byte offset of the payload on the device.
    pub extent_off: u64,
}

impl SlotHeader {
    pub fn payload_len(&self) -> u64 {
        u64::from(self.env_len) + self.body_len
    }

    /// Bytes 0..4 magic, 4 class, 5 kind, 6..8 zero, 8..16 nonce, 16..24
    /// id, 24..28 env_len, 28..32 data_crc, 32..40 body_len, 40..48
    /// extent_off, 48..60 zero, 60..64 CRC-32C of bytes 0..60.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..4].copy_from_slice(&HDR_MAGIC);
        b[4] = self.class;
        b[5] = self.kind as u8;
        put_u64(&mut b, 8, self.nonce);
        put_u64(&mut b, 16, self.id);
        b[24..28].copy_from_slice(&self.env_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.data_crc.to_le_bytes());
        put_u64(&mut b, 32, self.body_len);
        put_u64(&mut b, 40, self.extent_off);
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header at the start of `b`, if there is an intact one.
    pub fn decode(b: &[u8]) -> Option<SlotHeader> {
        if b.len() < HDR_LEN || b[0..4] != HDR_MAGIC || crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return None;
        }
        let kind = match b[5] {
            1 => Kind::Inline,
            2 => Kind::Extent,
            _ => return None,
        };
        Some(SlotHeader {
            class: b[4],
            kind,
            nonce: u64_at(b, 8),
            id: u64_at(b, 16),
            env_len: u32_at(b, 24),
            data_crc: u32_at(b, 28),
            body_len: u64_at(b, 32),
            extent_off: u64_at(b, 40),
        })
    }
}

/// The envelope: reverse path, then each recipient, each as a 16-bit
/// length and its bytes, after a 16-bit recipient count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub from: String,
    pub to: Vec<String>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        put_str(&mut v, &self.from);
        v.extend_from_slice(&(self.to.len() as u16).to_le_bytes());
        for t in &self.to {
            put_str(&mut v, t);
        }
        v
    }

    pub fn decode(b: &[u8]) -> Option<Envelope> {
        let mut at = 0;
        let from = get_str(b, &mut at)?;
        let n = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?);
        at += 2;
        let mut to = Vec::with_capacity(n.into());
        for _ in 0..n {
            to.push(get_str(b, &mut at)?);
        }
        (at == b.len()).then_some(Envelope { from, to })
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.extend_from_slice(&(b.len() as u16).to_le_bytes());
    v.extend_from_slice(b);
}

fn get_str(b: &[u8], at: &mut usize) -> Option<String> {
    let n = usize::from(u16::from_le_bytes(b.get(*at..*at + 2)?.try_into().ok()?));
    let s = std::str::from_utf8(b.get(*at + 2..*at + 2 + n)?).ok()?;
    *at += 2 + n;
    Some(s.to_string())
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Rounds `n` up to whole blocks.
pub fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> SlotHeader {
        SlotHeader {
            class: 1,
            kind: Kind::Inline,
            nonce: 7,
            id: 42,
            env_len: 10,
            data_crc: 0xdead_beef,
            body_len: 1000,
            extent_off: 0,
        }
    }

    #[test]
    fn superblock_round_trip_and_regions_disjoint() {
        let cap = 64 << 20;
        let sb = Superblock::for_capacity(cap, 99).unwrap();
        assert_eq!(Superblock::decode(&sb.encode()), Some(sb));
        assert!(sb.needs().is_some_and(|n| n <= cap));
        assert_eq!(sb.region[0], 16384);
        for (c, &size) in CLASS_SIZES.iter().enumerate() {
            assert_eq!(sb.region[c] % size as u64, 0);
            let end = sb.slot_offset(c, sb.slots[c]);
            let next = if c < 2 {
                sb.region[c + 1]
            } else {
                sb.ext_start
            };
            assert!(end <= next, "class {c} region overlaps the next");
        }
        assert!(sb.ext_end() <= cap);
        let mut b = sb.encode();
        b[20] ^= 1;
        assert_eq!(Superblock::decode(&b), None);
        let mut overlapping = sb;
        overlapping.region[1] -= 4096;
        assert_eq!(overlapping.needs(), None);
        assert_eq!(Superblock::for_capacity(8 * 4096, 1), None);
    }

    #[test]
    fn header_round_trip_and_any_flipped_bit_rejected() {
        let b = hdr().encode();
        assert_eq!(SlotHeader::decode(&b), Some(hdr()));
        for i in 0..HDR_LEN * 8 {
            let mut t = b;
            t[i / 8] ^= 1 << (i % 8);
            assert_eq!(SlotHeader::decode(&t), None, "bit {i} flipped");
        }
        assert_eq!(SlotHeader::decode(&[0u8; HDR_LEN]), None);
    }

    #[test]
    fn envelope_round_trip_and_truncation_rejected() {
        let e = Envelope {
            from: "a@b.example".into(),
            to: vec!["c@d.example".into(), "e@f.example".into()],
        };
        let b = e.encode();
        assert_eq!(Envelope::decode(&b), Some(e.clone()));
        assert_eq!(Envelope::decode(&b[..b.len() - 1]), None);
        let null_sender = Envelope {
            from: String::new(),
            to: vec!["x@y".into()],
        };
        assert_eq!(Envelope::decode(&null_sender.encode()), Some(null_sender));
    }
}
