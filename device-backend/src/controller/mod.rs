//! The controller model. The front calls it only through the traits of
//! [`target`] (the seam); everything else here is the model's own.
//!
//! Modules, one job each:
//! - `target`: the seam: [`Target`] = [`IoTarget`] + [`AdminTarget`], their
//!   vocabulary (`IoKind`, `IoError`, `AdminReply`) and, for tests, an
//!   in-memory double;
//! - `buffers`: [`IoBuffers`], the memory a read or write moves data to or
//!   from, as a safe type;
//! - `drive`: positional I/O, zeroing and syncing on one backing file/device;
//! - `drive_hook`: the drives' hook for drive-level fault injection;
//! - `state`: the persisted pool model (VSAs, extent maps, tokens, VSICs);
//! - `metadata`: its on-drive format, atomic commit and recovery;
//! - `alloc`: extent allocation and striping;
//! - `caps`: capability minting, verification and revocation sets;
//! - `runtime` / `vsa`: what the data plane reads (slot bindings, extent
//!   maps behind read-write locks);
//! - `admin`: admin command decoding and execution ([`AdminTarget`]);
//! - `datapath`: reads, writes, flushes and discards ([`IoTarget`]);
//! - `dma`: per-VSIC DMA protection (mode, windows, the buffer lookup);
//! - `qos`, `stats`: token buckets, counters and log rate limiting;
//! - `wcache`: the volatile write-back cache model (`--volatile-cache`);
//! - `power`: `power-cut` and `power-on`.
//! - `timing`: the drive timing model (when a request's completion is
//!   due); `timed`: the controller's use of it and its setter.

mod admin;
mod alloc;
mod buffers;
mod caps;
mod datapath;
mod dma;
mod drive;
mod drive_hook;
mod metadata;
mod power;
mod qos;
mod runtime;
mod state;
mod stats;
pub mod target;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod timed;
pub mod timing;
mod vsa;
mod wcache;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use vsic_abi::records::CacheMode;
use vsic_abi::window::WINDOW_SIZE;

pub use drive::{DriveError, OpenOp};
pub use drive_hook::{flip_bits, DriveFault, DriveHook, DriveOpKind};
pub use metadata::{BodyError, CommitError, DriveOp, MetadataError};
pub use power::PowerError;
pub use state::{Owner, StateError};
pub use target::{AdminReply, AdminTarget, IoBuffers, IoError, IoKind, IoTarget, Target};
pub use timing::{DriveModel, Latency, ModelError, Placement, ServiceModel, MAX_UNITS};
pub use wcache::{CutReport, SECTOR};

use drive::Drive;
use metadata::MetaStore;
use power::Power;
use runtime::VsicRuntime;
use state::PoolState;
use vsa::VsaHandle;
use wcache::VolatileCache;

/// Smallest and largest extent sizes `open` accepts.
pub const MIN_EXTENT_SIZE: u64 = 4096;
pub const MAX_EXTENT_SIZE: u64 = 1 << 30;
/// Default extent size (1 MiB).
pub const DEFAULT_EXTENT_SIZE: u64 = 1 << 20;

/// One backing drive: a file (created sparse when missing) or a block device.
#[derive(Debug, Clone)]
pub struct DriveSpec {
    pub path: PathBuf,
    /// Size for a file that does not exist yet; ignored for existing drives.
    pub size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub drives: Vec<DriveSpec>,
    pub vsics: u32,
    pub queues_per_vsic: u16,
    pub extent_size: u64,
    pub cache_mode: CacheMode,
    /// The drive timing model at start (`None`: completions at once);
    /// [`Controller::set_service_model`] changes it at run time.
    pub service_model: Option<ServiceModel>,
    /// The volatile write-back cache model; `None`: completed writes go
    /// straight to the drives.
    pub volatile_cache: Option<VolatileCacheConfig>,
}

/// `--volatile-cache SIZE` and `--power-cut-seed N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolatileCacheConfig {
    /// Capacity in bytes (a positive multiple of [`SECTOR`]).
    pub size: u64,
    /// With a seed, a power cut lets a random half of the unflushed sectors
    /// reach the drives (chosen by a generator seeded once with it);
    /// without, it loses them all.
    pub cut_seed: Option<u64>,
}

/// A configuration `Controller::open` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("at least one drive is needed")]
    NoDrives,
    #[error("extent size {0} must be a power of two between {MIN_EXTENT_SIZE} and {MAX_EXTENT_SIZE} bytes")]
    ExtentSize(u64),
    #[error("every VSIC needs at least one queue")]
    NoQueues,
    #[error("the volatile cache models a write-back cache; it needs --cache write-back")]
    VolatileCacheWriteThrough,
    #[error("volatile cache size {0} must be a positive multiple of 512 bytes")]
    VolatileCacheSize(u64),
}

/// Errors opening the controller (bad drives, corrupted metadata, ...).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error("drive {} is given twice", .0.display())]
    DriveTwice(PathBuf),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// The controller: shared by every function's queue threads.
///
/// Admin commands are serialised by one mutex (they are rare and each
/// commits metadata); the data path never takes it: it reads per-VSIC slot
/// bindings and per-VSA extent maps through read-write locks.
pub struct Controller {
    config: ControllerConfig,
    drives: Vec<Arc<Drive>>,
    vsics: Vec<VsicRuntime>,
    admin: Mutex<AdminPlane>,
    /// `--volatile-cache`: completed writes not yet flushed.
    cache: Option<VolatileCache>,
    power: Power,
    /// The running drive timing model, if on (see `timed`).
    timing: RwLock<Option<Arc<timing::Timing>>>,
    /// Whether `timing` is `Some`: one load per batch in the front.
    timed: AtomicBool,
    /// VSIC frontends connected now (see `IoTarget::frontend_left`).
    vsic_frontends: std::sync::atomic::AtomicUsize,
}

/// Everything admin commands change, behind the admin mutex.
struct AdminPlane {
    /// The last committed pool state.
    state: PoolState,
    store: MetaStore,
    handles: BTreeMap<u64, Arc<VsaHandle>>,
}

impl Controller {
    /// Opens (or formats) the drives and loads the newest committed metadata.
    pub fn open(config: ControllerConfig) -> Result<Arc<Controller>, OpenError> {
        let mut config = config;
        check_config(&config)?;
        let sync_writes = config.cache_mode == CacheMode::WriteThrough;
        let mut drives = Vec::new();
        let mut seen = HashSet::new();
        for spec in &config.drives {
            let d = Drive::open(&spec.path, spec.size, sync_writes)?;
            if !seen.insert(d.identity()) {
                return Err(OpenError::DriveTwice(spec.path.clone()));
            }
            drives.push(Arc::new(d));
        }
        let opened = metadata::open_pool(&drives, config.extent_size, config.vsics as usize)?;
        if !opened.formatted {
            log::info!(
                "opened an existing pool with {} VSAs",
                opened.state.vsas.len()
            );
        }
        if opened.state.extent_size != config.extent_size {
            log::warn!(
                "the pool was formatted with {}-byte extents; ignoring the configured {} bytes",
                opened.state.extent_size,
                config.extent_size
            );
            config.extent_size = opened.state.extent_size;
        }
        let vsics: Vec<VsicRuntime> = (0..config.vsics)
            .map(|_| VsicRuntime::new(config.queues_per_vsic as usize))
            .collect();
        let mut handles = BTreeMap::new();
        runtime::reconcile(&vsics, &mut handles, None, &opened.state);
        let cache = config
            .volatile_cache
            .map(|c| VolatileCache::new(c.size, drives.len()));
        let power = Power::new(config.volatile_cache.and_then(|c| c.cut_seed));
        let timing = config
            .service_model
            .clone()
            .map(|m| Arc::new(timing::Timing::new(m, drives.len())));
        let controller = Controller {
            config,
            timed: AtomicBool::new(timing.is_some()),
            timing: RwLock::new(timing),
            drives,
            cache,
            power,
            vsics,
            admin: Mutex::new(AdminPlane {
                state: opened.state,
                store: opened.store,
                handles,
            }),
            vsic_frontends: Default::default(),
        };
        // Finish zeroing extents a previous run freed but did not zero yet.
        {
            let mut plane = controller.plane();
            controller.zero_pending(&mut plane);
        }
        Ok(Arc::new(controller))
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Newest metadata generation written to the drives.
    pub fn metadata_generation(&self) -> u64 {
        self.plane().store.generation()
    }

    fn plane(&self) -> std::sync::MutexGuard<'_, AdminPlane> {
        // Admin commands never leave the plane half-updated (they build the
        // new state aside and swap it in), so a poisoned lock is usable.
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_config(c: &ControllerConfig) -> Result<(), ConfigError> {
    if c.drives.is_empty() {
        return Err(ConfigError::NoDrives);
    }
    let es = c.extent_size;
    if !es.is_power_of_two()
        || !(MIN_EXTENT_SIZE..=MAX_EXTENT_SIZE).contains(&es)
        || es > WINDOW_SIZE
    {
        return Err(ConfigError::ExtentSize(es));
    }
    if c.queues_per_vsic == 0 {
        return Err(ConfigError::NoQueues);
    }
    if let Some(v) = c.volatile_cache {
        if c.cache_mode == CacheMode::WriteThrough {
            return Err(ConfigError::VolatileCacheWriteThrough);
        }
        if v.size == 0 || !v.size.is_multiple_of(SECTOR) {
            return Err(ConfigError::VolatileCacheSize(v.size));
        }
    }
    Ok(())
}
