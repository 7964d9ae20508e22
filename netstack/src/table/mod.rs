//! State without parsing: the connection-tracking table, the overlay's forwarding
//! database and ARP-suppression table, the neighbour table of the ARP resolver, the
//! masquerade port mappings, Maglev lookup tables and backend health.
//!
//! Tables are fed values (tuples, addresses, outcomes) and time as an argument; they
//! never parse a frame, never read a clock and never send anything.

pub mod conntrack;
pub mod fdb;
pub mod health;
pub mod maglev;
pub mod neighbor;
pub mod rate_limit;
pub mod snat;
