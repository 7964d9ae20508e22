//! The DNS service as the appliance runs it (issue 5): the smoltcp sockets on port 53 of
//! the container link (its gateway address and, with an overlay, the node address), one
//! upstream socket per forwarded query in flight, and the `DnsServer` they feed; the
//! `[dns]` / `[[containers]]` rules of the document; the `container-*` commands. The
//! record store is where the running document keeps its containers (there is no second
//! copy), so a `container-*` command costs O(log n) in a grid of n containers.
//!
//! It never blocks and never lets forwarding hold up a local answer: each poll drains the
//! listening sockets first and answers what it can at once; a forwarded query only opens
//! a socket. It never panics on input: bad queries are the server's FORMERR or counted
//! drops, and a reply with nowhere to go is counted here.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use weft_netstack::{Netstack, NicId, NicIface};

use crate::command_error::{ErrorBody, ErrorCode};
use crate::config::{Config, ConfigError};
use crate::dns::records::Container;
use crate::dns::tcp::{frame, StreamDecoder, MAX_MESSAGE};
use crate::dns::{
    Action, ClientReply, ContainerEntry, DnsConfig, DnsCounters, DnsServer, Outgoing, TimerEvent,
    Transport, UpstreamAction,
};

/// Heap bytes one container takes in the record store, with room to spare (274
/// measured by `examples/grid_bench.rs`); a document that replaces the records needs
/// this much per container beside the running ones.
pub const RECORD_HEAP_BYTES: u64 = 512;

/// The DNS port (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;
/// Datagrams queued each way on the port-53 UDP socket.
const UDP_QUEUE: usize = 64;
/// Payload bytes queued for received queries, and for replies (which are bigger).
const UDP_RX_BYTES: usize = 64 * 1024;
const UDP_TX_BYTES: usize = 128 * 1024;
/// Without IP reassembly no datagram is larger than the NIC's IP MTU allows.
const MAX_DATAGRAM: usize = weft_netstack::IP_MTU;
/// TCP sockets kept listening on port 53, so this many clients can connect at once.
pub const TCP_LISTENERS: usize = 4;
/// TCP connections at once, listening sockets included.
pub const TCP_MAX: usize = 32;
const TCP_BUFFER: usize = 8 * 1024;
/// A client connection that sends nothing for this long is closed (RFC 7766 §6.2.3:
/// servers close idle connections after a few seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// A connection still closing after this long is aborted.
const TCP_LINGER: Duration = Duration::from_secs(5);
/// Reply bytes a TCP client may leave unread before its connection is aborted; no new
/// query of that client is read while half of this is queued.
const TCP_OUT_LIMIT: usize = 4 * (MAX_MESSAGE + 2);

/// The `dns` member of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsStatus {
    /// The zone apex (`kontena.local.`): every grid name lives under it.
    pub domain: String,
    /// Containers registered.
    pub containers: u64,
    /// Forwarded queries waiting for an upstream.
    pub in_flight: u64,
    /// TCP connections open now (not counting listening sockets).
    pub tcp_open: u64,
    pub counters: DnsCounters,
    pub sockets: SocketCounters,
    /// Each configured upstream with what it was asked and answered.
    #[serde(default)]
    pub upstreams: Vec<crate::dns::forward::UpstreamStatus>,
}

/// What the socket side counts (the resolver's own counters are `DnsCounters`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketCounters {
    /// TCP connections accepted on port 53.
    pub tcp_accepted: u64,
    /// Of those, closed by us after `TCP_IDLE` without a query.
    pub tcp_idle_closed: u64,
    /// Aborted: the client left too many replies unread, sent an oversized stream, or
    /// did not finish closing.
    pub tcp_aborted: u64,
    /// Replies that had nowhere to go: the UDP send queue was full, or the TCP client
    /// had gone.
    pub reply_undeliverable: u64,
    /// Forwarded queries that could not be sent (no address or route to the upstream);
    /// each fails over at once.
    pub upstream_unsendable: u64,
    /// TCP attempts the upstream refused or reset before its reply; each fails over.
    pub upstream_reset: u64,
    /// UDP attempts answered by an ICMP host/port unreachable; each fails over at once.
    pub upstream_unreachable: u64,
}

/// The DNS service: off until a document with a `[dns]` section is applied.
#[derive(Default)]
pub struct DnsService {
    running: Option<Running>,
    /// How many times the service was started; varies the seed of each start.
    starts: u64,
}

/// What `apply` runs on: the validated `[dns]` section (the containers go to
/// `DnsService::apply` beside it, typed by `records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPlan {
    pub config: DnsConfig,
}

/// Checks the DNS rules of a document (field-named errors), its `[[containers]]`
/// included; `None` when it has no `[dns]` section. `Config::validate` calls it; `apply`
/// uses its result. Linear in the containers, and copies none of them.
pub fn plan(config: &Config) -> Result<Option<DnsPlan>, ConfigError> {
    let Some(section) = &config.dns else {
        if config.containers.is_empty() {
            return Ok(None);
        }
        return Err(ConfigError {
            field: "containers".into(),
            message: "containers are DNS records: they need a [dns] section".into(),
        });
    };
    let dns = section.validate().map_err(refuse)?;
    for (i, upstream) in dns.forwarder.upstreams.iter().enumerate() {
        let field = format!("dns.upstreams[{i}]");
        let IpAddr::V4(ip) = upstream.ip() else {
            return Err(ConfigError {
                field,
                message: "an IPv6 upstream cannot be reached: the appliance speaks IPv4 only"
                    .into(),
            });
        };
        if own_addresses(config).contains(&ip) {
            return Err(ConfigError {
                field,
                message: format!("{ip} is one of the appliance's own addresses"),
            });
        }
        let on_link = config.uplink.address.contains(ip)
            || config.link.address.contains(ip)
            || config
                .grid
                .as_ref()
                .is_some_and(|g| g.subnet.0.contains_addr(&ip));
        if !on_link && config.uplink.gateway.is_none() {
            return Err(ConfigError {
                field,
                message: format!(
                    "{ip} is on neither the uplink nor the link subnet, and the uplink has \
                     no gateway to reach it"
                ),
            });
        }
    }
    crate::dns::config::validate_containers(&config.containers).map_err(refuse)?;
    Ok(Some(DnsPlan { config: dns }))
}

/// The containers of a document that passed `plan`, typed for the record store.
pub fn records(entries: Vec<ContainerEntry>) -> Result<Vec<Container>, ConfigError> {
    crate::dns::config::into_containers(entries).map_err(refuse)
}

fn refuse(e: crate::dns::ConfigError) -> ConfigError {
    ConfigError {
        field: e.field,
        message: e.problem.into(),
    }
}

fn own_addresses(config: &Config) -> Vec<Ipv4Addr> {
    let mut own = vec![
        config.uplink.address.address(),
        config.link.address.address(),
    ];
    if let Some(grid) = &config.grid {
        own.push(grid.node_address(grid.node));
    }
    own
}

/// The forwarder's seed for start number `start`: the boot seed expanded through
/// ChaCha12 (`StdRng::seed_from_u64` spreads the 64 bits with PCG32 first).
/// The boot seed is only as good as the kernel makes it; see the kernel's `BootInfo`.
fn forwarder_seed(boot_seed: u64, start: u64) -> [u8; 32] {
    // Domain separation: smoltcp's ISNs come from the same boot seed.
    const DNS: u64 = 0x646e_735f_7365_6564; // "dns_seed"
    let mut rng = StdRng::seed_from_u64(boot_seed ^ DNS ^ start.rotate_left(32));
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

impl DnsService {
    pub fn new() -> DnsService {
        DnsService::default()
    }

    /// Whether a `[dns]` section is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn server(&self) -> Option<&DnsServer> {
        self.running.as_ref().map(|r| &r.server)
    }

    /// Starts, reconfigures or (with `None`) stops the service. `records`: the
    /// document's containers, or `None` to keep the registered ones (an edit of another
    /// section). Records are replaced only when they differ from the registered ones, so
    /// the round-robin positions survive an unrelated `apply`. Infallible: `plan`
    /// checked it.
    pub fn apply(
        &mut self,
        plan: Option<DnsPlan>,
        records: Option<Vec<Container>>,
        netstack: &mut Netstack,
        boot_seed: u64,
    ) {
        match (plan, self.running.as_mut()) {
            (None, Some(_)) => {
                if let Some(running) = self.running.take() {
                    running.stop(netstack);
                }
            }
            (None, None) => {}
            (Some(plan), Some(running)) => {
                // Only a changed section reconfigures: that resets the preferred upstream.
                if running.config != plan.config {
                    running.server.reconfigure(plan.config.clone());
                    running.config = plan.config;
                }
                if let Some(records) = records {
                    running.replace_records(records);
                }
                running.lb_seen = None;
            }
            (Some(plan), None) => {
                let seed = forwarder_seed(boot_seed, self.starts);
                self.starts += 1;
                let mut server = DnsServer::new(plan.config.clone(), seed);
                // `plan` validated every entry and their uniqueness.
                if let Err(e) = server
                    .records_mut()
                    .replace_all(records.unwrap_or_default())
                {
                    log::error!("dns: records refused after validation: {e}");
                }
                self.running = Some(Running::start(server, plan.config, netstack));
            }
        }
    }

    /// Whether the registered containers are exactly `entries`, in order (false when
    /// the service is off and there are entries).
    pub fn holds_exactly(&self, entries: &[ContainerEntry]) -> bool {
        match self.server() {
            Some(server) => {
                let store = server.records();
                store.len() == entries.len()
                    && store.containers().zip(entries).all(|(c, e)| {
                        c.name == e.name && c.service == e.service && c.address == e.address
                    })
            }
            None => entries.is_empty(),
        }
    }

    /// The registered containers as the document's entries, in document order.
    pub fn container_entries(&self) -> Vec<ContainerEntry> {
        self.server().map_or_else(Vec::new, |server| {
            server
                .records()
                .containers()
                .map(|c| ContainerEntry {
                    name: c.name.clone(),
                    service: c.service.clone(),
                    address: c.address,
                })
                .collect()
        })
    }

    /// Serves what the last `Netstack::poll` received and queues the replies; returns
    /// `netstack_next` lowered to what the service needs: zero when it queued anything
    /// (the next netstack poll sends it), else its next deadline.
    pub fn poll(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        netstack_next: Option<Duration>,
    ) -> Option<Duration> {
        let Some(running) = self.running.as_mut() else {
            return netstack_next;
        };
        if running.poll(now, netstack) {
            return Some(Duration::ZERO);
        }
        let own = running
            .poll_at()
            .map(|t| if t > now { t - now } else { Duration::ZERO });
        match (netstack_next, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The `dns` member of `status` (None while the service is off).
    pub fn status(&self) -> Option<DnsStatus> {
        let r = self.running.as_ref()?;
        Some(DnsStatus {
            domain: r.server.records().zone().apex().to_ascii(),
            containers: r.server.records().len() as u64,
            in_flight: r.server.forwarder().in_flight() as u64,
            tcp_open: r.tcp.iter().filter(|c| c.accepted).count() as u64,
            counters: r.server.counters().clone(),
            sockets: r.counters,
            upstreams: r.server.forwarder().upstreams(),
        })
    }

    /// `container-add`: registers `entry` (or replaces the container of the same name,
    /// case-insensitively, in its place). The record store is the running document's
    /// list of containers, so this costs O(log n) in a grid of n containers. Answered
    /// from the very next query.
    pub fn container_add(
        &mut self,
        running: Option<&Config>,
        entry: ContainerEntry,
    ) -> Result<bool, ErrorBody> {
        let service = self.ready(running)?;
        let container = entry.into_container(0).map_err(command_error)?;
        let store = service.server.records_mut();
        if store.container(&container.name) == Some(&container) {
            return Ok(false);
        }
        store
            .add_container(container)
            .map_err(|e| ErrorBody::with_field(ErrorCode::InvalidConfig, format!("{e}"), "name"))?;
        Ok(true)
    }

    /// `container-remove`: the container's names and its address's PTR are gone from
    /// the very next query. O(log n).
    pub fn container_remove(
        &mut self,
        running: Option<&Config>,
        key: ContainerKey,
    ) -> Result<bool, ErrorBody> {
        let service = self.ready(running)?;
        match service.server.records_mut().remove_container(&key.name) {
            Ok(_) => Ok(true),
            Err(_) => Err(ErrorBody::with_field(
                ErrorCode::NotFound,
                format!("no container named {:?}", key.name),
                "name",
            )),
        }
    }

    fn ready(&mut self, running: Option<&Config>) -> Result<&mut Running, ErrorBody> {
        match (self.running.as_mut(), running) {
            (Some(service), Some(doc)) if doc.dns.is_some() => Ok(service),
            _ => Err(ErrorBody::new(
                ErrorCode::NotReady,
                "no DNS service: apply a document with a [dns] section first".into(),
            )),
        }
    }
}

/// The checks of `container-add`'s arguments, at parse time.
pub fn check_entry(entry: &ContainerEntry) -> Result<(), ErrorBody> {
    entry.check(0).map(|_| ()).map_err(command_error)
}

/// A `container-add` refusal names the field inside the command's arguments.
fn command_error(e: crate::dns::ConfigError) -> ErrorBody {
    let field = e
        .field
        .rsplit_once('.')
        .map_or(e.field.as_str(), |(_, last)| last);
    ErrorBody::with_field(ErrorCode::InvalidConfig, e.problem.into(), field)
}

/// The arguments of `container-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerKey {
    pub name: String,
}

/// One TCP socket on port 53: listening, or a client connection.
struct Conn {
    handle: SocketHandle,
    decoder: StreamDecoder,
    /// Framed replies not yet taken by the socket.
    out: Vec<u8>,
    /// Left `Listen` (counted once in `tcp_accepted`).
    accepted: bool,
    /// Forwarded queries of this connection whose reply has not come back.
    pending: usize,
    last_active: Instant,
    closing_since: Option<Instant>,
}

impl Conn {
    fn listening(handle: SocketHandle, now: Instant) -> Conn {
        Conn {
            handle,
            decoder: StreamDecoder::new(),
            out: Vec::new(),
            accepted: false,
            pending: 0,
            last_active: now,
            closing_since: None,
        }
    }
}

/// A forwarded query's current attempt.
struct Upstream {
    /// The socket, absent when it could not be opened (the attempt is failing over).
    socket: Option<(NicId, SocketHandle)>,
    /// For UDP: an ICMP socket for the errors about datagrams from the source port.
    icmp: Option<SocketHandle>,
    /// Where the client's query arrived: the reply leaves from the same address.
    client_local: Option<IpAddress>,
    /// The upstream asked, and for TCP the stream state.
    upstream: SocketAddr,
    tcp: Option<TcpAttempt>,
}

struct TcpAttempt {
    out: Vec<u8>,
    decoder: StreamDecoder,
}

/// What is left to do within one poll: sends and timer outcomes, handled in order.
enum Todo {
    Send(Outgoing, Option<IpAddress>),
    Timer(TimerEvent),
    Relay(u16, ClientReply),
}

struct Running {
    server: DnsServer,
    /// The section the server runs on.
    config: DnsConfig,
    /// Port 53 UDP, on the link.
    udp: SocketHandle,
    /// Port 53 TCP, on the link.
    tcp: Vec<Conn>,
    /// By source port.
    upstreams: BTreeMap<u16, Upstream>,
    /// Released TCP upstream sockets finishing their close, and when to give up.
    closing: Vec<(NicId, SocketHandle, Instant)>,
    counters: SocketCounters,
    /// One datagram, reused.
    scratch: Vec<u8>,
    /// The load balancer's `generation` the service names were last taken at; `None`
    /// takes them again (after an `apply`, which may have replaced the balancer).
    lb_seen: Option<u64>,
}

impl Running {
    fn start(server: DnsServer, config: DnsConfig, netstack: &mut Netstack) -> Running {
        let sockets = netstack.nic_mut(NicId::Link).iface.sockets_mut();
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_QUEUE],
                vec![0; UDP_RX_BYTES],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_QUEUE],
                vec![0; UDP_TX_BYTES],
            ),
        );
        // Unbound address: every address of the link (gateway and node address).
        if let Err(e) = socket.bind(DNS_PORT) {
            log::error!("dns: cannot bind UDP port {DNS_PORT}: {e:?}");
        }
        let udp = sockets.add(socket);
        let mut running = Running {
            server,
            config,
            udp,
            tcp: Vec::new(),
            upstreams: BTreeMap::new(),
            closing: Vec::new(),
            counters: SocketCounters::default(),
            scratch: vec![0; MAX_DATAGRAM],
            lb_seen: None,
        };
        running.top_up_listeners(Instant::ZERO, &mut netstack.nic_mut(NicId::Link).iface);
        log::info!(
            "dns: serving {} on port {DNS_PORT} (UDP, TCP) of the link",
            // `to_ascii`, not `Display`: see `records::ascii_label`.
            running.server.records().zone().apex().to_ascii()
        );
        running
    }

    fn stop(self, netstack: &mut Netstack) {
        let link = netstack.nic_mut(NicId::Link).iface.sockets_mut();
        link.remove(self.udp);
        for conn in self.tcp {
            link.remove(conn.handle);
        }
        let handles = self
            .upstreams
            .into_values()
            .flat_map(|u| {
                let icmp = u.socket.zip(u.icmp).map(|((nic, _), h)| (nic, h));
                u.socket.into_iter().chain(icmp)
            })
            .chain(self.closing.into_iter().map(|(nic, h, _)| (nic, h)));
        for (nic, handle) in handles {
            netstack.nic_mut(nic).iface.sockets_mut().remove(handle);
        }
        log::info!("dns: stopped");
    }

    /// `replace_all` only when the containers differ from the registered ones.
    fn replace_records(&mut self, containers: Vec<Container>) {
        if !self.server.records().holds_exactly(&containers) {
            if let Err(e) = self.server.records_mut().replace_all(containers) {
                log::error!("dns: records refused after validation: {e}");
            }
        }
    }

    /// Takes the load balancer's service names when they may have changed (a
    /// `service-add`, a backend edit, a health transition): the next query sees them.
    fn sync_services(&mut self, netstack: &Netstack) {
        let lb = netstack.router().map(|r| r.nat().lb());
        let generation = lb.map(|lb| lb.generation());
        if self.lb_seen.is_some() && self.lb_seen == generation {
            return;
        }
        self.lb_seen = generation;
        let names: Vec<(String, Vec<Ipv4Addr>)> = lb
            .into_iter()
            .flat_map(|lb| {
                lb.services()
                    .filter_map(move |s| Some((s.name.clone(), lb.resolve(&s.name)?)))
            })
            .collect();
        self.server.records_mut().set_lb_services(names);
    }

    /// One round; true when something was queued for sending.
    fn poll(&mut self, now: Instant, netstack: &mut Netstack) -> bool {
        self.sync_services(netstack);
        let mut todo = VecDeque::new();
        // Clients first: local answers go out in this round whatever upstreams do.
        let mut work = self.serve_udp(now, netstack, &mut todo);
        work |= self.serve_tcp(now, netstack, &mut todo);
        work |= self.read_upstreams(now, netstack, &mut todo);
        if self.server.next_deadline().is_some_and(|t| t <= now) {
            todo.extend(self.server.poll(now).into_iter().map(Todo::Timer));
        }
        work |= !todo.is_empty();
        while let Some(item) = todo.pop_front() {
            self.run(now, netstack, item, &mut todo);
        }
        work |= self.flush_tcp(now, netstack);
        self.reap_closing(now, netstack);
        work
    }

    fn poll_at(&self) -> Option<Instant> {
        let idle = self
            .tcp
            .iter()
            .filter(|c| c.accepted)
            .map(|c| match c.closing_since {
                Some(t) => t + TCP_LINGER,
                None => c.last_active + TCP_IDLE,
            });
        let closing = self.closing.iter().map(|(_, _, t)| *t);
        idle.chain(closing).chain(self.server.next_deadline()).min()
    }

    fn serve_udp(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        todo: &mut VecDeque<Todo>,
    ) -> bool {
        let socket = netstack
            .nic_mut(NicId::Link)
            .iface
            .sockets_mut()
            .get_mut::<udp::Socket>(self.udp);
        let mut work = false;
        // A query stays queued while no reply could be queued (backpressure).
        while socket.can_send() {
            let (len, meta) = match socket.recv_slice(&mut self.scratch) {
                Ok(got) => got,
                Err(udp::RecvError::Truncated) => continue,
                Err(udp::RecvError::Exhausted) => break,
            };
            work = true;
            let client = SocketAddr::from(meta.endpoint);
            match self
                .server
                .handle_query(now, client, &self.scratch[..len], Transport::Udp)
            {
                Action::Reply(reply) => {
                    let to = udp::UdpMetadata {
                        endpoint: meta.endpoint,
                        local_address: meta.local_address,
                        meta: Default::default(),
                    };
                    if socket.send_slice(&reply, to).is_err() {
                        self.counters.reply_undeliverable += 1;
                    }
                }
                Action::Forward(out) => todo.push_back(Todo::Send(out, meta.local_address)),
                Action::Drop(_) => {}
            }
        }
        work
    }

    fn serve_tcp(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        todo: &mut VecDeque<Todo>,
    ) -> bool {
        let iface = &mut netstack.nic_mut(NicId::Link).iface;
        let mut work = false;
        let Running {
            server,
            tcp: conns,
            counters,
            ..
        } = self;
        conns.retain_mut(|conn| {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(conn.handle);
            match socket.state() {
                tcp::State::Listen => {
                    // Back from SynReceived (the handshake was reset): listening again.
                    if conn.accepted {
                        *conn = Conn::listening(conn.handle, now);
                    }
                    return true;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    iface.sockets_mut().remove(conn.handle);
                    return false;
                }
                _ => {}
            }
            if !conn.accepted {
                conn.accepted = true;
                conn.last_active = now;
                counters.tcp_accepted += 1;
            }
            if socket.can_recv() && conn.out.len() < TCP_OUT_LIMIT / 2 {
                let decoder = &mut conn.decoder;
                let pushed = socket.recv(|data| (data.len(), decoder.push(data)));
                if !matches!(pushed, Ok(Ok(()))) {
                    socket.abort();
                    counters.tcp_aborted += 1;
                    return true;
                }
                conn.last_active = now;
            }
            let Some(client) = socket.remote_endpoint().map(SocketAddr::from) else {
                return true;
            };
            while conn.out.len() < TCP_OUT_LIMIT / 2 {
                let Some(message) = conn.decoder.next_message() else {
                    break;
                };
                work = true;
                match server.handle_query(now, client, &message, Transport::Tcp) {
                    Action::Reply(reply) => match frame(&reply) {
                        Some(framed) => conn.out.extend_from_slice(&framed),
                        None => counters.reply_undeliverable += 1,
                    },
                    Action::Forward(out) => {
                        conn.pending += 1;
                        todo.push_back(Todo::Send(out, None));
                    }
                    Action::Drop(_) => {}
                }
            }
            true
        });
        self.top_up_listeners(now, iface);
        work
    }

    /// Keeps `TCP_LISTENERS` sockets listening while fewer than `TCP_MAX` exist.
    fn top_up_listeners(&mut self, now: Instant, iface: &mut NicIface) {
        let listening = self.tcp.iter().filter(|c| !c.accepted).count();
        for _ in listening..TCP_LISTENERS {
            if self.tcp.len() >= TCP_MAX {
                break;
            }
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            );
            if let Err(e) = socket.listen(DNS_PORT) {
                log::error!("dns: cannot listen on TCP port {DNS_PORT}: {e:?}");
                return;
            }
            self.tcp
                .push(Conn::listening(iface.sockets_mut().add(socket), now));
        }
    }

    /// Moves queued replies into the sockets; closes finished and idle connections.
    fn flush_tcp(&mut self, now: Instant, netstack: &mut Netstack) -> bool {
        let iface = &mut netstack.nic_mut(NicId::Link).iface;
        let mut work = false;
        for conn in self.tcp.iter_mut().filter(|c| c.accepted) {
            let socket = iface.sockets_mut().get_mut::<tcp::Socket>(conn.handle);
            work |= send_some(socket, &mut conn.out);
            if conn.out.len() > TCP_OUT_LIMIT {
                socket.abort();
                self.counters.tcp_aborted += 1;
                continue;
            }
            let quiet = conn.out.is_empty() && conn.pending == 0;
            match conn.closing_since {
                Some(since) if now >= since + TCP_LINGER => {
                    socket.abort();
                    self.counters.tcp_aborted += 1;
                }
                Some(_) => {}
                // The client is done sending (RFC 7766 §6.2.3: answer what it asked).
                None if quiet && socket.state() == tcp::State::CloseWait => {
                    socket.close();
                    conn.closing_since = Some(now);
                }
                None if quiet && now >= conn.last_active + TCP_IDLE => {
                    socket.close();
                    conn.closing_since = Some(now);
                    self.counters.tcp_idle_closed += 1;
                }
                None => {}
            }
        }
        work
    }

    fn read_upstreams(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        todo: &mut VecDeque<Todo>,
    ) -> bool {
        let mut work = false;
        let ports: Vec<u16> = self.upstreams.keys().copied().collect();
        for port in ports {
            let Some(up) = self.upstreams.get_mut(&port) else {
                continue;
            };
            let Some((nic, handle)) = up.socket else {
                continue;
            };
            let sockets = netstack.nic_mut(nic).iface.sockets_mut();
            match up.tcp.as_mut() {
                None => {
                    let socket = sockets.get_mut::<udp::Socket>(handle);
                    let mut relayed = false;
                    loop {
                        let (len, meta) = match socket.recv_slice(&mut self.scratch) {
                            Ok(got) => got,
                            Err(udp::RecvError::Truncated) => continue,
                            Err(udp::RecvError::Exhausted) => break,
                        };
                        work = true;
                        let from = SocketAddr::from(meta.endpoint);
                        if let UpstreamAction::Reply(r) =
                            self.server
                                .handle_upstream_reply(from, port, &self.scratch[..len])
                        {
                            todo.push_back(Todo::Relay(r.released_port, r.reply));
                            relayed = true;
                            break;
                        }
                    }
                    let Some(icmp) = up.icmp.filter(|_| !relayed) else {
                        continue;
                    };
                    let socket = sockets.get_mut::<icmp::Socket>(icmp);
                    let mut refused = false;
                    while let Ok((bytes, from)) = socket.recv() {
                        work = true;
                        refused |= unreachable(bytes, from, up.upstream, port);
                    }
                    if refused {
                        // RFC 1122 §4.1.3.3: a port or host unreachable for our query is
                        // passed up; here it fails the attempt over without waiting.
                        self.counters.upstream_unreachable += 1;
                        if let Some(event) = self.server.upstream_failed(now, port) {
                            todo.push_back(Todo::Timer(event));
                        }
                    }
                }
                Some(attempt) => {
                    let socket = sockets.get_mut::<tcp::Socket>(handle);
                    work |= send_some(socket, &mut attempt.out);
                    if socket.can_recv() {
                        let decoder = &mut attempt.decoder;
                        let _ = socket.recv(|data| (data.len(), decoder.push(data)));
                        work = true;
                    }
                    let mut relayed = false;
                    while let Some(message) = attempt.decoder.next_message() {
                        if let UpstreamAction::Reply(r) =
                            self.server
                                .handle_upstream_reply(up.upstream, port, &message)
                        {
                            todo.push_back(Todo::Relay(r.released_port, r.reply));
                            relayed = true;
                            break;
                        }
                    }
                    let gone = matches!(
                        socket.state(),
                        tcp::State::Closed | tcp::State::CloseWait | tcp::State::TimeWait
                    );
                    if gone && !relayed {
                        self.counters.upstream_reset += 1;
                        if let Some(event) = self.server.upstream_failed(now, port) {
                            todo.push_back(Todo::Timer(event));
                        }
                    }
                }
            }
        }
        work
    }

    fn run(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        item: Todo,
        todo: &mut VecDeque<Todo>,
    ) {
        match item {
            Todo::Send(out, client_local) => self.open(now, netstack, out, client_local, todo),
            Todo::Timer(TimerEvent::Retry {
                released_port,
                outgoing,
            }) => {
                let client_local = self.release(now, netstack, released_port);
                self.open(now, netstack, outgoing, client_local, todo);
            }
            Todo::Timer(TimerEvent::GiveUp {
                released_port,
                reply,
            })
            | Todo::Relay(released_port, reply) => {
                let client_local = self.release(now, netstack, released_port);
                self.deliver(netstack, reply, client_local);
            }
        }
    }

    /// Opens the socket for one attempt and queues its query; an attempt that cannot
    /// be sent fails over at once.
    fn open(
        &mut self,
        now: Instant,
        netstack: &mut Netstack,
        out: Outgoing,
        client_local: Option<IpAddress>,
        todo: &mut VecDeque<Todo>,
    ) {
        let port = out.source_port;
        let opened = open_socket(netstack, &out);
        if opened.is_none() {
            self.counters.upstream_unsendable += 1;
        }
        let socket = opened.map(|(nic, handle, _)| (nic, handle));
        let icmp = opened.and_then(|(_, _, icmp)| icmp);
        let tcp = match out.transport {
            Transport::Udp => None,
            Transport::Tcp => Some(TcpAttempt {
                out: frame(&out.bytes).unwrap_or_default(),
                decoder: StreamDecoder::new(),
            }),
        };
        self.upstreams.insert(
            port,
            Upstream {
                socket,
                icmp,
                client_local,
                upstream: out.upstream,
                tcp,
            },
        );
        if socket.is_none() {
            if let Some(event) = self.server.upstream_failed(now, port) {
                todo.push_back(Todo::Timer(event));
            }
        }
    }

    /// Frees a source port: its socket is closed; returns the client's local address.
    fn release(&mut self, now: Instant, netstack: &mut Netstack, port: u16) -> Option<IpAddress> {
        let up = self.upstreams.remove(&port)?;
        if let Some((nic, handle)) = up.socket {
            let sockets = netstack.nic_mut(nic).iface.sockets_mut();
            if up.tcp.is_some() {
                // Closed politely; the socket lingers so its FIN goes out.
                sockets.get_mut::<tcp::Socket>(handle).close();
                self.closing.push((nic, handle, now + TCP_LINGER));
            } else {
                sockets.remove(handle);
            }
            if let Some(icmp) = up.icmp {
                sockets.remove(icmp);
            }
        }
        up.client_local
    }

    fn deliver(
        &mut self,
        netstack: &mut Netstack,
        reply: ClientReply,
        client_local: Option<IpAddress>,
    ) {
        let sockets = netstack.nic_mut(NicId::Link).iface.sockets_mut();
        let delivered = match reply.transport {
            Transport::Udp => match endpoint(reply.client) {
                Some(endpoint) => {
                    let to = udp::UdpMetadata {
                        endpoint,
                        local_address: client_local,
                        meta: Default::default(),
                    };
                    sockets
                        .get_mut::<udp::Socket>(self.udp)
                        .send_slice(&reply.bytes, to)
                        .is_ok()
                }
                None => false,
            },
            Transport::Tcp => {
                let conn = self.tcp.iter_mut().find(|c| {
                    c.accepted
                        && sockets
                            .get::<tcp::Socket>(c.handle)
                            .remote_endpoint()
                            .map(SocketAddr::from)
                            == Some(reply.client)
                });
                match (conn, frame(&reply.bytes)) {
                    (Some(conn), Some(framed)) => {
                        conn.pending = conn.pending.saturating_sub(1);
                        conn.out.extend_from_slice(&framed);
                        true
                    }
                    _ => false,
                }
            }
        };
        if !delivered {
            self.counters.reply_undeliverable += 1;
        }
    }

    /// Forgets released TCP upstream sockets once closed, or after `TCP_LINGER`.
    fn reap_closing(&mut self, now: Instant, netstack: &mut Netstack) {
        self.closing.retain(|&(nic, handle, until)| {
            let sockets = netstack.nic_mut(nic).iface.sockets_mut();
            let state = sockets.get::<tcp::Socket>(handle).state();
            let done = matches!(state, tcp::State::Closed | tcp::State::TimeWait) || now >= until;
            if done {
                sockets.remove(handle);
            }
            !done
        });
    }
}

/// Sends what the socket takes from the front of `out`; true if it took anything.
fn send_some(socket: &mut tcp::Socket, out: &mut Vec<u8>) -> bool {
    if out.is_empty() || !socket.can_send() {
        return false;
    }
    match socket.send_slice(out) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            out.drain(..n);
            true
        }
    }
}

fn endpoint(addr: SocketAddr) -> Option<IpEndpoint> {
    match addr {
        SocketAddr::V4(v4) => Some(IpEndpoint::from(v4)),
        SocketAddr::V6(_) => None,
    }
}

/// The NIC an upstream is reached through: the link when it is on one of the link's
/// subnets (a resolver in a container), otherwise the uplink (on-link or via its
/// gateway). Also the source address to use there.
fn route(netstack: &Netstack, upstream: Ipv4Addr) -> Option<(NicId, Ipv4Addr)> {
    let link = &netstack.nic(NicId::Link).iface;
    let on_link = link
        .address()
        .map(|a| a.cidr)
        .into_iter()
        .chain(link.extra_address())
        .find(|cidr| cidr.contains_addr(&upstream));
    if let Some(cidr) = on_link {
        return Some((NicId::Link, cidr.address()));
    }
    let uplink = netstack.nic(NicId::Uplink).iface.address()?;
    Some((NicId::Uplink, uplink.cidr.address()))
}

/// Whether `bytes`, an ICMP message from `from` about a datagram from our `port`, says
/// that `upstream` cannot be reached (host, protocol or port unreachable). Checked
/// against the quoted header so an off-path forger has to know the upstream and port.
fn unreachable(bytes: &[u8], from: IpAddress, upstream: SocketAddr, port: u16) -> bool {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4DstUnreachable as Why, Icmpv4Packet, Icmpv4Repr, IpProtocol};
    let Ok(packet) = Icmpv4Packet::new_checked(bytes) else {
        return false;
    };
    let Ok(Icmpv4Repr::DstUnreachable {
        reason,
        header,
        data,
    }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
    else {
        return false;
    };
    let SocketAddr::V4(upstream) = upstream else {
        return false;
    };
    let quoted_ports = data.get(..4).map(|d| {
        (
            u16::from_be_bytes([d[0], d[1]]),
            u16::from_be_bytes([d[2], d[3]]),
        )
    });
    matches!(
        reason,
        Why::HostUnreachable | Why::ProtoUnreachable | Why::PortUnreachable
    ) && header.next_header == IpProtocol::Udp
        && header.dst_addr == *upstream.ip()
        && quoted_ports == Some((port, upstream.port()))
        // A router on the way may report it too, but not a bystander on the link.
        && (from == IpAddress::Ipv4(*upstream.ip()) || reason != Why::PortUnreachable)
}

/// A socket bound to the attempt's source port, with its query queued (UDP, with an
/// ICMP socket for the errors about it) or its connection started (TCP); None when it
/// cannot be sent.
fn open_socket(
    netstack: &mut Netstack,
    out: &Outgoing,
) -> Option<(NicId, SocketHandle, Option<SocketHandle>)> {
    let SocketAddr::V4(upstream) = out.upstream else {
        return None;
    };
    let (nic, source) = route(netstack, *upstream.ip())?;
    let iface = &mut netstack.nic_mut(nic).iface;
    let local = IpListenEndpoint {
        addr: Some(IpAddress::Ipv4(source)),
        port: out.source_port,
    };
    let remote = IpEndpoint::from(upstream);
    let handle = match out.transport {
        Transport::Udp => {
            let mut socket = udp::Socket::new(
                // One reply is expected; room for a second (a spoofer's, or a late
                // duplicate) so the real one is not crowded out.
                udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; 2],
                    vec![0; 2 * MAX_DATAGRAM],
                ),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0; MAX_DATAGRAM]),
            );
            socket.bind(local).ok()?;
            socket.send_slice(&out.bytes, remote).ok()?;
            let mut errors = icmp::Socket::new(
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 2], vec![0; 2 * 576]),
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 1], vec![0; 64]),
            );
            let icmp = errors
                .bind(icmp::Endpoint::Udp(local))
                .ok()
                .map(|()| iface.sockets_mut().add(errors));
            let handle = iface.sockets_mut().add(socket);
            return Some((nic, handle, icmp));
        }
        Transport::Tcp => {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            );
            socket
                .connect(iface.interface_mut().context(), remote, local)
                .ok()?;
            iface.sockets_mut().add(socket)
        }
    };
    Some((nic, handle, None))
}

#[cfg(test)]
mod tests;
