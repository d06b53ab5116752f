//! End-to-end harness: the real `vsicd` binary on scratch drive files
//! ([`daemon`]), and the `vsic` library talking to its sockets. Every wait
//! is bounded.

#![allow(dead_code, unused_imports)] // each test file uses a different part of the harness

mod block_device;
mod daemon;
mod mgmt;
mod raw_driver;
mod rng;

use std::time::{Duration, Instant};

use vsic::admin::AdminClient;
use vsic::{CompletionMode, Device, DmaBuffer, OpenOptions};
use vsic_abi::records::{QueueStats, VsicStats};

pub use block_device::{test_block_device, wipe_start};
pub use daemon::{Daemon, ScratchDir, Setup};
pub use mgmt::MgmtClient;
pub use raw_driver::{writable, Done, RawDriver, Sent};
pub use rng::Rng;

pub const MIB: u64 = 1 << 20;
/// How long a test waits for any single device interaction.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the vsic clients of these tests add to the daemon.
impl Daemon {
    /// An admin client on the PF.
    pub fn admin(&self) -> AdminClient {
        AdminClient::open(&self.pf_spec())
            .unwrap_or_else(|e| panic!("open the PF: {e}; log:\n{}", self.log()))
    }

    /// Opens VSIC `vsic` with `queues` queues in `mode`.
    pub fn open_vsic(&self, vsic: u32, queues: u16, mode: CompletionMode) -> Device {
        Device::open(&self.vsic_spec(vsic), &vsic_options(queues, mode))
            .unwrap_or_else(|e| panic!("open VSIC {vsic}: {e}; log:\n{}", self.log()))
    }
}

/// Options every test uses to open a VSIC: bounded waits, modest memory.
pub fn vsic_options(queues: u16, mode: CompletionMode) -> OpenOptions {
    OpenOptions {
        queues: Some(queues),
        mem_size: 16 << 20,
        mode,
        queue_size: 128,
        sync_timeout: Some(IO_TIMEOUT),
        ..OpenOptions::default()
    }
}

/// Deterministic, seed-dependent bytes (xorshift64*), so every block of
/// every test has content of its own.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A DMA buffer holding `pattern(seed, len)`.
pub fn filled(dev: &Device, seed: u64, len: usize) -> DmaBuffer {
    let mut buf = dev.alloc_dma(len).expect("alloc DMA buffer");
    buf.as_mut_slice().copy_from_slice(&pattern(seed, len));
    buf
}

/// Reads `len` bytes at `offset` of the VSA in `slot` through queue 0.
pub fn read_back(dev: &Device, slot: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = dev.alloc_dma(len).expect("alloc DMA buffer");
    buf.as_mut_slice().fill(0xee);
    dev.read_at(0, vsic::VsaHandle::new(slot), offset, &mut buf)
        .unwrap_or_else(|e| panic!("read slot {slot} at {offset:#x}+{len}: {e}"));
    buf.as_slice().to_vec()
}

/// Asserts equal buffers, reporting the first differing byte rather than
/// dumping megabytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}

/// One VSIC's counters.
pub fn stats_of(admin: &AdminClient, vsic: u32) -> (VsicStats, Vec<QueueStats>) {
    let mut all = admin.stats(Some(vsic)).expect("stats");
    assert_eq!(all.len(), 1, "stats for one VSIC");
    all.remove(0)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for an eventfd to become readable; true if it did in time.
pub fn eventfd_fired(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return pfd.revents & libc::POLLIN != 0;
        }
        if r == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Collects `count` completions from `queue`, waiting at most [`IO_TIMEOUT`]
/// in total.
pub fn collect(dev: &Device, queue: u16, count: usize) -> Vec<vsic::Completion> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut done = Vec::with_capacity(count);
    while done.len() < count {
        dev.poll(queue, &mut |c| done.push(c));
        if done.len() >= count {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "queue {queue}: {} of {count} completions within {IO_TIMEOUT:?}",
            done.len()
        );
        match dev.wait(queue, Some(left)) {
            Ok(()) | Err(vsic::Error::Timeout) => {}
            Err(e) => panic!("queue {queue}: wait: {e}"),
        }
    }
    done
}

/// Submits one request and waits for its completion.
pub fn run_one(dev: &Device, queue: u16, req: vsic::Request<'_>) -> Result<(), vsic::IoStatus> {
    dev.submit(queue, req, 0x5eed)
        .unwrap_or_else(|e| panic!("submit on queue {queue}: {e}"));
    let done = collect(dev, queue, 1);
    assert_eq!(done[0].user_data, 0x5eed);
    done[0].result
}

/// Empties an eventfd that may or may not have fired.
pub fn drain_eventfd(fd: std::os::fd::RawFd) {
    while eventfd_fired(fd, Duration::ZERO) {
        let mut v = [0u8; 8];
        // SAFETY: reads 8 bytes into a local buffer from a readable eventfd.
        if unsafe { libc::read(fd, v.as_mut_ptr().cast(), v.len()) } != 8 {
            return;
        }
    }
}
