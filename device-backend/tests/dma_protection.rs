//! DMA protection on the real daemon: the PF's window commands and their
//! refusals, and an enforced VSIC whose client points buffers and rings
//! outside its windows. On the host a vhost-user client's guest-physical
//! addresses are the IOVAs of the memory it shared, so its windows are
//! ranges of that region.

mod common;

use std::time::Duration;

use common::*;
use vsic::admin::{AdminClient, AdminError};
use vsic::transport::Transport;
use vsic::virtqueue::Buf;
use vsic::DmaBuffer;
use vsic_abi::admin::{DmaMode, FLAG_DMA_READ, FLAG_DMA_WRITE, MAX_DMA_WINDOWS};
use vsic_abi::records::DmaWindow;
use vsic_abi::virtio::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vsic_abi::AdminStatus;

const RW: u32 = FLAG_DMA_READ | FLAG_DMA_WRITE;
/// How long a request on a stopped queue is given to (not) complete.
const QUIET: Duration = Duration::from_millis(500);

fn refused<T: std::fmt::Debug>(r: Result<T, AdminError>, want: AdminStatus, what: &str) {
    match r {
        Err(AdminError::Device(s)) if s == want => {}
        other => panic!("{what}: {other:?} instead of {want:?}"),
    }
}

/// A daemon with two VSICs; VSIC 0 has a 4 MiB VSA at slot 0.
fn daemon(tag: &str) -> Daemon {
    let d = Daemon::start_with(
        tag,
        Setup {
            vsics: 2,
            queues: 1,
            ..Setup::default()
        },
    );
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    d
}

fn violations(admin: &AdminClient, vsic: u32) -> u64 {
    stats_of(admin, vsic).0.protection_violations
}

/// (start, end) of the memory `drv` shared with the device.
fn region(drv: &RawDriver) -> (u64, u64) {
    let r = drv.transport.dma_region();
    (r.iova(), r.iova() + r.len() as u64)
}

/// Windows covering `[start, end)` except `[hole, hole + len)`.
fn cover_except(admin: &AdminClient, vsic: u32, (start, end): (u64, u64), hole: u64, len: u64) {
    admin
        .dma_window_add(vsic, start, hole - start, RW)
        .expect("window below the hole");
    admin
        .dma_window_add(vsic, hole + len, end - hole - len, RW)
        .expect("window above the hole");
}

fn readable(buf: &DmaBuffer, len: usize) -> Buf {
    Buf {
        iova: buf.iova(),
        len: len as u32,
        device_writes: false,
    }
}

/// A 16-byte request header of `kind` at `sector` in a buffer of its own.
fn header(drv: &RawDriver, kind: u32, sector: u64) -> DmaBuffer {
    let mut h = drv.alloc(16);
    h.as_mut_slice()[..4].copy_from_slice(&kind.to_le_bytes());
    h.as_mut_slice()[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Sends one request through the raw driver and waits for it.
fn io(drv: &mut RawDriver, kind: u32, buf: &DmaBuffer, len: usize) -> Done {
    let data = if kind == VIRTIO_BLK_T_IN {
        writable(buf, len)
    } else {
        readable(buf, len)
    };
    let sent = drv.send(kind, 0, &[data], true);
    drv.wait(&sent, IO_TIMEOUT).expect("completion")
}

#[test]
fn dma_window_commands_and_their_refusals_over_the_pf() {
    let d = daemon("dma-admin");
    let admin = d.admin();
    assert_eq!(admin.dma_windows(1).unwrap(), (DmaMode::Open, vec![]));
    assert_eq!(admin.dma_window_add(1, 0x10_0000, 0x1000, RW).unwrap(), 1);
    assert_eq!(
        admin
            .dma_window_add(1, 0x2000, 0x1000, FLAG_DMA_READ)
            .unwrap(),
        2
    );
    assert_eq!(
        admin.dma_set_mode(1, DmaMode::Enforced).unwrap(),
        DmaMode::Open
    );
    let (mode, w) = admin.dma_windows(1).unwrap();
    assert_eq!(mode, DmaMode::Enforced);
    assert_eq!(
        w.iter()
            .map(|w| (w.start, w.len, w.flags))
            .collect::<Vec<_>>(),
        [(0x2000, 0x1000, FLAG_DMA_READ), (0x10_0000, 0x1000, RW)]
    );
    assert_eq!(admin.dma_windows(0).unwrap(), (DmaMode::Open, vec![]));

    let add = |start, len, flags| admin.dma_window_add(1, start, len, flags);
    refused(
        add(0x2800, 0x1000, RW),
        AdminStatus::WindowOverlap,
        "overlap",
    );
    refused(
        add(0x1000, 0x1001, RW),
        AdminStatus::WindowOverlap,
        "overlap",
    );
    refused(add(0x8000, 0, RW), AdminStatus::ZeroSize, "zero length");
    refused(
        add(u64::MAX - 0xfff, 0x2000, RW),
        AdminStatus::WindowOverflow,
        "overflow",
    );
    refused(add(0x8000, 1, 0), AdminStatus::InvalidArgument, "no access");
    refused(add(0x8000, 1, 1 << 7), AdminStatus::UnknownFlags, "flags");
    refused(
        admin.dma_window_add(2, 0x8000, 1, RW),
        AdminStatus::NoSuchVsic,
        "add on an unknown VSIC",
    );
    refused(
        admin.dma_set_mode(2, DmaMode::Enforced),
        AdminStatus::NoSuchVsic,
        "mode of an unknown VSIC",
    );
    refused(
        admin.dma_windows(7),
        AdminStatus::NoSuchVsic,
        "list of an unknown VSIC",
    );
    refused(
        admin.dma_window_remove(2, 0x2000, 0x1000),
        AdminStatus::NoSuchVsic,
        "remove on an unknown VSIC",
    );
    refused(
        admin.dma_window_remove(1, 0x2000, 0x800),
        AdminStatus::NoSuchWindow,
        "remove of a window not added",
    );
    let mut bad_mode = vsic_abi::AdminCommand::new(vsic_abi::Opcode::DmaSetMode);
    bad_mode.vsic = 1;
    bad_mode.args[0] = 2;
    let (c, _) = admin.command(&bad_mode, &[], 0).unwrap();
    assert_eq!(c.status(), Some(AdminStatus::UnknownMode));
    assert_eq!(admin.dma_windows(1).unwrap().1.len(), 2, "nothing changed");

    assert_eq!(admin.dma_window_remove(1, 0x2000, 0x1000).unwrap(), 1);
    for i in 1..MAX_DMA_WINDOWS as u64 {
        admin
            .dma_window_add(1, 0x100_0000 * i, 0x1000, RW)
            .expect("below the limit");
    }
    refused(
        add(1 << 50, 1, RW),
        AdminStatus::TooManyWindows,
        "window past the limit",
    );
    assert_eq!(
        admin.dma_windows(1).unwrap().1.len(),
        MAX_DMA_WINDOWS,
        "a full list comes back whole"
    );
    assert_eq!(
        admin.dma_set_mode(1, DmaMode::Open).unwrap(),
        DmaMode::Enforced
    );
}

#[test]
fn enforced_dma_refuses_buffers_outside_the_windows_untouched() {
    let d = daemon("dma-enforced");
    let admin = d.admin();
    let mut drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    // Open mode first: the disk gets a known block.
    let mut good = drv.alloc(4096);
    good.as_mut_slice().copy_from_slice(&pattern(1, 4096));
    assert_eq!(io(&mut drv, VIRTIO_BLK_T_OUT, &good, 4096).status, 0);

    // Enforced, with every page but the victim's in a window.
    let mut victim = drv.alloc(4096);
    victim.as_mut_slice().fill(0x5a);
    cover_except(&admin, 0, region(&drv), victim.iova(), 4096);
    admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce");
    let before = violations(&admin, 0);

    // A read into the victim: IOERR, not a byte of it written.
    let done = io(&mut drv, VIRTIO_BLK_T_IN, &victim, 4096);
    assert_eq!(done.status, VIRTIO_BLK_S_IOERR);
    assert_eq!(done.used.len, 0);
    assert_eq!(
        victim.as_slice(),
        &[0x5a; 4096][..],
        "victim memory written"
    );

    // A write from the victim: IOERR, the disk unchanged.
    let done = io(&mut drv, VIRTIO_BLK_T_OUT, &victim, 4096);
    assert_eq!(done.status, VIRTIO_BLK_S_IOERR);

    // A header in the victim: IOERR, the status byte (inside) written.
    victim.as_mut_slice()[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    victim.as_mut_slice()[4..16].fill(0);
    let data = drv.alloc(4096);
    let mut status = drv.alloc(1);
    status.as_mut_slice()[0] = 0xff;
    drv.send_chain(
        &victim,
        &[writable(&data, 4096)],
        Some(writable(&status, 1)),
    );
    let used = wait_used(&mut drv);
    assert_eq!(status.as_slice()[0], VIRTIO_BLK_S_IOERR);
    assert_eq!(used.len, 0);

    // The status byte in the victim: nothing written at all, used length 0.
    let hdr = header(&drv, VIRTIO_BLK_T_IN, 0);
    drv.send_chain(&hdr, &[writable(&data, 4096)], Some(writable(&victim, 1)));
    let used = wait_used(&mut drv);
    assert_eq!(used.len, 0);
    assert_eq!(
        victim.as_slice()[0],
        VIRTIO_BLK_T_IN as u8,
        "status written"
    );

    assert_eq!(violations(&admin, 0), before + 4, "each refusal counted");
    assert!(d.log().contains("DMA"), "logged:\n{}", d.log());

    // Within its windows the client works normally, and the disk still
    // holds what was written before the refused write.
    let mut back = drv.alloc(4096);
    back.as_mut_slice().fill(0);
    assert_eq!(
        io(&mut drv, VIRTIO_BLK_T_IN, &back, 4096).status,
        VIRTIO_BLK_S_OK
    );
    assert_same(back.as_slice(), &pattern(1, 4096), "disk after refusals");
    good.as_mut_slice().copy_from_slice(&pattern(2, 4096));
    assert_eq!(
        io(&mut drv, VIRTIO_BLK_T_OUT, &good, 4096).status,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        io(&mut drv, VIRTIO_BLK_T_IN, &back, 4096).status,
        VIRTIO_BLK_S_OK
    );
    assert_same(back.as_slice(), &pattern(2, 4096), "write inside windows");
    assert_eq!(violations(&admin, 0), before + 4);
}

/// The next used element of the raw driver's queue (bounded wait).
fn wait_used(drv: &mut RawDriver) -> vsic::virtqueue::Used {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(u) = drv.vq.pop_used() {
            return u;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion in time"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rings_outside_the_windows_leave_the_queue_stopped() {
    let d = daemon("dma-rings");
    let admin = d.admin();
    let mut drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let addrs = drv.vq.addrs();
    let ring_end = addrs.used + 6 + 8 * u64::from(addrs.size);
    let (start, end) = region(&drv);
    // Everything but the rings.
    admin
        .dma_window_add(0, ring_end, end - ring_end, RW)
        .expect("window");
    assert!(addrs.desc >= start);
    admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce");
    let before = violations(&admin, 0);
    let buf = drv.alloc(4096);
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&buf, 4096)], true);
    assert!(
        drv.wait(&sent, QUIET).is_none(),
        "a queue whose rings are outside the windows served a request"
    );
    assert!(violations(&admin, 0) > before);
    // Once the rings are covered, the next kick serves both requests.
    admin
        .dma_window_add(0, addrs.desc, ring_end - addrs.desc, RW)
        .expect("ring window");
    let again = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&buf, 4096)], true);
    let first = wait_used(&mut drv);
    assert_eq!(first.head, sent.head);
    assert_eq!(sent.status.as_slice()[0], VIRTIO_BLK_S_OK);
    let done = drv.wait(&again, IO_TIMEOUT).expect("second request");
    assert_eq!(done.status, VIRTIO_BLK_S_OK);
}

/// A new frontend on VSIC 0 sends one read: it must not be served, its
/// buffer must stay untouched and the VSIC's violation counter must move.
fn assert_a_new_frontend_reaches_nothing(d: &Daemon, admin: &AdminClient, served: &str) {
    let before = violations(admin, 0);
    let mut drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let mut buf = drv.alloc(4096);
    buf.as_mut_slice().fill(0x33);
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&buf, 4096)], true);
    assert!(drv.wait(&sent, QUIET).is_none(), "{served}");
    assert_eq!(buf.as_slice(), &[0x33; 4096][..]);
    assert!(violations(admin, 0) > before);
}

#[test]
fn an_enforced_vsic_comes_back_enforced_with_no_windows_after_a_restart() {
    let mut d = daemon("dma-restart");
    {
        let admin = d.admin();
        admin
            .dma_window_add(0, 0, u64::MAX / 2, RW)
            .expect("window over everything");
        admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce");
        admin
            .dma_window_add(1, 0, u64::MAX / 2, RW)
            .expect("window of an open VSIC");
    }
    d.restart();
    let admin = d.admin();
    assert_eq!(admin.dma_windows(0).unwrap(), (DmaMode::Enforced, vec![]));
    assert_eq!(admin.dma_windows(1).unwrap(), (DmaMode::Open, vec![]));
    assert_a_new_frontend_reaches_nothing(
        &d,
        &admin,
        "an enforced VSIC with no windows served a request after a restart",
    );
}

/// A VSIC's frontend leaving (its QEMU gone: the guest shut down, rebooted
/// into a new QEMU, or is reconnecting) takes the VSIC's windows along:
/// they name memory of a guest that may be gone. The mode stays, so the
/// next frontend finds an enforced VSIC with nothing it may reach.
#[test]
fn a_vsics_windows_go_when_its_frontend_leaves_and_the_mode_stays() {
    let d = daemon("dma-frontend");
    let admin = d.admin();
    // The rest of the guest: VSIC 1's frontend stays throughout.
    let _rest = RawDriver::open(&d.vsic_socket(1), 4 << 20, 16);
    let drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let (start, end) = region(&drv);
    admin
        .dma_window_add(0, start, end - start, RW)
        .expect("window");
    admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce");
    admin.dma_window_add(1, start, 4096, RW).expect("VSIC 1");
    drop(drv);
    // The disconnect is noticed asynchronously.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while admin.dma_windows(0).unwrap().1.len() == 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(admin.dma_windows(0).unwrap(), (DmaMode::Enforced, vec![]));
    // Another VSIC's windows are its own business: its frontend stayed.
    assert_eq!(admin.dma_windows(1).unwrap().1.len(), 1);
    // The next frontend, even at the same addresses, reaches nothing.
    assert_a_new_frontend_reaches_nothing(&d, &admin, "the old windows served the next frontend");
}

/// When the last frontend leaves (the PF's and every VSIC's: the guest's
/// QEMU is gone), no guest holds any VSIC: every VSIC goes back to open mode
/// with no windows, committed, for the kernel of whatever guest boots next
/// (the control plane enforces a VSIC again when it hands it to a user).
/// While one frontend stays, the others' modes stay.
#[test]
fn the_last_frontend_leaving_opens_every_vsic_for_the_next_guest() {
    let mut d = daemon("dma-all-gone");
    let admin = d.admin();
    admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce 0");
    admin.dma_set_mode(1, DmaMode::Enforced).expect("enforce 1");
    admin.dma_window_add(1, 0, 4096, RW).expect("window");
    let window = DmaWindow {
        start: 0,
        len: 4096,
        flags: RW,
    };
    let vsic0 = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let vsic1 = RawDriver::open(&d.vsic_socket(1), 4 << 20, 16);
    drop(vsic0);
    std::thread::sleep(QUIET);
    // VSIC 1's frontend is still there: its guest runs.
    assert_eq!(admin.dma_windows(0).unwrap(), (DmaMode::Enforced, vec![]));
    assert_eq!(
        admin.dma_windows(1).unwrap(),
        (DmaMode::Enforced, vec![window])
    );
    drop(vsic1);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while admin.dma_windows(0).unwrap().0 == DmaMode::Enforced
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(admin.dma_windows(0).unwrap(), (DmaMode::Open, vec![]));
    assert_eq!(admin.dma_windows(1).unwrap(), (DmaMode::Open, vec![]));
    // Committed: a restart keeps it.
    drop(admin);
    d.restart();
    assert_eq!(d.admin().dma_windows(0).unwrap().0, DmaMode::Open);
}

/// Bad windows that are still accepted do no harm: a window outside the
/// memory the guest shared grants nothing (the buffer is refused by the
/// memory map, nothing is touched and the daemon goes on serving); a
/// buffer spanning two adjacent windows is refused; a window enclosing one
/// already there is an overlap; a removed window can be added again.
#[test]
fn windows_outside_guest_memory_or_split_buffers_grant_nothing() {
    let d = daemon("dma-outside");
    let admin = d.admin();
    let mut drv = RawDriver::open(&d.vsic_socket(0), 4 << 20, 16);
    let (start, end) = region(&drv);
    // The shared memory, and 16 MiB past its end where nothing is mapped.
    admin
        .dma_window_add(0, start, end - start, RW)
        .expect("window over the shared memory");
    admin
        .dma_window_add(0, end + (16 << 20), 1 << 20, RW)
        .expect("a window outside guest memory is accepted");
    refused(
        admin.dma_window_add(0, start - 0x1000, end - start + 0x2000, RW),
        AdminStatus::WindowOverlap,
        "a window enclosing another",
    );
    admin.dma_set_mode(0, DmaMode::Enforced).expect("enforce");
    let before = violations(&admin, 0);

    // Data-in aimed at the window outside guest memory.
    let outside = Buf {
        iova: end + (16 << 20),
        len: 4096,
        device_writes: true,
    };
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[outside], true);
    let done = drv.wait(&sent, IO_TIMEOUT).expect("completion");
    assert_ne!(done.status, VIRTIO_BLK_S_OK, "{done:?}");
    assert_eq!(done.used.len, 0, "{done:?}");
    assert_eq!(
        violations(&admin, 0),
        before,
        "inside a window: not a violation"
    );

    // Split the shared memory into two adjacent windows around a buffer.
    let buf = drv.alloc(8192);
    let mid = buf.iova() + 4096;
    admin
        .dma_window_remove(0, start, end - start)
        .expect("remove");
    cover_except(&admin, 0, (start, end), mid, 0);
    let spanning = writable(&buf, 8192);
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[spanning], true);
    let done = drv.wait(&sent, IO_TIMEOUT).expect("completion");
    assert_eq!(done.status, VIRTIO_BLK_S_IOERR, "a buffer over two windows");
    assert_eq!(violations(&admin, 0), before + 1);
    // Each half on its own is fine.
    let half = Buf {
        iova: buf.iova(),
        len: 4096,
        device_writes: true,
    };
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[half], true);
    assert_eq!(
        drv.wait(&sent, IO_TIMEOUT).expect("half").status,
        VIRTIO_BLK_S_OK
    );
    // Removed and added again: the whole region is one window once more.
    admin
        .dma_window_remove(0, start, mid - start)
        .expect("remove low");
    admin
        .dma_window_remove(0, mid, end - mid)
        .expect("remove high");
    admin
        .dma_window_add(0, start, end - start, RW)
        .expect("added again");
    let sent = drv.send(VIRTIO_BLK_T_IN, 0, &[writable(&buf, 8192)], true);
    assert_eq!(
        drv.wait(&sent, IO_TIMEOUT).expect("whole").status,
        VIRTIO_BLK_S_OK
    );
}
