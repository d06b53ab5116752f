//! Controller-level tests: admin commands, data path, persistence and
//! recovery, driven through the public interface the front uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vsic_abi::admin::{ALL_VSICS, FLAG_READ_ONLY};
use vsic_abi::records::{decode_stats, CacheMode, ExtentRun, Identify, VsaInfo, VsicInfo};
use vsic_abi::window::{slot_base, SLOTS_PER_VSIC, WINDOW_SIZE};
use vsic_abi::{AdminCommand, AdminStatus, CapToken, Opcode, Rights};

use super::target::Work;
use super::target::{AdminTarget, BufferStorage, IoBuffers, IoTarget};
use super::testutil::TempDir;
use super::{
    AdminReply, Controller, ControllerConfig, DriveModel, DriveSpec, IoError, IoKind, ServiceModel,
};

// The fuzz test's generator, shared with the end-to-end tests.
#[path = "../../tests/common/rng.rs"]
mod rng;
use rng::Rng;

#[path = "tests_lifecycle.rs"]
mod lifecycle;

#[path = "tests_power.rs"]
mod power_cut;

// Which block device the block-device test may destroy, shared with the
// end-to-end tests.
#[path = "../../tests/common/block_device.rs"]
mod block_device;

const ES: u64 = 64 << 10;
const DRIVE_SIZE: u64 = 8 << 20;

struct Pool {
    _dir: TempDir,
    paths: Vec<PathBuf>,
}

impl Pool {
    fn new(tag: &str, drives: usize) -> Pool {
        let dir = TempDir::new(tag);
        let paths = (0..drives)
            .map(|i| dir.path().join(format!("drive{i}")))
            .collect();
        Pool { _dir: dir, paths }
    }

    fn config(&self) -> ControllerConfig {
        config_for(&self.paths)
    }

    fn open(&self) -> Arc<Controller> {
        Controller::open(self.config()).expect("open pool")
    }
}

fn config_for(paths: &[PathBuf]) -> ControllerConfig {
    ControllerConfig {
        drives: paths
            .iter()
            .map(|p| DriveSpec {
                path: p.clone(),
                size: Some(DRIVE_SIZE),
            })
            .collect(),
        vsics: 4,
        queues_per_vsic: 2,
        extent_size: ES,
        cache_mode: CacheMode::WriteBack,
        service_model: None,
        volatile_cache: None,
    }
}

fn status(r: &AdminReply) -> AdminStatus {
    AdminStatus::from_u16(r.completion.status).expect("known status")
}

/// Sends `op` with fields set by `set`, `payload` as payload out.
fn run(
    c: &Controller,
    op: Opcode,
    set: impl FnOnce(&mut AdminCommand),
    payload: &[u8],
    capacity: usize,
) -> AdminReply {
    let mut cmd = AdminCommand::new(op);
    cmd.payload_len = payload.len() as u32;
    set(&mut cmd);
    let r = c.admin(&cmd.encode(), payload, capacity);
    assert!(r.payload.len() <= capacity);
    assert_eq!(r.completion.payload_len as usize, r.payload.len());
    r
}

fn ok(r: AdminReply) -> AdminReply {
    assert_eq!(status(&r), AdminStatus::Ok, "{:?}", r.completion);
    r
}

fn create(c: &Controller, size: u64, stripe: u64) -> (u64, CapToken) {
    let r = ok(run(
        c,
        Opcode::VsaCreate,
        |m| m.args = [size, stripe, 0, 0],
        &[],
        64,
    ));
    let t = CapToken::decode(&r.payload).expect("root token");
    assert_eq!(t.vsa_id, r.completion.result0);
    assert_eq!(t.rights, Rights::ALL);
    (r.completion.result0, t)
}

fn attach(c: &Controller, vsic: u32, slot: u32, t: &CapToken, read_only: bool) -> AdminReply {
    run(
        c,
        Opcode::Attach,
        |m| {
            m.vsic = vsic;
            m.slot = slot;
            m.flags = if read_only { FLAG_READ_ONLY } else { 0 };
        },
        &t.encode(),
        0,
    )
}

fn derive(c: &Controller, t: &CapToken, read_only: bool) -> CapToken {
    let r = ok(run(
        c,
        Opcode::CapDerive,
        |m| m.flags = if read_only { FLAG_READ_ONLY } else { 0 },
        &t.encode(),
        64,
    ));
    CapToken::decode(&r.payload).expect("derived token")
}

fn with_token(c: &Controller, op: Opcode, t: &CapToken, arg0: u64) -> AdminReply {
    run(c, op, |m| m.args[0] = arg0, &t.encode(), 64)
}

/// Three buffers of uneven sizes over `buf`.
fn split3(
    buf: &mut [u8],
    storage: &mut BufferStorage,
    f: impl FnOnce(&IoBuffers<'_>) -> Result<usize, IoError>,
) -> Result<usize, IoError> {
    let n = buf.len();
    let (a, rest) = buf.split_at_mut(n / 3);
    let (b, c) = rest.split_at_mut((2 * n / 3 + 7).min(n) - n / 3);
    let mut bufs = storage.start();
    bufs.push_bytes(a);
    bufs.push_bytes(b);
    bufs.push_bytes(c);
    f(&bufs)
}

fn write(c: &Controller, vsic: u32, offset: u64, data: &[u8]) -> Result<usize, IoError> {
    let mut buf = data.to_vec();
    split3(&mut buf, &mut BufferStorage::default(), |bufs| {
        c.io(vsic, 0, IoKind::Write, offset, bufs)
    })
}

fn read(c: &Controller, vsic: u32, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
    let mut buf = vec![0xAAu8; len];
    let n = split3(&mut buf, &mut BufferStorage::default(), |bufs| {
        c.io(vsic, 1, IoKind::Read, offset, bufs)
    })?;
    assert_eq!(n, len);
    Ok(buf)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn vsa_list(c: &Controller) -> Vec<VsaInfo> {
    VsaInfo::decode_array(&ok(run(c, Opcode::ListVsas, |_| {}, &[], 1 << 16)).payload).unwrap()
}

fn vsic_list(c: &Controller) -> Vec<VsicInfo> {
    VsicInfo::decode_array(&ok(run(c, Opcode::ListVsics, |_| {}, &[], 1 << 16)).payload).unwrap()
}

fn extent_map(c: &Controller, vsa: u64) -> Vec<ExtentRun> {
    ExtentRun::decode_array(
        &ok(run(c, Opcode::ExtentMap, |m| m.args[0] = vsa, &[], 1 << 16)).payload,
    )
    .unwrap()
}

fn identify(c: &Controller) -> Identify {
    Identify::decode(&ok(run(c, Opcode::Identify, |_| {}, &[], 64)).payload).unwrap()
}

fn vsic_stats(c: &Controller, vsic: u32) -> vsic_abi::records::VsicStats {
    let r = ok(run(c, Opcode::Stats, |m| m.vsic = vsic, &[], 4096));
    decode_stats(&r.payload).unwrap()[0].0
}

fn is_err<T: std::fmt::Debug>(r: Result<T, IoError>, want: fn(&IoError) -> bool) {
    match r {
        Err(e) if want(&e) => {}
        other => panic!("unexpected result {other:?}"),
    }
}

// ------------------------------------------------------------ admin basics

#[test]
fn create_rounds_up_and_ids_are_never_reused() {
    let pool = Pool::new("ids", 1);
    let c = pool.open();
    let before = identify(&c);
    assert_eq!(before.extent_size, ES);
    assert_eq!(before.vsics, 4);
    assert_eq!(before.free_extents, before.total_extents);
    let (a, ta) = create(&c, 1, 0);
    let (b, _) = create(&c, ES + 1, 1);
    assert_eq!((a, b), (1, 2));
    let list = vsa_list(&c);
    assert_eq!(
        list.iter()
            .map(|v| (v.vsa_id, v.size, v.extents))
            .collect::<Vec<_>>(),
        vec![(1, ES, 1), (2, 2 * ES, 2)]
    );
    assert_eq!(identify(&c).free_extents, before.free_extents - 3);
    ok(with_token(&c, Opcode::VsaDelete, &ta, 0));
    let (again, _) = create(&c, ES, 0);
    assert_eq!(again, 3);
    assert_eq!(identify(&c).vsa_count, 2);
}

#[test]
fn resize_checks_and_rounding() {
    let pool = Pool::new("resize", 1);
    let c = pool.open();
    let (id, t) = create(&c, 2 * ES, 0);
    ok(attach(&c, 1, 0, &t, false));
    let r = ok(with_token(&c, Opcode::VsaExtend, &t, 3 * ES + 5));
    assert_eq!((r.completion.result0, r.completion.result1), (id, 4 * ES));
    assert_eq!(r.changed_vsics, vec![1]);
    assert_eq!(c.capacity(1), 4 * ES);
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, 4 * ES)),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, ES)),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, 0)),
        AdminStatus::ZeroSize
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, WINDOW_SIZE + 1)),
        AdminStatus::TooLarge
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, WINDOW_SIZE)),
        AdminStatus::NoSpace
    );
    let r = ok(with_token(&c, Opcode::VsaShrink, &t, ES + 1));
    assert_eq!(r.completion.result1, 2 * ES);
    assert_eq!(c.capacity(1), 2 * ES);
    assert_eq!(
        status(&with_token(&c, Opcode::VsaShrink, &t, ES - 1)),
        AdminStatus::BelowMinimum
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaShrink, &t, 0)),
        AdminStatus::ZeroSize
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaShrink, &t, 2 * ES)),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaShrink, &t, WINDOW_SIZE + 1)),
        AdminStatus::TooLarge
    );
    ok(with_token(&c, Opcode::VsaShrink, &t, ES));
    assert_eq!(vsa_list(&c)[0].extents, 1);
    // Freed extents are free again once zeroed.
    assert_eq!(identify(&c).free_extents, identify(&c).total_extents - 1);
    assert!(c.plane().state.pending_zero.is_empty());
}

#[test]
fn allocation_runs_out_and_stripes_across_drives() {
    let pool = Pool::new("alloc", 2);
    let c = pool.open();
    let total = identify(&c).total_extents;
    let (id, t) = create(&c, 6 * ES, 2);
    let runs = extent_map(&c, id);
    assert_eq!(
        runs.iter().map(|r| r.drive).collect::<Vec<_>>(),
        vec![0, 1, 0, 1, 0, 1]
    );
    assert!(runs.iter().all(|r| r.count == 1));
    assert_eq!(vsa_list(&c)[0].stripe, 2);
    assert_eq!(
        status(&run(
            &c,
            Opcode::VsaCreate,
            |m| m.args = [ES, 3, 0, 0],
            &[],
            64
        )),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&run(
            &c,
            Opcode::VsaCreate,
            |m| m.args = [total * ES, 0, 0, 0],
            &[],
            64
        )),
        AdminStatus::NoSpace
    );
    // Both drives have the same free count now: a one-drive VSA filling
    // the rest of a drive goes to the lower index, drive 0.
    let per_drive = total / 2 - 3;
    let (fill, _) = create(&c, per_drive * ES, 1);
    assert_eq!(extent_map(&c, fill)[0].drive, 0);
    // Drive 0 is full: extending the striped VSA needs room on both.
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &t, 8 * ES)),
        AdminStatus::NoSpace
    );
    // A one-drive VSA lands on the drive with free extents.
    let (solo, _) = create(&c, ES, 1);
    assert_eq!(extent_map(&c, solo)[0].drive, 1);
    // Contiguous allocations show up as one run.
    let (big, _) = create(&c, 4 * ES, 1);
    assert_eq!(extent_map(&c, big).len(), 1);
    assert_eq!(extent_map(&c, big)[0].count, 4);
}

// ------------------------------------------------------------ capabilities

#[test]
fn capability_checks() {
    let pool = Pool::new("caps", 1);
    let c = pool.open();
    let (id, root) = create(&c, 2 * ES, 0);
    let (_, other) = create(&c, ES, 0);
    let mut forged = root.clone();
    forged.secret[7] ^= 0x40;
    assert_eq!(
        status(&attach(&c, 0, 0, &forged, false)),
        AdminStatus::BadToken
    );
    let mut wrong_vsa = root.clone();
    wrong_vsa.vsa_id = other.vsa_id;
    assert_eq!(
        status(&attach(&c, 0, 0, &wrong_vsa, false)),
        AdminStatus::BadToken
    );
    let mut unknown_vsa = root.clone();
    unknown_vsa.vsa_id = 99;
    assert_eq!(
        status(&with_token(&c, Opcode::VsaDelete, &unknown_vsa, 0)),
        AdminStatus::BadToken
    );
    let mut unknown_token = root.clone();
    unknown_token.token_id = 42;
    assert_eq!(
        status(&attach(&c, 0, 0, &unknown_token, false)),
        AdminStatus::BadToken
    );
    let mut garbage = root.encode();
    garbage[0] = 0;
    assert_eq!(
        status(&run(&c, Opcode::Attach, |_| {}, &garbage, 0)),
        AdminStatus::BadToken
    );

    let rw = derive(&c, &root, false);
    assert_eq!(rw.rights, Rights::READ.union(Rights::WRITE));
    let ro = derive(&c, &rw, true);
    assert_eq!(ro.rights, Rights::READ);
    assert_eq!(
        derive(&c, &ro, false).rights,
        Rights::READ,
        "derivation never widens rights"
    );
    assert_eq!(
        status(&attach(&c, 0, 0, &ro, false)),
        AdminStatus::PermissionDenied
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaDelete, &rw, 0)),
        AdminStatus::PermissionDenied
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaExtend, &rw, 4 * ES)),
        AdminStatus::PermissionDenied
    );
    assert_eq!(
        status(&with_token(&c, Opcode::VsaShrink, &ro, ES)),
        AdminStatus::PermissionDenied
    );
    let r = ok(attach(&c, 0, 0, &ro, true));
    assert_eq!(r.changed_vsics, vec![0]);
    ok(attach(&c, 1, 2, &rw, false));
    ok(attach(&c, 2, 0, &root, false));
    assert_eq!(status(&attach(&c, 2, 0, &rw, false)), AdminStatus::SlotBusy);
    assert_eq!(c.capacity(0), 2 * ES);

    // Revoking rw takes ro with it and detaches both their attachments.
    let r = ok(run(&c, Opcode::CapRevoke, |_| {}, &rw.encode(), 0));
    assert_eq!(r.completion.result0, 3, "rw, ro and ro's child");
    assert_eq!(r.completion.result1, 2);
    assert_eq!(r.changed_vsics, vec![0], "vsic 1 lost slot 2, not slot 0");
    assert!(r.payload.is_empty());
    assert_eq!(c.capacity(0), 0);
    assert_eq!(c.capacity(2), 2 * ES, "the root's attachment stays");
    assert_eq!(
        status(&attach(&c, 3, 0, &ro, true)),
        AdminStatus::RevokedToken
    );
    assert_eq!(
        status(&run(&c, Opcode::CapDerive, |_| {}, &rw.encode(), 64)),
        AdminStatus::RevokedToken
    );
    assert_eq!(
        status(&run(&c, Opcode::CapRevoke, |_| {}, &rw.encode(), 64)),
        AdminStatus::RevokedToken
    );
    // A forger does not even learn that a token id was revoked.
    let mut forged_revoked = ro.clone();
    forged_revoked.secret[0] ^= 1;
    assert_eq!(
        status(&attach(&c, 3, 0, &forged_revoked, true)),
        AdminStatus::BadToken
    );

    // Root revoke needs room for the new root, then re-keys.
    let kid = derive(&c, &root, true);
    assert_eq!(
        status(&run(&c, Opcode::CapRevoke, |_| {}, &root.encode(), 63)),
        AdminStatus::ResponseTooSmall
    );
    assert_eq!(c.capacity(2), 2 * ES, "a refused revoke changes nothing");
    let r = ok(run(&c, Opcode::CapRevoke, |_| {}, &root.encode(), 64));
    assert_eq!(r.changed_vsics, vec![2]);
    let new_root = CapToken::decode(&r.payload).unwrap();
    assert_eq!((new_root.vsa_id, new_root.rights), (id, Rights::ALL));
    assert_ne!(new_root.secret, root.secret);
    assert_eq!(
        status(&attach(&c, 2, 0, &root, false)),
        AdminStatus::RevokedToken
    );
    assert_eq!(
        status(&attach(&c, 2, 0, &kid, true)),
        AdminStatus::RevokedToken
    );
    ok(attach(&c, 2, 0, &new_root, false));
    assert_eq!(vsa_list(&c)[0].live_tokens, 1);
    // Delete detaches everywhere.
    ok(attach(&c, 3, 5, &new_root, true));
    let r = ok(with_token(&c, Opcode::VsaDelete, &new_root, 0));
    assert_eq!(r.changed_vsics, vec![2]);
    assert!(vsic_list(&c)
        .iter()
        .all(|v| v.slots.iter().all(|s| !s.is_attached())));
    assert_eq!(
        status(&attach(&c, 0, 0, &new_root, false)),
        AdminStatus::BadToken
    );
}

// ------------------------------------------------------------ data path

/// A FLUSH makes durable what was written before it: it syncs every
/// drive written since that drive's last sync, and no other (a clean
/// fdatasync still costs the host a system call and a journal check).
#[test]
fn flush_syncs_the_drives_written_since_their_last_sync_and_no_other() {
    let pool = Pool::new("flush-dirty", 2);
    let c = pool.open();
    let syncs = || c.drives.iter().map(|d| d.syncs()).collect::<Vec<_>>();
    let (id, t) = create(&c, ES, 1);
    ok(attach(&c, 0, 0, &t, false));
    let on = extent_map(&c, id)[0].drive as usize;
    c.flush(0, 0).unwrap(); // whatever the metadata commit left
    let settled = syncs();
    c.flush(0, 0).unwrap();
    assert_eq!(syncs(), settled, "nothing written, yet a drive was synced");
    write(&c, 0, 4096, &pattern(8192, 3)).unwrap();
    c.flush(0, 0).unwrap();
    let mut want = settled.clone();
    want[on] += 1;
    assert_eq!(syncs(), want, "the written drive {on} only");
    c.discard(0, 0, 0, 4096, true).unwrap();
    c.flush(0, 0).unwrap();
    want[on] += 1;
    assert_eq!(syncs(), want, "zeroing counts as a write");
    assert_eq!(read(&c, 0, 4096, 8192).unwrap(), pattern(8192, 3));
}

#[test]
fn io_round_trip_across_extents_and_drives() {
    let pool = Pool::new("io", 2);
    let c = pool.open();
    let (id, t) = create(&c, 5 * ES, 2);
    ok(attach(&c, 1, 0, &t, false));
    ok(attach(&c, 1, 3, &t, false));
    let data = pattern(3 * ES as usize + 1000, 7);
    let at = ES / 2 + 512;
    assert_eq!(write(&c, 1, at, &data).unwrap(), data.len());
    assert_eq!(read(&c, 1, at, data.len()).unwrap(), data);
    // The same VSA through slot 3's window.
    assert_eq!(read(&c, 1, slot_base(3) + at, data.len()).unwrap(), data);
    // The bytes are where the extent map says: logical extent 1 is on drive 1.
    let runs = extent_map(&c, id);
    assert_eq!(runs[1].drive, 1);
    let raw = std::fs::read(&pool.paths[1]).unwrap();
    let phys = (runs[1].first_extent * ES) as usize;
    let logical = (ES - at) as usize; // offset in `data` of logical extent 1
    assert_eq!(&raw[phys..phys + 4096], &data[logical..logical + 4096]);
    c.flush(1, 0).unwrap();
    let s = vsic_stats(&c, 1);
    assert_eq!((s.reads, s.writes, s.flushes), (2, 1, 1));
    assert_eq!(
        (s.bytes_written, s.bytes_read),
        (data.len() as u64, 2 * data.len() as u64)
    );
    let all = decode_stats(&ok(run(&c, Opcode::Stats, |m| m.vsic = ALL_VSICS, &[], 4096)).payload)
        .unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[1].1[0].bytes_written, data.len() as u64);
    assert_eq!(all[1].1[1].bytes_read, 2 * data.len() as u64);
}

#[test]
fn protection_violations_are_refused_and_counted() {
    let pool = Pool::new("prot", 1);
    let c = pool.open();
    let (_, t) = create(&c, 2 * ES, 0);
    ok(attach(&c, 0, 0, &t, true));
    let ro = derive(&c, &t, true);
    ok(attach(&c, 0, 1, &ro, true));
    assert_eq!(read(&c, 0, 0, 4096).unwrap(), vec![0; 4096]);
    is_err(write(&c, 0, 0, &[1; 512]), |e| {
        matches!(e, IoError::ReadOnly)
    });
    is_err(c.discard(0, 0, 0, 512, false), |e| {
        matches!(e, IoError::ReadOnly)
    });
    is_err(read(&c, 0, 2 * ES - 511, 512), |e| {
        matches!(e, IoError::OutOfBounds)
    });
    is_err(read(&c, 0, 2 * ES, 512), |e| {
        matches!(e, IoError::OutOfBounds)
    });
    is_err(read(&c, 0, WINDOW_SIZE - 512, 1024), |e| {
        matches!(e, IoError::OutOfBounds)
    });
    is_err(read(&c, 0, slot_base(2), 512), |e| {
        matches!(e, IoError::NotAttached)
    });
    is_err(read(&c, 0, slot_base(SLOTS_PER_VSIC), 512), |e| {
        matches!(e, IoError::NotAttached)
    });
    is_err(read(&c, 0, u64::MAX - 10, 512), |e| {
        matches!(e, IoError::NotAttached)
    });
    is_err(read(&c, 9, 0, 512), |e| matches!(e, IoError::NoSuchVsic));
    let s = vsic_stats(&c, 0);
    assert_eq!((s.protection_violations, s.errors, s.reads), (8, 8, 1));
    ok(run(&c, Opcode::VsicDisable, |m| m.vsic = 0, &[], 0));
    is_err(read(&c, 0, 0, 512), |e| matches!(e, IoError::VsicDisabled));
    is_err(c.flush(0, 0), |e| matches!(e, IoError::VsicDisabled));
    assert!(!vsic_list(&c)[0].enabled);
    ok(run(&c, Opcode::VsicEnable, |m| m.vsic = 0, &[], 0));
    read(&c, 0, 0, 512).unwrap();
    c.count_error(0, 1);
    c.count_error(0, 77);
    c.count_error(99, 0);
    let s = vsic_stats(&c, 0);
    assert_eq!((s.protection_violations, s.errors), (10, 12));
    // Writable attachment of the same VSA elsewhere works.
    ok(attach(&c, 1, 0, &t, false));
    write(&c, 1, 2 * ES - 512, &[3; 512]).unwrap();
    assert_eq!(read(&c, 0, 2 * ES - 512, 512).unwrap(), vec![3; 512]);
    // Zero-length requests inside the VSA succeed.
    assert_eq!(read(&c, 0, 2 * ES, 0).unwrap(), Vec::<u8>::new());
}

#[test]
fn freed_extents_never_leak_old_data() {
    let pool = Pool::new("leak", 1);
    let c = pool.open();
    let (_, t) = create(&c, 4 * ES, 0);
    ok(attach(&c, 0, 0, &t, false));
    let data = pattern(4 * ES as usize, 3);
    write(&c, 0, 0, &data).unwrap();
    let r = ok(with_token(&c, Opcode::VsaShrink, &t, ES));
    assert_eq!(r.changed_vsics, vec![0]);
    is_err(read(&c, 0, ES, 512), |e| matches!(e, IoError::OutOfBounds));
    ok(with_token(&c, Opcode::VsaExtend, &t, 4 * ES));
    let back = read(&c, 0, 0, 4 * ES as usize).unwrap();
    assert_eq!(&back[..ES as usize], &data[..ES as usize]);
    assert!(
        back[ES as usize..].iter().all(|&b| b == 0),
        "extend after shrink reads zeroes"
    );
    // Delete, then a new VSA reusing the extents reads zeroes too.
    write(&c, 0, 0, &data).unwrap();
    ok(with_token(&c, Opcode::VsaDelete, &t, 0));
    assert_eq!(c.capacity(0), 0);
    let (_, t2) = create(&c, 4 * ES, 0);
    ok(attach(&c, 0, 0, &t2, false));
    assert!(read(&c, 0, 0, 4 * ES as usize)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let pool = Pool::new("discard", 2);
    let c = pool.open();
    let (_, t) = create(&c, 4 * ES, 2);
    ok(attach(&c, 2, 0, &t, false));
    let data = pattern(4 * ES as usize, 9);
    write(&c, 2, 0, &data).unwrap();
    c.discard(2, 0, 512, ES, false).unwrap();
    c.discard(2, 0, 3 * ES, 4096, true).unwrap();
    let back = read(&c, 2, 0, 4 * ES as usize).unwrap();
    assert_eq!(&back[..512], &data[..512]);
    assert!(back[512..512 + ES as usize].iter().all(|&b| b == 0));
    assert_eq!(
        &back[512 + ES as usize..3 * ES as usize],
        &data[512 + ES as usize..3 * ES as usize]
    );
    assert!(back[3 * ES as usize..3 * ES as usize + 4096]
        .iter()
        .all(|&b| b == 0));
    is_err(c.discard(2, 0, 4 * ES - 512, 1024, true), |e| {
        matches!(e, IoError::OutOfBounds)
    });
    let s = vsic_stats(&c, 2);
    assert_eq!(
        (s.discards, s.write_zeroes, s.protection_violations),
        (1, 1, 1)
    );
}

#[test]
fn write_through_mode_and_service_model() {
    let pool = Pool::new("wt", 1);
    let mut cfg = pool.config();
    cfg.cache_mode = CacheMode::WriteThrough;
    let ms = Duration::from_millis;
    cfg.service_model = Some(ServiceModel::uniform(DriveModel::fixed(ms(20), 0, 1)));
    let c = Controller::open(cfg).unwrap();
    assert_eq!(identify(&c).cache_mode, CacheMode::WriteThrough as u32);
    let (_, t) = create(&c, ES, 0);
    ok(attach(&c, 0, 0, &t, false));
    // The data moves at once; the model only says when it completes.
    let start = Instant::now();
    write(&c, 0, 0, &[5; 4096]).unwrap();
    assert!(start.elapsed() < ms(20), "the write itself does not wait");
    assert!(c.timed());
    let write_due = c.due(
        0,
        Work::Write {
            offset: 0,
            len: 4096,
        },
        start,
    );
    assert_eq!(write_due, Some(start + ms(20)));
    let second = c.due(
        0,
        Work::Read {
            offset: 0,
            len: 4096,
        },
        start,
    );
    assert_eq!(second, Some(start + ms(40)), "one unit: queued behind");
    assert_eq!(
        c.due(0, Work::Flush, start),
        write_due,
        "flush with the write"
    );
    assert_eq!(
        c.due(
            1,
            Work::Read {
                offset: 0,
                len: 512
            },
            start
        ),
        None,
        "no VSA"
    );
    c.set_service_model(None);
    assert!(!c.timed());
    assert_eq!(c.due(0, Work::Flush, start), None, "off");
    c.flush(0, 0).unwrap();
    c.discard(0, 0, 0, 512, false).unwrap();
    let back = read(&c, 0, 0, 4096).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0) && back[512..].iter().all(|&b| b == 5));
}

#[test]
fn qos_delays_but_never_fails() {
    let pool = Pool::new("qos", 1);
    let c = pool.open();
    let (_, t) = create(&c, 4 * ES, 0);
    ok(attach(&c, 3, 0, &t, false));
    ok(run(
        &c,
        Opcode::SetQos,
        |m| {
            m.vsic = 3;
            m.args = [1 << 20, 0, 0, 0]
        },
        &[],
        0,
    ));
    let info = &vsic_list(&c)[3];
    assert_eq!((info.qos_bytes_per_sec, info.qos_iops), (1 << 20, 0));
    assert!(c.qos_wait(3).is_zero());
    for i in 0..4 {
        write(&c, 3, i * 65536, &[1; 65536]).unwrap();
    }
    // 256 KiB at 1 MiB/s with a 100 KiB burst: the next request waits
    // ~150 ms (the front sleeps that long before taking it).
    let wait = c.qos_wait(3);
    assert!(wait >= Duration::from_millis(120), "{wait:?}");
    assert!(vsic_stats(&c, 3).qos_delayed >= 1);
    // Refused requests are not charged their bytes.
    std::thread::sleep(wait);
    assert!(matches!(
        read(&c, 3, 4 * ES, 65536),
        Err(IoError::OutOfBounds)
    ));
    assert!(
        c.qos_wait(3) < Duration::from_millis(20),
        "{:?}",
        c.qos_wait(3)
    );
    // DISCARD and WRITE_ZEROES are charged the length they zero.
    c.discard(3, 0, 0, 4 * ES, false).unwrap();
    let wait = c.qos_wait(3);
    assert!(
        wait >= Duration::from_millis(120),
        "discard charged: {wait:?}"
    );
    std::thread::sleep(wait);
    c.discard(3, 0, 0, 4 * ES, true).unwrap();
    let wait = c.qos_wait(3);
    assert!(
        wait >= Duration::from_millis(120),
        "write-zeroes charged: {wait:?}"
    );
    ok(run(
        &c,
        Opcode::SetQos,
        |m| {
            m.vsic = 3;
            m.args = [0, 0, 0, 0]
        },
        &[],
        0,
    ));
    for i in 0..4 {
        write(&c, 3, i * 65536, &[1; 65536]).unwrap();
    }
    c.discard(3, 0, 0, 4 * ES, true).unwrap();
    assert!(c.qos_wait(3).is_zero());
}

#[test]
fn io_races_with_resize_safely() {
    let pool = Pool::new("race", 2);
    let c = pool.open();
    let (_, t) = create(&c, 8 * ES, 2);
    ok(attach(&c, 0, 0, &t, false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let off = (n * 7919 * 512) % (8 * ES);
                    match write(&c, 0, off, &[w as u8 + 1; 8192]) {
                        Ok(_) | Err(IoError::OutOfBounds) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for _ in 0..20 {
        ok(with_token(&c, Opcode::VsaShrink, &t, ES));
        ok(with_token(&c, Opcode::VsaExtend, &t, 8 * ES));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(c.plane().state.pending_zero.is_empty());
}

// ------------------------------------------------------------ persistence

#[test]
fn reopen_restores_everything() {
    let pool = Pool::new("reopen", 2);
    let (lists, vsics, map, ro, data) = {
        let c = pool.open();
        let (a, ta) = create(&c, 3 * ES, 2);
        let (_, tb) = create(&c, ES, 1);
        ok(with_token(&c, Opcode::VsaDelete, &tb, 0));
        let ro = derive(&c, &ta, true);
        ok(attach(&c, 0, 0, &ta, false));
        ok(attach(&c, 2, 7, &ro, true));
        ok(run(
            &c,
            Opcode::SetQos,
            |m| {
                m.vsic = 1;
                m.args = [1000, 20, 0, 0]
            },
            &[],
            0,
        ));
        ok(run(&c, Opcode::VsicDisable, |m| m.vsic = 3, &[], 0));
        let data = pattern(3 * ES as usize, 1);
        write(&c, 0, 0, &data).unwrap();
        c.flush(0, 0).unwrap();
        (vsa_list(&c), vsic_list(&c), extent_map(&c, a), ro, data)
    };
    let c = pool.open();
    assert_eq!(vsa_list(&c), lists);
    assert_eq!(vsic_list(&c), vsics);
    assert_eq!(extent_map(&c, lists[0].vsa_id), map);
    assert_eq!(c.capacity(0), 3 * ES);
    assert_eq!(read(&c, 0, 0, data.len()).unwrap(), data);
    assert_eq!(
        read(&c, 2, slot_base(7), 512).unwrap(),
        data[..512].to_vec()
    );
    // Tokens minted before the restart still work; ids continue.
    ok(attach(&c, 1, 0, &ro, true));
    assert_eq!(create(&c, ES, 0).0, 3);
    assert!(identify(&c).metadata_generation > 1);
}

#[test]
fn failed_commit_rolls_back() {
    let pool = Pool::new("rollback", 1);
    let c = pool.open();
    let (_, t) = create(&c, ES, 0);
    let before = (vsa_list(&c), vsic_list(&c), identify(&c).free_extents);
    c.plane().store.fail_commits = 1;
    assert_eq!(
        status(&attach(&c, 0, 0, &t, false)),
        AdminStatus::MetadataIo
    );
    c.plane().store.fail_commits = 1;
    assert_eq!(
        status(&run(&c, Opcode::VsaCreate, |m| m.args[0] = ES, &[], 64)),
        AdminStatus::MetadataIo
    );
    c.plane().store.fail_commits = 1;
    assert_eq!(
        status(&with_token(&c, Opcode::VsaDelete, &t, 0)),
        AdminStatus::MetadataIo
    );
    assert_eq!(
        (vsa_list(&c), vsic_list(&c), identify(&c).free_extents),
        before
    );
    assert_eq!(c.capacity(0), 0);
    drop(c);
    let c = pool.open();
    assert_eq!((vsa_list(&c), vsic_list(&c)), (before.0, before.1));
    ok(attach(&c, 0, 0, &t, false));
    assert_eq!(
        create(&c, ES, 0).0,
        2,
        "the refused create did not use up an id"
    );
}

// Raw slot access for corruption tests (layout from metadata/layout.rs).
fn slot_len(path: &Path) -> u64 {
    let raw = std::fs::read(path).unwrap();
    u64::from_le_bytes(raw[48..56].try_into().unwrap())
}

fn slot_generation(path: &Path, slot: u64) -> u64 {
    let raw = std::fs::read(path).unwrap();
    let at = (8192 + slot * slot_len(path)) as usize;
    u64::from_le_bytes(raw[at + 16..at + 24].try_into().unwrap())
}

fn flip_byte(path: &Path, offset: u64) {
    let mut raw = std::fs::read(path).unwrap();
    raw[offset as usize] ^= 0xff;
    std::fs::write(path, raw).unwrap();
}

fn newest_slot(path: &Path) -> u64 {
    if slot_generation(path, 0) > slot_generation(path, 1) {
        0
    } else {
        1
    }
}

#[test]
fn corrupted_newest_slot_falls_back_and_both_corrupted_refuses() {
    let pool = Pool::new("corrupt", 2);
    {
        let c = pool.open();
        create(&c, ES, 0);
        create(&c, 2 * ES, 0);
    }
    for p in &pool.paths {
        let s = newest_slot(p);
        flip_byte(p, 8192 + s * slot_len(p) + 200);
    }
    {
        let c = pool.open();
        let list = vsa_list(&c);
        assert_eq!(
            list.len(),
            1,
            "fell back to the generation before the second create"
        );
        assert_eq!(list[0].size, ES);
        // The next commit overwrites the corrupted slot.
        create(&c, 3 * ES, 0);
    }
    let c = pool.open();
    assert_eq!(vsa_list(&c).len(), 2);
    drop(c);
    for p in &pool.paths {
        for s in 0..2 {
            flip_byte(p, 8192 + s * slot_len(p) + 20);
        }
    }
    let e = Controller::open(pool.config()).err().expect("refused");
    assert!(e.to_string().contains("no valid metadata"), "{e}");
}

#[test]
fn torn_commit_yields_old_or_new_state() {
    let pool = Pool::new("torn", 2);
    {
        let c = pool.open();
        create(&c, ES, 0);
    }
    let before: Vec<Vec<u8>> = pool
        .paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    {
        let c = pool.open();
        create(&c, 2 * ES, 0);
    }
    let after: Vec<Vec<u8>> = pool
        .paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let p0 = &pool.paths[0];
    let slot = newest_slot(p0);
    let start = (8192 + slot * slot_len(p0)) as usize;
    for cut in [0usize, 1, 24, 100, 127, 128, 129, 300, 1000, 4096] {
        // Drive 0 crashed `cut` bytes into writing the new slot; drive 1 never got it.
        let mut image = before[0].clone();
        let end = (start + cut).min(image.len());
        image[start..end].copy_from_slice(&after[0][start..end]);
        std::fs::write(p0, &image).unwrap();
        std::fs::write(&pool.paths[1], &before[1]).unwrap();
        let c = pool.open();
        let n = vsa_list(&c).len();
        let body_len =
            u64::from_le_bytes(after[0][start + 24..start + 32].try_into().unwrap()) as usize;
        let written = start + 128 + body_len;
        let complete = after[0][start..written] == image[start..written];
        assert_eq!(n, if complete { 2 } else { 1 }, "cut {cut}");
    }
    // Drive 0 got the whole new generation, drive 1 none: the new state wins.
    std::fs::write(p0, &after[0]).unwrap();
    std::fs::write(&pool.paths[1], &before[1]).unwrap();
    let c = pool.open();
    assert_eq!(vsa_list(&c).len(), 2);
}

#[test]
fn drive_set_errors_are_clear() {
    let pool = Pool::new("drives", 2);
    drop(pool.open());
    let mut swapped = pool.paths.clone();
    swapped.swap(0, 1);
    let e = Controller::open(config_for(&swapped)).err().unwrap();
    assert!(e.to_string().contains("original order"), "{e}");
    let e = Controller::open(config_for(&pool.paths[..1]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("2 drives but 1"), "{e}");
    let mut extra = pool.paths.clone();
    extra.push(pool.paths[0].with_file_name("drive-new"));
    let e = Controller::open(config_for(&extra)).err().unwrap();
    assert!(e.to_string().contains("blank"), "{e}");
    let twice = vec![pool.paths[0].clone(), pool.paths[0].clone()];
    let e = Controller::open(config_for(&twice)).err().unwrap();
    assert!(
        e.to_string().contains("twice") || e.to_string().contains("in use"),
        "{e}"
    );
    // A drive from another pool.
    let other = Pool::new("drives-other", 1);
    drop(other.open());
    let mixed = vec![pool.paths[0].clone(), other.paths[0].clone()];
    let e = Controller::open(config_for(&mixed)).err().unwrap();
    assert!(e.to_string().contains("different pool"), "{e}");
    // The pool still opens when given correctly.
    drop(pool.open());
}

#[test]
fn non_blank_drive_is_never_formatted() {
    let pool = Pool::new("nonblank", 1);
    let mut junk = vec![0u8; DRIVE_SIZE as usize];
    junk[4000] = 1;
    std::fs::write(&pool.paths[0], &junk).unwrap();
    let e = Controller::open(pool.config()).err().unwrap();
    assert!(e.to_string().contains("not blank"), "{e}");
    assert_eq!(
        std::fs::read(&pool.paths[0]).unwrap(),
        junk,
        "drive untouched"
    );
    // An all-zero existing drive is blank: it is formatted.
    std::fs::write(&pool.paths[0], vec![0u8; DRIVE_SIZE as usize]).unwrap();
    let c = pool.open();
    assert_eq!(identify(&c).drives, 1);
}

#[test]
fn bad_configs_are_refused() {
    let pool = Pool::new("cfg", 1);
    for tweak in [
        (|c: &mut ControllerConfig| c.extent_size = 3000) as fn(&mut ControllerConfig),
        |c| c.extent_size = 1024,
        |c| c.drives.clear(),
        |c| c.queues_per_vsic = 0,
        |c| c.drives[0].size = Some(100 << 10),
    ] {
        let mut cfg = pool.config();
        tweak(&mut cfg);
        assert!(Controller::open(cfg).is_err());
    }
}

#[test]
fn reopening_with_another_extent_size_keeps_the_pool_layout() {
    let pool = Pool::new("es", 1);
    drop(pool.open());
    let mut cfg = pool.config();
    cfg.extent_size = 2 * ES;
    let c = Controller::open(cfg).unwrap();
    assert_eq!(c.config().extent_size, ES);
    assert_eq!(identify(&c).extent_size, ES);
}

// ------------------------------------------------------------ bad input

#[test]
fn every_admin_status_is_reachable() {
    let pool = Pool::new("statuses", 1);
    let c = pool.open();
    let (_, root) = create(&c, ES, 0);
    let ro = derive(&c, &root, true);
    let gone = derive(&c, &root, false);
    ok(run(&c, Opcode::CapRevoke, |_| {}, &gone.encode(), 0));
    let mut forged = root.clone();
    forged.secret[0] ^= 1;
    let good = AdminCommand::new(Opcode::Identify).encode();
    let raw = |bytes: &[u8]| status(&c.admin(bytes, &[], 64));
    let mut b = good;
    b[0] = b'X';
    assert_eq!(raw(&b), AdminStatus::BadMagic);
    let mut b = good;
    b[4] = 2;
    assert_eq!(raw(&b), AdminStatus::BadVersion);
    assert_eq!(raw(&good[..40]), AdminStatus::BadCommandSize);
    let mut b = good;
    b[6] = 0xee;
    assert_eq!(raw(&b), AdminStatus::UnknownOpcode);
    let checks: Vec<(AdminStatus, AdminReply)> = vec![
        (AdminStatus::Ok, run(&c, Opcode::Identify, |_| {}, &[], 64)),
        (
            AdminStatus::BadPayloadSize,
            run(&c, Opcode::Identify, |_| {}, &[0; 8], 64),
        ),
        (
            AdminStatus::BadPayloadSize,
            run(&c, Opcode::Attach, |_| {}, &[0; 63], 64),
        ),
        (
            AdminStatus::BadPayloadSize,
            c.admin(
                &{
                    let mut m = AdminCommand::new(Opcode::Attach);
                    m.payload_len = 64;
                    m
                }
                .encode(),
                &[0; 32],
                0,
            ),
        ),
        (
            AdminStatus::InvalidArgument,
            run(&c, Opcode::VsaCreate, |m| m.args = [ES, 2, 0, 0], &[], 64),
        ),
        (
            AdminStatus::UnknownFlags,
            run(&c, Opcode::Attach, |m| m.flags = 2, &root.encode(), 0),
        ),
        (
            AdminStatus::UnknownFlags,
            run(&c, Opcode::Detach, |m| m.flags = FLAG_READ_ONLY, &[], 0),
        ),
        (
            AdminStatus::NoSuchVsic,
            run(&c, Opcode::VsicEnable, |m| m.vsic = 4, &[], 0),
        ),
        (
            AdminStatus::NoSuchVsic,
            run(&c, Opcode::Stats, |m| m.vsic = 17, &[], 4096),
        ),
        (
            AdminStatus::NoSuchSlot,
            run(
                &c,
                Opcode::Attach,
                |m| m.slot = SLOTS_PER_VSIC,
                &root.encode(),
                0,
            ),
        ),
        (
            AdminStatus::NoSuchVsa,
            run(&c, Opcode::ExtentMap, |m| m.args[0] = 77, &[], 4096),
        ),
        (
            AdminStatus::BadToken,
            run(&c, Opcode::Attach, |_| {}, &forged.encode(), 0),
        ),
        (
            AdminStatus::RevokedToken,
            run(&c, Opcode::Attach, |_| {}, &gone.encode(), 0),
        ),
        (
            AdminStatus::PermissionDenied,
            run(&c, Opcode::VsaDelete, |_| {}, &ro.encode(), 0),
        ),
        (
            AdminStatus::NoSpace,
            run(&c, Opcode::VsaCreate, |m| m.args[0] = WINDOW_SIZE, &[], 64),
        ),
        (
            AdminStatus::Ok,
            run(&c, Opcode::Attach, |_| {}, &root.encode(), 0),
        ),
        (
            AdminStatus::SlotBusy,
            run(&c, Opcode::Attach, |_| {}, &root.encode(), 0),
        ),
        (
            AdminStatus::SlotEmpty,
            run(&c, Opcode::Detach, |m| m.slot = 1, &[], 0),
        ),
        (
            AdminStatus::ZeroSize,
            run(&c, Opcode::VsaCreate, |_| {}, &[], 64),
        ),
        (
            AdminStatus::BelowMinimum,
            run(&c, Opcode::VsaShrink, |m| m.args[0] = 1, &root.encode(), 0),
        ),
        (
            AdminStatus::TooLarge,
            run(
                &c,
                Opcode::VsaCreate,
                |m| m.args[0] = WINDOW_SIZE + 1,
                &[],
                64,
            ),
        ),
        (
            AdminStatus::ResponseTooSmall,
            run(&c, Opcode::Identify, |_| {}, &[], 63),
        ),
        (
            AdminStatus::ResponseTooSmall,
            run(&c, Opcode::VsaCreate, |m| m.args[0] = ES, &[], 0),
        ),
        (
            AdminStatus::ResponseTooSmall,
            run(&c, Opcode::ListVsics, |_| {}, &[], 100),
        ),
    ];
    for (i, (want, r)) in checks.iter().enumerate() {
        assert_eq!(status(r), *want, "check {i}");
    }
    // ResponseTooSmall on a list says how much room is needed.
    let r = run(&c, Opcode::ListVsics, |_| {}, &[], 100);
    assert_eq!(
        (r.completion.result0, r.completion.result1),
        (4, 4 * VsicInfo::LEN as u64)
    );
    c.plane().store.fail_commits = 1;
    assert_eq!(
        status(&run(&c, Opcode::VsicDisable, |_| {}, &[], 0)),
        AdminStatus::MetadataIo
    );
}

#[test]
fn metadata_that_does_not_fit_is_refused_with_no_space() {
    let pool = Pool::new("full-meta", 1);
    let c = pool.open();
    let (id, root) = create(&c, ES, 0);
    let mut plane = c.plane();
    let mut next = plane.state.clone();
    let vsa = next.vsas.get_mut(&id).unwrap();
    // 48 bytes per token: 6000 tokens overflow the 256 KiB slot.
    for n in 2..6000 {
        vsa.tokens.push(super::state::TokenRecord {
            id: n,
            parent: 1,
            rights: Rights::READ,
            revoked: false,
            digest: [0; 32],
        });
    }
    vsa.next_token_id = 6000;
    let before = plane.state.clone();
    assert_eq!(c.commit(&mut plane, next), Err(AdminStatus::NoSpace));
    assert_eq!(plane.state, before);
    drop(plane);
    ok(attach(&c, 0, 0, &root, false));
}

#[test]
fn admin_never_panics_on_garbage() {
    let pool = Pool::new("fuzz", 2);
    let c = pool.open();
    let (_, mut root) = create(&c, 2 * ES, 0);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let interesting = [
        0u64,
        1,
        ES - 1,
        ES,
        ES + 1,
        3 * ES,
        WINDOW_SIZE - 1,
        WINDOW_SIZE,
        WINDOW_SIZE + 1,
        u64::MAX,
    ];
    for round in 0..6000 {
        let op = Opcode::ALL[rng.below(Opcode::ALL.len() as u64) as usize];
        let mut cmd = AdminCommand::new(op);
        if rng.below(8) == 0 {
            cmd.opcode = rng.next_u64() as u16;
        }
        cmd.flags = [0, FLAG_READ_ONLY, rng.next_u64() as u32][rng.below(3) as usize];
        cmd.vsic = [0, 3, 4, u32::MAX, rng.next_u64() as u32][rng.below(5) as usize];
        cmd.slot = [0, 15, 16, rng.next_u64() as u32][rng.below(4) as usize];
        for a in cmd.args.iter_mut() {
            *a = if rng.below(2) == 0 {
                interesting[rng.below(interesting.len() as u64) as usize]
            } else {
                rng.next_u64()
            };
        }
        let payload = match rng.below(5) {
            0 => Vec::new(),
            1 => root.encode().to_vec(),
            2 => {
                let mut t = root.encode();
                let i = rng.below(64) as usize;
                t[i] ^= 1 << rng.below(8);
                t.to_vec()
            }
            3 => rng.bytes(64),
            _ => {
                let n = rng.below(300) as usize;
                rng.bytes(n)
            }
        };
        cmd.payload_len = if rng.below(10) == 0 {
            rng.next_u64() as u32
        } else {
            payload.len() as u32
        };
        let mut bytes = cmd.encode().to_vec();
        match rng.below(10) {
            0 => bytes.truncate(rng.below(64) as usize),
            1 => {
                let n = rng.below(10) as usize + 1;
                bytes.extend(rng.bytes(n));
            }
            2 => {
                let i = rng.below(64) as usize;
                bytes[i] = rng.next_u64() as u8;
            }
            _ => {}
        }
        let capacity = [0usize, 1, 63, 64, 4096, 1 << 20][rng.below(6) as usize];
        let r = c.admin(&bytes, &payload, capacity);
        assert!(r.payload.len() <= capacity, "round {round}");
        assert!(AdminStatus::from_u16(r.completion.status).is_some());
        if status(&r) == AdminStatus::Ok
            && cmd.opcode == Opcode::CapRevoke as u16
            && r.payload.len() == 64
        {
            // The fuzzer revoked the root: keep going with the new one.
            let new_root = CapToken::decode(&r.payload).unwrap();
            assert_eq!(new_root.vsa_id, root.vsa_id, "round {round}");
            root = new_root;
        }
        if status(&r) == AdminStatus::Ok && cmd.opcode == Opcode::VsaDelete as u16 {
            root = create(&c, 2 * ES, 0).1;
        }
    }
    // Whatever happened, the metadata is consistent and the pool reopens.
    c.plane().state.check().unwrap();
    drop(c);
    let c = pool.open();
    ok(attach(&c, 3, 15, &root, true));
}

/// Runs the controller on a real block device (BLKGETSIZE64, BLKZEROOUT).
/// Destroys the device's contents: ci/test.sh gives it a loop device;
/// elsewhere `VSICD_TEST_BLOCK_DEVICE=/dev/loopN cargo test -p vsicd block_device`
/// (see `tests/common/block_device.rs`).
#[test]
fn block_device_pool() {
    let Some(dev) = block_device::test_block_device() else {
        return;
    };
    // Start blank, as a fresh disk would be.
    block_device::wipe_start(&dev);
    let cfg = || ControllerConfig {
        drives: vec![DriveSpec {
            path: dev.clone(),
            size: None,
        }],
        ..config_for(&[])
    };
    {
        let c = Controller::open(cfg()).unwrap();
        assert!(identify(&c).total_extents > 4);
        let (_, t) = create(&c, 4 * ES, 0);
        ok(attach(&c, 0, 0, &t, false));
        let data = pattern(4 * ES as usize, 5);
        write(&c, 0, 0, &data).unwrap();
        c.flush(0, 0).unwrap();
        ok(with_token(&c, Opcode::VsaShrink, &t, ES));
        ok(with_token(&c, Opcode::VsaExtend, &t, 4 * ES));
        let back = read(&c, 0, 0, 4 * ES as usize).unwrap();
        assert_eq!(&back[..ES as usize], &data[..ES as usize]);
        assert!(back[ES as usize..].iter().all(|&b| b == 0));
        c.discard(0, 0, 0, 4096, true).unwrap();
        assert!(read(&c, 0, 0, 4096).unwrap().iter().all(|&b| b == 0));
    }
    let c = Controller::open(cfg()).unwrap();
    assert_eq!(vsa_list(&c).len(), 1);
}

/// Child half of `kill_at_any_instant_loses_no_commit`: creates, extends,
/// shrinks and deletes VSAs forever, printing each completed command.
#[test]
#[ignore]
fn crash_child() {
    let Some(dir) = std::env::var_os("VSICD_CRASH_DIR") else {
        return;
    };
    let paths: Vec<PathBuf> = (0..2)
        .map(|i| Path::new(&dir).join(format!("drive{i}")))
        .collect();
    let c = Controller::open(config_for(&paths)).unwrap();
    let mut live: Vec<CapToken> = Vec::new();
    // A store left by the previous child loses its role to the next VSA.
    for v in vsa_list(&c)
        .iter()
        .filter(|v| v.role == vsic_abi::records::ROLE_STORE)
    {
        ok(by_id(
            &c,
            Opcode::VsaSetRole,
            v.vsa_id,
            vsic_abi::records::ROLE_NONE as u64,
        ));
    }
    loop {
        let (id, t) = create(&c, 2 * ES, 1 + (live.len() as u64 % 2));
        println!("created {id}");
        ok(with_token(&c, Opcode::VsaShrink, &t, ES));
        ok(with_token(&c, Opcode::VsaExtend, &t, 2 * ES));
        println!("sized {id} {}", 2 * ES);
        // The store role moves to the newest VSA (PF privilege, by id).
        if let Some(prev) = live.last() {
            ok(by_id(
                &c,
                Opcode::VsaSetRole,
                prev.vsa_id,
                vsic_abi::records::ROLE_NONE as u64,
            ));
        }
        ok(by_id(
            &c,
            Opcode::VsaSetRole,
            id,
            vsic_abi::records::ROLE_STORE as u64,
        ));
        println!("store {id}");
        live.push(t);
        if live.len() > 6 {
            let old = live.remove(0);
            println!("deleting {}", old.vsa_id);
            if old.vsa_id.is_multiple_of(2) {
                ok(by_id(&c, Opcode::VsaDeleteById, old.vsa_id, 0));
            } else {
                ok(with_token(&c, Opcode::VsaDelete, &old, 0));
            }
            println!("deleted {}", old.vsa_id);
        }
    }
}

#[test]
fn kill_at_any_instant_loses_no_commit() {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let pool = Pool::new("kill", 2);
    drop(pool.open());
    let mut rng = Rng(0xdead_beef_1234_5678);
    // What the child reported as completed: id → Some(size) or None (deleted).
    let mut done: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    // A delete the child started: it may or may not have committed.
    let mut maybe_deleted = None;
    // The last VSA the child reported as given the store role.
    let mut store = None;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "controller::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VSICD_CRASH_DIR", pool.paths[0].parent().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["created", id] => {
                    done.insert(id.parse().unwrap(), Some(2 * ES));
                }
                ["sized", id, size] => {
                    done.insert(id.parse().unwrap(), Some(size.parse().unwrap()));
                }
                ["store", id] => store = Some(id.parse::<u64>().unwrap()),
                ["deleting", id] => maybe_deleted = Some(id.parse::<u64>().unwrap()),
                ["deleted", id] => {
                    done.insert(id.parse().unwrap(), None);
                    maybe_deleted = None;
                }
                _ => {}
            }
        }
        let c = pool.open();
        c.plane().state.check().unwrap();
        let vsas: BTreeMap<u64, u64> = vsa_list(&c).iter().map(|v| (v.vsa_id, v.size)).collect();
        if let Some(id) = maybe_deleted.take() {
            if !vsas.contains_key(&id) {
                done.insert(id, None);
            }
        }
        for (id, want) in &done {
            match want {
                None => assert!(
                    !vsas.contains_key(id),
                    "round {round}: deleted VSA {id} came back"
                ),
                // A later shrink/extend may have committed without being reported.
                Some(size) => {
                    let got = vsas.get(id).copied();
                    assert!(got.is_some(), "round {round}: VSA {id} was lost");
                    assert!(
                        got >= Some(ES),
                        "round {round}: VSA {id} has size {got:?} (reported {size})"
                    );
                }
            }
        }
        // At most one store, and none older than the last reported one
        // (the role was moving to a newer VSA when the child died).
        let stores: Vec<u64> = vsa_list(&c)
            .iter()
            .filter(|v| v.role == vsic_abi::records::ROLE_STORE)
            .map(|v| v.vsa_id)
            .collect();
        assert!(
            stores.len() <= 1,
            "round {round}: several stores {stores:?}"
        );
        if let (Some(&got), Some(reported)) = (stores.first(), store) {
            assert!(
                got >= reported,
                "round {round}: the store role went back from VSA {reported} to {got}"
            );
        }
        // Nothing leaked: every extent is mapped, free or about to be zeroed.
        let used: u64 = vsas.values().map(|s| s / ES).sum();
        let id = identify(&c);
        assert_eq!(id.free_extents + used, id.total_extents, "round {round}");
    }
    assert!(
        done.len() > 5,
        "the child completed too few commands: {}",
        done.len()
    );
}

// ------------------------------------------------- PF privileged VSA admin

fn by_id(c: &Controller, op: Opcode, vsa: u64, arg1: u64) -> AdminReply {
    run(c, op, |m| m.args = [vsa, arg1, 0, 0], &[], 0)
}

#[test]
fn pf_deletes_and_resizes_a_vsa_whose_capability_is_lost() {
    let pool = Pool::new("by-id", 1);
    let c = pool.open();
    let free = identify(&c).free_extents;
    // The root token is dropped: nobody holds a capability for the VSA.
    let (id, lost) = create(&c, 2 * ES, 0);
    ok(attach(&c, 1, 0, &lost, false));
    write(&c, 1, 0, &pattern(512, 3)).unwrap();
    let r = ok(by_id(&c, Opcode::VsaResizeById, id, 3 * ES + 1));
    assert_eq!((r.completion.result0, r.completion.result1), (id, 4 * ES));
    assert_eq!(r.changed_vsics, vec![1]);
    assert_eq!(c.capacity(1), 4 * ES);
    let r = ok(by_id(&c, Opcode::VsaResizeById, id, ES));
    assert_eq!(r.completion.result1, ES);
    assert_eq!(c.capacity(1), ES);
    // The same size changes nothing.
    let r = ok(by_id(&c, Opcode::VsaResizeById, id, ES));
    assert_eq!(r.completion.result1, ES);
    assert!(r.changed_vsics.is_empty());
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, id, 0)),
        AdminStatus::ZeroSize
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, id, ES - 1)),
        AdminStatus::BelowMinimum
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, id, WINDOW_SIZE + 1)),
        AdminStatus::TooLarge
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, id, WINDOW_SIZE)),
        AdminStatus::NoSpace
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, 99, ES)),
        AdminStatus::NoSuchVsa
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaResizeById, 0, ES)),
        AdminStatus::NoSuchVsa
    );
    // Delete by id detaches everywhere and frees every extent.
    assert_eq!(
        status(&by_id(&c, Opcode::VsaDeleteById, 99, 0)),
        AdminStatus::NoSuchVsa
    );
    assert_eq!(
        status(&run(
            &c,
            Opcode::VsaDeleteById,
            |m| m.args[0] = id,
            &lost.encode(),
            0
        )),
        AdminStatus::BadPayloadSize
    );
    assert_eq!(
        status(&run(
            &c,
            Opcode::VsaDeleteById,
            |m| {
                m.args[0] = id;
                m.flags = FLAG_READ_ONLY
            },
            &[],
            0
        )),
        AdminStatus::UnknownFlags
    );
    let r = ok(by_id(&c, Opcode::VsaDeleteById, id, 0));
    assert_eq!(r.completion.result0, id);
    assert_eq!(r.changed_vsics, vec![1]);
    assert_eq!(c.capacity(1), 0);
    assert!(vsa_list(&c).is_empty());
    assert!(!vsic_list(&c)[1].slots[0].is_attached());
    assert_eq!(identify(&c).free_extents, free);
    assert_eq!(
        status(&attach(&c, 1, 0, &lost, false)),
        AdminStatus::BadToken
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaDeleteById, id, 0)),
        AdminStatus::NoSuchVsa
    );
    // Survives a restart: the VSA stays gone.
    drop(c);
    let c = pool.open();
    assert!(vsa_list(&c).is_empty());
    assert_eq!(identify(&c).free_extents, free);
}

#[test]
fn roles_are_set_by_the_pf_listed_and_persisted() {
    use vsic_abi::records::{ROLE_NONE, ROLE_STORE};
    let pool = Pool::new("roles", 1);
    let c = pool.open();
    let (store, _) = create(&c, ES, 0);
    let (tenant, _) = create(&c, ES, 0);
    assert!(vsa_list(&c).iter().all(|v| v.role == ROLE_NONE));
    ok(by_id(&c, Opcode::VsaSetRole, store, ROLE_STORE as u64));
    // Setting it again is a no-op; a second store is refused.
    ok(by_id(&c, Opcode::VsaSetRole, store, ROLE_STORE as u64));
    assert_eq!(
        status(&by_id(&c, Opcode::VsaSetRole, tenant, ROLE_STORE as u64)),
        AdminStatus::RoleInUse
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaSetRole, tenant, 7)),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&by_id(
            &c,
            Opcode::VsaSetRole,
            tenant,
            1 << 32 | ROLE_STORE as u64
        )),
        AdminStatus::InvalidArgument
    );
    assert_eq!(
        status(&by_id(&c, Opcode::VsaSetRole, 99, ROLE_STORE as u64)),
        AdminStatus::NoSuchVsa
    );
    let roles = |c: &Controller| {
        vsa_list(c)
            .iter()
            .map(|v| (v.vsa_id, v.role))
            .collect::<Vec<_>>()
    };
    assert_eq!(roles(&c), vec![(store, ROLE_STORE), (tenant, ROLE_NONE)]);
    // The role is controller metadata: it survives a restart.
    drop(c);
    let c = pool.open();
    assert_eq!(roles(&c), vec![(store, ROLE_STORE), (tenant, ROLE_NONE)]);
    // A failed commit leaves the role as it was.
    c.plane().store.fail_commits = 1;
    assert_eq!(
        status(&by_id(&c, Opcode::VsaSetRole, store, ROLE_NONE as u64)),
        AdminStatus::MetadataIo
    );
    assert_eq!(roles(&c), vec![(store, ROLE_STORE), (tenant, ROLE_NONE)]);
    // Cleared, the role can move; deleting the store VSA clears it too.
    ok(by_id(&c, Opcode::VsaSetRole, store, ROLE_NONE as u64));
    ok(by_id(&c, Opcode::VsaSetRole, tenant, ROLE_STORE as u64));
    ok(by_id(&c, Opcode::VsaDeleteById, tenant, 0));
    assert_eq!(roles(&c), vec![(store, ROLE_NONE)]);
    ok(by_id(&c, Opcode::VsaSetRole, store, ROLE_STORE as u64));
    drop(c);
    let c = pool.open();
    assert_eq!(roles(&c), vec![(store, ROLE_STORE)]);
}

/// DMA_WINDOW_ADD on `vsic` of `[start, start + len)` with `flags`.
fn dma_add(c: &Controller, vsic: u32, start: u64, len: u64, flags: u32) -> AdminReply {
    run(
        c,
        Opcode::DmaWindowAdd,
        |m| {
            m.vsic = vsic;
            m.flags = flags;
            m.args = [start, len, 0, 0]
        },
        &[],
        0,
    )
}

fn dma_mode(c: &Controller, vsic: u32, mode: u64) -> AdminReply {
    run(
        c,
        Opcode::DmaSetMode,
        |m| {
            m.vsic = vsic;
            m.args = [mode, 0, 0, 0]
        },
        &[],
        0,
    )
}

/// (mode, windows) of `vsic` as DMA_WINDOW_LIST reports them.
fn dma_list(c: &Controller, vsic: u32) -> (u64, Vec<vsic_abi::records::DmaWindow>) {
    let r = ok(run(
        c,
        Opcode::DmaWindowList,
        |m| m.vsic = vsic,
        &[],
        1 << 16,
    ));
    let w = vsic_abi::records::DmaWindow::decode_array(&r.payload).unwrap();
    assert_eq!(r.completion.result0 as usize, w.len());
    (r.completion.result1, w)
}

#[test]
fn dma_windows_are_added_listed_removed_and_checked() {
    use super::target::DmaAccess;
    use vsic_abi::admin::{
        DMA_MODE_ENFORCED, DMA_MODE_OPEN, FLAG_DMA_READ, FLAG_DMA_WRITE, MAX_DMA_WINDOWS,
    };
    let rw = FLAG_DMA_READ | FLAG_DMA_WRITE;
    let pool = Pool::new("dma", 1);
    let c = pool.open();
    // Open by default: no policy for the data path.
    assert_eq!(dma_list(&c, 1), (DMA_MODE_OPEN, vec![]));
    assert!(c.dma_policy(1).is_none());
    assert_eq!(ok(dma_add(&c, 1, 0x2000, 0x1000, rw)).completion.result0, 1);
    assert_eq!(
        ok(dma_add(&c, 1, 0x0, 0x1000, FLAG_DMA_READ))
            .completion
            .result0,
        2
    );
    assert!(c.dma_policy(1).is_none(), "windows alone do not enforce");
    assert_eq!(ok(dma_mode(&c, 1, DMA_MODE_ENFORCED)).completion.result0, 0);
    let p = c.dma_policy(1).expect("enforced");
    assert!(p.permits(0x2000, 0x1000, DmaAccess::Write));
    assert!(!p.permits(0x0, 1, DmaAccess::Write));
    assert!(c.dma_policy(0).is_none(), "other VSICs stay open");
    let (mode, w) = dma_list(&c, 1);
    assert_eq!(mode, DMA_MODE_ENFORCED);
    assert_eq!(
        w.iter()
            .map(|w| (w.start, w.len, w.flags))
            .collect::<Vec<_>>(),
        [(0, 0x1000, FLAG_DMA_READ), (0x2000, 0x1000, rw)]
    );
    // Bad input, each with its status; nothing changes.
    let bad = [
        (
            dma_add(&c, 1, 0x2800, 0x1000, rw),
            AdminStatus::WindowOverlap,
        ),
        (
            dma_add(&c, 1, 0x1800, 0x1000, rw),
            AdminStatus::WindowOverlap,
        ),
        (dma_add(&c, 1, 0x8000, 0, rw), AdminStatus::ZeroSize),
        (
            dma_add(&c, 1, u64::MAX - 1, 4, rw),
            AdminStatus::WindowOverflow,
        ),
        (dma_add(&c, 1, 0x8000, 1, 0), AdminStatus::InvalidArgument),
        (dma_add(&c, 1, 0x8000, 1, 1 << 3), AdminStatus::UnknownFlags),
        (
            dma_add(&c, 1, 0x8000, 1, FLAG_READ_ONLY),
            AdminStatus::UnknownFlags,
        ),
        (dma_add(&c, 9, 0x8000, 1, rw), AdminStatus::NoSuchVsic),
        (dma_mode(&c, 9, DMA_MODE_OPEN), AdminStatus::NoSuchVsic),
        (dma_mode(&c, 1, 2), AdminStatus::UnknownMode),
        (
            run(&c, Opcode::DmaWindowList, |m| m.vsic = 9, &[], 1 << 16),
            AdminStatus::NoSuchVsic,
        ),
        (
            run(
                &c,
                Opcode::DmaWindowRemove,
                |m| {
                    m.vsic = 1;
                    m.args = [0x2000, 0x800, 0, 0]
                },
                &[],
                0,
            ),
            AdminStatus::NoSuchWindow,
        ),
        (
            run(&c, Opcode::DmaWindowList, |m| m.vsic = 1, &[], 24),
            AdminStatus::ResponseTooSmall,
        ),
    ];
    for (r, want) in bad {
        assert_eq!(status(&r), want);
    }
    assert_eq!(dma_list(&c, 1).1.len(), 2);
    ok(run(
        &c,
        Opcode::DmaWindowRemove,
        |m| {
            m.vsic = 1;
            m.args = [0x2000, 0x1000, 0, 0]
        },
        &[],
        0,
    ));
    assert!(!c.dma_policy(1).unwrap().permits(0x2000, 1, DmaAccess::Read));
    // The limit.
    for i in 1..MAX_DMA_WINDOWS as u64 {
        ok(dma_add(&c, 1, i << 20, 0x1000, rw));
    }
    assert_eq!(
        status(&dma_add(&c, 1, 1 << 40, 1, rw)),
        AdminStatus::TooManyWindows
    );
    assert_eq!(ok(dma_mode(&c, 1, DMA_MODE_OPEN)).completion.result0, 1);
    assert!(c.dma_policy(1).is_none());
}

#[test]
fn dma_mode_survives_a_restart_but_windows_do_not() {
    use vsic_abi::admin::{DMA_MODE_ENFORCED, DMA_MODE_OPEN, FLAG_DMA_READ};
    let pool = Pool::new("dma-reopen", 1);
    {
        let c = pool.open();
        ok(dma_mode(&c, 2, DMA_MODE_ENFORCED));
        ok(dma_add(&c, 2, 0, 1 << 30, FLAG_DMA_READ));
        ok(dma_add(&c, 3, 0, 1 << 30, FLAG_DMA_READ));
    }
    let c = pool.open();
    assert_eq!(dma_list(&c, 2), (DMA_MODE_ENFORCED, vec![]));
    let p = c.dma_policy(2).expect("still enforced: fail closed");
    assert!(p.windows().is_empty());
    assert_eq!(dma_list(&c, 3), (DMA_MODE_OPEN, vec![]));
}

#[test]
fn dma_violations_count_as_protection_violations() {
    let pool = Pool::new("dma-count", 1);
    let c = pool.open();
    c.dma_violation(1, 0, 0x1000, 16);
    c.dma_violation(1, 7, 0x1000, 16);
    let s = vsic_stats(&c, 1);
    assert_eq!((s.protection_violations, s.errors), (2, 2));
    c.dma_violation(99, 0, 0, 1);
}
