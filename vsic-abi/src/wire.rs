//! Little-endian field access shared by every layout in this crate.

use std::fmt;

/// Why a byte buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is shorter than the fixed layout.
    Truncated { need: usize, got: usize },
    /// The buffer is longer than the fixed layout allows.
    Oversized { max: usize, got: usize },
    /// A magic number does not match.
    BadMagic { expected: u32, got: u32 },
    /// The layout version is not one this build understands.
    BadVersion { supported: u16, got: u16 },
    /// A field holds a value outside its domain.
    BadField { field: &'static str, value: u64 },
    /// A text form (capability file) could not be parsed.
    BadText(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { need, got } => {
                write!(f, "truncated: need {need} bytes, got {got}")
            }
            DecodeError::Oversized { max, got } => {
                write!(f, "oversized: at most {max} bytes, got {got}")
            }
            DecodeError::BadMagic { expected, got } => {
                write!(f, "bad magic: expected {expected:#010x}, got {got:#010x}")
            }
            DecodeError::BadVersion { supported, got } => {
                write!(f, "unsupported version {got} (this build speaks {supported})")
            }
            DecodeError::BadField { field, value } => {
                write!(f, "field {field} has invalid value {value:#x}")
            }
            DecodeError::BadText(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Checks that `buf` has exactly `len` bytes.
pub(crate) fn exact(buf: &[u8], len: usize) -> Result<(), DecodeError> {
    if buf.len() < len {
        Err(DecodeError::Truncated { need: len, got: buf.len() })
    } else if buf.len() > len {
        Err(DecodeError::Oversized { max: len, got: buf.len() })
    } else {
        Ok(())
    }
}

/// Checks that `buf` has at least `len` bytes.
pub(crate) fn at_least(buf: &[u8], len: usize) -> Result<(), DecodeError> {
    if buf.len() < len {
        Err(DecodeError::Truncated { need: len, got: buf.len() })
    } else {
        Ok(())
    }
}

// The getters below are only called after a length check, so the slices
// always have the right size; `unwrap_or_default` keeps them panic-free anyway.
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or_default()
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or_default()
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or_default()
}
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Splits a buffer holding a whole number of fixed-size records.
pub(crate) fn records<'a>(
    buf: &'a [u8],
    size: usize,
) -> Result<impl Iterator<Item = &'a [u8]>, DecodeError> {
    if buf.len() % size != 0 {
        return Err(DecodeError::BadField { field: "record array length", value: buf.len() as u64 });
    }
    Ok(buf.chunks_exact(size))
}
