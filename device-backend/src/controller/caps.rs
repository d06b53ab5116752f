//! Capability tokens: minting, verification and revocation sets. The device
//! keeps only a digest of each secret, so its metadata cannot forge tokens.

use sha2::{Digest, Sha256};
use vsic_abi::cap::SECRET_LEN;
use vsic_abi::{AdminStatus, CapToken, Rights};

use super::state::{PoolState, TokenRecord, VsaRecord};

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            done += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The stored digest binds the secret to its VSA and token id.
pub fn digest(vsa_id: u64, token_id: u32, secret: &[u8; SECRET_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vsic-cap-v1");
    h.update(vsa_id.to_le_bytes());
    h.update(token_id.to_le_bytes());
    h.update(secret);
    h.finalize().into()
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Mints a new token of `vsa` derived from `parent` (0 = a root token).
pub fn mint(vsa: &mut VsaRecord, parent: u32, rights: Rights) -> Result<CapToken, AdminStatus> {
    let id = vsa.next_token_id;
    vsa.next_token_id = id.checked_add(1).ok_or(AdminStatus::NoSpace)?;
    let mut secret = [0u8; SECRET_LEN];
    fill_random(&mut secret).map_err(|e| {
        log::error!("getrandom failed: {e}");
        AdminStatus::MetadataIo
    })?;
    vsa.tokens.push(TokenRecord {
        id,
        parent,
        rights,
        revoked: false,
        digest: digest(vsa.id, id, &secret),
    });
    Ok(CapToken {
        vsa_id: vsa.id,
        token_id: id,
        rights,
        secret,
    })
}

/// Checks a presented token: wire form, VSA, token id and secret must all
/// match (else BadToken); only a genuine token learns that it is revoked.
pub fn verify(state: &PoolState, token: &[u8]) -> Result<(u64, TokenRecord), AdminStatus> {
    let t = CapToken::decode(token).map_err(|_| AdminStatus::BadToken)?;
    let vsa = state.vsas.get(&t.vsa_id).ok_or(AdminStatus::BadToken)?;
    let rec = vsa.token(t.token_id).ok_or(AdminStatus::BadToken)?;
    let genuine = constant_time_eq(&digest(t.vsa_id, t.token_id, &t.secret), &rec.digest);
    if !genuine || rec.rights != t.rights {
        return Err(AdminStatus::BadToken);
    }
    if rec.revoked {
        return Err(AdminStatus::RevokedToken);
    }
    Ok((t.vsa_id, rec.clone()))
}

/// `root` and every token derived from it, directly or not.
pub fn descendants(vsa: &VsaRecord, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&current) = out.get(i) {
        for t in &vsa.tokens {
            if t.parent == current && !t.is_root() && !out.contains(&t.id) {
                out.push(t.id);
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::DriveRecord;

    fn pool_with_vsa() -> PoolState {
        let mut s = PoolState::new(
            4096,
            vec![DriveRecord {
                first_data_extent: 1,
                extent_count: 8,
            }],
            1,
        );
        s.vsas.insert(
            7,
            VsaRecord {
                id: 7,
                size: 0,
                stripe: vec![0],
                extents: vec![],
                tokens: vec![],
                next_token_id: 1,
            },
        );
        s
    }

    #[test]
    fn mint_verify_forge() {
        let mut s = pool_with_vsa();
        let v = s.vsas.get_mut(&7).unwrap();
        let root = mint(v, 0, Rights::ALL).unwrap();
        let child = mint(v, root.token_id, Rights::READ).unwrap();
        assert_ne!(root.secret, child.secret);
        assert_eq!(verify(&s, &root.encode()).unwrap().1.id, 1);
        let mut forged = root.clone();
        forged.secret[0] ^= 1;
        assert_eq!(verify(&s, &forged.encode()), Err(AdminStatus::BadToken));
        let mut widened = child.clone();
        widened.rights = Rights::ALL;
        assert_eq!(verify(&s, &widened.encode()), Err(AdminStatus::BadToken));
        let mut wrong_vsa = root.clone();
        wrong_vsa.vsa_id = 8;
        assert_eq!(verify(&s, &wrong_vsa.encode()), Err(AdminStatus::BadToken));
        assert_eq!(verify(&s, &[0u8; 10]), Err(AdminStatus::BadToken));
        s.vsas.get_mut(&7).unwrap().tokens[1].revoked = true;
        assert_eq!(verify(&s, &child.encode()), Err(AdminStatus::RevokedToken));
    }

    #[test]
    fn descendants_follow_the_tree() {
        let mut s = pool_with_vsa();
        let v = s.vsas.get_mut(&7).unwrap();
        let r = mint(v, 0, Rights::ALL).unwrap().token_id;
        let a = mint(v, r, Rights::READ).unwrap().token_id;
        let b = mint(v, a, Rights::READ).unwrap().token_id;
        let c = mint(v, r, Rights::READ).unwrap().token_id;
        let mut d = descendants(v, a);
        d.sort();
        assert_eq!(d, vec![a, b]);
        assert_eq!(descendants(v, r).len(), 4);
        assert_eq!(descendants(v, c), vec![c]);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(&[3; 32], &[3; 32]));
        let mut b = [3; 32];
        b[31] = 4;
        assert!(!constant_time_eq(&[3; 32], &b));
    }
}
