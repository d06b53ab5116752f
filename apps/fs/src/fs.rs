//! The file system: metadata in memory ([`State`]), every change a log
//! record, committed in units to the on-device log; file data copy-on-write
//! into free blocks, held in memory and written with the unit that
//! references it (one batch, one flush); a checkpoint of the whole metadata
//! when the log fills.

use std::collections::{BTreeMap, HashMap, VecDeque};

use vsic_storage::batch::{self, IO_CHUNK};
use vsic_storage::BlockDevice;

use crate::codec::{Dec, Enc};
use crate::error::{FsError, Result};
use crate::layout::{encode_unit, Superblock, UnitHeader, BLOCK, LOG_HEADER};
use crate::meta::{
    AttrChange, Body, CheckReport, Inode, Kind, Mapping, Op, State, Time, REPLY_BYTES,
    REPLY_ENTRIES, ROOT,
};

/// Largest file: 1 TiB.
pub const MAX_FILE: u64 = 1 << 40;
/// Data blocks held for the next commit at most (8 MiB): past it a write
/// first sends them to the device (unflushed; the commit's flush covers
/// them).
const DIRTY_MAX: usize = 2048;
/// A write of at least this many blocks (64 KiB) is not held: its data
/// goes to the device at once (unflushed), as a bulk transfer gains
/// nothing from riding with the commit and holding it costs copies.
const DIRECT_BLOCKS: usize = 16;
/// Symbolic links followed in one path lookup.
const MAX_HOPS: u32 = 40;

/// What `stat` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub kind: Kind,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes of data blocks the file uses.
    pub used: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

impl Stat {
    fn of(ino: u64, i: &Inode) -> Stat {
        let used = match &i.body {
            Body::File { blocks } => blocks.iter().filter(|&&b| b != 0).count() as u64 * BLOCK,
            Body::Dir { entries, .. } => entries.len() as u64 * 32,
            Body::Symlink { target } => target.len() as u64,
        };
        let size = match &i.body {
            Body::Dir { entries, .. } => (entries.len() as u64 + 2) * 32,
            _ => i.size,
        };
        Stat {
            ino,
            kind: i.kind(),
            mode: i.mode,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size,
            used,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

/// How [`Fs::open`] opens a file.
#[derive(Debug, Clone, Copy)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub create: bool,
    pub excl: bool,
    pub truncate: bool,
    pub append: bool,
    /// Permission bits of a created file.
    pub mode: u32,
}

impl OpenFlags {
    pub const READ: OpenFlags = OpenFlags {
        read: true,
        write: false,
        create: false,
        excl: false,
        truncate: false,
        append: false,
        mode: 0o644,
    };
    pub const READ_WRITE: OpenFlags = OpenFlags {
        write: true,
        ..OpenFlags::READ
    };
}

/// An open file descriptor.
pub type Fd = u64;

struct OpenFile {
    ino: u64,
    pos: u64,
    flags: OpenFlags,
}

/// Counters for `info` and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub commits: u64,
    pub checkpoints: u64,
    pub flushes: u64,
    pub log_blocks_written: u64,
    pub data_blocks_written: u64,
}

/// Free data blocks.
struct Alloc {
    start: u64,
    used: Vec<bool>,
    cursor: usize,
    free: u64,
}

impl Alloc {
    fn new(start: u64, end: u64) -> Alloc {
        let n = (end - start) as usize;
        Alloc {
            start,
            used: vec![false; n],
            cursor: 0,
            free: n as u64,
        }
    }
    fn mark(&mut self, b: u64) -> Result<()> {
        let i = b
            .checked_sub(self.start)
            .filter(|&i| (i as usize) < self.used.len())
            .ok_or_else(|| FsError::Corrupt(format!("block {b} outside the data region")))?
            as usize;
        if self.used[i] {
            return Err(FsError::Corrupt(format!("block {b} used twice")));
        }
        self.used[i] = true;
        self.free -= 1;
        Ok(())
    }
    /// `n` free blocks (consecutive when it can), or `None`.
    fn take(&mut self, n: usize) -> Option<Vec<u64>> {
        if (self.free as usize) < n {
            return None;
        }
        let mut got = Vec::with_capacity(n);
        let len = self.used.len();
        let mut i = self.cursor;
        while got.len() < n {
            if i >= len {
                i = 0;
            }
            if !self.used[i] {
                self.used[i] = true;
                got.push(self.start + i as u64);
            }
            i += 1;
        }
        self.cursor = i;
        self.free -= n as u64;
        Some(got)
    }
    fn put(&mut self, b: u64) {
        let i = (b - self.start) as usize;
        debug_assert!(self.used[i], "freeing free block {b}");
        if self.used[i] {
            self.used[i] = false;
            self.free += 1;
        }
    }
}

/// A mounted file system.
pub struct Fs {
    dev: Box<dyn BlockDevice>,
    sb: Superblock,
    state: State,
    alloc: Alloc,
    /// Records of operations not yet committed.
    log_buf: Enc,
    pending_ops: u64,
    /// Blocks freed by uncommitted operations: reusable after the commit.
    pending_free: Vec<u64>,
    /// Next free block of the log, relative to its start.
    log_head: u64,
    next_seq: u64,
    /// Data blocks of uncommitted operations not yet sent to the device,
    /// by device block: the next commit writes them with its unit. Reads
    /// see them ([`Fs::read_blocks`]).
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Data was written to the device and no flush has covered it yet.
    data_unflushed: bool,
    /// Tags of device requests (see [`batch::write_all`]).
    tags: u64,
    files: HashMap<Fd, OpenFile>,
    next_fd: Fd,
    pub counters: Counters,
}

/// A random 64-bit number without a dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn split(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// Groups `(index, block)` pairs into runs of consecutive device blocks.
fn runs(blocks: &[u64]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len()
            && blocks[j] == blocks[j - 1] + 1
            && (j - i) < IO_CHUNK / BLOCK as usize
        {
            j += 1;
        }
        out.push((i, j));
        i = j;
    }
    out
}

impl Fs {
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than the MSRV
    fn check_device(dev: &dyn BlockDevice) -> Result<u64> {
        let bs = u64::from(dev.block_size());
        if bs == 0 || BLOCK % bs != 0 {
            return Err(FsError::Invalid("device block size does not divide 4096"));
        }
        Ok(dev.capacity() / BLOCK)
    }

    /// Writes an empty file system on `dev` (everything on it is lost).
    pub fn mkfs(dev: Box<dyn BlockDevice>) -> Result<Fs> {
        let total = Self::check_device(dev.as_ref())?;
        let mut sb = Superblock::for_device(total, random_u64())?;
        let state = State::new(Time::now());
        let ckpt = state.encode();
        sb.ckpt_len = ckpt.len() as u64;
        sb.ckpt_crc = crc32c::crc32c(&ckpt);
        let mut buf = ckpt;
        buf.resize(buf.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        dev.write_at(sb.slot_start(0) * BLOCK, &buf)?;
        // No stale superblock may outrank the new one.
        dev.write_at(0, &vec![0u8; BLOCK as usize])?;
        dev.write_at(BLOCK * (sb.generation % 2), &sb.encode())?;
        dev.flush()?;
        Fs::mount(dev)
    }

    /// Mounts the file system on `dev`: the newest checkpoint, then every
    /// intact commit unit of the log in sequence.
    pub fn mount(dev: Box<dyn BlockDevice>) -> Result<Fs> {
        let total = Self::check_device(dev.as_ref())?;
        let mut best: Option<Superblock> = None;
        for b in 0..2 {
            let buf = dev.read_at(b * BLOCK, BLOCK as usize)?;
            if let Some(sb) = Superblock::decode(buf.as_slice()) {
                if best.as_ref().is_none_or(|s| sb.generation > s.generation) {
                    best = Some(sb);
                }
            }
        }
        let sb =
            best.ok_or_else(|| FsError::NotFormatted("no valid superblock (run mkfs)".into()))?;
        if sb.total_blocks > total {
            return Err(FsError::Corrupt(format!(
                "made for {} blocks, the device has {total}",
                sb.total_blocks
            )));
        }
        let ckpt = Self::read_bytes(
            dev.as_ref(),
            sb.slot_start(sb.active_slot),
            sb.ckpt_len as usize,
        )?;
        if crc32c::crc32c(&ckpt) != sb.ckpt_crc {
            return Err(FsError::Corrupt(
                "the checkpoint's CRC does not match".into(),
            ));
        }
        let mut state = State::decode(&ckpt, sb.version)?;
        state.replies.set_limits(
            REPLY_ENTRIES,
            REPLY_BYTES.min((sb.ckpt_blocks * BLOCK) as usize / 4),
        );
        // Replay.
        let log = Self::read_bytes(
            dev.as_ref(),
            sb.log_start(),
            (sb.log_blocks * BLOCK) as usize,
        )?;
        // The intact units, in sequence.
        let mut units = Vec::new();
        let mut head = 0u64;
        let mut seq = sb.log_seq;
        while head < sb.log_blocks {
            let at = (head * BLOCK) as usize;
            let Some(h) = UnitHeader::decode(&log[at..], sb.fs_id) else {
                break;
            };
            if h.seq != seq || head + h.blocks() > sb.log_blocks {
                break;
            }
            if !h.verify(&log[at..at + (h.blocks() * BLOCK) as usize]) {
                break;
            }
            let n = h.blocks();
            units.push((head, h));
            head += n;
            seq += 1;
        }
        // Every unit but the last was followed by a flush before the next
        // one was written, so its data is durable. The last one's data was
        // written with it and flushed once after both: it counts only if
        // its data blocks are there (their CRCs match).
        let mut decoded = Vec::with_capacity(units.len());
        for (at, h) in &units {
            let at = (*at * BLOCK) as usize;
            let mut d = Dec::new(&log[at + LOG_HEADER..at + LOG_HEADER + h.len]);
            let mut ops = Vec::new();
            while !d.is_empty() {
                ops.push(Op::decode(&mut d)?);
            }
            decoded.push(ops);
        }
        let last = if decoded.is_empty() {
            None
        } else {
            decoded.pop()
        };
        let mut freed = Vec::new();
        for (i, ops) in decoded.iter().enumerate() {
            for op in ops {
                state.apply(op, &mut freed).map_err(|e| {
                    FsError::Corrupt(format!(
                        "log unit {}: {op:?} does not apply: {e}",
                        sb.log_seq + i as u64
                    ))
                })?;
            }
        }
        if let Some(ops) = last {
            let mut after = state.clone();
            for op in &ops {
                after.apply(op, &mut freed).map_err(|e| {
                    FsError::Corrupt(format!("last log unit: {op:?} does not apply: {e}"))
                })?;
            }
            if Self::data_arrived(dev.as_ref(), &ops, &after)? {
                state = after;
            } else {
                log::warn!("the last log unit's data is not on the device: dropping it");
                let (at, _) = units.pop().expect("a unit per decoded list");
                head = at;
                seq -= 1;
            }
        }
        let mut alloc = Alloc::new(sb.data_start(), sb.total_blocks);
        for b in state.used_blocks() {
            alloc.mark(b)?;
        }
        log::debug!(
            "mounted: checkpoint of {} bytes, {} log units replayed",
            sb.ckpt_len,
            seq - sb.log_seq
        );
        Ok(Fs {
            dev,
            sb,
            state,
            alloc,
            log_buf: Enc::default(),
            pending_ops: 0,
            pending_free: Vec::new(),
            log_head: head,
            next_seq: seq,
            dirty: BTreeMap::new(),
            data_unflushed: false,
            tags: 0,
            files: HashMap::new(),
            next_fd: 3,
            counters: Counters::default(),
        })
    }

    /// True when every data block `ops` point at that is still in use in
    /// `after` (the state they lead to) holds what they wrote. A block one
    /// of them replaced or freed is free once the unit is durable and may
    /// hold anything.
    fn data_arrived(dev: &dyn BlockDevice, ops: &[Op], after: &State) -> Result<bool> {
        for op in ops {
            let (Op::Write { ino, .. } | Op::SetAttr { ino, .. }) = op else {
                continue;
            };
            let live = match after.inodes.get(ino).map(|i| &i.body) {
                Some(Body::File { blocks }) => blocks.as_slice(),
                _ => &[],
            };
            for m in op.mappings() {
                if live.get(m.idx as usize) != Some(&m.block) {
                    continue;
                }
                let b = dev.read_at(m.block * BLOCK, BLOCK as usize)?;
                if crc32c::crc32c(b.as_slice()) != m.crc {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn read_bytes(dev: &dyn BlockDevice, start_block: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut b = start_block;
        while out.len() < len {
            let want = (len - out.len()).min(IO_CHUNK);
            let n = want.div_ceil(BLOCK as usize) * BLOCK as usize;
            let buf = dev.read_at(b * BLOCK, n)?;
            out.extend_from_slice(&buf.as_slice()[..want]);
            b += (n as u64) / BLOCK;
        }
        Ok(out)
    }

    pub fn device(&self) -> &dyn BlockDevice {
        self.dev.as_ref()
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The file system's identity (random at mkfs).
    pub fn fs_id(&self) -> u64 {
        self.sb.fs_id
    }

    /// Free data bytes and total data bytes.
    pub fn space(&self) -> (u64, u64) {
        (
            (self.alloc.free + self.pending_free.len() as u64) * BLOCK,
            (self.sb.total_blocks - self.sb.data_start()) * BLOCK,
        )
    }

    /// Verifies the structure of the metadata (as mounted: checkpoint plus
    /// log) and that the allocator agrees with it.
    pub fn check(&self) -> Result<CheckReport> {
        let report = self
            .state
            .check(self.sb.data_start()..self.sb.total_blocks)?;
        let used = self.alloc.used.len() as u64 - self.alloc.free - self.pending_free.len() as u64;
        if used != report.data_blocks {
            return Err(FsError::Corrupt(format!(
                "allocator has {used} blocks in use, files reference {}",
                report.data_blocks
            )));
        }
        Ok(report)
    }

    // ---- durability -----------------------------------------------------

    fn release_frees(&mut self) {
        for b in std::mem::take(&mut self.pending_free) {
            self.alloc.put(b);
        }
    }

    /// The held data blocks as runs of consecutive blocks: (byte offset,
    /// bytes), each at most [`IO_CHUNK`].
    fn dirty_runs(&self) -> Vec<(u64, Vec<u8>)> {
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = None;
        for (&b, data) in &self.dirty {
            match runs.last_mut() {
                Some((_, run)) if next == Some(b) && run.len() < IO_CHUNK => {
                    run.extend_from_slice(data)
                }
                _ => runs.push((b * BLOCK, data.clone())),
            }
            next = Some(b + 1);
        }
        runs
    }

    /// Writes the held data blocks and `more` (byte offset, bytes) in one
    /// batch, with a flush when `flush`; the held blocks are on the device
    /// once it succeeded. On failure they stay held, for the next try.
    fn write_out(&mut self, more: &[(u64, &[u8])], flush: bool) -> Result<()> {
        let data_blocks = self.dirty.len() as u64;
        let held = self.dirty_runs();
        let mut writes: Vec<(u64, &[u8])> = held.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        writes.extend_from_slice(more);
        if writes.is_empty() && !(flush && self.data_unflushed) {
            return Ok(());
        }
        let done = batch::write_all(self.dev.as_ref(), &writes, flush, &mut self.tags)?;
        self.dirty.clear();
        self.counters.data_blocks_written += data_blocks;
        if done.flushed {
            self.counters.flushes += 1;
        }
        self.data_unflushed = !flush && (self.data_unflushed || !writes.is_empty());
        Ok(())
    }

    /// Makes every operation so far durable: one commit unit of their
    /// records (carrying the data's CRCs) written together with their held
    /// data blocks, and one flush (submitted with them when the device
    /// orders flushes, so the commit waits for the device once); a
    /// checkpoint instead when the log has no room. Only one commit is in
    /// flight at a time: this returns once the device answered all of it.
    pub fn sync(&mut self) -> Result<()> {
        if self.pending_ops == 0 {
            return self.write_out(&[], true);
        }
        let unit = encode_unit(self.sb.fs_id, self.next_seq, &self.log_buf.buf);
        let nblocks = unit.len() as u64 / BLOCK;
        if self.log_head + nblocks > self.sb.log_blocks {
            return self.checkpoint();
        }
        let at = (self.sb.log_start() + self.log_head) * BLOCK;
        self.write_out(&[(at, &unit)], true)?;
        self.log_head += nblocks;
        self.next_seq += 1;
        self.log_buf.buf.clear();
        self.pending_ops = 0;
        self.release_frees();
        self.counters.commits += 1;
        self.counters.log_blocks_written += nblocks;
        Ok(())
    }

    /// Writes the whole metadata to the other checkpoint slot and switches
    /// the superblock to it; the log starts empty after it. The held data
    /// and the checkpoint go in one batch with a flush, the superblock
    /// only once that completed, then a second flush.
    pub fn checkpoint(&mut self) -> Result<()> {
        let mut ckpt = self.state.encode();
        if ckpt.len() as u64 > self.sb.ckpt_blocks * BLOCK {
            return Err(FsError::NoSpace("the metadata outgrew its checkpoint slot"));
        }
        let mut sb = self.sb.clone();
        sb.version = crate::layout::VERSION;
        sb.generation += 1;
        sb.active_slot = 1 - sb.active_slot;
        sb.ckpt_len = ckpt.len() as u64;
        sb.ckpt_crc = crc32c::crc32c(&ckpt);
        sb.log_seq = self.next_seq;
        ckpt.resize(ckpt.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        self.write_out(&[(sb.slot_start(sb.active_slot) * BLOCK, &ckpt)], true)?;
        self.write_out(&[((sb.generation % 2) * BLOCK, &sb.encode())], true)?;
        self.sb = sb;
        self.log_head = 0;
        self.log_buf.buf.clear();
        self.pending_ops = 0;
        self.release_frees();
        self.counters.checkpoints += 1;
        Ok(())
    }

    /// `n` blocks from device block `start`, the held data laid over what
    /// the device has (not read at all when every block is held).
    fn read_blocks(&self, start: u64, n: usize) -> Result<Vec<u8>> {
        let end = start + n as u64;
        let held = self.dirty.range(start..end);
        let mut out = if self.dirty.range(start..end).count() == n {
            vec![0u8; n * BLOCK as usize]
        } else {
            self.dev
                .read_at(start * BLOCK, n * BLOCK as usize)?
                .as_slice()
                .to_vec()
        };
        for (&b, data) in held {
            let at = ((b - start) * BLOCK) as usize;
            out[at..at + BLOCK as usize].copy_from_slice(data);
        }
        Ok(out)
    }

    /// Sends the held data blocks to the device (unflushed: the next
    /// commit's flush covers them) when there are [`DIRTY_MAX`] of them,
    /// so the memory they take stays bounded.
    fn make_room(&mut self) -> Result<()> {
        if self.dirty.len() >= DIRTY_MAX {
            self.write_out(&[], false)
        } else {
            Ok(())
        }
    }

    /// Holds `data` (whole blocks) for device blocks `blocks` until the
    /// next commit (or [`Fs::make_room`]) writes it.
    fn hold(&mut self, blocks: &[u64], data: &[u8]) {
        for (&b, block) in blocks.iter().zip(data.chunks(BLOCK as usize)) {
            self.dirty.insert(b, block.to_vec());
        }
    }

    /// Gives back blocks taken for an operation that could not be logged.
    fn untake(&mut self, blocks: &[u64]) {
        for b in blocks {
            self.dirty.remove(b);
            self.alloc.put(*b);
        }
    }

    /// Applies `op` and queues its record for the next commit.
    fn log(&mut self, op: Op) -> Result<()> {
        let mut freed = Vec::new();
        self.state.apply(&op, &mut freed)?;
        // A held block freed again before its commit is never written: no
        // state the log can reach after this operation points at it.
        for b in &freed {
            self.dirty.remove(b);
        }
        self.pending_free.extend(freed);
        op.encode(&mut self.log_buf);
        self.pending_ops += 1;
        Ok(())
    }

    fn take_blocks(&mut self, n: usize) -> Result<Vec<u64>> {
        if let Some(b) = self.alloc.take(n) {
            return Ok(b);
        }
        if !self.pending_free.is_empty() {
            self.sync()?;
            if let Some(b) = self.alloc.take(n) {
                return Ok(b);
            }
        }
        Err(FsError::NoSpace("no free data blocks"))
    }

    // ---- a server's replies, committed with the operations ---------------

    /// Records `reply` as the answer to request `key`: it commits with the
    /// operations logged before it (in the same unit), and [`Fs::reply`]
    /// finds it from now on, after a remount too, until newer replies
    /// push it out (see `meta::ReplyCache`).
    pub fn record_reply(&mut self, key: &[u8], reply: &[u8]) -> Result<()> {
        self.log(Op::Reply {
            key: key.to_vec(),
            reply: reply.to_vec(),
        })
    }

    /// The reply recorded for `key`, committed or not.
    pub fn reply(&self, key: &[u8]) -> Option<&[u8]> {
        self.state.replies.get(key)
    }

    /// Replies kept.
    pub fn reply_count(&self) -> usize {
        self.state.replies.len()
    }

    /// True when operations wait for a commit.
    pub fn uncommitted(&self) -> bool {
        self.pending_ops > 0
    }

    // ---- operations on inodes (the NFS server's interface) ---------------

    pub fn root(&self) -> u64 {
        ROOT
    }

    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64> {
        self.state.lookup(dir, name)
    }

    pub fn stat_ino(&self, ino: u64) -> Result<Stat> {
        Ok(Stat::of(ino, self.state.get(ino)?))
    }

    /// The parent of directory `dir`.
    pub fn parent_of(&self, dir: u64) -> Result<u64> {
        self.state.lookup(dir, b"..")
    }

    /// Entries of `dir`, by name.
    pub fn list(&self, dir: u64) -> Result<Vec<DirEntry>> {
        let entries = self.state.entries(dir)?;
        entries
            .iter()
            .map(|(n, &ino)| {
                Ok(DirEntry {
                    name: n.clone(),
                    ino,
                    kind: self.state.get(ino)?.kind(),
                })
            })
            .collect()
    }

    /// The device blocks of a file (0: a hole), for diagnostics and tests.
    pub fn file_blocks(&self, ino: u64) -> Result<Vec<u64>> {
        match &self.state.get(ino)?.body {
            Body::File { blocks } => Ok(blocks.clone()),
            _ => Err(FsError::Invalid("not a file")),
        }
    }

    pub fn readlink_ino(&self, ino: u64) -> Result<Vec<u8>> {
        match &self.state.get(ino)?.body {
            Body::Symlink { target } => Ok(target.clone()),
            _ => Err(FsError::Invalid("not a symbolic link")),
        }
    }

    /// Creates `name` in `dir`; `Exists` if the name is taken.
    #[allow(clippy::too_many_arguments)]
    pub fn create_at(
        &mut self,
        dir: u64,
        name: &[u8],
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        target: &[u8],
    ) -> Result<u64> {
        let ino = self.state.next_ino;
        self.log(Op::Create {
            parent: dir,
            name: name.to_vec(),
            ino,
            kind,
            mode,
            uid,
            gid,
            target: target.to_vec(),
            time: Time::now(),
        })?;
        Ok(ino)
    }

    /// A further name `name` in `dir` for `ino`.
    pub fn link_at(&mut self, ino: u64, dir: u64, name: &[u8]) -> Result<()> {
        self.log(Op::Link {
            parent: dir,
            name: name.to_vec(),
            ino,
            time: Time::now(),
        })
    }

    /// Removes `name` from `dir`: a directory only when `want_dir`
    /// (rmdir), anything else only when not (unlink).
    pub fn remove_at(&mut self, dir: u64, name: &[u8], want_dir: bool) -> Result<()> {
        let ino = self.state.lookup(dir, name)?;
        let is_dir = self.state.get(ino)?.kind() == Kind::Dir;
        match (want_dir, is_dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        self.log(Op::Remove {
            parent: dir,
            name: name.to_vec(),
            time: Time::now(),
        })
    }

    pub fn rename_at(&mut self, sdir: u64, sname: &[u8], ddir: u64, dname: &[u8]) -> Result<()> {
        self.log(Op::Rename {
            sparent: sdir,
            sname: sname.to_vec(),
            dparent: ddir,
            dname: dname.to_vec(),
            time: Time::now(),
        })
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&mut self, ino: u64, change: AttrChange) -> Result<Stat> {
        let mut map = Vec::new();
        if let Some(size) = change.size {
            let inode = self.state.get(ino)?;
            let Body::File { blocks } = &inode.body else {
                return Err(if inode.kind() == Kind::Dir {
                    FsError::IsDir
                } else {
                    FsError::Invalid("not a file")
                });
            };
            if size > MAX_FILE {
                return Err(FsError::TooBig);
            }
            // Shrinking into the middle of a block: the new last block is
            // a copy with the bytes past the end zeroed, so growing again
            // reads zeros there.
            let idx = (size / BLOCK) as usize;
            let tail = (size % BLOCK) as usize;
            if size < inode.size && tail != 0 && blocks.get(idx).is_some_and(|&b| b != 0) {
                let old = blocks[idx];
                let mut data = self.read_blocks(old, 1)?;
                data[tail..].fill(0);
                self.make_room()?;
                let nb = self.take_blocks(1)?[0];
                self.hold(&[nb], &data);
                map.push(Mapping {
                    idx: idx as u64,
                    block: nb,
                    crc: crc32c::crc32c(&data),
                });
            }
        }
        let taken: Vec<u64> = map.iter().map(|m| m.block).collect();
        if let Err(e) = self.log(Op::SetAttr {
            ino,
            change,
            map,
            time: Time::now(),
        }) {
            self.untake(&taken);
            return Err(e);
        }
        self.stat_ino(ino)
    }

    /// Reads up to `len` bytes at `off`; true when the read reached the end.
    pub fn read_ino(&self, ino: u64, off: u64, len: usize) -> Result<(Vec<u8>, bool)> {
        let inode = self.state.get(ino)?;
        let Body::File { blocks } = &inode.body else {
            return Err(if inode.kind() == Kind::Dir {
                FsError::IsDir
            } else {
                FsError::Invalid("not a file")
            });
        };
        let size = inode.size;
        if off >= size || len == 0 {
            return Ok((Vec::new(), off >= size));
        }
        let end = size.min(off.saturating_add(len as u64));
        let first = off / BLOCK;
        let last = (end - 1) / BLOCK;
        let n = (last - first + 1) as usize;
        let mut buf = vec![0u8; n * BLOCK as usize];
        let map: Vec<u64> = (0..n)
            .map(|i| blocks.get(first as usize + i).copied().unwrap_or(0))
            .collect();
        for (i, j) in runs(&map) {
            if map[i] == 0 {
                continue; // a hole (runs of holes are never consecutive blocks)
            }
            let data = self.read_blocks(map[i], j - i)?;
            buf[i * BLOCK as usize..j * BLOCK as usize].copy_from_slice(&data);
        }
        let start = (off - first * BLOCK) as usize;
        buf.truncate(start + (end - off) as usize);
        buf.drain(..start);
        Ok((buf, end == size))
    }

    /// Writes `data` at `off` into fresh blocks; returns the new size.
    pub fn write_ino(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<u64> {
        let inode = self.state.get(ino)?;
        let Body::File { blocks } = &inode.body else {
            return Err(if inode.kind() == Kind::Dir {
                FsError::IsDir
            } else {
                FsError::Invalid("not a file")
            });
        };
        let end = off.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        if end > MAX_FILE {
            return Err(FsError::TooBig);
        }
        let size = inode.size;
        if data.is_empty() {
            return Ok(size);
        }
        let first = off / BLOCK;
        let last = (end - 1) / BLOCK;
        let n = (last - first + 1) as usize;
        let old: Vec<u64> = (0..n)
            .map(|i| blocks.get(first as usize + i).copied().unwrap_or(0))
            .collect();
        let mut buf = vec![0u8; n * BLOCK as usize];
        // Partial first and last blocks keep the bytes around the write.
        let head = (off % BLOCK) as usize;
        let tail_end = ((end - 1) % BLOCK + 1) as usize;
        for (i, partial) in [(0, head != 0), (n - 1, tail_end != BLOCK as usize)] {
            if partial && old[i] != 0 && (first + i as u64) * BLOCK < size {
                let b = self.read_blocks(old[i], 1)?;
                buf[i * BLOCK as usize..(i + 1) * BLOCK as usize].copy_from_slice(&b);
            }
        }
        buf[head..head + data.len()].copy_from_slice(data);
        self.make_room()?;
        let new = self.take_blocks(n)?;
        if n >= DIRECT_BLOCKS {
            let direct: Vec<(u64, &[u8])> = runs(&new)
                .into_iter()
                .map(|(i, j)| (new[i] * BLOCK, &buf[i * BLOCK as usize..j * BLOCK as usize]))
                .collect();
            if let Err(e) = self.write_out(&direct, false) {
                self.untake(&new);
                return Err(e);
            }
            self.counters.data_blocks_written += n as u64;
        } else {
            self.hold(&new, &buf);
        }
        let new_size = size.max(end);
        let logged = self.log(Op::Write {
            ino,
            size: new_size,
            map: new
                .iter()
                .enumerate()
                .map(|(i, &b)| Mapping {
                    idx: first + i as u64,
                    block: b,
                    crc: crc32c::crc32c(&buf[i * BLOCK as usize..(i + 1) * BLOCK as usize]),
                })
                .collect(),
            time: Time::now(),
        });
        if let Err(e) = logged {
            self.untake(&new);
            return Err(e);
        }
        Ok(new_size)
    }

    // ---- the POSIX-like path interface -----------------------------------

    /// The inode `path` names (absolute; `.` and `..` understood), symbolic
    /// links followed, the last one only when `follow`.
    pub fn resolve(&self, path: &str, follow: bool) -> Result<u64> {
        let mut comps: VecDeque<Vec<u8>> = split(path.as_bytes()).map(|c| c.to_vec()).collect();
        let mut cur = ROOT;
        let mut hops = 0;
        while let Some(c) = comps.pop_front() {
            let next = self.state.lookup(cur, &c)?;
            if let Body::Symlink { target } = &self.state.get(next)?.body {
                if follow || !comps.is_empty() {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(FsError::Loop);
                    }
                    if target.first() == Some(&b'/') {
                        cur = ROOT;
                    }
                    for t in split(target).collect::<Vec<_>>().into_iter().rev() {
                        comps.push_front(t.to_vec());
                    }
                    continue;
                }
            }
            cur = next;
        }
        Ok(cur)
    }

    /// The directory holding the last component of `path`, and that name.
    fn parent(&self, path: &str) -> Result<(u64, Vec<u8>)> {
        let p = path.trim_end_matches('/');
        let (dir, name) = match p.rfind('/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => ("", p),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(FsError::Invalid("the path names no entry"));
        }
        let d = self.resolve(dir, true)?;
        self.state.entries(d)?;
        Ok((d, name.as_bytes().to_vec()))
    }

    /// Opens (and perhaps creates) a file.
    pub fn open(&mut self, path: &str, flags: OpenFlags) -> Result<Fd> {
        let ino = match self.resolve(path, true) {
            Ok(_) if flags.create && flags.excl => return Err(FsError::Exists),
            Ok(ino) => ino,
            Err(FsError::NotFound) if flags.create => {
                let (dir, name) = self.parent(path)?;
                self.create_at(dir, &name, Kind::File, flags.mode, 0, 0, b"")?
            }
            Err(e) => return Err(e),
        };
        let kind = self.state.get(ino)?.kind();
        if kind == Kind::Dir && flags.write {
            return Err(FsError::IsDir);
        }
        if flags.truncate && flags.write && self.state.get(ino)?.size != 0 {
            self.setattr(
                ino,
                AttrChange {
                    size: Some(0),
                    ..AttrChange::default()
                },
            )?;
        }
        let fd = self.next_fd;
        self.next_fd += 1;
        self.files.insert(fd, OpenFile { ino, pos: 0, flags });
        Ok(fd)
    }

    /// Creates (or truncates) a file and opens it for writing.
    pub fn create(&mut self, path: &str, mode: u32) -> Result<Fd> {
        self.open(
            path,
            OpenFlags {
                create: true,
                truncate: true,
                mode,
                ..OpenFlags::READ_WRITE
            },
        )
    }

    pub fn close(&mut self, fd: Fd) -> Result<()> {
        self.files.remove(&fd).map(|_| ()).ok_or(FsError::BadFd(fd))
    }

    fn fd(&self, fd: Fd) -> Result<&OpenFile> {
        self.files.get(&fd).ok_or(FsError::BadFd(fd))
    }

    pub fn pread(&self, fd: Fd, buf: &mut [u8], off: u64) -> Result<usize> {
        let f = self.fd(fd)?;
        if !f.flags.read {
            return Err(FsError::BadFd(fd));
        }
        let (data, _) = self.read_ino(f.ino, off, buf.len())?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    pub fn pwrite(&mut self, fd: Fd, data: &[u8], off: u64) -> Result<usize> {
        let f = self.fd(fd)?;
        if !f.flags.write {
            return Err(FsError::BadFd(fd));
        }
        self.write_ino(f.ino, off, data)?;
        Ok(data.len())
    }

    /// Reads at the file position and advances it.
    pub fn read(&mut self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        let pos = self.fd(fd)?.pos;
        let n = self.pread(fd, buf, pos)?;
        self.files.get_mut(&fd).expect("checked").pos += n as u64;
        Ok(n)
    }

    /// Writes at the file position (the end with `append`) and advances it.
    pub fn write(&mut self, fd: Fd, data: &[u8]) -> Result<usize> {
        let f = self.fd(fd)?;
        let pos = if f.flags.append {
            self.state.get(f.ino)?.size
        } else {
            f.pos
        };
        let n = self.pwrite(fd, data, pos)?;
        self.files.get_mut(&fd).expect("checked").pos = pos + n as u64;
        Ok(n)
    }

    /// Makes the file durable (and, as the log is shared, everything done
    /// before).
    pub fn fsync(&mut self, fd: Fd) -> Result<()> {
        self.fd(fd)?;
        self.sync()
    }

    pub fn truncate(&mut self, path: &str, len: u64) -> Result<()> {
        let ino = self.resolve(path, true)?;
        self.setattr(
            ino,
            AttrChange {
                size: Some(len),
                ..AttrChange::default()
            },
        )
        .map(|_| ())
    }

    pub fn unlink(&mut self, path: &str) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.remove_at(dir, &name, false)
    }

    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.remove_at(dir, &name, true)
    }

    pub fn mkdir(&mut self, path: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.create_at(dir, &name, Kind::Dir, mode, 0, 0, b"")
            .map(|_| ())
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (sd, sn) = self.parent(from)?;
        let (dd, dn) = self.parent(to)?;
        self.rename_at(sd, &sn, dd, &dn)
    }

    pub fn link(&mut self, existing: &str, new: &str) -> Result<()> {
        let ino = self.resolve(existing, false)?;
        let (dir, name) = self.parent(new)?;
        self.link_at(ino, dir, &name)
    }

    pub fn symlink(&mut self, target: &str, path: &str) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.create_at(dir, &name, Kind::Symlink, 0o777, 0, 0, target.as_bytes())
            .map(|_| ())
    }

    pub fn readlink(&self, path: &str) -> Result<Vec<u8>> {
        self.readlink_ino(self.resolve(path, false)?)
    }

    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.list(self.resolve(path, true)?)
    }

    pub fn stat(&self, path: &str) -> Result<Stat> {
        self.stat_ino(self.resolve(path, true)?)
    }

    pub fn lstat(&self, path: &str) -> Result<Stat> {
        self.stat_ino(self.resolve(path, false)?)
    }

    /// The whole contents of a file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let ino = self.resolve(path, true)?;
        let size = self.state.get(ino)?.size;
        Ok(self.read_ino(ino, 0, size as usize)?.0)
    }
}
