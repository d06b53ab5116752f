//! vsic-pattern: write a reproducible pattern over a range of a VSA, or
//! check that a range holds it. Runs unchanged on the host (vhost-user
//! socket) and in a guest (VFIO), so one side can check what the other
//! wrote.
//!
//! usage: vsic-pattern SPEC write|verify [--slot N] [--offset BYTES]
//!                     [--len BYTES] [--seed N] [--queue Q] [--depth D]
//!                     [--chunk BYTES] [--polling] [--provided-dma]
//!                     [--user UID] [--no-flush]
//!
//! SPEC: vhost-user:PATH, vsic:N or a PCI address. Requests of --chunk
//! bytes (default 256K) are kept --depth (default 8) in flight on queue Q.
//! --provided-dma (VFIO only) allocates the DMA huge pages itself and opens
//! with them as provided memory, the way the control plane hands memory to
//! unprivileged applications. --user drops to UID (and the same GID, no
//! supplementary groups) after that, before opening the device, with an
//! unlimited RLIMIT_MEMLOCK for the VFIO pins. A write ends with a FLUSH
//! before it reports "written"; --no-flush reports without one (the
//! negative control of the power-cut tests: what it wrote may be lost
//! although it said so). Exit status: 0 done (and
//! matching), 1 mismatch or error, 2 usage.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vsic::{
    CompletionMode, Device, DmaBuffer, DmaSource, OpenOptions, Request, VsaHandle, VsaRange,
};

struct Args {
    spec: String,
    verify: bool,
    slot: u32,
    offset: u64,
    len: u64,
    seed: u64,
    queue: u16,
    depth: usize,
    chunk: usize,
    polling: bool,
    provided_dma: bool,
    user: Option<u32>,
    no_flush: bool,
}

const USAGE: &str =
    "usage: vsic-pattern SPEC write|verify [--slot N] [--offset BYTES] [--len BYTES] \
[--seed N] [--queue Q] [--depth D] [--chunk BYTES] [--polling] [--provided-dma] [--user UID] \
[--no-flush]";

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        spec: String::new(),
        verify: false,
        slot: 0,
        offset: 0,
        len: 4 << 20,
        seed: 1,
        queue: 0,
        depth: 8,
        chunk: 256 << 10,
        polling: false,
        provided_dma: false,
        user: None,
        no_flush: false,
    };
    let mut action = None;
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--slot" => args.slot = size(&value("--slot")?)? as u32,
            "--offset" => args.offset = size(&value("--offset")?)?,
            "--len" => args.len = size(&value("--len")?)?,
            "--seed" => args.seed = size(&value("--seed")?)?,
            "--queue" => args.queue = size(&value("--queue")?)? as u16,
            "--depth" => args.depth = size(&value("--depth")?)? as usize,
            "--chunk" => args.chunk = size(&value("--chunk")?)? as usize,
            "--polling" => args.polling = true,
            "--provided-dma" => args.provided_dma = true,
            "--no-flush" => args.no_flush = true,
            "--user" => {
                let v = value("--user")?;
                args.user = Some(v.parse().map_err(|_| format!("not a user id: {v}"))?)
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            "write" | "verify" if !args.spec.is_empty() && action.is_none() => {
                action = Some(a.clone())
            }
            s if args.spec.is_empty() => args.spec = s.to_string(),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    args.verify = match action.as_deref() {
        Some("verify") => true,
        Some(_) => false,
        None => return Err("missing SPEC and write|verify".into()),
    };
    if args.depth == 0 || args.chunk == 0 || !args.chunk.is_multiple_of(512) {
        return Err("--depth must be positive, --chunk a positive multiple of 512".into());
    }
    if !args.len.is_multiple_of(512) || !args.offset.is_multiple_of(512) {
        return Err("--offset and --len must be multiples of 512".into());
    }
    Ok(args)
}

/// A number with an optional K, M or G suffix.
fn size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or(format!("not a size: {s}"))
}

/// The pattern byte at VSA offset `pos` for `seed`: differs per byte, per
/// sector and per seed.
fn pattern_byte(seed: u64, pos: u64) -> u8 {
    let x = pos ^ (pos >> 9).wrapping_mul(0x9e37_79b9) ^ seed.wrapping_mul(0x2545_f491);
    (x ^ (x >> 8) ^ (x >> 16)) as u8
}

/// Huge pages of our own, offered as if a control plane had provided them.
/// Their addresses are checked after pinning through a pagemap opened now,
/// while we may still read addresses (before `--user` drops privileges).
fn provided_dma(bytes: usize) -> Result<DmaSource, vsic::Error> {
    let pagemap = std::sync::Arc::new(vsic::hugepage::Pagemap::open()?);
    let page = vsic::hugepage::HUGE_PAGE_SIZE;
    let len = bytes.next_multiple_of(page);
    let sys = |what: &'static str| vsic::Error::System {
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain libc calls on fds and a mapping this function owns.
    unsafe {
        let fd = libc::memfd_create(
            c"vsic-pattern".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
        );
        if fd < 0 {
            return Err(sys("memfd_create"));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as libc::off_t) < 0 {
            return Err(sys("ftruncate"));
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(sys("mmap of huge pages"));
        }
        let gpas = pagemap.addresses(p as usize, len, page);
        // The pages stay allocated in the file after the mapping goes.
        libc::munmap(p, len);
        DmaSource::provided_with_locator(fd, gpas?, pagemap)
    }
}

/// Becomes `uid` for good, keeping the right to pin any amount of memory.
fn drop_privileges(uid: u32) -> Result<(), vsic::Error> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls with valid arguments.
    let ok = unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0
            && libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(uid) == 0
            && libc::setuid(uid) == 0
    };
    if !ok {
        return Err(vsic::Error::System {
            what: "dropping privileges",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn run(a: &Args) -> Result<bool, vsic::Error> {
    let mem_size = (a.depth * a.chunk + (4 << 20)).next_multiple_of(2 << 20);
    let opts = OpenOptions {
        queues: Some(a.queue + 1),
        mode: if a.polling {
            CompletionMode::Polling
        } else {
            CompletionMode::Interrupt
        },
        mem_size,
        dma: if a.provided_dma {
            provided_dma(mem_size)?
        } else {
            DmaSource::Allocate
        },
        ..OpenOptions::default()
    };
    if let Some(uid) = a.user {
        drop_privileges(uid)?;
    }
    let started = Instant::now();
    let dev = Device::open(&a.spec, &opts)?;
    let opened = started.elapsed();
    let vsa = VsaHandle::new(a.slot);

    let mut bufs: Vec<DmaBuffer> = Vec::with_capacity(a.depth);
    for _ in 0..a.depth {
        bufs.push(dev.alloc_dma(a.chunk)?);
    }
    // Buffer index -> VSA offset of the request using it.
    let mut in_flight: Vec<Option<u64>> = vec![None; a.depth];
    let mut next = a.offset;
    let end = a.offset + a.len;
    let mut mismatch: Option<u64> = None;
    let io_start = Instant::now();

    loop {
        // Fill every idle buffer with a request.
        for (i, buf) in bufs.iter_mut().enumerate() {
            if in_flight[i].is_some() || next >= end {
                continue;
            }
            let len = (end - next).min(a.chunk as u64) as usize;
            let mem = [buf.range(0, len)?];
            let range = [VsaRange::new(next, len as u64)];
            let req = if a.verify {
                buf.as_mut_slice()[..len].fill(0);
                Request::read(vsa, &mem, &range)
            } else {
                for (j, b) in buf.as_mut_slice()[..len].iter_mut().enumerate() {
                    *b = pattern_byte(a.seed, next + j as u64);
                }
                Request::write(vsa, &mem, &range)
            };
            dev.submit(a.queue, req, i as u64)?;
            in_flight[i] = Some(next);
            next += len as u64;
        }
        if in_flight.iter().all(Option::is_none) {
            break;
        }
        dev.wait(a.queue, Some(Duration::from_secs(30)))?;
        let mut failed = None;
        dev.poll(a.queue, &mut |c| {
            let i = c.user_data as usize;
            let Some(Some(at)) = in_flight.get(i).copied() else {
                return;
            };
            if let Err(s) = c.result {
                failed = Some((at, s));
            }
            if a.verify && mismatch.is_none() {
                let len = (end - at).min(a.chunk as u64) as usize;
                let got = &bufs[i].as_slice()[..len];
                if let Some(j) = (0..len).find(|&j| got[j] != pattern_byte(a.seed, at + j as u64)) {
                    mismatch = Some(at + j as u64);
                }
            }
            in_flight[i] = None;
        });
        if let Some((at, s)) = failed {
            eprintln!("vsic-pattern: request at {at} failed: {s}");
            return Err(vsic::Error::Io(s));
        }
    }
    if !a.verify && !a.no_flush {
        dev.flush(a.queue)?;
    }
    let secs = io_start.elapsed().as_secs_f64();
    let ok = mismatch.is_none();
    println!(
        "{}: {} {} bytes at slot {} offset {} seed {} on queue {} ({}{}{}), open {:?}, {:.1} MB/s",
        match (a.verify, ok) {
            (false, _) if a.no_flush => "written (not flushed)",
            (false, _) => "written",
            (true, true) => "verified",
            (true, false) => "MISMATCH",
        },
        if a.verify { "read" } else { "wrote" },
        a.len,
        a.slot,
        a.offset,
        a.seed,
        a.queue,
        if a.polling { "polling" } else { "interrupt" },
        if a.provided_dma { ", provided DMA" } else { "" },
        a.user.map(|u| format!(", uid {u}")).unwrap_or_default(),
        opened,
        a.len as f64 / secs.max(1e-9) / 1e6,
    );
    if let Some(at) = mismatch {
        println!(
            "first difference at VSA offset {at} (expected {:#04x})",
            pattern_byte(a.seed, at)
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("vsic-pattern: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vsic-pattern: {e}");
            ExitCode::FAILURE
        }
    }
}
