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

pub const NET_CSUM: u64 = 1 << 0;
pub const NET_GUEST_CSUM: u64 = 1 << 1;
pub const NET_MAC: u64 = 1 << 5;
pub const NET_GUEST_TSO4: u64 = 1 << 7;
pub const NET_HOST_TSO4: u64 = 1 << 11;
pub const NET_MRG_RXBUF: u64 = 1 << 15;

pub const CONSOLE_MULTIPORT: u64 = 1 << 1;

/// What the virtio-net driver (`virtio::net`) takes on every NIC.
pub const NET_TAKEN: u64 = NET_MAC | RING_EVENT_IDX | VERSION_1;

/// The checksum offloads, both ways: the device completes partial checksums we send
/// (CSUM) and hands over frames with partial or verified ones (GUEST_CSUM).
pub const NET_CSUM_OFFLOADS: u64 = NET_CSUM | NET_GUEST_CSUM;

/// TCP/IPv4 super-frames both ways, which need the checksum offloads (virtio 1.2,
/// 5.1.3.1) and, to be received in pool-sized buffers, mergeable receive buffers.
pub const NET_TSO_OFFLOADS: u64 = NET_GUEST_TSO4 | NET_HOST_TSO4 | NET_MRG_RXBUF;

/// The offload bits a NIC asks for beyond [`NET_TAKEN`]: checksums, and with `tso` the
/// super-frames too. Receiving super-frames is asked for only with mergeable buffers
/// (weft posts no 64 KiB buffers).
pub fn net_offloads_wanted(offered: u64, tso: bool) -> u64 {
    let mut wanted = NET_CSUM_OFFLOADS;
    if tso {
        wanted |= NET_TSO_OFFLOADS;
        if offered & NET_MRG_RXBUF == 0 {
            wanted &= !NET_GUEST_TSO4;
        }
    }
    wanted
}

/// Names of the offload bits in `bits`, for the boot log and the bench record.
pub fn net_offload_names(bits: u64) -> impl Iterator<Item = &'static str> {
    [
        (NET_CSUM, "csum"),
        (NET_GUEST_CSUM, "guest_csum"),
        (NET_GUEST_TSO4, "guest_tso4"),
        (NET_HOST_TSO4, "host_tso4"),
        (NET_MRG_RXBUF, "mrg_rxbuf"),
    ]
    .into_iter()
    .filter(move |(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
}

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
        Self::begin_init_offered(transport, offered, accepted)
    }

    /// [`Negotiated::begin_init`] for a driver that read the offer first to choose.
    pub fn begin_init_offered(
        transport: &mut Transport,
        offered: u64,
        accepted: u64,
    ) -> Negotiated {
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
