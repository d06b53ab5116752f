//! Library side of `vsicctl`: what an unprivileged application needs to
//! reach the control-plane service that `vsicctl serve` runs in the guest.
//!
//! An application that owns a VSIC (its `/dev/vfio/G` was handed to it with
//! `vsicctl vsic bind --vfio --user U`) asks the service to attach a VSA it
//! holds a capability file for, and receives pinned DMA memory to open its
//! VSIC with (unprivileged processes cannot look up guest-physical
//! addresses themselves):
//!
//! ```no_run
//! use std::fs::File;
//! use vsicctl::control::{ControlClient, DEFAULT_SOCKET};
//!
//! let control = ControlClient::connect(DEFAULT_SOCKET.as_ref())?;
//! control.attach(0, 1, &File::open("/home/alice/data.cap")?, false)?;
//! let opts = vsic::OpenOptions { dma: control.dma_source(4 << 20)?, ..Default::default() };
//! let dev = vsic::Device::open("vsic:0", &opts)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod control;
