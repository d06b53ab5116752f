//! `vsic-mailq`: the command line of the mail queue (see `vsic-mailq --help`).

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use vsic_mailq::server::Workers;
use vsic_mailq::{sha256_hex, Envelope, Maildir, Queue, QueueError, ServeOptions, Store};

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
    #[arg(long, value_name = "DEV")]
    dev: String,
    /// VSA devices: poll the completion ring instead of sleeping on an
    /// interrupt (lowest latency, burns a core).
    #[arg(long)]
    poll: bool,
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
        let bench = matches!(cli.cmd, Cmd::Bench { .. });
        if let Some(dir) = cli.dev.strip_prefix("maildir:") {
            let m = Maildir::open(dir.as_ref())?;
            if bench {
                for id in m.ids()? {
                    m.delete(id)?;
                }
            }
            return Ok(Backend::Maildir(m));
        }
        let opts = vsic_storage::OpenOptions {
            polling: cli.poll,
            ..vsic_storage::OpenOptions::default()
        };
        let dev = vsic_storage::open(&cli.dev, &opts)?;
        let workers = match &cli.cmd {
            Cmd::Serve { workers, .. } | Cmd::Bench { workers, .. } => (*workers).max(1),
            _ => 1,
        };
        if bench {
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

    fn into_store(self) -> Arc<dyn Store> {
        match self {
            Backend::Slots(q) => Arc::new(Workers::start(q)),
            Backend::Maildir(m) => Arc::new(m),
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut q = Backend::open(&cli)?;
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Serve {
            smtp,
            workers,
            max_size,
        } => {
            let listener = TcpListener::bind(&smtp)?;
            eprintln!(
                "vsic-mailq: {} messages queued on {}; SMTP on {} with {workers} workers",
                q.len()?,
                cli.dev,
                listener.local_addr()?
            );
            let opts = ServeOptions {
                max_size,
                ..ServeOptions::default()
            };
            vsic_mailq::serve_store(q.into_store(), listener, opts)?;
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
            let describe = q.describe(&cli.dev);
            let store = q.into_store();
            std::thread::spawn(move || {
                vsic_mailq::serve_store(
                    store,
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
