//! RESP2: parsing requests (multibulk arrays and inline commands) and
//! writing replies.

/// Longest bulk string accepted in a request.
pub const MAX_BULK: usize = 16 << 20;
/// Most arguments in one request.
pub const MAX_ARGS: usize = 1 << 20;
/// Longest inline command line.
pub const MAX_INLINE: usize = 64 << 10;

/// A request stream that cannot be parsed: the connection is answered with
/// this (as Redis does: `-ERR Protocol error: ...`) and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

/// One parsed request and the bytes it took, or None: more bytes needed.
pub type Parsed = Option<(Vec<Vec<u8>>, usize)>;

/// Parses one request from the front of `buf`: `Ok(Some((args, used)))`,
/// `Ok(None)` when more bytes are needed. An empty inline line gives an
/// empty `args`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((count, mut pos)) = line_int(buf, 1, "invalid multibulk length")? else {
        return Ok(None);
    };
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError("invalid multibulk length"));
    }
    let count = count.max(0) as usize;
    let mut args = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let Some((len, next)) = line_int(buf, pos + 1, "invalid bulk length")? else {
            return Ok(None);
        };
        if len < 0 || len as usize > MAX_BULK {
            return Err(ProtocolError("invalid bulk length"));
        }
        let len = len as usize;
        if buf.len() < next + len + 2 {
            return Ok(None);
        }
        args.push(buf[next..next + len].to_vec());
        pos = next + len + 2;
    }
    Ok(Some((args, pos)))
}

/// Longest length line (`*N` or `$N`, without its LF; leading zeros are
/// digits too).
const MAX_LENGTH_LINE: usize = 64;

/// Reads a decimal integer line starting at `at`; returns (value, index
/// after its CRLF).
fn line_int(
    buf: &[u8],
    at: usize,
    what: &'static str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') else {
        if buf.len() - at > MAX_LENGTH_LINE {
            return Err(ProtocolError(what));
        }
        return Ok(None);
    };
    // The same limit once the LF is there: a line is refused or taken
    // whatever pieces it arrives in (it was refused only when a part
    // without its LF was over the limit).
    if nl > MAX_LENGTH_LINE {
        return Err(ProtocolError(what));
    }
    let line = &buf[at..at + nl];
    let line = line.strip_suffix(b"\r").ok_or(ProtocolError(what))?;
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ProtocolError(what))?;
    Ok(Some((n, at + nl + 1)))
}

fn parse_inline(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(None);
    };
    // As for length lines: the limit holds with the LF there too.
    if nl > MAX_INLINE {
        return Err(ProtocolError("too big inline request"));
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Some((args, nl + 1)))
}

/// Appends RESP2 replies to a buffer.
pub struct Out<'a>(pub &'a mut Vec<u8>);

impl Out<'_> {
    pub fn simple(&mut self, s: &str) {
        self.0.push(b'+');
        self.0.extend_from_slice(s.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    /// An error line; `msg` starts with its code (`ERR ...`). CR and LF
    /// become spaces, as Redis does.
    pub fn error(&mut self, msg: &str) {
        self.0.push(b'-');
        self.0.extend(
            msg.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.0.extend_from_slice(format!(":{n}\r\n").as_bytes());
    }

    pub fn bulk(&mut self, b: &[u8]) {
        self.0
            .extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        self.0.extend_from_slice(b);
        self.0.extend_from_slice(b"\r\n");
    }

    pub fn nil(&mut self) {
        self.0.extend_from_slice(b"$-1\r\n");
    }

    pub fn array(&mut self, n: usize) {
        self.0.extend_from_slice(format!("*{n}\r\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibulk_inline_partial_and_malformed() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse(b).unwrap().unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        let (args, _) = parse(&b[used..]).unwrap().unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        for cut in 1..used {
            assert_eq!(parse(&b[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"set a  b\r\n").unwrap().unwrap().0.len(), 3);
        assert_eq!(parse(b"\r\n").unwrap().unwrap(), (vec![], 2));
        assert_eq!(
            parse(b"*x\r\n"),
            Err(ProtocolError("invalid multibulk length"))
        );
        assert_eq!(parse(b"*1\r\n:3\r\n"), Err(ProtocolError("expected '$'")));
        assert_eq!(
            parse(b"*1\r\n$-5\r\n"),
            Err(ProtocolError("invalid bulk length"))
        );
        assert!(parse(&[b'a'; MAX_INLINE + 1]).is_err());
    }

    /// Found by the `resp_request` fuzz target: `*` and 65 zeros (a count
    /// of 0) was taken whole but refused when its CR came without the LF,
    /// so the answer depended on how TCP cut the stream. The same answer
    /// now, for length lines and inline lines, at and just over each limit.
    #[test]
    fn a_long_line_is_judged_the_same_whole_or_in_part() {
        let zeros = |n| "0".repeat(n);
        let at_limit: [Vec<u8>; 3] = [
            format!("*{}\r\n", zeros(MAX_LENGTH_LINE - 1)).into(),
            format!("*1\r\n${}3\r\nabc\r\n", zeros(MAX_LENGTH_LINE - 2)).into(),
            [vec![b'a'; MAX_INLINE], b"\n".to_vec()].concat(),
        ];
        for whole in at_limit {
            assert!(
                matches!(parse(&whole), Ok(Some((_, n))) if n == whole.len()),
                "{} bytes refused",
                whole.len()
            );
            for cut in 0..whole.len() {
                assert_eq!(parse(&whole[..cut]), Ok(None), "at {cut}");
            }
        }
        let over: [(Vec<u8>, &str); 3] = [
            (
                format!("*{}\r\n", zeros(MAX_LENGTH_LINE)).into(),
                "invalid multibulk length",
            ),
            (
                format!("*1\r\n${}3\r\nabc\r\n", zeros(MAX_LENGTH_LINE - 1)).into(),
                "invalid bulk length",
            ),
            (
                [vec![b'a'; MAX_INLINE + 1], b"\n".to_vec()].concat(),
                "too big inline request",
            ),
        ];
        for (whole, why) in over {
            assert_eq!(parse(&whole), Err(ProtocolError(why)));
            // Its parts ask for more until they are over the limit too.
            let parts: Vec<_> = (0..whole.len()).map(|cut| parse(&whole[..cut])).collect();
            assert!(parts
                .iter()
                .all(|p| *p == Ok(None) || *p == Err(ProtocolError(why))));
            assert_eq!(parts.last(), Some(&Err(ProtocolError(why))));
        }
    }
}
