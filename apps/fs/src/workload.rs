//! A deterministic random workload and a model of what it should leave,
//! for crash tests: `vsic-fs workload` runs it (printing `synced K` after
//! each sync that returned), the test kills it and checks that the file
//! system is exactly the model after some step K' >= the last K printed.

use std::collections::{BTreeMap, HashMap};

use crate::error::{FsError, Result};
use crate::fs::{Fs, OpenFlags};
use crate::meta::Kind;

/// What a name holds, as the workload sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

/// Every name in the file system (paths without the leading `/`), with
/// the inode it names.
pub type Dump = BTreeMap<String, (u64, Entry)>;

/// Reads the whole tree.
pub fn dump(fs: &Fs) -> Result<Dump> {
    let mut out = Dump::new();
    let mut todo = vec![(fs.root(), String::new())];
    while let Some((dir, prefix)) = todo.pop() {
        for e in fs.list(dir)? {
            let path = format!("{prefix}{}", String::from_utf8_lossy(&e.name));
            let entry = match e.kind {
                Kind::Dir => {
                    todo.push((e.ino, format!("{path}/")));
                    Entry::Dir
                }
                Kind::File => {
                    let size = fs.stat_ino(e.ino)?.size;
                    Entry::File(fs.read_ino(e.ino, 0, size as usize)?.0)
                }
                Kind::Symlink => Entry::Symlink(fs.readlink_ino(e.ino)?),
            };
            out.insert(path, (e.ino, entry));
        }
    }
    Ok(out)
}

/// One step of the workload.
#[derive(Debug, Clone)]
pub enum Step {
    Mkdir(String),
    Rmdir(String),
    Write {
        path: String,
        off: u64,
        data: Vec<u8>,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink(String),
    Link {
        from: String,
        to: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Sync,
}

/// The step generator: splitmix64 from a seed.
pub struct Workload {
    state: u64,
    since_sync: u32,
}

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            since_sync: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn dir(&mut self) -> String {
        format!("d{}", self.below(3))
    }

    fn file(&mut self) -> String {
        let d = self.dir();
        format!("{d}/f{}", self.below(10))
    }

    /// The next step (a sync at least every 40 steps).
    pub fn step(&mut self) -> Step {
        self.since_sync += 1;
        if self.since_sync >= 40 {
            self.since_sync = 0;
            return Step::Sync;
        }
        match self.below(100) {
            0..=4 => Step::Mkdir(self.dir()),
            5 => Step::Rmdir(self.dir()),
            6..=44 => {
                let path = self.file();
                let off = self.below(32 << 10);
                let len = 1 + self.below(8 << 10) as usize;
                let fill = self.next();
                let data = (0..len)
                    .map(|i| (fill.wrapping_add(i as u64 * 31) >> 3) as u8)
                    .collect();
                Step::Write { path, off, data }
            }
            45..=52 => Step::Truncate {
                path: self.file(),
                len: self.below(40 << 10),
            },
            53..=64 => Step::Rename {
                from: self.file(),
                to: self.file(),
            },
            65..=74 => Step::Unlink(self.file()),
            75..=79 => Step::Link {
                from: self.file(),
                to: self.file(),
            },
            80..=84 => {
                let d = self.dir();
                Step::Symlink {
                    path: format!("{d}/f{}", self.below(10)),
                    target: format!("/nowhere/{}", self.below(1000)),
                }
            }
            _ => {
                self.since_sync = 0;
                Step::Sync
            }
        }
    }
}

/// Runs `step` on the file system. Errors a step may meet by design (a
/// missing name, an existing one, ...) are its outcome, not a failure;
/// device errors and corruption are returned.
pub fn run_step(fs: &mut Fs, step: &Step) -> Result<()> {
    let r = match step {
        Step::Mkdir(p) => fs.mkdir(&format!("/{p}"), 0o755),
        Step::Rmdir(p) => fs.rmdir(&format!("/{p}")),
        Step::Write { path, off, data } => {
            let flags = OpenFlags {
                create: true,
                ..OpenFlags::READ_WRITE
            };
            fs.open(&format!("/{path}"), flags).and_then(|fd| {
                let r = fs.pwrite(fd, data, *off);
                fs.close(fd)?;
                r.map(|_| ())
            })
        }
        Step::Truncate { path, len } => fs.truncate(&format!("/{path}"), *len),
        Step::Rename { from, to } => fs.rename(&format!("/{from}"), &format!("/{to}")),
        Step::Unlink(p) => fs.unlink(&format!("/{p}")),
        Step::Link { from, to } => fs.link(&format!("/{from}"), &format!("/{to}")),
        Step::Symlink { path, target } => fs.symlink(target, &format!("/{path}")),
        Step::Sync => fs.sync(),
    };
    match r {
        Err(e @ (FsError::Storage(_) | FsError::Corrupt(_) | FsError::NoSpace(_))) => Err(e),
        _ => Ok(()),
    }
}

/// What the workload should have left: names to nodes, nodes to contents.
#[derive(Debug, Clone)]
pub struct Model {
    names: BTreeMap<String, u64>,
    nodes: HashMap<u64, Entry>,
    next: u64,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

impl Model {
    /// The model of an existing tree (hard links share their inode).
    pub fn from_dump(d: &Dump) -> Model {
        let mut m = Model {
            names: BTreeMap::new(),
            nodes: HashMap::new(),
            next: 1 << 62,
        };
        for (p, (ino, e)) in d {
            m.names.insert(p.clone(), *ino);
            m.nodes.insert(*ino, e.clone());
        }
        m
    }

    fn is_dir(&self, p: &str) -> bool {
        p.is_empty()
            || self
                .names
                .get(p)
                .is_some_and(|i| self.nodes[i] == Entry::Dir)
    }

    fn entry(&self, p: &str) -> Option<&Entry> {
        self.names.get(p).map(|i| &self.nodes[i])
    }

    fn fresh(&mut self, e: Entry) -> u64 {
        self.next += 1;
        self.nodes.insert(self.next, e);
        self.next
    }

    /// Applies `step` as the file system does.
    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Mkdir(p) => {
                if !self.names.contains_key(p) {
                    let id = self.fresh(Entry::Dir);
                    self.names.insert(p.clone(), id);
                }
            }
            Step::Rmdir(p) => {
                let prefix = format!("{p}/");
                if self.is_dir(p) && !self.names.keys().any(|k| k.starts_with(&prefix)) {
                    self.names.remove(p);
                }
            }
            Step::Write { path, off, data } => {
                let id = match self.entry(path) {
                    Some(Entry::File(_)) => self.names[path],
                    Some(_) => return,
                    None if self.is_dir(parent(path)) => {
                        let id = self.fresh(Entry::File(Vec::new()));
                        self.names.insert(path.clone(), id);
                        id
                    }
                    None => return,
                };
                if let Some(Entry::File(c)) = self.nodes.get_mut(&id) {
                    let end = *off as usize + data.len();
                    if c.len() < end {
                        c.resize(end, 0);
                    }
                    c[*off as usize..end].copy_from_slice(data);
                }
            }
            Step::Truncate { path, len } => {
                if let Some(&id) = self.names.get(path) {
                    if let Some(Entry::File(c)) = self.nodes.get_mut(&id) {
                        c.resize(*len as usize, 0);
                    }
                }
            }
            Step::Rename { from, to } => {
                let Some(&id) = self.names.get(from) else {
                    return;
                };
                if !self.is_dir(parent(to)) {
                    return;
                }
                match self.entry(to) {
                    Some(Entry::Dir) => return,
                    Some(_) if self.names[to] == id => return,
                    _ => {}
                }
                self.names.remove(from);
                self.names.insert(to.clone(), id);
            }
            Step::Unlink(p) => {
                if matches!(self.entry(p), Some(Entry::File(_) | Entry::Symlink(_))) {
                    self.names.remove(p);
                }
            }
            Step::Link { from, to } => {
                let Some(&id) = self.names.get(from) else {
                    return;
                };
                if self.nodes[&id] != Entry::Dir
                    && !self.names.contains_key(to)
                    && self.is_dir(parent(to))
                {
                    self.names.insert(to.clone(), id);
                }
            }
            Step::Symlink { path, target } => {
                if !self.names.contains_key(path) && self.is_dir(parent(path)) {
                    let id = self.fresh(Entry::Symlink(target.as_bytes().to_vec()));
                    self.names.insert(path.clone(), id);
                }
            }
            Step::Sync => {}
        }
    }

    /// True when the dump holds exactly the model's names and contents,
    /// with hard links sharing an inode.
    pub fn matches(&self, d: &Dump) -> bool {
        if d.len() != self.names.len() {
            return false;
        }
        let mut ino_of: HashMap<u64, u64> = HashMap::new();
        for (p, &id) in &self.names {
            let Some((ino, e)) = d.get(p) else {
                return false;
            };
            if *e != self.nodes[&id] || *ino_of.entry(id).or_insert(*ino) != *ino {
                return false;
            }
        }
        true
    }
}
