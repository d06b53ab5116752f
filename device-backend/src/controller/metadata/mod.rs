//! Persisted metadata: on-drive layout, encoding, atomic commit and recovery.
//!
//! One job per file:
//! - `layout`: the fixed layouts (superblock, slot header, body records),
//!   declared once as structs, with their checksums;
//! - `codec`: the byte cursor the variable-size body is read and written with;
//! - `body`: the body, i.e. the whole pool state, encoded and decoded;
//! - `commit`: the two-slot atomic commit and the settling of a failed one;
//! - `recovery`: opening a pool: format blank drives or load the newest commit;
//! - `error`: why a pool could not be opened.
//!
//! # Persisted format (version 1)
//!
//! (The fixed layouts below are declared in `layout`, whose compile-time
//! checks hold the offsets; the golden-bytes tests in `tests` hold the
//! encoding.)
//!
//! All integers are little-endian. Every drive of a pool begins with a
//! metadata area of whole extents; data extents follow it.
//!
//! | drive offset | content |
//! |---|---|
//! | 0 | superblock, copy A (4096 bytes) |
//! | 4096 | superblock, copy B (identical) |
//! | 8192 | metadata slot 0 (`slot_len` bytes) |
//! | 8192 + slot_len | metadata slot 1 (`slot_len` bytes) |
//! | first_data_extent × extent_size | data extents |
//!
//! **Superblock** (written once, when the pool is formatted; the rest of
//! its 4 KiB block is zero):
//!
//! | offset | field | type |
//! |---|---|---|
//! | 0 | magic `VSICPOOL` | 8 bytes |
//! | 8 | format version (1) | u32 |
//! | 12 | index of this drive in the pool | u32 |
//! | 16 | number of drives in the pool | u32 |
//! | 20 | reserved (0) | u32 |
//! | 24 | pool id (random at format) | 16 bytes |
//! | 40 | extent size | u64 |
//! | 48 | slot_len | u64 |
//! | 56 | first data extent | u64 |
//! | 64 | extent count of this drive | u64 |
//! | 72 | reserved (0) | 24 bytes |
//! | 96 | SHA-256 of bytes 0..96 | 32 bytes |
//!
//! **Metadata slot**: a 128-byte header followed by the body.
//!
//! | offset | field | type |
//! |---|---|---|
//! | 0 | magic `VSICMETA` | 8 bytes |
//! | 8 | format version (1) | u32 |
//! | 12 | reserved (0) | u32 |
//! | 16 | generation (first commit = 1) | u64 |
//! | 24 | body length | u64 |
//! | 32 | pool id | 16 bytes |
//! | 48 | store VSA id (0 = none): the VSA with the capability-store role | u64 |
//! | 56 | reserved (0) | 40 bytes |
//! | 96 | SHA-256 of header bytes 0..96 followed by the body | 32 bytes |
//! | 128 | body | body length |
//!
//! The store VSA id sits in bytes that earlier format-1 builds write as zero
//! and ignore on reading; it is covered by the slot checksum like the body,
//! so it is committed atomically with it. An older build loads such a pool
//! (without the role) and its next commit clears the role: the store is then
//! refused by `vsicctl store mount` until `store init`'s role is set again,
//! never confused with another VSA.
//!
//! **Body** (one copy of the whole pool state; "runs" are `drive u32,
//! count u32, first extent u64` = physically consecutive extents in
//! logical order):
//!
//! ```text
//! extent_size u64, next_vsa_id u64
//! drive count u32, per drive: first_data_extent u64, extent_count u64
//! VSA count u32, per VSA:
//!     id u64, size u64, next_token_id u32,
//!     stripe count u32, stripe drive indexes u32 × count,
//!     run count u32, runs,
//!     token count u32, per token: id u32, parent u32 (0 = root),
//!         rights u32, flags u32 (bit 0 revoked), SHA-256 digest [32]
//! VSIC count u32, per VSIC: flags u32 (bit 0 enabled), qos bytes/s u64,
//!     qos iops u64, 16 slots × (vsa id u64 (0 = empty), token id u32,
//!     flags u32 (bit 0 read-only))
//! pending-zero run count u32, runs
//! ```
//!
//! A token digest is SHA-256("vsic-cap-v1" ‖ vsa id u64 ‖ token id u32 ‖
//! secret); the secret itself is never stored.
//!
//! **Commit**: the whole body is written, with generation = previous + 1,
//! into the slot holding the older (or an invalid) generation on every
//! drive, each followed by fdatasync; the command completes only after
//! every drive has it (after a drive failure, see below). **Open** reads
//! both slots of every drive, ignores any whose magic, version, pool id
//! or checksum is wrong, and takes the newest generation; a torn write
//! therefore falls back to the previous generation.
//!
//! **Failed commit**: open loads the highest generation that reached any
//! one drive, so a commit that reached some drives but not all is decided
//! by what is written next. The device re-commits the previous state under
//! a newer generation: if that reaches at least one drive, the command is
//! refused (metadata-io) and certainly not applied. If it reaches none, the
//! device commits the command's state again, under a newer generation
//! still: if that reaches a drive, the command is reported done. Only when
//! no drive accepts either write is the outcome at the next start unknown
//! (metadata-io, logged as such); the next successful commit, built on the
//! previous state, settles it.
//!
//! A drive whose first MiB is all zero is blank and gets formatted
//! (together with every other drive: all drives of a pool are formatted at
//! once); any other drive without a valid superblock is refused.

mod body;
mod codec;
mod commit;
mod error;
mod layout;
mod recovery;
#[cfg(test)]
mod tests;

pub use body::{to_runs, BodyError};
pub use commit::{CommitError, MetaStore};
pub use error::{DriveOp, MetadataError};
pub use recovery::open_pool;
