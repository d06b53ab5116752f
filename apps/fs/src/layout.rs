//! The on-device layout, declared once (docs/vsic-fs.md describes it).
//!
//! ```text
//! block 0, 1        superblock copies (the newest valid generation wins)
//! slot 0, slot 1    checkpoint slots, `ckpt_blocks` each: the whole
//!                   metadata (inodes, directories, block maps) encoded
//! log               `log_blocks`: commit units of metadata operations
//! data              the rest: 4 KiB file data blocks, copy-on-write
//! ```
//!
//! All numbers are little-endian; every structure carries a CRC-32C.

use crate::codec::{Dec, Enc};
use crate::error::{FsError, Result};

/// The file system's block size; device blocks must divide it.
pub const BLOCK: u64 = 4096;
/// "VSICFS01".
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"VSICFS01");
/// The format written: 2 adds the reply-cache section to the checkpoint
/// and the Reply log record. Version 1 (no reply cache) is still mounted;
/// its next checkpoint writes version 2.
pub const VERSION: u32 = 2;
/// The oldest format mounted.
pub const MIN_VERSION: u32 = 1;
/// A commit unit's magic, "VLOG".
pub const LOG_MAGIC: u32 = u32::from_le_bytes(*b"VLOG");
/// Bytes of a commit unit's header: magic, fs_id, seq, len, crc.
pub const LOG_HEADER: usize = 4 + 8 + 8 + 4 + 4;
/// Longest name in a directory.
pub const NAME_MAX: usize = 255;
/// Longest symbolic link target.
pub const TARGET_MAX: usize = 1024;

/// The superblock: where the current checkpoint is and where the log
/// starts. Written alternately to block 0 and 1 (`generation % 2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// The format of the checkpoint it points at (and of the log).
    pub version: u32,
    /// Incremented on each write; the valid copy with the highest wins.
    pub generation: u64,
    /// Random at mkfs; stamped into every commit unit so units of an
    /// earlier file system on the same device never replay.
    pub fs_id: u64,
    pub total_blocks: u64,
    pub ckpt_blocks: u64,
    pub log_blocks: u64,
    /// Which slot (0 or 1) holds the current checkpoint.
    pub active_slot: u8,
    /// Bytes of the encoded checkpoint, and their CRC-32C.
    pub ckpt_len: u64,
    pub ckpt_crc: u32,
    /// The sequence number the first commit unit of the log must carry.
    pub log_seq: u64,
}

impl Superblock {
    /// The region sizes mkfs chooses for a device of `total_blocks`.
    pub fn for_device(total_blocks: u64, fs_id: u64) -> Result<Superblock> {
        let ckpt_blocks = (total_blocks / 32).clamp(32, 4096);
        let log_blocks = (total_blocks / 16).clamp(64, 8192);
        let sb = Superblock {
            version: VERSION,
            generation: 1,
            fs_id,
            total_blocks,
            ckpt_blocks,
            log_blocks,
            active_slot: 0,
            ckpt_len: 0,
            ckpt_crc: 0,
            log_seq: 1,
        };
        if sb.data_start() + 16 > total_blocks {
            return Err(FsError::NoSpace("the device is too small for vsic-fs"));
        }
        Ok(sb)
    }

    /// First block of checkpoint slot `slot`.
    pub fn slot_start(&self, slot: u8) -> u64 {
        2 + u64::from(slot) * self.ckpt_blocks
    }
    pub fn log_start(&self) -> u64 {
        2 + 2 * self.ckpt_blocks
    }
    pub fn data_start(&self) -> u64 {
        self.log_start() + self.log_blocks
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(SB_MAGIC);
        e.u32(self.version);
        e.u64(self.generation);
        e.u64(self.fs_id);
        e.u64(self.total_blocks);
        e.u64(self.ckpt_blocks);
        e.u64(self.log_blocks);
        e.u8(self.active_slot);
        e.u64(self.ckpt_len);
        e.u32(self.ckpt_crc);
        e.u64(self.log_seq);
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        e.buf.resize(BLOCK as usize, 0);
        e.buf
    }

    /// Decodes a superblock block; `None` when it is not a valid one
    /// (never written, torn, or another format).
    pub fn decode(block: &[u8]) -> Option<Superblock> {
        let mut d = Dec::new(block);
        if d.u64().ok()? != SB_MAGIC {
            return None;
        }
        let version = d.u32().ok()?;
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return None;
        }
        let sb = Superblock {
            version,
            generation: d.u64().ok()?,
            fs_id: d.u64().ok()?,
            total_blocks: d.u64().ok()?,
            ckpt_blocks: d.u64().ok()?,
            log_blocks: d.u64().ok()?,
            active_slot: d.u8().ok()?,
            ckpt_len: d.u64().ok()?,
            ckpt_crc: d.u32().ok()?,
            log_seq: d.u64().ok()?,
        };
        let body = 8 + 4 + 8 * 5 + 1 + 8 + 4 + 8;
        let crc = d.u32().ok()?;
        if crc32c::crc32c(&block[..body]) != crc || sb.active_slot > 1 {
            return None;
        }
        if sb.ckpt_len > sb.ckpt_blocks * BLOCK || sb.data_start() > sb.total_blocks {
            return None;
        }
        Some(sb)
    }
}

/// Encodes one commit unit (header + payload), padded to whole blocks.
pub fn encode_unit(fs_id: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.u32(LOG_MAGIC);
    e.u64(fs_id);
    e.u64(seq);
    e.u32(payload.len() as u32);
    let mut crc = crc32c::crc32c(&e.buf);
    crc = crc32c::crc32c_append(crc, payload);
    e.u32(crc);
    e.buf.extend_from_slice(payload);
    let padded = e.buf.len().div_ceil(BLOCK as usize) * BLOCK as usize;
    e.buf.resize(padded, 0);
    e.buf
}

/// A commit unit's header, as read from its first block.
pub struct UnitHeader {
    pub seq: u64,
    pub len: usize,
    pub crc: u32,
}

impl UnitHeader {
    /// Whole blocks the unit occupies.
    pub fn blocks(&self) -> u64 {
        ((LOG_HEADER + self.len) as u64).div_ceil(BLOCK)
    }

    /// `None` unless the block starts a unit of file system `fs_id`.
    pub fn decode(block: &[u8], fs_id: u64) -> Option<UnitHeader> {
        let mut d = Dec::new(block);
        if d.u32().ok()? != LOG_MAGIC || d.u64().ok()? != fs_id {
            return None;
        }
        let seq = d.u64().ok()?;
        let len = d.u32().ok()? as usize;
        let crc = d.u32().ok()?;
        Some(UnitHeader { seq, len, crc })
    }

    /// True when `unit` (the whole unit, from its header) is intact.
    pub fn verify(&self, unit: &[u8]) -> bool {
        let Some(payload) = unit.get(LOG_HEADER..LOG_HEADER + self.len) else {
            return false;
        };
        let crc = crc32c::crc32c(&unit[..LOG_HEADER - 4]);
        crc32c::crc32c_append(crc, payload) == self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips_and_rejects_a_flipped_bit() {
        let sb = Superblock::for_device(65536, 7).unwrap();
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b), Some(sb));
        b[20] ^= 1;
        assert_eq!(Superblock::decode(&b), None);
    }

    #[test]
    fn a_unit_with_a_flipped_payload_bit_fails_verification() {
        let mut u = encode_unit(9, 3, b"hello");
        let h = UnitHeader::decode(&u, 9).unwrap();
        assert!(h.verify(&u));
        assert!(UnitHeader::decode(&u, 8).is_none());
        u[LOG_HEADER] ^= 1;
        assert!(!h.verify(&u));
    }
}
