//! `vsic-fs`: the command line of the file system (see `vsic-fs --help`).

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vsic_fs::workload::{run_step, Workload};
use vsic_fs::{Fs, Kind};

/// A crash-consistent file system on one VSA (docs/vsic-fs.md).
#[derive(Parser)]
#[command(name = "vsic-fs", version)]
struct Cli {
    /// Where the file system lives: vhost-user:PATH or vsic:N (the VSA in
    /// slot 0 of that VSIC, through the vsic library), or file:PATH (a
    /// file or block device through the kernel; a new file gets 256 MiB).
    #[arg(long, value_name = "DEV")]
    dev: String,
    /// VSA devices: poll the completion ring instead of sleeping on an
    /// interrupt.
    #[arg(long)]
    poll: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write an empty file system (everything on DEV is lost).
    Mkfs,
    /// Mount (replaying the log) and verify the structure; prints `ok` and
    /// counts as key=value, or `corrupt: WHY` with exit status 1 (2: no
    /// vsic-fs or the device failed).
    Check,
    /// Print the layout and the space as key=value lines.
    Info,
    /// List a directory (default `/`): kind, inode, size, name.
    Ls { path: Option<String> },
    /// Print a file's contents.
    Cat { path: String },
    /// Store standard input as a file, durably.
    Put { path: String },
    /// Print a name's attributes.
    Stat { path: String },
    /// Make a directory, durably.
    Mkdir { path: String },
    /// Remove a file or symbolic link, durably.
    Rm { path: String },
    /// Remove an empty directory, durably.
    Rmdir { path: String },
    /// Rename, durably.
    Mv { from: String, to: String },
    /// Make a hard link NEW to EXISTING (a symbolic link with -s), durably.
    Ln {
        #[arg(short = 's')]
        symbolic: bool,
        existing: String,
        new: String,
    },
    /// Run the crash tests' deterministic random workload from SEED for
    /// STEPS steps (0: until killed); prints `synced K` after each sync
    /// that returned (K steps done).
    Workload {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        steps: u64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vsic-fs: {e}");
            ExitCode::from(2)
        }
    }
}

fn kind_char(k: Kind) -> char {
    match k {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let opts = vsic_storage::OpenOptions {
        polling: cli.poll,
        ..Default::default()
    };
    let dev = vsic_storage::open(&cli.dev, &opts)?;
    if let Cmd::Mkfs = cli.cmd {
        let fs = Fs::mkfs(dev)?;
        let (free, total) = fs.space();
        println!(
            "fs_id={:016x} data_bytes={total} free_bytes={free}",
            fs.fs_id()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut fs = match Fs::mount(dev) {
        Ok(fs) => fs,
        Err(e @ vsic_fs::FsError::Corrupt(_)) if matches!(cli.cmd, Cmd::Check) => {
            println!("corrupt: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Mkfs => unreachable!("handled above"),
        Cmd::Check => match fs.check() {
            Ok(r) => writeln!(
                out,
                "ok inodes={} files={} dirs={} symlinks={} data_blocks={}",
                r.inodes, r.files, r.dirs, r.symlinks, r.data_blocks
            )?,
            Err(e) => {
                writeln!(out, "corrupt: {e}")?;
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Info => {
            let sb = fs.superblock().clone();
            let (free, total) = fs.space();
            writeln!(out, "fs_id={:016x}", sb.fs_id)?;
            writeln!(out, "version={} generation={}", sb.version, sb.generation)?;
            writeln!(out, "blocks={} block_size=4096", sb.total_blocks)?;
            writeln!(
                out,
                "checkpoint_slot_blocks={} active_slot={} checkpoint_bytes={}",
                sb.ckpt_blocks, sb.active_slot, sb.ckpt_len
            )?;
            writeln!(out, "log_blocks={} log_seq={}", sb.log_blocks, sb.log_seq)?;
            writeln!(out, "data_bytes={total} free_bytes={free}")?;
            writeln!(out, "replies={}", fs.reply_count())?;
            writeln!(out, "device={}", fs.device().describe())?;
        }
        Cmd::Ls { path } => {
            for e in fs.readdir(path.as_deref().unwrap_or("/"))? {
                let st = fs.stat_ino(e.ino)?;
                writeln!(
                    out,
                    "{} {:>8} {:>10} {}",
                    kind_char(e.kind),
                    e.ino,
                    st.size,
                    String::from_utf8_lossy(&e.name)
                )?;
            }
        }
        Cmd::Cat { path } => out.write_all(&fs.read_file(&path)?)?,
        Cmd::Put { path } => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            let fd = fs.create(&path, 0o644)?;
            fs.write(fd, &data)?;
            fs.fsync(fd)?;
            fs.close(fd)?;
        }
        Cmd::Stat { path } => {
            let s = fs.lstat(&path)?;
            writeln!(
                out,
                "ino={} kind={:?} mode={:o} nlink={} uid={} gid={} size={} used={} mtime={}.{:09}",
                s.ino,
                s.kind,
                s.mode,
                s.nlink,
                s.uid,
                s.gid,
                s.size,
                s.used,
                s.mtime.secs,
                s.mtime.nsecs
            )?;
        }
        Cmd::Mkdir { path } => fs.mkdir(&path, 0o755)?,
        Cmd::Rm { path } => fs.unlink(&path)?,
        Cmd::Rmdir { path } => fs.rmdir(&path)?,
        Cmd::Mv { from, to } => fs.rename(&from, &to)?,
        Cmd::Ln {
            symbolic,
            existing,
            new,
        } => {
            if symbolic {
                fs.symlink(&existing, &new)?
            } else {
                fs.link(&existing, &new)?
            }
        }
        Cmd::Workload { seed, steps } => {
            let mut w = Workload::new(seed);
            let mut done = 0u64;
            while steps == 0 || done < steps {
                let step = w.step();
                run_step(&mut fs, &step)?;
                done += 1;
                if matches!(step, vsic_fs::workload::Step::Sync) {
                    writeln!(out, "synced {done}")?;
                    out.flush()?;
                }
            }
            fs.sync()?;
            writeln!(out, "synced {done}")?;
        }
    }
    fs.sync()?;
    Ok(ExitCode::SUCCESS)
}
