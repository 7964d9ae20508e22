//! weft's packet path. `no_std` + `alloc`; never touches hardware, never reads a clock.
//!
//! Five layers, each importing only the ones before it (`tests/layers.rs` holds the
//! order and checks every `use crate::` line against it):
//!
//! - [`base`]: small shared values (which NIC, L4 protocol, flow tuple, VNI, node id);
//! - [`wire`]: bytes only, smoltcp style: VXLAN, VLAN, sleeve, L4 parse and rewrite,
//!   ICMP errors;
//! - [`table`]: state without parsing: conntrack, FDB, neighbours, Maglev, health;
//! - [`stage`]: decide and rewrite: the local endpoint, load balancing, NAT, routing,
//!   sleeve, the overlay bridge;
//! - [`pipeline`]: the only place that knows every stage: the NICs, ports and the poll
//!   loop.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod base;
pub mod pipeline;
pub mod stage;
pub mod table;
pub mod wire;

pub use base::{NicAddress, NicId, IP_MTU, MAX_FRAME_LEN};
pub use pipeline::counters::{NicCounters, NicDrop, NicDrops};
pub use pipeline::netstack::{Netstack, PollResult};
pub use pipeline::nic::{Nic, RX_BATCH};
pub use pipeline::pcap::PcapPort;
pub use pipeline::port::{MemPort, Port, TxError};
pub use stage::local::{NicIface, QueueDevice};
// The kernel and the appliance name time and addresses with smoltcp's types.
pub use smoltcp;
