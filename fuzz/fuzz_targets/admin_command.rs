//! Feeds arbitrary admin commands and payloads to a live controller.
//!
//! Input: byte 0 = command length (mod 81, so truncated and oversized
//! commands happen), bytes 1..3 = response capacity, then the command, then
//! the payload. The controller runs on a small drive in /dev/shm (or the
//! temp dir) so that state-changing commands really commit metadata.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vsic_abi::records::CacheMode;
use vsicd::controller::{AdminTarget, Controller, ControllerConfig, DriveSpec};

fn controller() -> &'static Arc<Controller> {
    static CONTROLLER: OnceLock<Arc<Controller>> = OnceLock::new();
    CONTROLLER.get_or_init(|| {
        let drive = scratch::image_path("admin");
        let _ = std::fs::remove_file(&drive);
        let config = ControllerConfig {
            drives: vec![DriveSpec { path: drive, size: Some(64 << 20) }],
            vsics: 2,
            queues_per_vsic: 1,
            extent_size: 1 << 20,
            cache_mode: CacheMode::WriteBack,
            service_model: None,
            volatile_cache: None,
        };
        Controller::open(config).expect("open fuzz controller")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let cmd_len = (data[0] as usize) % 81;
    let capacity = u16::from_le_bytes([data[1], data[2]]) as usize * 16;
    let rest = &data[3..];
    let cmd_len = cmd_len.min(rest.len());
    let (command, payload) = rest.split_at(cmd_len);
    let reply = controller().admin(command, payload, capacity);
    assert!(reply.payload.len() <= capacity, "reply larger than the response buffer");
    assert_eq!(reply.completion.payload_len as usize, reply.payload.len());
});
