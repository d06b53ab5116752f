//! Hybrid completion: the wait plan of [`crate::CompletionMode::Hybrid`].
//!
//! A hybrid wait first sleeps on a timer for part of the time the queue's
//! completions usually take (the CPU is free meanwhile; the device is asked
//! not to interrupt), then polls the used ring for a bounded time, and only
//! when that passes without a completion enables the queue's interrupt and
//! sleeps on it. This is what Linux's hybrid block polling does, with the
//! interrupt as the fallback for completions much slower than usual.
//!
//! The expectation adapts per queue: an exponentially weighted mean of the
//! waits whose length was observed exactly (the completion arrived while
//! polling after at least one miss, or during the interrupt sleep). A wait
//! whose completion was already there when the timed sleep ended says only
//! that the sleep was too long: the expectation shrinks by one eighth, so
//! the sleep settles where its end (including the timer's wake-up latency)
//! meets the completion.
//!
//! The timer's lateness is learned too (a weighted mean of how much later
//! than asked each sleep ended) and taken off the sleep, so the wake-up,
//! not the request to wake, comes at 3/4 of the expected wait. Where the
//! timer wakes later than that (a loaded host, an emulated guest), the wait
//! does not sleep at all and polls.

use std::time::Duration;

/// Waits expected shorter than this do not sleep first: a timer sleep and
/// its wake-up cost more than they save.
pub const MIN_SLEEP: Duration = Duration::from_micros(10);
/// The share of the expected wait spent sleeping on the timer, in 1/16.
pub const SLEEP_SIXTEENTHS: u32 = 12;
/// A timer found too late for sleeping is tried once in this many waits.
pub const PROBE_EVERY: u64 = 64;
/// Polling lasts at least this long after the sleep (the interrupt it
/// saves costs more than that in a guest) ...
pub const MIN_POLL: Duration = Duration::from_micros(50);
/// ... and at most this long, however long the expected wait.
pub const MAX_POLL: Duration = Duration::from_micros(1000);

/// How one hybrid wait found its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// At the first look after a timer sleep: the wait's true length is
    /// unknown, at most `elapsed`.
    FirstLook,
    /// At the first look of a wait that did not sleep: `elapsed` is exact.
    AtOnce,
    /// While polling, after at least one look that found nothing.
    Polling,
    /// After the interrupt sleep.
    Interrupt,
}

/// One wait's plan: sleep for `sleep`, then poll until `poll_until` has
/// passed since the wait began, then sleep on the interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub sleep: Duration,
    pub poll_until: Duration,
}

/// What a queue's hybrid waits did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HybridStats {
    /// The current expectation of a wait's length.
    pub expected: Duration,
    /// Waits that began with a timer sleep.
    pub slept: u64,
    /// Waits that ended at the first look (after the sleep, if any).
    pub first_look: u64,
    /// Waits that ended while polling.
    pub polled: u64,
    /// Waits that ended on the interrupt.
    pub interrupted: u64,
    /// How much later than asked a timer sleep ends (weighted mean).
    pub wake_late: Duration,
}

/// The adaptive state of one queue.
#[derive(Debug, Clone, Default)]
pub struct HybridState {
    /// Exponentially weighted mean wait, in nanoseconds; 0 = no history.
    expected_ns: u64,
    /// Weighted mean of how late timer sleeps end, in nanoseconds.
    late_ns: u64,
    /// Whether `late_ns` has a sample yet.
    late_known: bool,
    stats: HybridStats,
}

impl HybridState {
    pub fn new() -> HybridState {
        HybridState::default()
    }

    /// The current expectation of a wait's length.
    pub fn expected(&self) -> Duration {
        Duration::from_nanos(self.expected_ns)
    }

    /// Counters of the waits so far, and the expectation.
    pub fn stats(&self) -> HybridStats {
        HybridStats {
            expected: self.expected(),
            wake_late: Duration::from_nanos(self.late_ns),
            ..self.stats
        }
    }

    /// The plan for the next wait.
    pub fn plan(&self) -> Plan {
        let expected = self.expected();
        let late = Duration::from_nanos(self.late_ns);
        // Wake at 3/4 of the expectation: ask for that less the lateness.
        let base = if expected >= MIN_SLEEP {
            expected * SLEEP_SIXTEENTHS / 16
        } else {
            Duration::ZERO
        };
        let mut sleep = base.saturating_sub(late);
        if sleep < MIN_SLEEP / 2 {
            sleep = Duration::ZERO;
            // Too late a timer is tried again now and then: it may have
            // become punctual.
            let waits = self.stats.first_look + self.stats.polled + self.stats.interrupted;
            if !base.is_zero() && waits.is_multiple_of(PROBE_EVERY) {
                sleep = base;
            }
        }
        let wake = if sleep.is_zero() { sleep } else { sleep + late };
        // Poll to twice the expectation, within [MIN_POLL, MAX_POLL] of
        // polling after the expected wake-up.
        let poll = (expected * 2)
            .saturating_sub(wake)
            .clamp(MIN_POLL, MAX_POLL);
        Plan {
            sleep,
            poll_until: wake + poll,
        }
    }

    /// Learns how late a timer sleep for `asked` ended (after `took`).
    pub fn record_sleep(&mut self, asked: Duration, took: Duration) {
        // A timer later than the whole expected wait is too late to sleep
        // on, however much later: capping keeps one preempted sleep from
        // disabling sleeping for many waits.
        let cap = self.expected_ns.max(MIN_SLEEP.as_nanos() as u64);
        let late = u64::try_from(took.saturating_sub(asked).as_nanos())
            .unwrap_or(u64::MAX)
            .min(cap);
        if !self.late_known {
            self.late_ns = late;
            self.late_known = true;
        } else {
            let l = self.late_ns as i128;
            self.late_ns = (l + (late as i128 - l) / 8).clamp(0, u64::MAX as i128) as u64;
        }
    }

    /// Learns from a finished wait that took `elapsed` and ended as `found`
    /// says.
    pub fn record(&mut self, elapsed: Duration, found: Found) {
        if !self.plan().sleep.is_zero() {
            self.stats.slept += 1;
        }
        match found {
            Found::FirstLook | Found::AtOnce => self.stats.first_look += 1,
            Found::Polling => self.stats.polled += 1,
            Found::Interrupt => self.stats.interrupted += 1,
        }
        let mut sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if found == Found::Interrupt {
            // The interrupt's own latency is in `elapsed`: learn only that
            // the wait outlasted the plan, so the next one polls longer
            // (at most twice as long) instead of sleeping far too long.
            let cap = u64::try_from((self.plan().poll_until * 2).as_nanos()).unwrap_or(u64::MAX);
            sample = sample.min(cap);
        }
        match found {
            Found::FirstLook if self.expected_ns > 0 => {
                // Slept too long (or the device was quicker than usual).
                self.expected_ns -= self.expected_ns / 8;
                // Never below what we now know the wait was at most.
                if self.expected_ns > sample && sample > 0 {
                    self.expected_ns = sample;
                }
            }
            _ if self.expected_ns == 0 => self.expected_ns = sample.max(1),
            _ => {
                // expected += (sample - expected) / 8, in signed arithmetic.
                let e = self.expected_ns as i128;
                let next = e + (sample as i128 - e) / 8;
                self.expected_ns = next.clamp(1, u64::MAX as i128) as u64;
            }
        }
    }
}

thread_local! {
    static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sleeps for `d` on the monotonic clock. The first call in a thread sets
/// the thread's timer slack to 1 µs (the default 50 µs would make every
/// short sleep overshoot by that much).
pub fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    SLACK_SET.with(|set| {
        if !set.get() {
            // SAFETY: PR_SET_TIMERSLACK takes a plain integer; it only
            // affects the calling thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
            set.set(true);
        }
    });
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid relative timespec; an interrupted sleep just ends
    // early, which the caller's polling absorbs.
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn without_history_polls_without_sleeping() {
        let s = HybridState::new();
        assert_eq!(
            s.plan(),
            Plan {
                sleep: Duration::ZERO,
                poll_until: MIN_POLL
            }
        );
    }

    #[test]
    fn learns_the_wait_and_sleeps_three_quarters_of_it() {
        let mut s = HybridState::new();
        s.record(100 * US, Found::Polling);
        assert_eq!(s.expected(), 100 * US);
        for _ in 0..100 {
            s.record(40 * US, Found::Polling);
        }
        let e = s.expected();
        assert!(e > 39 * US && e < 41 * US, "{e:?}");
        let p = s.plan();
        assert!(p.sleep > 29 * US && p.sleep < 31 * US, "{p:?}");
        // Polls to about twice the expectation.
        assert!(p.poll_until > 79 * US && p.poll_until < 81 * US, "{p:?}");
    }

    #[test]
    fn polling_is_bounded_for_long_waits() {
        let mut s = HybridState::new();
        s.record(Duration::from_millis(50), Found::Polling);
        let p = s.plan();
        assert_eq!(p.poll_until - p.sleep, MAX_POLL);
    }

    #[test]
    fn an_interrupt_wait_lengthens_the_poll_but_not_by_its_own_latency() {
        let mut s = HybridState::new();
        // No history: polls MIN_POLL, then the interrupt, which arrives
        // 700 µs later. The next wait may not sleep 3/4 of 700 µs.
        s.record(700 * US, Found::Interrupt);
        assert_eq!(s.expected(), MIN_POLL * 2);
        // Slow devices still teach, step by step.
        for _ in 0..100 {
            s.record(Duration::from_millis(5), Found::Interrupt);
        }
        let p = s.plan();
        assert_eq!(p.poll_until - p.sleep, MAX_POLL);
    }

    #[test]
    fn short_waits_do_not_sleep() {
        let mut s = HybridState::new();
        s.record(5 * US, Found::Polling);
        let p = s.plan();
        assert_eq!(p.sleep, Duration::ZERO);
        assert_eq!(p.poll_until, MIN_POLL);
    }

    #[test]
    fn oversleeping_shrinks_the_expectation_until_it_polls_again() {
        let mut s = HybridState::new();
        s.record(80 * US, Found::Polling);
        // The completion always waits for us after the sleep: the sleep
        // keeps shrinking (it never grows from an unknown length).
        let mut last = s.plan().sleep;
        for _ in 0..5 {
            let p = s.plan();
            s.record(p.sleep + 15 * US, Found::FirstLook);
            let now = s.plan().sleep;
            assert!(now < last, "{now:?} !< {last:?}");
            last = now;
        }
    }

    #[test]
    fn stays_stable_when_sleep_plus_wake_up_meets_the_device() {
        // Simulated device: completes 60 µs after the wait begins; the timer
        // wakes 20 µs late. The plan must neither collapse to pure polling
        // nor grow past the device time.
        let device = 60 * US;
        let wake_late = 20 * US;
        let mut s = HybridState::new();
        s.record(device, Found::Polling);
        for _ in 0..200 {
            let p = s.plan();
            let woke = if p.sleep.is_zero() {
                Duration::ZERO
            } else {
                p.sleep + wake_late
            };
            if woke >= device {
                s.record(woke, Found::FirstLook);
            } else {
                s.record(device, Found::Polling);
            }
        }
        let p = s.plan();
        assert!(p.sleep > 20 * US && p.sleep <= device, "{p:?}");
        assert!(s.expected() <= device, "{:?}", s.expected());
    }

    #[test]
    fn a_late_timer_is_allowed_for_or_not_used() {
        let mut s = HybridState::new();
        for _ in 0..100 {
            s.record(40 * US, Found::Polling);
        }
        // Asked for 30 µs, the timer woke after 40: sleep 10 µs less, so
        // the wake-up still comes at 3/4 of the expected wait.
        s.record_sleep(30 * US, 40 * US);
        let p = s.plan();
        assert!(p.sleep > 19 * US && p.sleep < 21 * US, "{p:?}");
        assert_eq!(s.stats().wake_late, 10 * US);
        // Polling still runs to about twice the expected wait.
        assert!(p.poll_until > 79 * US && p.poll_until < 81 * US, "{p:?}");
        // A timer that wakes later than the device answers is not used.
        for _ in 0..50 {
            s.record_sleep(20 * US, 90 * US);
        }
        let p = s.plan();
        assert_eq!(p.sleep, Duration::ZERO, "{p:?}");
        assert!(p.poll_until >= 79 * US, "{p:?}");
        assert!(s.stats().wake_late <= s.expected(), "{:?}", s.stats());
        // ... except once in PROBE_EVERY waits, which measures it again.
        let mut probes = 0;
        for _ in 0..PROBE_EVERY {
            if !s.plan().sleep.is_zero() {
                probes += 1;
            }
            s.record(40 * US, Found::Polling);
        }
        assert_eq!(probes, 1);
    }

    #[test]
    fn one_very_late_timer_does_not_stop_sleeping_for_long() {
        let mut s = HybridState::new();
        for _ in 0..100 {
            s.record(80 * US, Found::Polling);
        }
        s.record_sleep(20 * US, 25 * US);
        // One sleep preempted for 5 ms.
        s.record_sleep(20 * US, Duration::from_millis(5));
        for _ in 0..8 {
            s.record_sleep(20 * US, 25 * US);
        }
        assert!(!s.plan().sleep.is_zero(), "{:?} {:?}", s.plan(), s.stats());
    }

    #[test]
    fn a_completion_found_at_once_without_sleeping_is_an_exact_sample() {
        let mut s = HybridState::new();
        s.record(80 * US, Found::Polling);
        // No sleep, the completion was there at the first look 3 µs in:
        // one short wait among long ones, not a reason to forget them.
        s.record(3 * US, Found::AtOnce);
        let e = s.expected();
        assert!(e > 69 * US && e < 71 * US, "{e:?}");
    }

    #[test]
    fn timer_sleep_sleeps() {
        let t = std::time::Instant::now();
        sleep(200 * US);
        assert!(t.elapsed() >= 200 * US);
    }
}
