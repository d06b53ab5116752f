//! `vsic-nfs-load`: the NFS benchmark's client workload on a mounted
//! directory (ci/bench.sh --apps). Prints key=value lines:
//!
//! * `--files N`: create + write `--size` bytes + close of N new files,
//!   one at a time: `small_ops_per_s`, `small_p50_us`, `small_p99_us`.
//! * `--seq-mib M`: one file written sequentially in 1 MiB writes, then
//!   fsync (COMMIT, if the server answered any write UNSTABLE):
//!   `seq_mb_per_s`.
//!
//! Every byte written is read back and compared at the end (not timed).
//! When the kernel's NFS client statistics are there (/proc/net/rpc/nfs),
//! the NFSv3 calls the client made during the timed part are printed too:
//! `calls_per_file` and `commits` (small files), `writes` and `commits`
//! (sequential: COMMITs appear only when the server answered UNSTABLE).

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    dir: PathBuf,
    files: usize,
    size: usize,
    seq_mib: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        dir: PathBuf::new(),
        files: 0,
        size: 4096,
        seq_mib: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--files" => a.files = num("--files")?,
            "--size" => a.size = num("--size")?,
            "--seq-mib" => a.seq_mib = num("--seq-mib")?,
            d if !d.starts_with('-') && a.dir.as_os_str().is_empty() => a.dir = PathBuf::from(d),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if a.dir.as_os_str().is_empty() {
        return Err("usage: vsic-nfs-load DIR [--files N] [--size BYTES] [--seq-mib M]".into());
    }
    Ok(a)
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 131 + seed * 7919) >> 3) as u8)
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_micros()
}

/// The client's NFSv3 call counts by procedure (RFC 1813 numbers), from
/// the "proc3" line of /proc/net/rpc/nfs.
fn nfs_calls() -> Option<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/net/rpc/nfs").ok()?;
    let line = text.lines().find(|l| l.starts_with("proc3 "))?;
    line.split_whitespace()
        .skip(2)
        .map(|v| v.parse().ok())
        .collect()
}

/// Calls made since `before`, by procedure.
fn calls_since(before: &Option<Vec<u64>>) -> Option<Vec<u64>> {
    let (b, a) = (before.as_ref()?, nfs_calls()?);
    if a.len() <= COMMIT || b.len() != a.len() {
        return None;
    }
    Some(a.iter().zip(b).map(|(a, b)| a.saturating_sub(*b)).collect())
}

const WRITE: usize = 7;
const COMMIT: usize = 21;

fn run(a: &Args) -> std::io::Result<()> {
    if a.files > 0 {
        let dir = a.dir.join("small");
        std::fs::create_dir_all(&dir)?;
        let mut lat = Vec::with_capacity(a.files);
        let calls = nfs_calls();
        let start = Instant::now();
        for i in 0..a.files {
            let data = pattern(i, a.size);
            let t = Instant::now();
            let mut f = File::create(dir.join(format!("f{i}")))?;
            f.write_all(&data)?;
            drop(f);
            lat.push(t.elapsed());
        }
        let secs = start.elapsed().as_secs_f64();
        let calls = calls_since(&calls)
            .map(|c| {
                format!(
                    " calls_per_file={:.1} commits={}",
                    c.iter().sum::<u64>() as f64 / a.files as f64,
                    c[COMMIT]
                )
            })
            .unwrap_or_default();
        lat.sort();
        println!(
            "small_files={} small_ops_per_s={:.0} small_p50_us={} small_p99_us={}{calls}",
            a.files,
            a.files as f64 / secs,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        for i in 0..a.files {
            let mut got = Vec::new();
            File::open(dir.join(format!("f{i}")))?.read_to_end(&mut got)?;
            if got != pattern(i, a.size) {
                return Err(std::io::Error::other(format!("small file f{i} differs")));
            }
        }
    }
    if a.seq_mib > 0 {
        let path = a.dir.join("seq");
        let chunk = pattern(1, 1 << 20);
        let calls = nfs_calls();
        let start = Instant::now();
        let mut f = File::create(&path)?;
        for _ in 0..a.seq_mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        drop(f);
        let secs = start.elapsed().as_secs_f64();
        let calls = calls_since(&calls)
            .map(|c| format!(" writes={} commits={}", c[WRITE], c[COMMIT]))
            .unwrap_or_default();
        println!(
            "seq_mib={} seq_mb_per_s={:.1}{calls}",
            a.seq_mib,
            a.seq_mib as f64 * 1.048576 / secs
        );
        let mut f = File::open(&path)?;
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..a.seq_mib {
            f.read_exact(&mut buf)?;
            if buf != chunk {
                return Err(std::io::Error::other(format!(
                    "sequential file differs in MiB {i}"
                )));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vsic-nfs-load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsic-nfs-load: {e}");
            ExitCode::from(1)
        }
    }
}
