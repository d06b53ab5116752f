//! The metadata: inodes, directories and block maps, held in memory whole,
//! and the operations that change it. A live operation and its replay from
//! the log go through the same [`State::apply`], so recovery re-executes
//! exactly what was done. [`State::check`] verifies the structure.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::codec::{Dec, Enc};
use crate::error::{FsError, Result};
use crate::layout::{NAME_MAX, TARGET_MAX};

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nsecs: u32,
}

impl Time {
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nsecs: d.subsec_nanos(),
        }
    }
    fn enc(&self, e: &mut Enc) {
        e.i64(self.secs);
        e.u32(self.nsecs);
    }
    fn dec(d: &mut Dec) -> Result<Time> {
        Ok(Time {
            secs: d.i64()?,
            nsecs: d.u32()?,
        })
    }
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        }
    }
    fn from_code(c: u8) -> Result<Kind> {
        match c {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            3 => Ok(Kind::Symlink),
            _ => Err(FsError::Corrupt(format!("inode kind {c}"))),
        }
    }
}

/// The contents of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Device block of each 4 KiB file block; 0 is a hole (reads zeros).
    File {
        blocks: Vec<u64>,
    },
    /// `parent` is `..` (the root is its own parent).
    Dir {
        parent: u64,
        entries: BTreeMap<Vec<u8>, u64>,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names referring to it; a directory counts `.`, its entry and each
    /// subdirectory's `..`.
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub body: Body,
}

impl Inode {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::File { .. } => Kind::File,
            Body::Dir { .. } => Kind::Dir,
            Body::Symlink { .. } => Kind::Symlink,
        }
    }
}

/// Attributes a [`Op::SetAttr`] changes (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

/// File block `idx` is now device block `block`, whose 4 KiB have CRC-32C
/// `crc` (checked when the unit is the log's last: see `Fs::mount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub idx: u64,
    pub block: u64,
    pub crc: u32,
}

/// One metadata operation: a log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new inode `ino` named `name` in `parent` (`target`: symlinks).
    Create {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        target: Vec<u8>,
        time: Time,
    },
    /// A further name for the file or symlink `ino`.
    Link {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        time: Time,
    },
    /// Removes a name (a file's, a symlink's or an empty directory's); the
    /// inode goes with its last name.
    Remove {
        parent: u64,
        name: Vec<u8>,
        time: Time,
    },
    /// Moves a name, replacing what the destination named.
    Rename {
        sparent: u64,
        sname: Vec<u8>,
        dparent: u64,
        dname: Vec<u8>,
        time: Time,
    },
    /// Changes attributes; `map` points file blocks at new device blocks
    /// (a truncation's zeroed last block) after the size is applied.
    SetAttr {
        ino: u64,
        change: AttrChange,
        map: Vec<Mapping>,
        time: Time,
    },
    /// Points file blocks of `ino` at freshly written device blocks and
    /// sets the size.
    Write {
        ino: u64,
        size: u64,
        map: Vec<Mapping>,
        time: Time,
    },
    /// A server's reply to the request `key` (both opaque to the file
    /// system), kept in the [`ReplyCache`]: it commits in the same unit
    /// as the operations logged before it.
    Reply { key: Vec<u8>, reply: Vec<u8> },
}

/// Most replies kept.
pub const REPLY_ENTRIES: usize = 4096;
/// Most bytes of keys and replies kept (also at most a quarter of a
/// checkpoint slot: see `Fs::mount`).
pub const REPLY_BYTES: usize = 1 << 20;

/// The replies a server recorded with [`Op::Reply`] (vsic-nfsd's
/// duplicate-request cache): the newest ones, at most `max_entries` and
/// `max_bytes` (keys plus replies), the oldest dropped first. A key
/// recorded again replaces its reply. Carried through checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCache {
    /// (id, key, reply), oldest first.
    entries: VecDeque<(u64, Vec<u8>, Vec<u8>)>,
    /// Key → id of its newest entry.
    index: HashMap<Vec<u8>, u64>,
    next_id: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for ReplyCache {
    fn default() -> Self {
        ReplyCache {
            entries: VecDeque::new(),
            index: HashMap::new(),
            next_id: 0,
            bytes: 0,
            max_entries: REPLY_ENTRIES,
            max_bytes: REPLY_BYTES,
        }
    }
}

impl ReplyCache {
    /// Sets the bounds (dropping the oldest entries past them).
    pub fn set_limits(&mut self, max_entries: usize, max_bytes: usize) {
        self.max_entries = max_entries;
        self.max_bytes = max_bytes;
        self.evict();
    }

    pub fn insert(&mut self, key: Vec<u8>, reply: Vec<u8>) {
        let size = key.len() + reply.len();
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.index.insert(key.clone(), id);
        self.entries.push_back((id, key, reply));
        self.bytes += size;
        self.evict();
    }

    fn evict(&mut self) {
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((id, key, reply)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= key.len() + reply.len();
            if self.index.get(&key) == Some(&id) {
                self.index.remove(&key);
            }
        }
    }

    /// The newest reply recorded for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let id = *self.index.get(key)?;
        let first = self.entries.front()?.0;
        let (eid, _, reply) = self.entries.get((id - first) as usize)?;
        debug_assert_eq!(*eid, id);
        Some(reply)
    }

    /// Entries kept (a key recorded twice counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn encode(&self, e: &mut Enc) {
        e.u64(self.entries.len() as u64);
        for (_, key, reply) in &self.entries {
            e.bytes(key);
            e.bytes(reply);
        }
    }

    fn decode(d: &mut Dec) -> Result<ReplyCache> {
        let mut c = ReplyCache {
            max_entries: usize::MAX,
            max_bytes: usize::MAX,
            ..ReplyCache::default()
        };
        for _ in 0..d.u64()? {
            let key = d.bytes()?;
            c.insert(key, d.bytes()?);
        }
        c.max_entries = REPLY_ENTRIES;
        c.max_bytes = REPLY_BYTES;
        Ok(c)
    }
}

/// The whole metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub next_ino: u64,
    pub inodes: HashMap<u64, Inode>,
    pub replies: ReplyCache,
}

fn valid_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong { max: NAME_MAX });
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Invalid("not a usable file name"));
    }
    Ok(())
}

/// What `check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub inodes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub data_blocks: u64,
}

impl State {
    /// A file system with an empty root directory.
    pub fn new(time: Time) -> State {
        let root = Inode {
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: time,
            mtime: time,
            ctime: time,
            body: Body::Dir {
                parent: ROOT,
                entries: BTreeMap::new(),
            },
        };
        State {
            next_ino: ROOT + 1,
            inodes: HashMap::from([(ROOT, root)]),
            replies: ReplyCache::default(),
        }
    }

    pub fn get(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    pub fn entries(&self, dir: u64) -> Result<&BTreeMap<Vec<u8>, u64>> {
        match &self.get(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(FsError::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<Vec<u8>, u64>> {
        match &mut self.get_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(FsError::NotDir),
        }
    }

    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64> {
        let inode = self.get(dir)?;
        let Body::Dir { parent, entries } = &inode.body else {
            return Err(FsError::NotDir);
        };
        match name {
            b"." => Ok(dir),
            b".." => Ok(*parent),
            _ => entries.get(name).copied().ok_or(FsError::NotFound),
        }
    }

    /// True when `anc` is `ino` or one of its ancestors.
    fn is_ancestor(&self, anc: u64, mut ino: u64) -> bool {
        for _ in 0..=self.inodes.len() {
            if ino == anc {
                return true;
            }
            match self.inodes.get(&ino).map(|i| &i.body) {
                Some(Body::Dir { parent, .. }) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
        false
    }

    /// Drops one link of `ino`; frees the inode (its blocks into `freed`)
    /// with the last.
    fn drop_link(&mut self, ino: u64, time: Time, freed: &mut Vec<u64>) -> Result<()> {
        let inode = self.get_mut(ino)?;
        let gone = match inode.body {
            Body::Dir { .. } => true,
            _ => {
                inode.nlink = inode.nlink.saturating_sub(1);
                inode.ctime = time;
                inode.nlink == 0
            }
        };
        if gone {
            if let Some(Inode {
                body: Body::File { blocks },
                ..
            }) = self.inodes.remove(&ino)
            {
                freed.extend(blocks.into_iter().filter(|&b| b != 0));
            }
        }
        Ok(())
    }

    /// Applies `op`, checking first that it can be applied whole; on error
    /// nothing changed. Device blocks no longer referenced go to `freed`.
    pub fn apply(&mut self, op: &Op, freed: &mut Vec<u64>) -> Result<()> {
        match op {
            Op::Create {
                parent,
                name,
                ino,
                kind,
                mode,
                uid,
                gid,
                target,
                time,
            } => {
                valid_name(name)?;
                if self.entries(*parent)?.contains_key(name) {
                    return Err(FsError::Exists);
                }
                if self.inodes.contains_key(ino) || *ino < self.next_ino {
                    return Err(FsError::Corrupt(format!("inode {ino} created twice")));
                }
                if target.len() > TARGET_MAX {
                    return Err(FsError::NameTooLong { max: TARGET_MAX });
                }
                let body = match kind {
                    Kind::File => Body::File { blocks: Vec::new() },
                    Kind::Dir => Body::Dir {
                        parent: *parent,
                        entries: BTreeMap::new(),
                    },
                    Kind::Symlink => Body::Symlink {
                        target: target.clone(),
                    },
                };
                let size = if *kind == Kind::Symlink {
                    target.len() as u64
                } else {
                    0
                };
                self.inodes.insert(
                    *ino,
                    Inode {
                        mode: *mode & 0o7777,
                        uid: *uid,
                        gid: *gid,
                        nlink: if *kind == Kind::Dir { 2 } else { 1 },
                        size,
                        atime: *time,
                        mtime: *time,
                        ctime: *time,
                        body,
                    },
                );
                self.next_ino = ino + 1;
                let p = self.get_mut(*parent)?;
                p.mtime = *time;
                p.ctime = *time;
                if *kind == Kind::Dir {
                    p.nlink += 1;
                }
                self.entries_mut(*parent)?.insert(name.clone(), *ino);
            }
            Op::Link {
                parent,
                name,
                ino,
                time,
            } => {
                valid_name(name)?;
                if self.get(*ino)?.kind() == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                if self.entries(*parent)?.contains_key(name) {
                    return Err(FsError::Exists);
                }
                self.entries_mut(*parent)?.insert(name.clone(), *ino);
                let p = self.get_mut(*parent)?;
                p.mtime = *time;
                p.ctime = *time;
                let i = self.get_mut(*ino)?;
                i.nlink += 1;
                i.ctime = *time;
            }
            Op::Remove { parent, name, time } => {
                valid_name(name)?;
                let ino = self.lookup(*parent, name)?;
                let is_dir = self.get(ino)?.kind() == Kind::Dir;
                if is_dir && !self.entries(ino)?.is_empty() {
                    return Err(FsError::NotEmpty);
                }
                self.entries_mut(*parent)?.remove(name.as_slice());
                let p = self.get_mut(*parent)?;
                p.mtime = *time;
                p.ctime = *time;
                if is_dir {
                    p.nlink -= 1;
                }
                self.drop_link(ino, *time, freed)?;
            }
            Op::Rename {
                sparent,
                sname,
                dparent,
                dname,
                time,
            } => {
                valid_name(sname)?;
                valid_name(dname)?;
                let src = self.lookup(*sparent, sname)?;
                self.entries(*dparent)?;
                let src_dir = self.get(src)?.kind() == Kind::Dir;
                if src_dir && self.is_ancestor(src, *dparent) {
                    return Err(FsError::Invalid("a directory cannot move into itself"));
                }
                let old = match self.lookup(*dparent, dname) {
                    Ok(o) => Some(o),
                    Err(FsError::NotFound) => None,
                    Err(e) => return Err(e),
                };
                if old == Some(src) {
                    return Ok(()); // the same file under both names: nothing to do
                }
                if let Some(o) = old {
                    let odir = self.get(o)?.kind() == Kind::Dir;
                    match (src_dir, odir) {
                        (true, false) => return Err(FsError::NotDir),
                        (false, true) => return Err(FsError::IsDir),
                        (true, true) if !self.entries(o)?.is_empty() => {
                            return Err(FsError::NotEmpty)
                        }
                        _ => {}
                    }
                }
                // Checked: now change.
                if let Some(o) = old {
                    self.entries_mut(*dparent)?.remove(dname.as_slice());
                    if self.get(o)?.kind() == Kind::Dir {
                        self.get_mut(*dparent)?.nlink -= 1;
                    }
                    self.drop_link(o, *time, freed)?;
                }
                self.entries_mut(*sparent)?.remove(sname.as_slice());
                self.entries_mut(*dparent)?.insert(dname.clone(), src);
                if src_dir {
                    self.get_mut(*sparent)?.nlink -= 1;
                    self.get_mut(*dparent)?.nlink += 1;
                    if let Body::Dir { parent, .. } = &mut self.get_mut(src)?.body {
                        *parent = *dparent;
                    }
                }
                for p in [*sparent, *dparent] {
                    let p = self.get_mut(p)?;
                    p.mtime = *time;
                    p.ctime = *time;
                }
                self.get_mut(src)?.ctime = *time;
            }
            Op::SetAttr {
                ino,
                change,
                map,
                time,
            } => {
                let inode = self.get(*ino)?;
                if change.size.is_some() && inode.kind() != Kind::File {
                    return Err(if inode.kind() == Kind::Dir {
                        FsError::IsDir
                    } else {
                        FsError::Invalid("only a file has a settable size")
                    });
                }
                if !map.is_empty() && inode.kind() != Kind::File {
                    return Err(FsError::Corrupt(format!("block map for non-file {ino}")));
                }
                let inode = self.get_mut(*ino)?;
                if let Some(m) = change.mode {
                    inode.mode = m & 0o7777;
                }
                if let Some(u) = change.uid {
                    inode.uid = u;
                }
                if let Some(g) = change.gid {
                    inode.gid = g;
                }
                if let Some(t) = change.atime {
                    inode.atime = t;
                }
                if let Some(t) = change.mtime {
                    inode.mtime = t;
                }
                inode.ctime = *time;
                if let (Some(size), Body::File { blocks }) = (change.size, &mut inode.body) {
                    if size != inode.size && change.mtime.is_none() {
                        inode.mtime = *time;
                    }
                    let keep = size.div_ceil(crate::layout::BLOCK) as usize;
                    if blocks.len() > keep {
                        freed.extend(blocks.drain(keep..).filter(|&b| b != 0));
                    }
                    inode.size = size;
                }
                map_blocks(inode, map, freed);
            }
            Op::Write {
                ino,
                size,
                map,
                time,
            } => {
                let inode = self.get_mut(*ino)?;
                if inode.kind() != Kind::File {
                    return Err(FsError::IsDir);
                }
                inode.size = *size;
                inode.mtime = *time;
                inode.ctime = *time;
                map_blocks(inode, map, freed);
            }
            Op::Reply { key, reply } => self.replies.insert(key.clone(), reply.clone()),
        }
        Ok(())
    }

    /// Verifies the structure: every entry names a live inode, every inode
    /// is reachable, link counts match the names, no device block is used
    /// twice or lies outside `data` (a range of device blocks), no block
    /// lies beyond a file's size, directories form a tree.
    pub fn check(&self, data: std::ops::Range<u64>) -> Result<CheckReport> {
        let bad = |m: String| Err(FsError::Corrupt(m));
        let mut names: HashMap<u64, u32> = HashMap::new();
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        let root = self
            .get(ROOT)
            .map_err(|_| FsError::Corrupt("no root directory".into()))?;
        match root.body {
            Body::Dir { parent, .. } if parent == ROOT => {}
            _ => return bad("the root is not a directory that is its own parent".into()),
        }
        let mut report = CheckReport::default();
        let mut used: HashMap<u64, u64> = HashMap::new();
        for (&ino, inode) in &self.inodes {
            if ino >= self.next_ino {
                return bad(format!("inode {ino} beyond next_ino {}", self.next_ino));
            }
            report.inodes += 1;
            match &inode.body {
                Body::Dir { parent, entries } => {
                    report.dirs += 1;
                    if ino != ROOT {
                        *subdirs.entry(*parent).or_default() += 1;
                        match self.inodes.get(parent).map(|p| &p.body) {
                            Some(Body::Dir { entries: pe, .. })
                                if pe.values().any(|&c| c == ino) => {}
                            _ => {
                                return bad(format!(
                                    "directory {ino}: parent {parent} does not name it"
                                ))
                            }
                        }
                    }
                    for (name, &child) in entries {
                        valid_name(name).map_err(|_| {
                            FsError::Corrupt(format!("directory {ino}: bad name {name:?}"))
                        })?;
                        let Some(c) = self.inodes.get(&child) else {
                            return bad(format!(
                                "directory {ino}: {:?} names missing inode {child}",
                                String::from_utf8_lossy(name)
                            ));
                        };
                        if let Body::Dir { parent, .. } = c.body {
                            if parent != ino {
                                return bad(format!(
                                    "directory {child} is in {ino} but says its parent is {parent}"
                                ));
                            }
                        }
                        *names.entry(child).or_default() += 1;
                    }
                }
                Body::File { blocks } => {
                    report.files += 1;
                    if blocks.len() as u64 > inode.size.div_ceil(crate::layout::BLOCK) {
                        return bad(format!("file {ino}: blocks beyond its size {}", inode.size));
                    }
                    for &b in blocks.iter().filter(|&&b| b != 0) {
                        if !data.contains(&b) {
                            return bad(format!("file {ino}: block {b} outside the data region"));
                        }
                        if let Some(other) = used.insert(b, ino) {
                            return bad(format!("block {b} used by inodes {other} and {ino}"));
                        }
                        report.data_blocks += 1;
                    }
                }
                Body::Symlink { target } => {
                    report.symlinks += 1;
                    if inode.size != target.len() as u64 {
                        return bad(format!(
                            "symlink {ino}: size {} != target length",
                            inode.size
                        ));
                    }
                }
            }
        }
        for (&ino, inode) in &self.inodes {
            let n = names.get(&ino).copied().unwrap_or(0);
            let want = match inode.body {
                Body::Dir { .. } => {
                    if ino != ROOT && n != 1 {
                        return bad(format!("directory {ino} has {n} names"));
                    }
                    2 + subdirs.get(&ino).copied().unwrap_or(0)
                }
                _ => n,
            };
            if ino != ROOT && n == 0 {
                return bad(format!("inode {ino} is not reachable"));
            }
            if inode.nlink != want {
                return bad(format!(
                    "inode {ino}: nlink {} but {want} links",
                    inode.nlink
                ));
            }
        }
        // Directories form a tree: every one reaches the root.
        for (&ino, inode) in &self.inodes {
            if matches!(inode.body, Body::Dir { .. }) && !self.is_ancestor(ROOT, ino) {
                return bad(format!("directory {ino} does not lead to the root"));
            }
        }
        Ok(report)
    }

    /// Every device block a file uses.
    pub fn used_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.inodes
            .values()
            .flat_map(|i| match &i.body {
                Body::File { blocks } => blocks.as_slice(),
                _ => &[],
            })
            .copied()
            .filter(|&b| b != 0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.next_ino);
        e.u64(self.inodes.len() as u64);
        let mut inos: Vec<_> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let i = &self.inodes[&ino];
            e.u64(ino);
            e.u8(i.kind().code());
            e.u32(i.mode);
            e.u32(i.uid);
            e.u32(i.gid);
            e.u32(i.nlink);
            e.u64(i.size);
            i.atime.enc(&mut e);
            i.mtime.enc(&mut e);
            i.ctime.enc(&mut e);
            match &i.body {
                Body::File { blocks } => {
                    e.u64(blocks.len() as u64);
                    for &b in blocks {
                        e.u64(b);
                    }
                }
                Body::Dir { parent, entries } => {
                    e.u64(*parent);
                    e.u64(entries.len() as u64);
                    for (n, &c) in entries {
                        e.bytes(n);
                        e.u64(c);
                    }
                }
                Body::Symlink { target } => e.bytes(target),
            }
        }
        self.replies.encode(&mut e);
        e.buf
    }

    /// Decodes a checkpoint of format `version` (1: no reply cache).
    pub fn decode(buf: &[u8], version: u32) -> Result<State> {
        let mut d = Dec::new(buf);
        let next_ino = d.u64()?;
        let n = d.u64()?;
        let mut inodes = HashMap::new();
        for _ in 0..n {
            let ino = d.u64()?;
            let kind = Kind::from_code(d.u8()?)?;
            let (mode, uid, gid, nlink, size) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u64()?);
            let (atime, mtime, ctime) =
                (Time::dec(&mut d)?, Time::dec(&mut d)?, Time::dec(&mut d)?);
            let body = match kind {
                Kind::File => {
                    let n = d.u64()?;
                    let mut blocks = Vec::new();
                    for _ in 0..n {
                        blocks.push(d.u64()?);
                    }
                    Body::File { blocks }
                }
                Kind::Dir => {
                    let parent = d.u64()?;
                    let n = d.u64()?;
                    let mut entries = BTreeMap::new();
                    for _ in 0..n {
                        let name = d.bytes()?;
                        entries.insert(name, d.u64()?);
                    }
                    Body::Dir { parent, entries }
                }
                Kind::Symlink => Body::Symlink { target: d.bytes()? },
            };
            inodes.insert(
                ino,
                Inode {
                    mode,
                    uid,
                    gid,
                    nlink,
                    size,
                    atime,
                    mtime,
                    ctime,
                    body,
                },
            );
        }
        let replies = if version >= 2 {
            ReplyCache::decode(&mut d)?
        } else {
            ReplyCache::default()
        };
        Ok(State {
            next_ino,
            inodes,
            replies,
        })
    }
}

fn map_blocks(inode: &mut Inode, map: &[Mapping], freed: &mut Vec<u64>) {
    if let Body::File { blocks } = &mut inode.body {
        for m in map {
            let (idx, b) = (m.idx as usize, m.block);
            if blocks.len() <= idx {
                blocks.resize(idx + 1, 0);
            }
            if blocks[idx] != 0 {
                freed.push(blocks[idx]);
            }
            blocks[idx] = b;
        }
    }
}

fn enc_map(e: &mut Enc, map: &[Mapping]) {
    e.u32(map.len() as u32);
    for m in map {
        e.u64(m.idx);
        e.u64(m.block);
        e.u32(m.crc);
    }
}

fn dec_map(d: &mut Dec) -> Result<Vec<Mapping>> {
    let n = d.u32()?;
    let mut m = Vec::new();
    for _ in 0..n {
        m.push(Mapping {
            idx: d.u64()?,
            block: d.u64()?,
            crc: d.u32()?,
        });
    }
    Ok(m)
}

impl Op {
    /// The data blocks this operation points at.
    pub fn mappings(&self) -> &[Mapping] {
        match self {
            Op::SetAttr { map, .. } | Op::Write { map, .. } => map,
            _ => &[],
        }
    }
}

fn enc_opt_u32(e: &mut Enc, v: Option<u32>) {
    match v {
        Some(v) => {
            e.u8(1);
            e.u32(v);
        }
        None => e.u8(0),
    }
}

fn dec_opt_u32(d: &mut Dec) -> Result<Option<u32>> {
    Ok(if d.u8()? == 1 { Some(d.u32()?) } else { None })
}

fn enc_opt_time(e: &mut Enc, v: Option<Time>) {
    match v {
        Some(t) => {
            e.u8(1);
            t.enc(e);
        }
        None => e.u8(0),
    }
}

fn dec_opt_time(d: &mut Dec) -> Result<Option<Time>> {
    Ok(if d.u8()? == 1 {
        Some(Time::dec(d)?)
    } else {
        None
    })
}

impl Op {
    pub fn encode(&self, e: &mut Enc) {
        match self {
            Op::Create {
                parent,
                name,
                ino,
                kind,
                mode,
                uid,
                gid,
                target,
                time,
            } => {
                e.u8(1);
                e.u64(*parent);
                e.bytes(name);
                e.u64(*ino);
                e.u8(kind.code());
                e.u32(*mode);
                e.u32(*uid);
                e.u32(*gid);
                e.bytes(target);
                time.enc(e);
            }
            Op::Link {
                parent,
                name,
                ino,
                time,
            } => {
                e.u8(2);
                e.u64(*parent);
                e.bytes(name);
                e.u64(*ino);
                time.enc(e);
            }
            Op::Remove { parent, name, time } => {
                e.u8(3);
                e.u64(*parent);
                e.bytes(name);
                time.enc(e);
            }
            Op::Rename {
                sparent,
                sname,
                dparent,
                dname,
                time,
            } => {
                e.u8(4);
                e.u64(*sparent);
                e.bytes(sname);
                e.u64(*dparent);
                e.bytes(dname);
                time.enc(e);
            }
            Op::SetAttr {
                ino,
                change,
                map,
                time,
            } => {
                e.u8(5);
                e.u64(*ino);
                enc_opt_u32(e, change.mode);
                enc_opt_u32(e, change.uid);
                enc_opt_u32(e, change.gid);
                match change.size {
                    Some(s) => {
                        e.u8(1);
                        e.u64(s);
                    }
                    None => e.u8(0),
                }
                enc_opt_time(e, change.atime);
                enc_opt_time(e, change.mtime);
                enc_map(e, map);
                time.enc(e);
            }
            Op::Write {
                ino,
                size,
                map,
                time,
            } => {
                e.u8(6);
                e.u64(*ino);
                e.u64(*size);
                enc_map(e, map);
                time.enc(e);
            }
            Op::Reply { key, reply } => {
                e.u8(7);
                e.bytes(key);
                e.bytes(reply);
            }
        }
    }

    pub fn decode(d: &mut Dec) -> Result<Op> {
        Ok(match d.u8()? {
            1 => Op::Create {
                parent: d.u64()?,
                name: d.bytes()?,
                ino: d.u64()?,
                kind: Kind::from_code(d.u8()?)?,
                mode: d.u32()?,
                uid: d.u32()?,
                gid: d.u32()?,
                target: d.bytes()?,
                time: Time::dec(d)?,
            },
            2 => Op::Link {
                parent: d.u64()?,
                name: d.bytes()?,
                ino: d.u64()?,
                time: Time::dec(d)?,
            },
            3 => Op::Remove {
                parent: d.u64()?,
                name: d.bytes()?,
                time: Time::dec(d)?,
            },
            4 => Op::Rename {
                sparent: d.u64()?,
                sname: d.bytes()?,
                dparent: d.u64()?,
                dname: d.bytes()?,
                time: Time::dec(d)?,
            },
            5 => {
                let ino = d.u64()?;
                let change = AttrChange {
                    mode: dec_opt_u32(d)?,
                    uid: dec_opt_u32(d)?,
                    gid: dec_opt_u32(d)?,
                    size: if d.u8()? == 1 { Some(d.u64()?) } else { None },
                    atime: dec_opt_time(d)?,
                    mtime: dec_opt_time(d)?,
                };
                Op::SetAttr {
                    ino,
                    change,
                    map: dec_map(d)?,
                    time: Time::dec(d)?,
                }
            }
            6 => Op::Write {
                ino: d.u64()?,
                size: d.u64()?,
                map: dec_map(d)?,
                time: Time::dec(d)?,
            },
            7 => Op::Reply {
                key: d.bytes()?,
                reply: d.bytes()?,
            },
            t => return Err(FsError::Corrupt(format!("log record type {t}"))),
        })
    }
}
