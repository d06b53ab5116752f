//! The control-plane service's view of this guest: VSIC owners from the
//! VFIO group nodes, admin commands on the PF (opened per request, under
//! the control-plane lock, so the command-line tool can use it in
//! between), and pinned huge pages with their guest-physical addresses.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use vsic::admin::{AdminClient, AdminError};
use vsic::hugepage::{physical_addresses, HUGE_PAGE_SIZE};
use vsic_abi::admin::{DmaMode, FLAG_DMA_READ, FLAG_DMA_WRITE};
use vsic_abi::virtio::Function;
use vsic_abi::AdminStatus;
use vsic_abi::CapToken;
use vsicctl::control::service::{check_owner, page_runs, Authority};
use vsicctl::control::Refusal;

use crate::failure::Failure;
use crate::functions::{Functions, VFIO_DRIVER};

pub struct GuestAuthority {
    funcs: Functions,
    /// Serialises this process's own requests; the lock file serialises
    /// processes.
    pf: Mutex<()>,
}

impl GuestAuthority {
    pub fn new(funcs: Functions) -> GuestAuthority {
        GuestAuthority {
            funcs,
            pf: Mutex::new(()),
        }
    }

    /// Runs `f` on the PF for `uid`, who must own VSIC `vsic` while the
    /// lock is held: `vsicctl vsic bind` hands VSICs over under it, so a
    /// request checked before a handover cannot land after it.
    fn with_pf<T>(
        &self,
        uid: u32,
        vsic: u32,
        f: impl FnOnce(&AdminClient) -> Result<T, AdminError>,
    ) -> Result<T, Refusal> {
        let _one_at_a_time = self.pf.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = crate::pf::tenant_lock("opening the PF").map_err(failure_refusal)?;
        check_owner(self, uid, vsic)?;
        let client = crate::pf::open_in_guest(&self.funcs).map_err(failure_refusal)?;
        f(&client).map_err(admin_refusal)
    }
}

fn failure_refusal(f: Failure) -> Refusal {
    Refusal::new(f.status_name(), format!("{}: {}", f.context, f.message()))
}

fn admin_refusal(e: AdminError) -> Refusal {
    match e {
        AdminError::Device(s) => Refusal::new(s.name(), s.message()),
        other => Refusal::new("device", other.to_string()),
    }
}

impl Authority for GuestAuthority {
    fn vsic_owner(&self, vsic: u32) -> Result<u32, Refusal> {
        let addr =
            self.funcs
                .locate_known(Function::Vsic(vsic))
                .ok_or_else(|| {
                    Refusal::new(
                "no-such-vsic",
                format!("VSIC {vsic} is not known here (not handed out with `vsicctl vsic bind`)"),
            )
                })?;
        if self.funcs.driver(&addr).as_deref() != Some(VFIO_DRIVER) {
            return Err(Refusal::new(
                "not-vfio",
                format!("VSIC {vsic} ({addr}) is not handed to an application through VFIO"),
            ));
        }
        self.funcs
            .vfio_owner(&addr)
            .map_err(|e| Refusal::new("not-vfio", format!("VSIC {vsic}: {e}")))
    }

    fn owns_a_vsic(&self, uid: u32) -> bool {
        self.funcs.scan().iter().any(|s| {
            matches!(s.function, Some((Function::Vsic(_), _)))
                && s.driver.as_deref() == Some(VFIO_DRIVER)
                && s.vfio_owner == Some(uid)
        })
    }

    fn attach(
        &self,
        uid: u32,
        vsic: u32,
        slot: u32,
        token: &CapToken,
        read_only: bool,
    ) -> Result<(), Refusal> {
        self.with_pf(uid, vsic, |pf| pf.attach(vsic, slot, token, read_only))
    }

    fn detach(&self, uid: u32, vsic: u32, slot: u32) -> Result<(), Refusal> {
        self.with_pf(uid, vsic, |pf| pf.detach(vsic, slot))
    }

    fn dma_memory(&self, bytes: u64) -> Result<(OwnedFd, u64, Vec<u64>), Refusal> {
        let (fd, gpas) =
            pinned_huge_pages(bytes).map_err(|e| Refusal::new("dma", e.to_string()))?;
        Ok((fd, HUGE_PAGE_SIZE as u64, gpas))
    }

    fn dma_addresses(&self, memory: &OwnedFd, max_bytes: u64) -> Result<Vec<u64>, Refusal> {
        huge_page_addresses(memory, max_bytes).map_err(|e| Refusal::new("dma", e.to_string()))
    }

    /// Adds each page not yet inside one of a VSIC's windows, coalesced
    /// into runs, to every VSIC `uid` owns (root's VSICs are in open mode).
    /// A page size of 0 means the service's huge pages.
    fn grant_dma(&self, uid: u32, page_size: u64, gpas: &[u64]) -> Result<(), Refusal> {
        if uid == 0 {
            return Ok(());
        }
        let page = if page_size == 0 {
            HUGE_PAGE_SIZE as u64
        } else {
            page_size
        };
        let vsics: Vec<u32> = self
            .funcs
            .scan()
            .iter()
            .filter(|s| s.driver.as_deref() == Some(VFIO_DRIVER) && s.vfio_owner == Some(uid))
            .filter_map(|s| match s.function {
                Some((Function::Vsic(n), _)) => Some(n),
                _ => None,
            })
            .collect();
        for n in vsics {
            self.with_pf(uid, n, |pf| add_uncovered(pf, n, page, gpas).map(drop))?;
        }
        Ok(())
    }

    fn register_dma(&self, vsic: u32, gpas: &[u64]) -> Result<Vec<(u64, u64)>, Refusal> {
        self.with_pf(0, vsic, |pf| {
            let (mode, _) = pf.dma_windows(vsic)?;
            if mode == DmaMode::Open {
                return Ok(Vec::new());
            }
            add_uncovered(pf, vsic, HUGE_PAGE_SIZE as u64, gpas)
        })
    }

    /// Not through `with_pf`: the VSIC may have left VFIO meanwhile (its
    /// windows went with it then), and nobody owns it any more.
    fn unregister_dma(
        &self,
        vsic: u32,
        windows: &[(u64, u64)],
    ) -> Result<Vec<(u64, u64)>, Refusal> {
        let _one_at_a_time = self.pf.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = crate::pf::tenant_lock("opening the PF").map_err(failure_refusal)?;
        let pf = crate::pf::open_in_guest(&self.funcs).map_err(failure_refusal)?;
        let mut removed = Vec::new();
        for &(start, len) in windows {
            match pf.dma_window_remove(vsic, start, len) {
                Ok(_) => removed.push((start, len)),
                Err(AdminError::Device(AdminStatus::NoSuchWindow)) => {}
                Err(e) => return Err(admin_refusal(e)),
            }
        }
        Ok(removed)
    }
}

/// Adds a read+write window to VSIC `n` for each run of the pages at
/// `gpas` (each `page` long) that none of its windows holds yet; returns
/// the windows added.
fn add_uncovered(
    pf: &AdminClient,
    n: u32,
    page: u64,
    gpas: &[u64],
) -> Result<Vec<(u64, u64)>, AdminError> {
    let (_, windows) = pf.dma_windows(n)?;
    let uncovered: Vec<u64> = gpas
        .iter()
        .copied()
        .filter(|&g| {
            !windows
                .iter()
                .any(|w| w.start <= g && g + page <= w.start + w.len)
        })
        .collect();
    let runs = page_runs(page, &uncovered);
    for &(start, len) in &runs {
        pf.dma_window_add(n, start, len, FLAG_DMA_READ | FLAG_DMA_WRITE)?;
    }
    Ok(runs)
}

/// Why DMA memory could not be handed out or located. The message goes to
/// the application in the service's refusal.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("fstatfs: {0}")]
    Fstatfs(#[source] std::io::Error),
    #[error("the descriptor is not a huge-page file")]
    NotHugePages,
    #[error("dup of the memory file: {0}")]
    Dup(#[source] std::io::Error),
    #[error("fstat: {0}")]
    Fstat(#[source] std::io::Error),
    #[error("a huge-page file of {len} bytes is not DMA memory this service hands out (at most {max_bytes} bytes)")]
    BadSize { len: u64, max_bytes: u64 },
    #[error("{pages} huge pages: {source} (reserve more in /proc/sys/vm/nr_hugepages)")]
    Map {
        pages: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Addresses(#[source] vsic::Error),
    #[error("{0} bytes of DMA memory cannot be allocated")]
    TooLarge(u64),
    #[error("memfd_create of huge pages: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the huge page file: {0}")]
    Size(#[source] std::io::Error),
}

/// Where the pages of a huge-page file an application sent back are now,
/// in file order. Only hugetlbfs files of at most `max_bytes` (the most
/// the service hands out) are looked at.
pub fn huge_page_addresses(memory: &OwnedFd, max_bytes: u64) -> Result<Vec<u64>, DmaError> {
    const HUGETLBFS_MAGIC: libc::c_long = 0x9584_58f6;
    // SAFETY: statfs is plain C data, for which all-zero bytes are valid.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the struct it is given for a valid descriptor
    // (`memory` is open for the whole call).
    if unsafe { libc::fstatfs(memory.as_raw_fd(), &mut fs) } < 0 {
        return Err(DmaError::Fstatfs(std::io::Error::last_os_error()));
    }
    if fs.f_type as libc::c_long != HUGETLBFS_MAGIC {
        return Err(DmaError::NotHugePages);
    }
    let len = std::fs::File::from(memory.try_clone().map_err(DmaError::Dup)?)
        .metadata()
        .map_err(DmaError::Fstat)?
        .len();
    let page = HUGE_PAGE_SIZE as u64;
    if len == 0 || len > max_bytes.next_multiple_of(page) || len % page != 0 {
        return Err(DmaError::BadSize { len, max_bytes });
    }
    page_addresses(memory, len as usize, libc::PROT_READ)
}

/// Maps `len` bytes of `fd` (populated), reads the guest-physical address
/// of each huge page from our pagemap (which needs our CAP_SYS_ADMIN), and
/// unmaps it again.
fn page_addresses(fd: &OwnedFd, len: usize, prot: libc::c_int) -> Result<Vec<u64>, DmaError> {
    // SAFETY: a fresh shared mapping of the file at an address the kernel
    // picks; populated so every page is present now.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(DmaError::Map {
            pages: len / HUGE_PAGE_SIZE,
            source: std::io::Error::last_os_error(),
        });
    }
    let gpas = physical_addresses(ptr as usize, len, HUGE_PAGE_SIZE).map_err(DmaError::Addresses);
    // SAFETY: unmapping the mapping made above; the pages stay in the file.
    unsafe { libc::munmap(ptr, len) };
    gpas
}

/// Allocates at least `bytes` of 2 MiB huge pages in a sealed memfd and
/// reads their guest-physical addresses (which needs our CAP_SYS_ADMIN).
/// The pages stay in the file after we unmap it; the application maps the
/// file and VFIO pins the pages when it maps them for DMA.
pub fn pinned_huge_pages(bytes: u64) -> Result<(OwnedFd, Vec<u64>), DmaError> {
    let len = usize::try_from(bytes)
        .ok()
        .and_then(|b| b.checked_next_multiple_of(HUGE_PAGE_SIZE))
        .filter(|&l| l > 0)
        .ok_or(DmaError::TooLarge(bytes))?;
    let flags =
        libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB | libc::MFD_ALLOW_SEALING;
    // SAFETY: a valid name and flags.
    let raw = unsafe { libc::memfd_create(c"vsic-app-dma".as_ptr(), flags) };
    if raw < 0 {
        return Err(DmaError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fd is a valid memfd.
    if unsafe { libc::ftruncate(raw, len as libc::off_t) } < 0 {
        return Err(DmaError::Size(std::io::Error::last_os_error()));
    }
    // Populated writable, so every page is allocated now.
    let gpas = page_addresses(&fd, len, libc::PROT_READ | libc::PROT_WRITE)?;
    // Neither side may shrink the file under the other's mappings.
    // SAFETY: fcntl on our descriptor.
    let sealed = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if sealed < 0 {
        log::debug!("sealing the DMA memfd: {}", std::io::Error::last_os_error());
    }
    Ok((fd, gpas))
}
