//! Workaround for the exit-event descriptors vhost-user-backend abandons.
//!
//! The library asks the backend for one exit event per worker thread
//! (`VhostUserBackend::exit_event`) and, in `VringEpollHandler::new`
//! (vhost-user-backend 0.24, `event_loop.rs`), registers the consumer end
//! with its epoll by `consumer.into_raw_fd()`. Nothing closes that
//! descriptor afterwards: dropping the handler closes the epoll, not the
//! eventfd. A daemon that serves frontend after frontend, as vsicd does,
//! would leak one eventfd per queue per connection. Upstream: no rust-vmm
//! issue or pull request about it was found; the behaviour is as described
//! in that function.
//!
//! So the session records the raw descriptors it hands out and closes them
//! when it ends, which is after the last worker thread (and with it the
//! library's epoll) is gone. Switch it off with
//! `vsicd --disable-workaround exit-event-leak`
//! ([`super::Workarounds::close_abandoned_exit_events`]): nothing is
//! recorded or closed, and each connection then leaks its exit events.

use std::os::fd::RawFd;
use std::sync::Mutex;

/// The exit-event descriptors of one session that the library abandons.
#[derive(Debug, Default)]
pub struct AbandonedExitEvents {
    /// False when the workaround is off: nothing is recorded.
    enabled: bool,
    fds: Mutex<Vec<RawFd>>,
}

impl AbandonedExitEvents {
    pub fn new(enabled: bool) -> AbandonedExitEvents {
        AbandonedExitEvents {
            enabled,
            fds: Mutex::new(Vec::new()),
        }
    }

    /// Records the consumer end of an exit event about to be handed to the
    /// library, to be closed when the session ends.
    pub fn record(&self, fd: RawFd) {
        if self.enabled {
            self.fds.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
        }
    }

    /// The descriptors recorded so far.
    pub fn fds(&self) -> Vec<RawFd> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for AbandonedExitEvents {
    fn drop(&mut self) {
        for fd in self
            .fds
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if is_eventfd(fd) {
                // SAFETY: the descriptor was created by our exit_event() and
                // abandoned by the library (see the module comment); its
                // epoll is gone with the session's last worker, and nothing
                // else owns or closes it.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Whether `fd` is an open eventfd.
pub fn is_eventfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|target| target.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use vmm_sys_util::event::{new_event_consumer_and_notifier, EventFlag};

    use super::*;

    #[test]
    fn switched_off_it_records_and_closes_nothing() {
        let (consumer, _notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        // Abandoned, as the library does.
        let fd = consumer.into_raw_fd();
        let off = AbandonedExitEvents::new(false);
        off.record(fd);
        assert!(off.fds().is_empty());
        drop(off);
        assert!(is_eventfd(fd), "closed although switched off");

        let on = AbandonedExitEvents::new(true);
        on.record(fd);
        assert_eq!(on.fds(), [fd]);
        drop(on);
        assert!(!is_eventfd(fd), "left open although switched on");
    }
}
