//! How a commit reaches the device: the data blocks of the operations are
//! held until the commit, which submits them with its unit (and the flush,
//! when the device orders flushes) and then waits: one round trip on an
//! ordered device, two on another. Held data is read back before the
//! commit, and more than the hold limit goes out early, unflushed, as does
//! a write of 64 KiB or more.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Backend;
use vsic_fs::Fs;
use vsic_storage::{BlockDevice, Completion, IoBuf, Op, Result};

/// A device that records what its caller does, one letter per event:
/// `R`/`W`/`F` a read, write or flush submitted, `c` a completion handed
/// back. It claims ordered flushes or not as told.
struct Recorder {
    inner: Box<dyn BlockDevice>,
    ordered: bool,
    events: Arc<Mutex<String>>,
}

impl Recorder {
    fn note(&self, c: char) {
        self.events.lock().unwrap().push(c);
    }
}

impl BlockDevice for Recorder {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn alloc(&self, len: usize) -> Result<IoBuf> {
        self.inner.alloc(len)
    }
    fn submit(&self, op: Op, tag: u64) -> Result<()> {
        self.note(match op {
            Op::Read { .. } => 'R',
            Op::Write { .. } => 'W',
            Op::Flush => 'F',
        });
        self.inner.submit(op, tag)
    }
    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize {
        self.inner.poll(&mut |c| {
            self.note('c');
            cb(c)
        })
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        self.inner.wait(timeout)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn durable_writes(&self) -> bool {
        self.inner.durable_writes()
    }
    fn ordered_flush(&self) -> bool {
        self.ordered
    }
}

fn recorded(b: &Backend, ordered: bool) -> (Fs, Arc<Mutex<String>>) {
    let events = Arc::new(Mutex::new(String::new()));
    let dev = Recorder {
        inner: b.dev(),
        ordered,
        events: Arc::clone(&events),
    };
    (Fs::mkfs(Box::new(dev)).expect("mkfs"), events)
}

/// Round trips: groups of submissions, each ended by collecting.
fn round_trips(events: &str) -> usize {
    events
        .as_bytes()
        .windows(2)
        .filter(|w| w[0] != b'c' && w[1] == b'c')
        .count()
}

#[test]
fn a_commit_waits_for_the_device_once_when_flushes_are_ordered() {
    for (ordered, want, trips) in [(true, "WWFccc", 1), (false, "WWccFc", 2)] {
        let b = Backend::file("fs-commit", 16 << 20);
        let (mut fs, events) = recorded(&b, ordered);
        events.lock().unwrap().clear();
        // Create, write 4 KiB, close: the NFS small-file workload's calls.
        let fd = fs.create("/f", 0o644).unwrap();
        fs.write(fd, &[5u8; 4096]).unwrap();
        fs.close(fd).unwrap();
        assert_eq!(
            fs.read_file("/f").unwrap(),
            vec![5u8; 4096],
            "held data reads back before the commit"
        );
        assert_eq!(
            *events.lock().unwrap(),
            "",
            "nothing reaches the device before the commit"
        );
        fs.sync().unwrap();
        let got = events.lock().unwrap().clone();
        assert_eq!(
            got, want,
            "ordered={ordered}: data block, unit, flush; {trips} round trip(s)"
        );
        assert_eq!(round_trips(&got), trips);
        drop(fs);
        let fs = b.mount();
        fs.check().unwrap();
        assert_eq!(fs.read_file("/f").unwrap(), vec![5u8; 4096]);
    }
}

/// Writes beyond the hold limit (8 MiB) go out before the commit, without
/// a flush; everything reads back before and after the commit, and a
/// remount without the commit has none of it.
#[test]
fn held_data_is_bounded_and_reads_back() {
    let b = Backend::file("fs-held", 64 << 20);
    let (mut fs, events) = recorded(&b, true);
    fs.sync().unwrap();
    events.lock().unwrap().clear();
    let data: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let fd = fs.create("/big", 0o644).unwrap();
    for chunk in data.chunks(8 << 10) {
        fs.write(fd, chunk).unwrap();
    }
    // A partial overwrite of a block still held, then a truncation into
    // the middle of one: both read the held data first.
    let tail = data.len() - 100;
    fs.pwrite(fd, b"xyz", tail as u64).unwrap();
    fs.truncate("/big", tail as u64 + 2).unwrap();
    let mut want = data.clone();
    want.truncate(tail + 2);
    want[tail..].copy_from_slice(b"xy");
    let early = events.lock().unwrap().clone();
    assert!(
        early.contains('W') && !early.contains('F'),
        "the first 8 MiB went out early, unflushed: {early:.40}"
    );
    assert!(
        fs.read_file("/big").unwrap() == want,
        "reads before the commit"
    );
    drop(fs);
    let fs = b.mount();
    assert!(fs.stat("/big").is_err(), "nothing of it without a commit");
    drop(fs);

    let (mut fs, _) = recorded(&b, true);
    let fd = fs.create("/big", 0o644).unwrap();
    fs.write(fd, &data).unwrap();
    fs.truncate("/big", tail as u64 + 2).unwrap();
    fs.sync().unwrap();
    drop(fs);
    let fs = b.mount();
    fs.check().unwrap();
    assert!(fs.read_file("/big").unwrap() == data[..tail + 2]);
}

/// A write of 64 KiB or more is not held: it goes to the device at once,
/// unflushed; the commit then sends only its unit and the flush.
#[test]
fn large_writes_go_to_the_device_at_once() {
    let b = Backend::file("fs-direct", 16 << 20);
    let (mut fs, events) = recorded(&b, true);
    events.lock().unwrap().clear();
    let fd = fs.create("/f", 0o644).unwrap();
    fs.write(fd, &[3u8; 64 << 10]).unwrap();
    assert_eq!(*events.lock().unwrap(), "Wc", "written at once, no flush");
    fs.sync().unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        "WcWFcc",
        "then the unit and the flush"
    );
    drop(fs);
    let fs = b.mount();
    assert_eq!(fs.read_file("/f").unwrap(), vec![3u8; 64 << 10]);
}
