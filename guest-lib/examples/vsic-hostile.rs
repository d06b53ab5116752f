//! A hostile application for the DMA protection tests: it drives its own
//! VSIC's queue itself and points request buffers at guest-physical
//! addresses it chooses.
//!
//! ```text
//! vsic-hostile victim --len BYTES --until FILE
//!     Holds BYTES of pinned memory (huge pages, root) filled with a known
//!     pattern, prints `victim_gpa=ADDR victim_len=LEN`, waits until FILE
//!     exists, then checks the pattern: `victim=unchanged` (exit 0) or
//!     `victim=changed` (exit 1).
//! vsic-hostile attack SPEC --slot N [--offset BYTES] PROBE...
//!     Opens SPEC (e.g. vsic:0) with DMA memory from the control service
//!     (or its own huge pages when root), one queue of 16 entries, and
//!     sends one request per PROBE:
//!       own              write a marker from its own buffer to the VSA
//!                        and read it back (must work)
//!       read:ADDR:LEN    the device reads LEN bytes at guest-physical ADDR
//!                        (a VSA write from there)
//!       write:ADDR:LEN   the device writes LEN bytes at ADDR (a VSA read
//!                        into there)
//!       ring-read        the device reads its own descriptor table
//!       ring-write       the device writes its own used ring
//!     Before each read probe the VSA range holds a marker; afterwards it
//!     is read back: a changed range means bytes leaked into the VSA.
//!     One line per probe: `probe=P status=S used_len=N outcome=O` with
//!     O = ok | refused | served | leaked. Exit 0 when `own` probes are ok
//!     and every other probe is refused, 1 otherwise, 2 on a setup error.
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vsic::control::{ControlClient, DEFAULT_SOCKET};
use vsic::dma::{DmaBuffer, DmaPool};
use vsic::hugepage;
use vsic::transport::vfio::{VfioConfig, VfioTransport};
use vsic::transport::Transport;
use vsic::virtqueue::{Buf, RingLayout, SplitQueue};
use vsic::DmaSource;
use vsic_abi::virtio::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_F_VERSION_1,
};
use vsic_abi::window::slot_base;

const QUEUE_SIZE: u16 = 16;
const DMA_BYTES: usize = 2 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);
/// What the VSA range holds before a read probe.
const MARKER: u8 = 0xa5;
/// A status byte the device did not write.
const UNTOUCHED: u8 = 0xff;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("victim") => victim(&args[1..]),
        Some("attack") => attack(&args[1..]),
        _ => Err(usage()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vsic-hostile: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    "usage: vsic-hostile victim --len BYTES --until FILE | \
     vsic-hostile attack SPEC --slot N [--offset BYTES] PROBE..."
        .into()
}

/// The value after `name` in `args`.
fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn number(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K')) => (&s[..i], 10),
        Some((i, 'M')) => (&s[..i], 20),
        _ => (s, 0),
    };
    let n = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    n.ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("not a number: {s}"))
}

/// The victim's byte at `i`.
fn pattern(i: usize) -> u8 {
    (i as u8) ^ ((i >> 8) as u8).wrapping_mul(31) ^ 0x3c
}

fn victim(args: &[String]) -> Result<bool, String> {
    let len = number(option(args, "--len").ok_or_else(usage)?)? as usize;
    let until = option(args, "--until").ok_or_else(usage)?;
    let region = hugepage::allocate(len).map_err(|e| format!("victim memory: {e}"))?;
    let chunk = region.chunks()[0];
    let len = len.min(chunk.len);
    // SAFETY: the first `len` bytes of the first chunk are ours, mapped and
    // locked for as long as `region` lives.
    let mem = unsafe { std::slice::from_raw_parts_mut(region.host_ptr(), len) };
    for (i, b) in mem.iter_mut().enumerate() {
        *b = pattern(i);
    }
    println!("victim_gpa={:#x} victim_len={len}", chunk.iova);
    while !std::path::Path::new(until).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: reading our own memory; volatile, so the check really looks
    // at what is in memory now.
    let changed = (0..len)
        .filter(|&i| unsafe { std::ptr::read_volatile(region.host_ptr().add(i)) } != pattern(i))
        .count();
    if changed == 0 {
        println!("victim=unchanged");
        Ok(true)
    } else {
        println!("victim=changed bytes={changed}");
        Ok(false)
    }
}

enum Probe {
    Own,
    Read { addr: u64, len: u32 },
    Write { addr: u64, len: u32 },
    RingRead,
    RingWrite,
}

fn parse_probe(s: &str) -> Result<Probe, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let range = |a: &str, l: &str| -> Result<(u64, u32), String> {
        let len = u32::try_from(number(l)?).map_err(|_| format!("{s}: length too large"))?;
        if len == 0 || len % 512 != 0 {
            return Err(format!("{s}: length must be a non-zero multiple of 512"));
        }
        Ok((number(a)?, len))
    };
    match parts.as_slice() {
        ["own"] => Ok(Probe::Own),
        ["ring-read"] => Ok(Probe::RingRead),
        ["ring-write"] => Ok(Probe::RingWrite),
        ["read", a, l] => range(a, l).map(|(addr, len)| Probe::Read { addr, len }),
        ["write", a, l] => range(a, l).map(|(addr, len)| Probe::Write { addr, len }),
        _ => Err(format!("unknown probe {s}")),
    }
}

struct Driver {
    transport: VfioTransport,
    pool: Arc<DmaPool>,
    vq: SplitQueue,
    sector: u64,
}

/// How one request came back: its status byte and used length.
struct Outcome {
    status: u8,
    used_len: u32,
}

impl Driver {
    fn open(spec: &str) -> Result<Driver, String> {
        // SAFETY: geteuid has no preconditions.
        let dma = if unsafe { libc::geteuid() } == 0 {
            DmaSource::Allocate
        } else {
            ControlClient::connect(std::path::Path::new(DEFAULT_SOCKET))
                .and_then(|c| c.dma_source(DMA_BYTES as u64))
                .map_err(|e| format!("DMA memory from the control service: {e}"))?
        };
        let address = vsic::discovery::resolve(spec, &dma).map_err(|e| e.to_string())?;
        let config = VfioConfig {
            mem_size: DMA_BYTES,
            dma,
            need_interrupts: false,
            mmap_bars: true,
            register_dma: true,
        };
        let mut transport =
            VfioTransport::open(&address, &config).map_err(|e| format!("opening {spec}: {e}"))?;
        let features = transport.device_features() & (1u64 << VIRTIO_F_VERSION_1);
        transport
            .set_driver_features(features)
            .map_err(|e| e.to_string())?;
        let pool = DmaPool::new(Arc::clone(transport.dma_region()));
        let ring = pool
            .alloc(RingLayout::new(QUEUE_SIZE).total, 4096)
            .map_err(|e| e.to_string())?;
        let vq = SplitQueue::new(ring, QUEUE_SIZE, false).map_err(|e| e.to_string())?;
        transport
            .setup_queue(0, &vq.addrs())
            .map_err(|e| e.to_string())?;
        transport.enable_queues(1).map_err(|e| e.to_string())?;
        Ok(Driver {
            transport,
            pool,
            vq,
            sector: 0,
        })
    }

    fn alloc(&self, len: usize) -> Result<DmaBuffer, String> {
        self.pool.alloc(len, 4096).map_err(|e| e.to_string())
    }

    /// One request of `kind` at the VSA's sector with `data` as given.
    fn request(&mut self, kind: u32, data: Buf) -> Result<Outcome, String> {
        let mut header = self.alloc(16)?;
        header
            .as_mut_slice()
            .copy_from_slice(&vsic::blk::header(kind, self.sector));
        let mut status = self.alloc(1)?;
        status.as_mut_slice()[0] = UNTOUCHED;
        let chain = [
            Buf {
                iova: header.iova(),
                len: 16,
                device_writes: false,
            },
            data,
            Buf {
                iova: status.iova(),
                len: 1,
                device_writes: true,
            },
        ];
        let head = self.vq.add_chain(&chain).map_err(|e| e.to_string())?;
        self.vq.publish();
        self.transport.notify(0).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(used) = self.vq.pop_used() {
                if used.head != head {
                    return Err(format!("completion of chain {} for {head}", used.head));
                }
                // SAFETY: the device is done with the status byte.
                let status = unsafe { std::ptr::read_volatile(status.as_ptr()) };
                return Ok(Outcome {
                    status,
                    used_len: used.len,
                });
            }
            if Instant::now() >= deadline {
                return Err("no completion within 5 s (queue stopped?)".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes `byte` over `len` bytes of the VSA from our own buffer.
    fn fill_vsa(&mut self, byte: u8, len: u32) -> Result<bool, String> {
        let mut buf = self.alloc(len as usize)?;
        buf.as_mut_slice().fill(byte);
        let data = Buf {
            iova: buf.iova(),
            len,
            device_writes: false,
        };
        Ok(self.request(VIRTIO_BLK_T_OUT, data)?.status == VIRTIO_BLK_S_OK)
    }

    /// Reads `len` bytes of the VSA into our own buffer.
    fn read_vsa(&mut self, len: u32) -> Result<Option<Vec<u8>>, String> {
        let buf = self.alloc(len as usize)?;
        let data = Buf {
            iova: buf.iova(),
            len,
            device_writes: true,
        };
        let ok = self.request(VIRTIO_BLK_T_IN, data)?.status == VIRTIO_BLK_S_OK;
        Ok(ok.then(|| buf.as_slice().to_vec()))
    }

    fn ring(&self) -> (u64, u64) {
        let a = self.vq.addrs();
        (a.desc, a.used)
    }
}

fn refused(o: &Outcome) -> bool {
    o.used_len == 0 && (o.status == VIRTIO_BLK_S_IOERR || o.status == UNTOUCHED)
}

fn attack(args: &[String]) -> Result<bool, String> {
    let spec = args.first().ok_or_else(usage)?;
    let slot = number(option(args, "--slot").ok_or_else(usage)?)? as u32;
    let offset = option(args, "--offset").map_or(Ok(0), number)?;
    let mut probes = Vec::new();
    let mut skip = false;
    for a in &args[1..] {
        if skip {
            skip = false;
        } else if a == "--slot" || a == "--offset" {
            skip = true;
        } else {
            probes.push((a.clone(), parse_probe(a)?));
        }
    }
    if probes.is_empty() {
        return Err(usage());
    }
    let mut d = Driver::open(spec)?;
    d.sector = (slot_base(slot) + offset) / 512;
    let mut all_as_expected = true;
    for (name, probe) in probes {
        let (outcome, verdict) = match probe {
            Probe::Own => {
                let wrote = d.fill_vsa(0x11, 4096)?;
                let back = d.read_vsa(4096)?;
                let ok = wrote && back.is_some_and(|b| b.iter().all(|&x| x == 0x11));
                (None, if ok { "ok" } else { "failed" })
            }
            Probe::Read { addr, len } => read_probe(&mut d, addr, len)?,
            Probe::Write { addr, len } => {
                let o = d.request(
                    VIRTIO_BLK_T_IN,
                    Buf {
                        iova: addr,
                        len,
                        device_writes: true,
                    },
                )?;
                let v = if refused(&o) { "refused" } else { "served" };
                (Some(o), v)
            }
            Probe::RingRead => {
                let (desc, _) = d.ring();
                read_probe(&mut d, desc, 512)?
            }
            Probe::RingWrite => {
                let (_, used) = d.ring();
                let o = d.request(
                    VIRTIO_BLK_T_IN,
                    Buf {
                        iova: used,
                        len: 512,
                        device_writes: true,
                    },
                )?;
                let v = if refused(&o) { "refused" } else { "served" };
                (Some(o), v)
            }
        };
        let expected = if name == "own" { "ok" } else { "refused" };
        all_as_expected &= verdict == expected;
        match outcome {
            Some(o) => println!(
                "probe={name} status={} used_len={} outcome={verdict}",
                o.status, o.used_len
            ),
            None => println!("probe={name} outcome={verdict}"),
        }
    }
    Ok(all_as_expected)
}

/// The device reads `len` bytes at `addr` into the VSA (which holds the
/// marker before); then the VSA is read back through our own buffer.
fn read_probe(
    d: &mut Driver,
    addr: u64,
    len: u32,
) -> Result<(Option<Outcome>, &'static str), String> {
    if !d.fill_vsa(MARKER, len)? {
        return Err("writing the marker to the VSA failed".into());
    }
    let o = d.request(
        VIRTIO_BLK_T_OUT,
        Buf {
            iova: addr,
            len,
            device_writes: false,
        },
    )?;
    let back = d.read_vsa(len)?.ok_or("reading the VSA back failed")?;
    let verdict = if back.iter().any(|&b| b != MARKER) {
        "leaked"
    } else if refused(&o) {
        "refused"
    } else {
        "served"
    };
    Ok((Some(o), verdict))
}
