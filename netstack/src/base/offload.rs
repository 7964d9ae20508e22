//! What a port says about one frame besides its bytes, and what a port's device can do:
//! the checksum state and the segmentation request of a virtio-net header (virtio 1.2,
//! 5.1.6), in the device-neutral shape the packet path uses.
//!
//! Plain values only: nothing here reads a frame or decides what to do with one.

/// The state of a frame's transport checksum (the one L4 checksum a virtio-net header
/// speaks of: TCP or UDP of the outermost IP packet, or the one at `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Csum {
    /// Nothing is known: whoever relies on the checksum verifies it.
    #[default]
    Unknown,
    /// Verified, or from a source trusted not to corrupt (the host's own stack): the frame
    /// may be forwarded or merged without looking at the checksum again.
    Valid,
    /// Not yet computed: the field at `start + offset` holds the sum of the pseudo-header
    /// only, and the one's complement sum from `start` to the end of the frame must be
    /// written there (`NEEDS_CSUM`). The rest of the frame is trusted, as for `Valid`.
    Partial { start: u16, offset: u16 },
}

/// A segmentation request: the frame is a TCP/IPv4 super-frame whose payload is sent as
/// segments of `mss` bytes (the last one shorter), each with its own headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub mss: u16,
    /// The sender set CWR on the super-frame (`gso_type` ECN): only the first segment
    /// carries it.
    pub ecn: bool,
}

/// The offload record of one frame, received or to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    pub csum: Csum,
    pub gso: Option<Gso>,
}

impl Offload {
    /// A plain frame: complete checksums (or none known), no segmentation.
    pub const NONE: Offload = Offload {
        csum: Csum::Unknown,
        gso: None,
    };

    /// Whether the frame asks its receiver for no work at all.
    pub fn is_plain(&self) -> bool {
        self.gso.is_none() && !matches!(self.csum, Csum::Partial { .. })
    }
}

/// What a port's device negotiated, by direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Received frames may carry `Csum::Partial` or `Csum::Valid` (`GUEST_CSUM`).
    pub rx_csum: bool,
    /// Received frames may be TCP/IPv4 super-frames (`GUEST_TSO4`).
    pub rx_tso4: bool,
    /// Frames may be sent with `Csum::Partial`: the device completes them (`CSUM`).
    pub tx_csum: bool,
    /// TCP/IPv4 super-frames may be sent (`HOST_TSO4`, with `tx_csum`).
    pub tx_tso4: bool,
}

impl Offloads {
    pub const NONE: Offloads = Offloads {
        rx_csum: false,
        rx_tso4: false,
        tx_csum: false,
        tx_tso4: false,
    };

    /// Whether a frame with `offload` may be handed to this port as it is.
    pub fn can_send(&self, offload: &Offload) -> bool {
        let csum_ok = !matches!(offload.csum, Csum::Partial { .. }) || self.tx_csum;
        let gso_ok = offload.gso.is_none() || (self.tx_tso4 && self.tx_csum);
        csum_ok && gso_ok
    }
}

/// The largest super-frame a port hands over or takes: an IPv4 packet of 65 535 bytes
/// behind an Ethernet header and one 802.1Q tag.
pub const MAX_SUPER_FRAME_LEN: usize = 14 + 4 + 65_535;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_without_offloads_takes_only_plain_frames() {
        let partial = Offload {
            csum: Csum::Partial {
                start: 34,
                offset: 16,
            },
            gso: None,
        };
        let tso = Offload {
            gso: Some(Gso {
                mss: 1400,
                ecn: false,
            }),
            ..partial
        };
        assert!(Offloads::NONE.can_send(&Offload::NONE));
        assert!(!Offloads::NONE.can_send(&partial));
        let csum_only = Offloads {
            tx_csum: true,
            ..Offloads::NONE
        };
        assert!(csum_only.can_send(&partial));
        assert!(!csum_only.can_send(&tso));
        let all = Offloads {
            tx_tso4: true,
            ..csum_only
        };
        assert!(all.can_send(&tso));
        assert!(!partial.is_plain() && Offload::NONE.is_plain());
    }
}
