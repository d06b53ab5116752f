//! Little-endian byte cursor for the variable-size metadata body: counts
//! and declared records ([`super::layout`]) one after another. Decoding
//! never panics: running off the end is an error.

use vsic_abi::layout::Layout;
use zerocopy::{Immutable, IntoBytes};

#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[cfg(test)]
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    #[cfg(test)]
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A declared record, as its bytes.
    pub fn put<T: IntoBytes + Immutable>(&mut self, record: &T) {
        self.buf.extend_from_slice(record.as_bytes());
    }
    /// A collection length; metadata never holds 2^32 items of anything.
    pub fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Decoder<'a> {
    buf: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated;

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.buf.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    /// A declared record.
    pub fn record<T: Layout>(&mut self) -> Result<T, Truncated> {
        T::read_from_bytes(self.take(T::LEN)?).map_err(|_| Truncated)
    }
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    #[cfg(test)]
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A collection length, checked against the bytes left so that a
    /// corrupted count cannot make the caller reserve absurd memory.
    pub fn len(&mut self, min_item_size: usize) -> Result<usize, Truncated> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_size.max(1)) > self.buf.len() {
            return Err(Truncated);
        }
        Ok(n)
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut e = Encoder::new();
        e.u32(2);
        e.u64(3);
        e.len(1);
        e.bytes(&[9]);
        let b = e.finish();
        let mut d = Decoder::new(&b);
        assert_eq!(d.u32(), Ok(2));
        assert_eq!(d.u64(), Ok(3));
        assert_eq!(d.len(1), Ok(1));
        assert_eq!(d.take(1), Ok(&[9u8][..]));
        assert_eq!(d.remaining(), 0);
        assert_eq!(d.u32(), Err(Truncated));
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.len(1), Err(Truncated));
    }
}
