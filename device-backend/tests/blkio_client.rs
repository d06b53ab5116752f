//! A client we did not write: the `blkio` crate's virtio-blk-vhost-user
//! driver against a VSIC socket. It must see the slot-0 VSA's capacity,
//! read and write it with the same bytes the `vsic` library sees, and get
//! an error for a read past the end.

mod common;

use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use blkio::{Blkio, Blkioq, MemoryRegion, ReqFlags};
use common::*;
use vsic::{CompletionMode, VsaHandle};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };
const REGION_LEN: usize = 1 << 20;

/// One connected blkio instance with a mapped memory region.
struct BlkioClient {
    // Field order: queues go before the instance that owns their memory.
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    blkio: Blkio,
}

impl BlkioClient {
    fn connect(socket: &Path, queues: i32) -> BlkioClient {
        BlkioClient::try_connect(socket, queues)
            .unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
    }

    /// Connects on a helper thread: blkio's handshake has no timeout of its
    /// own, and a daemon that never answers must fail the test, not hang it.
    fn try_connect(socket: &Path, queues: i32) -> Result<BlkioClient, String> {
        let (tx, rx) = mpsc::channel();
        let socket = socket.to_path_buf();
        thread::spawn(move || {
            let _ = tx.send(BlkioClient::connect_now(&socket, queues));
        });
        rx.recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| Err(format!("no blkio handshake within {IO_TIMEOUT:?}")))
    }

    fn connect_now(socket: &Path, queues: i32) -> Result<BlkioClient, String> {
        let step = |what: &'static str| move |e: blkio::Error| format!("blkio {what}: {e}");
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(step("new"))?;
        blkio
            .set_str("path", socket.to_str().ok_or("non-UTF-8 path")?)
            .map_err(step("set path"))?;
        blkio.connect().map_err(step("connect"))?;
        blkio
            .set_i32("num-queues", queues)
            .map_err(step("set num-queues"))?;
        let started = blkio.start().map_err(step("start"))?;
        let align = blkio
            .get_u64("mem-region-alignment")
            .map_err(step("get mem-region-alignment"))? as usize;
        let region = blkio
            .alloc_mem_region(REGION_LEN.next_multiple_of(align))
            .map_err(step("alloc region"))?;
        blkio.map_mem_region(&region).map_err(step("map region"))?;
        Ok(BlkioClient {
            queues: started.queues,
            region,
            blkio,
        })
    }

    fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("capacity")
    }

    /// The region's bytes at `offset`.
    fn mem(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.region.len);
        // SAFETY: the region is mapped read-write for its whole length and
        // no request is in flight while the test touches it.
        unsafe { std::slice::from_raw_parts_mut((self.region.addr + offset) as *mut u8, len) }
    }

    /// Waits for one completion on `queue`; returns its result code.
    fn complete(&mut self, queue: usize) -> i32 {
        let mut done = [const { MaybeUninit::uninit() }; 1];
        let mut timeout = IO_TIMEOUT;
        let n = self.queues[queue]
            .do_io(&mut done, 1, Some(&mut timeout), None)
            .expect("blkio do_io");
        assert_eq!(n, 1, "one completion within {IO_TIMEOUT:?}");
        // SAFETY: do_io initialised the first `n` entries.
        let c = unsafe { done[0].assume_init_read() };
        assert_eq!(c.user_data, queue + 1);
        c.ret
    }

    fn read(&mut self, queue: usize, offset: u64, at: usize, len: usize) -> i32 {
        let buf = self.mem(at, len).as_mut_ptr();
        self.queues[queue].read(offset, buf, len, queue + 1, ReqFlags::empty());
        self.complete(queue)
    }

    fn write(&mut self, queue: usize, offset: u64, at: usize, len: usize) -> i32 {
        let buf = self.mem(at, len).as_ptr();
        self.queues[queue].write(offset, buf, len, queue + 1, ReqFlags::empty());
        self.complete(queue)
    }

    fn flush(&mut self, queue: usize) -> i32 {
        self.queues[queue].flush(queue + 1, ReqFlags::empty());
        self.complete(queue)
    }
}

#[test]
fn blkio_reads_and_writes_what_vsic_sees() {
    let d = Daemon::start("blkio");
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    // The same VSA in slot 0 of two VSICs: blkio on one, vsic on the other.
    admin
        .attach(0, 0, &v.token, false)
        .expect("attach to VSIC 0");
    admin
        .attach(1, 0, &v.token, false)
        .expect("attach to VSIC 1");
    let dev = d.open_vsic(1, 1, CompletionMode::Interrupt);

    let mut blk = BlkioClient::connect(&d.vsic_socket(0), 2);
    assert_eq!(blk.capacity(), 4 * MIB, "blkio sees the slot-0 VSA's size");

    // blkio writes (on both queues), vsic reads.
    let first = pattern(0xb1, 64 << 10);
    let second = pattern(0xb2, 8192);
    blk.mem(0, first.len()).copy_from_slice(&first);
    blk.mem(first.len(), second.len()).copy_from_slice(&second);
    assert_eq!(blk.write(0, 64 << 10, 0, first.len()), 0, "blkio write");
    assert_eq!(
        blk.write(1, 4 * MIB - 8192, first.len(), second.len()),
        0,
        "blkio write of the last blocks"
    );
    assert_eq!(blk.flush(0), 0, "blkio flush");
    assert_same(
        &read_back(&dev, 0, 64 << 10, first.len()),
        &first,
        "vsic reads blkio's write",
    );
    assert_same(
        &read_back(&dev, 0, 4 * MIB - 8192, second.len()),
        &second,
        "vsic reads blkio's last blocks",
    );

    // vsic writes, blkio reads.
    let theirs = filled(&dev, 0x5c, 128 << 10);
    dev.write_at(0, SLOT0, MIB, &theirs).expect("vsic write");
    blk.mem(0, 128 << 10).fill(0xee);
    assert_eq!(blk.read(1, MIB, 0, 128 << 10), 0, "blkio read");
    assert_same(
        blk.mem(0, 128 << 10),
        theirs.as_slice(),
        "blkio reads vsic's write",
    );

    // Past the end: refused, nothing returned.
    blk.mem(0, 4096).fill(0xee);
    let past = blk.read(0, 4 * MIB, 0, 4096);
    assert!(past < 0, "blkio read past the end returned {past}");
    let across = blk.read(1, 4 * MIB - 4096, 0, 8192);
    assert!(across < 0, "blkio read across the end returned {across}");
    let before = stats_of(&admin, 0).0.protection_violations;
    assert!(
        before >= 2,
        "refused blkio reads count as violations ({before})"
    );

    // blkio as the client of a socket that vsic used before it.
    drop(blk);
    drop(dev);
    let mut again = Err(String::new());
    let connected = wait_until(Duration::from_secs(10), || {
        again = BlkioClient::try_connect(&d.vsic_socket(1), 1);
        again.is_ok()
    });
    let mut blk =
        again.unwrap_or_else(|e| panic!("blkio on VSIC 1 after vsic left ({connected}): {e}"));
    assert_eq!(blk.read(0, MIB, 0, 128 << 10), 0, "blkio read on VSIC 1");
    assert_same(
        blk.mem(0, 128 << 10),
        theirs.as_slice(),
        "same bytes through the other VSIC",
    );
}
