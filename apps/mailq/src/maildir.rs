//! The kernel-path baseline: a Maildir-style queue, one file per message,
//! as MTAs such as Postfix keep it. A message is written to `tmp/ID`,
//! fsynced, renamed to `new/ID`, and `new/` is fsynced before the 250.
//! Each file is the encoded envelope (u32 little-endian length first) then
//! the content as received. Files left in `tmp/` by a crash never got their
//! 250 and are removed on open.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout::Envelope;
use crate::queue::Message;

/// Everything that can go wrong with a Maildir queue.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no message with id {0}")]
    NoSuchMessage(u64),
    #[error("message {0} is damaged")]
    Damaged(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A queue directory with `tmp/` and `new/`.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    next: AtomicU64,
}

impl Maildir {
    /// Opens (creating if needed) the queue in `root`; removes what a crash
    /// left in `tmp/`.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        let (tmp, new) = (root.join("tmp"), root.join("new"));
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        fs::create_dir_all(&new).map_err(io(&new))?;
        for e in fs::read_dir(&tmp).map_err(io(&tmp))? {
            let p = e.map_err(io(&tmp))?.path();
            fs::remove_file(&p).map_err(io(&p))?;
        }
        let m = Maildir {
            root: root.to_path_buf(),
            next: AtomicU64::new(0),
        };
        let last = m.ids()?.last().copied().unwrap_or(0);
        m.next.store(last + 1, Ordering::Relaxed);
        Ok(m)
    }

    fn path(&self, sub: &str, id: u64) -> PathBuf {
        self.root.join(sub).join(format!("{id:020}"))
    }

    /// The ids in `new/`, oldest first.
    pub fn ids(&self) -> Result<Vec<u64>, MaildirError> {
        let new = self.root.join("new");
        let mut ids = Vec::new();
        for e in fs::read_dir(&new).map_err(io(&new))? {
            let e = e.map_err(io(&new))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Stores `msg`; returns its id once file and directory entry are durable.
    pub fn enqueue(&self, msg: &Message) -> Result<u64, MaildirError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tmp, new) = (self.path("tmp", id), self.path("new", id));
        let env = msg.env.encode();
        let mut data = Vec::with_capacity(4 + env.len() + msg.body.len());
        data.extend_from_slice(&(env.len() as u32).to_le_bytes());
        data.extend_from_slice(&env);
        data.extend_from_slice(&msg.body);
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &new).map_err(io(&new))?;
        let dir = self.root.join("new");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(id)
    }

    /// Message `id`: envelope and content.
    pub fn read(&self, id: u64) -> Result<Message, MaildirError> {
        let p = self.path("new", id);
        let data = match fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MaildirError::NoSuchMessage(id))
            }
            r => r.map_err(io(&p))?,
        };
        let n = data
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or(MaildirError::Damaged(id))?;
        let env = data
            .get(4..4 + n)
            .and_then(Envelope::decode)
            .ok_or(MaildirError::Damaged(id))?;
        Ok(Message {
            env,
            body: data[4 + n..].to_vec(),
        })
    }

    /// Removes message `id` durably.
    pub fn delete(&self, id: u64) -> Result<(), MaildirError> {
        let p = self.path("new", id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MaildirError::NoSuchMessage(id))
            }
            r => r.map_err(io(&p))?,
        }
        let dir = self.root.join("new");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    }
}
