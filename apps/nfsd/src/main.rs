//! `vsic-nfsd`: NFSv3 over vsic-fs (see `vsic-nfsd --help`).

use std::process::ExitCode;

use clap::Parser;
use vsic_fs::Fs;
use vsic_nfsd::server::Server;
use vsic_nfsd::VsicNfs;

/// An NFSv3 server (with MOUNT and PORTMAP on the same port, TCP only)
/// exporting the vsic-fs on DEV as `/`. Every change is durable before its
/// reply, and its reply is recorded in the same commit (a persisted
/// duplicate-request cache: a call retransmitted after a crash gets the
/// original reply and is not executed again). WRITE UNSTABLE is answered
/// UNSTABLE and made durable by COMMIT; the write verifier changes on
/// every start.
#[derive(Parser)]
#[command(
    name = "vsic-nfsd",
    version,
    after_help = "Test hook: VSIC_NFSD_CRASH_AFTER_COMMIT=N in the environment aborts the \
                  process right after the Nth commit that holds replies, before those \
                  replies are sent (for the reply-cache crash test)."
)]
struct Cli {
    /// Where the file system lives: vhost-user:PATH or vsic:N (the VSA in
    /// slot 0 of that VSIC, through the vsic library), or file:PATH (a
    /// file or block device through the kernel).
    #[arg(long, value_name = "DEV")]
    dev: String,
    /// Address to serve NFS and MOUNT on, e.g. 127.0.0.1:2049.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Write an empty file system on DEV first (everything on it is lost).
    #[arg(long)]
    mkfs: bool,
    /// VSA devices: poll the completion ring for every commit instead of
    /// sleeping (a CPU spins while a commit is out).
    #[arg(long, conflicts_with_all = ["hybrid", "interrupts"])]
    poll: bool,
    /// VSA devices: hybrid completions, the default: sleep for part of the
    /// usual commit time, poll briefly, then sleep on the interrupt. A
    /// server waits for each commit before it replies, and this wait ends
    /// without the interrupt's wake-up in most commits.
    #[arg(long, conflicts_with = "interrupts")]
    hybrid: bool,
    /// VSA devices: sleep on the queue's interrupt for every commit
    /// instead of the hybrid default.
    #[arg(long)]
    interrupts: bool,
}

/// `PR_SET_IO_FLUSHER` of linux/prctl.h (Linux 5.6; the libc crate has
/// it for Android only).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Marks the process as one that writes on behalf of others (as the
/// kernel's nfsd threads are): its writes into the page cache (the file
/// engine) are throttled by their own device's dirty pages only, not by
/// the global dirty limit, which a client on the same machine fills with
/// its own NFS pages waiting for this server's COMMIT. Needs
/// CAP_SYS_RESOURCE; without it the server runs as before.
fn io_flusher() {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if r != 0 {
        log::debug!(
            "vsic-nfsd: PR_SET_IO_FLUSHER: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // Before the file engine starts its thread, which inherits it.
    io_flusher();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsic-nfsd: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let opts = vsic_storage::OpenOptions {
        polling: cli.poll,
        // Hybrid unless asked otherwise (`--hybrid` names the default).
        hybrid: !cli.poll && !cli.interrupts,
        ..Default::default()
    };
    let dev = vsic_storage::open(&cli.dev, &opts)?;
    let fs = if cli.mkfs {
        Fs::mkfs(dev)?
    } else {
        Fs::mount(dev)?
    };
    fs.check()?;
    let crash_after = match std::env::var("VSIC_NFSD_CRASH_AFTER_COMMIT") {
        Ok(v) => Some(
            v.parse::<u64>()
                .map_err(|_| format!("VSIC_NFSD_CRASH_AFTER_COMMIT={v}: not a number"))?,
        ),
        Err(_) => None,
    };
    // One thread: procedures run one at a time on the file system.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
        let addr = listener.local_addr()?;
        let server = Server::new(VsicNfs::new(fs), addr.port(), crash_after);
        tokio::spawn(server.clone().committer());
        eprintln!("vsic-nfsd: serving {} on {addr}", cli.dev);
        vsic_nfsd::front::serve(listener, server).await?;
        Ok(())
    })
}
