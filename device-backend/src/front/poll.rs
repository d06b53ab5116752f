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
//! idle or slow queue soon stops spinning and costs no CPU. A spinning
//! worker yields its core between looks, so runnable driver threads go
//! first, and a shared budget caps how many workers may spin at once, so
//! that on a machine with few cores the spinners leave the drivers a core.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How the front polls its queues; shared by every function's workers.
#[derive(Debug)]
pub struct PollPolicy {
    /// Longest a worker spins after a batch; zero turns polling off.
    max: Duration,
    /// Workers allowed to spin at the same time.
    max_spinners: usize,
    spinners: AtomicUsize,
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

    /// A spin slot, if fewer than the allowed number of workers spin now.
    pub fn try_spin(&self) -> Option<SpinSlot<'_>> {
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
    fn spinners_are_capped_and_slots_come_back() {
        let p = PollPolicy::new(50 * US, 4);
        let a = p.try_spin();
        let b = p.try_spin();
        assert!(a.is_some() && b.is_some());
        assert!(p.try_spin().is_none(), "half of 4 cores may spin");
        drop(a);
        assert!(p.try_spin().is_some());

        let two = PollPolicy::new(50 * US, 2);
        let held = two.try_spin();
        assert!(held.is_some() && two.try_spin().is_none());

        let one = PollPolicy::new(50 * US, 1);
        assert_eq!(one.max(), Duration::ZERO, "no polling on one core");
        assert!(one.try_spin().is_none());
        assert_eq!(PollPolicy::off().max(), Duration::ZERO);
    }
}
