//! `vsicctl --mgmt`: the host's control plane while a guest owns the PF
//! (here: another client holds the PF's only vhost-user connection).

mod common;

use common::{path_str, run_ctl, start_daemon};
use vsic::admin::AdminClient;

#[test]
fn subcommands_work_through_the_management_socket_while_the_pf_is_owned() {
    let d = start_daemon();
    let pf = AdminClient::open(&format!("vhost-user:{}", path_str(&d.pf_socket())))
        .expect("the guest's PF connection");
    let mgmt = d.dir.path("sockets").join("mgmt.sock");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--mgmt", path_str(&mgmt), "--json"];
        all.extend_from_slice(args);
        let out = run_ctl(&all);
        (out.code, out.json(), out.stderr)
    };
    let ok = |args: &[&str]| {
        let (code, json, stderr) = ctl(args);
        assert_eq!(code, 0, "{args:?}: {json} {stderr}");
        json
    };
    let cap = d.dir.path("a.cap");
    let created = ok(&["vsa", "create", "--size", "8M", "--cap", path_str(&cap)]);
    let vsa = created["vsa"].as_u64().expect("vsa id");
    ok(&["vsic", "attach", "--vsic", "1", "--cap", path_str(&cap)]);
    // The PF's owner sees what the host did.
    let vsics = pf.list_vsics().expect("list through the PF");
    assert_eq!(vsics[1].slots[0].vsa_id, vsa);
    let list = ok(&["list"]);
    assert_eq!(list["vsas"][0]["vsa"], vsa, "{list}");
    ok(&["identify"]);
    ok(&["stats", "--vsic", "1"]);
    ok(&["extent-map", "--vsa", &vsa.to_string()]);
    ok(&["vsa", "resize", "--cap", path_str(&cap), "--size", "16M"]);
    ok(&["vsic", "qos", "--vsic", "1", "--iops", "100"]);
    ok(&["vsic", "disable", "--vsic", "2"]);
    ok(&["vsic", "enable", "--vsic", "2"]);
    // Refusals carry the PF's status names.
    let (code, json, _) = ctl(&["vsic", "detach", "--vsic", "1", "--slot", "5"]);
    assert_eq!(
        (code, json["error"]["status"].as_str()),
        (1, Some("slot-empty"))
    );
    ok(&["vsic", "detach", "--vsic", "1", "--slot", "0"]);
    ok(&["vsa", "delete", "--id", &vsa.to_string()]);
    assert!(pf.list_vsas().expect("list").is_empty());
}

#[test]
fn mgmt_route_usage_and_transport_errors() {
    let out = run_ctl(&["--mgmt", "/a", "--vhost-user", "/b", "list"]);
    assert_eq!(out.code, 2, "--mgmt and --vhost-user conflict: {out:#?}");
    let out = run_ctl(&["--mgmt", "/nonexistent/mgmt.sock", "--json", "list"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(out.json()["error"]["status"], "transport", "{out:#?}");
    assert!(out.stderr.contains("/nonexistent/mgmt.sock"), "{out:#?}");
    let out = run_ctl(&["--mgmt", "/a", "functions"]);
    assert_eq!(out.code, 2, "guest-only: {out:#?}");
    assert!(out.stderr.contains("--mgmt"), "{out:#?}");
}
