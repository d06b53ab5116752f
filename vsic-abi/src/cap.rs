//! Capability tokens.
//!
//! The controller mints a root token for every VSA and can derive restricted
//! ones. A token carries 256 random bits; the device keeps only a digest of
//! them, so a token cannot be forged from the device's metadata.
//!
//! Wire form (64 bytes): [`CapTokenWire`]; reserved fields are zero.
//!
//! File form (one line, what `vsicctl` writes into capability files):
//! `vsic-cap v1 vsa=ID token=ID rights=rwa secret=64HEX`.

use crate::layout::{wire_layout, Layout, U16, U32, U64};
use crate::wire::reserved_zero;
use crate::DecodeError;
use std::fmt;

pub const CAP_MAGIC: u32 = u32::from_le_bytes(*b"VCAP");
pub const CAP_VERSION: u16 = 1;
pub const SECRET_LEN: usize = 32;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(pub u32);

impl Rights {
    /// Attach for reading.
    pub const READ: Rights = Rights(1);
    /// Attach for writing.
    pub const WRITE: Rights = Rights(2);
    /// Delete, resize, and revoke the whole VSA.
    pub const ADMIN: Rights = Rights(4);
    pub const ALL: Rights = Rights(7);

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    pub fn minus(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }
    pub fn is_valid(self) -> bool {
        self.0 & !Self::ALL.0 == 0
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |r: Rights, ch: char| if self.contains(r) { ch } else { '-' };
        write!(f, "{}{}{}", c(Rights::READ, 'r'), c(Rights::WRITE, 'w'), c(Rights::ADMIN, 'a'))
    }
}

impl std::str::FromStr for Rights {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut r = Rights(0);
        for ch in s.chars() {
            r = r.union(match ch {
                'r' => Rights::READ,
                'w' => Rights::WRITE,
                'a' => Rights::ADMIN,
                '-' => Rights(0),
                _ => return Err(DecodeError::BadText(format!("unknown right '{ch}' in '{s}'"))),
            });
        }
        Ok(r)
    }
}

/// One capability token.
#[derive(Clone, PartialEq, Eq)]
pub struct CapToken {
    pub vsa_id: u64,
    pub token_id: u32,
    pub rights: Rights,
    pub secret: [u8; SECRET_LEN],
}

// The secret never appears in debug output or logs.
impl fmt::Debug for CapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapToken")
            .field("vsa_id", &self.vsa_id)
            .field("token_id", &self.token_id)
            .field("rights", &format_args!("{}", self.rights))
            .finish_non_exhaustive()
    }
}

wire_layout! {
    /// A capability token as it travels (see [`CapToken`]).
    pub struct CapTokenWire(64 bytes) {
        0 => magic: U32,
        4 => version: U16,
        6 => reserved: U16,
        8 => vsa_id: U64,
        16 => token_id: U32,
        20 => rights: U32,
        24 => reserved_2: U64,
        32 => secret: [u8; SECRET_LEN],
    }
}

impl CapToken {
    pub const LEN: usize = CapTokenWire::LEN;

    pub fn encode(&self) -> [u8; Self::LEN] {
        zerocopy::transmute!(CapTokenWire {
            magic: CAP_MAGIC.into(),
            version: CAP_VERSION.into(),
            vsa_id: self.vsa_id.into(),
            token_id: self.token_id.into(),
            rights: self.rights.0.into(),
            secret: self.secret,
            ..Default::default()
        })
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let w = CapTokenWire::read_exact(b)?;
        let magic = w.magic.get();
        if magic != CAP_MAGIC {
            return Err(DecodeError::BadMagic { expected: CAP_MAGIC, got: magic });
        }
        let version = w.version.get();
        if version != CAP_VERSION {
            return Err(DecodeError::BadVersion { supported: CAP_VERSION, got: version });
        }
        reserved_zero("reserved", w.reserved.get().into())?;
        reserved_zero("reserved", w.reserved_2.get())?;
        let rights = Rights(w.rights.get());
        if !rights.is_valid() {
            return Err(DecodeError::BadField { field: "rights", value: rights.0 as u64 });
        }
        Ok(Self { vsa_id: w.vsa_id.get(), token_id: w.token_id.get(), rights, secret: w.secret })
    }

    /// The one-line text form stored in capability files.
    pub fn to_text(&self) -> String {
        let hex: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "vsic-cap v1 vsa={} token={} rights={} secret={}\n",
            self.vsa_id, self.token_id, self.rights, hex
        )
    }

    pub fn from_text(text: &str) -> Result<Self, DecodeError> {
        let bad = |why: &str| DecodeError::BadText(format!("not a capability file: {why}"));
        let mut words = text.split_whitespace();
        if words.next() != Some("vsic-cap") {
            return Err(bad("missing 'vsic-cap' header"));
        }
        if words.next() != Some("v1") {
            return Err(bad("unsupported version (expected v1)"));
        }
        let (mut vsa, mut token, mut rights, mut secret) = (None, None, None, None);
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| bad("expected key=value"))?;
            match k {
                "vsa" => vsa = Some(v.parse::<u64>().map_err(|_| bad("bad vsa id"))?),
                "token" => token = Some(v.parse::<u32>().map_err(|_| bad("bad token id"))?),
                "rights" => rights = Some(v.parse::<Rights>()?),
                "secret" => secret = Some(parse_hex_secret(v).ok_or_else(|| bad("bad secret"))?),
                _ => return Err(bad("unknown key")),
            }
        }
        Ok(Self {
            vsa_id: vsa.ok_or_else(|| bad("missing vsa"))?,
            token_id: token.ok_or_else(|| bad("missing token"))?,
            rights: rights.ok_or_else(|| bad("missing rights"))?,
            secret: secret.ok_or_else(|| bad("missing secret"))?,
        })
    }
}

fn parse_hex_secret(s: &str) -> Option<[u8; SECRET_LEN]> {
    if s.len() != 2 * SECRET_LEN || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CapToken {
        let mut secret = [0u8; SECRET_LEN];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        CapToken { vsa_id: 42, token_id: 3, rights: Rights::READ.union(Rights::WRITE), secret }
    }

    #[test]
    fn wire_round_trip() {
        let t = sample();
        let b = t.encode();
        assert_eq!(&b[0..4], b"VCAP");
        assert_eq!(CapToken::decode(&b).unwrap(), t);
    }

    #[test]
    fn wire_rejects_bad_input() {
        let b = sample().encode();
        assert!(CapToken::decode(&b[..63]).is_err());
        let mut bad = b;
        bad[20] = 0xf0;
        assert!(matches!(CapToken::decode(&bad), Err(DecodeError::BadField { field: "rights", .. })));
        let mut bad = b;
        bad[1] = 0;
        assert!(matches!(CapToken::decode(&bad), Err(DecodeError::BadMagic { .. })));
    }

    #[test]
    fn text_round_trip_and_errors() {
        let t = sample();
        let text = t.to_text();
        assert!(text.starts_with("vsic-cap v1 vsa=42 token=3 rights=rw- secret="));
        assert_eq!(CapToken::from_text(&text).unwrap(), t);
        assert!(CapToken::from_text("hello").is_err());
        assert!(CapToken::from_text(&text.replace("secret=", "secret=zz")).is_err());
        assert!(CapToken::from_text(&text.replace("rights=rw-", "rights=rwx")).is_err());
    }

    #[test]
    fn debug_hides_secret() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("secret"));
    }
}
