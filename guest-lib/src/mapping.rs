//! Fresh read-write mappings at an address the kernel chooses: the one
//! `mmap` call behind DMA regions, huge page mappings and device BARs.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// Maps `len` bytes of `fd` from `offset` (fd -1 with MAP_ANONYMOUS) for
/// reading and writing, with `flags` such as MAP_SHARED or MAP_POPULATE.
/// The caller owns the mapping and unmaps it. MAP_FIXED is refused: the
/// kernel picks the address, so no mapping in use is ever replaced.
pub(crate) fn map_rw(
    len: usize,
    flags: i32,
    fd: RawFd,
    offset: libc::off_t,
) -> io::Result<NonNull<u8>> {
    if flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a fixed address is not a fresh mapping",
        ));
    }
    // SAFETY: a new mapping at an address the kernel chooses (no MAP_FIXED),
    // so no memory in use changes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("null mapping"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_writable_memory_and_refuses_fixed_addresses() {
        let len = 8192;
        let p = map_rw(len, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0).unwrap();
        // SAFETY: the mapping just made is len bytes, readable and writable.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
        bytes[len - 1] = 0x5a;
        assert_eq!(bytes[len - 1], 0x5a);
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(p.as_ptr().cast(), len) };

        let fixed = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        let err = map_rw(len, fixed, -1, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
