//! The slot queue's receiver on one thread: an event loop over the
//! listener, every session's socket and the device's completions.
//!
//! Per round: wait for readiness (epoll); accept new sessions; for every
//! session with input, run its SMTP state machine ([`crate::smtp::Session`])
//! over everything that arrived, placing each complete message in the
//! session's worker's slots and submitting its writes at once; reap the
//! device's completions into the group commit ([`Committer`]: one FLUSH in
//! flight, covering every message whose writes completed before it was
//! sent); answer the sessions whose messages are durable (their 250) and
//! let them go on with their input; write every session's replies in one
//! write. Nothing here blocks on a socket or on the device, and there is
//! no other thread: no locks, no hand-offs, and one wake serves every
//! session and completion that became ready together.
//!
//! The device is waited on through [`BlockDevice::completion_fd`] when it
//! has one (a VSA with interrupts); otherwise (polled or hybrid
//! completions, a file) the loop checks the sockets without sleeping and
//! waits on the device in slices of [`DEVICE_SLICE`] while requests are in
//! flight.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vsic_storage::{BlockDevice, StorageError};

use crate::poller::{Poller, Ready, EDGE, HUP, IN, OUT};
use crate::queue::{Placed, Queue, QueueError, WorkerSlots};
use crate::server::{Batch, Committer, ServeOptions};
use crate::smtp::{Event, Session, IDLE_TIMEOUT};

const LISTENER: u64 = u64::MAX;
const DEVICE: u64 = u64::MAX - 1;
/// How long requests may be in flight without any completing before
/// every waiting message is answered with an error ([`serve`]; see
/// [`serve_with`]).
pub(crate) const STALL: Duration = Duration::from_secs(30);
/// How long one wait on a device without a completion descriptor lasts
/// while requests are in flight, between looks at the sockets.
pub const DEVICE_SLICE: Duration = Duration::from_micros(200);
/// Replies a session may have waiting for its client before its further
/// input is left unprocessed (a client that pipelines without reading
/// cannot make the receiver buffer without bound).
const OUTPUT_LIMIT: usize = 64 * 1024;

/// One SMTP connection.
struct Conn {
    stream: TcpStream,
    smtp: Session,
    worker: usize,
    /// Data (or the end) may be waiting to be read: set by an edge, cleared
    /// once a read found the socket drained.
    readable: bool,
    /// The peer closed or the connection broke: read until the end.
    hup: bool,
    /// The socket takes more output.
    writable: bool,
    /// QUIT answered, the input ended or the connection failed: closed
    /// once the output is sent (or at once, if it failed).
    closing: bool,
    failed: bool,
    last: Instant,
}

/// A message with the store: its session, and where it was placed (freed
/// again if the commit fails).
struct Pending {
    conn: u64,
    worker: usize,
    placed: Placed,
}

/// The receiver's state, all of it owned by the loop's thread.
struct Receiver {
    opts: Arc<ServeOptions>,
    poller: Poller,
    listener: TcpListener,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    accepted: usize,
    slots: Vec<WorkerSlots>,
    commit: Committer<u64>,
    pending: HashMap<u64, Pending>,
    next_ticket: u64,
    /// The device signals completions on a descriptor in the poll set.
    device_fd: bool,
    /// When a completion last arrived (or requests started to be in
    /// flight): for the stall check.
    progress: Instant,
    stall: Duration,
}

/// Serves SMTP on `listener` forever, storing into the slot queue `q`;
/// session `i` places its messages in worker `i % workers`'s slots.
pub fn serve(q: Queue, listener: TcpListener, opts: ServeOptions) -> io::Result<()> {
    serve_with(q, listener, opts, STALL)
}

/// [`serve`], the waiting messages failed once requests have been in
/// flight for `stall` with none completing.
pub fn serve_with(
    q: Queue,
    listener: TcpListener,
    opts: ServeOptions,
    stall: Duration,
) -> io::Result<()> {
    let (dev, slots) = q.into_parts();
    let dev: Arc<dyn BlockDevice> = Arc::from(dev);
    listener.set_nonblocking(true)?;
    let poller = Poller::new()?;
    poller.add(listener.as_raw_fd(), LISTENER, IN)?;
    let device_fd = match dev.completion_fd() {
        Some(fd) => {
            poller.add(fd, DEVICE, IN | EDGE)?;
            true
        }
        None => false,
    };
    let stats = opts.stats.clone();
    let mut r = Receiver {
        opts: Arc::new(opts),
        poller,
        listener,
        conns: HashMap::new(),
        next_conn: 0,
        accepted: 0,
        slots,
        commit: Committer::new(dev, stats),
        pending: HashMap::new(),
        next_ticket: 0,
        device_fd,
        progress: Instant::now(),
        stall,
    };
    r.run()
}

impl Receiver {
    fn run(&mut self) -> io::Result<()> {
        let mut ready = Vec::with_capacity(256);
        let mut touched = Vec::with_capacity(256);
        let mut last_idle_check = Instant::now();
        loop {
            let busy = self.commit.outstanding() > 0;
            let timeout = match (busy, self.device_fd) {
                (false, _) => 1000,
                (true, true) => 100,
                (true, false) => 0,
            };
            ready.clear();
            self.poller.wait(&mut ready, timeout)?;
            if busy && !self.device_fd && ready.is_empty() {
                match self.commit.device().wait(Some(DEVICE_SLICE)) {
                    Ok(()) | Err(StorageError::Timeout) => {}
                    Err(e) => self.fail_all(&e.to_string()),
                }
            }
            touched.clear();
            for &Ready { token, events } in &ready {
                match token {
                    LISTENER => self.accept(&mut touched),
                    // Completions are reaped below, every round.
                    DEVICE => {}
                    id => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            if events & (IN | HUP) != 0 {
                                c.readable = true;
                            }
                            if events & HUP != 0 {
                                c.hup = true;
                            }
                            if events & OUT != 0 {
                                c.writable = true;
                            }
                            touched.push(id);
                        }
                    }
                }
            }
            for &id in &touched {
                self.drive(id);
            }
            self.reap();
            if last_idle_check.elapsed() >= Duration::from_secs(1) {
                last_idle_check = Instant::now();
                self.close_idle();
            }
        }
    }

    fn accept(&mut self, touched: &mut Vec<u64>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.add_conn(stream, touched) {
                        log::warn!("new session: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. out of descriptors: try again next round.
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, stream: TcpStream, touched: &mut Vec<u64>) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let id = self.next_conn;
        self.next_conn += 1;
        self.poller
            .add(stream.as_raw_fd(), id, IN | OUT | HUP | EDGE)?;
        let worker = self.accepted % self.slots.len();
        self.accepted += 1;
        self.conns.insert(
            id,
            Conn {
                stream,
                smtp: Session::new(self.opts.clone()),
                worker,
                readable: false,
                hup: false,
                writable: true,
                closing: false,
                failed: false,
                last: Instant::now(),
            },
        );
        touched.push(id);
        Ok(())
    }

    /// Runs session `id` as far as its input goes, writing its replies;
    /// replies the client does not take stop its input from being
    /// processed (at [`OUTPUT_LIMIT`]) until it takes them.
    fn drive(&mut self, id: u64) {
        loop {
            let held = self.process(id);
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            Self::write_out(id, c);
            if c.closing && (c.failed || c.smtp.output().is_empty()) {
                // A message still with the store stays there: it may
                // become durable, unacknowledged (the client is gone).
                self.conns.remove(&id);
                return;
            }
            // Held back by unsent replies that have now gone out: go on.
            if !(held && c.smtp.output().len() <= OUTPUT_LIMIT) {
                return;
            }
        }
    }

    /// Runs session `id`'s state machine over its input; true if it
    /// stopped because too many replies are waiting to be sent.
    fn process(&mut self, id: u64) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        while !c.closing {
            if c.smtp.output().len() > OUTPUT_LIMIT {
                return true;
            }
            match c.smtp.advance() {
                Event::Store(msg) => {
                    let w = c.worker;
                    match self.slots[w].place(&msg) {
                        Ok((placed, writes)) => {
                            let ticket = self.next_ticket;
                            self.next_ticket += 1;
                            self.pending.insert(
                                ticket,
                                Pending {
                                    conn: id,
                                    worker: w,
                                    placed,
                                },
                            );
                            if self.commit.outstanding() == 0 {
                                self.progress = Instant::now();
                            }
                            self.commit.start(Batch {
                                writes,
                                done: ticket,
                            });
                        }
                        Err(e) => c.smtp.stored(Err(e)),
                    }
                }
                Event::Waiting => break,
                Event::Quit => c.closing = true,
                Event::More => {
                    if !c.readable {
                        break;
                    }
                    match c.smtp.fill(&mut c.stream) {
                        Ok(0) => {
                            // The end of input (mid-DATA: nothing stored).
                            c.closing = true;
                        }
                        Ok(n) => {
                            c.last = Instant::now();
                            // A short read drained the socket; anything
                            // arriving later is a new edge. After the
                            // peer's end, read on until it shows.
                            if n < crate::smtp::READ_CHUNK && !c.hup {
                                c.readable = false;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::debug!("session {id}: {e}");
                            c.closing = true;
                            c.failed = true;
                        }
                    }
                }
            }
        }
        false
    }

    /// Writes as much of the session's replies as the socket takes.
    fn write_out(id: u64, c: &mut Conn) {
        if !c.failed && c.writable && !c.smtp.output().is_empty() {
            match c.stream.write(c.smtp.output()) {
                Ok(n) => {
                    if n < c.smtp.output().len() {
                        c.writable = false;
                    }
                    c.smtp.sent(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("session {id}: {e}");
                    c.failed = true;
                    c.closing = true;
                }
            }
        }
    }

    /// Hands the device's completions to the committer, sends the next
    /// FLUSH, and answers the sessions whose messages are settled.
    fn reap(&mut self) {
        loop {
            if self.commit.outstanding() > 0 {
                let commit = &mut self.commit;
                let mut got = Vec::new();
                commit.device().poll(&mut |c| got.push(c));
                if got.is_empty() {
                    if self.progress.elapsed() > self.stall {
                        let why = format!("nothing completed for {:?}", self.stall);
                        self.fail_all(&why);
                    }
                } else {
                    self.progress = Instant::now();
                    for c in got {
                        self.commit.completed(c);
                    }
                }
            }
            if self.commit.waiting() > 0 {
                self.commit.advance();
            }
            let answered = self.commit.take_answered();
            if answered.is_empty() {
                return;
            }
            let mut again = Vec::with_capacity(answered.len());
            for (ticket, r) in answered {
                let Some(p) = self.pending.remove(&ticket) else {
                    continue;
                };
                let reply = match r {
                    Ok(()) => Ok(p.placed.entry.id),
                    Err(e) => {
                        // Not acknowledged: the slot is free again.
                        self.slots[p.worker].release(&p.placed);
                        Err(QueueError::CommitFailed(e))
                    }
                };
                if let Some(c) = self.conns.get_mut(&p.conn) {
                    c.smtp.stored(reply);
                    again.push(p.conn);
                }
            }
            // Their next messages' writes go out in this round too.
            for id in again {
                self.drive(id);
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        self.commit.fail_all(why);
        self.progress = Instant::now();
    }

    /// RFC 5321 4.5.3.2: a session silent for [`IDLE_TIMEOUT`] ends.
    fn close_idle(&mut self) {
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.smtp.storing() && c.last.elapsed() > IDLE_TIMEOUT)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            log::debug!("session {id}: idle for {IDLE_TIMEOUT:?}, closed");
            self.conns.remove(&id);
        }
    }
}
