//! `file:PATH`: a file or block device through the kernel. Requests run in
//! submission order on one worker thread with `pread`, `pwrite` and
//! `fdatasync`; completions queue up for [`BlockDevice::poll`].
//!
//! One worker in FIFO order gives the flush guarantee for free, and the
//! stronger ordered one ([`BlockDevice::ordered_flush`]): every write
//! submitted before a flush was executed before it, completed or not.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions as FsOpen};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{
    check_range, BlockDevice, BufInner, Completion, IoBuf, Op, OpKind, OpenOptions, Result,
    StorageError,
};

const BLOCK: u32 = 4096;

/// Zeroed heap memory aligned to the block size (so it would also suit
/// O_DIRECT).
pub struct AlignedBox {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain owned memory.
unsafe impl Send for AlignedBox {}
// SAFETY: shared references only read it (mutation needs &mut).
unsafe impl Sync for AlignedBox {}

impl AlignedBox {
    pub fn new(len: usize) -> AlignedBox {
        let layout = Layout::from_size_align(len.max(1), BLOCK as usize).expect("buffer layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBox { ptr, layout }
    }

    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: we own layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBox {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Shared {
    done: Mutex<VecDeque<Completion>>,
    ready: Condvar,
}

/// A file or block device driven through the kernel.
pub struct FileDevice {
    path: String,
    capacity: u64,
    jobs: Mutex<Option<Sender<(Op, u64)>>>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl FileDevice {
    /// Opens (creating if needed) `path`. An empty file is given
    /// `opts.new_file_size` bytes; the usable size is rounded down to the
    /// block size.
    pub fn open(path: &str, opts: &OpenOptions) -> Result<FileDevice> {
        let err = |reason: String| StorageError::Open {
            spec: format!("file:{path}"),
            reason,
        };
        let file = FsOpen::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        // SEEK_END also measures block devices, whose metadata length is 0.
        // SAFETY: valid fd.
        let mut size =
            unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
        if size < 0 {
            return Err(err(std::io::Error::last_os_error().to_string()));
        }
        if size == 0 {
            file.set_len(opts.new_file_size)
                .map_err(|e| err(format!("sizing a new file: {e}")))?;
            file.sync_all().map_err(|e| err(format!("sync: {e}")))?;
            size = opts.new_file_size as i64;
        }
        let capacity = size as u64 / u64::from(BLOCK) * u64::from(BLOCK);
        if capacity == 0 {
            return Err(StorageError::NoMedium {
                spec: format!("file:{path}"),
            });
        }
        let shared = Arc::new(Shared {
            done: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        });
        let (tx, rx) = channel::<(Op, u64)>();
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("file-io".into())
            .spawn(move || {
                while let Ok((op, tag)) = rx.recv() {
                    let c = execute(&file, op, tag);
                    worker_shared
                        .done
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(c);
                    worker_shared.ready.notify_all();
                }
            })
            .map_err(|e| StorageError::System {
                what: "spawning the I/O worker",
                source: e,
            })?;
        Ok(FileDevice {
            path: path.to_string(),
            capacity,
            jobs: Mutex::new(Some(tx)),
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }
}

fn execute(file: &File, op: Op, tag: u64) -> Completion {
    let sys =
        |what: &'static str| move |source: std::io::Error| StorageError::System { what, source };
    match op {
        Op::Read { offset, mut buf } => {
            let result = file
                .read_exact_at(buf.as_mut_slice(), offset)
                .map_err(sys("pread"));
            Completion {
                tag,
                kind: OpKind::Read,
                buf: Some(buf),
                result,
            }
        }
        Op::Write { offset, buf } => {
            let result = file
                .write_all_at(buf.as_slice(), offset)
                .map_err(sys("pwrite"));
            Completion {
                tag,
                kind: OpKind::Write,
                buf: Some(buf),
                result,
            }
        }
        Op::Flush => Completion {
            tag,
            kind: OpKind::Flush,
            buf: None,
            result: file.sync_data().map_err(sys("fdatasync")),
        },
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        BLOCK
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn alloc(&self, len: usize) -> Result<IoBuf> {
        let len = len.max(1).next_multiple_of(BLOCK as usize);
        Ok(IoBuf::new(BufInner::Heap(AlignedBox::new(len))))
    }

    fn submit(&self, op: Op, tag: u64) -> Result<()> {
        match &op {
            Op::Read { offset, buf } | Op::Write { offset, buf } => {
                check_range(*offset, buf.len(), self.capacity, BLOCK)?
            }
            Op::Flush => {}
        }
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.as_ref()
            .ok_or(StorageError::Closed)?
            .send((op, tag))
            .map_err(|_| StorageError::Closed)
    }

    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize {
        let batch: VecDeque<Completion> =
            std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|p| p.into_inner()));
        let n = batch.len();
        batch.into_iter().for_each(cb);
        n
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        while done.is_empty() {
            match deadline {
                None => {
                    done = self
                        .shared
                        .ready
                        .wait(done)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(StorageError::Timeout);
                    }
                    done = self
                        .shared
                        .ready
                        .wait_timeout(done, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file:{} ({} bytes, kernel)", self.path, self.capacity)
    }

    fn durable_writes(&self) -> bool {
        // A pwrite lands in the page cache: fdatasync makes it durable.
        false
    }

    /// One worker takes the requests from a FIFO channel and runs each to
    /// the end before the next: a flush's fdatasync comes after the pwrite
    /// of every write submitted before it.
    fn ordered_flush(&self) -> bool {
        true
    }
}

impl Drop for FileDevice {
    fn drop(&mut self) {
        // Closing the channel ends the worker after the queued requests.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vsic-storage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn new_file_gets_the_default_size_and_data_round_trips() {
        let p = scratch("rt");
        let opts = OpenOptions {
            new_file_size: 1 << 20,
            ..OpenOptions::default()
        };
        let dev = crate::open(&format!("file:{}", p.display()), &opts).expect("open");
        assert_eq!(dev.capacity(), 1 << 20);
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        dev.write_at(4096, &data).expect("write");
        dev.flush().expect("flush");
        assert_eq!(dev.read_at(4096, 8192).expect("read").as_slice(), &data[..]);
        drop(dev);
        let on_disk = std::fs::read(&p).expect("read file");
        assert_eq!(&on_disk[4096..4096 + 8192], &data[..]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn async_requests_complete_in_order_with_their_tags_and_buffers() {
        let p = scratch("async");
        let opts = OpenOptions {
            new_file_size: 1 << 20,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(p.to_str().unwrap(), &opts).expect("open");
        for i in 0..16u64 {
            let mut buf = dev.alloc(4096).unwrap();
            buf.as_mut_slice().fill(i as u8);
            dev.submit(
                Op::Write {
                    offset: i * 4096,
                    buf,
                },
                i,
            )
            .unwrap();
        }
        dev.submit(Op::Flush, 100).unwrap();
        let mut got = Vec::new();
        while got.len() < 17 {
            dev.wait(Some(Duration::from_secs(5)))
                .expect("completions within 5 s");
            dev.poll(&mut |c| {
                assert!(c.result.is_ok(), "{:?}", c.result);
                if c.kind == OpKind::Write {
                    let buf = c.buf.as_ref().expect("write hands its buffer back");
                    assert!(buf.as_slice().iter().all(|&b| b == c.tag as u8));
                }
                got.push(c.tag);
            });
        }
        assert_eq!(got, (0..16).chain([100]).collect::<Vec<_>>());
        let buf = dev.read_at(5 * 4096, 4096).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 5));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn out_of_range_and_misaligned_requests_are_refused() {
        let p = scratch("range");
        let opts = OpenOptions {
            new_file_size: 64 << 10,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(p.to_str().unwrap(), &opts).expect("open");
        let buf = dev.alloc(4096).unwrap();
        assert!(matches!(
            dev.submit(
                Op::Write {
                    offset: 64 << 10,
                    buf
                },
                1
            ),
            Err(StorageError::OutOfRange { .. })
        ));
        let buf = dev.alloc(4096).unwrap();
        assert!(matches!(
            dev.submit(Op::Read { offset: 100, buf }, 1),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            crate::open("file:", &opts),
            Err(StorageError::BadSpec(_))
        ));
        assert!(matches!(
            crate::open("nonsense", &opts),
            Err(StorageError::BadSpec(_))
        ));
        let _ = std::fs::remove_file(&p);
    }
}
