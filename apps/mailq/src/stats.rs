//! Per-message store latency as the receiver sees it: from the end of a
//! message's DATA (its `.` line read) to the store's answer that it is
//! durable, i.e. the time the 250 waits for. `serve --stats` keeps it for
//! clients that do not time messages themselves (Postfix's `smtp-source`);
//! the private SMTP command `XSTATS` reads it and starts afresh. The slot
//! queue's committer adds where that time went on the device: per commit
//! (one FLUSH and the messages it made durable), the messages' mean wait
//! for their writes, and the FLUSH's round trip.

use std::sync::Mutex;
use std::time::Duration;

/// The latencies recorded since the last [`Latencies::take`].
#[derive(Debug, Default)]
pub struct Latencies {
    micros: Mutex<Vec<u64>>,
    commits: Mutex<CommitSums>,
}

#[derive(Debug, Default, Clone, Copy)]
struct CommitSums {
    commits: u64,
    write_us: u64,
    flush_us: u64,
}

/// What [`Latencies::take`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Commits (FLUSHes) of the slot queue (0 for the Maildir baseline).
    pub commits: u64,
    /// Per commit, its messages' mean wait for their writes, and the
    /// FLUSH's round trip.
    pub write_us_avg: u64,
    pub flush_us_avg: u64,
}

impl Summary {
    /// The `key=value` words of the XSTATS reply.
    pub fn line(&self) -> String {
        format!(
            "messages={} p50_us={} p99_us={} max_us={} commits={} write_us_avg={} flush_us_avg={}",
            self.messages,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.commits,
            self.write_us_avg,
            self.flush_us_avg
        )
    }
}

impl Latencies {
    /// Records one message's store latency.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.lock().push(us);
    }

    /// Records one commit: its messages' mean wait for their writes, and
    /// the FLUSH's round trip (zero on a write-through device).
    pub fn record_commit(&self, write: Duration, flush: Duration) {
        let mut c = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        c.commits += 1;
        c.write_us += write.as_micros() as u64;
        c.flush_us += flush.as_micros() as u64;
    }

    /// The summary of everything recorded so far, which is then forgotten.
    pub fn take(&self) -> Summary {
        let c = std::mem::take(&mut *self.commits.lock().unwrap_or_else(|e| e.into_inner()));
        let avg = |sum: u64| sum.checked_div(c.commits).unwrap_or(0);
        let mut v = std::mem::take(&mut *self.lock());
        v.sort_unstable();
        let pct = |p: usize| {
            if v.is_empty() {
                0
            } else {
                v[(v.len() * p / 100).min(v.len() - 1)]
            }
        };
        Summary {
            messages: v.len(),
            p50_us: pct(50),
            p99_us: pct(99),
            max_us: v.last().copied().unwrap_or(0),
            commits: c.commits,
            write_us_avg: avg(c.write_us),
            flush_us_avg: avg(c.flush_us),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // A session that panicked while pushing left a valid Vec behind.
        self.micros.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_reset() {
        let l = Latencies::default();
        assert_eq!(l.take().messages, 0);
        for us in (1..=100).rev() {
            l.record(Duration::from_micros(us));
        }
        l.record_commit(Duration::from_micros(10), Duration::from_micros(30));
        l.record_commit(Duration::from_micros(20), Duration::from_micros(50));
        let s = l.take();
        assert_eq!(
            s,
            Summary {
                messages: 100,
                p50_us: 51,
                p99_us: 100,
                max_us: 100,
                commits: 2,
                write_us_avg: 15,
                flush_us_avg: 40
            }
        );
        let again = l.take();
        assert_eq!(
            (again.messages, again.commits),
            (0, 0),
            "take starts afresh"
        );
    }
}
