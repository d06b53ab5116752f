//! `vsicd`: the VSIC storage controller daemon. Opens the drives, then
//! serves the PF and every VSIC function on its own vhost-user socket
//! until SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use log::info;
use vsic_abi::records::CacheMode;
use vsic_abi::units::{parse_duration, parse_size};
use vsicd::controller::{
    Controller, ControllerConfig, DriveModel, DriveSpec, ModelError, ServiceModel,
    VolatileCacheConfig,
};
use vsicd::front::{Front, FrontConfig, Workarounds};
use vsicd::mgmt::{self, Mgmt};
use vsicd::workbench::fault::{parse_rule_text, RuleSpec};
use vsicd::workbench::{DriveFaults, Workbench};

/// The VSIC storage controller: a vhost-user backend that plays one PCI
/// admin function (PF) plus K VSIC functions for QEMU guests, each a
/// vhost-user-blk device on its own socket.
#[derive(Debug, Parser)]
#[command(name = "vsicd", version)]
struct Cli {
    /// Directory for the sockets: DIR/pf.sock and DIR/vsic0.sock ..
    /// DIR/vsic{K-1}.sock. Created if missing; stale sockets are replaced.
    #[arg(long, value_name = "DIR")]
    socket_dir: PathBuf,

    /// A backing drive: a file (created sparse with SIZE when missing) or a
    /// block device. Repeat for several drives. SIZE like 512K, 64M, 1G or
    /// plain bytes; PATH may not contain commas.
    #[arg(long = "drive", value_name = "PATH[,size=SIZE]", required = true, value_parser = parse_drive)]
    drives: Vec<DriveSpec>,

    /// Number of VSIC functions (K).
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    vsics: u32,

    /// Request queues per VSIC function.
    #[arg(long, value_name = "Q", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,

    /// Extent size: the allocation unit of VSAs on the drives (used when
    /// formatting; an existing pool keeps its own).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    extent_size: u64,

    /// Controller cache: write-back (FLUSH makes writes durable) or
    /// write-through (a completed write is already durable; the functions
    /// then offer no VIRTIO_BLK_F_FLUSH).
    #[arg(long, value_enum, default_value_t = Cache::WriteBack)]
    cache: Cache,

    /// Models a volatile write-back cache of SIZE bytes (a multiple of
    /// 512, e.g. 64M) in the controller's memory: completed writes stay
    /// there (reads see them) until FLUSH writes them to the drives and
    /// syncs them, or a full cache writes them early. The management
    /// command power-cut loses what is still there. Needs --cache
    /// write-back. Without it, completed writes go straight to the drives.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    volatile_cache: Option<u64>,

    /// With --volatile-cache: a power cut lets a random half of the
    /// unflushed sectors reach the drives (each sector independently,
    /// from a generator seeded once with N), modelling a cache that
    /// destaged in any order. Without it a cut loses every unflushed
    /// sector.
    #[arg(long, value_name = "N", requires = "volatile_cache")]
    power_cut_seed: Option<u64>,

    /// Drive timing model: every read and write takes this long on a
    /// unit of its drive, e.g. 50us, 1ms (a FLUSH completes with the last
    /// earlier write). Completions are scheduled; the queue goes on taking
    /// requests meanwhile. See docs/timing-model.md.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    service_latency: Option<Duration>,

    /// Drive timing model: bytes per second one unit moves, e.g. 500M
    /// (adds size / RATE to a request's time on its unit).
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    service_bandwidth: Option<u64>,

    /// Drive timing model: requests each drive serves at once (channels,
    /// dies); more queue behind the least busy unit. Default 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    service_units: Option<u32>,

    /// Drive timing model from a TOML file (per-operation latencies and
    /// distributions, units, placement, per-drive models; presets in
    /// qemu-configs/drive-models/). Not with the --service-* options.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["service_latency", "service_bandwidth", "service_units"])]
    drive_model: Option<PathBuf>,

    /// Longest time in microseconds a queue worker keeps polling its ring
    /// for new requests after serving some, before it sleeps until the next
    /// notification. Adaptive per queue: a queue whose requests come further
    /// apart stops polling. Workers poll only while no thread on the machine
    /// waits for a CPU, and at most half the CPUs poll at once (none on a
    /// single CPU). 0 turns polling off. With a drive timing model, a worker
    /// also polls (under the same rules) while a completion it scheduled is
    /// due within N microseconds, or within 200 if longer when the driver
    /// polls its used ring (docs/timing-model.md).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,

    /// Switches off a workaround for a peer's bug (repeat for several).
    /// Each is on by default; switching one off shows whether the peer
    /// still needs it.
    #[arg(long = "disable-workaround", value_name = "NAME", value_enum)]
    disabled_workarounds: Vec<Workaround>,

    /// The management socket (JSON commands in QMP's shape, mode 0600; see
    /// docs/workbench.md). Default: DIR/mgmt.sock in the socket directory.
    #[arg(long, value_name = "PATH")]
    mgmt: Option<PathBuf>,

    /// A fault rule armed from the start, in the keys of the management
    /// command fault-add: e.g. vsic=0,op=read,action=error,count=3 (see
    /// docs/workbench.md). Repeat for several rules.
    #[arg(long = "fault", value_name = "RULE", value_parser = parse_fault)]
    faults: Vec<RuleSpec>,
}

fn parse_fault(text: &str) -> Result<RuleSpec, String> {
    parse_rule_text(text).map_err(|e| e.to_string())
}

/// The workarounds `--disable-workaround` can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workaround {
    /// Serving, on a 250 ms timer per queue, requests whose queue
    /// notification QEMU's multi-threaded TCG lost. Off: such requests
    /// wait for the queue's next notification.
    LostKickWatch,
    /// Closing the exit-event descriptors vhost-user-backend abandons when
    /// a frontend disconnects. Off: every connection leaks one per queue.
    ExitEventLeak,
    /// Taking the backend-request socket out of vhost's Backend to send
    /// configuration-change messages. Off: a connected guest is not told
    /// when its VSIC's capacity changes.
    BackendSocketTakeover,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cache {
    WriteBack,
    WriteThrough,
}

fn parse_drive(text: &str) -> Result<DriveSpec, String> {
    let mut parts = text.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("a drive needs a path".to_string());
    }
    let mut size = None;
    for option in parts {
        match option.split_once('=') {
            Some(("size", value)) => size = Some(parse_size(value).map_err(|e| e.to_string())?),
            _ => return Err(format!("unknown drive option '{option}' (only size=SIZE)")),
        }
    }
    Ok(DriveSpec {
        path: PathBuf::from(path),
        size,
    })
}

impl Cli {
    fn workarounds(&self) -> Workarounds {
        let on = |w| !self.disabled_workarounds.contains(&w);
        Workarounds {
            lost_kick_watch: on(Workaround::LostKickWatch),
            close_abandoned_exit_events: on(Workaround::ExitEventLeak),
            backend_socket_takeover: on(Workaround::BackendSocketTakeover),
        }
    }

    /// The drive timing model the options describe, if any.
    fn service_model(&self) -> Result<Option<ServiceModel>, ModelError> {
        if let Some(path) = &self.drive_model {
            return ServiceModel::load(path).map(Some);
        }
        let any = self.service_latency.is_some()
            || self.service_bandwidth.is_some()
            || self.service_units.is_some();
        Ok(any.then(|| {
            ServiceModel::uniform(DriveModel::fixed(
                self.service_latency.unwrap_or_default(),
                self.service_bandwidth.unwrap_or(0),
                self.service_units.unwrap_or(1),
            ))
        }))
    }

    fn controller_config(&self, service_model: Option<ServiceModel>) -> ControllerConfig {
        ControllerConfig {
            drives: self.drives.clone(),
            vsics: self.vsics,
            queues_per_vsic: self.queues,
            extent_size: self.extent_size,
            cache_mode: match self.cache {
                Cache::WriteBack => CacheMode::WriteBack,
                Cache::WriteThrough => CacheMode::WriteThrough,
            },
            service_model,
            volatile_cache: self.volatile_cache.map(|size| VolatileCacheConfig {
                size,
                cut_seed: self.power_cut_seed,
            }),
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread and every thread started after,
/// so they can be taken synchronously with [`wait_for_stop_signal`].
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits on a valid, initialised signal set.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        Err(e) => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let signals = block_stop_signals();

    let service_model = match cli.service_model() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vsicd: drive model: {e}");
            return ExitCode::from(1);
        }
    };
    let controller = match Controller::open(cli.controller_config(service_model)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vsicd: cannot open the controller: {e}");
            return ExitCode::from(1);
        }
    };
    let front_config = FrontConfig {
        socket_dir: cli.socket_dir.clone(),
        vsics: cli.vsics,
        queues_per_vsic: cli.queues,
        poll_max: Duration::from_micros(cli.poll_us),
        workarounds: cli.workarounds(),
    };
    let workbench = Workbench::new(
        Arc::clone(&controller) as Arc<_>,
        cli.vsics,
        cli.queues,
        cli.drives.len() as u32,
    );
    {
        let (wb, ctl) = (Arc::clone(&workbench), Arc::clone(&controller));
        workbench.on_first_drive_rule(move || ctl.set_drive_hook(Arc::new(DriveFaults(wb))));
    }
    for rule in &cli.faults {
        if let Err(e) = workbench.add_fault(rule) {
            eprintln!("vsicd: --fault: {e}");
            return ExitCode::from(1);
        }
    }
    let front = match Front::start(front_config, Arc::clone(&workbench) as Arc<_>) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vsicd: {e}");
            return ExitCode::from(1);
        }
    };
    let mgmt_path = cli
        .mgmt
        .clone()
        .unwrap_or_else(|| cli.socket_dir.join("mgmt.sock"));
    let mgmt_context = mgmt::Context {
        controller: Arc::clone(&controller),
        workbench: Arc::clone(&workbench),
        config_changes: front.config_changes(),
    };
    let mgmt = match Mgmt::start(&mgmt_path, mgmt_context) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vsicd: {e}");
            return ExitCode::from(1);
        }
    };
    // A closed stdout must not bring the daemon down: ignore write errors.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "vsicd: listening on {} (pf + {} VSICs)",
        cli.socket_dir.display(),
        cli.vsics
    );
    let _ = stdout.flush();

    let sig = wait_for_stop_signal(&signals);
    info!(
        "stopping on {}",
        if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    );
    mgmt.shutdown();
    front.shutdown();
    info!("stopped");
    ExitCode::SUCCESS
}
