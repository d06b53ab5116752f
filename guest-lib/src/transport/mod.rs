//! The boundary between the virtio driver core and how the device is reached.
//!
//! The driver core (rings, requests) speaks only to [`Transport`]. Two
//! implementations: [`vhost_user::VhostUserTransport`], the library as a
//! vhost-user frontend on the host, and [`vfio::VfioTransport`], a
//! virtio-pci driver over VFIO inside a guest (features, config space,
//! queue registers, doorbells, MSI-X eventfds and pinned DMA memory map
//! one-to-one onto the methods below).

pub mod pci;
pub mod vfio;
mod vfio_sys;
pub mod vhost_user;
mod virtio_pci;

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::dma::DmaRegion;
use crate::error::Error;

/// Where queue `index` sits in a transport's per-queue tables, if the
/// device has that queue.
fn queue_slot(index: u16, queues: u16) -> Result<usize, Error> {
    if index < queues {
        Ok(index as usize)
    } else {
        Err(Error::NoSuchQueue {
            queue: index,
            queues,
        })
    }
}

/// Where the device finds one split virtqueue (all addresses are IOVAs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueAddrs {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// One opened virtio device, seen through its transport.
///
/// Setup calls (`&mut self`) happen once, in this order: features,
/// queues, enable. Afterwards only `&self` calls are made, possibly from
/// several threads at once (one per queue).
pub trait Transport: Send + Sync {
    /// Feature bits the device offers (virtio bit numbers).
    fn device_features(&self) -> u64;

    /// Acknowledges the subset of device features the driver uses.
    fn set_driver_features(&mut self, features: u64) -> Result<(), Error>;

    /// How many request queues the device has.
    fn max_queues(&self) -> u16;

    /// Largest queue size the device accepts, if it says.
    fn max_queue_size(&self) -> Option<u16>;

    /// Reads `buf.len()` bytes of the device configuration space at `offset`.
    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<(), Error>;

    /// The memory the device can reach. Rings and buffers live here.
    fn dma_region(&self) -> &Arc<DmaRegion>;

    /// Tells the device where queue `index` lives.
    fn setup_queue(&mut self, index: u16, addrs: &QueueAddrs) -> Result<(), Error>;

    /// Starts the first `count` queues (all previously set up).
    fn enable_queues(&mut self, count: u16) -> Result<(), Error>;

    /// Tells the device that queue `index` has new available buffers.
    fn notify(&self, index: u16) -> Result<(), Error>;

    /// The eventfd the device signals when queue `index` has used buffers.
    fn queue_interrupt(&self, index: u16) -> Option<&EventFd>;

    /// The eventfd signalled when the configuration space changes, if the
    /// transport delivers that event.
    fn config_interrupt(&self) -> Option<&EventFd>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_slots_stop_at_the_device_queue_count() {
        assert_eq!(queue_slot(0, 2).ok(), Some(0));
        assert_eq!(queue_slot(1, 2).ok(), Some(1));
        assert!(matches!(
            queue_slot(2, 2),
            Err(Error::NoSuchQueue {
                queue: 2,
                queues: 2
            })
        ));
        assert!(matches!(queue_slot(0, 0), Err(Error::NoSuchQueue { .. })));
    }
}
