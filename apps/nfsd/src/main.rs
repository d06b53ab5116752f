//! `vsic-nfsd`: NFSv3 over vsic-fs (see `vsic-nfsd --help`).

use std::process::ExitCode;

use clap::Parser;
use fernfs::tcp::{NFSTcp, NFSTcpListener};
use vsic_fs::Fs;
use vsic_nfsd::VsicNfs;

/// An NFSv3 server (with MOUNT on the same port, TCP only) exporting the
/// vsic-fs on DEV as `/`. Every change is durable before its reply.
#[derive(Parser)]
#[command(name = "vsic-nfsd", version)]
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
    /// VSA devices: poll the completion ring instead of sleeping on an
    /// interrupt.
    #[arg(long)]
    poll: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
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
        ..Default::default()
    };
    let dev = vsic_storage::open(&cli.dev, &opts)?;
    let fs = if cli.mkfs {
        Fs::mkfs(dev)?
    } else {
        Fs::mount(dev)?
    };
    fs.check()?;
    // One thread: procedures run one at a time on the file system.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let listener = NFSTcpListener::bind(&cli.listen, VsicNfs::new(fs)).await?;
        eprintln!(
            "vsic-nfsd: serving {} on {}:{}",
            cli.dev,
            listener.get_listen_ip(),
            listener.get_listen_port()
        );
        listener.handle_forever().await?;
        Ok(())
    })
}
