//! A VSA through the `vsic` library: the VSA in slot 0 of a VSIC function
//! (`vhost-user:PATH` on the host, `vsic:N` or a PCI address in a guest),
//! driven from user level on queue 0. Buffers are DMA memory.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vsic::{CompletionMode, Device, Request, VsaHandle, VsaRange};

use crate::{
    check_range, BlockDevice, BufInner, Completion, IoBuf, Op, OpKind, OpenOptions, Result,
    StorageError,
};

const BLOCK: u32 = 4096;
const QUEUE: u16 = 0;
const SLOT: VsaHandle = VsaHandle { slot: 0 };

struct InFlight {
    tag: u64,
    kind: OpKind,
    buf: Option<IoBuf>,
}

/// The slot-0 VSA of one VSIC function.
pub struct VsaDevice {
    spec: String,
    dev: Device,
    capacity: u64,
    next_id: AtomicU64,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    /// Completions harvested while waiting for ring space.
    stash: Mutex<VecDeque<Completion>>,
    /// Completions are signalled on the queue's interrupt eventfd.
    interrupts: bool,
}

impl VsaDevice {
    pub fn open(spec: &str, opts: &OpenOptions) -> Result<VsaDevice> {
        let vopts = vsic::OpenOptions {
            queues: Some(1),
            mem_size: opts.dma_bytes,
            mode: if opts.polling {
                CompletionMode::Polling
            } else if opts.hybrid {
                CompletionMode::Hybrid
            } else {
                CompletionMode::Interrupt
            },
            ..vsic::OpenOptions::default()
        };
        let dev = Device::open(spec, &vopts).map_err(|e| StorageError::Open {
            spec: spec.to_string(),
            reason: e.to_string(),
        })?;
        let capacity = dev.capacity()? / u64::from(BLOCK) * u64::from(BLOCK);
        if capacity == 0 {
            return Err(StorageError::NoMedium {
                spec: spec.to_string(),
            });
        }
        if dev.read_only() {
            return Err(StorageError::Open {
                spec: spec.to_string(),
                reason: "the VSA is attached read-only".into(),
            });
        }
        Ok(VsaDevice {
            spec: spec.to_string(),
            dev,
            capacity,
            next_id: AtomicU64::new(1),
            in_flight: Mutex::new(HashMap::new()),
            stash: Mutex::new(VecDeque::new()),
            interrupts: !opts.polling && !opts.hybrid,
        })
    }

    fn harvest(&self, out: &mut dyn FnMut(Completion)) -> usize {
        let mut found = Vec::new();
        self.dev.poll(QUEUE, &mut |c| found.push(c));
        let n = found.len();
        if n == 0 {
            return 0;
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<Completion> = found
            .into_iter()
            .filter_map(|c| {
                let f = map.remove(&c.user_data)?;
                Some(Completion {
                    tag: f.tag,
                    kind: f.kind,
                    buf: f.buf,
                    result: c.result.map_err(|s| StorageError::Io(format!("{s:?}"))),
                })
            })
            .collect();
        drop(map);
        done.into_iter().for_each(out);
        n
    }
}

impl BlockDevice for VsaDevice {
    fn block_size(&self) -> u32 {
        BLOCK
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn alloc(&self, len: usize) -> Result<IoBuf> {
        let len = len.max(1).next_multiple_of(BLOCK as usize);
        Ok(IoBuf::new(BufInner::Dma(self.dev.alloc_dma(len)?)))
    }

    fn submit(&self, op: Op, tag: u64) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kind, offset, buf) = match op {
            Op::Read { offset, buf } => (OpKind::Read, offset, Some(buf)),
            Op::Write { offset, buf } => (OpKind::Write, offset, Some(buf)),
            Op::Flush => (OpKind::Flush, 0, None),
        };
        if let Some(b) = &buf {
            check_range(offset, b.len(), self.capacity, BLOCK)?;
        }
        // Registered first: the completion may arrive before submit returns.
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                InFlight {
                    tag,
                    kind,
                    buf: None,
                },
            );
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            let r = match &buf {
                None => self.dev.submit(QUEUE, Request::flush(), id),
                Some(b) => {
                    let BufInner::Dma(d) = &b.inner else {
                        break Err(StorageError::Io(
                            "buffer not allocated by this device".into(),
                        ));
                    };
                    let mem = [d.range(0, b.len())?];
                    let ranges = [VsaRange::new(offset, b.len() as u64)];
                    let req = match kind {
                        OpKind::Read => Request::read(SLOT, &mem, &ranges),
                        _ => Request::write(SLOT, &mem, &ranges),
                    };
                    self.dev.submit(QUEUE, req, id)
                }
            };
            match r {
                Ok(()) => break Ok(()),
                Err(vsic::Error::QueueFull) if Instant::now() < deadline => {
                    let mut stash = Vec::new();
                    if self.harvest(&mut |c| stash.push(c)) == 0 {
                        match self.dev.wait(QUEUE, Some(Duration::from_millis(10))) {
                            Ok(()) | Err(vsic::Error::Timeout) => {}
                            Err(e) => break Err(e.into()),
                        }
                    }
                    self.stash
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(stash);
                }
                Err(vsic::Error::QueueFull) => break Err(StorageError::Timeout),
                Err(e) => break Err(e.into()),
            }
        };
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                // Hand the buffer to the in-flight entry (still there: only
                // poll removes it, and it needs the entry's lock).
                if let Some(f) = map.get_mut(&id) {
                    f.buf = buf;
                }
                Ok(())
            }
            Err(e) => {
                map.remove(&id);
                Err(e)
            }
        }
    }

    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize {
        let stashed: VecDeque<Completion> =
            std::mem::take(&mut *self.stash.lock().unwrap_or_else(|p| p.into_inner()));
        let mut n = stashed.len();
        stashed.into_iter().for_each(&mut *cb);
        n += self.harvest(cb);
        n
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.wait_for(1, timeout)
    }

    fn wait_for(&self, n: usize, timeout: Option<Duration>) -> Result<()> {
        if !self
            .stash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        match self.dev.wait_for(QUEUE, n, timeout) {
            Ok(()) => Ok(()),
            Err(vsic::Error::Timeout) => Err(StorageError::Timeout),
            Err(e) => Err(e.into()),
        }
    }

    /// The queue's interrupt eventfd, with interrupts: once it is taken
    /// the `vsic` library re-arms the interrupt whenever it finds the ring
    /// empty, so a completion after a poll is signalled. Polled and hybrid
    /// queues run with the interrupt off.
    fn completion_fd(&self) -> Option<RawFd> {
        let fd = self.dev.interrupt_fd(QUEUE);
        (self.interrupts && fd >= 0).then_some(fd)
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} bytes, VSA through vsic, {})",
            self.spec,
            self.capacity,
            if self.dev.write_through() {
                "write-through"
            } else {
                "write-back"
            }
        )
    }

    fn durable_writes(&self) -> bool {
        self.dev.write_through()
    }

    /// Every request goes to the one queue this device opens, in the order
    /// submitted, and a VSIC function executes a queue's requests in the
    /// order taken, each before the next: its FLUSH covers every write
    /// taken before it on the queue, completed or not (docs/device-spec.md,
    /// Durability, "Ordered FLUSH"). On a write-through function the flush
    /// is a no-op and each write is durable when it completes.
    fn ordered_flush(&self) -> bool {
        true
    }
}
