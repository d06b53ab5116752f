//! Finding and opening a controller function by name: the one
//! implementation of `vsic:N` resolution, used by [`Device::open`] and by
//! `vsicctl`.
//!
//! A name is resolved without touching devices where possible (the
//! function map and the virtio_blk serials, see [`crate::transport::pci`]);
//! otherwise the unclaimed functions bound to vfio-pci are opened briefly
//! and asked for their GET_ID serial ([`ask_identity`], [`probe`]).
//!
//! Layering: this module sits above [`crate::device`] and the transports;
//! neither of them imports it.

use std::time::Duration;

use vsic_abi::virtio::{
    function_from_serial, Function, SERIAL_LEN, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID,
};

use crate::device::{CompletionMode, Device, OpenOptions};
use crate::error::Error;
use crate::hugepage::{self, DmaSource};
use crate::transport::pci::{self, Located, Sysfs};
use crate::transport::vfio::{VfioConfig, VfioTransport, NO_MMAP_ENV};
use crate::transport::vhost_user::VhostUserTransport;

impl Device {
    /// Opens a function. `spec` is `vhost-user:PATH` (a vhost-user socket),
    /// or, for the VFIO transport in a guest, `vsic:N` / `vsic:pf` (found
    /// as [`crate::transport::pci`] describes) or a PCI address
    /// (`0000:00:03.0`, `pci:0000:00:03.0`) of a function bound to vfio-pci.
    pub fn open(spec: &str, opts: &OpenOptions) -> Result<Device, Error> {
        if let Some(path) = spec.strip_prefix("vhost-user:") {
            if path.is_empty() {
                return Err(Error::BadSpec("vhost-user: needs a socket path".into()));
            }
            let transport = VhostUserTransport::connect(path, opts.mem_size, opts.sync_timeout)?;
            return Device::with_transport(Box::new(transport), opts);
        }
        if spec.starts_with("vsic:") || spec.starts_with("pci:") || looks_like_pci_address(spec) {
            return open_vfio(spec, opts);
        }
        Err(Error::BadSpec(format!(
            "{spec:?}: expected vhost-user:PATH, vsic:N or a PCI address like 0000:00:03.0"
        )))
    }
}

/// What the VFIO transport needs from [`OpenOptions`].
pub fn vfio_config(opts: &OpenOptions) -> VfioConfig {
    VfioConfig {
        mem_size: opts.mem_size,
        dma: opts.dma.clone(),
        need_interrupts: opts.mode != CompletionMode::Polling,
        mmap_bars: std::env::var_os(NO_MMAP_ENV).is_none(),
        register_dma: true,
    }
}

/// Opens the function `spec` names (`vsic:N`, `vsic:pf`, `pci:ADDR` or a
/// PCI address) over VFIO and drives it as a [`Device`].
pub fn open_vfio(spec: &str, opts: &OpenOptions) -> Result<Device, Error> {
    let address = resolve(spec, &opts.dma)?;
    let transport = VfioTransport::open(&address, &vfio_config(opts))?;
    Device::with_transport(Box::new(transport), opts)
}

/// The PCI address of the function `spec` names. Functions that must be
/// asked get DMA memory from `dma`.
pub fn resolve(spec: &str, dma: &DmaSource) -> Result<String, Error> {
    if let Some(addr) = pci::parse_address(spec) {
        return Ok(addr);
    }
    let function = pci::parse_vsic_spec(spec).ok_or_else(|| {
        Error::BadSpec(format!(
            "{spec:?}: expected vsic:N, vsic:pf or a PCI address"
        ))
    })?;
    let sys = Sysfs::default();
    let (map_path, map) = pci::read_function_map();
    match pci::locate(function, &map, &sys) {
        Located::At(addr) => Ok(addr),
        Located::Probe(candidates) => {
            let found = probe(&candidates, function, dma, Until::Found);
            if let Some(addr) = found.address {
                return Ok(addr);
            }
            let asked: Vec<String> = found
                .answers
                .iter()
                .map(|(addr, answer)| match answer {
                    Ok(Some(f)) => format!("{addr} is {f:?}"),
                    Ok(None) => format!("{addr} has no VSIC serial"),
                    Err(e) => format!("{addr} could not be asked ({e})"),
                })
                .collect();
            Err(Error::Connect {
                path: spec.to_string(),
                reason: format!(
                    "not in {} and no function serves it (virtio_blk serials checked; \
                     vfio-pci functions: {})",
                    map_path.display(),
                    if asked.is_empty() {
                        "none".to_string()
                    } else {
                        asked.join("; ")
                    }
                ),
            })
        }
    }
}

/// How far [`probe`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Stop at the first function that is the one wanted.
    Found,
    /// Ask every candidate (to learn all their names).
    AllAsked,
}

/// What [`probe`] learnt.
#[derive(Debug)]
pub struct Probe {
    /// The address of the function wanted, if one of the candidates is it.
    pub address: Option<String>,
    /// Each candidate asked, with its answer: the function its serial
    /// names, `None` for no VSIC serial, or why it could not be asked.
    pub answers: Vec<(String, Result<Option<Function>, Error>)>,
}

/// Asks the vfio-pci functions at `candidates`, in order, which function
/// each is ([`ask_identity`]), looking for `wanted`.
pub fn probe(candidates: &[String], wanted: Function, dma: &DmaSource, until: Until) -> Probe {
    let mut out = Probe {
        address: None,
        answers: Vec::with_capacity(candidates.len()),
    };
    for addr in candidates {
        let answer = ask_identity(addr, dma);
        let is_wanted = matches!(answer, Ok(Some(f)) if f == wanted);
        out.answers.push((addr.clone(), answer));
        if is_wanted && out.address.is_none() {
            out.address = Some(addr.clone());
            if until == Until::Found {
                break;
            }
        }
    }
    out
}

/// Opens the vfio-pci function at `addr` briefly (one polled queue, one
/// huge page of DMA memory from `dma`) and asks which function it is: its
/// GET_ID serial, `None` when that names no VSIC function.
pub fn ask_identity(addr: &str, dma: &DmaSource) -> Result<Option<Function>, Error> {
    let opts = OpenOptions {
        queues: Some(1),
        mem_size: hugepage::HUGE_PAGE_SIZE,
        mode: CompletionMode::Polling,
        queue_size: 16,
        sync_timeout: Some(Duration::from_secs(5)),
        dma: dma.clone(),
    };
    // Asking is done for the control plane too, which may hold the lock the
    // service needs: no registration (a function to identify is not in the
    // function map anyway).
    let config = VfioConfig {
        register_dma: false,
        ..vfio_config(&opts)
    };
    let transport = VfioTransport::open(addr, &config)?;
    let dev = Device::with_transport(Box::new(transport), &opts)?;
    let reply = dev.raw_request(0, VIRTIO_BLK_T_GET_ID, 0, &[], &[SERIAL_LEN])?;
    if reply.status != VIRTIO_BLK_S_OK {
        return Ok(None);
    }
    Ok(reply.ins.first().and_then(|s| function_from_serial(s)))
}

/// `DDDD:BB:DD.F` or `BB:DD.F`.
fn looks_like_pci_address(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    let (bus, devfn) = match parts.as_slice() {
        [dom, bus, devfn] if hex(dom, 4) => (*bus, *devfn),
        [bus, devfn] => (*bus, *devfn),
        _ => return false,
    };
    match devfn.split_once('.') {
        Some((dev, func)) => hex(bus, 2) && hex(dev, 2) && hex(func, 1),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let opts = OpenOptions::default();
        // VFIO names reach the VFIO transport, which finds no such function
        // here (or no VFIO at all) and says which.
        for spec in ["vsic:0", "0000:1f:1f.7", "1f:1f.7", "pci:0000:1f:1f.7"] {
            match Device::open(spec, &opts) {
                Err(e @ Error::Connect { .. }) => {
                    assert!(
                        e.to_string().contains(spec.trim_start_matches("pci:")),
                        "{e}"
                    )
                }
                other => panic!("{spec}: {:?}", other.err()),
            }
        }
        assert!(matches!(
            Device::open("nonsense", &opts),
            Err(Error::BadSpec(_))
        ));
        assert!(matches!(
            Device::open("vhost-user:", &opts),
            Err(Error::BadSpec(_))
        ));
        match Device::open("vhost-user:/nonexistent/x.sock", &opts) {
            Err(e @ Error::Connect { .. }) => {
                assert!(e.to_string().contains("/nonexistent/x.sock"))
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn pci_address_shapes() {
        assert!(looks_like_pci_address("0000:00:03.0"));
        assert!(looks_like_pci_address("00:1f.7"));
        assert!(!looks_like_pci_address("00:1f"));
        assert!(!looks_like_pci_address("/tmp/a:b.c"));
    }
}
