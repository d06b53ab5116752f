//! `vsic-mailq`: the command line of the mail queue (see `vsic-mailq --help`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

use vsic_mailq::client::Client;
use vsic_mailq::{sha256_hex, Envelope, Maildir, Queue, QueueError, ServeOptions};

/// A persistent mail queue on a VSA with an SMTP receiver. A message is
/// durable before its 250 after DATA.
#[derive(Parser)]
#[command(name = "vsic-mailq", version)]
struct Cli {
    /// Where the queue lives: vhost-user:PATH or vsic:N (the VSA in slot 0
    /// of that VSIC, through the vsic library), or file:PATH (a file or
    /// block device through the kernel; a new file gets 256 MiB). A device
    /// without a queue is formatted. maildir:DIR is the kernel-path
    /// baseline instead: one file per message in DIR (written to DIR/tmp,
    /// fsynced, renamed into DIR/new, DIR/new fsynced), as MTAs keep it;
    /// --workers does not apply to it (every session writes its own files).
    /// Every command but send and stats needs it.
    #[arg(long, value_name = "DEV")]
    dev: Option<String>,
    /// VSA devices: poll the completion ring instead of sleeping on an
    /// interrupt (lowest latency, burns a core).
    #[arg(long)]
    poll: bool,
    /// VSA devices: hybrid completions (sleep for part of the usual
    /// completion time, poll briefly, then sleep on the interrupt).
    #[arg(long, conflicts_with = "poll")]
    hybrid: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive mail over SMTP on ADDR (e.g. 127.0.0.1:2525).
    Serve {
        #[arg(long, value_name = "ADDR")]
        smtp: String,
        /// Workers, each with its own slot sets: 1/N of every slot class and
        /// of the extent space (sessions are spread over them round-robin;
        /// a worker whose part is full answers 452).
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Largest message accepted, in bytes (advertised with SIZE).
        #[arg(long, default_value_t = 1 << 20)]
        max_size: usize,
        /// Time each message's store (from the end of its DATA to the
        /// store's answer that it is durable, which the 250 waits for) and
        /// answer the private command XSTATS with `250 messages=N p50_us=
        /// p99_us= max_us= commits= write_us_avg= flush_us_avg=` over the
        /// messages since the last XSTATS (commits: the slot queue's
        /// FLUSHes, each making a group of messages durable, with the mean
        /// wait of those messages for their writes and the FLUSH's round
        /// trip; 0 on a Maildir). Read it with the stats command.
        #[arg(long)]
        stats: bool,
    },
    /// List the queued messages, oldest first: `ID SIZE <FROM> TO,...` lines,
    /// or with --json an array of {"id","from","to","size","sha256"}.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write message ID's content (as received) to stdout.
    Show {
        #[arg(long = "id", value_name = "ID")]
        id_opt: Option<u64>,
        #[arg(value_name = "ID", required_unless_present = "id_opt")]
        id: Option<u64>,
    },
    /// Delete message ID, durably.
    Delete {
        #[arg(long)]
        id: u64,
    },
    /// ERASES the queue on DEV, then serves SMTP on a loopback port and
    /// sends it MESSAGES messages of SIZE bytes over SESSIONS sessions of
    /// our own client; prints one `case=mailq ...` line of key=value pairs
    /// (messages/s, per-message p50 and p99 from MAIL to 250).
    Bench {
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
    /// Take the oldest message off the queue: its content to stdout, its
    /// id, sender and recipients to stderr.
    Dequeue,
    /// ERASES the queue on DEV: a device is formatted afresh (every
    /// message forgotten); a Maildir has every message removed.
    Erase,
    /// (No --dev.) SMTP client: sends messages to ADDR over SESSIONS
    /// sessions and prints `ack FROM ID` the moment each 250 has been read,
    /// never before. A sender's local part is the SHA-256 of its content,
    /// so `list --json` shows which stored messages are whole. Exit status
    /// 0 when every session sent all its messages, 1 otherwise (reasons on
    /// stderr).
    Send {
        #[arg(long, value_name = "ADDR")]
        connect: String,
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Messages per session (default: until the receiver stops).
        #[arg(long)]
        messages: Option<usize>,
        /// Content sizes in bytes, comma-separated, used in turn.
        #[arg(long, value_delimiter = ',', default_value = "1024")]
        sizes: Vec<usize>,
        /// Distinguishes this run's messages from other runs' (in senders
        /// and content); letters, digits and '-'.
        #[arg(long, default_value = "run")]
        tag: String,
    },
    /// (No --dev.) Asks a `serve --stats` receiver at ADDR for its store
    /// latencies (XSTATS, which starts them afresh) and prints them.
    Stats {
        #[arg(long, value_name = "ADDR")]
        connect: String,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vsic-mailq: {e}");
            ExitCode::from(2)
        }
    }
}

/// The queue the command works on: on a device, or the Maildir baseline.
enum Backend {
    Slots(Queue),
    Maildir(Maildir),
}

impl Backend {
    fn open(cli: &Cli) -> Result<Backend, Box<dyn std::error::Error>> {
        let erase = matches!(cli.cmd, Cmd::Bench { .. } | Cmd::Erase);
        let spec = cli.dev.as_deref().ok_or("--dev DEV is required")?;
        if let Some(dir) = spec.strip_prefix("maildir:") {
            let m = Maildir::open(dir.as_ref())?;
            if erase {
                m.clear()?;
            }
            return Ok(Backend::Maildir(m));
        }
        let opts = vsic_storage::OpenOptions {
            polling: cli.poll,
            hybrid: cli.hybrid,
            ..vsic_storage::OpenOptions::default()
        };
        let dev = vsic_storage::open(spec, &opts)?;
        let workers = match &cli.cmd {
            Cmd::Serve { workers, .. } | Cmd::Bench { workers, .. } => (*workers).max(1),
            _ => 1,
        };
        if erase {
            // A fresh queue: without a superblock the device is formatted.
            dev.write_at(0, &[0u8; vsic_mailq::layout::BLOCK])?;
            dev.flush()?;
        }
        let q = Queue::open(dev, workers)?;
        if q.torn > 0 {
            log::warn!("{} torn slots ignored", q.torn);
        }
        Ok(Backend::Slots(q))
    }

    fn len(&self) -> Result<usize, QueueError> {
        Ok(match self {
            Backend::Slots(q) => q.len(),
            Backend::Maildir(m) => m.ids()?.len(),
        })
    }

    /// (id, envelope) of every message, oldest first.
    fn list(&self) -> Result<Vec<(u64, Envelope)>, QueueError> {
        match self {
            Backend::Slots(q) => Ok(q.list().map(|e| (e.id, e.env.clone())).collect()),
            Backend::Maildir(m) => m
                .ids()?
                .into_iter()
                .map(|id| Ok((id, m.read(id)?.env)))
                .collect(),
        }
    }

    fn read(&self, id: u64) -> Result<Vec<u8>, QueueError> {
        match self {
            Backend::Slots(q) => q.read(id),
            Backend::Maildir(m) => Ok(m.read(id)?.body),
        }
    }

    fn delete(&mut self, id: u64) -> Result<(), QueueError> {
        match self {
            Backend::Slots(q) => q.delete(id),
            Backend::Maildir(m) => Ok(m.delete(id)?),
        }
    }

    fn describe(&self, spec: &str) -> String {
        match self {
            Backend::Slots(q) => q.device().describe(),
            Backend::Maildir(_) => spec.to_string(),
        }
    }

    /// Serves SMTP on `listener` forever: the slot queue on the event
    /// loop, the Maildir baseline with a thread per session.
    fn serve(self, listener: TcpListener, opts: ServeOptions) -> std::io::Result<()> {
        match self {
            Backend::Slots(q) => vsic_mailq::serve(q, listener, opts),
            Backend::Maildir(m) => vsic_mailq::serve_store(Arc::new(m), listener, opts),
        }
    }
}

/// The first address `addr` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address").into())
}

/// The commands that need no device: clients of a running receiver.
fn run_client(cmd: &Cmd) -> Result<Option<ExitCode>, Box<dyn std::error::Error>> {
    match cmd {
        Cmd::Send {
            connect,
            sessions,
            messages,
            sizes,
            tag,
        } => {
            if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err("--tag: letters, digits and '-' only".into());
            }
            let min = vsic_mailq::send::min_size(tag);
            if sizes.is_empty() || sizes.iter().any(|&s| s < min) {
                return Err(format!("--sizes: each at least {min} bytes").into());
            }
            let opts = vsic_mailq::send::SendOptions {
                addr: resolve(connect)?,
                sessions: (*sessions).max(1),
                messages: *messages,
                sizes: sizes.clone(),
                tag: tag.clone(),
            };
            let ends = vsic_mailq::send::run(&opts, Arc::new(Mutex::new(std::io::stdout())));
            let acked: usize = ends.iter().map(|e| e.acked).sum();
            let mut ok = true;
            for e in &ends {
                if let Some(why) = &e.stopped {
                    ok = false;
                    eprintln!(
                        "vsic-mailq send: session {} stopped after {} acknowledged: {why}",
                        e.session, e.acked
                    );
                }
            }
            eprintln!("vsic-mailq send: {acked} messages acknowledged");
            Ok(Some(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }))
        }
        Cmd::Stats { connect } => {
            let (mut c, greet) = Client::connect(resolve(connect)?)?;
            if greet != 220 || c.cmd("EHLO stats.example")? != 250 {
                return Err(format!("{connect}: not an SMTP receiver that greets").into());
            }
            c.send(b"XSTATS\r\n")?;
            let (code, lines) = c.reply()?;
            let _ = c.cmd("QUIT");
            match (code, lines.first()) {
                (250, Some(l)) => println!("{}", l.get(4..).unwrap_or_default().trim()),
                _ => return Err(format!("XSTATS: {code} {lines:?} (serve --stats?)").into()),
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        _ => Ok(None),
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(code) = run_client(&cli.cmd)? {
        return Ok(code);
    }
    let mut q = Backend::open(&cli)?;
    let dev = cli.dev.as_deref().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Serve {
            smtp,
            workers,
            max_size,
            stats,
        } => {
            let listener = TcpListener::bind(&smtp)?;
            eprintln!(
                "vsic-mailq: {} messages queued on {}; SMTP on {} with {workers} workers",
                q.len()?,
                dev,
                listener.local_addr()?
            );
            let opts = ServeOptions {
                max_size,
                stats: stats.then(Arc::default),
                ..ServeOptions::default()
            };
            q.serve(listener, opts)?;
        }
        Cmd::List { json } => {
            let mut items = Vec::new();
            for (id, env) in q.list()? {
                let body = q.read(id)?;
                if json {
                    items.push(serde_json::json!({
                        "id": id,
                        "from": env.from,
                        "to": env.to,
                        "size": body.len(),
                        "sha256": sha256_hex(&body),
                    }));
                } else {
                    writeln!(
                        out,
                        "{} {} <{}> {}",
                        id,
                        body.len(),
                        env.from,
                        env.to.join(",")
                    )?;
                }
            }
            if json {
                writeln!(out, "{}", serde_json::Value::Array(items))?;
            }
        }
        Cmd::Show { id_opt, id } => {
            let id = id_opt.or(id).expect("clap requires an id");
            out.write_all(&q.read(id)?)?;
        }
        Cmd::Delete { id } => q.delete(id)?,
        Cmd::Bench {
            sessions,
            size,
            messages,
            workers,
        } => {
            let sessions = sessions.max(1);
            if size < vsic_mailq::bench::MIN_SIZE {
                return Err(
                    format!("--size must be at least {}", vsic_mailq::bench::MIN_SIZE).into(),
                );
            }
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let describe = q.describe(dev);
            std::thread::spawn(move || {
                q.serve(
                    listener,
                    ServeOptions {
                        max_size: size.max(1 << 20),
                        ..ServeOptions::default()
                    },
                )
            });
            let per = messages.div_ceil(sessions);
            let r = vsic_mailq::bench::run(addr, sessions, per, size)?;
            writeln!(
                out,
                "case=mailq dev={describe:?} size={size} sessions={sessions} workers={workers} messages={} msgs_per_s={:.0} p50_us={} p99_us={}",
                r.messages,
                r.messages_per_s(),
                r.p50.as_micros(),
                r.p99.as_micros()
            )?;
        }
        // Backend::open erased it.
        Cmd::Erase => {}
        Cmd::Send { .. } | Cmd::Stats { .. } => unreachable!("run_client handles them"),
        Cmd::Dequeue => match q.list()?.into_iter().next() {
            Some((id, env)) => {
                let body = q.read(id)?;
                q.delete(id)?;
                eprintln!("id={id} from=<{}> to={}", env.from, env.to.join(","));
                out.write_all(&body)?;
            }
            None => return Ok(ExitCode::FAILURE),
        },
    }
    Ok(ExitCode::SUCCESS)
}
