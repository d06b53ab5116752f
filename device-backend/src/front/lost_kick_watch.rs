//! Workaround for queue notifications (kicks) that QEMU's TCG loses.
//!
//! A queue worker sleeps until the driver kicks its queue. If a kick never
//! reaches us, the requests it announced wait in the avail ring and the
//! driver waits for them forever. That happens: QEMU 10.0's multi-threaded
//! TCG can dispatch a guest's MMIO write through a stale memory map while
//! another vCPU changes the map (as a guest opening or closing a VFIO
//! function does), and a queue-notify write then lands in another device's
//! register. So every worker also wakes on a slow timer, and serves requests
//! that were already waiting at its previous tick: a whole period with no
//! kick for them. A worker that is woken by kicks as it should be never
//! finds any.
//!
//! Upstream: no QEMU issue or patch for this was found (searched the QEMU
//! and rust-vmm trackers); the behaviour above is what we observed with
//! QEMU 10.0 under `-accel tcg,thread=multi` while a guest rebinds a VFIO
//! function. KVM delivers kicks through ioeventfds and is not affected.
//!
//! Switch it off with `vsicd --disable-workaround lost-kick-watch`
//! ([`super::Workarounds::lost_kick_watch`]): no timers, and a lost kick
//! then leaves its requests waiting until the next kick of that queue.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use vhost_user_backend::{VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{FunctionBackend, Vring};

/// How often an idle worker looks for requests nobody told it about. A lost
/// kick costs its requests one to two periods.
pub const PERIOD: Duration = Duration::from_millis(250);

/// A periodic, non-blocking timer for one queue worker's epoll loop.
pub struct WatchTimer(TimerFd);

impl WatchTimer {
    pub fn new(period: Duration) -> io::Result<WatchTimer> {
        let mut timer = TimerFd::new()?;
        let fd = timer.as_raw_fd();
        // SAFETY: F_GETFL on the timer's descriptor, which we own; a
        // failure is reported.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL on the same descriptor, adding O_NONBLOCK to the
        // flags it has; a failure is reported.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        timer.reset(period, Some(period))?;
        Ok(WatchTimer(timer))
    }

    /// Acknowledges the ticks so far (the epoll registration is
    /// level-triggered). Never blocks.
    pub fn consume(&mut self) {
        // EAGAIN (no tick yet) is fine: there is nothing to acknowledge.
        let _ = self.0.wait();
    }
}

impl AsRawFd for WatchTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What one queue's timer saw at its last tick.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// The queue's next_avail when requests were waiting, if they were.
    waiting_at: Option<u16>,
}

impl StallWatch {
    /// One tick. `waiting` is the queue's next_avail when the avail ring
    /// holds requests the worker has not taken, `None` when it holds none
    /// (or the queue is stopped). True when the same requests were already
    /// waiting at the previous tick, so no kick came for a whole period and
    /// the caller should serve them.
    pub fn tick(&mut self, waiting: Option<u16>) -> bool {
        let stalled = waiting.is_some() && waiting == self.waiting_at;
        // Once served, the next stall has to be seen twice again.
        self.waiting_at = if stalled { None } else { waiting };
        stalled
    }
}

impl FunctionBackend {
    /// Gives every queue worker (one per epoll handler, in queue order) a
    /// timer that serves requests whose kick got lost.
    pub fn watch_notifications(
        &self,
        handlers: &[Arc<VringEpollHandler<FunctionBackend>>],
    ) -> io::Result<()> {
        for (handler, worker) in handlers.iter().zip(&self.session.workers) {
            let timer = WatchTimer::new(PERIOD)?;
            handler.register_listener(timer.as_raw_fd(), EventSet::IN, self.watch_event())?;
            worker.lock().unwrap_or_else(|e| e.into_inner()).timer = Some(timer);
        }
        Ok(())
    }

    /// The epoll token of the watch timers: the first one the library
    /// leaves to backends (queues and its own events come before).
    pub(super) fn watch_event(&self) -> u64 {
        u64::from(self.session.state.num_queues) + 1
    }

    /// A watch-timer tick: serves the queue if requests have waited a
    /// whole period without a kick.
    pub(super) fn watch_tick(&self, vring: &Vring, queue: u16) {
        let Some(worker) = self.session.workers.get(queue as usize) else {
            return;
        };
        let stalled = {
            let mut worker = worker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(timer) = worker.timer.as_mut() {
                timer.consume();
            }
            worker.stall.tick(self.unserved(vring))
        };
        if stalled {
            if self.session.state.log.allow() {
                warn!(
                    "{} queue {queue}: requests waited {PERIOD:?} without a notification; serving them",
                    self.session.state.name()
                );
            }
            self.process_queue(vring, queue);
        }
    }

    /// The queue's next_avail if its avail ring holds requests not taken
    /// yet; `None` if it holds none or the queue is not running.
    fn unserved(&self, vring: &Vring) -> Option<u16> {
        let state = vring.get_ref();
        let queue = state.get_queue();
        if !state.is_enabled() || !queue.ready() {
            return None;
        }
        let avail = queue
            .avail_idx(&*self.session.mem.memory(), Ordering::Acquire)
            .ok()?;
        (avail.0 != queue.next_avail()).then_some(queue.next_avail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_served_only_after_a_whole_period_without_progress() {
        let mut w = StallWatch::default();
        assert!(!w.tick(None), "an empty ring never stalls");
        // Requests seen once may have a kick on its way.
        assert!(!w.tick(Some(7)));
        assert!(w.tick(Some(7)), "still waiting one period later");
        // After serving, a new stall at the same index counts afresh.
        assert!(!w.tick(Some(7)));
        assert!(w.tick(Some(7)));
        // Progress between ticks (a kick came) resets the watch.
        assert!(!w.tick(Some(9)));
        assert!(!w.tick(Some(12)));
        assert!(!w.tick(None));
        assert!(!w.tick(Some(12)), "the earlier wait was interrupted");
    }

    #[test]
    fn the_timer_ticks_and_never_blocks() {
        let poll = |timer: &WatchTimer, ms: i32| {
            let mut pfd = libc::pollfd {
                fd: timer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) }
        };
        // No tick for an hour: acknowledging returns at once.
        let mut quiet = WatchTimer::new(Duration::from_secs(3600)).unwrap();
        quiet.consume();
        assert_eq!(poll(&quiet, 0), 0);

        let mut fast = WatchTimer::new(Duration::from_millis(10)).unwrap();
        assert_eq!(poll(&fast, 2000), 1, "no tick");
        fast.consume();
        fast.consume();
    }
}
