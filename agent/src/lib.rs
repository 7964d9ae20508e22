//! `weft agent`: the host daemon that keeps a grid of weft appliances in one state.
//! The grid lives in etcd (or, on one host, a file); each host's agent writes its node
//! and containers there, watches the rest, and makes its own appliance follow
//! (peers, FDB entries, DNS records, published ports, service backends) through the
//! appliance's one control socket, which it owns; everything else talks to the
//! agent's API socket, which speaks the same protocol. Host `std` code (tokio,
//! `etcd-client`); the appliance itself stays `no_std`.
//!
//! Layout: `schema` (the store's keys and values), `grid` (the agent's view of them),
//! `sync` (the pure state machine: grid + node document -> appliance commands),
//! `store` (etcd and file backends), `registry` (the grid's writes and their rules),
//! `follow` (joining and watching the store), `link` (the control socket), `api` and
//! `handler` (the API socket; `netinfo` answers what a network is like), `supervisor` (booting the appliance), `agent` (the
//! loop that ties them together).

pub mod agent;
pub mod api;
pub mod follow;
pub mod grid;
pub mod handler;
pub mod link;
pub mod metrics;
pub mod netinfo;
pub mod registry;
pub mod schema;
pub mod store;
pub mod supervisor;
pub mod sync;

pub use agent::{run, AgentOptions, AgentThread, DEFAULT_TTL};
pub use store::StoreSpec;
pub use supervisor::BootSpec;
