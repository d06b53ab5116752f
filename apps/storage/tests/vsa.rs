//! The VSA implementation of the seam against the real `vsicd`: a VSA is
//! created and attached through the PF, then driven through
//! `vhost-user:PATH`; the data is read back through a second open.

#[path = "../../../device-backend/tests/common/daemon.rs"]
mod daemon;
#[allow(dead_code)] // only power-cut and power-on are used here
#[path = "../../../device-backend/tests/common/mgmt.rs"]
mod mgmt;

use std::time::Duration;

use daemon::{Daemon, Setup};
use mgmt::MgmtClient;
use serde_json::json;
use vsic_storage::{Op, OpKind, OpenOptions, StorageError};

/// A vsicd with one 16 MiB VSA attached in slot 0 of VSIC 0.
fn daemon_with_vsa() -> Daemon {
    daemon_with_vsa_cache(false)
}

/// The same, vsicd in write-through mode when `write_through`.
fn daemon_with_vsa_cache(write_through: bool) -> Daemon {
    let d = Daemon::start_with(
        "storage",
        Setup {
            vsics: 2,
            queues: 1,
            drives: vec!["64M"],
            write_through,
            ..Setup::default()
        },
    );
    let admin = vsic::admin::AdminClient::open(&d.pf_spec()).expect("open the PF");
    let v = admin.vsa_create(16 << 20, 1).expect("create a VSA");
    admin.attach(0, 0, &v.token, false).expect("attach it");
    d
}

fn opts() -> OpenOptions {
    OpenOptions {
        dma_bytes: 8 << 20,
        ..OpenOptions::default()
    }
}

#[test]
fn vsa_async_writes_flush_and_read_back() {
    let d = daemon_with_vsa();
    let dev = vsic_storage::open(&d.vsic_spec(0), &opts()).expect("open the VSA");
    assert_eq!(dev.capacity(), 16 << 20);
    // More requests than the ring holds at once: submit must make room.
    let n = 300u64;
    for i in 0..n {
        let mut buf = dev.alloc(8192).unwrap();
        buf.as_mut_slice().fill(i as u8);
        dev.submit(
            Op::Write {
                offset: i * 8192,
                buf,
            },
            i,
        )
        .expect("submit");
    }
    let mut writes = 0;
    while writes < n {
        match dev.wait(Some(Duration::from_secs(10))) {
            Ok(()) => {}
            Err(e) => panic!("after {writes} of {n} writes: {e}"),
        }
        dev.poll(&mut |c| {
            assert_eq!(c.kind, OpKind::Write);
            c.result.expect("write ok");
            writes += 1;
        });
    }
    dev.flush().expect("flush");
    drop(dev);
    let dev = vsic_storage::open(&d.vsic_spec(0), &opts()).expect("reopen");
    for i in [0u64, 1, 137, n - 1] {
        let buf = dev.read_at(i * 8192, 8192).expect("read");
        assert!(buf.as_slice().iter().all(|&b| b == i as u8), "block {i}");
    }
    let buf = dev.alloc(4096).unwrap();
    assert!(matches!(
        dev.submit(
            Op::Read {
                offset: 16 << 20,
                buf
            },
            1
        ),
        Err(StorageError::OutOfRange { .. })
    ));
}

#[test]
fn vsic_without_a_vsa_is_a_clear_error() {
    let d = daemon_with_vsa();
    match vsic_storage::open(&d.vsic_spec(1), &opts()) {
        Err(StorageError::NoMedium { .. }) => {}
        other => panic!("{:?}", other.map(|d| d.describe())),
    }
}

#[test]
fn vsa_reports_durable_writes_only_under_write_through() {
    for write_through in [false, true] {
        let d = daemon_with_vsa_cache(write_through);
        let dev = vsic_storage::open(&d.vsic_spec(0), &opts()).expect("open the VSA");
        assert_eq!(
            dev.durable_writes(),
            write_through,
            "vsicd write_through={write_through}: {}",
            dev.describe()
        );
        // A flush still completes (at once when write-through).
        dev.write_at(0, &[7u8; 4096]).expect("write");
        dev.flush().expect("flush");
        assert_eq!(dev.read_at(0, 4096).expect("read").as_slice(), &[7u8; 4096]);
    }
}

/// With interrupts, `completion_fd` is a descriptor that an edge-triggered
/// epoll sees fire for every completion after a poll found none (nobody
/// drains it); polled and hybrid devices have none.
#[test]
fn completion_fd_signals_every_completion_with_interrupts_only() {
    let d = daemon_with_vsa();
    let dev = vsic_storage::open(&d.vsic_spec(0), &opts()).expect("open the VSA");
    let fd = dev
        .completion_fd()
        .expect("a completion fd with interrupts");
    // SAFETY: no pointers; checked below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 1,
    };
    // SAFETY: ev is valid for the call.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0);
    let wait = |ms: i32| {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: out holds one writable epoll_event.
        unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 1, ms) }
    };
    // Edges so far (from opening) are consumed.
    while wait(0) > 0 {}
    for i in 0..20u64 {
        assert_eq!(dev.poll(&mut |_| {}), 0, "nothing in flight");
        let mut buf = dev.alloc(4096).unwrap();
        buf.as_mut_slice().fill(i as u8);
        let op = if i % 2 == 0 {
            Op::Write {
                offset: i * 4096,
                buf,
            }
        } else {
            Op::Flush
        };
        dev.submit(op, i).expect("submit");
        assert_eq!(wait(10_000), 1, "request {i}: no edge on the completion fd");
        let mut tags = Vec::new();
        // The edge may come before the completion is visible: poll until.
        for _ in 0..1000 {
            dev.poll(&mut |c| tags.push(c.tag));
            if !tags.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tags, vec![i]);
    }
    // SAFETY: ep is ours.
    unsafe { libc::close(ep) };
    drop(dev);
    for (polling, hybrid) in [(true, false), (false, true)] {
        let o = OpenOptions {
            polling,
            hybrid,
            ..opts()
        };
        let dev = vsic_storage::open(&d.vsic_spec(0), &o).expect("open the VSA");
        assert!(
            dev.completion_fd().is_none(),
            "polling={polling} hybrid={hybrid}"
        );
    }
}

/// `ordered_flush`: writes submitted with a flush behind them, none waited
/// for, are durable once everything completed. vsicd keeps completed
/// writes in a volatile cache until FLUSH; a power cut right after drops
/// exactly the write submitted after the flush.
#[test]
fn vsa_ordered_flush_covers_the_writes_submitted_before_it() {
    let d = Daemon::start_with(
        "storage-ordered",
        Setup {
            vsics: 1,
            queues: 1,
            drives: vec!["64M"],
            extra_args: vec!["--volatile-cache".into(), "8M".into()],
            ..Setup::default()
        },
    );
    let admin = vsic::admin::AdminClient::open(&d.pf_spec()).expect("open the PF");
    let v = admin.vsa_create(16 << 20, 1).expect("create a VSA");
    admin.attach(0, 0, &v.token, false).expect("attach it");
    let dev = vsic_storage::open(&d.vsic_spec(0), &opts()).expect("open the VSA");
    assert!(dev.ordered_flush());
    let write = |tag: u64, offset: u64| {
        let mut buf = dev.alloc(8192).unwrap();
        buf.as_mut_slice().fill(tag as u8 + 1);
        dev.submit(Op::Write { offset, buf }, tag).expect("submit");
    };
    for i in 0..32 {
        write(i, i * 8192);
    }
    dev.submit(Op::Flush, 100).expect("submit the flush");
    write(200, 1 << 20);
    let mut done = 0;
    while done < 34 {
        dev.wait(Some(Duration::from_secs(10)))
            .expect("completions");
        dev.poll(&mut |c| {
            assert!(c.result.is_ok(), "tag {}: {:?}", c.tag, c.result);
            done += 1;
        });
    }
    let mut mgmt = MgmtClient::connect(&d.mgmt_socket());
    let cut = mgmt.ok("power-cut", json!({}));
    assert_eq!(
        cut["dropped-bytes"],
        json!(8192),
        "only the write after the flush was unflushed: {cut}"
    );
    mgmt.ok("power-on", json!({}));
    for i in 0..32u64 {
        let back = dev.read_at(i * 8192, 8192).expect("read");
        assert!(
            back.as_slice().iter().all(|&b| b == i as u8 + 1),
            "write {i} survived the cut"
        );
    }
    let back = dev.read_at(1 << 20, 8192).expect("read");
    assert!(
        back.as_slice().iter().all(|&b| b == 0),
        "the later write is lost"
    );
}
