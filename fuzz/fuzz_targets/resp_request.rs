//! Arbitrary bytes as a RESP request stream (`vsic_kv::resp::parse` from
//! the front, again and again, as the server reads a connection): no
//! panic; a request takes at least one byte and no more than it was given;
//! it is recognised only once all of its bytes are there (every shorter
//! prefix asks for more), and exactly as it is with nothing after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsic_kv::resp::parse;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((args, used))) = parse(&data[at..]) {
        let rest = &data[at..];
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
        at += used;
    }
});
