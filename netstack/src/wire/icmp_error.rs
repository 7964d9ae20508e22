//! ICMP errors the appliance originates as a router: time exceeded when a packet it
//! would forward has no TTL left (RFC 792, RFC 1812 §5.3.1), under a token-bucket
//! rate limit (RFC 1812 §4.3.2.8).
//!
//! Owns the error's bytes and the limiter only; the router decides when a packet
//! would be forwarded and where the answer goes. Must never answer an ICMP error, a
//! fragment other than the first, or a packet whose source is not one unicast host
//! (RFC 1812 §4.3.2.7), never read a clock and never panic on what it quotes.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, IpProtocol, Ipv4Address,
    Ipv4Packet,
};

const ETHERNET_HEADER_LEN: usize = 14;
const IPV4_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 1812 §4.3.2.3: quote as much of the packet as fits in 576 bytes.
const MAX_ERROR_LEN: usize = 576;
/// TTL of the errors the appliance sends.
const ERROR_TTL: u8 = 64;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Code 0: time to live exceeded in transit.
const TTL_EXCEEDED_IN_TRANSIT: u8 = 0;

/// Errors sent per second at most, on average.
pub const ERRORS_PER_SEC: u32 = 100;
/// Errors sent back to back at most (a traceroute sends a few probes per hop at once).
pub const ERROR_BURST: u32 = 50;

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    per_sec: u32,
    burst: u32,
    /// Tokens in millionths, so that refills at any rate stay exact in µs.
    micro_tokens: u64,
    last: Option<Instant>,
}

impl RateLimit {
    /// A full bucket.
    pub const fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec,
            burst,
            micro_tokens: burst as u64 * 1_000_000,
            last: None,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let full = self.burst as u64 * 1_000_000;
        if let Some(last) = self.last {
            // Time that runs backwards refills nothing.
            let elapsed = if now > last {
                (now - last).total_micros()
            } else {
                0
            };
            let refill = elapsed.saturating_mul(self.per_sec as u64);
            self.micro_tokens = self.micro_tokens.saturating_add(refill).min(full);
        }
        self.last = Some(self.last.map_or(now, |l| if now > l { now } else { l }));
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// How long until a token is back, for a caller that wants to wait.
    pub fn wait(&self) -> Duration {
        let missing = 1_000_000u64.saturating_sub(self.micro_tokens);
        Duration::from_micros(missing.div_ceil(self.per_sec.max(1) as u64))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(ERRORS_PER_SEC, ERROR_BURST)
    }
}

/// Whether an ICMP type is an error message (never answered with another error).
fn is_icmp_error(ty: u8) -> bool {
    // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

fn is_one_host(a: Ipv4Address) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// ICMP time exceeded in transit for `frame` (an Ethernet/IPv4 frame as received),
/// sent from `mac`/`addr` back to the frame's sender (its Ethernet source is the
/// previous hop). None when RFC 1812 §4.3.2.7 forbids an answer or the frame is not
/// a whole IPv4 header.
pub fn time_exceeded(frame: &[u8], mac: EthernetAddress, addr: Ipv4Address) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 || !eth.src_addr().is_unicast() {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.version() != 4
        || ip.frag_offset() != 0
        || !is_one_host(ip.src_addr())
        || ip.dst_addr().is_broadcast()
        || ip.dst_addr().is_multicast()
    {
        return None;
    }
    let header_len = ip.header_len() as usize;
    let packet = &eth.payload()[..ip.total_len() as usize];
    if ip.next_header() == IpProtocol::Icmp
        && packet.get(header_len).is_none_or(|&ty| is_icmp_error(ty))
    {
        return None;
    }
    let quoted = &packet[..packet
        .len()
        .min(MAX_ERROR_LEN - IPV4_HEADER_LEN - ICMP_HEADER_LEN)];
    let icmp_len = ICMP_HEADER_LEN + quoted.len();
    let total = IPV4_HEADER_LEN + icmp_len;
    let mut out = vec![0u8; ETHERNET_HEADER_LEN + total];
    let mut reply = EthernetFrame::new_unchecked(&mut out[..]);
    reply.set_dst_addr(eth.src_addr());
    reply.set_src_addr(mac);
    reply.set_ethertype(EthernetProtocol::Ipv4);
    let mut ipv4 = Ipv4Packet::new_unchecked(&mut out[ETHERNET_HEADER_LEN..]);
    ipv4.set_version(4);
    ipv4.set_header_len(IPV4_HEADER_LEN as u8);
    ipv4.set_total_len(total as u16);
    ipv4.set_dont_frag(true);
    ipv4.set_hop_limit(ERROR_TTL);
    ipv4.set_next_header(IpProtocol::Icmp);
    ipv4.set_src_addr(addr);
    ipv4.set_dst_addr(ip.src_addr());
    ipv4.fill_checksum();
    let body = &mut out[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    body[0] = ICMP_TIME_EXCEEDED;
    body[1] = TTL_EXCEEDED_IN_TRANSIT;
    body[ICMP_HEADER_LEN..].copy_from_slice(quoted);
    Icmpv4Packet::new_unchecked(body).fill_checksum();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Repr, Ipv4Repr};

    const MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x42]);
    const OWN: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
    const PEER: Ipv4Address = Ipv4Address::new(10, 81, 3, 4);
    const FAR: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);

    /// An Ethernet/IPv4 frame with protocol `proto`, TTL 1 and `body`.
    fn frame(src: Ipv4Address, dst: Ipv4Address, proto: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + body.len()];
        f[0..6].copy_from_slice(&MAC.0);
        f[6..12].copy_from_slice(&PEER_MAC.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        ip[8] = 1;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        ip[20..].copy_from_slice(body);
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f
    }

    #[test]
    fn time_exceeded_quotes_the_packet_and_goes_back_to_its_sender() {
        let udp = [
            0x9c, 0x40, 0x82, 0x9a, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let f = frame(PEER, FAR, 17, &udp);
        let out = time_exceeded(&f, MAC, OWN).expect("an answer");
        let eth = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (PEER_MAC, MAC));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let repr = Ipv4Repr::parse(&ip, &Default::default()).expect("valid IPv4");
        assert_eq!((repr.src_addr, repr.dst_addr), (OWN, PEER));
        assert_eq!(repr.hop_limit, 64);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::TimeExceeded);
        assert_eq!(icmp.msg_code(), 0);
        // The whole original packet, TTL 1 as it arrived, is quoted.
        assert_eq!(icmp.data(), &f[14..]);
        // smoltcp reads it as the time exceeded it is, quoting our packet.
        match Icmpv4Repr::parse(&icmp, &Default::default()).unwrap() {
            Icmpv4Repr::TimeExceeded { header, data, .. } => {
                assert_eq!((header.src_addr, header.dst_addr), (PEER, FAR));
                assert_eq!(&data[..8], &udp[..8]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_packets_are_quoted_up_to_576_bytes() {
        let f = frame(PEER, FAR, 17, &[7u8; 1400]);
        let out = time_exceeded(&f, MAC, OWN).unwrap();
        assert_eq!(out.len(), 14 + 576);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len(), 576);
        assert!(Icmpv4Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum());
        assert_eq!(&out[14 + 28..], &f[14..14 + 548]);
    }

    #[test]
    fn errors_fragments_and_non_host_sources_get_no_answer() {
        // An echo request is answered; every ICMP error type is not.
        let echo = [8, 0, 0, 0, 0, 1, 0, 1];
        assert!(time_exceeded(&frame(PEER, FAR, 1, &echo), MAC, OWN).is_some());
        for ty in [3u8, 4, 5, 11, 12] {
            let err = [ty, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(time_exceeded(&frame(PEER, FAR, 1, &err), MAC, OWN), None);
        }
        let mut unreachable = vec![0u8; 8 + 28];
        Icmpv4Repr::DstUnreachable {
            reason: Icmpv4DstUnreachable::PortUnreachable,
            header: Ipv4Repr {
                src_addr: FAR,
                dst_addr: PEER,
                next_header: IpProtocol::Udp,
                payload_len: 8,
                hop_limit: 64,
            },
            data: &[0; 8],
        }
        .emit(
            &mut Icmpv4Packet::new_unchecked(&mut unreachable[..]),
            &Default::default(),
        );
        let f = frame(PEER, FAR, 1, &unreachable);
        assert_eq!(time_exceeded(&f, MAC, OWN), None);
        // A later fragment.
        let mut frag = frame(PEER, FAR, 17, &[0; 16]);
        frag[14 + 7] = 0x10;
        Ipv4Packet::new_unchecked(&mut frag[14..]).fill_checksum();
        assert_eq!(time_exceeded(&frag, MAC, OWN), None);
        for (src, dst) in [
            (Ipv4Address::UNSPECIFIED, FAR),
            (Ipv4Address::BROADCAST, FAR),
            (Ipv4Address::new(224, 0, 0, 1), FAR),
            (Ipv4Address::new(127, 0, 0, 1), FAR),
            (PEER, Ipv4Address::BROADCAST),
            (PEER, Ipv4Address::new(239, 1, 2, 3)),
        ] {
            assert_eq!(time_exceeded(&frame(src, dst, 17, &[0; 8]), MAC, OWN), None);
        }
        // A multicast Ethernet source.
        let mut f = frame(PEER, FAR, 17, &[0; 8]);
        f[6] = 0x01;
        assert_eq!(time_exceeded(&f, MAC, OWN), None);
        // Truncated and garbage frames.
        let f = frame(PEER, FAR, 17, &[0; 8]);
        for cut in 0..f.len() - 8 {
            assert_eq!(time_exceeded(&f[..cut], MAC, OWN), None, "cut at {cut}");
        }
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let mut limit = RateLimit::new(100, 50);
        let t0 = Instant::from_secs(10);
        let burst = (0..200).filter(|_| limit.allow(t0)).count();
        assert_eq!(burst, 50);
        assert_eq!(limit.wait(), Duration::from_millis(10));
        // 10 ms later one more; 1 s later 100 more (bucket holds up to 50).
        assert!(limit.allow(t0 + Duration::from_millis(10)));
        assert!(!limit.allow(t0 + Duration::from_millis(10)));
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..200).filter(|_| limit.allow(later)).count(), 50);
        // Over 10 s at 1000 tries a second, about 100 a second get through.
        let mut now = later;
        let mut sent = 0;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            sent += limit.allow(now) as u32;
        }
        assert_eq!(sent, 1000);
        // Time running backwards refills nothing.
        let mut limit = RateLimit::new(1, 1);
        assert!(limit.allow(t0));
        assert!(!limit.allow(Instant::from_secs(0)));
        assert!(!limit.allow(t0));
        assert!(limit.allow(t0 + Duration::from_secs(1)));
    }
}
