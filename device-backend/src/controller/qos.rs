//! Per-VSIC QoS: token buckets for bytes/s and I/Os per second. A request
//! over budget is delayed (the queue thread sleeps), never failed.

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

    fn take(&mut self, now: Instant, amount: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + elapsed * self.rate as f64).min(self.burst());
        self.level -= amount as f64;
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

    /// How long a request of `bytes` has to wait before it may start.
    pub fn delay(&self, bytes: u64) -> Duration {
        if !self.limited.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.0.rate == 0 && b.1.rate == 0 {
            return Duration::ZERO;
        }
        let by_bytes = b.0.take(now, bytes);
        let by_ops = b.1.take(now, 1);
        by_bytes.max(by_ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_delays() {
        let q = Qos::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(q.delay(1 << 30), Duration::ZERO);
        }
    }

    #[test]
    fn byte_rate_delays_proportionally() {
        let q = Qos::new(1_000_000, 0);
        // The burst (100 kB) passes, then 1 MB of debt costs about a second.
        assert_eq!(q.delay(100_000), Duration::ZERO);
        let d = q.delay(1_000_000);
        assert!(d > Duration::from_millis(900) && d < Duration::from_millis(1100), "{d:?}");
        q.set(0, 0);
        assert_eq!(q.delay(1_000_000), Duration::ZERO);
    }

    #[test]
    fn iops_limit_spaces_requests() {
        let q = Qos::new(0, 100);
        let delays: Vec<Duration> = (0..30).map(|_| q.delay(512)).collect();
        assert!(delays[0].is_zero());
        // 30 back-to-back requests at 100/s: the last waits roughly 0.2-0.3 s.
        assert!(delays[29] > Duration::from_millis(150), "{:?}", delays[29]);
    }
}
