//! What each function advertises: virtio features, vhost-user protocol
//! features, limits, and the virtio-blk configuration space.

use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vsic_abi::virtio::{self, config};

/// Largest virtqueue a driver may set up.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Data segments per request (`seg_max`); a chain also carries a header and
/// a status, and admin chains a few more parts.
pub const SEG_MAX: u32 = 254;
/// Largest data segment (`size_max`, VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 128 << 10;
/// Largest IN or OUT transfer: `seg_max` segments of `size_max` bytes,
/// the most a driver honouring both limits can ask for in one request.
/// Larger requests are refused before any data moves.
pub const MAX_TRANSFER: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Descriptors an IN or OUT chain may have: the data segments plus one for
/// the header and one for the status byte.
pub const MAX_IO_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Descriptors the parser keeps per chain. Longer chains are refused.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Logical block size reported in `blk_size`.
pub const BLOCK_SIZE: u32 = 512;
/// Limits for DISCARD and WRITE_ZEROES (in 512-byte sectors / segments).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 64;
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 1;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
pub const MAX_WRITE_ZEROES_SEG: u32 = 64;

/// Virtio feature bits every function offers (PF and VSICs alike). A
/// write-through controller (`--cache write-through`) leaves out
/// `VIRTIO_BLK_F_FLUSH`: without it a driver may take every completed
/// write as durable (virtio 1.x, 5.2.5.2), which is then true.
pub fn device_features(write_through: bool) -> u64 {
    let bits = [
        virtio::VIRTIO_F_VERSION_1,
        virtio::VIRTIO_RING_F_INDIRECT_DESC,
        virtio::VIRTIO_RING_F_EVENT_IDX,
        virtio::VIRTIO_BLK_F_SIZE_MAX,
        virtio::VIRTIO_BLK_F_SEG_MAX,
        virtio::VIRTIO_BLK_F_BLK_SIZE,
        virtio::VIRTIO_BLK_F_FLUSH,
        virtio::VIRTIO_BLK_F_MQ,
        virtio::VIRTIO_BLK_F_DISCARD,
        virtio::VIRTIO_BLK_F_WRITE_ZEROES,
    ];
    let all = bits.iter().fold(
        VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        |acc, b| acc | (1u64 << b),
    );
    if write_through {
        all & !(1u64 << virtio::VIRTIO_BLK_F_FLUSH)
    } else {
        all
    }
}

/// vhost-user protocol features: several queues, config space access,
/// acknowledged requests, the backend-to-frontend channel (config-change
/// notification) and incremental memory-slot updates.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The virtio-blk configuration space of a function with `capacity_bytes`
/// (rounded down to whole sectors) and `num_queues` request queues.
pub fn config_space(capacity_bytes: u64, num_queues: u16) -> [u8; config::LEN] {
    let mut c = [0u8; config::LEN];
    put(
        &mut c,
        config::CAPACITY,
        &(capacity_bytes / virtio::SECTOR_SIZE).to_le_bytes(),
    );
    put(&mut c, config::SIZE_MAX, &SIZE_MAX.to_le_bytes());
    put(&mut c, config::SEG_MAX, &SEG_MAX.to_le_bytes());
    put(&mut c, config::BLK_SIZE, &BLOCK_SIZE.to_le_bytes());
    put(&mut c, config::NUM_QUEUES, &num_queues.to_le_bytes());
    put(
        &mut c,
        config::MAX_DISCARD_SECTORS,
        &MAX_DISCARD_SECTORS.to_le_bytes(),
    );
    put(
        &mut c,
        config::MAX_DISCARD_SEG,
        &MAX_DISCARD_SEG.to_le_bytes(),
    );
    put(
        &mut c,
        config::DISCARD_SECTOR_ALIGNMENT,
        &DISCARD_SECTOR_ALIGNMENT.to_le_bytes(),
    );
    put(
        &mut c,
        config::MAX_WRITE_ZEROES_SECTORS,
        &MAX_WRITE_ZEROES_SECTORS.to_le_bytes(),
    );
    put(
        &mut c,
        config::MAX_WRITE_ZEROES_SEG,
        &MAX_WRITE_ZEROES_SEG.to_le_bytes(),
    );
    // WRITE_ZEROES may deallocate: both DISCARD and WRITE_ZEROES read back as zeroes.
    put(&mut c, config::WRITE_ZEROES_MAY_UNMAP, &[1]);
    c
}

/// Largest config read a frontend may ask for (the vhost-user limit).
pub const MAX_CONFIG_READ: u32 = 256;

/// Answers a GET_CONFIG for `[offset, offset + size)`: bytes past the end of
/// the space read as zero (a frontend may size its read by a newer
/// `struct virtio_blk_config`). `None` when the range is absurd.
pub fn read_config(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let end = offset.checked_add(size)?;
    if end > MAX_CONFIG_READ {
        return None;
    }
    let mut out = vec![0u8; size as usize];
    let start = (offset as usize).min(space.len());
    let stop = (end as usize).min(space.len());
    if let (Some(src), Some(dst)) = (space.get(start..stop), out.get_mut(..stop - start)) {
        dst.copy_from_slice(src);
    }
    Some(out)
}

fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = c.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(c: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(c[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn config_space_layout() {
        let c = config_space(64 << 20, 4);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (64 << 20) / 512
        );
        assert_eq!(u32_at(&c, config::SEG_MAX), SEG_MAX);
        assert_eq!(u32_at(&c, config::SIZE_MAX), SIZE_MAX);
        assert_eq!(MAX_TRANSFER, 254 * 128 * 1024);
        assert_eq!(u32_at(&c, config::BLK_SIZE), 512);
        assert_eq!(u16::from_le_bytes([c[34], c[35]]), 4);
        assert_eq!(u32_at(&c, config::MAX_DISCARD_SEG), MAX_DISCARD_SEG);
        assert_eq!(c[config::WRITE_ZEROES_MAY_UNMAP], 1);
        // A capacity that is not a whole number of sectors rounds down.
        let c = config_space(1023, 1);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1);
    }

    #[test]
    fn config_reads_pad_and_refuse_nonsense() {
        let c = config_space(4096, 2);
        let r = read_config(&c, 0, 8).unwrap();
        assert_eq!(r, 8u64.to_le_bytes());
        let r = read_config(&c, 56, 8).unwrap();
        assert_eq!(r, [1, 0, 0, 0, 0, 0, 0, 0]);
        let r = read_config(&c, 100, 4).unwrap();
        assert_eq!(r, [0; 4]);
        assert!(read_config(&c, u32::MAX, 2).is_none());
        assert!(read_config(&c, 0, 257).is_none());
        assert_eq!(read_config(&c, 0, 0).unwrap().len(), 0);
    }

    #[test]
    fn features_include_the_essentials() {
        let f = device_features(false);
        for bit in [32, 28, 29, 9, 12, 13, 14, 1, 2, 6, 30] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        // Write-through: the same, without FLUSH (bit 9).
        let wt = device_features(true);
        assert_eq!(wt, f & !(1 << 9));
        assert!(protocol_features().contains(VhostUserProtocolFeatures::BACKEND_REQ));
    }
}
