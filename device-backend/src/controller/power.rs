//! The controller's power: `power-cut` and `power-on` (management
//! commands).
//!
//! A cut waits for the requests in progress (they completed before the
//! cut), then loses the volatile cache's unflushed sectors (all of them,
//! or with a seed a random half of them reaches the drive first, to model
//! a cache that destaged in any order) and stops serving: until
//! `power-on`, every data-plane request fails with
//! [`super::IoError::PoweredOff`] (VIRTIO_BLK_S_IOERR), which is what a
//! driver eventually reports for a device that stopped answering. The
//! admin plane keeps answering: its state is the metadata on the drives,
//! every change of which was committed and synced before it completed.
//!
//! Requests hold the gate's read lock for their whole run; the cut takes
//! the write lock, so none straddles it.

use std::sync::{Mutex, RwLock, RwLockReadGuard};

use super::wcache::CutReport;
use super::{Controller, IoError};

/// Why a power command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("the controller is already powered off")]
    AlreadyOff,
    #[error("the controller is already powered on")]
    AlreadyOn,
}

/// splitmix64: small, seedable, good enough to pick surviving sectors.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub struct Power {
    /// True while powered off.
    off: RwLock<bool>,
    /// With `--power-cut-seed`: chooses the sectors a cut keeps.
    rng: Mutex<Option<SplitMix>>,
}

/// Held by a request while it runs: the power stays on meanwhile.
pub type PowerGuard<'a> = RwLockReadGuard<'a, bool>;

impl Power {
    pub fn new(cut_seed: Option<u64>) -> Power {
        Power {
            off: RwLock::new(false),
            rng: Mutex::new(cut_seed.map(SplitMix)),
        }
    }

    /// Lets a request run while the power is on.
    pub fn enter(&self) -> Result<PowerGuard<'_>, IoError> {
        let on = self.off.read().unwrap_or_else(|e| e.into_inner());
        if *on {
            Err(IoError::PoweredOff)
        } else {
            Ok(on)
        }
    }

    pub fn is_off(&self) -> bool {
        *self.off.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Controller {
    /// Cuts the power (see the module documentation).
    pub fn power_cut(&self) -> Result<CutReport, PowerError> {
        let mut off = self.power.off.write().unwrap_or_else(|e| e.into_inner());
        if *off {
            return Err(PowerError::AlreadyOff);
        }
        *off = true;
        let report = match &self.cache {
            None => CutReport::default(),
            Some(cache) => {
                let mut rng = self.power.rng.lock().unwrap_or_else(|e| e.into_inner());
                match rng.as_mut() {
                    Some(rng) => cache.cut(&self.drives, Some(&mut || rng.next() & 1 == 1)),
                    None => cache.cut(&self.drives, None),
                }
            }
        };
        log::warn!(
            "power cut: {} unflushed sectors lost, {} reached the drives",
            report.dropped,
            report.kept
        );
        Ok(report)
    }

    /// Restores the power: requests are served again.
    pub fn power_on(&self) -> Result<(), PowerError> {
        let mut off = self.power.off.write().unwrap_or_else(|e| e.into_inner());
        if !*off {
            return Err(PowerError::AlreadyOn);
        }
        *off = false;
        log::info!("power on");
        Ok(())
    }

    /// True between `power_cut` and `power_on`.
    pub fn powered_off(&self) -> bool {
        self.power.is_off()
    }

    /// Bytes of completed writes only the volatile cache holds (0 without
    /// one).
    pub fn unflushed_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.dirty_bytes())
    }
}
