//! The receivers' shared parts: the pipelined group commit
//! ([`Committer`]: one FLUSH at a time covers every message whose writes
//! completed before it was sent), the [`Store`] trait and the
//! thread-per-session receiver ([`serve_store`]: each session's own
//! thread reads, stores and answers; the Maildir baseline's front).
//! [`serve`] runs the slot queue on the event loop of [`crate::evloop`],
//! which drives the committer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vsic_storage::{BlockDevice, Completion, Op};

use crate::layout::BLOCK;
use crate::maildir::Maildir;
use crate::queue::{Message, Queue, QueueError, Write};
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

/// The Maildir baseline: every session writes its own files, in parallel.
impl Store for Maildir {
    fn enqueue(&self, _session: usize, msg: Message) -> EnqueueReply {
        Ok(Maildir::enqueue(self, &msg)?)
    }
}

/// The writes of one message, and whom to answer when they are durable.
pub(crate) struct Batch<W> {
    pub writes: Vec<Write>,
    pub done: W,
}

/// Write tags are `write << 1`, FLUSH tags `flush << 1 | 1`.
const FLUSH_TAG: u64 = 1;

/// The writes of one message, durable (or failed) together.
struct Group<W> {
    done: Vec<W>,
    /// Writes not yet completed (submitted or deferred).
    pending: usize,
    error: Option<String>,
    started: Instant,
    written: Option<Instant>,
    /// When its FLUSH was sent.
    flush_sent: Option<Instant>,
    /// The FLUSH that makes it durable, once submitted.
    flush: Option<u64>,
}

/// The pipelined group commit. A message's writes (a group) go out as
/// soon as it is placed, also while a FLUSH is in flight. Once all writes
/// of a group have completed and no FLUSH is in flight, one FLUSH, shared
/// with every other group written by then, is submitted (when one is in
/// flight, the next goes out as it completes), and the group is answered
/// when that FLUSH completes: every message's writes completed before a
/// FLUSH that then completed (the FLUSH covers the writes completed
/// before it was sent).
/// Two writes of one block are never in flight together (a device may
/// complete them in either order): a write to a block still being written
/// waits for that write.
pub(crate) struct Committer<W> {
    dev: Arc<dyn BlockDevice>,
    stats: Option<Arc<Latencies>>,
    groups: BTreeMap<u64, Group<W>>,
    next_group: u64,
    next_flush: u64,
    /// FLUSHes in flight (at most one).
    flushing: usize,
    next_write: u64,
    /// Blocks (byte offsets) with a write in flight, and how many.
    busy: HashMap<u64, usize>,
    /// Writes waiting for a block, in arrival order.
    deferred: VecDeque<(u64, Write)>,
    /// Every write in flight, by tag: its group, offset and length.
    writing: HashMap<u64, (u64, u64, usize)>,
    /// Answers not yet handed out ([`Committer::take_answered`]).
    answered: Vec<(W, Result<(), String>)>,
}

fn blocks(off: u64, len: usize) -> impl Iterator<Item = u64> {
    (off..off + len as u64).step_by(BLOCK)
}

impl<W> Committer<W> {
    pub(crate) fn new(dev: Arc<dyn BlockDevice>, stats: Option<Arc<Latencies>>) -> Committer<W> {
        Committer {
            dev,
            stats,
            groups: BTreeMap::new(),
            next_group: 0,
            next_flush: 0,
            flushing: 0,
            next_write: 0,
            busy: HashMap::new(),
            deferred: VecDeque::new(),
            writing: HashMap::new(),
            answered: Vec::new(),
        }
    }

    /// The device this commits to.
    pub(crate) fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Requests submitted to the device and not completed.
    pub(crate) fn outstanding(&self) -> usize {
        self.writing.len() + self.flushing
    }

    /// Messages waiting for their answer.
    pub(crate) fn waiting(&self) -> usize {
        self.groups.len()
    }

    /// The answers given since the last call: each waiter with Ok once its
    /// message is durable, or why it is not.
    pub(crate) fn take_answered(&mut self) -> Vec<(W, Result<(), String>)> {
        std::mem::take(&mut self.answered)
    }

    fn answer(&mut self, g: Group<W>, r: Result<(), String>) {
        for d in g.done {
            self.answered.push((d, r.clone()));
        }
    }

    /// A new group: its writes (the last of several to one offset only)
    /// submitted, or deferred behind a write of the same block.
    pub(crate) fn start(&mut self, batch: Batch<W>) {
        let batches = [batch];
        let g = self.next_group;
        self.next_group += 1;
        let mut writes: Vec<Write> = Vec::new();
        let mut done = Vec::with_capacity(batches.len());
        for b in batches {
            for (off, data) in b.writes {
                // A message has a write or two: a linear search is cheaper
                // than a map.
                match writes.iter().rposition(|w| w.0 == off) {
                    Some(i) if writes[i].1.len() == data.len() => writes[i].1 = data,
                    _ => writes.push((off, data)),
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
                flush_sent: None,
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
                self.dev.submit(Op::Write { offset: off, buf }, tag)
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

    pub(crate) fn completed(&mut self, c: Completion) {
        if c.tag & FLUSH_TAG == FLUSH_TAG {
            let f = c.tag >> 1;
            self.flushing = self.flushing.saturating_sub(1);
            let r = c.result.map_err(|e| e.to_string());
            let now = Instant::now();
            let ids: Vec<u64> = self
                .groups
                .iter()
                .filter(|(_, g)| g.flush == Some(f))
                .map(|(&id, _)| id)
                .collect();
            // One commit: its messages' mean wait for their writes, and
            // the FLUSH's round trip.
            let (mut writes, mut sent) = (Duration::ZERO, now);
            let n = ids.len() as u32;
            for id in ids {
                let g = self.groups.remove(&id).expect("listed above");
                writes += g.written.unwrap_or(g.started) - g.started;
                sent = sent.min(g.flush_sent.unwrap_or(now));
                self.answer(g, r.clone());
            }
            if let (Some(s), true) = (&self.stats, r.is_ok() && n > 0) {
                s.record_commit(writes / n, now - sent);
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
    pub(crate) fn advance(&mut self) {
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
            self.answer(g, Err(e));
        }
        if written.is_empty() {
            return;
        }
        if self.dev.durable_writes() {
            // A write-through device's completed writes are durable: the
            // messages answered now are one commit.
            let mut writes = Duration::ZERO;
            let n = written.len() as u32;
            for id in written {
                let g = self.groups.remove(&id).expect("listed above");
                writes += g.written.unwrap_or(g.started) - g.started;
                self.answer(g, Ok(()));
            }
            if let Some(s) = &self.stats {
                s.record_commit(writes / n, Duration::ZERO);
            }
            return;
        }
        if self.flushing > 0 {
            // The next FLUSH goes out when this one completes and covers
            // every message written meanwhile: one FLUSH (and one
            // completion to wake for) per group instead of per message.
            return;
        }
        let f = self.next_flush;
        self.next_flush += 1;
        match self.dev.submit(Op::Flush, f << 1 | FLUSH_TAG) {
            Ok(()) => {
                self.flushing += 1;
                for id in written {
                    if let Some(g) = self.groups.get_mut(&id) {
                        g.flush = Some(f);
                        g.flush_sent = Some(now);
                    }
                }
            }
            Err(e) => {
                log::error!("{}: flush: {e}", self.dev.describe());
                for id in written {
                    let g = self.groups.remove(&id).expect("listed above");
                    self.answer(g, Err(e.to_string()));
                }
            }
        }
    }

    /// The device stopped answering: every waiting message gets an error
    /// (none of them was acknowledged); what is in flight is forgotten.
    pub(crate) fn fail_all(&mut self, why: &str) {
        log::error!("{}: {why}", self.dev.describe());
        for (_, g) in std::mem::take(&mut self.groups) {
            self.answer(g, Err(why.to_string()));
        }
        self.busy.clear();
        self.flushing = 0;
        self.deferred.clear();
        self.writing.clear();
    }
}

/// Accepts SMTP sessions on `listener` forever, session `i` on worker
/// `i % workers`: the event-loop receiver ([`crate::evloop`]).
pub fn serve(q: Queue, listener: TcpListener, opts: ServeOptions) -> std::io::Result<()> {
    crate::evloop::serve(q, listener, opts)
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
