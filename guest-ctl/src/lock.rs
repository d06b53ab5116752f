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
///
/// The administrator's commands go first: while one waits for the lock it
/// holds a shared lock on the lock file's `.wanted` companion, and the
/// service does not start a tenant's request while that is held. Root then
/// waits for one tenant request at most.
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
    /// Takes the lock for a request of the service on a tenant's behalf:
    /// only while no administrator's command waits for it.
    pub fn acquire_for_tenant(path: &Path, timeout: Duration) -> Result<ControlLock, LockError> {
        ControlLock::take(path, timeout, Priority::Tenant)
    }

    /// Takes the lock for an administrator's command, ahead of tenants.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<ControlLock, LockError> {
        ControlLock::take(path, timeout, Priority::Administrator)
    }

    fn take(path: &Path, timeout: Duration, priority: Priority) -> Result<ControlLock, LockError> {
        if let Some(dir) = path.parent() {
            crate::functions::ensure_public_dir(dir)
                .map_err(|e| LockError::Unusable(format!("creating {}: {e}", dir.display())))?;
        }
        let file = open_lock_file(path)?;
        let mut wanted_name = path.as_os_str().to_owned();
        wanted_name.push(".wanted");
        let wanted_path = Path::new(&wanted_name);
        let wanted = open_lock_file(wanted_path)?;
        // Held (shared) while an administrator waits; dropped on return.
        let mut announced = false;
        let deadline = Instant::now() + timeout;
        loop {
            let free_to_try = match priority {
                Priority::Administrator => true,
                // Nobody waiting holds `.wanted`: take it alone for an
                // instant to know.
                Priority::Tenant => match try_flock(&wanted, libc::LOCK_EX, wanted_path)? {
                    true => {
                        // SAFETY: flock on a descriptor we own.
                        unsafe { libc::flock(wanted.as_raw_fd(), libc::LOCK_UN) };
                        true
                    }
                    false => false,
                },
            };
            if free_to_try && try_flock(&file, libc::LOCK_EX, path)? {
                return Ok(ControlLock { _file: file });
            }
            if priority == Priority::Administrator && !announced {
                announced = try_flock(&wanted, libc::LOCK_SH, wanted_path)?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Administrator,
    Tenant,
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
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
        })
}

/// Tries `flock(op | LOCK_NB)`: whether it was taken.
fn try_flock(file: &File, op: libc::c_int, path: &Path) -> Result<bool, LockError> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) || err.kind() == io::ErrorKind::Interrupted {
        return Ok(false);
    }
    Err(LockError::Unusable(format!(
        "locking {}: {err}",
        path.display()
    )))
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

    /// Tenant requests of the service take the lock one after the other
    /// without a pause; the administrator's command still gets it as soon
    /// as the request in progress is done.
    #[test]
    fn root_does_not_wait_behind_tenant_requests() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(format!("vsicctl-lock-prio-{}", std::process::id()));
        let path = dir.join("lock");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let tenants: Vec<_> = (0..2)
            .map(|_| {
                let (path, stop, served) = (path.clone(), Arc::clone(&stop), Arc::clone(&served));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let held = ControlLock::acquire_for_tenant(&path, Duration::from_secs(10))
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(50));
                        drop(held);
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        while served.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut waits = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let root = ControlLock::acquire(&path, Duration::from_secs(5));
            waits.push(start.elapsed());
            assert!(root.is_ok(), "root waited {waits:?}: {:?}", root.err());
            std::thread::sleep(Duration::from_millis(20));
            drop(root);
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        for t in tenants {
            t.join().unwrap();
        }
        eprintln!("root_waits_ms={:?}", waits.iter().map(|w| w.as_millis()).collect::<Vec<_>>());
        // One tenant request (50 ms) at most, with generous slack.
        assert!(waits.iter().all(|w| *w < Duration::from_secs(1)), "root waited {waits:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
