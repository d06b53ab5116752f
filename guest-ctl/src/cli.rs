//! Command-line syntax of `vsicctl` (clap derive). Scripts rely on these
//! spellings; keep them stable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Control plane of the VSIC storage controller: creates and deletes virtual
/// storage areas (VSAs), attaches them to VSICs, manages capabilities and
/// reads statistics, all through the controller's PF.
#[derive(Debug, Parser)]
#[command(
    name = "vsicctl",
    version,
    after_help = "Exit status: 0 on success, 1 when an operation failed (device refusal, \
                  capability file or transport problem), 2 for command-line errors."
)]
pub struct Cli {
    /// Reach the PF through the vhost-user socket PF_SOCKET (vsicd's
    /// pf.sock, on the host). Without it, vsicctl runs in the guest: it
    /// finds the PF (1af4:1042 with serial vsic-pf) and owns it through
    /// VFIO, binding it to vfio-pci if needed.
    #[arg(
        long = "vhost-user",
        value_name = "PF_SOCKET",
        global = true,
        display_order = 900
    )]
    pub vhost_user: Option<PathBuf>,

    /// Reach the controller through vsicd's management socket SOCK (on the
    /// host; DIR/mgmt.sock by default): every admin command runs in the
    /// controller as through the PF, also while a guest owns the PF.
    #[arg(
        long = "mgmt",
        value_name = "SOCK",
        global = true,
        conflicts_with = "vhost_user",
        display_order = 900
    )]
    pub mgmt: Option<PathBuf>,

    /// Print one JSON document on stdout instead of tables (errors too, as
    /// {"error": {...}}).
    #[arg(long, global = true, display_order = 901)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, resize and delete virtual storage areas.
    #[command(subcommand)]
    Vsa(VsaCommand),
    /// Enable, disable and limit VSICs; attach and detach VSAs.
    #[command(subcommand)]
    Vsic(VsicCommand),
    /// Derive, revoke and inspect capability files.
    #[command(subcommand)]
    Cap(CapCommand),
    /// List every VSA (size, live tokens, attachments, role; "orphan" when
    /// no live token remains) and every VSIC with its attachments.
    List,
    /// Show I/O counters per VSIC and per queue.
    Stats {
        /// Only this VSIC (default: all).
        #[arg(long, value_name = "N")]
        vsic: Option<u32>,
    },
    /// Show the controller's geometry and free space.
    Identify,
    /// Show which drive extents back a VSA, in the VSA's logical order.
    ExtentMap {
        /// VSA id (as shown by `vsicctl list`).
        #[arg(long, value_name = "ID")]
        vsa: u64,
    },
    /// Show the controller's PCI functions in this guest: which VSIC each
    /// serves, its driver, kernel disk or VFIO group and owner (guest only).
    Functions,
    /// Keep capability files on a VSA the kernel mounts, so that they
    /// survive a guest reboot (guest only).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Run the control-plane service: lets unprivileged applications have
    /// VSAs attached to the VSIC they own and get pinned DMA memory
    /// (guest only; runs until killed).
    Serve {
        /// Socket to listen on (created mode 0666; each request is checked
        /// against the caller's uid).
        #[arg(long, value_name = "PATH", default_value = vsicctl::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Largest DMA memory handed out per request (e.g. 64M).
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
        max_dma: u64,
    },
    /// As an application's user: ask the control-plane service to attach
    /// the VSA of a capability file you can read to a slot of the VSIC you
    /// own. The file's descriptor is passed, never its contents.
    RequestAttach {
        #[command(flatten)]
        vsic: VsicArg,
        /// Capability file of the VSA (opened by you, read by the service).
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
        #[command(flatten)]
        how: AttachHow,
        #[command(flatten)]
        service: ServiceSocket,
    },
    /// As an application's user: ask the control-plane service to detach a
    /// slot of the VSIC you own.
    RequestDetach {
        #[command(flatten)]
        vsic: VsicArg,
        /// Attachment slot.
        #[arg(long, value_name = "N")]
        slot: u32,
        #[command(flatten)]
        service: ServiceSocket,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create the store: a new VSA given the store role (kept by the
    /// controller, set only through the PF), attached to slot 0 of VSIC N,
    /// VSIC N handed to the kernel, ext4 (label vsic-store) made and
    /// mounted. The store's own root capability is kept inside it
    /// (store.cap). Dedicate VSIC N to the store. A VSIC taken from a user
    /// has every slot detached first, as for `vsic bind`.
    Init {
        #[command(flatten)]
        vsic: VsicArg,
        /// Size of the store's VSA.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "32M")]
        size: u64,
        /// Where to mount it.
        #[arg(long, value_name = "DIR", default_value = crate::store::DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
    /// Mount an existing store (after a reboot): asks the PF which VSA has
    /// the store role and where it is attached, and mounts that VSIC's
    /// kernel disk; a label alone is never trusted.
    Mount {
        /// Where to mount it.
        #[arg(long, value_name = "DIR", default_value = crate::store::DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum VsaCommand {
    /// Create a VSA and store its root capability in a new file (mode 0600).
    Create {
        /// Size, rounded up to whole extents by the controller (e.g. 128M, 1G).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// File to write the root capability to; must not exist unless --force.
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
        /// Number of drives to stripe over.
        #[arg(long, value_name = "N", default_value_t = 1)]
        stripe: u32,
        /// Replace FILE if it already exists.
        #[arg(long)]
        force: bool,
    },
    /// Grow or shrink a VSA (in whole extents; never below one extent).
    Resize {
        #[command(flatten)]
        target: VsaTarget,
        /// New size (e.g. 256M).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
    },
    /// Delete a VSA, detach it everywhere and free its extents. A
    /// capability file is left in place (it no longer grants anything).
    Delete {
        #[command(flatten)]
        target: VsaTarget,
    },
    /// Give a VSA a role kept by the controller (PF owner only): `store`
    /// marks the capability store `store mount` trusts (at most one VSA),
    /// `none` clears it. `store init` sets it itself; use this to mark a
    /// store made before roles existed.
    Role {
        /// VSA id (as `vsicctl list` shows it).
        #[arg(long, value_name = "ID")]
        id: u64,
        /// The role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

/// Roles `vsa role` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    None,
    Store,
}

impl RoleArg {
    pub fn code(self) -> u32 {
        match self {
            RoleArg::None => vsic_abi::records::ROLE_NONE,
            RoleArg::Store => vsic_abi::records::ROLE_STORE,
        }
    }
}

/// Which VSA: by a capability, or by id with the PF owner's privilege.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct VsaTarget {
    /// Capability file with admin rights on the VSA.
    #[arg(long, value_name = "FILE")]
    pub cap: Option<PathBuf>,
    /// VSA id (as `vsicctl list` shows it), without a capability: the PF
    /// owner's privilege, for a VSA whose capability is lost.
    #[arg(long, value_name = "ID")]
    pub id: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum VsicCommand {
    /// Attach the VSA named by a capability to a slot of a VSIC. Slot s is
    /// seen by the VSIC at byte offset s * 2^40; slot 0 is the disk an
    /// unmodified virtio-blk driver sees.
    Attach {
        #[command(flatten)]
        vsic: VsicArg,
        /// Capability file of the VSA.
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
        #[command(flatten)]
        how: AttachHow,
    },
    /// Detach whatever VSA is attached to a slot of a VSIC.
    Detach {
        #[command(flatten)]
        vsic: VsicArg,
        /// Attachment slot.
        #[arg(long, value_name = "N")]
        slot: u32,
    },
    /// Let a VSIC serve I/O again.
    Enable {
        #[command(flatten)]
        vsic: VsicArg,
    },
    /// Make every I/O on a VSIC fail; its attachments stay.
    Disable {
        #[command(flatten)]
        vsic: VsicArg,
    },
    /// Hand a VSIC's PCI function to the kernel's virtio_blk driver
    /// (--kernel), or to vfio-pci with its /dev/vfio/G given to one user,
    /// mode 0600 (--vfio --user U). Guest only. A VSIC leaving a user (to
    /// another user or the kernel) has every slot detached first.
    Bind {
        #[command(flatten)]
        vsic: VsicArg,
        /// Give the function to virtio_blk: its slot-0 VSA becomes /dev/vdX.
        #[arg(long, conflicts_with_all = ["vfio", "user"], required_unless_present = "vfio")]
        kernel: bool,
        /// Give the function to vfio-pci, for one application's user.
        #[arg(long, requires = "user")]
        vfio: bool,
        /// Owner of the VFIO group (user name or uid).
        #[arg(long, value_name = "U")]
        user: Option<String>,
    },
    /// Take a VSIC's PCI function away from its driver (guest only).
    /// Refused while its disk is mounted or its VFIO group is open; taken
    /// from a user, it has every slot detached first.
    Unbind {
        #[command(flatten)]
        vsic: VsicArg,
    },
    /// Set a VSIC's rate limits. An omitted limit keeps its current value;
    /// 0 means unlimited; with neither option, show the current limits.
    Qos {
        #[command(flatten)]
        vsic: VsicArg,
        /// Bytes per second (e.g. 100M; 0 = unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_size)]
        bytes_per_sec: Option<u64>,
        /// I/O requests per second (0 = unlimited).
        #[arg(long, value_name = "N")]
        iops: Option<u64>,
    },
    /// Set a VSIC's DMA mode: `open` (its requests may use any
    /// guest-physical address; the default) or `enforced` (only its DMA
    /// windows, see `vsic dma-window`; anything else fails with an I/O
    /// error and counts as a protection violation). The mode survives a
    /// vsicd restart, the windows do not: an enforced VSIC comes back with
    /// none. A VSIC's windows also go when its QEMU connection does, and
    /// once no VSIC has a QEMU connection (the guest is gone) every VSIC is
    /// open again. With no mode, show the current one.
    DmaMode {
        #[command(flatten)]
        vsic: VsicArg,
        /// The new mode.
        #[arg(value_enum)]
        mode: Option<DmaModeArg>,
    },
    /// Add, remove or list a VSIC's DMA windows: the guest-physical ranges
    /// it may use in enforced mode (at most 256, never overlapping).
    #[command(subcommand)]
    DmaWindow(DmaWindowCommand),
}

/// Modes `vsic dma-mode` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DmaModeArg {
    Open,
    Enforced,
}

impl DmaModeArg {
    pub fn mode(self) -> vsic_abi::admin::DmaMode {
        match self {
            DmaModeArg::Open => vsic_abi::admin::DmaMode::Open,
            DmaModeArg::Enforced => vsic_abi::admin::DmaMode::Enforced,
        }
    }
}

/// A DMA window: guest-physical start and length.
#[derive(Debug, Args)]
pub struct DmaRange {
    /// Guest-physical start (hex with 0x, or decimal with an optional
    /// K/M/G/T suffix).
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub start: u64,
    /// Length in bytes (e.g. 2M).
    #[arg(long, value_name = "SIZE", value_parser = parse_address)]
    pub len: u64,
}

#[derive(Debug, Subcommand)]
pub enum DmaWindowCommand {
    /// Let the device read and/or write a guest-physical range for a VSIC
    /// (at least one of --read, --write).
    Add {
        #[command(flatten)]
        vsic: VsicArg,
        #[command(flatten)]
        range: DmaRange,
        /// The device may read the range (request headers, data to write,
        /// the descriptor table and avail ring).
        #[arg(long, required_unless_present = "write")]
        read: bool,
        /// The device may write the range (data read, status bytes, the
        /// used ring).
        #[arg(long)]
        write: bool,
    },
    /// Remove a window, given exactly as it was added.
    Remove {
        #[command(flatten)]
        vsic: VsicArg,
        #[command(flatten)]
        range: DmaRange,
    },
    /// Show a VSIC's DMA mode and windows.
    List {
        #[command(flatten)]
        vsic: VsicArg,
    },
}

#[derive(Debug, Args)]
pub struct VsicArg {
    /// VSIC number (0 .. number of VSICs - 1).
    #[arg(long = "vsic", value_name = "N")]
    pub number: u32,
}

// Where and how a VSA is attached: the same for `vsic attach` (root, through
// the PF) and `request-attach` (a user, through the service).
#[derive(Debug, Args)]
pub struct AttachHow {
    /// Attachment slot.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub slot: u32,
    /// Attach for reading only.
    #[arg(long)]
    pub read_only: bool,
}

// The control-plane service an application's user sends requests to.
#[derive(Debug, Args)]
pub struct ServiceSocket {
    /// The service's socket.
    #[arg(long = "socket", value_name = "PATH", default_value = vsicctl::control::DEFAULT_SOCKET)]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CapCommand {
    /// Derive a new capability for the same VSA into a new file (mode 0600).
    Derive {
        /// Parent capability file.
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
        /// The derived capability grants reading only.
        #[arg(long)]
        read_only: bool,
        /// File to write the derived capability to; must not exist unless --force.
        #[arg(long, value_name = "FILE2")]
        out: PathBuf,
        /// Replace FILE2 if it already exists.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a capability and everything derived from it, detaching what
    /// they attached. Revoking a VSA's root capability re-keys the VSA
    /// (every capability of it becomes invalid) and FILE is replaced
    /// atomically by the new root.
    Revoke {
        /// Capability file to revoke.
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
    },
    /// Show what a capability file names (VSA, token id, rights), never its
    /// secret. Works without the device.
    Show {
        /// Capability file.
        #[arg(long, value_name = "FILE")]
        cap: PathBuf,
    },
}

fn parse_size(text: &str) -> Result<u64, vsic_abi::units::UnitError> {
    vsic_abi::units::parse_size(text)
}

/// An address or length: `0x` hex, or a size as [`parse_size`] reads it.
fn parse_address(text: &str) -> Result<u64, vsic_abi::units::UnitError> {
    match text.trim().strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)
            .map_err(|_| vsic_abi::units::UnitError::NotASize(text.to_string())),
        None => parse_size(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["vsicctl", "--json", "--vhost-user", "/s", "list"]).unwrap();
        let b = Cli::try_parse_from(["vsicctl", "list", "--json", "--vhost-user", "/s"]).unwrap();
        assert!(a.json && b.json);
        assert_eq!(a.vhost_user, b.vhost_user);
        let c = Cli::try_parse_from([
            "vsicctl", "vsa", "create", "--size", "1M", "--cap", "f", "--json",
        ])
        .unwrap();
        assert!(c.json);
    }

    #[test]
    fn sizes_parse_with_suffixes_and_bad_ones_are_usage_errors() {
        let cli = Cli::try_parse_from(["vsicctl", "vsa", "create", "--size", "128M", "--cap", "f"])
            .unwrap();
        match cli.command {
            Command::Vsa(VsaCommand::Create {
                size,
                stripe,
                force,
                ..
            }) => {
                assert_eq!(size, 128 << 20);
                assert_eq!(stripe, 1);
                assert!(!force);
            }
            other => panic!("parsed as {other:?}"),
        }
        let err = Cli::try_parse_from(["vsicctl", "vsa", "create", "--size", "12X", "--cap", "f"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn vsa_resize_and_delete_take_a_capability_or_an_id() {
        for args in [
            &["vsicctl", "vsa", "delete", "--cap", "f"][..],
            &["vsicctl", "vsa", "delete", "--id", "3"],
            &["vsicctl", "vsa", "resize", "--cap", "f", "--size", "1M"],
            &["vsicctl", "vsa", "resize", "--id", "3", "--size", "1M"],
            &["vsicctl", "vsa", "role", "--id", "3", "--role", "store"],
            &["vsicctl", "vsa", "role", "--id", "3", "--role", "none"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for args in [
            &["vsicctl", "vsa", "delete"][..],
            &["vsicctl", "vsa", "delete", "--cap", "f", "--id", "3"],
            &["vsicctl", "vsa", "resize", "--size", "1M"],
            &["vsicctl", "vsa", "delete", "--id", "x"],
            &["vsicctl", "vsa", "role", "--id", "3", "--role", "boss"],
            &["vsicctl", "vsa", "role", "--role", "store"],
        ] {
            assert_eq!(
                Cli::try_parse_from(args).unwrap_err().exit_code(),
                2,
                "{args:?}"
            );
        }
    }

    #[test]
    fn attach_defaults_to_slot_zero_read_write() {
        let cli = Cli::try_parse_from(["vsicctl", "vsic", "attach", "--vsic", "2", "--cap", "f"])
            .unwrap();
        match cli.command {
            Command::Vsic(VsicCommand::Attach { vsic, how, .. }) => {
                assert_eq!((vsic.number, how.slot, how.read_only), (2, 0, false));
            }
            other => panic!("parsed as {other:?}"),
        }
        // An application's user asks the service with the same defaults.
        let cli = Cli::try_parse_from(["vsicctl", "request-attach", "--vsic", "1", "--cap", "f"])
            .unwrap();
        match cli.command {
            Command::RequestAttach { how, service, .. } => {
                assert_eq!((how.slot, how.read_only), (0, false));
                assert_eq!(
                    service.path,
                    PathBuf::from(vsicctl::control::DEFAULT_SOCKET)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        // Detach has no default slot: detaching slot 0 by accident would
        // pull the kernel's disk away.
        assert!(Cli::try_parse_from(["vsicctl", "vsic", "detach", "--vsic", "0"]).is_err());
    }

    #[test]
    fn dma_commands_parse_addresses_and_need_an_access() {
        let cli = Cli::try_parse_from([
            "vsicctl",
            "vsic",
            "dma-window",
            "add",
            "--vsic",
            "1",
            "--start",
            "0x40000000",
            "--len",
            "2M",
            "--read",
        ])
        .unwrap();
        match cli.command {
            Command::Vsic(VsicCommand::DmaWindow(DmaWindowCommand::Add {
                vsic,
                range,
                read,
                write,
            })) => {
                assert_eq!(
                    (vsic.number, range.start, range.len, read, write),
                    (1, 1 << 30, 2 << 20, true, false)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let no_access = [
            "vsicctl",
            "vsic",
            "dma-window",
            "add",
            "--vsic",
            "1",
            "--start",
            "0",
            "--len",
            "4K",
        ];
        assert!(Cli::try_parse_from(no_access).is_err());
        let bad_hex = [
            "vsicctl",
            "vsic",
            "dma-window",
            "remove",
            "--vsic",
            "1",
            "--start",
            "0xzz",
            "--len",
            "1",
        ];
        assert!(Cli::try_parse_from(bad_hex).is_err());
        let cli = Cli::try_parse_from(["vsicctl", "vsic", "dma-mode", "--vsic", "0", "enforced"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Vsic(VsicCommand::DmaMode {
                mode: Some(DmaModeArg::Enforced),
                ..
            })
        ));
    }
}
