//! The controller model. Its public surface is what `front` calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vsic_abi::records::CacheMode;
use vsic_abi::AdminCompletion;

/// One backing drive: a file (created sparse when missing) or a block device.
#[derive(Debug, Clone)]
pub struct DriveSpec {
    pub path: PathBuf,
    /// Size for a file that does not exist yet; ignored for existing drives.
    pub size: Option<u64>,
}

/// Optional per-drive service-time model for firmware prototyping: every
/// request takes `latency + bytes / bytes_per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceModel {
    pub latency: Duration,
    /// 0 = unlimited bandwidth.
    pub bytes_per_sec: u64,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub drives: Vec<DriveSpec>,
    pub vsics: u32,
    pub queues_per_vsic: u16,
    pub extent_size: u64,
    pub cache_mode: CacheMode,
    pub service_model: Option<ServiceModel>,
}

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// Why a data-plane request failed. Every variant completes the request
/// with VIRTIO_BLK_S_IOERR; the protection variants count as violations.
#[derive(Debug)]
pub enum IoError {
    NoSuchVsic,
    VsicDisabled,
    /// Nothing attached in the addressed window slot.
    NotAttached,
    /// The range runs past the end of the attached VSA.
    OutOfBounds,
    /// Write to a read-only attachment.
    ReadOnly,
    /// The backing drive failed.
    Device(std::io::Error),
}

/// What an admin command produced.
#[derive(Debug)]
pub struct AdminReply {
    pub completion: AdminCompletion,
    /// Payload-in bytes (never longer than the capacity passed in).
    pub payload: Vec<u8>,
    /// VSICs whose slot-0 capacity changed: the front raises their
    /// config-change interrupt.
    pub changed_vsics: Vec<u32>,
}

/// Errors opening the controller (bad drives, corrupted metadata, ...).
#[derive(Debug)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for OpenError {}

/// The controller: shared by every function's queue threads.
pub struct Controller {
    config: ControllerConfig,
}

impl Controller {
    /// Opens (or formats) the drives and loads the newest committed metadata.
    pub fn open(config: ControllerConfig) -> Result<Arc<Controller>, OpenError> {
        let _ = config;
        unimplemented!("controller model")
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Executes one admin command: `command` is the raw 64-byte command as
    /// the guest sent it (possibly malformed), `payload_out` the raw payload,
    /// `payload_in_capacity` the room in the guest's response buffer.
    /// Never panics; every failure is an [`vsic_abi::AdminStatus`].
    pub fn admin(&self, command: &[u8], payload_out: &[u8], payload_in_capacity: usize) -> AdminReply {
        let _ = (command, payload_out, payload_in_capacity);
        unimplemented!("controller model")
    }

    /// Capacity in bytes that VSIC `vsic` reports (its slot-0 VSA; 0 when empty).
    pub fn capacity(&self, vsic: u32) -> u64 {
        let _ = vsic;
        unimplemented!("controller model")
    }

    /// Reads or writes `iov` at byte `offset` of VSIC `vsic`'s address space.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for reads and writes of its
    /// length for the whole call (guest memory mapped by the front).
    pub unsafe fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        iov: &[libc::iovec],
    ) -> Result<usize, IoError> {
        let _ = (vsic, queue, kind, offset, iov);
        unimplemented!("controller model")
    }

    /// Makes every write completed before it durable.
    pub fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError> {
        let _ = (vsic, queue);
        unimplemented!("controller model")
    }

    /// DISCARD (`zero == false`) or WRITE_ZEROES (`zero == true`) a byte range.
    /// Both leave the range reading as zeroes.
    pub fn discard(&self, vsic: u32, queue: u16, offset: u64, len: u64, zero: bool) -> Result<(), IoError> {
        let _ = (vsic, queue, offset, len, zero);
        unimplemented!("controller model")
    }

    /// Counts a request the front refused before it reached the model
    /// (malformed chain, unsupported type) in the VSIC's error statistics.
    pub fn count_error(&self, vsic: u32, queue: u16) {
        let _ = (vsic, queue);
        unimplemented!("controller model")
    }
}
