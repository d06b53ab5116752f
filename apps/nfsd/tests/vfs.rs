//! vsic-nfsd's file-system mapping, called as fernfs calls it: changes
//! are made in memory and reach the device (seen by a second, fresh mount
//! of the same file) with the front's commit; handles survive a restart,
//! stale ones are refused; the write verifier changes across a restart;
//! readdir pages.

use fernfs::vfs::NFSFileSystem;
use fernfs::xdr::nfs3::file::stable_how;
use fernfs::xdr::nfs3::{nfsstat3, nfsstring, sattr3};
use vsic_fs::Fs;
use vsic_nfsd::VsicNfs;

mod common;
use common::Image;

fn name(s: &str) -> nfsstring {
    nfsstring(s.as_bytes().to_vec())
}

#[tokio::test]
async fn changes_reach_the_device_with_the_commit() {
    let img = Image::new("durable");
    let nfs = VsicNfs::new(Fs::mkfs(img.open()).unwrap());
    let root = nfs.root_dir();
    let (d, _) = nfs.mkdir(root, &name("dir")).await.unwrap();
    let (f, attr) = nfs.create(d, &name("f"), sattr3::default()).await.unwrap();
    assert_eq!(attr.size, 0);
    let (a, how, n) = nfs
        .write(f, 5000, b"hello", stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert_eq!((a.size, how, n), (5005, stable_how::FILE_SYNC, 5));
    assert!(
        img.on_device().read_file("/dir/f").is_err(),
        "nothing is committed by the calls themselves"
    );
    nfs.sync().unwrap();
    let dev = img.on_device();
    assert_eq!(dev.read_file("/dir/f").unwrap()[5000..], *b"hello");

    let s = sattr3 {
        size: Some(2),
        ..Default::default()
    };
    assert_eq!(nfs.setattr(f, s).await.unwrap().size, 2);
    nfs.rename(d, &name("f"), root, &name("g")).await.unwrap();
    nfs.sync().unwrap();
    let dev = img.on_device();
    assert_eq!(dev.read_file("/g").unwrap(), b"\0\0");
    nfs.remove(root, &name("g")).await.unwrap();
    nfs.remove(root, &name("dir")).await.unwrap(); // RMDIR arrives as remove
    nfs.sync().unwrap();
    assert!(img.on_device().readdir("/").unwrap().is_empty());
    assert!(matches!(
        nfs.lookup(root, &name("g")).await,
        Err(nfsstat3::NFS3ERR_NOENT)
    ));
    img.on_device().check().unwrap();
}

#[tokio::test]
async fn handles_survive_a_restart_and_the_verifier_does_not() {
    let img = Image::new("handles");
    let nfs = VsicNfs::new(Fs::mkfs(img.open()).unwrap());
    let (f, _) = nfs
        .create(nfs.root_dir(), &name("f"), sattr3::default())
        .await
        .unwrap();
    nfs.write(f, 0, b"abc", stable_how::FILE_SYNC)
        .await
        .unwrap();
    nfs.sync().unwrap();
    let fh = nfs.id_to_fh(f);
    let verf = nfs.server_id();
    drop(nfs);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let nfs = VsicNfs::new(Fs::mount(img.open()).unwrap());
    assert_ne!(
        nfs.server_id(),
        verf,
        "a new write verifier after a restart"
    );
    let id = nfs.fh_to_id(&fh).expect("the handle is still valid");
    assert_eq!(nfs.read(id, 0, 100).await.unwrap(), (b"abc".to_vec(), true));
    nfs.remove(nfs.root_dir(), &name("f")).await.unwrap();
    assert!(matches!(nfs.fh_to_id(&fh), Err(nfsstat3::NFS3ERR_STALE)));
    let mut other = fh.clone();
    other.data[0] ^= 1;
    assert!(matches!(
        nfs.fh_to_id(&other),
        Err(nfsstat3::NFS3ERR_BADHANDLE)
    ));
    other.data.truncate(3);
    assert!(matches!(
        nfs.fh_to_id(&other),
        Err(nfsstat3::NFS3ERR_BADHANDLE)
    ));
}

#[tokio::test]
async fn readdir_pages_through_every_entry_once() {
    let img = Image::new("readdir");
    let nfs = VsicNfs::new(Fs::mkfs(img.open()).unwrap());
    let root = nfs.root_dir();
    for i in 0..100 {
        nfs.create(root, &name(&format!("n{i}")), sattr3::default())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    loop {
        let page = nfs.readdir_index(root, seen.len(), 7).await.unwrap();
        assert!(page.entries.len() <= 7);
        for e in &page.entries {
            seen.push(String::from_utf8(e.name.0.clone()).unwrap());
        }
        if page.end {
            break;
        }
    }
    seen.sort();
    let mut want: Vec<_> = (0..100).map(|i| format!("n{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    assert!(matches!(
        nfs.create_exclusive(root, &name("n1"), [0; 8]).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    ));
}

/// EXCLUSIVE CREATE keeps the client's verifier with the file: the same
/// call again (a retransmission, also after a restart) succeeds with the
/// same file, another verifier gets EXIST.
#[tokio::test]
async fn exclusive_create_is_answered_again_by_its_verifier() {
    let img = Image::new("excl");
    let nfs = VsicNfs::new(Fs::mkfs(img.open()).unwrap());
    let root = nfs.root_dir();
    let v = *b"\x01\x02\x03\x04\xf5\xf6\xf7\xf8";
    let ino = nfs.create_exclusive(root, &name("x"), v).await.unwrap();
    assert_eq!(nfs.create_exclusive(root, &name("x"), v).await, Ok(ino));
    nfs.sync().unwrap();
    drop(nfs);
    let nfs = VsicNfs::new(Fs::mount(img.open()).unwrap());
    assert_eq!(nfs.create_exclusive(root, &name("x"), v).await, Ok(ino));
    let mut other = v;
    other[7] ^= 1;
    assert!(matches!(
        nfs.create_exclusive(root, &name("x"), other).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    ));
}
