//! The queue worker loop: what one queue's worker thread does when it is
//! woken (a kick, a poll hit, a watch-timer tick).
//!
//! It serves the queue in bounded batches (requests and bytes per hold of
//! the vring lock), waits out the VSIC's QoS budget with no lock held,
//! coalesces interrupts within a batch, and after serving may poll the
//! avail ring for a while before it re-enables notifications and sleeps
//! (see [`super::poll`]). The vhost-user side (features, configuration,
//! sessions) is [`super::backend`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vsic_abi::virtio::Function;

use super::backend::{FunctionBackend, GuestMemory, Vring};
use super::chain::{DescWalk, Stream};
use super::execute::{handle_chain, Context, RingAreas, Scratch};
use super::lost_kick_watch::{StallWatch, WatchTimer};
use super::poll::SpinWindow;
use crate::controller::target::{DmaAccess, DmaWindows};

/// Requests served per hold of a queue's vring lock.
const BATCH: usize = 64;
/// Bytes moved per hold of a queue's vring lock, at most (a batch ends
/// after the request that reaches it). With the maximum transfer this
/// bounds how long a queue stop or a shutdown waits for a batch.
const BATCH_BYTES: u64 = 64 << 20;
/// Longest a QoS wait sleeps before it checks whether the queue was
/// stopped or the connection is ending.
const THROTTLE_SLICE: Duration = Duration::from_millis(10);
/// Longest a completed request waits for its interrupt while later ones of
/// the same batch run. One interrupt covers the whole batch when requests
/// are fast; a slow one (drive, QoS, service model) delays the interrupt of
/// those before it by at most its own time.
const INTERRUPT_DELAY: Duration = Duration::from_micros(20);

/// For a driver that polls its used ring, a scheduled completion due this
/// soon is waited for by polling the ring (when the poll policy lets the
/// worker spin) rather than by sleeping on the queue's timer, whose
/// wake-up comes late by a varying few to tens of microseconds: the model's
/// latency is then delivered to the microsecond. Farther away the worker
/// sleeps and its timer is set early (see `completions`). Costs a core only
/// while a completion is that close.
///
/// A driver that takes interrupts gets neither this nor the poll for its
/// next request after a completion (below): it is asleep when its
/// completion is written and must be woken first, and a worker spinning
/// meanwhile keeps it off that core; on this project's 2-vCPU virtual
/// machine that made its wake-up 15 to 20 µs slower (p50 124 against 107
/// µs at 100 µs and QD 1), more than the timer's lateness the spin saves.
const DUE_SPIN: Duration = Duration::from_micros(200);

/// What one queue's worker keeps between wake-ups.
pub(super) struct QueueWorker {
    scratch: Scratch,
    pub(super) window: SpinWindow,
    /// When the worker last went to sleep after serving requests.
    idle_since: Option<Instant>,
    /// Requests left waiting without a kick (see [`super::lost_kick_watch`]).
    pub(super) stall: StallWatch,
    pub(super) timer: Option<WatchTimer>,
    /// Whether the driver polls its used ring: the last batch that wrote
    /// used entries found it did not ask for an interrupt.
    driver_polls: bool,
}

impl QueueWorker {
    pub(super) fn new(poll_max: Duration) -> QueueWorker {
        QueueWorker {
            scratch: Scratch::new(),
            window: SpinWindow::new(poll_max),
            idle_since: None,
            stall: StallWatch::default(),
            timer: None,
            driver_polls: false,
        }
    }
}

/// What one batch did.
struct Batch {
    /// Requests taken from the avail ring.
    served: usize,
    /// Scheduled completions written to the used ring.
    completed: usize,
    /// Whether the driver asked for an interrupt for the used entries the
    /// batch wrote (`None`: it wrote none).
    interrupt_asked: Option<bool>,
    end: BatchEnd,
}

/// How serving one batch of requests ended.
enum BatchEnd {
    /// The batch limit was reached: more may be waiting.
    Full,
    /// The avail ring is empty (as far as this batch saw).
    Drained,
    /// The queue cannot be served (broken ring): stop until the next kick.
    Failed,
    /// The VSIC's QoS budget is spent: the next request may be taken after
    /// this long.
    Throttled(Duration),
}

impl FunctionBackend {
    /// Serves every available request of one queue, in bounded batches: the
    /// vring lock and the shutdown guard are let go between batches, so a
    /// guest that never stops submitting cannot hold off a queue stop
    /// (GET_VRING_BASE) or a clean shutdown.
    ///
    /// Driver notifications stay suppressed while the worker serves and
    /// polls; they are re-enabled, and the ring checked once more, only
    /// before the worker goes back to sleep, so no request is left behind.
    pub(super) fn process_queue(&self, vring: &Vring, queue: u16) {
        self.serve_queue(vring, queue);
        // Before sleeping: the timer wakes the worker for the earliest
        // completion the drive timing model scheduled, if any.
        self.arm_completions(vring, queue);
    }

    fn serve_queue(&self, vring: &Vring, queue: u16) {
        let Some(worker) = self.session.workers.get(queue as usize) else {
            return;
        };
        let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
        let worker = &mut *worker;
        let woke = Instant::now();
        // When the worker last went to sleep after serving requests or
        // completing scheduled ones: the gap to a request that wakes it
        // is how long the driver took to send it.
        let slept_since = worker.idle_since.take();
        let mut first_batch = true;
        let mut served_any = false;
        // Scheduled completions written since the worker woke to a driver
        // that polls: it answers them with its next requests at once, and
        // the worker polls for those as it does after serving (a driver at
        // QD 1 waits for each).
        let mut completed_any = false;
        // Rounds in a row in which the ring claimed requests but yielded none.
        let mut phantom_rounds = 0;
        // The ring said requests were waiting when notifications were
        // re-enabled: the next batch must take some.
        let mut ring_said_more = false;
        loop {
            let batch = self.run_batch(vring, queue, &mut worker.scratch);
            let served_now = batch.served;
            if let Some(asked) = batch.interrupt_asked {
                worker.driver_polls = !asked;
            }
            completed_any |= batch.completed > 0 && worker.driver_polls;
            if std::mem::take(&mut first_batch) && served_now > 0 {
                // Requests were waiting when the worker woke: was the gap
                // short enough to have been polled across? (A wake-up that
                // finds none, a completion tick, teaches nothing.)
                if let Some(since) = slept_since {
                    worker
                        .window
                        .after_sleep(woke.saturating_duration_since(since));
                }
            }
            if std::mem::take(&mut ring_said_more) {
                // Only the batch right after counts: batches in between
                // may complete scheduled requests and take none.
                phantom_rounds = if served_now == 0 {
                    phantom_rounds + 1
                } else {
                    0
                };
            }
            match batch.end {
                BatchEnd::Failed => return,
                BatchEnd::Full => {
                    served_any = true;
                    continue;
                }
                BatchEnd::Throttled(wait) => {
                    served_any |= served_now > 0;
                    // No lock is held here: a queue stop, a shutdown or a
                    // disconnect proceeds while this queue waits.
                    if !self.throttle(vring, wait) {
                        return;
                    }
                    continue;
                }
                BatchEnd::Drained => served_any |= served_now > 0,
            }
            // A stopped ring completes nothing: then no completion counts.
            let next_due = self
                .next_completion(queue)
                .filter(|_| vring.get_ref().get_queue().ready());
            let due_spin = if worker.driver_polls {
                DUE_SPIN
            } else {
                Duration::ZERO
            };
            if (served_any || completed_any || next_due.is_some())
                && self.poll_for_more(vring, worker.window.current(), next_due, due_spin)
            {
                continue;
            }
            if next_due.is_some_and(|due| self.wait_for_imminent(queue, due)) {
                continue;
            }
            match self.enable_notification(vring, queue) {
                Some(true) if phantom_rounds > 0 => {
                    // Twice the ring said requests were waiting and twice
                    // none could be taken: the driver put its avail index
                    // further ahead than the ring is long. Sleep until its
                    // next kick instead of spinning on a broken ring.
                    if self.session.state.log.allow() {
                        warn!(
                            "{} queue {queue}: the driver's avail index runs ahead of the ring; waiting for its next kick",
                            self.session.state.name()
                        );
                    }
                    break;
                }
                Some(true) => {
                    // More arrived while notifications were off.
                    ring_said_more = true;
                    continue;
                }
                Some(false) => break,
                None => return,
            }
        }
        // A wake-up that did nothing (a stale kick) leaves the idle time
        // running from the last real work.
        worker.idle_since = if served_any || completed_any {
            Some(Instant::now())
        } else {
            slept_since
        };
    }

    /// Serves up to [`BATCH`] requests with driver notifications off.
    fn run_batch(&self, vring: &Vring, queue: u16, scratch: &mut Scratch) -> Batch {
        let s = &*self.session;
        let _running = s.state.quiesce.read().unwrap_or_else(|e| e.into_inner());
        let mem = s.mem.memory();
        // One snapshot of the VSIC's DMA windows per batch: a change made
        // by an admin command applies from the next batch on.
        let dma = match s.state.function {
            Function::Vsic(n) => s.state.target.dma_policy(n),
            Function::Pf => None,
        };
        let ring = vring;
        let mut vring = ring.get_mut();
        // Completions the drive timing model schedules (locked after the
        // vring, as everywhere): a queue without a timer to complete them
        // has its requests complete at once.
        let cq = self.completion_queue(queue);
        let model_on = matches!(s.state.function, Function::Vsic(_)) && s.state.target.timed();
        let mut completions = cq.filter(|cq| model_on || cq.any()).map(|cq| cq.lock());
        if let Some(c) = completions.as_deref_mut() {
            c.remember(ring);
        }
        let timed = model_on && completions.as_ref().is_some_and(|c| c.has_timer());
        let mut ctx = Context {
            timed,
            dma: dma.as_deref(),
            rings: RingAreas::default(),
            function: s.state.function,
            queue,
            target: &*s.state.target,
            config_changes: &*s.state.notifiers,
            log: &s.state.log,
            config_settled: &|| self.await_config_read(),
        };
        if !vring.get_queue().ready() {
            // Stopped (GET_VRING_BASE) since the kick: leave its rings alone.
            return Batch {
                served: 0,
                completed: 0,
                interrupt_asked: None,
                end: BatchEnd::Drained,
            };
        }
        if let (Function::Vsic(n), Some(windows)) = (s.state.function, ctx.dma) {
            ctx.rings = ring_areas(vring.get_queue()).map(|(addr, len, _)| (addr, len));
            if let Some((addr, len)) = ring_outside(vring.get_queue(), windows) {
                // The rings themselves are outside the windows: serve
                // nothing (the queue stays stopped) until a kick finds
                // them covered.
                s.state.target.dma_violation(n, queue, addr, len);
                return Batch {
                    served: 0,
                    completed: 0,
                    interrupt_asked: None,
                    end: BatchEnd::Failed,
                };
            }
        }
        if let Err(e) = vring.disable_notification() {
            warn!("{} queue {queue}: {e}", s.state.name());
            return Batch {
                served: 0,
                completed: 0,
                interrupt_asked: None,
                end: BatchEnd::Failed,
            };
        }
        let mut served = 0;
        let mut completed = 0;
        let mut interrupt_asked = None;
        let mut bytes = 0u64;
        // When the oldest completion not yet signalled was added.
        let mut unsignalled: Option<Instant> = None;
        let end = loop {
            if let Some(completions) = completions.as_deref_mut() {
                match self.complete_due(&mut vring, &*mem, completions, queue, Instant::now()) {
                    Some(0) => {}
                    Some(n) => {
                        completed += n;
                        unsignalled.get_or_insert_with(Instant::now);
                    }
                    None => break BatchEnd::Failed,
                }
            }
            if unsignalled.is_some_and(|oldest| oldest.elapsed() >= INTERRUPT_DELAY) {
                interrupt_asked = Some(self.interrupt(&mut vring, &*mem, queue));
                unsignalled = None;
            }
            if served == BATCH || bytes >= BATCH_BYTES {
                break BatchEnd::Full;
            }
            if let Some(wait) = self.qos_wait(vring.get_queue(), &*mem) {
                break BatchEnd::Throttled(wait);
            }
            // The queue is driven with this batch's memory guard throughout:
            // the vring's own helpers would load the memory map per call.
            let Some(chain) = vring.get_queue_mut().pop_descriptor_chain(&*mem) else {
                break BatchEnd::Drained;
            };
            served += 1;
            let head = chain.head_index();
            let queue_ref = vring.get_queue();
            let descs = DescWalk::new(&*mem, queue_ref.desc_table(), queue_ref.size(), head)
                .within(ctx.dma);
            let arrived = timed.then(Instant::now);
            let done = handle_chain(&*mem, descs, &ctx, scratch);
            bytes += scratch.chain.len(Stream::Readable) + scratch.chain.len(Stream::Writable);
            if let (Some(arrived), Some(work), Function::Vsic(vsic), Some(completions)) = (
                arrived,
                scratch.work,
                s.state.function,
                completions.as_deref_mut(),
            ) {
                if let Some(due) = s.state.target.due(vsic, work, arrived) {
                    // Through the heap even when already due (the request
                    // took longer to execute than the model gives it): it
                    // must not overtake completions due before it.
                    completions.push(due, head, done.used_len);
                    continue;
                }
            }
            if let Err(e) = vring.get_queue_mut().add_used(&*mem, head, done.used_len) {
                warn!(
                    "{} queue {queue}: cannot complete a request: {e}",
                    s.state.name()
                );
                break BatchEnd::Failed;
            }
            unsignalled.get_or_insert_with(Instant::now);
        };
        if unsignalled.is_some() {
            interrupt_asked = Some(self.interrupt(&mut vring, &*mem, queue));
        }
        Batch {
            served,
            completed,
            interrupt_asked,
            end,
        }
    }

    /// How long the next request must wait for its VSIC's QoS budget;
    /// `None` when it may go now or no request is waiting.
    fn qos_wait<M: vm_memory::GuestMemory>(
        &self,
        queue: &virtio_queue::Queue,
        mem: &M,
    ) -> Option<Duration> {
        let state = &self.session.state;
        let Function::Vsic(vsic) = state.function else {
            return None;
        };
        let waiting = queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|avail| avail.0 != queue.next_avail());
        if !waiting {
            return None;
        }
        Some(state.target.qos_wait(vsic)).filter(|w| !w.is_zero())
    }

    /// Sleeps `wait` for the QoS budget, holding no lock, in slices; false
    /// as soon as the queue is stopped or disabled or the workers are told
    /// to exit.
    fn throttle(&self, vring: &Vring, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.session.stopping.load(Ordering::Acquire) {
                return false;
            }
            {
                let state = vring.get_ref();
                if !state.is_enabled() || !state.get_queue().ready() {
                    return false;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::sleep(deadline.saturating_duration_since(now).min(THROTTLE_SLICE));
        }
    }

    /// Signals the used ring if the driver wants it (EVENT_IDX used_event
    /// or the NO_INTERRUPT flag, both read by `needs_notification`); whether
    /// it did.
    pub(super) fn interrupt<M: vm_memory::GuestMemory>(
        &self,
        vring: &mut vhost_user_backend::VringState<GuestMemory>,
        mem: &M,
        queue: u16,
    ) -> bool {
        let name = || self.session.state.name();
        match vring.get_queue_mut().needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    debug!("{} queue {queue}: interrupt: {e}", name());
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!("{} queue {queue}: {e}", name());
                false
            }
        }
    }

    /// Re-enables driver notifications; `Some(true)` if requests arrived
    /// meanwhile, `None` if the ring is unusable.
    fn enable_notification(&self, vring: &Vring, queue: u16) -> Option<bool> {
        let mut vring = vring.get_mut();
        if !vring.get_queue().ready() {
            // Stopped while the worker polled: the ring is no longer ours.
            return Some(false);
        }
        match vring.enable_notification() {
            Ok(more) => Some(more),
            Err(e) => {
                warn!("{} queue {queue}: {e}", self.session.state.name());
                None
            }
        }
    }

    /// Watches the avail ring for up to `window`, if the poll policy lets
    /// this worker spin now; a scheduled completion due within the longest
    /// poll or `due_spin`, whichever is longer, is waited for by polling
    /// too. True when a request showed up or the completion is due.
    fn poll_for_more(
        &self,
        vring: &Vring,
        window: Duration,
        next_due: Option<Instant>,
        due_spin: Duration,
    ) -> bool {
        let policy = &self.session.state.poll;
        let due_by = |now: Instant| next_due.is_some_and(|due| now >= due);
        let start = Instant::now();
        let until_due = next_due
            .map(|due| due.saturating_duration_since(start))
            .filter(|d| *d <= policy.max().max(due_spin))
            .unwrap_or_default();
        let window = window.max(until_due);
        if window.is_zero() {
            return due_by(start);
        }
        let Some(slot) = policy.try_spin() else {
            return due_by(Instant::now());
        };
        let mem = self.session.mem.memory();
        let mut last = start;
        let deadline = last + window;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !state.is_enabled() || !queue.ready() {
                    return false;
                }
                match queue.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            let now = Instant::now();
            if due_by(now) {
                return true;
            }
            if now.saturating_duration_since(last) > policy.late_look() {
                // Another thread had this core: sleeping serves better now.
                slot.preempted();
                return false;
            }
            if now >= deadline {
                return false;
            }
            last = now;
            // Poll politely: a driver thread woken meanwhile runs first.
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

/// The first of a queue's three rings (virtio 1.3, 2.7) that lies outside
/// `windows`, as (address, length): the device reads the descriptor table
/// and the avail ring and writes the used ring.
/// The queue's rings: (address, length, how the device accesses it).
fn ring_areas(queue: &virtio_queue::Queue) -> [(u64, u64, DmaAccess); 3] {
    let n = u64::from(queue.size());
    [
        (queue.desc_table(), 16 * n, DmaAccess::Read),
        (queue.avail_ring(), 6 + 2 * n, DmaAccess::Read),
        (queue.used_ring(), 6 + 8 * n, DmaAccess::Write),
    ]
}

fn ring_outside(queue: &virtio_queue::Queue, windows: &DmaWindows) -> Option<(u64, u64)> {
    ring_areas(queue)
        .into_iter()
        .find(|&(addr, len, access)| !windows.permits(addr, len, access))
        .map(|(addr, len, _)| (addr, len))
}
