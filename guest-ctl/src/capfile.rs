//! Capability files: one token in its text form, readable by the owner only.
//!
//! Access control over VSAs is the file system's: whoever can read a
//! capability file can use the capability. So files are always created with
//! mode 0600, never silently overwritten, and replaced atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vsic_abi::CapToken;

/// Capability files are one short line; anything much larger is not one.
const MAX_FILE_LEN: u64 = 4096;
const PRIVATE_MODE: u32 = 0o600;

/// Why a capability file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CapFileError {
    #[error("{0}")]
    Open(#[source] io::Error),
    #[error("not a capability file: {0}")]
    Read(#[source] io::Error),
    #[error("not a capability file: too large")]
    TooLarge,
    #[error("{0}")]
    Parse(#[source] vsic_abi::DecodeError),
}

/// Reads and parses a capability file.
pub fn read(path: &Path) -> Result<CapToken, CapFileError> {
    let file = File::open(path).map_err(CapFileError::Open)?;
    let mut text = String::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(CapFileError::Read)?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(CapFileError::TooLarge);
    }
    CapToken::from_text(&text).map_err(CapFileError::Parse)
}

/// A capability file name claimed before the capability exists, so that a
/// device command is not run when its result could not be stored. Dropping
/// it without [`Reservation::store`] removes whatever it created.
pub struct Reservation {
    path: PathBuf,
    kind: ReservationKind,
}

enum ReservationKind {
    /// The file was created empty with O_EXCL and is filled in place.
    Exclusive(File),
    /// `--force`: the file is written next to `path` and renamed over it.
    Replace,
    Done,
}

impl Reservation {
    /// Claims `path`: creates it (mode 0600, O_EXCL) unless `force`, in
    /// which case an existing file is replaced when the token is stored.
    pub fn claim(path: &Path, force: bool) -> io::Result<Reservation> {
        let kind = if force {
            ReservationKind::Replace
        } else {
            ReservationKind::Exclusive(create_private(path)?)
        };
        Ok(Reservation {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// Writes `token` to the claimed file and makes it durable.
    pub fn store(mut self, token: &CapToken) -> io::Result<()> {
        match std::mem::replace(&mut self.kind, ReservationKind::Done) {
            ReservationKind::Exclusive(mut file) => {
                let written = write_token(&mut file, token);
                if written.is_err() {
                    // Leave no half-written file behind.
                    let _ = fs::remove_file(&self.path);
                }
                written
            }
            ReservationKind::Replace => replace(&self.path, token),
            ReservationKind::Done => Ok(()),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let ReservationKind::Exclusive(_) = self.kind {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Atomically replaces (or creates) `path` with a file holding `token`:
/// a private temporary file in the same directory, renamed over it.
pub fn replace(path: &Path, token: &CapToken) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "capability file path has no file name",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = create_private(&tmp)?;
        write_token(&mut file, token)?;
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn create_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    // The umask may have cleared bits we want; it cannot have added any,
    // but set the mode explicitly so the result never depends on it.
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_MODE))?;
    Ok(file)
}

fn write_token(file: &mut File, token: &CapToken) -> io::Result<()> {
    file.write_all(token.to_text().as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsic_abi::Rights;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vsicctl-capfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn token(secret_byte: u8) -> CapToken {
        CapToken {
            vsa_id: 7,
            token_id: 2,
            rights: Rights::ALL,
            secret: [secret_byte; 32],
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn stored_file_is_private_and_round_trips() {
        let dir = scratch_dir("store");
        let path = dir.join("cap");
        Reservation::claim(&path, false)
            .unwrap()
            .store(&token(1))
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read(&path).unwrap(), token(1));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_file_is_refused_unless_forced() {
        let dir = scratch_dir("excl");
        let path = dir.join("cap");
        fs::write(&path, "keep me").unwrap();
        let err = Reservation::claim(&path, false).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Reservation::claim(&path, true)
            .unwrap()
            .store(&token(2))
            .unwrap();
        assert_eq!(read(&path).unwrap(), token(2));
        assert_eq!(mode(&path), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abandoned_reservation_leaves_nothing() {
        let dir = scratch_dir("abandon");
        let path = dir.join("cap");
        drop(Reservation::claim(&path, false).unwrap());
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replace_leaves_no_temporary_files() {
        let dir = scratch_dir("replace");
        let path = dir.join("cap");
        replace(&path, &token(3)).unwrap();
        replace(&path, &token(4)).unwrap();
        assert_eq!(read(&path).unwrap(), token(4));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("cap")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_a_capability() {
        let dir = scratch_dir("garbage");
        let path = dir.join("cap");
        fs::write(&path, "hello").unwrap();
        assert!(read(&path)
            .unwrap_err()
            .to_string()
            .contains("not a capability file"));
        fs::write(&path, vec![b'x'; 10_000]).unwrap();
        assert!(read(&path).is_err());
        assert!(read(&dir.join("missing")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
