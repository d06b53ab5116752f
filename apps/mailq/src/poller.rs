//! A small epoll wrapper: the event loop's ([`crate::evloop`]) only
//! system interface besides the sockets and the device.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readable (or, for a socket, the peer's data or end arrived).
pub const IN: u32 = libc::EPOLLIN as u32;
/// Writable again.
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// The peer closed its side, or the connection broke.
pub const HUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Edge-triggered: reported once per change, not while it lasts.
pub const EDGE: u32 = libc::EPOLLET as u32;

/// One readiness report: the token given to [`Poller::add`] and the
/// events.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub events: u32,
}

/// An epoll instance.
pub struct Poller {
    fd: OwnedFd,
    buf: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: a new descriptor owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    /// Watches `fd` for `events`, reported with `token`. A descriptor
    /// leaves the set when it is closed.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends what is ready
    /// to `out`.
    pub fn wait(&mut self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: buf holds buf.len() writable epoll_events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                self.buf.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.buf[..n as usize].iter().map(|e| Ready {
            token: e.u64,
            events: e.events,
        }));
        Ok(())
    }
}
