//! Durability on write-back and write-through devices, against a model of
//! a device with a volatile write cache: a completed write reaches the
//! "medium" only at the next flush (write-back) or at once
//! (write-through). A power loss keeps the medium and loses the cache; a
//! store reopened on what the medium held must have every acknowledged
//! update. On a write-through device the store must answer without
//! flushing (the "one write under write-through").

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Backend;
use vsic_kv::{Reply, SetCond, Store, StoreOptions, WriteCmd};
use vsic_storage::{
    BlockDevice, Completion, FileDevice, IoBuf, Op, OpKind, OpenOptions, Result, StorageError,
};

/// What the model's medium holds, and how many flushes reached it.
#[derive(Default)]
struct Medium {
    image: Vec<u8>,
    /// Completed writes not yet durable (write-back only).
    cached: Vec<(u64, Vec<u8>)>,
    flushes: u64,
}

/// A file device (what reads see) plus the medium model. `claims` is what
/// it tells the store through `durable_writes`; `write_through` is how it
/// really behaves.
struct CacheModel {
    inner: FileDevice,
    write_through: bool,
    claims: bool,
    medium: Arc<Mutex<Medium>>,
    done: Mutex<VecDeque<Completion>>,
}

impl CacheModel {
    fn new(path: &str, write_through: bool, claims: bool) -> (CacheModel, Arc<Mutex<Medium>>) {
        let inner = FileDevice::open(path, &OpenOptions::default()).expect("open the file");
        let image = std::fs::read(path).expect("read the file");
        let medium = Arc::new(Mutex::new(Medium {
            image,
            ..Medium::default()
        }));
        let m = CacheModel {
            inner,
            write_through,
            claims,
            medium: medium.clone(),
            done: Mutex::new(VecDeque::new()),
        };
        (m, medium)
    }
}

impl BlockDevice for CacheModel {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn alloc(&self, len: usize) -> Result<IoBuf> {
        self.inner.alloc(len)
    }
    fn submit(&self, op: Op, tag: u64) -> Result<()> {
        // Run it to completion now (the store has one request in flight
        // at a time on this path), then record what reached the medium.
        let (kind, write_at) = match &op {
            Op::Read { .. } => (OpKind::Read, None),
            Op::Write { offset, .. } => (OpKind::Write, Some(*offset)),
            Op::Flush => (OpKind::Flush, None),
        };
        let buf = self.inner.run(op)?;
        let mut m = self.medium.lock().unwrap();
        match (kind, write_at, &buf) {
            (OpKind::Write, Some(at), Some(b)) => {
                let w = (at, b.as_slice().to_vec());
                if self.write_through {
                    apply(&mut m.image, &w);
                } else {
                    m.cached.push(w);
                }
            }
            (OpKind::Flush, _, _) => {
                m.flushes += 1;
                let cached = std::mem::take(&mut m.cached);
                cached.iter().for_each(|w| apply(&mut m.image, w));
            }
            _ => {}
        }
        self.done.lock().unwrap().push_back(Completion {
            tag,
            kind,
            buf,
            result: Ok(()),
        });
        Ok(())
    }
    fn poll(&self, cb: &mut dyn FnMut(Completion)) -> usize {
        let done = std::mem::take(&mut *self.done.lock().unwrap());
        let n = done.len();
        done.into_iter().for_each(cb);
        n
    }
    fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        if self.done.lock().unwrap().is_empty() {
            std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)));
            return Err(StorageError::Timeout);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("cache model over {}", self.inner.describe())
    }
    fn durable_writes(&self) -> bool {
        self.claims
    }
}

fn apply(image: &mut [u8], (at, data): &(u64, Vec<u8>)) {
    let at = *at as usize;
    image[at..at + data.len()].copy_from_slice(data);
}

struct Outcome {
    acked: u64,
    /// Acknowledged keys missing after the power loss.
    lost: u64,
    /// Flushes that reached the device while the store opened and answered.
    flushes: u64,
}

/// Opens a store on the model, acknowledges `n` SETs (with a compaction in
/// the middle), cuts the power, and reopens on what the medium held.
fn power_loss_after_acks(tag: &str, write_through: bool, claims: bool, n: u64) -> Outcome {
    let b = Backend::file(tag, 8 << 20);
    let path = b.image().clone();
    let (model, medium) = CacheModel::new(path.to_str().unwrap(), write_through, claims);
    let store = Store::open(Box::new(model), StoreOptions::default()).expect("open the store");
    let mut acked = 0;
    for i in 0..n {
        let r = store.execute(WriteCmd::Set {
            key: format!("k{i}").into_bytes(),
            value: vsic_kv::seq_value(i),
            cond: SetCond::Always,
        });
        assert_eq!(r, Reply::Ok, "set k{i}");
        acked += 1;
        if i == n / 2 {
            store.compact().expect("compact");
        }
    }
    // Power lost now: only the medium survives.
    let (image, flushes) = {
        let m = medium.lock().unwrap();
        (m.image.clone(), m.flushes)
    };
    drop(store);
    let after = b.dir.path("after.img");
    std::fs::write(&after, &image).expect("write the medium's image");
    let dev = FileDevice::open(after.to_str().unwrap(), &OpenOptions::default()).unwrap();
    let store = Store::open(Box::new(dev), StoreOptions::default()).expect("reopen");
    let lost = (0..n)
        .filter(|&i| store.get(format!("k{i}").as_bytes()) != Some(vsic_kv::seq_value(i)))
        .count() as u64;
    Outcome {
        acked,
        lost,
        flushes,
    }
}

#[test]
fn write_back_device_gets_a_flush_before_each_answer() {
    let o = power_loss_after_acks("wb", false, false, 60);
    assert_eq!(
        o.lost, 0,
        "acknowledged updates lost on a write-back device"
    );
    assert!(
        o.flushes >= o.acked,
        "{} flushes for {} one-client commits",
        o.flushes,
        o.acked
    );
}

#[test]
fn write_through_device_answers_without_flushing_and_loses_nothing() {
    let o = power_loss_after_acks("wt", true, true, 60);
    assert_eq!(
        o.lost, 0,
        "acknowledged updates lost on a write-through device"
    );
    assert_eq!(o.flushes, 0, "a write-through device needs no flush");
}

/// The check above can fail: a device that claims write-through but has a
/// volatile cache loses acknowledged updates, so the store must only skip
/// the flush on the device's word.
#[test]
fn a_device_lying_about_write_through_loses_updates() {
    let o = power_loss_after_acks("liar", false, true, 60);
    assert_eq!(o.flushes, 0);
    assert!(
        o.lost > 0,
        "the model lost nothing: it does not model a cache"
    );
}
