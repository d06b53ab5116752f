//! Decoding errors and length checks shared by every layout in this crate.

/// Why a byte buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is shorter than the fixed layout.
    #[error("truncated: need {need} bytes, got {got}")]
    Truncated { need: usize, got: usize },
    /// The buffer is longer than the fixed layout allows.
    #[error("oversized: at most {max} bytes, got {got}")]
    Oversized { max: usize, got: usize },
    /// A magic number does not match.
    #[error("bad magic: expected {expected:#010x}, got {got:#010x}")]
    BadMagic { expected: u32, got: u32 },
    /// The layout version is not one this build understands.
    #[error("unsupported version {got} (this build speaks {supported})")]
    BadVersion { supported: u16, got: u16 },
    /// A field holds a value outside its domain.
    #[error("field {field} has invalid value {value:#x}")]
    BadField { field: &'static str, value: u64 },
    /// A text form (capability file) could not be parsed.
    #[error("{0}")]
    BadText(String),
}

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

/// Checks that a reserved field is zero.
pub(crate) fn reserved_zero(field: &'static str, value: u64) -> Result<(), DecodeError> {
    if value == 0 {
        Ok(())
    } else {
        Err(DecodeError::BadField { field, value })
    }
}
