//! `vsic-nfsd`: an NFSv3 server over `vsic-fs`, one export (`/`) per
//! device. The XDR, MOUNT and NFSv3 procedures are the `fernfs` crate's;
//! [`VsicNfs`] maps its file-system trait onto [`vsic_fs::Fs`], and
//! [`server`] and [`front`] are our own ONC RPC front over TCP with the
//! duplicate-request cache persisted on the device.
//!
//! Durability: the file-system calls change the file system in memory
//! only; the front commits (`Fs::sync`) before it sends a reply that
//! needs it, the reply of a changing procedure recorded in the same
//! commit (see [`server`]). UNSTABLE writes are answered UNSTABLE and made
//! durable by COMMIT (or any later commit). File handles are the file
//! system's identity and the inode number, so they stay valid across a
//! restart of the server. The write verifier is new on every start.

pub mod front;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use fernfs::vfs::{Capabilities, DirEntry, NFSFileSystem, ReadDirResult};
use fernfs::xdr::nfs3::file::stable_how;
use fernfs::xdr::nfs3::fs;
use fernfs::xdr::nfs3::{
    count3, createverf3, fattr3, fileid3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3,
    nfsstring, nfstime3, sattr3, set_atime, set_mtime, specdata3,
};
use vsic_fs::{AttrChange, Fs, FsError, Kind, Stat, Time};

/// The NFS file system over one mounted `vsic-fs`.
pub struct VsicNfs {
    fs: Mutex<Fs>,
    fs_id: u64,
    /// The write (and cookie) verifier: differs on every start.
    boot_verf: [u8; 8],
    /// Set by a WRITE answered UNSTABLE (see [`VsicNfs::take_unstable`]).
    unstable: AtomicBool,
}

/// The NFS status for a file-system error.
pub fn status(e: &FsError) -> nfsstat3 {
    match e {
        FsError::NotFound => nfsstat3::NFS3ERR_NOENT,
        FsError::Exists => nfsstat3::NFS3ERR_EXIST,
        FsError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        FsError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        FsError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        FsError::NoSpace(_) => nfsstat3::NFS3ERR_NOSPC,
        FsError::NameTooLong { .. } => nfsstat3::NFS3ERR_NAMETOOLONG,
        FsError::Invalid(_) | FsError::Loop => nfsstat3::NFS3ERR_INVAL,
        FsError::BadFd(_) => nfsstat3::NFS3ERR_BADHANDLE,
        FsError::TooBig => nfsstat3::NFS3ERR_FBIG,
        FsError::NotFormatted(_) | FsError::Corrupt(_) | FsError::Storage(_) => {
            nfsstat3::NFS3ERR_IO
        }
    }
}

fn nfs_err(e: FsError) -> nfsstat3 {
    if matches!(e, FsError::Storage(_) | FsError::Corrupt(_)) {
        log::error!("vsic-fs: {e}");
    }
    status(&e)
}

fn time3(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.secs.clamp(0, i64::from(u32::MAX)) as u32,
        nseconds: t.nsecs,
    }
}

fn from_time3(t: nfstime3) -> Time {
    Time {
        secs: i64::from(t.seconds),
        nsecs: t.nseconds,
    }
}

impl VsicNfs {
    pub fn new(fs: Fs) -> VsicNfs {
        let fs_id = fs.fs_id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        VsicNfs {
            fs: Mutex::new(fs),
            fs_id,
            boot_verf: (nanos ^ u64::from(std::process::id()).rotate_left(48)).to_le_bytes(),
            unstable: AtomicBool::new(false),
        }
    }

    /// True when a WRITE was answered UNSTABLE since the last call: the
    /// front, which runs one procedure at a time, asks after each.
    pub fn take_unstable(&self) -> bool {
        self.unstable.swap(false, Ordering::Relaxed)
    }

    /// Commits everything applied so far (the front's commit; tests).
    pub fn sync(&self) -> Result<(), FsError> {
        self.lock().sync()
    }

    /// The file system (one procedure at a time).
    pub fn lock(&self) -> MutexGuard<'_, Fs> {
        // A panic while holding the lock leaves Fs as it was before the
        // failed call (operations validate before they change anything).
        self.fs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(&self, s: &Stat) -> fattr3 {
        fattr3 {
            ftype: match s.kind {
                Kind::File => ftype3::NF3REG,
                Kind::Dir => ftype3::NF3DIR,
                Kind::Symlink => ftype3::NF3LNK,
            },
            mode: s.mode,
            nlink: s.nlink,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            used: s.used,
            rdev: specdata3::default(),
            fsid: self.fs_id,
            fileid: s.ino,
            atime: time3(s.atime),
            mtime: time3(s.mtime),
            ctime: time3(s.ctime),
        }
    }

    /// Runs a change (in memory: the front commits it).
    fn change<T>(&self, f: impl FnOnce(&mut Fs) -> Result<T, FsError>) -> Result<T, nfsstat3> {
        f(&mut self.lock()).map_err(nfs_err)
    }

    fn getattr_locked(&self, fs: &Fs, id: u64) -> Result<fattr3, nfsstat3> {
        fs.stat_ino(id).map(|s| self.attr(&s)).map_err(nfs_err)
    }
}

fn attr_change(a: &sattr3) -> AttrChange {
    let now = Time::now();
    AttrChange {
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        atime: match a.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(now),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(from_time3(t)),
        },
        mtime: match a.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(now),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(from_time3(t)),
        },
    }
}

#[async_trait]
impl NFSFileSystem for VsicNfs {
    /// Only fernfs's default handles use it, and this file system has its
    /// own (see `id_to_fh`): the boot verifier.
    fn generation(&self) -> u64 {
        u64::from_le_bytes(self.boot_verf)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ReadWrite
    }

    fn root_dir(&self) -> fileid3 {
        vsic_fs::ROOT
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        self.lock().lookup(dirid, &filename.0).map_err(nfs_err)
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        let fs = self.lock();
        self.getattr_locked(&fs, id)
    }

    async fn setattr(&self, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let s = self.change(|fs| fs.setattr(id, attr_change(&setattr)))?;
        Ok(self.attr(&s))
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        self.lock()
            .read_ino(id, offset, count as usize)
            .map_err(nfs_err)
    }

    async fn write(
        &self,
        id: fileid3,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how, count3), nfsstat3> {
        let s = self.change(|fs| {
            fs.write_ino(id, offset, data)?;
            fs.stat_ino(id)
        })?;
        // DATA_SYNC and FILE_SYNC: the front commits everything before the
        // reply, so FILE_SYNC is what they get.
        let how = if stable == stable_how::UNSTABLE {
            self.unstable.store(true, Ordering::Relaxed);
            stable_how::UNSTABLE
        } else {
            stable_how::FILE_SYNC
        };
        Ok((self.attr(&s), how, data.len() as count3))
    }

    async fn create(
        &self,
        dirid: fileid3,
        filename: &filename3,
        attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let mut change = attr_change(&attr);
        let s = self.change(|fs| {
            // UNCHECKED: an existing file is reused (and truncated if asked).
            let ino = match fs.lookup(dirid, &filename.0) {
                Ok(ino) if fs.stat_ino(ino)?.kind == Kind::File => ino,
                Ok(_) => return Err(FsError::Exists),
                Err(FsError::NotFound) => {
                    let mode = change.mode.take().unwrap_or(0o644);
                    let (uid, gid) = (
                        change.uid.take().unwrap_or(0),
                        change.gid.take().unwrap_or(0),
                    );
                    fs.create_at(dirid, &filename.0, Kind::File, mode, uid, gid, b"")?
                }
                Err(e) => return Err(e),
            };
            if change != AttrChange::default() {
                fs.setattr(ino, change)?;
            }
            fs.stat_ino(ino)
        })?;
        Ok((s.ino, self.attr(&s)))
    }

    /// EXCLUSIVE: the client's verifier is kept in the new file's atime
    /// and mtime seconds (as other servers do; the client sets the real
    /// times with a SETATTR next), so a retransmission that finds the file
    /// with the same verifier succeeds, even one the reply cache no longer
    /// holds; another client's file of that name is EXIST.
    async fn create_exclusive(
        &self,
        dirid: fileid3,
        filename: &filename3,
        verifier: createverf3,
    ) -> Result<fileid3, nfsstat3> {
        let (a, m) = verifier.split_at(4);
        let secs = |b: &[u8]| i64::from(u32::from_le_bytes(b.try_into().expect("4 bytes")));
        let (atime, mtime) = (
            Time {
                secs: secs(a),
                nsecs: 0,
            },
            Time {
                secs: secs(m),
                nsecs: 0,
            },
        );
        self.change(|fs| match fs.lookup(dirid, &filename.0) {
            Ok(ino) => {
                let s = fs.stat_ino(ino)?;
                if s.kind == Kind::File && s.atime == atime && s.mtime == mtime {
                    Ok(ino)
                } else {
                    Err(FsError::Exists)
                }
            }
            Err(FsError::NotFound) => {
                let ino = fs.create_at(dirid, &filename.0, Kind::File, 0o644, 0, 0, b"")?;
                fs.setattr(
                    ino,
                    AttrChange {
                        atime: Some(atime),
                        mtime: Some(mtime),
                        ..AttrChange::default()
                    },
                )?;
                Ok(ino)
            }
            Err(e) => Err(e),
        })
    }

    async fn mkdir(
        &self,
        dirid: fileid3,
        dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let s = self.change(|fs| {
            let ino = fs.create_at(dirid, &dirname.0, Kind::Dir, 0o755, 0, 0, b"")?;
            fs.stat_ino(ino)
        })?;
        Ok((s.ino, self.attr(&s)))
    }

    /// REMOVE and RMDIR both arrive here (fernfs checks RMDIR's target is a
    /// directory first).
    async fn remove(&self, dirid: fileid3, filename: &filename3) -> Result<(), nfsstat3> {
        self.change(|fs| {
            let ino = fs.lookup(dirid, &filename.0)?;
            let is_dir = fs.stat_ino(ino)?.kind == Kind::Dir;
            fs.remove_at(dirid, &filename.0, is_dir)
        })
    }

    async fn rename(
        &self,
        from_dirid: fileid3,
        from_filename: &filename3,
        to_dirid: fileid3,
        to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        self.change(|fs| fs.rename_at(from_dirid, &from_filename.0, to_dirid, &to_filename.0))
    }

    /// Entries from `start_after` on, `start_after` taken as an index (as
    /// fernfs's cookies are).
    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        self.readdir_index(dirid, start_after as usize, max_entries)
            .await
    }

    /// Entries in name order (stable while the directory does not change;
    /// fernfs's cookie verifier is the directory's mtime, so a client
    /// whose directory changed between pages gets BAD_COOKIE and starts
    /// over), from index `start_index` on.
    async fn readdir_index(
        &self,
        dirid: fileid3,
        start_index: usize,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let fs = self.lock();
        let entries = fs.list(dirid).map_err(nfs_err)?;
        if start_index > entries.len() {
            return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
        }
        let rest = &entries[start_index..];
        let mut out = ReadDirResult {
            entries: Vec::new(),
            end: rest.len() <= max_entries,
        };
        for e in rest.iter().take(max_entries) {
            let attr = self.getattr_locked(&fs, e.ino)?;
            out.entries.push(DirEntry {
                fileid: e.ino,
                name: nfsstring(e.name.clone()),
                attr,
            });
        }
        Ok(out)
    }

    async fn symlink(
        &self,
        dirid: fileid3,
        linkname: &filename3,
        symlink: &nfspath3,
        attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let change = attr_change(attr);
        let s = self.change(|fs| {
            let ino = fs.create_at(
                dirid,
                &linkname.0,
                Kind::Symlink,
                change.mode.unwrap_or(0o777),
                change.uid.unwrap_or(0),
                change.gid.unwrap_or(0),
                &symlink.0,
            )?;
            fs.stat_ino(ino)
        })?;
        Ok((s.ino, self.attr(&s)))
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        self.lock().readlink_ino(id).map(nfsstring).map_err(nfs_err)
    }

    async fn link(
        &self,
        file_id: fileid3,
        link_dir_id: fileid3,
        link_name: &filename3,
    ) -> Result<fattr3, nfsstat3> {
        let s = self.change(|fs| {
            fs.link_at(file_id, link_dir_id, &link_name.0)?;
            fs.stat_ino(file_id)
        })?;
        Ok(self.attr(&s))
    }

    /// No device files, sockets or FIFOs in vsic-fs.
    async fn mknod(
        &self,
        _dir_id: fileid3,
        _name: &filename3,
        _ftype: ftype3,
        _specdata: specdata3,
        _attrs: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_NOTSUPP)
    }

    /// Everything written so far is made durable (the log is shared: one
    /// commit covers every file).
    async fn commit(
        &self,
        file_id: fileid3,
        _offset: u64,
        _count: u32,
    ) -> Result<fattr3, nfsstat3> {
        let s = self.change(|fs| fs.stat_ino(file_id))?;
        Ok(self.attr(&s))
    }

    /// The file system's identity and the inode: valid across restarts.
    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        let mut data = self.fs_id.to_le_bytes().to_vec();
        data.extend_from_slice(&id.to_le_bytes());
        nfs_fh3 { data }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        let d = &fh.data;
        if d.len() != 16 || d[..8] != self.fs_id.to_le_bytes() {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let id = u64::from_le_bytes(d[8..16].try_into().expect("8 bytes"));
        match self.lock().stat_ino(id) {
            Ok(_) => Ok(id),
            Err(_) => Err(nfsstat3::NFS3ERR_STALE),
        }
    }

    fn fsinfo_properties(&self) -> u32 {
        fs::FSF_LINK | fs::FSF_SYMLINK | fs::FSF_HOMOGENEOUS | fs::FSF_CANSETTIME
    }

    fn pathconf_linkmax(&self) -> u32 {
        u32::MAX
    }

    fn pathconf_name_max(&self) -> u32 {
        vsic_fs::layout::NAME_MAX as u32
    }

    /// The device's data space (inodes are not limited: files counts are
    /// reported as the free blocks).
    async fn fsstat(&self, root_fileid: fileid3) -> Result<fs::FSSTAT3resok, nfsstat3> {
        let fs = self.lock();
        let obj_attributes = self.getattr_locked(&fs, root_fileid).ok();
        let (free, total) = fs.space();
        let blocks = free / vsic_fs::layout::BLOCK;
        Ok(fs::FSSTAT3resok {
            obj_attributes,
            tbytes: total,
            fbytes: free,
            abytes: free,
            tfiles: total / vsic_fs::layout::BLOCK,
            ffiles: blocks,
            afiles: blocks,
            invarsec: 0,
        })
    }

    /// The write verifier (and fernfs's cookie verifier).
    fn server_id(&self) -> [u8; 8] {
        self.boot_verf
    }
}
