//! vsic-bench: random-I/O benchmark of a vhost-user-blk target, driven by
//! this crate's driver (`--client vsic`) or by libblkio (`--client blkio`).
//!
//! Both clients run the same closed loop: each queue has its own thread
//! that keeps `--qd` requests in flight, resubmitting a slot as soon as its
//! request completes, at a random `--bs`-aligned offset. Latency is taken
//! per request from submission to the moment the completion is seen. After
//! `--warmup`, requests submitted during `--seconds` are counted. One line
//! of results is printed, e.g.
//!
//! ```text
//! case=randread qd=32 queues=1 client=blkio target=vsicd bs=4096 iops=... p50_us=... p99_us=... mbps=... mode=poll
//! ```
//!
//! `writeflush` writes `--bs` bytes, then flushes once the write is done;
//! the pair is one operation (its latency covers both). `fill` writes the
//! whole region once, in order, so later reads find written data.

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use vsic::{CompletionMode, Device, DmaBuffer, OpenOptions, Request, VsaHandle, VsaRange};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    /// This crate's driver (`vsic::Device`).
    Vsic,
    /// libblkio's virtio-blk-vhost-user driver.
    Blkio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    Randread,
    Randwrite,
    /// Write, then flush once the write completed; measured as one pair.
    Writeflush,
    /// Write every block of the region once, in order, then stop
    /// (preconditioning: no warm-up, no time limit).
    Fill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Poll while the client threads leave the target a core of its own,
    /// interrupts otherwise (spinning threads would starve the target).
    Auto,
    /// Spin on the used ring (vsic polling mode, blkio poll queues).
    Poll,
    /// Sleep on each queue's interrupt eventfd.
    Interrupt,
}

impl Mode {
    /// The mode actually used for `queues` client threads.
    fn resolve(self, queues: u16) -> Mode {
        match self {
            Mode::Auto => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if usize::from(queues) < cores {
                    Mode::Poll
                } else {
                    Mode::Interrupt
                }
            }
            m => m,
        }
    }
}

/// Random-I/O benchmark of a vhost-user-blk target (vsicd or any other).
#[derive(Debug, Parser)]
#[command(name = "vsic-bench")]
struct Args {
    /// The target's vhost-user socket (for vsicd: DIR/vsicN.sock).
    #[arg(long, value_name = "PATH")]
    target_socket: String,
    /// Name printed in the result line (e.g. vsicd, qsd).
    #[arg(long, value_name = "NAME", default_value = "unnamed")]
    target_name: String,
    #[arg(long, value_enum, default_value_t = Client::Vsic)]
    client: Client,
    #[arg(long, value_enum, default_value_t = Case::Randread)]
    case: Case,
    /// Requests in flight per queue.
    #[arg(long, value_name = "N", default_value_t = 1)]
    qd: usize,
    /// Queues, one thread each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    queues: u16,
    /// Bytes per request: a multiple of 512.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    bs: usize,
    /// Measured time, after the warm-up.
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    seconds: f64,
    /// Unmeasured time before the measurement.
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    warmup: f64,
    /// Bytes addressed from offset 0; default: the whole device.
    #[arg(long, value_name = "BYTES")]
    size: Option<u64>,
    /// How completions are noticed, by either client.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Descriptors per virtqueue (both clients).
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue_size: u16,
    /// Seed of the offset generator (each queue derives its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// How long one wait for a completion may take before the run fails.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let mut args = Args::parse();
    args.mode = args.mode.resolve(args.queues);
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsic-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<String, String> {
    check_args(args)?;
    let result = match args.client {
        Client::Vsic => run_vsic(args)?,
        Client::Blkio => run_blkio(args)?,
    };
    Ok(result_line(args, &result))
}

fn check_args(args: &Args) -> Result<(), String> {
    // `%` rather than is_multiple_of: the workspace supports Rust 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    let aligned = args.bs % 512 == 0;
    if args.bs == 0 || !aligned {
        return Err(format!(
            "--bs {} must be a positive multiple of 512",
            args.bs
        ));
    }
    if args.qd == 0 || args.queues == 0 {
        return Err("--qd and --queues must be at least 1".into());
    }
    let times_valid = args.seconds > 0.0
        && args.seconds.is_finite()
        && args.warmup >= 0.0
        && args.warmup.is_finite();
    if !times_valid {
        return Err("--seconds must be positive and --warmup not negative".into());
    }
    // A vsic read or write takes three descriptors (header, data, status).
    if args.qd.saturating_mul(3) > usize::from(args.queue_size) {
        return Err(format!(
            "--qd {} needs a queue of at least {} descriptors (--queue-size)",
            args.qd,
            args.qd * 3
        ));
    }
    Ok(())
}

/// The part of the run every queue thread shares.
struct Plan {
    case: Case,
    qd: usize,
    bs: usize,
    /// Number of `bs` blocks addressed.
    blocks: u64,
    /// Fill: the next block to write, shared by every queue.
    next_block: AtomicU64,
    measure_start: Instant,
    measure_end: Instant,
}

impl Plan {
    fn new(args: &Args, capacity: u64, start: Instant) -> Result<Plan, String> {
        let size = args.size.unwrap_or(capacity);
        if size > capacity {
            return Err(format!(
                "--size {size} exceeds the device's {capacity} bytes"
            ));
        }
        let blocks = size / args.bs as u64;
        if blocks == 0 {
            return Err(format!("{size} bytes hold no {}-byte block", args.bs));
        }
        let (warmup, seconds) = match args.case {
            // Ends when the region is covered; the caller bounds the time.
            Case::Fill => (0.0, 86_400.0),
            _ => (args.warmup, args.seconds),
        };
        let measure_start = start + Duration::from_secs_f64(warmup);
        Ok(Plan {
            case: args.case,
            qd: args.qd,
            bs: args.bs,
            blocks,
            next_block: AtomicU64::new(0),
            measure_start,
            measure_end: measure_start + Duration::from_secs_f64(seconds),
        })
    }

    /// Where the next data request goes; `None` once a fill is complete.
    fn next_offset(&self, rng: &mut Rng) -> Option<u64> {
        let block = match self.case {
            Case::Fill => Some(self.next_block.fetch_add(1, Ordering::Relaxed))
                .filter(|&b| b < self.blocks)?,
            _ => rng.below(self.blocks),
        };
        Some(block * self.bs as u64)
    }
}

// ---------------------------------------------------------------------------
// The closed loop, common to both clients.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
}

/// One finished request: the slot it was submitted for, and its outcome.
struct Done {
    slot: usize,
    result: Result<(), String>,
}

/// One queue of one client, driven by one thread.
trait QueueClient {
    /// Queues `op` for `slot` (whose buffer is `bs` bytes) at `offset`.
    fn submit(&mut self, op: Op, slot: usize, offset: u64) -> Result<(), String>;
    /// Waits until at least one request completed, appending all finished
    /// ones to `done`.
    fn reap(&mut self, done: &mut Vec<Done>) -> Result<(), String>;
}

/// What one queue measured.
struct QueueResult {
    ops: u64,
    bytes: u64,
    latency: Histogram,
    last_completion: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Slot {
    started: Instant,
    /// Writeflush: the write is done and the flush is in flight.
    flushing: bool,
}

fn run_queue(
    client: &mut dyn QueueClient,
    plan: &Plan,
    rng: &mut Rng,
) -> Result<QueueResult, String> {
    let data_op = match plan.case {
        Case::Randread => Op::Read,
        Case::Randwrite | Case::Writeflush | Case::Fill => Op::Write,
    };
    let mut result = QueueResult {
        ops: 0,
        bytes: 0,
        latency: Histogram::new(),
        last_completion: None,
    };
    let mut issue = |client: &mut dyn QueueClient, slot: usize| -> Result<Option<Slot>, String> {
        let Some(offset) = plan.next_offset(rng) else {
            return Ok(None);
        };
        let started = Instant::now();
        client.submit(data_op, slot, offset)?;
        Ok(Some(Slot {
            started,
            flushing: false,
        }))
    };
    let mut slots = Vec::with_capacity(plan.qd);
    for slot in 0..plan.qd {
        match issue(client, slot)? {
            Some(s) => slots.push(s),
            None => break,
        }
    }
    let mut in_flight = slots.len();
    let mut done = Vec::with_capacity(plan.qd);
    while in_flight > 0 {
        done.clear();
        client.reap(&mut done)?;
        let now = Instant::now();
        for d in done.drain(..) {
            let slot = slots
                .get_mut(d.slot)
                .ok_or_else(|| format!("completion for unknown slot {}", d.slot))?;
            d.result.map_err(|e| format!("request failed: {e}"))?;
            if plan.case == Case::Writeflush && !slot.flushing {
                client.submit(Op::Flush, d.slot, 0)?;
                slot.flushing = true;
                continue;
            }
            // Only requests started inside the window count: the warm-up
            // and the drain at the end are left out.
            if slot.started >= plan.measure_start && slot.started < plan.measure_end {
                result
                    .latency
                    .record(now.saturating_duration_since(slot.started));
                result.ops += 1;
                result.bytes += plan.bs as u64;
                result.last_completion = Some(now);
            }
            let next = if now < plan.measure_end {
                issue(client, d.slot)?
            } else {
                None
            };
            match next {
                Some(s) => *slot = s,
                None => in_flight -= 1,
            }
        }
    }
    Ok(result)
}

/// Runs one thread per client queue. Thread start-up falls in the
/// warm-up, so every queue is running when the window opens.
fn run_threads<C: QueueClient + Send>(
    args: &Args,
    capacity: u64,
    clients: Vec<C>,
) -> Result<Totals, String> {
    let plan = Plan::new(args, capacity, Instant::now())?;
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let plan = &plan;
                scope.spawn(move || {
                    let mut rng = Rng::new(args.seed.wrapping_add(i as u64));
                    run_queue(&mut client, plan, &mut rng)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a queue thread panicked".to_string())?
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    Ok(Totals::merge(&plan, &results))
}

/// All queues together.
struct Totals {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram,
}

impl Totals {
    fn merge(plan: &Plan, results: &[QueueResult]) -> Totals {
        let mut latency = Histogram::new();
        for r in results {
            latency.merge(&r.latency);
        }
        // From the start of the window to the last counted completion.
        let elapsed = results
            .iter()
            .filter_map(|r| r.last_completion)
            .max()
            .map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(plan.measure_start)
            });
        Totals {
            ops: results.iter().map(|r| r.ops).sum(),
            bytes: results.iter().map(|r| r.bytes).sum(),
            elapsed,
            latency,
        }
    }
}

fn result_line(args: &Args, t: &Totals) -> String {
    let secs = t.elapsed.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let us = |q: f64| t.latency.quantile(q).as_secs_f64() * 1e6;
    format!(
        "case={} qd={} queues={} client={} target={} bs={} iops={:.0} p50_us={:.1} p99_us={:.1} mbps={:.1} mode={}",
        value_name(args.case),
        args.qd,
        args.queues,
        value_name(args.client),
        args.target_name,
        args.bs,
        per_sec(t.ops),
        us(0.50),
        us(0.99),
        per_sec(t.bytes) / 1e6,
        value_name(args.mode),
    )
}

fn value_name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map_or_else(|| "?".to_string(), |p| p.get_name().to_string())
}

// ---------------------------------------------------------------------------
// Client: this crate's driver.

struct VsicQueue<'d> {
    dev: &'d Device,
    queue: u16,
    bufs: Vec<DmaBuffer>,
}

impl QueueClient for VsicQueue<'_> {
    fn submit(&mut self, op: Op, slot: usize, offset: u64) -> Result<(), String> {
        let vsa = VsaHandle::new(0);
        let submitted = match op {
            Op::Flush => self.dev.submit(self.queue, Request::Flush, slot as u64),
            Op::Read | Op::Write => {
                let buf = self.bufs.get(slot).ok_or("slot without a buffer")?;
                let mem = [buf.mem()];
                let ranges = [VsaRange::new(offset, buf.len() as u64)];
                let req = if op == Op::Read {
                    Request::read(vsa, &mem, &ranges)
                } else {
                    Request::write(vsa, &mem, &ranges)
                };
                self.dev.submit(self.queue, req, slot as u64)
            }
        };
        submitted.map_err(|e| e.to_string())
    }

    fn reap(&mut self, done: &mut Vec<Done>) -> Result<(), String> {
        let deadline = Instant::now() + REAP_TIMEOUT;
        while done.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.dev
                .wait(self.queue, Some(left))
                .map_err(|e| format!("waiting on queue {}: {e}", self.queue))?;
            self.dev.poll(self.queue, &mut |c| {
                done.push(Done {
                    slot: c.user_data as usize,
                    result: c.result.map_err(|s| s.to_string()),
                })
            });
        }
        Ok(())
    }
}

fn run_vsic(args: &Args) -> Result<Totals, String> {
    let queues = usize::from(args.queues);
    // Buffers, plus room for each queue's ring and request headers.
    let per_queue = args.qd * args.bs.next_multiple_of(4096) + (1 << 20);
    let opts = OpenOptions {
        queues: Some(args.queues),
        mem_size: (queues * per_queue + (4 << 20)).next_multiple_of(4096),
        mode: match args.mode {
            Mode::Poll => CompletionMode::Polling,
            Mode::Interrupt | Mode::Auto => CompletionMode::Interrupt,
        },
        queue_size: args.queue_size,
        ..OpenOptions::default()
    };
    let spec = format!("vhost-user:{}", args.target_socket);
    let dev = Device::open(&spec, &opts).map_err(|e| format!("{spec}: {e}"))?;
    let capacity = dev.capacity().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(queues);
    for queue in 0..args.queues {
        let mut bufs = Vec::with_capacity(args.qd);
        for _ in 0..args.qd {
            let mut buf = dev.alloc_dma(args.bs).map_err(|e| e.to_string())?;
            fill_pattern(buf.as_mut_slice(), queue);
            bufs.push(buf);
        }
        clients.push(VsicQueue {
            dev: &dev,
            queue,
            bufs,
        });
    }
    run_threads(args, capacity, clients)
}

/// Non-zero, non-repeating data, so writes carry real bytes.
fn fill_pattern(buf: &mut [u8], seed: u16) {
    let mut rng = Rng::new(u64::from(seed) + 0x9e37);
    for chunk in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(&v[..n]);
    }
}

// ---------------------------------------------------------------------------
// Client: libblkio.

struct BlkioQueue {
    q: blkio::Blkioq,
    /// Address of this queue's buffers (`slots` * `bs` bytes) in a mapped
    /// region.
    buf_base: usize,
    slots: usize,
    bs: usize,
    completions: Vec<MaybeUninit<blkio::Completion>>,
}

impl QueueClient for BlkioQueue {
    fn submit(&mut self, op: Op, slot: usize, offset: u64) -> Result<(), String> {
        if slot >= self.slots {
            return Err(format!("slot {slot} has no buffer"));
        }
        let buf = (self.buf_base + slot * self.bs) as *mut u8;
        let flags = blkio::ReqFlags::empty();
        match op {
            Op::Read => self.q.read(offset, buf, self.bs, slot, flags),
            Op::Write => self.q.write(offset, buf, self.bs, slot, flags),
            Op::Flush => self.q.flush(slot, flags),
        }
        // libblkio reports every failure through the completion.
        Ok(())
    }

    fn reap(&mut self, done: &mut Vec<Done>) -> Result<(), String> {
        let mut timeout = REAP_TIMEOUT;
        let n = self
            .q
            .do_io(&mut self.completions, 1, Some(&mut timeout), None)
            .map_err(|e| format!("blkio do_io: {e}"))?;
        for c in self.completions.iter().take(n) {
            // SAFETY: do_io initialised the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            let result = if c.ret == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(-c.ret).to_string())
            };
            done.push(Done {
                slot: c.user_data,
                result,
            });
        }
        Ok(())
    }
}

/// Maps a libblkio error to a message naming the step that failed.
fn blkio_err(what: &'static str) -> impl Fn(blkio::Error) -> String {
    move |e| format!("blkio {what}: {e}")
}

fn run_blkio(args: &Args) -> Result<Totals, String> {
    let err = blkio_err;
    let mut b = blkio::Blkio::new("virtio-blk-vhost-user").map_err(err("new"))?;
    b.set_str("path", &args.target_socket)
        .map_err(err("path"))?;
    b.connect().map_err(err("connect"))?;
    let queues = i32::from(args.queues);
    let (num_queues, num_poll_queues) = match args.mode {
        Mode::Poll => (0, queues),
        Mode::Interrupt | Mode::Auto => (queues, 0),
    };
    b.set_i32("num-queues", num_queues)
        .map_err(err("num-queues"))?;
    b.set_i32("num-poll-queues", num_poll_queues)
        .map_err(err("num-poll-queues"))?;
    b.set_i32("queue-size", i32::from(args.queue_size))
        .map_err(err("queue-size"))?;
    let started = b.start().map_err(err("start"))?;
    let capacity = b.get_u64("capacity").map_err(err("capacity"))?;
    let align = b
        .get_u64("mem-region-alignment")
        .map_err(err("mem-region-alignment"))?
        .max(4096) as usize;
    let per_queue = args.qd * args.bs;
    let len = (per_queue * usize::from(args.queues)).next_multiple_of(align);
    let region = b.alloc_mem_region(len).map_err(err("alloc_mem_region"))?;
    b.map_mem_region(&region).map_err(err("map_mem_region"))?;
    // SAFETY: the region is `len` bytes of fresh, mapped, writable memory.
    let all = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, len) };
    for (i, chunk) in all.chunks_mut(per_queue).enumerate() {
        fill_pattern(chunk, i as u16);
    }
    let queues = match args.mode {
        Mode::Poll => started.poll_queues,
        Mode::Interrupt | Mode::Auto => started.queues,
    };
    let clients = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| BlkioQueue {
            q,
            buf_base: region.addr + i * per_queue,
            slots: args.qd,
            bs: args.bs,
            completions: (0..args.qd).map(|_| MaybeUninit::uninit()).collect(),
        })
        .collect();
    // `b` outlives the threads: the region and connection stay up.
    let totals = run_threads(args, capacity, clients);
    drop(b);
    totals
}

// ---------------------------------------------------------------------------
// Small tools.

/// xorshift64*: fast, good enough to spread offsets, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (a zero state stays zero).
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Latency histogram in nanoseconds: exact below 64 ns, then 64 buckets
/// per power of two (at most 1/64 relative error), bounded memory whatever
/// the run length, and mergeable across threads.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }

    fn index(ns: u64) -> usize {
        if ns < SUB {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
        let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
        ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
    }

    /// The smallest value of bucket `i` and the bucket's width.
    fn bucket(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < SUB {
            return (i, 1);
        }
        let shift = (i / SUB - 1) as u32;
        ((SUB + i % SUB) << shift, 1 << shift)
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::index(ns)) {
            *c += 1;
            self.total += 1;
        }
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The value below which a fraction `q` of samples lie (bucket middle).
    fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket(i);
                return Duration::from_nanos(low.saturating_add(width / 2));
            }
        }
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_values_in_order_with_bounded_error() {
        let mut last = 0;
        for ns in (0..10_000u64).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(ns);
            assert!(i < BUCKETS, "{ns}");
            assert!(i >= last || ns >= 10_000, "index must not decrease");
            last = i;
            let (low, width) = Histogram::bucket(i);
            assert!(low <= ns && ns - low < width, "{ns}: bucket {low}+{width}");
            assert!(
                width == 1 || width <= low / 32,
                "{ns}: width {width} too coarse"
            );
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::new();
        // 1..=1000 microseconds, once each.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let near = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() / us < 0.02;
        assert!(near(h.quantile(0.5), 500.0), "{:?}", h.quantile(0.5));
        assert!(near(h.quantile(0.99), 990.0), "{:?}", h.quantile(0.99));
        assert!(near(h.quantile(0.0), 1.0));

        let mut merged = Histogram::new();
        let mut slow = Histogram::new();
        for _ in 0..1000 {
            slow.record(Duration::from_millis(50));
        }
        merged.merge(&h);
        merged.merge(&slow);
        assert_eq!(merged.total, 2000);
        assert!(near(merged.quantile(0.25), 500.0));
        assert!(near(merged.quantile(0.75), 50_000.0));
        assert_eq!(Histogram::new().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn offsets_stay_in_range_and_spread() {
        let mut rng = Rng::new(0);
        let mut seen = [0u32; 16];
        for _ in 0..16_000 {
            let v = rng.below(16);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(rng.below(1), 0);
    }

    /// A client whose requests complete instantly, recording what it got.
    struct Instant0 {
        pending: Vec<usize>,
        ops: Vec<Op>,
        offsets: Vec<u64>,
    }

    impl QueueClient for Instant0 {
        fn submit(&mut self, op: Op, slot: usize, offset: u64) -> Result<(), String> {
            self.pending.push(slot);
            self.ops.push(op);
            self.offsets.push(offset);
            Ok(())
        }
        fn reap(&mut self, done: &mut Vec<Done>) -> Result<(), String> {
            done.extend(self.pending.drain(..).map(|slot| Done {
                slot,
                result: Ok(()),
            }));
            Ok(())
        }
    }

    fn plan(case: Case, qd: usize, ms: u64) -> Plan {
        let now = Instant::now();
        Plan {
            case,
            qd,
            bs: 4096,
            blocks: 100,
            next_block: AtomicU64::new(0),
            measure_start: now,
            measure_end: now + Duration::from_millis(ms),
        }
    }

    #[test]
    fn closed_loop_keeps_offsets_aligned_and_pairs_writes_with_flushes() {
        let mut c = Instant0 {
            pending: vec![],
            ops: vec![],
            offsets: vec![],
        };
        let r = run_queue(&mut c, &plan(Case::Writeflush, 1, 20), &mut Rng::new(3)).unwrap();
        assert!(r.ops > 10);
        assert_eq!(r.latency.total, r.ops);
        // Strictly alternating write, flush.
        for pair in c.ops.chunks(2) {
            assert_eq!(pair, &[Op::Write, Op::Flush][..pair.len()]);
        }
        assert!(c.offsets.iter().all(|o| o % 4096 == 0 && *o < 100 * 4096));
        assert_eq!(r.bytes, r.ops * 4096);
    }

    #[test]
    fn a_failed_request_fails_the_run() {
        struct Failing;
        impl QueueClient for Failing {
            fn submit(&mut self, _: Op, _: usize, _: u64) -> Result<(), String> {
                Ok(())
            }
            fn reap(&mut self, done: &mut Vec<Done>) -> Result<(), String> {
                done.push(Done {
                    slot: 0,
                    result: Err("I/O error".into()),
                });
                Ok(())
            }
        }
        let e = run_queue(&mut Failing, &plan(Case::Randread, 2, 20), &mut Rng::new(1));
        assert!(e.is_err_and(|e| e.contains("I/O error")));
    }

    #[test]
    fn fill_writes_every_block_once_in_order_then_stops() {
        let mut c = Instant0 {
            pending: vec![],
            ops: vec![],
            offsets: vec![],
        };
        let mut p = plan(Case::Fill, 4, 0);
        p.measure_end = p.measure_start + Duration::from_secs(60);
        let r = run_queue(&mut c, &p, &mut Rng::new(1)).unwrap();
        assert_eq!(r.ops, 100);
        assert!(c.ops.iter().all(|&o| o == Op::Write));
        let expected: Vec<u64> = (0..100).map(|b| b * 4096).collect();
        assert_eq!(c.offsets, expected);
    }

    #[test]
    fn queue_depth_is_held_until_the_window_ends() {
        let mut c = Instant0 {
            pending: vec![],
            ops: vec![],
            offsets: vec![],
        };
        let r = run_queue(&mut c, &plan(Case::Randread, 8, 10), &mut Rng::new(5)).unwrap();
        assert!(c.ops.iter().all(|&o| o == Op::Read));
        // Every submitted request completed, and the loop ended.
        assert!(c.pending.is_empty());
        assert!(r.ops as usize <= c.ops.len() && r.ops > 8);
    }
}
