//! Bytes only, in smoltcp's style: a `Packet<T>` view with a private `field` module and a
//! `Repr` for the formats smoltcp lacks (VXLAN, sleeve), the outer headers both tunnels
//! arrive in, 802.1Q tags, the L4 facts of a
//! frame and their rewrite with incremental checksums, the ICMP errors the appliance
//! sends, the probe frames (ARP who-has, ICMP echo), and the offloads done in software:
//! checksums over payloads (`sum`), TCP segmentation (`tso`) and merging (`gro`).
//!
//! Nothing here keeps state, decides where a frame goes or panics on what the network
//! sends; it reads and writes bytes and says what they mean.

pub mod buffer;
pub mod checksum;
pub mod gro;
pub mod icmp_error;
pub mod l4;
pub mod outer;
pub mod probe;
pub mod rewrite;
pub mod sleeve;
pub mod sum;
pub mod tso;
pub mod vlan;
pub mod vxlan;
