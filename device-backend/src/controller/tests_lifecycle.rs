//! Controller tests of VSIC and commit life cycles: DISABLE draining the
//! I/O in flight, clean shutdown with every VSIC disabled, the outcome of a
//! commit that reached only some drives, reserved admin fields.
//! A child of `tests`, whose helpers it uses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::controller::Target;
use crate::front::{Front, FrontConfig};

fn enable(c: &Controller, vsic: u32, on: bool) {
    let op = if on {
        Opcode::VsicEnable
    } else {
        Opcode::VsicDisable
    };
    ok(run(c, op, |m| m.vsic = vsic, &[], 0));
}

/// Item 5: a write that passed the enabled check while DISABLE ran must not
/// land after DISABLE completed. A writer rewrites a 2 MiB VSA back to back
/// while the PF disables the VSIC; what the drive holds right after the
/// DISABLE completion must be what it holds once the writer stopped.
#[test]
fn disable_waits_for_writes_in_flight() {
    const LEN: usize = 32 * ES as usize;
    let pool = Pool::new("disable-drain", 1);
    let c = pool.open();
    let (_, t) = create(&c, LEN as u64, 0);
    ok(attach(&c, 0, 0, &t, false));
    for round in 0..30u8 {
        enable(&c, 0, true);
        let started = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let c = Arc::clone(&c);
            let started = Arc::clone(&started);
            move || {
                let mut bufs = [
                    pattern(LEN, round.wrapping_mul(2)),
                    pattern(LEN, round.wrapping_mul(2) + 1),
                ];
                let mut storage = BufferStorage::default();
                for n in 0usize.. {
                    let mut one = storage.start();
                    one.push_bytes(&mut bufs[n % 2]);
                    match c.io(0, 0, IoKind::Write, 0, &one) {
                        Ok(_) => started.store(true, Ordering::Release),
                        Err(IoError::VsicDisabled) => return n,
                        Err(e) => panic!("write failed: {e:?}"),
                    }
                }
                unreachable!()
            }
        });
        while !started.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        enable(&c, 0, false);
        let at_disable = std::fs::read(&pool.paths[0]).unwrap();
        let writes = writer.join().unwrap();
        let settled = std::fs::read(&pool.paths[0]).unwrap();
        assert!(writes > 0);
        assert!(
            at_disable == settled,
            "round {round}: a write landed after DISABLE completed ({writes} writes before it)"
        );
    }
}

/// Item 6: a clean shutdown makes completed writes durable even when every
/// VSIC is disabled (their FLUSH would be refused), and a shutdown is not a
/// protection violation of anyone.
#[test]
fn shutdown_syncs_the_drives_when_every_vsic_is_disabled() {
    let pool = Pool::new("shutdown-sync", 2);
    let c = pool.open();
    let (_, t) = create(&c, 2 * ES, 2);
    ok(attach(&c, 0, 0, &t, false));
    write(&c, 0, 0, &pattern(2 * ES as usize, 9)).unwrap();
    for vsic in 0..4 {
        enable(&c, vsic, false);
    }
    // Disabling may have synced the drives already (a drive unchanged since
    // its last sync is not synced again): give each one a change that only
    // the shutdown can make durable (its last block rewritten as it is).
    for d in &c.drives {
        let mut last = vec![0u8; 4096];
        d.read_exact_at(&mut last, d.size() - 4096).unwrap();
        d.write_all_at(&last, d.size() - 4096).unwrap();
    }
    let before: Vec<u64> = c.drives.iter().map(|d| d.syncs()).collect();
    let config = FrontConfig {
        socket_dir: pool.paths[0].with_file_name("sockets"),
        vsics: 4,
        queues_per_vsic: 2,
        poll_max: Duration::ZERO,
        workarounds: Default::default(),
    };
    let front = Front::start(config, Arc::clone(&c) as Arc<dyn Target>).unwrap();
    front.shutdown();
    for (n, d) in c.drives.iter().enumerate() {
        assert!(
            d.syncs() > before[n],
            "drive {n} was not synced by the shutdown"
        );
    }
    for vsic in 0..4 {
        let s = vsic_stats(&c, vsic);
        assert_eq!(
            (s.errors, s.protection_violations),
            (0, 0),
            "VSIC {vsic} counted the shutdown as an error"
        );
    }
}

/// Item 11: a commit that reached only some drives, whose roll-back then
/// failed too, has a defined outcome: either the command is reported done
/// and the next start loads it, or it is refused and the next start does
/// not load it. `plans` are the drives each successive commit fails on.
#[test]
fn a_commit_that_reached_some_drives_is_done_or_certainly_not_applied() {
    let cases: [(&[&[usize]], AdminStatus); 5] = [
        // The command's commit reached drive 0; the roll-back reached both.
        (&[&[1]], AdminStatus::MetadataIo),
        // ... the roll-back reached drive 0 only.
        (&[&[1], &[1]], AdminStatus::MetadataIo),
        // ... the roll-back reached no drive: only going forward is certain.
        (&[&[1], &[0, 1]], AdminStatus::Ok),
        (&[&[0], &[0, 1]], AdminStatus::Ok),
        // Nothing reached any drive, then the roll-back did.
        (&[&[0, 1]], AdminStatus::MetadataIo),
    ];
    for (case, (plans, want)) in cases.iter().enumerate() {
        let pool = Pool::new("partial-commit", 2);
        let c = pool.open();
        let (id, t) = create(&c, 2 * ES, 2);
        let (_, other) = create(&c, ES, 0);
        ok(attach(&c, 1, 0, &other, false));
        c.plane()
            .store
            .fail_on_drives
            .extend(plans.iter().map(|p| p.to_vec()));
        let got = status(&with_token(&c, Opcode::VsaDelete, &t, 0));
        assert!(
            c.plane().store.fail_on_drives.is_empty(),
            "case {case}: every planned commit ran"
        );
        assert_eq!(got, *want, "case {case}");
        let done = got == AdminStatus::Ok;
        let live = |c: &Controller| vsa_list(c).iter().any(|v| v.vsa_id == id);
        assert_eq!(
            live(&c),
            !done,
            "case {case}: the running controller disagrees with the reply {got:?}"
        );
        // Restarted before any other commit could supersede what the drives hold.
        drop(c);
        let c = pool.open();
        c.plane().state.check().unwrap();
        assert_eq!(
            live(&c),
            !done,
            "case {case}: the next start disagrees with the reply {got:?}"
        );
        assert_eq!(
            vsic_list(&c)[1].slots[0].vsa_id,
            other.vsa_id,
            "case {case}"
        );
        let id_info = identify(&c);
        let used: u64 = vsa_list(&c).iter().map(|v| v.extents as u64).sum();
        assert_eq!(
            id_info.free_extents + used,
            id_info.total_extents,
            "case {case}: extents leaked"
        );
        ok(run(&c, Opcode::SetQos, |m| m.args[0] = 1 << 30, &[], 0));
    }
}

/// Item 12: the reserved fields of an admin command (arg2, arg3 and the
/// reserved u64) must be zero; a non-zero one is invalid-argument for every
/// opcode, and nothing changes.
#[test]
fn reserved_admin_fields_must_be_zero() {
    let pool = Pool::new("reserved", 1);
    let c = pool.open();
    let (_, t) = create(&c, ES, 0);
    let before = (
        vsa_list(&c),
        vsic_list(&c),
        identify(&c).metadata_generation,
    );
    for op in Opcode::ALL {
        let payload: &[u8] = if matches!(
            op,
            Opcode::VsaDelete
                | Opcode::VsaExtend
                | Opcode::VsaShrink
                | Opcode::Attach
                | Opcode::CapDerive
                | Opcode::CapRevoke
        ) {
            &t.encode()
        } else {
            &[]
        };
        for arg in [2, 3] {
            for value in [1, u64::MAX] {
                let r = run(&c, op, |m| m.args[arg] = value, payload, 4096);
                assert_eq!(
                    status(&r),
                    AdminStatus::InvalidArgument,
                    "{op:?} arg{arg} = {value:#x}"
                );
            }
        }
        let mut raw = AdminCommand::new(op);
        raw.payload_len = payload.len() as u32;
        let mut bytes = raw.encode();
        bytes[63] = 1;
        assert_eq!(
            status(&c.admin(&bytes, payload, 4096)),
            AdminStatus::InvalidArgument,
            "{op:?} reserved"
        );
    }
    assert_eq!(
        (
            vsa_list(&c),
            vsic_list(&c),
            identify(&c).metadata_generation
        ),
        before
    );
    // The same commands with the fields zero still work.
    ok(attach(&c, 0, 0, &t, false));
}

/// Item 11, the one case left open: the command's commit reached drive 0,
/// then no drive took the roll-back nor the second attempt. The command is
/// refused, and the next successful commit (built on the previous state)
/// settles it: the next start does not load the refused delete.
#[test]
fn a_commit_no_drive_settles_is_settled_by_the_next_commit() {
    let pool = Pool::new("unsettled-commit", 2);
    let c = pool.open();
    let (id, t) = create(&c, 2 * ES, 2);
    c.plane()
        .store
        .fail_on_drives
        .extend([vec![1], vec![0, 1], vec![0, 1]]);
    assert_eq!(
        status(&with_token(&c, Opcode::VsaDelete, &t, 0)),
        AdminStatus::MetadataIo
    );
    assert!(c.plane().store.fail_on_drives.is_empty());
    ok(run(&c, Opcode::SetQos, |m| m.args[0] = 1 << 30, &[], 0));
    drop(c);
    let c = pool.open();
    assert!(vsa_list(&c).iter().any(|v| v.vsa_id == id));
    assert_eq!(vsic_list(&c)[0].qos_bytes_per_sec, 1 << 30);
    ok(with_token(&c, Opcode::VsaDelete, &t, 0));
}
