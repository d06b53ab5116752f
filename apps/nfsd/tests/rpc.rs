//! vsic-nfsd as a process, driven with raw ONC RPC calls over TCP: the
//! reply cache persisted on the device (a call retransmitted after a crash
//! between the commit and the reply gets the original reply and is not
//! executed again; an xid reused with other arguments is executed; the
//! cache survives checkpoints), UNSTABLE writes and COMMIT with the write
//! verifier, LINK.

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fernfs::xdr::nfs3::file::{stable_how, COMMIT3args, LINK3args, READ3args, WRITE3args};
use fernfs::xdr::nfs3::{
    createmode3, diropargs3, fattr3, nfs_fh3, nfsstat3, nfsstring, post_op_attr, sattr3, wcc_data,
};
use fernfs::xdr::rpc::{auth_flavor, auth_unix, call_body, opaque_auth, rpc_body, rpc_msg};
use fernfs::xdr::{deserialize, Deserialize, Serialize};

mod common;
use common::Image;

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const GETATTR: u32 = 1;
const LOOKUP: u32 = 3;
const READ: u32 = 6;
const WRITE: u32 = 7;
const CREATE: u32 = 8;
const REMOVE: u32 = 12;
const LINK: u32 = 15;
const COMMIT: u32 = 21;

/// A running vsic-nfsd.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(img: &Image, mkfs: bool, crash_after: Option<u64>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsic-nfsd"));
        cmd.args(["--dev", &img.dev(), "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .env_remove("VSIC_NFSD_CRASH_AFTER_COMMIT");
        if mkfs {
            cmd.arg("--mkfs");
        }
        if let Some(n) = crash_after {
            cmd.env("VSIC_NFSD_CRASH_AFTER_COMMIT", n.to_string());
        }
        let mut child = cmd.spawn().expect("start vsic-nfsd");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).expect("vsic-nfsd's first line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        // Keep draining its stderr (and show it with the test's output).
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                eprintln!("[vsic-nfsd] {l}");
            }
        });
        Server { child, port }
    }

    fn connect(&self) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client { sock }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to end by itself; true when a signal ended it.
    fn wait_crashed(mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let st = self.child.wait().unwrap();
        st.signal().is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    sock: TcpStream,
}

fn xdr<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.serialize(&mut out).unwrap();
    out
}

fn name(s: &str) -> nfsstring {
    nfsstring(s.as_bytes().to_vec())
}

fn dirop(dir: &nfs_fh3, n: &str) -> diropargs3 {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

fn guarded_create(dir: &nfs_fh3, n: &str) -> Vec<u8> {
    let mut a = xdr(&dirop(dir, n));
    a.extend(xdr(&createmode3::GUARDED));
    a.extend(xdr(&sattr3::default()));
    a
}

fn write_args(fh: &nfs_fh3, offset: u64, data: &[u8], stable: stable_how) -> Vec<u8> {
    xdr(&WRITE3args {
        file: fh.clone(),
        offset,
        count: data.len() as u32,
        stable: stable as u32,
        data: data.to_vec(),
    })
}

fn status(c: &mut Cursor<Vec<u8>>) -> nfsstat3 {
    let mut st = nfsstat3::NFS3_OK;
    st.deserialize(c).expect("an nfsstat3");
    st
}

fn get<T: Deserialize + Default>(c: &mut Cursor<Vec<u8>>) -> T {
    deserialize(c).expect("decode the reply")
}

/// One call's RPC message (header, AUTH_UNIX as root, arguments).
fn call_message(xid: u32, prog: u32, proc: u32, args: &[u8]) -> Vec<u8> {
    let cred = auth_unix {
        stamp: 0,
        machinename: b"test".to_vec(),
        uid: 0,
        gid: 0,
        gids: vec![],
    };
    let msg = rpc_msg {
        xid,
        body: rpc_body::CALL(call_body {
            rpcvers: 2,
            prog,
            vers: 3,
            proc,
            cred: opaque_auth {
                flavor: auth_flavor::AUTH_UNIX,
                body: xdr(&cred),
            },
            verf: opaque_auth::default(),
        }),
    };
    let mut body = xdr(&msg);
    body.extend_from_slice(args);
    body
}

/// One call's record (one fragment).
fn record(xid: u32, prog: u32, proc: u32, args: &[u8]) -> Vec<u8> {
    let body = call_message(xid, prog, proc, args);
    let mut wire = ((body.len() as u32) | 1 << 31).to_be_bytes().to_vec();
    wire.extend(body);
    wire
}

impl Client {
    /// Sends a call; the reply's results (after the accepted-reply
    /// header), or `None` when the connection ended without a reply.
    fn call(&mut self, xid: u32, prog: u32, proc: u32, args: &[u8]) -> Option<Cursor<Vec<u8>>> {
        let body = call_message(xid, prog, proc, args);
        // Two fragments, to exercise the front's reassembly.
        let cut = body.len() / 2;
        let mut wire = Vec::new();
        wire.extend_from_slice(&(cut as u32).to_be_bytes());
        wire.extend_from_slice(&body[..cut]);
        wire.extend_from_slice(&((body.len() - cut) as u32 | 1 << 31).to_be_bytes());
        wire.extend_from_slice(&body[cut..]);
        self.sock.write_all(&wire).expect("send");
        let mut mark = [0u8; 4];
        if self.sock.read_exact(&mut mark).is_err() {
            return None;
        }
        let m = u32::from_be_bytes(mark);
        assert!(m & 1 << 31 != 0, "one-fragment replies");
        let mut rep = vec![0u8; (m & !(1 << 31)) as usize];
        self.sock.read_exact(&mut rep).expect("reply body");
        // xid, REPLY, MSG_ACCEPTED, verifier (AUTH_NULL, empty), SUCCESS.
        let word = |i: usize| u32::from_be_bytes(rep[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), xid, "the reply's xid");
        assert_eq!(
            (word(1), word(2), word(4), word(5)),
            (1, 0, 0, 0),
            "an accepted, successful reply"
        );
        let mut c = Cursor::new(rep);
        c.set_position(24);
        Some(c)
    }

    fn root(&mut self) -> nfs_fh3 {
        let mut r = self.call(1, MOUNT, 1, &xdr(&name("/"))).unwrap();
        assert_eq!(get::<u32>(&mut r), 0, "MNT status");
        nfs_fh3 {
            data: get::<Vec<u8>>(&mut r),
        }
    }

    fn lookup(&mut self, xid: u32, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3, nfsstat3> {
        let mut r = self.call(xid, NFS, LOOKUP, &xdr(&dirop(dir, n))).unwrap();
        match status(&mut r) {
            nfsstat3::NFS3_OK => Ok(get::<nfs_fh3>(&mut r)),
            e => Err(e),
        }
    }

    /// CREATE GUARDED: the status and the new handle.
    fn create(&mut self, xid: u32, dir: &nfs_fh3, n: &str) -> (nfsstat3, Option<nfs_fh3>) {
        let mut r = self
            .call(xid, NFS, CREATE, &guarded_create(dir, n))
            .unwrap();
        let st = status(&mut r);
        let fh = matches!(st, nfsstat3::NFS3_OK)
            .then(|| get::<Option<nfs_fh3>>(&mut r))
            .flatten();
        (st, fh)
    }

    fn remove(&mut self, xid: u32, dir: &nfs_fh3, n: &str) -> Option<nfsstat3> {
        let mut r = self.call(xid, NFS, REMOVE, &xdr(&dirop(dir, n)))?;
        Some(status(&mut r))
    }

    /// WRITE: status, how it was committed, the verifier.
    fn write(
        &mut self,
        xid: u32,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        how: stable_how,
    ) -> (stable_how, [u8; 8]) {
        let mut r = self
            .call(xid, NFS, WRITE, &write_args(fh, offset, data, how))
            .unwrap();
        assert!(matches!(status(&mut r), nfsstat3::NFS3_OK));
        get::<wcc_data>(&mut r);
        assert_eq!(get::<u32>(&mut r), data.len() as u32);
        (get::<stable_how>(&mut r), get::<[u8; 8]>(&mut r))
    }

    fn commit(&mut self, xid: u32, fh: &nfs_fh3) -> [u8; 8] {
        let args = xdr(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        });
        let mut r = self.call(xid, NFS, COMMIT, &args).unwrap();
        assert!(matches!(status(&mut r), nfsstat3::NFS3_OK));
        get::<wcc_data>(&mut r);
        get::<[u8; 8]>(&mut r)
    }

    fn read(&mut self, xid: u32, fh: &nfs_fh3, offset: u64, count: u32) -> Vec<u8> {
        let args = xdr(&READ3args {
            file: fh.clone(),
            offset,
            count,
        });
        let mut r = self.call(xid, NFS, READ, &args).unwrap();
        assert!(matches!(status(&mut r), nfsstat3::NFS3_OK));
        get::<post_op_attr>(&mut r);
        get::<u32>(&mut r);
        get::<bool>(&mut r);
        get::<Vec<u8>>(&mut r)
    }

    fn getattr(&mut self, xid: u32, fh: &nfs_fh3) -> fattr3 {
        let mut r = self.call(xid, NFS, GETATTR, &xdr(fh)).unwrap();
        assert!(matches!(status(&mut r), nfsstat3::NFS3_OK));
        get::<fattr3>(&mut r)
    }
}

fn ok(st: nfsstat3) -> bool {
    matches!(st, nfsstat3::NFS3_OK)
}

/// REMOVE is committed, then the server dies before replying (the crash
/// hook); a new server answers the same call from a new connection with
/// the original NFS3_OK instead of executing it again (which would say
/// NOENT). The same for a CREATE GUARDED after kill -9 (EXIST otherwise).
/// An xid reused with other arguments is executed. The cache survives
/// checkpoints and another restart.
#[test]
fn a_retransmission_after_a_crash_gets_the_original_reply() {
    let img = Image::new("drc");
    let s = Server::start(&img, true, None);
    let mut c = s.connect();
    let root = c.root();
    for (i, n) in ["a", "b", "keep"].iter().enumerate() {
        assert!(ok(c.create(10 + i as u32, &root, n).0));
    }
    s.kill();

    // Committed, then aborted before the reply.
    let s = Server::start(&img, false, Some(1));
    let mut c = s.connect();
    assert_eq!(
        c.remove(0x5000, &root, "a"),
        None,
        "the crash hook ends the connection before the reply"
    );
    assert!(s.wait_crashed(), "vsic-nfsd aborted after the commit");

    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    assert!(
        matches!(c.lookup(1, &root, "a"), Err(nfsstat3::NFS3ERR_NOENT)),
        "the REMOVE was committed before the crash"
    );
    let st = c.remove(0x5000, &root, "a").unwrap();
    assert!(
        ok(st),
        "the retransmission got {st:?}, not the original NFS3_OK"
    );
    // The same call as a new request is executed: NOENT.
    assert!(matches!(
        c.remove(0x5001, &root, "a"),
        Some(nfsstat3::NFS3ERR_NOENT)
    ));
    // The same xid with other arguments is a new request, executed.
    assert!(ok(c.remove(0x5000, &root, "b").unwrap()));
    assert!(matches!(
        c.lookup(2, &root, "b"),
        Err(nfsstat3::NFS3ERR_NOENT)
    ));

    // CREATE GUARDED answered, then kill -9: the retransmission gets OK
    // and the same handle, not EXIST.
    let (st, fh) = c.create(0x6000, &root, "c");
    assert!(ok(st));
    s.kill();
    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    let (st, again) = c.create(0x6000, &root, "c");
    assert!(ok(st), "CREATE retransmitted after a restart: {st:?}");
    assert_eq!(again.unwrap().data, fh.unwrap().data);
    assert!(matches!(
        c.create(0x6001, &root, "c").0,
        nfsstat3::NFS3ERR_EXIST
    ));

    // Enough commits to fill the log: checkpoints carry the cache.
    let gen = {
        s.kill();
        img.generation()
    };
    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    for i in 0..300u32 {
        assert!(ok(c.create(0x7000 + i, &root, &format!("n{i}")).0));
    }
    s.kill();
    assert!(img.generation() > gen, "no checkpoint was written");
    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    assert!(ok(c.remove(0x5000, &root, "a").unwrap()));
    assert!(ok(c.create(0x6000, &root, "c").0));
    assert!(ok(c
        .lookup(3, &root, "keep")
        .map(|_| nfsstat3::NFS3_OK)
        .unwrap()));
}

/// UNSTABLE writes are answered UNSTABLE with the boot verifier, COMMIT
/// makes them durable (they survive kill -9) and answers the same
/// verifier; after a restart the verifier differs, and an UNSTABLE write
/// never committed is gone after kill -9. FILE_SYNC writes are durable
/// before their reply.
#[test]
fn unstable_writes_are_made_durable_by_commit() {
    let img = Image::new("commit");
    let s = Server::start(&img, true, None);
    let mut c = s.connect();
    let root = c.root();
    let f = c.create(1, &root, "f").1.unwrap();
    let one: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let (how, v1) = c.write(2, &f, 0, &one[..6000], stable_how::UNSTABLE);
    assert_eq!(how, stable_how::UNSTABLE);
    let (how, v) = c.write(3, &f, 6000, &one[6000..], stable_how::UNSTABLE);
    assert_eq!((how, v), (stable_how::UNSTABLE, v1), "one verifier per run");
    assert_eq!(c.read(4, &f, 0, 20_000), one, "unstable data reads back");
    assert_eq!(c.commit(5, &f), v1, "COMMIT answers the same verifier");
    s.kill();

    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    assert_eq!(
        c.read(1, &f, 0, 20_000),
        one,
        "committed data survived kill -9"
    );
    let (how, v2) = c.write(2, &f, 10_000, b"kept", stable_how::UNSTABLE);
    assert_eq!(how, stable_how::UNSTABLE);
    assert_ne!(v2, v1, "a new verifier after a restart");
    assert_eq!(c.getattr(3, &f).size, 10_004);
    let g = c.create(4, &root, "g").1.unwrap();
    let (how, v) = c.write(5, &g, 0, b"stable", stable_how::FILE_SYNC);
    assert_eq!((how, v), (stable_how::FILE_SYNC, v2));
    let (how, _) = c.write(6, &f, 20_000, b"lost", stable_how::UNSTABLE);
    assert_eq!(how, stable_how::UNSTABLE);
    s.kill();

    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    assert_eq!(
        c.read(1, &g, 0, 100),
        b"stable",
        "FILE_SYNC survived kill -9"
    );
    // "kept" was committed with the CREATE after it (a commit covers
    // everything applied before it); "lost" was never committed.
    assert_eq!(c.getattr(2, &f).size, 10_004, "never committed: gone");
    assert_eq!(c.read(3, &f, 10_000, 100), b"kept");
}

/// LINK: a second name for a file; both read the same bytes, nlink 2, and
/// the new name survives a restart.
#[test]
fn link_makes_a_second_name() {
    let img = Image::new("link");
    let s = Server::start(&img, true, None);
    let mut c = s.connect();
    let root = c.root();
    let f = c.create(1, &root, "f").1.unwrap();
    c.write(2, &f, 0, b"shared bytes", stable_how::FILE_SYNC);
    let args = xdr(&LINK3args {
        file: f.clone(),
        link: dirop(&root, "g"),
    });
    let mut r = c.call(3, NFS, LINK, &args).unwrap();
    let st = status(&mut r);
    assert!(ok(st), "LINK: {st:?}");
    let attr = get::<post_op_attr>(&mut r).expect("the file's attributes");
    assert_eq!(attr.nlink, 2);
    s.kill();
    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    let g = c.lookup(1, &root, "g").unwrap();
    assert_eq!(g.data, f.data, "one inode, one handle");
    assert_eq!(c.read(2, &g, 0, 100), b"shared bytes");
    assert_eq!(c.getattr(3, &f).nlink, 2);
    assert!(ok(c.remove(4, &root, "f").unwrap()));
    assert_eq!(c.getattr(5, &g).nlink, 1);
    assert_eq!(c.read(6, &g, 0, 100), b"shared bytes");
}

/// Calls that arrive together share one commit (group commit): 20 REMOVEs
/// sent in one write, the server aborted after its first commit holding
/// replies: all 20 were in it, and all 20 retransmissions are answered
/// from the cache.
#[test]
fn calls_in_flight_share_a_commit() {
    let img = Image::new("group");
    let s = Server::start(&img, true, None);
    let mut c = s.connect();
    let root = c.root();
    for i in 0..20u32 {
        assert!(ok(c.create(10 + i, &root, &format!("g{i}")).0));
    }
    s.kill();
    let s = Server::start(&img, false, Some(1));
    let mut c = s.connect();
    let calls: Vec<u8> = (0..20u32)
        .flat_map(|i| {
            record(
                0x9000 + i,
                NFS,
                REMOVE,
                &xdr(&dirop(&root, &format!("g{i}"))),
            )
        })
        .collect();
    c.sock.write_all(&calls).unwrap();
    let mut rest = Vec::new();
    let _ = c.sock.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply before the crash");
    assert!(s.wait_crashed());
    let s = Server::start(&img, false, None);
    let mut c = s.connect();
    for i in 0..20u32 {
        assert!(
            matches!(
                c.lookup(i + 1, &root, &format!("g{i}")),
                Err(nfsstat3::NFS3ERR_NOENT)
            ),
            "REMOVE {i} was not in the first commit"
        );
        assert!(ok(c.remove(0x9000 + i, &root, &format!("g{i}")).unwrap()));
    }
}
