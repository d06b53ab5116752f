//! `vsicd`: the emulated VSIC storage controller.
//!
//! `controller` is the device model (drives, extents, VSAs, VSIC slots,
//! capabilities, QoS, statistics, persisted metadata) and knows nothing of
//! vhost-user. `front` is the vhost-user glue: one socket per PCI function,
//! virtio-blk request parsing, and moving data between guest memory and the
//! controller. The one seam between them is `controller::target`: the front
//! calls the model only through its `Target` trait. `mgmt` is the host's
//! management socket (JSON commands in QMP's shape), calling the model
//! directly. `workbench` wraps the model for the front with fault
//! injection and request traces, which the management socket scripts.

pub mod controller;
pub mod front;
pub mod mgmt;
pub mod workbench;
