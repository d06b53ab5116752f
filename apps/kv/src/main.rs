//! `vsic-kv`: the command line of the store (see `vsic-kv --help`).

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::mpsc::channel;

use clap::{Parser, Subcommand};
use vsic_kv::{seq_value, Engine, Reply, SetCond, Store, StoreOptions, WriteCmd};

/// A persistent key-value store on a VSA that speaks the Redis protocol.
/// Every update is durable before it is acknowledged.
#[derive(Parser)]
#[command(name = "vsic-kv", version)]
struct Cli {
    /// Where the store lives: vhost-user:PATH or vsic:N (the VSA in slot 0
    /// of that VSIC, through the vsic library), or file:PATH (a file or
    /// block device through the kernel; a new file gets 256 MiB).
    #[arg(long, value_name = "DEV", required_unless_present = "connect")]
    dev: Option<String>,
    /// put-seq only: put through a running server at ADDR (RESP, pipelined)
    /// instead of opening DEV; `ack k<i>` follows each +OK.
    #[arg(long, value_name = "ADDR", conflicts_with = "dev")]
    connect: Option<String>,
    /// VSA devices: poll the completion ring instead of sleeping on an
    /// interrupt (lowest latency, burns a core).
    #[arg(long)]
    poll: bool,
    /// VSA devices: hybrid completions (sleep for part of the usual
    /// completion time, poll briefly, then sleep on the interrupt).
    #[arg(long, conflicts_with = "poll")]
    hybrid: bool,
    /// Do not start compaction by itself (only `compact` does).
    #[arg(long)]
    no_auto_compact: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the Redis protocol (RESP2) on ADDR (e.g. 127.0.0.1:6380).
    Serve {
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// Put k0..k{N-1} in order (values derived from the key); print
    /// `ack k<i>` as each is durable, then `acked=M`.
    PutSeq { n: u64 },
    /// Check k0..k{N-1}; print `present=P missing=Q corrupt=R`
    /// (exit status 1 unless every key is present and intact).
    VerifySeq { n: u64 },
    /// Print the value of KEY (exit status 1 if absent).
    Get { key: String },
    /// Set KEY to VALUE, durably.
    Put { key: String, value: String },
    /// Delete KEY, durably; prints how many keys were deleted.
    Del { key: String },
    /// Print every key matching PATTERN (a Redis glob; default `*`).
    Scan { pattern: Option<String> },
    /// Print the store's counters as key=value lines.
    Stats,
    /// Compact the log now and print what it did.
    Compact,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vsic-kv: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(addr) = &cli.connect {
        let Cmd::PutSeq { n } = cli.cmd else {
            return Err("--connect works with put-seq only".into());
        };
        return put_seq_remote(addr, n);
    }
    let dev_spec = cli
        .dev
        .clone()
        .expect("clap requires --dev without --connect");
    let opts = vsic_storage::OpenOptions {
        polling: cli.poll,
        hybrid: cli.hybrid,
        ..vsic_storage::OpenOptions::default()
    };
    let dev = vsic_storage::open(&dev_spec, &opts)?;
    let store_opts = StoreOptions {
        auto_compact: !cli.no_auto_compact,
    };
    if let Cmd::Serve { listen } = &cli.cmd {
        let engine = Engine::open(dev, store_opts)?;
        let listener = TcpListener::bind(listen)?;
        eprintln!("vsic-kv: serving {dev_spec} on {}", listener.local_addr()?);
        vsic_kv::server::serve(engine, listener)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(dev, store_opts)?;
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Serve { .. } => unreachable!("handled above"),
        Cmd::PutSeq { n } => {
            const WINDOW: u64 = 256;
            let (tx, rx) = channel();
            let mut acked = 0u64;
            let mut submitted = 0u64;
            while acked < n {
                while submitted < n && submitted - acked < WINDOW {
                    let cmd = WriteCmd::Set {
                        key: format!("k{submitted}").into_bytes(),
                        value: seq_value(submitted),
                        cond: SetCond::Always,
                    };
                    store.submit(cmd, tx.clone());
                    submitted += 1;
                }
                match rx.recv()? {
                    Reply::Ok => {
                        writeln!(out, "ack k{acked}")?;
                        acked += 1;
                    }
                    other => {
                        writeln!(out, "acked={acked}")?;
                        eprintln!("vsic-kv: put k{acked}: {other:?}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            writeln!(out, "acked={acked}")?;
        }
        Cmd::VerifySeq { n } => {
            let (mut present, mut missing, mut corrupt) = (0, 0, 0);
            let ix = store.read();
            for i in 0..n {
                match ix.get(format!("k{i}").as_bytes()) {
                    None => missing += 1,
                    Some(v) if *v == seq_value(i) => present += 1,
                    Some(_) => corrupt += 1,
                }
            }
            writeln!(out, "present={present} missing={missing} corrupt={corrupt}")?;
            if present != n {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Get { key } => match store.get(key.as_bytes()) {
            Some(v) => {
                out.write_all(&v)?;
                writeln!(out)?;
            }
            None => return Ok(ExitCode::FAILURE),
        },
        Cmd::Put { key, value } => match store.execute(WriteCmd::Set {
            key: key.into_bytes(),
            value: value.into_bytes(),
            cond: SetCond::Always,
        }) {
            Reply::Ok => writeln!(out, "OK")?,
            other => return Err(format!("put: {other:?}").into()),
        },
        Cmd::Del { key } => match store.execute(WriteCmd::Del(vec![key.into_bytes()])) {
            Reply::Int(n) => writeln!(out, "{n}")?,
            other => return Err(format!("del: {other:?}").into()),
        },
        Cmd::Scan { pattern } => {
            let mut keys = store
                .read()
                .keys(pattern.as_deref().unwrap_or("*").as_bytes());
            keys.sort();
            for k in keys {
                out.write_all(&k)?;
                writeln!(out)?;
            }
        }
        Cmd::Stats => {
            let s = store.stats();
            writeln!(
                out,
                "device={}\nkeys={}\ndata_bytes={}\nregion_blocks={}\nused_blocks={}\nactive_region={}\ngeneration={}\nepoch={}\nrecovered_records={}",
                s.device, s.keys, s.data_bytes, s.region_blocks, s.used_blocks, s.active_region, s.generation, s.epoch, s.recovered_records
            )?;
        }
        Cmd::Compact => {
            let r = store.compact()?;
            writeln!(
                out,
                "before_blocks={} after_blocks={} generation={}",
                r.before_blocks, r.after_blocks, r.generation
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// put-seq through a server: SETs pipelined 64 deep, an ack per +OK in
/// order; stops at the first other reply or when the server goes away.
fn put_seq_remote(addr: &str, n: u64) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use std::io::{BufRead, BufReader};
    const WINDOW: u64 = 64;
    let sock = std::net::TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let mut w = std::io::BufWriter::new(sock.try_clone()?);
    let mut r = BufReader::new(sock);
    let mut out = std::io::stdout().lock();
    let (mut acked, mut sent) = (0u64, 0u64);
    let mut line = String::new();
    while acked < n {
        while sent < n && sent - acked < WINDOW {
            let key = format!("k{sent}");
            let val = seq_value(sent);
            write!(
                w,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                key.len(),
                val.len()
            )?;
            w.write_all(&val)?;
            w.write_all(b"\r\n")?;
            sent += 1;
        }
        w.flush()?;
        line.clear();
        if r.read_line(&mut line)? == 0 || line != "+OK\r\n" {
            writeln!(out, "acked={acked}")?;
            eprintln!("vsic-kv: put k{acked}: {:?}", line.trim_end());
            return Ok(ExitCode::FAILURE);
        }
        writeln!(out, "ack k{acked}")?;
        acked += 1;
    }
    writeln!(out, "acked={acked}")?;
    Ok(ExitCode::SUCCESS)
}
