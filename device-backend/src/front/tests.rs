//! Request handling on crafted descriptor chains: every request type, the
//! odd-but-legal layouts, and the malformed ones.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vsic_abi::admin::{AdminCommand, AdminCompletion, AdminStatus, Opcode};
use vsic_abi::virtio::{self, DiscardSegment, Function};

use super::channel::ConfigChangeSink;
use super::execute::{handle_chain, Completion, Context, RefusalLog, Scratch};
use super::request::{parse_bytes, Refusal};
pub(crate) use crate::controller::target::fake::{FakeTarget, DISK_SIZE};
use crate::controller::target::IoTarget;

/// Held by tests that create or adopt unnamed Unix sockets: adoption looks
/// at every such socket of the process, so they must not overlap.
pub(crate) static SOCKET_TESTS: Mutex<()> = Mutex::new(());

const OK: Option<u8> = Some(virtio::VIRTIO_BLK_S_OK);
const IOERR: Option<u8> = Some(virtio::VIRTIO_BLK_S_IOERR);
const UNSUPP: Option<u8> = Some(virtio::VIRTIO_BLK_S_UNSUPP);
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

#[derive(Default)]
struct Changes(Mutex<Vec<u32>>);

impl ConfigChangeSink for Changes {
    fn config_changed(&self, vsic: u32) {
        self.0.lock().unwrap().push(vsic);
    }
}

/// Guest memory, a mock queue and the fake device.
struct Bench {
    mem: GuestMemoryMmap<()>,
    device: FakeTarget,
    changes: Changes,
    log: RefusalLog,
    scratch: Scratch,
    /// The rings of the queue the last chain came on (see `run_raw`).
    rings: [(u64, u64); 3],
}

/// A descriptor: (guest address, length, device-writable).
type D = (u64, u32, bool);

impl Bench {
    fn new() -> Bench {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        Bench {
            mem,
            device: FakeTarget::new(),
            changes: Changes::default(),
            log: RefusalLog::default(),
            scratch: Scratch::new(),
            rings: Default::default(),
        }
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn header(&self, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.put(addr, &h);
    }

    fn raw(descs: &[D]) -> Vec<RawDescriptor> {
        descs
            .iter()
            .map(|&(addr, len, w)| {
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    if w { VRING_DESC_F_WRITE } else { 0 },
                    0,
                ))
            })
            .collect()
    }

    fn run(&mut self, function: Function, descs: &[D]) -> Completion {
        let raw = Self::raw(descs);
        self.run_raw(function, &raw)
    }

    fn run_raw(&mut self, function: Function, raw: &[RawDescriptor]) -> Completion {
        const QUEUE_SIZE: u16 = 256;
        let queue = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let chain = queue.build_desc_chain(raw).unwrap();
        let dma = match function {
            Function::Vsic(n) => self.device.dma_policy(n),
            Function::Pf => None,
        };
        // The rings of the queue the chain comes on (checked in enforced
        // mode only, as the worker does).
        let n = u64::from(QUEUE_SIZE);
        let rings = [
            (queue.desc_table_addr().0, 16 * n),
            (queue.avail_addr().0, 6 + 2 * n),
            (queue.used_addr().0, 6 + 8 * n),
        ];
        self.rings = rings;
        let ctx = Context {
            timed: false,
            rings: if dma.is_some() {
                rings
            } else {
                Default::default()
            },
            dma: dma.as_deref(),
            function,
            queue: 1,
            target: &self.device,
            config_changes: &self.changes,
            log: &self.log,
            config_settled: &|| {},
        };
        handle_chain(&self.mem, chain, &ctx, &mut self.scratch)
    }

    fn status_at(&self, addr: u64) -> u8 {
        self.get(addr, 1)[0]
    }

    fn errors(&self) -> u32 {
        self.device.errors.load(Ordering::Relaxed)
    }
}

const VSIC0: Function = Function::Vsic(0);
// Guest addresses well clear of the mock queue's rings at 0.
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;

fn disk_pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn read_moves_disk_data_into_guest_memory() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
    b.put(STATUS, &[0xff]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 1025
        }
    );
    assert_eq!(b.status_at(STATUS), 0);
    assert_eq!(b.get(DATA, 1024), disk_pattern(3 * 512, 1024));
    assert_eq!(b.device.calls(), ["Read q1 1536 1024 in 1"]);
    assert_eq!(b.errors(), 0);
}

#[test]
fn header_and_status_may_be_split_anywhere() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 1);
    // Header split 10 + 6, data-in split 100 + 412, the status byte shares
    // the last data descriptor.
    let c = b.run(
        VSIC0,
        &[
            (HDR, 10, false),
            (HDR + 10, 6, false),
            (DATA, 100, true),
            (DATA + 0x1000, 413, true),
        ],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 513
        }
    );
    let want = disk_pattern(512, 512);
    assert_eq!(b.get(DATA, 100), want[..100]);
    assert_eq!(b.get(DATA + 0x1000, 412), want[100..]);
    assert_eq!(b.status_at(DATA + 0x1000 + 412), 0);
    assert_eq!(b.device.calls(), ["Read q1 512 512 in 2"]);
}

#[test]
fn write_with_header_and_data_in_one_descriptor() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_OUT, 4);
    b.put(HDR + 16, &[0xab; 1024]);
    let c = b.run(VSIC0, &[(HDR, 16 + 1024, false), (STATUS, 1, true)]);
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 1
        }
    );
    assert_eq!(
        &b.device.disk.lock().unwrap()[2048..3072],
        &[0xab; 1024][..]
    );
}

#[test]
fn zero_length_descriptors_are_skipped() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_OUT, 0);
    b.put(DATA, &[7; 512]);
    let c = b.run(
        VSIC0,
        &[
            (HDR, 16, false),
            (0xdead_0000_0000, 0, false),
            (DATA, 512, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(c.status, OK);
    assert_eq!(&b.device.disk.lock().unwrap()[..512], &[7; 512][..]);
}

#[test]
fn flush_and_get_id() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_FLUSH, 0);
    let c = b.run(VSIC0, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 1
        }
    );
    assert_eq!(b.device.calls(), ["flush 0 q1"]);

    b.header(HDR, virtio::VIRTIO_BLK_T_GET_ID, 0);
    b.put(DATA, &[0xee; 20]);
    let c = b.run(
        Function::Vsic(3),
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 21
        }
    );
    assert_eq!(b.get(DATA, 20), virtio::serial_for(Function::Vsic(3)));

    // A larger buffer gets the serial zero-padded.
    b.put(DATA, &[0xee; 32]);
    let c = b.run(
        Function::Pf,
        &[(HDR, 16, false), (DATA, 32, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 33
        }
    );
    let got = b.get(DATA, 32);
    assert_eq!(&got[..20], &virtio::serial_for(Function::Pf));
    assert_eq!(&got[20..], &[0; 12]);
}

fn segments(b: &Bench, addr: u64, segs: &[(u64, u32, u32)]) -> u32 {
    for (i, &(sector, num_sectors, flags)) in segs.iter().enumerate() {
        b.put(
            addr + 16 * i as u64,
            &DiscardSegment {
                sector,
                num_sectors,
                flags,
            }
            .encode(),
        );
    }
    16 * segs.len() as u32
}

#[test]
fn discard_and_write_zeroes() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_DISCARD, 0);
    let n = segments(&b, DATA, &[(1, 2, 0), (10, 1, 0), (20, 0, 0)]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 1
        }
    );
    assert_eq!(
        b.device.calls(),
        ["discard 512 1024 false", "discard 5120 512 false"]
    );
    assert!(b.device.disk.lock().unwrap()[512..1536]
        .iter()
        .all(|&x| x == 0));

    // UNMAP is allowed on WRITE_ZEROES ...
    b.header(HDR, virtio::VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let n = segments(&b, DATA, &[(4, 1, DiscardSegment::FLAG_UNMAP)]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)],
    );
    assert_eq!(c.status, OK);
    assert_eq!(b.device.calls().last().unwrap(), "discard 2048 512 true");

    // ... but not on DISCARD, and unknown flags never.
    b.header(HDR, virtio::VIRTIO_BLK_T_DISCARD, 0);
    let n = segments(&b, DATA, &[(4, 1, DiscardSegment::FLAG_UNMAP)]);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)]
        )
        .status,
        UNSUPP
    );
    b.header(HDR, virtio::VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let n = segments(&b, DATA, &[(4, 1, 0x10)]);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)]
        )
        .status,
        UNSUPP
    );

    // Malformed segment lists.
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, 15, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    assert_eq!(
        b.run(VSIC0, &[(HDR, 16, false), (STATUS, 1, true)]).status,
        IOERR
    );
    let many = vec![(0u64, 1u32, 0u32); 65];
    let n = segments(&b, DATA, &many);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    let n = segments(&b, DATA, &[(u64::MAX / 256, 1, 0)]);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    let n = segments(&b, DATA, &[(0, u32::MAX, 0)]);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, n, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    assert_eq!(b.errors(), 7);
}

fn admin_command(b: &Bench, addr: u64, vsic: u32, payload_len: u32) {
    let mut cmd = AdminCommand::new(Opcode::Identify);
    cmd.vsic = vsic;
    cmd.payload_len = payload_len;
    b.put(addr, &cmd.encode());
}

#[test]
fn admin_command_round_trip_on_the_pf() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_VSIC_ADMIN, 0);
    admin_command(&b, HDR + 16, 2, 4);
    b.put(HDR + 80, &[1, 2, 3, 4]);
    b.put(DATA, &[0xcc; 32 + 64]);
    // Completion and payload-in in one buffer, the status in its own.
    let c = b.run(
        Function::Pf,
        &[
            (HDR, 16 + 64 + 4, false),
            (DATA, 32 + 64, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(
        c,
        Completion {
            status: OK,
            used_len: 32 + 64 + 1
        }
    );
    let completion = AdminCompletion::decode(&b.get(DATA, 32)).unwrap();
    assert_eq!(completion.status(), Some(AdminStatus::Ok));
    assert_eq!(completion.result0, 77);
    assert_eq!(completion.payload_len, 4);
    assert_eq!(b.get(DATA + 32, 4), [4, 3, 2, 1]);
    assert!(
        b.get(DATA + 36, 60).iter().all(|&x| x == 0),
        "rest of the payload buffer zeroed"
    );
    assert_eq!(b.device.calls(), ["admin 64 4 64"]);
    assert_eq!(*b.changes.0.lock().unwrap(), [2]);
}

#[test]
fn admin_with_split_command_and_short_command() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_VSIC_ADMIN, 0);
    admin_command(&b, DATA, 0, 0);
    // Command split over two descriptors, completion split too.
    let c = b.run(
        Function::Pf,
        &[
            (HDR, 16, false),
            (DATA, 20, false),
            (DATA + 20, 44, false),
            (STATUS, 16, true),
            (STATUS + 100, 17, true),
        ],
    );
    assert_eq!(c.status, OK);
    assert_eq!(b.device.calls(), ["admin 64 0 0"]);
    let mut completion = b.get(STATUS, 16);
    completion.extend(b.get(STATUS + 100, 16));
    assert_eq!(
        AdminCompletion::decode(&completion).unwrap().status(),
        Some(AdminStatus::Ok)
    );

    // A command shorter than 64 bytes reaches the model, which refuses it.
    let c = b.run(
        Function::Pf,
        &[(HDR, 16, false), (DATA, 40, false), (STATUS, 33, true)],
    );
    assert_eq!(c.status, OK);
    let completion = AdminCompletion::decode(&b.get(STATUS, 32)).unwrap();
    assert_eq!(completion.status(), Some(AdminStatus::BadCommandSize));
}

#[test]
fn admin_refusals() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_VSIC_ADMIN, 0);
    admin_command(&b, HDR + 16, 0, 0);
    // On a VSIC: unsupported.
    let c = b.run(
        VSIC0,
        &[(HDR, 80, false), (DATA, 32, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: UNSUPP,
            used_len: 33
        }
    );
    // No room for the completion.
    let c = b.run(
        Function::Pf,
        &[(HDR, 80, false), (DATA, 31, true), (STATUS, 1, true)],
    );
    assert_eq!(c.status, IOERR);
    // Payload larger than the ABI allows.
    let c = b.run(
        Function::Pf,
        &[
            (HDR, 80, false),
            (DATA, (1 << 20) + 1, false),
            (STATUS, 33, true),
        ],
    );
    assert_eq!(c.status, IOERR);
    assert!(b.device.calls().is_empty());
}

#[test]
fn malformed_chains() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 0);
    // No device-writable byte at all: nothing to report into.
    let c = b.run(VSIC0, &[(HDR, 16, false), (DATA, 512, false)]);
    assert_eq!(
        c,
        Completion {
            status: None,
            used_len: 0
        }
    );
    // Header too short.
    assert_eq!(
        b.run(VSIC0, &[(HDR, 10, false), (STATUS, 1, true)]).status,
        IOERR
    );
    // Only a status byte.
    assert_eq!(b.run(VSIC0, &[(STATUS, 1, true)]).status, IOERR);
    // Readable after writable.
    assert_eq!(
        b.run(
            VSIC0,
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (HDR, 16, false),
                (STATUS, 1, true)
            ]
        )
        .status,
        IOERR
    );
    // Data not a multiple of 512.
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, 511, true), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    // Wrong direction: a read with driver data.
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    // Data buffer outside guest memory.
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (1 << 40, 512, true), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    // Address that wraps around.
    assert_eq!(
        b.run(
            VSIC0,
            &[
                (HDR, 16, false),
                (u64::MAX - 10, 512, true),
                (STATUS, 1, true)
            ]
        )
        .status,
        IOERR
    );
    // Status byte outside guest memory: no status, length 0.
    assert_eq!(
        b.run(VSIC0, &[(HDR, 16, false), (1 << 40, 1, true)]),
        Completion {
            status: None,
            used_len: 0
        }
    );
    // Sector so large the byte offset overflows.
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, u64::MAX / 2);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    // Unknown type.
    b.header(HDR, 0x77, 0);
    assert_eq!(
        b.run(VSIC0, &[(HDR, 16, false), (STATUS, 1, true)]).status,
        UNSUPP
    );
    // FLUSH with data.
    b.header(HDR, virtio::VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        b.run(
            VSIC0,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    // I/O on the PF, which has no storage.
    b.header(HDR, virtio::VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        b.run(
            Function::Pf,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]
        )
        .status,
        IOERR
    );
    assert!(
        b.device.calls().is_empty(),
        "nothing malformed reaches the model"
    );
    // Every refusal on a VSIC counts; the PF ones have no VSIC to count in.
    assert_eq!(b.errors(), 12);
}

#[test]
fn device_errors_zero_the_read_buffer() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, (DISK_SIZE / 512) as u64);
    b.put(DATA, &[0x55; 1024]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: IOERR,
            used_len: 1025
        }
    );
    assert_eq!(b.get(DATA, 1024), vec![0; 1024]);
    assert_eq!(b.status_at(STATUS), virtio::VIRTIO_BLK_S_IOERR);
}

/// Writes an indirect table of `n` descriptors at `table` and returns the
/// single queue descriptor that points to it.
fn indirect(b: &Bench, table: u64, descs: &[D]) -> RawDescriptor {
    for (i, &(addr, len, w)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let flags = if w { VRING_DESC_F_WRITE } else { 0 } | if last { 0 } else { 1 };
        let d = SplitDescriptor::new(addr, len, flags, (i + 1) as u16);
        let raw = RawDescriptor::from(d);
        b.mem
            .write_obj(raw, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    RawDescriptor::from(SplitDescriptor::new(
        table,
        16 * descs.len() as u32,
        VRING_DESC_F_INDIRECT,
        0,
    ))
}

#[test]
fn indirect_chains_and_descriptor_limits() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 0);
    // A good indirect chain with 8 data segments of 512 bytes.
    let mut descs = vec![(HDR, 16, false)];
    descs.extend((0..8).map(|i| (DATA + 0x1000 * i, 512, true)));
    descs.push((STATUS, 1, true));
    let head = indirect(&b, 0x100000, &descs);
    assert_eq!(
        b.run_raw(VSIC0, &[head]),
        Completion {
            status: OK,
            used_len: 8 * 512 + 1
        }
    );
    assert_eq!(b.get(DATA + 0x7000, 512), disk_pattern(7 * 512, 512));

    // Far too many descriptors: refused, but the status byte is still found.
    let mut descs = vec![(HDR, 16, false)];
    descs.extend((0..1100).map(|_| (DATA, 512, true)));
    descs.push((STATUS, 1, true));
    let head = indirect(&b, 0x100000, &descs);
    b.put(STATUS, &[0xff]);
    let c = b.run_raw(VSIC0, &[head]);
    assert_eq!(c.status, IOERR);
    assert_eq!(b.status_at(STATUS), virtio::VIRTIO_BLK_S_IOERR);
    assert_eq!(
        b.device.calls().len(),
        1,
        "only the good chain reached the model"
    );
}

#[test]
fn fuzz_entry_survives_arbitrary_bytes() {
    // A small deterministic generator; the point is "never panics".
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut outcomes = [0usize; 4];
    for round in 0..3000 {
        let len = (next() % 600) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && data.len() > 2 {
            // Bias toward plausible chains: few descriptors, small addresses.
            data[1] %= 6;
            let count = data[1] as usize;
            for d in data[2..].chunks_mut(14).take(count) {
                if d.len() == 14 {
                    d[2..8].fill(0);
                    d[1] %= 0x20;
                    d[10..12].fill(0);
                }
            }
        }
        match parse_bytes(&data) {
            None => outcomes[0] += 1,
            Some(Ok(_)) => outcomes[1] += 1,
            Some(Err(Refusal::NoStatus(_))) => outcomes[2] += 1,
            Some(Err(_)) => outcomes[3] += 1,
        }
    }
    assert!(outcomes[2] > 0 && outcomes[3] > 0, "{outcomes:?}");
}

/// VSIC 0 enforced with these (start, len, flags) windows.
fn enforce(b: &Bench, windows: &[(u64, u64, u32)]) {
    use crate::controller::target::DmaWindows;
    let mut t = DmaWindows::default();
    for &(start, len, flags) in windows {
        t = t
            .with(vsic_abi::records::DmaWindow { start, len, flags })
            .unwrap();
    }
    *b.device.dma.lock().unwrap() = Some(t);
}

const DMA_RW: u32 = vsic_abi::admin::FLAG_DMA_READ | vsic_abi::admin::FLAG_DMA_WRITE;

#[test]
fn enforced_dma_refuses_buffers_on_the_queues_own_rings() {
    let mut b = Bench::new();
    // One window over all of the bench's memory, the rings included.
    enforce(&b, &[(0, 0x10_0000, DMA_RW)]);
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!(c.status, OK, "inside the window, off the rings: served");
    let [desc, avail, used] = b.rings;
    let mut seen = 0;
    for (i, (addr, len)) in [desc, avail, used].into_iter().enumerate() {
        let before = b.get(addr, len as usize);
        // Data-in aimed at the ring: the device would rewrite it.
        b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
        let c = b.run(
            VSIC0,
            &[(HDR, 16, false), (addr, 512, true), (STATUS, 1, true)],
        );
        assert_eq!(c.status, IOERR, "ring {i} at {addr:#x}: {c:?}");
        assert_eq!(c.used_len, 0);
        seen += 1;
        assert_eq!(b.device.violations.load(Ordering::Relaxed), seen);
        // Data-out read from the ring: refused too.
        b.header(HDR, virtio::VIRTIO_BLK_T_OUT, 3);
        let c = b.run(
            VSIC0,
            &[(HDR, 16, false), (addr, 512, false), (STATUS, 1, true)],
        );
        assert_eq!(c.status, IOERR, "ring {i} read: {c:?}");
        seen += 1;
        assert_eq!(b.device.violations.load(Ordering::Relaxed), seen);
        // The ring areas hold what the bench wrote for this chain; compare
        // the used ring only (the others were rewritten for each chain).
        if i == 2 {
            assert_eq!(b.get(addr, len as usize), before, "the used ring changed");
        }
    }
    // A status byte on a ring: nothing written at all.
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
    let c = b.run(VSIC0, &[(HDR, 16, false), (used.0 + 8, 1, true)]);
    assert_eq!(c.status, None);
    assert!(
        !b.device.calls().iter().any(|c| c.starts_with("Write")),
        "a refused request reached the device"
    );
    // Open mode: the ring check is the IOMMU's business, not made.
    *b.device.dma.lock().unwrap() = None;
    b.header(HDR, virtio::VIRTIO_BLK_T_OUT, 3);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (avail.0, 512, false), (STATUS, 1, true)],
    );
    assert_eq!(c.status, OK);
}

#[test]
fn enforced_dma_serves_buffers_inside_the_windows() {
    let mut b = Bench::new();
    enforce(&b, &[(HDR, 0x30000, DMA_RW)]);
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!(c.status, OK);
    assert_eq!(b.get(DATA, 1024), disk_pattern(3 * 512, 1024));
    assert_eq!(b.device.violations.load(Ordering::Relaxed), 0);
}

#[test]
fn enforced_dma_refuses_a_buffer_outside_the_windows_untouched() {
    let mut b = Bench::new();
    // Header and status covered, data-in not.
    enforce(&b, &[(HDR, 0x1000, DMA_RW), (STATUS, 0x1000, DMA_RW)]);
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 3);
    b.put(DATA, &[0x5a; 1024]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: IOERR,
            used_len: 0
        }
    );
    assert_eq!(b.status_at(STATUS), virtio::VIRTIO_BLK_S_IOERR);
    assert_eq!(b.get(DATA, 1024), vec![0x5a; 1024], "victim memory changed");
    assert_eq!(b.device.violations.load(Ordering::Relaxed), 1);
    assert!(
        !b.device.calls().iter().any(|c| c.starts_with("Read")),
        "the request reached the device"
    );
    // A header the device may not read: nothing read, IOERR.
    b.header(DATA, virtio::VIRTIO_BLK_T_OUT, 0);
    let c = b.run(VSIC0, &[(DATA, 16 + 512, false), (STATUS, 1, true)]);
    assert_eq!(c.status, IOERR);
    assert_eq!(b.device.violations.load(Ordering::Relaxed), 2);
    // Writing into a read-only window is a violation too.
    b.put(DATA, &[0x5a; 1024]);
    enforce(
        &b,
        &[
            (HDR, 0x1000, DMA_RW),
            (DATA, 0x1000, vsic_abi::admin::FLAG_DMA_READ),
            (STATUS, 0x1000, DMA_RW),
        ],
    );
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(c.status, IOERR);
    assert_eq!(b.get(DATA, 512), vec![0x5a; 512]);
}

#[test]
fn enforced_dma_with_the_status_byte_outside_writes_nothing() {
    let mut b = Bench::new();
    enforce(&b, &[(HDR, 0x20000, DMA_RW)]);
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 0);
    b.put(STATUS, &[0x77]);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(
        c,
        Completion {
            status: None,
            used_len: 0
        }
    );
    assert_eq!(b.status_at(STATUS), 0x77);
    assert_eq!(b.device.violations.load(Ordering::Relaxed), 1);
}

#[test]
fn open_dma_mode_checks_nothing() {
    let mut b = Bench::new();
    b.header(HDR, virtio::VIRTIO_BLK_T_IN, 0);
    let c = b.run(
        VSIC0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(c.status, OK);
    // Windows of the PF are never consulted: the PF is the control plane.
    enforce(&b, &[]);
    let c = b.run(
        Function::Pf,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_ne!(c.status, None);
    assert_eq!(b.device.violations.load(Ordering::Relaxed), 0);
}
