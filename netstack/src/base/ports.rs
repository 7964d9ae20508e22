//! The port plan: how the appliance splits the UDP/TCP port space on its own addresses,
//! so that no reply to one of its own sockets matches a translated flow and no published
//! port takes a port it serves.
//!
//! ```text
//!     53  DNS                 4789  VXLAN        6783/6784  sleeve, fast datapath
//!  31744..=32767  health-check sources     32768..=60999  masquerade (SNAT)
//!  61000..=65535  the DNS forwarder's upstream queries (the appliance's `dns::forward`)
//! ```

use core::ops::RangeInclusive;

/// DNS, answered at the gateway address.
pub const DNS_PORT: u16 = 53;
/// The IANA-assigned VXLAN UDP port (RFC 7348 section 5); Linux's default too.
pub const VXLAN_PORT: u16 = 4789;
/// Sleeve's UDP port (docs/sleeve.md; Weave's sleeve port).
pub const SLEEVE_PORT: u16 = 6783;
/// Weave's fast datapath port, kept free beside sleeve's.
pub const FASTDP_PORT: u16 = 6784;

/// Ports the appliance itself serves on its addresses: DNS, VXLAN, sleeve
/// control/data and fast datapath. Never publishable, for TCP or UDP.
pub const RESERVED_PORTS: [u16; 4] = [DNS_PORT, VXLAN_PORT, SLEEVE_PORT, FASTDP_PORT];

/// Source ports of health checks: just below [`SNAT_PORTS`] and far from the DNS
/// forwarder's (61000..); publish rules may not use them.
pub const CHECK_PORTS: RangeInclusive<u16> = 31744..=32767;

/// External ports of masquerade, inclusive: Docker's ephemeral range.
pub const SNAT_PORTS: (u16, u16) = (32768, 60999);
