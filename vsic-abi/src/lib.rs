//! The wire ABI of the VSIC storage controller.
//!
//! This crate is the only definition of every byte layout that crosses the
//! device boundary: virtio-blk constants the device relies on, the admin
//! command and completion, capability tokens, and the records returned by
//! identify, list and statistics commands. Both the device backend and the
//! guest side (library and control tool) use it; `docs/device-spec.md`
//! describes the same layouts in prose.
//!
//! Every fixed layout is declared once, as a `#[repr(C)]` struct of
//! little-endian fields (see [`layout`]); the public types are their decoded
//! views. All integers are little-endian. Decoders never panic: every
//! malformed input is reported as a [`DecodeError`].

pub mod admin;
pub mod cap;
pub mod hex;
pub mod layout;
pub mod records;
pub mod units;
pub mod virtio;
pub mod window;
mod wire;

pub use admin::{AdminCommand, AdminCompletion, AdminStatus, Opcode};
pub use cap::{CapToken, Rights};
pub use wire::DecodeError;
