//! One ONC RPC call at a time through fernfs's procedures, with the
//! duplicate-request (reply) cache kept in the file system and group
//! commit.
//!
//! * A changing NFS procedure (SETATTR, WRITE, CREATE, MKDIR, SYMLINK,
//!   MKNOD, REMOVE, RMDIR, RENAME, LINK) is first looked up in the reply
//!   cache by its key ([`reply_key`]); a hit is answered with the recorded reply
//!   and not executed again. Otherwise fernfs runs it, which changes the
//!   file system in memory only, and its reply is recorded in the file
//!   system's log right after (`Fs::record_reply`), so the change and its
//!   reply are in the same commit unit: after a crash both are there or
//!   neither.
//! * Nothing is sent before the state it reports is durable: each reply
//!   carries the number of changes it depends on, and the connection's
//!   writer waits until a commit covered them. One commit covers every
//!   change applied before it (group commit: calls arriving while a commit
//!   runs share the next one).
//! * A WRITE answered UNSTABLE does not wait and forces no commit; COMMIT
//!   waits for everything applied so far, UNSTABLE writes included. A read
//!   waits for the changes (not the UNSTABLE writes) before it.
//!
//! vsic-fs may also commit by itself inside a call (`Fs::take_blocks`,
//! when only blocks waiting for a commit are free), but only before the
//! call logged anything (docs/vsic-fs.md), so no commit splits a change
//! from its reply.
//!
//! The test hook `VSIC_NFSD_CRASH_AFTER_COMMIT=N` (see `vsic-nfsd --help`)
//! aborts the process right after the Nth commit that holds replies,
//! before any of them is sent.

use std::io::Cursor;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fernfs::protocol::nfs::portmap::PortmapTable;
use fernfs::protocol::nfs::{mount as mount_proc, portmap as portmap_proc, v3};
use fernfs::protocol::rpc::{Context, TransactionTracker};
use fernfs::xdr::rpc::{auth_flavor, auth_unix, rpc_body, rpc_msg};
use fernfs::xdr::{self, deserialize, mount, nfs3, portmap, Serialize};
use tokio::sync::{watch, Mutex, Notify};

use crate::VsicNfs;

/// What a call needs before its reply may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reads: the changes before it must be durable.
    Read,
    /// A changing NFS procedure: recorded in the reply cache, durable
    /// before its reply (unless it was a WRITE answered UNSTABLE).
    Change,
    /// COMMIT: everything before it durable, UNSTABLE writes included.
    Commit,
}

/// The class of procedure `proc` of program `prog` version `vers`.
pub fn classify(prog: u32, vers: u32, proc: u32) -> Class {
    if prog != nfs3::PROGRAM || vers != nfs3::VERSION {
        return Class::Read; // MOUNT and PORTMAP change nothing on the device
    }
    match proc {
        // SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR,
        // RENAME, LINK (RFC 1813 procedure numbers).
        2 | 7..=15 => Class::Change,
        21 => Class::Commit,
        _ => Class::Read,
    }
}

/// Bytes of a reply-cache key.
pub const KEY_LEN: usize = 16 + 4 * 6;

/// The reply cache's key of a call: the client's address without the port
/// (a client reconnects from another port after a server restart; IPv4 as
/// IPv4-mapped IPv6), then the xid, program, version and procedure, and
/// the length and CRC-32C of the argument bytes (so an xid reused with
/// other arguments is executed), each u32 little-endian.
pub fn reply_key(
    client: IpAddr,
    xid: u32,
    prog: u32,
    vers: u32,
    proc: u32,
    args: &[u8],
) -> Vec<u8> {
    let ip = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut k = Vec::with_capacity(KEY_LEN);
    k.extend_from_slice(&ip.octets());
    for v in [
        xid,
        prog,
        vers,
        proc,
        args.len() as u32,
        crc32c::crc32c(args),
    ] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    k
}

/// A reply and the number of changes that must be durable before it is
/// sent.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub after: u64,
}

/// Counters of what has been applied, guarded by the apply lock.
#[derive(Default)]
struct Applied {
    /// Changes applied (each changing call and each UNSTABLE write).
    seq: u64,
    /// The last change that is not an UNSTABLE write.
    strict: u64,
    /// Replies recorded since the last commit.
    replies: u64,
    /// Commits that held replies (for the crash hook).
    commits_with_replies: u64,
}

/// The server: the file system, the reply cache in it, the commits.
pub struct Server {
    nfs: Arc<VsicNfs>,
    ctx: Context,
    /// Held while a call runs and records its reply, and while a commit
    /// runs: a commit never splits a change from its reply.
    apply: Mutex<Applied>,
    /// Changes durable (the `seq` the last successful commit covered).
    durable: watch::Sender<u64>,
    commit_wanted: Notify,
    crash_after: Option<u64>,
}

impl Server {
    /// A server for `nfs` listening on `local_port`; `crash_after`: the
    /// test hook (abort after that many commits holding replies).
    pub fn new(nfs: VsicNfs, local_port: u16, crash_after: Option<u64>) -> Arc<Server> {
        let nfs = Arc::new(nfs);
        let ctx = Context {
            local_port,
            client_addr: String::new(),
            auth: auth_unix::default(),
            vfs: nfs.clone(),
            mount_signal: None,
            export_name: Arc::new("/".to_string()),
            // fernfs's own tracker: not used by the procedures we call.
            transaction_tracker: Arc::new(TransactionTracker::new(Duration::from_secs(60))),
            portmap_table: Arc::new(RwLock::new(PortmapTable::default())),
        };
        Arc::new(Server {
            nfs,
            ctx,
            apply: Mutex::new(Applied::default()),
            durable: watch::channel(0).0,
            commit_wanted: Notify::new(),
            crash_after,
        })
    }

    pub fn nfs(&self) -> &VsicNfs {
        &self.nfs
    }

    /// Runs one call (a whole RPC record from `client`); `None` when no
    /// reply can be made (not a call).
    pub async fn call(&self, record: &[u8], client: IpAddr) -> Option<Reply> {
        let mut input = Cursor::new(record);
        let msg: rpc_msg = match deserialize(&mut input) {
            Ok(m) => m,
            Err(e) => {
                log::debug!("vsic-nfsd: {client}: undecodable RPC header: {e}");
                return None;
            }
        };
        let xid = msg.xid;
        let rpc_body::CALL(call) = msg.body else {
            log::debug!("vsic-nfsd: {client}: a reply where a call was expected");
            return None;
        };
        let class = classify(call.prog, call.vers, call.proc);
        let args = &record[input.position() as usize..];
        let key = (class == Class::Change)
            .then(|| reply_key(client, xid, call.prog, call.vers, call.proc, args));

        let mut a = self.apply.lock().await;
        if let Some(key) = &key {
            if let Some(r) = self.nfs.lock().reply(key) {
                log::debug!("vsic-nfsd: {client}: xid {xid:#x} answered from the reply cache");
                // Recorded, maybe not yet committed: wait for all.
                return Some(Reply {
                    bytes: r.to_vec(),
                    after: a.seq,
                });
            }
        }
        // ctx.client_addr stays empty: only fernfs's own TCP front and its
        // transaction tracker read it, and neither runs here (formatting
        // the address was 1% of the server's time under TCG).
        let mut ctx = self.ctx.clone();
        if let auth_flavor::AUTH_UNIX = call.cred.flavor {
            if let Ok(auth) = deserialize::<auth_unix>(&mut Cursor::new(&call.cred.body)) {
                ctx.auth = auth;
            }
        }
        let mut out = Vec::with_capacity(256);
        let done = if call.rpcvers != 2 {
            xdr::rpc::rpc_vers_mismatch(xid)
                .serialize(&mut out)
                .map_err(anyhow_free)
        } else {
            match call.prog {
                nfs3::PROGRAM => v3::handle_nfs(xid, call, &mut input, &mut out, &ctx)
                    .await
                    .map_err(|e| e.to_string()),
                mount::PROGRAM => mount_proc::handle_mount(xid, call, &mut input, &mut out, &ctx)
                    .await
                    .map_err(|e| e.to_string()),
                portmap::PROGRAM => {
                    portmap_proc::handle_portmap(xid, &call, &mut input, &mut out, &mut ctx)
                        .map_err(|e| e.to_string())
                }
                _ => xdr::rpc::prog_unavail_reply_message(xid)
                    .serialize(&mut out)
                    .map_err(anyhow_free),
            }
        };
        if let Err(e) = done {
            // The arguments did not decode (the procedures decode before
            // they change anything).
            log::debug!("vsic-nfsd: {client}: xid {xid:#x}: {e}");
            out.clear();
            xdr::rpc::garbage_args_reply_message(xid)
                .serialize(&mut out)
                .ok()?;
        }
        let unstable = self.nfs.take_unstable();
        let after = match class {
            Class::Read => a.strict,
            Class::Commit => a.seq,
            Class::Change => {
                let key = key.expect("a key for every change");
                if let Err(e) = self.nfs.lock().record_reply(&key, &out) {
                    log::error!("vsic-nfsd: recording a reply: {e}");
                }
                a.seq += 1;
                a.replies += 1;
                if unstable {
                    a.strict
                } else {
                    a.strict = a.seq;
                    a.seq
                }
            }
        };
        drop(a);
        if after > *self.durable.borrow() {
            self.commit_wanted.notify_one();
        }
        Some(Reply { bytes: out, after })
    }

    /// Waits until the first `after` changes are durable.
    pub async fn durable(&self, after: u64) {
        let mut rx = self.durable.subscribe();
        // The sender lives as long as self.
        let _ = rx.wait_for(|&d| d >= after).await;
    }

    /// The committer: commits whenever a reply waits for a change that is
    /// not durable yet, everything applied up to then at once. A failed
    /// commit is retried after a second (the replies waiting for it are
    /// not sent meanwhile; clients retransmit).
    pub async fn committer(self: Arc<Self>) {
        loop {
            self.commit_wanted.notified().await;
            loop {
                let mut a = self.apply.lock().await;
                let target = a.seq;
                if target <= *self.durable.borrow() {
                    break;
                }
                match self.nfs.sync() {
                    Ok(()) => {
                        if a.replies > 0 {
                            a.replies = 0;
                            a.commits_with_replies += 1;
                            if self.crash_after == Some(a.commits_with_replies) {
                                eprintln!(
                                    "vsic-nfsd: VSIC_NFSD_CRASH_AFTER_COMMIT: aborting after commit {} (its replies unsent)",
                                    a.commits_with_replies
                                );
                                std::process::abort();
                            }
                        }
                        drop(a);
                        self.durable.send_replace(target);
                        break;
                    }
                    Err(e) => {
                        drop(a);
                        log::error!("vsic-nfsd: commit failed (retrying in 1 s): {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

fn anyhow_free(e: std::io::Error) -> String {
    e.to_string()
}
