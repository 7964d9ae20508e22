//! The peer channel as the appliance runs it (issue 16; docs/peer-tls.md): smoltcp TCP
//! sockets on port 6783 of the uplink address, fed to and from `weft_peer`'s [`Mesh`],
//! and what `status` shows of it.
//!
//! Owns the sockets (listeners on 6783, one socket per connection) and their mapping to
//! the mesh's connections. It never interprets a byte of the stream (the mesh does),
//! never keeps a socket the mesh has finished with, and never dials from a port outside
//! the appliance's own client range.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration as CoreDuration;

use serde::Serialize;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use weft_netstack::{Netstack, NicId};
use weft_peer::channel::PORT;
use weft_peer::identity::NodeId;
use weft_peer::mesh::{Action, ConnId, KeyEvent, Mesh, MeshCounters, PeerStatus, Time};

/// Listening sockets kept on 6783 (each takes one connection; a new one replaces it).
const LISTENERS: usize = 2;
/// Socket buffers: a handshake flight is a few KiB, messages are 12 bytes.
const BUFFER: usize = 8 * 1024;
/// Source ports of dials: the appliance's own client sockets (docs: the port plan),
/// never translated by NAT.
const DIAL_PORTS: core::ops::RangeInclusive<u16> = 61000..=65535;
/// How long a socket the mesh is done with may take to close before it is aborted.
const LINGER: Duration = Duration::from_secs(5);

/// The mesh's notion of time from the appliance's.
pub fn mesh_time(now: Instant, unix_secs: Option<u64>) -> Time {
    Time {
        since_boot: CoreDuration::from_micros(now.total_micros().max(0) as u64),
        unix_secs,
    }
}

/// The peer channel of a running overlay with `auth = "tls"`.
pub struct PeerTls {
    mesh: Mesh,
    listeners: Vec<SocketHandle>,
    conns: BTreeMap<ConnId, SocketHandle>,
    /// Sockets the mesh is done with, closing, and when they are aborted.
    closing: Vec<(SocketHandle, Instant)>,
    /// Each peer's underlay address in use.
    addresses: BTreeMap<NodeId, Ipv4Address>,
    next_port: u16,
}

impl core::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerTls")
            .field("mesh", &self.mesh)
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// `seed` spreads the dial ports.
    pub fn new(mesh: Mesh, seed: u64) -> PeerTls {
        let span = u64::from(DIAL_PORTS.end() - DIAL_PORTS.start()) + 1;
        PeerTls {
            mesh,
            listeners: Vec::new(),
            conns: BTreeMap::new(),
            closing: Vec::new(),
            addresses: BTreeMap::new(),
            next_port: DIAL_PORTS.start() + (seed % span) as u16,
        }
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn mesh_mut(&mut self) -> &mut Mesh {
        &mut self.mesh
    }

    /// The peers that need a channel (those some network reaches over sleeve) and the
    /// address each is reached at.
    pub fn set_peers(&mut self, peers: &[(NodeId, Ipv4Address)], time: Time) {
        self.addresses = peers.iter().copied().collect();
        let nodes: Vec<NodeId> = peers.iter().map(|(n, _)| *n).collect();
        self.mesh.set_peers(&nodes, time);
    }

    /// Key changes for the data path since the last call.
    pub fn take_key_events(&mut self) -> Vec<KeyEvent> {
        self.mesh.take_key_events()
    }

    /// One round of socket I/O and timers; true when anything moved.
    pub fn poll(&mut self, now: Instant, unix_secs: Option<u64>, netstack: &mut Netstack) -> bool {
        let time = mesh_time(now, unix_secs);
        let iface = &mut netstack.nic_mut(NicId::Uplink).iface;
        if iface.address().is_none() {
            return false;
        }
        let mut work = false;
        // New connections on the listeners.
        let mut still = Vec::new();
        for handle in core::mem::take(&mut self.listeners) {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::Listen => still.push(handle),
                tcp::State::Closed => {
                    iface.sockets_mut().remove(handle);
                }
                _ => match self.mesh.accept(time) {
                    Some(conn) => {
                        self.conns.insert(conn, handle);
                        work = true;
                    }
                    None => {
                        socket.abort();
                        self.closing.push((handle, now + LINGER));
                    }
                },
            }
        }
        self.listeners = still;
        while self.listeners.len() < LISTENERS {
            let mut socket = new_socket();
            if let Err(e) = socket.listen(PORT) {
                log::error!("peer-tls: cannot listen on TCP {PORT}: {e:?}");
                break;
            }
            self.listeners.push(iface.sockets_mut().add(socket));
        }

        // Timers and dials.
        for action in self.mesh.poll(time) {
            let Action::Dial { conn, peer } = action;
            work = true;
            match self.dial(netstack, peer) {
                Some(handle) => {
                    self.conns.insert(conn, handle);
                }
                None => self.mesh.stream_closed(conn, time),
            }
        }

        // Bytes both ways.
        let iface = &mut netstack.nic_mut(NicId::Uplink).iface;
        let mut buf = [0u8; 2048];
        let conns: Vec<(ConnId, SocketHandle)> = self.conns.iter().map(|(c, h)| (*c, *h)).collect();
        for (conn, handle) in conns {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(handle);
            while socket.can_recv() {
                match socket.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        self.mesh.received(conn, &buf[..n], time);
                        work = true;
                    }
                }
            }
            let out = self.mesh.output(conn);
            if !out.is_empty() && socket.can_send() {
                if let Ok(n) = socket.send_slice(out) {
                    if n > 0 {
                        self.mesh.consumed(conn, n, time);
                        work = true;
                    }
                }
            }
            let ended = match socket.state() {
                tcp::State::Closed | tcp::State::TimeWait => true,
                // The peer sent FIN and everything it sent was read.
                tcp::State::CloseWait | tcp::State::LastAck => !socket.can_recv(),
                _ => false,
            };
            if ended {
                self.mesh.stream_closed(conn, time);
            }
            if self.mesh.finished(conn) {
                let socket = iface.sockets_mut().get_mut::<tcp::Socket>(handle);
                if socket.state() == tcp::State::Closed {
                    iface.sockets_mut().remove(handle);
                } else {
                    socket.close();
                    self.closing.push((handle, now + LINGER));
                }
                self.conns.remove(&conn);
                work = true;
            }
        }

        // Sockets closing: removed once closed, aborted when they take too long.
        self.closing.retain(|(handle, deadline)| {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(*handle);
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                iface.sockets_mut().remove(*handle);
                return false;
            }
            if now >= *deadline {
                socket.abort();
            }
            true
        });
        work
    }

    /// Open a TCP connection to `peer` on 6783; `None` when it has no address or the
    /// socket refuses.
    fn dial(&mut self, netstack: &mut Netstack, peer: NodeId) -> Option<SocketHandle> {
        let address = *self.addresses.get(&peer)?;
        let iface = &mut netstack.nic_mut(NicId::Uplink).iface;
        let local_ip = iface.address()?.cidr.address();
        let span = DIAL_PORTS.end() - DIAL_PORTS.start() + 1;
        let port = self.next_port;
        self.next_port = DIAL_PORTS.start() + (port - DIAL_PORTS.start() + 1) % span;
        let mut socket = new_socket();
        let remote = IpEndpoint::new(IpAddress::Ipv4(address), PORT);
        let local = IpEndpoint::new(IpAddress::Ipv4(local_ip), port);
        socket
            .connect(iface.interface_mut().context(), remote, local)
            .ok()?;
        Some(iface.sockets_mut().add(socket))
    }

    /// Remove every socket (the overlay is going away or changing its identity).
    pub fn teardown(self, netstack: &mut Netstack) {
        let iface = &mut netstack.nic_mut(NicId::Uplink).iface;
        let handles = self
            .listeners
            .into_iter()
            .chain(self.conns.into_values())
            .chain(self.closing.into_iter().map(|(h, _)| h));
        for handle in handles {
            iface.sockets_mut().get_mut::<tcp::Socket>(handle).abort();
            iface.sockets_mut().remove(handle);
        }
    }

    /// When the mesh's timers next want a poll.
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        // The mesh's timers are seconds apart; a second's granularity is enough.
        (!self.addresses.is_empty()).then(|| now + Duration::from_secs(1))
    }

    pub fn status(&self, now: Instant) -> PeerTlsStatus {
        let ms = |d: CoreDuration| d.as_millis() as u64;
        let since_boot = CoreDuration::from_micros(now.total_micros().max(0) as u64);
        let creds = self.mesh.context().credentials();
        PeerTlsStatus {
            grid: String::from(creds.grid().as_str()),
            node: creds.node(),
            subject: creds.summary().subject.clone(),
            not_after: creds.summary().not_after,
            counters: self.mesh.counters().into(),
            peers: self
                .mesh
                .status()
                .into_iter()
                .map(|p: PeerStatus| PeerTlsPeer {
                    node: p.node,
                    address: self.addresses.get(&p.node).copied(),
                    state: p.state.name(),
                    dialer: p.dialer,
                    subject: p.cert.as_ref().map(|c| c.subject.clone()),
                    not_after: p.cert.as_ref().map(|c| c.not_after),
                    tx_session: p.tx_session,
                    rx_session: p.rx_session,
                    tx_epoch: None,
                    rx_epoch: None,
                    last_rekey_ms: p.last_rekey.map(|t| ms(since_boot.saturating_sub(t))),
                    handshake_ms: p.handshake_time.map(ms),
                    handshakes: p.handshakes,
                })
                .collect(),
        }
    }
}

fn new_socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; BUFFER]),
        tcp::SocketBuffer::new(vec![0; BUFFER]),
    );
    socket.set_nagle_enabled(false);
    socket
}

/// `status.peer_tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerTlsStatus {
    pub grid: String,
    pub node: NodeId,
    /// This node's certificate.
    pub subject: String,
    pub not_after: u64,
    pub counters: PeerTlsCounters,
    pub peers: Vec<PeerTlsPeer>,
}

/// One peer's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerTlsPeer {
    pub node: NodeId,
    pub address: Option<Ipv4Address>,
    /// `idle`, `connecting` or `established`.
    pub state: &'static str,
    pub dialer: bool,
    pub subject: Option<String>,
    pub not_after: Option<u64>,
    pub tx_session: Option<u64>,
    pub rx_session: Option<u64>,
    /// The sleeve epochs in use (from the data path).
    pub tx_epoch: Option<u32>,
    pub rx_epoch: Option<u32>,
    /// Milliseconds since the keys last changed (a session switch or a new epoch).
    pub last_rekey_ms: Option<u64>,
    /// The last connection's time from opening to established (TCP, TLS, first
    /// message).
    pub handshake_ms: Option<u64>,
    pub handshakes: u64,
}

/// The mesh's counters as status shows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerTlsCounters {
    pub dials: u64,
    pub accepts: u64,
    pub established: u64,
    pub refused_unknown_ca: u64,
    pub refused_wrong_name: u64,
    pub refused_expired: u64,
    pub refused_no_certificate: u64,
    pub refused_peer_alert: u64,
    pub refused_incompatible: u64,
    pub refused_protocol: u64,
    pub refused_wrong_grid: u64,
    pub refused_wrong_node: u64,
    pub refused_not_a_peer: u64,
    pub duplicates: u64,
    pub replaced: u64,
    pub bad_messages: u64,
    pub tls_errors: u64,
    pub timeouts: u64,
    pub peer_closed: u64,
    pub key_switches: u64,
}

impl From<&MeshCounters> for PeerTlsCounters {
    fn from(c: &MeshCounters) -> Self {
        PeerTlsCounters {
            dials: c.dials,
            accepts: c.accepts,
            established: c.established,
            refused_unknown_ca: c.refused_unknown_ca,
            refused_wrong_name: c.refused_wrong_name,
            refused_expired: c.refused_expired,
            refused_no_certificate: c.refused_no_certificate,
            refused_peer_alert: c.refused_peer_alert,
            refused_incompatible: c.refused_incompatible,
            refused_protocol: c.refused_protocol,
            refused_wrong_grid: c.refused_wrong_grid,
            refused_wrong_node: c.refused_wrong_node,
            refused_not_a_peer: c.refused_not_a_peer,
            duplicates: c.duplicates,
            replaced: c.replaced,
            bad_messages: c.bad_messages,
            tls_errors: c.tls_errors,
            timeouts: c.timeouts,
            peer_closed: c.peer_closed,
            key_switches: c.key_switches,
        }
    }
}
