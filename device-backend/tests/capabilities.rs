//! Capabilities on a real daemon: read-only attachments from derived
//! tokens, and revocation (no re-attach, attachments dropped).

mod common;

use common::*;
use vsic::admin::AdminError;
use vsic::{CompletionMode, Error, IoStatus, Request, VsaHandle, VsaRange};
use vsic_abi::{AdminStatus, Rights};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };

fn refused_with(r: Result<(), AdminError>, status: AdminStatus, what: &str) {
    match r {
        Err(AdminError::Device(s)) if s == status => {}
        other => panic!("{what}: {other:?} instead of {status:?}"),
    }
}

fn is_ioerr(r: &Result<(), Error>) -> bool {
    matches!(r, Err(Error::Io(IoStatus::IoError)))
}

#[test]
fn a_read_only_attachment_reads_but_refuses_writes() {
    let d = Daemon::start("read-only");
    let admin = d.admin();
    let v = admin.vsa_create(2 * MIB, 0).expect("create");
    admin
        .attach(0, 0, &v.token, false)
        .expect("attach read-write");
    let writer = d.open_vsic(0, 1, CompletionMode::Interrupt);
    let data = filled(&writer, 0x0d0d, 64 << 10);
    writer.write_at(0, SLOT0, 0, &data).expect("write");
    writer.flush(0).expect("flush");

    let ro = admin.cap_derive(&v.token, true).expect("derive read-only");
    assert_eq!(ro.vsa_id, v.vsa_id);
    assert!(
        ro.rights.contains(Rights::READ) && !ro.rights.contains(Rights::WRITE),
        "{ro:?}"
    );
    refused_with(
        admin.attach(1, 0, &ro, false),
        AdminStatus::PermissionDenied,
        "read-write attach of a read-only token",
    );
    admin.attach(1, 0, &ro, true).expect("read-only attach");

    let reader = d.open_vsic(1, 1, CompletionMode::Polling);
    assert_same(
        &read_back(&reader, 0, 0, 64 << 10),
        data.as_slice(),
        "read through the read-only attachment",
    );
    let before = stats_of(&admin, 1).0;
    let other = filled(&reader, 0xbad, 64 << 10);
    assert!(
        is_ioerr(&reader.write_at(0, SLOT0, 0, &other)),
        "write through a read-only attachment"
    );
    let zeroes = [VsaRange::new(0, 4096)];
    if reader.limits().max_write_zeroes_sectors > 0 {
        assert_eq!(
            run_one(&reader, 0, Request::write_zeroes(SLOT0, &zeroes)),
            Err(IoStatus::IoError),
            "write-zeroes"
        );
    }
    let after = stats_of(&admin, 1).0;
    assert!(
        after.protection_violations > before.protection_violations,
        "refused writes are violations"
    );
    assert_eq!(after.bytes_written, before.bytes_written);
    // Nothing changed, seen from both sides.
    assert_same(
        &read_back(&reader, 0, 0, 64 << 10),
        data.as_slice(),
        "after refused writes (reader)",
    );
    assert_same(
        &read_back(&writer, 0, 0, 64 << 10),
        data.as_slice(),
        "after refused writes (writer)",
    );

    // A root token attached with the read-only flag is read-only too.
    admin.detach(0, 0).expect("detach");
    admin
        .attach(0, 0, &v.token, true)
        .expect("read-only attach of the root");
    assert!(
        is_ioerr(&writer.write_at(0, SLOT0, 0, &other)),
        "write through the read-only root attachment"
    );
    assert_same(
        &read_back(&writer, 0, 0, 64 << 10),
        data.as_slice(),
        "unchanged",
    );
}

#[test]
fn revoked_tokens_cannot_attach_and_revoking_detaches() {
    let d = Daemon::start("revoke");
    let admin = d.admin();
    let v = admin.vsa_create(2 * MIB, 0).expect("create");
    let child = admin
        .cap_derive(&v.token, false)
        .expect("derive read-write");
    let grandchild = admin
        .cap_derive(&child, true)
        .expect("derive read-only from the child");
    admin.attach(0, 0, &child, false).expect("attach the child");
    admin
        .attach(1, 0, &grandchild, true)
        .expect("attach the grandchild");
    let dev0 = d.open_vsic(0, 1, CompletionMode::Interrupt);
    let dev1 = d.open_vsic(1, 1, CompletionMode::Interrupt);
    let data = filled(&dev0, 0x4e40, 32 << 10);
    dev0.write_at(0, SLOT0, 0, &data)
        .expect("write through the child");
    assert_same(
        &read_back(&dev1, 0, 0, 32 << 10),
        data.as_slice(),
        "through the grandchild",
    );

    assert!(
        admin
            .cap_revoke(&child)
            .expect("revoke the child")
            .is_none(),
        "only a root revoke re-keys"
    );
    // Both attachments made with the revoked tokens are gone.
    let mut buf = dev0.alloc_dma(4096).expect("alloc");
    assert!(
        is_ioerr(&dev0.read_at(0, SLOT0, 0, &mut buf)),
        "read after revoke"
    );
    assert!(
        is_ioerr(&dev0.write_at(0, SLOT0, 0, &buf)),
        "write after revoke"
    );
    assert!(
        is_ioerr(&dev1.read_at(0, SLOT0, 0, &mut buf)),
        "read through a revoked descendant"
    );
    assert_eq!(
        dev0.capacity().expect("capacity"),
        0,
        "slot 0 is empty after revoke"
    );
    let vsics = admin.list_vsics().expect("list");
    for n in [0usize, 1] {
        assert!(
            !vsics[n].slots[0].is_attached(),
            "VSIC {n} slot 0 after revoke: {:?}",
            vsics[n].slots[0]
        );
    }
    refused_with(
        admin.attach(0, 0, &child, false),
        AdminStatus::RevokedToken,
        "attach a revoked token",
    );
    refused_with(
        admin.attach(1, 0, &grandchild, true),
        AdminStatus::RevokedToken,
        "attach a revoked descendant",
    );
    assert!(
        admin.cap_derive(&child, true).is_err(),
        "derive from a revoked token"
    );

    // The root still works and the data survived.
    admin
        .attach(2, 0, &v.token, false)
        .expect("attach the root");
    let dev2 = d.open_vsic(2, 1, CompletionMode::Polling);
    assert_same(
        &read_back(&dev2, 0, 0, 32 << 10),
        data.as_slice(),
        "data after revoke",
    );

    // Revoking the root re-keys it and drops its attachments too.
    let new_root = admin
        .cap_revoke(&v.token)
        .expect("revoke the root")
        .expect("a new root comes back");
    assert_eq!(new_root.vsa_id, v.vsa_id);
    assert_ne!(new_root.secret, v.token.secret);
    assert!(
        is_ioerr(&dev2.read_at(0, SLOT0, 0, &mut buf)),
        "read after the root was revoked"
    );
    refused_with(
        admin.attach(2, 0, &v.token, false),
        AdminStatus::RevokedToken,
        "attach the old root",
    );
    refused_with(
        admin.vsa_delete(&v.token),
        AdminStatus::RevokedToken,
        "delete with the old root",
    );
    admin
        .attach(2, 0, &new_root, false)
        .expect("attach the new root");
    assert_same(
        &read_back(&dev2, 0, 0, 32 << 10),
        data.as_slice(),
        "data under the new root",
    );
}
