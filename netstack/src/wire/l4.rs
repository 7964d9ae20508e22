//! The L4 facts of an Ethernet/IPv4 frame that flows are keyed on: where its IPv4
//! header lies, its 5-tuple (an ICMP echo identifier stands in for both ports), what
//! kind of packet it is (TCP and its flags, UDP, echo request or reply, ICMP error), and
//! the tuple of the packet an ICMP error quotes.
//!
//! Read through smoltcp's checked views only. It never writes, never decides what a
//! packet may do, and never panics on what a frame says.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Address,
    Ipv4Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};

use crate::base::{Endpoint, FlowTuple, Proto};

/// The TCP flags that drive a flow's state machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// What kind of packet a frame carries, as far as flows care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp(TcpFlags),
    Udp,
    EchoRequest,
    EchoReply,
    /// Destination unreachable, time exceeded or parameter problem.
    IcmpError,
}

/// The parsed facts of a frame a flow can be keyed on.
#[derive(Clone, Copy, Debug)]
pub struct Parsed {
    /// Offset of the IPv4 header in the frame, and its header length.
    pub ip: usize,
    pub ihl: usize,
    /// End of the IPv4 packet in the frame (Ethernet padding excluded).
    pub end: usize,
    pub tuple: FlowTuple,
    pub kind: Kind,
}

impl Parsed {
    /// Offset of the L4 header in the frame.
    pub fn l4(&self) -> usize {
        self.ip + self.ihl
    }
}

/// What [`parse`] found.
#[derive(Clone, Copy, Debug)]
pub enum Parse {
    NotIpv4,
    /// An IPv4 or transport header truncated or inconsistent.
    Malformed,
    /// IPv4 that carries nothing a flow can be keyed on (other protocols, other ICMP
    /// types, non-first fragments); `dst` decides whether that matters.
    Opaque {
        dst: Ipv4Address,
        fragment: bool,
    },
    Ok(Parsed),
}

/// The flow facts of an Ethernet frame.
pub fn parse(frame: &[u8]) -> Parse {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Parse::Malformed;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Parse::NotIpv4;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Parse::Malformed;
    };
    if ip.version() != 4 {
        return Parse::Malformed;
    }
    let ihl = usize::from(ip.header_len());
    let end = ETHERNET_HEADER_LEN + usize::from(ip.total_len());
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Parse::Opaque {
            dst,
            fragment: true,
        };
    }
    let l4 = &frame[ETHERNET_HEADER_LEN + ihl..end];
    let ports = |proto, sport, dport| {
        FlowTuple::new(proto, Endpoint::new(src, sport), Endpoint::new(dst, dport))
    };
    let (tuple, kind) = match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(l4) else {
                return Parse::Malformed;
            };
            let flags = TcpFlags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            };
            (
                ports(Proto::Tcp, tcp.src_port(), tcp.dst_port()),
                Kind::Tcp(flags),
            )
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(l4) else {
                return Parse::Malformed;
            };
            (ports(Proto::Udp, udp.src_port(), udp.dst_port()), Kind::Udp)
        }
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
                return Parse::Malformed;
            };
            let kind = match icmp.msg_type() {
                Icmpv4Message::EchoRequest => Kind::EchoRequest,
                Icmpv4Message::EchoReply => Kind::EchoReply,
                Icmpv4Message::DstUnreachable
                | Icmpv4Message::TimeExceeded
                | Icmpv4Message::ParamProblem => Kind::IcmpError,
                _ => {
                    return Parse::Opaque {
                        dst,
                        fragment: false,
                    }
                }
            };
            let id = if kind == Kind::IcmpError {
                0
            } else {
                icmp.echo_ident()
            };
            (ports(Proto::Icmp, id, id), kind)
        }
        _ => {
            return Parse::Opaque {
                dst,
                fragment: false,
            }
        }
    };
    Parse::Ok(Parsed {
        ip: ETHERNET_HEADER_LEN,
        ihl,
        end,
        tuple,
        kind,
    })
}

/// What an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quote {
    /// Less than an IPv4 header and 8 bytes of its payload (RFC 792), or not IPv4.
    Malformed,
    /// A quoted packet no flow can be keyed on: another protocol, or a non-first
    /// fragment.
    Untracked,
    /// The quoted packet's header length and its tuple as it was sent.
    Ok { ihl: usize, tuple: FlowTuple },
}

/// The packet quoted by an ICMP error: `quote` is what follows the error's ICMP
/// header, up to the end of its IPv4 packet (it is often cut short).
pub fn parse_quote(quote: &[u8]) -> Quote {
    if quote.len() < IPV4_HEADER_LEN {
        return Quote::Malformed;
    }
    // Unchecked: a quote is shorter than the total length its header claims, and
    // only the header and the first 8 bytes after it are read, checked just below.
    let ip = Ipv4Packet::new_unchecked(quote);
    if ip.version() != 4 {
        return Quote::Malformed;
    }
    let ihl = usize::from(ip.header_len());
    if ihl < IPV4_HEADER_LEN || quote.len() < ihl + 8 {
        return Quote::Malformed;
    }
    let proto = match ip.next_header() {
        IpProtocol::Tcp => Proto::Tcp,
        IpProtocol::Udp => Proto::Udp,
        IpProtocol::Icmp => Proto::Icmp,
        _ => return Quote::Untracked,
    };
    if ip.frag_offset() != 0 {
        return Quote::Untracked;
    }
    let l4 = &quote[ihl..];
    let (sport, dport) = match proto {
        Proto::Tcp => {
            let tcp = TcpPacket::new_unchecked(l4);
            (tcp.src_port(), tcp.dst_port())
        }
        Proto::Udp => {
            let udp = UdpPacket::new_unchecked(l4);
            (udp.src_port(), udp.dst_port())
        }
        Proto::Icmp => {
            let id = Icmpv4Packet::new_unchecked(l4).echo_ident();
            (id, id)
        }
    };
    let tuple = FlowTuple::new(
        proto,
        Endpoint::new(ip.src_addr(), sport),
        Endpoint::new(ip.dst_addr(), dport),
    );
    Quote::Ok { ihl, tuple }
}
