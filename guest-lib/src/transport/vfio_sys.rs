//! The parts of the Linux VFIO interface (`linux/vfio.h`) the transport
//! uses, wrapped in owned handles: a type1 IOMMU container, a group, and a
//! device with its regions and interrupts.
//!
//! Only `repr(C)` copies of the kernel structures and ioctl numbers live
//! here; policy (which BARs, which vectors) is the transport's.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::error::Error;

// ioctl numbers: _IO(';', 100 + n).
const fn vfio_io(nr: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + nr)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

pub const REGION_FLAG_READ: u32 = 1;
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
pub const REGION_FLAG_MMAP: u32 = 1 << 2;

const IRQ_SET_DATA_NONE: u32 = 1;
const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

const DMA_MAP_FLAG_READ: u32 = 1;
const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// Region index of PCI configuration space (after six BARs and the ROM).
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
/// Interrupt index of MSI-X.
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionInfo {
    argsz: u32,
    pub flags: u32,
    pub index: u32,
    cap_offset: u32,
    pub size: u64,
    /// Where the region starts in the device fd's file offsets.
    pub offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

#[repr(C)]
struct IrqSetHeader {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Runs an ioctl whose argument is a value or a pointer; returns its
/// non-negative result.
///
/// # Safety
/// `arg` must be what the ioctl `req` expects on `fd`.
unsafe fn ioctl(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the caller guarantees that `arg` is what `req` expects.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_rw(path: &str) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// A VFIO container with the type1 (v2) IOMMU: the address space that DMA
/// mappings go into.
pub struct Container {
    file: File,
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks API version and type1v2 support.
    pub fn open() -> Result<Container, Error> {
        let file = open_rw("/dev/vfio/vfio").map_err(|e| Error::Connect {
            path: "/dev/vfio/vfio".into(),
            reason: format!("{e} (is the vfio module loaded?)"),
        })?;
        let fd = file.as_raw_fd();
        // SAFETY: these ioctls take no argument.
        let version = unsafe { ioctl(fd, VFIO_GET_API_VERSION, 0) }
            .map_err(|e| Error::system("VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(Error::transport(
                "VFIO_GET_API_VERSION",
                format!("kernel speaks VFIO API {version}, expected {VFIO_API_VERSION}"),
            ));
        }
        // SAFETY: the argument is an extension number.
        let has = unsafe { ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU as _) }
            .map_err(|e| Error::system("VFIO_CHECK_EXTENSION", e))?;
        if has == 0 {
            return Err(Error::transport(
                "VFIO_CHECK_EXTENSION",
                "no type1v2 IOMMU (load vfio_iommu_type1; boot with intel_iommu=on)",
            ));
        }
        Ok(Container { file })
    }

    /// Selects the type1v2 IOMMU; needs a group attached first.
    pub fn set_iommu(&self) -> Result<(), Error> {
        // SAFETY: the argument is an IOMMU type number.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_SET_IOMMU,
                VFIO_TYPE1V2_IOMMU as _,
            )
        }
        .map_err(|e| Error::system("VFIO_SET_IOMMU", e))?;
        Ok(())
    }

    /// Maps `[vaddr, vaddr + size)` of this process at `iova`, readable and
    /// writable by the device. Pins the pages.
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> Result<(), Error> {
        let map = DmaMap {
            argsz: argsz::<DmaMap>(),
            flags: DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: a valid vfio_iommu_type1_dma_map that outlives the call.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_IOMMU_MAP_DMA,
                &map as *const _ as _,
            )
        }
        .map_err(|e| {
            Error::transport(
                "VFIO_IOMMU_MAP_DMA",
                format!(
                    "{size:#x} bytes at IOVA {iova:#x}: {e}{}",
                    if e.raw_os_error() == Some(libc::ENOMEM) {
                        " (RLIMIT_MEMLOCK too low?)"
                    } else {
                        ""
                    }
                ),
            )
        })?;
        Ok(())
    }

    /// Removes the mapping at `[iova, iova + size)`.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), Error> {
        let unmap = DmaUnmap {
            argsz: argsz::<DmaUnmap>(),
            flags: 0,
            iova,
            size,
        };
        // SAFETY: a valid vfio_iommu_type1_dma_unmap that outlives the call.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_IOMMU_UNMAP_DMA,
                &unmap as *const _ as _,
            )
        }
        .map_err(|e| Error::system("VFIO_IOMMU_UNMAP_DMA", e))?;
        Ok(())
    }
}

/// An IOMMU group, attached to a container.
pub struct Group {
    file: File,
    number: u32,
}

impl Group {
    /// Opens `/dev/vfio/NUMBER`, checks that it is viable (every device in
    /// it bound to vfio-pci or no driver) and attaches it to `container`.
    pub fn open(number: u32, container: &Container) -> Result<Group, Error> {
        let path = format!("/dev/vfio/{number}");
        let file = open_rw(&path).map_err(|e| Error::Connect {
            path: path.clone(),
            reason: match e.raw_os_error() {
                Some(libc::EBUSY) => "the group is in use by another process".into(),
                Some(libc::ENOENT) => {
                    "no such VFIO group (is the function bound to vfio-pci?)".into()
                }
                Some(libc::EACCES) => format!("{e} (the control plane grants access to the group)"),
                _ => e.to_string(),
            },
        })?;
        let mut status = GroupStatus {
            argsz: argsz::<GroupStatus>(),
            flags: 0,
        };
        // SAFETY: a valid vfio_group_status the kernel fills in.
        unsafe {
            ioctl(
                file.as_raw_fd(),
                VFIO_GROUP_GET_STATUS,
                &mut status as *mut _ as _,
            )
        }
        .map_err(|e| Error::system("VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Connect {
                path,
                reason: "group not viable: another device in it is bound to a host driver".into(),
            });
        }
        let container_fd: RawFd = container.file.as_raw_fd();
        // SAFETY: the argument points to the container fd.
        unsafe {
            ioctl(
                file.as_raw_fd(),
                VFIO_GROUP_SET_CONTAINER,
                &container_fd as *const _ as _,
            )
        }
        .map_err(|e| Error::system("VFIO_GROUP_SET_CONTAINER", e))?;
        Ok(Group { file, number })
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Opens the device named `pci_address` in this group.
    pub fn device(&self, pci_address: &str) -> Result<VfioDevice, Error> {
        let name = CString::new(pci_address)
            .map_err(|_| Error::BadSpec(format!("{pci_address:?} is not a device name")))?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let fd = unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD,
                name.as_ptr() as _,
            )
        }
        .map_err(|e| Error::Connect {
            path: pci_address.to_string(),
            reason: format!("VFIO_GROUP_GET_DEVICE_FD: {e}"),
        })?;
        // SAFETY: the ioctl returned a fresh fd that we own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(VfioDevice { file })
    }
}

/// An opened VFIO device: regions to read, write and map, interrupts to
/// route to eventfds.
pub struct VfioDevice {
    file: File,
}

impl VfioDevice {
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn region_info(&self, index: u32) -> Result<RegionInfo, Error> {
        let mut info = RegionInfo {
            argsz: argsz::<RegionInfo>(),
            index,
            ..RegionInfo::default()
        };
        // SAFETY: a valid vfio_region_info the kernel fills in; argsz says
        // there is no room for capabilities, which the kernel respects.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_DEVICE_GET_REGION_INFO,
                &mut info as *mut _ as _,
            )
        }
        .map_err(|e| Error::system("VFIO_DEVICE_GET_REGION_INFO", e))?;
        Ok(info)
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the device fd.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset` of the device fd.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// How many interrupts of kind `index` the device has.
    pub fn irq_count(&self, index: u32) -> Result<u32, Error> {
        let mut info = IrqInfo {
            argsz: argsz::<IrqInfo>(),
            index,
            ..IrqInfo::default()
        };
        // SAFETY: a valid vfio_irq_info the kernel fills in.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_DEVICE_GET_IRQ_INFO,
                &mut info as *mut _ as _,
            )
        }
        .map_err(|e| Error::system("VFIO_DEVICE_GET_IRQ_INFO", e))?;
        Ok(info.count)
    }

    /// Routes interrupts `0..fds.len()` of kind `index` to the eventfds
    /// (enabling MSI-X for that many vectors); an empty slice disables them.
    pub fn set_irq_eventfds(&self, index: u32, fds: &[RawFd]) -> Result<(), Error> {
        let header = std::mem::size_of::<IrqSetHeader>();
        let mut buf = vec![0u8; header + std::mem::size_of_val(fds)];
        let head = IrqSetHeader {
            argsz: buf.len() as u32,
            flags: IRQ_SET_ACTION_TRIGGER
                | if fds.is_empty() {
                    IRQ_SET_DATA_NONE
                } else {
                    IRQ_SET_DATA_EVENTFD
                },
            index,
            start: 0,
            count: fds.len() as u32,
        };
        // SAFETY: buf holds at least a header; the struct is plain data.
        unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast::<IrqSetHeader>(), head) };
        for (slot, fd) in buf[header..].chunks_exact_mut(4).zip(fds) {
            slot.copy_from_slice(&fd.to_ne_bytes());
        }
        // SAFETY: buf is a vfio_irq_set followed by `count` s32 eventfds.
        unsafe {
            ioctl(
                self.file.as_raw_fd(),
                VFIO_DEVICE_SET_IRQS,
                buf.as_ptr() as _,
            )
        }
        .map_err(|e| Error::system("VFIO_DEVICE_SET_IRQS", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // Values of the _IO(';', ...) macros in linux/vfio.h.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<IrqSetHeader>(), 20);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }
}
