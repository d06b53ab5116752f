//! The library against a real vhost-user-blk backend: qemu-storage-daemon
//! exporting an image file. Data is checked both by reading it back through
//! the device and by reading the image file directly.
//!
//! Skipped (loudly) when qemu-storage-daemon is not installed.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vsic::{
    Completion, CompletionMode, Device, Error, IoStatus, OpenOptions, Request, VsaHandle, VsaRange,
};
use vsic_abi::virtio::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_VSIC_ADMIN,
};

const DISK_SIZE: u64 = 64 << 20;
const DAEMON: &str = "qemu-storage-daemon";
const SLOT0: VsaHandle = VsaHandle { slot: 0 };

/// A running qemu-storage-daemon; killed and cleaned up on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts a daemon exporting a fresh image, or None when the binary is
    /// missing.
    fn start(queues: u16) -> Option<Daemon> {
        if Command::new(DAEMON)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "\n*** SKIPPED: {DAEMON} is not installed; vhost-user tests did not run ***\n"
            );
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vsic-lib-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("test dir");
        let img = dir.join("disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(DISK_SIZE))
            .expect("image");
        let child = Command::new(DAEMON)
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f,filename={}", img.display()))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
                dir.join("blk.sock").display()
            ))
            .arg("--chardev")
            .arg(format!("socket,id=m,path={},server=on,wait=off", dir.join("qmp.sock").display()))
            .arg("--monitor")
            .arg("chardev=m")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qemu-storage-daemon");
        let daemon = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(daemon.sock().exists() && daemon.qmp_sock().exists()) {
            assert!(
                Instant::now() < deadline,
                "{DAEMON} did not create its sockets"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(daemon)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("blk.sock")
    }

    fn qmp_sock(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    fn spec(&self) -> String {
        format!("vhost-user:{}", self.sock().display())
    }

    fn image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    fn read_image(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(self.image()).expect("open image");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        let mut v = vec![0u8; len];
        f.read_exact(&mut v).expect("read image");
        v
    }

    fn write_image(&self, offset: u64, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.image())
            .expect("open image");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(data).expect("write image");
    }

    /// Runs one QMP command and returns the reply line.
    fn qmp(&self, command: &str) -> String {
        let s = UnixStream::connect(self.qmp_sock()).expect("qmp connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).expect("qmp greeting");
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .expect("qmp write");
        line.clear();
        r.read_line(&mut line).expect("qmp caps reply");
        w.write_all(command.as_bytes()).expect("qmp write");
        w.write_all(b"\n").expect("qmp write");
        loop {
            line.clear();
            r.read_line(&mut line).expect("qmp reply");
            if line.contains("\"return\"") || line.contains("\"error\"") {
                return line;
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn opts(mode: CompletionMode) -> OpenOptions {
    OpenOptions {
        mode,
        mem_size: 16 << 20,
        sync_timeout: Some(Duration::from_secs(10)),
        ..OpenOptions::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 7 + seed * 13) ^ (i >> 8)) as u8)
        .collect()
}

/// Polls `queue` until `n` completions arrived (or panics after 10 s).
fn collect(dev: &Device, queue: u16, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions arrived",
            got.len()
        );
        match dev.wait(queue, Some(Duration::from_millis(200))) {
            Ok(()) | Err(Error::Timeout) => {}
            Err(e) => panic!("wait: {e}"),
        }
        dev.poll(queue, &mut |c| got.push(c));
    }
    got
}

#[test]
fn sync_write_read_flush_in_every_mode() {
    let Some(d) = Daemon::start(2) else { return };
    for (round, mode) in [
        CompletionMode::Interrupt,
        CompletionMode::Polling,
        CompletionMode::Hybrid,
    ]
        .into_iter()
        .enumerate()
    {
        let dev = Device::open(&d.spec(), &opts(mode)).expect("open");
        assert_eq!(dev.num_queues(), 2);
        assert_eq!(dev.capacity().unwrap(), DISK_SIZE);
        for queue in 0..2u16 {
            let offset = (round as u64 * 2 + queue as u64) * 1_048_576 + 4096;
            let data = pattern(offset, 4096);
            let mut buf = dev.alloc_dma(4096).unwrap();
            buf.as_mut_slice().copy_from_slice(&data);
            dev.write_at(queue, SLOT0, offset, &buf).expect("write");
            dev.flush(queue).expect("flush");
            assert_eq!(
                d.read_image(offset, 4096),
                data,
                "image content, {mode:?} q{queue}"
            );
            let mut back = dev.alloc_dma(4096).unwrap();
            back.as_mut_slice().fill(0);
            dev.read_at(queue, SLOT0, offset, &mut back).expect("read");
            assert_eq!(back.as_slice(), &data[..]);
        }
    }
}

#[test]
fn reads_see_data_written_behind_the_device() {
    let Some(d) = Daemon::start(1) else { return };
    let data = pattern(99, 8192);
    d.write_image(3 << 20, &data);
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    let mut buf = dev.alloc_dma(8192).unwrap();
    dev.read_at(0, SLOT0, 3 << 20, &mut buf).expect("read");
    assert_eq!(buf.as_slice(), &data[..]);
}

#[test]
fn many_requests_in_flight_on_two_queues_from_two_threads() {
    let Some(d) = Daemon::start(2) else { return };
    for mode in [
        CompletionMode::Interrupt,
        CompletionMode::Polling,
        CompletionMode::Hybrid,
    ] {
        let dev = Device::open(&d.spec(), &opts(mode)).expect("open");
        std::thread::scope(|s| {
            for queue in 0..2u16 {
                let dev = &dev;
                s.spawn(move || {
                    // 64 writes of 4 KiB, all in flight at once.
                    let base = queue as u64 * (8 << 20);
                    let bufs: Vec<_> = (0..64u64)
                        .map(|i| {
                            let mut b = dev.alloc_dma(4096).unwrap();
                            b.as_mut_slice().copy_from_slice(&pattern(base + i, 4096));
                            b
                        })
                        .collect();
                    for (i, b) in bufs.iter().enumerate() {
                        let r = [VsaRange::new(base + i as u64 * 4096, 4096)];
                        dev.submit(queue, Request::write(SLOT0, &[b.mem()], &r), i as u64)
                            .unwrap();
                    }
                    let mut done: Vec<u64> = collect(dev, queue, 64)
                        .into_iter()
                        .map(|c| {
                            assert_eq!(c.result, Ok(()));
                            c.user_data
                        })
                        .collect();
                    done.sort_unstable();
                    assert_eq!(
                        done,
                        (0..64).collect::<Vec<_>>(),
                        "each request completes once"
                    );
                    // Read everything back with one request per 4 KiB.
                    let backs: Vec<_> = (0..64).map(|_| dev.alloc_dma(4096).unwrap()).collect();
                    for (i, b) in backs.iter().enumerate() {
                        let r = [VsaRange::new(base + i as u64 * 4096, 4096)];
                        dev.submit(queue, Request::read(SLOT0, &[b.mem()], &r), 1000 + i as u64)
                            .unwrap();
                    }
                    assert!(collect(dev, queue, 64).iter().all(|c| c.result.is_ok()));
                    for (i, b) in backs.iter().enumerate() {
                        assert_eq!(
                            b.as_slice(),
                            &pattern(base + i as u64, 4096)[..],
                            "{mode:?} q{queue} #{i}"
                        );
                    }
                });
            }
        });
    }
}

#[test]
fn multi_range_requests_scatter_and_gather() {
    let Some(d) = Daemon::start(1) else { return };
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    // Three buffers of odd sizes (1 KiB + 5 KiB + 2 KiB = 8 KiB) onto three
    // VSA ranges, two of them adjacent (coalesced), one far away.
    let sizes = [1024usize, 5120, 2048];
    let data = pattern(5, 8192);
    let mut bufs: Vec<_> = sizes.iter().map(|&n| dev.alloc_dma(n).unwrap()).collect();
    let mut at = 0;
    for b in &mut bufs {
        let n = b.len();
        b.as_mut_slice().copy_from_slice(&data[at..at + n]);
        at += n;
    }
    let mem: Vec<_> = bufs.iter().map(|b| b.mem()).collect();
    let ranges = [
        VsaRange::new(1 << 20, 2048),
        VsaRange::new((1 << 20) + 2048, 2048),
        VsaRange::new(5 << 20, 4096),
    ];
    dev.submit(0, Request::write(SLOT0, &mem, &ranges), 7)
        .unwrap();
    let c = collect(&dev, 0, 1);
    assert_eq!(
        c,
        vec![Completion {
            user_data: 7,
            result: Ok(())
        }],
        "one completion for all parts"
    );
    assert_eq!(d.read_image(1 << 20, 4096), &data[..4096]);
    assert_eq!(d.read_image(5 << 20, 4096), &data[4096..]);

    // Gather it back into one buffer with sub-ranges in a different split.
    let back = dev.alloc_dma(8192).unwrap();
    let mem = [back.range(0, 512).unwrap(), back.range(512, 7680).unwrap()];
    let ranges = [VsaRange::new(1 << 20, 4096), VsaRange::new(5 << 20, 4096)];
    dev.submit(0, Request::read(SLOT0, &mem, &ranges), 8)
        .unwrap();
    assert_eq!(collect(&dev, 0, 1)[0].result, Ok(()));
    assert_eq!(back.as_slice(), &data[..]);
}

#[test]
fn queue_full_then_drain() {
    let Some(d) = Daemon::start(1) else { return };
    let o = OpenOptions {
        queue_size: 8,
        ..opts(CompletionMode::Polling)
    };
    let dev = Device::open(&d.spec(), &o).expect("open");
    let buf = dev.alloc_dma(512).unwrap();
    let r = [VsaRange::new(0, 512)];
    // Each read takes 3 descriptors: only two fit in a queue of 8.
    let mut submitted = 0;
    loop {
        match dev.submit(0, Request::read(SLOT0, &[buf.mem()], &r), submitted) {
            Ok(()) => submitted += 1,
            Err(Error::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(submitted <= 2);
    }
    assert_eq!(submitted, 2);
    assert_eq!(collect(&dev, 0, 2).len(), 2);
    dev.submit(0, Request::read(SLOT0, &[buf.mem()], &r), 9)
        .expect("room again");
    assert_eq!(collect(&dev, 0, 1)[0].user_data, 9);
    // A request that can never fit is refused outright.
    let ranges: Vec<_> = (0..4).map(|i| VsaRange::new(i * 4096, 512)).collect();
    let bufs: Vec<_> = (0..4).map(|_| dev.alloc_dma(512).unwrap()).collect();
    let mem: Vec<_> = bufs.iter().map(|b| b.mem()).collect();
    assert!(matches!(
        dev.submit(0, Request::read(SLOT0, &mem, &ranges), 0),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn write_zeroes_and_discard() {
    let Some(d) = Daemon::start(1) else { return };
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    let mut buf = dev.alloc_dma(16384).unwrap();
    buf.as_mut_slice().fill(0x5a);
    dev.write_at(0, SLOT0, 0, &buf).unwrap();
    dev.submit(
        0,
        Request::write_zeroes(SLOT0, &[VsaRange::new(4096, 8192)]),
        1,
    )
    .unwrap();
    assert_eq!(collect(&dev, 0, 1)[0].result, Ok(()));
    dev.read_at(0, SLOT0, 0, &mut buf).unwrap();
    assert!(buf.as_slice()[..4096].iter().all(|&b| b == 0x5a));
    assert!(buf.as_slice()[4096..12288].iter().all(|&b| b == 0));
    assert!(buf.as_slice()[12288..].iter().all(|&b| b == 0x5a));
    dev.submit(0, Request::discard(SLOT0, &[VsaRange::new(0, 16384)]), 2)
        .unwrap();
    assert_eq!(collect(&dev, 0, 1)[0].result, Ok(()));
}

#[test]
fn device_errors_and_bad_arguments() {
    let Some(d) = Daemon::start(2) else { return };
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    let mut buf = dev.alloc_dma(4096).unwrap();
    // Past the end of the disk: the device fails it.
    match dev.read_at(0, SLOT0, DISK_SIZE, &mut buf) {
        Err(Error::Io(IoStatus::IoError)) => {}
        other => panic!("expected IOERR, got {other:?}"),
    }
    // Slot 1's window is far past this plain disk's end.
    match dev.read_at(0, VsaHandle::new(1), 0, &mut buf) {
        Err(Error::Io(IoStatus::IoError)) => {}
        other => panic!("expected IOERR, got {other:?}"),
    }
    assert!(matches!(
        dev.read_at(5, SLOT0, 0, &mut buf),
        Err(Error::NoSuchQueue { .. })
    ));
    assert!(matches!(
        dev.read_at(0, SLOT0, 100, &mut buf),
        Err(Error::InvalidArgument(_))
    ));
    // Memory outside the registered region is refused before the device.
    let foreign = [vsic::MemRange {
        iova: 0x10,
        len: 512,
    }];
    let r = [VsaRange::new(0, 512)];
    assert!(matches!(
        dev.submit(0, Request::read(SLOT0, &foreign, &r), 0),
        Err(Error::NotDmaMemory { .. })
    ));
    drop(dev);
    // Too many queues.
    let o = OpenOptions {
        queues: Some(3),
        ..opts(CompletionMode::Interrupt)
    };
    assert!(matches!(
        Device::open(&d.spec(), &o),
        Err(Error::InvalidArgument(_))
    ));
    // DMA exhaustion.
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("reopen");
    assert!(matches!(
        dev.alloc_dma(32 << 20),
        Err(Error::DmaExhausted { .. })
    ));
    // An idle queue times out instead of hanging, in both modes.
    let t = Instant::now();
    assert!(matches!(
        dev.wait(1, Some(Duration::from_millis(50))),
        Err(Error::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    // The daemon serves one client at a time: a second one gets a clear
    // error instead of hanging.
    let o = OpenOptions {
        sync_timeout: Some(Duration::from_millis(500)),
        ..opts(CompletionMode::Polling)
    };
    match Device::open(&d.spec(), &o) {
        Err(e @ Error::Transport { .. }) => assert!(e.to_string().contains("no reply"), "{e}"),
        other => panic!("second client: {:?}", other.err()),
    }
    drop(dev);
    let polling = Device::open(
        &d.spec(),
        &OpenOptions {
            queues: Some(1),
            ..opts(CompletionMode::Polling)
        },
    )
    .unwrap();
    assert!(matches!(
        polling.wait(0, Some(Duration::from_millis(20))),
        Err(Error::Timeout)
    ));
}

#[test]
fn raw_requests() {
    let Some(d) = Daemon::start(1) else { return };
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    let reply = dev
        .raw_request(0, VIRTIO_BLK_T_GET_ID, 0, &[], &[20])
        .expect("get id");
    assert_eq!(reply.status, VIRTIO_BLK_S_OK);
    assert_eq!(reply.ins.len(), 1);
    assert_eq!(reply.ins[0].len(), 20);
    assert!(reply.used_len >= 1);
    // The admin request type is the controller's own: a plain disk refuses
    // it, and the reply still arrives intact.
    let cmd = [0u8; 64];
    let reply = dev
        .raw_request(
            0,
            VIRTIO_BLK_T_VSIC_ADMIN,
            0,
            &[&cmd, &[1, 2, 3]],
            &[32, 4096],
        )
        .expect("admin round trip");
    assert_eq!(reply.status, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(
        reply.ins.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![32, 4096]
    );
    // Raw reads are plain IN requests: they see the disk.
    d.write_image(0, &pattern(3, 512));
    let reply = dev.raw_request(0, 0, 0, &[], &[512]).unwrap();
    assert_eq!(reply.status, VIRTIO_BLK_S_OK);
    assert_eq!(reply.ins[0], pattern(3, 512));
}

#[test]
fn capacity_change_raises_config_interrupt() {
    let Some(d) = Daemon::start(1) else { return };
    let dev = Device::open(&d.spec(), &opts(CompletionMode::Interrupt)).expect("open");
    assert_eq!(dev.capacity().unwrap(), DISK_SIZE);
    let reply = d.qmp(&format!(
        "{{\"execute\":\"block_resize\",\"arguments\":{{\"node-name\":\"f\",\"size\":{}}}}}",
        2 * DISK_SIZE
    ));
    assert!(reply.contains("return"), "block_resize: {reply}");
    if let Some(fd) = dev.config_interrupt_fd() {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 5000) };
        assert_eq!(r, 1, "no config-change interrupt within 5 s");
    } else {
        eprintln!("note: backend offers no config-change channel");
    }
    assert_eq!(dev.capacity().unwrap(), 2 * DISK_SIZE);
    // The new space is usable.
    let mut buf = dev.alloc_dma(4096).unwrap();
    buf.as_mut_slice().fill(1);
    dev.write_at(0, SLOT0, DISK_SIZE + 4096, &buf)
        .expect("write past old end");
}

#[test]
fn connect_failure_names_the_path() {
    let missing = Path::new("/nonexistent-dir/vsic0.sock");
    match Device::open(
        &format!("vhost-user:{}", missing.display()),
        &OpenOptions::default(),
    ) {
        Err(e @ Error::Connect { .. }) => {
            assert!(e.to_string().contains("/nonexistent-dir/vsic0.sock"))
        }
        other => panic!("{:?}", other.err()),
    }
}
