//! The receiver on a device that uses the freedom virtio gives it: writes
//! in flight together complete (and land) in any order, here the reverse
//! of their submission; a FLUSH covers the writes completed before it.
//! Messages of the 1 KiB class share 4 KiB blocks, each placement
//! rewriting its whole block, so two writes of one block may never be in
//! flight together: every message that got its id must be there after a
//! reopen, whole.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vsic_mailq::server::Workers;
use vsic_mailq::{Envelope, Message, Queue};
use vsic_storage::{BlockDevice, Completion, IoBuf, Op, OpKind, StorageError};

const BLOCK: usize = 4096;

#[derive(Default)]
struct State {
    /// Submitted, not yet executed: (tag, op).
    queued: Vec<(u64, Op)>,
    /// When the oldest of them was submitted.
    since: Option<Instant>,
    done: VecDeque<Completion>,
}

/// Memory that a test can reopen after the receiver is done with it.
struct Reordering {
    mem: Arc<Mutex<Vec<u8>>>,
    /// Only lends its buffers (heap memory; IoBuf has no public maker).
    bufs: Box<dyn BlockDevice>,
    state: Mutex<State>,
    ready: Condvar,
    /// How long a request takes.
    delay: Duration,
}

impl Reordering {
    fn new(mem: Arc<Mutex<Vec<u8>>>) -> Reordering {
        Reordering::slow(mem, Duration::from_millis(2))
    }

    fn slow(mem: Arc<Mutex<Vec<u8>>>, delay: Duration) -> Reordering {
        let path = std::env::temp_dir().join(format!("mailq-reorder-{}", std::process::id()));
        let opts = vsic_storage::OpenOptions {
            new_file_size: 1 << 20,
            ..vsic_storage::OpenOptions::default()
        };
        let bufs = vsic_storage::open(&format!("file:{}", path.display()), &opts).unwrap();
        let _ = std::fs::remove_file(&path);
        Reordering {
            mem,
            bufs,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            delay,
        }
    }

    /// Runs everything queued, writes and reads newest first, a FLUSH
    /// after the writes submitted before it.
    fn execute(&self, st: &mut State) {
        let queued = std::mem::take(&mut st.queued);
        st.since = None;
        let mut flushes = Vec::new();
        let mut mem = self.mem.lock().unwrap();
        for (tag, op) in queued.into_iter().rev() {
            let (kind, buf) = match op {
                Op::Write { offset, buf } => {
                    let o = offset as usize;
                    mem[o..o + buf.len()].copy_from_slice(buf.as_slice());
                    (OpKind::Write, Some(buf))
                }
                Op::Read { offset, mut buf } => {
                    let o = offset as usize;
                    let n = buf.len();
                    buf.as_mut_slice().copy_from_slice(&mem[o..o + n]);
                    (OpKind::Read, Some(buf))
                }
                Op::Flush => {
                    flushes.push(tag);
                    continue;
                }
            };
            st.done.push_back(Completion {
                tag,
                kind,
                buf,
                result: Ok(()),
            });
        }
        for tag in flushes.into_iter().rev() {
            st.done.push_back(Completion {
                tag,
                kind: OpKind::Flush,
                buf: None,
                result: Ok(()),
            });
        }
    }
}

impl BlockDevice for Reordering {
    fn block_size(&self) -> u32 {
        BLOCK as u32
    }
    fn capacity(&self) -> u64 {
        self.mem.lock().unwrap().len() as u64
    }
    fn alloc(&self, len: usize) -> Result<IoBuf, StorageError> {
        self.bufs.alloc(len)
    }
    fn submit(&self, op: Op, tag: u64) -> Result<(), StorageError> {
        let mut st = self.state.lock().unwrap();
        st.since.get_or_insert_with(Instant::now);
        st.queued.push((tag, op));
        self.ready.notify_all();
        Ok(())
    }
    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize {
        let mut st = self.state.lock().unwrap();
        // Requests take `delay` (which also lets concurrent submitters add
        // to what runs together, and so is reordered).
        if st.since.is_some_and(|t| t.elapsed() >= self.delay) {
            self.execute(&mut st);
        }
        let done: Vec<Completion> = st.done.drain(..).collect();
        drop(st);
        let n = done.len();
        done.into_iter().for_each(cb);
        n
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<(), StorageError> {
        let end = Instant::now() + timeout.unwrap_or(Duration::from_secs(30));
        let mut st = self.state.lock().unwrap();
        loop {
            let due = st.since.map(|t| t + self.delay);
            if !st.done.is_empty() || due.is_some_and(|d| d <= Instant::now()) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= end {
                return Err(StorageError::Timeout);
            }
            let until = due.map_or(end, |d| d.min(end));
            st = self.ready.wait_timeout(st, until - now).unwrap().0;
        }
    }
    fn describe(&self) -> String {
        "reordering memory".into()
    }
    fn durable_writes(&self) -> bool {
        false
    }
}

#[test]
fn small_messages_sharing_blocks_survive_a_reordering_device() {
    let mem = Arc::new(Mutex::new(vec![0u8; 16 << 20]));
    let q = Queue::open(Box::new(Reordering::new(mem.clone())), 1).unwrap();
    let workers = Arc::new(Workers::start(q));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let w = workers.clone();
            std::thread::spawn(move || {
                (0..12)
                    .map(|i| {
                        let body = format!("thread {t} message {i}\r\n").into_bytes();
                        let msg = Message {
                            env: Envelope {
                                from: format!("t{t}@x"),
                                to: vec!["q@y".into()],
                            },
                            body: body.clone(),
                        };
                        // Every session on worker 0: one slot set, so the
                        // small messages share its blocks.
                        (w.enqueue(0, msg).expect("enqueue"), body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // The receiver's threads stay; a second opener reads the memory as a
    // device that lost nothing durable.
    let q = Queue::open(Box::new(Reordering::new(mem)), 1).unwrap();
    let mut missing = Vec::new();
    for (id, body) in &acked {
        match q.read(*id) {
            Ok(b) if &b == body => {}
            other => missing.push((*id, other.map(|b| b.len()))),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost or wrong: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn a_slow_commit_after_an_idle_spell_is_not_taken_for_a_stalled_device() {
    // Commits take 300 ms; the receiver calls a device stalled after 1 s
    // without a completion, with requests in flight. An idle second
    // (nothing in flight) before a message is no stall.
    let mem = Arc::new(Mutex::new(vec![0u8; 16 << 20]));
    let dev = Reordering::slow(mem, Duration::from_millis(300));
    let q = Queue::open(Box::new(dev), 1).unwrap();
    let workers = Workers::start_with(q, None, Duration::from_secs(1));
    let msg = |i: usize| Message {
        env: Envelope {
            from: "a@x".into(),
            to: vec!["q@y".into()],
        },
        body: format!("message {i}\r\n").into_bytes(),
    };
    workers.enqueue(0, msg(0)).expect("first message");
    std::thread::sleep(Duration::from_millis(1500));
    workers
        .enqueue(0, msg(1))
        .expect("a message after an idle spell");
}
