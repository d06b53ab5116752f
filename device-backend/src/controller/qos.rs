//! Per-VSIC QoS: token buckets for bytes/s and I/Os per second. A request
//! is charged once it has been accepted, for the bytes it moved; a VSIC
//! whose buckets are in debt has its next request wait until the debt is
//! paid back. Requests are delayed, never failed, and the wait happens
//! before a request is taken from its queue, with no lock held (see
//! `front::backend`), so a throttled VSIC never holds up a queue stop, a
//! shutdown or another VSIC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One bucket; its level may go negative ("debt"): the request that drove
/// it below zero waits until the debt is paid back at the bucket's rate.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Units per second; 0 = unlimited.
    rate: u64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Self {
        let mut b = Bucket { rate, level: 0.0, last: now };
        b.level = b.burst();
        b
    }

    /// At most a tenth of a second's worth (at least one unit) saved up.
    fn burst(&self) -> f64 {
        (self.rate as f64 / 10.0).max(1.0)
    }

    /// Brings the level up to `now`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + elapsed * self.rate as f64).min(self.burst());
    }

    fn take(&mut self, now: Instant, amount: u64) {
        if self.rate == 0 {
            return;
        }
        self.refill(now);
        self.level -= amount as f64;
    }

    /// How long until the level is back at zero.
    fn debt(&mut self, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            // Absurd debts (rate 1, huge requests) saturate instead of panicking.
            Duration::try_from_secs_f64(-self.level / self.rate as f64).unwrap_or(Duration::MAX)
        }
    }
}

pub struct Qos {
    /// False when both rates are unlimited: requests skip the mutex.
    limited: AtomicBool,
    buckets: Mutex<(Bucket, Bucket)>,
}

impl Qos {
    pub fn new(bytes_per_sec: u64, iops: u64) -> Self {
        let now = Instant::now();
        Self {
            limited: AtomicBool::new(bytes_per_sec != 0 || iops != 0),
            buckets: Mutex::new((Bucket::new(bytes_per_sec, now), Bucket::new(iops, now))),
        }
    }

    pub fn set(&self, bytes_per_sec: u64, iops: u64) {
        let now = Instant::now();
        *self.buckets.lock().unwrap_or_else(|e| e.into_inner()) =
            (Bucket::new(bytes_per_sec, now), Bucket::new(iops, now));
        self.limited.store(bytes_per_sec != 0 || iops != 0, Ordering::Release);
    }

    /// Charges one accepted request that moved (or zeroed) `bytes`.
    pub fn charge(&self, bytes: u64) {
        if !self.limited.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.0.take(now, bytes);
        b.1.take(now, 1);
    }

    /// How long the VSIC's next request has to wait: until the debt of
    /// the requests charged so far is paid back.
    pub fn wait(&self) -> Duration {
        if !self.limited.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.0.debt(now).max(b.1.debt(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_delays() {
        let q = Qos::new(0, 0);
        for _ in 0..1000 {
            q.charge(1 << 30);
            assert_eq!(q.wait(), Duration::ZERO);
        }
    }

    #[test]
    fn byte_rate_delays_proportionally() {
        let q = Qos::new(1_000_000, 0);
        // The burst (100 kB) passes, then 1 MB of debt costs about a second.
        q.charge(100_000);
        assert_eq!(q.wait(), Duration::ZERO);
        q.charge(1_000_000);
        let d = q.wait();
        assert!(d > Duration::from_millis(900) && d < Duration::from_millis(1100), "{d:?}");
        q.set(0, 0);
        q.charge(1_000_000);
        assert_eq!(q.wait(), Duration::ZERO);
    }

    #[test]
    fn iops_limit_spaces_requests() {
        let q = Qos::new(0, 100);
        assert!(q.wait().is_zero());
        for _ in 0..30 {
            q.charge(512);
        }
        // 30 back-to-back requests at 100/s: the next waits roughly 0.2-0.3 s.
        assert!(q.wait() > Duration::from_millis(150), "{:?}", q.wait());
    }

    #[test]
    fn waiting_does_not_charge() {
        let q = Qos::new(1_000_000, 0);
        q.charge(1_100_000);
        let first = q.wait();
        assert!(first > Duration::from_millis(900), "{first:?}");
        for _ in 0..100 {
            assert!(q.wait() <= first, "asking again must not add debt");
        }
    }
}
