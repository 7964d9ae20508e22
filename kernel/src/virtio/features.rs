//! virtio feature bits as weft's drivers use them: what each driver accepts, so the
//! boot log can say what each device offered and what was taken (`weft bench` records
//! both sides' sets from the consoles). Bit numbers: virtio 1.2, sections 6 and 5.1.3.

use bitflags::bitflags;
use virtio_drivers::transport::Transport as _;

use crate::virtio::Transport;

bitflags! {
    /// Any set of feature bits, for `Transport::begin_init` (which wants a flags type).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Bits: u64 {
        const _ = !0;
    }
}

pub const RING_EVENT_IDX: u64 = 1 << 29;
pub const VERSION_1: u64 = 1 << 32;

pub const NET_MAC: u64 = 1 << 5;

pub const CONSOLE_MULTIPORT: u64 = 1 << 1;

/// What the virtio-net driver (`virtio::net`) takes. The offload bits (CSUM, GUEST_CSUM,
/// TSO, MRG_RXBUF) are not among them yet.
pub const NET_TAKEN: u64 = NET_MAC | RING_EVENT_IDX | VERSION_1;

/// What the control console (`virtio::console`) negotiates.
pub const CONSOLE_TAKEN: u64 = CONSOLE_MULTIPORT | VERSION_1;

/// A device's feature bits: offered by the device, and taken by its driver.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    pub offered: u64,
    pub taken: u64,
}

impl Negotiated {
    /// Resets the device and negotiates (virtio 1.2, 3.1.1 up to FEATURES_OK): the
    /// device's offer, of which `accepted` is taken.
    pub fn begin_init(transport: &mut Transport, accepted: u64) -> Negotiated {
        let offered = transport.read_device_features();
        let taken = transport
            .begin_init(Bits::from_bits_retain(accepted))
            .bits();
        Negotiated { offered, taken }
    }
}

impl core::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "virtio features {:#x} of {:#x}",
            self.taken, self.offered
        )
    }
}
