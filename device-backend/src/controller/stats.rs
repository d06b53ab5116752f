//! Statistics counters (lock-free, updated from queue threads) and the
//! rate limiter for protection-violation log lines.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use vsic_abi::records::{QueueStats, VsicStats};

#[derive(Default)]
pub struct QueueCounters {
    pub requests: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Default)]
pub struct VsicCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
    pub protection_violations: AtomicU64,
    pub qos_delayed: AtomicU64,
    pub queues: Vec<QueueCounters>,
}

pub fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Relaxed);
}

impl VsicCounters {
    pub fn new(queues: usize) -> Self {
        Self {
            queues: (0..queues).map(|_| QueueCounters::default()).collect(),
            ..Default::default()
        }
    }

    /// A queue index the front passes that is out of range is not counted
    /// per queue (it still counts in the VSIC totals).
    pub fn queue(&self, q: u16) -> Option<&QueueCounters> {
        self.queues.get(q as usize)
    }

    pub fn snapshot(&self, vsic: u32) -> (VsicStats, Vec<QueueStats>) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let v = VsicStats {
            vsic,
            queue_count: self.queues.len() as u32,
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            discards: g(&self.discards),
            write_zeroes: g(&self.write_zeroes),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            errors: g(&self.errors),
            protection_violations: g(&self.protection_violations),
            qos_delayed: g(&self.qos_delayed),
        };
        let qs = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueStats {
                queue: i as u32,
                requests: g(&q.requests),
                bytes_read: g(&q.bytes_read),
                bytes_written: g(&q.bytes_written),
                errors: g(&q.errors),
            })
            .collect();
        (v, qs)
    }
}

/// Allows one log line per second; counts what it suppressed meanwhile.
pub struct RateLimit {
    epoch: Instant,
    /// Second (since `epoch`, plus one) of the last line; 0 = never.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl RateLimit {
    /// `Some(n)`: log now, `n` lines were suppressed since the last one.
    pub fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last.load(Relaxed);
        if last != now
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_per_second() {
        let r = RateLimit::default();
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        // Pretend the last line was long ago.
        r.last.store(0, Relaxed);
        assert_eq!(r.allow(), Some(2));
    }

    #[test]
    fn snapshot_reports_counters() {
        let c = VsicCounters::new(2);
        bump(&c.reads, 3);
        bump(&c.queue(1).unwrap().errors, 1);
        assert!(c.queue(2).is_none());
        let (v, qs) = c.snapshot(5);
        assert_eq!((v.vsic, v.reads, v.queue_count), (5, 3, 2));
        assert_eq!(qs[1].errors, 1);
        assert_eq!(qs[1].queue, 1);
    }
}
