//! Persisted metadata: on-drive layout, encoding, atomic commit and recovery.
//!
//! # Persisted format (version 1)
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
//!
//! The store VSA id sits in bytes that earlier format-1 builds write as zero
//! and ignore on reading; it is covered by the slot checksum like the body,
//! so it is committed atomically with it. An older build loads such a pool
//! (without the role) and its next commit clears the role: the store is then
//! refused by `vsicctl store mount` until `store init`'s role is set again,
//! never confused with another VSA.
//! | 128 | body | body length |
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

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vsic_abi::Rights;

use super::caps::fill_random;
use super::codec::{Decoder, Encoder, Truncated};
use super::drive::{Drive, Origin};
use super::state::{Attachment, DriveRecord, PhysExtent, PoolState, TokenRecord, VsaRecord, VsicRecord, SLOTS};

pub const FORMAT_VERSION: u32 = 1;
const SUPERBLOCK_MAGIC: &[u8; 8] = b"VSICPOOL";
const SLOT_MAGIC: &[u8; 8] = b"VSICMETA";
const SUPERBLOCK_LEN: usize = 128;
const SUPERBLOCK_STRIDE: u64 = 4096;
const SLOT_HEADER_LEN: usize = 128;
const SLOTS_START: u64 = 2 * SUPERBLOCK_STRIDE;
const MIN_SLOT_LEN: u64 = 256 << 10;
/// Largest slot a format chooses; past this, commits that do not fit fail
/// with NoSpace (extent maps are stored as runs, so this is rarely hit).
const MAX_FORMAT_SLOT_LEN: u64 = 64 << 20;
/// Largest slot `open` believes a superblock about.
const MAX_SLOT_LEN: u64 = 1 << 30;
/// A drive whose first bytes up to this length are zero counts as blank.
const BLANK_PROBE: u64 = 1 << 20;

/// Layout facts of one drive, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    drive_index: u32,
    drive_count: u32,
    pool_id: [u8; 16],
    extent_size: u64,
    slot_len: u64,
    first_data_extent: u64,
    extent_count: u64,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

impl Superblock {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.bytes(SUPERBLOCK_MAGIC);
        e.u32(FORMAT_VERSION);
        e.u32(self.drive_index);
        e.u32(self.drive_count);
        e.u32(0);
        e.bytes(&self.pool_id);
        e.u64(self.extent_size);
        e.u64(self.slot_len);
        e.u64(self.first_data_extent);
        e.u64(self.extent_count);
        e.bytes(&[0u8; 24]);
        let mut b = e.finish();
        let sum = sha256(&[&b]);
        b.extend_from_slice(&sum);
        b
    }

    /// `Ok(None)` when the block is not a superblock; `Err` when it is a
    /// valid superblock of a format version this build does not speak.
    fn decode(b: &[u8]) -> Result<Option<Superblock>, String> {
        let Some(b) = b.get(..SUPERBLOCK_LEN) else {
            return Ok(None);
        };
        if &b[..8] != SUPERBLOCK_MAGIC || sha256(&[&b[..96]])[..] != b[96..] {
            return Ok(None);
        }
        let mut d = Decoder::new(&b[8..96]);
        let parse = |d: &mut Decoder| -> Result<(u32, Superblock), Truncated> {
            let version = d.u32()?;
            let drive_index = d.u32()?;
            let drive_count = d.u32()?;
            d.u32()?;
            Ok((
                version,
                Superblock {
                    drive_index,
                    drive_count,
                    pool_id: d.array()?,
                    extent_size: d.u64()?,
                    slot_len: d.u64()?,
                    first_data_extent: d.u64()?,
                    extent_count: d.u64()?,
                },
            ))
        };
        let Ok((version, sb)) = parse(&mut d) else {
            return Ok(None);
        };
        if version != FORMAT_VERSION {
            return Err(format!(
                "pool format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            ));
        }
        Ok(Some(sb))
    }

    fn slot_offset(&self, slot: usize) -> u64 {
        SLOTS_START + slot as u64 * self.slot_len
    }
}

// ---------------------------------------------------------------- body codec

fn encode_runs(e: &mut Encoder, extents: &[PhysExtent]) {
    let runs = to_runs(extents);
    e.len(runs.len());
    for (first, count) in runs {
        e.u32(first.drive);
        e.u32(count);
        e.u64(first.index);
    }
}

/// Groups consecutive extents of one drive: (first extent, count).
pub fn to_runs(extents: &[PhysExtent]) -> Vec<(PhysExtent, u32)> {
    let mut runs: Vec<(PhysExtent, u32)> = Vec::new();
    for e in extents {
        if let Some((first, count)) = runs.last_mut() {
            if first.drive == e.drive && first.index.checked_add(*count as u64) == Some(e.index) && *count < u32::MAX {
                *count += 1;
                continue;
            }
        }
        runs.push((*e, 1));
    }
    runs
}

fn decode_runs(d: &mut Decoder, limit: u64) -> Result<Vec<PhysExtent>, String> {
    let n = d.len(16).map_err(trunc)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let drive = d.u32().map_err(trunc)?;
        let count = d.u32().map_err(trunc)? as u64;
        let first = d.u64().map_err(trunc)?;
        // A corrupted count must not make us allocate without bound.
        if out.len() as u64 + count > limit {
            return Err("extent run longer than the pool".into());
        }
        let last = first.checked_add(count).ok_or("extent run overflows")?;
        out.extend((first..last).map(|index| PhysExtent { drive, index }));
    }
    Ok(out)
}

fn trunc(_: Truncated) -> String {
    "metadata body is truncated".into()
}

pub fn encode_body(s: &PoolState) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u64(s.extent_size);
    e.u64(s.next_vsa_id);
    e.len(s.drives.len());
    for d in &s.drives {
        e.u64(d.first_data_extent);
        e.u64(d.extent_count);
    }
    e.len(s.vsas.len());
    for v in s.vsas.values() {
        e.u64(v.id);
        e.u64(v.size);
        e.u32(v.next_token_id);
        e.len(v.stripe.len());
        for d in &v.stripe {
            e.u32(*d);
        }
        encode_runs(&mut e, &v.extents);
        e.len(v.tokens.len());
        for t in &v.tokens {
            e.u32(t.id);
            e.u32(t.parent);
            e.u32(t.rights.0);
            e.u32(t.revoked as u32);
            e.bytes(&t.digest);
        }
    }
    e.len(s.vsics.len());
    for v in &s.vsics {
        e.u32(v.enabled as u32);
        e.u64(v.qos_bytes_per_sec);
        e.u64(v.qos_iops);
        for slot in &v.slots {
            let a = slot.unwrap_or(Attachment { vsa_id: 0, token_id: 0, read_only: false });
            e.u64(a.vsa_id);
            e.u32(a.token_id);
            e.u32(a.read_only as u32);
        }
    }
    encode_runs(&mut e, &s.pending_zero);
    e.finish()
}

/// Decodes and checks a body; any inconsistency is an error. `max_extents`
/// (the pool's extent count, known from the superblocks) bounds how much
/// memory a corrupted extent run may make us allocate.
pub fn decode_body(b: &[u8], max_extents: u64) -> Result<PoolState, String> {
    let mut d = Decoder::new(b);
    let extent_size = d.u64().map_err(trunc)?;
    let next_vsa_id = d.u64().map_err(trunc)?;
    let n = d.len(16).map_err(trunc)?;
    let mut drives = Vec::with_capacity(n);
    for _ in 0..n {
        drives.push(DriveRecord { first_data_extent: d.u64().map_err(trunc)?, extent_count: d.u64().map_err(trunc)? });
    }
    let limit: u64 = drives.iter().map(|d| d.extent_count).fold(0u64, |a, b| a.saturating_add(b)).min(max_extents);
    let n = d.len(32).map_err(trunc)?;
    let mut vsas = BTreeMap::new();
    for _ in 0..n {
        let id = d.u64().map_err(trunc)?;
        let size = d.u64().map_err(trunc)?;
        let next_token_id = d.u32().map_err(trunc)?;
        let ns = d.len(4).map_err(trunc)?;
        let mut stripe = Vec::with_capacity(ns);
        for _ in 0..ns {
            stripe.push(d.u32().map_err(trunc)?);
        }
        let extents = decode_runs(&mut d, limit)?;
        let nt = d.len(48).map_err(trunc)?;
        let mut tokens = Vec::with_capacity(nt);
        for _ in 0..nt {
            let id = d.u32().map_err(trunc)?;
            let parent = d.u32().map_err(trunc)?;
            let rights = Rights(d.u32().map_err(trunc)?);
            let flags = d.u32().map_err(trunc)?;
            let digest = d.array().map_err(trunc)?;
            if flags > 1 {
                return Err(format!("token {id} of VSA has unknown flags {flags:#x}"));
            }
            tokens.push(TokenRecord { id, parent, rights, revoked: flags == 1, digest });
        }
        let vsa = VsaRecord { id, size, stripe, extents, tokens, next_token_id };
        if vsas.insert(id, vsa).is_some() {
            return Err(format!("VSA {id} appears twice"));
        }
    }
    let n = d.len(20 + 16 * SLOTS).map_err(trunc)?;
    let mut vsics = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = d.u32().map_err(trunc)?;
        let mut v = VsicRecord {
            enabled: flags & 1 != 0,
            qos_bytes_per_sec: d.u64().map_err(trunc)?,
            qos_iops: d.u64().map_err(trunc)?,
            slots: [None; SLOTS],
        };
        for slot in v.slots.iter_mut() {
            let vsa_id = d.u64().map_err(trunc)?;
            let token_id = d.u32().map_err(trunc)?;
            let read_only = d.u32().map_err(trunc)? & 1 != 0;
            if vsa_id != 0 {
                *slot = Some(Attachment { vsa_id, token_id, read_only });
            }
        }
        vsics.push(v);
    }
    let pending_zero = decode_runs(&mut d, limit)?;
    if d.remaining() != 0 {
        return Err("metadata body has trailing bytes".into());
    }
    let s = PoolState { extent_size, drives, next_vsa_id, vsas, vsics, pending_zero, store_vsa: 0 };
    s.check()?;
    Ok(s)
}

// ------------------------------------------------------------- slot codec

fn encode_slot(generation: u64, pool_id: &[u8; 16], store_vsa: u64, body: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.bytes(SLOT_MAGIC);
    e.u32(FORMAT_VERSION);
    e.u32(0);
    e.u64(generation);
    e.u64(body.len() as u64);
    e.bytes(pool_id);
    e.u64(store_vsa);
    e.bytes(&[0u8; 40]);
    let mut b = e.finish();
    let sum = sha256(&[&b, body]);
    b.extend_from_slice(&sum);
    b.extend_from_slice(body);
    b
}

/// A valid commit read from a slot.
struct SlotCommit {
    generation: u64,
    store_vsa: u64,
    body: Vec<u8>,
}

/// Reads one slot; `None` when it holds no valid commit of this pool.
fn read_slot(drive: &Drive, sb: &Superblock, slot: usize) -> Result<Option<SlotCommit>, String> {
    let offset = sb.slot_offset(slot);
    let mut head = [0u8; SLOT_HEADER_LEN];
    drive
        .read_exact_at(&mut head, offset)
        .map_err(|e| format!("cannot read metadata slot {slot} of {}: {e}", drive.path().display()))?;
    if &head[..8] != SLOT_MAGIC {
        return Ok(None);
    }
    let mut d = Decoder::new(&head[8..56]);
    let fields = (|| -> Result<_, Truncated> {
        let version = d.u32()?;
        d.u32()?;
        Ok((version, d.u64()?, d.u64()?, d.array::<16>()?, d.u64()?))
    })();
    let Ok((version, generation, body_len, pool_id, store_vsa)) = fields else {
        return Ok(None);
    };
    if pool_id != sb.pool_id || body_len > sb.slot_len.saturating_sub(SLOT_HEADER_LEN as u64) {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len as usize];
    drive
        .read_exact_at(&mut body, offset + SLOT_HEADER_LEN as u64)
        .map_err(|e| format!("cannot read metadata slot {slot} of {}: {e}", drive.path().display()))?;
    if sha256(&[&head[..96], &body])[..] != head[96..] {
        return Ok(None);
    }
    if version != FORMAT_VERSION {
        return Err(format!(
            "metadata on {} has format version {version}; this build reads version {FORMAT_VERSION}",
            drive.path().display()
        ));
    }
    Ok(Some(SlotCommit { generation, store_vsa, body }))
}

// ------------------------------------------------------------- the store

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// The encoded state does not fit in a metadata slot.
    TooLarge,
    Io(std::io::Error),
}

/// Writes commits to the drives' metadata slots.
pub struct MetaStore {
    drives: Vec<Arc<Drive>>,
    superblocks: Vec<Superblock>,
    /// Generation each slot of each drive holds (0: invalid or unknown).
    slot_gens: Vec<[u64; 2]>,
    generation: u64,
    /// Tests: how many upcoming commits fail as if a drive returned EIO.
    #[cfg(test)]
    pub fail_commits: u32,
    /// Tests: for each upcoming commit, the drives (by index) whose write
    /// fails as if they returned EIO; the other drives are written.
    #[cfg(test)]
    pub fail_on_drives: std::collections::VecDeque<Vec<usize>>,
}

impl MetaStore {
    /// Newest generation written (committed, or attempted and failed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the newest generation written reached at least one drive
    /// (written and synced). If so, `open` loads it: it is the highest
    /// generation that exists anywhere.
    pub fn newest_landed(&self) -> bool {
        self.slot_gens.iter().flatten().any(|&g| g == self.generation)
    }

    fn slot_capacity(&self) -> u64 {
        self.superblocks.first().map_or(0, |s| s.slot_len.saturating_sub(SLOT_HEADER_LEN as u64))
    }

    /// Commits `state` atomically as a new generation on every drive.
    pub fn commit(&mut self, state: &PoolState) -> Result<u64, CommitError> {
        let body = encode_body(state);
        if body.len() as u64 > self.slot_capacity() {
            return Err(CommitError::TooLarge);
        }
        // A generation is never reused, even after a failed attempt.
        self.generation += 1;
        let generation = self.generation;
        #[cfg(test)]
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(CommitError::Io(std::io::Error::other("injected drive failure")));
        }
        // Every drive of the pool carries the same pool id.
        let pool_id = self.superblocks.first().map(|s| s.pool_id).unwrap_or_default();
        let bytes = encode_slot(generation, &pool_id, state.store_vsa, &body);
        let mut result = Ok(generation);
        #[cfg(test)]
        let failing = self.fail_on_drives.pop_front().unwrap_or_default();
        for (i, drive) in self.drives.iter().enumerate() {
            let (Some(sb), Some(gens)) = (self.superblocks.get(i), self.slot_gens.get_mut(i)) else {
                continue;
            };
            let slot = if gens[0] <= gens[1] { 0 } else { 1 };
            gens[slot] = 0;
            let write = || drive.write_all_at(&bytes, sb.slot_offset(slot)).and_then(|_| drive.sync());
            #[cfg(test)]
            let write = || if failing.contains(&i) { Err(std::io::Error::other("injected drive failure")) } else { write() };
            match write() {
                Ok(()) => gens[slot] = generation,
                Err(e) => {
                    log::error!("metadata commit {generation} to {} failed: {e}", drive.path().display());
                    result = Err(CommitError::Io(e));
                }
            }
        }
        result
    }
}

/// What `open_pool` found.
pub struct OpenedPool {
    pub state: PoolState,
    pub store: MetaStore,
    pub formatted: bool,
}

/// Loads the pool from `drives` (in pool order), or formats them all when
/// every one is blank.
pub fn open_pool(drives: &[Arc<Drive>], extent_size: u64, vsics: usize) -> Result<OpenedPool, String> {
    if drives.is_empty() {
        return Err("no drives given".into());
    }
    let mut found = Vec::new();
    for d in drives {
        found.push(read_superblock(d)?);
    }
    let blank: Vec<bool> = drives
        .iter()
        .zip(&found)
        .map(|(d, sb)| if sb.is_none() { is_blank(d) } else { Ok(false) })
        .collect::<Result<_, _>>()?;
    for ((d, sb), blank) in drives.iter().zip(&found).zip(&blank) {
        if sb.is_none() && !blank {
            return Err(format!(
                "drive {} is not blank and holds no valid VSIC pool superblock: refusing to format it \
                 (its data would be lost; wipe its first MiB to reuse it, or check the drive list)",
                d.path().display()
            ));
        }
    }
    if blank.iter().all(|b| *b) {
        return format_pool(drives, extent_size, vsics).map(|(state, store)| OpenedPool {
            state,
            store,
            formatted: true,
        });
    }
    if let Some(i) = blank.iter().position(|b| *b) {
        return Err(format!(
            "drive {} is blank but the other drives belong to an existing pool: a pool drive is missing or \
             was replaced, and drives cannot be added to a pool",
            drives[i].path().display()
        ));
    }
    let sbs: Vec<Superblock> = found.into_iter().flatten().collect();
    load_pool(drives, sbs, vsics).map(|(state, store)| OpenedPool { state, store, formatted: false })
}

fn read_superblock(d: &Drive) -> Result<Option<Superblock>, String> {
    for copy in 0..2u64 {
        let mut b = [0u8; SUPERBLOCK_LEN];
        d.read_exact_at(&mut b, copy * SUPERBLOCK_STRIDE)
            .map_err(|e| format!("cannot read {}: {e}", d.path().display()))?;
        if let Some(sb) = Superblock::decode(&b).map_err(|e| format!("{}: {e}", d.path().display()))? {
            return Ok(Some(sb));
        }
    }
    Ok(None)
}

fn is_blank(d: &Drive) -> Result<bool, String> {
    let mut b = vec![0u8; BLANK_PROBE.min(d.size()) as usize];
    d.read_exact_at(&mut b, 0).map_err(|e| format!("cannot read {}: {e}", d.path().display()))?;
    Ok(b.iter().all(|&x| x == 0))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

fn format_pool(drives: &[Arc<Drive>], extent_size: u64, vsics: usize) -> Result<(PoolState, MetaStore), String> {
    let total: u64 = drives.iter().map(|d| d.size() / extent_size).sum();
    // Room for one run per extent plus tokens; a commit that does not fit
    // fails with NoSpace rather than corrupting anything.
    let slot_len =
        round_up((64u64 << 10).saturating_add(total.saturating_mul(32)), 4096).clamp(MIN_SLOT_LEN, MAX_FORMAT_SLOT_LEN);
    let first_data_extent = (SLOTS_START + 2 * slot_len).div_ceil(extent_size);
    let mut pool_id = [0u8; 16];
    fill_random(&mut pool_id).map_err(|e| format!("cannot get random bytes: {e}"))?;
    let mut superblocks = Vec::new();
    let mut records = Vec::new();
    for (i, d) in drives.iter().enumerate() {
        let extent_count = d.size() / extent_size;
        if extent_count <= first_data_extent {
            return Err(format!(
                "drive {} ({} bytes) is too small: its metadata area alone takes {} extents of {} bytes",
                d.path().display(),
                d.size(),
                first_data_extent,
                extent_size
            ));
        }
        superblocks.push(Superblock {
            drive_index: i as u32,
            drive_count: drives.len() as u32,
            pool_id,
            extent_size,
            slot_len,
            first_data_extent,
            extent_count,
        });
        records.push(DriveRecord { first_data_extent, extent_count });
    }
    for (d, sb) in drives.iter().zip(&superblocks) {
        let show = d.path().display();
        // Whatever an existing drive held must never show through a VSA.
        if d.origin() == Origin::Existing {
            log::info!("formatting {show}: zeroing it");
            d.zero_range(0, sb.extent_count * extent_size).map_err(|e| format!("cannot zero {show}: {e}"))?;
        }
        let block = sb.encode();
        for copy in 0..2u64 {
            d.write_all_at(&block, copy * SUPERBLOCK_STRIDE)
                .map_err(|e| format!("cannot write superblock of {show}: {e}"))?;
        }
        d.sync().map_err(|e| format!("cannot sync {show}: {e}"))?;
    }
    let state = PoolState::new(extent_size, records, vsics);
    let mut store = MetaStore {
        drives: drives.to_vec(),
        slot_gens: vec![[0, 0]; drives.len()],
        superblocks,
        generation: 0,
        #[cfg(test)]
        fail_commits: 0,
        #[cfg(test)]
        fail_on_drives: Default::default(),
    };
    store.commit(&state).map_err(|e| format!("cannot write the first metadata commit: {e:?}"))?;
    log::info!(
        "formatted a new pool of {} drives, {} data extents of {extent_size} bytes",
        drives.len(),
        state.total_extents()
    );
    Ok((state, store))
}

fn load_pool(drives: &[Arc<Drive>], sbs: Vec<Superblock>, vsics: usize) -> Result<(PoolState, MetaStore), String> {
    let first = sbs[0];
    for (pos, (d, sb)) in drives.iter().zip(&sbs).enumerate() {
        let show = d.path().display();
        if sb.pool_id != first.pool_id {
            return Err(format!("drive {show} belongs to a different pool than {}", drives[0].path().display()));
        }
        if sb.drive_count as usize != drives.len() {
            return Err(format!("the pool has {} drives but {} were given", sb.drive_count, drives.len()));
        }
        if sb.drive_index as usize != pos {
            return Err(format!(
                "drive {show} is drive #{} of the pool but was given as #{pos}: give the drives in their original order",
                sb.drive_index
            ));
        }
        if sb.extent_size != first.extent_size || sb.slot_len != first.slot_len {
            return Err(format!("drive {show} disagrees with the pool's layout"));
        }
        let meta_end = SLOTS_START.saturating_add(sb.slot_len.saturating_mul(2));
        if !sb.extent_size.is_power_of_two()
            || !(MIN_SLOT_LEN..=MAX_SLOT_LEN).contains(&sb.slot_len)
            || sb.first_data_extent.saturating_mul(sb.extent_size) < meta_end
            || sb.first_data_extent >= sb.extent_count
        {
            return Err(format!("drive {show} has an impossible layout in its superblock"));
        }
        if d.size() < sb.extent_count.saturating_mul(sb.extent_size) {
            return Err(format!("drive {show} is {} bytes, smaller than when it was formatted", d.size()));
        }
    }
    let mut slot_gens = vec![[0u64; 2]; drives.len()];
    let mut best: Option<(usize, SlotCommit)> = None;
    for (i, ((d, sb), gens)) in drives.iter().zip(&sbs).zip(slot_gens.iter_mut()).enumerate() {
        for (slot, slot_gen) in gens.iter_mut().enumerate() {
            let Some(commit) = read_slot(d, sb, slot)? else {
                log::info!("metadata slot {slot} of {} holds no valid commit (unused or torn)", d.path().display());
                continue;
            };
            *slot_gen = commit.generation;
            let newer = match &best {
                Some((_, b)) => commit.generation > b.generation,
                None => true,
            };
            if newer {
                best = Some((i, commit));
            }
        }
    }
    let Some((drive, SlotCommit { generation, store_vsa, body })) = best else {
        return Err(
            "no valid metadata on any drive: every slot is corrupted (or formatting was interrupted); refusing to open"
                .into(),
        );
    };
    let pool_extents = sbs.iter().map(|s| s.extent_count).fold(0u64, |a, b| a.saturating_add(b));
    let inconsistent =
        |e: String| format!("newest metadata (generation {generation} on {}) is inconsistent: {e}", drives[drive].path().display());
    let mut state = decode_body(&body, pool_extents).map_err(inconsistent)?;
    state.store_vsa = store_vsa;
    state.check().map_err(inconsistent)?;
    let expected: Vec<DriveRecord> = sbs
        .iter()
        .map(|s| DriveRecord { first_data_extent: s.first_data_extent, extent_count: s.extent_count })
        .collect();
    if state.extent_size != first.extent_size || state.drives != expected {
        return Err("metadata disagrees with the drives' superblocks".into());
    }
    if state.vsics.len() < vsics {
        state.vsics.resize(vsics, VsicRecord::default());
    }
    let max_gen = slot_gens.iter().flatten().copied().max().unwrap_or(generation);
    let store = MetaStore {
        drives: drives.to_vec(),
        superblocks: sbs,
        slot_gens,
        generation: max_gen,
        #[cfg(test)]
        fail_commits: 0,
        #[cfg(test)]
        fail_on_drives: Default::default(),
    };
    log::info!("loaded pool metadata generation {generation} from {}", drives[drive].path().display());
    Ok((state, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip() {
        let mut s = PoolState::new(4096, vec![DriveRecord { first_data_extent: 3, extent_count: 100 }; 2], 3);
        s.vsas.insert(
            4,
            VsaRecord {
                id: 4,
                size: 3 * 4096,
                stripe: vec![1, 0],
                extents: vec![
                    PhysExtent { drive: 1, index: 3 },
                    PhysExtent { drive: 0, index: 9 },
                    PhysExtent { drive: 1, index: 4 },
                ],
                tokens: vec![
                    TokenRecord { id: 1, parent: 0, rights: Rights::ALL, revoked: true, digest: [1; 32] },
                    TokenRecord { id: 2, parent: 1, rights: Rights::READ, revoked: false, digest: [2; 32] },
                ],
                next_token_id: 3,
            },
        );
        s.next_vsa_id = 5;
        s.vsics[2].slots[15] = Some(Attachment { vsa_id: 4, token_id: 2, read_only: true });
        s.vsics[1].enabled = false;
        s.vsics[1].qos_iops = 77;
        s.pending_zero = vec![PhysExtent { drive: 0, index: 10 }, PhysExtent { drive: 0, index: 11 }];
        let b = encode_body(&s);
        assert_eq!(decode_body(&b, 200).unwrap(), s);
        for cut in [0, 1, b.len() / 2, b.len() - 1] {
            assert!(decode_body(&b[..cut], 200).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_body(&long, 200).is_err());
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
        assert_eq!(Superblock::decode(&b).unwrap(), Some(sb));
        let mut bad = b.clone();
        bad[50] ^= 1;
        assert_eq!(Superblock::decode(&bad).unwrap(), None);
    }

    #[test]
    fn runs_group_consecutive_extents() {
        let e = |drive, index| PhysExtent { drive, index };
        let runs = to_runs(&[e(0, 5), e(0, 6), e(1, 7), e(0, 7), e(0, 9)]);
        assert_eq!(runs, vec![(e(0, 5), 2), (e(1, 7), 1), (e(0, 7), 1), (e(0, 9), 1)]);
    }
}
