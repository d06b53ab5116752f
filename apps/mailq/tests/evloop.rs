//! The slot queue's event-loop receiver (`serve`, one thread for every
//! session): sessions interleaved byte by byte, a client cut off mid-DATA
//! while others go on, whole transactions pipelined in one write, and a
//! client that stalls mid-DATA not holding up the others. Each on a VSA of
//! the real vsicd (completions through its interrupt eventfd in the loop's
//! epoll set) and on a file (no completion descriptor: the loop waits on
//! the device in slices).

mod common;

use std::time::{Duration, Instant};

use common::{body, dot_stuff, sha256_hex, Backend, Client};

fn queued_id(lines: &[String]) -> u64 {
    vsic_mailq::client::queued_id(lines).unwrap_or_else(|| panic!("no id in {lines:?}"))
}

fn greeted(addr: std::net::SocketAddr, name: &str) -> Client {
    let (mut c, greet) = Client::connect(addr).unwrap();
    assert_eq!(greet, 220);
    assert_eq!(c.cmd(&format!("HELO {name}")).unwrap(), 250);
    c
}

/// Opens the transaction of `from` and reads 250, 250, 354.
fn open_data(c: &mut Client, from: &str) {
    c.send(format!("MAIL FROM:<{from}>\r\nRCPT TO:<q@example.net>\r\nDATA\r\n").as_bytes())
        .unwrap();
    for want in [250, 250, 354] {
        assert_eq!(c.reply().unwrap().0, want, "{from}");
    }
}

fn interleaved(b: &Backend) {
    let mut server = b.serve(&["--workers", "3"]);
    let n = 8;
    let mut clients: Vec<Client> = (0..n)
        .map(|i| greeted(server.addr, &format!("c{i}.example")))
        .collect();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| body(&format!("interleaved {i}"), 1500 + 700 * i))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        open_data(c, &format!("s{i}@example.org"));
    }
    // Every session's content in pieces of 97 bytes, round robin, so the
    // loop sees all of them mid-DATA at once.
    let wire: Vec<Vec<u8>> = bodies.iter().map(|m| dot_stuff(m)).collect();
    let mut at = vec![0; n];
    while at.iter().zip(&wire).any(|(&a, w)| a < w.len()) {
        for i in 0..n {
            let end = (at[i] + 97).min(wire[i].len());
            if at[i] < end {
                clients[i].send(&wire[i][at[i]..end]).unwrap();
                at[i] = end;
            }
        }
    }
    let mut ids = Vec::new();
    for c in &mut clients {
        let (code, lines) = c.reply().unwrap();
        assert_eq!(code, 250, "{lines:?}");
        ids.push(queued_id(&lines));
        assert_eq!(c.cmd("QUIT").unwrap(), 221);
    }
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), n, "{listed:?}");
    for (i, id) in ids.iter().enumerate() {
        let m = listed
            .iter()
            .find(|m| m.id == *id)
            .expect("acknowledged id listed");
        assert_eq!(m.from, format!("s{i}@example.org"));
        assert_eq!(m.sha256, sha256_hex(&bodies[i]), "session {i}");
    }
}

#[test]
fn interleaved_sessions_on_vsa() {
    interleaved(&Backend::vsa("evloop-mix", 64 << 20));
}

#[test]
fn interleaved_sessions_on_file() {
    interleaved(&Backend::file("evloop-mix-file", 64 << 20));
}

fn cut_off_mid_data(b: &Backend) {
    let mut server = b.serve(&["--workers", "2"]);
    let mut cut = greeted(server.addr, "cut.example");
    let mut ok = greeted(server.addr, "ok.example");
    open_data(&mut cut, "cut@example.org");
    open_data(&mut ok, "ok@example.org");
    cut.send(&body("cut off", 6000)[..4000]).unwrap();
    let kept = body("kept", 3000);
    ok.send(&dot_stuff(&kept)[..1000]).unwrap();
    // The cut-off client goes while the other is mid-DATA too.
    cut.shutdown();
    drop(cut);
    ok.send(&dot_stuff(&kept)[1000..]).unwrap();
    let (code, lines) = ok.reply().unwrap();
    assert_eq!(code, 250, "{lines:?}");
    let id = queued_id(&lines);
    assert_eq!(ok.cmd("NOOP").unwrap(), 250);
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), 1, "only the finished message: {listed:?}");
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].sha256, sha256_hex(&kept));
}

#[test]
fn a_client_cut_off_mid_data_leaves_nothing_on_vsa() {
    cut_off_mid_data(&Backend::vsa("evloop-cut", 64 << 20));
}

#[test]
fn a_client_cut_off_mid_data_leaves_nothing_on_file() {
    cut_off_mid_data(&Backend::file("evloop-cut-file", 64 << 20));
}

fn pipelined(b: &Backend) {
    let mut server = b.serve(&["--workers", "1"]);
    let (mut c, greet) = Client::connect(server.addr).unwrap();
    assert_eq!(greet, 220);
    let m1 = body("first of two", 2000);
    let m2 = body("second of two", 5000);
    // Two whole transactions and QUIT in one write: the second is read
    // while the first is with the store, and answered after it, in order.
    let mut wire = b"EHLO p.example\r\n".to_vec();
    for (from, m) in [("one@example.org", &m1), ("two@example.org", &m2)] {
        wire.extend_from_slice(
            format!("MAIL FROM:<{from}>\r\nRCPT TO:<q@example.net>\r\nDATA\r\n").as_bytes(),
        );
        wire.extend_from_slice(&dot_stuff(m));
    }
    wire.extend_from_slice(b"NOOP\r\nQUIT\r\n");
    c.send(&wire).unwrap();
    assert_eq!(c.reply().unwrap().0, 250, "EHLO");
    let mut ids = Vec::new();
    for _ in 0..2 {
        for want in [250, 250, 354] {
            assert_eq!(c.reply().unwrap().0, want);
        }
        let (code, lines) = c.reply().unwrap();
        assert_eq!(code, 250, "{lines:?}");
        ids.push(queued_id(&lines));
    }
    assert_eq!(c.reply().unwrap().0, 250, "NOOP");
    assert_eq!(c.reply().unwrap().0, 221, "QUIT");
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (id, m, from) in [
        (ids[0], &m1, "one@example.org"),
        (ids[1], &m2, "two@example.org"),
    ] {
        let l = listed.iter().find(|l| l.id == id).expect("listed");
        assert_eq!(l.from, from);
        assert_eq!(l.sha256, sha256_hex(m));
    }
}

#[test]
fn whole_transactions_pipelined_in_one_write_on_vsa() {
    pipelined(&Backend::vsa("evloop-pipe", 64 << 20));
}

#[test]
fn whole_transactions_pipelined_in_one_write_on_file() {
    pipelined(&Backend::file("evloop-pipe-file", 64 << 20));
}

fn slow_client(b: &Backend) {
    let mut server = b.serve(&["--workers", "2"]);
    let mut slow = greeted(server.addr, "slow.example");
    open_data(&mut slow, "slow@example.org");
    let slow_body = body("slow", 4000);
    let slow_wire = dot_stuff(&slow_body);
    slow.send(&slow_wire[..100]).unwrap();
    // Another session stores 50 messages while the slow one is mid-DATA.
    let mut fast = greeted(server.addr, "fast.example");
    let start = Instant::now();
    for i in 0..50 {
        let m = body(&format!("fast {i}"), 1000);
        let (code, lines) = fast
            .transaction(&format!("f{i}@example.org"), "q@example.net", &m)
            .unwrap();
        assert_eq!(code, 250, "{lines:?}");
    }
    let took = start.elapsed();
    // Not a speed target: a bound far above what 50 messages take, far
    // below the 30 s read timeout a stalled receiver would hit.
    assert!(took < Duration::from_secs(10), "50 messages took {took:?}");
    slow.send(&slow_wire[100..]).unwrap();
    let (code, lines) = slow.reply().unwrap();
    assert_eq!(code, 250, "{lines:?}");
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), 51);
    let s = listed
        .iter()
        .find(|l| l.from == "slow@example.org")
        .expect("the slow message");
    assert_eq!(s.sha256, sha256_hex(&slow_body));
}

#[test]
fn a_slow_client_does_not_stall_the_others_on_vsa() {
    slow_client(&Backend::vsa("evloop-slow", 64 << 20));
}

#[test]
fn a_slow_client_does_not_stall_the_others_on_file() {
    slow_client(&Backend::file("evloop-slow-file", 64 << 20));
}

/// A client that pipelines far more commands than fit in the receiver's
/// reply budget before reading any reply: the loop stops processing its
/// input while the replies wait and resumes as the client takes them; every
/// reply arrives, in order.
#[test]
fn replies_held_back_by_a_client_that_does_not_read_all_arrive() {
    let b = Backend::file("evloop-held", 16 << 20);
    let mut server = b.serve(&["--workers", "1"]);
    let (mut c, greet) = Client::connect(server.addr).unwrap();
    assert_eq!(greet, 220);
    let n = 20_000;
    let mut wire = b"HELO held.example\r\n".to_vec();
    for _ in 0..n {
        wire.extend_from_slice(b"NOOP\r\n");
    }
    let m = body("after the noops", 2000);
    wire.extend_from_slice(b"MAIL FROM:<h@example.org>\r\nRCPT TO:<q@example.net>\r\nDATA\r\n");
    wire.extend_from_slice(&dot_stuff(&m));
    wire.extend_from_slice(b"QUIT\r\n");
    // Written from another thread: the receiver may stop reading before
    // all of it is sent.
    let mut w = c.writer().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &wire).unwrap());
    assert_eq!(c.reply().unwrap().0, 250, "HELO");
    for i in 0..n {
        assert_eq!(c.reply().unwrap().0, 250, "NOOP {i}");
    }
    for want in [250, 250, 354, 250, 221] {
        assert_eq!(c.reply().unwrap().0, want);
    }
    writer.join().unwrap();
    server.kill();
    let listed = b.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, sha256_hex(&m));
}
