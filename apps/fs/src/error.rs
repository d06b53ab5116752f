//! What can go wrong in the file system, with the POSIX errno each maps to.

use vsic_storage::StorageError;

/// Every error of the file system.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left on the device ({0})")]
    NoSpace(&'static str),
    #[error("file name longer than {max} bytes")]
    NameTooLong { max: usize },
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("bad file descriptor {0}")]
    BadFd(u64),
    #[error("file too large")]
    TooBig,
    #[error("no vsic-fs on this device: {0}")]
    NotFormatted(String),
    #[error("the file system is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl FsError {
    /// The POSIX errno this error corresponds to.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => 2,                                // ENOENT
            FsError::Exists => 17,                                 // EEXIST
            FsError::NotDir => 20,                                 // ENOTDIR
            FsError::IsDir => 21,                                  // EISDIR
            FsError::NotEmpty => 39,                               // ENOTEMPTY
            FsError::NoSpace(_) => 28,                             // ENOSPC
            FsError::NameTooLong { .. } => 36,                     // ENAMETOOLONG
            FsError::Invalid(_) => 22,                             // EINVAL
            FsError::Loop => 40,                                   // ELOOP
            FsError::BadFd(_) => 9,                                // EBADF
            FsError::TooBig => 27,                                 // EFBIG
            FsError::NotFormatted(_) | FsError::Corrupt(_) => 117, // EUCLEAN
            FsError::Storage(_) => 5,                              // EIO
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;
