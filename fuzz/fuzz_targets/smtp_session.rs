//! Arbitrary bytes as what an SMTP client sends, through the session's
//! state machine (`vsic_mailq::smtp::Session`) the way the server drives
//! it: fed in pieces, every message stored at once.
//!
//! Input: byte 0 chooses the piece size (bits 0-5: 1 to 64 bytes) and the
//! message size limit (bit 6: 16 bytes, so DATA overflows; else the
//! default); the rest is the dialogue. Nothing may panic; the session never
//! waits for a store it did not hand out; it always comes back asking for
//! input or quits, within a bounded number of steps; every reply line is a
//! code from 2xx to 5xx, a space or a dash, text, CRLF; no message stored
//! is over the limit, nor are more stored than DATA commands were sent;
//! and the replies are bounded by the lines sent.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vsic_mailq::server::ServeOptions;

#[path = "../../apps/test-support/smtp_check.rs"]
mod smtp_check;

fuzz_target!(|data: &[u8]| {
    let Some((&head, input)) = data.split_first() else {
        return;
    };
    let piece = 1 + usize::from(head & 0x3f);
    let opts = Arc::new(if head & 0x40 != 0 {
        ServeOptions {
            max_size: 16,
            ..ServeOptions::default()
        }
    } else {
        ServeOptions::default()
    });
    let (stored, out) = smtp_check::drive(&opts, input, || piece);
    smtp_check::check(input, stored, &out);
});
