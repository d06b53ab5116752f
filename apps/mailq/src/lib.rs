//! `vsic-mailq`: a persistent mail queue on a VSA (or a file) with an SMTP
//! receiver in front. See docs/vsic-mailq.md for the layout.
//!
//! * [`layout`]: the bytes on the device, declared once.
//! * [`queue`]: formatting, recovery, per-worker slot sets, durable writes.
//! * [`maildir`]: the kernel-path baseline, one file per message.
//! * [`server`]: the group commit, and the thread-per-session receiver
//!   (the Maildir baseline's front).
//! * [`evloop`]: the slot queue's receiver, one thread, epoll ([`poller`]).
//! * [`smtp`]: one SMTP session, a state machine both receivers run.
//! * [`client`], [`bench`]: an SMTP client, and a load generator on it.
//! * [`send`]: a client that reports each message acknowledged (crash tests).
//! * [`stats`]: the receiver's per-message store latencies (XSTATS).

pub mod bench;
pub mod client;
pub mod evloop;
pub mod layout;
pub mod maildir;
pub mod poller;
pub mod queue;
pub mod send;
pub mod server;
pub mod smtp;
pub mod stats;

pub use layout::Envelope;
pub use maildir::{Maildir, MaildirError};
pub use queue::{Entry, Message, Queue, QueueError};
pub use server::{serve, serve_store, ServeOptions, Store};

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `data` (what `list --json` prints per message).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
