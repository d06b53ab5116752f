//! The queue on a file: placement in the three slot classes and extents,
//! recovery by scanning slot headers (torn slots and torn extents are never
//! taken for messages), delete, dequeue and slot reuse, and concurrent
//! SMTP sessions on several workers of the receiver (`serve`).

use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use vsic_mailq::client::{queued_id, Client};
use vsic_mailq::layout::HDR_LEN;
use vsic_mailq::{Envelope, Message, Queue, QueueError, ServeOptions};

struct Img(PathBuf);

impl Img {
    fn new(tag: &str, size: u64) -> Img {
        let p = std::env::temp_dir().join(format!("vsic-mailq-{tag}-{}.img", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        Img(p)
    }

    fn open(&self, workers: usize) -> Queue {
        let dev = vsic_storage::open(
            &format!("file:{}", self.0.display()),
            &vsic_storage::OpenOptions::default(),
        )
        .unwrap();
        Queue::open(dev, workers).unwrap()
    }

    /// Flips one byte at `off` behind the queue's back.
    fn flip(&self, off: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, off).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, off).unwrap();
    }
}

impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn msg(i: usize, len: usize) -> Message {
    let body: Vec<u8> = format!("message {i};").bytes().cycle().take(len).collect();
    Message {
        env: Envelope {
            from: format!("s{i}@example.org"),
            to: vec![format!("r{i}@example.net"), "postmaster@example.net".into()],
        },
        body,
    }
}

const SIZES: [usize; 5] = [100, 900, 3000, 15000, 100_000];

#[test]
fn every_class_and_extent_survives_reopen() {
    let img = Img::new("classes", 16 << 20);
    let mut ids = Vec::new();
    {
        let mut q = img.open(1);
        for (i, &len) in SIZES.iter().enumerate() {
            ids.push((q.enqueue(&msg(i, len)).unwrap(), i, len));
        }
        let classes: Vec<_> = q.list().map(|e| (e.class, e.header.kind)).collect();
        use vsic_mailq::layout::Kind::*;
        assert_eq!(
            classes,
            vec![
                (0, Inline),
                (0, Inline),
                (1, Inline),
                (2, Inline),
                (0, Extent)
            ]
        );
    }
    let q = img.open(1);
    assert_eq!(q.len(), SIZES.len());
    assert_eq!(q.torn, 0);
    for (id, i, len) in ids {
        let e = q.list().find(|e| e.id == id).unwrap();
        assert_eq!(e.env, msg(i, len).env);
        assert_eq!(q.read(id).unwrap(), msg(i, len).body, "message {i}");
    }
}

#[test]
fn torn_slots_and_torn_extents_are_ignored() {
    let img = Img::new("torn", 16 << 20);
    let (offs, ext_off);
    {
        let mut q = img.open(1);
        for (i, &len) in SIZES.iter().enumerate() {
            q.enqueue(&msg(i, len)).unwrap();
        }
        let sb = *q.superblock();
        offs = q
            .list()
            .map(|e| sb.slot_offset(e.class, e.slot))
            .collect::<Vec<_>>();
        ext_off = q.list().last().unwrap().header.extent_off;
    }
    // Message 0: payload byte torn; message 2: header torn; message 4:
    // its extent torn. Messages 1 and 3 (1 in the same block as 0) stay.
    img.flip(offs[0] + HDR_LEN as u64 + 30);
    img.flip(offs[2] + 20);
    img.flip(ext_off + 50_000);
    let q = img.open(1);
    let left: Vec<_> = q.list().map(|e| e.env.from.clone()).collect();
    assert_eq!(left, vec!["s1@example.org", "s3@example.org"]);
    assert_eq!(
        q.torn, 2,
        "torn payloads counted (a torn header is just free)"
    );
    assert_eq!(
        q.read(q.list().next().unwrap().id).unwrap(),
        msg(1, 900).body
    );
    // The torn slots are free again: new messages reuse them.
    drop(q);
    let mut q = img.open(1);
    let id = q.enqueue(&msg(9, 100)).unwrap();
    let e = q.list().find(|e| e.id == id).unwrap().clone();
    assert_eq!((e.class, e.slot), (0, 0), "the torn 1 KiB slot is reused");
}

#[test]
fn delete_dequeue_and_slot_reuse() {
    let img = Img::new("reuse", 16 << 20);
    let mut q = img.open(1);
    let a = q.enqueue(&msg(1, 3000)).unwrap();
    let b = q.enqueue(&msg(2, 3000)).unwrap();
    let big = q.enqueue(&msg(3, 200_000)).unwrap();
    let slot_a = q.list().find(|e| e.id == a).unwrap().slot;
    let ext = q.list().find(|e| e.id == big).unwrap().header.extent_off;
    q.delete(a).unwrap();
    assert!(matches!(q.read(a), Err(QueueError::NoSuchMessage(_))));
    assert!(matches!(q.delete(a), Err(QueueError::NoSuchMessage(_))));
    q.delete(big).unwrap();
    drop(q);
    let mut q = img.open(1);
    assert_eq!(q.list().map(|e| e.id).collect::<Vec<_>>(), vec![b]);
    let c = q.enqueue(&msg(4, 3000)).unwrap();
    assert!(c > big, "ids are never reused while their message exists");
    assert_eq!(q.list().find(|e| e.id == c).unwrap().slot, slot_a);
    let d = q.enqueue(&msg(5, 150_000)).unwrap();
    assert_eq!(q.list().find(|e| e.id == d).unwrap().header.extent_off, ext);
    // Dequeue takes the oldest first and removes it durably.
    let (e, body) = q.dequeue().unwrap().unwrap();
    assert_eq!((e.id, body), (b, msg(2, 3000).body));
    drop(q);
    let q = img.open(1);
    assert_eq!(q.list().map(|e| e.id).collect::<Vec<_>>(), vec![c, d]);
    assert_eq!(q.read(d).unwrap(), msg(5, 150_000).body);
}

#[test]
fn full_classes_spill_upwards_then_report_no_space() {
    // 1 MiB device: a quarter (60 KiB) per region.
    let img = Img::new("full", 1 << 20);
    let mut q = img.open(1);
    let sb = *q.superblock();
    let total: u64 = sb.slots.iter().sum();
    let mut n = 0;
    let err = loop {
        match q.enqueue(&msg(n, 100)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, QueueError::NoSpace(_)), "{err}");
    assert_eq!(n as u64, total, "every slot of every class used");
    assert!(q.list().any(|e| e.class == 2));
    drop(q);
    assert_eq!(img.open(1).len() as u64, total);
}

/// A message body of at least `len` bytes in CRLF lines (what SMTP
/// carries byte for byte), different for every `i`.
fn crlf_body(i: usize, len: usize) -> Vec<u8> {
    let line = format!("{}\r\n", format!("message {i};").repeat(5));
    let mut b = Vec::with_capacity(len + line.len());
    while b.len() < len {
        b.extend_from_slice(line.as_bytes());
    }
    b
}

#[test]
fn sessions_on_four_workers_store_into_disjoint_slots() {
    let img = Img::new("workers", 32 << 20);
    // The receiver `vsic-mailq serve --workers 4` runs, on a thread of its
    // own for the rest of the test process.
    let q = img.open(4);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        vsic_mailq::serve(q, listener, ServeOptions::default()).expect("the receiver")
    });
    // Eight sessions at once (session k on worker k mod 4), 40 messages
    // each, in every slot class and in extents.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut c, greet) = Client::connect(addr).unwrap();
                assert_eq!(greet, 220);
                assert_eq!(c.cmd(&format!("HELO s{t}.example")).unwrap(), 250);
                (0..40)
                    .map(|k| {
                        let i = t * 100 + k;
                        let len = [200, 2000, 9000, 40_000][k % 4];
                        let from = format!("s{i}@example.org");
                        let (code, lines) = c
                            .transaction(&from, "r@example.net", &crlf_body(i, len))
                            .unwrap_or_else(|e| panic!("{from}: {e}"));
                        assert_eq!(code, 250, "{from}: {lines:?}");
                        let id = queued_id(&lines).unwrap_or_else(|| panic!("no id: {lines:?}"));
                        (id, i, len)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // Every message is acknowledged, so the receiver writes nothing more:
    // a second opener sees what it made durable.
    let q = img.open(4);
    assert_eq!(q.len(), acked.len());
    let mut slots: Vec<_> = q.list().map(|e| (e.class, e.slot)).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), acked.len(), "no two messages share a slot");
    let classes: std::collections::BTreeSet<_> = q.list().map(|e| e.class).collect();
    assert_eq!(classes.len(), 3, "every slot class used: {classes:?}");
    for (id, i, len) in acked {
        let e = q.list().find(|e| e.id == id).expect("an acknowledged id");
        assert_eq!(e.env.from, format!("s{i}@example.org"));
        assert_eq!(q.read(id).unwrap(), crlf_body(i, len), "message {i}");
    }
}

/// Extents written with one worker count and recovered with another can
/// straddle the new workers' parts of the extent region: still recovered,
/// readable, deletable, and their space reused.
#[test]
fn extents_survive_a_change_of_worker_count() {
    let img = Img::new("reworker", 16 << 20);
    let mut ids = Vec::new();
    {
        let mut q = img.open(1);
        for i in 0..6 {
            ids.push(q.enqueue(&msg(i, 300_000)).unwrap());
        }
    }
    let mut q = img.open(4);
    assert_eq!(q.len(), 6, "every message recovered with 4 workers");
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(q.read(id).unwrap(), msg(i, 300_000).body);
    }
    for &id in &ids {
        q.delete(id).unwrap();
    }
    drop(q);
    let mut q = img.open(1);
    assert!(q.is_empty());
    for i in 0..6 {
        q.enqueue(&msg(10 + i, 300_000))
            .expect("the freed extent space is reused");
    }
}

/// A queue whose device shrank below its layout is an error, not a blank
/// device: opening it must not format it (and so lose every message).
#[test]
fn a_shrunken_device_is_refused_not_formatted() {
    let img = Img::new("shrunk", 16 << 20);
    let id = img.open(1).enqueue(&msg(1, 500)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let dev = vsic_storage::open(
        &format!("file:{}", img.0.display()),
        &vsic_storage::OpenOptions::default(),
    )
    .unwrap();
    let err = Queue::open(dev, 1).expect_err("a layout larger than the device");
    assert!(matches!(err, QueueError::LayoutMismatch { .. }), "{err}");
    // Grown back, the message is still there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let q = img.open(1);
    assert_eq!(q.read(id).unwrap(), msg(1, 500).body);
}
