//! virtio-blk request building: turns an application request (memory
//! ranges plus VSA ranges) into device requests that respect the device's
//! limits.
//!
//! Pure logic, no device access: the output is a list of [`Part`]s, each one
//! virtio-blk request whose data descriptors are already laid out.

use vsic_abi::virtio::{
    DiscardSegment, REQ_HEADER_LEN, SECTOR_SIZE, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vsic_abi::window::{slot_base, SLOTS_PER_VSIC, WINDOW_SIZE};

use crate::dma::MemRange;
use crate::error::Error;
use crate::virtqueue::Buf;

/// A VSA as the application addresses it: the window slot of this VSIC it
/// is attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VsaHandle {
    pub slot: u32,
}

impl VsaHandle {
    pub fn new(slot: u32) -> VsaHandle {
        VsaHandle { slot }
    }

    /// Byte offset of the VSA's first byte in the function's address space.
    pub fn base(&self) -> u64 {
        slot_base(self.slot)
    }
}

/// A byte range inside a VSA; offset and length are multiples of 512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsaRange {
    pub offset: u64,
    pub len: u64,
}

impl VsaRange {
    pub fn new(offset: u64, len: u64) -> VsaRange {
        VsaRange { offset, len }
    }
}

/// One application request. Memory ranges and VSA ranges are matched in
/// order: the first bytes of memory go to the first VSA range, and so on.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Read {
        vsa: VsaHandle,
        mem: &'a [MemRange],
        ranges: &'a [VsaRange],
    },
    Write {
        vsa: VsaHandle,
        mem: &'a [MemRange],
        ranges: &'a [VsaRange],
    },
    /// Makes every write completed before it durable.
    Flush,
    Discard {
        vsa: VsaHandle,
        ranges: &'a [VsaRange],
    },
    /// `unmap` lets the device deallocate the zeroed range.
    WriteZeroes {
        vsa: VsaHandle,
        ranges: &'a [VsaRange],
        unmap: bool,
    },
}

impl<'a> Request<'a> {
    pub fn read(vsa: VsaHandle, mem: &'a [MemRange], ranges: &'a [VsaRange]) -> Request<'a> {
        Request::Read { vsa, mem, ranges }
    }

    pub fn write(vsa: VsaHandle, mem: &'a [MemRange], ranges: &'a [VsaRange]) -> Request<'a> {
        Request::Write { vsa, mem, ranges }
    }

    pub fn flush() -> Request<'static> {
        Request::Flush
    }

    pub fn discard(vsa: VsaHandle, ranges: &'a [VsaRange]) -> Request<'a> {
        Request::Discard { vsa, ranges }
    }

    pub fn write_zeroes(vsa: VsaHandle, ranges: &'a [VsaRange]) -> Request<'a> {
        Request::WriteZeroes {
            vsa,
            ranges,
            unmap: false,
        }
    }
}

/// What the device allows per request (from its features and config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Data descriptors per request.
    pub max_segments: usize,
    /// Bytes per data descriptor.
    pub max_segment_len: u32,
    /// Sectors per DISCARD segment (0 = no limit).
    pub max_discard_sectors: u32,
    /// Sectors per WRITE_ZEROES segment (0 = no limit).
    pub max_write_zeroes_sectors: u32,
}

impl Limits {
    /// Limits when the device states none, for a queue of `queue_size`.
    pub fn unlimited(queue_size: u16) -> Limits {
        Limits {
            max_segments: (queue_size as usize).saturating_sub(2).max(1),
            max_segment_len: DEFAULT_MAX_SEGMENT_LEN,
            max_discard_sectors: 0,
            max_write_zeroes_sectors: 0,
        }
    }
}

/// Cap on one descriptor's length when the device gives none (descriptor
/// lengths are 32-bit; stay well clear and sector-aligned).
pub const DEFAULT_MAX_SEGMENT_LEN: u32 = 1 << 30;

/// One virtio-blk request: header, `data` descriptors, optional inline
/// discard segment, status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub req_type: u32,
    pub sector: u64,
    pub data: Vec<Buf>,
    pub segment: Option<DiscardSegment>,
}

impl Part {
    /// Descriptors this request takes in the ring.
    pub fn descriptors(&self) -> usize {
        2 + self.data.len() + usize::from(self.segment.is_some())
    }
}

/// Encodes the 16-byte request header (type, reserved, sector).
pub fn header(req_type: u32, sector: u64) -> [u8; REQ_HEADER_LEN] {
    let mut h = [0u8; REQ_HEADER_LEN];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Splits an application request into device requests.
pub fn plan(req: &Request<'_>, limits: &Limits) -> Result<Vec<Part>, Error> {
    match *req {
        Request::Read { vsa, mem, ranges } => plan_rw(VIRTIO_BLK_T_IN, vsa, mem, ranges, limits),
        Request::Write { vsa, mem, ranges } => plan_rw(VIRTIO_BLK_T_OUT, vsa, mem, ranges, limits),
        Request::Flush => Ok(vec![Part {
            req_type: VIRTIO_BLK_T_FLUSH,
            sector: 0,
            data: Vec::new(),
            segment: None,
        }]),
        Request::Discard { vsa, ranges } => plan_segments(
            VIRTIO_BLK_T_DISCARD,
            vsa,
            ranges,
            limits.max_discard_sectors,
            0,
        ),
        Request::WriteZeroes { vsa, ranges, unmap } => plan_segments(
            VIRTIO_BLK_T_WRITE_ZEROES,
            vsa,
            ranges,
            limits.max_write_zeroes_sectors,
            if unmap { DiscardSegment::FLAG_UNMAP } else { 0 },
        ),
    }
}

/// Checks the ranges and merges those that touch; returns absolute byte
/// ranges (offset in the function's address space, length).
fn merged_ranges(vsa: VsaHandle, ranges: &[VsaRange]) -> Result<Vec<(u64, u64)>, Error> {
    if vsa.slot >= SLOTS_PER_VSIC {
        return Err(Error::InvalidArgument(format!(
            "VSA slot {} out of range (a VSIC has {SLOTS_PER_VSIC} slots)",
            vsa.slot
        )));
    }
    if ranges.is_empty() {
        return Err(Error::InvalidArgument("request has no VSA ranges".into()));
    }
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if r.len == 0 || r.offset % SECTOR_SIZE != 0 || r.len % SECTOR_SIZE != 0 {
            return Err(Error::InvalidArgument(format!(
                "VSA range {}+{} is empty or not a multiple of {SECTOR_SIZE} bytes",
                r.offset, r.len
            )));
        }
        if !matches!(r.offset.checked_add(r.len), Some(end) if end <= WINDOW_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "VSA range {}+{} runs past the {WINDOW_SIZE}-byte VSA window",
                r.offset, r.len
            )));
        }
        let start = vsa.base() + r.offset;
        match out.last_mut() {
            // Adjacent ranges become one device request: fewer requests,
            // same bytes in the same order.
            Some(last) if last.0 + last.1 == start => last.1 += r.len,
            _ => out.push((start, r.len)),
        }
    }
    Ok(out)
}

fn plan_rw(
    req_type: u32,
    vsa: VsaHandle,
    mem: &[MemRange],
    ranges: &[VsaRange],
    limits: &Limits,
) -> Result<Vec<Part>, Error> {
    let merged = merged_ranges(vsa, ranges)?;
    let vsa_total: u64 = merged.iter().map(|r| r.1).sum();
    let mem_total = mem
        .iter()
        .try_fold(0u64, |acc, m| acc.checked_add(m.len as u64));
    if mem_total != Some(vsa_total) {
        return Err(Error::InvalidArgument(format!(
            "memory ranges hold {} bytes but VSA ranges cover {vsa_total}",
            mem_total.map_or("too many".to_string(), |t| t.to_string())
        )));
    }
    let device_writes = req_type == VIRTIO_BLK_T_IN;
    let max_segments = limits.max_segments.max(1);
    let max_len = u64::from(limits.max_segment_len.max(SECTOR_SIZE as u32));

    let mut parts = Vec::new();
    // Cursor into `mem`: range index and bytes of it already used.
    let (mut mi, mut moff) = (0usize, 0u64);
    for (start, len) in merged {
        let mut part_start = start;
        let mut part_len = 0u64;
        let mut data: Vec<Buf> = Vec::new();
        let mut remaining = len;
        while remaining > 0 {
            if data.len() == max_segments {
                // Segment budget used up: end this request on a sector
                // boundary, handing the odd tail bytes to the next one.
                let tail = part_len % SECTOR_SIZE;
                if tail > 0 {
                    let last = data.last_mut().filter(|b| u64::from(b.len) > tail).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "memory ranges too fragmented: the device takes {max_segments} \
                             segments per request and they do not end on a {SECTOR_SIZE}-byte boundary"
                        ))
                    })?;
                    last.len -= tail as u32;
                    moff -= tail;
                    part_len -= tail;
                    remaining += tail;
                }
                parts.push(rw_part(req_type, part_start, std::mem::take(&mut data)));
                part_start += part_len;
                part_len = 0;
            }
            // Skip exhausted (or empty) memory ranges.
            let m = loop {
                let m = mem.get(mi).ok_or_else(|| {
                    Error::InvalidArgument("memory ranges shorter than VSA ranges".into())
                })?;
                if moff < m.len as u64 {
                    break m;
                }
                mi += 1;
                moff = 0;
            };
            let piece = remaining.min(m.len as u64 - moff).min(max_len);
            data.push(Buf {
                iova: m.iova + moff,
                len: piece as u32,
                device_writes,
            });
            moff += piece;
            part_len += piece;
            remaining -= piece;
        }
        parts.push(rw_part(req_type, part_start, data));
    }
    Ok(parts)
}

fn rw_part(req_type: u32, start: u64, data: Vec<Buf>) -> Part {
    Part {
        req_type,
        sector: start / SECTOR_SIZE,
        data,
        segment: None,
    }
}

fn plan_segments(
    req_type: u32,
    vsa: VsaHandle,
    ranges: &[VsaRange],
    max_sectors: u32,
    flags: u32,
) -> Result<Vec<Part>, Error> {
    let max = if max_sectors == 0 {
        u32::MAX
    } else {
        max_sectors
    };
    let mut parts = Vec::new();
    for (start, len) in merged_ranges(vsa, ranges)? {
        let mut sector = start / SECTOR_SIZE;
        let mut sectors = len / SECTOR_SIZE;
        while sectors > 0 {
            let n = sectors.min(u64::from(max)) as u32;
            parts.push(Part {
                req_type,
                sector: 0,
                data: Vec::new(),
                segment: Some(DiscardSegment {
                    sector,
                    num_sectors: n,
                    flags,
                }),
            });
            sector += u64::from(n);
            sectors -= u64::from(n);
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(iova: u64, len: usize) -> MemRange {
        MemRange { iova, len }
    }

    fn limits(max_segments: usize, max_segment_len: u32) -> Limits {
        Limits {
            max_segments,
            max_segment_len,
            max_discard_sectors: 0,
            max_write_zeroes_sectors: 0,
        }
    }

    const V0: VsaHandle = VsaHandle { slot: 0 };

    #[test]
    fn header_layout() {
        let h = header(VIRTIO_BLK_T_OUT, 0x0102_0304_0506_0708);
        assert_eq!(&h[0..4], &[1, 0, 0, 0]);
        assert_eq!(&h[4..8], &[0; 4]);
        assert_eq!(&h[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn simple_read_is_one_part() {
        let m = [mem(0x1000, 4096)];
        let r = [VsaRange::new(8192, 4096)];
        let parts = plan(&Request::read(V0, &m, &r), &Limits::unlimited(256)).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].req_type, VIRTIO_BLK_T_IN);
        assert_eq!(parts[0].sector, 16);
        assert_eq!(
            parts[0].data,
            vec![Buf {
                iova: 0x1000,
                len: 4096,
                device_writes: true
            }]
        );
        assert_eq!(parts[0].descriptors(), 3);
    }

    #[test]
    fn slot_selects_window() {
        let m = [mem(0x1000, 512)];
        let r = [VsaRange::new(512, 512)];
        let parts = plan(
            &Request::write(VsaHandle::new(3), &m, &r),
            &Limits::unlimited(8),
        )
        .unwrap();
        assert_eq!(parts[0].sector, (slot_base(3) + 512) / 512);
        assert!(!parts[0].data[0].device_writes);
    }

    #[test]
    fn memory_and_vsa_ranges_are_matched_in_order() {
        // 3 memory ranges (1 KiB, 3 KiB, 2 KiB) onto 2 separate VSA ranges
        // (2 KiB at 0, 4 KiB at 1 MiB): the 3 KiB range is split.
        let m = [mem(0x10000, 1024), mem(0x20000, 3072), mem(0x30000, 2048)];
        let r = [VsaRange::new(0, 2048), VsaRange::new(1 << 20, 4096)];
        let parts = plan(&Request::write(V0, &m, &r), &Limits::unlimited(64)).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].sector, 0);
        let lens = |p: &Part| p.data.iter().map(|b| (b.iova, b.len)).collect::<Vec<_>>();
        assert_eq!(lens(&parts[0]), vec![(0x10000, 1024), (0x20000, 1024)]);
        assert_eq!(parts[1].sector, (1 << 20) / 512);
        assert_eq!(lens(&parts[1]), vec![(0x20400, 2048), (0x30000, 2048)]);
    }

    #[test]
    fn adjacent_vsa_ranges_are_coalesced() {
        let m = [mem(0x10000, 8192)];
        let r = [VsaRange::new(0, 4096), VsaRange::new(4096, 4096)];
        let parts = plan(&Request::read(V0, &m, &r), &Limits::unlimited(64)).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data.len(), 1);
        // Not adjacent (reverse order): stays two requests.
        let r = [VsaRange::new(4096, 4096), VsaRange::new(0, 4096)];
        let parts = plan(&Request::read(V0, &m, &r), &Limits::unlimited(64)).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].sector, parts[1].sector), (8, 0));
    }

    #[test]
    fn segment_length_limit_splits_descriptors() {
        let m = [mem(0x10000, 10240)];
        let r = [VsaRange::new(0, 10240)];
        let parts = plan(&Request::read(V0, &m, &r), &limits(64, 4096)).unwrap();
        assert_eq!(parts.len(), 1);
        let lens: Vec<u32> = parts[0].data.iter().map(|b| b.len).collect();
        assert_eq!(lens, vec![4096, 4096, 2048]);
        assert_eq!(parts[0].data[2].iova, 0x10000 + 8192);
    }

    #[test]
    fn segment_count_limit_splits_requests_on_sector_boundaries() {
        // Six 768-byte memory ranges (4608 bytes = 9 sectors), 2 segments
        // per request: each request must end on a 512-byte boundary.
        let m: Vec<MemRange> = (0..6).map(|i| mem(0x10000 * (i + 1), 768)).collect();
        let r = [VsaRange::new(0, 4608)];
        let parts = plan(&Request::write(V0, &m, &r), &limits(2, 1 << 20)).unwrap();
        let mut sector = 0;
        let mut total = 0u64;
        let mut last_end = None;
        for p in &parts {
            assert!(p.data.len() <= 2);
            let len: u64 = p.data.iter().map(|b| u64::from(b.len)).sum();
            assert_eq!(len % 512, 0, "{p:?}");
            assert_eq!(p.sector, sector);
            sector += len / 512;
            total += len;
            // Memory is consumed contiguously with no gaps or overlaps.
            for b in &p.data {
                if let Some(end) = last_end {
                    if b.iova != end {
                        assert_eq!(b.iova % 0x10000, 0, "jumped inside a range: {b:?}");
                    }
                }
                last_end = Some(b.iova + u64::from(b.len));
            }
        }
        assert_eq!(total, 4608);
    }

    #[test]
    fn hopelessly_fragmented_memory_is_an_error_not_a_panic() {
        let m: Vec<MemRange> = (0..8).map(|i| mem(0x1000 * (i + 1), 64)).collect();
        let r = [VsaRange::new(0, 512)];
        assert!(matches!(
            plan(&Request::read(V0, &m, &r), &limits(2, 1 << 20)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn bad_requests_are_rejected() {
        let m = [mem(0x1000, 4096)];
        let lim = Limits::unlimited(256);
        let bad: Vec<Vec<VsaRange>> = vec![
            vec![],
            vec![VsaRange::new(0, 0)],
            vec![VsaRange::new(1, 4095)],
            vec![VsaRange::new(0, 4000)],
            vec![VsaRange::new(WINDOW_SIZE - 512, 4096)],
            vec![VsaRange::new(u64::MAX - 511, 4096)],
            vec![VsaRange::new(0, 2048)], // length mismatch
        ];
        for r in &bad {
            assert!(plan(&Request::read(V0, &m, r), &lim).is_err(), "{r:?}");
        }
        let r = [VsaRange::new(0, 4096)];
        assert!(plan(&Request::read(VsaHandle::new(SLOTS_PER_VSIC), &m, &r), &lim).is_err());
        let huge = [mem(0, usize::MAX), mem(0, usize::MAX)];
        assert!(plan(&Request::read(V0, &huge, &r), &lim).is_err());
        // Empty memory ranges are skipped, not fatal.
        let m = [mem(0x1000, 0), mem(0x2000, 4096)];
        assert_eq!(
            plan(&Request::read(V0, &m, &r), &lim).unwrap()[0]
                .data
                .len(),
            1
        );
    }

    #[test]
    fn discard_and_write_zeroes_respect_sector_limits() {
        let r = [VsaRange::new(0, 10 * 512), VsaRange::new(10 * 512, 2 * 512)];
        let mut lim = Limits::unlimited(256);
        lim.max_discard_sectors = 5;
        let parts = plan(&Request::discard(V0, &r), &lim).unwrap();
        let segs: Vec<(u64, u32, u32)> = parts
            .iter()
            .map(|p| {
                p.segment
                    .map(|s| (s.sector, s.num_sectors, s.flags))
                    .unwrap()
            })
            .collect();
        assert_eq!(segs, vec![(0, 5, 0), (5, 5, 0), (10, 2, 0)]);
        assert!(parts
            .iter()
            .all(|p| p.req_type == VIRTIO_BLK_T_DISCARD && p.descriptors() == 3));

        let wz = Request::WriteZeroes {
            vsa: VsaHandle::new(1),
            ranges: &r[..1],
            unmap: true,
        };
        let parts = plan(&wz, &lim).unwrap();
        let s = parts[0].segment.unwrap();
        assert_eq!(s.sector, slot_base(1) / 512);
        assert_eq!((s.num_sectors, s.flags), (10, DiscardSegment::FLAG_UNMAP));
    }
}
