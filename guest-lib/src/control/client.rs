//! The application side of the control-plane service.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::message::{MessageError, Refusal, Reply, Request, MAX_MESSAGE};
use super::socket;

/// How long one request may take (an attach opens the PF).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The service could not be reached or the exchange broke.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The service (or the device behind it) said no.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The reply does not follow the protocol.
    #[error("malformed reply from the control service: {0}")]
    Protocol(String),
    /// The reply is not a message of the protocol at all.
    #[error("malformed reply from the control service: {0}")]
    Malformed(#[source] MessageError),
}

impl ControlError {
    /// A short stable name: the refusal's status, or `transport`/`protocol`.
    pub fn status(&self) -> &str {
        match self {
            ControlError::Io { .. } => "transport",
            ControlError::Refused(r) => &r.status,
            ControlError::Protocol(_) | ControlError::Malformed(_) => "protocol",
        }
    }
}

/// One connection to `vsicctl serve`.
pub struct ControlClient {
    path: Option<PathBuf>,
    sock: Mutex<OwnedFd>,
}

impl ControlClient {
    /// Connects to the service at `path` (usually [`super::DEFAULT_SOCKET`]).
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let sock = open(path)?;
        Ok(ControlClient {
            path: Some(path.to_path_buf()),
            sock: Mutex::new(sock),
        })
    }

    /// Uses a socket that is already connected (tests, socket pairs).
    pub fn from_socket(sock: OwnedFd) -> ControlClient {
        ControlClient {
            path: None,
            sock: Mutex::new(sock),
        }
    }

    /// Asks for the VSA of the capability file `cap` (open for reading) to
    /// be attached to `slot` of `vsic`.
    pub fn attach(
        &self,
        vsic: u32,
        slot: u32,
        cap: &impl AsFd,
        read_only: bool,
    ) -> Result<(), ControlError> {
        let req = Request::Attach {
            vsic,
            slot,
            read_only,
        };
        match self.exchange(&req, Some(cap))? {
            (Reply::Attached, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Asks for `slot` of `vsic` to be detached.
    pub fn detach(&self, vsic: u32, slot: u32) -> Result<(), ControlError> {
        match self.exchange::<OwnedFd>(&Request::Detach { vsic, slot }, None)? {
            (Reply::Detached, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Asks for at least `bytes` of pinned DMA memory: the file holding it
    /// and the guest-physical address of each of its pages.
    pub fn dma_memory(&self, bytes: u64) -> Result<(OwnedFd, Vec<u64>), ControlError> {
        match self.exchange::<OwnedFd>(&Request::Dma { bytes }, None)? {
            (Reply::Dma { gpas, .. }, Some(fd)) => Ok((fd, gpas)),
            (Reply::Dma { .. }, None) => Err(ControlError::Protocol(
                "DMA reply without the memory's file descriptor".into(),
            )),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Where the pages of the huge-page file `memory` are now, in file
    /// order.
    pub fn dma_locate(&self, memory: &impl AsFd) -> Result<Vec<u64>, ControlError> {
        match self.exchange(&Request::DmaLocate, Some(memory))? {
            (Reply::DmaPages { gpas }, _) => Ok(gpas),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Lets VSIC `vsic` reach the huge pages of `memory`, which the caller
    /// (root) allocated and pinned itself, for as long as this connection
    /// stays open or until [`ControlClient::dma_unregister`]. Returns the
    /// windows added (none when the VSIC is in open DMA mode).
    pub fn dma_register(
        &self,
        vsic: u32,
        memory: &impl AsFd,
    ) -> Result<Vec<(u64, u64)>, ControlError> {
        match self.exchange(&Request::DmaRegister { vsic }, Some(memory))? {
            (Reply::DmaRegistered { windows }, _) => Ok(windows),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Removes every window this connection registered; returns them.
    pub fn dma_unregister(&self) -> Result<Vec<(u64, u64)>, ControlError> {
        match self.exchange::<OwnedFd>(&Request::DmaUnregister, None)? {
            (Reply::DmaUnregistered { windows }, _) => Ok(windows),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// [`ControlClient::dma_memory`] in the form `vsic::OpenOptions::dma`
    /// takes. Once the library has pinned the memory it asks the service
    /// (over a connection of its own, or this one's socket when it has no
    /// path) where the pages are, and refuses them if pinning moved one.
    pub fn dma_source(&self, bytes: u64) -> Result<crate::DmaSource, ControlError> {
        let (fd, gpas) = self.dma_memory(bytes)?;
        let locator = match &self.path {
            Some(path) => ServiceLocator::Path(path.clone()),
            None => {
                let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
                let dup = sock.try_clone().map_err(|source| ControlError::Io {
                    what: "duplicating the control socket".into(),
                    source,
                })?;
                ServiceLocator::Shared(ControlClient::from_socket(dup))
            }
        };
        crate::DmaSource::provided_with_locator(fd, gpas, std::sync::Arc::new(locator))
            .map_err(|e| ControlError::Protocol(format!("unusable DMA memory: {e}")))
    }

    /// Sends one request and reads its reply. A connection the service
    /// closed while idle (the send fails) is reopened once: the request
    /// never reached it.
    fn exchange<F: AsFd>(
        &self,
        req: &Request,
        fd: Option<&F>,
    ) -> Result<(Reply, Option<OwnedFd>), ControlError> {
        let mut sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        let data = req.encode();
        let first = send_and_receive(&sock, &data, &fds);
        let (reply, mut got) = match (first, &self.path) {
            (Err(Attempt::Closed(_)), Some(path)) => {
                *sock = open(path)?;
                match send_and_receive(&sock, &data, &fds) {
                    Ok(r) => r,
                    Err(Attempt::Closed(e) | Attempt::Failed(e)) => return Err(e),
                }
            }
            (Ok(r), _) => r,
            (Err(Attempt::Closed(e) | Attempt::Failed(e)), _) => return Err(e),
        };
        if got.len() > 1 {
            return Err(ControlError::Protocol(format!(
                "{} file descriptors in one reply",
                got.len()
            )));
        }
        match reply {
            Reply::Refused(r) => Err(ControlError::Refused(r)),
            reply => Ok((reply, got.pop())),
        }
    }
}

/// Asks the service where provided DMA memory is after pinning.
enum ServiceLocator {
    /// A connection made when asked (the application may open its device
    /// long after it got the memory).
    Path(PathBuf),
    Shared(ControlClient),
}

impl fmt::Debug for ServiceLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceLocator::Path(p) => write!(f, "ServiceLocator({})", p.display()),
            ServiceLocator::Shared(_) => write!(f, "ServiceLocator(socket)"),
        }
    }
}

impl crate::PageLocator for ServiceLocator {
    fn locate(&self, memory: &crate::ProvidedDma) -> Result<Vec<u64>, crate::Error> {
        let located = match self {
            ServiceLocator::Path(path) => {
                ControlClient::connect(path).and_then(|c| c.dma_locate(&memory.fd()))
            }
            ServiceLocator::Shared(client) => client.dma_locate(&memory.fd()),
        };
        located.map_err(|e| crate::Error::Transport {
            step: "asking the control service where DMA memory is",
            reason: e.to_string(),
        })
    }
}

fn open(path: &Path) -> Result<OwnedFd, ControlError> {
    let sock = socket::connect(path).map_err(|source| ControlError::Io {
        what: format!(
            "connecting to the control service at {} (is `vsicctl serve` running?)",
            path.display()
        ),
        source,
    })?;
    socket::set_timeouts(sock.as_fd(), Some(REQUEST_TIMEOUT)).map_err(|source| {
        ControlError::Io {
            what: "setting socket timeouts".into(),
            source,
        }
    })?;
    Ok(sock)
}

enum Attempt {
    /// The send failed because the connection was gone: the service never
    /// saw the request, so it is safe to retry.
    Closed(ControlError),
    Failed(ControlError),
}

fn send_and_receive(
    sock: &OwnedFd,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(Reply, Vec<OwnedFd>), Attempt> {
    let io = |what: &str, source: io::Error| ControlError::Io {
        what: what.to_string(),
        source,
    };
    if let Err(e) = socket::send(sock.as_fd(), data, fds) {
        let closed = matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET));
        let err = io("sending the request", e);
        return Err(if closed {
            Attempt::Closed(err)
        } else {
            Attempt::Failed(err)
        });
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    match socket::recv(sock.as_fd(), &mut buf) {
        Ok(Some((n, got))) => {
            let reply = Reply::decode(buf.get(..n).unwrap_or_default())
                .map_err(|e| Attempt::Failed(ControlError::Malformed(e)))?;
            Ok((reply, got))
        }
        // The request may have been carried out: never retried.
        Ok(None) => Err(Attempt::Failed(ControlError::Io {
            what: "reading the reply".into(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the control service closed the connection",
            ),
        })),
        Err(e) => Err(Attempt::Failed(io("reading the reply", e))),
    }
}

fn unexpected(reply: Reply) -> ControlError {
    ControlError::Protocol(format!("unexpected reply {reply:?}"))
}
