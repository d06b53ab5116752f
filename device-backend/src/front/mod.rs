//! The vhost-user front: one vhost-user-blk device per PCI function, all
//! served by this process, one socket each.
//!
//! * [`server`]: sockets, accepting frontends, reconnects, clean shutdown.
//! * [`backend`]: the `VhostUserBackend` of a function: features, config
//!   space, sessions, one worker thread per queue.
//! * [`worker`]: a queue worker's loop: batches, QoS waits, interrupts.
//! * [`poll`]: polling a queue's ring for a while before sleeping.
//! * [`completions`]: completions the drive timing model scheduled.
//! * [`chain`]: a descriptor chain in guest memory: walking it, its two
//!   byte streams, reading and writing them.
//! * [`request`]: pure parsing of a chain into a virtio-blk request.
//! * [`execute`]: running a parsed request against the device, status and
//!   used length.
//! * [`channel`]: configuration-change notifications to frontends.
//!
//! Workarounds for peers' bugs, one module each, each switchable
//! ([`Workarounds`]):
//! * [`lost_kick_watch`]: serving requests whose kick QEMU's TCG lost.
//! * [`exit_event_leak`]: closing the exit events vhost-user-backend
//!   abandons.
//! * [`backend_socket_takeover`]: taking the backend-request socket out of
//!   vhost's `Backend` to send configuration changes.
//! * [`config_space`]: advertised features, limits and config layout.
//!
//! The front reaches the model only through
//! [`crate::controller::target::Target`].

pub mod backend;
pub mod backend_socket_takeover;
pub mod chain;
pub mod channel;
pub mod completions;
pub mod config_space;
pub mod execute;
pub mod exit_event_leak;
pub mod lost_kick_watch;
pub mod poll;
pub mod request;
pub mod server;
pub mod worker;

pub use server::{Front, FrontConfig, Workarounds};

#[cfg(test)]
mod tests;
