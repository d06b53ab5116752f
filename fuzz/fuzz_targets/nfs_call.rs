//! Arbitrary bytes as one RPC record through vsic-nfsd's call path
//! (`Server::call`, NFSv3, MOUNT and portmap behind it), on one server over
//! a fresh 16 MiB vsic-fs image in /dev/shm (or the temp dir) that lives as
//! long as the fuzzing process: the calls change it, one after another.
//!
//! A file handle is the file system's id (random at mkfs) and an inode
//! number, so that seeds and mutants can name files, every 8 bytes equal
//! to `FS_ID_MARK` after the xid are replaced by this file system's id.
//! Inputs shorter than an xid are skipped. A reply, when there is one,
//! carries the call's xid and is an RPC REPLY; every 1,000 calls the file
//! system commits and must pass its checker. (A failure found after many
//! calls may need the calls before it: the state is not reset per input.)
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use vsic_fs::Fs;
use vsic_nfsd::server::Server;
use vsic_nfsd::VsicNfs;

/// Stands for the file system's id in a file handle (see the seeds).
const FS_ID_MARK: [u8; 8] = *b"vsicfsid";
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Target {
    rt: Runtime,
    server: Arc<Server>,
    fs_id: [u8; 8],
    calls: AtomicU64,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let img = scratch::image_path("nfs");
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(16 << 20))
            .expect("create the fuzz image");
        let dev = vsic_storage::open(&format!("file:{}", img.display()), &Default::default())
            .expect("open the fuzz image");
        // The device holds the file open: the name is not needed any more,
        // and nothing is left behind when the fuzzer exits.
        let _ = std::fs::remove_file(&img);
        let fs = Fs::mkfs(dev).expect("mkfs on the fuzz image");
        let fs_id = fs.fs_id().to_le_bytes();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = Server::new(VsicNfs::new(fs), 2049, None);
        Target {
            rt,
            server,
            fs_id,
            calls: AtomicU64::new(0),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let t = target();
    let mut record = data.to_vec();
    let mut i = 4;
    while i + 8 <= record.len() {
        if record[i..i + 8] == FS_ID_MARK {
            record[i..i + 8].copy_from_slice(&t.fs_id);
            i += 8;
        } else {
            i += 1;
        }
    }
    if let Some(reply) = t.rt.block_on(t.server.call(&record, CLIENT)) {
        let r = &reply.bytes;
        assert!(r.len() >= 12, "a reply of {} bytes", r.len());
        assert_eq!(&r[..4], &data[..4], "the reply carries the call's xid");
        assert_eq!(&r[4..8], &1u32.to_be_bytes(), "an RPC REPLY");
    }
    if t.calls.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
        t.server.nfs().sync().expect("commit");
        let report = t.server.nfs().lock().check();
        assert!(report.is_ok(), "the file system's checker: {report:?}");
    }
});
