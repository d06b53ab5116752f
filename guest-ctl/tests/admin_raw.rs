//! The admin client against a real `vsicd`: the typed calls, and malformed
//! commands that only the raw calls can express. After every refusal the
//! daemon must keep serving. Needs `cargo build -p vsicd` first.

mod common;

use common::{start_daemon, Daemon, QUEUES, VSICS};
use vsic::admin::{AdminClient, AdminError};
use vsic_abi::admin::FLAG_READ_ONLY;
use vsic_abi::virtio::VIRTIO_BLK_S_OK;
use vsic_abi::{AdminCommand, AdminCompletion, AdminStatus, CapToken, Opcode, Rights};

fn client(d: &Daemon) -> AdminClient {
    AdminClient::open(&d.pf_spec()).unwrap_or_else(|e| panic!("open PF: {e}\n{}", d.log()))
}

fn still_serving(c: &AdminClient) {
    let id = c.identify().expect("identify after a refused command");
    assert_eq!(id.vsics, VSICS);
}

/// Sends `cmd` raw and checks the completion carries `status`.
fn expect_status(
    c: &AdminClient,
    cmd: &AdminCommand,
    payload: &[u8],
    in_capacity: usize,
    status: AdminStatus,
) {
    let (completion, data) = c.command(cmd, payload, in_capacity).expect("exchange");
    assert_eq!(
        completion.status(),
        Some(status),
        "completion {completion:?}"
    );
    assert!(data.is_empty(), "a refusal came with payload");
    still_serving(c);
}

/// Sends raw descriptor parts and decodes the completion.
fn raw_completion(c: &AdminClient, out: &[&[u8]]) -> AdminCompletion {
    let reply = c.raw(out, &[AdminCompletion::LEN]).expect("exchange");
    assert_eq!(reply.status, VIRTIO_BLK_S_OK);
    let bytes = reply.ins.first().expect("completion buffer");
    AdminCompletion::decode(bytes).expect("completion decodes")
}

#[test]
fn typed_calls_round_trip() {
    let d = start_daemon();
    let c = client(&d);
    let id = c.identify().expect("identify");
    assert_eq!(
        (id.vsics, id.queues_per_vsic, id.drives),
        (VSICS, QUEUES, 2)
    );
    let extent = id.extent_size;

    let created = c.vsa_create(3 * extent - 1, 0).expect("create");
    assert_eq!(created.size, 3 * extent, "size rounds up to whole extents");
    assert_eq!(created.token.vsa_id, created.vsa_id);
    assert_eq!(created.token.rights, Rights::ALL);
    let vsas = c.list_vsas().expect("list");
    assert!(vsas
        .iter()
        .any(|v| v.vsa_id == created.vsa_id && v.size == 3 * extent));

    assert_eq!(
        c.vsa_resize(&created.token, 5 * extent).expect("extend"),
        5 * extent
    );
    assert_eq!(
        c.vsa_resize(&created.token, 2 * extent).expect("shrink"),
        2 * extent
    );
    assert_eq!(
        c.vsa_resize(&created.token, 2 * extent).expect("same size"),
        2 * extent
    );
    let runs = c.extent_map(created.vsa_id).expect("extent map");
    assert_eq!(runs.iter().map(|r| r.count as u64).sum::<u64>(), 2);

    c.attach(1, 4, &created.token, true).expect("attach");
    let vsics = c.list_vsics().expect("list VSICs");
    assert_eq!(vsics.len(), VSICS as usize);
    let slot = vsics[1].slots[4];
    assert!(slot.is_attached() && slot.read_only() && slot.vsa_id == created.vsa_id);
    c.detach(1, 4).expect("detach");
    assert!(!c.list_vsics().expect("list")[1].slots[4].is_attached());

    let ro = c.cap_derive(&created.token, true).expect("derive");
    assert!(!ro.rights.contains(Rights::WRITE));
    assert_ne!(ro.token_id, created.token.token_id);
    assert!(c.cap_revoke(&ro).expect("revoke derived").is_none());
    let new_root = c
        .cap_revoke(&created.token)
        .expect("revoke root")
        .expect("a new root");
    assert_eq!(new_root.vsa_id, created.vsa_id);

    c.set_qos(2, 1 << 20, 100).expect("qos");
    let v = c.list_vsics().expect("list")[2];
    assert_eq!((v.qos_bytes_per_sec, v.qos_iops), (1 << 20, 100));
    c.vsic_disable(3).expect("disable");
    assert!(!c.list_vsics().expect("list")[3].enabled);
    c.vsic_enable(3).expect("enable");

    let stats = c.stats(None).expect("stats");
    assert_eq!(stats.len(), VSICS as usize);
    assert!(stats.iter().all(|(_, qs)| qs.len() == QUEUES as usize));
    assert_eq!(c.stats(Some(2)).expect("stats of one")[0].0.vsic, 2);

    c.vsa_delete(&new_root).expect("delete");
    assert!(matches!(
        c.vsa_delete(&new_root),
        Err(AdminError::Device(AdminStatus::BadToken))
    ));
}

#[test]
fn unknown_opcode() {
    let d = start_daemon();
    let c = client(&d);
    let mut cmd = AdminCommand::new(Opcode::Identify);
    cmd.opcode = 0x7777;
    expect_status(&c, &cmd, &[], 64, AdminStatus::UnknownOpcode);
}

#[test]
fn payload_sizes_that_do_not_match_the_opcode() {
    let d = start_daemon();
    let c = client(&d);
    let token = c.vsa_create(1 << 20, 0).expect("create").token;
    let full = token.encode();

    // A truncated token, honestly announced.
    let mut cmd = AdminCommand::new(Opcode::Attach);
    cmd.payload_len = 10;
    expect_status(&c, &cmd, &full[..10], 0, AdminStatus::BadPayloadSize);
    // A full-length announcement with fewer bytes behind it.
    cmd.payload_len = CapToken::LEN as u32;
    expect_status(&c, &cmd, &full[..10], 0, AdminStatus::BadPayloadSize);
    // No token at all where one is needed.
    let mut delete = AdminCommand::new(Opcode::VsaDelete);
    delete.payload_len = 0;
    expect_status(&c, &delete, &[], 0, AdminStatus::BadPayloadSize);
    // A payload where none belongs.
    let mut identify = AdminCommand::new(Opcode::Identify);
    identify.payload_len = 64;
    expect_status(&c, &identify, &full, 64, AdminStatus::BadPayloadSize);
}

#[test]
fn malformed_command_headers() {
    let d = start_daemon();
    let c = client(&d);
    let good = AdminCommand::new(Opcode::Identify).encode();

    let short = raw_completion(&c, &[&good[..63]]);
    assert_eq!(short.status(), Some(AdminStatus::BadCommandSize));
    still_serving(&c);
    let tiny = raw_completion(&c, &[&good[..8]]);
    assert_eq!(tiny.status(), Some(AdminStatus::BadCommandSize));
    still_serving(&c);

    let mut bad_magic = good;
    bad_magic[0] ^= 0xff;
    assert_eq!(
        raw_completion(&c, &[&bad_magic]).status(),
        Some(AdminStatus::BadMagic)
    );
    still_serving(&c);

    let mut bad_version = good;
    bad_version[4] = 99;
    assert_eq!(
        raw_completion(&c, &[&bad_version]).status(),
        Some(AdminStatus::BadVersion)
    );
    still_serving(&c);

    let mut flags = AdminCommand::new(Opcode::Identify);
    flags.flags = 0x80;
    expect_status(&c, &flags, &[], 64, AdminStatus::UnknownFlags);
}

#[test]
fn reply_buffers_that_are_too_small_or_missing() {
    let d = start_daemon();
    let c = client(&d);
    expect_status(
        &c,
        &AdminCommand::new(Opcode::Identify),
        &[],
        10,
        AdminStatus::ResponseTooSmall,
    );
    let mut create = AdminCommand::new(Opcode::VsaCreate);
    create.args[0] = 1 << 20;
    expect_status(&c, &create, &[], 0, AdminStatus::ResponseTooSmall);
    assert!(
        c.list_vsas().expect("list").is_empty(),
        "a refused create still made a VSA"
    );

    // No room for a completion: the device cannot answer with one, but it
    // must fail the request (or the transport refuses it) and keep serving.
    let good = AdminCommand::new(Opcode::Identify).encode();
    if let Ok(reply) = c.raw(&[&good], &[]) {
        assert_ne!(
            reply.status, VIRTIO_BLK_S_OK,
            "a request without completion buffer succeeded"
        );
    }
    still_serving(&c);
}

#[test]
fn argument_errors_through_the_typed_calls() {
    let d = start_daemon();
    let c = client(&d);
    let refused = |r: Result<(), AdminError>, status: AdminStatus| match r {
        Err(AdminError::Device(s)) => assert_eq!(s, status),
        other => panic!("expected {}, got {other:?}", status.name()),
    };
    refused(c.vsa_create(0, 0).map(drop), AdminStatus::ZeroSize);
    refused(c.vsa_create(1 << 41, 0).map(drop), AdminStatus::TooLarge);
    refused(c.vsic_enable(VSICS), AdminStatus::NoSuchVsic);
    let token = c.vsa_create(2 << 20, 0).expect("create").token;
    refused(c.attach(0, 16, &token, false), AdminStatus::NoSuchSlot);
    refused(c.detach(0, 0), AdminStatus::SlotEmpty);
    refused(c.vsa_resize(&token, 1).map(drop), AdminStatus::BelowMinimum);
    let mut forged = token.clone();
    forged.secret[0] ^= 1;
    refused(c.attach(0, 0, &forged, false), AdminStatus::BadToken);
    // A token naming a VSA that does not exist.
    let mut other_vsa = token.clone();
    other_vsa.vsa_id += 100;
    match c.attach(0, 0, &other_vsa, false) {
        Err(AdminError::Device(AdminStatus::BadToken | AdminStatus::NoSuchVsa)) => {}
        other => panic!("expected bad-token or no-such-vsa, got {other:?}"),
    }
    // Read-only attach flag on a derive is accepted; an unknown one is not.
    let mut cmd = AdminCommand::new(Opcode::CapDerive);
    cmd.flags = FLAG_READ_ONLY | 0x100;
    cmd.payload_len = CapToken::LEN as u32;
    expect_status(
        &c,
        &cmd,
        &token.encode(),
        CapToken::LEN,
        AdminStatus::UnknownFlags,
    );
    still_serving(&c);
}
