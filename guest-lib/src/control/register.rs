//! Registering DMA memory the library allocated itself.
//!
//! A VSIC handed to a user is in enforced DMA mode: the controller lets it
//! reach only its DMA windows, which the control plane adds. Memory the
//! service hands out is granted as it goes out; huge pages a root
//! application allocates itself ([`crate::hugepage::allocate`]) are
//! registered here, once pinned: the service locates the pages of the file
//! sent along and adds exactly those windows to the VSIC. They stay while
//! the [`DmaRegistration`] lives (dropping it unregisters them; if the
//! process dies, the service removes them when the connection closes).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use super::client::{ControlClient, ControlError};
use super::DEFAULT_SOCKET;
use crate::error::Error;

/// Names the control service's socket instead of [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "VSIC_CONTROL_SOCKET";

/// Where the control service listens: `$VSIC_CONTROL_SOCKET` or
/// [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Windows the service added for memory this process allocated; removed
/// on drop.
pub struct DmaRegistration {
    client: ControlClient,
    vsic: u32,
    windows: Vec<(u64, u64)>,
}

impl std::fmt::Debug for DmaRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegistration")
            .field("vsic", &self.vsic)
            .field("windows", &self.windows)
            .finish()
    }
}

impl DmaRegistration {
    /// The windows (start, length) the service added.
    pub fn windows(&self) -> &[(u64, u64)] {
        &self.windows
    }
}

impl Drop for DmaRegistration {
    fn drop(&mut self) {
        match self.client.dma_unregister() {
            Ok(w) => debug!("VSIC {}: {} DMA window(s) unregistered", self.vsic, w.len()),
            // Closing the connection (next) makes the service remove them.
            Err(e) => warn!(
                "VSIC {}: unregistering DMA memory: {e}; the service removes it as the \
                 connection closes",
                self.vsic
            ),
        }
    }
}

/// Registers the huge pages of `memory` (pinned already) for VSIC `vsic`
/// with the control service at `socket`. `Ok(None)` when no service runs
/// there: nobody programs DMA protection then, and a VSIC in open mode
/// (the kernel's, root's) needs nothing; an enforced one will refuse the
/// device's accesses. A refusal is an error ([`Error::DmaRegistration`]).
pub fn register(
    socket: &Path,
    vsic: u32,
    memory: &impl AsFd,
) -> Result<Option<DmaRegistration>, Error> {
    let fail = |source| Error::DmaRegistration { vsic, source };
    let client = match ControlClient::connect(socket) {
        Ok(c) => c,
        Err(ControlError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            info!(
                "VSIC {vsic}: no control service at {} ({source}); DMA memory not registered \
                 (the VSIC must be in open DMA mode to use it)",
                socket.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(fail(e)),
    };
    let windows = client.dma_register(vsic, memory).map_err(fail)?;
    debug!("VSIC {vsic}: DMA memory registered, windows {windows:x?}");
    Ok(Some(DmaRegistration {
        client,
        vsic,
        windows,
    }))
}
