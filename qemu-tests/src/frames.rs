//! Malformed Ethernet/IP frames for the robustness tests, and a sender that puts raw
//! frames on a namespace's interface (AF_PACKET through python3's standard library,
//! no scapy needed). Frames are deterministic for a seed so a failure reproduces.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
pub use weft_appliance::weft_netstack::base::test_rng::Rng;
use weft_appliance::weft_netstack::smoltcp::wire::{Icmpv4Packet, Ipv4Packet};
use weft_appliance::weft_netstack::wire::sum::pseudo_header;
use weft_image::netns::Netns;
use weft_image::qemu::MacAddr;

/// `base` plus up to `extra - 1` more random bytes.
pub fn bytes_between(rng: &mut Rng, base: usize, extra: usize) -> Vec<u8> {
    let n = base + rng.below(extra as u64) as usize;
    rng.bytes(n)
}

/// Who the frames are between.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// The appliance NIC's MAC and address.
    pub dst_mac: MacAddr,
    pub dst_ip: Ipv4Addr,
    /// The sending namespace's MAC (must be a valid unicast MAC or the bridge drops
    /// the frame) and address.
    pub src_mac: MacAddr,
    pub src_ip: Ipv4Addr,
}

/// A burst and how many of its frames were unicast to some other MAC (the appliance
/// must count those as `other_host` drops).
pub struct Burst {
    pub frames: Vec<Vec<u8>>,
    pub to_other_hosts: usize,
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A 20-byte IPv4 header with a correct checksum.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize, flags_frag: u16) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    let total = (20 + payload_len).min(0xffff) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(&mut h[..]).fill_checksum();
    h
}

fn icmp_echo(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    p.extend(rng.bytes(len));
    Icmpv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// `n` malformed or unwanted frames towards one appliance NIC, cycling through kinds:
/// unicast to other MACs, random bytes as IPv4/ARP/IPv6/VLAN payloads, IPv4 with bad
/// version/IHL/total length/checksum, fragments, truncated ICMP/UDP/TCP, broadcasts
/// with unknown ethertypes, bare 14-byte headers, maximum-size garbage.
pub fn malformed_burst(ep: Endpoints, seed: u64, n: usize) -> Burst {
    let mut rng = Rng::new(seed);
    let (dst, src) = (ep.dst_mac.0, ep.src_mac.0);
    let mut frames = Vec::with_capacity(n);
    let mut to_other_hosts = 0;
    for i in 0..n {
        let kind = i % 16;
        let f = match kind {
            0 => {
                // Unicast to a MAC that is not the appliance's (the bridge floods it).
                let mut other = [0x52, 0x54, 0x01, 0, 0, 0];
                other[3..].copy_from_slice(&rng.bytes(3));
                to_other_hosts += 1;
                let mut f = eth(other, src, 0x0800);
                f.extend(bytes_between(&mut rng, 20, 200));
                f
            }
            1 => {
                let mut f = eth(dst, src, 0x0800);
                f.extend(bytes_between(&mut rng, 0, 100));
                f
            }
            2 => {
                // IHL 3 (< 5): header shorter than the minimum.
                let mut h = ipv4(ep.src_ip, ep.dst_ip, 1, 8, 0);
                h[0] = 0x43;
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(icmp_echo(&mut rng, 0));
                f
            }
            3 => {
                // Version 6 in an IPv4 ethertype.
                let mut h = ipv4(ep.src_ip, ep.dst_ip, 1, 8, 0);
                h[0] = 0x65;
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(icmp_echo(&mut rng, 0));
                f
            }
            4 => {
                // Total length far beyond the frame.
                let h = ipv4(ep.src_ip, ep.dst_ip, 1, 60_000, 0);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(icmp_echo(&mut rng, 16));
                f
            }
            5 => {
                // Bad header checksum on an otherwise valid echo request.
                let p = icmp_echo(&mut rng, 32);
                let mut h = ipv4(ep.src_ip, ep.dst_ip, 1, p.len(), 0);
                h[10] ^= 0x5a;
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(p);
                f
            }
            6 => {
                // A first fragment (MF) of an echo request that never completes.
                let p = icmp_echo(&mut rng, 64);
                let h = ipv4(ep.src_ip, ep.dst_ip, 1, p.len(), 0x2000);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(p);
                f
            }
            7 => {
                // Truncated ICMP (2 bytes) with a consistent IP header.
                let h = ipv4(ep.src_ip, ep.dst_ip, 1, 2, 0);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend_from_slice(&[8, 0]);
                f
            }
            8 => {
                // UDP whose length field exceeds the packet; random ports.
                let mut u = bytes_between(&mut rng, 8, 40);
                u[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
                let h = ipv4(ep.src_ip, ep.dst_ip, 17, u.len(), 0);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(u);
                f
            }
            9 => {
                // TCP with a data offset beyond the segment and random flags.
                let mut t = rng.bytes(20);
                t[12] = 0xf0;
                let h = ipv4(ep.src_ip, ep.dst_ip, 6, t.len(), 0);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(t);
                f
            }
            10 => {
                // Truncated ARP.
                let mut f = eth([0xff; 6], src, 0x0806);
                f.extend(rng.bytes(10));
                f
            }
            11 => {
                // ARP with nonsense hardware/protocol types, sizes and opcode.
                let mut f = eth([0xff; 6], src, 0x0806);
                f.extend_from_slice(&[0x00, 0x07, 0x86, 0xdd, 3, 9, 0x00, 0x09]);
                f.extend(rng.bytes(28));
                f
            }
            12 => {
                // Broadcast with an unknown ethertype.
                let mut f = eth([0xff; 6], src, 0x88b5);
                f.extend(bytes_between(&mut rng, 46, 100));
                f
            }
            13 => {
                // An 802.1Q tag around garbage, and IPv6 garbage.
                let mut f = eth(dst, src, if rng.below(2) == 0 { 0x8100 } else { 0x86dd });
                f.extend(bytes_between(&mut rng, 4, 80));
                f
            }
            14 => {
                // Only an Ethernet header (the shortest frame Linux sends).
                eth(dst, src, 0x0800)
            }
            _ => {
                // Maximum-size frame of garbage behind a valid-looking IPv4 header.
                let h = ipv4(ep.src_ip, ep.dst_ip, rng.below(256) as u8, 1480, 0);
                let mut f = eth(dst, src, 0x0800);
                f.extend_from_slice(&h);
                f.extend(rng.bytes(1480));
                f
            }
        };
        frames.push(f);
    }
    Burst {
        frames,
        to_other_hosts,
    }
}

const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
if sys.argv[2] == "vnet":
    s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR: each frame leads with one
s.bind((sys.argv[1], 0))
n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    s.send(bytes.fromhex(line))
    n += 1
    if n % 8 == 0:
        time.sleep(0.002)
print(n)
"#;

/// Sends each frame once out of `ifname` in `ns`; fails unless all were sent.
/// Paced (8 frames per 2 ms) so the tap queue does not overflow under TCG.
pub fn send(ns: &Netns, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    send_lines(ns, ifname, "plain", frames.iter().map(|f| hex(&[f])))
}

/// A virtio-net header (`struct virtio_net_hdr`, native endian) as a packet socket with
/// `PACKET_VNET_HDR` takes it ahead of each frame. Sent out of a tap, the kernel hands
/// it to QEMU, and QEMU to the guest's virtio-net driver, as it is: the way to put a
/// header weft's driver must judge on the link.
#[derive(Clone, Copy, Debug, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the 16 bits at `start + offset` hold a partial
    /// sum; the receiver completes the checksum over everything from `start`.
    pub fn needs_csum(start: u16, offset: u16) -> VnetHdr {
        VnetHdr {
            flags: 1,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.flags, self.gso_type];
        for v in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ] {
            b.extend(v.to_le_bytes());
        }
        b
    }
}

/// [`send`] with a virtio-net header before each frame (`PACKET_VNET_HDR`); the kernel
/// refuses headers it cannot take (a checksum field outside the frame, say).
pub fn send_with_vnet_hdr(ns: &Netns, ifname: &str, frames: &[(VnetHdr, Vec<u8>)]) -> Result<()> {
    send_lines(
        ns,
        ifname,
        "vnet",
        frames.iter().map(|(h, f)| hex(&[&h.bytes(), f])),
    )
}

fn hex(parts: &[&[u8]]) -> String {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn send_lines(
    ns: &Netns,
    ifname: &str,
    mode: &str,
    lines: impl ExactSizeIterator<Item = String>,
) -> Result<()> {
    let count = lines.len();
    let mut child = ns
        .command("python3")
        .args(["-c", SENDER, ifname, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting python3")?;
    let mut input = String::new();
    for line in lines {
        input.push_str(&line);
        input.push('\n');
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "frame sender failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sent: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if sent != count {
        bail!("sent {sent} of {count} frames");
    }
    Ok(())
}

/// A UDP datagram from `ep.src_*` to `ep.dst_*` whose checksum is left to the device,
/// as a kernel leaves it for a NIC with checksum offload: the field holds the sum of
/// the pseudo-header only. [`VnetHdr::needs_csum`]`(`[`L4_START`]`, 6)` names it.
pub fn udp_partial_csum(ep: Endpoints, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut f = eth(ep.dst_mac.0, ep.src_mac.0, 0x0800);
    f.extend_from_slice(&ipv4(ep.src_ip, ep.dst_ip, 17, len, 0x4000));
    let partial = pseudo_header(ep.src_ip, ep.dst_ip, 17, len).value();
    for v in [src_port, dst_port, len as u16, partial] {
        f.extend(v.to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Where the L4 header of [`udp_partial_csum`]'s and [`tcp_partial_csum`]'s frames
/// starts (Ethernet + IPv4).
pub const L4_START: u16 = 14 + 20;

/// A TCP segment (ACK, 20-byte header) from `ep.src_*` to `ep.dst_*`, its checksum
/// left to the device like [`udp_partial_csum`]'s (the field is at offset 16); as one
/// super-frame with a GSO header it stands for `payload.len() / gso_size` segments.
pub fn tcp_partial_csum(ep: Endpoints, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut f = eth(ep.dst_mac.0, ep.src_mac.0, 0x0800);
    f.extend_from_slice(&ipv4(ep.src_ip, ep.dst_ip, 6, len, 0x4000));
    f.extend(src_port.to_be_bytes());
    f.extend(dst_port.to_be_bytes());
    f.extend(1u32.to_be_bytes()); // sequence
    f.extend(1u32.to_be_bytes()); // acknowledgment
    f.extend([0x50, 0x10, 0xff, 0xff]); // 5 words, ACK, window
    f.extend(
        pseudo_header(ep.src_ip, ep.dst_ip, 6, len)
            .value()
            .to_be_bytes(),
    );
    f.extend([0, 0]); // urgent pointer
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoints {
        Endpoints {
            dst_mac: MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            dst_ip: Ipv4Addr::new(192, 0, 2, 2),
            src_mac: MacAddr([0x52, 0x54, 0, 9, 9, 9]),
            src_ip: Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    #[test]
    fn bursts_are_deterministic_sendable_and_varied() {
        let a = malformed_burst(ep(), 7, 160);
        let b = malformed_burst(ep(), 7, 160);
        assert_eq!(a.frames, b.frames);
        assert_eq!(a.to_other_hosts, 10);
        for f in &a.frames {
            // Linux sends 14..=1514-byte frames on a 1500-MTU veth; source must be
            // unicast or the bridge drops it.
            assert!((14..=1514).contains(&f.len()), "{}", f.len());
            assert_eq!(&f[6..12], &ep().src_mac.0);
        }
        let other = a
            .frames
            .iter()
            .filter(|f| f[..6] != ep().dst_mac.0 && f[0] & 1 == 0)
            .count();
        assert_eq!(other, a.to_other_hosts);
        assert_ne!(malformed_burst(ep(), 8, 160).frames, a.frames);
    }

    #[test]
    fn crafted_ipv4_headers_checksum_correctly() {
        let h = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1,
            0,
            0,
        );
        assert!(Ipv4Packet::new_checked(&h[..]).unwrap().verify_checksum());
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 20);
        let mut rng = Rng::new(1);
        let p = icmp_echo(&mut rng, 13);
        assert!(Icmpv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
        let mut bad = h;
        bad[10] ^= 1;
        assert!(!Ipv4Packet::new_checked(&bad[..]).unwrap().verify_checksum());
    }
}
