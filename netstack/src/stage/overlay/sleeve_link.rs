//! This appliance's sleeve endpoint as the overlay uses it: sleeve messages in and out
//! of complete underlay frames (Ethernet + IPv4 + UDP to port 6783), keyed by the grid
//! secret or by the peer channel (`auth = "tls"`, docs/peer-tls.md), and its counters
//! for `status`.
//!
//! It never decides where a frame goes or which peers are sealed for (the overlay
//! does), never reads a clock and never sends a frame in clear.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use weft_peer::config::Auth;
use weft_peer::keys::TlsKeys;

use crate::base::ports::SLEEVE_PORT;
use crate::base::{NodeId, Vni};
use crate::stage::sleeve::{
    self, AeadKey, Epoch, KeyId, KeySource, OpenError, PskKeySource, SealError, Session,
    SessionConfig, SessionId, Sleeve, SleeveMetrics, TlsKeySource,
};
use crate::wire::sleeve::Records;
use crate::wire::vxlan;

/// Ethernet + IPv4 + UDP in front of every sleeve message.
pub const OUTER_LEN: usize = 14 + 20 + 8;
/// What sleeve costs beyond what VXLAN costs, in overlay MTU.
pub const EXTRA_OVERHEAD: u16 =
    sleeve::session::OVERLAY_MTU_OVERHEAD - vxlan::ENCAP_OVERHEAD as u16;

/// The outer addresses of a sleeve frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterAddrs {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    /// The flow's source port (ECMP spreading, as VXLAN's).
    pub src_port: u16,
    pub ttl: u8,
}

/// Counters of the sleeve endpoint, for `status.overlay.sleeve`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleeveStatus {
    pub port: u16,
    pub sealed_messages: u64,
    pub sealed_frames: u64,
    /// Frames sealed into a message together with an earlier frame (batching).
    #[serde(default)]
    pub frames_batched: u64,
    pub opened_messages: u64,
    pub opened_frames: u64,
    pub seal_refused: u64,
    /// Received messages refused, by [`OpenError`] name.
    pub drops: SleeveDrops,
}

/// Received sleeve messages refused, by reason (docs/sleeve.md, "Drops").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleeveDrops {
    pub truncated: u64,
    pub bad_version: u64,
    pub unknown_type: u64,
    pub unknown_peer: u64,
    pub stale_session: u64,
    pub unknown_epoch: u64,
    pub key_unavailable: u64,
    pub replayed: u64,
    pub too_old: u64,
    pub auth_failed: u64,
    pub malformed: u64,
}

impl From<&SleeveMetrics> for SleeveStatus {
    fn from(m: &SleeveMetrics) -> SleeveStatus {
        SleeveStatus {
            port: SLEEVE_PORT,
            sealed_messages: m.sealed_messages,
            sealed_frames: m.sealed_frames,
            frames_batched: m.frames_batched,
            opened_messages: m.opened_messages,
            opened_frames: m.opened_frames,
            seal_refused: m.seal_refused,
            drops: SleeveDrops {
                truncated: m.drop_truncated,
                bad_version: m.drop_bad_version,
                unknown_type: m.drop_unknown_type,
                unknown_peer: m.drop_unknown_peer,
                stale_session: m.drop_stale_session,
                unknown_epoch: m.drop_unknown_epoch,
                key_unavailable: m.drop_key_unavailable,
                replayed: m.drop_replayed,
                too_old: m.drop_too_old,
                auth_failed: m.drop_auth_failed,
                malformed: m.drop_malformed,
            },
        }
    }
}

/// The frames of one opened message: each network's number and the frame.
pub type OpenedFrames = Vec<(Vni, Vec<u8>)>;

/// Where the endpoint's keys come from.
#[derive(Debug, Clone)]
pub enum LinkKeys {
    /// Derived from the grid secret.
    Psk(PskKeySource),
    /// Exported by the peer channel; the store is shared with it.
    Tls(TlsKeySource),
}

impl LinkKeys {
    /// The key source of `[grid]`: the secret's with `auth = "secret"` (`None` without
    /// a usable secret), a new, empty peer-channel store with `auth = "tls"`.
    pub fn for_grid(grid: &super::config::GridConfig) -> Option<LinkKeys> {
        match grid.auth {
            Auth::Secret => {
                let secret = grid.secret.as_ref()?.grid_secret()?;
                Some(LinkKeys::Psk(PskKeySource::new(grid.node, secret)))
            }
            Auth::Tls => Some(LinkKeys::Tls(TlsKeySource::new(TlsKeys::shared()))),
        }
    }

    /// The epoch length: the `[grid.tls]` one with the peer channel, sleeve's default
    /// otherwise.
    fn rekey_after(&self, grid: &super::config::GridConfig) -> Option<Duration> {
        match (self, &grid.tls) {
            (LinkKeys::Tls(_), Some(tls)) => {
                Some(Duration::from_micros(tls.rekey_after().as_micros() as u64))
            }
            _ => None,
        }
    }
}

impl KeySource for LinkKeys {
    fn key(&self, id: &KeyId) -> Option<AeadKey> {
        match self {
            LinkKeys::Psk(k) => k.key(id),
            LinkKeys::Tls(k) => k.key(id),
        }
    }
}

/// This appliance's sleeve endpoint.
#[derive(Debug, Clone)]
pub struct SleeveLink {
    sleeve: Sleeve<LinkKeys>,
    next_ident: u16,
}

impl SleeveLink {
    /// An endpoint for `grid`'s node whose messages fit an underlay of `underlay_mtu`;
    /// `None` in secret mode without a usable secret. `first`: see [`Sleeve::new`].
    pub fn new(
        grid: &super::config::GridConfig,
        underlay_mtu: u16,
        first: SessionId,
    ) -> Option<SleeveLink> {
        Some(SleeveLink::with_keys(
            grid,
            LinkKeys::for_grid(grid)?,
            underlay_mtu,
            first,
        ))
    }

    /// An endpoint on `keys` (a rebuilt endpoint keeps its predecessor's).
    pub fn with_keys(
        grid: &super::config::GridConfig,
        keys: LinkKeys,
        underlay_mtu: u16,
        first: SessionId,
    ) -> SleeveLink {
        let mut config = SessionConfig::for_underlay_mtu(underlay_mtu);
        config.headroom = OUTER_LEN;
        if let Some(rekey) = keys.rekey_after(grid) {
            config.rekey_after_time = rekey;
        }
        SleeveLink {
            sleeve: Sleeve::new(grid.node, keys, config, first),
            next_ident: (first.0 >> 7) as u16,
        }
    }

    pub fn keys(&self) -> &LinkKeys {
        self.sleeve.keys()
    }

    /// The peer channel's key store, in `auth = "tls"`.
    pub fn tls_keys(&self) -> Option<&TlsKeySource> {
        match self.sleeve.keys() {
            LinkKeys::Tls(k) => Some(k),
            LinkKeys::Psk(_) => None,
        }
    }

    /// Seal to `peer` under `session` from now on (its keys were just installed).
    pub fn restart_tx(&mut self, peer: NodeId, session: SessionId) -> bool {
        self.sleeve.restart_tx(peer, session)
    }

    /// `peer`'s sleeve state (sessions, epochs).
    pub fn session(&self, peer: NodeId) -> Option<&Session> {
        self.sleeve.peer(peer)
    }

    pub fn add_peer(&mut self, node: NodeId) {
        // `AlreadyPeer` keeps the running session; `SessionsExhausted` leaves the peer
        // without one and its frames are refused (`seal_refused`), never sent in clear.
        let _ = self.sleeve.add_peer(node);
    }

    pub fn remove_peer(&mut self, node: NodeId) {
        self.sleeve.remove_peer(node);
    }

    pub fn metrics(&self) -> &SleeveMetrics {
        self.sleeve.metrics()
    }

    pub fn next_session(&self) -> Option<SessionId> {
        self.sleeve.next_session()
    }

    /// With TLS keys, the sending chain of `peer` moves past the epoch just used
    /// (docs/peer-tls.md, "Wiping"). Every seal says so, also the data path's in place:
    /// a chain that never moved could derive every epoch of its session from memory, and
    /// none beyond [`weft_peer::keys::MAX_AHEAD`] epochs, after which sealing stops.
    fn sealed_for(&self, peer: NodeId) {
        if let (LinkKeys::Tls(keys), Some(session)) = (self.sleeve.keys(), self.sleeve.peer(peer)) {
            if let Some(epoch) = session.tx_epoch() {
                keys.sending_at(peer, session.tx_session(), epoch);
            }
        }
    }

    /// The same for receiving: `peer`'s chain moves past the epoch just authenticated.
    fn opened_from(&self, peer: NodeId, session: SessionId, epoch: Epoch) {
        if let LinkKeys::Tls(keys) = self.sleeve.keys() {
            keys.receiving_at(peer, session, epoch);
        }
    }

    /// The largest message (UDP payload) this endpoint seals.
    pub fn max_message(&self) -> usize {
        self.sleeve.config().max_message()
    }

    /// See [`Sleeve::check_frames`].
    pub fn check_frames(
        &mut self,
        peer: NodeId,
        lens: impl Iterator<Item = usize>,
    ) -> Result<(), SealError> {
        self.sleeve.check_frames(peer, lens)
    }

    /// Seal one message for `peer` where it lies (see [`Sleeve::seal_message`]).
    pub fn seal_message(
        &mut self,
        peer: NodeId,
        message: &mut [u8],
        frames: usize,
        now: Instant,
    ) -> Result<(), SealError> {
        self.sleeve.seal_message(peer, message, frames, now)?;
        self.sealed_for(peer);
        Ok(())
    }

    /// Writes the outer Ethernet/IPv4/UDP headers into the first [`OUTER_LEN`] bytes of
    /// `buf`, a sealed message after them.
    pub fn write_outer(&mut self, outer: &OuterAddrs, buf: &mut [u8]) {
        let payload_len = buf.len().saturating_sub(OUTER_LEN);
        let eth = EthernetRepr {
            src_addr: outer.src_mac,
            dst_addr: outer.dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let udp = UdpRepr {
            src_port: outer.src_port,
            dst_port: SLEEVE_PORT,
        };
        let ip = Ipv4Repr {
            src_addr: outer.src_ip,
            dst_addr: outer.dst_ip,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + payload_len,
            hop_limit: outer.ttl,
        };
        let caps = ChecksumCapabilities::default();
        let mut frame = EthernetFrame::new_unchecked(&mut *buf);
        eth.emit(&mut frame);
        let mut ip_packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut ip_packet, &caps);
        ip_packet.set_ident(self.next_ident);
        ip_packet.fill_checksum();
        self.next_ident = self.next_ident.wrapping_add(1);
        let mut udp_packet = UdpPacket::new_unchecked(ip_packet.payload_mut());
        udp_packet.set_src_port(udp.src_port);
        udp_packet.set_dst_port(udp.dst_port);
        udp_packet.set_len((udp.header_len() + payload_len) as u16);
        // No UDP checksum (0), as for ESP in UDP (RFC 3948 2.1; Linux's esp4 does the
        // same): the tag authenticates every byte the checksum would cover, and the
        // pseudo-header's addresses choose no key (the sleeve header names the sender),
        // so a damaged one fails the tag as well. A receiver still verifies a checksum
        // that is sent (`parse_outer`).
        udp_packet.set_checksum(0);
    }

    /// Open one received sleeve payload where it lies: the sending node and its records,
    /// decrypted in `payload`.
    pub fn open_in_place<'b>(
        &mut self,
        payload: &'b mut [u8],
        now: Instant,
    ) -> Result<(NodeId, Records<'b>), OpenError> {
        let opened = self.sleeve.open(payload, now)?;
        self.opened_from(opened.peer, opened.session, opened.epoch);
        Ok((opened.peer, opened.frames))
    }

    /// Open one received sleeve payload: the sending node and its frames (copied out).
    pub fn open(
        &mut self,
        payload: &[u8],
        now: Instant,
    ) -> Result<(NodeId, OpenedFrames), OpenError> {
        let mut buf = payload.to_vec();
        let opened = self.sleeve.open(&mut buf, now)?;
        self.opened_from(opened.peer, opened.session, opened.epoch);
        let frames = opened
            .frames
            .iter()
            .map(|f| (f.vni, f.bytes.to_vec()))
            .collect();
        Ok((opened.peer, frames))
    }
}
