//! The receiving side: per-worker threads that place messages in their own
//! slot sets (no locks between workers), one committer thread that drives
//! the device and makes every batch durable (group commit across workers),
//! and a thread per SMTP session. Sessions reach the queue through
//! [`Store`], so the same front serves the Maildir baseline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vsic_storage::{BlockDevice, Completion, Op, StorageError};

use crate::layout::BLOCK;
use crate::maildir::Maildir;
use crate::queue::{Message, Queue, QueueError, WorkerSlots, Write};
use crate::smtp;
use crate::stats::Latencies;

/// Settings of the receiver.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The largest message (bytes of content) accepted; SIZE advertises it.
    pub max_size: usize,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Where to record each message's store latency (the time its 250
    /// waits for the store); with it, the command XSTATS reports and
    /// resets them. None: XSTATS is not implemented (502).
    pub stats: Option<Arc<Latencies>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_size: 1 << 20,
            hostname: "vsic-mailq".into(),
            stats: None,
        }
    }
}

/// Answer to an enqueue: the id once durable.
pub type EnqueueReply = Result<u64, QueueError>;

/// What the SMTP front stores messages in.
pub trait Store: Send + Sync {
    /// Stores `msg` on behalf of session `session`; returns once durable.
    fn enqueue(&self, session: usize, msg: Message) -> EnqueueReply;
}

impl Store for Workers {
    fn enqueue(&self, session: usize, msg: Message) -> EnqueueReply {
        Workers::enqueue(self, session, msg)
    }
}

/// The Maildir baseline: every session writes its own files, in parallel.
impl Store for Maildir {
    fn enqueue(&self, _session: usize, msg: Message) -> EnqueueReply {
        Ok(Maildir::enqueue(self, &msg)?)
    }
}

struct Enqueue {
    msg: Message,
    reply: Sender<EnqueueReply>,
}

struct Batch {
    writes: Vec<Write>,
    done: Sender<Result<(), String>>,
}

/// Where sessions hand their messages: one sender per worker.
#[derive(Clone)]
pub struct Workers {
    senders: Vec<Sender<Enqueue>>,
}

impl Workers {
    /// Starts the committer and one thread per worker slot set.
    pub fn start(q: Queue) -> Workers {
        Workers::start_with_stats(q, None)
    }

    /// [`Workers::start`], the committer recording each durable batch's
    /// write and flush times in `stats`.
    pub fn start_with_stats(q: Queue, stats: Option<Arc<Latencies>>) -> Workers {
        let (dev, sets) = q.into_parts();
        let dev: Arc<dyn BlockDevice> = Arc::from(dev);
        let (etx, erx) = channel::<Event>();
        let in_flight = Arc::new(InFlight::default());
        let c = Committer {
            dev: dev.clone(),
            in_flight: in_flight.clone(),
            stats,
            groups: BTreeMap::new(),
            next_group: 0,
            next_flush: 0,
            next_write: 0,
            busy: HashMap::new(),
            deferred: VecDeque::new(),
            writing: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("mailq-commit".into())
            .spawn(move || c.run(erx))
            .expect("spawn the committer");
        let rtx = etx.clone();
        std::thread::Builder::new()
            .name("mailq-reap".into())
            .spawn(move || reaper(dev, in_flight, rtx))
            .expect("spawn the reaper");
        let senders = sets
            .into_iter()
            .enumerate()
            .map(|(i, set)| {
                let (tx, rx) = channel::<Enqueue>();
                let etx = etx.clone();
                std::thread::Builder::new()
                    .name(format!("mailq-worker-{i}"))
                    .spawn(move || worker(set, rx, etx))
                    .expect("spawn a worker");
                tx
            })
            .collect();
        Workers { senders }
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Stores `msg` through worker `w`; returns once it is durable.
    pub fn enqueue(&self, w: usize, msg: Message) -> EnqueueReply {
        let (tx, rx) = channel();
        let closed = || QueueError::CommitFailed("the queue has stopped".into());
        self.senders[w % self.senders.len()]
            .send(Enqueue { msg, reply: tx })
            .map_err(|_| closed())?;
        rx.recv().map_err(|_| closed())?
    }
}

/// A worker: places every waiting message in its own slots, hands the
/// writes to the committer as one batch, answers once they are durable.
fn worker(mut set: WorkerSlots, rx: Receiver<Enqueue>, commit: Sender<Event>) {
    while let Ok(first) = rx.recv() {
        let mut todo = vec![first];
        todo.extend(rx.try_iter());
        let mut placed = Vec::new();
        let mut writes = Vec::new();
        for e in todo {
            match set.place(&e.msg) {
                Ok((p, w)) => {
                    writes.extend(w);
                    placed.push((p, e.reply));
                }
                Err(err) => {
                    let _ = e.reply.send(Err(err));
                }
            }
        }
        if placed.is_empty() {
            continue;
        }
        let (dtx, drx) = channel();
        let result = commit
            .send(Event::Batch(Batch { writes, done: dtx }))
            .map_err(|_| "the committer has stopped".to_string())
            .and_then(|()| {
                drx.recv()
                    .map_err(|_| "the committer has stopped".to_string())?
            });
        for (p, reply) in placed {
            let r = match &result {
                Ok(()) => Ok(p.entry.id),
                Err(e) => {
                    // Not acknowledged: the slot is free again (whatever
                    // reached the device is whole or fails its checksum).
                    set.release(&p);
                    Err(QueueError::CommitFailed(e.clone()))
                }
            };
            let _ = reply.send(r);
        }
    }
}

/// What the committer reacts to: batches from the workers, and the
/// device's completions (from the reaper).
enum Event {
    Batch(Batch),
    Done(Completion),
    /// The device stopped answering (an error other than a timeout, or
    /// nothing completed for [`STALL`] with requests in flight).
    Stalled(String),
}

/// How long requests may be in flight without any completing before
/// every waiting message is answered with an error.
const STALL: Duration = Duration::from_secs(30);

/// Requests submitted and not yet reaped; the reaper sleeps while zero
/// (so a polling device does not spin while the queue is idle).
#[derive(Default)]
struct InFlight {
    n: Mutex<usize>,
    cv: Condvar,
}

impl InFlight {
    fn add(&self, k: usize) {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) += k;
        self.cv.notify_one();
    }

    fn sub(&self, k: usize) {
        let mut n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(k);
    }

    fn clear(&self) {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }

    fn wait_some(&self) {
        let mut n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        while *n == 0 {
            n = self.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The only thread that polls the device: hands every completion to the
/// committer.
fn reaper(dev: Arc<dyn BlockDevice>, in_flight: Arc<InFlight>, tx: Sender<Event>) {
    let mut last = Instant::now();
    loop {
        in_flight.wait_some();
        let mut got = Vec::new();
        dev.poll(&mut |c| got.push(c));
        if got.is_empty() {
            let stalled = match dev.wait(Some(Duration::from_millis(100))) {
                Ok(()) => None,
                Err(StorageError::Timeout) => {
                    (last.elapsed() > STALL).then(|| format!("nothing completed for {STALL:?}"))
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = stalled {
                in_flight.clear();
                if tx.send(Event::Stalled(why)).is_err() {
                    return;
                }
                // A dead device is not polled in a tight loop.
                std::thread::sleep(Duration::from_millis(100));
                last = Instant::now();
            }
            continue;
        }
        last = Instant::now();
        in_flight.sub(got.len());
        for c in got {
            if tx.send(Event::Done(c)).is_err() {
                return;
            }
        }
    }
}

/// Write tags are `write << 1`, FLUSH tags `flush << 1 | 1`.
const FLUSH_TAG: u64 = 1;

/// Writes that became durable (or failed) together: the batches of the
/// workers that arrived at once.
struct Group {
    done: Vec<Sender<Result<(), String>>>,
    /// Writes not yet completed (submitted or deferred).
    pending: usize,
    error: Option<String>,
    started: Instant,
    written: Option<Instant>,
    /// The FLUSH that makes it durable, once submitted.
    flush: Option<u64>,
}

/// The pipelined group commit. Batches are written as soon as they
/// arrive, also while an earlier FLUSH is in flight; once all writes of a
/// group have completed, one FLUSH (shared with every other group written
/// by then) is submitted, and the group is answered when that FLUSH
/// completes: every message's writes completed before a FLUSH that then
/// completed (the FLUSH covers the writes completed before it was sent).
/// Two writes of one block are never in flight together (a device may
/// complete them in either order): a write to a block still being written
/// waits for that write.
struct Committer {
    dev: Arc<dyn BlockDevice>,
    in_flight: Arc<InFlight>,
    stats: Option<Arc<Latencies>>,
    groups: BTreeMap<u64, Group>,
    next_group: u64,
    next_flush: u64,
    next_write: u64,
    /// Blocks (byte offsets) with a write in flight, and how many.
    busy: HashMap<u64, usize>,
    /// Writes waiting for a block, in arrival order.
    deferred: VecDeque<(u64, Write)>,
    /// Every write in flight, by tag: its group, offset and length.
    writing: HashMap<u64, (u64, u64, usize)>,
}

fn blocks(off: u64, len: usize) -> impl Iterator<Item = u64> {
    (off..off + len as u64).step_by(BLOCK)
}

impl Committer {
    fn run(mut self, rx: Receiver<Event>) {
        while let Ok(first) = rx.recv() {
            let mut batches = Vec::new();
            for ev in std::iter::once(first).chain(rx.try_iter()) {
                match ev {
                    Event::Batch(b) => batches.push(b),
                    Event::Done(c) => self.completed(c),
                    Event::Stalled(why) => self.fail_all(&why),
                }
            }
            if !batches.is_empty() {
                self.start(batches);
            }
            self.advance();
        }
    }

    /// A new group: its writes (the last of several to one offset only)
    /// submitted, or deferred behind a write of the same block.
    fn start(&mut self, batches: Vec<Batch>) {
        let g = self.next_group;
        self.next_group += 1;
        let mut writes: Vec<Write> = Vec::new();
        let mut at: HashMap<u64, usize> = HashMap::new();
        let mut done = Vec::with_capacity(batches.len());
        for b in batches {
            for (off, data) in b.writes {
                match at.get(&off) {
                    Some(&i) if writes[i].1.len() == data.len() => writes[i].1 = data,
                    _ => {
                        at.insert(off, writes.len());
                        writes.push((off, data));
                    }
                }
            }
            done.push(b.done);
        }
        self.groups.insert(
            g,
            Group {
                done,
                pending: writes.len(),
                error: None,
                started: Instant::now(),
                written: None,
                flush: None,
            },
        );
        for w in writes {
            self.deferred.push_back((g, w));
        }
        self.submit_ready();
    }

    /// Submits every deferred write whose blocks are free (and not claimed
    /// by an earlier deferred write), in order.
    fn submit_ready(&mut self) {
        let mut claimed: HashSet<u64> = HashSet::new();
        let mut keep = VecDeque::new();
        while let Some((g, (off, data))) = self.deferred.pop_front() {
            let free = blocks(off, data.len())
                .all(|b| !self.busy.contains_key(&b) && !claimed.contains(&b));
            if !free {
                claimed.extend(blocks(off, data.len()));
                keep.push_back((g, (off, data)));
                continue;
            }
            let len = data.len();
            let tag = self.next_write << 1;
            self.next_write += 1;
            let r = self.dev.alloc(len).and_then(|mut buf| {
                buf.set_len(len);
                buf.as_mut_slice().copy_from_slice(&data);
                self.in_flight.add(1);
                let r = self.dev.submit(Op::Write { offset: off, buf }, tag);
                if r.is_err() {
                    self.in_flight.sub(1);
                }
                r
            });
            match r {
                Ok(()) => {
                    for b in blocks(off, len) {
                        *self.busy.entry(b).or_default() += 1;
                    }
                    self.writing.insert(tag, (g, off, len));
                }
                Err(e) => {
                    if let Some(gr) = self.groups.get_mut(&g) {
                        gr.pending -= 1;
                        gr.error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        self.deferred = keep;
    }

    fn completed(&mut self, c: Completion) {
        if c.tag & FLUSH_TAG == FLUSH_TAG {
            let f = c.tag >> 1;
            let r = c.result.map_err(|e| e.to_string());
            let now = Instant::now();
            let ids: Vec<u64> = self
                .groups
                .iter()
                .filter(|(_, g)| g.flush == Some(f))
                .map(|(&id, _)| id)
                .collect();
            for id in ids {
                let g = self.groups.remove(&id).expect("listed above");
                if r.is_ok() {
                    if let (Some(s), Some(w)) = (&self.stats, g.written) {
                        s.record_commit(w - g.started, now - w);
                    }
                }
                answer(g, r.clone());
            }
            return;
        }
        // Unknown: a write forgotten by fail_all.
        let Some((group, off, len)) = self.writing.remove(&c.tag) else {
            return;
        };
        // The write's blocks are free again.
        for b in blocks(off, len) {
            if let Some(n) = self.busy.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(&b);
                }
            }
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.pending = g.pending.saturating_sub(1);
            if let Err(e) = c.result {
                g.error.get_or_insert(e.to_string());
            }
        }
        self.submit_ready();
    }

    /// Answers failed groups, and sends one FLUSH for every group whose
    /// writes have all completed since the last one.
    fn advance(&mut self) {
        let now = Instant::now();
        let mut failed = Vec::new();
        let mut written = Vec::new();
        for (&id, g) in &mut self.groups {
            if g.pending > 0 || g.flush.is_some() {
                continue;
            }
            g.written.get_or_insert(now);
            if g.error.is_some() {
                failed.push(id);
            } else {
                written.push(id);
            }
        }
        for id in failed {
            let g = self.groups.remove(&id).expect("listed above");
            let e = g.error.clone().unwrap_or_default();
            log::error!("{}: durable write failed: {e}", self.dev.describe());
            answer(g, Err(e));
        }
        if written.is_empty() {
            return;
        }
        if self.dev.durable_writes() {
            // A write-through device's completed writes are durable.
            for id in written {
                let g = self.groups.remove(&id).expect("listed above");
                if let (Some(s), Some(w)) = (&self.stats, g.written) {
                    s.record_commit(w - g.started, Duration::ZERO);
                }
                answer(g, Ok(()));
            }
            return;
        }
        let f = self.next_flush;
        self.next_flush += 1;
        self.in_flight.add(1);
        match self.dev.submit(Op::Flush, f << 1 | FLUSH_TAG) {
            Ok(()) => {
                for id in written {
                    if let Some(g) = self.groups.get_mut(&id) {
                        g.flush = Some(f);
                    }
                }
            }
            Err(e) => {
                self.in_flight.sub(1);
                log::error!("{}: flush: {e}", self.dev.describe());
                for id in written {
                    let g = self.groups.remove(&id).expect("listed above");
                    answer(g, Err(e.to_string()));
                }
            }
        }
    }

    /// The device stopped answering: every waiting message gets an error
    /// (none of them was acknowledged); what is in flight is forgotten.
    fn fail_all(&mut self, why: &str) {
        log::error!("{}: {why}", self.dev.describe());
        for (_, g) in std::mem::take(&mut self.groups) {
            answer(g, Err(why.to_string()));
        }
        self.busy.clear();
        self.deferred.clear();
        self.writing.clear();
    }
}

fn answer(g: Group, r: Result<(), String>) {
    for d in g.done {
        let _ = d.send(r.clone());
    }
}

/// Accepts SMTP sessions on `listener` forever, session `i` on worker
/// `i % workers`.
pub fn serve(q: Queue, listener: TcpListener, opts: ServeOptions) -> std::io::Result<()> {
    serve_store(Arc::new(Workers::start(q)), listener, opts)
}

/// Accepts SMTP sessions on `listener` forever, storing into `store`.
pub fn serve_store(
    store: Arc<dyn Store>,
    listener: TcpListener,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let opts = Arc::new(opts);
    for (i, conn) in listener.incoming().enumerate() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let store = store.clone();
        let opts = opts.clone();
        std::thread::spawn(move || {
            if let Err(e) = smtp::session(conn, &opts, |msg| store.enqueue(i, msg)) {
                log::debug!("session {i}: {e}");
            }
        });
    }
    Ok(())
}
