//! The block device tests may destroy: named by `$VSICD_TEST_BLOCK_DEVICE`
//! (ci/test.sh sets up a loop device and exports it). Outside CI a test
//! without one is skipped (and says so); under CI (`$CI` set and not
//! "false" or "0") a missing device fails the test, so that it can never
//! pass without having run. The controller's unit tests include this file
//! by path, so it uses std only.

use std::path::PathBuf;

/// Environment variable naming the block device.
pub const BLOCK_DEVICE_VAR: &str = "VSICD_TEST_BLOCK_DEVICE";

/// The device to test on, or `None` (after a note on stderr) when the test
/// should be skipped. Panics when running under CI without a device.
pub fn test_block_device() -> Option<PathBuf> {
    if let Some(dev) = std::env::var_os(BLOCK_DEVICE_VAR).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dev));
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !in_ci,
        "CI is set but {BLOCK_DEVICE_VAR} is not: ci/test.sh sets up a loop device and names it there"
    );
    eprintln!(
        "skipped: set {BLOCK_DEVICE_VAR}=/dev/loopN (its contents are destroyed) to run this test"
    );
    None
}

/// Zeroes the first MiB of `dev`, so that vsicd sees a blank drive and
/// formats it (it never formats a drive holding anything else).
pub fn wipe_start(dev: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {}: {e}", dev.display()));
    f.write_all(&vec![0u8; 1 << 20])
        .expect("wipe the device's first MiB");
    f.sync_all().expect("sync the wiped device");
}
