//! What the data plane reads: per-VSIC slot bindings, enabled flag, QoS and
//! counters, and the VSA handles. `reconcile` brings it in line with a
//! newly committed pool state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::dma::DmaState;
use super::qos::Qos;
use super::state::{PoolState, VsicRecord, SLOTS};
use super::stats::{RateLimit, VsicCounters};
use super::vsa::{VsaHandle, VsaLayout};

#[derive(Clone)]
pub struct SlotBinding {
    pub vsa: Arc<VsaHandle>,
    pub read_only: bool,
}

pub type Bindings = [Option<SlotBinding>; SLOTS];

pub struct VsicRuntime {
    pub enabled: AtomicBool,
    slots: RwLock<Bindings>,
    pub qos: Qos,
    pub stats: VsicCounters,
    pub failure_log: RateLimit,
    pub dma: DmaState,
}

impl VsicRuntime {
    pub fn new(queues: usize) -> Self {
        let rec = VsicRecord::default();
        Self {
            enabled: AtomicBool::new(rec.enabled),
            slots: RwLock::new(Default::default()),
            qos: Qos::new(rec.qos_bytes_per_sec, rec.qos_iops),
            stats: VsicCounters::new(queues),
            failure_log: RateLimit::default(),
            dma: DmaState::default(),
        }
    }

    pub fn slots(&self) -> RwLockReadGuard<'_, Bindings> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Enables or disables the VSIC. Disabling returns only once every
    /// request that saw the VSIC enabled has finished: requests check the
    /// flag while holding the slot read lock, and hold it for their whole
    /// transfer, so taking the write lock once drains them (as a detach
    /// does).
    fn set_enabled(&self, enabled: bool) {
        let was = self.enabled.swap(enabled, Ordering::AcqRel);
        if was && !enabled {
            drop(self.slots.write().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

fn layout_of(state: &PoolState, id: u64) -> Option<VsaLayout> {
    state.vsas.get(&id).map(|v| VsaLayout {
        size: v.size,
        extents: v.extents.clone(),
        deleted: false,
    })
}

/// (VSA id, size) in slot 0 of VSIC `n`: what the guest sees as capacity.
fn slot0(state: &PoolState, n: usize) -> Option<(u64, u64)> {
    let a = state.vsics.get(n)?.slots[0]?;
    Some((a.vsa_id, state.vsas.get(&a.vsa_id).map_or(0, |v| v.size)))
}

/// Updates handles and VSIC runtimes from `old` (None: from nothing) to
/// `new`, returning the VSICs whose slot-0 VSA or its size changed.
///
/// VSA layouts are swapped under their write lock, which waits for every
/// in-flight I/O on them: once this returns, nothing touches extents the
/// new state no longer maps.
pub fn reconcile(
    vsics: &[VsicRuntime],
    handles: &mut BTreeMap<u64, Arc<VsaHandle>>,
    old: Option<&PoolState>,
    new: &PoolState,
) -> Vec<u32> {
    for (&id, v) in &new.vsas {
        let before = old.and_then(|o| o.vsas.get(&id));
        match handles.get(&id) {
            Some(h) => {
                if before.map(|b| (b.size, &b.extents)) != Some((v.size, &v.extents)) {
                    if let Some(layout) = layout_of(new, id) {
                        *h.write() = layout;
                    }
                }
            }
            None => {
                let layout = layout_of(new, id).unwrap_or_default();
                handles.insert(id, Arc::new(VsaHandle::new(layout)));
            }
        }
    }
    let gone: Vec<u64> = handles
        .keys()
        .copied()
        .filter(|id| !new.vsas.contains_key(id))
        .collect();
    for id in gone {
        if let Some(h) = handles.remove(&id) {
            *h.write() = VsaLayout {
                deleted: true,
                ..Default::default()
            };
        }
    }
    let mut changed = Vec::new();
    for (n, rt) in vsics.iter().enumerate() {
        let Some(rec) = new.vsics.get(n) else {
            continue;
        };
        let before = old.and_then(|o| o.vsics.get(n));
        if before.map(|b| &b.slots) != Some(&rec.slots) {
            let bindings: Bindings = std::array::from_fn(|i| {
                let a = rec.slots[i]?;
                Some(SlotBinding {
                    vsa: handles.get(&a.vsa_id)?.clone(),
                    read_only: a.read_only,
                })
            });
            *rt.slots.write().unwrap_or_else(|e| e.into_inner()) = bindings;
        }
        rt.set_enabled(rec.enabled);
        rt.dma.set_enforced(rec.dma_enforced);
        if before.map(|b| (b.qos_bytes_per_sec, b.qos_iops))
            != Some((rec.qos_bytes_per_sec, rec.qos_iops))
        {
            rt.qos.set(rec.qos_bytes_per_sec, rec.qos_iops);
        }
        if old.map(|o| slot0(o, n)) != Some(slot0(new, n)) && old.is_some() {
            changed.push(n as u32);
        }
    }
    changed
}
