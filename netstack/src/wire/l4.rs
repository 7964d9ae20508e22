//! The L4 facts of an Ethernet/IPv4 frame that flows are keyed on: where its IPv4
//! header lies, its 5-tuple (an ICMP echo identifier stands in for both ports), what
//! kind of packet it is (TCP and its flags, UDP, echo request or reply, ICMP error), and
//! the tuple of the packet an ICMP error quotes.
//!
//! A frame's headers are read at their fixed offsets once their lengths are checked as
//! smoltcp's checked views check them; a quote through smoltcp's views. It never
//! writes, never decides what a packet may do, and never panics on what a frame says.

use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
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

/// Where the fields [`parse`] reads lie (RFC 894, 791, 793, 768, 792).
mod field {
    pub const ETHERTYPE: usize = 12;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const IP_TOTAL_LEN: usize = 2;
    /// Flags and fragment offset: more fragments (0x2000) and the offset (0x1fff).
    pub const IP_FRAGMENT: usize = 6;
    pub const IP_FRAGMENTED: u16 = 0x3fff;
    pub const IP_PROTOCOL: usize = 9;
    pub const IP_SRC: usize = 12;
    pub const IP_DST: usize = 16;
    pub const TCP_HEADER_LEN: usize = 20;
    /// The data offset (high nibble) and the flags (next byte).
    pub const TCP_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;
    pub const UDP_HEADER_LEN: usize = 8;
    pub const UDP_LEN: usize = 4;
    pub const ICMP_HEADER_LEN: usize = 8;
    pub const ICMP_ECHO_IDENT: usize = 4;
}

/// The 16-bit big-endian field at `at` of a header of `N` bytes.
#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

/// The flow facts of an Ethernet frame.
///
/// Each header is taken as a fixed-size array once its length is checked and its
/// fields read at their offsets: what smoltcp's checked views accept and refuse
/// (`new_checked`), without a bounds check per field (the tests hold the two equal).
pub fn parse(frame: &[u8]) -> Parse {
    let Some((eth, payload)) = frame.split_first_chunk::<ETHERNET_HEADER_LEN>() else {
        return Parse::Malformed;
    };
    if be16(eth, field::ETHERTYPE) != field::ETHERTYPE_IPV4 {
        return Parse::NotIpv4;
    }
    let Some(ip) = payload.first_chunk::<IPV4_HEADER_LEN>() else {
        return Parse::Malformed;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, field::IP_TOTAL_LEN));
    if payload.len() < ihl
        || ihl > total
        || payload.len() < total
        || ihl < IPV4_HEADER_LEN
        || ip[0] >> 4 != 4
    {
        return Parse::Malformed;
    }
    let at = |i: usize| Ipv4Address::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]);
    let (src, dst) = (at(field::IP_SRC), at(field::IP_DST));
    if be16(ip, field::IP_FRAGMENT) & field::IP_FRAGMENTED != 0 {
        return Parse::Opaque {
            dst,
            fragment: true,
        };
    }
    let l4 = &payload[ihl..total];
    let ports = |proto, sport, dport| {
        FlowTuple::new(proto, Endpoint::new(src, sport), Endpoint::new(dst, dport))
    };
    let (tuple, kind) = match IpProtocol::from(ip[field::IP_PROTOCOL]) {
        IpProtocol::Tcp => {
            let Some(tcp) = l4.first_chunk::<{ field::TCP_HEADER_LEN }>() else {
                return Parse::Malformed;
            };
            let header_len = usize::from(tcp[field::TCP_OFFSET] >> 4) * 4;
            if l4.len() < header_len || header_len < field::TCP_HEADER_LEN {
                return Parse::Malformed;
            }
            let f = tcp[field::TCP_FLAGS];
            let flags = TcpFlags {
                syn: f & field::TCP_SYN != 0,
                ack: f & field::TCP_ACK != 0,
                fin: f & field::TCP_FIN != 0,
                rst: f & field::TCP_RST != 0,
            };
            (
                ports(Proto::Tcp, be16(tcp, 0), be16(tcp, 2)),
                Kind::Tcp(flags),
            )
        }
        IpProtocol::Udp => {
            let Some(udp) = l4.first_chunk::<{ field::UDP_HEADER_LEN }>() else {
                return Parse::Malformed;
            };
            let len = usize::from(be16(udp, field::UDP_LEN));
            if l4.len() < len || len < field::UDP_HEADER_LEN {
                return Parse::Malformed;
            }
            (ports(Proto::Udp, be16(udp, 0), be16(udp, 2)), Kind::Udp)
        }
        IpProtocol::Icmp => {
            let Some(icmp) = l4.first_chunk::<{ field::ICMP_HEADER_LEN }>() else {
                return Parse::Malformed;
            };
            let kind = match Icmpv4Message::from(icmp[0]) {
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
                be16(icmp, field::ICMP_ECHO_IDENT)
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
        end: ETHERNET_HEADER_LEN + total,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::test_rng::Rng;
    use alloc::format;
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::wire::{EthernetFrame, EthernetProtocol};

    /// `parse` as smoltcp's checked views read a frame: the reference it must equal.
    fn parse_views(frame: &[u8]) -> Parse {
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

    /// A well-formed frame of protocol `proto` (and a few bytes of payload), for the
    /// mutations below to start from.
    fn frame(rng: &mut Rng, proto: u8) -> Vec<u8> {
        let l4_len = match proto {
            6 => 20 + 4 * (rng.next_u64() % 3) as usize,
            _ => 8,
        } + (rng.next_u64() % 12) as usize;
        let total = 20 + l4_len;
        let mut f = vec![0u8; 14 + total + (rng.next_u64() % 3) as usize];
        for b in f.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[20..22].copy_from_slice(&[0x40, 0]);
        f[23] = proto;
        let l4 = 34;
        match proto {
            6 => f[l4 + 12] = ((20 + 4 * (rng.next_u64() % 3) as u8).min(l4_len as u8) / 4) << 4,
            17 => f[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes()),
            _ => f[l4] = [0, 3, 8, 11, 12, 5][(rng.next_u64() % 6) as usize],
        }
        f
    }

    /// The fixed-offset parse gives what smoltcp's views give, on well-formed frames
    /// and on every kind of damage: truncation, lengths, versions, fragments, flags,
    /// protocols and random bytes.
    #[test]
    fn parse_equals_the_checked_views() {
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        // Frames parsed Ok, Malformed, Opaque and NotIpv4: every outcome is exercised.
        let mut seen = [0u32; 4];
        for i in 0..200_000u32 {
            let proto = [6u8, 17, 1, 6, 17, 1, 2][(i % 7) as usize];
            let mut f = frame(&mut rng, proto);
            let n = f.len();
            match rng.next_u64() % 10 {
                0 => f.truncate((rng.next_u64() as usize) % (n + 1)),
                1 => f[14] = rng.next_u64() as u8,
                2 => f[16..18].copy_from_slice(&(rng.next_u64() as u16 % 80).to_be_bytes()),
                3 => f[20..22].copy_from_slice(&(rng.next_u64() as u16).to_be_bytes()),
                4 => f[34 + (rng.next_u64() as usize) % (n - 34)] = rng.next_u64() as u8,
                5 => f[12] = rng.next_u64() as u8 & 0x09,
                6 => {
                    let at = (rng.next_u64() as usize) % n;
                    f[at] = rng.next_u64() as u8;
                }
                _ => {}
            }
            let got = parse(&f);
            assert_eq!(
                format!("{got:?}"),
                format!("{:?}", parse_views(&f)),
                "{f:02x?}"
            );
            seen[match got {
                Parse::Ok(_) => 0,
                Parse::Malformed => 1,
                Parse::Opaque { .. } => 2,
                Parse::NotIpv4 => 3,
            }] += 1;
        }
        assert!(seen.iter().all(|&n| n > 1000), "{seen:?}");
    }
}
