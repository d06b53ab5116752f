//! The receiving side: per-worker threads that place messages in their own
//! slot sets (no locks between workers), one committer thread that drives
//! the device and makes every batch durable (group commit across workers),
//! and a thread per SMTP session. Sessions reach the queue through
//! [`Store`], so the same front serves the Maildir baseline.

use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use vsic_storage::BlockDevice;

use crate::maildir::Maildir;
use crate::queue::{write_durably, Message, Queue, QueueError, WorkerSlots, Write};
use crate::smtp;

/// Settings of the receiver.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The largest message (bytes of content) accepted; SIZE advertises it.
    pub max_size: usize,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_size: 1 << 20,
            hostname: "vsic-mailq".into(),
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
        let (dev, sets) = q.into_parts();
        let (btx, brx) = channel::<Batch>();
        std::thread::Builder::new()
            .name("mailq-commit".into())
            .spawn(move || committer(dev, brx))
            .expect("spawn the committer");
        let senders = sets
            .into_iter()
            .enumerate()
            .map(|(i, set)| {
                let (tx, rx) = channel::<Enqueue>();
                let btx = btx.clone();
                std::thread::Builder::new()
                    .name(format!("mailq-worker-{i}"))
                    .spawn(move || worker(set, rx, btx))
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
fn worker(mut set: WorkerSlots, rx: Receiver<Enqueue>, commit: Sender<Batch>) {
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
            .send(Batch { writes, done: dtx })
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

/// The one thread that drives the device: every batch waiting is written
/// together and made durable by one flush.
fn committer(dev: Box<dyn BlockDevice>, rx: Receiver<Batch>) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let writes: Vec<Write> = batches
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.writes))
            .collect();
        let r = write_durably(&*dev, writes).map_err(|e| e.to_string());
        if let Err(e) = &r {
            log::error!("{}: durable write failed: {e}", dev.describe());
        }
        for b in batches {
            let _ = b.done.send(r.clone());
        }
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
