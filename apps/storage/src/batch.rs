//! Writing a batch of blocks, and perhaps a flush, with one wait: every
//! request is submitted at once, then every completion collected. The
//! flush goes with the writes when the device executes in order
//! ([`BlockDevice::ordered_flush`]: one round trip), else it is sent once
//! they all completed (two). Nothing of a batch is in flight when
//! [`write_all`] returns. vsic-fs commits and vsic-mailq's synchronous
//! durable writes go through it.

use std::time::Duration;

use crate::{BlockDevice, Op, Result, StorageError};

/// Largest single device request.
pub const IO_CHUNK: usize = 1 << 20;
/// Longest wait for the next completion of a batch.
const WAIT: Duration = Duration::from_secs(30);

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Device requests sent (writes and flush).
    pub requests: u64,
    /// Whether a flush was sent (false on a write-through device).
    pub flushed: bool,
}

/// Writes each `(byte offset, bytes)` of `writes` (in requests of at most
/// [`IO_CHUNK`] bytes) and, with `flush`, makes them durable. Returns once
/// every request it submitted has completed; the first failure is the
/// error. `tags` numbers the requests (unique per device, so a completion
/// of an earlier batch that gave up waiting is never counted as one of
/// this batch's).
pub fn write_all(
    dev: &dyn BlockDevice,
    writes: &[(u64, &[u8])],
    flush: bool,
    tags: &mut u64,
) -> Result<Written> {
    let flush = flush && !dev.durable_writes();
    let together = flush && dev.ordered_flush();
    let first = *tags;
    let mut failed: Option<StorageError> = None;
    'submit: for &(offset, data) in writes {
        for (i, chunk) in data.chunks(IO_CHUNK).enumerate() {
            let sent = dev.alloc(chunk.len()).and_then(|mut buf| {
                buf.set_len(chunk.len());
                buf.as_mut_slice().copy_from_slice(chunk);
                let offset = offset + (i * IO_CHUNK) as u64;
                dev.submit(Op::Write { offset, buf }, *tags)
            });
            if let Err(e) = sent {
                failed = Some(e);
                break 'submit;
            }
            *tags += 1;
        }
    }
    if together && failed.is_none() {
        match dev.submit(Op::Flush, *tags) {
            Ok(()) => *tags += 1,
            Err(e) => failed = Some(e),
        }
    }
    let ours = first..*tags;
    let mut outstanding = *tags - first;
    while outstanding > 0 {
        dev.poll(&mut |c| {
            if !ours.contains(&c.tag) {
                return;
            }
            outstanding -= 1;
            if let Err(e) = c.result {
                failed.get_or_insert(e);
            }
        });
        if outstanding > 0 {
            // One wake-up for the whole batch, not one per completion.
            dev.wait_for(outstanding as usize, Some(WAIT))?;
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut requests = *tags - first;
    if flush && !together {
        dev.flush()?;
        requests += 1;
    }
    Ok(Written {
        requests,
        flushed: flush,
    })
}
