//! The control-plane service: requests from applications to the
//! privileged control plane over a Unix `SOCK_SEQPACKET` socket.
//!
//! The protocol and the application side ([`message`], [`socket`],
//! [`client`]) live in the `vsic` library, which speaks it too (it
//! registers DMA memory it allocated itself); they are re-exported here.
//! [`service`] holds the policy, independent of how the device is reached.

pub mod service;

pub use vsic::control::{client, message, socket};
pub use vsic::control::{ControlClient, ControlError, Refusal, Reply, Request, DEFAULT_SOCKET};
