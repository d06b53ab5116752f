//! The persisted model of the pool: what a metadata commit writes and what
//! `open` reads back. Admin commands mutate a copy of it, commit the copy,
//! and only then make it current (so a failed commit rolls back for free).

use std::collections::{BTreeMap, HashSet};

use vsic_abi::window::{SLOTS_PER_VSIC, WINDOW_SIZE};
use vsic_abi::Rights;

/// One extent on one drive (`index` counts extents from the drive's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhysExtent {
    pub drive: u32,
    pub index: u64,
}

/// A capability token as the device remembers it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token ids start at 1 within their VSA and are never reused.
    pub id: u32,
    /// Token this one was derived from; 0 for a root token.
    pub parent: u32,
    pub rights: Rights,
    pub revoked: bool,
    pub digest: [u8; 32],
}

impl TokenRecord {
    pub fn is_root(&self) -> bool {
        self.parent == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsaRecord {
    pub id: u64,
    /// Always a whole number of extents: `extents.len() * extent_size`.
    pub size: u64,
    /// Drives the VSA stripes over; logical extent i lives on stripe[i % len].
    pub stripe: Vec<u32>,
    /// Logical extent i → physical extent.
    pub extents: Vec<PhysExtent>,
    pub tokens: Vec<TokenRecord>,
    pub next_token_id: u32,
}

impl VsaRecord {
    pub fn token(&self, id: u32) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| t.id == id)
    }
    pub fn live_tokens(&self) -> usize {
        self.tokens.iter().filter(|t| !t.revoked).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub vsa_id: u64,
    /// The token the attachment was made with (revoking it detaches).
    pub token_id: u32,
    pub read_only: bool,
}

pub const SLOTS: usize = SLOTS_PER_VSIC as usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsicRecord {
    pub enabled: bool,
    pub qos_bytes_per_sec: u64,
    pub qos_iops: u64,
    pub slots: [Option<Attachment>; SLOTS],
    /// DMA mode enforced (only the VSIC's windows may be addressed). The
    /// windows themselves are not persisted: a restart brings an enforced
    /// VSIC back enforced with no windows (fail closed).
    pub dma_enforced: bool,
}

impl Default for VsicRecord {
    /// VSICs start enabled with nothing attached, like a VF that exists
    /// but has no namespace yet.
    fn default() -> Self {
        Self {
            enabled: true,
            qos_bytes_per_sec: 0,
            qos_iops: 0,
            slots: [None; SLOTS],
            dma_enforced: false,
        }
    }
}

/// The usable extent range of one drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveRecord {
    /// Extents below this hold the superblocks and metadata slots.
    pub first_data_extent: u64,
    /// One past the last extent of the drive.
    pub extent_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub extent_size: u64,
    pub drives: Vec<DriveRecord>,
    pub next_vsa_id: u64,
    pub vsas: BTreeMap<u64, VsaRecord>,
    pub vsics: Vec<VsicRecord>,
    /// Extents freed by delete/shrink that may still hold old data: they are
    /// zeroed before they become free again (also after a crash).
    pub pending_zero: Vec<PhysExtent>,
    /// The VSA with the capability-store role (0: none). Only the PF sets it;
    /// persisted in the metadata slot header, which format-1 readers ignore.
    pub store_vsa: u64,
}

impl PoolState {
    pub fn new(extent_size: u64, drives: Vec<DriveRecord>, vsics: usize) -> Self {
        Self {
            extent_size,
            drives,
            next_vsa_id: 1,
            vsas: BTreeMap::new(),
            vsics: vec![VsicRecord::default(); vsics],
            pending_zero: Vec::new(),
            store_vsa: 0,
        }
    }

    pub fn total_extents(&self) -> u64 {
        self.drives
            .iter()
            .map(|d| d.extent_count.saturating_sub(d.first_data_extent))
            .sum()
    }

    /// Number of slots (over all VSICs) holding `vsa_id`.
    pub fn attachment_count(&self, vsa_id: u64) -> usize {
        self.vsics
            .iter()
            .flat_map(|v| v.slots.iter())
            .filter(|s| matches!(s, Some(a) if a.vsa_id == vsa_id))
            .count()
    }

    /// Checks every invariant a decoded state must hold, so that corrupted
    /// (or hand-edited) metadata with a valid checksum is still refused.
    pub fn check(&self) -> Result<(), StateError> {
        let es = self.extent_size;
        if !es.is_power_of_two() {
            return Err(StateError::ExtentSize(es));
        }
        let mut used: HashSet<PhysExtent> = HashSet::new();
        let mut claim = |e: PhysExtent, owner: Owner| -> Result<(), StateError> {
            let d = self
                .drives
                .get(e.drive as usize)
                .ok_or(StateError::UnknownDrive { owner, extent: e })?;
            if e.index < d.first_data_extent || e.index >= d.extent_count {
                return Err(StateError::OutsideDataArea { owner, extent: e });
            }
            if !used.insert(e) {
                return Err(StateError::UsedTwice(e));
            }
            Ok(())
        };
        for (&id, v) in &self.vsas {
            if id != v.id || id == 0 || id >= self.next_vsa_id {
                return Err(StateError::VsaId(id));
            }
            if v.extents.is_empty()
                || v.size != (v.extents.len() as u64).saturating_mul(es)
                || v.size > WINDOW_SIZE
            {
                return Err(StateError::VsaSize {
                    vsa: id,
                    size: v.size,
                    extents: v.extents.len(),
                });
            }
            if v.stripe.is_empty() || v.stripe.iter().any(|&d| d as usize >= self.drives.len()) {
                return Err(StateError::Stripe(id));
            }
            for (i, e) in v.extents.iter().enumerate() {
                if v.stripe.get(i % v.stripe.len()) != Some(&e.drive) {
                    return Err(StateError::OffStripe { vsa: id, extent: i });
                }
                claim(*e, Owner::Vsa(id))?;
            }
            let mut ids = HashSet::new();
            for t in &v.tokens {
                if t.id == 0 || t.id >= v.next_token_id || !ids.insert(t.id) || !t.rights.is_valid()
                {
                    return Err(StateError::Token {
                        vsa: id,
                        token: t.id,
                    });
                }
                if !t.is_root() && v.token(t.parent).is_none() {
                    return Err(StateError::TokenParent {
                        vsa: id,
                        token: t.id,
                    });
                }
            }
        }
        for e in &self.pending_zero {
            claim(*e, Owner::PendingZero)?;
        }
        if self.store_vsa != 0 && !self.vsas.contains_key(&self.store_vsa) {
            return Err(StateError::StoreRole(self.store_vsa));
        }
        for (n, vsic) in self.vsics.iter().enumerate() {
            for a in vsic.slots.iter().flatten() {
                let ok = self
                    .vsas
                    .get(&a.vsa_id)
                    .and_then(|v| v.token(a.token_id))
                    .is_some();
                if !ok {
                    return Err(StateError::Attachment {
                        vsic: n,
                        vsa: a.vsa_id,
                        token: a.token_id,
                    });
                }
            }
        }
        Ok(())
    }
}

/// What holds an extent in a pool state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Vsa(u64),
    PendingZero,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Vsa(id) => write!(f, "VSA {id}"),
            Owner::PendingZero => f.write_str("pending-zero list"),
        }
    }
}

/// An invariant a pool state breaks ([`PoolState::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("extent size {0} is not a power of two")]
    ExtentSize(u64),
    #[error("{owner} names drive {} which is not in the pool", .extent.drive)]
    UnknownDrive { owner: Owner, extent: PhysExtent },
    #[error("{owner} uses extent {} of drive {} outside its data area", .extent.index, .extent.drive)]
    OutsideDataArea { owner: Owner, extent: PhysExtent },
    #[error("extent {} of drive {} is used twice", .0.index, .0.drive)]
    UsedTwice(PhysExtent),
    #[error("VSA id {0} is inconsistent")]
    VsaId(u64),
    #[error("VSA {vsa} has size {size} for {extents} extents")]
    VsaSize { vsa: u64, size: u64, extents: usize },
    #[error("VSA {0} has a bad stripe set")]
    Stripe(u64),
    #[error("VSA {vsa} extent {extent} is off its stripe")]
    OffStripe { vsa: u64, extent: usize },
    #[error("VSA {vsa} has a bad token record {token}")]
    Token { vsa: u64, token: u32 },
    #[error("VSA {vsa} token {token} has an unknown parent")]
    TokenParent { vsa: u64, token: u32 },
    #[error("the store role names VSA {0} which does not exist")]
    StoreRole(u64),
    #[error("VSIC {vsic} is attached to an unknown VSA {vsa} or token {token}")]
    Attachment { vsic: usize, vsa: u64, token: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PoolState {
        let mut s = PoolState::new(
            4096,
            vec![DriveRecord {
                first_data_extent: 2,
                extent_count: 10,
            }],
            2,
        );
        s.vsas.insert(
            1,
            VsaRecord {
                id: 1,
                size: 8192,
                stripe: vec![0],
                extents: vec![
                    PhysExtent { drive: 0, index: 2 },
                    PhysExtent { drive: 0, index: 3 },
                ],
                tokens: vec![TokenRecord {
                    id: 1,
                    parent: 0,
                    rights: Rights::ALL,
                    revoked: false,
                    digest: [0; 32],
                }],
                next_token_id: 2,
            },
        );
        s.next_vsa_id = 2;
        s.vsics[1].slots[0] = Some(Attachment {
            vsa_id: 1,
            token_id: 1,
            read_only: false,
        });
        s
    }

    #[test]
    fn check_accepts_consistent_state() {
        sample().check().unwrap();
        assert_eq!(sample().attachment_count(1), 1);
        assert_eq!(sample().total_extents(), 8);
    }

    #[test]
    fn check_refuses_inconsistencies() {
        let mut s = sample();
        s.pending_zero.push(PhysExtent { drive: 0, index: 3 });
        assert!(s.check().unwrap_err().to_string().contains("used twice"));
        let mut s = sample();
        s.vsas.get_mut(&1).unwrap().extents[0].index = 1;
        assert!(s.check().unwrap_err().to_string().contains("outside"));
        let mut s = sample();
        s.vsas.get_mut(&1).unwrap().size = 4096;
        assert!(s.check().is_err());
        let mut s = sample();
        s.vsics[0].slots[3] = Some(Attachment {
            vsa_id: 9,
            token_id: 1,
            read_only: true,
        });
        assert!(s.check().unwrap_err().to_string().contains("unknown VSA"));
        let mut s = sample();
        s.vsas.get_mut(&1).unwrap().tokens[0].id = 5;
        assert!(s.check().is_err());
        let mut s = sample();
        s.store_vsa = 1;
        s.check().unwrap();
        s.store_vsa = 9;
        assert!(s.check().unwrap_err().to_string().contains("store role"));
    }
}
