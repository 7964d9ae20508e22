//! Decide and rewrite: each stage takes one frame (or one payload) and says what becomes
//! of it, rewriting it in place where it translates.
//!
//! - `local`: the appliance's own endpoint on a NIC (smoltcp: ARP, ICMP, DNS, checks);
//! - `lb`: services, the Maglev choice among healthy backends, their health checks;
//! - `nat`: port publishing (DNAT), masquerade (SNAT), hairpin, ICMP error translation;
//! - `route`: the routed path between the NICs around the NAT: next hops, TTL, ARP;
//! - `sleeve`: sealing and opening the encrypted overlay transport;
//! - `overlay`: the VTEP: the L2 bridge of each network, VXLAN/sleeve encap and decap.
//!
//! A stage uses only the stages listed before it here, never a later one, and never the
//! pipeline: which stage sees a frame when is the pipeline's business.

pub mod lb;
pub mod local;
pub mod nat;
pub mod overlay;
pub mod route;
pub mod sleeve;
