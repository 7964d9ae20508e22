//! weft's packet path. `no_std` + `alloc`; never touches hardware, never reads a clock.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod base;
pub mod checksum;
pub mod conntrack;
pub mod counters;
pub mod datapath;
pub mod fdb;
pub mod health;
pub mod health_runner;
pub mod icmp_error;
pub mod iface;
pub mod lb;
pub mod maglev;
pub mod nat;
pub mod neighbor;
pub mod overlay;
pub mod pcap;
pub mod port;
pub mod probe;
pub mod router;
pub mod sleeve;
pub mod stack;
#[cfg(test)]
mod testing;
pub mod vlan;
pub mod vxlan;

pub use base::{NicAddress, NicId, IP_MTU, MAX_FRAME_LEN};
pub use counters::{DropCounters, DropReason, NicCounters};
pub use iface::{NicIface, QueueDevice};
pub use pcap::PcapPort;
pub use port::{MemPort, Port, TxError};
pub use stack::{Netstack, Nic, PollResult, RX_BATCH};
// The kernel and the appliance name time and addresses with smoltcp's types.
pub use smoltcp;
