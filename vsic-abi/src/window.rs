//! VSA windows: how one VSIC addresses several attached VSAs.
//!
//! The VSA attached in slot `s` of a VSIC starts at byte offset
//! `s * WINDOW_SIZE` of that VSIC's block address space. Slot 0 starts at 0,
//! so an unmodified virtio-blk driver sees exactly the slot-0 VSA as a disk.

/// log2 of the window size: 2^40 bytes (1 TiB) per slot.
pub const WINDOW_SHIFT: u32 = 40;
/// Bytes per window; a VSA can never be larger than this.
pub const WINDOW_SIZE: u64 = 1 << WINDOW_SHIFT;
/// Number of attachment slots per VSIC.
pub const SLOTS_PER_VSIC: u32 = 16;

/// Byte offset where `slot`'s window starts.
pub fn slot_base(slot: u32) -> u64 {
    (slot as u64) << WINDOW_SHIFT
}

/// Splits a device byte offset into (slot, offset within the VSA).
pub fn split(offset: u64) -> (u64, u64) {
    (offset >> WINDOW_SHIFT, offset & (WINDOW_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inverts_slot_base() {
        for slot in [0u32, 1, 7, SLOTS_PER_VSIC - 1] {
            assert_eq!(split(slot_base(slot) + 4096), (slot as u64, 4096));
        }
        assert_eq!(split(WINDOW_SIZE - 1), (0, WINDOW_SIZE - 1));
    }
}
