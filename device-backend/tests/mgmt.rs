//! The management socket end to end: the protocol's shape, bad input, and
//! every command family (admin, statistics, faults, traces).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Daemon, MgmtClient};
use serde_json::json;

#[test]
fn socket_is_private_and_speaks_qmp_shape() {
    let d = Daemon::start("mgmt-shape");
    let mode = std::fs::metadata(d.mgmt_socket())
        .expect("mgmt socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    let cmds = c.ok("query-commands", json!({}));
    let names: Vec<&str> = cmds
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"query-commands"), "{names:?}");
    assert!(names.contains(&"query-version"), "{names:?}");
    // An id is echoed.
    let r = c.send_line(r#"{"execute": "query-version", "id": 7}"#);
    assert_eq!(r["id"], 7, "{r}");
    assert!(r["return"]["vsicd"].is_string(), "{r}");
}

#[test]
fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let d = Daemon::start("mgmt-bad");
    let mut c = MgmtClient::connect(&d.mgmt_socket());
    let class = |r: &serde_json::Value| r["error"]["class"].as_str().unwrap_or("").to_string();
    for (line, want) in [
        ("this is not json", "ParseError"),
        ("{\"execute\": ", "ParseError"),
        ("[1, 2]", "ParseError"),
        ("{\"arguments\": {}}", "ParseError"),
        ("{\"execute\": 5}", "ParseError"),
        ("{\"execute\": \"x\", \"bogus\": 1}", "ParseError"),
        ("{\"execute\": \"no-such-command\"}", "CommandNotFound"),
        (
            "{\"execute\": \"query-version\", \"arguments\": 3}",
            "InvalidArguments",
        ),
        (
            "{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}",
            "InvalidArguments",
        ),
    ] {
        let r = c.send_line(line);
        assert_eq!(class(&r), want, "{line} -> {r}");
        assert!(
            r["error"]["desc"].as_str().is_some_and(|d| !d.is_empty()),
            "{r}"
        );
        // Still usable.
        c.ok("query-version", json!({}));
    }
    // Not UTF-8 and too long: errors too.
    let r = c.send_line(&"x".repeat(2 << 20));
    assert_eq!(class(&r), "ParseError", "{r}");
    c.ok("query-version", json!({}));
    // Two connections at once.
    let mut c2 = MgmtClient::connect(&d.mgmt_socket());
    c2.ok("query-version", json!({}));
    c.ok("query-version", json!({}));
}
