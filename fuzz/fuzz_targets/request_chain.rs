//! Feeds arbitrary descriptor chains and guest memory to the virtio-blk
//! request parser (layout: `vsicd::front::request::parse_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vsicd::front::request::parse_bytes(data);
});
