//! The policy of the control-plane service, apart from how the device and
//! the PCI functions are reached ([`Authority`]).
//!
//! * Attach: the peer (by `SO_PEERCRED` uid) must own the VSIC, that is its
//!   VFIO group node; the capability comes from the file descriptor sent
//!   along, so the peer proves it could open the capability file. Root may
//!   act on any VSIC.
//! * Detach: the peer must own the VSIC.
//! * DMA memory: the peer must own some VSIC; each request is bounded.
//!   Its VSICs are let reach the pages handed out ([`Authority::grant_dma`]);
//!   the service keeps a reference to that memory while the user owns a
//!   VSIC, so freed pages never go to anyone else while windows name them.
//! * DMA registration: only root may register huge pages it allocated and
//!   pinned itself; the VSIC named is let reach exactly those pages until
//!   the connection unregisters them or closes ([`Session`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use vsic_abi::CapToken;

use super::message::{Refusal, Reply, Request, MAX_MESSAGE};
use super::socket;

/// Capability files are one short line; more is not one.
const MAX_CAPABILITY_FILE: usize = 4096;

/// How much of the service one client may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one uid may hold at once; more are told to come back
    /// later. Root has an allowance of its own.
    pub per_uid: usize,
    /// Connections of all users but root together.
    pub total: usize,
    /// A connection that completed no request for this long is closed.
    /// Malformed and refused requests are not activity: sending them does
    /// not keep a connection open.
    pub idle: Duration,
    /// How long a reply may wait for the client to take it.
    pub send: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_uid: 4,
            total: 32,
            idle: Duration::from_secs(60),
            send: Duration::from_secs(5),
        }
    }
}

/// Open connections per uid.
#[derive(Debug, Default)]
struct Admissions {
    by_uid: Mutex<HashMap<u32, usize>>,
}

impl Admissions {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One admitted connection; its place is given back on drop.
#[derive(Debug)]
pub struct Ticket {
    admissions: Arc<Admissions>,
    uid: u32,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admissions.counts();
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// What the service needs from the machine: who owns which VSIC, the PF's
/// admin commands, pinned memory. The real one works on sysfs, VFIO and
/// the PF; tests use a fake.
pub trait Authority: Send + Sync {
    /// The uid owning VSIC `vsic`'s VFIO group, or why there is none (not
    /// handed to VFIO, no such VSIC).
    fn vsic_owner(&self, vsic: u32) -> Result<u32, Refusal>;
    /// Whether `uid` owns at least one VSIC.
    fn owns_a_vsic(&self, uid: u32) -> bool;
    /// Attaches for `uid`, who must still own VSIC `vsic` (or be root)
    /// when the device is asked: the owner may change meanwhile.
    fn attach(
        &self,
        uid: u32,
        vsic: u32,
        slot: u32,
        token: &CapToken,
        read_only: bool,
    ) -> Result<(), Refusal>;
    /// Detaches for `uid`, who must still own VSIC `vsic` (or be root).
    fn detach(&self, uid: u32, vsic: u32, slot: u32) -> Result<(), Refusal>;
    /// At least `bytes` of pinned memory: the file holding it, its page
    /// size, and the guest-physical address of each page.
    fn dma_memory(&self, bytes: u64) -> Result<(OwnedFd, u64, Vec<u64>), Refusal>;
    /// Where the pages of the huge-page file `memory` (at most `max_bytes`
    /// long) are now, in file order.
    fn dma_addresses(&self, memory: &OwnedFd, max_bytes: u64) -> Result<Vec<u64>, Refusal>;
    /// Lets every VSIC `uid` owns read and write the pages at `gpas`
    /// (each `page_size` long) in enforced DMA mode, before they are
    /// handed to `uid`.
    fn grant_dma(&self, uid: u32, page_size: u64, gpas: &[u64]) -> Result<(), Refusal>;
    /// Lets VSIC `vsic` read and write the huge pages at `gpas` (root's own
    /// pinned memory): adds a window for each run of them it cannot reach
    /// yet and returns those windows (none when the VSIC is in open DMA
    /// mode).
    fn register_dma(&self, vsic: u32, gpas: &[u64]) -> Result<Vec<(u64, u64)>, Refusal>;
    /// Removes windows [`Authority::register_dma`] added to VSIC `vsic`;
    /// those already gone (an unbind or rebind cleared them) are skipped.
    /// Returns the ones removed.
    fn unregister_dma(&self, vsic: u32, windows: &[(u64, u64)])
        -> Result<Vec<(u64, u64)>, Refusal>;
}

/// Most bytes of its own huge pages root may register in one request.
pub const MAX_REGISTERED_DMA: u64 = 1 << 30;

/// Connections root may hold at once: each application registering its own
/// DMA memory holds one for as long as its device is open.
pub const ROOT_CONNECTIONS: usize = 64;

/// What one connection holds: the windows it registered, per VSIC, removed
/// when it unregisters them or closes (also when its process dies).
#[derive(Debug, Default)]
pub struct Session {
    registered: Vec<(u32, Vec<(u64, u64)>)>,
}

impl Session {
    /// Whether the connection holds registered windows (then it is never
    /// closed for being idle: the windows live as long as it does).
    pub fn holds_windows(&self) -> bool {
        !self.registered.is_empty()
    }
}

/// Coalesces pages (each `page_size` long) into sorted, contiguous
/// `(start, len)` runs.
pub fn page_runs(page_size: u64, gpas: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = gpas.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for gpa in sorted {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == gpa => *len += page_size,
            _ => runs.push((gpa, page_size)),
        }
    }
    runs
}

/// Who sent a request (from the kernel, not from the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

pub struct Service<A: Authority> {
    authority: A,
    /// Largest DMA request granted.
    max_dma: u64,
    limits: Limits,
    admissions: Arc<Admissions>,
    /// A reference to each huge-page file handed to a user (uid, file):
    /// the pages stay allocated while the user owns a VSIC, whose windows
    /// still name them after the user freed them; released once the user
    /// owns none (a rebind or unbind removed the windows).
    kept: Mutex<Vec<(u32, OwnedFd)>>,
}

fn refused(status: &str, message: impl Into<String>) -> Refusal {
    Refusal::new(status, message)
}

impl<A: Authority> Service<A> {
    pub fn new(authority: A, max_dma: u64) -> Service<A> {
        Service::with_limits(authority, max_dma, Limits::default())
    }

    pub fn with_limits(authority: A, max_dma: u64, limits: Limits) -> Service<A> {
        Service {
            authority,
            max_dma,
            limits,
            admissions: Arc::default(),
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Admits one more connection of `uid`, within its own allowance and
    /// (for users other than root) the total.
    pub fn admit(&self, uid: u32) -> Result<Ticket, Refusal> {
        let mut counts = self.admissions.counts();
        let mine = counts.get(&uid).copied().unwrap_or(0);
        let allowance = if uid == 0 {
            self.limits.per_uid.max(ROOT_CONNECTIONS)
        } else {
            self.limits.per_uid
        };
        if mine >= allowance {
            return Err(refused(
                "busy",
                format!(
                    "uid {uid} has {mine} connections open, the most one user may; close one or try again later"
                ),
            ));
        }
        let users: usize = counts
            .iter()
            .filter(|(&u, _)| u != 0)
            .map(|(_, &n)| n)
            .sum();
        if uid != 0 && users >= self.limits.total {
            return Err(refused("busy", "too many connections; try again later"));
        }
        *counts.entry(uid).or_insert(0) += 1;
        Ok(Ticket {
            admissions: Arc::clone(&self.admissions),
            uid,
        })
    }

    pub fn authority(&self) -> &A {
        &self.authority
    }

    /// The huge-page files the service keeps (see [`Service`]), duplicated.
    pub fn kept_dma(&self) -> Vec<OwnedFd> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .filter_map(|(_, fd)| fd.try_clone().ok())
            .collect()
    }

    /// Lets go of the memory of users who own no VSIC any more.
    fn release_unowned(&self) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let before = kept.len();
        kept.retain(|(uid, _)| self.authority.owns_a_vsic(*uid));
        if kept.len() < before {
            info!(
                "released {} handed-out DMA file(s) of users who own no VSIC any more",
                before - kept.len()
            );
        }
    }

    /// Answers one request of a connection whose state is `session`. The
    /// descriptor returned goes out with the reply.
    pub fn handle(
        &self,
        peer: Peer,
        session: &mut Session,
        message: &[u8],
        fds: Vec<OwnedFd>,
    ) -> (Reply, Option<OwnedFd>) {
        let request = match Request::decode(message) {
            Ok(r) => r,
            Err(why) => {
                warn!(
                    "uid {} (pid {}): malformed request: {why}",
                    peer.uid, peer.pid
                );
                return (
                    Reply::Refused(refused("bad-request", why.to_string())),
                    None,
                );
            }
        };
        match self.execute(peer, session, &request, fds) {
            Ok((reply, fd)) => (reply, fd),
            Err(r) => {
                warn!(
                    "uid {} (pid {}): {request:?} refused: {r}",
                    peer.uid, peer.pid
                );
                (Reply::Refused(r), None)
            }
        }
    }

    /// Removes every window `session` registered. Tries them all; the
    /// first refusal is returned after that.
    pub fn release(&self, peer: Peer, session: &mut Session) -> Result<Vec<(u64, u64)>, Refusal> {
        let mut removed = Vec::new();
        let mut first_refusal = None;
        for (vsic, windows) in session.registered.drain(..) {
            match self.authority.unregister_dma(vsic, &windows) {
                Ok(gone) => {
                    info!(
                        "uid {} (pid {}): removed {} registered DMA window(s) of VSIC {vsic}",
                        peer.uid,
                        peer.pid,
                        gone.len()
                    );
                    removed.extend(gone);
                }
                Err(r) => {
                    warn!(
                        "uid {} (pid {}): VSIC {vsic}'s registered DMA windows {windows:x?} \
                         could not be removed: {r}",
                        peer.uid, peer.pid
                    );
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match first_refusal {
            Some(r) => Err(r),
            None => Ok(removed),
        }
    }

    fn execute(
        &self,
        peer: Peer,
        session: &mut Session,
        request: &Request,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(Reply, Option<OwnedFd>), Refusal> {
        self.release_unowned();
        let expected_fds = usize::from(matches!(
            request,
            Request::Attach { .. } | Request::DmaLocate | Request::DmaRegister { .. }
        ));
        if fds.len() != expected_fds {
            return Err(refused(
                "bad-request",
                format!(
                    "this request takes {expected_fds} file descriptor(s), {} came with it",
                    fds.len()
                ),
            ));
        }
        match *request {
            Request::Attach {
                vsic,
                slot,
                read_only,
            } => {
                self.check_owner(peer, vsic)?;
                let cap = fds
                    .pop()
                    .ok_or_else(|| refused("bad-request", "no capability file"))?;
                let token = read_capability(cap)?;
                self.authority
                    .attach(peer.uid, vsic, slot, &token, read_only)?;
                info!(
                    "uid {} (pid {}): attached VSA {} to VSIC {vsic} slot {slot}{}",
                    peer.uid,
                    peer.pid,
                    token.vsa_id,
                    if read_only { " read-only" } else { "" }
                );
                Ok((Reply::Attached, None))
            }
            Request::Detach { vsic, slot } => {
                self.check_owner(peer, vsic)?;
                self.authority.detach(peer.uid, vsic, slot)?;
                info!(
                    "uid {} (pid {}): detached VSIC {vsic} slot {slot}",
                    peer.uid, peer.pid
                );
                Ok((Reply::Detached, None))
            }
            Request::DmaLocate => {
                self.check_vsic_owner(peer)?;
                let memory = fds
                    .pop()
                    .ok_or_else(|| refused("bad-request", "no memory file"))?;
                let gpas = self.authority.dma_addresses(&memory, self.max_dma)?;
                // Pages that moved are granted where they are now.
                self.authority.grant_dma(peer.uid, 0, &gpas)?;
                info!(
                    "uid {} (pid {}): located {} page(s) of DMA memory after pinning",
                    peer.uid,
                    peer.pid,
                    gpas.len()
                );
                Ok((Reply::DmaPages { gpas }, None))
            }
            Request::Dma { bytes } => {
                self.check_vsic_owner(peer)?;
                if bytes == 0 || bytes > self.max_dma {
                    return Err(refused(
                        "dma-limit",
                        format!(
                            "{bytes} bytes of DMA memory asked; between 1 and {} may be",
                            self.max_dma
                        ),
                    ));
                }
                let (fd, page_size, gpas) = self.authority.dma_memory(bytes)?;
                // The VSICs of its owner may reach these pages, and only
                // then does the owner get them (the memory is freed if not).
                // Kept while the owner owns a VSIC: the windows granted next
                // outlive the owner's use of the memory.
                let keep = fd.try_clone().map_err(|e| {
                    refused("dma", format!("keeping a reference to the memory: {e}"))
                })?;
                self.authority.grant_dma(peer.uid, page_size, &gpas)?;
                if peer.uid != 0 {
                    self.kept
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((peer.uid, keep));
                }
                info!(
                    "uid {} (pid {}): handed out {} page(s) of {page_size} bytes of DMA memory",
                    peer.uid,
                    peer.pid,
                    gpas.len()
                );
                Ok((Reply::Dma { page_size, gpas }, Some(fd)))
            }
            Request::DmaRegister { vsic } => {
                if peer.uid != 0 {
                    return Err(refused(
                        "permission",
                        format!(
                            "uid {}: only root registers DMA memory it allocated itself; \
                             other users ask the service for DMA memory (which their VSICs \
                             may then reach)",
                            peer.uid
                        ),
                    ));
                }
                let memory = fds
                    .pop()
                    .ok_or_else(|| refused("bad-request", "no memory file"))?;
                // The pages are located here, not taken from the message.
                let gpas = self.authority.dma_addresses(&memory, MAX_REGISTERED_DMA)?;
                let windows = self.authority.register_dma(vsic, &gpas)?;
                info!(
                    "uid {} (pid {}): registered {} page(s) of its own DMA memory for VSIC \
                     {vsic}: {} window(s) added",
                    peer.uid,
                    peer.pid,
                    gpas.len(),
                    windows.len()
                );
                if !windows.is_empty() {
                    session.registered.push((vsic, windows.clone()));
                }
                Ok((Reply::DmaRegistered { windows }, None))
            }
            Request::DmaUnregister => {
                let windows = self.release(peer, session)?;
                Ok((Reply::DmaUnregistered { windows }, None))
            }
        }
    }

    /// DMA memory is for users who own a VSIC (and root).
    fn check_vsic_owner(&self, peer: Peer) -> Result<(), Refusal> {
        if peer.uid != 0 && !self.authority.owns_a_vsic(peer.uid) {
            return Err(refused(
                "not-owner",
                format!(
                    "uid {} owns no VSIC; DMA memory is for VSIC owners",
                    peer.uid
                ),
            ));
        }
        Ok(())
    }

    fn check_owner(&self, peer: Peer, vsic: u32) -> Result<(), Refusal> {
        check_owner(&self.authority, peer.uid, vsic)
    }

    /// Serves one connection until the peer hangs up, stays idle too long,
    /// or breaks the protocol at the socket level.
    pub fn serve_connection(&self, conn: OwnedFd) {
        let (pid, uid, _) = match socket::peer_credentials(conn.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                warn!("control connection without credentials: {e}");
                return;
            }
        };
        let peer = Peer { pid, uid };
        if let Err(e) = socket::set_send_timeout(conn.as_fd(), Some(self.limits.send)) {
            warn!("uid {uid}: cannot set the socket's send timeout: {e}");
        }
        let mut session = Session::default();
        self.serve_session(peer, &conn, &mut session);
        // Closed, or the process died: what it registered goes with it.
        if session.holds_windows() {
            let _ = self.release(peer, &mut session);
        }
    }

    fn serve_session(&self, peer: Peer, conn: &OwnedFd, session: &mut Session) {
        let Peer { pid, uid } = peer;
        let mut buf = vec![0u8; MAX_MESSAGE];
        // Only a request carried out moves the deadline.
        let mut deadline = Instant::now() + self.limits.idle;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !session.holds_windows() {
                info!(
                    "uid {uid} (pid {pid}): no request carried out for {:?}; closing",
                    self.limits.idle
                );
                return;
            }
            // At least 1 ms: a zero timeout would mean none. A connection
            // holding windows waits for as long as it stays open.
            let wait = (!session.holds_windows()).then(|| left.max(Duration::from_millis(1)));
            if let Err(e) = socket::set_receive_timeout(conn.as_fd(), wait) {
                warn!("uid {uid}: cannot set the socket's receive timeout: {e}");
                return;
            }
            let (n, fds) = match socket::recv(conn.as_fd(), &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let reply = Reply::Refused(refused("bad-request", e.to_string()));
                    let _ = socket::send(conn.as_fd(), &reply.encode(), &[]);
                    continue;
                }
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) {
                        warn!("uid {uid} (pid {pid}): receive failed: {e}");
                    }
                    return;
                }
            };
            let (reply, fd) = self.handle(peer, session, buf.get(..n).unwrap_or_default(), fds);
            if !matches!(reply, Reply::Refused(_)) {
                deadline = Instant::now() + self.limits.idle;
            }
            let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = socket::send(conn.as_fd(), &reply.encode(), &fds) {
                warn!("uid {uid} (pid {pid}): reply lost: {e}");
                return;
            }
        }
    }

    /// Accepts connections forever, one thread each.
    pub fn run(self: Arc<Self>, listener: OwnedFd) -> io::Result<()>
    where
        A: 'static,
    {
        loop {
            let conn = match socket::accept(listener.as_fd()) {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ECONNABORTED)
                    ) =>
                {
                    warn!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ticket = match socket::peer_credentials(conn.as_fd()) {
                Ok((_, uid, _)) => self.admit(uid),
                Err(e) => {
                    warn!("control connection without credentials: {e}");
                    continue;
                }
            };
            let ticket = match ticket {
                Ok(t) => t,
                Err(refusal) => {
                    // A fresh connection has room for one reply; never wait.
                    let _ = socket::set_send_timeout(conn.as_fd(), Some(Duration::from_millis(10)));
                    let _ = socket::send(conn.as_fd(), &Reply::Refused(refusal).encode(), &[]);
                    continue;
                }
            };
            let service = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name(format!("control-{}", conn.as_raw_fd()))
                .spawn(move || {
                    service.serve_connection(conn);
                    drop(ticket);
                });
            if let Err(e) = spawned {
                warn!("cannot start a connection thread: {e}");
            }
        }
    }
}

/// Whether `uid` may act on VSIC `vsic`: it owns it, or it is root.
pub fn check_owner(authority: &impl Authority, uid: u32, vsic: u32) -> Result<(), Refusal> {
    let owner = authority.vsic_owner(vsic)?;
    if uid == 0 || uid == owner {
        Ok(())
    } else {
        Err(refused(
            "not-owner",
            format!("VSIC {vsic} is not yours (its VFIO group belongs to uid {owner})"),
        ))
    }
}

/// Reads the capability out of a descriptor the peer opened: a regular
/// file, open for reading, holding one capability line.
pub fn read_capability(fd: OwnedFd) -> Result<CapToken, Refusal> {
    let bad = |why: String| refused("bad-capability", why);
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(bad(format!(
            "unusable descriptor: {}",
            io::Error::last_os_error()
        )));
    }
    if flags & libc::O_ACCMODE == libc::O_WRONLY || flags & libc::O_PATH != 0 {
        return Err(bad("the capability file is not open for reading".into()));
    }
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot stat the capability file: {e}")))?;
    if !meta.is_file() {
        return Err(bad("the descriptor is not a regular file".into()));
    }
    let mut buf = vec![0u8; MAX_CAPABILITY_FILE + 1];
    let mut len = 0;
    while len < buf.len() {
        let rest = buf.get_mut(len..).unwrap_or_default();
        match file.read_at(rest, len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(bad(format!("cannot read the capability file: {e}"))),
        }
    }
    if len > MAX_CAPABILITY_FILE {
        return Err(bad("not a capability file: too large".into()));
    }
    let text = std::str::from_utf8(buf.get(..len).unwrap_or_default())
        .map_err(|_| bad("not a capability file: not text".into()))?;
    CapToken::from_text(text).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::{ControlClient, ControlError};
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;
    use vsic_abi::Rights;

    /// VSIC 0 belongs to uid 1001, VSIC 1 to the test's own uid, VSIC 2 is
    /// not handed to VFIO. Records what it was asked to do.
    struct FakeAuthority {
        me: u32,
        /// Whether uid 1001 still owns VSIC 0.
        alice_owns: std::sync::atomic::AtomicBool,
        calls: Mutex<Vec<String>>,
        slots: Mutex<HashMap<(u32, u32), u64>>,
    }

    impl FakeAuthority {
        fn new() -> FakeAuthority {
            FakeAuthority {
                // SAFETY: getuid has no preconditions.
                me: unsafe { libc::getuid() },
                alice_owns: std::sync::atomic::AtomicBool::new(true),
                calls: Mutex::new(Vec::new()),
                slots: Mutex::new(HashMap::new()),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Authority for FakeAuthority {
        fn vsic_owner(&self, vsic: u32) -> Result<u32, Refusal> {
            match vsic {
                0 => Ok(1001),
                1 => Ok(self.me),
                2 => Err(Refusal::new("not-vfio", "VSIC 2 is not handed to VFIO")),
                _ => Err(Refusal::new("no-such-vsic", "no VSIC with that number")),
            }
        }
        fn owns_a_vsic(&self, uid: u32) -> bool {
            (uid == 1001 && self.alice_owns.load(std::sync::atomic::Ordering::SeqCst))
                || uid == self.me
        }
        fn attach(
            &self,
            _uid: u32,
            vsic: u32,
            slot: u32,
            token: &CapToken,
            ro: bool,
        ) -> Result<(), Refusal> {
            if !ro && !token.rights.contains(Rights::WRITE) {
                return Err(Refusal::new("permission-denied", "no write right"));
            }
            let mut slots = self.slots.lock().unwrap();
            if slots.contains_key(&(vsic, slot)) {
                return Err(Refusal::new(
                    "slot-busy",
                    "that slot already has a VSA attached",
                ));
            }
            slots.insert((vsic, slot), token.vsa_id);
            self.calls
                .lock()
                .unwrap()
                .push(format!("attach {vsic} {slot} vsa={} ro={ro}", token.vsa_id));
            Ok(())
        }
        fn detach(&self, _uid: u32, vsic: u32, slot: u32) -> Result<(), Refusal> {
            self.slots.lock().unwrap().remove(&(vsic, slot));
            self.calls
                .lock()
                .unwrap()
                .push(format!("detach {vsic} {slot}"));
            Ok(())
        }
        fn dma_memory(&self, bytes: u64) -> Result<(OwnedFd, u64, Vec<u64>), Refusal> {
            let page = 4096u64;
            let pages = bytes.div_ceil(page);
            // SAFETY: valid name and flags; the descriptor is ours.
            let fd = unsafe { libc::memfd_create(c"fake-dma".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            File::from(fd.try_clone().unwrap())
                .set_len(pages * page)
                .unwrap();
            self.calls.lock().unwrap().push(format!("dma {bytes}"));
            Ok((fd, page, (0..pages).map(|i| 0x10_0000 + i * page).collect()))
        }
        fn dma_addresses(&self, memory: &OwnedFd, max: u64) -> Result<Vec<u64>, Refusal> {
            let len = File::from(memory.try_clone().unwrap())
                .metadata()
                .unwrap()
                .len();
            if len > max {
                return Err(Refusal::new("dma-limit", "too large"));
            }
            // Page 0 "moved" when the file is 3 pages long.
            let mut gpas: Vec<u64> = (0..len / 4096).map(|i| 0x10_0000 + i * 4096).collect();
            if gpas.len() == 3 {
                gpas[0] = 0x90_0000;
            }
            Ok(gpas)
        }
        fn grant_dma(&self, uid: u32, page_size: u64, gpas: &[u64]) -> Result<(), Refusal> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("grant uid={uid} {:x?}", page_runs(page_size, gpas)));
            Ok(())
        }
        fn register_dma(&self, vsic: u32, gpas: &[u64]) -> Result<Vec<(u64, u64)>, Refusal> {
            let runs = page_runs(4096, gpas);
            self.calls
                .lock()
                .unwrap()
                .push(format!("register {vsic} {runs:x?}"));
            Ok(runs)
        }
        fn unregister_dma(
            &self,
            vsic: u32,
            windows: &[(u64, u64)],
        ) -> Result<Vec<(u64, u64)>, Refusal> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unregister {vsic} {windows:x?}"));
            Ok(windows.to_vec())
        }
    }

    /// A 2-page file standing for DMA memory an application allocated.
    fn own_memory() -> OwnedFd {
        let f = tempfile::new("own-dma");
        f.set_len(2 * 4096).unwrap();
        OwnedFd::from(f)
    }

    #[test]
    fn only_root_may_register_its_own_dma_memory() {
        let service = Service::new(FakeAuthority::new(), 1 << 20);
        let alice = Peer { pid: 7, uid: 1001 };
        let mut session = Session::default();
        let req = Request::DmaRegister { vsic: 0 }.encode();
        let (reply, _) = service.handle(alice, &mut session, &req, vec![own_memory()]);
        match reply {
            Reply::Refused(r) => {
                assert_eq!(r.status, "permission");
                assert!(r.message.contains("only root"), "{}", r.message);
            }
            other => panic!("alice registered her own memory: {other:?}"),
        }
        assert!(!session.holds_windows());
        assert!(service.authority().calls().is_empty());
    }

    #[test]
    fn root_registers_exactly_its_pages_until_it_unregisters_or_closes() {
        let service = Service::new(FakeAuthority::new(), 1 << 20);
        let root = Peer { pid: 8, uid: 0 };
        let mut session = Session::default();
        let req = Request::DmaRegister { vsic: 0 }.encode();
        // Without the memory file: refused, nothing registered.
        let (reply, _) = service.handle(root, &mut session, &req, vec![]);
        assert!(
            matches!(reply, Reply::Refused(ref r) if r.status == "bad-request"),
            "{reply:?}"
        );
        let (reply, _) = service.handle(root, &mut session, &req, vec![own_memory()]);
        let want = vec![(0x10_0000, 0x2000)];
        assert_eq!(
            reply,
            Reply::DmaRegistered {
                windows: want.clone()
            }
        );
        assert!(session.holds_windows());
        let unregister = Request::DmaUnregister.encode();
        let (reply, _) = service.handle(root, &mut session, &unregister, vec![]);
        assert_eq!(
            reply,
            Reply::DmaUnregistered {
                windows: want.clone()
            }
        );
        assert!(!session.holds_windows());
        // Once more, then the connection closes without unregistering.
        let _ = service.handle(root, &mut session, &req, vec![own_memory()]);
        service.release(root, &mut session).unwrap();
        assert_eq!(
            service.authority().calls(),
            vec![
                "register 0 [(100000, 2000)]",
                "unregister 0 [(100000, 2000)]",
                "register 0 [(100000, 2000)]",
                "unregister 0 [(100000, 2000)]",
            ]
        );
    }

    #[test]
    fn a_closed_connection_takes_its_registered_windows_along() {
        let (service, client, thread) = connected();
        let registered = client.dma_register(1, &own_memory());
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            match registered {
                Err(ControlError::Refused(r)) => assert_eq!(r.status, "permission"),
                other => panic!("a user registered its own memory: {other:?}"),
            }
            return;
        }
        assert_eq!(registered.unwrap(), vec![(0x10_0000, 0x2000)]);
        drop(client);
        thread.join().unwrap();
        assert_eq!(
            service.authority().calls(),
            vec![
                "register 1 [(100000, 2000)]",
                "unregister 1 [(100000, 2000)]"
            ]
        );
    }

    #[test]
    fn a_connection_holding_windows_is_not_closed_for_being_idle() {
        let limits = Limits {
            idle: Duration::from_millis(300),
            ..Limits::default()
        };
        let service = Arc::new(Service::with_limits(FakeAuthority::new(), 1 << 20, limits));
        let (client_end, service_end) = socket::pair().unwrap();
        let s = Arc::clone(&service);
        let thread = std::thread::spawn(move || s.serve_connection(service_end));
        let client = ControlClient::from_socket(client_end);
        let registered = client.dma_register(1, &own_memory());
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            assert!(registered.is_err(), "a user registered its own memory");
            return;
        }
        registered.unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        // Still the same connection (a new one would hold nothing).
        assert_eq!(client.dma_unregister().unwrap(), vec![(0x10_0000, 0x2000)]);
        // Holding nothing now: idle closes it.
        std::thread::sleep(Duration::from_millis(1000));
        drop(client);
        thread.join().unwrap();
    }

    /// Memory the service handed out stays allocated (the service keeps a
    /// reference) while its owner owns a VSIC: her VSICs' windows still
    /// name those pages after she freed them, so nobody else may get them
    /// meanwhile. Once she owns no VSIC (unbind, rebind: windows cleared)
    /// the service lets go.
    #[test]
    fn handed_out_memory_is_kept_while_its_owner_holds_a_vsic() {
        let service = Service::new(FakeAuthority::new(), 1 << 20);
        let alice = Peer { pid: 7, uid: 1001 };
        let mut session = Session::default();
        let ask = Request::Dma { bytes: 8192 }.encode();
        let (reply, fd) = service.handle(alice, &mut session, &ask, vec![]);
        assert!(matches!(reply, Reply::Dma { .. }), "{reply:?}");
        let fd = fd.unwrap();
        // SAFETY: fstat fills a plain struct for a valid descriptor.
        let inode = |fd: &OwnedFd| unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
            st.st_ino
        };
        let handed = inode(&fd);
        drop(fd);
        assert_eq!(
            service.kept_dma().iter().map(inode).collect::<Vec<_>>(),
            vec![handed]
        );
        // Alice's VSIC is taken away; the next request lets go.
        service
            .authority()
            .alice_owns
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let me = Peer {
            pid: 8,
            uid: service.authority().me,
        };
        let _ = service.handle(me, &mut session, &ask, vec![]);
        let kept: Vec<_> = service.kept_dma().iter().map(inode).collect();
        assert!(!kept.contains(&handed), "kept after alice lost her VSIC");
    }

    #[test]
    fn pages_coalesce_into_sorted_runs() {
        let p = 0x20_0000;
        assert_eq!(
            page_runs(p, &[5 * p, p, 2 * p, 9 * p, 2 * p]),
            vec![(p, 2 * p), (5 * p, p), (9 * p, p)]
        );
        assert!(page_runs(p, &[]).is_empty());
    }

    fn cap_file(tag: &str, rights: Rights) -> (std::path::PathBuf, CapToken) {
        let token = CapToken {
            vsa_id: 9,
            token_id: 2,
            rights,
            secret: [0x33; 32],
        };
        let path = std::env::temp_dir().join(format!("vsicctl-svc-{tag}-{}", std::process::id()));
        std::fs::write(&path, token.to_text()).unwrap();
        (path, token)
    }

    /// A service on one end of a socket pair, served by a thread; the
    /// client on the other end.
    fn connected() -> (
        Arc<Service<FakeAuthority>>,
        ControlClient,
        std::thread::JoinHandle<()>,
    ) {
        let service = Arc::new(Service::new(FakeAuthority::new(), 8 << 20));
        let (client_end, service_end) = socket::pair().unwrap();
        let s = Arc::clone(&service);
        let thread = std::thread::spawn(move || s.serve_connection(service_end));
        (service, ControlClient::from_socket(client_end), thread)
    }

    #[test]
    fn owner_attaches_with_the_capability_file_descriptor() {
        let (service, client, thread) = connected();
        let (path, _) = cap_file("attach", Rights::ALL);
        client
            .attach(1, 3, &File::open(&path).unwrap(), false)
            .unwrap();
        // The same slot again: the device's refusal comes back by name.
        match client.attach(1, 3, &File::open(&path).unwrap(), false) {
            Err(ControlError::Refused(r)) => assert_eq!(r.status, "slot-busy"),
            other => panic!("{other:?}"),
        }
        client.detach(1, 3).unwrap();
        drop(client);
        thread.join().unwrap();
        assert_eq!(
            service.authority().calls(),
            vec!["attach 1 3 vsa=9 ro=false", "detach 1 3"]
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn someone_elses_vsic_is_refused_before_the_device_is_asked() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            // Root may act on every VSIC; the refusal is for other users.
            let service = Service::new(FakeAuthority::new(), 1 << 20);
            let peer = Peer { pid: 1, uid: 1002 };
            let (path, _) = cap_file("other-root", Rights::ALL);
            let fd = OwnedFd::from(File::open(&path).unwrap());
            let req = Request::Attach {
                vsic: 0,
                slot: 1,
                read_only: false,
            };
            let (reply, _) = service.handle(peer, &mut Session::default(), &req.encode(), vec![fd]);
            assert!(
                matches!(reply, Reply::Refused(ref r) if r.status == "not-owner"),
                "{reply:?}"
            );
            let (reply, _) = service.handle(
                peer,
                &mut Session::default(),
                &Request::Detach { vsic: 0, slot: 1 }.encode(),
                vec![],
            );
            assert!(
                matches!(reply, Reply::Refused(ref r) if r.status == "not-owner"),
                "{reply:?}"
            );
            let (reply, _) = service.handle(
                peer,
                &mut Session::default(),
                &Request::Dma { bytes: 4096 }.encode(),
                vec![],
            );
            assert!(
                matches!(reply, Reply::Refused(ref r) if r.status == "not-owner"),
                "{reply:?}"
            );
            assert!(service.authority().calls().is_empty());
            std::fs::remove_file(path).unwrap();
            return;
        }
        let (service, client, thread) = connected();
        let (path, _) = cap_file("other", Rights::ALL);
        match client.attach(0, 1, &File::open(&path).unwrap(), false) {
            Err(ControlError::Refused(r)) => {
                assert_eq!(r.status, "not-owner");
                assert!(r.message.contains("uid 1001"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        match client.detach(0, 1) {
            Err(ControlError::Refused(r)) => assert_eq!(r.status, "not-owner"),
            other => panic!("{other:?}"),
        }
        drop(client);
        thread.join().unwrap();
        assert!(service.authority().calls().is_empty());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn vsics_not_handed_out_and_bad_capabilities_are_refused() {
        let (service, client, thread) = connected();
        let (path, _) = cap_file("notvfio", Rights::ALL);
        let refusal = |r: Result<(), ControlError>| match r {
            Err(ControlError::Refused(r)) => r,
            other => panic!("{other:?}"),
        };
        let r = refusal(client.attach(2, 0, &File::open(&path).unwrap(), false));
        assert_eq!(r.status, "not-vfio");
        // A descriptor not open for reading proves nothing.
        let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert_eq!(
            refusal(client.attach(1, 0, &write_only, false)).status,
            "bad-capability"
        );
        // A directory is not a capability file.
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert_eq!(
            refusal(client.attach(1, 0, &dir, false)).status,
            "bad-capability"
        );
        // Nor is garbage, nor a huge file.
        let mut garbage = tempfile::new("garbage");
        garbage.write_all(b"not a capability").unwrap();
        assert_eq!(
            refusal(client.attach(1, 0, &garbage, false)).status,
            "bad-capability"
        );
        let mut huge = tempfile::new("huge");
        huge.write_all(&vec![b'x'; 10_000]).unwrap();
        let r = refusal(client.attach(1, 0, &huge, false));
        assert!(r.message.contains("too large"), "{r}");
        // A read-only capability attached read-write: the device says no.
        let (ro_path, _) = cap_file("ro", Rights::READ);
        let r = refusal(client.attach(1, 0, &File::open(&ro_path).unwrap(), false));
        assert_eq!(r.status, "permission-denied");
        client
            .attach(1, 0, &File::open(&ro_path).unwrap(), true)
            .unwrap();
        drop(client);
        thread.join().unwrap();
        assert_eq!(
            service.authority().calls(),
            vec!["attach 1 0 vsa=9 ro=true"]
        );
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(ro_path).unwrap();
    }

    #[test]
    fn dma_memory_comes_with_its_page_addresses_and_is_bounded() {
        let (_service, client, thread) = connected();
        let (fd, gpas) = client.dma_memory(3 * 4096 + 1).unwrap();
        assert_eq!(gpas, vec![0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000]);
        assert_eq!(File::from(fd).metadata().unwrap().len(), 4 * 4096);
        for bytes in [0, (8 << 20) + 1] {
            match client.dma_memory(bytes) {
                Err(ControlError::Refused(r)) => assert_eq!(r.status, "dma-limit"),
                other => panic!("{bytes}: {other:?}"),
            }
        }
        // The provided memory is what the library takes.
        let (fd, gpas) = client.dma_memory(8192).unwrap();
        let source = vsic::DmaSource::provided(fd, gpas).unwrap();
        assert!(matches!(source, vsic::DmaSource::Provided(_)));
        // After pinning, the library asks where the pages are now.
        let (fd, gpas) = client.dma_memory(3 * 4096).unwrap();
        let now = client.dma_locate(&fd).unwrap();
        assert_eq!(now.len(), gpas.len());
        assert_ne!(now[0], gpas[0], "the fake says page 0 moved");
        assert_eq!(now[1..], gpas[1..]);
        let source = client.dma_source(4096).unwrap();
        assert!(matches!(source, vsic::DmaSource::Provided(_)));
        // Its locator shares the connection: the service sees the hang-up
        // once both are gone.
        drop(source);
        drop(client);
        thread.join().unwrap();
    }

    #[test]
    fn raw_protocol_errors_get_refusals_and_the_connection_survives() {
        let service = Arc::new(Service::new(FakeAuthority::new(), 1 << 20));
        let (client_end, service_end) = socket::pair().unwrap();
        let s = Arc::clone(&service);
        let thread = std::thread::spawn(move || s.serve_connection(service_end));
        let ask = |data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| {
            socket::send(client_end.as_fd(), data, fds).unwrap();
            let mut buf = vec![0u8; MAX_MESSAGE];
            let (n, fds) = socket::recv(client_end.as_fd(), &mut buf).unwrap().unwrap();
            (Reply::decode(&buf[..n]).unwrap(), fds.len())
        };
        let status = |r: Reply| match r {
            Reply::Refused(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(ask(b"{{{", &[]).0), "bad-request");
        assert_eq!(
            status(ask(br#"{"v":1,"op":"attach","vsic":1,"slot":0}"#, &[]).0),
            "bad-request"
        );
        let f = tempfile::new("extra");
        let detach = Request::Detach { vsic: 1, slot: 0 }.encode();
        assert_eq!(status(ask(&detach, &[f.as_fd()]).0), "bad-request");
        // Oversized message: refused, connection kept.
        assert_eq!(
            status(ask(&vec![b' '; MAX_MESSAGE + 10], &[]).0),
            "bad-request"
        );
        let (reply, nfds) = ask(&detach, &[]);
        assert_eq!((reply, nfds), (Reply::Detached, 0));
        drop(client_end);
        thread.join().unwrap();
    }

    fn busy(r: Result<Ticket, Refusal>) -> Refusal {
        match r {
            Err(r) if r.status == "busy" => r,
            other => panic!("expected busy, got {other:?}"),
        }
    }

    #[test]
    fn one_uid_cannot_take_every_connection() {
        let limits = Limits {
            per_uid: 3,
            total: 8,
            ..Limits::default()
        };
        let service = Service::with_limits(FakeAuthority::new(), 1 << 20, limits);
        let alice: Vec<Ticket> = (0..3).map(|_| service.admit(1001).unwrap()).collect();
        let r = busy(service.admit(1001));
        assert!(r.message.contains("uid 1001"), "{r}");
        // Others still get in, root too.
        let mut others: Vec<Ticket> = vec![service.admit(1002).unwrap()];
        let _root = service.admit(0).unwrap();
        // Many users together fill the total; root keeps its own allowance.
        for uid in 1003..1007 {
            others.push(service.admit(uid).unwrap());
        }
        busy(service.admit(1010));
        let _root2 = service.admit(0).unwrap();
        // Closed connections give their place back.
        drop(alice);
        let _again = service.admit(1001).unwrap();
    }

    /// Sends `message` every 50 ms until the service hangs up; returns how
    /// long that took (None: still open after 5 s).
    fn time_until_closed(
        limits: Limits,
        mut message: impl FnMut(usize) -> Vec<u8>,
    ) -> Option<Duration> {
        let service = Arc::new(Service::with_limits(FakeAuthority::new(), 1 << 20, limits));
        let (client_end, service_end) = socket::pair().unwrap();
        let s = Arc::clone(&service);
        let thread = std::thread::spawn(move || s.serve_connection(service_end));
        socket::set_timeouts(client_end.as_fd(), Some(Duration::from_secs(2))).unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut closed = None;
        for i in 0.. {
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
            if socket::send(client_end.as_fd(), &message(i), &[]).is_err() {
                closed = Some(start.elapsed());
                break;
            }
            match socket::recv(client_end.as_fd(), &mut buf) {
                Ok(Some(_)) => {}
                _ => {
                    closed = Some(start.elapsed());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(client_end);
        thread.join().unwrap();
        closed
    }

    #[test]
    fn malformed_or_refused_requests_do_not_keep_a_connection_open() {
        let limits = Limits {
            idle: Duration::from_millis(500),
            ..Limits::default()
        };
        // Garbage, and well-formed requests the service refuses.
        let refused = Request::Detach { vsic: 7, slot: 0 }.encode();
        let closed = time_until_closed(limits, |i| {
            if i % 2 == 0 {
                b"{{{".to_vec()
            } else {
                refused.clone()
            }
        });
        let after = closed.expect("a client sending only bad requests kept its connection 5 s");
        assert!(after < Duration::from_secs(2), "closed after {after:?}");
        // A client whose requests succeed stays as long as it is active.
        let good = Request::Detach { vsic: 1, slot: 0 }.encode();
        let mut n = 0;
        let closed = time_until_closed(limits, |_| {
            n += 1;
            if n <= 20 {
                good.clone()
            } else {
                b"{{{".to_vec()
            }
        });
        let after = closed.expect("closed once it only sent garbage");
        assert!(
            after > Duration::from_millis(1000),
            "an active client was closed after {after:?}"
        );
    }

    mod tempfile {
        use std::fs::File;
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// An unlinked read-write file.
        pub fn new(tag: &str) -> File {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "vsicctl-svc-tmp-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            f
        }
    }
}
