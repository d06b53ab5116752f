//! Crash safety: SIGKILL the daemon while one thread runs admin commands
//! and another writes and flushes, restart it on the same drives, and
//! check that everything acknowledged survived: every completed admin
//! command (VSA sizes, deletions, attachments) and every block whose write
//! completed before a completed FLUSH.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use vsic::admin::{AdminClient, AdminError, Created};
use vsic::{CompletionMode, Device, OpenOptions, Request, VsaHandle, VsaRange};
use vsic_abi::CapToken;

const ROUNDS: u32 = 5;
/// VSIC whose slots the admin thread attaches and detaches.
const ADMIN_VSIC: u32 = 1;
const ADMIN_SLOTS: u32 = 6;
/// VSIC carrying the data thread's VSA in slot 0.
const DATA_VSIC: u32 = 0;
const DATA_VSA_SIZE: u64 = 64 * MIB;
const BLOCK: u64 = 4096;
/// Writes per FLUSH.
const BATCH: u64 = 8;
/// Blocks each round may write; every block is written at most once, so
/// its expected content never changes.
const BLOCKS_PER_ROUND: u64 = DATA_VSA_SIZE / BLOCK / ROUNDS as u64;
/// Most VSAs the admin thread keeps alive at once.
const MAX_LIVE: usize = 6;
/// A synchronous admin command never takes this long on a live daemon;
/// after the kill it bounds how long the admin thread lingers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct KnownVsa {
    token: CapToken,
    size: u64,
}

/// An admin command sent whose reply never came: its effect may or may not
/// have been committed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum InFlight {
    Create,
    Resize { vsa: u64, from: u64, to: u64 },
    Delete { vsa: u64 },
    Attach { slot: u32, vsa: u64 },
    Detach { slot: u32, vsa: u64 },
}

/// What the admin side knows was committed.
#[derive(Debug, Default)]
struct Ledger {
    vsas: BTreeMap<u64, KnownVsa>,
    deleted: Vec<u64>,
    /// ADMIN_VSIC's slots.
    slots: BTreeMap<u32, u64>,
    in_flight: Option<InFlight>,
    /// VSAs whose create reply was lost: no token, never touched again.
    orphans: Vec<u64>,
    completed: u64,
}

impl Ledger {
    fn attached(&self, vsa: u64) -> bool {
        self.slots.values().any(|&v| v == vsa)
    }

    /// Records that `op` completed (`created` is the reply of a create).
    fn commit(&mut self, op: InFlight, created: Option<Created>) {
        match op {
            InFlight::Create => {
                let c = created.expect("a completed create has a reply");
                self.vsas.insert(
                    c.vsa_id,
                    KnownVsa {
                        token: c.token,
                        size: c.size,
                    },
                );
            }
            InFlight::Resize { vsa, to, .. } => {
                self.vsas.get_mut(&vsa).expect("resized VSA").size = to
            }
            InFlight::Delete { vsa } => {
                self.vsas.remove(&vsa);
                self.deleted.push(vsa);
            }
            InFlight::Attach { slot, vsa } => {
                self.slots.insert(slot, vsa);
            }
            InFlight::Detach { slot, .. } => {
                self.slots.remove(&slot);
            }
        }
        self.in_flight = None;
    }
}

/// Runs admin commands until the daemon goes away. Every command is
/// recorded as in flight before it is sent and as committed once its reply
/// arrives; a refusal (e.g. no space) commits nothing.
fn admin_loop(admin: &AdminClient, ledger: &Mutex<Ledger>, rng: &mut Rng) {
    loop {
        let plan = {
            let l = ledger.lock().expect("ledger");
            let live: Vec<u64> = l.vsas.keys().copied().collect();
            let pick = live.get(rng.below(live.len() as u64) as usize).copied();
            match (rng.below(5), pick) {
                (_, None) | (0, _) if live.len() < MAX_LIVE => InFlight::Create,
                (_, None) => continue,
                (1, Some(vsa)) => {
                    let from = l.vsas[&vsa].size;
                    let to = (1 + rng.below(4)) * MIB;
                    if to == from {
                        continue;
                    }
                    InFlight::Resize { vsa, from, to }
                }
                (2, Some(vsa)) if !l.attached(vsa) => {
                    match (0..ADMIN_SLOTS).find(|s| !l.slots.contains_key(s)) {
                        Some(slot) => InFlight::Attach { slot, vsa },
                        None => continue,
                    }
                }
                (3, Some(_)) if !l.slots.is_empty() => {
                    let (&slot, &vsa) = l
                        .slots
                        .iter()
                        .nth(rng.below(l.slots.len() as u64) as usize)
                        .expect("slot");
                    InFlight::Detach { slot, vsa }
                }
                (_, Some(vsa)) if !l.attached(vsa) && live.len() > 2 => InFlight::Delete { vsa },
                _ => continue,
            }
        };
        let token = |vsa: u64| ledger.lock().expect("ledger").vsas[&vsa].token.clone();
        ledger.lock().expect("ledger").in_flight = Some(plan);
        let outcome = match plan {
            InFlight::Create => {
                let size = (1 + rng.below(3)) * MIB;
                admin.vsa_create(size, rng.below(3) as u32).map(|c| {
                    assert_eq!(c.size, size, "created size");
                    Some(c)
                })
            }
            InFlight::Resize { vsa, to, .. } => admin.vsa_resize(&token(vsa), to).map(|size| {
                assert_eq!(size, to, "resized size");
                None
            }),
            InFlight::Delete { vsa } => admin.vsa_delete(&token(vsa)).map(|()| None),
            InFlight::Attach { slot, vsa } => admin
                .attach(ADMIN_VSIC, slot, &token(vsa), rng.below(2) == 0)
                .map(|()| None),
            InFlight::Detach { slot, .. } => admin.detach(ADMIN_VSIC, slot).map(|()| None),
        };
        let mut l = ledger.lock().expect("ledger");
        match outcome {
            Ok(created) => {
                l.commit(plan, created);
                l.completed += 1;
            }
            // Refused: nothing changed (a full pool, for instance).
            Err(AdminError::Device(_)) => l.in_flight = None,
            // The daemon is gone (or stalled): the outcome stays unknown.
            Err(_) => return,
        }
    }
}

/// What the data side knows about its blocks.
#[derive(Debug, Default)]
struct DataLedger {
    /// Blocks written and covered by a completed FLUSH, with their seed.
    durable: Vec<u64>,
    flushes: u64,
}

fn block_seed(block: u64) -> u64 {
    0xda7a_0000_0000 + block
}

/// Writes blocks `first..first + BLOCKS_PER_ROUND` in batches, flushing
/// after each, until `killed` is set. Never waits on the device for long:
/// after the kill no completion will come.
fn data_loop(dev: &Device, first: u64, ledger: &Mutex<DataLedger>, killed: &AtomicBool) {
    let vsa = VsaHandle::new(0);
    let mut bufs: Vec<_> = (0..BATCH)
        .map(|_| dev.alloc_dma(BLOCK as usize).expect("alloc"))
        .collect();
    let mut block = first;
    // Waits for `count` completions on queue 0; false once the daemon is gone.
    let wait_for = |count: usize| -> bool {
        let mut got = 0;
        while got < count {
            dev.poll(0, &mut |c| {
                assert_eq!(c.result, Ok(()), "request {} failed", c.user_data);
                got += 1;
            });
            if got < count {
                if killed.load(Ordering::Acquire) {
                    return false;
                }
                let _ = dev.wait(0, Some(Duration::from_millis(20)));
            }
        }
        true
    };
    while block + BATCH <= first + BLOCKS_PER_ROUND {
        // No request uses the buffers now: the previous batch completed.
        for (i, buf) in bufs.iter_mut().enumerate() {
            buf.as_mut_slice()
                .copy_from_slice(&pattern(block_seed(block + i as u64), BLOCK as usize));
        }
        let mems: Vec<_> = bufs.iter().map(|b| [b.mem()]).collect();
        let ranges: Vec<_> = (0..BATCH)
            .map(|i| [VsaRange::new((block + i) * BLOCK, BLOCK)])
            .collect();
        for (i, (mem, range)) in mems.iter().zip(&ranges).enumerate() {
            dev.submit(0, Request::write(vsa, mem, range), block + i as u64)
                .unwrap_or_else(|e| panic!("submit the write of block {}: {e}", block + i as u64));
        }
        if !wait_for(BATCH as usize) {
            return;
        }
        dev.submit(0, Request::flush(), u64::MAX)
            .unwrap_or_else(|e| panic!("submit a flush: {e}"));
        if !wait_for(1) {
            return;
        }
        let mut l = ledger.lock().expect("data ledger");
        l.durable.extend(block..block + BATCH);
        l.flushes += 1;
        drop(l);
        block += BATCH;
    }
    // Budget used up: idle until the kill.
    while !killed.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(5));
    }
}

/// After a restart: the pool must hold exactly what the ledger says, up to
/// the one command whose reply was lost. Brings the ledger in line with
/// what that command turned out to do.
fn check_admin_state(admin: &AdminClient, ledger: &mut Ledger, data_vsa: u64, round: u32) {
    let listed: BTreeMap<u64, u64> = admin
        .list_vsas()
        .expect("list VSAs")
        .into_iter()
        .map(|v| (v.vsa_id, v.size))
        .collect();
    let in_flight = ledger.in_flight.take();
    for (&id, known) in &mut ledger.vsas {
        let got = listed.get(&id).copied();
        match in_flight {
            Some(InFlight::Resize { vsa, from, to }) if vsa == id => {
                assert!(
                    got == Some(from) || got == Some(to),
                    "round {round}: VSA {id} resized {from}->{to}: {got:?}"
                );
            }
            Some(InFlight::Delete { vsa }) if vsa == id => {
                assert!(
                    got.is_none() || got == Some(known.size),
                    "round {round}: VSA {id} being deleted: {got:?}"
                )
            }
            _ => assert_eq!(
                got,
                Some(known.size),
                "round {round}: VSA {id} (completed operations are durable)"
            ),
        }
        if let Some(size) = got {
            known.size = size;
        }
    }
    ledger.vsas.retain(|id, _| {
        let kept = listed.contains_key(id);
        if !kept {
            ledger.deleted.push(*id);
        }
        kept
    });
    for id in &ledger.deleted {
        assert!(
            !listed.contains_key(id),
            "round {round}: deleted VSA {id} came back"
        );
    }
    let unknown: Vec<u64> = listed
        .keys()
        .copied()
        .filter(|id| {
            *id != data_vsa && !ledger.vsas.contains_key(id) && !ledger.orphans.contains(id)
        })
        .collect();
    match (unknown.as_slice(), in_flight) {
        ([], _) => {}
        ([id], Some(InFlight::Create)) => ledger.orphans.push(*id),
        _ => panic!("round {round}: VSAs nobody created: {unknown:?} (in flight: {in_flight:?})"),
    }

    let vsics = admin.list_vsics().expect("list VSICs");
    let data_slot = vsics[DATA_VSIC as usize].slots[0];
    assert_eq!(
        data_slot.vsa_id, data_vsa,
        "round {round}: the data VSA stays attached"
    );
    let slots = &vsics[ADMIN_VSIC as usize].slots;
    for slot in 0..ADMIN_SLOTS {
        let got = slots[slot as usize]
            .is_attached()
            .then_some(slots[slot as usize].vsa_id);
        let want = ledger.slots.get(&slot).copied();
        match in_flight {
            Some(InFlight::Attach { slot: s, vsa }) if s == slot => {
                assert!(
                    got == want || got == Some(vsa),
                    "round {round}: slot {slot} being attached: {got:?}"
                )
            }
            Some(InFlight::Detach { slot: s, .. }) if s == slot => {
                assert!(
                    got == want || got.is_none(),
                    "round {round}: slot {slot} being detached: {got:?}"
                )
            }
            _ => assert_eq!(got, want, "round {round}: VSIC {ADMIN_VSIC} slot {slot}"),
        }
        match got {
            Some(vsa) => ledger.slots.insert(slot, vsa),
            None => ledger.slots.remove(&slot),
        };
    }

    // No extent is lost or counted twice across the crash.
    let id = admin.identify().expect("identify");
    let used: u64 = admin
        .list_vsas()
        .expect("list")
        .iter()
        .map(|v| u64::from(v.extents))
        .sum();
    assert_eq!(
        id.free_extents + used,
        id.total_extents,
        "round {round}: extent accounting after restart"
    );
}

/// Reads every durable block back.
fn check_durable_blocks(dev: &Device, durable: &[u64], round: u32) {
    const CHUNK: u64 = 4 * MIB;
    let mut buf = dev.alloc_dma(CHUNK as usize).expect("alloc");
    let mut loaded: Option<u64> = None;
    for &block in durable {
        let chunk = block * BLOCK / CHUNK;
        if loaded != Some(chunk) {
            dev.read_at(0, VsaHandle::new(0), chunk * CHUNK, &mut buf)
                .expect("read the data VSA");
            loaded = Some(chunk);
        }
        let at = (block * BLOCK - chunk * CHUNK) as usize;
        let got = &buf.as_slice()[at..at + BLOCK as usize];
        assert_same(
            got,
            &pattern(block_seed(block), BLOCK as usize),
            &format!("round {round}: durable block {block}"),
        );
    }
}

#[test]
fn completed_commands_and_flushed_writes_survive_sigkill() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let setup = Setup {
        drives: vec!["128M", "128M"],
        ..Setup::default()
    };
    let mut d = Daemon::start_with("crash", setup);
    let data_vsa = {
        let admin = d.admin();
        let v = admin
            .vsa_create(DATA_VSA_SIZE, 2)
            .expect("create the data VSA");
        admin
            .attach(DATA_VSIC, 0, &v.token, false)
            .expect("attach the data VSA");
        v.vsa_id
    };
    let ledger = Mutex::new(Ledger::default());
    let data = Mutex::new(DataLedger::default());
    let started = Instant::now();
    let mut busy_rounds = 0;

    for round in 0..ROUNDS {
        let admin = open_admin(&d);
        let dev = Device::open(&d.vsic_spec(DATA_VSIC), &data_options())
            .unwrap_or_else(|e| panic!("open the data VSIC: {e}; log:\n{}", d.log()));
        let killed = AtomicBool::new(false);
        let (admin_before, flushes_before) = (
            ledger.lock().unwrap().completed,
            data.lock().unwrap().flushes,
        );
        let kill_after = Duration::from_millis(100 + rng.below(500));
        let mut admin_rng = Rng(rng.next_u64() | 1);
        thread::scope(|s| {
            s.spawn(|| admin_loop(&admin, &ledger, &mut admin_rng));
            s.spawn(|| data_loop(&dev, u64::from(round) * BLOCKS_PER_ROUND, &data, &killed));
            thread::sleep(kill_after);
            // A slow drive sync can hold both threads up: kill only once
            // each has completed something this round, so every kill lands
            // among running operations.
            let progressed = || {
                ledger.lock().unwrap().completed > admin_before
                    && data.lock().unwrap().flushes > flushes_before
            };
            wait_until(IO_TIMEOUT, progressed);
            d.kill();
            killed.store(true, Ordering::Release);
        });
        drop((admin, dev));
        let (admin_done, flushes) = (
            ledger.lock().unwrap().completed,
            data.lock().unwrap().flushes,
        );
        eprintln!(
            "round {round} at {:?}: killed after {kill_after:?}; {} admin commands, {} flushes completed; in flight: {:?}",
            started.elapsed(),
            admin_done - admin_before,
            flushes - flushes_before,
            ledger.lock().unwrap().in_flight
        );
        if admin_done > admin_before && flushes > flushes_before {
            busy_rounds += 1;
        }

        d.restart();
        let admin = open_admin(&d);
        check_admin_state(&admin, &mut ledger.lock().unwrap(), data_vsa, round);
        let dev =
            Device::open(&d.vsic_spec(DATA_VSIC), &data_options()).expect("reopen the data VSIC");
        check_durable_blocks(&dev, &data.lock().unwrap().durable, round);
    }
    eprintln!(
        "VSAs whose create reply was lost: {:?}",
        ledger.lock().unwrap().orphans
    );
    assert_eq!(
        busy_rounds, ROUNDS,
        "every kill must hit both threads mid-work"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

fn data_options() -> OpenOptions {
    vsic_options(1, CompletionMode::Interrupt)
}

fn open_admin(d: &Daemon) -> AdminClient {
    let opts = OpenOptions {
        queues: Some(1),
        mem_size: 8 << 20,
        sync_timeout: Some(ADMIN_TIMEOUT),
        ..OpenOptions::default()
    };
    let spec = format!("vhost-user:{}", d.pf_socket().display());
    AdminClient::new(
        Device::open(&spec, &opts)
            .unwrap_or_else(|e| panic!("open the PF: {e}; log:\n{}", d.log())),
    )
}
