//! The firmware workbench's data-path tools: fault injection ([`fault`])
//! and request traces ([`trace`], [`blktrace`]), scripted through the
//! management socket.
//!
//! [`Workbench`] wraps the controller as the front's [`Target`]: with no
//! fault rule and no trace running, every request costs one relaxed atomic
//! load more and goes straight to the controller. Otherwise VSIC-level
//! rules and traces are applied here, around the controller's own
//! handling; drive-level rules act inside the drive's transfers through
//! [`DriveFaults`], installed with `Controller::set_drive_hook` when the
//! first drive rule arrives (before that a transfer finds no hook: one
//! atomic load).

pub mod blktrace;
pub mod fault;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vsic_abi::virtio::VIRTIO_BLK_S_IOERR;

use crate::controller::target::{
    AdminReply, AdminTarget, BufferStorage, DmaPolicy, IoBuffers, IoError, IoKind, IoTarget, Work,
};
use crate::controller::{flip_bits, DriveFault, DriveHook, Target};
use fault::{FaultAction, FaultOp, FaultTarget, Faults, Hit, RuleError, RuleSpec, SECTOR};
use trace::{Phase, TraceOp, Traces};

/// Why a workbench command failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkbenchError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
}

/// The controller with faults and traces around it.
pub struct Workbench {
    inner: Arc<dyn Target>,
    pub faults: Faults,
    pub traces: Traces,
    /// Some rule or trace exists: the only thing the fast path reads.
    active: AtomicBool,
    /// Serialises rule and trace changes with `active`'s refresh.
    update: Mutex<()>,
    /// Installs [`DriveFaults`] on the drives, run when the first drive
    /// rule arrives: until then a drive transfer only finds no hook.
    drive_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Workbench {
    pub fn new(inner: Arc<dyn Target>, vsics: u32, queues: u16, drives: u32) -> Arc<Workbench> {
        Arc::new(Workbench {
            inner,
            faults: Faults::new(vsics, drives),
            traces: Traces::new(vsics, queues),
            active: AtomicBool::new(false),
            update: Mutex::new(()),
            drive_hook: Mutex::new(None),
        })
    }

    /// What installs the drive-level hook ([`DriveFaults`]); it runs once,
    /// when the first drive rule is added.
    pub fn on_first_drive_rule(&self, install: impl FnOnce() + Send + 'static) {
        *self.drive_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(install));
    }

    fn refresh(&self) {
        self.active
            .store(!self.faults.is_empty() || self.traces.any(), Relaxed);
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        self.update.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fault rule; its id.
    pub fn add_fault(&self, spec: &RuleSpec) -> Result<u64, WorkbenchError> {
        let _g = self.locked();
        let id = self.faults.add(spec)?;
        if spec.drive.is_some() {
            let install = self
                .drive_hook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(install) = install {
                install();
            }
        }
        self.refresh();
        Ok(id)
    }

    /// Removes rule `id` (all with `None`); how many went.
    pub fn clear_faults(&self, id: Option<u64>) -> usize {
        let _g = self.locked();
        let n = self.faults.clear(id);
        self.refresh();
        n
    }

    pub fn trace_start(
        &self,
        vsic: u32,
        path: &std::path::Path,
        format: trace::Format,
    ) -> Result<Vec<std::path::PathBuf>, WorkbenchError> {
        let _g = self.locked();
        let files = self.traces.start(vsic, path, format)?;
        self.refresh();
        Ok(files)
    }

    pub fn trace_stop(&self, vsic: u32) -> Result<(Vec<std::path::PathBuf>, u64), WorkbenchError> {
        let _g = self.locked();
        let r = self.traces.stop(vsic);
        self.refresh();
        Ok(r?)
    }

    fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Runs one request with its faults and trace events; `run` does the
    /// request itself (told the action of a delay, corrupt or torn rule).
    fn wrapped<R>(
        &self,
        req: Req,
        hit: Option<Hit>,
        run: impl FnOnce(Option<FaultAction>) -> Result<R, IoError>,
    ) -> Result<R, IoError> {
        let Req {
            vsic,
            queue,
            op,
            offset,
            len,
        } = req;
        let trace = self.traces.get(vsic);
        if let Some(t) = &trace {
            t.event(queue, Phase::Queue, op, offset, len);
            if let Some(h) = &hit {
                t.fault(queue, h.rule, h.action.name(), op, offset);
            }
        }
        let action = hit.map(|h| h.action);
        let result = match action {
            Some(FaultAction::Error { status }) => {
                self.inner.count_error(vsic, queue);
                Err(IoError::Injected { status })
            }
            other => {
                if let Some(FaultAction::Delay(d)) = other {
                    sleep(d);
                }
                let _in_trace = trace.as_ref().map(|t| {
                    t.event(queue, Phase::Issue, op, offset, len);
                    InTrace::enter(t, queue, op, offset)
                });
                run(other).map_err(injected_below)
            }
        };
        if let Some(t) = &trace {
            let status = result.as_ref().err().map(IoError::virtio_status);
            t.event(queue, Phase::Complete(status), op, offset, len);
        }
        result
    }

    fn check(&self, vsic: u32, op: FaultOp, range: Option<(u64, u64)>) -> Option<Hit> {
        self.faults.check(FaultTarget::Vsic(vsic), op, range)
    }
}

/// A traced request being served: its trace, queue, kind and offset.
type TracedRequest = (Arc<trace::Session>, u16, TraceOp, u64);

thread_local! {
    /// The traced request this thread is running, if any: a drive rule that
    /// fires under it is traced as its fault.
    static IN_TRACE: std::cell::RefCell<Option<TracedRequest>> =
        const { std::cell::RefCell::new(None) };
}

/// Marks the running thread as serving a traced request until dropped.
struct InTrace;

impl InTrace {
    fn enter(session: &Arc<trace::Session>, queue: u16, op: TraceOp, offset: u64) -> InTrace {
        IN_TRACE.with(|c| *c.borrow_mut() = Some((Arc::clone(session), queue, op, offset)));
        InTrace
    }

    /// Traces a drive rule's injection into the request this thread runs.
    fn note_drive_fault(drive: u32, hit: &Hit) {
        IN_TRACE.with(|c| {
            if let Some((session, queue, op, offset)) = &*c.borrow() {
                let what = format!("{} on drive {drive}", hit.action.name());
                session.fault(*queue, hit.rule, &what, *op, *offset);
            }
        });
    }
}

impl Drop for InTrace {
    fn drop(&mut self) {
        IN_TRACE.with(|c| *c.borrow_mut() = None);
    }
}

/// One request, as traces and rules see it.
#[derive(Clone, Copy)]
struct Req {
    vsic: u32,
    queue: u16,
    op: TraceOp,
    offset: u64,
    len: u64,
}

/// A drive-level injected error travels up as an `io::Error` holding an
/// [`Injected`]; it becomes [`IoError::Injected`] with its status again.
fn injected_below(e: IoError) -> IoError {
    if let IoError::Device(io) = &e {
        if let Some(i) = io.get_ref().and_then(|i| i.downcast_ref::<Injected>()) {
            return IoError::Injected { status: i.status };
        }
    }
    e
}

/// The error a drive-level rule injects.
#[derive(Debug, thiserror::Error)]
#[error("injected fault (rule {rule}, virtio status {status})")]
pub struct Injected {
    pub rule: u64,
    pub status: u8,
}

fn seed_now() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 ^ 0x2545_f491_4f6c_dd1d
}

impl IoTarget for Workbench {
    fn capacity(&self, vsic: u32) -> u64 {
        self.inner.capacity(vsic)
    }

    fn io(
        &self,
        vsic: u32,
        queue: u16,
        kind: IoKind,
        offset: u64,
        bufs: &IoBuffers<'_>,
    ) -> Result<usize, IoError> {
        if !self.is_active() {
            return self.inner.io(vsic, queue, kind, offset, bufs);
        }
        let len = bufs.len();
        let (fop, top) = match kind {
            IoKind::Read => (FaultOp::Read, TraceOp::Read),
            IoKind::Write => (FaultOp::Write, TraceOp::Write),
        };
        let hit = self.check(vsic, fop, Some((offset, len)));
        let req = Req {
            vsic,
            queue,
            op: top,
            offset,
            len,
        };
        self.wrapped(req, hit, |action| match action {
            Some(FaultAction::Corrupt { bits }) => {
                let n = self.inner.io(vsic, queue, kind, offset, bufs)?;
                let slices: Vec<_> = bufs.slices().collect();
                flip_bits(&slices, n, bits, seed_now());
                Ok(n)
            }
            Some(FaultAction::Torn { sectors }) => {
                let keep = sectors.saturating_mul(SECTOR).min(len);
                let mut storage = BufferStorage::default();
                let mut part = storage.start();
                let mut left = keep as usize;
                for s in bufs.slices() {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(s.len());
                    if let Ok(piece) = s.subslice(0, take) {
                        part.push(piece);
                    }
                    left -= take;
                }
                if keep > 0 {
                    self.inner.io(vsic, queue, kind, offset, &part)?;
                }
                self.inner.count_error(vsic, queue);
                Err(IoError::Injected {
                    status: VIRTIO_BLK_S_IOERR,
                })
            }
            _ => self.inner.io(vsic, queue, kind, offset, bufs),
        })
    }

    fn flush(&self, vsic: u32, queue: u16) -> Result<(), IoError> {
        if !self.is_active() {
            return self.inner.flush(vsic, queue);
        }
        // A flush reaches every drive: drive-level flush rules apply too.
        let hit = self.check(vsic, FaultOp::Flush, None).or_else(|| {
            (0..self.faults.drives()).find_map(|d| {
                self.faults
                    .check(FaultTarget::Drive(d), FaultOp::Flush, None)
            })
        });
        let req = Req {
            vsic,
            queue,
            op: TraceOp::Flush,
            offset: 0,
            len: 0,
        };
        self.wrapped(req, hit, |_| self.inner.flush(vsic, queue))
    }

    fn write_through(&self) -> bool {
        self.inner.write_through()
    }

    fn discard(
        &self,
        vsic: u32,
        queue: u16,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), IoError> {
        if !self.is_active() {
            return self.inner.discard(vsic, queue, offset, len, zero);
        }
        let op = if zero {
            TraceOp::WriteZeroes
        } else {
            TraceOp::Discard
        };
        let hit = self.check(vsic, FaultOp::Discard, Some((offset, len)));
        let req = Req {
            vsic,
            queue,
            op,
            offset,
            len,
        };
        self.wrapped(req, hit, |_| {
            self.inner.discard(vsic, queue, offset, len, zero)
        })
    }

    fn count_error(&self, vsic: u32, queue: u16) {
        self.inner.count_error(vsic, queue)
    }

    fn qos_wait(&self, vsic: u32) -> Duration {
        self.inner.qos_wait(vsic)
    }

    fn dma_policy(&self, vsic: u32) -> DmaPolicy {
        self.inner.dma_policy(vsic)
    }

    fn dma_violation(&self, vsic: u32, queue: u16, addr: u64, len: u64) {
        self.inner.dma_violation(vsic, queue, addr, len)
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.inner.sync_all()
    }

    // The drive timing model is the controller's: completions of faulted
    // and traced requests are due when the model says, as any other.
    fn timed(&self) -> bool {
        self.inner.timed()
    }

    fn due(&self, vsic: u32, work: Work, now: Instant) -> Option<Instant> {
        self.inner.due(vsic, work, now)
    }

    fn frontend_joined(&self, vsic: u32) {
        self.inner.frontend_joined(vsic)
    }

    fn frontend_left(&self, vsic: u32) {
        self.inner.frontend_left(vsic)
    }
}

impl AdminTarget for Workbench {
    fn admin(&self, command: &[u8], payload_out: &[u8], capacity: usize) -> AdminReply {
        self.inner.admin(command, payload_out, capacity)
    }
}

/// The drive-level half of the fault rules, as the drives' hook.
pub struct DriveFaults(pub Arc<Workbench>);

impl std::fmt::Debug for DriveFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriveFaults")
    }
}

impl DriveHook for DriveFaults {
    fn on_io(&self, drive: u32, op: DriveOpKind, offset: u64, len: u64) -> Option<DriveFault> {
        let wb = &self.0;
        if !wb.is_active() {
            return None;
        }
        let fop = match op {
            DriveOpKind::Read => FaultOp::Read,
            DriveOpKind::Write => FaultOp::Write,
            DriveOpKind::Zero => FaultOp::Discard,
        };
        let hit = wb
            .faults
            .check(FaultTarget::Drive(drive), fop, Some((offset, len)))?;
        log::info!(
            "drive {drive}: fault rule {} ({}) at {offset:#x}+{len}",
            hit.rule,
            hit.action.name()
        );
        InTrace::note_drive_fault(drive, &hit);
        Some(match hit.action {
            FaultAction::Error { status } => DriveFault::Fail(std::io::Error::other(Injected {
                rule: hit.rule,
                status,
            })),
            FaultAction::Delay(d) => DriveFault::Delay(d),
            FaultAction::Corrupt { bits } => DriveFault::Corrupt {
                bits,
                seed: seed_now(),
            },
            FaultAction::Torn { sectors } => DriveFault::Torn {
                bytes: sectors.saturating_mul(SECTOR),
                error: std::io::Error::other(Injected {
                    rule: hit.rule,
                    status: VIRTIO_BLK_S_IOERR,
                }),
            },
        })
    }
}

pub use crate::controller::DriveOpKind;
