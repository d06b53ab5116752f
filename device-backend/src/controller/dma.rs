//! DMA protection of one VSIC: its mode and its windows (guest-physical
//! ranges the device may read and/or write on the VSIC's behalf), the
//! checks an added window must pass, and the lookup the front makes for
//! every descriptor buffer before any byte moves.
//!
//! The table is read-mostly: admin commands build a new sorted table and
//! swap it in whole ([`DmaState`]); queue workers take a snapshot (one
//! `Arc` clone under a read lock) per chain and search it without locks.

use std::sync::{Arc, RwLock};

use vsic_abi::admin::{FLAG_DMA_READ, FLAG_DMA_WRITE, MAX_DMA_WINDOWS};
use vsic_abi::records::DmaWindow;
use vsic_abi::AdminStatus;

/// Which way the device moves bytes through a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaAccess {
    /// The device reads guest memory (header, data-out).
    Read,
    /// The device writes guest memory (data-in, status byte).
    Write,
}

impl DmaAccess {
    fn flag(self) -> u32 {
        match self {
            DmaAccess::Read => FLAG_DMA_READ,
            DmaAccess::Write => FLAG_DMA_WRITE,
        }
    }
}

/// The windows of an enforced VSIC, sorted by start, never overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmaWindows {
    windows: Vec<DmaWindow>,
}

impl DmaWindows {
    pub fn windows(&self) -> &[DmaWindow] {
        &self.windows
    }

    /// True when `[addr, addr + len)` lies inside one window that allows
    /// `access`. One binary search; a buffer spanning two adjacent windows
    /// is refused (drivers map one buffer in one registration). A
    /// zero-length buffer moves nothing and is allowed.
    pub fn permits(&self, addr: u64, len: u64, access: DmaAccess) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        // The last window starting at or below addr.
        let i = self.windows.partition_point(|w| w.start <= addr);
        let Some(w) = i.checked_sub(1).and_then(|i| self.windows.get(i)) else {
            return false;
        };
        w.flags & access.flag() != 0 && end <= w.start + w.len
    }

    /// A copy with `w` added, or why not (ZeroSize, WindowOverflow,
    /// InvalidArgument for no access flag, WindowOverlap, TooManyWindows).
    pub fn with(&self, w: DmaWindow) -> Result<DmaWindows, AdminStatus> {
        if w.len == 0 {
            return Err(AdminStatus::ZeroSize);
        }
        let Some(end) = w.start.checked_add(w.len) else {
            return Err(AdminStatus::WindowOverflow);
        };
        if w.flags & (FLAG_DMA_READ | FLAG_DMA_WRITE) == 0 {
            return Err(AdminStatus::InvalidArgument);
        }
        let i = self.windows.partition_point(|x| x.start < w.start);
        let overlaps_prev = i
            .checked_sub(1)
            .and_then(|p| self.windows.get(p))
            .is_some_and(|p| p.start + p.len > w.start);
        let overlaps_next = self.windows.get(i).is_some_and(|n| n.start < end);
        if overlaps_prev || overlaps_next {
            return Err(AdminStatus::WindowOverlap);
        }
        if self.windows.len() >= MAX_DMA_WINDOWS {
            return Err(AdminStatus::TooManyWindows);
        }
        let mut windows = self.windows.clone();
        windows.insert(i, w);
        Ok(DmaWindows { windows })
    }

    /// A copy without the window that starts at `start` with length `len`
    /// (NoSuchWindow if there is none).
    pub fn without(&self, start: u64, len: u64) -> Result<DmaWindows, AdminStatus> {
        let i = self
            .windows
            .iter()
            .position(|w| w.start == start && w.len == len)
            .ok_or(AdminStatus::NoSuchWindow)?;
        let mut windows = self.windows.clone();
        windows.remove(i);
        Ok(DmaWindows { windows })
    }
}

/// A VSIC's DMA protection as the data path reads it: `None` = open mode
/// (every guest address), `Some` = enforced with these windows.
pub type DmaPolicy = Option<Arc<DmaWindows>>;

/// Per-VSIC DMA state: the mode is persisted (see `state::VsicRecord`), the
/// windows are not (they are lost, failing closed, on a restart).
#[derive(Default)]
pub struct DmaState {
    enforced: RwLock<bool>,
    windows: RwLock<Arc<DmaWindows>>,
}

impl DmaState {
    /// What the data path checks against: a snapshot.
    pub fn policy(&self) -> DmaPolicy {
        if !*self.enforced.read().unwrap_or_else(|e| e.into_inner()) {
            return None;
        }
        Some(self.windows().clone())
    }

    pub fn windows(&self) -> Arc<DmaWindows> {
        self.windows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_windows(&self, w: DmaWindows) {
        *self.windows.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(w);
    }

    pub fn set_enforced(&self, enforced: bool) {
        *self.enforced.write().unwrap_or_else(|e| e.into_inner()) = enforced;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: u64, len: u64, flags: u32) -> DmaWindow {
        DmaWindow { start, len, flags }
    }
    const RW: u32 = FLAG_DMA_READ | FLAG_DMA_WRITE;

    #[test]
    fn lookup_finds_the_one_window_that_holds_a_buffer() {
        let t = DmaWindows::default()
            .with(w(0x3000, 0x1000, FLAG_DMA_READ))
            .unwrap()
            .with(w(0x1000, 0x1000, RW))
            .unwrap();
        assert_eq!(t.windows()[0].start, 0x1000, "kept sorted");
        assert!(t.permits(0x1000, 0x1000, DmaAccess::Write));
        assert!(t.permits(0x1800, 0x10, DmaAccess::Read));
        assert!(!t.permits(0x1800, 0x801, DmaAccess::Read), "runs past");
        assert!(!t.permits(0xfff, 2, DmaAccess::Read), "starts before");
        assert!(!t.permits(0x2000, 1, DmaAccess::Read), "in the gap");
        assert!(t.permits(0x3000, 1, DmaAccess::Read));
        assert!(!t.permits(0x3000, 1, DmaAccess::Write), "read-only window");
        assert!(!t.permits(0x1fff, 0x1002, DmaAccess::Read), "spans two");
        assert!(!t.permits(u64::MAX, 2, DmaAccess::Read), "wraps");
        assert!(!DmaWindows::default().permits(0, 1, DmaAccess::Read));
    }

    #[test]
    fn bad_windows_are_refused_with_their_own_status() {
        let t = DmaWindows::default().with(w(0x1000, 0x1000, RW)).unwrap();
        assert_eq!(t.with(w(0, 0, RW)), Err(AdminStatus::ZeroSize));
        assert_eq!(t.with(w(u64::MAX, 2, RW)), Err(AdminStatus::WindowOverflow));
        assert_eq!(t.with(w(0x8000, 1, 0)), Err(AdminStatus::InvalidArgument));
        for (s, l) in [(0x1000, 1), (0xfff, 2), (0x1fff, 1), (0, 0x3000)] {
            assert_eq!(t.with(w(s, l, RW)), Err(AdminStatus::WindowOverlap));
        }
        assert!(t.with(w(0x2000, 1, RW)).is_ok(), "adjacent is fine");
        assert!(t.with(w(0, 0x1000, RW)).is_ok(), "adjacent is fine");
        assert_eq!(t.without(0x1000, 0x800), Err(AdminStatus::NoSuchWindow));
        assert_eq!(t.without(0x1000, 0x1000).unwrap().windows().len(), 0);
        let mut full = DmaWindows::default();
        for i in 0..MAX_DMA_WINDOWS as u64 {
            full = full.with(w(i * 2, 1, RW)).unwrap();
        }
        assert_eq!(
            full.with(w(1 << 40, 1, RW)),
            Err(AdminStatus::TooManyWindows)
        );
    }
}
