//! Per-VSIC request traces: queue, issue and completion events of every
//! request, plus a message per fault injected, written as blktrace streams
//! (one file per queue, `PATH.blktrace.N`) or as JSON lines (`PATH`).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::blktrace::{self, action, categories, category, Record};
use super::fault::SECTOR;

/// Major device number the blktrace streams name (the minor is the VSIC):
/// 253, as virtio-blk disks commonly get, so tools format it as usual.
pub const TRACE_MAJOR: u32 = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Blktrace,
    Jsonl,
}

/// The kind of a traced request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl TraceOp {
    fn name(self) -> &'static str {
        match self {
            TraceOp::Read => "read",
            TraceOp::Write => "write",
            TraceOp::Flush => "flush",
            TraceOp::Discard => "discard",
            TraceOp::WriteZeroes => "write-zeroes",
        }
    }

    /// blktrace categories: discards are writes, as the kernel traces
    /// them; virtio-blk carries no sync hint, so only FLUSH is marked sync.
    fn categories(self) -> u32 {
        categories(match self {
            TraceOp::Read => category::READ,
            TraceOp::Write => category::WRITE,
            TraceOp::Flush => category::FLUSH | category::SYNC | category::WRITE,
            TraceOp::Discard | TraceOp::WriteZeroes => category::DISCARD | category::WRITE,
        })
    }
}

/// A request's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It arrived.
    Queue,
    /// It goes to the controller (after any injected delay).
    Issue,
    /// It completed: `None` on success, else the virtio status.
    Complete(Option<u8>),
}

/// Why a trace could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("VSIC {0} is already being traced (trace-stop first)")]
    Busy(u32),
    #[error("VSIC {0} is not being traced")]
    NotTracing(u32),
    #[error("no VSIC {0}")]
    NoSuchVsic(u32),
    #[error("cannot create {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write the trace: {0}")]
    Write(#[source] io::Error),
}

struct Stream {
    out: BufWriter<File>,
    sequence: u32,
    scratch: Vec<u8>,
    failed: bool,
}

/// One VSIC's running trace.
pub struct Session {
    vsic: u32,
    format: Format,
    start: Instant,
    pid: u32,
    streams: Vec<Mutex<Stream>>,
    files: Vec<PathBuf>,
    events: AtomicU64,
}

fn create(path: &Path) -> Result<BufWriter<File>, TraceError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|source| TraceError::Create {
            path: path.to_path_buf(),
            source,
        })
}

impl Session {
    fn start(vsic: u32, queues: u16, path: &Path, format: Format) -> Result<Session, TraceError> {
        let files: Vec<PathBuf> = match format {
            Format::Blktrace => (0..queues)
                .map(|q| {
                    let mut p = path.as_os_str().to_owned();
                    p.push(format!(".blktrace.{q}"));
                    PathBuf::from(p)
                })
                .collect(),
            Format::Jsonl => vec![path.to_path_buf()],
        };
        let mut streams = Vec::new();
        for f in &files {
            streams.push(Mutex::new(Stream {
                out: create(f)?,
                sequence: 0,
                scratch: Vec::new(),
                failed: false,
            }));
        }
        let s = Session {
            vsic,
            format,
            start: Instant::now(),
            pid: std::process::id(),
            streams,
            files,
            events: AtomicU64::new(0),
        };
        if format == Format::Blktrace {
            // Name the process in every stream (blkparse shows it), which
            // also keeps no stream empty.
            for q in 0..s.streams.len() {
                let mut name = [0u8; 16];
                name[..5].copy_from_slice(b"vsicd");
                s.record(q as u16, 0, 0, action::NOTIFY_PROCESS, 0, &name, false);
            }
        }
        Ok(s)
    }

    fn device(&self) -> u32 {
        blktrace::device(TRACE_MAJOR, self.vsic)
    }

    fn stream(&self, queue: u16) -> Option<&Mutex<Stream>> {
        match self.format {
            Format::Blktrace => self.streams.get(queue as usize),
            Format::Jsonl => self.streams.first(),
        }
    }

    /// Writes one blktrace record to queue `queue`'s stream.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        queue: u16,
        sector: u64,
        bytes: u32,
        action: u32,
        error: u16,
        pdu: &[u8],
        count: bool,
    ) {
        let Some(stream) = self.stream(queue) else {
            return;
        };
        let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
        s.sequence = s.sequence.wrapping_add(1);
        let rec = Record {
            sequence: s.sequence,
            time_ns: self.start.elapsed().as_nanos() as u64,
            sector,
            bytes,
            action,
            pid: self.pid,
            device: self.device(),
            cpu: u32::from(queue),
            error,
        };
        let mut buf = std::mem::take(&mut s.scratch);
        buf.clear();
        rec.encode(pdu, &mut buf);
        write_or_note(&mut s, &buf);
        s.scratch = buf;
        if count {
            self.events.fetch_add(1, Relaxed);
        }
    }

    fn line(&self, queue: u16, value: serde_json::Value) {
        let Some(stream) = self.stream(queue) else {
            return;
        };
        let mut text = value.to_string();
        text.push('\n');
        let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
        write_or_note(&mut s, text.as_bytes());
        self.events.fetch_add(1, Relaxed);
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// One event of a request of `bytes` bytes at byte `offset`.
    pub fn event(&self, queue: u16, phase: Phase, op: TraceOp, offset: u64, bytes: u64) {
        match self.format {
            Format::Blktrace => {
                let (code, error) = match phase {
                    Phase::Queue => (action::QUEUE, 0),
                    Phase::Issue => (action::ISSUE, 0),
                    Phase::Complete(status) => (action::COMPLETE, errno_of(status)),
                };
                let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                self.record(
                    queue,
                    offset / SECTOR,
                    bytes,
                    code | op.categories(),
                    error,
                    &[],
                    true,
                );
            }
            Format::Jsonl => {
                let mut v = json!({
                    "t_ns": self.now_ns(),
                    "vsic": self.vsic,
                    "queue": queue,
                    "event": match phase {
                        Phase::Queue => "queue",
                        Phase::Issue => "issue",
                        Phase::Complete(_) => "complete",
                    },
                    "op": op.name(),
                    "offset": offset,
                    "bytes": bytes,
                });
                if let Phase::Complete(status) = phase {
                    v["status"] = json!(status.unwrap_or(0));
                }
                self.line(queue, v);
            }
        }
    }

    /// A fault injected into a request on `queue`.
    pub fn fault(&self, queue: u16, rule: u64, what: &str, op: TraceOp, offset: u64) {
        match self.format {
            Format::Blktrace => {
                let text = format!("vsicd fault rule {rule}: {what} {} at {offset}", op.name());
                self.record(
                    queue,
                    0,
                    0,
                    action::NOTIFY_MESSAGE,
                    0,
                    text.as_bytes(),
                    true,
                );
            }
            Format::Jsonl => self.line(
                queue,
                json!({
                    "t_ns": self.now_ns(),
                    "vsic": self.vsic,
                    "queue": queue,
                    "event": "fault",
                    "rule": rule,
                    "action": what,
                    "op": op.name(),
                    "offset": offset,
                }),
            ),
        }
    }

    /// Flushes every stream; the files and the event count.
    fn finish(&self) -> Result<(Vec<PathBuf>, u64), TraceError> {
        let mut failed = false;
        for s in &self.streams {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.out.flush() {
                return Err(TraceError::Write(e));
            }
            failed |= s.failed;
        }
        if failed {
            return Err(TraceError::Write(io::Error::other(
                "some events could not be written (see the daemon's log)",
            )));
        }
        Ok((self.files.clone(), self.events.load(Relaxed)))
    }
}

fn write_or_note(s: &mut Stream, bytes: &[u8]) {
    if let Err(e) = s.out.write_all(bytes) {
        if !s.failed {
            log::error!("trace: cannot write an event: {e}; later events may be lost");
        }
        s.failed = true;
    }
}

/// The errno a virtio status stands for in a completion record.
fn errno_of(status: Option<u8>) -> u16 {
    match status {
        None => 0,
        Some(vsic_abi::virtio::VIRTIO_BLK_S_UNSUPP) => libc::EOPNOTSUPP as u16,
        Some(_) => libc::EIO as u16,
    }
}

/// The running traces, one slot per VSIC.
pub struct Traces {
    sessions: RwLock<Vec<Option<Arc<Session>>>>,
    queues: u16,
}

impl Traces {
    pub fn new(vsics: u32, queues: u16) -> Traces {
        Traces {
            sessions: RwLock::new((0..vsics).map(|_| None).collect()),
            queues,
        }
    }

    pub fn get(&self, vsic: u32) -> Option<Arc<Session>> {
        let s = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        s.get(vsic as usize)?.clone()
    }

    pub fn any(&self) -> bool {
        let s = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        s.iter().any(Option::is_some)
    }

    /// Starts tracing VSIC `vsic`; returns the files it writes.
    pub fn start(
        &self,
        vsic: u32,
        path: &Path,
        format: Format,
    ) -> Result<Vec<PathBuf>, TraceError> {
        let mut s = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let slot = s
            .get_mut(vsic as usize)
            .ok_or(TraceError::NoSuchVsic(vsic))?;
        if slot.is_some() {
            return Err(TraceError::Busy(vsic));
        }
        let session = Session::start(vsic, self.queues, path, format)?;
        let files = session.files.clone();
        *slot = Some(Arc::new(session));
        Ok(files)
    }

    /// Stops tracing VSIC `vsic`: returns the files and the events written.
    /// Requests in flight that still hold the session finish writing into
    /// it; their last events may miss the files.
    pub fn stop(&self, vsic: u32) -> Result<(Vec<PathBuf>, u64), TraceError> {
        let session = {
            let mut s = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            let slot = s
                .get_mut(vsic as usize)
                .ok_or(TraceError::NoSuchVsic(vsic))?;
            slot.take().ok_or(TraceError::NotTracing(vsic))?
        };
        session.finish()
    }
}
