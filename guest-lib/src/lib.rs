//! `vsic`: the user-level driver for VSIC storage controller functions.
//!
//! An application opens its VSIC function, registers DMA memory, and drives
//! the function's request queues itself: no system call per I/O in polling
//! mode, one eventfd per queue in interrupt mode.
//!
//! ```no_run
//! use vsic::{Device, OpenOptions, Request, VsaHandle, VsaRange};
//!
//! let dev = Device::open("vhost-user:/run/vsic/vsic0.sock", &OpenOptions::default())?;
//! let vsa = VsaHandle::new(0);
//! let mut buf = dev.alloc_dma(4096)?;
//! buf.as_mut_slice().fill(0xab);
//! dev.submit(0, Request::write(vsa, &[buf.mem()], &[VsaRange::new(0, 4096)]), 1)?;
//! dev.wait(0, None)?;
//! dev.poll(0, &mut |c| assert_eq!(c.result, Ok(())));
//! # Ok::<(), vsic::Error>(())
//! ```
//!
//! The same program runs on the host against a vhost-user socket
//! (`vhost-user:PATH`) and in a guest against a function it owns through
//! VFIO (`vsic:N` or a PCI address; see [`discovery`] and [`transport::vfio`]).
//!
//! Layers, bottom up: [`transport`] (how the device is reached: vhost-user
//! or virtio-pci over VFIO), [`dma`] (shared memory; [`hugepage`] pins it in
//! a guest), [`virtqueue`] (split rings), [`blk`] (virtio-blk requests),
//! [`device`] (the public driver), [`discovery`] (opening a function by
//! name: `vhost-user:PATH`, `vsic:N`, a PCI address).

pub mod admin;
pub mod blk;
pub mod control;
pub mod device;
pub mod discovery;
pub mod dma;
pub mod error;
pub mod hugepage;
pub mod hybrid;
mod mapping;
pub mod transport;
pub mod virtqueue;

pub use blk::{Limits, Request, VsaHandle, VsaRange};
pub use device::{Completion, CompletionMode, Device, OpenOptions, RawReply};
pub use dma::{DmaBuffer, MemRange};
pub use error::{Error, IoStatus};
pub use hugepage::{DmaSource, PageLocator, ProvidedDma};
