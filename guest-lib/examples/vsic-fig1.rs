//! vsic-fig1: the paper's Figure 1 experiment. N times, write B bytes at an
//! appending offset and make them durable; print per-operation latency
//! percentiles and the CPU the process used (getrusage) as one line of
//! key=value pairs.
//!
//! usage: vsic-fig1 file PATH --fs NAME --medium NAME --sync fsync|fdatasync
//!                  [--bytes B] [--n N] [--warmup W]
//!        vsic-fig1 vsic SPEC --mode interrupt|poll|hybrid [--no-flush]
//!                  [--cache NAME] [--bytes B] [--n N] [--warmup W]
//!                  [--region BYTES]
//!
//! `file`: the kernel path. PATH is created (truncated) on a mounted file
//! system; each operation is pwrite + fsync (or fdatasync). --fs and
//! --medium only label the output line (the caller made the file system).
//!
//! `vsic`: the user-level path. SPEC is a function the caller owns
//! (`vsic:N`, a PCI address bound to vfio-pci, or vhost-user:PATH); each
//! operation is one write of B bytes to slot 0 (offsets wrap within
//! --region, default 64M) followed by a FLUSH, or the write alone with
//! --no-flush (for a controller in write-through mode; --cache labels it).
//!
//! Output, e.g.:
//!   case=fig1 fs=ext4 medium=brd sync=fsync bytes=1024 n=10000 p50_us=..
//!   case=fig1 path=vsic mode=poll sync=flush cache=write-back bytes=1024 ..
//! followed in both cases by p50_us p99_us mean_us min_us max_us, cpu (CPU
//! seconds per wall second over the measured loop) and usr_us/sys_us per
//! operation. --warmup W (default 10) operations run first, unmeasured.
//! Exit status: 0 done, 1 error, 2 usage.

use std::fs::OpenOptions as FileOptions;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vsic::{CompletionMode, Device, OpenOptions, VsaHandle};

const USAGE: &str = "usage: vsic-fig1 file PATH --fs NAME --medium NAME --sync fsync|fdatasync \
[--bytes B] [--n N] [--warmup W]\n       vsic-fig1 vsic SPEC --mode interrupt|poll|hybrid \
[--no-flush] [--cache NAME] [--bytes B] [--n N] [--warmup W] [--region BYTES]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Fsync,
    Fdatasync,
}

enum Target {
    File {
        path: String,
        fs: String,
        medium: String,
        sync: Sync,
    },
    Vsic {
        spec: String,
        mode: CompletionMode,
        flush: bool,
        cache: String,
        region: u64,
    },
}

struct Args {
    target: Target,
    bytes: usize,
    n: usize,
    warmup: usize,
}

fn size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|v| v.checked_shl(shift).filter(|r| r >> shift == v))
        .ok_or(format!("not a size: {text}"))
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let kind = it.next().ok_or("missing file|vsic")?;
    if kind == "-h" || kind == "--help" {
        return Err(String::new());
    }
    let what = it.next().ok_or("missing PATH or SPEC")?;
    let (mut fs, mut medium, mut sync, mut mode) = (None, None, None, None);
    let mut flush = true;
    let mut cache = "write-back".to_string();
    let mut region = 64u64 << 20;
    let (mut bytes, mut n, mut warmup) = (1024usize, 10_000usize, 10usize);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--fs" => fs = Some(value("--fs")?),
            "--medium" => medium = Some(value("--medium")?),
            "--sync" => {
                sync = Some(match value("--sync")?.as_str() {
                    "fsync" => Sync::Fsync,
                    "fdatasync" => Sync::Fdatasync,
                    other => return Err(format!("--sync: fsync or fdatasync, not {other}")),
                })
            }
            "--mode" => {
                mode = Some(match value("--mode")?.as_str() {
                    "interrupt" => CompletionMode::Interrupt,
                    "poll" => CompletionMode::Polling,
                    "hybrid" => CompletionMode::Hybrid,
                    other => {
                        return Err(format!("--mode: interrupt, poll or hybrid, not {other}"))
                    }
                })
            }
            "--no-flush" => flush = false,
            "--cache" => cache = value("--cache")?,
            "--region" => region = size(&value("--region")?)?,
            "--bytes" => bytes = size(&value("--bytes")?)? as usize,
            "--n" => n = size(&value("--n")?)? as usize,
            "--warmup" => warmup = size(&value("--warmup")?)? as usize,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if bytes == 0 || bytes % 512 != 0 {
        return Err(format!("--bytes must be a positive multiple of 512, not {bytes}"));
    }
    if n == 0 {
        return Err("--n must be positive".into());
    }
    let target = match kind.as_str() {
        "file" => Target::File {
            path: what,
            fs: fs.ok_or("file needs --fs")?,
            medium: medium.ok_or("file needs --medium")?,
            sync: sync.ok_or("file needs --sync")?,
        },
        "vsic" => {
            if region < bytes as u64 {
                return Err("--region is smaller than --bytes".into());
            }
            Target::Vsic {
                spec: what,
                mode: mode.ok_or("vsic needs --mode")?,
                flush,
                cache,
                region,
            }
        }
        other => return Err(format!("expected file or vsic, not {other}")),
    };
    Ok(Args {
        target,
        bytes,
        n,
        warmup,
    })
}

/// CPU time (user, system) of this process so far.
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Latencies of `n` measured operations after `warmup` unmeasured ones,
/// with the CPU used over the measured loop.
struct Measured {
    lat: Vec<Duration>,
    wall: Duration,
    usr: Duration,
    sys: Duration,
}

fn measure<E>(
    warmup: usize,
    n: usize,
    mut op: impl FnMut(usize) -> Result<(), E>,
) -> Result<Measured, E> {
    for i in 0..warmup {
        op(i)?;
    }
    let mut lat = Vec::with_capacity(n);
    let (u0, s0) = cpu_times();
    let t0 = Instant::now();
    for i in warmup..warmup + n {
        let t = Instant::now();
        op(i)?;
        lat.push(t.elapsed());
    }
    let wall = t0.elapsed();
    let (u1, s1) = cpu_times();
    Ok(Measured {
        lat,
        wall,
        usr: u1.saturating_sub(u0),
        sys: s1.saturating_sub(s0),
    })
}

/// The key=value tail of a result line.
fn summary(mut m: Measured) -> String {
    m.lat.sort_unstable();
    let n = m.lat.len();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pct = |p: usize| us(m.lat[(n * p / 100).min(n - 1)]);
    let mean = us(m.lat.iter().sum::<Duration>()) / n as f64;
    let cpu = (m.usr + m.sys).as_secs_f64() / m.wall.as_secs_f64().max(1e-9);
    format!(
        "n={n} p50_us={:.1} p99_us={:.1} mean_us={mean:.1} min_us={:.1} max_us={:.1} \
cpu={cpu:.2} usr_us={:.1} sys_us={:.1}",
        pct(50),
        pct(99),
        us(m.lat[0]),
        us(m.lat[n - 1]),
        us(m.usr) / n as f64,
        us(m.sys) / n as f64,
    )
}

fn fill(buf: &mut [u8], seed: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ seed) as u8;
    }
}

fn run(a: &Args) -> Result<String, String> {
    match &a.target {
        Target::File {
            path,
            fs,
            medium,
            sync,
        } => {
            let file = FileOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(path)
                .map_err(|e| format!("{path}: {e}"))?;
            let mut buf = vec![0u8; a.bytes];
            let m = measure(a.warmup, a.n, |i| {
                fill(&mut buf, i);
                file.write_all_at(&buf, (i * a.bytes) as u64)?;
                match sync {
                    Sync::Fsync => file.sync_all(),
                    Sync::Fdatasync => file.sync_data(),
                }
            })
            .map_err(|e| format!("{path}: {e}"))?;
            let sync = match sync {
                Sync::Fsync => "fsync",
                Sync::Fdatasync => "fdatasync",
            };
            Ok(format!(
                "case=fig1 fs={fs} medium={medium} sync={sync} bytes={} {}",
                a.bytes,
                summary(m)
            ))
        }
        Target::Vsic {
            spec,
            mode,
            flush,
            cache,
            region,
        } => {
            let opts = OpenOptions {
                queues: Some(1),
                mem_size: (a.bytes + (4 << 20)).next_multiple_of(2 << 20),
                mode: *mode,
                ..OpenOptions::default()
            };
            let dev = Device::open(spec, &opts).map_err(|e| format!("{spec}: {e}"))?;
            let mut buf = dev.alloc_dma(a.bytes).map_err(|e| e.to_string())?;
            let slots = (region / a.bytes as u64).max(1);
            let vsa = VsaHandle::new(0);
            let m = measure(a.warmup, a.n, |i| {
                fill(buf.as_mut_slice(), i);
                let offset = (i as u64 % slots) * a.bytes as u64;
                dev.write_at(0, vsa, offset, &buf)?;
                if *flush {
                    dev.flush(0)?;
                }
                Ok::<(), vsic::Error>(())
            })
            .map_err(|e| format!("{spec}: {e}"))?;
            let mode = match mode {
                CompletionMode::Interrupt => "interrupt",
                CompletionMode::Polling => "poll",
                CompletionMode::Hybrid => "hybrid",
            };
            let sync = if *flush { "flush" } else { "none" };
            let mut line = format!(
                "case=fig1 path=vsic mode={mode} sync={sync} cache={cache} bytes={} {}",
                a.bytes,
                summary(m)
            );
            if mode == "hybrid" {
                // How the waits ended (warm-up included).
                let h = dev.hybrid_stats(0);
                line += &format!(
                    " hybrid_expected_us={:.1} wake_late_us={:.1} waits_slept={} waits_first_look={} \
waits_polled={} waits_interrupted={}",
                    h.expected.as_secs_f64() * 1e6,
                    h.wake_late.as_secs_f64() * 1e6,
                    h.slept,
                    h.first_look,
                    h.polled,
                    h.interrupted
                );
            }
            Ok(line)
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vsic-fig1: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsic-fig1: {e}");
            ExitCode::from(1)
        }
    }
}
