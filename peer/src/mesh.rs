//! The peer channels of one appliance (docs/peer-tls.md, "Who dials", "Keys", "Rekeying",
//! "Counters"): one TLS connection per sleeve peer, dialed by the node with the lower
//! id, and the sleeve keys each connection announces.
//!
//! Owns the connections (as [`Channel`]s keyed by [`ConnId`]), the dial and keepalive
//! timers, the session announcements (`Keys` / `KeysAck`), the key chains they install
//! ([`TlsKeys`]) and the counters. Sans-I/O: the caller owns the TCP sockets, feeds their
//! bytes in, writes [`Mesh::output`] out, opens a socket for every [`Action::Dial`] and
//! closes the ones [`Mesh::finished`] names. It never installs keys of an unconfirmed
//! connection, never switches the sending keys before the peer acknowledged them, and
//! never keeps a connection to a node that is not a configured peer.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::{Channel, CloseReason, Event, TlsContext, TlsFailure};
use crate::identity::{CertSummary, NodeId, PeerIdentityError};
use crate::keys::{SharedKeys, TlsKeys};
use crate::message::Message;

/// The time every call brings: monotonic time since boot, and the wall clock when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub since_boot: Duration,
    pub unix_secs: Option<u64>,
}

/// Timers of the peer channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshConfig {
    /// A handshake not complete after this is abandoned (`timeouts`).
    pub handshake_timeout: Duration,
    /// A `Ping` after this much silence from our side.
    pub keepalive: Duration,
    /// A connection that heard nothing for this long is closed (`timeouts`).
    pub idle_timeout: Duration,
    /// First redial delay after a failure; doubles up to `redial_max`.
    pub redial_min: Duration,
    pub redial_max: Duration,
    /// The dialer replaces a connection older than this with a fresh handshake (new
    /// X25519 keys, a new sending session each way). Between handshakes the epochs of
    /// a session move on by the chain (docs/peer-tls.md, "Rekeying").
    pub rehandshake_after: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            handshake_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            redial_min: Duration::from_secs(1),
            redial_max: Duration::from_secs(30),
            rehandshake_after: Duration::from_secs(3600),
        }
    }
}

/// A connection handle; the caller maps it to its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `peer`'s underlay address, port 6783, for `conn`.
    Dial { conn: ConnId, peer: NodeId },
}

/// A change of keys the data path must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    /// Seal to `peer` under `session` from now on (epoch 0); its keys are installed.
    Send { peer: NodeId, session: u64 },
}

/// Counters of the peer channels, as `status.peer_tls.counters` shows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshCounters {
    pub dials: u64,
    pub accepts: u64,
    /// Connections on which both sides accepted each other.
    pub established: u64,
    /// Handshakes refused, by reason ([`TlsFailure`]).
    pub refused_unknown_ca: u64,
    pub refused_wrong_name: u64,
    pub refused_expired: u64,
    pub refused_no_certificate: u64,
    pub refused_peer_alert: u64,
    pub refused_incompatible: u64,
    pub refused_protocol: u64,
    /// Certificates that chained to the CA but name no node of this grid, or the wrong
    /// node (this node itself, or another node than the one dialed).
    pub refused_wrong_grid: u64,
    pub refused_wrong_node: u64,
    /// Authenticated nodes that are not configured peers.
    pub refused_not_a_peer: u64,
    /// A second connection of a pair, closed by the lower-id-dials rule.
    pub duplicates: u64,
    /// Connections replaced by a newer one of the same pair.
    pub replaced: u64,
    pub bad_messages: u64,
    /// Record-layer failures after the handshake (tampering).
    pub tls_errors: u64,
    pub timeouts: u64,
    pub peer_closed: u64,
    /// Sending sessions switched to (one per connection and direction).
    pub key_switches: u64,
}

impl MeshCounters {
    fn refused(&mut self, f: TlsFailure) -> &mut u64 {
        match f {
            TlsFailure::UnknownCa => &mut self.refused_unknown_ca,
            TlsFailure::WrongName => &mut self.refused_wrong_name,
            TlsFailure::Expired => &mut self.refused_expired,
            TlsFailure::NoCertificate => &mut self.refused_no_certificate,
            TlsFailure::PeerAlert => &mut self.refused_peer_alert,
            TlsFailure::Incompatible => &mut self.refused_incompatible,
            TlsFailure::Protocol => &mut self.refused_protocol,
        }
    }

    /// Every refusal, whatever the reason.
    pub fn refused_total(&self) -> u64 {
        let mut c = *self;
        TlsFailure::ALL.iter().map(|f| *c.refused(*f)).sum::<u64>()
            + self.refused_wrong_grid
            + self.refused_wrong_node
            + self.refused_not_a_peer
    }
}

/// Where a peer's channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection (the dialer waits for its next attempt; the other side waits to
    /// be dialed).
    Idle,
    /// A connection is being opened or its handshake runs.
    Connecting,
    /// Both sides accepted each other.
    Established,
}

impl LinkState {
    pub const fn name(self) -> &'static str {
        match self {
            LinkState::Idle => "idle",
            LinkState::Connecting => "connecting",
            LinkState::Established => "established",
        }
    }
}

/// What status shows per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub node: NodeId,
    pub state: LinkState,
    /// This node dials the peer (its id is the lower one).
    pub dialer: bool,
    /// The peer's certificate, once a connection was established.
    pub cert: Option<CertSummary>,
    /// The session this node seals under towards the peer.
    pub tx_session: Option<u64>,
    /// The session the peer announced last.
    pub rx_session: Option<u64>,
    /// When keys last changed (a session was switched to), since boot.
    pub last_rekey: Option<Duration>,
    pub established_at: Option<Duration>,
    /// How long the last connection took from its opening (the dial, or the accept)
    /// to established: TCP and TLS handshakes and the first message.
    pub handshake_time: Option<Duration>,
    pub handshakes: u64,
}

struct Link {
    dialer: bool,
    /// The connection whose keys are in use (or about to be).
    current: Option<ConnId>,
    /// An outbound connection not yet established.
    dialing: Option<ConnId>,
    next_dial: Duration,
    backoff: Duration,
    /// Announced to the peer, waiting for its `KeysAck`.
    tx_pending: Option<(ConnId, u64)>,
    tx_session: Option<u64>,
    rx_session: Option<u64>,
    cert: Option<CertSummary>,
    last_rekey: Option<Duration>,
    established_at: Option<Duration>,
    handshake_time: Option<Duration>,
    handshakes: u64,
}

struct Conn {
    channel: Channel,
    opened: Duration,
    last_heard: Duration,
    last_sent: Duration,
    /// The peer announced its session on this connection (once per connection).
    got_keys: bool,
    ping: u64,
}

/// All peer channels of this node.
pub struct Mesh {
    ctx: TlsContext,
    config: MeshConfig,
    local: NodeId,
    links: BTreeMap<NodeId, Link>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u32,
    next_session: u64,
    keys: SharedKeys,
    key_events: Vec<KeyEvent>,
    counters: MeshCounters,
}

impl core::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mesh")
            .field("local", &self.local)
            .field("peers", &self.links.keys().collect::<Vec<_>>())
            .field("conns", &self.conns.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// `first_session`: the first sending session id of this boot (it must grow across
    /// boots: docs/sleeve.md "Sessions"); each connection takes the next. The mesh
    /// installs chains in `keys`, which the data path shares.
    pub fn new(ctx: TlsContext, config: MeshConfig, first_session: u64, keys: SharedKeys) -> Mesh {
        Mesh {
            local: ctx.credentials().node(),
            ctx,
            config,
            links: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            next_session: first_session,
            keys,
            key_events: Vec::new(),
            counters: MeshCounters::default(),
        }
    }

    pub fn context(&self) -> &TlsContext {
        &self.ctx
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The key store (shared with the data path).
    pub fn keys(&self) -> core::cell::Ref<'_, TlsKeys> {
        self.keys.borrow()
    }

    pub fn shared_keys(&self) -> &SharedKeys {
        &self.keys
    }

    pub fn counters(&self) -> &MeshCounters {
        &self.counters
    }

    /// The next sending session id (a replacement mesh starts at or above it).
    pub fn next_session(&self) -> u64 {
        self.next_session
    }

    /// The sleeve peers to keep channels with; others lose their connections and keys.
    pub fn set_peers(&mut self, peers: &[NodeId], now: Time) {
        let gone: Vec<NodeId> = self
            .links
            .keys()
            .copied()
            .filter(|n| !peers.contains(n))
            .collect();
        for node in gone {
            self.links.remove(&node);
            self.keys.borrow_mut().remove(node);
            let conns: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.channel.peer().or(c.channel.dialed()) == Some(node))
                .map(|(id, _)| *id)
                .collect();
            for id in conns {
                self.close(id, now);
            }
        }
        for &node in peers {
            if node == self.local {
                continue;
            }
            self.links.entry(node).or_insert_with(|| Link {
                dialer: self.local < node,
                current: None,
                dialing: None,
                next_dial: now.since_boot,
                backoff: self.config.redial_min,
                tx_pending: None,
                tx_session: None,
                rx_session: None,
                cert: None,
                last_rekey: None,
                established_at: None,
                handshake_time: None,
                handshakes: 0,
            });
        }
    }

    fn new_conn_id(&mut self) -> ConnId {
        self.next_conn = self.next_conn.wrapping_add(1);
        while self.conns.contains_key(&ConnId(self.next_conn)) {
            self.next_conn = self.next_conn.wrapping_add(1);
        }
        ConnId(self.next_conn)
    }

    /// A peer opened a TCP connection to port 6783: a new server-side channel.
    pub fn accept(&mut self, now: Time) -> Option<ConnId> {
        let channel = Channel::accept(&self.ctx, now.unix_secs).ok()?;
        let id = self.new_conn_id();
        self.counters.accepts += 1;
        self.conns.insert(id, Conn::new(channel, now));
        Some(id)
    }

    /// Timers: dials due, handshakes and silences too long, keepalives.
    pub fn poll(&mut self, now: Time) -> Vec<Action> {
        let t = now.since_boot;
        let mut actions = Vec::new();
        let mut expired = Vec::new();
        for (id, conn) in &mut self.conns {
            if conn.channel.closed().is_some() {
                continue;
            }
            let established = conn.channel.is_established();
            let handshake_late =
                !established && t.saturating_sub(conn.opened) >= self.config.handshake_timeout;
            let silent =
                established && t.saturating_sub(conn.last_heard) >= self.config.idle_timeout;
            if handshake_late || silent {
                expired.push(*id);
            } else if established && t.saturating_sub(conn.last_sent) >= self.config.keepalive {
                conn.ping += 1;
                conn.channel
                    .send(Message::Ping { token: conn.ping }, now.unix_secs);
                conn.last_sent = t;
            }
        }
        for id in expired {
            self.counters.timeouts += 1;
            self.close(id, now);
        }
        let due: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(_, l)| l.dialer && l.dialing.is_none() && t >= l.next_dial)
            .filter(|(_, l)| match l.current {
                None => true,
                Some(c) => {
                    let age = self.conns.get(&c).map(|c| t.saturating_sub(c.opened));
                    age.is_some_and(|a| a >= self.config.rehandshake_after)
                }
            })
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            let Ok(channel) = Channel::dial(&self.ctx, node, now.unix_secs) else {
                continue;
            };
            let id = self.new_conn_id();
            self.conns.insert(id, Conn::new(channel, now));
            self.counters.dials += 1;
            if let Some(link) = self.links.get_mut(&node) {
                link.dialing = Some(id);
                link.next_dial = t + link.backoff;
                link.backoff = (link.backoff * 2).min(self.config.redial_max);
            }
            actions.push(Action::Dial {
                conn: id,
                peer: node,
            });
        }
        actions
    }

    /// Bytes the TCP connection of `conn` received.
    pub fn received(&mut self, conn: ConnId, bytes: &[u8], now: Time) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_heard = now.since_boot;
            c.channel.receive(bytes, now.unix_secs);
        }
        self.events(conn, now);
    }

    /// The TCP connection of `conn` ended (FIN, reset, or it never connected).
    pub fn stream_closed(&mut self, conn: ConnId, now: Time) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.channel.stream_closed();
        }
        self.events(conn, now);
    }

    /// Bytes to write on `conn`'s TCP connection.
    pub fn output(&self, conn: ConnId) -> &[u8] {
        self.conns.get(&conn).map_or(&[], |c| c.channel.output())
    }

    /// `n` bytes of [`Mesh::output`] were written.
    pub fn consumed(&mut self, conn: ConnId, n: usize, now: Time) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.channel.consumed(n);
            if n > 0 {
                c.last_sent = now.since_boot;
            }
        }
    }

    /// The connection is over and its last bytes (an alert, a close_notify) are out: the
    /// caller closes the socket and the handle is forgotten. Unknown handles are
    /// finished too.
    pub fn finished(&mut self, conn: ConnId) -> bool {
        let done = self
            .conns
            .get(&conn)
            .is_none_or(|c| c.channel.closed().is_some() && c.channel.output().is_empty());
        if done {
            self.conns.remove(&conn);
        }
        done
    }

    /// The connections the caller should have sockets for.
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// Key changes since the last call, in order.
    pub fn take_key_events(&mut self) -> Vec<KeyEvent> {
        core::mem::take(&mut self.key_events)
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.links
            .iter()
            .map(|(node, l)| {
                let state = match (l.current, l.dialing) {
                    (Some(c), _)
                        if self
                            .conns
                            .get(&c)
                            .is_some_and(|c| c.channel.is_established()) =>
                    {
                        LinkState::Established
                    }
                    (None, None) if !self.pending_inbound(*node) => LinkState::Idle,
                    _ => LinkState::Connecting,
                };
                PeerStatus {
                    node: *node,
                    state,
                    dialer: l.dialer,
                    cert: l.cert.clone(),
                    tx_session: l.tx_session,
                    rx_session: l.rx_session,
                    last_rekey: l.last_rekey,
                    established_at: l.established_at,
                    handshake_time: l.handshake_time,
                    handshakes: l.handshakes,
                }
            })
            .collect()
    }

    fn pending_inbound(&self, node: NodeId) -> bool {
        self.conns
            .values()
            .any(|c| c.channel.closed().is_none() && c.channel.peer() == Some(node))
    }

    fn close(&mut self, id: ConnId, now: Time) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.channel.close(now.unix_secs);
        }
        self.events(id, now);
    }

    fn send(&mut self, id: ConnId, message: Message, now: Time) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.channel.send(message, now.unix_secs);
        }
    }

    /// Act on what happened on `id`.
    fn events(&mut self, id: ConnId, now: Time) {
        loop {
            let Some(event) = self.conns.get_mut(&id).and_then(|c| c.channel.poll_event()) else {
                return;
            };
            match event {
                Event::Established { peer, cert } => self.established(id, peer, cert, now),
                Event::Message(m) => self.message(id, m, now),
                Event::Closed(reason) => self.closed(id, reason, now),
            }
        }
    }

    fn established(&mut self, id: ConnId, peer: NodeId, cert: CertSummary, now: Time) {
        let t = now.since_boot;
        let Some(link) = self.links.get(&peer) else {
            self.counters.refused_not_a_peer += 1;
            return self.close(id, now);
        };
        let dialed = self.conns.get(&id).is_some_and(|c| c.channel.is_dialer());
        // One connection per pair: the lower id dials. An inbound connection from a
        // node this one dials loses against this node's own live connection.
        if !dialed && link.dialer {
            let own_live = [link.current, link.dialing].into_iter().flatten().any(|c| {
                self.conns
                    .get(&c)
                    .is_some_and(|c| c.channel.closed().is_none())
            });
            if own_live {
                self.counters.duplicates += 1;
                return self.close(id, now);
            }
        }
        self.counters.established += 1;
        let opened = self.conns.get(&id).map_or(t, |c| c.opened);
        let session = self.next_session;
        self.next_session = self.next_session.wrapping_add(1);
        let link = self.links.get_mut(&peer).expect("checked above");
        let old = link.current.replace(id);
        if link.dialing == Some(id) {
            link.dialing = None;
        }
        link.backoff = self.config.redial_min;
        link.next_dial = t + self.config.redial_min;
        link.cert = Some(cert);
        link.established_at = Some(t);
        link.handshake_time = Some(t.saturating_sub(opened));
        link.handshakes += 1;
        link.tx_pending = Some((id, session));
        if let Some(old) = old.filter(|o| *o != id) {
            self.counters.replaced += 1;
            self.close(old, now);
        }
        self.send(id, Message::Keys { session }, now);
    }

    fn message(&mut self, id: ConnId, message: Message, now: Time) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(peer) = conn.channel.peer() else {
            return;
        };
        match message {
            Message::Keys { session } => {
                if conn.got_keys {
                    self.counters.bad_messages += 1;
                    return self.close(id, now);
                }
                conn.got_keys = true;
                let Some(chain) = conn.channel.export_chain(peer, self.local, session) else {
                    return self.close(id, now);
                };
                self.keys.borrow_mut().install_rx(peer, chain);
                if let Some(link) = self.links.get_mut(&peer) {
                    link.rx_session = Some(session);
                }
                self.send(id, Message::KeysAck { session }, now);
            }
            Message::KeysAck { session } => {
                let pending = self.links.get(&peer).and_then(|l| l.tx_pending);
                if pending != Some((id, session)) {
                    self.counters.bad_messages += 1;
                    return self.close(id, now);
                }
                let Some(chain) = conn.channel.export_chain(self.local, peer, session) else {
                    return self.close(id, now);
                };
                self.keys.borrow_mut().install_tx(peer, chain);
                if let Some(link) = self.links.get_mut(&peer) {
                    link.tx_pending = None;
                    link.tx_session = Some(session);
                    link.last_rekey = Some(now.since_boot);
                }
                self.counters.key_switches += 1;
                self.key_events.push(KeyEvent::Send { peer, session });
            }
            Message::Ping { token } => self.send(id, Message::Pong { token }, now),
            Message::Pong { .. } => {}
        }
    }

    fn closed(&mut self, id: ConnId, reason: CloseReason, now: Time) {
        match reason {
            CloseReason::Handshake(f) => *self.counters.refused(f) += 1,
            CloseReason::Identity(PeerIdentityError::WrongGrid) => {
                self.counters.refused_wrong_grid += 1
            }
            CloseReason::Identity(PeerIdentityError::WrongNode(_))
            | CloseReason::Identity(PeerIdentityError::NoCertificate) => {
                self.counters.refused_wrong_node += 1
            }
            CloseReason::Tls => self.counters.tls_errors += 1,
            CloseReason::BadMessage(_) => self.counters.bad_messages += 1,
            CloseReason::PeerClosed => self.counters.peer_closed += 1,
            CloseReason::TooMuchInput => self.counters.bad_messages += 1,
            CloseReason::Local => {}
        }
        let t = now.since_boot;
        for link in self.links.values_mut() {
            if link.dialing == Some(id) {
                link.dialing = None;
            }
            if link.current == Some(id) {
                link.current = None;
                // Redial at once after a connection that was up, with backoff after
                // failures (`next_dial` was moved on when the dial went out).
                link.next_dial = link.next_dial.min(t + self.config.redial_min);
            }
            if link.tx_pending.is_some_and(|(c, _)| c == id) {
                link.tx_pending = None;
            }
        }
    }
}

impl Conn {
    fn new(channel: Channel, now: Time) -> Conn {
        Conn {
            channel,
            opened: now.since_boot,
            last_heard: now.since_boot,
            last_sent: now.since_boot,
            got_keys: false,
            ping: 0,
        }
    }
}

#[cfg(test)]
mod tests;
