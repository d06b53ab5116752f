//! Parsing virtio-blk requests (virtio 1.3, 5.2.6): what a chain's header
//! asks for, checked against the advertised limits, as a [`Request`] or a
//! [`Refusal`].
//!
//! Parsing is pure: it reads the header and the small structures it must
//! validate from guest memory (through [`Chain`]) and writes nothing.
//! Executing a request is [`super::execute`]'s job.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vsic_abi::admin::{AdminCommand, AdminCompletion, MAX_PAYLOAD};
use vsic_abi::virtio::{self, DiscardSegment, Function};

use super::chain::{Chain, Stream};
use super::config_space::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};
use super::config_space::{MAX_IO_DESCRIPTORS, MAX_TRANSFER};
use super::config_space::{MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG};

/// A well-formed request, ready to execute. Offsets are bytes in the
/// function's address space; data lives in the chain's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Data-in is the whole writable stream but the status byte.
    Read {
        offset: u64,
        len: u64,
    },
    /// Data-out is the readable stream after the header.
    Write {
        offset: u64,
        len: u64,
    },
    Flush,
    GetId,
    /// `segments` [`DiscardSegment`]s follow the header.
    Discard {
        segments: u32,
    },
    WriteZeroes {
        segments: u32,
    },
    /// The command (`command_len` bytes, 64 when well-formed) and the
    /// payload follow the header; the completion and up to
    /// `reply_capacity` payload bytes go into data-in.
    Admin {
        command_len: usize,
        payload_len: usize,
        reply_capacity: usize,
    },
}

/// Why a chain is not executed, and what the driver is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Completed with VIRTIO_BLK_S_IOERR.
    IoError(&'static str),
    /// Completed with VIRTIO_BLK_S_UNSUPP.
    Unsupported(&'static str),
    /// No status byte can be written: the chain is returned with length 0.
    NoStatus(&'static str),
}

impl Refusal {
    /// The virtio status to report, if one can be written.
    pub fn status(&self) -> Option<u8> {
        match self {
            Refusal::IoError(_) => Some(virtio::VIRTIO_BLK_S_IOERR),
            Refusal::Unsupported(_) => Some(virtio::VIRTIO_BLK_S_UNSUPP),
            Refusal::NoStatus(_) => None,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::IoError(r) | Refusal::Unsupported(r) | Refusal::NoStatus(r) => r,
        }
    }
}

/// Parses the descriptor chain `descs` of a request to `function`.
///
/// Pure: reads guest memory, writes nothing, never panics. `chain` is
/// scratch space that afterwards describes the chain's streams.
pub fn parse_chain<M: GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    function: Function,
    chain: &mut Chain,
) -> Result<Request, Refusal> {
    chain.gather(mem, descs);
    parse_gathered(mem, function, chain)
}

/// Parses a chain [`Chain::gather`] already walked (see [`parse_chain`]).
pub fn parse_gathered<M: GuestMemoryBackend>(
    mem: &M,
    function: Function,
    chain: &Chain,
) -> Result<Request, Refusal> {
    if chain.status_addr().is_none() {
        return Err(Refusal::NoStatus(
            chain.defect().unwrap_or("no device-writable status byte"),
        ));
    }
    if let Some(defect) = chain.defect() {
        return Err(Refusal::IoError(defect));
    }
    if chain.oversized() {
        return Err(Refusal::IoError(
            "request larger than the maximum transfer (seg_max x size_max)",
        ));
    }
    let mut header = [0u8; virtio::REQ_HEADER_LEN];
    if !chain.read(mem, Stream::Readable, 0, &mut header) {
        return Err(Refusal::IoError("request header missing"));
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let data_out = chain.len(Stream::Readable) - virtio::REQ_HEADER_LEN as u64;
    let data_in = chain.data_in_len();
    let is_pf = function == Function::Pf;

    match kind {
        virtio::VIRTIO_BLK_T_IN | virtio::VIRTIO_BLK_T_OUT => {
            let read = kind == virtio::VIRTIO_BLK_T_IN;
            let (len, stray) = if read {
                (data_in, data_out)
            } else {
                (data_out, data_in)
            };
            if stray != 0 {
                return Err(Refusal::IoError("data buffer in the wrong direction"));
            }
            // The advertised limits come first: a request beyond them is
            // refused before any of its data is looked at or charged.
            if chain.descriptors() > MAX_IO_DESCRIPTORS {
                return Err(Refusal::IoError("more data segments than seg_max"));
            }
            if len > MAX_TRANSFER {
                return Err(Refusal::IoError(
                    "request larger than the maximum transfer (seg_max x size_max)",
                ));
            }
            #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than rust-version
            if len % virtio::SECTOR_SIZE != 0 {
                return Err(Refusal::IoError("data length is not a multiple of 512"));
            }
            if is_pf {
                return Err(Refusal::IoError("the PF has no storage"));
            }
            let offset = sector
                .checked_mul(virtio::SECTOR_SIZE)
                .filter(|off| off.checked_add(len).is_some())
                .ok_or(Refusal::IoError("sector out of range"))?;
            Ok(if read {
                Request::Read { offset, len }
            } else {
                Request::Write { offset, len }
            })
        }
        virtio::VIRTIO_BLK_T_FLUSH => {
            if data_out != 0 || data_in != 0 {
                return Err(Refusal::IoError("FLUSH carries data"));
            }
            Ok(Request::Flush)
        }
        virtio::VIRTIO_BLK_T_GET_ID => {
            if data_out != 0 {
                return Err(Refusal::IoError("GET_ID carries driver data"));
            }
            if data_in == 0 {
                return Err(Refusal::IoError("GET_ID without a buffer"));
            }
            Ok(Request::GetId)
        }
        virtio::VIRTIO_BLK_T_DISCARD | virtio::VIRTIO_BLK_T_WRITE_ZEROES => {
            let zero = kind == virtio::VIRTIO_BLK_T_WRITE_ZEROES;
            let max_seg = if zero {
                MAX_WRITE_ZEROES_SEG
            } else {
                MAX_DISCARD_SEG
            };
            if data_in != 0 {
                return Err(Refusal::IoError("data buffer in the wrong direction"));
            }
            #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than rust-version
            if data_out == 0 || data_out % DiscardSegment::LEN as u64 != 0 {
                return Err(Refusal::IoError(
                    "segment list length is not a multiple of 16",
                ));
            }
            let segments = data_out / DiscardSegment::LEN as u64;
            if segments > u64::from(max_seg) {
                return Err(Refusal::IoError("too many segments"));
            }
            if is_pf {
                return Err(Refusal::IoError("the PF has no storage"));
            }
            for i in 0..segments {
                let seg =
                    read_segment(mem, chain, i).ok_or(Refusal::IoError("segment unreadable"))?;
                check_segment(&seg, zero)?;
            }
            let segments = segments as u32; // at most max_seg
            Ok(if zero {
                Request::WriteZeroes { segments }
            } else {
                Request::Discard { segments }
            })
        }
        virtio::VIRTIO_BLK_T_VSIC_ADMIN => {
            if !is_pf {
                return Err(Refusal::Unsupported("admin command on a VSIC"));
            }
            let command_len = data_out.min(AdminCommand::LEN as u64) as usize;
            let payload_len = data_out - command_len as u64;
            if payload_len > MAX_PAYLOAD as u64 {
                return Err(Refusal::IoError("admin payload larger than 1 MiB"));
            }
            if data_in < AdminCompletion::LEN as u64 {
                return Err(Refusal::IoError("no room for the admin completion"));
            }
            let reply_capacity = (data_in - AdminCompletion::LEN as u64).min(MAX_PAYLOAD as u64);
            Ok(Request::Admin {
                command_len,
                payload_len: payload_len as usize,
                reply_capacity: reply_capacity as usize,
            })
        }
        _ => Err(Refusal::Unsupported("unknown request type")),
    }
}

/// Reads DISCARD / WRITE_ZEROES segment `index` from the chain.
pub fn read_segment<M: GuestMemoryBackend>(
    mem: &M,
    chain: &Chain,
    index: u64,
) -> Option<DiscardSegment> {
    let mut raw = [0u8; DiscardSegment::LEN];
    let offset = (virtio::REQ_HEADER_LEN as u64)
        .checked_add(index.checked_mul(DiscardSegment::LEN as u64)?)?;
    if !chain.read(mem, Stream::Readable, offset, &mut raw) {
        return None;
    }
    DiscardSegment::decode(&raw).ok()
}

/// Checks one segment against the spec and the advertised limits; returns
/// its byte range.
pub fn check_segment(seg: &DiscardSegment, zero: bool) -> Result<(u64, u64), Refusal> {
    let known = if zero { DiscardSegment::FLAG_UNMAP } else { 0 };
    if seg.flags & !known != 0 {
        // Unknown flags, or UNMAP on a DISCARD (virtio 1.3, 5.2.6.2).
        return Err(Refusal::Unsupported("segment flags not supported"));
    }
    let max = if zero {
        MAX_WRITE_ZEROES_SECTORS
    } else {
        MAX_DISCARD_SECTORS
    };
    if seg.num_sectors > max {
        return Err(Refusal::IoError(
            "segment larger than the advertised maximum",
        ));
    }
    let offset = seg.sector.checked_mul(virtio::SECTOR_SIZE);
    let len = u64::from(seg.num_sectors) * virtio::SECTOR_SIZE;
    match offset {
        Some(off) if off.checked_add(len).is_some() => Ok((off, len)),
        _ => Err(Refusal::IoError("segment sector out of range")),
    }
}

/// Fuzzing entry point: parses a chain described by arbitrary bytes.
///
/// Layout: byte 0 picks the function (even = PF, odd = VSIC 0), byte 1 the
/// number of descriptors (at most 64), then 14 bytes per descriptor
/// (address u64, length u32, flags u16; bit 1 of flags = device-writable,
/// bit 2 = indirect is ignored), then the first 64 KiB of guest memory.
/// Guest memory spans addresses 0..64 KiB; other addresses are outside it.
pub fn parse_bytes(data: &[u8]) -> Option<Result<Request, Refusal>> {
    use vm_memory::GuestMemoryMmap;
    const MEM_SIZE: usize = 64 << 10;
    const DESC_LEN: usize = 14;
    let (&selector, rest) = data.split_first()?;
    let (&count, rest) = rest.split_first()?;
    let count = usize::from(count).min(64);
    let table = rest.get(..count * DESC_LEN)?;
    let image = rest.get(count * DESC_LEN..).unwrap_or(&[]);
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let take = image.len().min(MEM_SIZE);
    mem.write_slice(image.get(..take)?, GuestAddress(0)).ok()?;
    let descs = table.chunks_exact(DESC_LEN).map(|d| {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&d[0..8]);
        let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        let flags = u16::from_le_bytes([d[12], d[13]]) & 2;
        Descriptor::new(u64::from_le_bytes(addr), len, flags, 0)
    });
    let function = if selector % 2 == 0 {
        Function::Pf
    } else {
        Function::Vsic(0)
    };
    let mut chain = Chain::new();
    Some(parse_chain(&mem, descs, function, &mut chain))
}
