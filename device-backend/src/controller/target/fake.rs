//! An in-memory [`Target`](super::Target) for front tests: one 1 MiB disk
//! behind VSIC 0, a log of the calls it received, and an admin command
//! that echoes its payload.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vsic_abi::admin::{AdminCommand, AdminCompletion, AdminStatus};

use super::{
    AdminReply, AdminTarget, DmaPolicy, DmaWindows, IoBuffers, IoError, IoKind, IoTarget, Work,
};

pub(crate) const DISK_SIZE: usize = 1 << 20;

/// An in-memory stand-in for the controller: one 1 MiB disk behind VSIC 0.
pub(crate) struct FakeTarget {
    pub(crate) disk: Mutex<Vec<u8>>,
    calls: Mutex<Vec<String>>,
    pub(crate) errors: AtomicU32,
    /// VSIC 0's DMA protection (`None`: open, the default).
    pub(crate) dma: Mutex<Option<DmaWindows>>,
    pub(crate) violations: AtomicU32,
}

impl FakeTarget {
    pub(crate) fn new() -> FakeTarget {
        let disk = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
        FakeTarget {
            disk: Mutex::new(disk),
            calls: Mutex::new(Vec::new()),
            errors: AtomicU32::new(0),
            dma: Mutex::new(None),
            violations: AtomicU32::new(0),
        }
    }

    /// The calls received so far, one line each.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn check(vsic: u32, offset: u64, len: u64) -> Result<usize, IoError> {
        if vsic != 0 {
            return Err(IoError::NoSuchVsic);
        }
        match offset.checked_add(len) {
            Some(end) if end <= DISK_SIZE as u64 => Ok(offset as usize),
            _ => Err(IoError::OutOfBounds),
        }
    }
}

impl IoTarget for FakeTarget {
    fn write_through(&self) -> bool {
        false
    }

    fn capacity(&self, vsic: u32) -> u64 {
        if vsic == 0 {
            DISK_SIZE as u64
        } else {
            0
        }
    }

    fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        bufs: &IoBuffers<'_>,
    ) -> Result<usize, IoError> {
        let len = bufs.len() as usize;
        self.calls.lock().unwrap().push(format!(
            "{kind:?} q{queue} {offset} {len} in {}",
            bufs.count()
        ));
        let mut at = Self::check(vsic, offset, len as u64)?;
        let mut disk = self.disk.lock().unwrap();
        for s in bufs.slices() {
            let part = &mut disk[at..at + s.len()];
            match kind {
                IoKind::Read => s.copy_from(part),
                IoKind::Write => {
                    s.copy_to(part);
                }
            }
            at += s.len();
        }
        Ok(len)
    }

    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("flush {vsic} q{queue}"));
        Ok(())
    }

    fn discard(
        &self,
        vsic: u32,
        _queue: u16,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), IoError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("discard {offset} {len} {zero}"));
        let at = Self::check(vsic, offset, len)?;
        self.disk.lock().unwrap()[at..at + len as usize].fill(0);
        Ok(())
    }

    fn count_error(&self, _vsic: u32, _queue: u16) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn dma_policy(&self, vsic: u32) -> DmaPolicy {
        if vsic != 0 {
            return None;
        }
        self.dma.lock().unwrap().clone().map(Arc::new)
    }

    fn frontend_joined(&self, vsic: u32) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("frontend joined {vsic}"));
    }

    fn frontend_left(&self, vsic: u32) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("frontend left {vsic}"));
    }

    fn dma_violation(&self, _vsic: u32, _queue: u16, addr: u64, len: u64) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("dma violation {addr:#x} {len}"));
        self.violations.fetch_add(1, Ordering::Relaxed);
    }

    fn qos_wait(&self, _vsic: u32) -> Duration {
        Duration::ZERO
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.calls.lock().unwrap().push("sync all".to_string());
        Ok(())
    }

    fn timed(&self) -> bool {
        false
    }

    fn due(&self, _vsic: u32, _work: Work, _now: Instant) -> Option<Instant> {
        None
    }
}

impl AdminTarget for FakeTarget {
    fn admin(&self, command: &[u8], payload_out: &[u8], cap: usize) -> AdminReply {
        self.calls.lock().unwrap().push(format!(
            "admin {} {} {cap}",
            command.len(),
            payload_out.len()
        ));
        let Ok(cmd) = AdminCommand::decode(command) else {
            return AdminReply {
                completion: AdminCompletion::with_status(AdminStatus::BadCommandSize),
                payload: Vec::new(),
                changed_vsics: Vec::new(),
            };
        };
        // Echo the payload back, reversed, and report VSIC `cmd.vsic` changed.
        let payload: Vec<u8> = payload_out.iter().rev().copied().take(cap).collect();
        let mut completion = AdminCompletion::ok();
        completion.payload_len = payload.len() as u32;
        completion.result0 = 77;
        AdminReply {
            completion,
            payload,
            changed_vsics: vec![cmd.vsic],
        }
    }
}
