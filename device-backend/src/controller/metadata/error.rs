//! Why a pool could not be opened or formatted.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::body::BodyError;
use super::commit::CommitError;
use super::layout::FORMAT_VERSION;

/// What was being done to a drive when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveOp {
    Read,
    ReadSlot(usize),
    Zero,
    WriteSuperblock,
    Sync,
}

impl fmt::Display for DriveOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriveOp::Read => f.write_str("read"),
            DriveOp::ReadSlot(slot) => write!(f, "read metadata slot {slot} of"),
            DriveOp::Zero => f.write_str("zero"),
            DriveOp::WriteSuperblock => f.write_str("write superblock of"),
            DriveOp::Sync => f.write_str("sync"),
        }
    }
}

/// Why `open_pool` refused the drives.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("no drives given")]
    NoDrives,
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: DriveOp,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot get random bytes: {0}")]
    Random(#[source] io::Error),
    #[error(
        "{}: pool format version {found} is not supported (this build reads version {FORMAT_VERSION})",
        .path.display()
    )]
    SuperblockVersion { path: PathBuf, found: u32 },
    #[error("metadata on {} has format version {found}; this build reads version {FORMAT_VERSION}", .path.display())]
    SlotVersion { path: PathBuf, found: u32 },
    #[error(
        "drive {} is not blank and holds no valid VSIC pool superblock: refusing to format it \
         (its data would be lost; wipe its first MiB to reuse it, or check the drive list)",
        .path.display()
    )]
    NotBlank { path: PathBuf },
    #[error(
        "drive {} is blank but the other drives belong to an existing pool: a pool drive is missing or \
         was replaced, and drives cannot be added to a pool",
        .path.display()
    )]
    BlankInPool { path: PathBuf },
    #[error(
        "drive {} ({size} bytes) is too small: its metadata area alone takes {extents} extents of {extent_size} bytes",
        .path.display()
    )]
    TooSmall {
        path: PathBuf,
        size: u64,
        extents: u64,
        extent_size: u64,
    },
    #[error("cannot write the first metadata commit: {0}")]
    FirstCommit(#[source] CommitError),
    #[error("drive {} belongs to a different pool than {}", .path.display(), .first.display())]
    DifferentPool { path: PathBuf, first: PathBuf },
    #[error("the pool has {pool} drives but {given} were given")]
    DriveCount { pool: u32, given: usize },
    #[error(
        "drive {} is drive #{index} of the pool but was given as #{given}: give the drives in their original order",
        .path.display()
    )]
    DriveOrder {
        path: PathBuf,
        index: u32,
        given: usize,
    },
    #[error("drive {} disagrees with the pool's layout", .path.display())]
    LayoutMismatch { path: PathBuf },
    #[error("drive {} has an impossible layout in its superblock", .path.display())]
    ImpossibleLayout { path: PathBuf },
    #[error("drive {} is {size} bytes, smaller than when it was formatted", .path.display())]
    Shrunk { path: PathBuf, size: u64 },
    #[error(
        "no valid metadata on any drive: every slot is corrupted (or formatting was interrupted); refusing to open"
    )]
    NoValidMetadata,
    #[error("newest metadata (generation {generation} on {}) is inconsistent: {source}", .path.display())]
    Inconsistent {
        generation: u64,
        path: PathBuf,
        source: BodyError,
    },
    #[error("metadata disagrees with the drives' superblocks")]
    DisagreesWithSuperblocks,
}
