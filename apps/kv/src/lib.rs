//! vsic-kv: a persistent, log-structured key-value store on a VSA (or a
//! file) that speaks the Redis protocol. Every update is durable before it
//! is answered. The on-device layout is in [`layout`] and docs/vsic-kv.md.

pub mod engine;
pub mod index;
pub mod layout;
pub mod resp;
pub mod server;

pub use engine::{
    CmdError, CompactReport, Engine, KvError, Reply, SetCond, Stats, Store, StoreOptions, WriteCmd,
};

/// The value `put-seq` stores under `k<i>` (and `verify-seq` expects):
/// derived from the key, of varying length; every 50th is larger than a
/// block, so the sequence exercises multi-block records.
pub fn seq_value(i: u64) -> Vec<u8> {
    let len = if i % 50 == 7 {
        5000 + (i % 3000) as usize
    } else {
        16 + (i.wrapping_mul(37) % 200) as usize
    };
    let unit = format!("v{i}.");
    unit.as_bytes().iter().copied().cycle().take(len).collect()
}
