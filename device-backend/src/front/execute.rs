//! Executing a request: moving data between guest memory and the device
//! without an intermediate copy, writing the status byte, and reporting how
//! many bytes went into the device-writable buffers (used.len).
//!
//! used.len rule: when a status byte is written, every byte of the
//! writable stream has been written too (data on success, zeroes on
//! failure, zero padding after short replies), so used.len is the whole
//! writable length. When no status byte can be written it is 0, and it is
//! 0 too for a chain refused as oversized (see [`Chain::oversized`]), of
//! which only the status byte is written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryBackend;
use vsic_abi::admin::AdminCompletion;
use vsic_abi::virtio::{self, serial_for, Function};

use super::chain::{Chain, Stream};
use super::channel::ConfigChangeSink;
use super::request::{check_segment, parse_gathered, read_segment, Refusal, Request};
use crate::controller::target::{
    BufferStorage, DmaAccess, DmaWindows, IoBuffers, IoKind, Target, Work,
};

/// How a chain completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The virtio status written, or `None` when the chain had no usable
    /// status byte.
    pub status: Option<u8>,
    /// The used.len to report.
    pub used_len: u32,
}

/// Per-queue scratch space, reused across requests so the data path does
/// not allocate.
pub struct Scratch {
    pub chain: Chain,
    buffers: BufferStorage,
    admin: Vec<u8>,
    /// What the last chain asked of the drives, when it succeeded and the
    /// context is timed (for the drive timing model); else `None`.
    pub work: Option<Work>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            chain: Chain::new(),
            buffers: BufferStorage::with_capacity(256),
            admin: Vec::new(),
            work: None,
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// Who is asking: the function and queue a chain arrived on, and where
/// its effects go.
pub struct Context<'a> {
    pub function: Function,
    pub queue: u16,
    pub target: &'a dyn Target,
    pub config_changes: &'a dyn ConfigChangeSink,
    pub log: &'a RefusalLog,
    /// Waits (bounded) until the frontend has re-read the configuration
    /// announced when the device started; GET_ID calls it first, so a
    /// driver that identifies the device after starting it then reads the
    /// current capacity.
    pub config_settled: &'a dyn Fn(),
    /// The VSIC's DMA windows when it is in enforced mode (a snapshot
    /// taken once per batch); `None` in open mode and on the PF.
    pub dma: Option<&'a DmaWindows>,
    /// The drive timing model is on: [`handle_chain`] records what a
    /// request that succeeded asked of the drives in [`Scratch::work`].
    pub timed: bool,
    /// In enforced mode, where the rings of the queue the chain came on
    /// are: no buffer may overlap them, though they lie inside the windows
    /// (the device would otherwise rewrite the driver's own descriptors).
    pub rings: RingAreas,
}

/// A queue's descriptor table, available ring and used ring, as (guest
/// address, length); length 0 = none.
pub type RingAreas = [(u64, u64); 3];

/// Whether `[addr, addr + len)` overlaps one of `rings`.
fn overlaps_ring(rings: &RingAreas, addr: u64, len: u64) -> bool {
    let end = addr.saturating_add(len);
    rings
        .iter()
        .any(|&(a, l)| l > 0 && len > 0 && addr < a.saturating_add(l) && a < end)
}

impl Context<'_> {
    fn vsic(&self) -> Option<u32> {
        match self.function {
            Function::Vsic(n) => Some(n),
            Function::Pf => None,
        }
    }
}

/// Parses and executes one descriptor chain.
pub fn handle_chain<M: GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    ctx: &Context<'_>,
    scratch: &mut Scratch,
) -> Completion {
    scratch.chain.gather(mem, descs);
    scratch.work = None;
    if let (Some(vsic), Some(windows)) = (ctx.vsic(), ctx.dma) {
        if let Some(refused) = check_dma(mem, &scratch.chain, windows, ctx, vsic) {
            return refused;
        }
    }
    let (status, data_in_written) = match parse_gathered(mem, ctx.function, &scratch.chain) {
        Ok(request) => {
            let done = execute(mem, request, ctx, scratch);
            if ctx.timed && done.0 == virtio::VIRTIO_BLK_S_OK {
                scratch.work = drive_work(mem, &scratch.chain, request);
            }
            done
        }
        Err(refusal) => {
            refuse(ctx, &refusal);
            match refusal.status() {
                Some(status) => (status, false),
                None => {
                    return Completion {
                        status: None,
                        used_len: 0,
                    }
                }
            }
        }
    };
    finish(mem, &scratch.chain, status, data_in_written)
}

/// What a request that succeeded asked of the drives; `None` for the
/// requests the model does not time (GET_ID, admin).
fn drive_work<M: GuestMemoryBackend>(mem: &M, chain: &Chain, request: Request) -> Option<Work> {
    match request {
        Request::Read { offset, len } => Some(Work::Read { offset, len }),
        Request::Write { offset, len } => Some(Work::Write { offset, len }),
        Request::Flush => Some(Work::Flush),
        Request::Discard { .. } | Request::WriteZeroes { .. } => {
            let seg = read_segment(mem, chain, 0)?;
            let offset = seg.sector.checked_mul(virtio::SECTOR_SIZE)?;
            Some(Work::Zero { offset })
        }
        Request::GetId | Request::Admin { .. } => None,
    }
}

/// Enforced DMA mode: checks every buffer of the chain against the VSIC's
/// windows and its queue's rings before any byte moves (one lookup each). A violation completes
/// the chain with IOERR written to the status byte and nothing else
/// touched, or, when the status byte itself lies outside the windows,
/// with nothing written at all (used.len 0 either way).
fn check_dma<M: GuestMemoryBackend>(
    mem: &M,
    chain: &Chain,
    windows: &DmaWindows,
    ctx: &Context<'_>,
    vsic: u32,
) -> Option<Completion> {
    let outside = |stream, access| {
        chain.segments(stream).iter().find(|s| {
            !windows.permits(s.addr, u64::from(s.len), access)
                || overlaps_ring(&ctx.rings, s.addr, u64::from(s.len))
        })
    };
    let bad = outside(Stream::Readable, DmaAccess::Read)
        .or_else(|| outside(Stream::Writable, DmaAccess::Write))?;
    ctx.target
        .dma_violation(vsic, ctx.queue, bad.addr, u64::from(bad.len));
    let unwritten = Completion {
        status: None,
        used_len: 0,
    };
    let Some(addr) = chain.status_addr() else {
        return Some(unwritten);
    };
    if !windows.permits(addr.0, 1, DmaAccess::Write) || overlaps_ring(&ctx.rings, addr.0, 1) {
        return Some(unwritten);
    }
    let status = virtio::VIRTIO_BLK_S_IOERR;
    if vm_memory::Bytes::write_slice(mem, &[status], addr).is_err() {
        return Some(unwritten);
    }
    Some(Completion {
        status: Some(status),
        used_len: 0,
    })
}

fn refuse(ctx: &Context<'_>, refusal: &Refusal) {
    if let Some(vsic) = ctx.vsic() {
        ctx.target.count_error(vsic, ctx.queue);
    }
    if ctx.log.allow() {
        warn!(
            "{:?} queue {}: request refused: {}",
            ctx.function,
            ctx.queue,
            refusal.reason()
        );
    }
}

/// Zero-fills data-in that was not written, writes the status byte and
/// computes used.len.
fn finish<M: GuestMemoryBackend>(
    mem: &M,
    chain: &Chain,
    status: u8,
    data_in_written: bool,
) -> Completion {
    // An oversized chain's buffers are left alone: only the status byte
    // is written, so refusing it costs the same whatever it claims.
    let data_in_written = data_in_written
        || (!chain.oversized() && chain.zero(mem, Stream::Writable, 0, chain.data_in_len()));
    let Some(addr) = chain.status_addr() else {
        return Completion {
            status: None,
            used_len: 0,
        };
    };
    if vm_memory::Bytes::write_slice(mem, &[status], addr).is_err() {
        return Completion {
            status: None,
            used_len: 0,
        };
    }
    let used_len = if data_in_written {
        u32::try_from(chain.len(Stream::Writable)).unwrap_or(u32::MAX)
    } else {
        0
    };
    Completion {
        status: Some(status),
        used_len,
    }
}

/// Runs a well-formed request; returns the status and whether every data-in
/// byte was written.
fn execute<M: GuestMemoryBackend>(
    mem: &M,
    request: Request,
    ctx: &Context<'_>,
    scratch: &mut Scratch,
) -> (u8, bool) {
    const OK: u8 = virtio::VIRTIO_BLK_S_OK;
    const IOERR: u8 = virtio::VIRTIO_BLK_S_IOERR;
    let chain = &scratch.chain;
    match request {
        Request::Read { offset, len } | Request::Write { offset, len } => {
            let Some(vsic) = ctx.vsic() else {
                return (IOERR, false);
            };
            // A zero-length request is checked like any other (enabled
            // VSIC, attached slot, offset within the VSA): it reaches the
            // device with no buffers.
            let (kind, stream, start) = match request {
                Request::Read { .. } => (IoKind::Read, Stream::Writable, 0),
                _ => (
                    IoKind::Write,
                    Stream::Readable,
                    virtio::REQ_HEADER_LEN as u64,
                ),
            };
            let mut bufs = scratch.buffers.start();
            if !map_buffers(mem, chain, stream, start, len, &mut bufs) {
                return (IOERR, false);
            }
            let result = ctx.target.io(vsic, ctx.queue, kind, offset, &bufs);
            match result {
                Ok(n) if n as u64 == len => (OK, kind == IoKind::Read),
                Ok(n) => {
                    debug!(
                        "vsic{vsic} queue {}: short {kind:?} at {offset:#x}: {n} of {len}",
                        ctx.queue
                    );
                    (IOERR, false)
                }
                Err(e) => {
                    debug!(
                        "vsic{vsic} queue {}: {kind:?} at {offset:#x}+{len}: {e:?}",
                        ctx.queue
                    );
                    (e.virtio_status(), false)
                }
            }
        }
        Request::Flush => match ctx.vsic() {
            None => (OK, true),
            Some(vsic) => match ctx.target.flush(vsic, ctx.queue) {
                Ok(()) => (OK, true),
                Err(e) => {
                    debug!("vsic{vsic} queue {}: flush: {e:?}", ctx.queue);
                    (e.virtio_status(), false)
                }
            },
        },
        Request::GetId => {
            (ctx.config_settled)();
            let serial = serial_for(ctx.function);
            let n = (serial.len() as u64).min(chain.data_in_len());
            let written = chain.write(mem, Stream::Writable, 0, &serial[..n as usize])
                && chain.zero(mem, Stream::Writable, n, chain.data_in_len() - n);
            if written {
                (OK, true)
            } else {
                (IOERR, false)
            }
        }
        Request::Discard { segments } | Request::WriteZeroes { segments } => {
            let Some(vsic) = ctx.vsic() else {
                return (IOERR, false);
            };
            let zero = matches!(request, Request::WriteZeroes { .. });
            for i in 0..u64::from(segments) {
                // Read again: the guest may have changed it since parsing.
                let Some(seg) = read_segment(mem, chain, i) else {
                    return (IOERR, false);
                };
                let (offset, len) = match check_segment(&seg, zero) {
                    Ok(range) => range,
                    Err(refusal) => return (refusal.status().unwrap_or(IOERR), false),
                };
                if len == 0 {
                    continue;
                }
                if let Err(e) = ctx.target.discard(vsic, ctx.queue, offset, len, zero) {
                    debug!(
                        "vsic{vsic} queue {}: discard {offset:#x}+{len}: {e:?}",
                        ctx.queue
                    );
                    return (e.virtio_status(), false);
                }
            }
            (OK, true)
        }
        Request::Admin {
            command_len,
            payload_len,
            reply_capacity,
        } => {
            let buf = &mut scratch.admin;
            buf.clear();
            buf.resize(command_len + payload_len, 0);
            if !chain.read(mem, Stream::Readable, virtio::REQ_HEADER_LEN as u64, buf) {
                return (IOERR, false);
            }
            let (command, payload) = buf.split_at(command_len);
            let reply = ctx.target.admin(command, payload, reply_capacity);
            let n = reply.payload.len().min(reply_capacity);
            let mut completion = reply.completion;
            completion.payload_len = completion.payload_len.min(n as u32);
            let at = AdminCompletion::LEN as u64;
            let rest = chain.data_in_len() - at - n as u64;
            let written = chain.write(mem, Stream::Writable, at, &reply.payload[..n])
                && chain.zero(mem, Stream::Writable, at + n as u64, rest)
                && chain.write(mem, Stream::Writable, 0, &completion.encode());
            if !written {
                return (IOERR, false);
            }
            for vsic in reply.changed_vsics {
                ctx.config_changes.config_changed(vsic);
            }
            (OK, true)
        }
    }
}

/// Collects the guest memory of `len` bytes of `stream` from `start` into
/// `bufs`, pointing straight into guest memory (nothing is copied). The
/// device-writable stream is marked dirty, since a read may write all of
/// it. False if any part is not mapped.
fn map_buffers<'m, M: GuestMemoryBackend>(
    mem: &'m M,
    chain: &Chain,
    stream: Stream,
    start: u64,
    len: u64,
    bufs: &mut IoBuffers<'m>,
) -> bool {
    bufs.clear();
    for (addr, n) in chain.ranges(stream, start, len) {
        for slice in mem.get_slices(addr, n) {
            let Ok(slice) = slice else {
                bufs.clear();
                return false;
            };
            if stream == Stream::Writable {
                slice.bitmap().mark_dirty(0, slice.len());
            }
            bufs.push(slice);
        }
    }
    if bufs.len() != len {
        bufs.clear();
        return false;
    }
    true
}

/// Rate limit for refusal warnings: a guest sending garbage must not flood
/// the log. Allows a few lines per second per function.
#[derive(Default)]
pub struct RefusalLog {
    second: AtomicU64,
    count: AtomicU64,
}

impl RefusalLog {
    const PER_SECOND: u64 = 5;

    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}
