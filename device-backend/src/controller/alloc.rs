//! Extent allocation. The free map is derived from the pool state (every
//! data extent that is neither mapped by a VSA nor waiting to be zeroed),
//! so it can never disagree with what was committed.

use super::state::{PhysExtent, PoolState};

#[derive(Debug, PartialEq, Eq)]
pub struct NoSpace;

pub struct Allocator {
    /// `used[d][i]`: extent i of drive d is taken (or is metadata).
    used: Vec<Vec<bool>>,
    free: Vec<u64>,
}

impl Allocator {
    pub fn build(state: &PoolState) -> Self {
        let mut used: Vec<Vec<bool>> = state
            .drives
            .iter()
            .map(|d| {
                let mut v = vec![false; d.extent_count as usize];
                let meta = (d.first_data_extent as usize).min(v.len());
                v[..meta].fill(true);
                v
            })
            .collect();
        let taken = state
            .vsas
            .values()
            .flat_map(|v| v.extents.iter())
            .chain(state.pending_zero.iter());
        for e in taken {
            if let Some(slot) = used
                .get_mut(e.drive as usize)
                .and_then(|d| d.get_mut(e.index as usize))
            {
                *slot = true;
            }
        }
        let free = used
            .iter()
            .map(|d| d.iter().filter(|u| !**u).count() as u64)
            .collect();
        Self { used, free }
    }

    pub fn free_total(&self) -> u64 {
        self.free.iter().sum()
    }

    /// The `width` drives with the most free extents (ties: lower index),
    /// in drive order.
    pub fn choose_stripe(&self, width: usize) -> Option<Vec<u32>> {
        if width == 0 || width > self.free.len() {
            return None;
        }
        let mut order: Vec<u32> = (0..self.free.len() as u32).collect();
        order.sort_by_key(|&d| (std::cmp::Reverse(self.free[d as usize]), d));
        order.truncate(width);
        order.sort_unstable();
        Some(order)
    }

    /// Allocates logical extents `first_logical .. first_logical + count` of
    /// a VSA striped over `stripe` (logical i → stripe[i % len]); all or
    /// nothing.
    pub fn allocate(
        &mut self,
        stripe: &[u32],
        first_logical: usize,
        count: usize,
    ) -> Result<Vec<PhysExtent>, NoSpace> {
        if stripe.is_empty() {
            return Err(NoSpace);
        }
        let mut need = vec![0u64; self.free.len()];
        for i in first_logical..first_logical.saturating_add(count) {
            let d = stripe[i % stripe.len()] as usize;
            *need.get_mut(d).ok_or(NoSpace)? += 1;
        }
        if need.iter().zip(&self.free).any(|(n, f)| n > f) {
            return Err(NoSpace);
        }
        let mut cursor = vec![0usize; self.free.len()];
        let mut out = Vec::with_capacity(count);
        for i in first_logical..first_logical + count {
            let d = stripe[i % stripe.len()] as usize;
            let map = &mut self.used[d];
            let start = cursor[d];
            let index = start + map[start..].iter().position(|u| !*u).ok_or(NoSpace)?;
            map[index] = true;
            cursor[d] = index + 1;
            self.free[d] -= 1;
            out.push(PhysExtent {
                drive: d as u32,
                index: index as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::{DriveRecord, VsaRecord};

    fn pool(sizes: &[u64]) -> PoolState {
        PoolState::new(
            4096,
            sizes
                .iter()
                .map(|&n| DriveRecord {
                    first_data_extent: 2,
                    extent_count: n,
                })
                .collect(),
            1,
        )
    }

    #[test]
    fn allocates_lowest_free_and_counts() {
        let s = pool(&[10]);
        let mut a = Allocator::build(&s);
        assert_eq!(a.free_total(), 8);
        let got = a.allocate(&[0], 0, 3).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(a.free_total(), 5);
        assert_eq!(a.allocate(&[0], 3, 6), Err(NoSpace));
        assert_eq!(a.free_total(), 5, "a failed allocation takes nothing");
        assert_eq!(a.allocate(&[0], 3, 5).unwrap().len(), 5);
        assert_eq!(a.free_total(), 0);
    }

    #[test]
    fn respects_used_and_pending_extents() {
        let mut s = pool(&[6]);
        s.vsas.insert(
            1,
            VsaRecord {
                id: 1,
                size: 4096,
                stripe: vec![0],
                extents: vec![PhysExtent { drive: 0, index: 2 }],
                tokens: vec![],
                next_token_id: 1,
            },
        );
        s.pending_zero.push(PhysExtent { drive: 0, index: 4 });
        let mut a = Allocator::build(&s);
        assert_eq!(a.free_total(), 2);
        let got = a.allocate(&[0], 0, 2).unwrap();
        assert_eq!(
            got,
            vec![
                PhysExtent { drive: 0, index: 3 },
                PhysExtent { drive: 0, index: 5 }
            ]
        );
    }

    #[test]
    fn striping_round_robins_over_emptiest_drives() {
        let s = pool(&[6, 12, 10]);
        let mut a = Allocator::build(&s);
        let stripe = a.choose_stripe(2).unwrap();
        assert_eq!(stripe, vec![1, 2]);
        let got = a.allocate(&stripe, 0, 5).unwrap();
        let drives: Vec<u32> = got.iter().map(|e| e.drive).collect();
        assert_eq!(drives, vec![1, 2, 1, 2, 1]);
        // Continuing the same VSA keeps the rotation.
        let more = a.allocate(&stripe, 5, 1).unwrap();
        assert_eq!(more[0].drive, 2);
        assert!(a.choose_stripe(4).is_none());
        assert!(a.choose_stripe(0).is_none());
        // Drive 2 has 8 - 3 = 5 left: 12 more extents on [1, 2] need 6 on it.
        assert_eq!(a.allocate(&stripe, 6, 12), Err(NoSpace));
    }
}
