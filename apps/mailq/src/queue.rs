//! The queue: formatting, recovery by scanning slot headers, per-worker
//! slot sets, placement of a message, and durable batches of writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use vsic_storage::{BlockDevice, StorageError};

use crate::layout::{
    round_up, Envelope, Kind, SlotHeader, Superblock, BLOCK, CLASS_SIZES, HDR_LEN,
};

/// Message ids are `epoch << ID_EPOCH_SHIFT | n`, n counting from 1.
pub const ID_EPOCH_SHIFT: u32 = 40;

/// Everything that can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the device ({0} bytes) is too small for a mail queue")]
    TooSmall(u64),
    #[error("the queue on the device needs {needs} bytes but the device has {capacity}")]
    LayoutMismatch { needs: u64, capacity: u64 },
    #[error("no free slot or extent for a {0}-byte message")]
    NoSpace(usize),
    #[error("the envelope is too large ({0} bytes)")]
    EnvelopeTooLarge(usize),
    #[error("no message with id {0}")]
    NoSuchMessage(u64),
    #[error("message {0} is damaged on the device")]
    Damaged(u64),
    #[error("the durable write failed: {0}")]
    CommitFailed(String),
    #[error(transparent)]
    Maildir(#[from] crate::maildir::MaildirError),
}

/// A message as received: envelope and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub env: Envelope,
    pub body: Vec<u8>,
}

/// Where an occupied slot is, and what the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub class: usize,
    pub slot: u64,
    pub header: SlotHeader,
    pub env: Envelope,
}

/// A write of whole blocks at a byte offset.
pub type Write = (u64, Vec<u8>);

/// One class's slots owned by one worker: slots `[first, first + count)`.
#[derive(Debug)]
struct SlotSet {
    class: usize,
    first: u64,
    count: u64,
    /// Free slots, lowest on top.
    free: Vec<u64>,
}

impl SlotSet {
    fn owns(&self, slot: u64) -> bool {
        slot >= self.first && slot < self.first + self.count
    }
}

/// A placed, not yet durable message.
#[derive(Debug, Clone)]
pub struct Placed {
    pub entry: Entry,
    /// Extent (byte offset, bytes allocated), for messages over 16 KiB.
    pub extent: Option<(u64, u64)>,
}

/// The slots and extents of one worker: nothing in here is shared, so
/// workers place and free messages without synchronising.
#[derive(Debug)]
pub struct WorkerSlots {
    sb: Superblock,
    sets: [SlotSet; 3],
    /// Class-0 slots share blocks: the bytes of each occupied one, so a
    /// block can be rewritten whole. (A worker's class-0 set is whole
    /// blocks, so no other worker writes these blocks.)
    small: HashMap<u64, Vec<u8>>,
    /// The worker's part of the extent region and its free ranges
    /// (byte offset -> length), first fit.
    ext_free: BTreeMap<u64, u64>,
    ext_range: (u64, u64),
    next_id: u64,
    id_stride: u64,
}

impl WorkerSlots {
    /// Chooses the class (and extent) for a payload and builds the writes.
    pub fn place(&mut self, msg: &Message) -> Result<(Placed, Vec<Write>), QueueError> {
        let env = msg.env.encode();
        if env.len() > u32::MAX as usize {
            return Err(QueueError::EnvelopeTooLarge(env.len()));
        }
        let payload_len = env.len() + msg.body.len();
        let inline_class = (0..3).find(|&c| HDR_LEN + payload_len <= CLASS_SIZES[c]);
        let id = self.next_id;
        let mut crc = crc32c::crc32c(&env);
        crc = crc32c::crc32c_append(crc, &msg.body);
        let mut header = SlotHeader {
            class: 0,
            kind: Kind::Inline,
            nonce: self.sb.nonce,
            id,
            env_len: env.len() as u32,
            data_crc: crc,
            body_len: msg.body.len() as u64,
            extent_off: 0,
        };
        let mut writes = Vec::new();
        let mut extent = None;
        let mut slot = None;
        if let Some(c0) = inline_class {
            // The smallest class that holds it, or a larger one if full.
            for c in c0..3 {
                if let Some(s) = self.sets[c].free.pop() {
                    slot = Some((c, s));
                    break;
                }
            }
        }
        let (class, s) = match slot {
            Some(cs) => cs,
            None => {
                // An extent for the payload, and the smallest free slot for
                // the header that references it.
                let len = round_up(payload_len as u64);
                let off = self
                    .alloc_extent(len)
                    .ok_or(QueueError::NoSpace(payload_len))?;
                let Some((c, s)) = (0..3).find_map(|c| self.sets[c].free.pop().map(|s| (c, s)))
                else {
                    self.free_extent(off, len);
                    return Err(QueueError::NoSpace(payload_len));
                };
                let mut data = Vec::with_capacity(len as usize);
                data.extend_from_slice(&env);
                data.extend_from_slice(&msg.body);
                data.resize(len as usize, 0);
                writes.push((off, data));
                header.kind = Kind::Extent;
                header.extent_off = off;
                extent = Some((off, len));
                (c, s)
            }
        };
        header.class = class as u8;
        let mut bytes = header.encode().to_vec();
        if header.kind == Kind::Inline {
            bytes.extend_from_slice(&env);
            bytes.extend_from_slice(&msg.body);
        }
        writes.push(self.slot_write(class, s, Some(bytes)));
        self.next_id += self.id_stride;
        let entry = Entry {
            id,
            class,
            slot: s,
            header,
            env: msg.env.clone(),
        };
        Ok((Placed { entry, extent }, writes))
    }

    /// The write that puts `bytes` (None: a zeroed, free slot) into a slot.
    fn slot_write(&mut self, class: usize, slot: u64, bytes: Option<Vec<u8>>) -> Write {
        if class == 0 {
            match bytes {
                Some(mut b) => {
                    b.resize(CLASS_SIZES[0], 0);
                    self.small.insert(slot, b);
                }
                None => {
                    self.small.remove(&slot);
                }
            }
            let per = (BLOCK / CLASS_SIZES[0]) as u64;
            let first = slot / per * per;
            let mut block = vec![0u8; BLOCK];
            for i in 0..per {
                if let Some(b) = self.small.get(&(first + i)) {
                    let at = i as usize * CLASS_SIZES[0];
                    block[at..at + CLASS_SIZES[0]].copy_from_slice(b);
                }
            }
            return (self.sb.slot_offset(0, first), block);
        }
        let mut b = bytes.unwrap_or_default();
        let len = round_up(b.len().max(HDR_LEN) as u64) as usize;
        b.resize(len, 0);
        (self.sb.slot_offset(class, slot), b)
    }

    /// Frees a placed message's slot and extent (after a failed commit or
    /// a delete) and returns the write that clears the slot's header.
    pub fn release(&mut self, p: &Placed) -> Write {
        if let Some((off, len)) = p.extent {
            self.free_extent(off, len);
        }
        let w = self.slot_write(p.entry.class, p.entry.slot, None);
        self.sets[p.entry.class].free.push(p.entry.slot);
        w
    }

    fn alloc_extent(&mut self, len: u64) -> Option<u64> {
        let (&off, &have) = self.ext_free.iter().find(|(_, &l)| l >= len)?;
        self.ext_free.remove(&off);
        if have > len {
            self.ext_free.insert(off + len, have - len);
        }
        Some(off)
    }

    /// The part of `[off, off + len)` inside this worker's extent space.
    fn clip(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        let start = off.max(self.ext_range.0);
        let end = (off + len).min(self.ext_range.1);
        (start < end).then(|| (start, end - start))
    }

    /// Returns this worker's part of an extent to its free space.
    fn free_extent(&mut self, off: u64, len: u64) {
        let Some((mut off, mut len)) = self.clip(off, len) else {
            return;
        };
        if let Some((&p, &pl)) = self.ext_free.range(..off).next_back() {
            if p + pl == off {
                self.ext_free.remove(&p);
                off = p;
                len += pl;
            }
        }
        if let Some(nl) = self.ext_free.remove(&(off + len)) {
            len += nl;
        }
        self.ext_free.insert(off, len);
    }

    /// Marks this worker's part of a recovered extent used; false if that
    /// part is not free (another recovered message holds it). An extent
    /// written under another worker count can straddle several parts.
    fn carve_extent(&mut self, off: u64, len: u64) -> bool {
        let Some((off, len)) = self.clip(off, len) else {
            return true;
        };
        let Some((&p, &pl)) = self.ext_free.range(..=off).next_back() else {
            return false;
        };
        if p + pl < off + len {
            return false;
        }
        self.ext_free.remove(&p);
        if off > p {
            self.ext_free.insert(p, off - p);
        }
        if p + pl > off + len {
            self.ext_free.insert(off + len, p + pl - off - len);
        }
        true
    }

    fn owns(&self, e: &Entry) -> bool {
        self.sets[e.class].owns(e.slot)
    }
}

/// The queue on a device: the superblock, what recovery found, and the
/// per-worker slot sets.
pub struct Queue {
    dev: Box<dyn BlockDevice>,
    sb: Superblock,
    index: BTreeMap<u64, Placed>,
    workers: Vec<WorkerSlots>,
    /// Slots whose header was intact but whose payload was not (torn).
    pub torn: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dev", &self.dev.describe())
            .field("sb", &self.sb)
            .field("messages", &self.index.len())
            .finish()
    }
}

impl Queue {
    /// Opens the queue on `dev` with `workers` slot sets, formatting the
    /// device if it holds no queue, and recovers every intact message.
    pub fn open(dev: Box<dyn BlockDevice>, workers: usize) -> Result<Queue, QueueError> {
        let cap = dev.capacity();
        let b = dev.read_at(0, BLOCK)?;
        let mut sb = match Superblock::decode(b.as_slice()) {
            // An intact superblock that does not fit is an error: formatting
            // would lose every message.
            Some(sb) => match sb.needs() {
                Some(needs) if needs <= cap => sb,
                needs => {
                    return Err(QueueError::LayoutMismatch {
                        needs: needs.unwrap_or(u64::MAX),
                        capacity: cap,
                    })
                }
            },
            None => {
                let nonce = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
                    ^ (u64::from(std::process::id()) << 32);
                Superblock::for_capacity(cap, nonce).ok_or(QueueError::TooSmall(cap))?
            }
        };
        // A new epoch, durable before any id of it is given out.
        sb.epoch += 1;
        dev.write_at(0, &sb.encode())?;
        dev.flush()?;
        let workers = workers.max(1);
        let mut q = Queue {
            dev,
            sb,
            index: BTreeMap::new(),
            workers: Vec::new(),
            torn: 0,
        };
        q.workers = split(&sb, workers);
        q.recover()?;
        let next = (sb.epoch << ID_EPOCH_SHIFT) + 1;
        for (w, ws) in q.workers.iter_mut().enumerate() {
            ws.next_id = next + w as u64;
            ws.id_stride = workers as u64;
        }
        Ok(q)
    }

    /// Scans every slot header (in large reads) and checks each payload.
    fn recover(&mut self) -> Result<(), QueueError> {
        const CHUNK: usize = 1 << 20;
        let mut found = Vec::new();
        for (class, &size) in CLASS_SIZES.iter().enumerate() {
            let total = self.sb.slots[class] * size as u64;
            let mut done = 0u64;
            while done < total {
                let len = (total - done).min(CHUNK as u64) as usize;
                let buf = self.dev.read_at(self.sb.region[class] + done, len)?;
                for (i, slot) in buf.as_slice().chunks(size).enumerate() {
                    let n = done / size as u64 + i as u64;
                    if let Some(e) = self.check_slot(class, n, slot)? {
                        found.push((e, (class == 0).then(|| slot.to_vec())));
                    }
                }
                done += len as u64;
            }
        }
        let mut used = HashSet::new();
        for (e, small) in found {
            if self.index.contains_key(&e.id) {
                log::warn!("message id {} found twice; keeping the first", e.id);
                continue;
            }
            let Some(w) = self.workers.iter_mut().position(|w| w.owns(&e)) else {
                continue;
            };
            let extent = if e.header.kind == Kind::Extent {
                let ext = (e.header.extent_off, round_up(e.header.payload_len()));
                let carved: Vec<bool> = self
                    .workers
                    .iter_mut()
                    .map(|w| w.carve_extent(ext.0, ext.1))
                    .collect();
                if carved.contains(&false) {
                    log::warn!("message {} overlaps another's extent; ignored", e.id);
                    for (w, ok) in self.workers.iter_mut().zip(carved) {
                        if ok {
                            w.free_extent(ext.0, ext.1);
                        }
                    }
                    continue;
                }
                Some(ext)
            } else {
                None
            };
            used.insert((e.class, e.slot));
            if let Some(bytes) = small {
                // Kept for rewrites of the block it shares.
                self.workers[w].small.insert(e.slot, bytes);
            }
            self.index.insert(e.id, Placed { entry: e, extent });
        }
        for w in &mut self.workers {
            for set in &mut w.sets {
                set.free.retain(|&s| !used.contains(&(set.class, s)));
            }
        }
        Ok(())
    }

    /// The message in `slot`, if its header and payload are intact.
    fn check_slot(
        &mut self,
        class: usize,
        slot: u64,
        bytes: &[u8],
    ) -> Result<Option<Entry>, QueueError> {
        let Some(h) = SlotHeader::decode(bytes) else {
            return Ok(None);
        };
        if h.nonce != self.sb.nonce || usize::from(h.class) != class {
            return Ok(None);
        }
        let plen = h.payload_len();
        let payload = match h.kind {
            Kind::Inline => {
                if HDR_LEN as u64 + plen > CLASS_SIZES[class] as u64 {
                    self.torn += 1;
                    return Ok(None);
                }
                bytes[HDR_LEN..HDR_LEN + plen as usize].to_vec()
            }
            Kind::Extent => {
                let end = h.extent_off.checked_add(round_up(plen));
                let inside = h.extent_off >= self.sb.ext_start
                    && h.extent_off % BLOCK as u64 == 0
                    && end.is_some_and(|e| e <= self.sb.ext_end());
                if !inside {
                    self.torn += 1;
                    return Ok(None);
                }
                let b = self.dev.read_at(h.extent_off, round_up(plen) as usize)?;
                b.as_slice()[..plen as usize].to_vec()
            }
        };
        let env = (crc32c::crc32c(&payload) == h.data_crc)
            .then(|| Envelope::decode(&payload[..h.env_len as usize]))
            .flatten();
        let Some(env) = env.filter(|_| h.env_len as u64 <= plen) else {
            self.torn += 1;
            return Ok(None);
        };
        Ok(Some(Entry {
            id: h.id,
            class,
            slot,
            header: h,
            env,
        }))
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn device(&self) -> &dyn BlockDevice {
        &*self.dev
    }

    /// Every message, oldest (lowest id) first.
    pub fn list(&self) -> impl Iterator<Item = &Entry> {
        self.index.values().map(|p| &p.entry)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The message content of `id`, checked against its checksum.
    pub fn read(&self, id: u64) -> Result<Vec<u8>, QueueError> {
        let p = self.index.get(&id).ok_or(QueueError::NoSuchMessage(id))?;
        let h = &p.entry.header;
        let plen = h.payload_len() as usize;
        let payload = match h.kind {
            Kind::Inline => {
                let off = self.sb.slot_offset(p.entry.class, p.entry.slot);
                let start = off / BLOCK as u64 * BLOCK as u64;
                let skip = (off - start) as usize + HDR_LEN;
                let b = self
                    .dev
                    .read_at(start, round_up((skip + plen) as u64) as usize)?;
                b.as_slice()[skip..skip + plen].to_vec()
            }
            Kind::Extent => {
                let b = self
                    .dev
                    .read_at(h.extent_off, round_up(plen as u64) as usize)?;
                b.as_slice()[..plen].to_vec()
            }
        };
        if crc32c::crc32c(&payload) != h.data_crc {
            return Err(QueueError::Damaged(id));
        }
        Ok(payload[h.env_len as usize..].to_vec())
    }

    /// Stores `msg` durably (through worker 0's slots); returns its id.
    pub fn enqueue(&mut self, msg: &Message) -> Result<u64, QueueError> {
        let (placed, writes) = self.workers[0].place(msg)?;
        if let Err(e) = write_durably(&*self.dev, writes) {
            self.workers[0].release(&placed);
            return Err(e.into());
        }
        let id = placed.entry.id;
        self.index.insert(id, placed);
        Ok(id)
    }

    /// Deletes `id` durably; its slot (and extent) can be reused.
    pub fn delete(&mut self, id: u64) -> Result<(), QueueError> {
        let p = self
            .index
            .remove(&id)
            .ok_or(QueueError::NoSuchMessage(id))?;
        let w = self
            .workers
            .iter()
            .position(|w| w.owns(&p.entry))
            .expect("every recovered or enqueued slot belongs to a worker");
        // The extent goes back to the workers whose parts it lies in.
        let mut slot_only = p.clone();
        slot_only.extent = None;
        if let Some((off, len)) = p.extent {
            for w in &mut self.workers {
                w.free_extent(off, len);
            }
        }
        let write = self.workers[w].release(&slot_only);
        write_durably(&*self.dev, vec![write])?;
        Ok(())
    }

    /// Takes the oldest message off the queue: returns it and deletes it.
    pub fn dequeue(&mut self) -> Result<Option<(Entry, Vec<u8>)>, QueueError> {
        let Some(id) = self.index.keys().next().copied() else {
            return Ok(None);
        };
        let body = self.read(id)?;
        let entry = self.index[&id].entry.clone();
        self.delete(id)?;
        Ok(Some((entry, body)))
    }

    /// Hands the device and the per-worker slot sets to a server.
    pub fn into_parts(self) -> (Box<dyn BlockDevice>, Vec<WorkerSlots>) {
        (self.dev, self.workers)
    }
}

/// Splits every class region, and the extent region, into `n` contiguous
/// parts (class-0 parts in whole blocks).
fn split(sb: &Superblock, n: usize) -> Vec<WorkerSlots> {
    let n64 = n as u64;
    let per_block = (BLOCK / CLASS_SIZES[0]) as u64;
    let ext_part = sb.ext_blocks / n64 * BLOCK as u64;
    (0..n64)
        .map(|w| {
            let sets = [0usize, 1, 2].map(|c| {
                let unit = if c == 0 { per_block } else { 1 };
                let each = sb.slots[c] / unit / n64 * unit;
                let first = w * each;
                // The last worker also takes what does not divide evenly.
                let count = if w == n64 - 1 {
                    sb.slots[c] - first
                } else {
                    each
                };
                SlotSet {
                    class: c,
                    first,
                    count,
                    free: (first..first + count).rev().collect(),
                }
            });
            let start = sb.ext_start + w * ext_part;
            let end = if w == n64 - 1 {
                sb.ext_end()
            } else {
                start + ext_part
            };
            let mut ext_free = BTreeMap::new();
            if end > start {
                ext_free.insert(start, end - start);
            }
            WorkerSlots {
                sb: *sb,
                sets,
                small: HashMap::new(),
                ext_free,
                ext_range: (start, end),
                next_id: 1,
                id_stride: 1,
            }
        })
        .collect()
}

/// Submits every write, waits for all, and makes them durable (one flush,
/// none on a write-through device; [`vsic_storage::batch::write_all`]).
/// Only one thread may drive `dev` at a time.
pub fn write_durably(dev: &dyn BlockDevice, writes: Vec<Write>) -> Result<(), StorageError> {
    let writes: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, d.as_slice())).collect();
    vsic_storage::batch::write_all(dev, &writes, true, &mut 0).map(|_| ())
}
