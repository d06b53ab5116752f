//! `vsic-fs`: a file system on one VSA (or any [`vsic_storage::BlockDevice`])
//! with a POSIX-like API. Metadata lives in memory and every change is a
//! record in an on-device log, committed in units and checkpointed whole
//! when the log fills; file data is copy-on-write, written with the commit
//! unit that points at it and made durable by the same flush (the unit
//! counts at mount only if its data arrived). After a crash the file system
//! is the state after a prefix of the operations, including every one a
//! `sync`/`fsync` returned for. docs/vsic-fs.md has the layout and the
//! guarantees.

pub mod codec;
pub mod error;
pub mod fs;
pub mod layout;
pub mod meta;
pub mod workload;

pub use error::{FsError, Result};
pub use fs::{DirEntry, Fd, Fs, OpenFlags, Stat, MAX_FILE};
pub use meta::{AttrChange, CheckReport, Kind, Time, ROOT};
