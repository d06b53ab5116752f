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
use common::smtp_check::{check, drive};
use vsic_mailq::server::ServeOptions;

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
        let (stored, out) = drive(&roomy, d, || 1 + pick(&mut rng, 64));
        check(d, stored, &out);
        assert_eq!(stored, want, "{}", String::from_utf8_lossy(&out));
    }
    let (mut stored_any, mut refused_any) = (0, 0);
    for n in 0..3000 {
        let base = DIALOGUES[pick(&mut rng, DIALOGUES.len())];
        let other = DIALOGUES[pick(&mut rng, DIALOGUES.len())];
        let m = mutate(&mut rng, base.to_vec(), other, 0, ALPHABET);
        let opts = if n % 2 == 0 { &roomy } else { &tight };
        let pieces: Vec<usize> = (0..m.len()).map(|_| 1 + pick(&mut rng, 64)).collect();
        // The checks panic with what they found; this names the mutant.
        let run = std::panic::catch_unwind(|| {
            let mut next = pieces.iter().copied();
            let (stored, out) = drive(opts, &m, || next.next().unwrap_or(1));
            check(&m, stored, &out);
            (stored, out)
        });
        let Ok((stored, out)) = run else {
            panic!("mutant {n}: {:?}", String::from_utf8_lossy(&m));
        };
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
