//! The frames the overlay datapath sends, collected per port while the ports are busy
//! receiving, and their transmission with the NIC's counters. Nothing here decides
//! where a frame goes.

use alloc::vec::Vec;

use crate::pipeline::counters::{NicCounters, NicDrop};
use crate::pipeline::port::Port;

/// Frames to send, collected while ports are busy receiving.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) uplink: Vec<Vec<u8>>,
    pub(super) link: Vec<Vec<u8>>,
}

/// Transmit (and take) `frames` on `port`, counting; true if any was sent. The
/// vector keeps its buffer for the next frame.
pub(super) fn flush(
    frames: &mut Vec<Vec<u8>>,
    port: &mut dyn Port,
    counters: &mut NicCounters,
) -> bool {
    let any = !frames.is_empty();
    for frame in frames.drain(..) {
        match port.transmit(&frame) {
            Ok(()) => counters.transmitted(frame.len()),
            Err(_) => counters.dropped(NicDrop::TxFull),
        }
    }
    any
}
