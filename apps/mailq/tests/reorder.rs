//! The event-loop receiver (`evloop::serve_with`, the loop `serve` runs)
//! on a device that uses the freedom virtio gives it: writes in flight
//! together complete (and land) in any order, here the reverse of their
//! submission; a FLUSH covers the writes completed before it. Messages of
//! the 1 KiB class share 4 KiB blocks, each placement rewriting its whole
//! block, so two writes of one block may never be in flight together:
//! every message that got its 250 must be there after a reopen, whole.
//! And the loop's stall check: requests in flight with nothing completing
//! for the stall time fail the waiting messages (451), but an idle spell
//! with nothing in flight is no stall.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vsic_mailq::client::{queued_id, Client};
use vsic_mailq::{evloop, Queue, ServeOptions};
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
    /// Set: nothing completes any more (a device that stopped answering).
    stalled: Arc<AtomicBool>,
}

impl Reordering {
    fn new(mem: Arc<Mutex<Vec<u8>>>) -> Reordering {
        Reordering::slow(mem, Duration::from_millis(2))
    }

    fn slow(mem: Arc<Mutex<Vec<u8>>>, delay: Duration) -> Reordering {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mailq-reorder-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
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
            stalled: Arc::new(AtomicBool::new(false)),
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
        let stalled = self.stalled.load(Ordering::Relaxed);
        if !stalled && st.since.is_some_and(|t| t.elapsed() >= self.delay) {
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
            let due = match self.stalled.load(Ordering::Relaxed) {
                true => None,
                false => st.since.map(|t| t + self.delay),
            };
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

/// Runs the event loop on `dev` (its queue split for `workers`) on a
/// thread of its own for the rest of the test process, as `serve` does on
/// the binary's main thread; returns its address.
fn serve_on(dev: Reordering, workers: usize, stall: Duration) -> SocketAddr {
    let q = Queue::open(Box::new(dev), workers).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        evloop::serve_with(q, listener, ServeOptions::default(), stall).expect("the event loop")
    });
    addr
}

/// A greeted session.
fn session(addr: SocketAddr, name: &str) -> Client {
    let (mut c, greet) = Client::connect(addr).unwrap();
    assert_eq!(greet, 220);
    assert_eq!(c.cmd(&format!("HELO {name}")).unwrap(), 250);
    c
}

/// One message from `from`: the reply to its content.
fn store(c: &mut Client, from: &str, body: &[u8]) -> (u16, Vec<String>) {
    c.transaction(from, "q@y.example", body)
        .unwrap_or_else(|e| panic!("{from}: {e}"))
}

#[test]
fn small_messages_sharing_blocks_survive_a_reordering_device() {
    let mem = Arc::new(Mutex::new(vec![0u8; 16 << 20]));
    // One worker: every session places into one slot set, so the small
    // messages of concurrent sessions share its blocks.
    let addr = serve_on(Reordering::new(mem.clone()), 1, Duration::from_secs(30));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = session(addr, &format!("t{t}.example"));
                (0..12)
                    .map(|i| {
                        let body = format!("thread {t} message {i}\r\n").into_bytes();
                        let (code, lines) = store(&mut c, &format!("t{t}@x.example"), &body);
                        assert_eq!(code, 250, "thread {t} message {i}: {lines:?}");
                        let id = queued_id(&lines).unwrap_or_else(|| panic!("no id: {lines:?}"));
                        (id, body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // The receiver's thread stays; a second opener reads the memory as a
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
    let addr = serve_on(dev, 1, Duration::from_secs(1));
    let mut c = session(addr, "idle.example");
    let (code, lines) = store(&mut c, "a@x.example", b"message 0\r\n");
    assert_eq!(code, 250, "first message: {lines:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let (code, lines) = store(&mut c, "a@x.example", b"message 1\r\n");
    assert_eq!(code, 250, "a message after an idle spell: {lines:?}");
}

#[test]
fn a_device_that_completes_nothing_fails_the_waiting_messages() {
    // Once the queue is open the device completes nothing more; the
    // receiver calls it stalled after 1 s with requests in flight and
    // nothing completed: the message is answered 451 (not acknowledged),
    // not left waiting.
    let mem = Arc::new(Mutex::new(vec![0u8; 16 << 20]));
    let dev = Reordering::new(mem);
    let stall = dev.stalled.clone();
    let addr = serve_on(dev, 1, Duration::from_secs(1));
    stall.store(true, Ordering::Relaxed);
    let mut c = session(addr, "stalled.example");
    let start = Instant::now();
    let (code, lines) = store(&mut c, "a@x.example", b"never durable\r\n");
    assert_eq!(code, 451, "{lines:?}");
    // Not a speed target: well under the client's 30 s read timeout.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The session goes on: it is answered, not dropped.
    assert_eq!(c.cmd("NOOP").unwrap(), 250);
}
