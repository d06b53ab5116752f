//! vsic-check: an application on its own VSIC. Writes a seeded pattern to
//! a VSA through the `vsic` library, reads it back and verifies it, using
//! every queue of the function at once and interrupt completions.
//!
//! An unprivileged user gets the DMA memory from the control-plane service
//! (`vsicctl serve`); root may allocate its own.
//!
//! Exit status: 0 all data verified; 1 setup or usage problem; 2 data read
//! back differs; 3 the device refused or failed an I/O request (detached
//! or revoked VSA, read-only attachment, out of bounds).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use vsic::{CompletionMode, Device, DmaBuffer, OpenOptions, Request, VsaHandle, VsaRange};
use vsicctl::control::{ControlClient, DEFAULT_SOCKET};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Write the pattern over the range, then flush.
    Write,
    /// Read the range and compare it with the pattern.
    Verify,
    /// Write and verify rounds (the seed changes every round) until
    /// --seconds pass or --rounds are done.
    Loop,
    /// Print the pattern bytes on stdout; no device.
    Pattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DmaFrom {
    /// Pinned memory from the control-plane service.
    Control,
    /// Huge pages of our own (needs CAP_SYS_ADMIN).
    Own,
}

#[derive(Debug, Parser)]
#[command(name = "vsic-check")]
struct Args {
    mode: Mode,
    /// The VSIC: vsic:N, a PCI address, or vhost-user:PATH. Not needed for
    /// `pattern`.
    spec: Option<String>,
    /// Attachment slot of the VSA.
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// Start of the range in the VSA (bytes, a multiple of 512).
    #[arg(long, default_value = "0", value_parser = size)]
    offset: u64,
    /// Length of the range (bytes, a multiple of 512).
    #[arg(long, default_value = "1M", value_parser = size)]
    len: u64,
    /// Bytes per request.
    #[arg(long, default_value = "64K", value_parser = size)]
    block: u64,
    /// Pattern seed (loop adds the round number).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loop: stop after this long.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Loop: stop after this many rounds (0 = only --seconds).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// Queues to use (default: every queue of the function).
    #[arg(long)]
    queues: Option<u16>,
    /// Where DMA memory comes from (default: own as root, control otherwise).
    #[arg(long, value_enum)]
    dma: Option<DmaFrom>,
    /// Bytes of DMA memory.
    #[arg(long, default_value = "2M", value_parser = size)]
    dma_size: u64,
    /// The control-plane service socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    control: PathBuf,
    /// Spin on the used rings instead of sleeping on interrupts.
    #[arg(long)]
    polling: bool,
}

fn size(s: &str) -> Result<u64, vsic_abi::units::UnitError> {
    vsic_abi::units::parse_size(s)
}

/// Why a run failed, and its exit status.
enum Failed {
    Setup(String),
    Mismatch(String),
    Refused(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = run(&args);
    match result {
        Ok(summary) => {
            if !summary.is_empty() {
                println!("vsic-check: {summary}");
            }
            ExitCode::SUCCESS
        }
        Err(Failed::Setup(m)) => {
            eprintln!("vsic-check: {m}");
            ExitCode::from(1)
        }
        Err(Failed::Mismatch(m)) => {
            eprintln!("vsic-check: data mismatch: {m}");
            ExitCode::from(2)
        }
        Err(Failed::Refused(m)) => {
            eprintln!("vsic-check: {m}");
            ExitCode::from(3)
        }
    }
}

/// The pattern's 8-byte word at VSA byte offset `at` (a multiple of 8).
fn word(seed: u64, at: u64) -> u64 {
    // splitmix64 of (seed, offset): cheap, and no two words alike.
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(at)
        .wrapping_add(0x6a09_e667_f3bc_c909);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill(buf: &mut [u8], seed: u64, at: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = word(seed, at + 8 * i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// The first differing byte of `buf` against the pattern, if any.
fn first_difference(buf: &[u8], seed: u64, at: u64) -> Option<u64> {
    let mut expected = vec![0u8; buf.len()];
    fill(&mut expected, seed, at);
    buf.iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .map(|i| at + i as u64)
}

fn run(args: &Args) -> Result<String, Failed> {
    let setup = Failed::Setup;
    // Sector multiples (a bit mask keeps the minimum Rust version).
    if args.offset & 511 != 0 || args.len & 511 != 0 || args.len == 0 {
        return Err(setup(
            "--offset and --len must be multiples of 512 (and --len not 0)".into(),
        ));
    }
    if args.block == 0 || args.block & 511 != 0 {
        return Err(setup("--block must be a non-zero multiple of 512".into()));
    }
    if args.mode == Mode::Pattern {
        let mut out = std::io::stdout().lock();
        let mut buf = vec![0u8; args.block as usize];
        let mut at = args.offset;
        while at < args.offset + args.len {
            let n = args.block.min(args.offset + args.len - at) as usize;
            fill(&mut buf[..n], args.seed, at);
            out.write_all(&buf[..n])
                .map_err(|e| setup(format!("stdout: {e}")))?;
            at += n as u64;
        }
        // The pattern is the output: no summary line.
        return Ok(String::new());
    }
    let spec = args
        .spec
        .as_deref()
        .ok_or_else(|| setup("which VSIC? (e.g. vsic:0)".into()))?;
    let dev = open(spec, args)?;
    let started = Instant::now();
    let queues = dev.num_queues();
    let mode = if args.polling {
        "polling"
    } else {
        "interrupts"
    };
    match args.mode {
        Mode::Write => {
            pass(&dev, args, args.seed, true)?;
            Ok(format!(
                "wrote {} bytes at {} of {spec} slot {} (seed {}, {queues} queues, {mode}, {:.2} s)",
                args.len,
                args.offset,
                args.slot,
                args.seed,
                started.elapsed().as_secs_f64()
            ))
        }
        Mode::Verify => {
            pass(&dev, args, args.seed, false)?;
            Ok(format!(
                "verified {} bytes at {} of {spec} slot {} (seed {}, {queues} queues, {mode}, {:.2} s)",
                args.len,
                args.offset,
                args.slot,
                args.seed,
                started.elapsed().as_secs_f64()
            ))
        }
        Mode::Loop => {
            let limit = Duration::from_secs_f64(args.seconds.max(0.0));
            let mut round = 0u64;
            while (args.rounds == 0 || round < args.rounds)
                && (round == 0 || started.elapsed() < limit)
            {
                let seed = args.seed.wrapping_add(round);
                let tag = |f: Failed| match f {
                    Failed::Refused(m) => Failed::Refused(format!("round {round}: {m}")),
                    Failed::Mismatch(m) => Failed::Mismatch(format!("round {round}: {m}")),
                    other => other,
                };
                pass(&dev, args, seed, true).map_err(tag)?;
                pass(&dev, args, seed, false).map_err(tag)?;
                round += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            Ok(format!(
                "{round} rounds on {spec} slot {}: {} MiB written and verified in {secs:.1} s ({queues} queues, {mode})",
                args.slot,
                (round * args.len) >> 20
            ))
        }
        Mode::Pattern => unreachable!("handled above"),
    }
}

fn open(spec: &str, args: &Args) -> Result<Device, Failed> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let from = args
        .dma
        .unwrap_or(if root { DmaFrom::Own } else { DmaFrom::Control });
    let mut opts = OpenOptions {
        queues: args.queues,
        mem_size: args.dma_size as usize,
        mode: if args.polling {
            CompletionMode::Polling
        } else {
            CompletionMode::Interrupt
        },
        ..OpenOptions::default()
    };
    if from == DmaFrom::Control && !spec.starts_with("vhost-user:") {
        let control =
            ControlClient::connect(&args.control).map_err(|e| Failed::Setup(e.to_string()))?;
        opts.dma = control
            .dma_source(args.dma_size)
            .map_err(|e| Failed::Setup(format!("getting DMA memory: {e}")))?;
    }
    Device::open(spec, &opts).map_err(|e| Failed::Setup(format!("opening {spec}: {e}")))
}

/// One pass over the range: writes (then flushes) or reads and checks,
/// with one request in flight per queue.
fn pass(dev: &Device, args: &Args, seed: u64, write: bool) -> Result<(), Failed> {
    let queues = dev.num_queues();
    let mut bufs: Vec<DmaBuffer> = (0..queues)
        .map(|_| dev.alloc_dma(args.block as usize))
        .collect::<Result<_, _>>()
        .map_err(|e| Failed::Setup(format!("DMA buffers: {e}")))?;
    let vsa = VsaHandle::new(args.slot);
    let end = args.offset + args.len;
    let mut next = args.offset;
    while next < end {
        // One wave: a block per queue.
        let mut wave = Vec::new();
        for (q, buf) in bufs.iter_mut().enumerate() {
            if next >= end {
                break;
            }
            let len = args.block.min(end - next);
            if write {
                fill(&mut buf.as_mut_slice()[..len as usize], seed, next);
            }
            let mem = [buf
                .range(0, len as usize)
                .map_err(|e| Failed::Setup(e.to_string()))?];
            let ranges = [VsaRange::new(next, len)];
            let req = if write {
                Request::write(vsa, &mem, &ranges)
            } else {
                Request::read(vsa, &mem, &ranges)
            };
            dev.submit(q as u16, req, next)
                .map_err(|e| Failed::Setup(format!("submitting at {next}: {e}")))?;
            wave.push((q, next, len));
            next += len;
        }
        for &(q, at, len) in &wave {
            let mut result = None;
            while result.is_none() {
                dev.wait(q as u16, Some(Duration::from_secs(30)))
                    .map_err(|e| Failed::Setup(format!("waiting for queue {q}: {e}")))?;
                dev.poll(q as u16, &mut |c| result = Some(c.result));
            }
            if let Some(Err(status)) = result {
                let op = if write { "write" } else { "read" };
                return Err(Failed::Refused(format!(
                    "{op} of {len} bytes at offset {at} of slot {} failed: {status} \
                     (the VSA may be detached or revoked, read-only, or too small)",
                    args.slot
                )));
            }
            if !write {
                let data = bufs
                    .get(q)
                    .map(|b| &b.as_slice()[..len as usize])
                    .unwrap_or_default();
                if let Some(off) = first_difference(data, seed, at) {
                    return Err(Failed::Mismatch(format!(
                        "byte at offset {off} of slot {} is not the pattern (seed {seed})",
                        args.slot
                    )));
                }
            }
        }
    }
    if write {
        dev.flush(0).map_err(|e| match e {
            vsic::Error::Io(s) => Failed::Refused(format!("flush failed: {s}")),
            other => Failed::Setup(format!("flush: {other}")),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_seed_and_offset_only() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill(&mut a, 7, 8192);
        fill(&mut b[..2048], 7, 8192);
        fill(&mut b[2048..], 7, 8192 + 2048);
        assert_eq!(a, b);
        assert_eq!(first_difference(&a, 7, 8192), None);
        assert_eq!(first_difference(&a, 8, 8192), Some(8192));
        a[100] ^= 1;
        assert_eq!(first_difference(&a, 7, 8192), Some(8292));
    }
}
