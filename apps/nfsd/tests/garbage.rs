//! What a client may send that is not what it should be. Well-formed calls
//! of every NFSv3 and MOUNT procedure are mutated (bytes flipped, words set
//! to extreme values, cut short, lengthened, spliced) by a seeded generator
//! and run through the server's call path in-process, and random byte
//! streams through the record reader. Every call must get a reply carrying
//! its xid, or none when it is not a call at all; nothing may panic; the
//! file system must pass its checker after every batch and, mounted afresh
//! from the device, at the end; and a well-formed session must still work.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr};

use vsic_fs::Fs;
use vsic_nfsd::server::Server;
use vsic_nfsd::VsicNfs;

mod common;
use common::mutate::{mutate, pick};
use common::rng::Rng;
use common::Image;

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// XDR by hand: what a client puts on the wire, without the crate's types
/// (so a mutant can be anything).
#[derive(Default, Clone)]
struct Xdr(Vec<u8>);

impl Xdr {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn opaque(mut self, b: &[u8]) -> Self {
        self = self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    /// sattr3: mode 0644 set, the rest left as they are.
    fn sattr(self) -> Self {
        self.u32(1).u32(0o644).u32(0).u32(0).u32(0).u32(0).u32(0)
    }
    fn dirop(self, dir: &[u8], name: &str) -> Self {
        self.opaque(dir).opaque(name.as_bytes())
    }
}

/// A call message: header with AUTH_UNIX as root, then `args`.
fn call(xid: u32, prog: u32, proc: u32, args: &Xdr) -> Vec<u8> {
    let cred = Xdr::default().u32(0).opaque(b"test").u32(0).u32(0).u32(0);
    let mut m = Xdr::default()
        .u32(xid)
        .u32(0) // CALL
        .u32(2)
        .u32(prog)
        .u32(3)
        .u32(proc)
        .u32(1) // AUTH_UNIX
        .opaque(&cred.0)
        .u32(0) // AUTH_NONE verifier
        .u32(0)
        .0;
    m.extend_from_slice(&args.0);
    m
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// Runs a call; the reply's bytes after the accepted-reply header when it
/// succeeded at the RPC level.
async fn run(server: &Server, rec: &[u8]) -> Option<Vec<u8>> {
    let reply = server.call(rec, CLIENT).await?;
    let r = reply.bytes;
    assert!(r.len() >= 12, "a reply of {} bytes", r.len());
    assert_eq!(&r[..4], &rec[..4], "the reply carries the call's xid");
    assert_eq!(word(&r, 1), 1, "a REPLY");
    (word(&r, 2) == 0 && r.len() >= 24 && word(&r, 5) == 0).then(|| r[24..].to_vec())
}

/// The root handle (MOUNT MNT "/").
async fn root(server: &Server) -> Vec<u8> {
    let r = run(server, &call(1, MOUNT, 1, &Xdr::default().opaque(b"/")))
        .await
        .expect("MNT");
    assert_eq!(word(&r, 0), 0, "MNT status");
    let len = word(&r, 1) as usize;
    r[8..8 + len].to_vec()
}

/// CREATE (UNCHECKED) `name` in `dir`: the new file's handle.
async fn create(server: &Server, xid: u32, dir: &[u8], name: &str) -> Vec<u8> {
    let args = Xdr::default().dirop(dir, name).u32(0).sattr();
    let r = run(server, &call(xid, NFS, 8, &args))
        .await
        .expect("CREATE");
    assert_eq!(word(&r, 0), 0, "CREATE status");
    assert_eq!(word(&r, 1), 1, "a handle follows");
    let len = word(&r, 2) as usize;
    r[12..12 + len].to_vec()
}

/// One well-formed call of every NFSv3 procedure and of MOUNT's.
fn corpus(root: &[u8], file: &[u8]) -> Vec<(u32, u32, Xdr)> {
    let x = Xdr::default;
    let nfs = |proc, a: Xdr| (NFS, proc, a);
    vec![
        nfs(0, x()),
        nfs(1, x().opaque(file)),
        nfs(2, x().opaque(file).sattr().u32(0)),
        nfs(3, x().dirop(root, "f")),
        nfs(4, x().opaque(file).u32(0x3f)),
        nfs(5, x().opaque(file)),
        nfs(6, x().opaque(file).u64(0).u32(4096)),
        nfs(
            7,
            x().opaque(file).u64(100).u32(8).u32(2).opaque(b"written!"),
        ),
        nfs(8, x().dirop(root, "new").u32(0).sattr()),
        nfs(8, x().dirop(root, "excl").u32(2).u64(0x1122_3344_5566_7788)),
        nfs(9, x().dirop(root, "dir").sattr()),
        nfs(10, x().dirop(root, "sym").sattr().opaque(b"f")),
        nfs(11, x().dirop(root, "node").u32(6)),
        nfs(12, x().dirop(root, "new")),
        nfs(13, x().dirop(root, "dir")),
        nfs(14, x().dirop(root, "f").dirop(root, "g")),
        nfs(15, x().opaque(file).dirop(root, "link")),
        nfs(16, x().opaque(root).u64(0).u64(0).u32(4096)),
        nfs(17, x().opaque(root).u64(0).u64(0).u32(4096).u32(8192)),
        nfs(18, x().opaque(root)),
        nfs(19, x().opaque(root)),
        nfs(20, x().opaque(root)),
        nfs(21, x().opaque(file).u64(0).u32(0)),
        (MOUNT, 0, x()),
        (MOUNT, 1, x().opaque(b"/")),
        (MOUNT, 2, x()),
        (MOUNT, 3, x().opaque(b"/")),
        (MOUNT, 4, x()),
        (MOUNT, 5, x()),
    ]
}

#[tokio::test]
async fn mutated_calls_get_answers_and_leave_the_file_system_consistent() {
    let img = Image::new("calls");
    let server = Server::new(VsicNfs::new(Fs::mkfs(img.open()).unwrap()), 2049, None);
    let root = root(&server).await;
    let file = create(&server, 2, &root, "f").await;
    let calls: Vec<Vec<u8>> = corpus(&root, &file)
        .iter()
        .enumerate()
        .map(|(i, (prog, proc, args))| call(100 + i as u32, *prog, *proc, args))
        .collect();
    // Every well-formed call is answered.
    for c in &calls {
        assert!(server.call(c, CLIENT).await.is_some(), "no reply");
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut answered, mut silent, mut ran_ok, mut ran_err) = (0, 0, 0, 0);
    for n in 0..4000u32 {
        let base = &calls[pick(&mut rng, calls.len())];
        let other = &calls[pick(&mut rng, calls.len())];
        // The xid (4 bytes) stays; it is set apart for each mutant below.
        let mut m = mutate(&mut rng, base.clone(), other, 4, &[]);
        m[..4].copy_from_slice(&(10_000 + n).to_be_bytes());
        // A header mangled out of being a call gets no reply: count both.
        match server.call(&m, CLIENT).await {
            Some(r) => {
                let b = &r.bytes;
                assert_eq!(&b[..4], &m[..4], "mutant {n}: the reply's xid");
                answered += 1;
                // Accepted and run: the procedure's own status follows.
                if b.len() >= 28 && word(b, 2) == 0 && word(b, 5) == 0 {
                    if word(b, 6) == 0 {
                        ran_ok += 1;
                    } else {
                        ran_err += 1;
                    }
                }
            }
            None => silent += 1,
        }
        if n % 500 == 499 {
            server.nfs().sync().expect("commit");
            let report = server.nfs().lock().check();
            assert!(report.is_ok(), "after mutant {n}: {report:?}");
        }
    }
    // Most mutants touch the header (AUTH_UNIX makes it most of a short
    // call), and a header that no longer decodes gets no reply.
    assert!(
        answered > 1000 && silent > 1000,
        "{answered} answered, {silent} silent: the mutants miss one of the paths"
    );
    // And of the answered ones, procedures ran, succeeding and failing.
    assert!(
        ran_ok > 100 && ran_err > 100,
        "{ran_ok} procedures succeeded, {ran_err} failed"
    );
    eprintln!("{answered} answered ({ran_ok} ran and succeeded, {ran_err} ran and failed), {silent} silent");
    // The server still serves a well-formed session.
    let g = create(&server, 20_000, &root, "after").await;
    let w = Xdr::default()
        .opaque(&g)
        .u64(0)
        .u32(5)
        .u32(2)
        .opaque(b"hello");
    let r = run(&server, &call(20_001, NFS, 7, &w))
        .await
        .expect("WRITE");
    assert_eq!(word(&r, 0), 0, "WRITE status");
    let r = run(
        &server,
        &call(20_002, NFS, 6, &Xdr::default().opaque(&g).u64(0).u32(100)),
    )
    .await
    .expect("READ");
    assert_eq!(word(&r, 0), 0, "READ status");
    assert_eq!(&r[r.len() - 8..r.len() - 3], b"hello");
    server.nfs().sync().expect("commit");
    drop(server);
    // What the commits left on the device mounts and checks.
    let fs = Fs::mount(img.open()).expect("mount after the mutants");
    fs.check().expect("check after the mutants");
}

#[tokio::test]
async fn random_streams_never_make_the_record_reader_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..2000 {
        let mut bytes: Vec<u8> = (0..pick(&mut rng, 256))
            .map(|_| rng.next_u64() as u8)
            .collect();
        // Often a plausible mark: a short fragment, last or not.
        if bytes.len() >= 4 && pick(&mut rng, 2) == 0 {
            let len = pick(&mut rng, 64) as u32 | if pick(&mut rng, 2) == 0 { 1 << 31 } else { 0 };
            bytes[..4].copy_from_slice(&len.to_be_bytes());
        }
        let mut r = Cursor::new(bytes.clone());
        let mut records = 0usize;
        while let Ok(Some(rec)) = vsic_nfsd::front::read_record(&mut r).await {
            assert!(rec.len() <= bytes.len(), "a record longer than its input");
            records += 1;
            assert!(records <= bytes.len() / 4 + 1, "records out of nothing");
        }
    }
    // A mark announcing more than the largest record is an error at once.
    let mut r = Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    assert!(vsic_nfsd::front::read_record(&mut r).await.is_err());
}
