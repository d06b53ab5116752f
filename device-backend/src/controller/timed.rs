//! The controller's use of the drive timing model ([`super::timing`]):
//! which drives and units a served request occupies, and the setter that
//! turns the model on, off or changes it while the controller runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::datapath::Op;
use super::target::Work;
use super::timing::{ServiceModel, TimedOp, Timing};
use super::Controller;

impl Controller {
    /// Replaces the drive timing model (`None`: off). Requests served from
    /// now on are booked on fresh, idle units; completions already
    /// scheduled keep their due times. For the management socket.
    pub fn set_service_model(&self, model: Option<ServiceModel>) {
        let timing = model.map(|m| Arc::new(Timing::new(m, self.drives.len())));
        let mut slot = self.timing.write().unwrap_or_else(|e| e.into_inner());
        self.timed.store(timing.is_some(), Ordering::Release);
        *slot = timing;
    }

    /// The drive timing model in force, if any.
    pub fn service_model(&self) -> Option<ServiceModel> {
        self.timing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|t| t.model().clone())
    }

    pub(super) fn timing_on(&self) -> bool {
        self.timed.load(Ordering::Acquire)
    }

    /// When VSIC `vsic`'s request `work`, executed at `now`, is due: every
    /// drive segment it touched is booked on its drive (a request over
    /// several extents occupies a unit on each), and the request is due
    /// with its last segment. `None` when the model is off, or when the
    /// range no longer maps (detached meanwhile): at once then.
    pub(super) fn timed_due(&self, vsic: u32, work: Work, now: Instant) -> Option<Instant> {
        let timing = self
            .timing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let (op, offset, len) = match work {
            Work::Flush => return Some(timing.flush(now)),
            Work::Read { offset, len } => (TimedOp::Read, offset, len),
            Work::Write { offset, len } => (TimedOp::Write, offset, len),
            // The first sector stands for the range: zeroing costs a
            // write's latency on one unit whatever its length.
            Work::Zero { offset } => (TimedOp::Write, offset, 0),
        };
        let rt = self.runtime(vsic).ok()?;
        let mut due = now;
        self.with_segments(rt, &Op::Read, offset, len.max(1), |segments| {
            for seg in segments {
                let bytes = seg.len.min(len);
                let at = timing.schedule(seg.drive as usize, op, seg.offset, bytes, now);
                due = due.max(at);
            }
            Ok(())
        })
        .ok()?;
        Some(due)
    }
}
