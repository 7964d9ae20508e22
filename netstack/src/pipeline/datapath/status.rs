//! What `status` shows about the overlay datapath: the VTEP's own status, the datapath's
//! counters and the underlay neighbours. Read from the datapath; nothing here changes it.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::OverlayPath;
use crate::base::Mac;
use crate::stage::overlay::OverlayStatus;
use crate::table::neighbor::NeighborCounters;

/// Counters of the datapath itself (the overlay and the NICs count the rest).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathCounters {
    /// Link frames dropped: tagged with a VLAN no network uses (or the reserved 4095).
    pub unknown_vlan: u64,
    /// Frames of the appliance's interface sent to every segment, because no host
    /// it talked to said which one (e.g. its ARP requests for an unknown address).
    pub appliance_flooded: u64,
}

/// One resolved underlay neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborStatus {
    pub ip: Ipv4Address,
    pub mac: Mac,
}

/// What `status` shows about the overlay: the VTEP's own status, plus the link VLANs'
/// and the underlay neighbours' counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    #[serde(flatten)]
    pub overlay: OverlayStatus,
    pub datapath: DatapathCounters,
    pub underlay_arp: NeighborCounters,
    pub underlay_neighbors: Vec<NeighborStatus>,
}

impl OverlayPath {
    /// What `status` shows about the overlay and its datapath at `now`.
    pub fn status(&self, now: Instant) -> DatapathStatus {
        DatapathStatus {
            overlay: self.overlay.status(now),
            datapath: self.counters,
            underlay_arp: self.neighbors.counters(),
            underlay_neighbors: self
                .neighbors
                .iter()
                .map(|(ip, mac)| NeighborStatus {
                    ip: *ip,
                    mac: Mac(*mac),
                })
                .collect(),
        }
    }
}
