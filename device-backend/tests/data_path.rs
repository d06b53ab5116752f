//! The data path of a real daemon seen through the `vsic` library: VSAs on
//! several VSICs and slots, every queue, both completion modes,
//! multi-range requests, freed space reading as zeroes, capacity changes
//! and malformed requests.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use vsic::{CompletionMode, Device, Error, IoStatus, Request, VsaHandle, VsaRange};
use vsic_abi::virtio::{
    self, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_VSIC_ADMIN,
};
use vsic_abi::window::slot_base;
use vsic_abi::{AdminCommand, Opcode};

const SLOT0: VsaHandle = VsaHandle { slot: 0 };

/// Three scattered VSA ranges of one multi-range request, relative to a
/// base offset: 32 KiB in all.
const SCATTER: [(u64, u64); 3] = [(0, 8 << 10), (64 << 10, 16 << 10), (160 << 10, 8 << 10)];
const SCATTER_BYTES: usize = 32 << 10;
/// Distance between the bases of consecutive requests.
const STRIDE: u64 = 256 << 10;

/// Writes from every queue of `dev` at once, each queue its own stretch of
/// the slot-0 VSA, with several multi-range requests in flight per queue;
/// reads each back with a different memory layout. Returns the expected
/// content of the whole VSA.
fn exercise_all_queues(dev: &Device, seed: u64, vsa_size: u64) -> Vec<u8> {
    let queues = dev.num_queues();
    let per_queue = vsa_size / u64::from(queues);
    let requests = (per_queue / STRIDE) as usize;
    assert!(requests >= 4, "each queue gets several requests");
    let mut image = vec![0u8; vsa_size as usize];
    let results: Vec<Vec<(u64, Vec<u8>)>> = thread::scope(|s| {
        let workers: Vec<_> = (0..queues)
            .map(|q| s.spawn(move || one_queue(dev, q, seed, u64::from(q) * per_queue, requests)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("queue worker"))
            .collect()
    });
    for (offset, bytes) in results.into_iter().flatten() {
        image[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    image
}

/// The work of one queue; returns (VSA offset, bytes) of everything written.
fn one_queue(
    dev: &Device,
    queue: u16,
    seed: u64,
    start: u64,
    requests: usize,
) -> Vec<(u64, Vec<u8>)> {
    let tag = seed ^ (u64::from(queue) << 32);
    // Memory split 12 KiB + 20 KiB: the split falls inside the second VSA
    // range, so memory and VSA ranges do not line up one to one.
    let sources: Vec<_> = (0..requests)
        .map(|k| {
            (
                filled(dev, tag + 2 * k as u64, 12 << 10),
                filled(dev, tag + 2 * k as u64 + 1, 20 << 10),
            )
        })
        .collect();
    let ranges: Vec<Vec<VsaRange>> = (0..requests)
        .map(|k| {
            let base = start + k as u64 * STRIDE;
            SCATTER
                .iter()
                .map(|&(o, l)| VsaRange::new(base + o, l))
                .collect()
        })
        .collect();
    for (k, (a, b)) in sources.iter().enumerate() {
        let mem = [a.mem(), b.mem()];
        dev.submit(queue, Request::write(SLOT0, &mem, &ranges[k]), k as u64)
            .unwrap_or_else(|e| panic!("queue {queue}: submit write {k}: {e}"));
    }
    let mut done = collect(dev, queue, requests);
    done.sort_by_key(|c| c.user_data);
    for (k, c) in done.iter().enumerate() {
        assert_eq!(
            (c.user_data, c.result),
            (k as u64, Ok(())),
            "queue {queue}: write {k}"
        );
    }

    // Read back into one contiguous buffer per request.
    let mut sinks: Vec<_> = (0..requests)
        .map(|_| dev.alloc_dma(SCATTER_BYTES).expect("alloc"))
        .collect();
    for (k, sink) in sinks.iter_mut().enumerate() {
        sink.as_mut_slice().fill(0xee);
        let mem = [sink.mem()];
        dev.submit(
            queue,
            Request::read(SLOT0, &mem, &ranges[k]),
            100 + k as u64,
        )
        .unwrap_or_else(|e| panic!("queue {queue}: submit read {k}: {e}"));
    }
    for c in collect(dev, queue, requests) {
        assert_eq!(c.result, Ok(()), "queue {queue}: read {}", c.user_data);
    }
    let mut written = Vec::new();
    for (k, ((a, b), sink)) in sources.iter().zip(&sinks).enumerate() {
        let want: Vec<u8> = a.as_slice().iter().chain(b.as_slice()).copied().collect();
        assert_same(
            sink.as_slice(),
            &want,
            &format!("queue {queue} request {k}"),
        );
        let mut at = 0usize;
        for r in &ranges[k] {
            written.push((r.offset, want[at..at + r.len as usize].to_vec()));
            at += r.len as usize;
        }
    }
    written
}

#[test]
fn two_vsas_on_two_vsics_read_back_on_every_queue_in_both_modes() {
    let d = Daemon::start("two-vsas");
    let admin = d.admin();
    let a = admin.vsa_create(8 * MIB, 0).expect("create A");
    // B is striped over both drives.
    let b = admin.vsa_create(8 * MIB, 2).expect("create B");
    assert_ne!(a.vsa_id, b.vsa_id);
    admin
        .attach(0, 0, &a.token, false)
        .expect("attach A to VSIC 0 slot 0");
    admin
        .attach(1, 0, &b.token, false)
        .expect("attach B to VSIC 1 slot 0");

    let dev_a = d.open_vsic(0, 4, CompletionMode::Interrupt);
    let dev_b = d.open_vsic(1, 4, CompletionMode::Polling);
    assert_eq!(dev_a.capacity().expect("capacity"), 8 * MIB);
    assert_eq!(dev_b.capacity().expect("capacity"), 8 * MIB);

    let (image_a, image_b) = thread::scope(|s| {
        let ta = s.spawn(|| exercise_all_queues(&dev_a, 0xa000, 8 * MIB));
        let tb = s.spawn(|| exercise_all_queues(&dev_b, 0xb000, 8 * MIB));
        (ta.join().expect("VSIC 0"), tb.join().expect("VSIC 1"))
    });

    // Whole-VSA reads: everything written is there, everything else is
    // zero, and neither VSA holds the other's data.
    assert_same(&read_back(&dev_a, 0, 0, image_a.len()), &image_a, "VSA A");
    assert_same(&read_back(&dev_b, 0, 0, image_b.len()), &image_b, "VSA B");
    dev_a.flush(1).expect("flush");
    dev_b.flush(3).expect("flush");

    let (stats_a, queues_a) = stats_of(&admin, 0);
    assert_eq!(stats_a.errors, 0);
    assert_eq!(stats_a.protection_violations, 0);
    assert_eq!(
        stats_a.bytes_written,
        8 * MIB / STRIDE * SCATTER_BYTES as u64
    );
    assert!(
        queues_a.iter().all(|q| q.bytes_written > 0),
        "every queue carried writes: {queues_a:?}"
    );
}

#[test]
fn a_vsa_in_slot_1_lives_at_its_window() {
    let d = Daemon::start("slot1");
    let admin = d.admin();
    let a = admin.vsa_create(4 * MIB, 0).expect("create A");
    let c = admin.vsa_create(2 * MIB, 0).expect("create C");
    admin.attach(2, 0, &a.token, false).expect("attach A");
    admin
        .attach(2, 1, &c.token, false)
        .expect("attach C in slot 1");
    let dev = d.open_vsic(2, 1, CompletionMode::Interrupt);
    // The config space shows slot 0 only.
    assert_eq!(dev.capacity().expect("capacity"), 4 * MIB);

    let in_a = filled(&dev, 0xa1, 64 << 10);
    let in_c = filled(&dev, 0xc1, 64 << 10);
    dev.write_at(0, SLOT0, 0, &in_a).expect("write A");
    dev.write_at(0, VsaHandle::new(1), 0, &in_c)
        .expect("write C");

    // Raw device offsets: slot 1's VSA starts at slot_base(1).
    let sector = slot_base(1) / SECTOR_SIZE;
    let reply = dev
        .raw_request(0, VIRTIO_BLK_T_IN, sector, &[], &[64 << 10])
        .expect("raw read");
    assert_eq!(reply.status, VIRTIO_BLK_S_OK);
    assert_same(
        &reply.ins[0],
        in_c.as_slice(),
        "slot 1 read at slot_base(1)",
    );
    let raw_data = pattern(0xc2, 4096);
    let reply = dev
        .raw_request(0, VIRTIO_BLK_T_OUT, sector + 256, &[&raw_data], &[])
        .expect("raw write");
    assert_eq!(reply.status, VIRTIO_BLK_S_OK);
    assert_same(
        &read_back(&dev, 1, 256 * SECTOR_SIZE, 4096),
        &raw_data,
        "raw write seen through slot 1",
    );
    // Slot 0 is untouched by slot-1 traffic.
    assert_same(&read_back(&dev, 0, 0, 64 << 10), in_a.as_slice(), "VSA A");

    // Slot 1's bounds are C's size, not A's.
    let mut buf = dev.alloc_dma(4096).expect("alloc");
    dev.read_at(0, VsaHandle::new(1), 2 * MIB - 4096, &mut buf)
        .expect("last block of C");
    assert!(matches!(
        dev.read_at(0, VsaHandle::new(1), 2 * MIB, &mut buf),
        Err(Error::Io(IoStatus::IoError))
    ));
    dev.read_at(0, SLOT0, 2 * MIB, &mut buf)
        .expect("A is larger than C");
}

#[test]
fn a_vsic_cannot_reach_beyond_its_attachments() {
    let d = Daemon::start("protection");
    let admin = d.admin();
    let a = admin.vsa_create(4 * MIB, 0).expect("create A");
    let b = admin.vsa_create(4 * MIB, 0).expect("create B");
    admin.attach(0, 0, &a.token, false).expect("attach A");
    admin.attach(1, 0, &b.token, false).expect("attach B");
    let dev0 = d.open_vsic(0, 2, CompletionMode::Interrupt);
    let dev1 = d.open_vsic(1, 1, CompletionMode::Polling);

    let data_b = filled(&dev1, 0xb, 64 << 10);
    dev1.write_at(0, SLOT0, 0, &data_b).expect("write B");
    let tail_a = filled(&dev0, 0xa, 4096);
    dev0.write_at(0, SLOT0, 4 * MIB - 4096, &tail_a)
        .expect("write the end of A");

    let before = stats_of(&admin, 0).0;
    let mut buf = dev0.alloc_dma(8192).expect("alloc");
    let mut refused = 0u64;
    let mut expect_refused = |what: &str, r: Result<(), Error>| {
        assert!(
            matches!(r, Err(Error::Io(IoStatus::IoError))),
            "{what}: {r:?} instead of an I/O error"
        );
        refused += 1;
    };
    // Unattached slots: B is attached elsewhere, never here.
    expect_refused(
        "read slot 1",
        dev0.read_at(0, VsaHandle::new(1), 0, &mut buf),
    );
    expect_refused("write slot 1", dev0.write_at(1, VsaHandle::new(1), 0, &buf));
    expect_refused(
        "read slot 15",
        dev0.read_at(1, VsaHandle::new(15), 0, &mut buf),
    );
    // Past the end of A, and straddling it.
    expect_refused(
        "read at the end of A",
        dev0.read_at(0, SLOT0, 4 * MIB, &mut buf),
    );
    expect_refused(
        "read across the end of A",
        dev0.read_at(0, SLOT0, 4 * MIB - 4096, &mut buf),
    );
    let overwrite = filled(&dev0, 0xdead, 8192);
    expect_refused(
        "write across the end of A",
        dev0.write_at(1, SLOT0, 4 * MIB - 4096, &overwrite),
    );
    // The zeroing requests take their own path through the device.
    let whole_b = [VsaRange::new(0, 64 << 10)];
    expect_refused(
        "write-zeroes on slot 1",
        run_one(&dev0, 0, Request::write_zeroes(VsaHandle::new(1), &whole_b)).map_err(Error::Io),
    );
    expect_refused(
        "discard on slot 1",
        run_one(&dev0, 1, Request::discard(VsaHandle::new(1), &whole_b)).map_err(Error::Io),
    );
    let across_end = [VsaRange::new(4 * MIB - 4096, 8192)];
    expect_refused(
        "write-zeroes across the end of A",
        run_one(&dev0, 0, Request::write_zeroes(SLOT0, &across_end)).map_err(Error::Io),
    );
    let after = stats_of(&admin, 0).0;
    assert_eq!(
        after.protection_violations - before.protection_violations,
        refused,
        "every refused request counts as a protection violation"
    );
    assert!(after.errors - before.errors >= refused);

    // A sector far beyond every window: refused before it reaches a VSA.
    let reply = dev0
        .raw_request(0, VIRTIO_BLK_T_IN, u64::MAX / SECTOR_SIZE, &[], &[512])
        .expect("raw read");
    assert_eq!(reply.status, VIRTIO_BLK_S_IOERR);
    assert!(
        reply.ins[0].iter().all(|&b| b == 0),
        "a refused read returns no data"
    );

    // Nothing leaked into or out of either VSA, and VSIC 1 saw no violation.
    assert_same(
        &read_back(&dev0, 0, 4 * MIB - 4096, 4096),
        tail_a.as_slice(),
        "end of A after refused write",
    );
    assert_same(&read_back(&dev1, 0, 0, 64 << 10), data_b.as_slice(), "B");
    assert_eq!(stats_of(&admin, 1).0.protection_violations, 0);
    assert!(d.log().contains("refused"), "violations are logged");
}

#[test]
fn shrink_then_extend_reads_zeroes_not_old_data() {
    let d = Daemon::start("shrink-extend");
    let admin = d.admin();
    let v = admin.vsa_create(4 * MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(0, 1, CompletionMode::Interrupt);
    let old = filled(&dev, 0x01d, (4 * MIB) as usize);
    dev.write_at(0, SLOT0, 0, &old).expect("fill the VSA");
    dev.flush(0).expect("flush");

    assert_eq!(admin.vsa_resize(&v.token, MIB).expect("shrink"), MIB);
    assert_eq!(dev.capacity().expect("capacity"), MIB);
    let mut buf = dev.alloc_dma(4096).expect("alloc");
    assert!(matches!(
        dev.read_at(0, SLOT0, MIB, &mut buf),
        Err(Error::Io(IoStatus::IoError))
    ));

    assert_eq!(
        admin.vsa_resize(&v.token, 4 * MIB).expect("extend"),
        4 * MIB
    );
    assert_eq!(dev.capacity().expect("capacity"), 4 * MIB);
    let now = read_back(&dev, 0, 0, (4 * MIB) as usize);
    assert_same(
        &now[..MIB as usize],
        &old.as_slice()[..MIB as usize],
        "the kept first extent",
    );
    assert!(
        now[MIB as usize..].iter().all(|&b| b == 0),
        "extended space reads zeroes, not the old data"
    );
}

#[test]
fn delete_then_create_on_the_same_drive_space_reads_zeroes() {
    // One small drive: the second VSA must reuse the first one's extents.
    let setup = Setup {
        drives: vec!["12M"],
        ..Setup::default()
    };
    let d = Daemon::start_with("delete-create", setup);
    let admin = d.admin();
    let id = admin.identify().expect("identify");
    let size = id.free_extents * id.extent_size;
    assert!(size >= 4 * MIB, "room for a VSA: {id:?}");

    let first = admin
        .vsa_create(size, 0)
        .expect("create a VSA over all free space");
    let first_map = admin.extent_map(first.vsa_id).expect("extent map");
    admin.attach(0, 0, &first.token, false).expect("attach");
    let dev = d.open_vsic(0, 1, CompletionMode::Polling);
    let old = filled(&dev, 0x5ec2e7, size as usize);
    dev.write_at(0, SLOT0, 0, &old).expect("fill");
    dev.flush(0).expect("flush");
    drop(old);
    admin.detach(0, 0).expect("detach");
    admin.vsa_delete(&first.token).expect("delete");

    let second = admin.vsa_create(size, 0).expect("create again");
    let second_map = admin.extent_map(second.vsa_id).expect("extent map");
    let extents = |map: &[vsic_abi::records::ExtentRun]| {
        let mut v: Vec<(u32, u64)> = map
            .iter()
            .flat_map(|r| (0..u64::from(r.count)).map(move |i| (r.drive, r.first_extent + i)))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        extents(&first_map),
        extents(&second_map),
        "the new VSA sits on the old one's extents"
    );
    admin
        .attach(0, 0, &second.token, false)
        .expect("attach the new VSA");
    let now = read_back(&dev, 0, 0, size as usize);
    assert!(
        now.iter().all(|&b| b == 0),
        "a new VSA never shows the previous owner's data"
    );
}

#[test]
fn a_connected_client_sees_capacity_changes_and_is_notified() {
    let d = Daemon::start("config-change");
    let admin = d.admin();
    let v = admin.vsa_create(2 * MIB, 0).expect("create");
    admin.attach(3, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(3, 1, CompletionMode::Interrupt);
    assert_eq!(dev.capacity().expect("capacity"), 2 * MIB);
    let fd = dev
        .config_interrupt_fd()
        .expect("the library exposes the config-change eventfd");
    // The attach above changed VSIC 3's configuration before the device
    // was opened; its notification may still be on its way through the
    // frontend's channel. Wait until the eventfd stays quiet for 100 ms
    // (a few times at most) so that what follows sees only new changes.
    let mut settled = false;
    for _ in 0..20 {
        drain_eventfd(fd);
        if !eventfd_fired(fd, Duration::from_millis(100)) {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "the config-change eventfd kept firing with no change"
    );
    // Data traffic changes no configuration: the eventfd stays quiet.
    let block = filled(&dev, 0x9e7, 4096);
    dev.write_at(0, SLOT0, 0, &block).expect("write");
    assert!(
        !eventfd_fired(fd, Duration::from_millis(100)),
        "config-change eventfd fired without a change"
    );

    let expect_change = |what: &str, capacity: u64| {
        assert!(
            eventfd_fired(fd, IO_TIMEOUT),
            "{what}: no config-change notification; log:\n{}",
            d.log()
        );
        drain_eventfd(fd);
        assert_eq!(dev.capacity().expect("capacity"), capacity, "{what}");
    };
    admin.vsa_resize(&v.token, 5 * MIB).expect("extend");
    expect_change("extend", 5 * MIB);
    admin.vsa_resize(&v.token, 3 * MIB).expect("shrink");
    expect_change("shrink", 3 * MIB);
    admin.detach(3, 0).expect("detach");
    expect_change("detach", 0);
    admin.attach(3, 0, &v.token, false).expect("attach again");
    expect_change("attach", 3 * MIB);

    // The new size is usable at once.
    let tail = filled(&dev, 0x7a11, 4096);
    dev.write_at(0, SLOT0, 3 * MIB - 4096, &tail)
        .expect("write the last block");
    assert_same(
        &read_back(&dev, 0, 3 * MIB - 4096, 4096),
        tail.as_slice(),
        "last block",
    );
}

#[test]
fn malformed_requests_get_their_status_and_the_daemon_keeps_serving() {
    let d = Daemon::start("bad-input");
    let admin = d.admin();
    let v = admin.vsa_create(MIB, 0).expect("create");
    admin.attach(0, 0, &v.token, false).expect("attach");
    let dev = d.open_vsic(0, 2, CompletionMode::Interrupt);
    let before = stats_of(&admin, 0).0;

    let raw = |req_type: u32, out: &[&[u8]], in_lens: &[usize]| {
        dev.raw_request(0, req_type, 0, out, in_lens)
            .unwrap_or_else(|e| panic!("type {req_type:#x}: {e}"))
    };
    assert_eq!(
        raw(0x77, &[], &[512]).status,
        VIRTIO_BLK_S_UNSUPP,
        "unknown request type"
    );
    assert_eq!(
        raw(0x7fff_ffff, &[&[0u8; 512]], &[]).status,
        VIRTIO_BLK_S_UNSUPP,
        "unknown request type"
    );
    assert_eq!(
        raw(VIRTIO_BLK_T_IN, &[], &[1000]).status,
        VIRTIO_BLK_S_IOERR,
        "read of 1000 bytes"
    );
    assert_eq!(
        raw(VIRTIO_BLK_T_OUT, &[&[7u8; 100]], &[]).status,
        VIRTIO_BLK_S_IOERR,
        "write of 100 bytes"
    );
    assert_eq!(
        raw(VIRTIO_BLK_T_FLUSH, &[&[0u8; 512]], &[]).status,
        VIRTIO_BLK_S_IOERR,
        "flush with data"
    );
    let identify = AdminCommand::new(Opcode::Identify).encode();
    let admin_on_vsic = raw(VIRTIO_BLK_T_VSIC_ADMIN, &[&identify], &[32, 64]);
    assert_eq!(
        admin_on_vsic.status, VIRTIO_BLK_S_UNSUPP,
        "admin request on a VSIC"
    );
    assert!(
        admin_on_vsic.ins.iter().flatten().all(|&b| b == 0),
        "no completion written on a VSIC"
    );
    let refused = 6;

    // Well-formed requests still work, on this and the other queue.
    let id = raw(VIRTIO_BLK_T_GET_ID, &[], &[virtio::SERIAL_LEN]);
    assert_eq!(id.status, VIRTIO_BLK_S_OK);
    assert_eq!(&id.ins[0][..10], b"vsic-vsic0");
    let data = filled(&dev, 0x600d, 8192);
    assert_eq!(
        run_one(
            &dev,
            1,
            Request::write(SLOT0, &[data.mem()], &[VsaRange::new(4096, 8192)])
        ),
        Ok(())
    );
    assert_same(
        &read_back(&dev, 0, 4096, 8192),
        data.as_slice(),
        "data after bad requests",
    );

    let after = stats_of(&admin, 0).0;
    assert_eq!(
        after.errors - before.errors,
        refused,
        "every malformed request counts as an error"
    );
    assert_eq!(admin.identify().expect("the PF still answers").vsics, 4);
    thread::sleep(Duration::from_millis(50));
    let log = d.log();
    assert!(!log.contains("panicked"), "daemon log:\n{log}");
}
