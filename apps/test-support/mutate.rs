//! Seeded mutation of well-formed input, for the applications' tests of
//! what a client may send that is not what it should be (included by path
//! from each app's `tests/common/mod.rs`). The same seed gives the same
//! mutants on every run, so a failure names its mutant and reproduces.
//! The including module also includes vsicd's `tests/common/rng.rs` as
//! `rng`.

use super::rng::Rng;

/// Uniform in `0..n` (0 when `n` is 0), as an index.
pub fn pick(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// 32-bit words a length, a count or an enum may be set to.
pub const EXTREMES: [u32; 7] = [0, 1, 2, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// One to three mutations of `m`: bits flipped, an aligned big-endian word
/// set to an extreme or random value, cut short, lengthened with random
/// bytes, spliced with the tail of `other`, or a byte of `alphabet` (the
/// protocol's significant bytes: line ends, digits, separators) inserted.
/// The result keeps at least `keep` bytes (and is at least that long).
pub fn mutate(
    rng: &mut Rng,
    mut m: Vec<u8>,
    other: &[u8],
    keep: usize,
    alphabet: &[u8],
) -> Vec<u8> {
    m.resize(m.len().max(keep + 1), b' ');
    for _ in 0..1 + pick(rng, 3) {
        let len = m.len();
        match pick(rng, 7) {
            0 => {
                for _ in 0..1 + pick(rng, 8) {
                    let i = keep + pick(rng, len - keep);
                    m[i] ^= 1 << pick(rng, 8);
                }
            }
            1 | 2 if len >= keep + 4 => {
                let w = keep + pick(rng, len - keep - 3);
                let v = if pick(rng, 2) == 0 {
                    EXTREMES[pick(rng, EXTREMES.len())]
                } else {
                    rng.next_u64() as u32
                };
                m[w..w + 4].copy_from_slice(&v.to_be_bytes());
            }
            3 => m.truncate(keep + pick(rng, len - keep)),
            4 => {
                for _ in 0..pick(rng, 64) {
                    m.push(rng.next_u64() as u8);
                }
            }
            5 if !other.is_empty() => {
                let at = keep + pick(rng, len - keep);
                let from = pick(rng, other.len());
                m.truncate(at);
                m.extend_from_slice(&other[from..]);
            }
            _ if !alphabet.is_empty() => {
                let at = keep + pick(rng, len - keep + 1);
                m.insert(at, alphabet[pick(rng, alphabet.len())]);
            }
            _ => m.push(rng.next_u64() as u8),
        }
        if m.len() <= keep {
            m.resize(keep + 1, b' ');
        }
    }
    m
}
