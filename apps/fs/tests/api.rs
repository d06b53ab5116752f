//! The POSIX-like interface: each call's effect and errors, and that what
//! was synced is there after a remount, on a file and on a VSA.

mod common;

use common::{stdout, Backend};
use vsic_fs::{Fs, FsError, Kind, OpenFlags};

fn names(fs: &Fs, path: &str) -> Vec<String> {
    fs.readdir(path)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect()
}

fn posix_calls(b: &Backend) {
    let mut fs = b.mkfs();
    fs.mkdir("/a", 0o755).unwrap();
    fs.mkdir("/a/b", 0o700).unwrap();
    assert!(matches!(fs.mkdir("/a", 0o755), Err(FsError::Exists)));
    assert!(matches!(fs.mkdir("/x/y", 0o755), Err(FsError::NotFound)));

    // write, read, pread, pwrite with a hole and partial blocks.
    let fd = fs.create("/a/f", 0o644).unwrap();
    assert_eq!(fs.write(fd, b"hello ").unwrap(), 6);
    assert_eq!(fs.write(fd, b"world").unwrap(), 5);
    fs.pwrite(fd, b"XY", 10_000).unwrap();
    let mut buf = vec![0u8; 20_000];
    let n = fs.pread(fd, &mut buf, 0).unwrap();
    assert_eq!(n, 10_002);
    assert_eq!(&buf[..11], b"hello world");
    assert!(
        buf[11..10_000].iter().all(|&c| c == 0),
        "the hole reads zeros"
    );
    assert_eq!(&buf[10_000..10_002], b"XY");
    fs.pwrite(fd, b"__", 4094).unwrap(); // across a block boundary
    let mut two = [0u8; 4];
    fs.pread(fd, &mut two, 4093).unwrap();
    assert_eq!(&two, b"\0__\0");
    let mut r = [0u8; 5];
    let rd = fs.open("/a/f", OpenFlags::READ).unwrap();
    assert_eq!(fs.read(rd, &mut r).unwrap(), 5);
    assert_eq!(&r, b"hello");
    assert_eq!(fs.read(rd, &mut r).unwrap(), 5);
    assert_eq!(&r, b" worl");
    assert!(matches!(fs.pwrite(rd, b"no", 0), Err(FsError::BadFd(_))));
    fs.close(rd).unwrap();
    fs.fsync(fd).unwrap();
    fs.close(fd).unwrap();
    assert!(matches!(fs.close(fd), Err(FsError::BadFd(_))));

    // truncate shrinks into a block and grows again: zeros, not old bytes.
    fs.truncate("/a/f", 3).unwrap();
    fs.truncate("/a/f", 8).unwrap();
    assert_eq!(fs.read_file("/a/f").unwrap(), b"hel\0\0\0\0\0");
    assert_eq!(fs.stat("/a/f").unwrap().size, 8);

    // link, symlink, rename, unlink.
    fs.link("/a/f", "/a/b/g").unwrap();
    assert_eq!(fs.stat("/a/f").unwrap().nlink, 2);
    fs.symlink("/a/b/g", "/s").unwrap();
    assert_eq!(fs.readlink("/s").unwrap(), b"/a/b/g");
    assert_eq!(fs.lstat("/s").unwrap().kind, Kind::Symlink);
    assert_eq!(fs.stat("/s").unwrap().kind, Kind::File);
    assert_eq!(fs.read_file("/s").unwrap(), b"hel\0\0\0\0\0");
    fs.rename("/a/f", "/a/b/h").unwrap();
    assert_eq!(names(&fs, "/a"), ["b"]);
    assert_eq!(names(&fs, "/a/b"), ["g", "h"]);
    fs.unlink("/a/b/h").unwrap();
    assert_eq!(fs.stat("/a/b/g").unwrap().nlink, 1);
    assert!(matches!(fs.unlink("/a/b"), Err(FsError::IsDir)));
    assert!(matches!(fs.rmdir("/a/b/g"), Err(FsError::NotDir)));
    assert!(matches!(fs.rmdir("/a"), Err(FsError::NotEmpty)));
    assert!(matches!(
        fs.rename("/a", "/a/b/inside"),
        Err(FsError::Invalid(_))
    ));
    // rename of a directory over an empty one, and the link counts.
    fs.mkdir("/c", 0o755).unwrap();
    fs.rename("/a/b", "/c/b2").unwrap();
    assert_eq!(fs.stat("/a").unwrap().nlink, 2);
    assert_eq!(fs.stat("/c").unwrap().nlink, 3);
    fs.mkdir("/empty", 0o755).unwrap();
    fs.rename("/c", "/empty").unwrap();
    assert_eq!(names(&fs, "/"), ["a", "empty", "s"]);
    assert!(
        matches!(fs.stat("/s"), Err(FsError::NotFound)),
        "the symlink dangles now"
    );
    fs.symlink("loop", "/loop").unwrap();
    assert!(matches!(fs.stat("/loop"), Err(FsError::Loop)));
    let long = "n".repeat(300);
    assert!(matches!(
        fs.mkdir(&format!("/{long}"), 0o755),
        Err(FsError::NameTooLong { .. })
    ));
    fs.check().unwrap();
    fs.sync().unwrap();
    let st = fs.stat("/empty/b2/g").unwrap();
    drop(fs);

    let fs = b.mount();
    fs.check().unwrap();
    assert_eq!(
        fs.stat("/empty/b2/g").unwrap(),
        st,
        "attributes survive a remount"
    );
    assert_eq!(fs.read_file("/empty/b2/g").unwrap(), b"hel\0\0\0\0\0");
    assert_eq!(names(&fs, "/"), ["a", "empty", "loop", "s"]);
}

#[test]
fn posix_calls_on_file() {
    posix_calls(&Backend::file("fs-api", 16 << 20));
}

#[test]
fn posix_calls_on_vsa() {
    posix_calls(&Backend::vsa("fs-api", 16 << 20));
}

/// Enough operations to fill the log several times: checkpoints run, and
/// a large file written in big pieces comes back whole after a remount.
#[test]
fn checkpoints_and_a_large_file_survive_a_remount() {
    let b = Backend::file("fs-ckpt", 32 << 20);
    let mut fs = b.mkfs();
    for i in 0..1200 {
        let fd = fs.create(&format!("/f{i}"), 0o644).unwrap();
        fs.write(fd, format!("file {i}").as_bytes()).unwrap();
        fs.fsync(fd).unwrap();
        fs.close(fd).unwrap();
        if i % 3 == 0 {
            fs.unlink(&format!("/f{i}")).unwrap();
        }
    }
    let big: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let fd = fs.create("/big", 0o644).unwrap();
    for c in big.chunks(300_000) {
        fs.write(fd, c).unwrap();
    }
    fs.fsync(fd).unwrap();
    assert!(
        fs.counters.checkpoints >= 2,
        "checkpoints: {}",
        fs.counters.checkpoints
    );
    drop(fs);
    let fs = b.mount();
    let r = fs.check().unwrap();
    assert_eq!(r.files, 801);
    assert_eq!(fs.read_file("/big").unwrap(), big);
    assert_eq!(fs.read_file("/f1199").unwrap(), b"file 1199");
    assert!(matches!(fs.stat("/f3"), Err(FsError::NotFound)));
    let o = b.fs(&["check"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).starts_with("ok inodes=802 files=801"),
        "{}",
        stdout(&o)
    );
}

/// Filling the device gives NoSpace, not corruption; freeing makes room.
#[test]
fn a_full_device_says_no_space_and_recovers() {
    let b = Backend::file("fs-full", 8 << 20);
    let mut fs = b.mkfs();
    let fd = fs.create("/fill", 0o644).unwrap();
    let chunk = vec![7u8; 256 << 10];
    let mut err = None;
    for _ in 0..64 {
        if let Err(e) = fs.write(fd, &chunk) {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(FsError::NoSpace(_))), "{err:?}");
    fs.close(fd).unwrap();
    fs.unlink("/fill").unwrap();
    fs.sync().unwrap();
    let fd = fs.create("/again", 0o644).unwrap();
    fs.write(fd, &chunk).unwrap();
    fs.fsync(fd).unwrap();
    fs.check().unwrap();
}

/// A device that is not a vsic-fs is refused with a clear error; a
/// corrupted checkpoint is reported, not trusted.
#[test]
fn unformatted_and_corrupted_devices_are_refused() {
    let b = Backend::file("fs-bad", 8 << 20);
    let o = b.fs(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no vsic-fs"),
        "{o:?}"
    );
    let fs = b.mkfs();
    let slot = fs.superblock().slot_start(fs.superblock().active_slot);
    drop(fs);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(b.image())
        .unwrap();
    f.write_all_at(b"garbage", slot * 4096 + 3).unwrap();
    drop(f);
    let o = b.fs(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).starts_with("corrupt: "), "{o:?}");
}

/// The last commit unit is written with its data and one flush after both:
/// after a power cut the unit may be there without its data. Mount must
/// then drop that unit (its data CRCs do not match) and keep everything
/// before it.
#[test]
fn a_last_unit_whose_data_never_arrived_is_dropped() {
    use std::os::unix::fs::FileExt;
    let b = Backend::file("fs-lost-data", 16 << 20);
    let mut fs = b.mkfs();
    let fd = fs.create("/a", 0o644).unwrap();
    fs.write(fd, b"first").unwrap();
    fs.fsync(fd).unwrap();
    let fd2 = fs.create("/b", 0o644).unwrap();
    fs.write(fd2, &[7u8; 9000]).unwrap();
    fs.fsync(fd2).unwrap();
    let lost = fs.file_blocks(fs.stat("/b").unwrap().ino).unwrap()[1];
    drop(fs);
    // The power cut: the unit is on the medium, one data block is not.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(b.image())
        .unwrap();
    f.write_all_at(&[0u8; 4096], lost * 4096).unwrap();
    drop(f);
    let fs = b.mount();
    fs.check().unwrap();
    assert_eq!(fs.read_file("/a").unwrap(), b"first");
    assert!(
        matches!(fs.stat("/b"), Err(FsError::NotFound)),
        "the unit without its data must not replay"
    );
}

/// A block the last unit wrote and then replaced itself is free once the
/// unit is durable, and may be reused at once: its contents must not make
/// mount drop that (acknowledged) unit.
#[test]
fn a_block_replaced_within_the_last_unit_may_be_reused() {
    use std::os::unix::fs::FileExt;
    let b = Backend::file("fs-reused", 16 << 20);
    let mut fs = b.mkfs();
    let fd = fs.create("/b", 0o644).unwrap();
    fs.pwrite(fd, b"old", 0).unwrap();
    let ino = fs.stat("/b").unwrap().ino;
    let replaced = fs.file_blocks(ino).unwrap()[0];
    fs.pwrite(fd, b"new", 0).unwrap();
    fs.fsync(fd).unwrap();
    drop(fs);
    // Reused by a write whose unit never made it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(b.image())
        .unwrap();
    f.write_all_at(&[9u8; 4096], replaced * 4096).unwrap();
    drop(f);
    let fs = b.mount();
    fs.check().unwrap();
    assert_eq!(
        fs.read_file("/b").unwrap(),
        b"new",
        "the synced unit must replay"
    );
}

/// A recorded reply commits with the operations before it: after a
/// remount it is there exactly when they are; it survives checkpoints;
/// the cache keeps the newest entries within its bounds.
#[test]
fn replies_commit_with_their_operations_and_survive_checkpoints() {
    let b = Backend::file("fs-replies", 16 << 20);
    let mut fs = b.mkfs();
    fs.mkdir("/d", 0o755).unwrap();
    fs.record_reply(b"key-d", b"made d").unwrap();
    fs.sync().unwrap();
    // Not synced: neither the change nor its reply survive.
    fs.mkdir("/e", 0o755).unwrap();
    fs.record_reply(b"key-e", b"made e").unwrap();
    assert_eq!(fs.reply(b"key-e"), Some(&b"made e"[..]));
    drop(fs);
    let mut fs = b.mount();
    assert_eq!(fs.reply(b"key-d"), Some(&b"made d"[..]));
    assert!(fs.stat("/e").is_err());
    assert_eq!(fs.reply(b"key-e"), None);
    // Recorded again: the newest reply wins.
    fs.record_reply(b"key-d", b"again").unwrap();
    assert_eq!(fs.reply(b"key-d"), Some(&b"again"[..]));
    // Through checkpoints (the log of this device fills after ~256 units).
    for i in 0..600u32 {
        fs.mkdir(&format!("/n{i}"), 0o755).unwrap();
        fs.record_reply(format!("k{i}").as_bytes(), &[i as u8; 100])
            .unwrap();
        fs.sync().unwrap();
    }
    assert!(fs.counters.checkpoints >= 2, "{}", fs.counters.checkpoints);
    drop(fs);
    let fs = b.mount();
    assert_eq!(fs.superblock().version, vsic_fs::layout::VERSION);
    assert_eq!(fs.reply(b"key-d"), Some(&b"again"[..]));
    assert_eq!(fs.reply(b"k599"), Some(&[599u32 as u8; 100][..]));
    assert_eq!(fs.reply_count(), 602);
    fs.check().unwrap();
    let o = b.fs(&["info"]);
    assert!(stdout(&o).contains("replies=602"), "{}", stdout(&o));
}

#[test]
fn the_reply_cache_drops_its_oldest_entries_past_its_bounds() {
    let mut c = vsic_fs::meta::ReplyCache::default();
    c.set_limits(3, 1000);
    for i in 0..5u8 {
        c.insert(vec![i], vec![i; 10]);
    }
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(&[1]), None);
    assert_eq!(c.get(&[2]), Some(&[2u8; 10][..]));
    // A key recorded again: its older entry ages out without taking the
    // newer one along.
    c.insert(vec![2], vec![9; 10]);
    c.insert(vec![7], vec![7; 10]);
    c.insert(vec![8], vec![8; 10]);
    assert_eq!(c.get(&[2]), Some(&[9u8; 10][..]));
    // Bytes bound: one big entry pushes out the rest.
    c.insert(vec![9], vec![0; 990]);
    assert_eq!(c.len(), 1);
    assert_eq!(c.get(&[9]).map(|r| r.len()), Some(990));
    c.insert(vec![10], vec![0; 1000]); // larger than the bound: not kept
    assert_eq!(c.get(&[10]), None);
    assert_eq!(c.get(&[9]).map(|r| r.len()), Some(990));
}
