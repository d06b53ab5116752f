//! One SMTP session (RFC 5321): EHLO/HELO, MAIL FROM, RCPT TO, DATA,
//! RSET, NOOP, QUIT, with the PIPELINING and SIZE extensions (RFC 2920,
//! RFC 1870). The 250 after DATA is sent only once the store says the
//! message is durable; a session that ends mid-DATA stores nothing. With
//! `serve --stats`, the private command XSTATS reports the store latencies
//! (see [`crate::stats`]).
//!
//! The protocol is a state machine without I/O ([`Session`]): bytes go in
//! ([`Session::fill`]), [`Session::advance`] processes them, replies come out ([`Session::output`]), and a
//! complete message is handed out ([`Event::Store`]) and answered later
//! ([`Session::stored`]). Two drivers run it: [`session`], a blocking one
//! (a thread per connection, the Maildir baseline's front), and the event
//! loop of [`crate::evloop`] (every connection of the slot queue on one
//! thread).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use crate::layout::Envelope;
use crate::queue::{Message, QueueError};
use crate::server::{EnqueueReply, ServeOptions};

/// Longest command line accepted (RFC 5321 4.5.3.1.4 says 512).
const MAX_COMMAND: usize = 2048;
/// How long a session waits for its client's next line.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Most recipients per message (RFC 5321 4.5.3.1.8 asks for 100).
const MAX_RCPTS: usize = 100;
/// What a DATA's content buffer starts with.
const BODY_START: usize = 8 * 1024;
/// Bytes read from the connection at a time.
pub const READ_CHUNK: usize = 16 * 1024;

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

/// The content of a DATA being received.
struct Data {
    body: Vec<u8>,
    /// Over the size limit: the rest is read and dropped, the answer 552.
    over: bool,
    /// The next byte starts a line (where `.` matters).
    line_start: bool,
}

/// What the session needs from its driver next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Store this message and call [`Session::stored`] with the answer;
    /// no further input is processed until then.
    Store(Message),
    /// A message is with the store: nothing to do until it answers.
    Waiting,
    /// Everything received is processed: send [`Session::output`], then
    /// [`Session::fill`] with more input.
    More,
    /// QUIT was answered: send [`Session::output`] and close.
    Quit,
}

/// One SMTP session's protocol state, without I/O.
pub struct Session {
    opts: Arc<ServeOptions>,
    phase: Phase,
    env: Envelope,
    /// Received bytes in `input[..end]`, of which `input[pos..end]` are
    /// not processed yet. The buffer is zeroed once, when it grows, never
    /// per read (zeroing 16 KiB per read was a measurable cost per
    /// message under TCG).
    input: Vec<u8>,
    pos: usize,
    end: usize,
    /// In a command line longer than the limit: dropping it up to its LF.
    discarding: bool,
    data: Option<Data>,
    out: Vec<u8>,
    /// When the message now with the store was handed out.
    storing: Option<Instant>,
    quit: bool,
}

/// A command line taken from the input: `input[start..end]`, without its
/// line end, and whether it was longer than the limit.
struct Line {
    start: usize,
    end: usize,
    too_long: bool,
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

impl Session {
    /// A new session, its greeting waiting in the output.
    pub fn new(opts: Arc<ServeOptions>) -> Session {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"220 ");
        out.extend_from_slice(opts.hostname.as_bytes());
        out.extend_from_slice(b" ESMTP vsic-mailq\r\n");
        Session {
            opts,
            phase: Phase::Start,
            env: Envelope::default(),
            input: Vec::new(),
            pos: 0,
            end: 0,
            discarding: false,
            data: None,
            out,
            storing: None,
            quit: false,
        }
    }

    /// Replies to send, in order.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The first `n` bytes of the output were sent.
    pub fn sent(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// True while a message is with the store.
    pub fn storing(&self) -> bool {
        self.storing.is_some()
    }

    /// True while a DATA's content is being received.
    pub fn in_data(&self) -> bool {
        self.data.is_some()
    }

    /// Moves the unprocessed input to the front and makes room for at
    /// least `room` more bytes after it.
    fn make_room(&mut self, room: usize) {
        if self.pos > 0 {
            self.input.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.input.len() < self.end + room {
            self.input.resize(self.end + room, 0);
        }
    }

    /// Reads once (up to [`READ_CHUNK`] bytes) from `src` into the input;
    /// Ok(0) at the end of input.
    pub fn fill(&mut self, src: &mut impl Read) -> std::io::Result<usize> {
        self.make_room(READ_CHUNK);
        let n = src.read(&mut self.input[self.end..self.end + READ_CHUNK])?;
        self.end += n;
        Ok(n)
    }

    /// Appends received bytes to the input (for drivers that read
    /// themselves, and tests).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.input[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// The store's answer to the message of the last [`Event::Store`].
    pub fn stored(&mut self, r: EnqueueReply) {
        let Some(start) = self.storing.take() else {
            return;
        };
        match r {
            Ok(id) => {
                if let Some(stats) = &self.opts.stats {
                    stats.record(start.elapsed());
                }
                let _ = write!(self.out, "250 2.0.0 Ok: queued as {id}\r\n");
            }
            Err(QueueError::NoSpace(_)) => self
                .out
                .extend_from_slice(b"452 4.3.1 insufficient storage in the queue\r\n"),
            Err(e) => {
                log::error!("enqueue: {e}");
                self.out
                    .extend_from_slice(b"451 4.3.0 the message could not be stored\r\n")
            }
        }
    }

    /// Processes the input received so far, up to the next thing the
    /// driver must do.
    pub fn advance(&mut self) -> Event {
        if self.quit {
            return Event::Quit;
        }
        if self.storing.is_some() {
            return Event::Waiting;
        }
        loop {
            if self.data.is_some() {
                match self.data_step() {
                    Some(msg) => {
                        self.storing = Some(Instant::now());
                        return Event::Store(msg);
                    }
                    None if self.data.is_some() => return Event::More,
                    // Over the limit: 552 given, on with the commands.
                    None => continue,
                }
            }
            let Some(line) = self.take_line() else {
                return Event::More;
            };
            self.command(line);
            if self.quit {
                return Event::Quit;
            }
        }
    }

    /// The next complete command line, if one arrived.
    fn take_line(&mut self) -> Option<Line> {
        let avail = &self.input[self.pos..self.end];
        let Some(i) = memchr::memchr(b'\n', avail) else {
            if avail.len() > MAX_COMMAND + 2 {
                // Too long already: what came so far is dropped.
                self.discarding = true;
                self.pos = self.end;
            }
            return None;
        };
        let start = self.pos;
        let mut end = start + i;
        self.pos = end + 1;
        if end > start && self.input[end - 1] == b'\r' {
            end -= 1;
        }
        let too_long = std::mem::take(&mut self.discarding) || end - start > MAX_COMMAND;
        Some(Line {
            start,
            end,
            too_long,
        })
    }

    /// Takes DATA content from the input, undoing dot-stuffing and ending
    /// lines with CRLF. Some(message) at the `.` line; None when the input
    /// ran out first (`self.data` still set) or the content was over the
    /// limit (552 answered, `self.data` cleared).
    fn data_step(&mut self) -> Option<Message> {
        let max = self.opts.max_size;
        let d = self.data.as_mut()?;
        loop {
            let avail = &self.input[self.pos..self.end];
            if avail.is_empty() {
                return None;
            }
            if d.line_start && avail[0] == b'.' {
                let end = match (avail.get(1), avail.get(2)) {
                    (Some(b'\n'), _) => Some(2),
                    (Some(b'\r'), Some(b'\n')) => Some(3),
                    // Not known yet whether this is the end.
                    (None, _) | (Some(b'\r'), None) => return None,
                    _ => None,
                };
                if let Some(n) = end {
                    self.pos += n;
                    let d = self.data.take().expect("in DATA");
                    let env = std::mem::take(&mut self.env);
                    self.phase = Phase::Ready;
                    if d.over {
                        self.out
                            .extend_from_slice(b"552 5.3.4 message exceeds the size limit\r\n");
                        return None;
                    }
                    return Some(Message { env, body: d.body });
                }
                // Dot-stuffed: the first dot goes.
                self.pos += 1;
                d.line_start = false;
                continue;
            }
            match memchr::memchr(b'\n', avail) {
                Some(i) => {
                    let mut line = &avail[..i];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    if !d.over && d.body.len() + line.len() + 2 <= max {
                        d.body.extend_from_slice(line);
                        d.body.extend_from_slice(b"\r\n");
                    } else {
                        d.over = true;
                    }
                    self.pos += i + 1;
                    d.line_start = true;
                }
                None => {
                    // Part of a line; a CR at the end may be its line end.
                    let take = avail.len() - usize::from(avail.last() == Some(&b'\r'));
                    if take == 0 {
                        return None;
                    }
                    if !d.over && d.body.len() + take + 2 <= max {
                        d.body.extend_from_slice(&avail[..take]);
                    } else {
                        d.over = true;
                    }
                    self.pos += take;
                    d.line_start = false;
                }
            }
        }
    }

    fn reply(&mut self, r: &[u8]) {
        self.out.extend_from_slice(r);
    }

    /// Answers one command line.
    fn command(&mut self, line: Line) {
        if line.too_long {
            return self.reply(b"500 5.5.2 line too long\r\n");
        }
        // The input is lent out while the command writes its reply into
        // self (no copy of the line).
        let input = std::mem::take(&mut self.input);
        match std::str::from_utf8(&input[line.start..line.end]) {
            Ok(text) => self.command_text(text),
            Err(_) => self.reply(b"500 5.5.2 command not understood\r\n"),
        }
        self.input = input;
    }

    fn command_text(&mut self, text: &str) {
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (text, ""),
        };
        // The verb in capitals, without allocating (verbs are at most 6
        // letters; a longer word is no verb).
        let mut upper = [0u8; 8];
        let verb = verb.as_bytes();
        let verb: &[u8] = match upper.get_mut(..verb.len()) {
            Some(u) => {
                u.copy_from_slice(verb);
                u.make_ascii_uppercase();
                u
            }
            None => b"",
        };
        let opts = self.opts.clone();
        let host = &opts.hostname;
        match verb {
            b"EHLO" | b"HELO" if arg.trim().is_empty() => {
                self.reply(b"501 5.5.4 a domain or address literal is required\r\n")
            }
            b"EHLO" => {
                self.env = Envelope::default();
                self.phase = Phase::Ready;
                let _ = write!(
                    self.out,
                    "250-{host} greets {}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250 8BITMIME\r\n",
                    arg.trim(),
                    opts.max_size
                );
            }
            b"HELO" => {
                self.env = Envelope::default();
                self.phase = Phase::Ready;
                let _ = write!(self.out, "250 {host}\r\n");
            }
            b"MAIL" => {
                if self.phase == Phase::Start {
                    return self.reply(b"503 5.5.1 EHLO or HELO first\r\n");
                }
                if self.phase != Phase::Ready {
                    return self.reply(b"503 5.5.1 a transaction is already in progress\r\n");
                }
                let parsed = strip_prefix_ci(arg, "FROM:").and_then(parse_path);
                let Some((from, params)) = parsed else {
                    return self.reply(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n");
                };
                match check_mail_params(&params, opts.max_size) {
                    Ok(()) => {
                        self.env = Envelope {
                            from,
                            to: Vec::new(),
                        };
                        self.phase = Phase::Mail;
                        self.reply(b"250 2.1.0 Ok\r\n");
                    }
                    Err(reply) => self.reply(reply),
                }
            }
            b"RCPT" => {
                if self.phase != Phase::Mail && self.phase != Phase::Rcpt {
                    return self.reply(b"503 5.5.1 MAIL first\r\n");
                }
                let parsed = strip_prefix_ci(arg, "TO:").and_then(parse_path);
                match parsed {
                    Some((to, params)) if !to.is_empty() && params.is_empty() => {
                        if self.env.to.len() >= MAX_RCPTS {
                            self.reply(b"452 4.5.3 too many recipients\r\n");
                        } else {
                            self.env.to.push(to);
                            self.phase = Phase::Rcpt;
                            self.reply(b"250 2.1.5 Ok\r\n");
                        }
                    }
                    _ => self.reply(b"501 5.5.4 syntax: RCPT TO:<address>\r\n"),
                }
            }
            b"DATA" => {
                if !arg.trim().is_empty() {
                    return self.reply(b"501 5.5.4 DATA takes no arguments\r\n");
                }
                if self.phase != Phase::Rcpt {
                    return self.reply(b"503 5.5.1 RCPT first\r\n");
                }
                self.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                self.data = Some(Data {
                    // Most messages fit; larger ones grow it.
                    body: Vec::with_capacity(BODY_START.min(opts.max_size)),
                    over: false,
                    line_start: true,
                });
            }
            b"RSET" => {
                self.env = Envelope::default();
                if self.phase != Phase::Start {
                    self.phase = Phase::Ready;
                }
                self.reply(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => self.reply(b"250 2.0.0 Ok\r\n"),
            // Private (RFC 5321 leaves X verbs to local use): the store
            // latencies since the last XSTATS, with `serve --stats`.
            b"XSTATS" => match &opts.stats {
                Some(stats) => {
                    let _ = write!(self.out, "250 {}\r\n", stats.take().line());
                }
                None => self.reply(b"502 5.5.1 command not implemented\r\n"),
            },
            b"QUIT" => {
                self.reply(b"221 2.0.0 Bye\r\n");
                self.quit = true;
            }
            b"VRFY" | b"EXPN" | b"HELP" | b"TURN" | b"SEND" | b"SOML" | b"SAML" => {
                self.reply(b"502 5.5.1 command not implemented\r\n")
            }
            _ => self.reply(b"500 5.5.2 command not recognized\r\n"),
        }
    }
}

/// Runs one session on `conn` with blocking I/O; `enqueue` stores a
/// message durably.
pub fn session(
    mut conn: TcpStream,
    opts: &Arc<ServeOptions>,
    mut enqueue: impl FnMut(Message) -> EnqueueReply,
) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    // RFC 5321 4.5.3.2: a server waits at least 5 minutes for a command
    // (and 10 for each DATA block); a silent client ends its session then.
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut s = Session::new(opts.clone());
    loop {
        match s.advance() {
            Event::Store(msg) => {
                let r = enqueue(msg);
                s.stored(r);
            }
            // Pipelined commands: answered in one write once the input
            // is drained.
            Event::More | Event::Waiting => {
                conn.write_all(s.output())?;
                s.sent(s.output().len());
                if s.fill(&mut conn)? == 0 {
                    // Disconnected (mid-DATA: nothing was stored).
                    return Ok(());
                }
            }
            Event::Quit => {
                conn.write_all(s.output())?;
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session_with(max: usize) -> Session {
        Session::new(Arc::new(ServeOptions {
            max_size: max,
            ..ServeOptions::default()
        }))
    }

    /// Feeds `input` in pieces of `step` bytes; the messages handed out
    /// (each answered with id 7) and the replies.
    fn run(s: &mut Session, input: &[u8], step: usize) -> (Vec<Message>, String) {
        let mut msgs = Vec::new();
        for chunk in input.chunks(step) {
            s.feed(chunk);
            while let Event::Store(m) = s.advance() {
                msgs.push(m);
                s.stored(Ok(7));
            }
        }
        let out = String::from_utf8(s.output().to_vec()).unwrap();
        (msgs, out)
    }

    const ONE: &[u8] =
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\na\r\n..b\r\nc\n.\r\nQUIT\r\n";

    #[test]
    fn data_undoes_dot_stuffing_and_normalises_line_ends_in_any_pieces() {
        for step in [1, 2, 3, 5, 7, 64, ONE.len()] {
            let mut s = session_with(100);
            let (msgs, out) = run(&mut s, ONE, step);
            assert_eq!(msgs.len(), 1, "step {step}");
            assert_eq!(msgs[0].body, b"a\r\n.b\r\nc\r\n", "step {step}");
            assert_eq!(msgs[0].env.from, "a@b");
            assert_eq!(msgs[0].env.to, vec!["c@d".to_string()]);
            assert!(out.contains("354 "), "{out}");
            assert!(out.contains("250 2.0.0 Ok: queued as 7\r\n221 "), "{out}");
            assert_eq!(s.advance(), Event::Quit);
        }
    }

    #[test]
    fn nothing_is_processed_while_a_message_is_with_the_store() {
        let mut s = session_with(100);
        s.feed(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
        assert!(matches!(s.advance(), Event::Store(_)));
        assert_eq!(s.advance(), Event::Waiting);
        assert!(!String::from_utf8_lossy(s.output()).contains("250 2.0.0 Ok\r\n"));
        s.stored(Ok(3));
        assert_eq!(s.advance(), Event::More);
        let out = String::from_utf8(s.output().to_vec()).unwrap();
        assert!(out.ends_with("queued as 3\r\n250 2.0.0 Ok\r\n"), "{out}");
    }

    #[test]
    fn data_over_the_limit_and_cut_off_data() {
        let mut s = session_with(20);
        let input = b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n0123456789\r\n0123456789\r\n.\r\nNOOP\r\n";
        for step in [1, 4, input.len()] {
            let mut s2 = session_with(20);
            let (msgs, out) = run(&mut s2, input, step);
            assert!(msgs.is_empty());
            assert!(out.contains("552 5.3.4"), "{out}");
            assert!(out.ends_with("250 2.0.0 Ok\r\n"), "{out}");
        }
        let (msgs, _) = run(
            &mut s,
            b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n01234",
            3,
        );
        assert!(msgs.is_empty());
        assert!(s.in_data(), "still waiting for the rest");
    }

    #[test]
    fn long_command_lines_are_refused_and_the_session_goes_on() {
        let mut s = session_with(100);
        let mut input = vec![b'N'; MAX_COMMAND * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let (_, out) = run(&mut s, &input, 1000);
        assert!(
            out.ends_with("500 5.5.2 line too long\r\n250 2.0.0 Ok\r\n"),
            "{out}"
        );
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
