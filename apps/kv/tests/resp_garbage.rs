//! What a client may send that is not what it should be, at the RESP
//! parser: seeded mutants of well-formed requests (bits flipped, words and
//! protocol bytes put in, cut, lengthened, spliced), parsed as a stream.
//! Nothing may panic; every request parsed takes bytes and no more than
//! it was given; and a request is recognised only once all of its bytes
//! are there (every shorter prefix asks for more), exactly as it is with
//! nothing after it.

mod common;

use common::mutate::{mutate, pick};
use common::resp_check::{parse_stream, End};
use common::rng::Rng;

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
        let run = std::panic::catch_unwind(|| parse_stream(&m));
        let Ok((requests, end)) = run else {
            panic!("mutant {n}: {:?}", String::from_utf8_lossy(&m));
        };
        parsed += requests;
        match end {
            End::Incomplete => incomplete += 1,
            End::Refused => refused += 1,
        }
    }
    eprintln!("{parsed} requests parsed, {refused} streams refused, {incomplete} incomplete");
    assert!(
        parsed > 1000 && refused > 500 && incomplete > 500,
        "{parsed} parsed, {refused} refused, {incomplete} incomplete: a path is missed"
    );
}
