//! One backing drive: a regular file or a block device, accessed with
//! positional I/O so that many queue threads can share one descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::buffers::Range;
use super::drive_hook::{DriveFault, DriveHook, DriveOpKind};

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 127)`: zero a byte range of a block device (`[start, len]`).
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Linux limits one preadv/pwritev call to this many iovecs.
const IOV_MAX: usize = 1024;
/// Iovecs built per preadv/pwritev call, on the stack (4 KiB): room for
/// a whole request of the front's seg_max (254) buffers, more only when
/// buffers cross guest memory regions.
pub const IOV_BATCH: usize = 256;
const _: () = assert!(IOV_BATCH <= IOV_MAX);
/// Buffer used when zeroes have to be written by hand.
const ZERO_CHUNK: usize = 1 << 20;

/// How a drive came into being when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The file did not exist and was created sparse (reads as zeroes).
    Created,
    /// The file or device already existed.
    Existing,
}

/// What `Drive::open` was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenOp {
    Open,
    Create,
    SizeNew,
    Stat,
    SizeBlockDevice,
}

impl std::fmt::Display for OpenOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenOp::Open => "open drive",
            OpenOp::Create => "create drive",
            OpenOp::SizeNew => "size new drive",
            OpenOp::Stat => "stat drive",
            OpenOp::SizeBlockDevice => "size block device",
        })
    }
}

/// Why a drive could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("drive {} does not exist and no size was given to create it", .0.display())]
    Missing(PathBuf),
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: OpenOp,
        path: PathBuf,
        source: io::Error,
    },
    #[error("drive {} is in use by another process (flock: {source})", .path.display())]
    InUse { path: PathBuf, source: io::Error },
    #[error("drive {} is neither a regular file nor a block device", .0.display())]
    NotAFileOrBlockDevice(PathBuf),
}

#[derive(Debug)]
pub struct Drive {
    path: PathBuf,
    file: File,
    size: u64,
    block_device: bool,
    origin: Origin,
    /// (st_dev, st_ino) or st_rdev, to catch the same drive given twice.
    identity: (u64, u64),
    /// Changes (writes, zeroing) that returned, successful or not: a
    /// change counts once the page cache may hold it.
    changes: AtomicU64,
    /// `changes` as it stood when the last successful sync began: every
    /// change counted there is durable. Starts below `changes` (a drive
    /// just opened may hold another process's unsynced writes).
    durable: AtomicU64,
    /// Tests: successful syncs so far (skipped ones not counted).
    #[cfg(test)]
    syncs: AtomicU64,
    /// The drive's index and its fault hook, once installed.
    hook: std::sync::OnceLock<(u32, std::sync::Arc<dyn DriveHook>)>,
}

impl Drive {
    /// Opens (creating a sparse file of `create_size` bytes when missing) and
    /// takes an exclusive advisory lock so that two daemons cannot share it.
    /// `sync_writes` opens with O_DSYNC: every completed write is durable.
    pub fn open(
        path: &Path,
        create_size: Option<u64>,
        sync_writes: bool,
    ) -> Result<Drive, DriveError> {
        let flags = if sync_writes { libc::O_DSYNC } else { 0 };
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).custom_flags(flags);
        let failed = |op: OpenOp| {
            move |source: io::Error| DriveError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let (file, origin) = match open_noatime(&opts, flags, path) {
            Ok(f) => (f, Origin::Existing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let size = create_size.ok_or_else(|| DriveError::Missing(path.to_path_buf()))?;
                let f = open_noatime(opts.clone().create_new(true), flags, path)
                    .map_err(failed(OpenOp::Create))?;
                f.set_len(size).map_err(failed(OpenOp::SizeNew))?;
                (f, Origin::Created)
            }
            Err(e) => return Err(failed(OpenOp::Open)(e)),
        };
        lock_exclusive(&file).map_err(|source| DriveError::InUse {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = file.metadata().map_err(failed(OpenOp::Stat))?;
        let block_device = meta.file_type().is_block_device();
        let (size, identity) = if block_device {
            (
                block_device_size(&file).map_err(failed(OpenOp::SizeBlockDevice))?,
                (u64::MAX, std::os::unix::fs::MetadataExt::rdev(&meta)),
            )
        } else if meta.file_type().is_file() {
            (
                meta.len(),
                (
                    std::os::unix::fs::MetadataExt::dev(&meta),
                    std::os::unix::fs::MetadataExt::ino(&meta),
                ),
            )
        } else {
            return Err(DriveError::NotAFileOrBlockDevice(path.to_path_buf()));
        };
        Ok(Drive {
            path: path.to_path_buf(),
            file,
            size,
            block_device,
            origin,
            identity,
            changes: AtomicU64::new(1),
            durable: AtomicU64::new(0),
            #[cfg(test)]
            syncs: Default::default(),
            hook: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn origin(&self) -> Origin {
        self.origin
    }
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Reads exactly `buf.len()` bytes at `offset` (zeroes past end of file).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a valid, writable buffer of its length.
            let n = unsafe {
                libc::pread(
                    self.fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    at as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => {
                    // Short file: what lies past the end reads as zeroes.
                    rest.fill(0);
                    return Ok(());
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let result = self.write_all_at_uncounted(buf, offset);
        self.changed();
        result
    }

    fn write_all_at_uncounted(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            // SAFETY: `rest` is a valid buffer of its length.
            let n = unsafe {
                libc::pwrite(
                    self.fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    (offset + done as u64) as libc::off_t,
                )
            };
            if n > 0 {
                done += n as usize;
            } else if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "drive accepted no bytes",
                ));
            } else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Transfers the buffer pieces `pieces` (in order) at `offset`: reads
    /// into them, or writes them (`write`). Loops over short transfers;
    /// returns the bytes moved. Reads past the end of a file fail.
    ///
    /// This is the one place buffers become iovecs: at most [`IOV_BATCH`]
    /// at a time, on the stack, for one `preadv`/`pwritev`.
    pub(crate) fn transfer(
        &self,
        write: bool,
        pieces: Range<'_>,
        offset: u64,
    ) -> io::Result<usize> {
        let total: u64 = pieces.clone().map(|p| p.len() as u64).sum();
        let Some(fault) = self.fault(
            if write {
                DriveOpKind::Write
            } else {
                DriveOpKind::Read
            },
            offset,
            total,
        ) else {
            return self.transfer_part(write, pieces, offset, total);
        };
        match fault {
            DriveFault::Fail(e) => Err(e),
            DriveFault::Delay(d) => {
                std::thread::sleep(d);
                self.transfer_part(write, pieces, offset, total)
            }
            DriveFault::Torn { bytes, error } if write => {
                self.transfer_part(write, pieces, offset, bytes.min(total))?;
                Err(error)
            }
            DriveFault::Corrupt { bits, seed } if !write => {
                let n = self.transfer_part(write, pieces.clone(), offset, total)?;
                let slices: Vec<_> = pieces
                    .map(|p| {
                        let v = p.iovec();
                        // SAFETY: the piece lies in an `IoBuffers`, valid for
                        // reads and writes of its length while the buffers
                        // are borrowed (its invariant), which outlasts this
                        // call; other users access it volatilely too.
                        unsafe { vm_memory::VolatileSlice::new(v.iov_base.cast(), v.iov_len) }
                    })
                    .collect();
                super::drive_hook::flip_bits(&slices, n, bits, seed);
                Ok(n)
            }
            // A rule for the other direction: run as usual.
            DriveFault::Torn { .. } | DriveFault::Corrupt { .. } => {
                self.transfer_part(write, pieces, offset, total)
            }
        }
    }

    /// Installs the fault hook (once), with this drive's index.
    pub(super) fn set_hook(&self, index: u32, hook: std::sync::Arc<dyn DriveHook>) {
        let _ = self.hook.set((index, hook));
    }

    /// What the fault hook, if any, wants done to this transfer.
    fn fault(&self, op: DriveOpKind, offset: u64, len: u64) -> Option<DriveFault> {
        let (index, hook) = self.hook.get()?;
        hook.on_io(*index, op, offset, len)
    }

    /// [`Drive::transfer`] of the first `total` bytes of `pieces`.
    fn transfer_part(
        &self,
        write: bool,
        pieces: Range<'_>,
        offset: u64,
        total: u64,
    ) -> io::Result<usize> {
        let result = self.transfer_part_uncounted(write, pieces, offset, total);
        if write {
            self.changed();
        }
        result
    }

    fn transfer_part_uncounted(
        &self,
        write: bool,
        pieces: Range<'_>,
        offset: u64,
        total: u64,
    ) -> io::Result<usize> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut done = 0u64;
        while done < total {
            let mut iov = [empty; IOV_BATCH];
            let mut count = 0usize;
            let mut batched = 0u64;
            let mut skip = done;
            for p in pieces.clone() {
                let plen = p.len() as u64;
                if skip >= plen {
                    skip -= plen;
                    continue;
                }
                if count == IOV_BATCH {
                    break;
                }
                let room = total - done - batched;
                if room == 0 {
                    break;
                }
                let mut v = p.iovec();
                // `skip < plen`: the shortened iovec stays inside the piece.
                v.iov_base = (v.iov_base as *mut u8).wrapping_add(skip as usize).cast();
                v.iov_len -= skip as usize;
                // Never past `total`: shortening stays inside the piece.
                v.iov_len = v.iov_len.min(room as usize);
                skip = 0;
                batched += v.iov_len as u64;
                iov[count] = v;
                count += 1;
            }
            let batch = &iov[..count];
            let at = (offset + done) as libc::off_t;
            let n = if write {
                // SAFETY: every iovec lies inside a piece of an `IoBuffers`,
                // valid for reads of its length while the buffers are
                // borrowed (its invariant), which outlasts this call;
                // `batch` holds at most IOV_BATCH <= IOV_MAX of them and the
                // descriptor is ours.
                unsafe { libc::pwritev(self.fd(), batch.as_ptr(), count as libc::c_int, at) }
            } else {
                // SAFETY: as above, the memory is valid for writes of each
                // iovec's length.
                unsafe { libc::preadv(self.fd(), batch.as_ptr(), count as libc::c_int, at) }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "drive ended inside a mapped extent",
                ));
            }
            done += n as u64;
        }
        Ok(done as usize)
    }

    /// Makes the byte range read as zeroes: punches a hole in files (falling
    /// back to writing zeroes), BLKZEROOUT on block devices.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match self.fault(DriveOpKind::Zero, offset, len) {
            None | Some(DriveFault::Corrupt { .. }) => {}
            Some(DriveFault::Fail(e)) | Some(DriveFault::Torn { error: e, .. }) => return Err(e),
            Some(DriveFault::Delay(d)) => std::thread::sleep(d),
        }
        let result = self.zero_range_uncounted(offset, len);
        self.changed();
        result
    }

    fn zero_range_uncounted(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device {
            if (offset | len) & 511 == 0 {
                let range: [u64; 2] = [offset, len];
                // SAFETY: BLKZEROOUT reads a [u64; 2] we own.
                if unsafe { libc::ioctl(self.fd(), BLKZEROOUT as _, range.as_ptr()) } == 0 {
                    return Ok(());
                }
            }
        } else {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on a descriptor we own.
            if unsafe {
                libc::fallocate(self.fd(), mode, offset as libc::off_t, len as libc::off_t)
            } == 0
            {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
            ) {
                return Err(e);
            }
        }
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Makes every change that returned before this call durable: an
    /// fdatasync, skipped when no change returned since the last
    /// successful one began (a clean fdatasync still costs the host a
    /// system call and a journal check).
    pub fn sync(&self) -> io::Result<()> {
        // Every change counted here has returned, so it is in the page
        // cache (or on the medium) before the fdatasync below starts.
        let changes = self.changes.load(Ordering::Acquire);
        if self.durable.load(Ordering::Acquire) >= changes {
            return Ok(());
        }
        // SAFETY: fdatasync on a descriptor we own.
        if unsafe { libc::fdatasync(self.fd()) } == 0 {
            self.durable.fetch_max(changes, Ordering::AcqRel);
            #[cfg(test)]
            self.syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Counts a change that returned (see `changes`).
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Tests: how many syncs reached the drive.
    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }
}

/// Opens `path` without access-time updates, which otherwise cost every
/// read a trip through `touch_atime`. Only the file's owner (or
/// CAP_FOWNER) may ask for that; anyone else gets EPERM and the drive is
/// opened normally.
/// `opts` carries `flags` as its custom flags.
fn open_noatime(opts: &OpenOptions, flags: i32, path: &Path) -> io::Result<File> {
    let mut noatime = opts.clone();
    noatime.custom_flags(flags | libc::O_NOATIME);
    match noatime.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => opts.open(path),
        other => other,
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Takes the drive's exclusive lock, waiting briefly for a holder that is
/// going away: a previous vsicd still exiting, or a process that forked
/// while this one had the drive open and has not yet exec'd (the lock lives
/// on the open file description, which the child shares until exec).
fn lock_exclusive(file: &File) -> io::Result<()> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
    let start = std::time::Instant::now();
    loop {
        // SAFETY: plain flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || start.elapsed() >= PATIENCE {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::buffers::BufferStorage;
    use crate::controller::testutil::TempDir;

    /// A sync reaches the drive only when something changed since the
    /// last one began; a drive just opened owes one (an earlier process's
    /// writes may still be in the page cache).
    #[test]
    fn sync_skips_a_drive_unchanged_since_its_last_sync() {
        let dir = TempDir::new("drive-sync");
        let path = dir.path().join("d0");
        let d = Drive::open(&path, Some(1 << 20), false).expect("open");
        d.sync().unwrap();
        d.sync().unwrap();
        assert_eq!(d.syncs(), 1, "just opened: one sync, then nothing to do");
        d.write_all_at(&[1u8; 512], 0).unwrap();
        d.sync().unwrap();
        assert_eq!(d.syncs(), 2, "after a write");
        let mut buf = [3u8; 512];
        let mut storage = BufferStorage::default();
        let mut bufs = storage.start();
        bufs.push_bytes(&mut buf);
        d.transfer(false, bufs.range(0, 512), 0).unwrap();
        d.sync().unwrap();
        assert_eq!(d.syncs(), 2, "a read changes nothing");
        d.transfer(true, bufs.range(0, 512), 512).unwrap();
        d.sync().unwrap();
        d.zero_range(0, 512).unwrap();
        d.sync().unwrap();
        assert_eq!(d.syncs(), 4, "after a vectored write and after zeroing");
        drop(d);
        let d = Drive::open(&path, None, false).expect("reopen");
        d.sync().unwrap();
        assert_eq!(d.syncs(), 1, "reopened: owes a sync");
    }

    #[test]
    fn create_sparse_read_write_zero() {
        let dir = TempDir::new("drive");
        let path = dir.path().join("d0");
        let d = Drive::open(&path, Some(1 << 20), false).expect("open");
        assert_eq!(d.origin(), Origin::Created);
        assert_eq!(d.size(), 1 << 20);
        d.write_all_at(&[7u8; 8192], 4096).unwrap();
        let mut b = [0u8; 3];
        d.read_exact_at(&mut b, 4095).unwrap();
        assert_eq!(b, [0, 7, 7]);
        d.zero_range(4096, 8192).unwrap();
        let mut b = [1u8; 8192];
        d.read_exact_at(&mut b, 4096).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        // Vectored transfer across two buffers.
        let mut a = [1u8; 100];
        let mut c = [2u8; 50];
        let mut storage = BufferStorage::default();
        let mut bufs = storage.start();
        bufs.push_bytes(&mut a);
        bufs.push_bytes(&mut c);
        assert_eq!(d.transfer(true, bufs.range(0, 150), 10).unwrap(), 150);
        let mut back = [0u8; 150];
        d.read_exact_at(&mut back, 10).unwrap();
        assert_eq!(&back[..100], &[1u8; 100][..]);
        assert_eq!(&back[100..], &[2u8; 50][..]);
        drop(d);
        let again = Drive::open(&path, None, false).expect("reopen");
        assert_eq!(again.origin(), Origin::Existing);
    }

    fn status_flags(d: &Drive) -> libc::c_int {
        // SAFETY: F_GETFL on a descriptor the drive owns.
        unsafe { libc::fcntl(d.fd(), libc::F_GETFL) }
    }

    #[test]
    fn drives_skip_access_time_updates_and_keep_their_sync_mode() {
        let dir = TempDir::new("drive-noatime");
        let path = dir.path().join("d0");
        let created = Drive::open(&path, Some(4096), true).expect("create");
        let flags = status_flags(&created);
        assert_ne!(flags & libc::O_NOATIME, 0, "created drive");
        assert_ne!(flags & libc::O_DSYNC, 0, "write-through keeps O_DSYNC");
        drop(created);
        let existing = Drive::open(&path, None, false).expect("reopen");
        let flags = status_flags(&existing);
        assert_ne!(flags & libc::O_NOATIME, 0, "existing drive");
        assert_eq!(flags & libc::O_DSYNC, 0, "write-back opens without O_DSYNC");
    }

    #[test]
    fn missing_without_size_and_double_open_fail() {
        let dir = TempDir::new("drive2");
        let path = dir.path().join("d0");
        assert!(Drive::open(&path, None, false)
            .err()
            .unwrap()
            .to_string()
            .contains("does not exist"));
        let _held = Drive::open(&path, Some(4096), false).expect("create");
        assert!(Drive::open(&path, None, false)
            .err()
            .unwrap()
            .to_string()
            .contains("in use"));
    }
}
