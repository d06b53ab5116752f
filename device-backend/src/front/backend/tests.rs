//! The backend through its `VhostUserBackend` face and its queue workers:
//! serving, polling, the lost-kick watch, configuration, exit events.

use vhost_user_backend::{VhostUserDaemon, VringT};
use vm_memory::Bytes;
use vm_memory::GuestAddressSpace;

use super::*;
use crate::front::exit_event_leak::is_eventfd;
use crate::front::tests::{FakeTarget, DISK_SIZE};

fn backend(function: Function, num_queues: u16) -> (FunctionBackend, GuestMemory) {
    backend_with(
        function,
        num_queues,
        PollPolicy::off(),
        GuestMemoryMmap::new(),
    )
}

fn backend_with(
    function: Function,
    num_queues: u16,
    poll: PollPolicy,
    mem: GuestMemoryMmap<()>,
) -> (FunctionBackend, GuestMemory) {
    let state = Arc::new(FunctionState {
        function,
        num_queues,
        target: Arc::new(FakeTarget::new()),
        notifiers: Arc::new(ConfigNotifiers::new(2)),
        quiesce: Arc::new(RwLock::new(())),
        log: RefusalLog::default(),
        poll: Arc::new(poll),
        workarounds: Default::default(),
    });
    let mem = GuestMemoryAtomic::new(mem);
    (FunctionBackend::new(state, mem.clone()), mem)
}

/// The driver's side of one split virtqueue in guest memory: 16
/// entries, each request a 512-byte read of its own sector.
struct Driver {
    mem: GuestMemory,
    submitted: u16,
}

impl Driver {
    const SIZE: u16 = 16;
    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const BUFS: u64 = 0x10000;

    /// A vring set up as a frontend would, and its driver.
    fn new(mem: &GuestMemory, event_idx: bool) -> (Vring, Driver) {
        let vring = <Vring as VringT<GuestMemory>>::new(mem.clone(), Self::SIZE).unwrap();
        vring.set_queue_size(Self::SIZE);
        vring
            .set_queue_info(Self::DESC, Self::AVAIL, Self::USED)
            .unwrap();
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let driver = Driver {
            mem: mem.clone(),
            submitted: 0,
        };
        (vring, driver)
    }

    fn put<T: vm_memory::ByteValued>(&self, addr: u64, value: T) {
        self.mem
            .memory()
            .write_obj(value, vm_memory::GuestAddress(addr))
            .unwrap();
    }

    fn get<T: vm_memory::ByteValued>(&self, addr: u64) -> T {
        self.mem
            .memory()
            .read_obj(vm_memory::GuestAddress(addr))
            .unwrap()
    }

    /// Buffers of request `n`: header, 512 bytes of data, status.
    fn bufs(n: u16) -> (u64, u64, u64) {
        let base = Self::BUFS + u64::from(n) * 0x1000;
        (base, base + 0x100, base + 0x400)
    }

    /// Adds a read of sector `n` and publishes it; returns whether the
    /// device asked to be notified (EVENT_IDX, or no NO_NOTIFY flag).
    fn submit(&mut self, event_idx: bool) -> bool {
        let n = self.submitted;
        let (header, data, status) = Self::bufs(n);
        self.put(header, vsic_abi::virtio::VIRTIO_BLK_T_IN);
        self.put(header + 8, u64::from(n));
        self.put(status, 0xffu8);
        let head = n % (Self::SIZE / 3) * 3;
        let descs = [(header, 16u32, 1u16), (data, 512, 1 | 2), (status, 1, 2)];
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let at = Self::DESC + u64::from(head + i as u16) * 16;
            self.put(at, addr);
            self.put(at + 8, len);
            self.put(at + 12, flags);
            self.put(at + 14, head + i as u16 + 1);
        }
        let slot = Self::AVAIL + 4 + u64::from(n % Self::SIZE) * 2;
        self.put(slot, head);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.submitted = n.wrapping_add(1);
        self.put(Self::AVAIL + 2, self.submitted);
        std::sync::atomic::fence(Ordering::SeqCst);
        if event_idx {
            let avail_event: u16 = self.get(Self::USED + 4 + u64::from(Self::SIZE) * 8);
            // vring_need_event(avail_event, new, old)
            self.submitted.wrapping_sub(avail_event).wrapping_sub(1)
                < self.submitted.wrapping_sub(n)
        } else {
            self.get::<u16>(Self::USED) & 1 == 0
        }
    }

    fn used_idx(&self) -> u16 {
        self.get(Self::USED + 2)
    }

    fn status(&self, n: u16) -> u8 {
        self.get(Self::bufs(n).2)
    }
}

/// The vring's call eventfd, as the frontend would read it.
struct InterruptCounter(std::fs::File);

impl InterruptCounter {
    /// Interrupts since the last count.
    fn count(&self) -> u64 {
        let mut value = [0u8; 8];
        match std::io::Read::read(&mut &self.0, &mut value) {
            Ok(8) => u64::from_ne_bytes(value),
            _ => 0,
        }
    }
}

fn interrupt_counter(vring: &Vring) -> InterruptCounter {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd returns a new descriptor this test owns.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is open and owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    vring.set_call(Some(file.try_clone().unwrap()));
    InterruptCounter(file)
}

fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap()
}

#[test]
fn serves_what_is_available_and_rearms_notifications() {
    for event_idx in [true, false] {
        let (backend, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
        let (vring, mut driver) = Driver::new(&mem, event_idx);
        let interrupts = interrupt_counter(&vring);
        assert!(driver.submit(event_idx), "a sleeping device wants kicks");
        driver.submit(event_idx);
        backend.process_queue(&vring, 0);
        assert_eq!(driver.used_idx(), 2, "event_idx={event_idx}");
        let signalled = interrupts.count();
        assert!(
            (1..=2).contains(&signalled),
            "completions are signalled, at most once each: {signalled}"
        );
        assert_eq!((driver.status(0), driver.status(1)), (0, 0));
        assert_eq!(
            driver.get::<[u8; 4]>(Driver::bufs(1).1),
            [10, 11, 12, 13],
            "sector 1 of the fake disk (byte i is i % 251)"
        );
        // Asleep again: the next request must kick.
        assert!(driver.submit(event_idx), "event_idx={event_idx}");
    }
}

#[test]
fn a_stopped_queue_is_left_alone() {
    for event_idx in [true, false] {
        let (backend, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
        let (vring, mut driver) = Driver::new(&mem, event_idx);
        driver.submit(event_idx);
        let avail_event = Driver::USED + 4 + u64::from(Driver::SIZE) * 8;
        driver.put(avail_event, 0xabcdu16);
        // GET_VRING_BASE after the kick, before the worker ran.
        vring.set_queue_ready(false);
        backend.process_queue(&vring, 0);
        assert_eq!(driver.used_idx(), 0, "event_idx={event_idx}");
        assert_eq!(driver.get::<u16>(Driver::USED), 0, "used flags untouched");
        assert_eq!(
            driver.get::<u16>(avail_event),
            0xabcd,
            "avail_event untouched"
        );
    }
}

#[test]
fn polls_for_requests_that_come_soon_after_a_batch_without_kicks() {
    let window = Duration::from_millis(500);
    for event_idx in [true, false] {
        let (backend, mem) = backend_with(
            Function::Vsic(0),
            1,
            PollPolicy::ignoring_load(window, 2),
            guest_memory(),
        );
        {
            let mut worker = backend.session.workers[0].lock().unwrap();
            while worker.window.current() < window {
                worker.window.after_sleep(window);
            }
        }
        let (vring, mut driver) = Driver::new(&mem, event_idx);
        driver.submit(event_idx);
        // The driver submits its second request once the first one
        // completed, while the worker polls.
        let second = std::thread::spawn(move || {
            while driver.used_idx() < 1 {
                std::thread::yield_now();
            }
            let kick = driver.submit(event_idx);
            (driver, kick)
        });
        let interrupts = interrupt_counter(&vring);
        let started = Instant::now();
        backend.process_queue(&vring, 0);
        let (mut driver, kicked) = second.join().unwrap();
        assert!(
            interrupts.count() >= 1,
            "completions found while polling are signalled too"
        );
        assert!(
            !kicked,
            "no kick while the worker polls, event_idx={event_idx}"
        );
        assert_eq!(driver.used_idx(), 2, "served in the same wake-up");
        assert_eq!(driver.status(1), 0);
        assert!(
            started.elapsed() >= window,
            "the worker polled for the whole window after the last request"
        );
        assert!(
            driver.submit(event_idx),
            "notifications are back on once the worker sleeps"
        );
    }
}

#[test]
fn an_avail_index_beyond_the_ring_does_not_keep_the_worker_spinning() {
    for event_idx in [true, false] {
        let (backend, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
        let (vring, mut driver) = Driver::new(&mem, event_idx);
        driver.submit(event_idx);
        backend.process_queue(&vring, 0);
        assert_eq!(driver.used_idx(), 1);
        // A broken driver claims far more requests than the ring holds.
        driver.put(Driver::AVAIL + 2, 1u16 + 3 * Driver::SIZE);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            backend.process_queue(&vring, 0);
            done_tx.send(()).ok();
            (backend, vring)
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the worker went back to sleep instead of spinning, event_idx={event_idx}"
        );
        let _ = worker.join();
        assert_eq!(
            driver.used_idx(),
            1,
            "nothing was made up from the bogus index"
        );
    }
}

#[test]
fn requests_whose_kick_was_lost_are_served_by_the_watch_timer() {
    for event_idx in [true, false] {
        let (backend, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
        let (vring, mut driver) = Driver::new(&mem, event_idx);
        let interrupts = interrupt_counter(&vring);
        backend.watch_tick(&vring, 0);
        // Published and kicked, but the kick never reached the worker.
        assert!(driver.submit(event_idx));
        backend.watch_tick(&vring, 0);
        assert_eq!(driver.used_idx(), 0, "its kick may still be on its way");
        backend.watch_tick(&vring, 0);
        assert_eq!(driver.used_idx(), 1, "a period without a kick: served");
        assert_eq!(driver.status(0), 0);
        assert!(interrupts.count() >= 1, "and the driver is told");
        // Notifications are back on: the next request kicks as usual.
        assert!(driver.submit(event_idx), "event_idx={event_idx}");
    }
}

#[test]
fn the_watch_timer_leaves_stopped_and_disabled_queues_alone() {
    let (watched, mem) = backend_with(Function::Vsic(0), 1, PollPolicy::off(), guest_memory());
    let (vring, mut driver) = Driver::new(&mem, true);
    driver.submit(true);
    vring.set_enabled(false);
    for _ in 0..3 {
        watched.watch_tick(&vring, 0);
    }
    assert_eq!(driver.used_idx(), 0, "disabled");
    vring.set_enabled(true);
    vring.set_queue_ready(false);
    for _ in 0..3 {
        watched.watch_tick(&vring, 0);
    }
    assert_eq!(driver.used_idx(), 0, "stopped (GET_VRING_BASE)");
    // A queue without memory or rings yet is not an error either.
    let (idle, _) = backend(Function::Vsic(0), 1);
    let unset = <Vring as VringT<GuestMemory>>::new(idle.session.mem.clone(), 16).unwrap();
    idle.watch_tick(&unset, 0);
    idle.watch_tick(&unset, 7);
}

#[test]
fn advertises_queues_threads_and_live_capacity() {
    let (vsic, _) = backend(Function::Vsic(0), 3);
    assert_eq!(vsic.num_queues(), 3);
    assert_eq!(vsic.queues_per_thread(), [1, 2, 4]);
    let config = vsic.get_config(0, 8);
    assert_eq!(
        u64::from_le_bytes(config.try_into().unwrap()),
        DISK_SIZE as u64 / 512
    );
    assert_eq!(vsic.get_config(34, 2), 3u16.to_le_bytes());
    assert!(
        vsic.get_config(u32::MAX, 4).is_empty(),
        "absurd ranges fail"
    );

    let (pf, _) = backend(Function::Pf, 1);
    assert_eq!(pf.queues_per_thread(), [1]);
    assert_eq!(pf.get_config(0, 8), [0; 8], "the PF has no storage");
}

#[test]
fn a_session_closes_the_exit_events_the_library_abandons() {
    let (backend, mem) = backend(Function::Vsic(1), 2);
    let session = backend.watch();
    let daemon = VhostUserDaemon::new("test".into(), backend.clone(), mem).unwrap();
    let fds = backend.session.exit_consumers.fds();
    assert_eq!(fds.len(), 2, "one exit event per queue worker");
    assert!(fds.iter().all(|&fd| is_eventfd(fd)));
    backend.stop_workers();
    drop(daemon);
    drop(backend);
    assert!(
        session.wait_ended(Duration::from_secs(5)),
        "the workers did not stop"
    );
    assert!(
        fds.iter().all(|&fd| !is_eventfd(fd)),
        "exit events left open"
    );
}

#[test]
fn without_the_socket_takeover_the_channel_is_kept_unused() {
    let _serial = crate::front::tests::SOCKET_TESTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let state = Arc::new(FunctionState {
        function: Function::Vsic(1),
        num_queues: 1,
        target: Arc::new(FakeTarget::new()),
        notifiers: Arc::new(ConfigNotifiers::new(2)),
        quiesce: Arc::new(RwLock::new(())),
        log: RefusalLog::default(),
        poll: Arc::new(PollPolicy::off()),
        workarounds: Workarounds {
            backend_socket_takeover: false,
            ..Workarounds::default()
        },
    });
    let backend = FunctionBackend::new(
        Arc::clone(&state),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    );
    let (ours, _frontend) = std::os::unix::net::UnixStream::pair().unwrap();
    backend.set_backend_req_fd(Backend::from_stream(ours));
    assert!(
        backend.session.unused_channel.lock().unwrap().is_some(),
        "the channel is kept open"
    );
    assert!(
        !state.notifiers.notify(1),
        "no configuration-change channel was installed"
    );
}
