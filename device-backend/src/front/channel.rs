//! Configuration-change notifications: VHOST_USER_BACKEND_CONFIG_CHANGE_MSG
//! on the backend-request channel a frontend hands over with
//! VHOST_USER_SET_BACKEND_REQ_FD.
//!
//! vhost 0.18 gives the backend that channel only as a
//! `vhost::vhost_user::Backend`, which can send shared-object and
//! shared-memory requests but not a config change, and does not expose its
//! socket. So the front takes the socket over: it duplicates every
//! unclaimed unnamed Unix stream socket of the process, drops the
//! `Backend` (closing its descriptor), and keeps the duplicate of the one
//! descriptor that disappeared. Adoptions are serialised, so a concurrent
//! adoption cannot be confused with this one.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use log::{debug, warn};
use vhost::vhost_user::Backend;

use super::device::ConfigChangeSink;

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1, no reply wanted (the sender must not
/// block on a frontend that is busy talking to us on the other socket).
const FLAGS_VERSION_1: u32 = 1;

/// Socket inodes of the channels we hold. Its lock also serialises adoption.
static CLAIMED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// A frontend's backend-request channel, owned by the front.
#[derive(Debug)]
pub struct ConfigChannel {
    sock: OwnedFd,
    inode: u64,
}

impl ConfigChannel {
    /// Takes over the socket inside `backend` (see the module comment).
    pub fn adopt(backend: Backend) -> io::Result<ConfigChannel> {
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
                Ok(ConfigChannel { sock, inode })
            }
            (None, _) => Err(io::Error::other("the backend-request socket was not found")),
            (Some(_), Some(_)) => Err(io::Error::other("the backend-request socket is ambiguous")),
        }
    }

    /// Tells the frontend to re-read the configuration space.
    pub fn send_config_change(&self) -> io::Result<()> {
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAGS_VERSION_1.to_le_bytes());
        // size (bytes 8..12) = 0: the message has no body.
        // SAFETY: sends from a valid local buffer on a socket we own.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != msg.len() {
            return Err(io::Error::other(
                "short write on the backend-request channel",
            ));
        }
        Ok(())
    }
}

impl Drop for ConfigChannel {
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
    // SAFETY: fstat writes into a zeroed stat buffer; a stale fd just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
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
        // SAFETY: getsockname into a sockaddr_un of the declared length.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len)
        };
        if r == 0 && len as usize <= std::mem::size_of::<libc::sa_family_t>() {
            out.push((fd, inode));
        }
    }
    Ok(out)
}

/// The config-change channel of every VSIC function's current frontend.
pub struct ConfigNotifiers {
    slots: Vec<Mutex<Option<ConfigChannel>>>,
}

impl ConfigNotifiers {
    pub fn new(vsics: u32) -> ConfigNotifiers {
        ConfigNotifiers {
            slots: (0..vsics).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Installs (or with `None` removes) VSIC `vsic`'s channel.
    pub fn set(&self, vsic: u32, channel: Option<ConfigChannel>) {
        if let Some(slot) = self.slots.get(vsic as usize) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = channel;
        }
    }
}

impl ConfigNotifiers {
    /// Tells VSIC `vsic`'s frontend that its configuration changed; true
    /// if the message went out.
    pub fn notify(&self, vsic: u32) -> bool {
        let Some(slot) = self.slots.get(vsic as usize) else {
            return false;
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref().map(ConfigChannel::send_config_change) {
            None => {
                debug!("vsic{vsic}: configuration changed, no frontend to tell");
                false
            }
            Some(Ok(())) => {
                debug!("vsic{vsic}: configuration change sent");
                true
            }
            Some(Err(e)) => {
                warn!("vsic{vsic}: cannot send the configuration change: {e}");
                *slot = None;
                false
            }
        }
    }
}

impl ConfigChangeSink for ConfigNotifiers {
    fn config_changed(&self, vsic: u32) {
        self.notify(vsic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn adopted_channel_sends_config_change() {
        let _serial = crate::front::tests::SOCKET_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Other unnamed sockets around must not confuse the adoption.
        let (_x1, _x2) = UnixStream::pair().unwrap();
        let (ours, mut frontend) = UnixStream::pair().unwrap();
        let channel = ConfigChannel::adopt(Backend::from_stream(ours)).unwrap();
        channel.send_config_change().unwrap();
        let mut msg = [0u8; 12];
        frontend.read_exact(&mut msg).unwrap();
        assert_eq!(msg, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);

        // A second adoption skips the claimed socket and finds the new one.
        let (ours2, mut frontend2) = UnixStream::pair().unwrap();
        let channel2 = ConfigChannel::adopt(Backend::from_stream(ours2)).unwrap();
        channel2.send_config_change().unwrap();
        frontend2.read_exact(&mut msg).unwrap();
        assert_eq!(msg[0], 2);

        // Through the registry; a dead frontend is dropped, not fatal.
        let notifiers = ConfigNotifiers::new(2);
        notifiers.set(1, Some(channel2));
        notifiers.config_changed(1);
        frontend2.read_exact(&mut msg).unwrap();
        drop(frontend2);
        notifiers.config_changed(1);
        notifiers.config_changed(1);
        notifiers.config_changed(7);
        assert!(notifiers.slots[1].lock().unwrap().is_none());
        drop(channel);
    }
}
