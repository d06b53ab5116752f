//! The vhost-user front: one vhost-user-blk device per PCI function.
//!
//! * [`config_space`]: features and the virtio-blk configuration space.
//! * [`request`]: pure parsing of descriptor chains.
//! * [`execute`]: running a parsed request against the [`device::Device`].
//! * [`device`]: the controller operations the front needs, as a trait.

pub mod config_space;
pub mod device;
pub mod execute;
pub mod request;

#[cfg(test)]
mod tests;
