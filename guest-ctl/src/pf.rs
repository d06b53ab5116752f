//! Reaching the PF: over its vhost-user socket on the host, through
//! vsicd's management socket on the host (`mgmt`), or in a guest through
//! VFIO, finding it first and binding it to vfio-pci if the kernel driver
//! has it.

use std::path::PathBuf;

use vsic::admin::AdminClient;
use vsic::discovery::{self, Until};
use vsic::DmaSource;
use vsic_abi::virtio::Function;

use crate::failure::Failure;
use crate::functions::{Functions, VFIO_DRIVER};
use crate::lock::{ControlLock, LockError, LOCK_PATH, LOCK_TIMEOUT};
use crate::mgmt::MgmtExchange;

/// How the PF is reached.
#[derive(Debug, Clone)]
pub enum Route {
    VhostUser(PathBuf),
    /// vsicd's management socket on the host.
    Mgmt(PathBuf),
    Guest,
}

/// An open PF. In a guest it holds the control-plane lock: the PF's VFIO
/// group is ours until this is dropped.
pub struct Pf {
    pub client: AdminClient,
    _lock: Option<ControlLock>,
}

/// Takes the control-plane lock (guest only; the host needs none), ahead
/// of the service's requests for tenants.
pub fn lock(context: &str) -> Result<ControlLock, Failure> {
    ControlLock::acquire(LOCK_PATH.as_ref(), LOCK_TIMEOUT).map_err(|e| lock_failure(context, e))
}

/// Takes the control-plane lock for the service's request on a tenant's
/// behalf: after every administrator's command that waits for it.
pub fn tenant_lock(context: &str) -> Result<ControlLock, Failure> {
    ControlLock::acquire_for_tenant(LOCK_PATH.as_ref(), LOCK_TIMEOUT)
        .map_err(|e| lock_failure(context, e))
}

fn lock_failure(context: &str, e: LockError) -> Failure {
    match e {
        LockError::Busy(m) => Failure::local(context, "busy", m),
        // Typically not root: the control plane is root's.
        LockError::Unusable(m) => Failure::local(context, "permission", m),
    }
}

pub fn open(route: &Route) -> Result<Pf, Failure> {
    match route {
        Route::VhostUser(socket) => {
            let context = format!("connecting to the PF at {}", socket.display());
            let Some(path) = socket.to_str() else {
                return Err(Failure::usage(
                    context,
                    "the socket path is not valid UTF-8",
                ));
            };
            let client = AdminClient::open(&format!("vhost-user:{path}"))
                .map_err(|e| Failure::admin(context, e))?;
            Ok(Pf {
                client,
                _lock: None,
            })
        }
        Route::Mgmt(socket) => {
            let context = format!("connecting to the management socket {}", socket.display());
            let exchange = MgmtExchange::connect(socket).map_err(|e| Failure::admin(context, e))?;
            Ok(Pf {
                client: AdminClient::with_exchange(Box::new(exchange)),
                _lock: None,
            })
        }
        Route::Guest => {
            let lock = lock("opening the PF")?;
            let client = open_in_guest(&Functions::system())?;
            Ok(Pf {
                client,
                _lock: Some(lock),
            })
        }
    }
}

/// Finds the PF and opens it through VFIO. The caller holds the lock.
pub fn open_in_guest(funcs: &Functions) -> Result<AdminClient, Failure> {
    let context = "finding the PF";
    let addr = match funcs.locate_known(Function::Pf) {
        Some(addr) => addr,
        None => probe(funcs, Function::Pf)?.ok_or_else(|| {
            Failure::local(
                context,
                "no-pf",
                "no VSIC controller PF among this machine's PCI functions (a 1af4:1042 function \
                 with serial vsic-pf); on the host, pass --vhost-user PF_SOCKET (the PF socket of vsicd)",
            )
        })?,
    };
    let context = format!("taking the PF at {addr} through VFIO");
    if funcs.driver(&addr).as_deref() != Some(VFIO_DRIVER) {
        if let Some((disk, _)) = funcs.disk(&addr) {
            if let Some(why) = funcs.disk_in_use(&disk) {
                return Err(Failure::local(context, "pci", why));
            }
        }
        funcs
            .bind(&addr, VFIO_DRIVER)
            .map_err(|e| Failure::local_error(&context, "pci", e))?;
    }
    if let Err(e) = funcs.record(Function::Pf, &addr) {
        log::warn!("cannot update {}: {e}", funcs.map_path().display());
    }
    AdminClient::open(&format!("pci:{addr}")).map_err(|e| Failure::admin(context, e))
}

/// Asks every unnamed vfio-pci function who it is (GET_ID), records the
/// answers, and returns the address of `wanted` if one of them is it.
/// Functions whose group another process holds are skipped.
pub fn probe(funcs: &Functions, wanted: Function) -> Result<Option<String>, Failure> {
    let candidates: Vec<String> = funcs
        .unnamed_vfio_functions()
        .into_iter()
        .filter(|addr| {
            let in_use = funcs.group_in_use(addr).unwrap_or(true);
            if in_use {
                log::debug!("{addr}: VFIO group in use, not asked");
            }
            !in_use
        })
        .collect();
    let probe = discovery::probe(&candidates, wanted, &DmaSource::default(), Until::AllAsked);
    for (addr, answer) in &probe.answers {
        match answer {
            Ok(Some(function)) => {
                if let Err(e) = funcs.record(*function, addr) {
                    log::warn!("cannot update {}: {e}", funcs.map_path().display());
                }
            }
            Ok(None) => log::debug!("{addr} does not name itself as a VSIC function"),
            Err(e) => log::debug!("{addr}: cannot ask for its identity: {e}"),
        }
    }
    Ok(probe.address)
}

/// The address of VSIC `n`: known from a serial or the map, or found by
/// asking the unnamed vfio-pci functions. The caller holds the lock.
pub fn locate_vsic(funcs: &Functions, n: u32) -> Result<String, Failure> {
    let function = Function::Vsic(n);
    if let Some(addr) = funcs.locate_known(function) {
        return Ok(addr);
    }
    probe(funcs, function)?.ok_or_else(|| {
        Failure::local(
            format!("finding VSIC {n}"),
            "no-such-vsic",
            format!(
                "no PCI function serves VSIC {n} (no virtio_blk serial vsic-vsic{n}, not in {}, \
                 and no free vfio-pci function answers to it)",
                funcs.map_path().display()
            ),
        )
    })
}
