//! The grid resolver at the gateway address (issue 5): grid names answered from the
//! record store, everything else forwarded upstream. Sans-I/O: the integrator feeds
//! datagrams, stream messages and time in, and sends what comes back. Nothing here
//! opens a socket, reads a clock or draws randomness that was not seeded by the caller.

pub mod config;
pub mod forward;
pub mod metrics;
pub mod records;
mod reply;
pub mod server;
pub mod tcp;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, ContainerEntry, DnsConfig, DnsSection};
pub use forward::{ClientReply, ForwarderConfig, Outgoing, Relayed, TimerEvent};
pub use metrics::{DnsCounters, DropReason};
pub use records::{Container, RecordError, RecordStore, Zone};
pub use server::{Action, DnsServer, UpstreamAction};

/// The transport a query came on; replies and forwarded queries use the same one.
pub use weft_netstack::base::Transport;
