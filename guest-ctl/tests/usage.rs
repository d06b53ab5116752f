//! Command-line behaviour that needs no device: usage errors, help texts,
//! the missing transport, local capability files.

mod common;

use common::{run_ctl, ScratchDir};
use vsic_abi::{CapToken, Rights};

#[test]
fn without_vhost_user_and_without_a_pf_the_host_is_told_what_to_pass() {
    // On the host there is no PF among the PCI functions: the guest path
    // finds nothing, binds nothing, and says how to reach vsicd instead.
    let out = run_ctl(&["list"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("no VSIC controller PF"), "{out:#?}");
    assert!(out.stderr.contains("--vhost-user"), "{out:#?}");
    let json = run_ctl(&["identify", "--json"]);
    assert_eq!(json.code, 1);
    assert_eq!(json.json()["error"]["status"], "no-pf");
}

#[test]
fn guest_only_commands_refuse_the_vhost_user_route() {
    for args in [
        &["functions"][..],
        &["vsic", "bind", "--vsic", "0", "--kernel"],
        &["vsic", "unbind", "--vsic", "0"],
        &["store", "mount"],
        &["serve"],
    ] {
        let mut with = vec!["--vhost-user", "/nonexistent/pf.sock", "--json"];
        with.extend_from_slice(args);
        let out = run_ctl(&with);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains("takes no --vhost-user"),
            "{args:?}: {out:#?}"
        );
    }
}

#[test]
fn bind_needs_exactly_one_target() {
    for args in [
        &["vsic", "bind", "--vsic", "0"][..],
        &[
            "vsic", "bind", "--vsic", "0", "--kernel", "--vfio", "--user", "1",
        ],
        &["vsic", "bind", "--vsic", "0", "--vfio"],
        &["vsic", "bind", "--vsic", "0", "--kernel", "--user", "alice"],
    ] {
        let out = run_ctl(args);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
    }
}

#[test]
fn request_attach_without_a_service_fails_cleanly() {
    let dir = ScratchDir::new("reqattach");
    let cap = dir.path("x.cap");
    let token = CapToken {
        vsa_id: 1,
        token_id: 1,
        rights: Rights::ALL,
        secret: [1; 32],
    };
    std::fs::write(&cap, token.to_text()).unwrap();
    let sock = dir.path("control.sock");
    let out = run_ctl(&[
        "request-attach",
        "--vsic",
        "0",
        "--cap",
        cap.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(out.json()["error"]["status"], "transport");
    assert!(out.stderr.contains("vsicctl serve"), "{out:#?}");
    // An unreadable capability file fails before the service is asked.
    let missing = run_ctl(&[
        "request-attach",
        "--vsic",
        "0",
        "--cap",
        dir.path("none").to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("opening capability file"),
        "{missing:#?}"
    );
}

#[test]
fn unreachable_socket_fails_with_exit_1() {
    let dir = ScratchDir::new("nosock");
    let sock = dir.path("pf.sock");
    let out = run_ctl(&["--vhost-user", sock.to_str().unwrap(), "identify", "--json"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.starts_with("vsicctl: connecting to the PF at "),
        "{out:#?}"
    );
    assert_eq!(out.json()["error"]["status"], "transport");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["vsa", "create", "--size", "12X", "--cap", "f"][..],
        &["vsa", "create", "--cap", "f"],
        &["vsic", "detach", "--vsic", "0"],
        &["vsic", "attach", "--vsic", "-1", "--cap", "f"],
        &["no-such-command"],
        &[],
    ] {
        let out = run_ctl(args);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn every_subcommand_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["vsa"],
        &["vsa", "create"],
        &["vsa", "resize"],
        &["vsa", "delete"],
        &["vsic"],
        &["vsic", "attach"],
        &["vsic", "detach"],
        &["vsic", "enable"],
        &["vsic", "disable"],
        &["vsic", "qos"],
        &["cap"],
        &["cap", "derive"],
        &["cap", "revoke"],
        &["cap", "show"],
        &["list"],
        &["stats"],
        &["identify"],
        &["extent-map"],
        &["vsic", "bind"],
        &["vsic", "unbind"],
        &["functions"],
        &["store"],
        &["store", "init"],
        &["store", "mount"],
        &["serve"],
        &["request-attach"],
        &["request-detach"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = run_ctl(&args);
        assert_eq!(out.code, 0, "{args:?}: {out:#?}");
        assert!(
            out.stdout.contains("--vhost-user") && out.stdout.contains("--json"),
            "{args:?}: {}",
            out.stdout
        );
    }
    let create = run_ctl(&["vsa", "create", "--help"]).stdout;
    assert!(
        create.contains("0600") && create.contains("--force") && create.contains("--stripe"),
        "{create}"
    );
}

#[test]
fn cap_show_reads_the_file_without_a_device() {
    let dir = ScratchDir::new("show");
    let path = dir.path("x.cap");
    let token = CapToken {
        vsa_id: 12,
        token_id: 3,
        rights: Rights::READ,
        secret: [0x5a; 32],
    };
    std::fs::write(&path, token.to_text()).unwrap();
    let out = run_ctl(&["cap", "show", "--cap", path.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let json = out.json();
    assert_eq!(
        (json["vsa"].as_u64(), json["token"].as_u64()),
        (Some(12), Some(3))
    );
    assert_eq!(json["rights"], "r--");
    assert!(!out.stdout.contains("5a5a"), "secret shown: {}", out.stdout);
    let missing = run_ctl(&["cap", "show", "--cap", dir.path("none").to_str().unwrap()]);
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .starts_with("vsicctl: reading capability file"),
        "{missing:#?}"
    );
}

#[test]
fn usage_errors_in_json_mode_also_give_an_error_object() {
    let out = run_ctl(&["vsa", "create", "--size", "12X", "--cap", "f", "--json"]);
    assert_eq!(out.code, 2, "{out:#?}");
    let json = out.json();
    assert_eq!(json["error"]["status"], "usage");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("12X"),
        "{json}"
    );
    // Help is not an error, even with --json.
    let help = run_ctl(&["list", "--help", "--json"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.starts_with("List every VSA"), "{help:#?}");
}
