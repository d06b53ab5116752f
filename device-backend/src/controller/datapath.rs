//! The data path ([`IoTarget`] for the controller): reads, writes,
//! flushes and discards of one VSIC, capacity, refusal counting, QoS waits
//! and the shutdown sync. Every
//! request is checked against the VSIC's attachments (enabled, attached,
//! in bounds, writable) while holding the VSIC's slot read lock and the
//! VSA's map read lock for the whole transfer; no controller-wide lock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vsic_abi::records::CacheMode;
use vsic_abi::window;

use super::drive::Drive;
use super::runtime::VsicRuntime;
use super::stats::bump;
use super::target::{DmaPolicy, DmaWindows, IoBuffers, IoError, IoKind, IoTarget, Work};
use super::vsa::{map_range, Segments};
use super::Controller;

/// What a request does once it passed the protection checks.
pub(super) enum Op {
    Read,
    Write,
    /// DISCARD or WRITE_ZEROES.
    Zero,
}

impl Op {
    fn modifies(&self) -> bool {
        !matches!(self, Op::Read)
    }
}

fn is_violation(e: &IoError) -> bool {
    !matches!(e, IoError::Device(_) | IoError::PoweredOff)
}

impl Controller {
    pub(super) fn runtime(&self, vsic: u32) -> Result<&VsicRuntime, IoError> {
        self.vsics.get(vsic as usize).ok_or(IoError::NoSuchVsic)
    }

    fn drive(&self, d: u32) -> std::io::Result<&Drive> {
        self.drives
            .get(d as usize)
            .map(|d| &**d)
            .ok_or_else(|| std::io::Error::other("extent on an unknown drive"))
    }

    /// Makes `[offset, offset + len)` of drive `d` read as zeroes, past the
    /// volatile cache (whose sectors there are dropped).
    pub(super) fn zero_drive_range(&self, d: u32, offset: u64, len: u64) -> std::io::Result<()> {
        let drive = self.drive(d)?;
        match &self.cache {
            Some(cache) => cache.zero(d as usize, offset, len, || drive.zero_range(offset, len)),
            None => drive.zero_range(offset, len),
        }
    }

    /// Moves one drive segment of a read or write: through the volatile
    /// cache when there is one.
    fn transfer(
        &self,
        write: bool,
        d: u32,
        bufs: &IoBuffers<'_>,
        start: u64,
        len: u64,
        offset: u64,
    ) -> std::io::Result<usize> {
        let drive = self.drive(d)?;
        match &self.cache {
            Some(c) if write => c.write(&self.drives, d as usize, bufs, start, len, offset),
            Some(c) => c.read(drive, d as usize, bufs, start, len, offset),
            None => drive.transfer(write, bufs.range(start, len), offset),
        }
    }

    /// Charges a finished request to the VSIC's QoS buckets: the bytes of
    /// an accepted request (also when the drive then failed it), none of
    /// a refused one; every request counts as one I/O.
    fn charge(rt: &VsicRuntime, bytes: u64, result: Result<(), &IoError>) {
        let accepted = match result {
            Ok(()) => true,
            Err(e) => !is_violation(e),
        };
        rt.qos.charge(if accepted { bytes } else { 0 });
    }

    /// Checks `[offset, offset + len)` against VSIC `rt`'s attachments and
    /// runs `f` on its drive segments with the locks held.
    pub(super) fn with_segments<R>(
        &self,
        rt: &VsicRuntime,
        op: &Op,
        offset: u64,
        len: u64,
        f: impl FnOnce(Segments<'_>) -> std::io::Result<R>,
    ) -> Result<R, IoError> {
        let (slot, within) = window::split(offset);
        let slots = rt.slots();
        // Checked under the slot lock, which DISABLE drains.
        if !rt.is_enabled() {
            return Err(IoError::VsicDisabled);
        }
        let binding = usize::try_from(slot)
            .ok()
            .and_then(|s| slots.get(s))
            .and_then(|b| b.as_ref())
            .ok_or(IoError::NotAttached)?;
        if op.modifies() && binding.read_only {
            return Err(IoError::ReadOnly);
        }
        let layout = binding.vsa.read();
        if layout.deleted {
            return Err(IoError::NotAttached);
        }
        let end = within.checked_add(len).ok_or(IoError::OutOfBounds)?;
        if end > layout.size {
            return Err(IoError::OutOfBounds);
        }
        let segments =
            map_range(&layout, self.config.extent_size, within, len).ok_or(IoError::OutOfBounds)?;
        f(segments).map_err(IoError::Device)
    }

    fn record_failure(
        &self,
        rt: &VsicRuntime,
        vsic: u32,
        queue: u16,
        what: &str,
        offset: u64,
        e: &IoError,
    ) {
        bump(&rt.stats.errors, 1);
        if let Some(q) = rt.stats.queue(queue) {
            bump(&q.errors, 1);
        }
        let violation = is_violation(e);
        if violation {
            bump(&rt.stats.protection_violations, 1);
        }
        // A misbehaving guest or a failing drive must not flood the log.
        if let Some(suppressed) = rt.failure_log.allow() {
            let more = if suppressed > 0 {
                format!(" ({suppressed} similar lines suppressed)")
            } else {
                String::new()
            };
            if violation {
                log::warn!("VSIC {vsic} queue {queue}: {what} at {offset:#x} refused: {e:?}{more}");
            } else {
                log::error!("VSIC {vsic} queue {queue}: {what} at {offset:#x} failed: {e:?}{more}");
            }
        }
    }
}

impl Controller {
    /// No VSIC has a frontend: every VSIC to open mode (committed), no
    /// windows. See [`IoTarget::frontend_left`]. False when a frontend came
    /// meanwhile (its guest runs: nothing changed).
    fn open_every_vsic(&self) -> bool {
        let mut plane = self.plane();
        if self.vsic_frontends.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let mut next = plane.state.clone();
        let mut opened = 0;
        for rec in &mut next.vsics {
            if rec.dma_enforced {
                rec.dma_enforced = false;
                opened += 1;
            }
        }
        if let Err(e) = self.commit(&mut plane, next) {
            log::error!("no VSIC has a frontend; opening the enforced ones failed: {e:?}");
        } else if opened > 0 {
            log::info!(
                "no VSIC has a frontend (the guest is gone): {opened} enforced VSIC(s) back to \
                 open DMA mode for the next guest's kernel"
            );
        }
        for rt in &self.vsics {
            rt.dma.set_windows(DmaWindows::default());
        }
        true
    }
}

impl IoTarget for Controller {
    fn write_through(&self) -> bool {
        self.config.cache_mode == CacheMode::WriteThrough
    }

    fn capacity(&self, vsic: u32) -> u64 {
        let Some(rt) = self.vsics.get(vsic as usize) else {
            return 0;
        };
        let slots = rt.slots();
        slots[0].as_ref().map_or(0, |b| {
            let layout = b.vsa.read();
            if layout.deleted {
                0
            } else {
                layout.size
            }
        })
    }

    fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        bufs: &IoBuffers<'_>,
    ) -> Result<usize, IoError> {
        let rt = self.runtime(vsic)?;
        if let Some(q) = rt.stats.queue(queue) {
            bump(&q.requests, 1);
        }
        let len = bufs.len();
        let (op, what) = match kind {
            IoKind::Read => (Op::Read, "read"),
            IoKind::Write => (Op::Write, "write"),
        };
        let power = self.power.enter();
        let result = power
            .as_ref()
            .map_err(|_| IoError::PoweredOff)
            .and_then(|_| {
                self.with_segments(rt, &op, offset, len, |segments| {
                    let mut done = 0usize;
                    for seg in segments {
                        done += self.transfer(
                            op.modifies(),
                            seg.drive,
                            bufs,
                            seg.request_offset,
                            seg.len,
                            seg.offset,
                        )?;
                    }
                    Ok(done)
                })
            });
        drop(power);
        Self::charge(rt, len, result.as_ref().map(drop));
        match &result {
            Ok(n) => {
                let n = *n as u64;
                let (count, bytes) = match op {
                    Op::Write => (&rt.stats.writes, &rt.stats.bytes_written),
                    _ => (&rt.stats.reads, &rt.stats.bytes_read),
                };
                bump(count, 1);
                bump(bytes, n);
                if let Some(q) = rt.stats.queue(queue) {
                    bump(
                        if op.modifies() {
                            &q.bytes_written
                        } else {
                            &q.bytes_read
                        },
                        n,
                    );
                }
            }
            Err(e) => self.record_failure(rt, vsic, queue, what, offset, e),
        }
        result
    }

    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError> {
        let rt = self.runtime(vsic)?;
        if let Some(q) = rt.stats.queue(queue) {
            bump(&q.requests, 1);
        }
        let power = self.power.enter();
        let result = if power.is_err() {
            Err(IoError::PoweredOff)
        } else if !rt.is_enabled() {
            Err(IoError::VsicDisabled)
        } else if self.config.cache_mode == CacheMode::WriteThrough {
            // Every completed write already reached the medium (O_DSYNC).
            Ok(())
        } else {
            self.cache
                .as_ref()
                .map_or(Ok(()), |c| c.destage_all(&self.drives))
                .and_then(|()| self.drives.iter().try_for_each(|d| d.sync()))
                .map_err(IoError::Device)
        };
        drop(power);
        match &result {
            Ok(()) => bump(&rt.stats.flushes, 1),
            Err(e) => self.record_failure(rt, vsic, queue, "flush", 0, e),
        }
        result
    }

    fn discard(
        &self,
        vsic: u32,
        queue: u16,
        offset: u64,
        len: u64,
        write_zeroes: bool,
    ) -> Result<(), IoError> {
        let rt = self.runtime(vsic)?;
        if let Some(q) = rt.stats.queue(queue) {
            bump(&q.requests, 1);
        }
        let what = if write_zeroes {
            "write-zeroes"
        } else {
            "discard"
        };
        let power = self.power.enter();
        let result = power
            .as_ref()
            .map_err(|_| IoError::PoweredOff)
            .and_then(|_| {
                self.with_segments(rt, &Op::Zero, offset, len, |segments| {
                    for seg in segments {
                        self.zero_drive_range(seg.drive, seg.offset, seg.len)?;
                        if self.config.cache_mode == CacheMode::WriteThrough {
                            self.drive(seg.drive)?.sync()?;
                        }
                    }
                    Ok(())
                })
            });
        drop(power);
        Self::charge(rt, len, result.as_ref().copied());
        match &result {
            Ok(()) => bump(
                if write_zeroes {
                    &rt.stats.write_zeroes
                } else {
                    &rt.stats.discards
                },
                1,
            ),
            Err(e) => self.record_failure(rt, vsic, queue, what, offset, e),
        }
        result
    }

    fn count_error(&self, vsic: u32, queue: u16) {
        if let Some(rt) = self.vsics.get(vsic as usize) {
            bump(&rt.stats.errors, 1);
            if let Some(q) = rt.stats.queue(queue) {
                bump(&q.requests, 1);
                bump(&q.errors, 1);
            }
        }
    }

    fn dma_policy(&self, vsic: u32) -> DmaPolicy {
        self.vsics.get(vsic as usize).and_then(|rt| rt.dma.policy())
    }

    fn frontend_joined(&self, _vsic: u32) {
        self.vsic_frontends.fetch_add(1, Ordering::SeqCst);
    }

    fn frontend_left(&self, vsic: u32) {
        // The last one: every VSIC's windows and modes in one step, under
        // the admin lock (an admin command sees them before or after).
        if self.vsic_frontends.fetch_sub(1, Ordering::SeqCst) == 1 && self.open_every_vsic() {
            return;
        }
        if let Ok(rt) = self.runtime(vsic) {
            let dropped = rt.dma.windows().windows().len();
            rt.dma.set_windows(DmaWindows::default());
            if dropped > 0 {
                log::info!("VSIC {vsic}: its frontend left; {dropped} DMA window(s) dropped");
            }
        }
    }

    fn dma_violation(&self, vsic: u32, queue: u16, addr: u64, len: u64) {
        let Ok(rt) = self.runtime(vsic) else {
            return;
        };
        if let Some(q) = rt.stats.queue(queue) {
            bump(&q.requests, 1);
        }
        let e = IoError::DmaViolation { addr, len };
        self.record_failure(rt, vsic, queue, "DMA", addr, &e);
    }

    /// A wait counts in `qos_delayed`.
    fn qos_wait(&self, vsic: u32) -> Duration {
        let Ok(rt) = self.runtime(vsic) else {
            return Duration::ZERO;
        };
        let wait = rt.qos.wait();
        // Rounding may leave a debt of nanoseconds after a full wait.
        if wait < Duration::from_micros(100) {
            return Duration::ZERO;
        }
        bump(&rt.stats.qos_delayed, 1);
        wait
    }

    fn timed(&self) -> bool {
        self.timing_on()
    }

    fn due(&self, vsic: u32, work: Work, now: Instant) -> Option<Instant> {
        self.timed_due(vsic, work, now)
    }

    /// Tries every drive; the first failure is returned. Not a guest
    /// request, so it counts in no VSIC's statistics.
    /// With a volatile cache, destages it first (an orderly shutdown).
    fn sync_all(&self) -> std::io::Result<()> {
        let mut result = self
            .cache
            .as_ref()
            .map_or(Ok(()), |c| c.destage_all(&self.drives));
        for d in &self.drives {
            if let Err(e) = d.sync() {
                log::error!("cannot sync {}: {e}", d.path().display());
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}
