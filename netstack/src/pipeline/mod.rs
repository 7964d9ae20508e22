//! The only place that knows every stage: the NICs (a port, the local endpoint and
//! counters each), the ports frames come in and go out by, and `Netstack::poll`, which
//! moves each received frame through the stages it needs and transmits what they emit.
//!
//! It reads a frame only as far as it needs to choose a stage (its NIC, its VLAN, the
//! segment of a host), through `wire`'s views; it never reads a clock and never blocks:
//! ports hand over what they have, time comes in as an argument.

pub mod counters;
pub mod datapath;
pub mod netstack;
pub mod nic;
pub mod pcap;
pub mod port;
