//! The library's one error type and the I/O status a request completes with.

use std::fmt;
use std::io;

use vsic_abi::virtio::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

/// Everything that can go wrong while opening or driving a function.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device spec names something this build cannot open (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The device spec could not be parsed.
    #[error("bad device name: {0}")]
    BadSpec(String),
    /// Could not connect to the device at all.
    #[error("cannot connect to {path}: {reason}")]
    Connect { path: String, reason: String },
    /// The device broke the transport protocol or refused a setup step.
    #[error("device setup failed at {step}: {reason}")]
    Transport { step: &'static str, reason: String },
    /// The device does not offer a feature this operation needs.
    #[error("the device lacks feature {0}")]
    MissingFeature(&'static str),
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The registered DMA region has no free block of the requested size.
    #[error(
        "DMA region exhausted: no free block of {requested} bytes in the {region}-byte region \
         (open with a larger mem_size)"
    )]
    DmaExhausted { requested: usize, region: usize },
    /// A memory range does not lie inside the registered DMA region.
    #[error("memory range {iova:#x}+{len} is not inside the registered DMA region")]
    NotDmaMemory { iova: u64, len: usize },
    /// After pinning, a page of DMA memory is not at the address the device
    /// was given for it (pinning moved it): the device would reach other
    /// memory. `page` is the page's index in the memory as provided.
    #[error(
        "DMA page {page} is at {now:#x} after pinning, not at {recorded:#x} where the device \
         would reach it; refused (reserve huge pages at boot: hugepages=N)"
    )]
    DmaMoved {
        page: usize,
        recorded: u64,
        now: u64,
    },
    /// The control service refused to let the VSIC reach DMA memory the
    /// library allocated itself (see [`crate::control::register`]).
    #[error("registering DMA memory for VSIC {vsic} with the control service: {source}")]
    DmaRegistration {
        vsic: u32,
        #[source]
        source: crate::control::ControlError,
    },
    /// No such queue on this device (or it was not opened).
    #[error("no queue {queue}: the device was opened with {queues} queue(s)")]
    NoSuchQueue { queue: u16, queues: u16 },
    /// The queue has too few free descriptors right now; poll and retry.
    #[error("queue full: poll for completions and retry")]
    QueueFull,
    /// The request can never fit the queue, even when it is empty.
    #[error("request needs {needed} descriptors but the queue only has {queue_size}: split it")]
    TooLarge { needed: usize, queue_size: u16 },
    /// A synchronous call or a wait ran out of time.
    #[error("timed out waiting for the device")]
    Timeout,
    /// The device completed the request with an error status.
    #[error("I/O error: {0}")]
    Io(IoStatus),
    /// An operating-system call failed.
    #[error("{what} failed: {source}")]
    System {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn system(what: &'static str, source: io::Error) -> Error {
        Error::System { what, source }
    }

    pub(crate) fn transport(step: &'static str, reason: impl fmt::Display) -> Error {
        Error::Transport {
            step,
            reason: reason.to_string(),
        }
    }
}

/// Why the device failed a request (its virtio-blk status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// VIRTIO_BLK_S_IOERR: the device refused or failed the request
    /// (bounds, read-only, detached slot, drive error).
    IoError,
    /// VIRTIO_BLK_S_UNSUPP: the device does not know the request type.
    Unsupported,
    /// Any other status byte; 0xff means the device never wrote one.
    Other(u8),
}

impl IoStatus {
    /// Maps a status byte to a result.
    pub fn from_byte(status: u8) -> Result<(), IoStatus> {
        match status {
            VIRTIO_BLK_S_OK => Ok(()),
            VIRTIO_BLK_S_IOERR => Err(IoStatus::IoError),
            VIRTIO_BLK_S_UNSUPP => Err(IoStatus::Unsupported),
            other => Err(IoStatus::Other(other)),
        }
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::IoError => write!(f, "the device failed the request (IOERR)"),
            IoStatus::Unsupported => write!(f, "the device does not support the request (UNSUPP)"),
            IoStatus::Other(s) => write!(f, "the device returned unknown status {s:#04x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bytes_map_to_results() {
        assert_eq!(IoStatus::from_byte(0), Ok(()));
        assert_eq!(IoStatus::from_byte(1), Err(IoStatus::IoError));
        assert_eq!(IoStatus::from_byte(2), Err(IoStatus::Unsupported));
        assert_eq!(IoStatus::from_byte(0xff), Err(IoStatus::Other(0xff)));
    }

    #[test]
    fn messages_name_the_problem() {
        let e = Error::Connect {
            path: "/tmp/x.sock".into(),
            reason: "no such file".into(),
        };
        assert!(e.to_string().contains("/tmp/x.sock"));
        assert!(Error::MissingFeature("DISCARD")
            .to_string()
            .contains("DISCARD"));
        assert!(Error::DmaExhausted {
            requested: 10,
            region: 20
        }
        .to_string()
        .contains("exhausted"));
    }
}
