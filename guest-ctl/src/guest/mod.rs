//! The commands that only make sense inside the guest, one job per module:
//!
//! - [`bind`]: listing the controller's functions and handing VSICs to
//!   drivers and users (`vsic list|bind|unbind`);
//! - [`handover`]: what happens to a function that changes hands (in-use
//!   checks, the VFIO group node, emptying its slots when it leaves a user);
//! - [`store`]: the capability store (`store init|mount`);
//! - [`serve`]: the control-plane service (`serve`);
//! - [`request`]: its client (`request attach|detach`).

mod bind;
pub(crate) mod handover;
mod request;
mod serve;
mod store;

pub use bind::{bind, functions, unbind};
pub use request::{request_attach, request_detach};
pub use serve::serve;
pub use store::{store_init, store_mount};
