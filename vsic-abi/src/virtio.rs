//! The virtio-blk constants the controller relies on (virtio 1.3, 5.2).
//!
//! Every controller function is a virtio-blk device. VSIC functions speak
//! the standard request types; the PF additionally accepts
//! [`VIRTIO_BLK_T_VSIC_ADMIN`].

/// Size of the virtio-blk request header (type, reserved, sector).
pub const REQ_HEADER_LEN: usize = 16;
/// Sector size used by the `sector` field of a request.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial string.
pub const SERIAL_LEN: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Vendor-specific request type carrying one admin command (PF only).
/// ASCII "VSA" in the top three bytes keeps it far from standard types.
pub const VIRTIO_BLK_T_VSIC_ADMIN: u32 = 0x5653_4100;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

// Feature bits (bit numbers).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
pub const VIRTIO_BLK_F_MQ: u32 = 12;
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Byte offsets into the virtio-blk configuration space.
pub mod config {
    pub const CAPACITY: usize = 0; // u64, in 512-byte sectors
    pub const SIZE_MAX: usize = 8; // u32
    pub const SEG_MAX: usize = 12; // u32
    pub const BLK_SIZE: usize = 20; // u32
    pub const NUM_QUEUES: usize = 34; // u16
    pub const MAX_DISCARD_SECTORS: usize = 36; // u32
    pub const MAX_DISCARD_SEG: usize = 40; // u32
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44; // u32
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48; // u32
    pub const MAX_WRITE_ZEROES_SEG: usize = 52; // u32
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56; // u8
    /// Length of the configuration space the device exposes.
    pub const LEN: usize = 60;
}

crate::layout::wire_layout! {
    /// One DISCARD / WRITE_ZEROES segment as it travels (virtio 1.3, 5.2.6).
    pub struct DiscardSegmentWire(16 bytes) {
        0 => sector: crate::layout::U64,
        8 => num_sectors: crate::layout::U32,
        12 => flags: crate::layout::U32,
    }
}

/// One DISCARD / WRITE_ZEROES segment, decoded: 16 bytes on the wire
/// ([`DiscardSegmentWire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSegment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

impl DiscardSegment {
    pub const LEN: usize = <DiscardSegmentWire as crate::layout::Layout>::LEN;
    pub const FLAG_UNMAP: u32 = 1;

    pub fn decode(b: &[u8]) -> Result<Self, crate::DecodeError> {
        use crate::layout::Layout;
        let w = DiscardSegmentWire::read_exact(b)?;
        Ok(Self { sector: w.sector.get(), num_sectors: w.num_sectors.get(), flags: w.flags.get() })
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(DiscardSegmentWire {
            sector: self.sector.into(),
            num_sectors: self.num_sectors.into(),
            flags: self.flags.into(),
        })
    }
}

/// The GET_ID serial naming a function: `vsic-pf` or `vsic-vsicN`,
/// zero-padded to [`SERIAL_LEN`] bytes.
pub fn serial_for(function: Function) -> [u8; SERIAL_LEN] {
    let name = match function {
        Function::Pf => "vsic-pf".to_string(),
        Function::Vsic(n) => format!("vsic-vsic{n}"),
    };
    let mut out = [0u8; SERIAL_LEN];
    let n = name.len().min(SERIAL_LEN);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// Parses a GET_ID serial back into the function it names.
pub fn function_from_serial(serial: &[u8]) -> Option<Function> {
    let end = serial.iter().position(|&c| c == 0).unwrap_or(serial.len());
    let s = std::str::from_utf8(&serial[..end]).ok()?;
    if s == "vsic-pf" {
        return Some(Function::Pf);
    }
    s.strip_prefix("vsic-vsic")?.parse().ok().map(Function::Vsic)
}

/// One PCI function of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Pf,
    Vsic(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_round_trip() {
        for f in [Function::Pf, Function::Vsic(0), Function::Vsic(31)] {
            assert_eq!(function_from_serial(&serial_for(f)), Some(f));
        }
        assert_eq!(function_from_serial(b"something-else\0\0\0\0\0\0"), None);
    }

    #[test]
    fn discard_segment_round_trip_and_sizes() {
        let s = DiscardSegment { sector: 77, num_sectors: 8, flags: DiscardSegment::FLAG_UNMAP };
        assert_eq!(DiscardSegment::decode(&s.encode()).unwrap(), s);
        assert!(DiscardSegment::decode(&[0u8; 15]).is_err());
        assert!(DiscardSegment::decode(&[0u8; 17]).is_err());
    }
}
