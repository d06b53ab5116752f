//! A hook into the drives' data transfers, for drive-level fault
//! injection (see `crate::workbench`). Without a hook installed a transfer
//! costs one atomic load more.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, VolatileSlice};

use super::Controller;

/// What a drive transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveOpKind {
    Read,
    Write,
    /// Zeroing a range (DISCARD, WRITE_ZEROES, freed extents).
    Zero,
}

/// What the hook asks of one transfer.
#[derive(Debug)]
pub enum DriveFault {
    /// Fail it with this error; nothing moves.
    Fail(io::Error),
    /// Wait, then run it.
    Delay(Duration),
    /// Run the read, then flip `bits` distinct bits of what it read.
    Corrupt { bits: u32, seed: u64 },
    /// Write only the first `bytes` bytes, then fail with `error`.
    Torn { bytes: u64, error: io::Error },
}

/// Asked before every data transfer of a drive.
pub trait DriveHook: Send + Sync + std::fmt::Debug {
    /// `drive` is the drive's index in the configuration, `offset` and
    /// `len` bytes on it.
    fn on_io(&self, drive: u32, op: DriveOpKind, offset: u64, len: u64) -> Option<DriveFault>;
}

impl Controller {
    /// Installs `hook` on every drive (once; later calls change nothing).
    pub fn set_drive_hook(&self, hook: Arc<dyn DriveHook>) {
        for (n, d) in self.drives.iter().enumerate() {
            d.set_hook(n as u32, Arc::clone(&hook));
        }
    }
}

/// Flips `bits` distinct bits (at most all of them) among the first `n`
/// bytes of `slices`, chosen by a xorshift generator seeded with `seed`.
pub fn flip_bits(slices: &[VolatileSlice<'_, ()>], n: usize, bits: u32, seed: u64) {
    let total_bits = (n as u64) * 8;
    let want = u64::from(bits).min(total_bits);
    let mut rng = seed | 1;
    let mut chosen = BTreeSet::new();
    while (chosen.len() as u64) < want {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        chosen.insert(rng % total_bits);
    }
    for bit in chosen {
        let mut byte = (bit / 8) as usize;
        for s in slices {
            if byte < s.len() {
                if let Ok(v) = s.read_obj::<u8>(byte) {
                    let _ = s.write_obj(v ^ (1 << (bit % 8)), byte);
                }
                break;
            }
            byte -= s.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_exactly_the_asked_bits_across_slices() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        {
            let s = [
                VolatileSlice::from(&mut a[..]),
                VolatileSlice::from(&mut b[..]),
            ];
            flip_bits(&s, 8, 7, 42);
        }
        let ones: u32 = a.iter().chain(&b).map(|x| x.count_ones()).sum();
        assert_eq!(ones, 7);
        let mut c = [0u8; 1];
        flip_bits(&[VolatileSlice::from(&mut c[..])], 1, 100, 1);
        assert_eq!(c[0], 0xff, "at most every bit");
    }
}
