//! The commit path: a new generation of the whole pool state written to the
//! older of the two slots of every drive, and the settling of a commit that
//! failed on some drive (see "Commit" and "Failed commit" in the parent
//! module).

use std::io;
use std::sync::Arc;

use super::body::encode_body;
use super::layout::{SlotHeader, Superblock};
use crate::controller::drive::Drive;
use crate::controller::state::PoolState;

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The encoded state does not fit in a metadata slot.
    #[error("the metadata does not fit in a metadata slot")]
    TooLarge,
    /// A drive failed the write or its sync.
    #[error("metadata write failed: {0}")]
    Io(#[source] io::Error),
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
    /// A store for `drives` (in pool order) whose slots hold the
    /// generations `slot_gens` (0: invalid); the next commit is numbered
    /// past `generation`.
    pub(super) fn new(
        drives: &[Arc<Drive>],
        superblocks: Vec<Superblock>,
        slot_gens: Vec<[u64; 2]>,
        generation: u64,
    ) -> Self {
        MetaStore {
            drives: drives.to_vec(),
            superblocks,
            slot_gens,
            generation,
            #[cfg(test)]
            fail_commits: 0,
            #[cfg(test)]
            fail_on_drives: Default::default(),
        }
    }

    /// Newest generation written (committed, or attempted and failed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the newest generation written reached at least one drive
    /// (written and synced). If so, `open` loads it: it is the highest
    /// generation that exists anywhere.
    pub fn newest_landed(&self) -> bool {
        self.slot_gens
            .iter()
            .flatten()
            .any(|&g| g == self.generation)
    }

    fn slot_capacity(&self) -> u64 {
        self.superblocks
            .first()
            .map_or(0, Superblock::slot_capacity)
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
            return Err(CommitError::Io(io::Error::other("injected drive failure")));
        }
        // Every drive of the pool carries the same pool id.
        let pool_id = self
            .superblocks
            .first()
            .map(|s| s.pool_id)
            .unwrap_or_default();
        let bytes = SlotHeader::encode(generation, &pool_id, state.store_vsa, &body);
        let mut result = Ok(generation);
        #[cfg(test)]
        let failing = self.fail_on_drives.pop_front().unwrap_or_default();
        for (i, drive) in self.drives.iter().enumerate() {
            let (Some(sb), Some(gens)) = (self.superblocks.get(i), self.slot_gens.get_mut(i))
            else {
                continue;
            };
            let slot = if gens[0] <= gens[1] { 0 } else { 1 };
            gens[slot] = 0;
            let write = || {
                drive
                    .write_all_at(&bytes, sb.slot_offset(slot))
                    .and_then(|_| drive.sync())
            };
            #[cfg(test)]
            let write = || {
                if failing.contains(&i) {
                    Err(io::Error::other("injected drive failure"))
                } else {
                    write()
                }
            };
            match write() {
                Ok(()) => gens[slot] = generation,
                Err(e) => {
                    log::error!(
                        "metadata commit {generation} to {} failed: {e}",
                        drive.path().display()
                    );
                    result = Err(CommitError::Io(e));
                }
            }
        }
        result
    }

    /// Commits `next`, the successor of `current` (the last committed
    /// state). `Ok` when `next` is what the next start loads; `Err` when
    /// the command must be refused (`Io`: current stays; `TooLarge`: it
    /// does not fit). A write that failed on some drive is settled one way
    /// or the other, so the answer always matches what the next start
    /// loads, except when no drive takes any write (logged; the next
    /// successful commit, built on `current`, settles it).
    pub fn commit_settled(
        &mut self,
        current: &PoolState,
        next: &PoolState,
    ) -> Result<(), CommitError> {
        match self.commit(next) {
            Ok(_) => Ok(()),
            Err(CommitError::TooLarge) => Err(CommitError::TooLarge),
            Err(CommitError::Io(e)) => {
                log::error!("metadata commit failed: {e}");
                if self.settle_failed_commit(current, next) {
                    Ok(())
                } else {
                    Err(CommitError::Io(e))
                }
            }
        }
    }

    /// Decides the outcome of a commit of `next` that failed on some drive
    /// and may have reached others: false when `current` stays (certain
    /// unless no drive took any write), true when `next` is certain.
    fn settle_failed_commit(&mut self, current: &PoolState, next: &PoolState) -> bool {
        // A newer generation holding the previous state, on any one drive,
        // keeps the failed change from coming back.
        if self.commit_landed(current, "re-committing the previous metadata") {
            log::error!("the command is refused; the previous metadata stays");
            return false;
        }
        // No drive took the previous state: only going forward can decide.
        if self.commit_landed(next, "committing the command's metadata again") {
            log::warn!("the command's metadata reached the drives on a second attempt: it is done");
            return true;
        }
        log::error!(
            "no drive accepts metadata writes: the command is refused, but the next start may load it; \
             the next successful commit settles it"
        );
        false
    }

    /// Commits `state`; true when it reached at least one drive.
    fn commit_landed(&mut self, state: &PoolState, what: &str) -> bool {
        match self.commit(state) {
            Ok(_) => true,
            Err(CommitError::Io(e)) => {
                log::error!("{what} failed on some drive: {e}");
                self.newest_landed()
            }
            Err(CommitError::TooLarge) => false,
        }
    }
}
