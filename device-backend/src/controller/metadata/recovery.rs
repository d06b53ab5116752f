//! Opening a pool: formatting blank drives, or checking the drives'
//! superblocks against each other and loading the newest valid commit
//! (see "Open" in the parent module).

use std::path::Path;
use std::sync::Arc;

use super::body::decode_body;
use super::commit::MetaStore;
use super::error::{DriveOp, MetadataError};
use super::layout::{
    LayoutError, SlotHeader, Superblock, SLOTS_START, SLOT_HEADER_LEN, SUPERBLOCK_LEN,
    SUPERBLOCK_STRIDE,
};
use crate::controller::caps::fill_random;
use crate::controller::drive::{Drive, Origin};
use crate::controller::state::{DriveRecord, PoolState, VsicRecord};

const MIN_SLOT_LEN: u64 = 256 << 10;
/// Largest slot a format chooses; past this, commits that do not fit fail
/// with NoSpace (extent maps are stored as runs, so this is rarely hit).
const MAX_FORMAT_SLOT_LEN: u64 = 64 << 20;
/// Largest slot `open` believes a superblock about.
const MAX_SLOT_LEN: u64 = 1 << 30;
/// A drive whose first bytes up to this length are zero counts as blank.
const BLANK_PROBE: u64 = 1 << 20;

/// What `open_pool` found.
pub struct OpenedPool {
    pub state: PoolState,
    pub store: MetaStore,
    pub formatted: bool,
}

fn io_error(op: DriveOp, path: &Path) -> impl FnOnce(std::io::Error) -> MetadataError + '_ {
    move |source| MetadataError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the pool from `drives` (in pool order), or formats them all when
/// every one is blank.
pub fn open_pool(
    drives: &[Arc<Drive>],
    extent_size: u64,
    vsics: usize,
) -> Result<OpenedPool, MetadataError> {
    if drives.is_empty() {
        return Err(MetadataError::NoDrives);
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
            return Err(MetadataError::NotBlank {
                path: d.path().to_path_buf(),
            });
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
        return Err(MetadataError::BlankInPool {
            path: drives[i].path().to_path_buf(),
        });
    }
    let sbs: Vec<Superblock> = found.into_iter().flatten().collect();
    load_pool(drives, sbs, vsics).map(|(state, store)| OpenedPool {
        state,
        store,
        formatted: false,
    })
}

/// The first valid superblock copy; `None` when neither copy is one.
fn read_superblock(d: &Drive) -> Result<Option<Superblock>, MetadataError> {
    for copy in 0..2u64 {
        let mut b = [0u8; SUPERBLOCK_LEN];
        d.read_exact_at(&mut b, copy * SUPERBLOCK_STRIDE)
            .map_err(io_error(DriveOp::Read, d.path()))?;
        match Superblock::decode(&b) {
            Ok(sb) => return Ok(Some(sb)),
            Err(LayoutError::UnsupportedVersion { found }) => {
                return Err(MetadataError::SuperblockVersion {
                    path: d.path().to_path_buf(),
                    found,
                })
            }
            Err(_) => {}
        }
    }
    Ok(None)
}

fn is_blank(d: &Drive) -> Result<bool, MetadataError> {
    let mut b = vec![0u8; BLANK_PROBE.min(d.size()) as usize];
    d.read_exact_at(&mut b, 0)
        .map_err(io_error(DriveOp::Read, d.path()))?;
    Ok(b.iter().all(|&x| x == 0))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

fn format_pool(
    drives: &[Arc<Drive>],
    extent_size: u64,
    vsics: usize,
) -> Result<(PoolState, MetaStore), MetadataError> {
    let total: u64 = drives.iter().map(|d| d.size() / extent_size).sum();
    // Room for one run per extent plus tokens; a commit that does not fit
    // fails with NoSpace rather than corrupting anything.
    let slot_len = round_up((64u64 << 10).saturating_add(total.saturating_mul(32)), 4096)
        .clamp(MIN_SLOT_LEN, MAX_FORMAT_SLOT_LEN);
    let first_data_extent = (SLOTS_START + 2 * slot_len).div_ceil(extent_size);
    let mut pool_id = [0u8; 16];
    fill_random(&mut pool_id).map_err(MetadataError::Random)?;
    let mut superblocks = Vec::new();
    let mut records = Vec::new();
    for (i, d) in drives.iter().enumerate() {
        let extent_count = d.size() / extent_size;
        if extent_count <= first_data_extent {
            return Err(MetadataError::TooSmall {
                path: d.path().to_path_buf(),
                size: d.size(),
                extents: first_data_extent,
                extent_size,
            });
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
        records.push(DriveRecord {
            first_data_extent,
            extent_count,
        });
    }
    for (d, sb) in drives.iter().zip(&superblocks) {
        // Whatever an existing drive held must never show through a VSA.
        if d.origin() == Origin::Existing {
            log::info!("formatting {}: zeroing it", d.path().display());
            d.zero_range(0, sb.extent_count * extent_size)
                .map_err(io_error(DriveOp::Zero, d.path()))?;
        }
        let block = sb.encode();
        for copy in 0..2u64 {
            d.write_all_at(&block, copy * SUPERBLOCK_STRIDE)
                .map_err(io_error(DriveOp::WriteSuperblock, d.path()))?;
        }
        d.sync().map_err(io_error(DriveOp::Sync, d.path()))?;
    }
    let state = PoolState::new(extent_size, records, vsics);
    let mut store = MetaStore::new(drives, superblocks, vec![[0, 0]; drives.len()], 0);
    store.commit(&state).map_err(MetadataError::FirstCommit)?;
    log::info!(
        "formatted a new pool of {} drives, {} data extents of {extent_size} bytes",
        drives.len(),
        state.total_extents()
    );
    Ok((state, store))
}

/// Checks each superblock against the first and against its drive.
fn check_superblocks(drives: &[Arc<Drive>], sbs: &[Superblock]) -> Result<(), MetadataError> {
    let first = sbs[0];
    for (pos, (d, sb)) in drives.iter().zip(sbs).enumerate() {
        let path = || d.path().to_path_buf();
        if sb.pool_id != first.pool_id {
            return Err(MetadataError::DifferentPool {
                path: path(),
                first: drives[0].path().to_path_buf(),
            });
        }
        if sb.drive_count as usize != drives.len() {
            return Err(MetadataError::DriveCount {
                pool: sb.drive_count,
                given: drives.len(),
            });
        }
        if sb.drive_index as usize != pos {
            return Err(MetadataError::DriveOrder {
                path: path(),
                index: sb.drive_index,
                given: pos,
            });
        }
        if sb.extent_size != first.extent_size || sb.slot_len != first.slot_len {
            return Err(MetadataError::LayoutMismatch { path: path() });
        }
        let meta_end = SLOTS_START.saturating_add(sb.slot_len.saturating_mul(2));
        if !sb.extent_size.is_power_of_two()
            || !(MIN_SLOT_LEN..=MAX_SLOT_LEN).contains(&sb.slot_len)
            || sb.first_data_extent.saturating_mul(sb.extent_size) < meta_end
            || sb.first_data_extent >= sb.extent_count
        {
            return Err(MetadataError::ImpossibleLayout { path: path() });
        }
        if d.size() < sb.extent_count.saturating_mul(sb.extent_size) {
            return Err(MetadataError::Shrunk {
                path: path(),
                size: d.size(),
            });
        }
    }
    Ok(())
}

/// A valid commit read from a slot.
struct SlotCommit {
    generation: u64,
    store_vsa: u64,
    body: Vec<u8>,
}

/// Why a slot holds no valid commit of this pool (unused, torn, or left
/// from an earlier pool on the drive): open skips it.
#[derive(Debug, thiserror::Error)]
enum NoCommit {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("written for another pool")]
    OtherPool,
    #[error("body length {0} exceeds the slot")]
    BodyTooLong(u64),
}

/// Reads one slot: its commit, or why it holds none.
fn read_slot(
    drive: &Drive,
    sb: &Superblock,
    slot: usize,
) -> Result<Result<SlotCommit, NoCommit>, MetadataError> {
    let offset = sb.slot_offset(slot);
    let mut head = [0u8; SLOT_HEADER_LEN];
    drive
        .read_exact_at(&mut head, offset)
        .map_err(io_error(DriveOp::ReadSlot(slot), drive.path()))?;
    let header = match SlotHeader::decode(&head) {
        Ok(header) => header,
        Err(e) => return Ok(Err(e.into())),
    };
    if header.pool_id != sb.pool_id {
        return Ok(Err(NoCommit::OtherPool));
    }
    if header.body_len > sb.slot_capacity() {
        return Ok(Err(NoCommit::BodyTooLong(header.body_len)));
    }
    let mut body = vec![0u8; header.body_len as usize];
    drive
        .read_exact_at(&mut body, offset + SLOT_HEADER_LEN as u64)
        .map_err(io_error(DriveOp::ReadSlot(slot), drive.path()))?;
    match header.verify(&body) {
        Ok(()) => Ok(Ok(SlotCommit {
            generation: header.generation,
            store_vsa: header.store_vsa,
            body,
        })),
        Err(LayoutError::UnsupportedVersion { found }) => Err(MetadataError::SlotVersion {
            path: drive.path().to_path_buf(),
            found,
        }),
        Err(e) => Ok(Err(e.into())),
    }
}

fn load_pool(
    drives: &[Arc<Drive>],
    sbs: Vec<Superblock>,
    vsics: usize,
) -> Result<(PoolState, MetaStore), MetadataError> {
    check_superblocks(drives, &sbs)?;
    let mut slot_gens = vec![[0u64; 2]; drives.len()];
    let mut best: Option<(usize, SlotCommit)> = None;
    for (i, ((d, sb), gens)) in drives
        .iter()
        .zip(&sbs)
        .zip(slot_gens.iter_mut())
        .enumerate()
    {
        for (slot, slot_gen) in gens.iter_mut().enumerate() {
            let commit = match read_slot(d, sb, slot)? {
                Ok(commit) => commit,
                Err(why) => {
                    log::info!(
                        "metadata slot {slot} of {} holds no valid commit (unused or torn: {why})",
                        d.path().display()
                    );
                    continue;
                }
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
    let Some((
        drive,
        SlotCommit {
            generation,
            store_vsa,
            body,
        },
    )) = best
    else {
        return Err(MetadataError::NoValidMetadata);
    };
    let pool_extents = sbs
        .iter()
        .map(|s| s.extent_count)
        .fold(0u64, |a, b| a.saturating_add(b));
    let inconsistent = |source| MetadataError::Inconsistent {
        generation,
        path: drives[drive].path().to_path_buf(),
        source,
    };
    let mut state = decode_body(&body, pool_extents).map_err(inconsistent)?;
    state.store_vsa = store_vsa;
    state.check().map_err(|e| inconsistent(e.into()))?;
    let expected: Vec<DriveRecord> = sbs
        .iter()
        .map(|s| DriveRecord {
            first_data_extent: s.first_data_extent,
            extent_count: s.extent_count,
        })
        .collect();
    if state.extent_size != sbs[0].extent_size || state.drives != expected {
        return Err(MetadataError::DisagreesWithSuperblocks);
    }
    if state.vsics.len() < vsics {
        state.vsics.resize(vsics, VsicRecord::default());
    }
    let max_gen = slot_gens
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(generation);
    let store = MetaStore::new(drives, sbs, slot_gens, max_gen);
    log::info!(
        "loaded pool metadata generation {generation} from {}",
        drives[drive].path().display()
    );
    Ok((state, store))
}
