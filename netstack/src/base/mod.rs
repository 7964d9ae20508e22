//! The small types every layer shares: which NIC, an L4 protocol and endpoint, the tuple
//! and direction of a flow, the ids of networks and nodes, a MAC address as people write
//! it, how the port space is split, the error that names a refused config field, and a
//! frame's offload record (checksum state, segmentation) as ports hand it over; and, for
//! the tests of every layer, a seeded random number generator.
//!
//! Plain values only: nothing here parses a frame, keeps state or decides anything, and
//! nothing here imports another part of the crate.

mod field_error;
mod flow;
mod mac;
mod nic;
mod node;
mod offload;
pub mod ports;
#[cfg(any(test, feature = "test-rng"))]
pub mod test_rng;
mod vlan_id;
mod vni;

pub use field_error::FieldError;
pub use flow::{Direction, Endpoint, FlowTuple, Proto, Transport};
pub use mac::{parse_mac, Mac};
pub use nic::{NicAddress, NicId, IP_MTU, MAX_FRAME_LEN};
pub use node::NodeId;
pub use offload::{Csum, Gso, Offload, Offloads, MAX_SUPER_FRAME_LEN};
pub use vlan_id::VlanId;
pub use vni::{Vni, VniOutOfRange};
