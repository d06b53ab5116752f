//! The application side of the control-plane service: requests from
//! applications to the privileged control plane (`vsicctl serve`) over a
//! Unix `SOCK_SEQPACKET` socket. The service itself (the policy) lives in
//! `vsicctl`; the protocol is here because the library speaks it too: it
//! registers DMA memory it allocated itself ([`register`]).
//!
//! One datagram per request and per reply, each a small JSON object
//! ([`message`]). File descriptors travel beside them as `SCM_RIGHTS`: the
//! capability file an attach request proves access to, the huge-page file a
//! DMA reply hands out ([`socket`]). Who is asking comes from the kernel
//! (`SO_PEERCRED`), never from the message. [`client`] is the application
//! side.

pub mod client;
pub mod message;
pub mod register;
pub mod socket;

pub use client::{ControlClient, ControlError};
pub use message::{Refusal, Reply, Request};

/// Where `vsicctl serve` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vsic/control.sock";
