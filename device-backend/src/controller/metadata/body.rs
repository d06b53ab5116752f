//! The body of a metadata commit: one copy of the whole pool state, as a
//! sequence of the fixed records of [`super::layout`] and u32 counts.
//! Decoding never panics and checks every invariant of the state.

use std::collections::BTreeMap;

use vsic_abi::layout::Layout;
use vsic_abi::Rights;

use super::codec::{Decoder, Encoder, Truncated};
use super::layout::{DriveEntry, PoolHead, RunEntry, SlotEntry, TokenEntry, VsaHead, VsicHead};
use crate::controller::state::{
    Attachment, DriveRecord, PhysExtent, PoolState, StateError, TokenRecord, VsaRecord, VsicRecord,
    SLOTS,
};

/// Why a body does not decode to a consistent pool state.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("metadata body is truncated")]
    Truncated,
    #[error("metadata body has trailing bytes")]
    TrailingBytes,
    #[error("extent run longer than the pool")]
    RunTooLong,
    #[error("extent run overflows")]
    RunOverflows,
    #[error("token {id} of VSA has unknown flags {flags:#x}")]
    TokenFlags { id: u32, flags: u32 },
    #[error("VSA {0} appears twice")]
    DuplicateVsa(u64),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<Truncated> for BodyError {
    fn from(_: Truncated) -> Self {
        BodyError::Truncated
    }
}

/// Groups consecutive extents of one drive: (first extent, count).
pub fn to_runs(extents: &[PhysExtent]) -> Vec<(PhysExtent, u32)> {
    let mut runs: Vec<(PhysExtent, u32)> = Vec::new();
    for e in extents {
        if let Some((first, count)) = runs.last_mut() {
            if first.drive == e.drive
                && first.index.checked_add(*count as u64) == Some(e.index)
                && *count < u32::MAX
            {
                *count += 1;
                continue;
            }
        }
        runs.push((*e, 1));
    }
    runs
}

fn encode_runs(e: &mut Encoder, extents: &[PhysExtent]) {
    let runs = to_runs(extents);
    e.len(runs.len());
    for (first, count) in runs {
        e.put(&RunEntry {
            drive: first.drive.into(),
            count: count.into(),
            first: first.index.into(),
        });
    }
}

fn decode_runs(d: &mut Decoder, limit: u64) -> Result<Vec<PhysExtent>, BodyError> {
    let n = d.len(RunEntry::LEN)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let run: RunEntry = d.record()?;
        let (drive, count, first) = (run.drive.get(), run.count.get() as u64, run.first.get());
        // A corrupted count must not make us allocate without bound.
        if out.len() as u64 + count > limit {
            return Err(BodyError::RunTooLong);
        }
        let last = first.checked_add(count).ok_or(BodyError::RunOverflows)?;
        out.extend((first..last).map(|index| PhysExtent { drive, index }));
    }
    Ok(out)
}

/// Encodes everything of `s` except the store role (which the slot header
/// carries).
pub fn encode_body(s: &PoolState) -> Vec<u8> {
    let mut e = Encoder::new();
    e.put(&PoolHead {
        extent_size: s.extent_size.into(),
        next_vsa_id: s.next_vsa_id.into(),
    });
    e.len(s.drives.len());
    for d in &s.drives {
        e.put(&DriveEntry {
            first_data_extent: d.first_data_extent.into(),
            extent_count: d.extent_count.into(),
        });
    }
    e.len(s.vsas.len());
    for v in s.vsas.values() {
        e.put(&VsaHead {
            id: v.id.into(),
            size: v.size.into(),
            next_token_id: v.next_token_id.into(),
        });
        e.len(v.stripe.len());
        for d in &v.stripe {
            e.u32(*d);
        }
        encode_runs(&mut e, &v.extents);
        e.len(v.tokens.len());
        for t in &v.tokens {
            e.put(&TokenEntry {
                id: t.id.into(),
                parent: t.parent.into(),
                rights: t.rights.0.into(),
                flags: (t.revoked as u32).into(),
                digest: t.digest,
            });
        }
    }
    e.len(s.vsics.len());
    for v in &s.vsics {
        e.put(&VsicHead {
            flags: (v.enabled as u32 | (v.dma_enforced as u32) << 1).into(),
            qos_bytes_per_sec: v.qos_bytes_per_sec.into(),
            qos_iops: v.qos_iops.into(),
        });
        for slot in &v.slots {
            let a = slot.unwrap_or(Attachment {
                vsa_id: 0,
                token_id: 0,
                read_only: false,
            });
            e.put(&SlotEntry {
                vsa_id: a.vsa_id.into(),
                token_id: a.token_id.into(),
                flags: (a.read_only as u32).into(),
            });
        }
    }
    encode_runs(&mut e, &s.pending_zero);
    e.finish()
}

/// Decodes and checks a body; any inconsistency is an error. `max_extents`
/// (the pool's extent count, known from the superblocks) bounds how much
/// memory a corrupted extent run may make us allocate. The store role is
/// left at 0 (the caller takes it from the slot header).
pub fn decode_body(b: &[u8], max_extents: u64) -> Result<PoolState, BodyError> {
    let mut d = Decoder::new(b);
    let head: PoolHead = d.record()?;
    let n = d.len(DriveEntry::LEN)?;
    let mut drives = Vec::with_capacity(n);
    for _ in 0..n {
        let e: DriveEntry = d.record()?;
        drives.push(DriveRecord {
            first_data_extent: e.first_data_extent.get(),
            extent_count: e.extent_count.get(),
        });
    }
    let limit: u64 = drives
        .iter()
        .map(|d| d.extent_count)
        .fold(0u64, |a, b| a.saturating_add(b))
        .min(max_extents);
    // A VSA is at least its head and three counts.
    let n = d.len(VsaHead::LEN + 12)?;
    let mut vsas = BTreeMap::new();
    for _ in 0..n {
        let head: VsaHead = d.record()?;
        let id = head.id.get();
        let ns = d.len(4)?;
        let mut stripe = Vec::with_capacity(ns);
        for _ in 0..ns {
            stripe.push(d.u32()?);
        }
        let extents = decode_runs(&mut d, limit)?;
        let nt = d.len(TokenEntry::LEN)?;
        let mut tokens = Vec::with_capacity(nt);
        for _ in 0..nt {
            let t: TokenEntry = d.record()?;
            let (id, flags) = (t.id.get(), t.flags.get());
            if flags > 1 {
                return Err(BodyError::TokenFlags { id, flags });
            }
            tokens.push(TokenRecord {
                id,
                parent: t.parent.get(),
                rights: Rights(t.rights.get()),
                revoked: flags == 1,
                digest: t.digest,
            });
        }
        let vsa = VsaRecord {
            id,
            size: head.size.get(),
            stripe,
            extents,
            tokens,
            next_token_id: head.next_token_id.get(),
        };
        if vsas.insert(id, vsa).is_some() {
            return Err(BodyError::DuplicateVsa(id));
        }
    }
    let n = d.len(VsicHead::LEN + SlotEntry::LEN * SLOTS)?;
    let mut vsics = Vec::with_capacity(n);
    for _ in 0..n {
        let head: VsicHead = d.record()?;
        let mut v = VsicRecord {
            enabled: head.flags.get() & 1 != 0,
            qos_bytes_per_sec: head.qos_bytes_per_sec.get(),
            qos_iops: head.qos_iops.get(),
            slots: [None; SLOTS],
            dma_enforced: head.flags.get() & 2 != 0,
        };
        for slot in v.slots.iter_mut() {
            let e: SlotEntry = d.record()?;
            if e.vsa_id.get() != 0 {
                *slot = Some(Attachment {
                    vsa_id: e.vsa_id.get(),
                    token_id: e.token_id.get(),
                    read_only: e.flags.get() & 1 != 0,
                });
            }
        }
        vsics.push(v);
    }
    let pending_zero = decode_runs(&mut d, limit)?;
    if d.remaining() != 0 {
        return Err(BodyError::TrailingBytes);
    }
    let s = PoolState {
        extent_size: head.extent_size.get(),
        drives,
        next_vsa_id: head.next_vsa_id.get(),
        vsas,
        vsics,
        pending_zero,
        store_vsa: 0,
    };
    s.check()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip() {
        let mut s = PoolState::new(
            4096,
            vec![
                DriveRecord {
                    first_data_extent: 3,
                    extent_count: 100
                };
                2
            ],
            3,
        );
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
                    TokenRecord {
                        id: 1,
                        parent: 0,
                        rights: Rights::ALL,
                        revoked: true,
                        digest: [1; 32],
                    },
                    TokenRecord {
                        id: 2,
                        parent: 1,
                        rights: Rights::READ,
                        revoked: false,
                        digest: [2; 32],
                    },
                ],
                next_token_id: 3,
            },
        );
        s.next_vsa_id = 5;
        s.vsics[2].slots[15] = Some(Attachment {
            vsa_id: 4,
            token_id: 2,
            read_only: true,
        });
        s.vsics[1].enabled = false;
        s.vsics[1].qos_iops = 77;
        s.vsics[1].dma_enforced = true;
        s.pending_zero = vec![
            PhysExtent {
                drive: 0,
                index: 10,
            },
            PhysExtent {
                drive: 0,
                index: 11,
            },
        ];
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
    fn runs_group_consecutive_extents() {
        let e = |drive, index| PhysExtent { drive, index };
        let runs = to_runs(&[e(0, 5), e(0, 6), e(1, 7), e(0, 7), e(0, 9)]);
        assert_eq!(
            runs,
            vec![(e(0, 5), 2), (e(1, 7), 1), (e(0, 7), 1), (e(0, 9), 1)]
        );
    }
}
