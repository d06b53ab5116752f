//! The control plane's lock: one process at a time drives the PF and
//! rebinds functions (a VFIO group opens only once, and two rebinds of one
//! function would race).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Default lock file, beside the function map.
pub const LOCK_PATH: &str = "/run/vsic/lock";
/// How long to wait for another control-plane process.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Held until dropped (the kernel releases it when the process dies too).
pub struct ControlLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum LockError {
    /// Another process held it for the whole timeout.
    Busy(String),
    /// The lock file cannot be used (not root, no /run).
    Unusable(String),
}

impl ControlLock {
    pub fn acquire(path: &Path, timeout: Duration) -> Result<ControlLock, LockError> {
        if let Some(dir) = path.parent() {
            crate::functions::ensure_public_dir(dir)
                .map_err(|e| LockError::Unusable(format!("creating {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                LockError::Unusable(format!(
                    "opening the control-plane lock {}: {e}",
                    path.display()
                ))
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(ControlLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.kind() != io::ErrorKind::Interrupted
            {
                return Err(LockError::Unusable(format!(
                    "locking {}: {err}",
                    path.display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LockError::Busy(format!(
                    "another control-plane process has held {} for {} s",
                    path.display(),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = std::env::temp_dir().join(format!("vsicctl-lock-{}", std::process::id()));
        let path = dir.join("lock");
        let held = ControlLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let err = ControlLock::acquire(&path, Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(
            matches!(&err, LockError::Busy(m) if m.contains("another control-plane process")),
            "{err:?}"
        );
        drop(held);
        ControlLock::acquire(&path, Duration::from_millis(100)).unwrap();
        // A directory where the lock file should be: unusable, not busy.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("lock")).unwrap();
        assert!(matches!(
            ControlLock::acquire(&blocked.join("lock"), Duration::from_millis(100)),
            Err(LockError::Unusable(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
