//! What a client may send that is not what it should be, at the RESP
//! parser: seeded mutants of well-formed requests (bits flipped, words and
//! protocol bytes put in, cut, lengthened, spliced), parsed as a stream.
//! Nothing may panic; every request parsed takes bytes and no more than
//! it was given; and a request is recognised only once all of its bytes
//! are there (every shorter prefix asks for more), exactly as it is with
//! nothing after it.

mod common;

use common::mutate::{mutate, pick};
use common::rng::Rng;
use vsic_kv::resp::parse;

const REQUESTS: [&[u8]; 8] = [
    b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
    b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
    b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n",
    b"PING\r\n",
    b"set a  b\r\nget a\n",
    b"*0\r\n",
    b"*-1\r\n*1\r\n$0\r\n\r\n",
    b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$10\r\n0123456789\r\n$0\r\n\r\n",
];

/// Bytes RESP gives a meaning to.
const ALPHABET: &[u8] = b"*$:+-\r\n 0123456789";

#[test]
fn mutated_requests_parse_or_fail_cleanly() {
    let mut rng = Rng(0x0005_eed0_f2e5);
    let (mut parsed, mut refused, mut incomplete) = (0, 0, 0);
    for n in 0..6000 {
        let base = REQUESTS[pick(&mut rng, REQUESTS.len())];
        let other = REQUESTS[pick(&mut rng, REQUESTS.len())];
        let m = mutate(&mut rng, base.to_vec(), other, 0, ALPHABET);
        let mut at = 0;
        loop {
            let rest = &m[at..];
            match parse(rest) {
                Ok(Some((args, used))) => {
                    assert!(
                        used >= 1 && used <= rest.len(),
                        "mutant {n}: took {used} of {}",
                        rest.len()
                    );
                    let bytes: usize = args.iter().map(Vec::len).sum();
                    assert!(bytes <= used, "mutant {n}: arguments out of nothing");
                    for cut in 0..used {
                        assert_eq!(
                            parse(&rest[..cut]),
                            Ok(None),
                            "mutant {n}: a request recognised at {cut} of its {used} bytes"
                        );
                    }
                    assert_eq!(
                        parse(&rest[..used]),
                        Ok(Some((args, used))),
                        "mutant {n}: what follows a request changed it"
                    );
                    parsed += 1;
                    at += used;
                }
                Ok(None) => {
                    incomplete += 1;
                    break;
                }
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
    }
    eprintln!("{parsed} requests parsed, {refused} streams refused, {incomplete} incomplete");
    assert!(
        parsed > 1000 && refused > 500 && incomplete > 500,
        "{parsed} parsed, {refused} refused, {incomplete} incomplete: a path is missed"
    );
}
