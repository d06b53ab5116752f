//! Register access for virtio-pci modern functions: a BAR reached through
//! VFIO (mapped, or through the device fd when mapping is not allowed),
//! windows onto it, and the layout of the common configuration structure
//! (virtio 1.x, 4.1.4.3).

use std::ptr::NonNull;
use std::sync::Arc;

use super::vfio_sys::{self, VfioDevice};
use crate::error::Error;
use crate::mapping::map_rw;

/// Offsets in `struct virtio_pci_common_cfg`.
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0;
    pub const DEVICE_FEATURE: u64 = 4;
    pub const DRIVER_FEATURE_SELECT: u64 = 8;
    pub const DRIVER_FEATURE: u64 = 12;
    pub const CONFIG_MSIX_VECTOR: u64 = 16;
    pub const NUM_QUEUES: u64 = 18;
    pub const DEVICE_STATUS: u64 = 20;
    pub const CONFIG_GENERATION: u64 = 21;
    pub const QUEUE_SELECT: u64 = 22;
    pub const QUEUE_SIZE: u64 = 24;
    pub const QUEUE_MSIX_VECTOR: u64 = 26;
    pub const QUEUE_ENABLE: u64 = 28;
    pub const QUEUE_NOTIFY_OFF: u64 = 30;
    pub const QUEUE_DESC: u64 = 32;
    pub const QUEUE_DRIVER: u64 = 40;
    pub const QUEUE_DEVICE: u64 = 48;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// How one BAR is reached.
enum Access {
    /// Mapped into this process: plain volatile loads and stores.
    Mapped { ptr: NonNull<u8> },
    /// Through pread/pwrite on the device fd at `offset`.
    File { offset: u64 },
}

/// One BAR of a VFIO device.
pub struct Bar {
    index: u32,
    len: u64,
    access: Access,
    device: Arc<VfioDevice>,
}

// SAFETY: MMIO through a raw pointer; every access is a single volatile
// load or store, which the device serialises.
unsafe impl Send for Bar {}
// SAFETY: as for Send.
unsafe impl Sync for Bar {}

impl Bar {
    /// Opens BAR `index`: mapped when VFIO allows it (and `try_mmap`),
    /// otherwise through the device fd.
    pub fn open(device: &Arc<VfioDevice>, index: u32, try_mmap: bool) -> Result<Bar, Error> {
        let info = device.region_info(index)?;
        let rw = vfio_sys::REGION_FLAG_READ | vfio_sys::REGION_FLAG_WRITE;
        if info.size == 0 || info.flags & rw != rw {
            return Err(Error::transport(
                "opening a BAR",
                format!("BAR {index} is not a readable and writable region"),
            ));
        }
        let mut access = Access::File {
            offset: info.offset,
        };
        if try_mmap && info.flags & vfio_sys::REGION_FLAG_MMAP != 0 {
            match map_region(device, info.offset, info.size) {
                Ok(ptr) => access = Access::Mapped { ptr },
                Err(e) => log::debug!("BAR {index}: mmap refused ({e}); using read/write"),
            }
        }
        Ok(Bar {
            index,
            len: info.size,
            access,
            device: Arc::clone(device),
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.access, Access::Mapped { .. })
    }

    /// Reads `N` bytes at `at` with one access of that width.
    fn read<const N: usize>(&self, at: u64) -> Result<[u8; N], Error> {
        check_access(at, N, self.len)?;
        let mut b = [0u8; N];
        match self.access {
            // SAFETY: in bounds and naturally aligned (checked); MMIO wants
            // exactly one access of the register's width.
            Access::Mapped { ptr } => unsafe {
                let p = ptr.as_ptr().add(at as usize);
                match N {
                    1 => b[0] = std::ptr::read_volatile(p),
                    2 => b.copy_from_slice(&std::ptr::read_volatile(p.cast::<u16>()).to_ne_bytes()),
                    4 => b.copy_from_slice(&std::ptr::read_volatile(p.cast::<u32>()).to_ne_bytes()),
                    _ => unreachable!("register widths are 1, 2 or 4"),
                }
            },
            Access::File { offset } => self
                .device
                .read_at(&mut b, offset + at)
                .map_err(|e| Error::system("reading a device register", e))?,
        }
        Ok(b)
    }

    fn write<const N: usize>(&self, at: u64, b: [u8; N]) -> Result<(), Error> {
        check_access(at, N, self.len)?;
        match self.access {
            // SAFETY: as in read.
            Access::Mapped { ptr } => unsafe {
                let p = ptr.as_ptr().add(at as usize);
                match N {
                    1 => std::ptr::write_volatile(p, b[0]),
                    2 => {
                        std::ptr::write_volatile(p.cast::<u16>(), u16::from_ne_bytes([b[0], b[1]]))
                    }
                    4 => std::ptr::write_volatile(
                        p.cast::<u32>(),
                        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    ),
                    _ => unreachable!("register widths are 1, 2 or 4"),
                }
            },
            Access::File { offset } => self
                .device
                .write_at(&b, offset + at)
                .map_err(|e| Error::system("writing a device register", e))?,
        }
        Ok(())
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Access::Mapped { ptr } = self.access {
            // SAFETY: the mapping made in open, of len bytes.
            unsafe { libc::munmap(ptr.as_ptr().cast(), self.len as usize) };
        }
    }
}

fn map_region(device: &VfioDevice, offset: u64, size: u64) -> std::io::Result<NonNull<u8>> {
    let len = usize::try_from(size).map_err(|_| std::io::Error::other("BAR too large"))?;
    let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("bad offset"))?;
    map_rw(len, libc::MAP_SHARED, device.raw_fd(), off)
}

/// An access of `width` bytes at `at` must be inside `len` and naturally
/// aligned (MMIO registers are accessed at their own width).
fn check_access(at: u64, width: usize, len: u64) -> Result<(), Error> {
    let w = width as u64;
    let fits = at % w == 0 && at.checked_add(w).is_some_and(|end| end <= len);
    if !fits {
        return Err(Error::transport(
            "device register access",
            format!("{width}-byte access at {at:#x} outside or misaligned in a {len:#x}-byte area"),
        ));
    }
    Ok(())
}

/// A window `[base, base + len)` of a BAR: one virtio structure.
#[derive(Clone)]
pub struct Window {
    bar: Arc<Bar>,
    base: u64,
    len: u64,
}

impl Window {
    /// The window, if it fits in the BAR.
    pub fn new(bar: Arc<Bar>, base: u64, len: u64) -> Result<Window, Error> {
        let fits = base.checked_add(len).is_some_and(|end| end <= bar.len());
        if !fits {
            return Err(Error::transport(
                "virtio capabilities",
                format!(
                    "structure at {base:#x}+{len:#x} does not fit BAR {} ({:#x} bytes)",
                    bar.index(),
                    bar.len()
                ),
            ));
        }
        Ok(Window { bar, base, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether accesses go straight to a mapping (no system call).
    pub fn is_mapped(&self) -> bool {
        self.bar.is_mapped()
    }

    fn at(&self, off: u64, width: usize) -> Result<u64, Error> {
        check_access(off, width, self.len)?;
        Ok(self.base + off)
    }

    pub fn read8(&self, off: u64) -> Result<u8, Error> {
        Ok(self.bar.read::<1>(self.at(off, 1)?)?[0])
    }

    pub fn read16(&self, off: u64) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.bar.read::<2>(self.at(off, 2)?)?))
    }

    pub fn read32(&self, off: u64) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bar.read::<4>(self.at(off, 4)?)?))
    }

    pub fn write8(&self, off: u64, v: u8) -> Result<(), Error> {
        self.bar.write::<1>(self.at(off, 1)?, [v])
    }

    pub fn write16(&self, off: u64, v: u16) -> Result<(), Error> {
        self.bar.write::<2>(self.at(off, 2)?, v.to_le_bytes())
    }

    pub fn write32(&self, off: u64, v: u32) -> Result<(), Error> {
        self.bar.write::<4>(self.at(off, 4)?, v.to_le_bytes())
    }

    /// A 64-bit register written as two 32-bit halves, low first (the
    /// common configuration allows 32-bit accesses only).
    pub fn write64(&self, off: u64, v: u64) -> Result<(), Error> {
        self.write32(off, v as u32)?;
        self.write32(off + 4, (v >> 32) as u32)
    }

    /// Reads `buf.len()` bytes at `off` with the widest aligned accesses
    /// that fit (device configuration fields are read at their width).
    pub fn read_bytes(&self, off: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = off + pos as u64;
            let left = buf.len() - pos;
            let n = if at % 4 == 0 && left >= 4 {
                buf[pos..pos + 4].copy_from_slice(&self.read32(at)?.to_le_bytes());
                4
            } else if at % 2 == 0 && left >= 2 {
                buf[pos..pos + 2].copy_from_slice(&self.read16(at)?.to_le_bytes());
                2
            } else {
                buf[pos] = self.read8(at)?;
                1
            };
            pos += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_must_be_aligned_and_inside() {
        assert!(check_access(0, 4, 4).is_ok());
        assert!(check_access(4, 4, 4).is_err());
        assert!(check_access(2, 4, 8).is_err());
        assert!(check_access(3, 1, 4).is_ok());
        assert!(check_access(u64::MAX - 1, 2, u64::MAX).is_err());
    }

    #[test]
    fn common_cfg_layout_matches_the_spec() {
        // struct virtio_pci_common_cfg is 56 bytes up to queue_device.
        assert_eq!(
            common::QUEUE_DEVICE + 8,
            super::super::pci::COMMON_CFG_MIN_LEN as u64
        );
        assert_eq!(common::DEVICE_STATUS, 20);
        assert_eq!(common::QUEUE_NOTIFY_OFF, 30);
    }
}
