//! Adaptive polling of a queue's avail ring before its worker sleeps.
//!
//! Sleeping in `epoll_wait` between requests costs every request a kick
//! (an eventfd write by the driver) and a wake-up of the worker, which at
//! low queue depth is most of the latency. After serving a batch, the
//! worker therefore keeps looking at the avail ring for a while, with the
//! driver's kicks suppressed, and only then re-enables them and sleeps.
//!
//! How long it looks adapts per queue, like QEMU's `poll-max-ns`: the
//! window grows when the queue's idle gaps are short enough to be bridged
//! (up to the configured maximum) and shrinks when they are longer, so an
//! idle or slow queue soon stops spinning and costs no CPU.
//!
//! Polling only pays while the poller has a core to itself: a thread that
//! gives up its core between looks gets it back late when other threads
//! wait for it, and a request then waits for the poller's next turn (up to
//! milliseconds) instead of waking a sleeping worker (microseconds). So
//! workers poll only while the machine has no runnable thread waiting for
//! a core (the count in `/proc/loadavg`, read at most once a millisecond),
//! stop as soon as a look comes back late, yield their core between looks
//! so that a driver thread woken meanwhile goes first, and at most half
//! the cores poll at once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A look at the ring that took longer than this means the poller lost its
/// core to another thread.
const PREEMPTED: Duration = Duration::from_micros(50);

/// How the front polls its queues; shared by every function's workers.
#[derive(Debug)]
pub struct PollPolicy {
    /// Longest a worker spins after a batch; zero turns polling off.
    max: Duration,
    /// Workers allowed to spin at the same time.
    max_spinners: usize,
    spinners: AtomicUsize,
    cores: SpareCores,
    /// See [`PREEMPTED`].
    late_look: Duration,
}

impl PollPolicy {
    /// `max`: the longest spin after a batch. `cores`: CPUs this process
    /// may run on. Spinning on a single core only delays the driver, so it
    /// is off there; otherwise at most half the cores spin (at least one).
    pub fn new(max: Duration, cores: usize) -> PollPolicy {
        let max_spinners = if cores < 2 { 0 } else { (cores / 2).max(1) };
        PollPolicy {
            max: if max_spinners == 0 {
                Duration::ZERO
            } else {
                max
            },
            max_spinners,
            spinners: AtomicUsize::new(0),
            cores: SpareCores::new(cores, File::open("/proc/loadavg").ok()),
            late_look: PREEMPTED,
        }
    }

    /// As [`PollPolicy::new`], taking every core as spare and no look as
    /// late, whatever else runs on the machine.
    #[cfg(test)]
    pub(crate) fn ignoring_load(max: Duration, cores: usize) -> PollPolicy {
        PollPolicy {
            cores: SpareCores::new(cores, None),
            late_look: Duration::MAX,
            ..PollPolicy::new(max, cores)
        }
    }

    /// Polling turned off.
    pub fn off() -> PollPolicy {
        PollPolicy::new(Duration::ZERO, 1)
    }

    /// The CPUs this process may run on (1 if unknown).
    pub fn available_cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// A look at the ring taking longer than this means the poller lost
    /// its core (see [`SpinSlot::preempted`]).
    pub fn late_look(&self) -> Duration {
        self.late_look
    }

    /// A spin slot, if the machine has a core to spare and fewer than the
    /// allowed number of workers spin now.
    pub fn try_spin(&self) -> Option<SpinSlot<'_>> {
        if self.max.is_zero() || !self.cores.spare() {
            return None;
        }
        self.spinners
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max_spinners).then_some(n + 1)
            })
            .ok()
            .map(|_| SpinSlot(self))
    }
}

/// The right to spin, given back when dropped.
pub struct SpinSlot<'a>(&'a PollPolicy);

impl SpinSlot<'_> {
    /// The poller lost its core: other threads want the cores, so nobody
    /// polls until the next look at the run queue.
    pub fn preempted(&self) {
        self.0.cores.mark_busy();
    }
}

/// Whether any thread waits for a core, from the number of runnable
/// threads `/proc/loadavg` shows (the reader included), looked up at most
/// once per [`SpareCores::RECHECK`]. Without `/proc`, cores count as spare.
#[derive(Debug)]
struct SpareCores {
    loadavg: Option<File>,
    cores: usize,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last look, plus one (0: never).
    looked: AtomicU64,
    spare: AtomicBool,
}

impl SpareCores {
    const RECHECK: Duration = Duration::from_millis(1);

    fn new(cores: usize, loadavg: Option<File>) -> SpareCores {
        SpareCores {
            loadavg,
            cores,
            epoch: Instant::now(),
            looked: AtomicU64::new(0),
            spare: AtomicBool::new(true),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn spare(&self) -> bool {
        let now = self.now();
        let looked = self.looked.load(Ordering::Relaxed);
        let stale = looked == 0 || now.saturating_sub(looked) >= Self::RECHECK.as_nanos() as u64;
        // One thread looks; the others use the last answer meanwhile.
        if stale
            && self
                .looked
                .compare_exchange(looked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let spare = !matches!(self.runnable(), Some(n) if n > self.cores);
            self.spare.store(spare, Ordering::Relaxed);
        }
        self.spare.load(Ordering::Relaxed)
    }

    fn mark_busy(&self) {
        self.spare.store(false, Ordering::Relaxed);
        self.looked.store(self.now(), Ordering::Relaxed);
    }

    fn runnable(&self) -> Option<usize> {
        let mut buf = [0u8; 128];
        let n = self.loadavg.as_ref()?.read_at(&mut buf, 0).ok()?;
        runnable_threads(buf.get(..n)?)
    }
}

/// The runnable-thread count of a `/proc/loadavg` line
/// (`0.52 0.58 0.59 3/412 12345`: the 3).
fn runnable_threads(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let (running, _total) = text.split_whitespace().nth(3)?.split_once('/')?;
    running.parse().ok()
}

impl Drop for SpinSlot<'_> {
    fn drop(&mut self) {
        self.0.spinners.fetch_sub(1, Ordering::Release);
    }
}

/// The spin window of one queue.
#[derive(Debug, Clone, Copy)]
pub struct SpinWindow {
    max_ns: u64,
    window_ns: u64,
}

impl SpinWindow {
    /// Where a growing window starts.
    const START_NS: u64 = 4_000;

    pub fn new(max: Duration) -> SpinWindow {
        SpinWindow {
            max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            window_ns: 0,
        }
    }

    /// How long to spin after the next batch.
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// The queue slept, and its next request came `idle` after its last
    /// batch ended. A gap the maximum window would have bridged grows the
    /// window (doubling from 4 µs); a longer one halves it, down to off.
    pub fn after_sleep(&mut self, idle: Duration) {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        if idle_ns > self.max_ns {
            self.window_ns /= 2;
            if self.window_ns < Self::START_NS {
                self.window_ns = 0;
            }
        } else if idle_ns > self.window_ns {
            self.window_ns = self
                .window_ns
                .saturating_mul(2)
                .max(Self::START_NS)
                .min(self.max_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn short_gaps_grow_the_window_up_to_the_maximum() {
        let mut w = SpinWindow::new(50 * US);
        assert_eq!(w.current(), Duration::ZERO, "starts off");
        w.after_sleep(10 * US);
        assert_eq!(w.current(), 4 * US);
        w.after_sleep(10 * US);
        assert_eq!(w.current(), 8 * US);
        w.after_sleep(10 * US);
        assert_eq!(w.current(), 16 * US);
        // A gap inside the window means the spin was not long enough to
        // be the reason for sleeping: no change.
        w.after_sleep(12 * US);
        assert_eq!(w.current(), 16 * US);
        for _ in 0..10 {
            w.after_sleep(40 * US);
        }
        assert_eq!(w.current(), 50 * US, "capped at the maximum");
    }

    #[test]
    fn long_gaps_shrink_the_window_to_off() {
        let mut w = SpinWindow::new(50 * US);
        for _ in 0..5 {
            w.after_sleep(45 * US);
        }
        assert_eq!(w.current(), 50 * US);
        w.after_sleep(Duration::from_millis(5));
        assert_eq!(w.current(), 25 * US);
        for _ in 0..3 {
            w.after_sleep(Duration::from_secs(1));
        }
        assert_eq!(w.current(), Duration::ZERO, "an idle queue stops spinning");
        w.after_sleep(Duration::MAX);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn a_zero_maximum_never_spins() {
        let mut w = SpinWindow::new(Duration::ZERO);
        w.after_sleep(Duration::ZERO);
        w.after_sleep(US);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn reads_the_runnable_thread_count() {
        assert_eq!(runnable_threads(b"0.52 0.58 0.59 3/412 12345\n"), Some(3));
        assert_eq!(runnable_threads(b"10.00 7.1 5.0 17/2000 1"), Some(17));
        assert_eq!(runnable_threads(b"0.52 0.58 0.59"), None);
        assert_eq!(runnable_threads(b"a b c x/y z"), None);
        assert_eq!(runnable_threads(&[0xff, 0xfe]), None);
        // This machine's own count: at least this thread runs.
        let here = SpareCores::new(4096, File::open("/proc/loadavg").ok());
        assert!(!matches!(here.runnable(), Some(0)));
        assert!(here.spare(), "nobody waits when 4096 cores are assumed");
    }

    #[test]
    fn polls_only_while_no_thread_waits_for_a_core() {
        let crowded = SpareCores::new(2, None);
        assert!(crowded.spare(), "without /proc: spare");
        crowded.mark_busy();
        assert!(!crowded.spare(), "busy until the next look");
        let dir = std::env::temp_dir().join(format!("vsicd-loadavg-{}", std::process::id()));
        std::fs::write(&dir, "5.00 5.00 5.00 3/400 77\n").unwrap();
        let three = SpareCores::new(2, File::open(&dir).ok());
        assert!(!three.spare(), "3 runnable threads on 2 cores: one waits");
        let fits = SpareCores::new(4, File::open(&dir).ok());
        assert!(fits.spare(), "3 runnable threads on 4 cores");
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_late_look_stops_polling_until_the_next_check() {
        let p = PollPolicy::ignoring_load(50 * US, 2);
        let slot = p.try_spin().expect("a spare core");
        slot.preempted();
        drop(slot);
        assert!(p.try_spin().is_none(), "busy right after a preemption");
        std::thread::sleep(SpareCores::RECHECK * 2);
        assert!(p.try_spin().is_some(), "looked again after a while");
    }

    #[test]
    fn spinners_are_capped_and_slots_come_back() {
        let p = PollPolicy::ignoring_load(50 * US, 4);
        let a = p.try_spin();
        let b = p.try_spin();
        assert!(a.is_some() && b.is_some());
        assert!(p.try_spin().is_none(), "half of 4 cores may spin");
        drop(a);
        assert!(p.try_spin().is_some());

        let two = PollPolicy::ignoring_load(50 * US, 2);
        let held = two.try_spin();
        assert!(held.is_some() && two.try_spin().is_none());

        let one = PollPolicy::new(50 * US, 1);
        assert_eq!(one.max(), Duration::ZERO, "no polling on one core");
        assert!(one.try_spin().is_none());
        assert_eq!(PollPolicy::off().max(), Duration::ZERO);
    }
}
