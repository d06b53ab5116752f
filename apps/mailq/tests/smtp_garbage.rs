//! What a client may send that is not what it should be, at the SMTP
//! session: seeded mutants of well-formed dialogues (bits flipped, words
//! and protocol bytes put in, cut, lengthened, spliced), fed in random
//! pieces to the session's state machine, with a message size limit the
//! dialogues fit in and one they do not. Nothing may panic and the session
//! always comes back asking for input (or ends with QUIT); every reply
//! line is a reply code and its text; no message is stored beyond the
//! size limit, nor more messages than DATA commands were sent.

mod common;

use std::sync::Arc;

use common::mutate::{mutate, pick};
use common::rng::Rng;
use vsic_mailq::server::ServeOptions;
use vsic_mailq::smtp::{Event, Session};

const DIALOGUES: [&[u8]; 3] = [
    b"EHLO client.example\r\nMAIL FROM:<a@example.org> SIZE=120\r\n\
      RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n\
      Subject: one\r\n\r\nfirst line\r\n..a dot-stuffed line\r\n.\r\n\
      RSET\r\nNOOP\r\nQUIT\r\n",
    b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n\
      MAIL FROM:<d@e>\r\nRCPT TO:<f@g>\r\nDATA\r\n.\r\nQUIT\r\n",
    b"EHLO pipelining\r\nMAIL FROM:<s@t>\r\nRCPT TO:<u@v>\r\nRCPT TO:<w@x>\r\n\
      DATA\r\nline one\r\nline two is a little longer than the first\r\n.\r\n\
      MAIL FROM:<s@t> BODY=8BITMIME\r\nRCPT TO:<y@z>\r\nDATA\r\n\r\n.\r\nQUIT\r\n",
];

/// Bytes SMTP gives a meaning to.
const ALPHABET: &[u8] = b"\r\n.:<>@= \t0123456789\0";

/// Runs `input` through a session, fed in random pieces. Returns the
/// messages stored and everything the session sent.
fn run(input: &[u8], opts: &Arc<ServeOptions>, rng: &mut Rng) -> (usize, Vec<u8>) {
    let mut s = Session::new(opts.clone());
    let (mut out, mut at, mut stored) = (Vec::new(), 0, 0);
    for _ in 0..1_000_000 {
        match s.advance() {
            Event::Store(msg) => {
                assert!(
                    msg.body.len() <= opts.max_size,
                    "a message of {} bytes stored under a limit of {}",
                    msg.body.len(),
                    opts.max_size
                );
                stored += 1;
                s.stored(Ok(stored as u64));
            }
            Event::Waiting => panic!("waiting for a store with no message handed out"),
            Event::Quit => {
                out.extend_from_slice(s.output());
                return (stored, out);
            }
            Event::More => {
                out.extend_from_slice(s.output());
                let n = s.output().len();
                s.sent(n);
                if at == input.len() {
                    return (stored, out);
                }
                let n = (1 + pick(rng, 64)).min(input.len() - at);
                s.feed(&input[at..at + n]);
                at += n;
            }
        }
    }
    panic!("the session made no progress");
}

/// Every reply line: a code from 2xx to 5xx, then a space or a dash.
fn check_replies(out: &[u8], what: &str) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "{what}: a reply cut short"
    );
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.len() >= 5
            && (b'2'..=b'5').contains(&line[0])
            && line[1].is_ascii_digit()
            && line[2].is_ascii_digit()
            && (line[3] == b' ' || line[3] == b'-')
            && line.ends_with(b"\r");
        assert!(ok, "{what}: reply line {:?}", String::from_utf8_lossy(line));
    }
}

fn data_commands(input: &[u8]) -> usize {
    input
        .windows(4)
        .filter(|w| w.eq_ignore_ascii_case(b"DATA"))
        .count()
}

#[test]
fn mutated_dialogues_get_well_formed_replies_and_store_nothing_unasked() {
    let roomy = Arc::new(ServeOptions::default());
    let tight = Arc::new(ServeOptions {
        max_size: 16,
        ..ServeOptions::default()
    });
    let mut rng = Rng(0x5a7e_55e5_510b);
    // The dialogues as they are: 1, 2 and 2 messages stored.
    for (d, want) in DIALOGUES.iter().zip([1, 2, 2]) {
        let (stored, out) = run(d, &roomy, &mut rng);
        check_replies(&out, "a well-formed dialogue");
        assert_eq!(stored, want, "{}", String::from_utf8_lossy(&out));
    }
    let (mut stored_any, mut refused_any) = (0, 0);
    for n in 0..3000 {
        let base = DIALOGUES[pick(&mut rng, DIALOGUES.len())];
        let other = DIALOGUES[pick(&mut rng, DIALOGUES.len())];
        let m = mutate(&mut rng, base.to_vec(), other, 0, ALPHABET);
        let opts = if n % 2 == 0 { &roomy } else { &tight };
        let (stored, out) = run(&m, opts, &mut rng);
        let what = format!("mutant {n}");
        check_replies(&out, &what);
        assert!(
            stored <= data_commands(&m),
            "{what}: {stored} messages stored for {} DATA commands",
            data_commands(&m)
        );
        let lines = m.iter().filter(|&&b| b == b'\n').count();
        assert!(
            out.len() <= 512 * (lines + 2),
            "{what}: {} bytes of replies to {lines} lines",
            out.len()
        );
        stored_any += usize::from(stored > 0);
        refused_any += usize::from(out.windows(2).any(|w| w == b"\n5" || w == b"\n4"));
    }
    eprintln!(
        "of 3000 mutants, {stored_any} stored a message, {refused_any} were refused something"
    );
    assert!(
        stored_any > 300 && refused_any > 300,
        "{stored_any} mutants stored a message, {refused_any} were refused something"
    );
}
