//! The peer channel as the appliance runs it (issue 16; docs/peer-tls.md): smoltcp TCP
//! sockets on port 6783 of the uplink address, fed to and from `weft_peer`'s [`Mesh`],
//! and what `status` shows of it.
//!
//! Owns the sockets (listeners on 6783, one socket per connection), their mapping to
//! the mesh's connections, and the decision on `apply` whether the channel goes on, is
//! built anew (checking this node's credentials) or ends. It never interprets a byte of
//! the stream (the mesh does), never keeps a socket the mesh has finished with, and
//! never dials from a port outside the appliance's own client range.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration as CoreDuration;

use serde::{Deserialize, Serialize};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use weft_netstack::pipeline::datapath::OverlayPath;
use weft_netstack::stage::sleeve::SessionId;
use weft_netstack::{Netstack, NicId};
use weft_peer::channel::{TlsContext, PORT};
use weft_peer::config::Auth;
use weft_peer::identity::{CredentialError, Credentials, NodeId};
use weft_peer::mesh::{Action, ConnId, KeyEvent, Mesh, MeshCounters, PeerStatus, Time};
use weft_peer::rng::Csprng;

use weft_netstack::stage::overlay::config::GridConfig;

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

/// What applying a document does to the peer channel; decided before anything changes.
#[derive(Debug)]
pub enum Plan {
    /// No `auth = "tls"`: no channel (a running one is torn down).
    Off,
    /// The running channel goes on: the overlay kept its key store (same `[grid]`).
    Keep,
    /// A new channel over the new overlay's key store (a running one is torn down).
    New(alloc::boxed::Box<PeerTls>),
}

/// The document's field a credential refusal is about.
fn credential_field(e: &CredentialError) -> &'static str {
    match e {
        CredentialError::CaPem | CredentialError::BadCa | CredentialError::NotAGridCa => {
            "grid.tls.ca_pem"
        }
        CredentialError::KeyPem | CredentialError::KeyType | CredentialError::KeyMismatch => {
            "grid.tls.key_pem"
        }
        _ => "grid.tls.cert_pem",
    }
}

/// Why a document's peer channel cannot run: the document's field and what is wrong
/// (the caller makes it a `ConfigError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: &'static str,
    pub message: String,
}

/// The peer channel `grid` needs beside `overlay` (the overlay planned for it): this
/// node's credentials are checked at `unix_now` (docs/peer-tls.md, "Certificates");
/// `running` goes on if the overlay kept its key store. `seed` spreads the first
/// session id and the dial ports.
pub fn plan(
    grid: Option<&GridConfig>,
    overlay: Option<&OverlayPath>,
    running: Option<&PeerTls>,
    rng: Option<&'static Csprng>,
    unix_now: Option<u64>,
    seed: u64,
) -> Result<Plan, Refusal> {
    let Some(grid) = grid.filter(|g| g.auth == Auth::Tls) else {
        return Ok(Plan::Off);
    };
    let refuse = |field: &'static str, message: String| Refusal { field, message };
    let Some(tls) = grid.tls.as_deref() else {
        return Err(refuse("grid.tls", "auth = \"tls\" needs [grid.tls]".into()));
    };
    let Some(keys) = overlay.and_then(|o| o.overlay().tls_keys()) else {
        return Err(refuse(
            "grid.auth",
            "overlay: no peer-channel key store".into(),
        ));
    };
    if let Some(r) = running.filter(|r| alloc::rc::Rc::ptr_eq(r.mesh.shared_keys(), keys)) {
        debug_assert_eq!(r.mesh.local(), u32::from(grid.node.get()));
        return Ok(Plan::Keep);
    }
    let Some(rng) = rng else {
        return Err(refuse(
            "grid.auth",
            "auth = \"tls\" needs a 256-bit seed for the key generator (RDRAND), and this \
             machine gave none"
                .into(),
        ));
    };
    let creds = Credentials::from_pem(
        u32::from(grid.node.get()),
        &tls.ca_pem,
        &tls.cert_pem,
        tls.key_pem.as_str(),
        unix_now,
    )
    .map_err(|e| refuse(credential_field(&e), alloc::format!("{e}")))?;
    let ctx = TlsContext::new(creds, rng)
        .map_err(|e| refuse("grid.tls", alloc::format!("TLS configuration: {e}")))?;
    let secs = u32::try_from(unix_now.unwrap_or(0)).unwrap_or(u32::MAX);
    let mut first = SessionId::first_of_boot(secs, (seed >> 32) as u32).0;
    if let Some(r) = running {
        first = first.max(r.mesh.next_session());
    }
    let mesh = Mesh::new(ctx, tls.mesh_config(), first, keys.clone());
    Ok(Plan::New(alloc::boxed::Box::new(PeerTls::new(mesh, seed))))
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

    /// Channels to the overlay's sleeve peers (after every `apply`).
    pub fn follow_peers(&mut self, overlay: &OverlayPath, time: Time) {
        let peers: Vec<(NodeId, Ipv4Address)> = overlay
            .overlay()
            .sleeve_peers()
            .into_iter()
            .map(|(n, a)| (u32::from(n.get()), a))
            .collect();
        self.set_peers(&peers, time);
    }

    /// The data path seals under the sessions whose keys the channel just installed.
    pub fn hand_keys(&mut self, overlay: &mut OverlayPath) {
        for event in self.take_key_events() {
            let KeyEvent::Send { peer, session } = event;
            let node = u16::try_from(peer)
                .ok()
                .and_then(weft_netstack::base::NodeId::new);
            if let Some(node) = node {
                overlay.sleeve_restart_tx(node, SessionId(session));
            }
        }
    }

    /// One round of socket I/O and timers; true when anything moved.
    pub fn poll(&mut self, now: Instant, unix_secs: Option<u64>, netstack: &mut Netstack) -> bool {
        let time = mesh_time(now, unix_secs);
        let iface = &mut netstack.nic_mut(NicId::Uplink).iface;
        if iface.address().is_none() {
            return false;
        }
        let mut work = false;
        // This runs on every turn of the main loop, also under full load: nothing here
        // allocates or copies unless a socket has something (docs/PERFORMANCE.md,
        // "iperf3 over sleeve").
        // New connections on the listeners.
        let (mesh, conns, closing) = (&mut self.mesh, &mut self.conns, &mut self.closing);
        self.listeners.retain(|&handle| {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::Listen => return true,
                tcp::State::Closed => {
                    iface.sockets_mut().remove(handle);
                }
                _ => match mesh.accept(time) {
                    Some(conn) => {
                        conns.insert(conn, handle);
                        work = true;
                    }
                    None => {
                        socket.abort();
                        closing.push((handle, now + LINGER));
                    }
                },
            }
            false
        });
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
        let mut finished = Vec::new();
        for (&conn, &handle) in &self.conns {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(handle);
            while socket.can_recv() {
                // Straight from the socket's buffer, no copy.
                let mesh = &mut self.mesh;
                let got = socket.recv(|bytes| {
                    mesh.received(conn, bytes, time);
                    (bytes.len(), bytes.len())
                });
                match got {
                    Ok(0) | Err(_) => break,
                    Ok(_) => work = true,
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
                finished.push(conn);
                work = true;
            }
        }
        for conn in finished {
            self.conns.remove(&conn);
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

    /// `status.peer_tls`; the sleeve epochs and their age come from `overlay`.
    pub fn status(&self, now: Instant, overlay: Option<&OverlayPath>) -> PeerTlsStatus {
        let ms = |d: CoreDuration| d.as_millis() as u64;
        let since_boot = CoreDuration::from_micros(now.total_micros().max(0) as u64);
        let creds = self.mesh.context().credentials();
        let session = |node: NodeId| {
            let node = weft_netstack::base::NodeId::new(u16::try_from(node).ok()?)?;
            overlay?.overlay().sleeve_session(node)
        };
        PeerTlsStatus {
            grid: String::from(creds.grid().as_str()),
            node: creds.node(),
            subject: creds.summary().subject.clone(),
            not_after: creds.summary().not_after,
            counters: *self.mesh.counters(),
            peers: self
                .mesh
                .status()
                .into_iter()
                .map(|p: PeerStatus| {
                    let sleeve = session(p.node);
                    // A new session or a new epoch, whichever came last.
                    let switched = p.last_rekey.map(|t| ms(since_boot.saturating_sub(t)));
                    let epoch_age = sleeve
                        .and_then(|s| s.tx_epoch_started())
                        .map(|t| (now - t).total_millis());
                    let last_rekey_ms = match (switched, epoch_age) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    PeerTlsPeer {
                        node: p.node,
                        address: self.addresses.get(&p.node).copied(),
                        state: String::from(p.state.name()),
                        dialer: p.dialer,
                        subject: p.cert.as_ref().map(|c| c.subject.clone()),
                        not_after: p.cert.as_ref().map(|c| c.not_after),
                        tx_session: p.tx_session,
                        rx_session: p.rx_session,
                        tx_epoch: sleeve.and_then(|s| s.tx_epoch()).map(|e| e.0),
                        rx_epoch: sleeve.and_then(|s| s.rx_current()).map(|(_, e)| e.0),
                        last_rekey_ms,
                        handshake_ms: p.handshake_time.map(ms),
                        handshakes: p.handshakes,
                    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsStatus {
    pub grid: String,
    pub node: NodeId,
    /// This node's certificate.
    pub subject: String,
    pub not_after: u64,
    pub counters: MeshCounters,
    pub peers: Vec<PeerTlsPeer>,
}

/// One peer's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsPeer {
    pub node: NodeId,
    pub address: Option<Ipv4Address>,
    /// `idle`, `connecting` or `established`.
    pub state: String,
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
