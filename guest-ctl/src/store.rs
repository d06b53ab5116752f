//! The capability store: an ext4 file system on a VSA that the kernel
//! mounts, so that capability files keep their owners and permissions and
//! survive a guest reboot.
//!
//! `store init` creates a VSA, attaches it to slot 0 of a VSIC handed to
//! virtio_blk, makes ext4 on the disk with the label [`STORE_LABEL`] and
//! mounts it. After a reboot the controller still has the VSA attached
//! (attachments are device metadata), every function starts on virtio_blk,
//! and `store mount` finds the disk by its label.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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

/// Kernel disks (`vdX`, from `sys_block`) whose file system is the store.
pub fn find_store_disks(sys_block: &Path, dev: &Path) -> Vec<String> {
    let mut disks: Vec<String> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("vd"))
        .filter(|name| device_label(&dev.join(name)).as_deref() == Some(STORE_LABEL))
        .collect();
    disks.sort();
    disks
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

    #[test]
    fn store_disks_are_found_by_label() {
        let root = std::env::temp_dir().join(format!("vsicctl-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (sys_block, dev) = (root.join("sys/block"), root.join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        for (name, label) in [
            ("vda", Some(&b"other"[..])),
            ("vdb", Some(b"vsic-store")),
            ("vdc", None),
            ("sda", Some(b"vsic-store")),
        ] {
            std::fs::create_dir_all(sys_block.join(name)).unwrap();
            let mut image = vec![0u8; SUPERBLOCK_OFFSET as usize];
            if let Some(l) = label {
                image.extend(superblock(l));
            }
            std::fs::write(dev.join(name), image).unwrap();
        }
        assert_eq!(find_store_disks(&sys_block, &dev), vec!["vdb"]);
        std::fs::remove_dir_all(&root).unwrap();
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
