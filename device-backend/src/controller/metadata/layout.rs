//! The fixed on-drive layouts of format 1: where the superblocks and the
//! metadata slots sit on a drive, the superblock, the slot header, and the
//! fixed-size records the variable-size body is made of. Each layout is
//! declared once, with `vsic_abi::wire_layout!` (little-endian fields,
//! offsets checked at compile time); the tables in the parent module's
//! documentation and in `docs/device-spec.md` describe the same bytes.

use sha2::{Digest, Sha256};
use vsic_abi::layout::{Layout, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

pub const FORMAT_VERSION: u32 = 1;
const SUPERBLOCK_MAGIC: [u8; 8] = *b"VSICPOOL";
const SLOT_MAGIC: [u8; 8] = *b"VSICMETA";
/// Distance between the two superblock copies (each the start of a 4 KiB
/// block whose rest is zero).
pub const SUPERBLOCK_STRIDE: u64 = 4096;
/// Drive offset of metadata slot 0; slot 1 follows it.
pub const SLOTS_START: u64 = 2 * SUPERBLOCK_STRIDE;
pub const SUPERBLOCK_LEN: usize = RawSuperblock::LEN;
pub const SLOT_HEADER_LEN: usize = RawSlotHeader::LEN;

vsic_abi::wire_layout! {
    /// The superblock as written at drive offsets 0 and 4096.
    pub struct RawSuperblock(128 bytes) {
        0 => magic: [u8; 8],
        8 => version: U32,
        12 => drive_index: U32,
        16 => drive_count: U32,
        20 => reserved0: U32,
        24 => pool_id: [u8; 16],
        40 => extent_size: U64,
        48 => slot_len: U64,
        56 => first_data_extent: U64,
        64 => extent_count: U64,
        72 => reserved1: [u8; 24],
        /// SHA-256 of bytes 0..96.
        96 => checksum: [u8; 32],
    }
}

vsic_abi::wire_layout! {
    /// The header at the start of a metadata slot; the body follows it.
    pub struct RawSlotHeader(128 bytes) {
        0 => magic: [u8; 8],
        8 => version: U32,
        12 => reserved0: U32,
        16 => generation: U64,
        24 => body_len: U64,
        32 => pool_id: [u8; 16],
        /// The VSA with the capability-store role (0: none).
        48 => store_vsa: U64,
        /// 40 bytes, zero.
        56 => reserved1: [U64; 5],
        /// SHA-256 of bytes 0..96 followed by the body.
        96 => checksum: [u8; 32],
    }
}

/// Bytes of a superblock or slot header that its checksum covers.
const CHECKED: usize = 96;
const _: () = assert!(std::mem::offset_of!(RawSuperblock, checksum) == CHECKED);
const _: () = assert!(std::mem::offset_of!(RawSlotHeader, checksum) == CHECKED);

// The records of the body (see the parent module): fixed-size pieces,
// each preceded where needed by a u32 count.

vsic_abi::wire_layout! {
    /// Start of the body.
    pub struct PoolHead(16 bytes) {
        0 => extent_size: U64,
        8 => next_vsa_id: U64,
    }
}

vsic_abi::wire_layout! {
    /// The usable extent range of one drive.
    pub struct DriveEntry(16 bytes) {
        0 => first_data_extent: U64,
        8 => extent_count: U64,
    }
}

vsic_abi::wire_layout! {
    /// Physically consecutive extents in logical order.
    pub struct RunEntry(16 bytes) {
        0 => drive: U32,
        4 => count: U32,
        8 => first: U64,
    }
}

vsic_abi::wire_layout! {
    /// Start of one VSA; its stripe, runs and tokens follow.
    pub struct VsaHead(20 bytes) {
        0 => id: U64,
        8 => size: U64,
        16 => next_token_id: U32,
    }
}

vsic_abi::wire_layout! {
    /// One capability token (never its secret).
    pub struct TokenEntry(48 bytes) {
        0 => id: U32,
        /// 0 for a root token.
        4 => parent: U32,
        8 => rights: U32,
        /// Bit 0: revoked.
        12 => flags: U32,
        16 => digest: [u8; 32],
    }
}

vsic_abi::wire_layout! {
    /// Start of one VSIC; its 16 slot entries follow.
    pub struct VsicHead(20 bytes) {
        /// Bit 0: enabled.
        0 => flags: U32,
        4 => qos_bytes_per_sec: U64,
        12 => qos_iops: U64,
    }
}

vsic_abi::wire_layout! {
    /// One window slot of a VSIC.
    pub struct SlotEntry(16 bytes) {
        /// 0: the slot is empty.
        0 => vsa_id: U64,
        8 => token_id: U32,
        /// Bit 0: read-only.
        12 => flags: U32,
    }
}

/// Why bytes are not a valid superblock or slot header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("too short")]
    Short,
    #[error("no magic number")]
    BadMagic,
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// Valid, but of a format version this build does not speak.
    #[error("format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Layout facts of one drive, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub drive_index: u32,
    pub drive_count: u32,
    pub pool_id: [u8; 16],
    pub extent_size: u64,
    pub slot_len: u64,
    pub first_data_extent: u64,
    pub extent_count: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut raw = RawSuperblock {
            magic: SUPERBLOCK_MAGIC,
            version: FORMAT_VERSION.into(),
            drive_index: self.drive_index.into(),
            drive_count: self.drive_count.into(),
            pool_id: self.pool_id,
            extent_size: self.extent_size.into(),
            slot_len: self.slot_len.into(),
            first_data_extent: self.first_data_extent.into(),
            extent_count: self.extent_count.into(),
            ..Default::default()
        };
        raw.checksum = sha256(&[&raw.as_bytes()[..CHECKED]]);
        let mut out = [0u8; SUPERBLOCK_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Checks the magic, then the checksum, then the version.
    pub fn decode(b: &[u8]) -> Result<Superblock, LayoutError> {
        let (raw, _) = RawSuperblock::read_from_prefix(b).map_err(|_| LayoutError::Short)?;
        if raw.magic != SUPERBLOCK_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if sha256(&[&raw.as_bytes()[..CHECKED]]) != raw.checksum {
            return Err(LayoutError::ChecksumMismatch);
        }
        if raw.version.get() != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion {
                found: raw.version.get(),
            });
        }
        Ok(Superblock {
            drive_index: raw.drive_index.get(),
            drive_count: raw.drive_count.get(),
            pool_id: raw.pool_id,
            extent_size: raw.extent_size.get(),
            slot_len: raw.slot_len.get(),
            first_data_extent: raw.first_data_extent.get(),
            extent_count: raw.extent_count.get(),
        })
    }

    /// Drive offset of metadata slot `slot` (0 or 1).
    pub fn slot_offset(&self, slot: usize) -> u64 {
        SLOTS_START + slot as u64 * self.slot_len
    }

    /// Room for a body in one slot.
    pub fn slot_capacity(&self) -> u64 {
        self.slot_len.saturating_sub(SLOT_HEADER_LEN as u64)
    }
}

/// The facts of a slot header; the body is checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHeader {
    pub generation: u64,
    pub body_len: u64,
    pub pool_id: [u8; 16],
    pub store_vsa: u64,
    version: u32,
    checksum: [u8; 32],
    checked: [u8; CHECKED],
}

impl SlotHeader {
    /// The whole slot: header, then `body`.
    pub fn encode(generation: u64, pool_id: &[u8; 16], store_vsa: u64, body: &[u8]) -> Vec<u8> {
        let mut raw = RawSlotHeader {
            magic: SLOT_MAGIC,
            version: FORMAT_VERSION.into(),
            generation: generation.into(),
            body_len: (body.len() as u64).into(),
            pool_id: *pool_id,
            store_vsa: store_vsa.into(),
            ..Default::default()
        };
        raw.checksum = sha256(&[&raw.as_bytes()[..CHECKED], body]);
        let mut out = Vec::with_capacity(SLOT_HEADER_LEN + body.len());
        out.extend_from_slice(raw.as_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Reads a header; only its magic is checked here (the checksum covers
    /// the body too: see [`SlotHeader::verify`]).
    pub fn decode(b: &[u8]) -> Result<SlotHeader, LayoutError> {
        let (raw, _) = RawSlotHeader::read_from_prefix(b).map_err(|_| LayoutError::Short)?;
        if raw.magic != SLOT_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let mut checked = [0u8; CHECKED];
        checked.copy_from_slice(&raw.as_bytes()[..CHECKED]);
        Ok(SlotHeader {
            generation: raw.generation.get(),
            body_len: raw.body_len.get(),
            pool_id: raw.pool_id,
            store_vsa: raw.store_vsa.get(),
            version: raw.version.get(),
            checksum: raw.checksum,
            checked,
        })
    }

    /// Checks the checksum over the header and `body`, then the version.
    pub fn verify(&self, body: &[u8]) -> Result<(), LayoutError> {
        if sha256(&[&self.checked, body]) != self.checksum {
            return Err(LayoutError::ChecksumMismatch);
        }
        if self.version != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion {
                found: self.version,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (offset, size) of each row of the first table after the line that
    /// starts with `heading`, stopping at `end` (where the layout ends).
    fn table(text: &str, heading: &str, end: usize) -> Vec<(usize, usize)> {
        let lines = text.lines().map(|l| l.trim_start_matches("//!").trim());
        let mut lines = lines.skip_while(|l| !l.starts_with(heading));
        assert!(lines.next().is_some(), "no '{heading}'");
        lines
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|row| {
                let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
                let offset: usize = cells[0]
                    .parse()
                    .unwrap_or_else(|_| panic!("bad offset in {row}"));
                let size = match cells[2] {
                    "u32" => 4,
                    "u64" => 8,
                    t => t
                        .strip_suffix(" bytes")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX),
                };
                (offset, size)
            })
            .filter(|&(offset, _)| offset < end)
            .collect()
    }

    fn fields<L: Layout>() -> Vec<(usize, usize)> {
        L::FIELDS.iter().map(|f| (f.offset, f.size)).collect()
    }

    /// The byte tables of `docs/device-spec.md` and of this module's
    /// parent describe the declared layouts.
    #[test]
    fn documented_tables_match_the_layouts() {
        let spec = include_str!("../../../../docs/device-spec.md");
        let module = include_str!("mod.rs");
        for text in [spec, module] {
            assert_eq!(
                table(text, "**Superblock**", SUPERBLOCK_LEN),
                fields::<RawSuperblock>(),
                "superblock"
            );
            assert_eq!(
                table(text, "**Metadata slot**", SLOT_HEADER_LEN),
                fields::<RawSlotHeader>(),
                "slot header"
            );
        }
    }

    /// A layout of a newer format version, with a valid checksum, is
    /// refused as such rather than skipped as garbage.
    #[test]
    fn newer_versions_are_recognised() {
        let sb = Superblock {
            drive_index: 0,
            drive_count: 1,
            pool_id: [1; 16],
            extent_size: 4096,
            slot_len: 1 << 18,
            first_data_extent: 130,
            extent_count: 200,
        };
        let mut raw = RawSuperblock::read_from_bytes(&sb.encode()).unwrap();
        raw.version = 2.into();
        raw.checksum = sha256(&[&raw.as_bytes()[..CHECKED]]);
        assert_eq!(
            Superblock::decode(raw.as_bytes()),
            Err(LayoutError::UnsupportedVersion { found: 2 })
        );
        let body = [7u8; 10];
        let slot = SlotHeader::encode(3, &[1; 16], 0, &body);
        let mut raw = RawSlotHeader::read_from_bytes(&slot[..SLOT_HEADER_LEN]).unwrap();
        let header = SlotHeader::decode(raw.as_bytes()).unwrap();
        assert_eq!((header.generation, header.body_len), (3, 10));
        assert_eq!(header.verify(&body), Ok(()));
        assert_eq!(
            header.verify(&body[..9]),
            Err(LayoutError::ChecksumMismatch)
        );
        raw.version = 2.into();
        raw.checksum = sha256(&[&raw.as_bytes()[..CHECKED], &body]);
        let header = SlotHeader::decode(raw.as_bytes()).unwrap();
        assert_eq!(
            header.verify(&body),
            Err(LayoutError::UnsupportedVersion { found: 2 })
        );
        raw.magic[0] ^= 1;
        assert_eq!(
            SlotHeader::decode(raw.as_bytes()),
            Err(LayoutError::BadMagic)
        );
    }

    #[test]
    fn superblock_round_trip_and_checksum() {
        let sb = Superblock {
            drive_index: 1,
            drive_count: 2,
            pool_id: [5; 16],
            extent_size: 1 << 20,
            slot_len: 1 << 18,
            first_data_extent: 1,
            extent_count: 64,
        };
        let b = sb.encode();
        assert_eq!(b.len(), SUPERBLOCK_LEN);
        assert_eq!(Superblock::decode(&b), Ok(sb));
        let mut bad = b;
        bad[50] ^= 1;
        assert_eq!(Superblock::decode(&bad), Err(LayoutError::ChecksumMismatch));
    }
}
