//! `vsic-storage`: the storage-engine seam every VSIC application uses.
//!
//! A [`BlockDevice`] is durable block storage with asynchronous submit and
//! completion: [`BlockDevice::submit`] queues a read, write or flush and
//! returns at once; [`BlockDevice::poll`] hands finished requests to a
//! callback, [`BlockDevice::wait`] sleeps until there are some. A write is
//! durable once a flush submitted after its completion has completed
//! (virtio-blk semantics), or, on a device with
//! [`BlockDevice::ordered_flush`], once it and a flush submitted after it
//! (completed or not) have completed.
//!
//! Two implementations, chosen by the device name given to [`open`]:
//!
//! * `vhost-user:PATH`, `vsic:N`, a PCI address: the VSA in slot 0 of a
//!   VSIC function, driven from user level through the `vsic` library
//!   ([`vsa::VsaDevice`]). Buffers are DMA memory the function can reach.
//! * `file:PATH`: a file or block device through the kernel: `pread`,
//!   `pwrite` and `fdatasync` on a worker thread ([`file::FileDevice`]).
//!
//! The same application code runs on both, so comparing them isolates the
//! kernel's storage stack.
//!
//! Buffers ([`IoBuf`]) come from the device ([`BlockDevice::alloc`]) and
//! are handed over with the request; the completion gives them back. So a
//! buffer can never be touched or freed while the device uses it.

pub mod batch;
pub mod file;
pub mod vsa;

use std::os::fd::RawFd;
use std::time::Duration;

pub use file::FileDevice;
pub use vsa::VsaDevice;

/// Everything that can go wrong with a device or a request.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bad device name {0:?}: expected vhost-user:PATH, vsic:N, a PCI address or file:PATH")]
    BadSpec(String),
    #[error("cannot open {spec}: {reason}")]
    Open { spec: String, reason: String },
    #[error("{spec}: no storage behind it (capacity 0; is a VSA attached in slot 0?)")]
    NoMedium { spec: String },
    #[error("request at byte {offset} of {len} bytes is not inside the {capacity}-byte device or not aligned to {block} bytes")]
    OutOfRange {
        offset: u64,
        len: usize,
        capacity: u64,
        block: u32,
    },
    #[error("the device failed the request: {0}")]
    Io(String),
    #[error("{what}: {source}")]
    System {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("timed out waiting for the device")]
    Timeout,
    #[error("the device's worker has stopped")]
    Closed,
    #[error(transparent)]
    Vsic(#[from] vsic::Error),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A buffer a device can read from and write into. Its length (the bytes
/// a request moves) can be shrunk and grown within its capacity.
pub struct IoBuf {
    inner: BufInner,
    len: usize,
}

enum BufInner {
    Dma(vsic::DmaBuffer),
    Heap(file::AlignedBox),
}

impl IoBuf {
    fn new(inner: BufInner) -> IoBuf {
        let len = match &inner {
            BufInner::Dma(b) => b.len(),
            BufInner::Heap(b) => b.capacity(),
        };
        IoBuf { inner, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        match &self.inner {
            BufInner::Dma(b) => b.len(),
            BufInner::Heap(b) => b.capacity(),
        }
    }

    /// Sets how many bytes (from the start) the next request moves.
    /// Panics beyond the capacity: that is a bug in the caller.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "IoBuf::set_len({len}) beyond capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            BufInner::Dma(b) => &b.as_slice()[..self.len],
            BufInner::Heap(b) => &b.as_slice()[..self.len],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.inner {
            BufInner::Dma(b) => &mut b.as_mut_slice()[..len],
            BufInner::Heap(b) => &mut b.as_mut_slice()[..len],
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// One request.
#[derive(Debug)]
pub enum Op {
    /// Fills `buf` (its current length) from byte `offset`.
    Read { offset: u64, buf: IoBuf },
    /// Writes `buf` (its current length) at byte `offset`.
    Write { offset: u64, buf: IoBuf },
    /// Makes every write completed before it was submitted durable (and,
    /// with [`BlockDevice::ordered_flush`], every write submitted before it).
    Flush,
}

/// What kind of request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
}

/// A finished request, with its buffer handed back.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub kind: OpKind,
    pub buf: Option<IoBuf>,
    pub result: Result<()>,
}

/// Durable block storage with asynchronous submit and completion.
///
/// One thread at a time drives a device: completions are delivered to
/// whoever polls, so two independent pollers would steal each other's.
pub trait BlockDevice: Send + Sync {
    /// Offsets and lengths of reads and writes are multiples of this.
    fn block_size(&self) -> u32;
    /// Usable bytes, a multiple of the block size.
    fn capacity(&self) -> u64;
    /// A buffer of `len` bytes (rounded up to the block size) this device
    /// can move data with.
    fn alloc(&self, len: usize) -> Result<IoBuf>;
    /// Queues a request; it completes once, through [`BlockDevice::poll`],
    /// with `tag`. On error nothing is queued and the buffer is lost.
    fn submit(&self, op: Op, tag: u64) -> Result<()>;
    /// Hands every finished request to `cb`; never blocks. Returns how many.
    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize;
    /// Sleeps until something can be polled, or the timeout passes
    /// ([`StorageError::Timeout`]).
    fn wait(&self, timeout: Option<Duration>) -> Result<()>;
    /// [`BlockDevice::wait`] by a caller that needs `n` of its requests in
    /// flight before it can go on (writes and the flush covering them): the
    /// device may sleep through the completions before the `n`-th (a VSA
    /// asks for one interrupt, for the last). It may also return earlier,
    /// as [`BlockDevice::wait`] does: poll, then wait for what is left. The
    /// default is [`BlockDevice::wait`].
    fn wait_for(&self, n: usize, timeout: Option<Duration>) -> Result<()> {
        let _ = n;
        self.wait(timeout)
    }
    /// What the device is (for logs and `stats`).
    fn describe(&self) -> String;
    /// True when a completed write is already durable (a write-through
    /// device), so no flush is needed after it. False unless the device
    /// says so; a flush is then required for durability.
    fn durable_writes(&self) -> bool;

    /// A descriptor that becomes readable when completions may be ready
    /// for [`BlockDevice::poll`], for an application's own event loop
    /// (epoll). Register it edge-triggered: nobody drains it, every signal
    /// is a new edge; poll after each. None (the default) when the device
    /// is waited on only through [`BlockDevice::wait`] (polled or hybrid
    /// completions, a file).
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    /// True when a flush also covers the writes submitted before it that
    /// have not completed yet: the device executes requests in the order
    /// submitted, each before the next. A caller may then submit its writes
    /// and the flush together and wait once: when the flush and a write
    /// submitted before it have both completed successfully, the write is
    /// durable. False (the default, virtio-blk semantics): a flush covers
    /// only the writes that had completed when it was submitted, so the
    /// caller waits for its writes before it submits the flush. Either way
    /// each write's own completion says whether it succeeded.
    fn ordered_flush(&self) -> bool {
        false
    }

    /// Submits `op` and waits for it; only when nothing else is in flight.
    fn run(&self, op: Op) -> Result<Option<IoBuf>> {
        const TAG: u64 = u64::MAX;
        self.submit(op, TAG)?;
        let mut done = None;
        while done.is_none() {
            self.poll(&mut |c| {
                if c.tag == TAG {
                    done = Some(c);
                } else {
                    log::warn!(
                        "{}: completion {} dropped by a synchronous call",
                        self.describe(),
                        c.tag
                    );
                }
            });
            if done.is_none() {
                self.wait(Some(Duration::from_secs(30)))?;
            }
        }
        let c = done.expect("loop ends with a completion");
        c.result.map(|()| c.buf)
    }

    /// Reads `len` bytes at `offset` synchronously.
    fn read_at(&self, offset: u64, len: usize) -> Result<IoBuf> {
        let mut buf = self.alloc(len)?;
        buf.set_len(len);
        let buf = self.run(Op::Read { offset, buf })?;
        buf.ok_or(StorageError::Closed)
    }

    /// Writes `data` at `offset` synchronously (not flushed).
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut buf = self.alloc(data.len())?;
        buf.set_len(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        self.run(Op::Write { offset, buf }).map(|_| ())
    }

    /// Flushes synchronously.
    fn flush(&self) -> Result<()> {
        self.run(Op::Flush).map(|_| ())
    }
}

/// How to open a device.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// VSA devices: spin on the completion ring instead of sleeping on an
    /// interrupt eventfd.
    pub polling: bool,
    /// VSA devices (when not `polling`): the `vsic` library's hybrid
    /// completions: a timed sleep, a bounded poll, then the interrupt.
    pub hybrid: bool,
    /// VSA devices: bytes of DMA memory to share with the function.
    pub dma_bytes: usize,
    /// `file:` devices: the size a new or empty file is given.
    pub new_file_size: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            polling: false,
            hybrid: false,
            dma_bytes: 64 << 20,
            new_file_size: 256 << 20,
        }
    }
}

/// Opens `spec`: `file:PATH` through the kernel, anything the `vsic`
/// library opens (`vhost-user:PATH`, `vsic:N`, a PCI address) as a VSA.
pub fn open(spec: &str, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    if let Some(path) = spec.strip_prefix("file:") {
        if path.is_empty() {
            return Err(StorageError::BadSpec(spec.to_string()));
        }
        return Ok(Box::new(FileDevice::open(path, opts)?));
    }
    if spec.starts_with("vhost-user:")
        || spec.starts_with("vsic:")
        || spec.starts_with("pci:")
        || spec.contains(':')
    {
        return Ok(Box::new(VsaDevice::open(spec, opts)?));
    }
    Err(StorageError::BadSpec(spec.to_string()))
}

/// Checks that a request lies inside the device and is block-aligned.
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than the MSRV
pub(crate) fn check_range(offset: u64, len: usize, capacity: u64, block: u32) -> Result<()> {
    let b = u64::from(block);
    let ok = offset % b == 0
        && (len as u64) % b == 0
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= capacity);
    if ok {
        Ok(())
    } else {
        Err(StorageError::OutOfRange {
            offset,
            len,
            capacity,
            block,
        })
    }
}
