//! The capability store: an ext4 file system on a VSA that the kernel
//! mounts, so that capability files keep their owners and permissions and
//! survive a guest reboot.
//!
//! `store init` creates a VSA, gives it the store role through the PF,
//! attaches it to slot 0 of a VSIC handed to virtio_blk, makes ext4 on the
//! disk with the label [`STORE_LABEL`] and mounts it. After a reboot the
//! controller still has the VSA, its role and its attachment (all device
//! metadata), every function starts on virtio_blk, and `store mount` asks
//! the PF which VSA has the store role and at which VSIC's slot 0 it is
//! ([`locate`]), then mounts that VSIC's disk. A label alone proves nothing:
//! any VSIC owner can write an ext4 labelled vsic-store into a VSA of
//! their own, but only the PF owner can set a role.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vsic_abi::records::{VsaInfo, VsicInfo, ROLE_STORE};

pub const STORE_LABEL: &str = "vsic-store";
pub const DEFAULT_MOUNTPOINT: &str = "/var/lib/vsic";
/// The store's own root capability, inside the store.
pub const STORE_CAP: &str = "store.cap";

/// ext4 superblock: 1024 bytes into the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;
const MAGIC_OFFSET: usize = 0x38;
const EXT_MAGIC: u16 = 0xef53;
const LABEL_OFFSET: usize = 0x78;
const LABEL_LEN: usize = 16;

/// The volume label of an ext2/3/4 superblock, if `sb` is one.
pub fn ext_label(sb: &[u8]) -> Option<String> {
    let magic = sb.get(MAGIC_OFFSET..MAGIC_OFFSET + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT_MAGIC {
        return None;
    }
    let raw = sb.get(LABEL_OFFSET..LABEL_OFFSET + LABEL_LEN)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Reads the label of the file system on `device` (None: no ext file
/// system, or unreadable).
pub fn device_label(device: &Path) -> Option<String> {
    let file = File::open(device).ok()?;
    let mut sb = vec![0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET).ok()?;
    ext_label(&sb)
}

/// Why the controller's lists name no single place for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocateError {
    /// No VSA has the store role.
    NoStore,
    /// The store VSA is not at slot 0 of any VSIC.
    NotAttached { vsa: u64 },
    /// The store VSA is at slot 0 of several VSICs.
    Ambiguous { vsa: u64, vsics: Vec<u32> },
}

impl std::fmt::Display for LocateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocateError::NoStore => write!(
                f,
                "no VSA has the store role (the controller knows of no capability store); \
                 create one with `vsicctl store init`, or mark a store made before roles \
                 existed with `vsicctl vsa role --id ID --role store`"
            ),
            LocateError::NotAttached { vsa } => write!(
                f,
                "the store is VSA {vsa}, but it is not attached at slot 0 of any VSIC"
            ),
            LocateError::Ambiguous { vsa, vsics } => write!(
                f,
                "the store, VSA {vsa}, is attached at slot 0 of several VSICs ({}): refusing to choose",
                vsics.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

impl std::error::Error for LocateError {}

/// The store's VSA id and the VSIC whose slot 0 holds it, from the
/// controller's lists: found by the role only the PF can set.
pub fn locate(vsas: &[VsaInfo], vsics: &[VsicInfo]) -> Result<(u64, u32), LocateError> {
    let vsa = vsas
        .iter()
        .find(|v| v.role == ROLE_STORE)
        .ok_or(LocateError::NoStore)?
        .vsa_id;
    let at: Vec<u32> = vsics
        .iter()
        .filter(|v| v.slots.first().is_some_and(|s| s.vsa_id == vsa))
        .map(|v| v.vsic)
        .collect();
    match at.as_slice() {
        [] => Err(LocateError::NotAttached { vsa }),
        [n] => Ok((vsa, *n)),
        _ => Err(LocateError::Ambiguous { vsa, vsics: at }),
    }
}

/// The mount point of `device` if it is mounted, from a mounts table.
pub fn mounted_at(mounts: &str, device: &Path) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let source = words.next()?;
        let target = words.next()?;
        (Path::new(source) == device).then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// Whether anything is mounted on `dir`, from a mounts table.
pub fn is_mount_point(mounts: &str, dir: &Path) -> bool {
    mounts.lines().any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|t| Path::new(&unescape_mount_path(t)) == dir)
    })
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes ext4 labelled [`STORE_LABEL`] on `device`.
pub fn mkfs(device: &Path) -> Result<(), String> {
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", STORE_LABEL])
        .arg(device)
        .output()
        .map_err(|e| format!("running mkfs.ext4: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mkfs.ext4 {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Mounts the ext4 file system on `device` at `dir` (created, mode 0755).
pub fn mount(device: &Path, dir: &Path) -> Result<(), String> {
    crate::functions::ensure_public_dir(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| "path holds a NUL byte".to_string())
    };
    let (source, target) = (c(device)?, c(dir)?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting {} on {}: {}",
            device.display(),
            dir.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(label: &[u8]) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        sb[MAGIC_OFFSET..MAGIC_OFFSET + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[LABEL_OFFSET..LABEL_OFFSET + label.len()].copy_from_slice(label);
        sb
    }

    #[test]
    fn labels_of_ext_superblocks() {
        assert_eq!(
            ext_label(&superblock(b"vsic-store")).as_deref(),
            Some("vsic-store")
        );
        assert_eq!(ext_label(&superblock(b"")).as_deref(), Some(""));
        // All 16 bytes used: no terminator.
        assert_eq!(
            ext_label(&superblock(b"0123456789abcdef")).as_deref(),
            Some("0123456789abcdef")
        );
        let mut not_ext = superblock(b"vsic-store");
        not_ext[MAGIC_OFFSET] = 0;
        assert_eq!(ext_label(&not_ext), None);
        assert_eq!(ext_label(&[0u8; 10]), None);
    }

    fn vsa(vsa_id: u64, role: u32) -> VsaInfo {
        VsaInfo {
            vsa_id,
            size: 1 << 20,
            extents: 1,
            stripe: 1,
            live_tokens: 1,
            attachments: 1,
            role,
        }
    }

    fn vsic(n: u32, slot0: u64) -> VsicInfo {
        let mut slots = [vsic_abi::records::SlotInfo::default(); 16];
        slots[0].vsa_id = slot0;
        slots[1].vsa_id = 9;
        VsicInfo {
            vsic: n,
            enabled: true,
            queues: 1,
            qos_bytes_per_sec: 0,
            qos_iops: 0,
            slots,
        }
    }

    #[test]
    fn the_store_is_found_by_its_role_not_its_label() {
        use vsic_abi::records::ROLE_NONE;
        // VSA 1 is a tenant's (its file system may carry any label); VSA 2
        // has the store role.
        let vsas = [vsa(1, ROLE_NONE), vsa(2, ROLE_STORE)];
        assert_eq!(locate(&vsas, &[vsic(0, 1), vsic(2, 2)]), Ok((2, 2)));
        assert_eq!(
            locate(&vsas, &[vsic(0, 1), vsic(1, 0)]),
            Err(LocateError::NotAttached { vsa: 2 })
        );
        // At slot 1 only (VSA 9 everywhere there) is not the store's place.
        assert_eq!(
            locate(&[vsa(9, ROLE_STORE)], &[vsic(0, 1)]),
            Err(LocateError::NotAttached { vsa: 9 })
        );
        assert_eq!(
            locate(&vsas, &[vsic(0, 2), vsic(3, 2)]),
            Err(LocateError::Ambiguous { vsa: 2, vsics: vec![0, 3] })
        );
        assert_eq!(locate(&[vsa(1, ROLE_NONE)], &[vsic(0, 1)]), Err(LocateError::NoStore));
        assert!(LocateError::NoStore.to_string().contains("store init"));
    }

    #[test]
    fn mount_tables() {
        let table =
            "/dev/vdb /var/lib/vsic ext4 rw 0 0\n/dev/vdc /mnt/with\\040space ext4 rw 0 0\n";
        assert_eq!(
            mounted_at(table, Path::new("/dev/vdb")),
            Some(PathBuf::from("/var/lib/vsic"))
        );
        assert_eq!(
            mounted_at(table, Path::new("/dev/vdc")),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(mounted_at(table, Path::new("/dev/vda")), None);
        assert!(is_mount_point(table, Path::new("/mnt/with space")));
        assert!(!is_mount_point(table, Path::new("/var/lib")));
        assert_eq!(unescape_mount_path("a\\134b\\0"), "a\\b\\0");
    }
}
