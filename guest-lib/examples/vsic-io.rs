//! vsic-io: write a pattern to a VSA, read it back, verify.
//!
//! usage: vsic-io SPEC [--slot N] [--offset BYTES] [--len BYTES]   (BYTES: 4096, 4K, 1M)
//!                     [--queue Q] [--polling] [--flush]
//!        vsic-io SPEC --capacity
//!
//! SPEC is e.g. vhost-user:/run/vsic/vsic0.sock. Prints one line and exits 0
//! when the data read back matches, 1 otherwise. With --capacity it only
//! opens the device and prints "capacity N bytes", as read right after the
//! open.

use std::process::ExitCode;
use std::time::Instant;

use vsic::{CompletionMode, Device, OpenOptions, Request, VsaHandle, VsaRange};

struct Args {
    spec: String,
    slot: u32,
    offset: u64,
    len: usize,
    queue: u16,
    polling: bool,
    flush: bool,
    capacity_only: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        spec: String::new(),
        slot: 0,
        offset: 0,
        len: 1 << 20,
        queue: 0,
        polling: false,
        flush: false,
        capacity_only: false,
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--slot" => args.slot = num(&value("--slot")?)?,
            "--offset" => args.offset = size(&value("--offset")?)?,
            "--len" => {
                let len = size(&value("--len")?)?;
                args.len = usize::try_from(len).map_err(|_| format!("--len {len} too large"))?;
            }
            "--queue" => args.queue = num(&value("--queue")?)?,
            "--polling" => args.polling = true,
            "--flush" => args.flush = true,
            "--capacity" => args.capacity_only = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => args.spec = s.to_string(),
        }
    }
    if args.spec.is_empty() {
        return Err("missing device (e.g. vhost-user:/path/vsic0.sock)".into());
    }
    Ok(args)
}

/// Byte counts accept suffixes: 4K, 1M, 2G.
fn size(s: &str) -> Result<u64, String> {
    vsic_abi::units::parse_size(s).map_err(|e| e.to_string())
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn run(a: &Args) -> Result<bool, vsic::Error> {
    let opts = OpenOptions {
        mode: if a.polling {
            CompletionMode::Polling
        } else {
            CompletionMode::Interrupt
        },
        mem_size: (2 * a.len + (8 << 20)).next_multiple_of(4096),
        ..OpenOptions::default()
    };
    let dev = Device::open(&a.spec, &opts)?;
    if a.capacity_only {
        println!("capacity {} bytes", dev.capacity()?);
        return Ok(true);
    }
    let vsa = VsaHandle::new(a.slot);
    let mut out = dev.alloc_dma(a.len)?;
    let mut back = dev.alloc_dma(a.len)?;
    // A pattern that differs per byte and per run position.
    for (i, b) in out.as_mut_slice().iter_mut().enumerate() {
        let pos = a.offset + i as u64;
        *b = (pos ^ (pos >> 9) ^ (pos >> 17)) as u8;
    }
    back.as_mut_slice().fill(0);

    let started = Instant::now();
    let range = [VsaRange::new(a.offset, a.len as u64)];
    run_one(&dev, a.queue, Request::write(vsa, &[out.mem()], &range))?;
    if a.flush {
        dev.flush(a.queue)?;
    }
    run_one(&dev, a.queue, Request::read(vsa, &[back.mem()], &range))?;
    let elapsed = started.elapsed();

    let ok = out.as_slice() == back.as_slice();
    println!(
        "{}: {} bytes at slot {} offset {} on queue {} ({}), capacity {} bytes, {:?}",
        if ok { "ok" } else { "MISMATCH" },
        a.len,
        a.slot,
        a.offset,
        a.queue,
        if a.polling { "polling" } else { "interrupt" },
        dev.capacity()?,
        elapsed
    );
    Ok(ok)
}

fn run_one(dev: &Device, queue: u16, req: Request<'_>) -> Result<(), vsic::Error> {
    dev.submit(queue, req, 0)?;
    let mut result = None;
    while result.is_none() {
        dev.wait(queue, Some(std::time::Duration::from_secs(30)))?;
        dev.poll(queue, &mut |c| result = Some(c.result));
    }
    result.unwrap_or(Ok(())).map_err(vsic::Error::Io)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("vsic-io: {msg}");
            }
            eprintln!(
                "usage: vsic-io SPEC [--slot N] [--offset BYTES] [--len BYTES] [--queue Q] [--polling] [--flush] | SPEC --capacity"
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vsic-io: {e}");
            ExitCode::FAILURE
        }
    }
}
