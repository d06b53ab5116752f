//! The management socket: the host's way to script the controller while
//! guests own its functions. A Unix socket (mode 0600) speaking JSON lines
//! in QMP's shape ([`protocol`]); commands live in [`commands`], one module
//! per family, each registered in one line; [`registry`] dispatches.
//!
//! Each connection gets its own thread and is served until it closes; a
//! bad line (not JSON, unknown command, bad arguments) gets an error reply
//! and the connection stays usable.

pub mod commands;
pub mod protocol;
pub mod registry;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use log::{info, warn};

pub use protocol::{CommandError, ErrorClass};
pub use registry::{Context, Registry};

/// Why the socket could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {}: {source}", .path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot start the management thread: {0}")]
    Thread(#[source] io::Error),
}

/// The running management socket.
pub struct Mgmt {
    path: PathBuf,
}

impl Mgmt {
    /// Binds `path` (replacing a stale socket, never a live one) with mode
    /// 0600 and serves it on its own threads.
    pub fn start(path: &Path, ctx: Context) -> Result<Mgmt, StartError> {
        let listen_err = |source| StartError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = bind_private(path).map_err(listen_err)?;
        let shared = Arc::new((ctx, commands::registry()));
        thread::Builder::new()
            .name("mgmt-listen".into())
            .spawn(move || accept_loop(listener, shared))
            .map_err(StartError::Thread)?;
        info!("management socket on {}", path.display());
        Ok(Mgmt {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket (the daemon is stopping).
    pub fn shutdown(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds under a temporary name, makes it 0600, then renames it into
/// place: nobody else can ever connect, not even in between.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving it",
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

fn accept_loop(listener: UnixListener, shared: Arc<(Context, Registry)>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                if let Err(e) = thread::Builder::new()
                    .name("mgmt-conn".into())
                    .spawn(move || serve(stream, &shared.0, &shared.1))
                {
                    warn!("management: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                warn!("management: accept failed: {e}");
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// What reading one line produced.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line of at most [`protocol::MAX_LINE`] bytes; a longer one is
/// consumed to its end and reported as such.
fn read_line(r: &mut impl BufRead) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Text(line),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > protocol::MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

/// Serves one connection until it closes.
fn serve(stream: UnixStream, ctx: &Context, registry: &Registry) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut out = io::BufWriter::new(write_half);
    loop {
        let reply = match read_line(&mut reader) {
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => protocol::reply(
                &Err(CommandError::new(
                    ErrorClass::ParseError,
                    format!("request longer than {} bytes", protocol::MAX_LINE),
                )),
                None,
            ),
            Ok(Line::Text(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                if text.trim().is_empty() {
                    continue;
                }
                handle(ctx, registry, &text)
            }
        };
        if out
            .write_all(reply.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Parses, dispatches and encodes one request line.
pub fn handle(ctx: &Context, registry: &Registry, line: &str) -> String {
    match protocol::parse(line) {
        Ok(req) => {
            let result = registry.dispatch(ctx, &req.execute, req.arguments);
            if let Err(e) = &result {
                log::debug!("management: {} failed: {e}", req.execute);
            }
            protocol::reply(&result, req.id.as_ref())
        }
        Err(e) => protocol::reply(&Err(e), None),
    }
}
