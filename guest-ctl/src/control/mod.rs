//! The control-plane service protocol: requests from applications to the
//! privileged control plane over a Unix `SOCK_SEQPACKET` socket.
//!
//! One datagram per request and per reply, each a small JSON object
//! ([`message`]). File descriptors travel beside them as `SCM_RIGHTS`: the
//! capability file an attach request proves access to, the huge-page file a
//! DMA reply hands out ([`socket`]). Who is asking comes from the kernel
//! (`SO_PEERCRED`), never from the message. [`service`] holds the policy,
//! independent of how the device is reached; [`client`] is the
//! application side.

pub mod client;
pub mod message;
pub mod service;
pub mod socket;

pub use client::{ControlClient, ControlError};
pub use message::{Refusal, Reply, Request};

/// Where `vsicctl serve` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vsic/control.sock";
