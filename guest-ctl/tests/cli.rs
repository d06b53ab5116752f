//! `vsicctl` against a real `vsicd`: the control-plane flows and every
//! refusal a user can run into. Needs `cargo build -p vsicd` first.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{path_str, run_ctl, start_daemon, Daemon, Outcome, QUEUES, VSICS};
use vsic_abi::{AdminStatus, CapToken, Rights};

const MIB: u64 = 1 << 20;

/// Creates a VSA of `size` with its root capability in `name`.
fn create(d: &Daemon, size: &str, name: &str) -> (PathBuf, serde_json::Value) {
    let cap = d.dir.path(name);
    let json = d.ctl_json(&["vsa", "create", "--size", size, "--cap", path_str(&cap)]);
    (cap, json)
}

fn read_token(path: &Path) -> CapToken {
    CapToken::from_text(&fs::read_to_string(path).expect("read cap file")).expect("parse cap file")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// The slot attachments of VSIC `vsic` as `list --json` shows them.
fn attachments(d: &Daemon, vsic: u32) -> Vec<serde_json::Value> {
    let list = d.ctl_json(&["list"]);
    let vsics = list["vsics"].as_array().expect("vsics array").clone();
    let entry = vsics
        .into_iter()
        .find(|v| v["vsic"] == vsic)
        .expect("VSIC listed");
    entry["attachments"]
        .as_array()
        .expect("attachments array")
        .clone()
}

/// Runs `args` twice (human and `--json`) and checks both report `status`
/// with exit code 1; then checks the daemon still answers.
fn assert_refused(d: &Daemon, args: &[&str], status: AdminStatus) {
    let human = d.ctl(args);
    check_refusal(&human, status, &d.log());
    assert!(
        human.stdout.is_empty(),
        "human mode printed on stdout: {human:#?}"
    );
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let json = d.ctl(&with_json);
    check_refusal(&json, status, &d.log());
    let doc = json.json();
    assert_eq!(doc["error"]["status"], status.name(), "{json:#?}");
    assert_eq!(doc["error"]["message"], status.message(), "{json:#?}");
    still_serving(d);
}

fn check_refusal(out: &Outcome, status: AdminStatus, log: &str) {
    assert_eq!(
        out.code,
        1,
        "expected exit 1 for {}: {out:#?}\n{log}",
        status.name()
    );
    let line = out.stderr.lines().next().unwrap_or_default();
    assert!(line.starts_with("vsicctl: "), "{out:#?}");
    assert!(
        line.ends_with(&format!(": {} ({})", status.message(), status.name())),
        "expected {} on stderr: {out:#?}",
        status.name()
    );
}

fn still_serving(d: &Daemon) {
    let id = d.ctl_json(&["identify"]);
    assert_eq!(id["vsics"], VSICS, "identify after an error: {id}");
}

#[test]
fn create_writes_a_private_capability_file_and_refuses_to_overwrite() {
    let d = start_daemon();
    let (cap, json) = create(&d, "8M", "root.cap");
    assert_eq!(mode(&cap), 0o600);
    let token = read_token(&cap);
    assert_eq!(token.rights, Rights::ALL);
    assert_eq!(json["vsa"], token.vsa_id);
    assert_eq!(json["size"], 8 * MIB);
    assert!(
        !json.to_string().contains("secret"),
        "the secret leaked into the output: {json}"
    );

    // Human output names the VSA and its size.
    let human = d.ctl(&[
        "vsa",
        "create",
        "--size",
        "3M",
        "--cap",
        path_str(&d.dir.path("h.cap")),
    ]);
    human.assert_success(&d.log());
    assert!(human.stdout.contains("3M"), "{human:#?}");

    // An existing file is never overwritten, and no VSA is created for it.
    let before = d.ctl_json(&["list"])["vsas"].as_array().map(Vec::len);
    let again = d.ctl(&["vsa", "create", "--size", "8M", "--cap", path_str(&cap)]);
    assert_eq!(again.code, 1, "{again:#?}");
    assert!(again.stderr.contains("--force"), "{again:#?}");
    assert_eq!(read_token(&cap), token);
    assert_eq!(
        d.ctl_json(&["list"])["vsas"].as_array().map(Vec::len),
        before
    );

    // --force replaces it, still private.
    fs::set_permissions(&cap, fs::Permissions::from_mode(0o644)).expect("chmod");
    let forced = d.ctl_json(&[
        "vsa",
        "create",
        "--size",
        "2M",
        "--cap",
        path_str(&cap),
        "--force",
    ]);
    assert_eq!(
        read_token(&cap).vsa_id,
        forced["vsa"].as_u64().expect("vsa id")
    );
    assert_ne!(read_token(&cap).vsa_id, token.vsa_id);
    assert_eq!(mode(&cap), 0o600);
}

#[test]
fn attach_and_detach_show_in_list() {
    let d = start_daemon();
    let (cap, created) = create(&d, "4M", "a.cap");
    let vsa = created["vsa"].clone();
    assert!(attachments(&d, 0).is_empty());

    d.ctl(&["vsic", "attach", "--vsic", "0", "--cap", path_str(&cap)])
        .assert_success(&d.log());
    let att = attachments(&d, 0);
    assert_eq!(att.len(), 1, "{att:?}");
    assert_eq!(att[0]["slot"], 0);
    assert_eq!(att[0]["vsa"], vsa);
    assert_eq!(att[0]["read_only"], false);

    // Same VSA read-only in another VSIC's slot 3.
    d.ctl_json(&[
        "vsic",
        "attach",
        "--vsic",
        "1",
        "--slot",
        "3",
        "--read-only",
        "--cap",
        path_str(&cap),
    ]);
    let att = attachments(&d, 1);
    assert_eq!(
        (att[0]["slot"].as_u64(), att[0]["read_only"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(att[0]["window_offset"], 3u64 << 40);

    // A busy slot is refused; detach frees it.
    assert_refused(
        &d,
        &["vsic", "attach", "--vsic", "0", "--cap", path_str(&cap)],
        AdminStatus::SlotBusy,
    );
    d.ctl(&["vsic", "detach", "--vsic", "0", "--slot", "0"])
        .assert_success(&d.log());
    assert!(attachments(&d, 0).is_empty());
    assert_refused(
        &d,
        &["vsic", "detach", "--vsic", "0", "--slot", "0"],
        AdminStatus::SlotEmpty,
    );

    let human = d.ctl(&["list"]);
    human.assert_success(&d.log());
    assert!(human.stdout.contains("slot3=vsa"), "{human:#?}");
}

#[test]
fn derive_read_only_capability() {
    let d = start_daemon();
    let (cap, _) = create(&d, "4M", "root.cap");
    let ro = d.dir.path("ro.cap");
    let json = d.ctl_json(&[
        "cap",
        "derive",
        "--cap",
        path_str(&cap),
        "--read-only",
        "--out",
        path_str(&ro),
    ]);
    assert_eq!(mode(&ro), 0o600);
    let token = read_token(&ro);
    assert_eq!(token.vsa_id, read_token(&cap).vsa_id);
    assert!(token.rights.contains(Rights::READ));
    assert!(!token.rights.contains(Rights::WRITE) && !token.rights.contains(Rights::ADMIN));
    assert_eq!(json["rights"], token.rights.to_string());

    // cap show works locally and never prints the secret.
    let secret_hex: String = token.secret.iter().map(|b| format!("{b:02x}")).collect();
    let shown = run_ctl(&["cap", "show", "--cap", path_str(&ro)]);
    shown.assert_success("");
    assert!(
        shown.stdout.contains("r--") && !shown.stdout.contains(&secret_hex),
        "{shown:#?}"
    );

    // A read-only capability attaches read-only, but not read-write, and
    // cannot administer the VSA.
    d.ctl_json(&[
        "vsic",
        "attach",
        "--vsic",
        "2",
        "--slot",
        "1",
        "--read-only",
        "--cap",
        path_str(&ro),
    ]);
    assert_refused(
        &d,
        &[
            "vsic",
            "attach",
            "--vsic",
            "2",
            "--slot",
            "2",
            "--cap",
            path_str(&ro),
        ],
        AdminStatus::PermissionDenied,
    );
    assert_refused(
        &d,
        &["vsa", "delete", "--cap", path_str(&ro)],
        AdminStatus::PermissionDenied,
    );

    // The derived file is not overwritten by a second derive.
    let again = d.ctl(&[
        "cap",
        "derive",
        "--cap",
        path_str(&cap),
        "--out",
        path_str(&ro),
    ]);
    assert_eq!(again.code, 1, "{again:#?}");
    assert_eq!(read_token(&ro), token);
}

#[test]
fn revoke_detaches_and_rekeys_the_root() {
    let d = start_daemon();
    let (cap, _) = create(&d, "4M", "root.cap");
    let child = d.dir.path("child.cap");
    d.ctl_json(&[
        "cap",
        "derive",
        "--cap",
        path_str(&cap),
        "--out",
        path_str(&child),
    ]);
    d.ctl_json(&[
        "vsic",
        "attach",
        "--vsic",
        "1",
        "--slot",
        "2",
        "--cap",
        path_str(&child),
    ]);
    assert_eq!(attachments(&d, 1).len(), 1);

    // Revoking a derived token: no new token, its attachment goes away.
    let json = d.ctl_json(&["cap", "revoke", "--cap", path_str(&child)]);
    assert!(json.get("new_root").is_none(), "{json}");
    assert!(
        attachments(&d, 1).is_empty(),
        "revoke left the attachment in place"
    );
    assert_refused(
        &d,
        &["vsic", "attach", "--vsic", "1", "--cap", path_str(&child)],
        AdminStatus::RevokedToken,
    );

    // Revoking the root: the file is replaced by the new root.
    let old_root = read_token(&cap);
    let old_copy = d.dir.path("old-root.cap");
    fs::copy(&cap, &old_copy).expect("copy cap file");
    let json = d.ctl_json(&["cap", "revoke", "--cap", path_str(&cap)]);
    let new_root = read_token(&cap);
    assert_eq!(mode(&cap), 0o600);
    assert_eq!(new_root.vsa_id, old_root.vsa_id);
    assert_eq!(new_root.rights, Rights::ALL);
    assert_ne!(new_root.secret, old_root.secret);
    assert_eq!(json["new_root"]["token"], new_root.token_id);
    let leftovers: Vec<_> = fs::read_dir(&d.dir.0)
        .expect("read scratch dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The new root works, the old one does not.
    d.ctl_json(&["vsic", "attach", "--vsic", "0", "--cap", path_str(&cap)]);
    let stale = d.ctl(&[
        "vsic",
        "attach",
        "--vsic",
        "0",
        "--slot",
        "5",
        "--cap",
        path_str(&old_copy),
    ]);
    assert_eq!(stale.code, 1, "{stale:#?}");
    // A re-keyed root is revoked; a device may also see it as a bad secret.
    assert!(
        stale.stderr.contains("(revoked-token)") || stale.stderr.contains("(bad-token)"),
        "{stale:#?}"
    );
    still_serving(&d);
}

#[test]
fn resize_grows_shrinks_and_keeps_equal_sizes() {
    let d = start_daemon();
    let (cap, created) = create(&d, "8M", "r.cap");
    let vsa = created["vsa"].as_u64().expect("vsa id");
    let grown = d.ctl_json(&["vsa", "resize", "--cap", path_str(&cap), "--size", "16M"]);
    assert_eq!(grown["size"], 16 * MIB);
    let shrunk = d.ctl_json(&["vsa", "resize", "--cap", path_str(&cap), "--size", "4M"]);
    assert_eq!(shrunk["size"], 4 * MIB);
    let same = d.ctl_json(&["vsa", "resize", "--cap", path_str(&cap), "--size", "4M"]);
    assert_eq!(same["size"], 4 * MIB);

    let list = d.ctl_json(&["list"]);
    let entry = list["vsas"]
        .as_array()
        .expect("vsas")
        .iter()
        .find(|v| v["vsa"] == vsa)
        .cloned();
    assert_eq!(entry.expect("VSA listed")["size"], 4 * MIB);

    let map = d.ctl_json(&["extent-map", "--vsa", &vsa.to_string()]);
    let extents: u64 = map["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["extents"].as_u64())
        .sum();
    assert_eq!(
        extents * map["extent_size"].as_u64().expect("extent size"),
        4 * MIB
    );

    d.ctl_json(&["vsa", "delete", "--cap", path_str(&cap)]);
    assert_refused(
        &d,
        &["extent-map", "--vsa", &vsa.to_string()],
        AdminStatus::NoSuchVsa,
    );
    // The file is still there but grants nothing any more.
    assert_refused(
        &d,
        &["vsa", "delete", "--cap", path_str(&cap)],
        AdminStatus::BadToken,
    );
}

#[test]
fn vsic_enable_disable_and_qos() {
    let d = start_daemon();
    let vsic = |n: u32| {
        let list = d.ctl_json(&["list"]);
        list["vsics"]
            .as_array()
            .expect("vsics")
            .iter()
            .find(|v| v["vsic"] == n)
            .cloned()
            .expect("VSIC")
    };
    d.ctl_json(&["vsic", "disable", "--vsic", "2"]);
    assert_eq!(vsic(2)["enabled"], false);
    d.ctl_json(&["vsic", "enable", "--vsic", "2"]);
    assert_eq!(vsic(2)["enabled"], true);

    d.ctl_json(&[
        "vsic",
        "qos",
        "--vsic",
        "1",
        "--bytes-per-sec",
        "100M",
        "--iops",
        "500",
    ]);
    assert_eq!(vsic(1)["qos"]["bytes_per_sec"], 100 * MIB);
    assert_eq!(vsic(1)["qos"]["iops"], 500);
    // An omitted limit keeps its value.
    d.ctl_json(&["vsic", "qos", "--vsic", "1", "--iops", "0"]);
    assert_eq!(vsic(1)["qos"]["bytes_per_sec"], 100 * MIB);
    assert_eq!(vsic(1)["qos"]["iops"], 0);
    let shown = d.ctl_json(&["vsic", "qos", "--vsic", "1"]);
    assert_eq!(shown["bytes_per_sec"], 100 * MIB);
}

#[test]
fn list_stats_and_identify_give_json() {
    let d = start_daemon();
    create(&d, "4M", "x.cap");
    let list = d.ctl_json(&["list"]);
    assert_eq!(list["vsas"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["vsics"].as_array().map(Vec::len), Some(VSICS as usize));

    let stats = d.ctl_json(&["stats"]);
    let all = stats["vsics"].as_array().expect("vsics");
    assert_eq!(all.len(), VSICS as usize);
    for v in all {
        assert_eq!(
            v["queues"].as_array().map(Vec::len),
            Some(QUEUES as usize),
            "{v}"
        );
        assert_eq!(v["protection_violations"], 0);
    }
    let one = d.ctl_json(&["stats", "--vsic", "3"]);
    assert_eq!(one["vsics"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["vsics"][0]["vsic"], 3);

    let id = d.ctl_json(&["identify"]);
    assert_eq!(id["queues_per_vsic"], QUEUES);
    assert_eq!(id["drives"], 2);
    assert_eq!(id["vsa_count"], 1);
    assert!(id["free_extents"].as_u64() < id["total_extents"].as_u64());

    // --json may also come first, and human output is a table.
    let first = d.ctl(&["--json", "identify"]);
    first.assert_success(&d.log());
    assert_eq!(first.json()["vsics"], VSICS);
    let human = d.ctl(&["stats"]);
    human.assert_success(&d.log());
    assert!(
        human.stdout.contains("VIOLATIONS") && human.stdout.contains("QUEUE"),
        "{human:#?}"
    );
}

#[test]
fn bad_arguments_each_get_their_own_status() {
    let d = start_daemon();
    let (cap, _) = create(&d, "4M", "ok.cap");
    let cap = path_str(&cap).to_string();

    let zero = d.dir.path("zero.cap");
    assert_refused(
        &d,
        &["vsa", "create", "--size", "0", "--cap", path_str(&zero)],
        AdminStatus::ZeroSize,
    );
    assert!(
        !zero.exists(),
        "a failed create left its capability file behind"
    );
    assert_refused(
        &d,
        &["vsa", "resize", "--cap", &cap, "--size", "4096"],
        AdminStatus::BelowMinimum,
    );
    assert_refused(
        &d,
        &["vsic", "attach", "--vsic", "99", "--cap", &cap],
        AdminStatus::NoSuchVsic,
    );
    assert_refused(
        &d,
        &["vsic", "enable", "--vsic", "99"],
        AdminStatus::NoSuchVsic,
    );
    assert_refused(&d, &["stats", "--vsic", "99"], AdminStatus::NoSuchVsic);
    assert_refused(
        &d,
        &[
            "vsic", "attach", "--vsic", "0", "--slot", "16", "--cap", &cap,
        ],
        AdminStatus::NoSuchSlot,
    );
    assert_refused(
        &d,
        &["vsic", "detach", "--vsic", "0", "--slot", "99"],
        AdminStatus::NoSuchSlot,
    );

    // A forged token: same VSA and token id, one secret digit changed.
    let text = fs::read_to_string(&cap).expect("read cap");
    let at = text.find("secret=").expect("secret field") + "secret=".len();
    let mut forged_text = text.clone().into_bytes();
    forged_text[at] = if forged_text[at] == b'0' { b'1' } else { b'0' };
    let forged = d.dir.path("forged.cap");
    fs::write(&forged, forged_text).expect("write forged cap");
    assert_refused(
        &d,
        &["vsic", "attach", "--vsic", "0", "--cap", path_str(&forged)],
        AdminStatus::BadToken,
    );
    assert_refused(
        &d,
        &["vsa", "delete", "--cap", path_str(&forged)],
        AdminStatus::BadToken,
    );

    // The real capability still works after all of that.
    d.ctl_json(&["vsic", "attach", "--vsic", "0", "--cap", &cap]);
}

#[test]
fn full_drives_give_no_space_and_space_comes_back() {
    let d = start_daemon();
    let big = d.dir.path("big.cap");
    assert_refused(
        &d,
        &["vsa", "create", "--size", "1G", "--cap", path_str(&big)],
        AdminStatus::NoSpace,
    );
    assert!(!big.exists());

    // Fill the drives with 64 MiB VSAs until the controller says no.
    let mut caps = Vec::new();
    let mut last = None;
    for i in 0..16 {
        let cap = d.dir.path(&format!("fill{i}.cap"));
        let out = d.ctl(&["vsa", "create", "--size", "64M", "--cap", path_str(&cap)]);
        if out.code != 0 {
            last = Some(out);
            break;
        }
        caps.push(cap);
    }
    let refused = last.expect("512 MiB of drives held sixteen 64 MiB VSAs");
    check_refusal(&refused, AdminStatus::NoSpace, &d.log());
    assert!(!caps.is_empty(), "not even one 64 MiB VSA fit");
    let id = d.ctl_json(&["identify"]);
    let free = id["free_extents"].as_u64().expect("free")
        * id["extent_size"].as_u64().expect("extent size");
    // An unstriped VSA lives on one drive: a refusal means no single drive
    // had 64 MiB left, so the two together have less than twice that.
    assert!(
        free < 2 * 64 * MIB,
        "refused although {free} bytes are free"
    );
    assert!(
        caps.len() >= 6,
        "only {} VSAs of 64 MiB fit on 512 MiB",
        caps.len()
    );

    // Deleting one makes room again.
    d.ctl_json(&["vsa", "delete", "--cap", path_str(&caps[0])]);
    d.ctl_json(&[
        "vsa",
        "create",
        "--size",
        "64M",
        "--cap",
        path_str(&d.dir.path("again.cap")),
    ]);
}

#[test]
fn unreadable_capability_files_are_clear_errors() {
    let d = start_daemon();
    let junk = d.dir.path("junk.cap");
    fs::write(&junk, "not a token\n").expect("write");
    let out = d.ctl(&["vsic", "attach", "--vsic", "0", "--cap", path_str(&junk)]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("reading capability file")
            && out.stderr.contains("not a capability file"),
        "{out:#?}"
    );
    let missing = d.ctl(&[
        "vsa",
        "delete",
        "--cap",
        path_str(&d.dir.path("missing.cap")),
        "--json",
    ]);
    assert_eq!(missing.code, 1, "{missing:#?}");
    assert_eq!(missing.json()["error"]["status"], "file-error");
}

#[test]
fn vsas_capabilities_and_attachments_survive_a_crash() {
    let mut d = start_daemon();
    let (cap, created) = create(&d, "6M", "keep.cap");
    let ro = d.dir.path("keep-ro.cap");
    d.ctl_json(&[
        "cap",
        "derive",
        "--cap",
        path_str(&cap),
        "--read-only",
        "--out",
        path_str(&ro),
    ]);
    d.ctl_json(&[
        "vsic",
        "attach",
        "--vsic",
        "1",
        "--slot",
        "2",
        "--cap",
        path_str(&cap),
    ]);
    d.ctl_json(&["vsic", "qos", "--vsic", "1", "--iops", "300"]);
    let before = d.ctl_json(&["list"]);

    d.restart();

    assert_eq!(
        d.ctl_json(&["list"]),
        before,
        "state changed across a restart"
    );
    assert_eq!(attachments(&d, 1)[0]["vsa"], created["vsa"]);
    // The stored capabilities still work: derive-read-only attaches, the
    // root resizes.
    d.ctl_json(&[
        "vsic",
        "attach",
        "--vsic",
        "0",
        "--read-only",
        "--cap",
        path_str(&ro),
    ]);
    let grown = d.ctl_json(&["vsa", "resize", "--cap", path_str(&cap), "--size", "8M"]);
    assert_eq!(grown["size"], 8 * MIB);
}

#[test]
fn a_vsic_socket_is_not_the_pf() {
    let d = start_daemon();
    let vsic0 = d.dir.path("sockets").join("vsic0.sock");
    let out = run_ctl(&["--vhost-user", path_str(&vsic0), "identify"]);
    check_refusal(&out, AdminStatus::NotPf, &d.log());
    still_serving(&d);
}

/// The VSAs `list --json` shows, by id.
fn listed_vsa(d: &Daemon, vsa: u64) -> Option<serde_json::Value> {
    d.ctl_json(&["list"])["vsas"]
        .as_array()
        .expect("vsas array")
        .iter()
        .find(|v| v["vsa"] == vsa)
        .cloned()
}

#[test]
fn the_pf_owner_resizes_and_deletes_a_vsa_whose_capability_is_lost() {
    let d = start_daemon();
    let (cap, created) = create(&d, "8M", "lost.cap");
    let vsa = created["vsa"].as_u64().expect("vsa id");
    let id = vsa.to_string();
    d.ctl_json(&["vsic", "attach", "--vsic", "1", "--cap", path_str(&cap)]);
    fs::remove_file(&cap).expect("lose the capability file");

    let grown = d.ctl_json(&["vsa", "resize", "--id", &id, "--size", "16M"]);
    assert_eq!(
        (grown["vsa"].as_u64(), grown["size"].as_u64()),
        (Some(vsa), Some(16 * MIB))
    );
    let shrunk = d.ctl_json(&["vsa", "resize", "--id", &id, "--size", "4M"]);
    assert_eq!(shrunk["size"], 4 * MIB);
    let entry = listed_vsa(&d, vsa).expect("VSA listed");
    assert_eq!(entry["size"], 4 * MIB);
    assert_eq!(entry["role"], "none");
    assert_eq!(entry["orphan"], false);
    let human = d.ctl(&["list"]);
    human.assert_success(&d.log());
    assert!(human.stdout.contains("ROLE"), "{human:#?}");

    // The PF owner gives a role; list shows it; a second store is refused.
    let marked = d.ctl_json(&["vsa", "role", "--id", &id, "--role", "store"]);
    assert_eq!(marked["role"], "store");
    assert_eq!(listed_vsa(&d, vsa).expect("VSA listed")["role"], "store");
    let (other, _) = create(&d, "1M", "other.cap");
    let other = read_token(&other).vsa_id.to_string();
    assert_refused(
        &d,
        &["vsa", "role", "--id", &other, "--role", "store"],
        AdminStatus::RoleInUse,
    );
    d.ctl_json(&["vsa", "delete", "--id", &other]);
    assert_refused(
        &d,
        &["vsa", "role", "--id", "77", "--role", "none"],
        AdminStatus::NoSuchVsa,
    );

    let deleted = d.ctl_json(&["vsa", "delete", "--id", &id]);
    assert_eq!(deleted["deleted"], true);
    assert!(listed_vsa(&d, vsa).is_none(), "the VSA is still listed");
    assert!(
        attachments(&d, 1).is_empty(),
        "the deleted VSA is still attached"
    );
    let id_info = d.ctl_json(&["identify"]);
    assert_eq!(id_info["free_extents"], id_info["total_extents"]);

    assert_refused(&d, &["vsa", "delete", "--id", &id], AdminStatus::NoSuchVsa);
    assert_refused(
        &d,
        &["vsa", "resize", "--id", "77", "--size", "4M"],
        AdminStatus::NoSuchVsa,
    );
    assert_refused(
        &d,
        &["vsa", "resize", "--id", &id, "--size", "0"],
        AdminStatus::ZeroSize,
    );
    // Exactly one of --cap and --id.
    for args in [
        &["vsa", "delete"][..],
        &["vsa", "delete", "--id", "1", "--cap", "x"],
        &["vsa", "resize", "--size", "4M"],
        &["vsa", "resize", "--id", "1", "--cap", "x", "--size", "4M"],
    ] {
        let out = d.ctl(args);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
    }
}

#[test]
fn create_leaves_no_vsa_when_the_capability_file_cannot_be_written() {
    let d = start_daemon();
    // --force writes a temporary file next to the target, which procfs
    // refuses even to root: the VSA exists by then and must go again.
    let out = d.ctl(&[
        "vsa",
        "create",
        "--size",
        "4M",
        "--cap",
        "/proc/vsicctl-test.cap",
        "--force",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("was deleted again"), "{out:#?}");
    let list = d.ctl_json(&["list"]);
    assert_eq!(
        list["vsas"].as_array().map(Vec::len),
        Some(0),
        "an orphan VSA was left: {list}"
    );
    let id = d.ctl_json(&["identify"]);
    assert_eq!(id["free_extents"], id["total_extents"]);
}

#[test]
fn create_interrupted_at_any_instant_leaves_no_orphan_vsa() {
    let d = start_daemon();
    let socket = d.pf_socket();
    let spawn = |cap: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vsicctl"))
            .args([
                "--vhost-user",
                path_str(&socket),
                "vsa",
                "create",
                "--size",
                "1M",
                "--cap",
            ])
            .arg(cap)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn vsicctl")
    };
    // How long one create takes here; the interrupts are spread over it.
    let started = std::time::Instant::now();
    let status = spawn(&d.dir.path("timing.cap")).wait().expect("wait");
    assert!(status.success());
    let span = started.elapsed().mul_f64(1.3);
    const RUNS: u32 = 60;
    for i in 0..RUNS {
        let mut child = spawn(&d.dir.path(&format!("c{i}.cap")));
        std::thread::sleep(span.mul_f64(f64::from(i) / f64::from(RUNS)));
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().expect("wait");
    }
    // Every VSA has its capability file, and every file left is whole.
    let (mut held, mut broken) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let cap = d.dir.path(&format!("c{i}.cap"));
        if let Ok(text) = fs::read_to_string(&cap) {
            match CapToken::from_text(&text) {
                Ok(t) => held.push(t.vsa_id),
                Err(_) => broken.push(i),
            }
        }
    }
    held.push(read_token(&d.dir.path("timing.cap")).vsa_id);
    held.sort();
    let list = d.ctl_json(&["list"]);
    let mut vsas: Vec<u64> = list["vsas"]
        .as_array()
        .expect("vsas")
        .iter()
        .filter_map(|v| v["vsa"].as_u64())
        .collect();
    vsas.sort();
    let orphans: Vec<u64> = vsas.iter().copied().filter(|v| !held.contains(v)).collect();
    assert!(
        orphans.is_empty() && broken.is_empty(),
        "{} interrupted creates left VSAs {orphans:?} without a capability file and \
         capability files of runs {broken:?} empty or partial",
        RUNS as usize + 1 - vsas.len()
    );
    assert_eq!(vsas, held, "capability files without a VSA");
    assert!(
        vsas.len() <= RUNS as usize,
        "no create was interrupted: the test proved nothing"
    );
}

/// `vsicctl vsic dma-window add` arguments for VSIC 1.
fn dma_add<'a>(start: &'a str, len: &'a str, access: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "vsic",
        "dma-window",
        "add",
        "--vsic",
        "1",
        "--start",
        start,
        "--len",
        len,
    ];
    args.extend_from_slice(access);
    args
}

#[test]
fn vsic_dma_mode_and_windows() {
    let d = start_daemon();
    let shown = d.ctl_json(&["vsic", "dma-mode", "--vsic", "1"]);
    assert_eq!(shown["dma_mode"], "open");

    let r = d.ctl_json(&dma_add("0x100000", "1M", &["--read", "--write"]));
    assert_eq!(
        (r["windows"].as_u64(), r["access"].as_str()),
        (Some(1), Some("read-write"))
    );
    d.ctl_json(&dma_add("0x400000", "4K", &["--read"]));
    assert_refused(
        &d,
        &dma_add("0x180000", "1M", &["--write"]),
        AdminStatus::WindowOverlap,
    );
    assert_refused(
        &d,
        &dma_add("0x800000", "0", &["--read"]),
        AdminStatus::ZeroSize,
    );
    let r = d.ctl_json(&["vsic", "dma-mode", "--vsic", "1", "enforced"]);
    assert_eq!(
        (r["dma_mode"].as_str(), r["previous"].as_str()),
        (Some("enforced"), Some("open"))
    );
    let list = d.ctl_json(&["vsic", "dma-window", "list", "--vsic", "1"]);
    assert_eq!(list["dma_mode"], "enforced");
    let windows = list["windows"].as_array().expect("windows");
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[0]["start"], 0x100000);
    assert_eq!(windows[1]["access"], "read");
    d.ctl_json(&[
        "vsic",
        "dma-window",
        "remove",
        "--vsic",
        "1",
        "--start",
        "0x400000",
        "--len",
        "4K",
    ]);
    assert_refused(
        &d,
        &[
            "vsic",
            "dma-window",
            "remove",
            "--vsic",
            "1",
            "--start",
            "0x400000",
            "--len",
            "4K",
        ],
        AdminStatus::NoSuchWindow,
    );
    assert_refused(
        &d,
        &["vsic", "dma-mode", "--vsic", "99", "open"],
        AdminStatus::NoSuchVsic,
    );
    let shown = d.ctl_json(&["vsic", "dma-mode", "--vsic", "1"]);
    assert_eq!(
        (shown["dma_mode"].as_str(), shown["windows"].as_u64()),
        (Some("enforced"), Some(1))
    );
}
