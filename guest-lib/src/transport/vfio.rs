//! virtio-pci over VFIO: the transport an application uses inside the
//! guest, owning its VSIC function outright.
//!
//! Opening a function: find it ([`crate::discovery`]), take its IOMMU group into
//! a fresh type1v2 container, get the device fd, read the virtio
//! capabilities from configuration space, enable memory decoding and bus
//! mastering, map the BARs holding the virtio structures (or fall back to
//! pread/pwrite), reset the device and acknowledge it, pin DMA memory
//! ([`crate::hugepage`]) and map it with IOVA = guest-physical address,
//! route MSI-X vectors to eventfds (vector 0: configuration change, vector
//! q + 1: queue q). Feature negotiation, queue setup and DRIVER_OK follow
//! through the [`Transport`] calls.
//!
//! The device DMAs to guest-physical addresses directly (the controller
//! functions are not behind the vIOMMU; the backend cannot translate
//! IOVAs), so the IOMMU does not isolate one process's DMA from another's
//! yet: a VSIC function can reach all guest memory. The mappings are made
//! anyway, with IOVA = GPA, so that nothing changes once the device is put
//! behind the vIOMMU.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vsic_abi::virtio::Function;

use super::pci::{self, Sysfs, VirtioCaps};
use super::vfio_sys::{Container, Group, VfioDevice, PCI_CONFIG_REGION_INDEX, PCI_MSIX_IRQ_INDEX};
use super::virtio_pci::{common, status, Bar, Window, NO_VECTOR};
use super::{queue_slot, QueueAddrs, Transport};
use crate::control::register::{self, DmaRegistration};
use crate::dma::DmaRegion;
use crate::error::Error;
use crate::hugepage::{self, DmaSource};

/// How long the device may take to finish a reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Bytes of configuration space holding the capability list.
const PCI_CONFIG_HEADER_AND_CAPS: usize = 256;

/// What the transport needs to open a function
/// ([`crate::discovery::vfio_config`] derives it from [`crate::OpenOptions`]).
#[derive(Debug, Clone)]
pub struct VfioConfig {
    /// Bytes of DMA memory (rounded up to whole huge pages) when allocating.
    pub mem_size: usize,
    pub dma: DmaSource,
    /// Fail the open when MSI-X vectors cannot be routed (interrupt mode).
    pub need_interrupts: bool,
    /// Map BARs when VFIO allows (otherwise every access is a pread/pwrite).
    pub mmap_bars: bool,
    /// Register DMA memory the library allocates itself
    /// ([`DmaSource::Allocate`]) for a VSIC with the control service
    /// ([`crate::control::register`]), so that an enforced VSIC may reach
    /// it. Off only where the control plane itself opens functions.
    pub register_dma: bool,
}

/// Set (to anything) to reach BARs through pread/pwrite even where VFIO
/// allows mapping them: the fallback path, for testing and diagnosis.
pub const NO_MMAP_ENV: &str = "VSIC_VFIO_NO_MMAP";

/// One VSIC (or PF) function owned through VFIO.
pub struct VfioTransport {
    address: String,
    common: Window,
    notify: Window,
    notify_off_multiplier: u32,
    device_cfg: Option<Window>,
    device_features: u64,
    max_queues: u16,
    max_queue_size: u16,
    /// Offset in `notify` of each set-up queue's doorbell.
    doorbells: Vec<Option<u64>>,
    region: Arc<DmaRegion>,
    /// Eventfds of MSI-X vectors 0.. (0 = configuration change).
    vectors: Vec<EventFd>,
    config_vector: bool,
    queue_has_vector: Vec<bool>,
    need_interrupts: bool,
    dma_maps: Vec<(u64, u64)>,
    /// Windows the control service added for our own DMA memory.
    registration: Option<DmaRegistration>,
    device: Arc<VfioDevice>,
    group: Group,
    container: Container,
}

impl VfioTransport {
    /// Opens the function at `address` (canonical `dddd:bb:dd.f`), which
    /// must be bound to vfio-pci, and takes it to the point where features
    /// can be negotiated.
    pub fn open(address: &str, config: &VfioConfig) -> Result<VfioTransport, Error> {
        let sys = Sysfs::default();
        let not_usable = |reason: String| Error::Connect {
            path: address.to_string(),
            reason,
        };
        if !sys.exists(address) {
            return Err(not_usable("no such PCI function".into()));
        }
        match sys.driver(address).as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                let disk = sys
                    .block_serial(address)
                    .map(|(d, _)| format!(" as /dev/{d}"))
                    .unwrap_or_default();
                return Err(not_usable(format!(
                    "bound to {other}{disk}; hand it to vfio-pci first \
                     (driver_override + drivers_probe)"
                )));
            }
            None => {
                return Err(not_usable(
                    "bound to no driver; bind it to vfio-pci first".into(),
                ))
            }
        }
        let group_number = sys.iommu_group(address).ok_or_else(|| {
            not_usable("no IOMMU group (boot the guest with intel_iommu=on)".into())
        })?;

        let container = Container::open()?;
        let group = Group::open(group_number, &container)?;
        container.set_iommu()?;
        let device = Arc::new(group.device(address)?);

        let caps = read_capabilities(&device)?;
        enable_bus_master(&device)?;
        let (common, notify, device_cfg) = open_windows(&device, &caps, config.mmap_bars)?;
        // Closing the container on a later error undoes these mappings.
        let (region, dma_maps) = map_dma_memory(&container, config)?;
        let registration = match config.dma {
            DmaSource::Allocate if config.register_dma => register_own_memory(address, &region)?,
            _ => None,
        };

        let mut t = VfioTransport {
            address: address.to_string(),
            common,
            notify,
            notify_off_multiplier: caps.notify_off_multiplier,
            device_cfg,
            device_features: 0,
            max_queues: 0,
            max_queue_size: 0,
            doorbells: Vec::new(),
            region: Arc::new(region),
            vectors: Vec::new(),
            config_vector: false,
            queue_has_vector: Vec::new(),
            need_interrupts: config.need_interrupts,
            dma_maps,
            registration,
            device,
            group,
            container,
        };
        t.reset()?;
        t.add_status(status::ACKNOWLEDGE | status::DRIVER)?;
        t.device_features = t.read_device_features()?;
        t.max_queues = t.common.read16(common::NUM_QUEUES)?;
        if t.max_queues == 0 {
            return Err(Error::transport(
                "virtio-pci setup",
                "the device has no queues",
            ));
        }
        t.common.write16(common::QUEUE_SELECT, 0)?;
        t.max_queue_size = t.common.read16(common::QUEUE_SIZE)?;
        t.doorbells = vec![None; t.max_queues as usize];
        t.queue_has_vector = vec![false; t.max_queues as usize];
        t.setup_msix()?;
        debug!(
            "{address}: group {}, features {:#x}, {} queue(s) of up to {}, {} MSI-X vector(s), \
             {} DMA chunk(s), BARs {}",
            t.group.number(),
            t.device_features,
            t.max_queues,
            t.max_queue_size,
            t.vectors.len(),
            t.region.chunks().len(),
            if t.common.is_mapped() {
                "mapped"
            } else {
                "through read/write"
            }
        );
        Ok(t)
    }

    /// The function's PCI address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn device_status(&self) -> Result<u8, Error> {
        self.common.read8(common::DEVICE_STATUS)
    }

    fn add_status(&self, bits: u8) -> Result<(), Error> {
        let now = self.device_status()?;
        self.common.write8(common::DEVICE_STATUS, now | bits)
    }

    /// Writes 0 to the status and waits until the device reports it: the
    /// device has then stopped using every queue.
    fn reset(&self) -> Result<(), Error> {
        self.common.write8(common::DEVICE_STATUS, 0)?;
        let deadline = Instant::now() + RESET_TIMEOUT;
        while self.device_status()? != 0 {
            if Instant::now() >= deadline {
                return Err(Error::transport(
                    "virtio reset",
                    "the device did not finish resetting",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn read_device_features(&self) -> Result<u64, Error> {
        let mut features = 0u64;
        for half in 0..2u32 {
            self.common.write32(common::DEVICE_FEATURE_SELECT, half)?;
            features |= (self.common.read32(common::DEVICE_FEATURE)? as u64) << (32 * half);
        }
        Ok(features)
    }

    /// Routes MSI-X vector 0 (configuration change) and 1..=queues to
    /// eventfds and tells the device about vector 0. Missing vectors only
    /// matter in interrupt mode.
    fn setup_msix(&mut self) -> Result<(), Error> {
        let available = match self.device.irq_count(PCI_MSIX_IRQ_INDEX) {
            Ok(n) => n,
            Err(e) if !self.need_interrupts => {
                warn!("{}: no MSI-X ({e}); polling only", self.address);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let wanted = (self.max_queues as u32 + 1).min(available);
        if wanted == 0 {
            if self.need_interrupts {
                return Err(Error::MissingFeature("MSI-X interrupts"));
            }
            return Ok(());
        }
        let mut vectors = Vec::with_capacity(wanted as usize);
        for _ in 0..wanted {
            vectors.push(
                EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .map_err(|e| Error::system("eventfd", e))?,
            );
        }
        let fds: Vec<i32> = vectors.iter().map(|e| e.as_raw_fd()).collect();
        if let Err(e) = self.device.set_irq_eventfds(PCI_MSIX_IRQ_INDEX, &fds) {
            if self.need_interrupts {
                return Err(e);
            }
            warn!("{}: MSI-X not enabled ({e}); polling only", self.address);
            return Ok(());
        }
        self.vectors = vectors;
        self.common.write16(common::CONFIG_MSIX_VECTOR, 0)?;
        self.config_vector = self.common.read16(common::CONFIG_MSIX_VECTOR)? == 0;
        if !self.config_vector {
            warn!(
                "{}: the device refused a configuration-change vector",
                self.address
            );
        }
        Ok(())
    }
}

/// Pins the DMA memory and maps each chunk at IOVA = its guest-physical
/// address; returns the region and the (iova, len) mappings made.
fn map_dma_memory(
    container: &Container,
    config: &VfioConfig,
) -> Result<(DmaRegion, Vec<(u64, u64)>), Error> {
    let region = match &config.dma {
        DmaSource::Allocate => hugepage::allocate(config.mem_size)?,
        DmaSource::Provided(p) => hugepage::map_provided(p)?,
    };
    let mut maps = Vec::with_capacity(region.chunks().len());
    for c in region.chunks() {
        let vaddr = region.host_ptr() as u64 + c.offset as u64;
        container.map_dma(vaddr, c.iova, c.len as u64)?;
        maps.push((c.iova, c.len as u64));
    }
    // Pinning may move a page out of movable memory before pinning it:
    // then the addresses read before are stale.
    match &config.dma {
        DmaSource::Allocate => {
            if !hugepage::still_at_recorded_addresses(&region)? {
                return Err(Error::transport(
                    "pinning DMA memory",
                    "huge pages moved while being pinned; reserve them at boot (hugepages=N)",
                ));
            }
        }
        DmaSource::Provided(p) => hugepage::verify_provided(p, &region)?,
    }
    Ok((region, maps))
}

/// Registers our own pinned huge pages for the VSIC at `address` (named so
/// in the function map; other functions, the PF among them, are not
/// protected per VSIC) with the control service.
fn register_own_memory(
    address: &str,
    region: &DmaRegion,
) -> Result<Option<DmaRegistration>, Error> {
    let (_, map) = pci::read_function_map();
    let Some(vsic) = map.iter().find_map(|(f, a)| match f {
        Function::Vsic(n) if a == address => Some(*n),
        _ => None,
    }) else {
        debug!("{address}: not a VSIC of the function map; DMA memory not registered");
        return Ok(None);
    };
    let Some(fd) = region.fd() else {
        return Ok(None);
    };
    register::register(&register::socket_path(), vsic, &fd)
}

/// Reads configuration space through the config region and finds the
/// virtio structures.
fn read_capabilities(device: &VfioDevice) -> Result<VirtioCaps, Error> {
    let info = device.region_info(PCI_CONFIG_REGION_INDEX)?;
    let len = (info.size as usize).min(PCI_CONFIG_HEADER_AND_CAPS);
    let mut config = vec![0u8; len];
    device
        .read_at(&mut config, info.offset)
        .map_err(|e| Error::system("reading PCI configuration space", e))?;
    pci::parse_virtio_caps(&config).map_err(|e| Error::transport("virtio capabilities", e.0))
}

/// Turns on memory decoding and bus mastering (the device may DMA).
fn enable_bus_master(device: &VfioDevice) -> Result<(), Error> {
    let info = device.region_info(PCI_CONFIG_REGION_INDEX)?;
    let mut cmd = [0u8; 2];
    device
        .read_at(&mut cmd, info.offset + PCI_COMMAND)
        .map_err(|e| Error::system("reading the PCI command register", e))?;
    let value = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    device
        .write_at(&value.to_le_bytes(), info.offset + PCI_COMMAND)
        .map_err(|e| Error::system("writing the PCI command register", e))
}

/// Opens the BARs the virtio structures live in and windows onto them.
fn open_windows(
    device: &Arc<VfioDevice>,
    caps: &VirtioCaps,
    mmap: bool,
) -> Result<(Window, Window, Option<Window>), Error> {
    let mut bars: Vec<Arc<Bar>> = Vec::new();
    let mut window = |loc: pci::CapLocation| -> Result<Window, Error> {
        let bar = match bars.iter().find(|b| b.index() == loc.bar as u32) {
            Some(b) => Arc::clone(b),
            None => {
                let b = Arc::new(Bar::open(device, loc.bar as u32, mmap)?);
                bars.push(Arc::clone(&b));
                b
            }
        };
        Window::new(bar, loc.offset as u64, loc.length as u64)
    };
    let common = window(caps.common)?;
    let notify = window(caps.notify)?;
    let device_cfg = caps.device.map(&mut window).transpose()?;
    Ok((common, notify, device_cfg))
}

impl Transport for VfioTransport {
    fn device_features(&self) -> u64 {
        self.device_features
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), Error> {
        let acked = features & self.device_features;
        for half in 0..2u32 {
            self.common.write32(common::DRIVER_FEATURE_SELECT, half)?;
            self.common
                .write32(common::DRIVER_FEATURE, (acked >> (32 * half)) as u32)?;
        }
        self.add_status(status::FEATURES_OK)?;
        if self.device_status()? & status::FEATURES_OK == 0 {
            self.add_status(status::FAILED)?;
            return Err(Error::transport(
                "FEATURES_OK",
                format!("the device refused features {acked:#x}"),
            ));
        }
        Ok(())
    }

    fn max_queues(&self) -> u16 {
        self.max_queues
    }

    fn max_queue_size(&self) -> Option<u16> {
        Some(self.max_queue_size)
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        let cfg = self.device_cfg.as_ref().ok_or(Error::MissingFeature(
            "virtio device configuration capability",
        ))?;
        // A read that straddles a configuration change is retried: the
        // generation counter moves with every change.
        for _ in 0..100 {
            let before = self.common.read8(common::CONFIG_GENERATION)?;
            cfg.read_bytes(offset as u64, buf)?;
            if self.common.read8(common::CONFIG_GENERATION)? == before {
                return Ok(());
            }
        }
        Err(Error::transport(
            "configuration read",
            "configuration kept changing",
        ))
    }

    fn dma_region(&self) -> &Arc<DmaRegion> {
        &self.region
    }

    fn setup_queue(&mut self, index: u16, addrs: &QueueAddrs) -> Result<(), Error> {
        let i = queue_slot(index, self.max_queues)?;
        let c = &self.common;
        c.write16(common::QUEUE_SELECT, index)?;
        let max = c.read16(common::QUEUE_SIZE)?;
        if max == 0 || addrs.size == 0 || addrs.size > max {
            return Err(Error::InvalidArgument(format!(
                "queue {index}: size {} not accepted (device maximum {max})",
                addrs.size
            )));
        }
        c.write16(common::QUEUE_SIZE, addrs.size)?;
        let vector = index as usize + 1;
        let has_vector = if vector < self.vectors.len() {
            c.write16(common::QUEUE_MSIX_VECTOR, vector as u16)?;
            c.read16(common::QUEUE_MSIX_VECTOR)? == vector as u16
        } else {
            c.write16(common::QUEUE_MSIX_VECTOR, NO_VECTOR)?;
            false
        };
        if !has_vector && self.need_interrupts {
            return Err(Error::transport(
                "queue MSI-X vector",
                format!(
                    "queue {index} has no interrupt vector ({} routed)",
                    self.vectors.len()
                ),
            ));
        }
        c.write64(common::QUEUE_DESC, addrs.desc)?;
        c.write64(common::QUEUE_DRIVER, addrs.avail)?;
        c.write64(common::QUEUE_DEVICE, addrs.used)?;
        let notify_off = c.read16(common::QUEUE_NOTIFY_OFF)? as u64;
        let doorbell = notify_off
            .checked_mul(self.notify_off_multiplier as u64)
            .filter(|&d| d.checked_add(2).is_some_and(|end| end <= self.notify.len()))
            .ok_or_else(|| {
                Error::transport(
                    "queue notify offset",
                    format!(
                        "queue {index}: doorbell {notify_off} x {} is outside the notify area",
                        self.notify_off_multiplier
                    ),
                )
            })?;
        self.doorbells[i] = Some(doorbell);
        self.queue_has_vector[i] = has_vector;
        Ok(())
    }

    fn enable_queues(&mut self, count: u16) -> Result<(), Error> {
        for index in 0..count {
            queue_slot(index, self.max_queues)?;
            self.common.write16(common::QUEUE_SELECT, index)?;
            self.common.write16(common::QUEUE_ENABLE, 1)?;
        }
        self.add_status(status::DRIVER_OK)?;
        let s = self.device_status()?;
        if s & (status::NEEDS_RESET | status::FAILED) != 0 {
            return Err(Error::transport(
                "DRIVER_OK",
                format!("device status {s:#x}"),
            ));
        }
        Ok(())
    }

    fn notify(&self, index: u16) -> Result<(), Error> {
        let doorbell = self
            .doorbells
            .get(index as usize)
            .copied()
            .flatten()
            .ok_or(Error::NoSuchQueue {
                queue: index,
                queues: self.max_queues,
            })?;
        self.notify.write16(doorbell, index)
    }

    fn queue_interrupt(&self, index: u16) -> Option<&EventFd> {
        if !*self.queue_has_vector.get(index as usize)? {
            return None;
        }
        self.vectors.get(index as usize + 1)
    }

    fn config_interrupt(&self) -> Option<&EventFd> {
        self.config_vector.then(|| self.vectors.first()).flatten()
    }
}

impl Drop for VfioTransport {
    fn drop(&mut self) {
        // Stop the device before its memory goes away.
        if let Err(e) = self.reset() {
            warn!("{}: reset on close failed: {e}", self.address);
        }
        if !self.vectors.is_empty() {
            let _ = self.device.set_irq_eventfds(PCI_MSIX_IRQ_INDEX, &[]);
        }
        // The device is stopped: its windows onto our memory go before the
        // memory does.
        drop(self.registration.take());
        for &(iova, len) in &self.dma_maps {
            if let Err(e) = self.container.unmap_dma(iova, len) {
                debug!("{}: {e}", self.address);
            }
        }
        debug!("{}: closed", self.address);
    }
}
