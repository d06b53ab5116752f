//! kill -9 of `vsic-mailq serve` under a load of our own SMTP clients, on
//! a file (kernel) and on a VSA of the real vsicd (vhost-user): every
//! message that got its 250 is listed afterwards with the same id, envelope
//! and sha256; no message appears twice; a message that did not get its 250
//! is absent or whole. Several rounds on the same device, so later rounds
//! recover (and keep) what earlier ones stored.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{body, dot_stuff, sha256_hex, Backend, Client};

/// Per message (keyed by its unique sender): its sha256, and the id of
/// its 250 if it got one.
#[derive(Default)]
struct Record {
    sent: HashMap<String, String>,
    acked: HashMap<String, u64>,
}

const SIZES: [usize; 5] = [600, 900, 3000, 12_000, 30_000];

fn client(
    addr: SocketAddr,
    c: usize,
    round: usize,
    rec: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let Ok((mut cl, 220)) = Client::connect(addr) else {
        return;
    };
    if cl.cmd("EHLO load.example").ok() != Some(250) {
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let from = format!("r{round}c{c}m{n}@load.example");
        let msg = body(&from, SIZES[(c + n) % SIZES.len()]);
        rec.lock()
            .unwrap()
            .sent
            .insert(from.clone(), sha256_hex(&msg));
        let cmds = format!("MAIL FROM:<{from}>\r\nRCPT TO:<q{c}@example.net>\r\nDATA\r\n");
        let mut data = cmds.into_bytes();
        if cl.send(&data).is_err() {
            return;
        }
        for want in [250, 250, 354] {
            match cl.reply() {
                Ok((code, _)) if code == want => {}
                _ => return,
            }
        }
        data = dot_stuff(&msg);
        if cl.send(&data).is_err() {
            return;
        }
        match cl.reply() {
            Ok((250, lines)) => {
                let id: u64 = lines[0].rsplit(' ').next().unwrap().parse().unwrap();
                rec.lock().unwrap().acked.insert(from, id);
            }
            // 451: the durable write failed (the device went away).
            Ok((451, _)) => return,
            Ok((code, lines)) => panic!("unexpected reply {code} {lines:?}"),
            Err(_) => return,
        }
        n += 1;
    }
}

fn serve_kill(b: &Backend) {
    let rec = Arc::new(Mutex::new(Record::default()));
    for round in 0..3 {
        let mut server = b.serve(&["--workers", "4"]);
        let stop = Arc::new(AtomicBool::new(false));
        let before = rec.lock().unwrap().acked.len();
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (rec, stop) = (rec.clone(), stop.clone());
                let addr = server.addr;
                std::thread::spawn(move || client(addr, c, round, rec, stop))
            })
            .collect();
        let want = before + 300 + round * 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        while rec.lock().unwrap().acked.len() < want {
            assert!(
                Instant::now() < deadline,
                "round {round}: load made no progress"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("a client panicked");
        }
        let rec = rec.lock().unwrap();
        let listed = b.list();
        let mut ids = HashSet::new();
        let mut froms = HashSet::new();
        for m in &listed {
            assert!(ids.insert(m.id), "id {} listed twice", m.id);
            assert!(
                froms.insert(m.from.clone()),
                "message {} stored twice",
                m.from
            );
            let sent = rec
                .sent
                .get(&m.from)
                .unwrap_or_else(|| panic!("{} never sent", m.from));
            assert_eq!(&m.sha256, sent, "{} is not whole", m.from);
            let q = m.from.split('@').next().unwrap().split('c').nth(1).unwrap();
            let c = q.split('m').next().unwrap();
            assert_eq!(m.to, vec![format!("q{c}@example.net")]);
        }
        let by_from: HashMap<_, _> = listed.iter().map(|m| (m.from.clone(), m.id)).collect();
        for (from, id) in &rec.acked {
            assert_eq!(
                by_from.get(from),
                Some(id),
                "acknowledged {from} (id {id}) missing"
            );
        }
        let unacked = listed.len() - rec.acked.len();
        eprintln!(
            "round {round}: {} acknowledged messages all present and intact; {unacked} stored without their 250 (whole)",
            rec.acked.len()
        );
    }
    // One message, read back exactly.
    let rec = rec.lock().unwrap();
    let (from, id) = rec.acked.iter().next().unwrap();
    let shown = b.mailq(&["show", "--id", &id.to_string()]);
    assert_eq!(&sha256_hex(&shown.stdout), rec.sent.get(from).unwrap());
}

#[test]
fn kill_serve_under_smtp_load_on_file() {
    serve_kill(&Backend::file("serve", 64 << 20));
}

#[test]
fn kill_serve_under_smtp_load_on_maildir() {
    serve_kill(&Backend::maildir("serve-maildir"));
}

#[test]
fn kill_serve_under_smtp_load_on_vsa() {
    serve_kill(&Backend::vsa("mailq-serve", 64 << 20));
}

/// vsicd itself SIGKILLed under the load (the device vanishes under the
/// server), then restarted: a message whose write failed never got a 250
/// (the clients see 451 or lose the connection), and every message that got
/// its 250 is there after the restart.
#[test]
fn kill_vsicd_under_smtp_load() {
    let mut b = Backend::vsa("mailq-vsicd", 64 << 20);
    let rec = Arc::new(Mutex::new(Record::default()));
    let mut server = b.serve(&["--workers", "4"]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (rec, stop) = (rec.clone(), stop.clone());
            let addr = server.addr;
            std::thread::spawn(move || client(addr, c, 0, rec, stop))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rec.lock().unwrap().acked.len() < 300 {
        assert!(Instant::now() < deadline, "load made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    let daemon = b.daemon.as_mut().expect("a VSA backend has its daemon");
    daemon.kill();
    let acked_at_kill = rec.lock().unwrap().acked.len();
    // The server must not acknowledge anything more; give it time to try.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    server.kill();
    for c in clients {
        c.join().expect("a client panicked");
    }
    daemon.restart();
    let rec = rec.lock().unwrap();
    assert!(
        rec.acked.len() <= acked_at_kill + 8,
        "{} acknowledged after the device died (at most one in flight per client)",
        rec.acked.len() - acked_at_kill
    );
    let listed = b.list();
    let by_from: HashMap<_, _> = listed.iter().map(|m| (m.from.clone(), m)).collect();
    for (from, id) in &rec.acked {
        let m = by_from
            .get(from)
            .unwrap_or_else(|| panic!("acknowledged {from} missing"));
        assert_eq!(m.id, *id);
        assert_eq!(&m.sha256, rec.sent.get(from).unwrap());
    }
    eprintln!(
        "{} acknowledged messages present after vsicd was killed",
        rec.acked.len()
    );
}
