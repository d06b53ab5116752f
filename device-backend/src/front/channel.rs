//! Configuration-change notifications: VHOST_USER_BACKEND_CONFIG_CHANGE_MSG
//! on the backend-request channel a frontend hands over with
//! VHOST_USER_SET_BACKEND_REQ_FD, one channel per VSIC function's current
//! frontend. The socket itself comes from
//! [`super::backend_socket_takeover`], since vhost's `Backend` neither
//! sends this message nor lets go of its socket.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use log::{debug, warn};
use vhost::vhost_user::Backend;

use super::backend_socket_takeover::TakenSocket;

/// Receives "VSIC n's configuration changed" events from admin commands.
pub trait ConfigChangeSink: Send + Sync {
    fn config_changed(&self, vsic: u32);
}

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1, no reply wanted (the sender must not
/// block on a frontend that is busy talking to us on the other socket).
const FLAGS_VERSION_1: u32 = 1;

/// A frontend's backend-request channel, owned by the front.
#[derive(Debug)]
pub struct ConfigChannel {
    sock: TakenSocket,
}

impl ConfigChannel {
    /// Takes over the socket inside `backend` (see
    /// [`super::backend_socket_takeover`]).
    pub fn adopt(backend: Backend) -> io::Result<ConfigChannel> {
        Ok(ConfigChannel {
            sock: TakenSocket::take(backend)?,
        })
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
