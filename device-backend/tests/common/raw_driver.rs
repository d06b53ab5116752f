//! A driver that builds its descriptor chains by hand, on queue 0: the
//! `vsic` library's vhost-user transport with a split queue written by
//! hand, so a test can put any descriptor chain on it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vsic::dma::DmaPool;
use vsic::transport::vhost_user::VhostUserTransport;
use vsic::transport::Transport;
use vsic::virtqueue::{Buf, RingLayout, SplitQueue, Used};
use vsic::DmaBuffer;
use vsic_abi::virtio::VIRTIO_F_VERSION_1;

use super::IO_TIMEOUT;

/// A driver that builds its descriptor chains by hand, on queue 0.
pub struct RawDriver {
    pub transport: VhostUserTransport,
    pub pool: Arc<DmaPool>,
    pub vq: SplitQueue,
    /// Buffers of requests in flight, kept alive until they complete.
    pub held: Vec<DmaBuffer>,
}

/// One request of [`RawDriver`]: its header and status buffers.
pub struct Sent {
    pub head: u16,
    pub status: DmaBuffer,
    pub at: Instant,
}

/// How a request of [`RawDriver`] came back.
#[derive(Debug)]
pub struct Done {
    pub used: Used,
    pub status: u8,
    pub took: Duration,
}

impl RawDriver {
    pub fn open(socket: &std::path::Path, mem_size: usize, queue_size: u16) -> RawDriver {
        let mut transport =
            VhostUserTransport::connect(socket.to_str().unwrap(), mem_size, Some(IO_TIMEOUT))
                .expect("connect");
        let features = transport.device_features() & (1u64 << VIRTIO_F_VERSION_1);
        transport.set_driver_features(features).expect("features");
        let pool = DmaPool::new(Arc::clone(transport.dma_region()));
        let ring = pool
            .alloc(RingLayout::new(queue_size).total, 4096)
            .expect("ring memory");
        let vq = SplitQueue::new(ring, queue_size, false).expect("queue");
        transport.setup_queue(0, &vq.addrs()).expect("setup queue");
        transport.enable_queues(1).expect("enable queue");
        RawDriver {
            transport,
            pool,
            vq,
            held: Vec::new(),
        }
    }

    pub fn alloc(&self, len: usize) -> DmaBuffer {
        self.pool.alloc(len, 4096).expect("DMA buffer")
    }

    /// Puts a request of type `kind` at `sector` on the queue: the header,
    /// then `data` (as given, may alias), then the status byte if
    /// `separate_status` (else the last byte of `data` is the status).
    pub fn send(&mut self, kind: u32, sector: u64, data: &[Buf], separate_status: bool) -> Sent {
        let sent = self.stage_with(kind, sector, data, separate_status);
        self.kick();
        sent
    }

    /// Puts a request on the queue as [`RawDriver::send`] does (separate
    /// status byte) without making it visible: [`RawDriver::kick`]
    /// publishes every staged request at once, with one notification.
    pub fn stage(&mut self, kind: u32, sector: u64, data: &[Buf]) -> Sent {
        self.stage_with(kind, sector, data, true)
    }

    /// Publishes every chain added so far and notifies the device.
    pub fn kick(&mut self) {
        self.vq.publish();
        self.transport.notify(0).expect("kick");
    }

    fn stage_with(&mut self, kind: u32, sector: u64, data: &[Buf], separate_status: bool) -> Sent {
        let mut header = self.alloc(16);
        header.as_mut_slice()[..4].copy_from_slice(&kind.to_le_bytes());
        header.as_mut_slice()[8..16].copy_from_slice(&sector.to_le_bytes());
        let mut status = self.alloc(1);
        status.as_mut_slice()[0] = 0xff;
        let status_buf = separate_status.then(|| writable(&status, 1));
        let head = self.add_chain(&header, data, status_buf);
        self.held.push(header);
        Sent {
            head,
            status,
            at: Instant::now(),
        }
    }

    /// Puts the chain (the 16 bytes at `header`, `data`, `status`) on the
    /// queue as given and kicks: the caller owns every buffer.
    pub fn send_chain(&mut self, header: &DmaBuffer, data: &[Buf], status: Option<Buf>) -> u16 {
        let head = self.add_chain(header, data, status);
        self.kick();
        head
    }

    /// Adds the chain to the queue without publishing it.
    fn add_chain(&mut self, header: &DmaBuffer, data: &[Buf], status: Option<Buf>) -> u16 {
        let mut chain = vec![Buf {
            iova: header.iova(),
            len: 16,
            device_writes: false,
        }];
        chain.extend_from_slice(data);
        chain.extend(status);
        self.vq.add_chain(&chain).expect("add chain")
    }

    /// Waits up to `timeout` for `sent` to come back.
    pub fn wait(&mut self, sent: &Sent, timeout: Duration) -> Option<Done> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.vq.pop_used() {
                assert_eq!(used.head, sent.head, "completions come in order here");
                if self.vq.in_flight() == 0 {
                    self.held.clear();
                }
                return Some(Done {
                    used,
                    status: sent.status.as_slice()[0],
                    took: sent.at.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl RawDriver {
    /// Waits up to `timeout` for any request to come back, in whatever
    /// order the device completes them.
    pub fn reap(&mut self, timeout: Duration) -> Option<Used> {
        self.reap_with(timeout, || thread::sleep(Duration::from_micros(200)))
    }

    /// As [`RawDriver::reap`], looking at the used ring without sleeping
    /// in between (yielding the CPU only), so the time it returns is within
    /// a few microseconds of the completion's.
    pub fn reap_spinning(&mut self, timeout: Duration) -> Option<Used> {
        self.reap_with(timeout, thread::yield_now)
    }

    /// Pops the used ring until an entry comes or `timeout` passes, calling
    /// `pause` between looks.
    fn reap_with(&mut self, timeout: Duration, pause: impl Fn()) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.vq.pop_used() {
                if self.vq.in_flight() == 0 {
                    self.held.clear();
                }
                return Some(used);
            }
            if Instant::now() >= deadline {
                return None;
            }
            pause();
        }
    }
}

pub fn writable(buf: &DmaBuffer, len: usize) -> Buf {
    Buf {
        iova: buf.iova(),
        len: len as u32,
        device_writes: true,
    }
}
