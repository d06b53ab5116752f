//! Carrying out each subcommand against the PF.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use serde_json::json;
use vsic::admin::AdminClient;
use vsic_abi::records::role_name;
use vsic_abi::units::format_size;
use vsic_abi::CapToken;

use crate::capfile::{self, Reservation};
use crate::cli::{
    CapCommand, Cli, Command, DmaModeArg, DmaWindowCommand, StoreCommand, VsaCommand, VsaTarget,
    VsicCommand,
};
use crate::failure::Failure;
use crate::guest;
use crate::pf::{self, Route};
use crate::report::{self, Report};

pub fn run(cli: &Cli) -> Result<Report, Failure> {
    if let Some(report) = run_without_pf(cli)? {
        return Ok(report);
    }
    let route = match (&cli.vhost_user, &cli.mgmt) {
        (Some(socket), _) => Route::VhostUser(socket.clone()),
        (None, Some(socket)) => Route::Mgmt(socket.clone()),
        (None, None) => Route::Guest,
    };
    let pf = pf::open(&route)?;
    let client = &pf.client;
    match &cli.command {
        Command::Vsa(cmd) => vsa(client, cmd),
        Command::Vsic(cmd) => vsic(client, cmd),
        Command::Cap(cmd) => cap(client, cmd),
        Command::List => {
            let vsas = client
                .list_vsas()
                .map_err(|e| Failure::admin("listing VSAs", e))?;
            let vsics = client
                .list_vsics()
                .map_err(|e| Failure::admin("listing VSICs", e))?;
            Ok(report::list(&vsas, &vsics))
        }
        Command::Stats { vsic } => {
            let context = match vsic {
                Some(n) => format!("reading statistics of VSIC {n}"),
                None => "reading statistics".to_string(),
            };
            let entries = client
                .stats(*vsic)
                .map_err(|e| Failure::admin(context, e))?;
            Ok(report::stats(&entries))
        }
        Command::Identify => {
            let id = client
                .identify()
                .map_err(|e| Failure::admin("identifying the controller", e))?;
            Ok(report::identify(&id))
        }
        Command::ExtentMap { vsa } => {
            let context = format!("reading the extent map of VSA {vsa}");
            let runs = client
                .extent_map(*vsa)
                .map_err(|e| Failure::admin(&context, e))?;
            let id = client.identify().map_err(|e| Failure::admin(&context, e))?;
            Ok(report::extent_map(*vsa, id.extent_size, &runs))
        }
        // Carried out by run_without_pf.
        Command::Functions
        | Command::Store(_)
        | Command::Serve { .. }
        | Command::RequestAttach { .. }
        | Command::RequestDetach { .. } => Err(internal_dispatch()),
    }
}

fn internal_dispatch() -> Failure {
    Failure::usage("running the command", "internal dispatch error")
}

/// Carries out the commands that need no PF, or that open it themselves
/// (store init). `None`: the command needs the PF.
fn run_without_pf(cli: &Cli) -> Result<Option<Report>, Failure> {
    let guest_only = |what: &str| -> Result<(), Failure> {
        if cli.vhost_user.is_some() || cli.mgmt.is_some() {
            Err(Failure::usage(
                what,
                "this command works on the guest's PCI functions; it takes no --vhost-user or --mgmt",
            ))
        } else {
            Ok(())
        }
    };
    let report = match &cli.command {
        Command::Cap(CapCommand::Show { cap }) => cap_show(cap)?,
        Command::Functions => {
            guest_only("listing the controller's functions")?;
            guest::functions()?
        }
        Command::Vsic(VsicCommand::Bind {
            vsic, vfio, user, ..
        }) => {
            guest_only("binding a VSIC")?;
            let user = if *vfio { user.as_deref() } else { None };
            guest::bind(vsic.number, user)?
        }
        Command::Vsic(VsicCommand::Unbind { vsic }) => {
            guest_only("unbinding a VSIC")?;
            guest::unbind(vsic.number)?
        }
        Command::Store(StoreCommand::Init {
            vsic,
            size,
            mountpoint,
        }) => {
            guest_only("creating the capability store")?;
            guest::store_init(vsic.number, *size, mountpoint)?
        }
        Command::Store(StoreCommand::Mount { mountpoint }) => {
            guest_only("mounting the capability store")?;
            guest::store_mount(mountpoint)?
        }
        Command::Serve { socket, max_dma } => {
            guest_only("serving the control plane")?;
            guest::serve(socket, *max_dma)?
        }
        Command::RequestAttach {
            vsic,
            cap,
            how,
            service,
        } => guest::request_attach(&service.path, vsic.number, cap, how.slot, how.read_only)?,
        Command::RequestDetach {
            vsic,
            slot,
            service,
        } => guest::request_detach(&service.path, vsic.number, *slot)?,
        _ => return Ok(None),
    };
    Ok(Some(report))
}

fn read_cap(path: &Path) -> Result<CapToken, Failure> {
    capfile::read(path)
        .map_err(|e| Failure::file(format!("reading capability file {}", path.display()), e))
}

fn claim(path: &Path, force: bool) -> Result<Reservation, Failure> {
    Reservation::claim(path, force).map_err(|e| {
        let context = format!("creating capability file {}", path.display());
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::file(context, "the file exists (use --force to replace it)")
        } else {
            Failure::file(context, e)
        }
    })
}

fn vsa(client: &AdminClient, cmd: &VsaCommand) -> Result<Report, Failure> {
    match cmd {
        VsaCommand::Create {
            size,
            cap,
            stripe,
            force,
        } => {
            // Claim the file first: a VSA whose capability cannot be stored
            // would be unreachable. From the claim to the stored file (or
            // the undo), the signals that usually stop a tool wait.
            let created = with_stop_signals_held(|| {
                let reservation = claim(cap, *force)?;
                let created = client.vsa_create(*size, *stripe).map_err(|e| {
                    Failure::admin(format!("creating a VSA of {}", format_size(*size)), e)
                })?;
                if let Err(e) = reservation.store(&created.token) {
                    // By id: the PF's privilege needs no token.
                    let undo = match client.vsa_delete_by_id(created.vsa_id) {
                        Ok(()) => "the VSA was deleted again".to_string(),
                        Err(d) => format!(
                            "the VSA {} could not be deleted again ({d}); delete it with `vsicctl vsa delete --id {}`",
                            created.vsa_id, created.vsa_id
                        ),
                    };
                    return Err(Failure::file(
                        format!("writing capability file {}", cap.display()),
                        format!("{e}; {undo}"),
                    ));
                }
                Ok(created)
            })?;
            let human = format!(
                "created VSA {} of {} ({} bytes); root capability in {}\n",
                created.vsa_id,
                format_size(created.size),
                created.size,
                cap.display()
            );
            let mut json = report::token_json(&created.token);
            json["size"] = json!(created.size);
            json["cap"] = json!(cap.display().to_string());
            Ok(Report::new(human, json))
        }
        VsaCommand::Resize { target, size } => {
            let (vsa_id, token) = vsa_target(target)?;
            let context = format!("resizing VSA {vsa_id} to {}", format_size(*size));
            let new_size = match &token {
                Some(token) => client.vsa_resize(token, *size),
                None => client.vsa_resize_by_id(vsa_id, *size),
            }
            .map_err(|e| Failure::admin(context, e))?;
            let human = format!(
                "VSA {vsa_id} is now {} ({new_size} bytes)\n",
                format_size(new_size)
            );
            Ok(Report::new(
                human,
                json!({ "vsa": vsa_id, "size": new_size }),
            ))
        }
        VsaCommand::Delete { target } => {
            let (vsa_id, token) = vsa_target(target)?;
            match &token {
                Some(token) => client.vsa_delete(token),
                None => client.vsa_delete_by_id(vsa_id),
            }
            .map_err(|e| Failure::admin(format!("deleting VSA {vsa_id}"), e))?;
            Ok(Report::new(
                format!("deleted VSA {vsa_id}\n"),
                json!({ "vsa": vsa_id, "deleted": true }),
            ))
        }
        VsaCommand::Role { id, role } => {
            let name = role_name(role.code()).unwrap_or("?");
            client
                .vsa_set_role(*id, role.code())
                .map_err(|e| Failure::admin(format!("giving VSA {id} the role {name}"), e))?;
            Ok(Report::new(
                format!("VSA {id} has the role {name}\n"),
                json!({ "vsa": id, "role": name }),
            ))
        }
    }
}

/// The VSA a resize or delete names, with its token when named by a
/// capability file (`None`: by id, the PF owner's privilege).
fn vsa_target(target: &VsaTarget) -> Result<(u64, Option<CapToken>), Failure> {
    match (&target.cap, target.id) {
        (Some(cap), _) => {
            let token = read_cap(cap)?;
            Ok((token.vsa_id, Some(token)))
        }
        (None, Some(id)) => Ok((id, None)),
        (None, None) => Err(Failure::usage(
            "naming the VSA",
            "give --cap FILE or --id ID",
        )),
    }
}

/// The signals that usually stop a tool (Ctrl-C, kill, a closed terminal).
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// A stop signal that arrived while held (0: none).
static HELD_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn hold_signal(sig: libc::c_int) {
    HELD_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Runs `f` with the stop signals held back, so that they cannot stop the
/// process between two steps that must both happen (a created VSA and its
/// capability file). The calling thread blocks them, so none of its system
/// calls is interrupted, and a handler records one that reaches another
/// thread (the transport has its own). Once `f` returns, the previous
/// dispositions come back and a held signal is raised again: it then does
/// what it would have done.
fn with_stop_signals_held<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t and sigaction are plain C data; every field used is
    // set (sigemptyset, handler, flags) before the structs are passed on.
    let (mut set, mut previous_mask): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: sigaction is plain C data as well; its handler, flags and mask
    // are set below before it is passed to sigaction(2).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let mut previous: [Option<libc::sigaction>; STOP_SIGNALS.len()] = [None; STOP_SIGNALS.len()];
    action.sa_sigaction = hold_signal as extern "C" fn(libc::c_int) as usize;
    action.sa_flags = libc::SA_RESTART;
    HELD_SIGNAL.store(0, Ordering::SeqCst);
    // SAFETY: valid pointers to the structs above; the handler only stores
    // into an atomic, which is async-signal-safe.
    let blocked = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigemptyset(&mut set);
        for (sig, old) in STOP_SIGNALS.iter().zip(previous.iter_mut()) {
            libc::sigaddset(&mut set, *sig);
            let mut saved: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(*sig, &action, &mut saved) == 0 {
                *old = Some(saved);
            }
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous_mask) == 0
    };
    let result = f();
    // SAFETY: restores what was saved above. A signal still pending on this
    // thread is delivered to the restored disposition on unblocking.
    unsafe {
        for (sig, old) in STOP_SIGNALS.iter().zip(previous.iter()) {
            if let Some(old) = old {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &previous_mask, std::ptr::null_mut());
        }
        let held = HELD_SIGNAL.swap(0, Ordering::SeqCst);
        if held != 0 {
            libc::raise(held);
        }
    }
    result
}

fn vsic(client: &AdminClient, cmd: &VsicCommand) -> Result<Report, Failure> {
    match cmd {
        VsicCommand::Attach { vsic, cap, how } => {
            let (n, slot, read_only) = (vsic.number, how.slot, how.read_only);
            let token = read_cap(cap)?;
            let context = format!("attaching VSA {} to VSIC {n} slot {slot}", token.vsa_id);
            client
                .attach(n, slot, &token, read_only)
                .map_err(|e| Failure::admin(context, e))?;
            let mode = if read_only { "read-only" } else { "read-write" };
            let human = format!(
                "attached VSA {} to VSIC {n} slot {slot} ({mode}, at byte offset {:#x})\n",
                token.vsa_id,
                vsic_abi::window::slot_base(slot)
            );
            let json = json!({
                "vsic": n, "slot": slot, "vsa": token.vsa_id, "read_only": read_only,
                "window_offset": vsic_abi::window::slot_base(slot),
            });
            Ok(Report::new(human, json))
        }
        VsicCommand::Detach { vsic, slot } => {
            let n = vsic.number;
            client
                .detach(n, *slot)
                .map_err(|e| Failure::admin(format!("detaching VSIC {n} slot {slot}"), e))?;
            Ok(Report::new(
                format!("detached VSIC {n} slot {slot}\n"),
                json!({ "vsic": n, "slot": slot }),
            ))
        }
        VsicCommand::Enable { vsic } => {
            let n = vsic.number;
            client
                .vsic_enable(n)
                .map_err(|e| Failure::admin(format!("enabling VSIC {n}"), e))?;
            Ok(Report::new(
                format!("enabled VSIC {n}\n"),
                json!({ "vsic": n, "enabled": true }),
            ))
        }
        VsicCommand::Disable { vsic } => {
            let n = vsic.number;
            client
                .vsic_disable(n)
                .map_err(|e| Failure::admin(format!("disabling VSIC {n}"), e))?;
            Ok(Report::new(
                format!("disabled VSIC {n}\n"),
                json!({ "vsic": n, "enabled": false }),
            ))
        }
        VsicCommand::Qos {
            vsic,
            bytes_per_sec,
            iops,
        } => qos(client, vsic.number, *bytes_per_sec, *iops),
        VsicCommand::DmaMode { vsic, mode } => dma_mode(client, vsic.number, *mode),
        VsicCommand::DmaWindow(cmd) => dma_window(client, cmd),
        VsicCommand::Bind { .. } | VsicCommand::Unbind { .. } => Err(internal_dispatch()),
    }
}

/// Sets a VSIC's DMA mode, or shows it.
fn dma_mode(client: &AdminClient, n: u32, mode: Option<DmaModeArg>) -> Result<Report, Failure> {
    let Some(mode) = mode else {
        let (mode, windows) = client
            .dma_windows(n)
            .map_err(|e| Failure::admin(format!("reading the DMA mode of VSIC {n}"), e))?;
        return Ok(Report::new(
            format!(
                "VSIC {n}: DMA {} ({} windows)\n",
                mode.name(),
                windows.len()
            ),
            json!({ "vsic": n, "dma_mode": mode.name(), "windows": windows.len() }),
        ));
    };
    let mode = mode.mode();
    let before = client
        .dma_set_mode(n, mode)
        .map_err(|e| Failure::admin(format!("setting the DMA mode of VSIC {n}"), e))?;
    Ok(Report::new(
        format!("VSIC {n}: DMA {} (was {})\n", mode.name(), before.name()),
        json!({ "vsic": n, "dma_mode": mode.name(), "previous": before.name() }),
    ))
}

/// Adds, removes or lists a VSIC's DMA windows.
fn dma_window(client: &AdminClient, cmd: &DmaWindowCommand) -> Result<Report, Failure> {
    use vsic_abi::admin::{FLAG_DMA_READ, FLAG_DMA_WRITE};
    let access = |flags: u32| match (flags & FLAG_DMA_READ != 0, flags & FLAG_DMA_WRITE != 0) {
        (true, true) => "read-write",
        (true, false) => "read",
        (false, true) => "write",
        (false, false) => "none",
    };
    match cmd {
        DmaWindowCommand::Add {
            vsic,
            range,
            read,
            write,
        } => {
            let n = vsic.number;
            let flags =
                if *read { FLAG_DMA_READ } else { 0 } | if *write { FLAG_DMA_WRITE } else { 0 };
            let held = client
                .dma_window_add(n, range.start, range.len, flags)
                .map_err(|e| Failure::admin(format!("adding a DMA window to VSIC {n}"), e))?;
            Ok(Report::new(
                format!(
                    "VSIC {n}: DMA window {:#x}+{:#x} ({}) added; {held} windows\n",
                    range.start,
                    range.len,
                    access(flags)
                ),
                json!({ "vsic": n, "start": range.start, "len": range.len,
                        "access": access(flags), "windows": held }),
            ))
        }
        DmaWindowCommand::Remove { vsic, range } => {
            let n = vsic.number;
            let held = client
                .dma_window_remove(n, range.start, range.len)
                .map_err(|e| Failure::admin(format!("removing a DMA window of VSIC {n}"), e))?;
            Ok(Report::new(
                format!(
                    "VSIC {n}: DMA window {:#x}+{:#x} removed; {held} windows\n",
                    range.start, range.len
                ),
                json!({ "vsic": n, "start": range.start, "len": range.len, "windows": held }),
            ))
        }
        DmaWindowCommand::List { vsic } => {
            let n = vsic.number;
            let (mode, windows) = client
                .dma_windows(n)
                .map_err(|e| Failure::admin(format!("listing the DMA windows of VSIC {n}"), e))?;
            let mut human = format!("VSIC {n}: DMA {}, {} windows\n", mode.name(), windows.len());
            for w in &windows {
                human.push_str(&format!(
                    "  {:#018x} +{:#x} {}\n",
                    w.start,
                    w.len,
                    access(w.flags)
                ));
            }
            let list: Vec<_> = windows
                .iter()
                .map(|w| json!({ "start": w.start, "len": w.len, "access": access(w.flags) }))
                .collect();
            Ok(Report::new(
                human,
                json!({ "vsic": n, "dma_mode": mode.name(), "windows": list }),
            ))
        }
    }
}

/// Sets the limits given and keeps the others; shows the result.
fn qos(
    client: &AdminClient,
    n: u32,
    bytes_per_sec: Option<u64>,
    iops: Option<u64>,
) -> Result<Report, Failure> {
    let context = format!("setting the QoS of VSIC {n}");
    let (mut rate, mut ops) = (bytes_per_sec.unwrap_or(0), iops.unwrap_or(0));
    if bytes_per_sec.is_none() || iops.is_none() {
        let current = client
            .list_vsics()
            .map_err(|e| Failure::admin(format!("reading the QoS of VSIC {n}"), e))?
            .into_iter()
            .find(|v| v.vsic == n)
            .ok_or_else(|| {
                Failure::admin(
                    format!("reading the QoS of VSIC {n}"),
                    vsic::admin::AdminError::Device(vsic_abi::AdminStatus::NoSuchVsic),
                )
            })?;
        rate = bytes_per_sec.unwrap_or(current.qos_bytes_per_sec);
        ops = iops.unwrap_or(current.qos_iops);
    }
    let changing = bytes_per_sec.is_some() || iops.is_some();
    if changing {
        client
            .set_qos(n, rate, ops)
            .map_err(|e| Failure::admin(context, e))?;
    }
    let show = |v: u64, f: fn(u64) -> String| {
        if v == 0 {
            "unlimited".to_string()
        } else {
            f(v)
        }
    };
    let human = format!(
        "VSIC {n}{}: {} bytes/s, {} IOPS\n",
        if changing { " limited to" } else { " QoS" },
        show(rate, format_size),
        show(ops, |v| v.to_string())
    );
    Ok(Report::new(
        human,
        json!({ "vsic": n, "bytes_per_sec": rate, "iops": ops }),
    ))
}

fn cap(client: &AdminClient, cmd: &CapCommand) -> Result<Report, Failure> {
    match cmd {
        CapCommand::Derive {
            cap,
            read_only,
            out,
            force,
        } => {
            let parent = read_cap(cap)?;
            let reservation = claim(out, *force)?;
            let derived = client.cap_derive(&parent, *read_only).map_err(|e| {
                Failure::admin(
                    format!("deriving a capability for VSA {}", parent.vsa_id),
                    e,
                )
            })?;
            if let Err(e) = reservation.store(&derived) {
                // Best effort: a token nobody holds should not stay live.
                let _ = client.cap_revoke(&derived);
                return Err(Failure::file(
                    format!("writing capability file {}", out.display()),
                    e,
                ));
            }
            let human = format!(
                "derived token {} ({}) for VSA {} into {}\n",
                derived.token_id,
                derived.rights,
                derived.vsa_id,
                out.display()
            );
            let mut json = report::token_json(&derived);
            json["cap"] = json!(out.display().to_string());
            Ok(Report::new(human, json))
        }
        CapCommand::Revoke { cap } => revoke(client, cap),
        CapCommand::Show { cap } => cap_show(cap),
    }
}

fn cap_show(cap: &Path) -> Result<Report, Failure> {
    let token = read_cap(cap)?;
    let mut json = report::token_json(&token);
    json["file"] = json!(cap.display().to_string());
    Ok(Report::new(report::token_human(&token), json))
}

fn revoke(client: &AdminClient, cap: &Path) -> Result<Report, Failure> {
    let token = read_cap(cap)?;
    let context = format!("revoking token {} of VSA {}", token.token_id, token.vsa_id);
    let new_root = client
        .cap_revoke(&token)
        .map_err(|e| Failure::admin(context, e))?;
    let mut json = json!({ "vsa": token.vsa_id, "token": token.token_id, "revoked": true });
    let mut human = format!(
        "revoked token {} of VSA {} and everything derived from it\n",
        token.token_id, token.vsa_id
    );
    if let Some(root) = new_root {
        capfile::replace(cap, &root).map_err(|e| {
            Failure::file(
                format!("storing the new root capability in {}", cap.display()),
                format!("{e}; the VSA can no longer be administered"),
            )
        })?;
        human.push_str(&format!(
            "new root token {} written to {}\n",
            root.token_id,
            cap.display()
        ));
        json["new_root"] = report::token_json(&root);
    }
    Ok(Report::new(human, json))
}
