//! What names a flow: the L4 protocols (a transport with ports, or the protocols a flow
//! may carry), an address and port, the 5-tuple of one direction, and which direction a
//! packet travels. Values only; the table of flows is `table::conntrack`.

use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::wire::Ipv4Address;

/// A transport protocol with ports: what a published port, a service, a health check or
/// a DNS query travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn proto(self) -> Proto {
        match self {
            Transport::Tcp => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proto().name())
    }
}

/// The protocols a flow may carry: a [`Transport`], or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo; the identifier plays the role of both ports.
    Icmp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    /// The transport with ports this protocol is, if it is one.
    pub fn transport(self) -> Option<Transport> {
        match self {
            Proto::Tcp => Some(Transport::Tcp),
            Proto::Udp => Some(Transport::Udp),
            Proto::Icmp => None,
        }
    }
}

/// An address and a transport port (or ICMP echo identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub addr: Ipv4Address,
    pub port: u16,
}

impl Endpoint {
    pub const fn new(addr: Ipv4Address, port: u16) -> Endpoint {
        Endpoint { addr, port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// A flow's 5-tuple as seen on the wire in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FlowTuple {
    pub proto: Proto,
    pub src: Endpoint,
    pub dst: Endpoint,
}

impl FlowTuple {
    pub const fn new(proto: Proto, src: Endpoint, dst: Endpoint) -> FlowTuple {
        FlowTuple { proto, src, dst }
    }

    /// The tuple of a packet travelling the other way.
    pub const fn reversed(&self) -> FlowTuple {
        FlowTuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }
}

/// Which of a flow's two tuples a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the endpoint that opened the flow.
    Original,
    /// From the endpoint that answers.
    Reply,
}

impl Direction {
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }
}
