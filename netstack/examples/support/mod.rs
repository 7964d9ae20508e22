//! What the host benches share: the thread's CPU time (figures that hold on a machine
//! shared with other work), the test frames they forward, and the flow orders and
//! endpoints they visit. Builders only: nothing here times or asserts anything.

#![allow(dead_code)] // each bench takes what it needs

use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Packet, TcpPacket};
use weft_netstack::base::test_rng::Rng;
use weft_netstack::base::Endpoint;

/// CPU time of this thread in nanoseconds (the scheduler's own account).
pub fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// An inner Ethernet/IPv4/UDP frame of `len` bytes in total, 10.81.128.1:40000 to
/// 10.81.128.2:5201, IPv4 checksum filled.
pub fn inner_frame(dst: EthernetAddress, src: EthernetAddress, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 81, 128, 1]);
    f[30..34].copy_from_slice(&[10, 81, 128, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f
}

/// The size of `tcp_frame`'s frames.
pub const FRAME: usize = 14 + 20 + 20 + 6;

pub const SYN: u8 = 0x02;
pub const SYNACK: u8 = 0x12;
pub const ACK: u8 = 0x10;

/// An Ethernet/IPv4/TCP frame from `macs.0` to `macs.1` with TCP `flags`, valid
/// checksums and 6 bytes of payload.
pub fn tcp_frame(
    macs: (EthernetAddress, EthernetAddress),
    src: Endpoint,
    dst: Endpoint,
    flags: u8,
) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[0..6].copy_from_slice(&macs.1 .0);
    f[6..12].copy_from_slice(&macs.0 .0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((FRAME - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.addr.octets());
    ip[16..20].copy_from_slice(&dst.addr.octets());
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&src.port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[20..].copy_from_slice(b"bench!");
    TcpPacket::new_unchecked(&mut tcp[..]).fill_checksum(&src.addr.into(), &dst.addr.into());
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f
}

/// A permutation of 0..n: flows visited in an order the caches cannot predict.
pub fn shuffled(n: usize) -> Vec<u32> {
    Rng::new(0x9e37_79b9_7f4a_7c15).shuffled(n)
}

/// An outside client of a published port (100.64.0.0/10, varied ports).
pub fn client(i: u32) -> Endpoint {
    Endpoint::new(
        Ipv4Address::from(0x6440_0000 | (i >> 4)),
        1024 + (i & 15) as u16,
    )
}
