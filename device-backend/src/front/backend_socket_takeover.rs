//! Workaround: taking over the backend-request socket that vhost's
//! `Backend` hides, to send VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
//!
//! A frontend hands the backend a channel for backend-initiated messages
//! with VHOST_USER_SET_BACKEND_REQ_FD. vhost 0.18 passes it to the backend
//! only as a `vhost::vhost_user::Backend` (`backend_req.rs`), which
//! implements `VhostUserFrontendReqHandler` for the shared-object and
//! shared-memory requests but has no way to send
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, and keeps its socket private (no
//! accessor, no `into_inner`). Upstream: no rust-vmm issue or pull request
//! adding that message to `Backend` was found.
//!
//! So the front takes the socket over: it duplicates every unclaimed
//! unnamed Unix stream socket of the process, drops the `Backend` (closing
//! its descriptor), and keeps the duplicate of the one descriptor that
//! disappeared. Takeovers are serialised and the sockets taken are
//! remembered, so a concurrent takeover cannot be confused with this one.
//!
//! Switch it off with `vsicd --disable-workaround backend-socket-takeover`
//! ([`super::Workarounds::backend_socket_takeover`]): the `Backend` is
//! kept unused and frontends are not told when a VSIC's capacity changes
//! (a guest sees it at its next start of the device).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vhost::vhost_user::Backend;

/// Socket inodes of the channels we hold. Its lock also serialises adoption.
static CLAIMED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// A backend-request socket taken over from a `Backend`.
#[derive(Debug)]
pub struct TakenSocket {
    sock: OwnedFd,
    inode: u64,
}

impl TakenSocket {
    /// Takes over the socket inside `backend` (see the module comment).
    pub fn take(backend: Backend) -> io::Result<TakenSocket> {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        let mut candidates = Vec::new();
        for (fd, inode) in unnamed_unix_streams()? {
            if !claimed.contains(&inode) {
                candidates.push((fd, inode, dup(fd)?));
            }
        }
        drop(backend);
        let mut gone = candidates
            .into_iter()
            .filter(|(fd, inode, _)| inode_of(*fd) != Some(*inode));
        match (gone.next(), gone.next()) {
            (Some((_, inode, sock)), None) => {
                claimed.push(inode);
                Ok(TakenSocket { sock, inode })
            }
            (None, _) => Err(io::Error::other("the backend-request socket was not found")),
            (Some(_), Some(_)) => Err(io::Error::other("the backend-request socket is ambiguous")),
        }
    }
}

impl AsRawFd for TakenSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Drop for TakenSocket {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        claimed.retain(|&i| i != self.inode);
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor number; failure is reported.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn inode_of(fd: RawFd) -> Option<u64> {
    // SAFETY: `libc::stat` is plain integers, for which all zeroes is a
    // valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` into `st`, which we own; a stale or
    // closed descriptor number just makes it fail.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

fn sock_opt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the declared length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Unix stream sockets of this process with no local address: the ends of
/// socket pairs, which is what frontends send as backend-request channels.
/// (Listening and accepted sockets carry the socket path as their name.)
fn unnamed_unix_streams() -> io::Result<Vec<(RawFd, u64)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Some(inode) = inode_of(fd) else { continue };
        if sock_opt(fd, libc::SO_DOMAIN) != Some(libc::AF_UNIX)
            || sock_opt(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        {
            continue;
        }
        // SAFETY: `sockaddr_un` is plain integers and bytes, for which all
        // zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `len` bytes into `addr`, a
        // sockaddr_un of exactly that length, and updates `len`.
        let r = unsafe {
            libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len)
        };
        if r == 0 && len as usize <= std::mem::size_of::<libc::sa_family_t>() {
            out.push((fd, inode));
        }
    }
    Ok(out)
}
