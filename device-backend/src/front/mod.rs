//! The vhost-user front: one vhost-user-blk device per PCI function, all
//! served by this process, one socket each.
//!
//! * [`server`]: sockets, accepting frontends, reconnects, clean shutdown.
//! * [`backend`]: the `VhostUserBackend` of a function: features, config
//!   space, one worker thread per queue.
//! * [`poll`]: polling a queue's ring for a while before sleeping.
//! * [`notify_watch`]: serving requests whose queue notification got lost.
//! * [`request`]: pure parsing of virtio-blk descriptor chains.
//! * [`execute`]: running a parsed request against the device, status and
//!   used length.
//! * [`channel`]: configuration-change notifications to frontends.
//! * [`config_space`]: advertised features, limits and config layout.
//!
//! The front reaches the model only through
//! [`crate::controller::target::Target`].

pub mod backend;
pub mod channel;
pub mod config_space;
pub mod execute;
pub mod notify_watch;
pub mod poll;
pub mod request;
pub mod server;

pub use server::{Front, FrontConfig};

#[cfg(test)]
mod tests;
