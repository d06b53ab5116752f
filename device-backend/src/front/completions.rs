//! Scheduled completions: the front half of the drive timing model
//! (`controller::timing`).
//!
//! With the model on, a request's data moves when its queue's worker
//! executes it, but its used-ring entry and interrupt wait for the due
//! time the model gives it, while the worker goes on taking requests
//! (virtio-blk lets a device complete out of order). Each queue keeps its
//! scheduled completions in a heap ordered by (due time, order taken), so
//! a FLUSH the model made due with an earlier write completes after it.
//!
//! No thread per request and no system call per completion while the
//! queue is busy: the worker completes what is due between requests and
//! while it polls its ring; only before it sleeps does it arm the queue's
//! timerfd for the earliest due time (one `timerfd_settime`, skipped when
//! already armed for it), whose tick completes what is due then.
//!
//! Until its entry is in the used ring a chain stays the device's: only
//! its head index and used length are kept (the data moved already).
//! Queue stop (GET_VRING_BASE): every scheduled completion is written
//! before the stop returns, so the driver gets every request the returned
//! ring position counts as taken, early rather than never. Device reset
//! and disconnect drop them: that ring is gone and is never written again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost_user_backend::{VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{FunctionBackend, GuestMemory, Vring};

/// Longest a completion timer is set early to make up for the time the
/// worker takes to wake up (measured, see [`Completions::early`]); the
/// worker then waits the rest out on its core.
const MAX_EARLY: Duration = Duration::from_micros(100);

/// One scheduled completion, ordered by due time, then by order taken.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    due: Instant,
    seq: u64,
    head: u16,
    used_len: u32,
}

/// One queue's scheduled completions.
#[derive(Default)]
pub struct Completions {
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    timer: Option<TimerFd>,
    /// The due time the timer is armed for, if armed.
    armed: Option<Instant>,
    /// When the timer is set to fire (up to [`MAX_EARLY`] before `armed`).
    fires_at: Option<Instant>,
    /// How late the worker handles a timer tick (a moving average of
    /// samples of at most [`MAX_EARLY`]) ...
    late: Duration,
    /// ... and how far the samples stray from it (a moving average of the
    /// absolute difference): the timer is set [`Completions::early`].
    late_spread: Duration,
    /// The queue's vring, for completing on a queue stop (which the vhost
    /// library reports with the queue index only).
    vring: Option<Vring>,
}

impl Completions {
    /// Schedules the completion of chain `head`.
    pub fn push(&mut self, due: Instant, head: u16, used_len: u32) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            due,
            seq: self.seq,
            head,
            used_len,
        }));
    }

    /// Keeps the queue's vring, for completing on a queue stop.
    pub fn remember(&mut self, vring: &Vring) {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
    }

    /// Whether a timer can complete what is scheduled (without one the
    /// queue completes at once).
    pub fn has_timer(&self) -> bool {
        self.timer.is_some()
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(s)| s.due)
    }

    /// The next completion due at `now`, as (head, used length).
    pub fn pop_due(&mut self, now: Instant) -> Option<(u16, u32)> {
        if self.next_due()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(s)| (s.head, s.used_len))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Arms the timer for the earliest due time (disarms it when none is
    /// left); no system call when it is armed for that time already.
    fn arm(&mut self, name: &dyn Fn() -> String) {
        let want = self.next_due();
        if want == self.armed {
            return;
        }
        let early = self.early();
        let Some(timer) = self.timer.as_mut() else {
            return;
        };
        let fires_at = want.map(|due| due.checked_sub(early).unwrap_or(due));
        let result = match fires_at {
            // A zero value would disarm: at least a nanosecond.
            Some(at) => timer.reset(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
                None,
            ),
            None => timer.clear(),
        };
        match result {
            Ok(()) => {
                self.armed = want;
                self.fires_at = fires_at;
            }
            Err(e) => {
                warn!("{}: cannot arm the completion timer: {e}", name());
                self.armed = None;
                self.fires_at = None;
            }
        }
    }

    /// How early the timer is set: the average lateness of a tick plus
    /// three times its spread (at most [`MAX_EARLY`]), so that jittery
    /// wake-ups are covered too and not only the average one; the worker
    /// waits the rest out on its core.
    fn early(&self) -> Duration {
        (self.late + self.late_spread * 3).min(MAX_EARLY)
    }

    /// A tick of the timer handled at `now`: learns how late ticks are
    /// handled, disarms, and says until when to wait on the core for the
    /// completion it was set early for.
    fn ticked(&mut self, now: Instant) -> Option<Instant> {
        if let Some(at) = self.fires_at.take() {
            let sample = now.saturating_duration_since(at).min(MAX_EARLY);
            let spread = sample.abs_diff(self.late);
            self.late = (self.late * 7 + sample) / 8;
            self.late_spread = (self.late_spread * 7 + spread) / 8;
        }
        self.armed = None;
        self.next_due()
            .filter(|due| due.saturating_duration_since(now) <= MAX_EARLY)
    }
}

/// A queue's scheduled completions and how many there are (read without
/// the lock, so a queue without any costs one load per batch).
#[derive(Default)]
pub struct CompletionQueue {
    pending: AtomicUsize,
    inner: Mutex<Completions>,
}

impl CompletionQueue {
    pub fn any(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    pub fn lock(&self) -> CompletionsGuard<'_> {
        CompletionsGuard {
            pending: &self.pending,
            inner: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// The locked completions; the count others read follows on unlock.
pub struct CompletionsGuard<'a> {
    pending: &'a AtomicUsize,
    inner: MutexGuard<'a, Completions>,
}

impl std::ops::Deref for CompletionsGuard<'_> {
    type Target = Completions;
    fn deref(&self) -> &Completions {
        &self.inner
    }
}

impl std::ops::DerefMut for CompletionsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Completions {
        &mut self.inner
    }
}

impl Drop for CompletionsGuard<'_> {
    fn drop(&mut self) {
        self.pending.store(self.inner.len(), Ordering::Release);
    }
}

impl FunctionBackend {
    /// Gives every queue (one per epoll handler, in queue order) a timer
    /// for its scheduled completions. Idle until a completion is
    /// scheduled, so it is set up whether or not the model is on (the
    /// model can be switched on at run time).
    pub fn arm_completion_timers(
        &self,
        handlers: &[Arc<VringEpollHandler<FunctionBackend>>],
    ) -> io::Result<()> {
        for (handler, queue) in handlers.iter().zip(&self.session.completions) {
            let timer = TimerFd::new()?;
            set_nonblocking(timer.as_raw_fd())?;
            handler.register_listener(timer.as_raw_fd(), EventSet::IN, self.completion_event())?;
            queue.lock().timer = Some(timer);
        }
        Ok(())
    }

    /// The epoll token of the completion timers (after the watch timers').
    pub(super) fn completion_event(&self) -> u64 {
        u64::from(self.session.state.num_queues) + 2
    }

    pub(super) fn completion_queue(&self, queue: u16) -> Option<&CompletionQueue> {
        self.session.completions.get(queue as usize)
    }

    /// Adds to the used ring every completion of `completions` due at
    /// `now`; how many, or `None` when the used ring cannot be written
    /// (logged; the queue is then served no further until its next kick).
    /// Called with the vring locked.
    pub(super) fn complete_due<M: vm_memory::GuestMemory>(
        &self,
        vring: &mut vhost_user_backend::VringState<GuestMemory>,
        mem: &M,
        completions: &mut Completions,
        queue: u16,
        now: Instant,
    ) -> Option<usize> {
        let mut n = 0;
        while let Some((head, used_len)) = completions.pop_due(now) {
            if let Err(e) = vring.get_queue_mut().add_used(mem, head, used_len) {
                warn!(
                    "{} queue {queue}: cannot complete a request: {e}",
                    self.session.state.name()
                );
                return None;
            }
            n += 1;
        }
        Some(n)
    }

    /// Before the worker sleeps: the timer wakes it for the earliest
    /// scheduled completion.
    pub(super) fn arm_completions(&self, vring: &Vring, queue: u16) {
        let Some(cq) = self.completion_queue(queue) else {
            return;
        };
        if !cq.any() {
            return;
        }
        let mut completions = cq.lock();
        completions.remember(vring);
        completions.arm(&|| format!("{} queue {queue}", self.session.state.name()));
    }

    /// The earliest scheduled completion of `queue`, if any.
    pub(super) fn next_completion(&self, queue: u16) -> Option<Instant> {
        let cq = self.completion_queue(queue)?;
        if !cq.any() {
            return None;
        }
        cq.lock().next_due()
    }

    /// Before the worker sleeps: a completion due sooner than a timer
    /// would wake the worker for it (see [`Completions::early`]) is waited
    /// for on the core instead (at most [`MAX_EARLY`]). True when it did.
    pub(super) fn wait_for_imminent(&self, queue: u16, due: Instant) -> bool {
        let Some(cq) = self.completion_queue(queue) else {
            return false;
        };
        let early = cq.lock().early();
        let now = Instant::now();
        if due.saturating_duration_since(now) > early {
            return false;
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        true
    }

    /// A completion-timer tick: acknowledged (and waited out on the core
    /// up to the due time it was set early for), then the queue is served as
    /// on a kick: what is due completes, requests that arrived meanwhile
    /// are taken, the worker polls for the next completion if it is due
    /// soon and re-arms the timer before it sleeps.
    pub(super) fn completion_tick(&self, vring: &Vring, queue: u16) {
        let Some(cq) = self.completion_queue(queue) else {
            return;
        };
        let wait_until = {
            let mut completions = cq.lock();
            if let Some(timer) = completions.timer.as_mut() {
                // Acknowledge (level-triggered); EAGAIN means no tick: fine.
                let _ = timer.wait();
            }
            completions.ticked(Instant::now())
        };
        // Set early by how late ticks come: wait the rest out here (at
        // most MAX_EARLY), holding no lock.
        if let Some(due) = wait_until {
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        self.process_queue(vring, queue);
    }

    /// A queue stop (GET_VRING_BASE): completes every scheduled request
    /// now, in due order, and signals, so none the stop counts as taken
    /// is lost.
    pub(super) fn complete_all_on_stop(&self, queue: u16) {
        let Some(cq) = self.completion_queue(queue) else {
            return;
        };
        let Some(vring) = cq.lock().vring.clone() else {
            return; // never scheduled anything
        };
        let mem = self.session.mem.memory();
        let mut state = vring.get_mut();
        let mut completions = cq.lock();
        if completions.is_empty() {
            return;
        }
        debug!(
            "{} queue {queue}: stopped with {} scheduled completions: completing them now",
            self.session.state.name(),
            completions.len()
        );
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        if self
            .complete_due(&mut state, &*mem, &mut completions, queue, far)
            .is_some()
        {
            self.interrupt(&mut state, &*mem, queue);
        }
        completions.heap.clear();
        completions.arm(&|| format!("{} queue {queue}", self.session.state.name()));
    }

    /// A device reset: the rings are gone; scheduled completions are
    /// dropped, never written.
    pub(super) fn drop_completions(&self) {
        for cq in &self.session.completions {
            let mut completions = cq.lock();
            if !completions.is_empty() {
                debug!(
                    "{}: reset with {} scheduled completions: dropped",
                    self.session.state.name(),
                    completions.len()
                );
            }
            completions.heap.clear();
            completions.arm(&|| self.session.state.name());
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own; a failure is reported.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on the same descriptor, adding O_NONBLOCK; a
    // failure is reported.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_come_out_by_due_time_then_order_taken() {
        let mut c = Completions::default();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        c.push(t0 + us(30), 1, 10);
        c.push(t0 + us(10), 2, 20);
        c.push(t0 + us(30), 3, 30); // same due as head 1, taken later
        c.push(t0 + us(20), 4, 40);
        assert_eq!(c.next_due(), Some(t0 + us(10)));
        assert_eq!(c.pop_due(t0 + us(5)), None, "nothing due yet");
        assert_eq!(c.pop_due(t0 + us(25)), Some((2, 20)));
        assert_eq!(c.pop_due(t0 + us(25)), Some((4, 40)));
        assert_eq!(c.pop_due(t0 + us(25)), None);
        assert_eq!(c.pop_due(t0 + us(30)), Some((1, 10)));
        assert_eq!(c.pop_due(t0 + us(30)), Some((3, 30)));
        assert!(c.is_empty());
    }

    #[test]
    fn the_timer_is_set_early_by_how_late_ticks_come() {
        let mut c = Completions::default();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        c.push(t0 + us(1000), 1, 0);
        c.fires_at = Some(t0);
        // Ticks handled 40 us late, again and again: the average follows.
        for _ in 0..40 {
            c.fires_at = Some(t0);
            assert_eq!(c.ticked(t0 + us(40)), None, "due 1 ms away: no wait");
        }
        assert!(c.late > us(35) && c.late <= us(40), "{:?}", c.late);
        // Very late ticks count as MAX_EARLY at most.
        c.fires_at = Some(t0);
        let _ = c.ticked(t0 + Duration::from_secs(1));
        assert!(c.late <= MAX_EARLY);
        // A completion due within MAX_EARLY is waited for.
        assert_eq!(c.ticked(t0 + us(990)), Some(t0 + us(1000)));
    }

    #[test]
    fn the_timer_margin_covers_jittery_wake_ups() {
        // Ticks handled 10 or 30 us late in turn: a margin of the average
        // (20 us) would leave every other completion 10 us late; the
        // margin takes the spread into account.
        let mut c = Completions::default();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        c.push(t0 + Duration::from_secs(1), 1, 0);
        for i in 0..64 {
            c.fires_at = Some(t0);
            let _ = c.ticked(t0 + if i % 2 == 0 { us(10) } else { us(30) });
        }
        assert!(c.early() >= us(30), "margin {:?}", c.early());
        assert!(c.early() <= MAX_EARLY);
        // Steady wake-ups: the margin comes back down to them.
        for _ in 0..64 {
            c.fires_at = Some(t0);
            let _ = c.ticked(t0 + us(10));
        }
        assert!(c.early() < us(15), "margin {:?}", c.early());
        // The timer is set that early.
        c.timer = Some(TimerFd::new().expect("timerfd"));
        c.arm(&String::new);
        assert_eq!(c.armed, Some(t0 + Duration::from_secs(1)));
        assert_eq!(c.fires_at, Some(t0 + Duration::from_secs(1) - c.early()));
    }

    #[test]
    fn the_pending_count_follows_the_guard() {
        let q = CompletionQueue::default();
        assert!(!q.any());
        q.lock().push(Instant::now(), 0, 0);
        assert!(q.any());
        let _ = q.lock().pop_due(Instant::now());
        assert!(!q.any());
    }
}
