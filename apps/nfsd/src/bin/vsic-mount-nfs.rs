//! `vsic-mount-nfs`: a minimal `mount.nfs` for the guest image (installed
//! as /sbin/mount.nfs). The image's busybox has no NFS support and the
//! kernel's NFS text options need the server's address as `addr=`, which
//! mount(8) normally adds: this helper does just that.
//!
//! `mount.nfs HOST:PATH DIR [-o OPTIONS]`: resolves HOST, appends
//! `addr=IP` unless OPTIONS has one, turns `ro`/`rw`/`sync` into mount
//! flags, and calls mount(2) with type `nfs` and the rest as the option
//! string (e.g. `vers=3,proto=tcp,port=P,mountport=P,mountproto=tcp,nolock`).

use std::ffi::CString;
use std::net::ToSocketAddrs;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: mount.nfs HOST:PATH DIR [-o OPTIONS]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut opts = String::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-o" => {
                let Some(o) = args.get(i + 1) else {
                    return usage();
                };
                if !opts.is_empty() {
                    opts.push(',');
                }
                opts.push_str(o);
                i += 1;
            }
            // mount(8) passes these to helpers; nothing to do for them.
            "-v" | "-f" | "-n" | "-s" => {}
            a if a.starts_with('-') => {
                eprintln!("mount.nfs: unknown option {a}");
                return usage();
            }
            a => positional.push(a.to_string()),
        }
        i += 1;
    }
    let [source, dir] = positional.as_slice() else {
        return usage();
    };
    let Some((host, _path)) = source
        .rsplit_once(":/")
        .map(|(h, p)| (h.trim_matches(['[', ']']), p))
    else {
        eprintln!("mount.nfs: {source}: expected HOST:/PATH");
        return ExitCode::from(2);
    };
    let mut flags: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    let mut has_addr = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" | "auto" | "noauto" | "_netdev" => {}
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            _ => {
                has_addr |= o.starts_with("addr=");
                data.push(o);
            }
        }
    }
    let addr_opt;
    if !has_addr {
        let ip = match (host, 0).to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(a) => a.ip(),
            None => {
                eprintln!("mount.nfs: cannot resolve {host}");
                return ExitCode::from(2);
            }
        };
        addr_opt = format!("addr={ip}");
        data.push(&addr_opt);
    }
    let data = data.join(",");
    let c = |s: &str| CString::new(s).expect("no NUL in arguments");
    let (src_c, dir_c, type_c, data_c) = (c(source), c(dir), c("nfs"), c(&data));
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            dir_c.as_ptr(),
            type_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("mount.nfs: mount {source} on {dir} with {data:?}: {e}");
        return ExitCode::from(32);
    }
    ExitCode::SUCCESS
}
