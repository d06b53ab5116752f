//! PCI facts the VFIO transport needs, all pure or read from sysfs:
//! addresses, the virtio vendor capabilities in configuration space, and
//! which function serves which VSIC.
//!
//! # Finding `vsic:N`
//!
//! 1. The function map `/run/vsic/functions` (or `$VSIC_FUNCTIONS`), written
//!    by the control plane when it hands functions out: one `N PCIADDR` line
//!    per VSIC (`pf PCIADDR` for the PF), `#` starts a comment. Readable by
//!    unprivileged applications; no device is touched.
//! 2. Functions bound to virtio_blk name themselves in
//!    `/sys/block/vdX/serial` (the GET_ID string `vsic-vsicN`).
//! 3. Functions bound to vfio-pci must be asked: [`crate::discovery`] opens
//!    each unclaimed one in turn and sends GET_ID (needs the rights to open the
//!    VFIO group and, without provided DMA memory, CAP_SYS_ADMIN).

use std::fs;
use std::path::PathBuf;

use vsic_abi::virtio::Function;

/// Default location of the function map.
pub const FUNCTION_MAP_PATH: &str = "/run/vsic/functions";
/// Environment variable overriding [`FUNCTION_MAP_PATH`].
pub const FUNCTION_MAP_ENV: &str = "VSIC_FUNCTIONS";

/// The virtio vendor ID and the PCI device IDs of a virtio-blk function
/// (modern, transitional).
pub const VIRTIO_VENDOR: u16 = 0x1af4;
pub const VIRTIO_BLK_DEVICE_IDS: [u16; 2] = [0x1042, 0x1001];

/// Parses `pci:DDDD:BB:DD.F`, `DDDD:BB:DD.F` or `BB:DD.F` into the
/// canonical sysfs name `dddd:bb:dd.f`.
pub fn parse_address(spec: &str) -> Option<String> {
    let s = spec.strip_prefix("pci:").unwrap_or(spec);
    let hex = |p: &str, max_len: usize| {
        (!p.is_empty() && p.len() <= max_len && p.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(p, 16).ok())
            .flatten()
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (hex(d, 4)?, *b, *df),
        [b, df] => (0, *b, *df),
        _ => return None,
    };
    let bus = hex(bus, 2)?;
    let (dev, func) = devfn.split_once('.')?;
    let (dev, func) = (hex(dev, 2)?, hex(func, 1)?);
    if dev > 0x1f || func > 7 {
        return None;
    }
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// Where one virtio structure lives: `length` bytes at `offset` of `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapLocation {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// The virtio-pci modern structures of a function (virtio 1.x, 4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioCaps {
    pub common: CapLocation,
    pub notify: CapLocation,
    pub notify_off_multiplier: u32,
    pub isr: Option<CapLocation>,
    pub device: Option<CapLocation>,
}

// virtio_pci_cap.cfg_type values.
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
/// PCI capability ID of vendor-specific capabilities (virtio's).
const PCI_CAP_ID_VNDR: u8 = 0x09;
const PCI_STATUS: usize = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_CAPABILITY_LIST: usize = 0x34;
/// Length of struct virtio_pci_cap; the notify capability adds a u32.
const VIRTIO_PCI_CAP_LEN: usize = 16;
const VIRTIO_PCI_NOTIFY_CAP_LEN: usize = 20;
/// The common configuration structure: 56 bytes up to queue_device.
pub const COMMON_CFG_MIN_LEN: u32 = 56;

fn byte(config: &[u8], at: usize) -> Option<u8> {
    config.get(at).copied()
}

fn le16(config: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(config.get(at..at + 2)?.try_into().ok()?))
}

fn le32(config: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(config.get(at..at + 4)?.try_into().ok()?))
}

/// Why a configuration space is not a usable virtio-pci modern function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapError(pub String);

/// Walks the capability list of a function's configuration space (the
/// first 256 bytes) and collects its virtio structures. The first
/// capability of each type wins, as the virtio spec asks; malformed lists
/// (loops, pointers into the header, truncation) are errors, not panics.
pub fn parse_virtio_caps(config: &[u8]) -> Result<VirtioCaps, CapError> {
    let err = |s: &str| CapError(s.to_string());
    let status = le16(config, PCI_STATUS).ok_or_else(|| err("configuration space too short"))?;
    if status & PCI_STATUS_CAP_LIST == 0 {
        return Err(err("the function has no capability list"));
    }
    let mut common = None;
    let mut notify = None;
    let mut isr = None;
    let mut device = None;
    let mut ptr = byte(config, PCI_CAPABILITY_LIST).unwrap_or(0) as usize & !3;
    // 48 capabilities fill the 192 bytes after the header: more is a loop.
    for _ in 0..48 {
        if ptr == 0 {
            break;
        }
        if ptr < 0x40 {
            return Err(CapError(format!(
                "capability pointer {ptr:#x} points into the header"
            )));
        }
        let id = byte(config, ptr).ok_or_else(|| err("capability past the end"))?;
        let next = byte(config, ptr + 1).ok_or_else(|| err("capability past the end"))?;
        if id == PCI_CAP_ID_VNDR {
            let cap_len = byte(config, ptr + 2).unwrap_or(0) as usize;
            let cfg_type = byte(config, ptr + 3).unwrap_or(0);
            let loc = |min_len: usize| -> Result<Option<CapLocation>, CapError> {
                if cap_len < min_len {
                    return Ok(None);
                }
                let truncated = || CapError(format!("virtio capability at {ptr:#x} truncated"));
                let bar = byte(config, ptr + 4).ok_or_else(truncated)?;
                let offset = le32(config, ptr + 8).ok_or_else(truncated)?;
                let length = le32(config, ptr + 12).ok_or_else(truncated)?;
                // BARs 0-5 only; other values are reserved (ignore the cap).
                Ok((bar <= 5).then_some(CapLocation {
                    bar,
                    offset,
                    length,
                }))
            };
            match cfg_type {
                CAP_COMMON_CFG if common.is_none() => common = loc(VIRTIO_PCI_CAP_LEN)?,
                CAP_NOTIFY_CFG if notify.is_none() => {
                    if let Some(l) = loc(VIRTIO_PCI_NOTIFY_CAP_LEN)? {
                        let mult = le32(config, ptr + VIRTIO_PCI_CAP_LEN)
                            .ok_or_else(|| err("notify capability truncated"))?;
                        notify = Some((l, mult));
                    }
                }
                CAP_ISR_CFG if isr.is_none() => isr = loc(VIRTIO_PCI_CAP_LEN)?,
                CAP_DEVICE_CFG if device.is_none() => device = loc(VIRTIO_PCI_CAP_LEN)?,
                _ => {}
            }
        }
        ptr = next as usize & !3;
    }
    if ptr != 0 {
        return Err(err("capability list does not end (loop?)"));
    }
    let common = common.ok_or_else(|| {
        err("no virtio common configuration capability (not a modern virtio device?)")
    })?;
    if common.length < COMMON_CFG_MIN_LEN {
        return Err(CapError(format!(
            "common configuration is {} bytes, expected at least {COMMON_CFG_MIN_LEN}",
            common.length
        )));
    }
    let (notify, notify_off_multiplier) =
        notify.ok_or_else(|| err("no virtio notification capability"))?;
    if notify.length < 2 {
        return Err(err("notification area too small"));
    }
    Ok(VirtioCaps {
        common,
        notify,
        notify_off_multiplier,
        isr,
        device,
    })
}

/// Parses the function map: `N PCIADDR` or `pf PCIADDR` per line, `#`
/// comments, blank lines. Malformed lines are skipped (returned separately
/// so callers can report them).
pub fn parse_function_map(text: &str) -> (Vec<(Function, String)>, Vec<usize>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(name), Some(addr), None) => {
                let function = match name {
                    "pf" => Some(Function::Pf),
                    n => n.parse().ok().map(Function::Vsic),
                };
                function.zip(parse_address(addr))
            }
            _ => None,
        };
        match parsed {
            Some(e) => entries.push(e),
            None => bad.push(i + 1),
        }
    }
    (entries, bad)
}

/// Formats a function map that [`parse_function_map`] reads back; for the
/// control plane.
pub fn format_function_map(entries: &[(Function, String)]) -> String {
    let mut out = String::from("# VSIC functions: N PCIADDR (pf = the PF)\n");
    for (f, addr) in entries {
        match f {
            Function::Pf => out.push_str(&format!("pf {addr}\n")),
            Function::Vsic(n) => out.push_str(&format!("{n} {addr}\n")),
        }
    }
    out
}

/// The function map in effect: its path and its entries (empty when the
/// file does not exist).
pub fn read_function_map() -> (PathBuf, Vec<(Function, String)>) {
    let path = std::env::var_os(FUNCTION_MAP_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FUNCTION_MAP_PATH));
    let entries = match fs::read_to_string(&path) {
        Ok(text) => {
            let (entries, bad) = parse_function_map(&text);
            if !bad.is_empty() {
                log::warn!("{}: ignoring malformed lines {bad:?}", path.display());
            }
            entries
        }
        Err(_) => Vec::new(),
    };
    (path, entries)
}

/// The PCI devices of sysfs (`/sys/bus/pci/devices` and `/sys/block`
/// below `root`, `/sys` normally; tests use a fake tree).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

impl Sysfs {
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn device_dir(&self, addr: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr)
    }

    pub fn exists(&self, addr: &str) -> bool {
        self.device_dir(addr).exists()
    }

    fn read_hex(&self, addr: &str, attr: &str) -> Option<u16> {
        let text = fs::read_to_string(self.device_dir(addr).join(attr)).ok()?;
        let t = text.trim();
        u16::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
    }

    /// Whether the function is a virtio-blk device.
    pub fn is_virtio_blk(&self, addr: &str) -> bool {
        self.read_hex(addr, "vendor") == Some(VIRTIO_VENDOR)
            && self
                .read_hex(addr, "device")
                .is_some_and(|d| VIRTIO_BLK_DEVICE_IDS.contains(&d))
    }

    /// Every virtio-blk function, sorted by address.
    pub fn virtio_blk_functions(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.root.join("bus/pci/devices"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|a| self.is_virtio_blk(a))
            .collect();
        out.sort();
        out
    }

    /// Name of the driver bound to the function, if any.
    pub fn driver(&self, addr: &str) -> Option<String> {
        let link = fs::read_link(self.device_dir(addr).join("driver")).ok()?;
        link.file_name()?.to_str().map(str::to_string)
    }

    /// The function's IOMMU group number.
    pub fn iommu_group(&self, addr: &str) -> Option<u32> {
        let link = fs::read_link(self.device_dir(addr).join("iommu_group")).ok()?;
        link.file_name()?.to_str()?.parse().ok()
    }

    /// The kernel disk of a function bound to virtio_blk and its GET_ID
    /// serial: (`vdX`, serial).
    pub fn block_serial(&self, addr: &str) -> Option<(String, String)> {
        // /sys/bus/pci/devices/ADDR/virtioN/block/vdX/serial
        for virtio in fs::read_dir(self.device_dir(addr)).ok()?.flatten() {
            if !virtio.file_name().to_string_lossy().starts_with("virtio") {
                continue;
            }
            // A virtio-blk device has exactly one disk.
            let disk = fs::read_dir(virtio.path().join("block"))
                .into_iter()
                .flatten()
                .flatten()
                .next();
            if let Some(disk) = disk {
                let serial = fs::read_to_string(disk.path().join("serial")).unwrap_or_default();
                let name = disk.file_name().to_string_lossy().into_owned();
                return Some((name, serial.trim_end_matches(['\n', '\0']).to_string()));
            }
        }
        None
    }
}

/// What is known about where a function lives before any device is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// Found at this address (through the map or a virtio_blk serial).
    At(String),
    /// Not found without asking: these vfio-pci functions could be it.
    Probe(Vec<String>),
}

/// Finds `function` without touching any device: the function map, then
/// the serials of functions bound to virtio_blk. Otherwise lists the
/// vfio-pci-bound virtio-blk functions the map does not assign elsewhere.
pub fn locate(function: Function, map: &[(Function, String)], sys: &Sysfs) -> Located {
    if let Some((_, addr)) = map.iter().find(|(f, _)| *f == function) {
        return Located::At(addr.clone());
    }
    let want = vsic_abi::virtio::serial_for(function);
    let want_end = want.iter().position(|&c| c == 0).unwrap_or(want.len());
    let want = &want[..want_end];
    let mut candidates = Vec::new();
    for addr in sys.virtio_blk_functions() {
        if let Some((_, serial)) = sys.block_serial(&addr) {
            if serial.as_bytes() == want {
                return Located::At(addr);
            }
            continue;
        }
        let claimed = map.iter().any(|(_, a)| *a == addr);
        if !claimed && sys.driver(&addr).as_deref() == Some("vfio-pci") {
            candidates.push(addr);
        }
    }
    Located::Probe(candidates)
}

/// Parses `vsic:N` (or `vsic:pf`) into the function it names.
pub fn parse_vsic_spec(spec: &str) -> Option<Function> {
    match spec.strip_prefix("vsic:")? {
        "pf" => Some(Function::Pf),
        n => n.parse().ok().map(Function::Vsic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_canonicalised() {
        assert_eq!(
            parse_address("0000:00:03.0").as_deref(),
            Some("0000:00:03.0")
        );
        assert_eq!(
            parse_address("pci:0000:0A:1f.7").as_deref(),
            Some("0000:0a:1f.7")
        );
        assert_eq!(parse_address("01:00.0").as_deref(), Some("0000:01:00.0"));
        for bad in [
            "",
            "pci:",
            "00:03",
            "0000:00:20.0",
            "00:00.8",
            "x:00:00.0",
            "00:03.0.1",
            "00000:00:00.0",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }

    /// A configuration space with the capabilities QEMU gives a modern
    /// virtio-pci function (MSI-X, then virtio common/ISR/device/notify).
    fn qemu_like_config() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        c[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
        c[PCI_STATUS] = PCI_STATUS_CAP_LIST as u8;
        c[PCI_CAPABILITY_LIST] = 0x98;
        // MSI-X at 0x98 -> 0x84
        c[0x98] = 0x11;
        c[0x99] = 0x84;
        let mut vcap = |at: usize, next: u8, ty: u8, len: u8, bar: u8, off: u32, size: u32| {
            c[at] = PCI_CAP_ID_VNDR;
            c[at + 1] = next;
            c[at + 2] = len;
            c[at + 3] = ty;
            c[at + 4] = bar;
            c[at + 8..at + 12].copy_from_slice(&off.to_le_bytes());
            c[at + 12..at + 16].copy_from_slice(&size.to_le_bytes());
        };
        vcap(0x84, 0x74, CAP_COMMON_CFG, 16, 4, 0x0, 0x1000);
        vcap(0x74, 0x64, CAP_ISR_CFG, 16, 4, 0x1000, 0x1000);
        vcap(0x64, 0x50, CAP_DEVICE_CFG, 16, 4, 0x2000, 0x1000);
        vcap(0x50, 0x40, CAP_NOTIFY_CFG, 20, 4, 0x3000, 0x1000);
        // A second common cfg (ignored: the first wins), then the end.
        vcap(0x40, 0x00, CAP_COMMON_CFG, 16, 2, 0x0, 0x1000);
        c[0x50 + 16..0x50 + 20].copy_from_slice(&4u32.to_le_bytes());
        c
    }

    #[test]
    fn virtio_caps_of_a_qemu_function() {
        let caps = parse_virtio_caps(&qemu_like_config()).unwrap();
        assert_eq!(
            caps.common,
            CapLocation {
                bar: 4,
                offset: 0,
                length: 0x1000
            }
        );
        assert_eq!(
            caps.notify,
            CapLocation {
                bar: 4,
                offset: 0x3000,
                length: 0x1000
            }
        );
        assert_eq!(caps.notify_off_multiplier, 4);
        assert_eq!(caps.isr.map(|l| l.offset), Some(0x1000));
        assert_eq!(caps.device.map(|l| l.offset), Some(0x2000));
    }

    #[test]
    fn malformed_capability_lists_are_errors() {
        let mut looped = qemu_like_config();
        looped[0x41] = 0x84; // last cap points back to the first virtio cap
        assert!(parse_virtio_caps(&looped).unwrap_err().0.contains("loop"));

        let mut into_header = qemu_like_config();
        into_header[PCI_CAPABILITY_LIST] = 0x10;
        assert!(parse_virtio_caps(&into_header).is_err());

        let mut no_list = qemu_like_config();
        no_list[PCI_STATUS] = 0;
        assert!(parse_virtio_caps(&no_list).is_err());

        let mut no_notify = qemu_like_config();
        no_notify[0x50 + 3] = 0x7f; // unknown type
        assert!(parse_virtio_caps(&no_notify)
            .unwrap_err()
            .0
            .contains("notification"));

        let mut small_common = qemu_like_config();
        small_common[0x84 + 12..0x84 + 16].copy_from_slice(&8u32.to_le_bytes());
        assert!(parse_virtio_caps(&small_common).is_err());

        // Truncated space: a capability pointer past the end.
        let mut short = qemu_like_config();
        short.truncate(0x86);
        assert!(parse_virtio_caps(&short).is_err());
        assert!(parse_virtio_caps(&[]).is_err());

        // A reserved BAR number makes the capability unusable.
        let mut bad_bar = qemu_like_config();
        bad_bar[0x84 + 4] = 9;
        // ...so the later common cfg (BAR 2) is used instead.
        assert_eq!(parse_virtio_caps(&bad_bar).unwrap().common.bar, 2);
    }

    #[test]
    fn function_map_round_trip_and_bad_lines() {
        let text = "# comment\n0 0000:00:03.0\n\npf 00:02.0  # the PF\n1 pci:0000:00:04.0\nbogus\n2 zz:00.0\n3 0000:00:05.0 extra\n";
        let (entries, bad) = parse_function_map(text);
        assert_eq!(
            entries,
            vec![
                (Function::Vsic(0), "0000:00:03.0".to_string()),
                (Function::Pf, "0000:00:02.0".to_string()),
                (Function::Vsic(1), "0000:00:04.0".to_string()),
            ]
        );
        assert_eq!(bad, vec![6, 7, 8]);
        let again = parse_function_map(&format_function_map(&entries));
        assert_eq!(again, (entries, vec![]));
    }

    #[test]
    fn vsic_specs() {
        assert_eq!(parse_vsic_spec("vsic:3"), Some(Function::Vsic(3)));
        assert_eq!(parse_vsic_spec("vsic:pf"), Some(Function::Pf));
        assert_eq!(parse_vsic_spec("vsic:"), None);
        assert_eq!(parse_vsic_spec("vsic:-1"), None);
        assert_eq!(parse_vsic_spec("vhost-user:x"), None);
    }

    /// A fake sysfs: the PF and VSIC 0 on virtio_blk, VSIC 1 and 2 on
    /// vfio-pci, one unrelated device.
    fn fake_sysfs() -> (PathBuf, Sysfs) {
        let root = std::env::temp_dir().join(format!("vsic-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dev = |addr: &str, device: &str, driver: Option<&str>, serial: Option<(&str, &str)>| {
            let d = root.join("bus/pci/devices").join(addr);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), "0x1af4\n").unwrap();
            fs::write(d.join("device"), format!("{device}\n")).unwrap();
            if let Some(drv) = driver {
                let target = root.join("bus/pci/drivers").join(drv);
                fs::create_dir_all(&target).unwrap();
                std::os::unix::fs::symlink(&target, d.join("driver")).unwrap();
            }
            if let Some((disk, serial)) = serial {
                let b = d.join("virtio3/block").join(disk);
                fs::create_dir_all(&b).unwrap();
                fs::write(b.join("serial"), serial).unwrap();
            }
        };
        dev(
            "0000:01:00.0",
            "0x1042",
            Some("virtio-pci"),
            Some(("vda", "vsic-pf")),
        );
        dev(
            "0000:02:00.0",
            "0x1042",
            Some("virtio-pci"),
            Some(("vdb", "vsic-vsic0")),
        );
        dev("0000:03:00.0", "0x1042", Some("vfio-pci"), None);
        dev("0000:04:00.0", "0x1042", Some("vfio-pci"), None);
        dev("0000:05:00.0", "0x1000", Some("vfio-pci"), None); // virtio-net
        let sys = Sysfs::at(&root);
        (root, sys)
    }

    #[test]
    fn locate_by_map_serial_or_probe_candidates() {
        let (root, sys) = fake_sysfs();
        assert_eq!(sys.virtio_blk_functions().len(), 4);
        assert_eq!(sys.driver("0000:03:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(
            locate(Function::Vsic(0), &[], &sys),
            Located::At("0000:02:00.0".into())
        );
        assert_eq!(
            locate(Function::Pf, &[], &sys),
            Located::At("0000:01:00.0".into())
        );
        assert_eq!(
            locate(Function::Vsic(1), &[], &sys),
            Located::Probe(vec!["0000:03:00.0".into(), "0000:04:00.0".into()])
        );
        // The map wins, and its other entries are not probe candidates.
        let map = vec![
            (Function::Vsic(1), "0000:04:00.0".to_string()),
            (Function::Vsic(7), "0000:03:00.0".to_string()),
        ];
        assert_eq!(
            locate(Function::Vsic(1), &map, &sys),
            Located::At("0000:04:00.0".into())
        );
        assert_eq!(
            locate(Function::Vsic(2), &map, &sys),
            Located::Probe(vec![])
        );
        fs::remove_dir_all(root).unwrap();
    }
}
