//! Per-message store latency as the receiver sees it: from the end of a
//! message's DATA (its `.` line read) to the store's answer that it is
//! durable, i.e. the time the 250 waits for. `serve --stats` keeps it for
//! clients that do not time messages themselves (Postfix's `smtp-source`);
//! the private SMTP command `XSTATS` reads it and starts afresh.

use std::sync::Mutex;
use std::time::Duration;

/// The latencies recorded since the last [`Latencies::take`].
#[derive(Debug, Default)]
pub struct Latencies {
    micros: Mutex<Vec<u64>>,
}

/// What [`Latencies::take`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Summary {
    /// The `key=value` words of the XSTATS reply.
    pub fn line(&self) -> String {
        format!(
            "messages={} p50_us={} p99_us={} max_us={}",
            self.messages, self.p50_us, self.p99_us, self.max_us
        )
    }
}

impl Latencies {
    /// Records one message's store latency.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.lock().push(us);
    }

    /// The summary of everything recorded so far, which is then forgotten.
    pub fn take(&self) -> Summary {
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
        let s = l.take();
        assert_eq!(
            s,
            Summary {
                messages: 100,
                p50_us: 51,
                p99_us: 100,
                max_us: 100
            }
        );
        assert_eq!(l.take().messages, 0, "take starts afresh");
    }
}
