//! Lower-case hex, as the management protocol carries raw admin commands,
//! payloads and tokens in JSON.

/// Why a hex string does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("odd number of hex digits ({0})")]
    OddLength(usize),
    #[error("not a hex digit at position {0}")]
    BadDigit(usize),
}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Bytes of a hex string (either case).
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return Err(HexError::OddLength(t.len()));
    }
    let digit = |i: usize| {
        (t[i] as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(HexError::BadDigit(i))
    };
    (0..t.len() / 2)
        .map(|i| Ok(digit(2 * i)? << 4 | digit(2 * i + 1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b = [0u8, 1, 0xab, 0xff, 0x7f];
        assert_eq!(encode(&b), "0001abff7f");
        assert_eq!(decode("0001ABff7f").unwrap(), b);
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(decode("0g"), Err(HexError::BadDigit(1)));
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }
}
