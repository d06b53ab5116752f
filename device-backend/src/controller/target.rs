//! The seam between the front and the model: what a function's requests
//! run against.
//!
//! The front (vhost-user, virtio-blk parsing, guest memory) calls nothing
//! of the controller but these traits; the controller implements them in
//! the modules that do the work ([`IoTarget`] in `datapath`,
//! [`AdminTarget`] in `admin`), and `fake` (tests only) is an in-memory
//! double for front tests. The model knows nothing about virtio: requests
//! arrive as a VSIC number, a queue number, byte offsets and
//! [`IoBuffers`]; admin commands as raw bytes.

use std::time::{Duration, Instant};

use vsic_abi::AdminCompletion;

pub use super::buffers::{BufferStorage, IoBuffers};
pub use super::dma::{DmaAccess, DmaPolicy, DmaWindows};

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
}

/// Why a data-plane request failed. Every variant but `Injected` completes
/// the request with VIRTIO_BLK_S_IOERR; the protection variants count as
/// violations.
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
    /// A descriptor buffer outside the VSIC's DMA windows (enforced mode):
    /// refused by the front before any byte moved.
    DmaViolation {
        addr: u64,
        len: u64,
    },
    /// The backing drive failed.
    Device(std::io::Error),
    /// The controller's power is cut (`power-cut`, until `power-on`).
    PoweredOff,
    /// A fault rule failed the request with this virtio status (see
    /// `crate::workbench`).
    Injected {
        status: u8,
    },
}

impl IoError {
    /// The virtio status the request completes with: the injected one, or
    /// VIRTIO_BLK_S_IOERR.
    pub fn virtio_status(&self) -> u8 {
        match self {
            IoError::Injected { status } => *status,
            _ => vsic_abi::virtio::VIRTIO_BLK_S_IOERR,
        }
    }
}

/// What a request that the drives served asked of them: what the drive
/// timing model books (see [`IoTarget::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
    },
    /// DISCARD or WRITE_ZEROES from `offset`: charged a write's latency,
    /// no transfer.
    Zero {
        offset: u64,
    },
    Flush,
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

/// The data plane of the VSICs: what a VSIC function's requests do.
///
/// `vsic` is the VSIC number, `queue` the queue the request came on (for
/// statistics), offsets are bytes in the VSIC's address space (window slot
/// in the high bits, see `vsic_abi::window`).
pub trait IoTarget: Send + Sync {
    /// Capacity in bytes VSIC `vsic` reports (its slot-0 VSA; 0 when empty
    /// or unknown).
    fn capacity(&self, vsic: u32) -> u64;

    /// Reads into or writes from `bufs` at byte `offset`; returns the bytes
    /// moved (all of `bufs` on success).
    fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        bufs: &IoBuffers<'_>,
    ) -> Result<usize, IoError>;

    /// Makes every write completed before it durable.
    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError>;

    /// True when a completed write is already durable (`--cache
    /// write-through`): the functions then do not offer
    /// `VIRTIO_BLK_F_FLUSH`, which tells drivers so (virtio 1.x, 5.2.5.2).
    fn write_through(&self) -> bool;

    /// DISCARD (`zero == false`) or WRITE_ZEROES (`zero == true`) a byte
    /// range. Both leave the range reading as zeroes.
    fn discard(
        &self,
        vsic: u32,
        queue: u16,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), IoError>;

    /// Counts a request the front refused before it reached the model
    /// (malformed chain, unsupported type) in the VSIC's statistics.
    fn count_error(&self, vsic: u32, queue: u16);

    /// How long VSIC `vsic`'s next request must wait for its QoS budget.
    /// The front waits that long, holding no lock, before it takes the
    /// request from its queue.
    fn qos_wait(&self, vsic: u32) -> Duration;

    /// VSIC `vsic`'s DMA protection, as a snapshot the front checks each
    /// buffer of one chain against: `None` in open mode (every guest
    /// address). Cheap: one read lock and one `Arc` clone.
    fn dma_policy(&self, vsic: u32) -> DmaPolicy;

    /// Counts a request the front refused because buffer `[addr, addr +
    /// len)` lies outside VSIC `vsic`'s DMA windows (an error and a
    /// protection violation) and logs it, rate-limited.
    fn dma_violation(&self, vsic: u32, queue: u16, addr: u64, len: u64);

    /// A frontend connected to VSIC `vsic`.
    fn frontend_joined(&self, vsic: u32);

    /// VSIC `vsic`'s frontend left (its QEMU is gone, or reconnects): the
    /// VSIC's DMA windows go, since they name memory of a guest that may
    /// be gone; its mode stays. The control plane of the next frontend's
    /// guest grants windows afresh. When no VSIC has a frontend any more
    /// (the guest's QEMU is gone: shut down, or rebooting into a new one),
    /// nobody holds any VSIC: every VSIC goes back to open mode with no
    /// windows, committed, for the kernel of the next guest (whose control
    /// plane enforces a VSIC again before it hands it to a user).
    fn frontend_left(&self, vsic: u32);

    /// Makes every completed write of every VSIC durable, whatever the
    /// VSICs' state (a clean shutdown; not a guest request).
    fn sync_all(&self) -> std::io::Result<()>;

    /// Whether the drive timing model is on: the front then asks
    /// [`IoTarget::due`] when each served request completes. Cheap (one
    /// load); the front asks once per batch. No default: a target that
    /// wraps another must pass this on, or the model silently goes off.
    fn timed(&self) -> bool;

    /// When VSIC `vsic`'s request `work`, executed (its data moved) at
    /// `now`, is due to complete under the drive timing model; `None`:
    /// at once (the model is off).
    fn due(&self, vsic: u32, work: Work, now: Instant) -> Option<Instant>;
}

/// The admin plane: what the PF's admin requests do.
pub trait AdminTarget: Send + Sync {
    /// Executes one admin command: `command` is the raw 64-byte command as
    /// the guest sent it (possibly malformed), `payload_out` the raw
    /// payload, `payload_in_capacity` the room in the guest's response
    /// buffer. Never panics; every failure is an
    /// [`vsic_abi::AdminStatus`] in the completion.
    fn admin(&self, command: &[u8], payload_out: &[u8], payload_in_capacity: usize) -> AdminReply;
}

/// Everything the front needs: one model behind every function.
pub trait Target: IoTarget + AdminTarget {}

impl<T: IoTarget + AdminTarget + ?Sized> Target for T {}

#[cfg(test)]
pub(crate) mod fake;
