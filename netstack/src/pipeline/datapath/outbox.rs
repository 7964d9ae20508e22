//! The frames the overlay datapath sends, collected per port while the ports are busy
//! receiving, and their transmission with the NIC's counters. Nothing here decides
//! where a frame goes.

use alloc::vec::Vec;

use crate::pipeline::counters::NicCounters;
use crate::pipeline::port::{BufPool, PacketBuf, Port};
use crate::stage::route::Segment;

/// Frames to send, collected while ports are busy receiving. Kept between polls, so
/// its vectors allocate once; a clone of the datapath starts with an empty one.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) uplink: Vec<PacketBuf>,
    pub(super) link: Vec<PacketBuf>,
    /// The router's container-side output, taken from it to be sent into segments.
    pub(super) routed: Vec<(Option<Segment>, PacketBuf)>,
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        Outbox::default()
    }
}

impl Outbox {
    /// A frame built outside the pipeline's buffers, for the uplink.
    pub(super) fn uplink_vec(&mut self, frame: Vec<u8>) {
        self.uplink.push(PacketBuf::from_vec(frame));
    }
}

/// Transmit (and take) `frames` on `port`, counting; true if any was sent. The
/// vector keeps its buffer for the next frame.
pub(super) fn flush(
    frames: &mut Vec<PacketBuf>,
    port: &mut dyn Port,
    pool: &mut BufPool,
    counters: &mut NicCounters,
) -> bool {
    let any = !frames.is_empty();
    for frame in frames.drain(..) {
        let len = frame.len();
        counters.sent(port.transmit(pool, frame), len);
    }
    any
}
