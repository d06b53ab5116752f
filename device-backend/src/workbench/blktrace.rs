//! The blktrace binary format, as `blkparse` and `btt` read it: a stream
//! of `struct blk_io_trace` records (48 bytes, optionally followed by
//! `pdu_len` bytes of payload), one stream per CPU, which is for us one
//! stream per queue. Written from the kernel's documented user API
//! (include/uapi/linux/blktrace_api.h); this file is its only declaration.
//!
//! Record layout (little-endian, as the machine writing it):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | u32 magic | `0x65617400 \| version (0x07)` |
//! | 4 | u32 sequence | per stream, from 1 |
//! | 8 | u64 time | nanoseconds since the trace started |
//! | 16 | u64 sector | 512-byte sector |
//! | 24 | u32 bytes | transfer length |
//! | 28 | u32 action | action code, category bits above bit 16 |
//! | 32 | u32 pid | |
//! | 36 | u32 device | `major << 20 \| minor` |
//! | 40 | u32 cpu | the stream (queue) |
//! | 44 | u16 error | errno of a failed completion |
//! | 46 | u16 pdu_len | payload bytes that follow |

/// `BLK_IO_TRACE_MAGIC | BLK_IO_TRACE_VERSION`.
pub const MAGIC: u32 = 0x6561_7400 | 0x07;
pub const RECORD_LEN: usize = 48;

/// Category bits (`enum blktrace_cat`), shifted into the action's high half.
pub mod category {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const FLUSH: u32 = 1 << 2;
    pub const SYNC: u32 = 1 << 3;
    pub const QUEUE: u32 = 1 << 4;
    pub const ISSUE: u32 = 1 << 6;
    pub const COMPLETE: u32 = 1 << 7;
    pub const NOTIFY: u32 = 1 << 10;
    pub const DISCARD: u32 = 1 << 13;
}

const SHIFT: u32 = 16;

/// Actions (`enum blktrace_act`, `enum blktrace_notify`) with the category
/// bit each carries.
pub mod action {
    use super::{category, SHIFT};
    pub const QUEUE: u32 = 1 | (category::QUEUE << SHIFT);
    pub const ISSUE: u32 = 7 | (category::ISSUE << SHIFT);
    pub const COMPLETE: u32 = 8 | (category::COMPLETE << SHIFT);
    /// Names the process of `pid` (payload: its name).
    pub const NOTIFY_PROCESS: u32 = category::NOTIFY << SHIFT;
    /// A text message (payload: the text).
    pub const NOTIFY_MESSAGE: u32 = 2 | (category::NOTIFY << SHIFT);
}

/// The request-kind categories of an action (read/write/flush/discard,
/// sync), to OR into [`action`] codes.
pub fn categories(bits: u32) -> u32 {
    bits << SHIFT
}

/// One record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub sequence: u32,
    pub time_ns: u64,
    pub sector: u64,
    pub bytes: u32,
    pub action: u32,
    pub pid: u32,
    pub device: u32,
    pub cpu: u32,
    pub error: u16,
}

/// Device number as the kernel's 32-bit `dev_t` encoding.
pub fn device(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

impl Record {
    /// Appends the record and its payload (at most 65535 bytes; longer is
    /// cut) to `out`.
    pub fn encode(&self, pdu: &[u8], out: &mut Vec<u8>) {
        let pdu = &pdu[..pdu.len().min(u16::MAX as usize)];
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.time_ns.to_le_bytes());
        out.extend_from_slice(&self.sector.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.action.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.device.to_le_bytes());
        out.extend_from_slice(&self.cpu.to_le_bytes());
        out.extend_from_slice(&self.error.to_le_bytes());
        out.extend_from_slice(&(pdu.len() as u16).to_le_bytes());
        out.extend_from_slice(pdu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout() {
        let r = Record {
            sequence: 2,
            time_ns: 3,
            sector: 4,
            bytes: 5,
            action: action::COMPLETE | categories(category::WRITE),
            pid: 6,
            device: device(253, 1),
            cpu: 7,
            error: 8,
        };
        let mut out = Vec::new();
        r.encode(b"hi", &mut out);
        assert_eq!(out.len(), RECORD_LEN + 2);
        assert_eq!(&out[0..4], &0x6561_7407u32.to_le_bytes());
        assert_eq!(out[4], 2);
        assert_eq!(out[8], 3);
        assert_eq!(out[16], 4);
        assert_eq!(out[24], 5);
        assert_eq!(
            u32::from_le_bytes(out[28..32].try_into().unwrap()),
            8 | (1 << 23) | (1 << 17)
        );
        assert_eq!(out[32], 6);
        assert_eq!(
            u32::from_le_bytes(out[36..40].try_into().unwrap()),
            (253 << 20) | 1
        );
        assert_eq!((out[40], out[44], out[46]), (7, 8, 2));
        assert_eq!(&out[48..], b"hi");
    }
}
