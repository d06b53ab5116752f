//! The virtio-blk constants the controller relies on (virtio 1.3, 5.2).
//!
//! Every controller function is a virtio-blk device. VSIC functions speak
//! the standard request types; the PF additionally accepts
//! [`VIRTIO_BLK_T_VSIC_ADMIN`].

use core::mem::{offset_of, size_of};
use virtio_bindings::virtio_blk as blk;

/// Size of the virtio-blk request header (type, reserved, sector).
pub const REQ_HEADER_LEN: usize = size_of::<blk::virtio_blk_outhdr>();
/// Sector size used by the `sector` field of a request.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial string.
pub const SERIAL_LEN: usize = blk::VIRTIO_BLK_ID_BYTES as usize;

pub use blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
/// Vendor-specific request type carrying one admin command (PF only).
/// ASCII "VSA" in the top three bytes keeps it far from standard types.
pub const VIRTIO_BLK_T_VSIC_ADMIN: u32 = 0x5653_4100;

// The status byte is one byte on the wire.
pub const VIRTIO_BLK_S_OK: u8 = blk::VIRTIO_BLK_S_OK as u8;
pub const VIRTIO_BLK_S_IOERR: u8 = blk::VIRTIO_BLK_S_IOERR as u8;
pub const VIRTIO_BLK_S_UNSUPP: u8 = blk::VIRTIO_BLK_S_UNSUPP as u8;

// Feature bits (bit numbers).
pub use blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Byte offsets into the virtio-blk configuration space (the layout of
/// `struct virtio_blk_config`).
pub mod config {
    use super::{blk::virtio_blk_config as Config, offset_of};

    pub const CAPACITY: usize = offset_of!(Config, capacity); // u64, in 512-byte sectors
    pub const SIZE_MAX: usize = offset_of!(Config, size_max); // u32
    pub const SEG_MAX: usize = offset_of!(Config, seg_max); // u32
    pub const BLK_SIZE: usize = offset_of!(Config, blk_size); // u32
    pub const NUM_QUEUES: usize = offset_of!(Config, num_queues); // u16
    pub const MAX_DISCARD_SECTORS: usize = offset_of!(Config, max_discard_sectors); // u32
    pub const MAX_DISCARD_SEG: usize = offset_of!(Config, max_discard_seg); // u32
    pub const DISCARD_SECTOR_ALIGNMENT: usize = offset_of!(Config, discard_sector_alignment); // u32
    pub const MAX_WRITE_ZEROES_SECTORS: usize = offset_of!(Config, max_write_zeroes_sectors); // u32
    pub const MAX_WRITE_ZEROES_SEG: usize = offset_of!(Config, max_write_zeroes_seg); // u32
    pub const WRITE_ZEROES_MAY_UNMAP: usize = offset_of!(Config, write_zeroes_may_unmap); // u8
    /// Length of the configuration space the device exposes: everything up
    /// to the secure-erase fields, which it does not offer.
    pub const LEN: usize = offset_of!(Config, max_secure_erase_sectors);
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

// Our declared layout is virtio's segment struct.
const _: () = assert!(size_of::<DiscardSegmentWire>() == size_of::<blk::virtio_blk_discard_write_zeroes>());

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
