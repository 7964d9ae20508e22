//! A virtio-net device as a weft `Port`: receive hands frames to the netstack, transmit
//! queues one frame. The device's rx buffers are recycled right after the sink has seen
//! the frame, so the netstack never holds device memory.

use crate::virtio::hal::KernelHal;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::Error;
use weft_netstack::port::{Port, TxError};

const QUEUE_SIZE: usize = 64;
/// Room for a 1500-byte MTU frame plus the virtio-net header, with slack.
const BUF_LEN: usize = 2048;

pub struct NetPort {
    dev: VirtIONet<KernelHal, PciTransport, QUEUE_SIZE>,
    mac: EthernetAddress,
}

impl NetPort {
    pub fn new(transport: PciTransport) -> Result<Self, Error> {
        let dev = VirtIONet::new(transport, BUF_LEN)?;
        let mac = EthernetAddress(dev.mac_address());
        Ok(NetPort { dev, mac })
    }

    /// Reads (and so clears) the device's interrupt status; true if it had raised one.
    pub fn ack_interrupt(&mut self) -> bool {
        !self.dev.ack_interrupt().is_empty()
    }
}

impl Port for NetPort {
    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn receive_batch(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            match self.dev.receive() {
                Ok(rx) => {
                    sink(rx.packet());
                    n += 1;
                    if let Err(e) = self.dev.recycle_rx_buffer(rx) {
                        log::error!("virtio-net: recycling an rx buffer failed: {e:?}");
                        break;
                    }
                }
                Err(Error::NotReady) => break,
                Err(e) => {
                    log::warn!("virtio-net: receive failed: {e:?}");
                    break;
                }
            }
        }
        n
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if !self.dev.can_send() {
            return Err(TxError::QueueFull);
        }
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        self.dev.send(tx).map_err(|e| {
            log::warn!("virtio-net: send failed: {e:?}");
            TxError::QueueFull
        })
    }
}

impl NetPort {
    pub fn mac_addr(&self) -> EthernetAddress {
        self.mac
    }
}
