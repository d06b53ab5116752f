//! Pinned DMA memory for the VFIO transport: huge pages and their
//! guest-physical addresses.
//!
//! The device reaches guest memory by guest-physical address (the
//! controller functions are not behind the vIOMMU yet), so DMA memory must
//! stay where it is and its physical addresses must be known. Huge pages
//! (2 MiB) are never swapped or split, and each is physically contiguous.
//! The addresses come from `/proc/self/pagemap`, which shows them to
//! CAP_SYS_ADMIN only; an unprivileged application instead receives the
//! memory from the control plane as a hugetlbfs file descriptor plus the
//! address of each of its pages ([`DmaSource::Provided`]).

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

use log::debug;

use crate::dma::{DmaChunk, DmaRegion};
use crate::error::Error;
use crate::mapping::map_rw;

/// Size of the huge pages the library allocates itself.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Where the VFIO transport gets its DMA memory.
#[derive(Debug, Clone, Default)]
pub enum DmaSource {
    /// Allocate huge pages and look their addresses up in
    /// `/proc/self/pagemap` (needs CAP_SYS_ADMIN and free huge pages).
    #[default]
    Allocate,
    /// Use memory handed over by the control plane.
    Provided(Arc<ProvidedDma>),
}

impl DmaSource {
    /// Memory in `fd` (a hugetlbfs or memfd file) whose page `i` sits at
    /// guest-physical address `gpas[i]`. See [`ProvidedDma::new`]. Opening
    /// a device with it needs CAP_SYS_ADMIN to check the addresses after
    /// pinning; without it use [`DmaSource::provided_with_locator`].
    pub fn provided(fd: OwnedFd, gpas: Vec<u64>) -> Result<DmaSource, Error> {
        Ok(DmaSource::Provided(Arc::new(ProvidedDma::new(fd, gpas)?)))
    }

    /// As [`DmaSource::provided`], with someone to ask where the pages are
    /// after pinning (the provider; an unprivileged process cannot read
    /// physical addresses).
    pub fn provided_with_locator(
        fd: OwnedFd,
        gpas: Vec<u64>,
        locator: Arc<dyn PageLocator>,
    ) -> Result<DmaSource, Error> {
        let mut p = ProvidedDma::new(fd, gpas)?;
        p.locator = Some(locator);
        Ok(DmaSource::Provided(Arc::new(p)))
    }
}

/// Tells where the pages of provided DMA memory are now. Asked once the
/// memory is pinned for the device: pinning may move a page (out of
/// movable memory), and then the addresses given before are stale.
pub trait PageLocator: Send + Sync + fmt::Debug {
    /// The physical address of each page of `memory`'s file, in file order.
    fn locate(&self, memory: &ProvidedDma) -> Result<Vec<u64>, Error>;
}

/// Pinned memory received from someone who could read its addresses.
#[derive(Debug)]
pub struct ProvidedDma {
    fd: OwnedFd,
    page_size: usize,
    gpas: Vec<u64>,
    locator: Option<Arc<dyn PageLocator>>,
}

impl ProvidedDma {
    /// Checks the description: the file's page size (its block size, 2 MiB
    /// on hugetlbfs) divides every address, the file holds one page per
    /// address, and no two pages share an address. The addresses
    /// themselves cannot be checked without privileges: they are trusted.
    pub fn new(fd: OwnedFd, gpas: Vec<u64>) -> Result<ProvidedDma, Error> {
        let bad = |why: String| Error::InvalidArgument(format!("provided DMA memory: {why}"));
        // SAFETY: fstat fills a plain struct for a valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat buffer and the fd is open.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(Error::system(
                "fstat of provided DMA memory",
                std::io::Error::last_os_error(),
            ));
        }
        let page_size = usize::try_from(st.st_blksize).unwrap_or(0);
        if page_size < 4096 || !page_size.is_power_of_two() {
            return Err(bad(format!("page size {page_size} is not usable")));
        }
        if gpas.is_empty() {
            return Err(bad("no pages".into()));
        }
        let needed = gpas
            .len()
            .checked_mul(page_size)
            .ok_or_else(|| bad("too many pages".into()))?;
        if (st.st_size as u64) < needed as u64 {
            return Err(bad(format!(
                "the file has {} bytes, {} pages of {page_size} need {needed}",
                st.st_size,
                gpas.len()
            )));
        }
        if let Some(g) = gpas
            .iter()
            .find(|&&g| g % page_size as u64 != 0 || g.checked_add(page_size as u64).is_none())
        {
            return Err(bad(format!(
                "address {g:#x} is not a {page_size}-byte page"
            )));
        }
        let mut sorted = gpas.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("two pages share an address".into()));
        }
        Ok(ProvidedDma {
            fd,
            page_size,
            gpas,
            locator: None,
        })
    }

    /// The file holding the memory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn len(&self) -> usize {
        self.gpas.len() * self.page_size
    }

    pub fn is_empty(&self) -> bool {
        self.gpas.is_empty()
    }

    /// Guest-physical address of each page, in file order.
    pub fn gpas(&self) -> &[u64] {
        &self.gpas
    }
}

/// File page indices sorted by guest-physical address: mapping the pages
/// in this order puts physically adjacent pages next to each other, so
/// they form one chunk and larger buffers fit.
pub fn physical_order(gpas: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..gpas.len()).collect();
    order.sort_by_key(|&i| gpas[i]);
    order
}

/// Groups pages (in mapping order) into chunks of physically adjacent
/// pages: page `i` at `gpas[i]` continues the chunk when it directly
/// follows the previous page.
pub fn page_chunks(page_size: usize, gpas: &[u64]) -> Vec<DmaChunk> {
    let mut chunks: Vec<DmaChunk> = Vec::new();
    for (i, &gpa) in gpas.iter().enumerate() {
        let offset = i * page_size;
        match chunks.last_mut() {
            Some(c) if c.iova.checked_add(c.len as u64) == Some(gpa) => c.len += page_size,
            _ => chunks.push(DmaChunk {
                offset,
                len: page_size,
                iova: gpa,
            }),
        }
    }
    chunks
}

/// Why a pagemap entry gives no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagemapError {
    /// The page is not in memory (never touched, or swapped out).
    NotPresent,
    /// Present, but the kernel hides frame numbers from this process
    /// (no CAP_SYS_ADMIN).
    Hidden,
}

/// Decodes one `/proc/self/pagemap` entry: bit 63 present, bits 0-54 the
/// page frame number (zero when hidden).
pub fn decode_pagemap(entry: u64) -> Result<u64, PagemapError> {
    const PRESENT: u64 = 1 << 63;
    const PFN_MASK: u64 = (1 << 55) - 1;
    if entry & PRESENT == 0 {
        return Err(PagemapError::NotPresent);
    }
    match entry & PFN_MASK {
        0 => Err(PagemapError::Hidden),
        pfn => Ok(pfn),
    }
}

fn base_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

fn needs_privilege() -> Error {
    Error::Unsupported(
        "reading guest-physical addresses needs CAP_SYS_ADMIN; unprivileged \
         applications open with DmaSource::Provided memory from the control plane"
            .into(),
    )
}

/// An open `/proc/self/pagemap`. Whether it shows physical addresses is
/// decided when it is opened (by the opener's CAP_SYS_ADMIN), so a process
/// that opens it before dropping its privileges keeps reading addresses,
/// and can be the [`PageLocator`] of provided memory it handed itself.
#[derive(Debug)]
pub struct Pagemap(File);

impl Pagemap {
    pub fn open() -> Result<Pagemap, Error> {
        File::open("/proc/self/pagemap").map(Pagemap).map_err(|e| match e.kind() {
            // A process that dropped privileges cannot even open it.
            std::io::ErrorKind::PermissionDenied => needs_privilege(),
            _ => Error::system("opening /proc/self/pagemap", e),
        })
    }

    /// Physical addresses of the pages of `[addr, addr + len)` of this
    /// process, one per `page_size` bytes (the address of each page's first
    /// byte).
    pub fn addresses(&self, addr: usize, len: usize, page_size: usize) -> Result<Vec<u64>, Error> {
        let base = base_page_size();
        let mut out = Vec::with_capacity(len / page_size);
        for page in (addr..addr.saturating_add(len)).step_by(page_size) {
            let mut entry = [0u8; 8];
            self.0
                .read_exact_at(&mut entry, (page / base) as u64 * 8)
                .map_err(|e| Error::system("reading /proc/self/pagemap", e))?;
            match decode_pagemap(u64::from_ne_bytes(entry)) {
                Ok(pfn) => out.push(pfn * base as u64 + (page % base) as u64),
                Err(PagemapError::NotPresent) => {
                    return Err(Error::transport(
                        "pinning DMA memory",
                        format!("page at {page:#x} is not resident"),
                    ))
                }
                Err(PagemapError::Hidden) => return Err(needs_privilege()),
            }
        }
        Ok(out)
    }
}

/// Where the pages of provided memory are now: maps its file (populated),
/// reads each page's address, unmaps it again.
impl PageLocator for Pagemap {
    fn locate(&self, memory: &ProvidedDma) -> Result<Vec<u64>, Error> {
        let len = memory.len();
        let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
        let mapping = Mapping::new(len, flags, memory.fd().as_raw_fd())
            .map_err(|e| Error::system("mapping provided DMA memory to locate it", e))?;
        self.addresses(mapping.ptr.as_ptr() as usize, len, memory.page_size())
    }
}

/// Physical addresses of the pages of `[addr, addr + len)` of this process,
/// one per `page_size` bytes (the address of each page's first byte).
pub fn physical_addresses(addr: usize, len: usize, page_size: usize) -> Result<Vec<u64>, Error> {
    Pagemap::open()?.addresses(addr, len, page_size)
}

/// A mapping unmapped on drop unless handed over to a region.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, flags: i32, fd: i32) -> std::io::Result<Mapping> {
        map_rw(len, flags, fd, 0).map(|ptr| Mapping { ptr, len })
    }

    /// Maps the pages of `fd` so that slot `i` of the mapping shows file
    /// page `order[i]` (pages of `page_size` bytes; the mapping is aligned
    /// to `page_size`, as huge page mappings must be).
    fn ordered(fd: i32, page_size: usize, order: &[usize]) -> std::io::Result<Mapping> {
        let len = order.len() * page_size;
        // Reserve address space with room to align, then trim it.
        let reserve = Mapping::new(
            len + page_size,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        let start = (reserve.ptr.as_ptr() as usize).next_multiple_of(page_size);
        let (rstart, rlen) = (reserve.ptr.as_ptr() as usize, reserve.len);
        std::mem::forget(reserve);
        // SAFETY: unmapping the unaligned head and the tail of our own
        // reservation; [start, start + len) stays reserved.
        unsafe {
            if start > rstart {
                libc::munmap(rstart as *mut _, start - rstart);
            }
            libc::munmap((start + len) as *mut _, rstart + rlen - (start + len));
        }
        let map = Mapping {
            ptr: NonNull::new(start as *mut u8).ok_or_else(|| std::io::Error::other("null"))?,
            len,
        };
        for (slot, &page) in order.iter().enumerate() {
            let offset = libc::off_t::try_from(page * page_size)
                .map_err(|_| std::io::Error::other("file offset too large"))?;
            // SAFETY: replaces one page-sized piece of our own reservation.
            let p = unsafe {
                libc::mmap(
                    (start + slot * page_size) as *mut _,
                    page_size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                    fd,
                    offset,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(map)
    }

    fn lock(&self) -> std::io::Result<()> {
        // SAFETY: locking our own mapping.
        if unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.len) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Hands the mapping to a region (which unmaps it on drop).
    fn into_region(self, chunks: Vec<DmaChunk>, fd: Option<OwnedFd>) -> Result<DmaRegion, Error> {
        let (ptr, len) = (self.ptr, self.len);
        // The region owns the mapping from here, also when it refuses the
        // layout (it unmaps nothing then, so unmap here).
        std::mem::forget(self);
        // SAFETY: ptr/len is a mapping made by mmap that nothing else owns.
        unsafe { DmaRegion::from_mapping(ptr, len, chunks, fd) }.inspect_err(|_| {
            // SAFETY: the region was not built; the mapping is still ours.
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we own.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn free_huge_pages() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Allocates at least `len` bytes of locked 2 MiB huge pages, looks up
/// their guest-physical addresses and maps them in address order; each run
/// of adjacent pages becomes one chunk whose IOVA is its physical address.
pub fn allocate(len: usize) -> Result<DmaRegion, Error> {
    let len = len
        .checked_next_multiple_of(HUGE_PAGE_SIZE)
        .filter(|&l| l > 0)
        .ok_or_else(|| Error::InvalidArgument(format!("DMA size {len} is not usable")))?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: the name is a valid C string.
    let raw = unsafe { libc::memfd_create(c"vsic-dma-huge".as_ptr(), flags) };
    if raw < 0 {
        return Err(Error::system(
            "memfd_create of huge pages",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fd is a valid memfd.
    if unsafe { libc::ftruncate(raw, len as libc::off_t) } < 0 {
        return Err(Error::system(
            "sizing the huge page file",
            std::io::Error::last_os_error(),
        ));
    }
    let pages = len / HUGE_PAGE_SIZE;
    let map = Mapping::new(len, libc::MAP_SHARED | libc::MAP_POPULATE, raw).map_err(|e| {
        Error::transport(
            "allocating huge pages",
            format!(
                "{pages} pages of 2 MiB: {e} ({} free; reserve more in /proc/sys/vm/nr_hugepages)",
                free_huge_pages().map_or("unknown".into(), |n| n.to_string())
            ),
        )
    })?;
    let file_gpas = physical_addresses(map.ptr.as_ptr() as usize, len, HUGE_PAGE_SIZE)?;
    let order = physical_order(&file_gpas);
    let map = if order.iter().enumerate().all(|(i, &p)| i == p) {
        map
    } else {
        drop(map);
        Mapping::ordered(raw, HUGE_PAGE_SIZE, &order)
            .map_err(|e| Error::system("mapping huge pages in physical order", e))?
    };
    map.lock()
        .map_err(|e| Error::system("mlock of DMA memory", e))?;
    let gpas: Vec<u64> = order.iter().map(|&i| file_gpas[i]).collect();
    let chunks = page_chunks(HUGE_PAGE_SIZE, &gpas);
    debug!(
        "{pages} huge pages in {} physically contiguous run(s)",
        chunks.len()
    );
    map.into_region(chunks, Some(fd))
}

/// Maps memory provided by the control plane, pages in address order.
pub fn map_provided(p: &ProvidedDma) -> Result<DmaRegion, Error> {
    let fd =
        p.fd.try_clone()
            .map_err(|e| Error::system("dup of provided DMA memory", e))?;
    let order = physical_order(&p.gpas);
    let map = Mapping::ordered(fd.as_raw_fd(), p.page_size, &order)
        .map_err(|e| Error::system("mmap of provided DMA memory", e))?;
    // Huge pages never swap; VFIO pins the pages anyway. A low
    // RLIMIT_MEMLOCK must not fail the open here.
    if let Err(e) = map.lock() {
        debug!("mlock of provided DMA memory: {e}");
    }
    let gpas: Vec<u64> = order.iter().map(|&i| p.gpas[i]).collect();
    map.into_region(page_chunks(p.page_size, &gpas), Some(fd))
}

/// Checks, once `region` (mapped from `p` by [`map_provided`]) is pinned,
/// that every page is still at the address the device uses for it: read
/// from our own pagemap when we may, else from `p`'s locator. Refuses with
/// [`Error::DmaMoved`] otherwise, and when nobody can tell.
pub fn verify_provided(p: &ProvidedDma, region: &DmaRegion) -> Result<(), Error> {
    let own = physical_addresses(region.host_ptr() as usize, region.len(), p.page_size);
    verify_pinned(p, own)
}

/// [`verify_provided`] with what our own pagemap says about the region's
/// pages, in mapping order (or why it cannot say).
fn verify_pinned(p: &ProvidedDma, own: Result<Vec<u64>, Error>) -> Result<(), Error> {
    let pages = p.gpas.len();
    let now = match own {
        Ok(in_mapping_order) => {
            // Slot i of the mapping shows file page order[i].
            let mut now = vec![0u64; pages];
            for (&page, &gpa) in physical_order(&p.gpas).iter().zip(&in_mapping_order) {
                now[page] = gpa;
            }
            if in_mapping_order.len() != pages {
                return Err(Error::transport(
                    "checking DMA memory after pinning",
                    format!("{} of {pages} pages found in the pagemap", in_mapping_order.len()),
                ));
            }
            now
        }
        // Unprivileged: ask whoever provided the memory.
        Err(Error::Unsupported(_)) => match &p.locator {
            Some(locator) => locator.locate(p)?,
            None => {
                return Err(Error::Unsupported(
                    "provided DMA memory cannot be checked after pinning: reading its \
                     addresses needs CAP_SYS_ADMIN, and its provider gave no PageLocator"
                        .into(),
                ))
            }
        },
        Err(e) => return Err(e),
    };
    if now.len() != pages {
        return Err(Error::transport(
            "checking DMA memory after pinning",
            format!("the provider located {} of {pages} pages", now.len()),
        ));
    }
    match p.gpas.iter().zip(&now).enumerate().find(|(_, (g, n))| g != n) {
        Some((page, (&recorded, &now))) => Err(Error::DmaMoved {
            page,
            recorded,
            now,
        }),
        None => {
            debug!("{pages} provided DMA page(s) are where the device reaches them");
            Ok(())
        }
    }
}

/// Whether every chunk of `region` still starts at the physical address
/// recorded as its IOVA (pinning may migrate pages out of movable memory
/// before pinning them; this catches that).
pub fn still_at_recorded_addresses(region: &DmaRegion) -> Result<bool, Error> {
    for c in region.chunks() {
        let addr = region.host_ptr() as usize + c.offset;
        let now = physical_addresses(addr, c.len, HUGE_PAGE_SIZE.min(c.len))?;
        let expected = (0..now.len()).map(|i| c.iova + (i * HUGE_PAGE_SIZE.min(c.len)) as u64);
        if !now.iter().copied().eq(expected) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries_decode() {
        assert_eq!(decode_pagemap(1 << 63 | 0x1234), Ok(0x1234));
        // Soft-dirty (55), exclusive (56) and file (61) bits are not frame bits.
        assert_eq!(
            decode_pagemap(1 << 63 | 1 << 61 | 1 << 56 | 1 << 55 | 7),
            Ok(7)
        );
        assert_eq!(decode_pagemap(1 << 63), Err(PagemapError::Hidden));
        assert_eq!(decode_pagemap(0x1234), Err(PagemapError::NotPresent));
        // Swapped (62) without present.
        assert_eq!(decode_pagemap(1 << 62 | 5), Err(PagemapError::NotPresent));
    }

    #[test]
    fn adjacent_pages_form_one_chunk() {
        let m = 2 << 20;
        let gpas = [
            0x4000_0000,
            0x4020_0000,
            0x3000_0000,
            0x5000_0000,
            0x5020_0000,
            0x5040_0000,
        ];
        let chunks = page_chunks(m, &gpas);
        assert_eq!(
            chunks,
            vec![
                DmaChunk {
                    offset: 0,
                    len: 2 * m,
                    iova: 0x4000_0000
                },
                DmaChunk {
                    offset: 2 * m,
                    len: m,
                    iova: 0x3000_0000
                },
                DmaChunk {
                    offset: 3 * m,
                    len: 3 * m,
                    iova: 0x5000_0000
                },
            ]
        );
        // Descending addresses never merge.
        assert_eq!(page_chunks(m, &[0x40_0000, 0x20_0000]).len(), 2);
        assert!(page_chunks(m, &[]).is_empty());
    }

    fn memfd(len: usize) -> OwnedFd {
        // SAFETY: valid name and flags; the fd is ours.
        let fd =
            unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC)) };
        // SAFETY: a valid fd.
        assert_eq!(
            unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) },
            0
        );
        fd
    }

    /// A pagemap opened while privileged locates provided memory's pages
    /// where they are (the locator an unprivileged process can carry).
    /// CI runs as root; elsewhere, without CAP_SYS_ADMIN, addresses are
    /// hidden and this test fails rather than pretend.
    #[test]
    fn a_pagemap_locates_the_pages_of_provided_memory() {
        let page = 4096;
        let fd = memfd(3 * page);
        let pagemap = Pagemap::open().expect("open /proc/self/pagemap");
        let mapping = Mapping::new(3 * page, libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()).unwrap();
        let gpas = pagemap.addresses(mapping.ptr.as_ptr() as usize, 3 * page, page).expect("addresses (needs root)");
        drop(mapping);
        assert_eq!(gpas.len(), 3);
        assert!(gpas.iter().all(|&a| a != 0 && a % page as u64 == 0));
        let memory = ProvidedDma::new(fd, gpas.clone()).unwrap();
        assert_eq!(pagemap.locate(&memory).unwrap(), gpas);
    }

    /// The control-plane path, with ordinary 4 KiB pages standing in for
    /// huge pages: the region maps the file and translates each page to the
    /// address the provider gave.
    #[test]
    fn provided_memory_maps_pages_at_given_addresses() {
        let page = 4096usize;
        // File order is not address order: 0x2000/0x3000 and 0x7000/0x8000
        // are adjacent frames in different places of the file.
        let gpas = vec![0x7000, 0x3000, 0x8000, 0x2000, 0x10000];
        let src = DmaSource::provided(memfd(5 * page), gpas.clone()).unwrap();
        let DmaSource::Provided(p) = src else {
            panic!()
        };
        assert_eq!(p.page_size(), page);
        assert_eq!(p.len(), 5 * page);
        let region = map_provided(&p).unwrap();
        assert_eq!(region.len(), 5 * page);
        // Mapped in address order, adjacent frames form one chunk each.
        let spans: Vec<(u64, usize)> = region.chunks().iter().map(|c| (c.iova, c.len)).collect();
        assert_eq!(
            spans,
            vec![(0x2000, 2 * page), (0x7000, 2 * page), (0x10000, page)]
        );
        assert!(region.contains(0x2000, 2 * page));
        assert!(region.contains(0x7800, 4096));
        assert!(!region.contains(0x8800, 4096));
        // Each address reaches the file page the provider named.
        for (file_page, &gpa) in gpas.iter().enumerate() {
            let host = region.host_at(gpa, page).unwrap();
            // SAFETY: host_at checked the range.
            unsafe { *host = file_page as u8 + 1 };
        }
        let file = File::from(p.fd.try_clone().unwrap());
        for file_page in 0..gpas.len() {
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, (file_page * page) as u64)
                .unwrap();
            assert_eq!(b[0], file_page as u8 + 1);
        }
    }

    /// With free huge pages (and privileges): a region in address order
    /// whose chunks are the runs of adjacent pages. Without: an error that
    /// says what to do.
    #[test]
    fn allocate_huge_pages_or_explain() {
        match allocate(3 * HUGE_PAGE_SIZE + 1) {
            Ok(region) => {
                assert_eq!(region.len(), 4 * HUGE_PAGE_SIZE);
                assert_eq!(region.host_ptr() as usize % HUGE_PAGE_SIZE, 0);
                let chunks = region.chunks();
                assert!(chunks
                    .windows(2)
                    .all(|w| w[0].iova + (w[0].len as u64) < w[1].iova));
                assert!(still_at_recorded_addresses(&region).unwrap());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("nr_hugepages") || msg.contains("CAP_SYS_ADMIN"),
                    "{msg}"
                );
            }
        }
    }

    /// Stands in for the control plane: says the pages are at `now`.
    #[derive(Debug)]
    struct FakeLocator {
        now: Vec<u64>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl PageLocator for FakeLocator {
        fn locate(&self, memory: &ProvidedDma) -> Result<Vec<u64>, Error> {
            assert!(memory.fd().as_raw_fd() >= 0);
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.now.clone())
        }
    }

    /// Provided memory whose pages (file order) were given as `given` and
    /// are at `now` after pinning, checked by its locator.
    fn pinned(given: &[u64], now: &[u64]) -> (Arc<FakeLocator>, Result<(), Error>) {
        let locator = Arc::new(FakeLocator {
            now: now.to_vec(),
            asked: Default::default(),
        });
        let fd = memfd(given.len() * 4096);
        let src = DmaSource::provided_with_locator(fd, given.to_vec(), locator.clone()).unwrap();
        let DmaSource::Provided(p) = src else {
            panic!()
        };
        (locator, verify_pinned(&p, Err(needs_privilege())))
    }

    #[test]
    fn provided_memory_that_moved_while_pinned_is_refused() {
        let given = [0x7000, 0x3000, 0x8000];
        let (locator, r) = pinned(&given, &given);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(locator.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        // File page 1 moved: the device would write to 0x3000.
        let (_, r) = pinned(&given, &[0x7000, 0x5000, 0x8000]);
        match r {
            Err(Error::DmaMoved { page, recorded, now }) => {
                assert_eq!((page, recorded, now), (1, 0x3000, 0x5000))
            }
            other => panic!("{other:?}"),
        }
        // A locator that says too little is no answer.
        let (_, r) = pinned(&given, &[0x7000]);
        assert!(matches!(r, Err(Error::DmaMoved { .. }) | Err(Error::Transport { .. })), "{r:?}");
        // Nobody can tell: refused, not trusted.
        let p = ProvidedDma::new(memfd(4096), vec![0x3000]).unwrap();
        let r = verify_pinned(&p, Err(needs_privilege()));
        assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
        // Our own pagemap, when readable, is asked first (mapping order:
        // the region maps the pages sorted by address).
        let p = ProvidedDma::new(memfd(2 * 4096), vec![0x9000, 0x1000]).unwrap();
        assert!(verify_pinned(&p, Ok(vec![0x1000, 0x9000])).is_ok());
        let r = verify_pinned(&p, Ok(vec![0x1000, 0xa000]));
        assert!(
            matches!(
                r,
                Err(Error::DmaMoved { page: 0, recorded: 0x9000, now: 0xa000 })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn physical_order_sorts_file_pages_by_address() {
        assert_eq!(physical_order(&[0x30, 0x10, 0x20]), vec![1, 2, 0]);
        assert_eq!(physical_order(&[]), Vec::<usize>::new());
    }

    #[test]
    fn provided_memory_descriptions_are_checked() {
        let page = 4096u64;
        let err = |fd_len: usize, gpas: Vec<u64>| {
            ProvidedDma::new(memfd(fd_len), gpas)
                .unwrap_err()
                .to_string()
        };
        assert!(err(8192, vec![]).contains("no pages"));
        assert!(err(4096, vec![0, page]).contains("bytes"), "file too short");
        assert!(err(8192, vec![0x1001, page]).contains("not a 4096-byte page"));
        assert!(err(8192, vec![page, page]).contains("share"));
        assert!(err(4096, vec![u64::MAX - 4095]).contains("not a"));
    }

    #[test]
    fn pagemap_of_own_memory() {
        let map = Mapping::new(
            8192,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
        )
        .unwrap();
        match physical_addresses(map.ptr.as_ptr() as usize, 8192, 4096) {
            // Privileged: real frame addresses, page-aligned and distinct.
            Ok(addrs) => {
                assert_eq!(addrs.len(), 2);
                assert!(addrs.iter().all(|a| a % 4096 == 0 && *a != 0));
                assert_ne!(addrs[0], addrs[1]);
            }
            // Unprivileged: a clear pointer to the provided-memory path.
            Err(e) => assert!(e.to_string().contains("Provided"), "{e}"),
        }
    }
}
