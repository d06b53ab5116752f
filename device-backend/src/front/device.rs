//! What the front needs from the controller, as a trait: the real
//! [`Controller`] in the daemon, a small in-memory fake in tests.

use std::time::Duration;

use crate::controller::{AdminReply, Controller, IoError, IoKind};

/// The controller operations the vhost-user front calls.
pub trait Device: Send + Sync {
    /// Capacity in bytes VSIC `vsic` reports (its slot-0 VSA).
    fn capacity(&self, vsic: u32) -> u64;

    /// Moves data between `iov` and byte `offset` of VSIC `vsic`.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for reads and writes of its
    /// length for the whole call.
    unsafe fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        iov: &[libc::iovec],
    ) -> Result<usize, IoError>;

    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError>;

    /// Makes every completed write durable, whatever the VSICs' state
    /// (clean shutdown).
    fn sync_all(&self) -> std::io::Result<()>;

    fn discard(
        &self,
        vsic: u32,
        queue: u16,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), IoError>;

    /// Executes one raw admin command (PF only).
    fn admin(&self, command: &[u8], payload_out: &[u8], payload_in_capacity: usize) -> AdminReply;

    /// Counts a request refused before it reached the model.
    fn count_error(&self, vsic: u32, queue: u16);

    /// How long VSIC `vsic`'s next request must wait for its QoS budget.
    fn qos_wait(&self, _vsic: u32) -> Duration {
        Duration::ZERO
    }
}

impl Device for Controller {
    fn capacity(&self, vsic: u32) -> u64 {
        Controller::capacity(self, vsic)
    }

    unsafe fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        iov: &[libc::iovec],
    ) -> Result<usize, IoError> {
        // SAFETY: the caller upholds the same contract Controller::io states.
        unsafe { Controller::io(self, vsic, queue, kind, offset, iov) }
    }

    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError> {
        Controller::flush(self, vsic, queue)
    }

    fn sync_all(&self) -> std::io::Result<()> {
        Controller::sync_drives(self)
    }

    fn discard(
        &self,
        vsic: u32,
        queue: u16,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), IoError> {
        Controller::discard(self, vsic, queue, offset, len, zero)
    }

    fn admin(&self, command: &[u8], payload_out: &[u8], payload_in_capacity: usize) -> AdminReply {
        Controller::admin(self, command, payload_out, payload_in_capacity)
    }

    fn count_error(&self, vsic: u32, queue: u16) {
        Controller::count_error(self, vsic, queue)
    }

    fn qos_wait(&self, vsic: u32) -> Duration {
        Controller::qos_wait(self, vsic)
    }
}

/// Receives "VSIC n's configuration changed" events from admin commands.
pub trait ConfigChangeSink: Send + Sync {
    fn config_changed(&self, vsic: u32);
}
