//! One SMTP session (RFC 5321): EHLO/HELO, MAIL FROM, RCPT TO, DATA,
//! RSET, NOOP, QUIT, with the PIPELINING and SIZE extensions (RFC 2920,
//! RFC 1870). The 250 after DATA is sent only once the store says the
//! message is durable; a session that ends mid-DATA stores nothing. With
//! `serve --stats`, the private command XSTATS reports the store latencies
//! (see [`crate::stats`]).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::layout::Envelope;
use crate::queue::{Message, QueueError};
use crate::server::{EnqueueReply, ServeOptions};

/// Longest command line accepted (RFC 5321 4.5.3.1.4 says 512).
const MAX_COMMAND: usize = 2048;
/// How long a session waits for its client's next line.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Most recipients per message (RFC 5321 4.5.3.1.8 asks for 100).
const MAX_RCPTS: usize = 100;

/// A line read with a bound: its bytes without the line end, and whether
/// it was longer than the bound (the rest was read and dropped).
struct Line {
    bytes: Vec<u8>,
    too_long: bool,
}

/// Reads one line ending in LF (CRLF or a bare LF). None at end of input,
/// also when the input ends mid-line.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Option<Line>> {
    let mut bytes = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = (max + 2).saturating_sub(bytes.len());
        if take > room {
            too_long = true;
        }
        bytes.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        if done {
            break;
        }
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    if bytes.len() > max {
        too_long = true;
        bytes.truncate(max);
    }
    Ok(Some(Line { bytes, too_long }))
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// No EHLO/HELO yet.
    Start,
    /// Greeted; no transaction.
    Ready,
    /// MAIL accepted.
    Mail,
    /// At least one RCPT accepted.
    Rcpt,
}

/// Parses `<path> [params]` after `FROM:` / `TO:` (a space after the colon
/// is tolerated). Returns the address and the parameters.
fn parse_path(arg: &str) -> Option<(String, Vec<&str>)> {
    let arg = arg.trim_start();
    let rest = arg.strip_prefix('<')?;
    let end = rest.find('>')?;
    let addr = &rest[..end];
    if addr.contains(['<', ' ', '\t']) {
        return None;
    }
    let after = &rest[end + 1..];
    if !after.is_empty() && !after.starts_with(' ') {
        return None;
    }
    Some((addr.to_string(), after.split_whitespace().collect()))
}

/// Runs one session on `conn`; `enqueue` stores a message durably.
pub fn session(
    conn: TcpStream,
    opts: &ServeOptions,
    mut enqueue: impl FnMut(Message) -> EnqueueReply,
) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    // RFC 5321 4.5.3.2: a server waits at least 5 minutes for a command
    // (and 10 for each DATA block); a silent client ends its session then.
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = BufWriter::new(conn);
    let host = &opts.hostname;
    write!(w, "220 {host} ESMTP vsic-mailq\r\n")?;
    let mut phase = Phase::Start;
    let mut env = Envelope::default();
    loop {
        // Pipelined commands: answer in one write once the input is drained.
        if r.buffer().is_empty() {
            w.flush()?;
        }
        let Some(line) = read_line(&mut r, MAX_COMMAND)? else {
            return Ok(());
        };
        if line.too_long {
            w.write_all(b"500 5.5.2 line too long\r\n")?;
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line.bytes) else {
            w.write_all(b"500 5.5.2 command not understood\r\n")?;
            continue;
        };
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (text, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.trim().is_empty() => {
                w.write_all(b"501 5.5.4 a domain or address literal is required\r\n")?;
            }
            "EHLO" => {
                env = Envelope::default();
                phase = Phase::Ready;
                write!(
                    w,
                    "250-{host} greets {}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250 8BITMIME\r\n",
                    arg.trim(),
                    opts.max_size
                )?;
            }
            "HELO" => {
                env = Envelope::default();
                phase = Phase::Ready;
                write!(w, "250 {host}\r\n")?;
            }
            "MAIL" => {
                if phase == Phase::Start {
                    w.write_all(b"503 5.5.1 EHLO or HELO first\r\n")?;
                    continue;
                }
                if phase != Phase::Ready {
                    w.write_all(b"503 5.5.1 a transaction is already in progress\r\n")?;
                    continue;
                }
                let parsed = strip_prefix_ci(arg, "FROM:").and_then(parse_path);
                let Some((from, params)) = parsed else {
                    w.write_all(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n")?;
                    continue;
                };
                match check_mail_params(&params, opts.max_size) {
                    Ok(()) => {
                        env = Envelope {
                            from,
                            to: Vec::new(),
                        };
                        phase = Phase::Mail;
                        w.write_all(b"250 2.1.0 Ok\r\n")?;
                    }
                    Err(reply) => w.write_all(reply)?,
                }
            }
            "RCPT" => {
                if phase != Phase::Mail && phase != Phase::Rcpt {
                    w.write_all(b"503 5.5.1 MAIL first\r\n")?;
                    continue;
                }
                let parsed = strip_prefix_ci(arg, "TO:").and_then(parse_path);
                match parsed {
                    Some((to, params)) if !to.is_empty() && params.is_empty() => {
                        if env.to.len() >= MAX_RCPTS {
                            w.write_all(b"452 4.5.3 too many recipients\r\n")?;
                        } else {
                            env.to.push(to);
                            phase = Phase::Rcpt;
                            w.write_all(b"250 2.1.5 Ok\r\n")?;
                        }
                    }
                    _ => w.write_all(b"501 5.5.4 syntax: RCPT TO:<address>\r\n")?,
                }
            }
            "DATA" => {
                if !arg.trim().is_empty() {
                    w.write_all(b"501 5.5.4 DATA takes no arguments\r\n")?;
                    continue;
                }
                if phase != Phase::Rcpt {
                    w.write_all(b"503 5.5.1 RCPT first\r\n")?;
                    continue;
                }
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                w.flush()?;
                let Some(body) = read_data(&mut r, opts.max_size)? else {
                    // Disconnected mid-DATA: nothing was stored.
                    return Ok(());
                };
                let env = std::mem::take(&mut env);
                phase = Phase::Ready;
                let Some(body) = body else {
                    w.write_all(b"552 5.3.4 message exceeds the size limit\r\n")?;
                    continue;
                };
                let start = Instant::now();
                match enqueue(Message { env, body }) {
                    Ok(id) => {
                        if let Some(stats) = &opts.stats {
                            stats.record(start.elapsed());
                        }
                        write!(w, "250 2.0.0 Ok: queued as {id}\r\n")?
                    }
                    Err(QueueError::NoSpace(_)) => {
                        w.write_all(b"452 4.3.1 insufficient storage in the queue\r\n")?
                    }
                    Err(e) => {
                        log::error!("enqueue: {e}");
                        w.write_all(b"451 4.3.0 the message could not be stored\r\n")?
                    }
                }
            }
            "RSET" => {
                env = Envelope::default();
                if phase != Phase::Start {
                    phase = Phase::Ready;
                }
                w.write_all(b"250 2.0.0 Ok\r\n")?;
            }
            "NOOP" => w.write_all(b"250 2.0.0 Ok\r\n")?,
            // Private (RFC 5321 leaves X verbs to local use): the store
            // latencies since the last XSTATS, with `serve --stats`.
            "XSTATS" => match &opts.stats {
                Some(stats) => write!(w, "250 {}\r\n", stats.take().line())?,
                None => w.write_all(b"502 5.5.1 command not implemented\r\n")?,
            },
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                w.flush()?;
                return Ok(());
            }
            "VRFY" | "EXPN" | "HELP" | "TURN" | "SEND" | "SOML" | "SAML" => {
                w.write_all(b"502 5.5.1 command not implemented\r\n")?
            }
            _ => w.write_all(b"500 5.5.2 command not recognized\r\n")?,
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// MAIL parameters: SIZE=n (552 over the limit) and BODY=7BIT/8BITMIME.
fn check_mail_params(params: &[&str], max: usize) -> Result<(), &'static [u8]> {
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.eq_ignore_ascii_case("SIZE") {
            match v.parse::<u64>() {
                Ok(n) if n > max as u64 => {
                    return Err(b"552 5.3.4 message size exceeds the fixed limit\r\n")
                }
                Ok(_) => {}
                Err(_) => return Err(b"501 5.5.4 bad SIZE value\r\n"),
            }
        } else if k.eq_ignore_ascii_case("BODY")
            && (v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME"))
        {
        } else {
            return Err(b"555 5.5.4 unsupported MAIL parameter\r\n");
        }
    }
    Ok(())
}

/// Reads the DATA content up to the `.` line, undoing dot-stuffing, lines
/// ended with CRLF. Outer None: input ended first; inner None: over `max`.
fn read_data<R: Read + BufRead>(r: &mut R, max: usize) -> std::io::Result<Option<Option<Vec<u8>>>> {
    let mut body = Vec::new();
    let mut over = false;
    loop {
        let Some(line) = read_line(r, max + 1)? else {
            return Ok(None);
        };
        let mut b = &line.bytes[..];
        if b == b"." && !line.too_long {
            break;
        }
        if b.first() == Some(&b'.') {
            b = &b[1..];
        }
        if over || line.too_long || body.len() + b.len() + 2 > max {
            over = true;
            continue;
        }
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n");
    }
    Ok(Some((!over).then_some(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_undoes_dot_stuffing_and_normalises_line_ends() {
        let input = b"a\r\n..b\r\nc\n.\r\nNEXT\r\n";
        let mut r = BufReader::new(&input[..]);
        let body = read_data(&mut r, 100).unwrap().unwrap().unwrap();
        assert_eq!(body, b"a\r\n.b\r\nc\r\n");
        let rest = read_line(&mut r, 100).unwrap().unwrap();
        assert_eq!(rest.bytes, b"NEXT");
    }

    #[test]
    fn data_over_the_limit_and_cut_off_data() {
        let mut r = BufReader::new(&b"0123456789\r\n0123456789\r\n.\r\n"[..]);
        assert_eq!(read_data(&mut r, 20).unwrap(), Some(None));
        let mut r = BufReader::new(&b"0123456789\r\n01234"[..]);
        assert_eq!(read_data(&mut r, 100).unwrap(), None);
    }

    #[test]
    fn paths_and_parameters() {
        assert_eq!(
            parse_path("<a@b> SIZE=10"),
            Some(("a@b".to_string(), vec!["SIZE=10"]))
        );
        assert_eq!(parse_path(" <>"), Some((String::new(), vec![])));
        assert_eq!(parse_path("a@b"), None);
        assert_eq!(parse_path("<a@b"), None);
        assert_eq!(parse_path("<a@b>x"), None);
        assert!(check_mail_params(&["size=100"], 100).is_ok());
        assert!(check_mail_params(&["SIZE=101"], 100)
            .unwrap_err()
            .starts_with(b"552"));
        assert!(check_mail_params(&["SIZE=x"], 100)
            .unwrap_err()
            .starts_with(b"501"));
    }
}
