//! Arbitrary bytes as a RESP request stream (`vsic_kv::resp::parse` from
//! the front, again and again, as the server reads a connection): no
//! panic; a request takes at least one byte and no more than it was given;
//! it is recognised only once all of its bytes are there (every shorter
//! prefix asks for more), and exactly as it is with nothing after it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../apps/test-support/resp_check.rs"]
mod resp_check;

fuzz_target!(|data: &[u8]| {
    resp_check::parse_stream(data);
});
