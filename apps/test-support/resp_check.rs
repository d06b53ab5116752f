//! Parses a RESP request stream the way vsic-kv's server reads a
//! connection, checking what the parser must keep to whatever it is sent
//! (shared by `apps/kv/tests/resp_garbage.rs` and the `resp_request` fuzz
//! target, which include this file by path).

use vsic_kv::resp::parse;

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The rest is the start of a request: more bytes are needed.
    Incomplete,
    /// The rest is refused (a protocol error).
    Refused,
}

/// Parses requests from the front of `data`, again and again. Checks that
/// each takes at least one byte and no more than it was given, that its
/// arguments come from those bytes, that it is recognised only once all
/// of its bytes are there (every shorter prefix asks for more), and that
/// it parses the same with nothing after it. Returns the requests parsed
/// and how the stream ended.
pub fn parse_stream(data: &[u8]) -> (usize, End) {
    let (mut at, mut parsed) = (0, 0);
    loop {
        let rest = &data[at..];
        let (args, used) = match parse(rest) {
            Ok(Some(request)) => request,
            Ok(None) => return (parsed, End::Incomplete),
            Err(_) => return (parsed, End::Refused),
        };
        assert!(
            used >= 1 && used <= rest.len(),
            "took {used} of {} bytes",
            rest.len()
        );
        let bytes: usize = args.iter().map(Vec::len).sum();
        assert!(bytes <= used, "{bytes} bytes of arguments from {used}");
        for cut in 0..used {
            assert_eq!(
                parse(&rest[..cut]),
                Ok(None),
                "a request recognised at {cut} of its {used} bytes"
            );
        }
        assert_eq!(
            parse(&rest[..used]),
            Ok(Some((args, used))),
            "what follows a request changed it"
        );
        parsed += 1;
        at += used;
    }
}
