//! The controller's PCI functions inside the guest: which function serves
//! which VSIC, which driver has it, who owns its VFIO group, and handing a
//! function to the kernel's virtio driver or to vfio-pci through sysfs.
//!
//! What is learnt is kept in the function map (`/run/vsic/functions`, the
//! format of [`vsic::transport::pci`]), which the library reads to resolve
//! `vsic:N` without touching devices: a function bound to vfio-pci cannot
//! name itself to anyone but its owner.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vsic::transport::pci::{self, Sysfs};
use vsic_abi::virtio::{function_from_serial, Function};

/// The PCI driver of virtio devices; virtio_blk then binds to the virtio
/// device it creates.
pub const KERNEL_DRIVER: &str = "virtio-pci";
pub const VFIO_DRIVER: &str = "vfio-pci";
/// How long a driver may take to bind, and a node or disk to appear.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a function's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// Its virtio_blk disk's serial (GET_ID), read just now.
    Serial,
    /// The function map.
    Map,
}

/// One controller function as seen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionState {
    pub address: String,
    pub function: Option<(Function, Named)>,
    pub driver: Option<String>,
    /// `vdX` when bound to virtio_blk.
    pub disk: Option<String>,
    pub iommu_group: Option<u32>,
    /// Owner of `/dev/vfio/G` when bound to vfio-pci.
    pub vfio_owner: Option<u32>,
}

/// Who owned a VFIO group node, and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The PCI functions of one machine (or of a fake tree in tests).
#[derive(Debug, Clone)]
pub struct Functions {
    sys_root: PathBuf,
    dev_root: PathBuf,
    map_path: PathBuf,
    mounts: PathBuf,
    sysfs: Sysfs,
}

impl Functions {
    /// This machine: `/sys`, `/dev`, the map the library reads.
    pub fn system() -> Functions {
        let (map_path, _) = pci::read_function_map();
        Functions::at("/sys", "/dev", map_path, "/proc/self/mounts")
    }

    pub fn at(
        sys_root: impl Into<PathBuf>,
        dev_root: impl Into<PathBuf>,
        map_path: impl Into<PathBuf>,
        mounts: impl Into<PathBuf>,
    ) -> Functions {
        let sys_root = sys_root.into();
        Functions {
            sysfs: Sysfs::at(&sys_root),
            sys_root,
            dev_root: dev_root.into(),
            map_path: map_path.into(),
            mounts: mounts.into(),
        }
    }

    pub fn map_path(&self) -> &Path {
        &self.map_path
    }

    fn device_dir(&self, addr: &str) -> PathBuf {
        self.sys_root.join("bus/pci/devices").join(addr)
    }

    pub fn driver(&self, addr: &str) -> Option<String> {
        self.sysfs.driver(addr)
    }

    /// `vdX` of a function bound to virtio_blk, and the function its serial
    /// names.
    pub fn disk(&self, addr: &str) -> Option<(String, Option<Function>)> {
        let (disk, serial) = self.sysfs.block_serial(addr)?;
        Some((disk, function_from_serial(serial.as_bytes())))
    }

    /// `/dev/vfio/G` of the function's IOMMU group.
    pub fn group_node(&self, addr: &str) -> Result<PathBuf, String> {
        let group = self
            .sysfs
            .iommu_group(addr)
            .ok_or_else(|| format!("{addr} has no IOMMU group (boot with intel_iommu=on)"))?;
        Ok(self.dev_root.join("vfio").join(group.to_string()))
    }

    /// The uid owning the function's VFIO group node.
    pub fn vfio_owner(&self, addr: &str) -> Result<u32, String> {
        let node = self.group_node(addr)?;
        fs::metadata(&node)
            .map(|m| m.uid())
            .map_err(|e| format!("{}: {e}", node.display()))
    }

    /// Whether some process has the function's VFIO group open. Opening a
    /// group is exclusive, so a free group opens (and is closed at once).
    pub fn group_in_use(&self, addr: &str) -> Result<bool, String> {
        let node = self.group_node(addr)?;
        match fs::OpenOptions::new().read(true).write(true).open(&node) {
            Ok(_) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("{}: {e}", node.display())),
        }
    }

    /// Whether the kernel disk `vdX` is mounted or held by another block
    /// device: unbinding would pull it from under its users.
    pub fn disk_in_use(&self, disk: &str) -> Option<String> {
        let mounts = fs::read_to_string(&self.mounts).unwrap_or_default();
        let dev = format!("/dev/{disk}");
        for line in mounts.lines() {
            let mut words = line.split_whitespace();
            let (Some(source), Some(target)) = (words.next(), words.next()) else {
                continue;
            };
            // The disk itself or one of its partitions (vda1, vdap1 never
            // exist, but vdaa does: require a digit after the name).
            let rest = source.strip_prefix(&dev);
            if rest.is_some_and(|r| r.is_empty() || r.starts_with(|c: char| c.is_ascii_digit())) {
                return Some(format!("/dev/{disk} is mounted on {target}"));
            }
        }
        let holders = self.sys_root.join("block").join(disk).join("holders");
        let held = fs::read_dir(holders)
            .map(|d| d.flatten().next().is_some())
            .unwrap_or(false);
        held.then(|| format!("/dev/{disk} is held by another block device"))
    }

    /// Every virtio-blk function with what is known about it.
    pub fn scan(&self) -> Vec<FunctionState> {
        let map = self.read_map();
        self.sysfs
            .virtio_blk_functions()
            .into_iter()
            .map(|address| {
                let driver = self.driver(&address);
                let disk = self.disk(&address);
                let function = match &disk {
                    Some((_, Some(f))) => Some((*f, Named::Serial)),
                    // A disk naming something else is not ours; the map
                    // may be stale about it.
                    Some((_, None)) => None,
                    None => map
                        .iter()
                        .find(|(_, a)| *a == address)
                        .map(|(f, _)| (*f, Named::Map)),
                };
                let iommu_group = self.sysfs.iommu_group(&address);
                let vfio_owner = (driver.as_deref() == Some(VFIO_DRIVER))
                    .then(|| self.vfio_owner(&address).ok())
                    .flatten();
                FunctionState {
                    disk: disk.map(|(d, _)| d),
                    address,
                    function,
                    driver,
                    iommu_group,
                    vfio_owner,
                }
            })
            .collect()
    }

    /// The address of `function` as far as can be told without opening a
    /// device: a serial read just now, else the map.
    pub fn locate_known(&self, function: Function) -> Option<String> {
        let states = self.scan();
        states
            .iter()
            .find(|s| s.function == Some((function, Named::Serial)))
            .or_else(|| {
                states
                    .iter()
                    .find(|s| s.function == Some((function, Named::Map)))
            })
            .map(|s| s.address.clone())
    }

    /// Functions bound to vfio-pci whose identity is unknown: only asking
    /// them (GET_ID through VFIO) can tell.
    pub fn unnamed_vfio_functions(&self) -> Vec<String> {
        self.scan()
            .into_iter()
            .filter(|s| s.function.is_none() && s.driver.as_deref() == Some(VFIO_DRIVER))
            .map(|s| s.address)
            .collect()
    }

    pub fn read_map(&self) -> Vec<(Function, String)> {
        match fs::read_to_string(&self.map_path) {
            Ok(text) => pci::parse_function_map(&text).0,
            Err(_) => Vec::new(),
        }
    }

    /// Records that `function` is at `address`, replacing what the map said
    /// about either. Written atomically, readable by everyone.
    pub fn record(&self, function: Function, address: &str) -> io::Result<()> {
        let mut entries = self.read_map();
        entries.retain(|(f, a)| *f != function && a != address);
        entries.push((function, address.to_string()));
        // Names learnt from serials are certain: keep the map consistent.
        for state in self.scan() {
            if let Some((f, Named::Serial)) = state.function {
                entries.retain(|(ef, ea)| *ef != f && *ea != state.address);
                entries.push((f, state.address));
            }
        }
        entries.sort_by_key(|(f, _)| match f {
            Function::Pf => (0, 0),
            Function::Vsic(n) => (1, *n),
        });
        self.write_map(&entries)
    }

    fn write_map(&self, entries: &[(Function, String)]) -> io::Result<()> {
        let dir = self
            .map_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        ensure_public_dir(dir)?;
        let tmp = dir.join(format!(".functions.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            f.write_all(pci::format_function_map(entries).as_bytes())?;
            fs::rename(&tmp, &self.map_path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_attr(&self, path: &Path, value: &str) -> Result<(), String> {
        fs::write(path, value)
            .map_err(|e| format!("writing '{}' to {}: {e}", value.trim(), path.display()))
    }

    /// Hands `addr` to `driver` (driver_override, unbind, reprobe) and
    /// waits until the driver has it.
    pub fn bind(&self, addr: &str, driver: &str) -> Result<(), String> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(format!("no PCI function {addr}"));
        }
        self.write_attr(&dir.join("driver_override"), &format!("{driver}\n"))?;
        let current = self.driver(addr);
        if current.as_deref() == Some(driver) {
            return Ok(());
        }
        if current.is_some() {
            self.write_attr(&dir.join("driver/unbind"), addr)?;
        }
        self.write_attr(&self.sys_root.join("bus/pci/drivers_probe"), addr)?;
        wait_until(SETTLE_TIMEOUT, || self.driver(addr).as_deref() == Some(driver)).map_err(|_| {
            format!(
                "{addr} did not bind to {driver} within {} s (driver now: {}; is the module loaded?)",
                SETTLE_TIMEOUT.as_secs(),
                self.driver(addr).unwrap_or_else(|| "none".into())
            )
        })
    }

    /// Detaches `addr` from its driver and clears the override, leaving it
    /// with no driver.
    pub fn unbind(&self, addr: &str) -> Result<(), String> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(format!("no PCI function {addr}"));
        }
        self.write_attr(&dir.join("driver_override"), "\n")?;
        if self.driver(addr).is_some() {
            self.write_attr(&dir.join("driver/unbind"), addr)?;
        }
        wait_until(SETTLE_TIMEOUT, || self.driver(addr).is_none())
            .map_err(|_| format!("{addr} is still bound to a driver"))
    }

    /// Waits for the VFIO group node of `addr` and gives it to `uid`/`gid`
    /// alone (mode 0600).
    pub fn give_group(&self, addr: &str, uid: u32, gid: u32) -> Result<PathBuf, String> {
        let node = self.group_node(addr)?;
        wait_until(SETTLE_TIMEOUT, || node.exists())
            .map_err(|_| format!("{} did not appear", node.display()))?;
        std::os::unix::fs::chown(&node, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", node.display()))?;
        fs::set_permissions(&node, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", node.display()))?;
        Ok(node)
    }

    /// Makes the function's VFIO group node root's alone (mode 0600), so
    /// that nobody else can open the group from now on, and returns who
    /// owned it before (uid, gid, mode) for [`Functions::restore_group`].
    /// `None` when the function has no group node.
    pub fn revoke_group(&self, addr: &str) -> Result<Option<GroupOwner>, String> {
        let node = self.group_node(addr)?;
        let meta = match fs::metadata(&node) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", node.display())),
        };
        let before = GroupOwner {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.permissions().mode() & 0o7777,
        };
        // Permissions first: between the two calls nobody but root may open it.
        fs::set_permissions(&node, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", node.display()))?;
        std::os::unix::fs::chown(&node, Some(0), Some(0))
            .map_err(|e| format!("chown {}: {e}", node.display()))?;
        Ok(Some(before))
    }

    /// Gives the group node back to the owner [`Functions::revoke_group`]
    /// took it from.
    pub fn restore_group(&self, addr: &str, owner: GroupOwner) -> Result<(), String> {
        let node = self.group_node(addr)?;
        std::os::unix::fs::chown(&node, Some(owner.uid), Some(owner.gid))
            .map_err(|e| format!("chown {}: {e}", node.display()))?;
        fs::set_permissions(&node, fs::Permissions::from_mode(owner.mode))
            .map_err(|e| format!("chmod {}: {e}", node.display()))
    }

    /// Waits until `addr` shows a virtio_blk disk naming `function`.
    pub fn wait_for_disk(&self, addr: &str, function: Function) -> Result<String, String> {
        let mut found = None;
        let named = wait_until(SETTLE_TIMEOUT, || {
            found = self.disk(addr);
            found.is_some()
        });
        match (named, found) {
            (Ok(()), Some((disk, Some(f)))) if f == function => Ok(disk),
            (Ok(()), Some((disk, other))) => Err(format!(
                "/dev/{disk} at {addr} names itself {other:?}, not {function:?}: the function map is stale"
            )),
            _ => Err(format!("no virtio_blk disk appeared for {addr}")),
        }
    }
}

/// Creates `dir` (mode 0755) if missing.
pub fn ensure_public_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Polls `done` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A user named on the command line: a name from `/etc/passwd` or a
/// number. Returns (uid, gid).
pub fn lookup_user(user: &str, passwd: &Path) -> Result<(u32, u32), String> {
    let text = fs::read_to_string(passwd).unwrap_or_default();
    let entry = text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, ..] => {
                let ids = (uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?);
                (*name == user || uid == &user).then_some(ids)
            }
            _ => None,
        }
    });
    match entry {
        Some(ids) => Ok(ids),
        // A bare number names a uid even without a passwd entry.
        None => user
            .parse::<u32>()
            .map(|uid| (uid, uid))
            .map_err(|_| format!("no user '{user}' in {}", passwd.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake machine: the PF and VSIC 0 on virtio-pci (disks vda, vdb),
    /// VSIC 1 on vfio-pci in group 7, one unnamed vfio-pci function.
    struct Fake {
        root: PathBuf,
        funcs: Functions,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("vsicctl-fn-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let sys = root.join("sys");
            let dev = |addr: &str, driver: &str, disk: Option<(&str, &str)>, group: u32| {
                let d = sys.join("bus/pci/devices").join(addr);
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("vendor"), "0x1af4\n").unwrap();
                fs::write(d.join("device"), "0x1042\n").unwrap();
                fs::write(d.join("driver_override"), "(null)\n").unwrap();
                let drv = sys.join("bus/pci/drivers").join(driver);
                fs::create_dir_all(&drv).unwrap();
                symlink(&drv, d.join("driver")).unwrap();
                let g = sys.join("kernel/iommu_groups").join(group.to_string());
                fs::create_dir_all(&g).unwrap();
                symlink(&g, d.join("iommu_group")).unwrap();
                if let Some((disk, serial)) = disk {
                    let b = d.join("virtio1/block").join(disk);
                    fs::create_dir_all(&b).unwrap();
                    fs::write(b.join("serial"), serial).unwrap();
                    fs::create_dir_all(sys.join("block").join(disk).join("holders")).unwrap();
                }
            };
            dev("0000:01:00.0", "virtio-pci", Some(("vda", "vsic-pf")), 3);
            dev("0000:02:00.0", "virtio-pci", Some(("vdb", "vsic-vsic0")), 4);
            dev("0000:03:00.0", "vfio-pci", None, 7);
            dev("0000:04:00.0", "vfio-pci", None, 8);
            fs::create_dir_all(root.join("dev/vfio")).unwrap();
            fs::write(root.join("dev/vfio/7"), "").unwrap();
            fs::write(
                root.join("mounts"),
                "proc /proc proc rw 0 0\n/dev/vdb1 /mnt ext4 rw 0 0\n",
            )
            .unwrap();
            let funcs = Functions::at(
                &sys,
                root.join("dev"),
                root.join("run/vsic/functions"),
                root.join("mounts"),
            );
            Fake { root, funcs }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn serials_name_functions_and_the_map_names_the_rest() {
        let fake = Fake::new("scan");
        let f = &fake.funcs;
        assert_eq!(
            f.locate_known(Function::Pf).as_deref(),
            Some("0000:01:00.0")
        );
        assert_eq!(
            f.locate_known(Function::Vsic(0)).as_deref(),
            Some("0000:02:00.0")
        );
        assert_eq!(f.locate_known(Function::Vsic(1)), None);
        assert_eq!(
            f.unnamed_vfio_functions(),
            vec!["0000:03:00.0", "0000:04:00.0"]
        );

        f.record(Function::Vsic(1), "0000:03:00.0").unwrap();
        assert_eq!(
            f.locate_known(Function::Vsic(1)).as_deref(),
            Some("0000:03:00.0")
        );
        assert_eq!(f.unnamed_vfio_functions(), vec!["0000:04:00.0"]);
        // The map also holds what the serials said, for the library.
        let map = f.read_map();
        assert!(
            map.contains(&(Function::Pf, "0000:01:00.0".into())),
            "{map:?}"
        );
        assert!(
            map.contains(&(Function::Vsic(0), "0000:02:00.0".into())),
            "{map:?}"
        );
        let mode = fs::metadata(f.map_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        // A map entry contradicted by a serial loses.
        f.write_map(&[(Function::Vsic(5), "0000:02:00.0".into())])
            .unwrap();
        assert_eq!(f.locate_known(Function::Vsic(5)), None);
        // Recording a function moves it: no two entries for one address.
        f.record(Function::Vsic(2), "0000:03:00.0").unwrap();
        f.record(Function::Vsic(3), "0000:03:00.0").unwrap();
        let map = f.read_map();
        assert!(
            !map.iter().any(|(func, _)| *func == Function::Vsic(2)),
            "{map:?}"
        );
        assert_eq!(map.iter().filter(|(_, a)| a == "0000:03:00.0").count(), 1);
    }

    #[test]
    fn scan_reports_drivers_disks_groups_and_owners() {
        let fake = Fake::new("state");
        let states = fake.funcs.scan();
        assert_eq!(states.len(), 4);
        let pf = &states[0];
        assert_eq!(pf.function, Some((Function::Pf, Named::Serial)));
        assert_eq!(
            (pf.driver.as_deref(), pf.disk.as_deref()),
            (Some("virtio-pci"), Some("vda"))
        );
        assert_eq!(pf.vfio_owner, None);
        let vfio = &states[2];
        assert_eq!(vfio.iommu_group, Some(7));
        // SAFETY: getuid has no preconditions.
        assert_eq!(vfio.vfio_owner, Some(unsafe { libc::getuid() }));
        // Group 8 has no node yet.
        assert_eq!(states[3].vfio_owner, None);
    }

    #[test]
    fn mounted_disks_and_partitions_are_in_use() {
        let fake = Fake::new("mounts");
        let f = &fake.funcs;
        assert!(f.disk_in_use("vdb").unwrap().contains("/mnt"));
        assert_eq!(f.disk_in_use("vda"), None);
        fs::write(fake.root.join("mounts"), "/dev/vdaa /x ext4 rw 0 0\n").unwrap();
        assert_eq!(f.disk_in_use("vda"), None, "vdaa is another disk");
        fs::write(fake.root.join("sys/block/vda/holders/dm-0"), "").unwrap();
        assert!(f.disk_in_use("vda").unwrap().contains("held"));
    }

    #[test]
    fn binding_writes_override_unbind_and_probe() {
        let fake = Fake::new("bind");
        let f = &fake.funcs;
        let dev = fake.root.join("sys/bus/pci/devices/0000:02:00.0");
        // The fake kernel never rebinds, so the wait times out; the writes
        // are what the kernel would act on.
        fs::create_dir_all(fake.root.join("sys/bus/pci/drivers/virtio-pci")).unwrap();
        let err = {
            // Make the wait short: rebind "succeeds" when the link changes.
            let link = dev.join("driver");
            let vfio = fake.root.join("sys/bus/pci/drivers/vfio-pci");
            let flip = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fs::remove_file(&link).unwrap();
                symlink(&vfio, &link).unwrap();
            });
            let r = f.bind("0000:02:00.0", VFIO_DRIVER);
            flip.join().unwrap();
            r
        };
        assert_eq!(err, Ok(()));
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "vfio-pci\n"
        );
        // unbind is written through the driver link: the fake driver dir.
        let unbind = fake.root.join("sys/bus/pci/drivers/virtio-pci/unbind");
        assert_eq!(fs::read_to_string(unbind).unwrap(), "0000:02:00.0");
        let probe = fake.root.join("sys/bus/pci/drivers_probe");
        assert_eq!(fs::read_to_string(probe).unwrap(), "0000:02:00.0");
        // Already bound: only the override is (re)written.
        assert_eq!(f.bind("0000:02:00.0", VFIO_DRIVER), Ok(()));
        assert!(f
            .bind("0000:09:00.0", VFIO_DRIVER)
            .unwrap_err()
            .contains("no PCI function"));
    }

    #[test]
    fn group_nodes_are_given_to_one_user() {
        let fake = Fake::new("give");
        let node = fake.funcs.give_group("0000:03:00.0", 1234, 1234).unwrap();
        let meta = fs::metadata(&node).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
            (1234, 1234, 0o600)
        );
        assert_eq!(fake.funcs.vfio_owner("0000:03:00.0"), Ok(1234));
    }

    /// The old owner loses the group node before anything else happens;
    /// the slots are emptied only when the function leaves a user.
    #[test]
    fn a_function_leaving_its_user_is_revoked_then_emptied() {
        let fake = Fake::new("take");
        let f = &fake.funcs;
        let addr = "0000:03:00.0";
        let node = fake.root.join("dev/vfio/7");
        let owned_by = |uid: u32| {
            std::os::unix::fs::chown(&node, Some(uid), Some(uid)).unwrap();
            fs::set_permissions(&node, fs::Permissions::from_mode(0o600)).unwrap();
        };
        let take = |next: Option<u32>| {
            let mut seen = None;
            crate::guest::take_from_user(f, addr, Some(VFIO_DRIVER), next, || {
                let meta = fs::metadata(&node).unwrap();
                seen = Some((meta.uid(), meta.permissions().mode() & 0o777));
                Ok(())
            })
            .map(|()| seen)
        };
        for next in [Some(1002), None] {
            owned_by(1001);
            // While the slots are emptied, only root can open the group.
            assert_eq!(take(next), Ok(Some((0, 0o600))), "to {next:?}");
            assert_eq!(f.vfio_owner(addr), Ok(0));
        }
        // The same user again, or a function of root's: nothing detached.
        owned_by(1001);
        assert_eq!(take(Some(1001)), Ok(None));
        owned_by(0);
        assert_eq!(take(Some(1002)), Ok(None));
        // A failed detach leaves the node with root: nobody gets it.
        owned_by(1001);
        let r = crate::guest::take_from_user(f, addr, Some(VFIO_DRIVER), Some(1002), || {
            Err("no PF".into())
        });
        assert_eq!(r, Err("no PF".to_string()));
        assert_eq!(f.vfio_owner(addr), Ok(0));
        // Off vfio-pci (the kernel's, no driver): root's already; a mounted
        // disk is not taken.
        let mut called = false;
        let mut take_kernel = |addr| {
            crate::guest::take_from_user(f, addr, Some(KERNEL_DRIVER), Some(1002), || {
                called = true;
                Ok(())
            })
        };
        assert_eq!(take_kernel("0000:01:00.0"), Ok(()));
        assert!(take_kernel("0000:02:00.0").unwrap_err().contains("/mnt"));
        assert!(!called);
    }

    #[test]
    fn users_by_name_or_number() {
        let dir = std::env::temp_dir().join(format!("vsicctl-passwd-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\nbroken\n",
        )
        .unwrap();
        assert_eq!(lookup_user("alice", &passwd), Ok((1001, 1001)));
        assert_eq!(lookup_user("1001", &passwd), Ok((1001, 1001)));
        assert_eq!(lookup_user("2000", &passwd), Ok((2000, 2000)));
        assert!(lookup_user("mallory", &passwd)
            .unwrap_err()
            .contains("mallory"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
