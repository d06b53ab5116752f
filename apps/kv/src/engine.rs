//! The store: one log thread owns the device and the log; readers share
//! the index.
//!
//! Writes go to the log thread as commands. It takes every command that is
//! waiting (group commit), evaluates them in order against the index plus
//! the batch's own changes, encodes one block-aligned record per command
//! into one buffer, writes it with one request, flushes (not on a device
//! whose completed writes are already durable, see
//! `BlockDevice::durable_writes`), and only then
//! applies the changes to the shared index and answers. So a reader never
//! sees a change that is not durable, and every answered update survives a
//! crash.
//!
//! Compaction runs on the same thread between batches, one chunk at a time:
//! a snapshot of the index is written to the inactive region under a new
//! generation, then the updates made meanwhile, then a flush, then the
//! superblock naming the new region (flushed). Until that superblock is
//! durable the old region is the log; after, the new one is. A crash at
//! any point leaves one complete log (docs/vsic-kv.md).

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vsic_storage::{BlockDevice, Op, StorageError};

use crate::index::Index;
use crate::layout::{self, decode_header, decode_record, encode_record, LogOp, Superblock, BLOCK};

/// Largest value (and key) accepted: one record must fit one request.
pub const MAX_VALUE: usize = 4 << 20;
/// A batch stops growing at about this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// Compaction writes snapshot records of about this size, this many per step.
const COMPACT_RECORD: usize = 64 << 10;
const COMPACT_STEP: usize = 256 << 10;
/// Recovery reads the log in windows of this many blocks.
const READ_WINDOW: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the device is too small: {blocks} blocks of {BLOCK} bytes, need at least 8")]
    TooSmall { blocks: u64 },
    #[error("the superblock describes regions of {region_blocks} blocks, more than the {capacity_blocks}-block device holds")]
    LayoutMismatch {
        region_blocks: u64,
        capacity_blocks: u64,
    },
    #[error("the log thread has stopped")]
    Stopped,
    #[error("compaction failed: {0}")]
    Compaction(String),
}

/// How a SET is conditioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCond {
    Always,
    /// Only if the key does not exist.
    Nx,
    /// Only if it exists.
    Xx,
}

/// An update.
#[derive(Debug, Clone)]
pub enum WriteCmd {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
    },
    Del(Vec<Vec<u8>>),
    MSet(Vec<(Vec<u8>, Vec<u8>)>),
    IncrBy(Vec<u8>, i64),
    Append(Vec<u8>, Vec<u8>),
    FlushAll,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    #[error("value is not an integer or out of range")]
    NotInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("string exceeds maximum allowed size ({MAX_VALUE} bytes)")]
    TooLarge,
    #[error("the log is full: no room even after compaction")]
    Full,
    #[error("storage failure: {0}")]
    Storage(String),
}

/// The answer to an update, sent once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// A conditional SET that did nothing.
    Nil,
    Int(i64),
    Err(CmdError),
}

/// What `stats` and INFO show.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub device: String,
    pub keys: u64,
    pub data_bytes: u64,
    pub region_blocks: u64,
    pub used_blocks: u64,
    pub active_region: u8,
    pub generation: u64,
    pub epoch: u64,
    pub batches: u64,
    pub records: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub compacting: bool,
    pub recovered_records: u64,
    pub failed: bool,
    /// Time spent waiting for log writes and for flushes, and in whole
    /// commits (evaluate, encode, write, flush, publish), in microseconds.
    pub write_us: u64,
    pub flush_us: u64,
    pub commit_us: u64,
}

/// What one compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    pub before_blocks: u64,
    pub after_blocks: u64,
    pub generation: u64,
}

/// Where compaction may be made to crash, for the crash tests
/// (`VSIC_KV_FAULT`): the process aborts at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// After the Nth snapshot chunk is written.
    AfterStep(u64),
    /// After the new region is complete and flushed, before the superblock.
    BeforeSwitch,
    /// After the superblock naming the new region is durable.
    AfterSwitch,
}

impl Fault {
    fn from_env() -> Fault {
        match std::env::var("VSIC_KV_FAULT").ok().as_deref() {
            Some("compact-before-switch") => Fault::BeforeSwitch,
            Some("compact-after-switch") => Fault::AfterSwitch,
            Some(s) => match s.strip_prefix("compact-step:").and_then(|n| n.parse().ok()) {
                Some(n) => Fault::AfterStep(n),
                None => Fault::None,
            },
            None => Fault::None,
        }
    }

    fn hit(&self, here: Fault) {
        if *self == here {
            eprintln!("vsic-kv: fault injection: aborting at {here:?}");
            std::process::abort();
        }
    }
}

enum Msg {
    Write(WriteCmd, Sender<Reply>),
    Compact(Sender<Result<CompactReport, KvError>>),
    Stop,
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Start compaction by itself when the log is over half its region and
    /// mostly dead.
    pub auto_compact: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { auto_compact: true }
    }
}

/// The store without a thread of its own: for an event loop that owns it
/// (the RESP server). Reads go through [`Engine::index`].
pub struct Engine {
    log: Log,
    index: Arc<RwLock<Index>>,
    stats: Arc<Mutex<Stats>>,
}

impl Engine {
    /// Recovers the store on `dev` (formatting a device that holds none).
    pub fn open(dev: Box<dyn BlockDevice>, opts: StoreOptions) -> Result<Engine, KvError> {
        let index = Arc::new(RwLock::new(Index::default()));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let log = Log::recover(dev, index.clone(), stats.clone(), opts)?;
        Ok(Engine { log, index, stats })
    }

    /// The durable state, for reads.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Evaluates `cmds` in order, makes them durable with one write and
    /// one flush, publishes them; one answer per command.
    pub fn commit(&mut self, cmds: Vec<WriteCmd>) -> Vec<Reply> {
        self.log.commit(cmds)
    }

    /// One step of background work (compaction); true while more remains.
    pub fn background(&mut self) -> bool {
        self.log.background()
    }

    pub fn stats(&self) -> Stats {
        self.stats_with(&self.index())
    }

    /// [`Engine::stats`] for a caller already holding the index.
    pub fn stats_with(&self, ix: &Index) -> Stats {
        stats_snapshot(&self.stats, ix)
    }
}

fn stats_snapshot(stats: &Mutex<Stats>, ix: &Index) -> Stats {
    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    s.keys = ix.len() as u64;
    s.data_bytes = ix.bytes();
    s
}

/// An open store with its own log thread: updates are submitted from any
/// thread and answered through channels.
pub struct Store {
    tx: Sender<Msg>,
    index: Arc<RwLock<Index>>,
    stats: Arc<Mutex<Stats>>,
    worker: Option<JoinHandle<()>>,
}

impl Store {
    /// Recovers the store on `dev` (formatting a device that holds none)
    /// and starts its log thread.
    pub fn open(dev: Box<dyn BlockDevice>, opts: StoreOptions) -> Result<Store, KvError> {
        let Engine { log, index, stats } = Engine::open(dev, opts)?;
        let (tx, rx) = channel();
        let worker = std::thread::Builder::new()
            .name("kv-log".into())
            .spawn(move || log.run(rx))
            .map_err(|e| StorageError::System {
                what: "spawning the log thread",
                source: e,
            })?;
        Ok(Store {
            tx,
            index,
            stats,
            worker: Some(worker),
        })
    }

    /// The durable state, for reads.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read().get(key).cloned()
    }

    /// Queues an update; `reply` gets the answer once it is durable.
    /// Updates queued by one thread are answered in order.
    pub fn submit(&self, cmd: WriteCmd, reply: Sender<Reply>) {
        if let Err(e) = self.tx.send(Msg::Write(cmd, reply)) {
            if let Msg::Write(_, r) = e.0 {
                let _ = r.send(Reply::Err(CmdError::Storage(
                    "the log thread has stopped".into(),
                )));
            }
        }
    }

    /// Runs an update and waits until it is durable.
    pub fn execute(&self, cmd: WriteCmd) -> Reply {
        let (tx, rx) = channel();
        self.submit(cmd, tx);
        rx.recv()
            .unwrap_or_else(|_| Reply::Err(CmdError::Storage("the log thread has stopped".into())))
    }

    /// Compacts the log now and waits for it.
    pub fn compact(&self) -> Result<CompactReport, KvError> {
        let (tx, rx) = channel();
        self.tx
            .send(Msg::Compact(tx))
            .map_err(|_| KvError::Stopped)?;
        rx.recv().map_err(|_| KvError::Stopped)?
    }

    pub fn stats(&self) -> Stats {
        stats_snapshot(&self.stats, &self.read())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

struct Compaction {
    target: u8,
    generation: u64,
    snapshot: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    /// Next free block and next lsn in the target region.
    end: u64,
    lsn: u64,
    /// Records logged to the old region since the snapshot, in order.
    delta: Vec<Vec<LogOp>>,
    steps: u64,
    before_blocks: u64,
    waiters: Vec<Sender<Result<CompactReport, KvError>>>,
}

struct Log {
    dev: Box<dyn BlockDevice>,
    sb: Superblock,
    /// Next free block of the active region (relative to its start).
    end: u64,
    next_lsn: u64,
    index: Arc<RwLock<Index>>,
    stats: Arc<Mutex<Stats>>,
    compaction: Option<Compaction>,
    opts: StoreOptions,
    fault: Fault,
    /// Set after an I/O failure: the log's tail is unknown, so every later
    /// update is refused.
    failed: Option<String>,
    counters: Stats,
}

impl Log {
    fn recover(
        dev: Box<dyn BlockDevice>,
        index: Arc<RwLock<Index>>,
        stats: Arc<Mutex<Stats>>,
        opts: StoreOptions,
    ) -> Result<Log, KvError> {
        let capacity_blocks = dev.capacity() / BLOCK as u64;
        if capacity_blocks < 8 {
            return Err(KvError::TooSmall {
                blocks: capacity_blocks,
            });
        }
        let head = dev.read_at(0, 2 * BLOCK)?;
        let found = [0, 1]
            .iter()
            .filter_map(|&i| Superblock::decode(&head.as_slice()[i * BLOCK..(i + 1) * BLOCK]))
            .max_by_key(|sb| sb.seq);
        let mut sb = match found {
            Some(sb) => {
                if layout::SUPERBLOCKS + 2 * sb.region_blocks > capacity_blocks {
                    return Err(KvError::LayoutMismatch {
                        region_blocks: sb.region_blocks,
                        capacity_blocks,
                    });
                }
                sb
            }
            None => {
                log::info!("{}: no vsic-kv superblock, formatting", dev.describe());
                Superblock {
                    seq: 0,
                    epoch: 0,
                    active: 0,
                    generation: 1,
                    region_blocks: (capacity_blocks - layout::SUPERBLOCKS) / 2,
                }
            }
        };
        // A new epoch, durable before anything of this run is logged.
        sb.epoch += 1;
        sb.seq += 1;
        write_superblock(dev.as_ref(), &sb)?;
        make_durable(dev.as_ref())?;

        let mut log = Log {
            dev,
            sb,
            end: 0,
            next_lsn: 0,
            index,
            stats,
            compaction: None,
            opts,
            fault: Fault::from_env(),
            failed: None,
            counters: Stats::default(),
        };
        log.replay()?;
        log.publish_stats();
        Ok(log)
    }

    /// Reads the active region's log into the index: records in order,
    /// each of this region's generation, lsn one more than the last, epoch
    /// never going back and older than this run, checksum intact. The
    /// first record that fails any of these ends the log.
    fn replay(&mut self) -> Result<(), KvError> {
        let base = self.sb.region_start(self.sb.active);
        let limit = self.sb.region_blocks;
        let mut window_start = 0u64;
        let mut window: Vec<u8> = Vec::new();
        let mut pos = 0u64;
        let mut last_epoch = 0u64;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut records = 0u64;
        loop {
            if pos >= limit {
                break;
            }
            // The window must hold `pos`; refill from `pos` if not.
            let in_window = |start: u64, w: &Vec<u8>, p: u64, n: u64| {
                p >= start && (p + n) * BLOCK as u64 <= start * BLOCK as u64 + w.len() as u64
            };
            if !in_window(window_start, &window, pos, 1) {
                let n = READ_WINDOW.min(limit - pos);
                window = self
                    .dev
                    .read_at((base + pos) * BLOCK as u64, n as usize * BLOCK)?
                    .as_slice()
                    .to_vec();
                window_start = pos;
            }
            let off = ((pos - window_start) as usize) * BLOCK;
            let Some(h) = decode_header(&window[off..off + BLOCK]) else {
                break;
            };
            if h.generation != self.sb.generation
                || h.lsn != self.next_lsn
                || h.epoch < last_epoch
                || h.epoch >= self.sb.epoch
                || pos + u64::from(h.blocks) > limit
            {
                break;
            }
            let blocks = u64::from(h.blocks);
            if !in_window(window_start, &window, pos, blocks) {
                let n = blocks.max(READ_WINDOW).min(limit - pos);
                window = self
                    .dev
                    .read_at((base + pos) * BLOCK as u64, n as usize * BLOCK)?
                    .as_slice()
                    .to_vec();
                window_start = pos;
            }
            let off = ((pos - window_start) as usize) * BLOCK;
            let Some(ops) = decode_record(&h, &window[off..off + blocks as usize * BLOCK]) else {
                break;
            };
            for op in ops {
                index.apply(op);
            }
            records += 1;
            last_epoch = h.epoch;
            self.next_lsn += 1;
            pos += blocks;
        }
        drop(index);
        self.end = pos;
        self.counters.recovered_records = records;
        log::info!(
            "{}: recovered {records} records ({pos} blocks) from region {} generation {}, epoch {}",
            self.dev.describe(),
            self.sb.active,
            self.sb.generation,
            self.sb.epoch
        );
        Ok(())
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut carry: Option<Msg> = None;
        loop {
            let first = match carry.take() {
                Some(m) => m,
                None if self.compaction.is_some() => match rx.try_recv() {
                    Ok(m) => m,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        self.compact_step();
                        continue;
                    }
                    Err(_) => return,
                },
                None => match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Write(cmd, reply) => {
                        let size = cmd_size(&cmd);
                        if !batch.is_empty() && bytes + size > BATCH_BYTES {
                            carry = Some(Msg::Write(cmd, reply));
                            break;
                        }
                        bytes += size;
                        batch.push((cmd, reply));
                    }
                    Msg::Compact(done) => {
                        self.start_compaction();
                        match &mut self.compaction {
                            Some(c) => c.waiters.push(done),
                            None => {
                                let _ = done.send(Err(KvError::Compaction(
                                    self.failed
                                        .clone()
                                        .unwrap_or_else(|| "could not start".into()),
                                )));
                            }
                        }
                    }
                    Msg::Stop => {
                        self.commit_and_answer(std::mem::take(&mut batch));
                        return;
                    }
                }
                if batch.len() < 4096 {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_and_answer(batch);
            }
            self.background();
        }
    }

    fn worth_compacting(&self) -> bool {
        let live = self.index.read().unwrap_or_else(|p| p.into_inner()).bytes() / BLOCK as u64 + 1;
        self.failed.is_none() && self.end > self.sb.region_blocks / 2 && live * 4 < self.end
    }

    /// Evaluates, logs and flushes one batch, then publishes it to the
    /// index; returns one answer per command, in order.
    fn commit(&mut self, batch: Vec<WriteCmd>) -> Vec<Reply> {
        if batch.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let replies = self.commit_timed(batch);
        self.counters.commit_us += started.elapsed().as_micros() as u64;
        self.publish_stats();
        replies
    }

    fn commit_timed(&mut self, batch: Vec<WriteCmd>) -> Vec<Reply> {
        if let Some(why) = &self.failed {
            return batch
                .iter()
                .map(|_| Reply::Err(CmdError::Storage(why.clone())))
                .collect();
        }
        // Evaluate in order against the index plus this batch's changes.
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut cleared = false;
        let mut records: Vec<Vec<LogOp>> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            let view = |overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>,
                        cleared: bool,
                        k: &[u8]|
             -> Option<Vec<u8>> {
                match overlay.get(k) {
                    Some(v) => v.clone(),
                    None if cleared => None,
                    None => index.get(k).cloned(),
                }
            };
            for cmd in batch {
                let (ops, answer) = evaluate(cmd, |k| view(&overlay, cleared, k));
                for op in &ops {
                    match op {
                        LogOp::Set(k, v) => {
                            overlay.insert(k.clone(), Some(v.clone()));
                        }
                        LogOp::Del(k) => {
                            overlay.insert(k.clone(), None);
                        }
                        LogOp::Clear => {
                            overlay.clear();
                            cleared = true;
                        }
                    }
                }
                if !ops.is_empty() {
                    records.push(ops);
                }
                replies.push(answer);
            }
        }
        if !records.is_empty() {
            if let Err(e) = self.append(&records) {
                let err = match e {
                    AppendError::Full => CmdError::Full,
                    AppendError::Io(why) => CmdError::Storage(why),
                };
                return replies.iter().map(|_| Reply::Err(err.clone())).collect();
            }
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            for rec in &records {
                for op in rec {
                    index.apply(op.clone());
                }
            }
            drop(index);
            if let Some(c) = &mut self.compaction {
                c.delta.extend(records.iter().cloned());
            }
            self.counters.batches += 1;
            self.counters.records += records.len() as u64;
        }
        replies
    }

    /// Answers a batch of queued updates through their channels.
    fn commit_and_answer(&mut self, batch: Vec<(WriteCmd, Sender<Reply>)>) {
        let (cmds, senders): (Vec<WriteCmd>, Vec<Sender<Reply>>) = batch.into_iter().unzip();
        for (r, answer) in senders.into_iter().zip(self.commit(cmds)) {
            let _ = r.send(answer);
        }
    }

    /// Background work between batches: the next compaction step, or an
    /// automatic start. True while a compaction is in progress.
    fn background(&mut self) -> bool {
        if self.compaction.is_some() {
            self.compact_step();
        } else if self.opts.auto_compact && self.worth_compacting() {
            self.start_compaction();
        }
        self.compaction.is_some()
    }

    /// Writes `records` at the end of the active log and flushes. Makes
    /// room by compacting first when they do not fit.
    fn append(&mut self, records: &[Vec<LogOp>]) -> Result<(), AppendError> {
        let blocks: u64 = records
            .iter()
            .map(|r| layout::record_blocks(r) as u64)
            .sum();
        if self.end + blocks > self.sb.region_blocks {
            // Finish (or run) a compaction now, then retry once.
            if self.compaction.is_none() {
                self.start_compaction();
            }
            while self.compaction.is_some() {
                self.compact_step();
            }
            if let Some(why) = &self.failed {
                return Err(AppendError::Io(why.clone()));
            }
            if self.end + blocks > self.sb.region_blocks {
                return Err(AppendError::Full);
            }
        }
        let base = self.sb.region_start(self.sb.active);
        let (gen, epoch) = (self.sb.generation, self.sb.epoch);
        let lsn = self.next_lsn;
        let at = (base + self.end) * BLOCK as u64;
        match self.write_records(records, gen, epoch, lsn, at, true) {
            Ok(()) => {
                self.end += blocks;
                self.next_lsn += records.len() as u64;
                Ok(())
            }
            Err(e) => {
                let why = format!("log write failed, refusing updates until restart: {e}");
                log::error!("{}: {why}", self.dev.describe());
                self.failed = Some(why.clone());
                Err(AppendError::Io(why))
            }
        }
    }

    /// One write of consecutive records at byte `at` (lsns from `lsn`),
    /// then a flush if asked.
    fn write_records(
        &mut self,
        records: &[Vec<LogOp>],
        generation: u64,
        epoch: u64,
        lsn: u64,
        at: u64,
        flush: bool,
    ) -> Result<(), StorageError> {
        let total: usize = records
            .iter()
            .map(|r| layout::record_blocks(r) * BLOCK)
            .sum();
        let mut buf = self.dev.alloc(total)?;
        buf.set_len(total);
        let mut p = 0;
        for (i, r) in records.iter().enumerate() {
            let len = layout::record_blocks(r) * BLOCK;
            encode_record(
                r,
                generation,
                epoch,
                lsn + i as u64,
                &mut buf.as_mut_slice()[p..p + len],
            );
            p += len;
        }
        let t = Instant::now();
        self.dev.run(Op::Write { offset: at, buf })?;
        self.counters.write_us += t.elapsed().as_micros() as u64;
        if flush && !self.dev.durable_writes() {
            let t = Instant::now();
            make_durable(self.dev.as_ref())?;
            self.counters.flush_us += t.elapsed().as_micros() as u64;
            self.counters.flushes += 1;
        }
        Ok(())
    }

    fn start_compaction(&mut self) {
        if self.compaction.is_some() || self.failed.is_some() {
            return;
        }
        let snapshot: Vec<(Vec<u8>, Vec<u8>)> = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        log::info!(
            "compaction: {} keys from region {} to region {}",
            snapshot.len(),
            self.sb.active,
            1 - self.sb.active
        );
        self.compaction = Some(Compaction {
            target: 1 - self.sb.active,
            generation: self.sb.generation + 1,
            snapshot: snapshot.into_iter(),
            end: 0,
            lsn: 0,
            delta: Vec::new(),
            steps: 0,
            before_blocks: self.end,
            waiters: Vec::new(),
        });
        self.publish_stats();
    }

    /// Writes the next chunk of the snapshot to the target region, or, when
    /// the snapshot is done, finishes the compaction.
    fn compact_step(&mut self) {
        let Some(mut c) = self.compaction.take() else {
            return;
        };
        let mut records: Vec<Vec<LogOp>> = Vec::new();
        let mut bytes = 0;
        let mut rec: Vec<LogOp> = Vec::new();
        let mut rec_bytes = 0;
        for (k, v) in c.snapshot.by_ref() {
            rec_bytes += k.len() + v.len() + layout::OP_HEADER_LEN;
            rec.push(LogOp::Set(k, v));
            if rec_bytes >= COMPACT_RECORD {
                bytes += rec_bytes;
                records.push(std::mem::take(&mut rec));
                rec_bytes = 0;
                if bytes >= COMPACT_STEP {
                    break;
                }
            }
        }
        if !rec.is_empty() {
            records.push(rec);
        }
        let result = if records.is_empty() {
            self.finish_compaction(&mut c)
        } else {
            self.compact_write(&mut c, &records, false).map(|()| {
                c.steps += 1;
                self.fault.hit(Fault::AfterStep(c.steps));
                false
            })
        };
        match result {
            Ok(false) => self.compaction = Some(c),
            Ok(true) => {
                let report = CompactReport {
                    before_blocks: c.before_blocks,
                    after_blocks: self.end,
                    generation: self.sb.generation,
                };
                log::info!("compaction done: {report:?}");
                self.counters.compactions += 1;
                for w in c.waiters {
                    let _ = w.send(Ok(report.clone()));
                }
                self.publish_stats();
            }
            Err(e) => {
                // The old region is still the log: nothing is lost.
                log::error!("compaction abandoned: {e}");
                for w in c.waiters {
                    let _ = w.send(Err(KvError::Compaction(e.clone())));
                }
                self.publish_stats();
            }
        }
    }

    fn compact_write(
        &mut self,
        c: &mut Compaction,
        records: &[Vec<LogOp>],
        flush: bool,
    ) -> Result<(), String> {
        let blocks: u64 = records
            .iter()
            .map(|r| layout::record_blocks(r) as u64)
            .sum();
        if c.end + blocks > self.sb.region_blocks {
            return Err(format!(
                "live data does not fit the other region ({} + {blocks} > {} blocks)",
                c.end, self.sb.region_blocks
            ));
        }
        let at = (self.sb.region_start(c.target) + c.end) * BLOCK as u64;
        self.write_records(records, c.generation, self.sb.epoch, c.lsn, at, flush)
            .map_err(|e| e.to_string())?;
        c.end += blocks;
        c.lsn += records.len() as u64;
        Ok(())
    }

    /// Appends the updates made during the compaction to the new region,
    /// flushes, and switches the superblock to it. Ok(true) when switched.
    fn finish_compaction(&mut self, c: &mut Compaction) -> Result<bool, String> {
        let delta = std::mem::take(&mut c.delta);
        // Flush even with no delta: the snapshot chunks were not flushed.
        if delta.is_empty() {
            make_durable(self.dev.as_ref()).map_err(|e| e.to_string())?;
        } else {
            for chunk in delta.chunks(256) {
                self.compact_write(c, chunk, false)?;
            }
            make_durable(self.dev.as_ref()).map_err(|e| e.to_string())?;
        }
        self.fault.hit(Fault::BeforeSwitch);
        let next = Superblock {
            seq: self.sb.seq + 1,
            active: c.target,
            generation: c.generation,
            ..self.sb
        };
        let switched = write_superblock(self.dev.as_ref(), &next)
            .and_then(|()| make_durable(self.dev.as_ref()));
        if let Err(e) = switched {
            // Which superblock is on the medium is unknown now: stop
            // accepting updates (a restart reads whichever is valid, and
            // both name a complete log).
            let why = format!("superblock write failed during compaction: {e}");
            self.failed = Some(why.clone());
            return Err(why);
        }
        self.fault.hit(Fault::AfterSwitch);
        self.sb = next;
        self.end = c.end;
        self.next_lsn = c.lsn;
        Ok(true)
    }

    fn publish_stats(&mut self) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *s = Stats {
            device: self.dev.describe(),
            region_blocks: self.sb.region_blocks,
            used_blocks: self.end,
            active_region: self.sb.active,
            generation: self.sb.generation,
            epoch: self.sb.epoch,
            compacting: self.compaction.is_some(),
            failed: self.failed.is_some(),
            ..self.counters.clone()
        };
    }
}

enum AppendError {
    Full,
    Io(String),
}

/// Makes every write completed so far durable: a flush, or nothing on a
/// write-through device (its completed writes already are).
fn make_durable(dev: &dyn BlockDevice) -> Result<(), StorageError> {
    if dev.durable_writes() {
        Ok(())
    } else {
        dev.flush()
    }
}

/// Writes `sb` into the superblock slot its seq selects (alternating, so
/// the other copy stays valid if this write is torn).
fn write_superblock(dev: &dyn BlockDevice, sb: &Superblock) -> Result<(), StorageError> {
    let slot = sb.seq % 2;
    dev.write_at(slot * BLOCK as u64, &sb.encode())
}

fn cmd_size(cmd: &WriteCmd) -> usize {
    match cmd {
        WriteCmd::Set { key, value, .. } | WriteCmd::Append(key, value) => {
            key.len() + value.len() + 64
        }
        WriteCmd::Del(keys) => keys.iter().map(|k| k.len() + 16).sum(),
        WriteCmd::MSet(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len() + 16).sum(),
        WriteCmd::IncrBy(k, _) => k.len() + 64,
        WriteCmd::FlushAll => 64,
    }
}

/// What an update changes and what it answers, given the current view.
fn evaluate(cmd: WriteCmd, view: impl Fn(&[u8]) -> Option<Vec<u8>>) -> (Vec<LogOp>, Reply) {
    let too_large = |k: &[u8], v: &[u8]| k.len() > MAX_VALUE || v.len() > MAX_VALUE;
    match cmd {
        WriteCmd::Set { key, value, cond } => {
            if too_large(&key, &value) {
                return (vec![], Reply::Err(CmdError::TooLarge));
            }
            let exists = view(&key).is_some();
            let go = match cond {
                SetCond::Always => true,
                SetCond::Nx => !exists,
                SetCond::Xx => exists,
            };
            if go {
                (vec![LogOp::Set(key, value)], Reply::Ok)
            } else {
                (vec![], Reply::Nil)
            }
        }
        WriteCmd::MSet(pairs) => {
            if pairs.iter().any(|(k, v)| too_large(k, v)) {
                return (vec![], Reply::Err(CmdError::TooLarge));
            }
            (
                pairs.into_iter().map(|(k, v)| LogOp::Set(k, v)).collect(),
                Reply::Ok,
            )
        }
        WriteCmd::Del(keys) => {
            let mut seen = std::collections::HashSet::new();
            let ops: Vec<LogOp> = keys
                .into_iter()
                .filter(|k| view(k).is_some() && seen.insert(k.clone()))
                .map(LogOp::Del)
                .collect();
            let n = ops.len() as i64;
            (ops, Reply::Int(n))
        }
        WriteCmd::IncrBy(key, by) => {
            let cur = match view(&key) {
                None => 0,
                Some(v) => match parse_i64(&v) {
                    Some(n) => n,
                    None => return (vec![], Reply::Err(CmdError::NotInteger)),
                },
            };
            match cur.checked_add(by) {
                Some(n) => (
                    vec![LogOp::Set(key, n.to_string().into_bytes())],
                    Reply::Int(n),
                ),
                None => (vec![], Reply::Err(CmdError::Overflow)),
            }
        }
        WriteCmd::Append(key, tail) => {
            let mut v = view(&key).unwrap_or_default();
            if v.len() + tail.len() > MAX_VALUE || key.len() > MAX_VALUE {
                return (vec![], Reply::Err(CmdError::TooLarge));
            }
            v.extend_from_slice(&tail);
            let n = v.len() as i64;
            (vec![LogOp::Set(key, v)], Reply::Int(n))
        }
        WriteCmd::FlushAll => (vec![LogOp::Clear], Reply::Ok),
    }
}

/// A Redis integer: optional '-', digits, no leading zeros or '+', fits i64.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 20 || s.starts_with('+') {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) || s == "-0" {
        return None;
    }
    s.parse().ok()
}
