//! The appliance as a whole: config model, control protocol, services; it drives the
//! netstack. `no_std` + `alloc`: it never reads a clock (time comes in as `Instant`),
//! never touches hardware, and never panics on input from the network or the socket.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod capture;
pub mod capture_session;
pub mod command_error;
pub mod config;
pub mod config_text;
pub mod dns;
pub mod dns_service;
mod document;
pub mod field_path;
pub mod mesh;
pub mod metrics;
pub mod overlay;
pub mod peer_tls;
pub mod peers;
pub mod protocol;
pub mod publish;
pub mod services;
pub mod session;
pub mod transfer;

use alloc::string::String;
use alloc::vec::Vec;
use serde::Serialize;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;
use weft_netstack::stage::overlay::config::PeerConfig;
use weft_netstack::stage::overlay::OverlayError;
use weft_netstack::table::fdb::Location;
use weft_netstack::{Netstack, NicAddress, NicId};

pub use config::{Config, ConfigError, Ipv4Cidr, LinkConfig, UplinkConfig};
pub use protocol::{
    Applied, Command, CommandResult, ControlCounters, ErrorBody, ErrorCode, Greeting,
    InterfaceStatus, Interfaces, Outcome, Pong, Reply, Request, RequestError, RequestId, Status,
};
pub use session::ControlSession;
pub use weft_netstack;
pub use weft_netstack::{MemPort, Port, TxError};
pub use weft_peer;

/// Heap bytes that a new flow table must leave free for the packet path (at least;
/// an eighth of the heap on larger VMs).
pub const HEAP_RESERVE: u64 = 1 << 20;

/// Heap bytes per byte of a document sent in parts that `apply-begin` must find free:
/// its text, and the typed document parsed from it while the text is still held
/// (2.7 times the text at the parse's peak for a 100 000-container grid, measured by
/// `examples/grid_bench.rs`; what applying it needs beside is checked again when it is
/// applied).
pub const DOCUMENT_HEAP_FACTOR: u64 = 4;

/// What the kernel knows at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// MAC of virtio-net #0 (uplink).
    pub uplink_mac: [u8; 6],
    /// MAC of virtio-net #1 (container link).
    pub link_mac: [u8; 6],
    /// Seed for everything random in the appliance (smoltcp ports/ISNs, later hashing).
    pub seed: u64,
    /// The kernel command line (informational for now).
    pub cmdline: String,
}

/// The whole appliance: netstack, running configuration, control session.
pub struct Appliance {
    info: BootInfo,
    booted_at: Instant,
    netstack: Netstack,
    running: Option<Config>,
    /// Where each peer of the running document is, for `peer-add` and `peer-remove`.
    peers: peers::PeerIndex,
    session: ControlSession,
    dns: dns_service::DnsService,
    /// Wall-clock seconds since the Unix epoch at boot, when the platform knows them.
    unix_time_at_boot: Option<u64>,
    heap: Option<protocol::HeapStatus>,
    stack: Option<protocol::StackStatus>,
    offloads: Option<protocol::OffloadStatus>,
    /// The time of the latest `poll` (for what `apply` starts, such as health checks).
    last_poll: Instant,
    /// The captures of the control connection and what they have sent.
    captures: capture_session::Streams,
    /// The generator behind every key this appliance makes (TLS), once the platform
    /// gave a 256-bit seed.
    key_rng: Option<&'static weft_peer::rng::Csprng>,
    /// The peer channel, with `[grid] auth = "tls"` (docs/peer-tls.md).
    peer_tls: Option<peer_tls::PeerTls>,
}

impl Appliance {
    /// Boot unconfigured: the NICs have no address and answer nothing until `apply`.
    pub fn new(info: BootInfo, now: Instant) -> Self {
        let netstack = Netstack::new(
            EthernetAddress(info.uplink_mac),
            EthernetAddress(info.link_mac),
            info.seed,
            now,
        );
        log::info!(
            "weft {} booting: uplink {} link {} cmdline {:?}",
            protocol::VERSION,
            EthernetAddress(info.uplink_mac),
            EthernetAddress(info.link_mac),
            info.cmdline
        );
        Appliance {
            info,
            booted_at: now,
            netstack,
            running: None,
            peers: peers::PeerIndex::default(),
            session: ControlSession::new(),
            dns: dns_service::DnsService::new(),
            unix_time_at_boot: None,
            heap: None,
            stack: None,
            offloads: None,
            last_poll: now,
            captures: capture_session::Streams::default(),
            key_rng: None,
            peer_tls: None,
        }
    }

    /// Gives the appliance the 256-bit seed of its key generator (the kernel: RDRAND).
    /// Only the first seed of a boot is taken: the generator lives as long as the
    /// appliance. Without one, nothing that needs fresh keys (`[grid] auth = "tls"`)
    /// can be configured.
    pub fn set_key_seed(&mut self, seed: weft_peer::rng::Seed) {
        if self.key_rng.is_none() {
            self.key_rng = Some(weft_peer::rng::Csprng::leak(seed));
        }
    }

    /// The key generator, once seeded.
    pub fn key_rng(&self) -> Option<&'static weft_peer::rng::Csprng> {
        self.key_rng
    }

    /// Tells the appliance the wall-clock time at boot (seconds since the Unix epoch), as
    /// the platform read it (the kernel: the CMOS RTC, which the hypervisor sets from the
    /// host). Sleeve session ids are derived from it so that they grow across reboots.
    pub fn set_wall_clock(&mut self, unix_secs_at_boot: u64) {
        self.unix_time_at_boot = Some(unix_secs_at_boot);
    }

    /// Tells the appliance how its heap stands (the kernel calls this on every loop turn;
    /// `status` reports the latest figures).
    pub fn set_heap_usage(&mut self, heap: protocol::HeapStatus) {
        self.heap = Some(heap);
    }

    /// Tells the appliance how deep its stack has been (the kernel measures it now and
    /// then; `status` reports the latest figures).
    pub fn set_stack_usage(&mut self, stack: protocol::StackStatus) {
        self.stack = Some(stack);
    }

    /// The platform's NICs' offloads, for `status`.
    pub fn set_offloads(&mut self, offloads: protocol::OffloadStatus) {
        self.offloads = Some(offloads);
    }

    /// The wall-clock time at boot, if the platform gave one.
    pub fn wall_clock_at_boot(&self) -> Option<u64> {
        self.unix_time_at_boot
    }

    /// The wall-clock time at `now` (seconds since the Unix epoch), if the platform gave
    /// the time at boot.
    fn wall_clock(&self, now: Instant) -> Option<u64> {
        let since_boot = if now > self.booted_at {
            (now - self.booted_at).secs()
        } else {
            0
        };
        self.unix_time_at_boot.map(|at_boot| at_boot + since_boot)
    }

    /// Drive the packet path; returns how long the caller may sleep (None = until an interrupt).
    pub fn poll(
        &mut self,
        now: Instant,
        uplink: &mut dyn Port,
        link: &mut dyn Port,
    ) -> Option<Duration> {
        self.last_poll = now;
        let mut next_poll = self.netstack.poll(now, uplink, link).next_poll;
        let capture = self.netstack.capture();
        let due = [
            capture.next_deadline(now),
            self.captures.next_output(now, capture),
        ];
        for t in due.into_iter().flatten() {
            let until = if t > now { t - now } else { Duration::ZERO };
            next_poll = Some(next_poll.map_or(until, |d| d.min(until)));
        }
        let unix_now = self.wall_clock(now);
        if let Some(tls) = self.peer_tls.as_mut() {
            let moved = tls.poll(now, unix_now, &mut self.netstack);
            if let Some(path) = self.netstack.overlay_mut() {
                tls.hand_keys(path);
            }
            // Bytes the channel wrote go out on the next turn, at once.
            let wait = if moved {
                Some(Duration::ZERO)
            } else {
                tls.poll_at(now).map(|at| at - now)
            };
            next_poll = match (next_poll, wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.dns.poll(now, &mut self.netstack, next_poll)
    }

    /// A client connected to the control socket: the greeting line is appended to `out`.
    /// The captures of an earlier client end.
    pub fn control_connected(&mut self, _now: Instant, out: &mut Vec<u8>) {
        self.captures.stop_all(self.netstack.capture_mut());
        self.session.connected(out);
    }

    /// The client went away; a partial request line is discarded and its captures end.
    pub fn control_disconnected(&mut self) {
        self.captures.stop_all(self.netstack.capture_mut());
        self.session.disconnected();
    }

    /// The lines the appliance sends without a request (captures' events), appended to
    /// `out`. The platform calls it when the control stream has taken what it was given:
    /// a capture never sends more than its window, so replies stay close behind.
    pub fn control_output(&mut self, now: Instant, out: &mut Vec<u8>) {
        if !self.captures.is_empty() {
            self.captures.output(now, self.netstack.capture_mut(), out);
        }
    }

    /// The platform's measure of the time the captures' output took: what
    /// `control_output` gave, its writing to the control channel, and the channel's
    /// work of the captures (acknowledgements). Taken from the captures' share of the
    /// time (`capture_session::OUTPUT_SHARE_PERCENT`); a platform that never reports
    /// it gives the captures all the time they want.
    pub fn control_output_took(&mut self, took: Duration) {
        self.captures.charge(took);
    }

    /// Whether captures run (the platform then measures what the control channel
    /// costs them, for `control_output_took`).
    pub fn capturing(&self) -> bool {
        !self.captures.is_empty()
    }

    /// Whether `control_output` has lines to give at `now` without new frames.
    pub fn control_output_due(&self, now: Instant) -> bool {
        !self.captures.is_empty() && self.captures.wants_output(now, self.netstack.capture())
    }

    /// Bytes from the control stream; replies (whole lines) are appended to `out`.
    /// Input before `control_connected` is served as well (without a greeting), for a
    /// transport that cannot tell when a client connects.
    pub fn control_input(&mut self, now: Instant, bytes: &[u8], out: &mut Vec<u8>) {
        for line in self.session.input(bytes) {
            let reply = match line {
                Ok(request) => self.respond(now, request),
                Err(e) => e.into_reply().to_line(),
            };
            out.extend_from_slice(&reply);
        }
    }

    pub fn boot_info(&self) -> &BootInfo {
        &self.info
    }

    /// The running configuration (None before the first `apply`), as `config` shows
    /// it: its containers are the DNS record store's, in document order.
    pub fn running_config(&self) -> Option<Config> {
        let mut config = self.running.clone()?;
        config.containers = self.dns.container_entries();
        Some(config)
    }

    pub fn netstack(&self) -> &Netstack {
        &self.netstack
    }

    pub fn netstack_mut(&mut self) -> &mut Netstack {
        &mut self.netstack
    }

    /// Execute a parsed request (arguments already validated).
    pub fn execute(&mut self, now: Instant, request: Request) -> Reply {
        let id = request.id;
        match self.run(now, request.command) {
            Ok(result) => match serde_json::to_value(&result) {
                Ok(value) => Reply::result(id, value),
                Err(e) => Reply::error(Some(id), internal(e)),
            },
            Err(error) => Reply::error(Some(id), error),
        }
    }

    /// Execute a request and serialize its reply line straight from the typed result,
    /// so fields keep their declared order on the wire (a `Value` would sort them).
    fn respond(&mut self, now: Instant, request: Request) -> Vec<u8> {
        #[derive(Serialize)]
        struct ResultLine<'a> {
            id: &'a RequestId,
            result: &'a CommandResult,
        }
        let id = request.id;
        let reply = match self.run(now, request.command) {
            Ok(result) => match serde_json::to_vec(&ResultLine {
                id: &id,
                result: &result,
            }) {
                Ok(mut line) => {
                    line.push(b'\n');
                    return line;
                }
                Err(e) => Reply::error(Some(id), internal(e)),
            },
            Err(error) => Reply::error(Some(id), error),
        };
        reply.to_line()
    }

    fn run(&mut self, now: Instant, command: Command) -> Result<CommandResult, ErrorBody> {
        let result = match command {
            Command::Status => Ok(CommandResult::Status(alloc::boxed::Box::new(
                self.status(now),
            ))),
            Command::Config => Ok(CommandResult::Config(
                self.running_config().map(alloc::boxed::Box::new),
            )),
            Command::Apply(config) => match self.apply(config) {
                Ok(changed) => Ok(CommandResult::Applied(Applied { changed })),
                Err(e) => Err(ErrorBody {
                    code: ErrorCode::InvalidConfig,
                    message: e.message,
                    field: Some(e.field),
                }),
            },
            Command::Ping => Ok(CommandResult::Pong(Pong { pong: true })),
            Command::PeerAdd(peer) => self.peer_add(peer),
            Command::PeerRemove(key) => self.peer_remove(key),
            Command::NetworkAdd(net) => self.edit(|c| {
                let (edited, i) = overlay::with_network(c, &net);
                Ok((edited, "networks", i))
            }),
            Command::NetworkRemove(key) => self.edit(|c| {
                let edited = overlay::without_network(c, key.vni).ok_or_else(|| {
                    not_found("vni", alloc::format!("no network with VNI {}", key.vni))
                })?;
                Ok((edited, "networks", usize::MAX))
            }),
            Command::FdbAdd(entry) => self.fdb_add(now, entry),
            Command::FdbRemove(key) => self.fdb_remove(key),
            Command::ContainerAdd(entry) => {
                applied(self.dns.container_add(self.running.as_ref(), entry))
            }
            Command::ContainerRemove(key) => {
                applied(self.dns.container_remove(self.running.as_ref(), key))
            }
            Command::PublishAdd(rule) => self.publish_edit(|c| {
                publish::with_rule(c, rule).map_err(|e| {
                    ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, &e.field)
                })
            }),
            Command::PublishRemove(key) => self.publish_edit(|c| {
                publish::without_rule(c, key)
                    .ok_or_else(|| not_found("host_port", publish::not_published(key)))
            }),
            Command::ServiceAdd(s) => self.publish_edit(|c| {
                services::with_service(c, s).map_err(|e| {
                    ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, &e.field)
                })
            }),
            Command::ServiceRemove(key) => self.publish_edit(|c| {
                services::without_service(c, &key)
                    .ok_or_else(|| not_found("name", alloc::format!("no service {:?}", key.name)))
            }),
            Command::BackendSet(b) => self.publish_edit(|c| {
                services::with_backend(c, &b)
                    .ok_or_else(|| {
                        not_found("service", alloc::format!("no service {:?}", b.service))
                    })?
                    .map_err(|e| {
                        ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, &e.field)
                    })
            }),
            Command::BackendRemove(b) => self.publish_edit(|c| {
                services::without_backend(c, &b).ok_or_else(|| {
                    not_found(
                        "address",
                        alloc::format!(
                            "no backend {}:{} in service {:?}",
                            b.address,
                            b.port,
                            b.service
                        ),
                    )
                })
            }),
            Command::Flows(q) => Ok(CommandResult::Flows(publish::flows(&self.netstack, q, now))),
            Command::ApplyBegin(b) => self.begin_document(b.bytes),
            Command::ApplyPart(p) => self
                .session
                .document_part(p.offset, &p.text)
                .map(|received| CommandResult::Received(protocol::Received { received }))
                .map_err(transfer_error),
            Command::ApplyCommit => self.commit_document(),
            Command::ApplyAbort => Ok(CommandResult::Discarded(protocol::Discarded {
                discarded: self.session.abort_document(),
            })),
            Command::Metrics => Ok(CommandResult::Metrics(metrics::text(&self.status(now)))),
            Command::CaptureStart(args) => self.capture_start(now, &args),
            Command::CaptureAck(ack) => self.captures.ack(ack).map(CommandResult::CaptureAcked),
            Command::CaptureStop(key) => self
                .captures
                .stop(key, self.netstack.capture_mut())
                .map(CommandResult::CaptureEnded),
        };
        if result.is_err() {
            self.session.count_error();
        }
        result
    }

    /// `capture-start`: refused when the heap cannot take the capture's buffer beside
    /// what the packet path keeps.
    fn capture_start(
        &mut self,
        now: Instant,
        args: &capture::CaptureStart,
    ) -> Result<CommandResult, ErrorBody> {
        if let Some(heap) = self.heap {
            let free = heap.size_bytes.saturating_sub(heap.used_bytes);
            let reserve = HEAP_RESERVE.max(heap.size_bytes / 8);
            if capture::BUFFER_BYTES as u64 + reserve > free {
                return Err(ErrorBody::new(
                    ErrorCode::TooLarge,
                    alloc::format!(
                        "a capture needs {} KiB of heap and the heap has {} KiB free, of \
                         which {} KiB stay for the packet path",
                        capture::BUFFER_BYTES / 1024,
                        free / 1024,
                        reserve / 1024
                    ),
                ));
            }
        }
        let offset = self
            .unix_time_at_boot
            .map_or(0, |s| (s as i64).saturating_mul(1_000_000));
        self.captures
            .start(
                args,
                self.running.as_ref(),
                self.netstack.capture_mut(),
                now,
                offset,
            )
            .map(CommandResult::CaptureStarted)
    }

    /// `apply-begin`: drops an unfinished document, then reserves `bytes` for the new
    /// one if the heap can take it and what parsing it will need (out of memory is
    /// fatal in the kernel, so a document too large is refused here, before its text
    /// arrives).
    fn begin_document(&mut self, bytes: u64) -> Result<CommandResult, ErrorBody> {
        let held = self.session.document_held_bytes();
        self.session.abort_document();
        let refuse =
            |message: String| Err(ErrorBody::with_field(ErrorCode::TooLarge, message, "bytes"));
        if bytes > protocol::MAX_DOCUMENT_BYTES {
            return refuse(alloc::format!(
                "a document of {bytes} bytes is over the {} MiB the protocol takes",
                protocol::MAX_DOCUMENT_BYTES >> 20
            ));
        }
        if let Some(heap) = self.heap {
            let free = heap.size_bytes.saturating_sub(heap.used_bytes) + held;
            let reserve = HEAP_RESERVE.max(heap.size_bytes / 8);
            let need = bytes.saturating_mul(DOCUMENT_HEAP_FACTOR);
            if need.saturating_add(reserve) > free {
                return refuse(alloc::format!(
                    "a document of {bytes} bytes needs about {} KiB of heap to be received \
                     and parsed, and the heap has {} KiB free of which {} KiB stay for the \
                     packet path; give the VM more memory",
                    need / 1024,
                    free / 1024,
                    reserve / 1024
                ));
            }
        }
        self.session.begin_document(bytes).map_err(transfer_error)?;
        Ok(CommandResult::Begun(protocol::Begun { bytes }))
    }

    /// `apply-commit`: the document sent in parts, parsed and applied as `apply` does.
    fn commit_document(&mut self) -> Result<CommandResult, ErrorBody> {
        let text = self.session.commit_document().map_err(transfer_error)?;
        let parsed = config_text::parse(&text);
        // The text goes before anything is applied: it is no longer needed.
        drop(text);
        let changed = parsed
            .and_then(|config| self.apply(config))
            .map_err(|e| ErrorBody {
                code: ErrorCode::InvalidConfig,
                message: e.message,
                field: Some(e.field),
            })?;
        Ok(CommandResult::Applied(Applied { changed }))
    }

    /// The running configuration, when it has an overlay (runtime overlay commands
    /// need one).
    fn grid_config(&self) -> Result<&Config, ErrorBody> {
        self.running
            .as_ref()
            .filter(|c| c.grid.is_some())
            .ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotReady,
                    "no overlay: apply a document with a [grid] section first".into(),
                )
            })
    }

    /// Apply the running document with a publish rule added or removed; the edit has
    /// been validated, so a refusal here is about the rest of the document.
    fn publish_edit(
        &mut self,
        edit: impl FnOnce(&Config) -> Result<Config, ErrorBody>,
    ) -> Result<CommandResult, ErrorBody> {
        let running = self.running.as_ref().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotReady,
                "no configuration: apply one first".into(),
            )
        })?;
        let edited = edit(running)?;
        match self.apply_edit(edited) {
            Ok(changed) => Ok(CommandResult::Applied(Applied { changed })),
            Err(e) => Err(ErrorBody {
                code: ErrorCode::InvalidConfig,
                message: e.message,
                field: Some(e.field),
            }),
        }
    }

    /// Apply the running document as a runtime command edits it: `edit` returns the
    /// new document and which item (`index` of `section`) the command is about, so a
    /// refusal names the field inside the command's arguments.
    fn edit(
        &mut self,
        edit: impl FnOnce(&Config) -> Result<(Config, &'static str, usize), ErrorBody>,
    ) -> Result<CommandResult, ErrorBody> {
        let (edited, section, index) = edit(self.grid_config()?)?;
        match self.apply_edit(edited) {
            Ok(changed) => Ok(CommandResult::Applied(Applied { changed })),
            Err(e) => Err(ErrorBody {
                code: ErrorCode::InvalidConfig,
                message: e.message,
                field: Some(overlay::relative_field(&e.field, section, index)),
            }),
        }
    }

    /// `peer-add`: the peer alone is checked against the running document (through
    /// its index) and added to, or changed in, the running overlay in place, then in the
    /// running document; the rest of the document is neither copied nor checked again.
    /// A refusal changes nothing.
    fn peer_add(&mut self, peer: PeerConfig) -> Result<CommandResult, ErrorBody> {
        let config = self.grid_config()?;
        let Some(path) = self.netstack.overlay() else {
            return Err(internal_msg("overlay configured but not running"));
        };
        let slot = self
            .peers
            .check_add(config, &peer, |name| path.overlay().vni_of(name).is_some())
            .map_err(|e| ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, &e.field))?;
        if slot == peers::Slot::Unchanged {
            return Ok(CommandResult::Applied(Applied { changed: false }));
        }
        if let Some(path) = self.netstack.overlay_mut() {
            path.add_peer(&peer).map_err(|e| overlay_error(e, "node"))?;
        }
        if let Some(Config {
            grid: Some(grid),
            peers,
            ..
        }) = self.running.as_mut()
        {
            self.peers.put(grid, peers, slot, peer);
        }
        self.follow_peers();
        Ok(CommandResult::Applied(Applied { changed: true }))
    }

    /// `peer-remove`: the peer named by one of its addresses leaves the running overlay
    /// (with the FDB entries that point at it) and the running document.
    fn peer_remove(&mut self, key: overlay::PeerKey) -> Result<CommandResult, ErrorBody> {
        let config = self.grid_config()?;
        let Some(grid) = config.grid.as_deref() else {
            return Err(internal_msg("overlay configured but not running"));
        };
        let Some(i) = self.peers.find(&config.peers, key.address) else {
            return Err(not_found(
                "address",
                alloc::format!("no peer at {}", key.address),
            ));
        };
        let address = overlay::in_use(grid, &config.peers[i]);
        if let (Some(path), Some(address)) = (self.netstack.overlay_mut(), address) {
            path.remove_peer(address);
        }
        if let Some(Config {
            grid: Some(grid),
            peers,
            ..
        }) = self.running.as_mut()
        {
            self.peers.remove(grid, peers, i);
        }
        self.follow_peers();
        Ok(CommandResult::Applied(Applied { changed: true }))
    }

    /// The peer channel (`[grid] auth = "tls"`) follows the overlay's sleeve peers.
    fn follow_peers(&mut self) {
        let unix_now = self.wall_clock(self.last_poll);
        if let (Some(tls), Some(path)) = (self.peer_tls.as_mut(), self.netstack.overlay()) {
            tls.follow_peers(path, peer_tls::mesh_time(self.last_poll, unix_now));
        }
    }

    fn fdb_add(&mut self, now: Instant, e: overlay::FdbEntry) -> Result<CommandResult, ErrorBody> {
        self.grid_config()?;
        let Some(path) = self.netstack.overlay_mut() else {
            return Err(internal_msg("overlay configured but not running"));
        };
        let location = match e.peer {
            Some(peer) => Location::Remote(peer),
            None => Location::Local,
        };
        let before = path.overlay().lookup(e.vni, &e.mac.0, now);
        path.add_static(e.vni, e.mac.0, location, e.ip, now)
            .map_err(|err| overlay_error(err, "mac"))?;
        Ok(CommandResult::Applied(Applied {
            changed: before != Some(location) || e.ip.is_some(),
        }))
    }

    fn fdb_remove(&mut self, key: overlay::FdbKey) -> Result<CommandResult, ErrorBody> {
        self.grid_config()?;
        let Some(path) = self.netstack.overlay_mut() else {
            return Err(internal_msg("overlay configured but not running"));
        };
        match path.remove_static(key.vni, key.mac.0) {
            Ok(true) => Ok(CommandResult::Applied(Applied { changed: true })),
            Ok(false) => Err(not_found(
                "mac",
                alloc::format!("no static entry for {} in VNI {}", key.mac, key.vni),
            )),
            Err(err) => Err(overlay_error(err, "mac")),
        }
    }

    /// Validate, then apply a whole document; returns whether it changed anything.
    /// Atomic: nothing changes unless `Config::validate` passes, the heap has room and
    /// the overlay for it is built (aside, from the running one); everything after that
    /// is infallible. Linear in the document.
    pub fn apply(&mut self, mut config: Config) -> Result<bool, ConfigError> {
        config.validate()?;
        // The running document keeps its containers in the DNS record store.
        let entries = core::mem::take(&mut config.containers);
        if self.running.as_ref() == Some(&config) && self.dns.holds_exactly(&entries) {
            return Ok(false);
        }
        let records = dns_service::records(entries)?;
        self.apply_sections(config, Some(records))
    }

    /// Apply the running document with a section other than `containers` edited (a
    /// runtime command): the containers stay registered as they are, so the cost does
    /// not grow with them.
    fn apply_edit(&mut self, config: Config) -> Result<bool, ConfigError> {
        config.validate()?;
        if self.running.as_ref() == Some(&config) {
            return Ok(false);
        }
        self.apply_sections(config, None)
    }

    /// Applies a validated document without its containers; `records`: the document's
    /// containers, or `None` to keep the registered ones.
    fn apply_sections(
        &mut self,
        config: Config,
        records: Option<Vec<dns::Container>>,
    ) -> Result<bool, ConfigError> {
        let dns = dns_service::plan(&config)?;
        let overlay = overlay::plan(
            &config,
            self.netstack.overlay(),
            EthernetAddress(self.info.uplink_mac),
            EthernetAddress(self.info.link_mac),
            self.info.seed,
            self.unix_time_at_boot,
        )?;
        // The overlay that will run: the planned one, or the running one changed in place.
        let planned = match &overlay {
            overlay::OverlayPlan::New(path) => Some(&**path),
            overlay::OverlayPlan::InPlace(_) => self.netstack.overlay(),
            overlay::OverlayPlan::Off => None,
        };
        let tls = peer_tls::plan(
            config.grid.as_deref(),
            planned,
            self.peer_tls.as_ref(),
            self.key_rng,
            self.wall_clock(self.last_poll),
            self.info.seed,
        )
        .map_err(|r| ConfigError {
            field: r.field.into(),
            message: r.message,
        })?;
        self.check_heap_room(&config, records.as_deref())?;
        self.netstack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: config.uplink.address.to_smoltcp(),
                gateway: config.uplink.gateway,
            }),
        );
        self.netstack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: config.link.address.to_smoltcp(),
                gateway: None,
            }),
        );
        overlay::carry_out(&mut self.netstack, overlay);
        let gone = match tls {
            peer_tls::Plan::Keep => None,
            peer_tls::Plan::Off => self.peer_tls.take(),
            peer_tls::Plan::New(fresh) => self.peer_tls.replace(*fresh),
        };
        if let Some(gone) = gone {
            gone.teardown(&mut self.netstack);
        }
        self.follow_peers();
        publish::apply(&mut self.netstack, &config, self.info.seed);
        // Health checkers start at the last poll's time (apply itself has no clock).
        services::apply(&mut self.netstack, &config, self.last_poll);
        self.dns
            .apply(dns, records, &mut self.netstack, self.info.seed);
        log::info!(
            "applied: uplink {} link {}{}",
            config.uplink.address,
            config.link.address,
            match &config.grid {
                Some(g) => alloc::format!(
                    ", overlay node {} with {} networks and {} peers",
                    g.node,
                    config.networks.len(),
                    config.peers.len()
                ),
                None => String::new(),
            }
        );
        self.peers = peers::PeerIndex::of(&config);
        self.running = Some(config);
        Ok(true)
    }

    /// Refuses a document whose new tables would not fit the free heap (when the
    /// platform reports its heap): out of memory is fatal in the kernel, so a document
    /// too large for this VM is a clear error before anything changes, not a crash.
    /// Counted: a new flow table, the Maglev tables of new or changed services, the
    /// DNS records of new containers (built beside the running ones), and what the
    /// overlay's FDB and ARP tables may still grow by up to their `[grid.limits]`.
    fn check_heap_room(
        &self,
        config: &Config,
        records: Option<&[dns::Container]>,
    ) -> Result<(), ConfigError> {
        let Some(heap) = self.heap else {
            return Ok(());
        };
        let free = heap.size_bytes.saturating_sub(heap.used_bytes);
        // What the packet path allocates under load (frames in flight, queues, sockets)
        // must still fit beside the tables: a 10 MiB VM whose default table left 0.5 MiB
        // ran out under iperf3.
        let reserve = HEAP_RESERVE.max(heap.size_bytes / 8);
        let table = publish::new_table_bytes(&self.netstack, config).map_or(0, |b| b as u64);
        if table > 0 && table + reserve > free {
            let flows = config
                .nat
                .map_or(publish::NatSection::default().capacity, |n| n.capacity);
            return Err(ConfigError {
                field: "nat.capacity".into(),
                message: alloc::format!(
                    "a flow table for {flows} flows needs {} KiB, and the heap has {} KiB \
                     free of which {} KiB stay for the packet path; give the VM more memory \
                     or a smaller capacity",
                    table / 1024,
                    free / 1024,
                    reserve / 1024
                ),
            });
        }
        let (services, lb) = services::new_table_bytes(&self.netstack, config);
        let containers = records.map_or(0, |r| r.len() as u64);
        let dns = containers.saturating_mul(dns_service::RECORD_HEAP_BYTES);
        let fdb = overlay::table_growth_bytes(&self.netstack, config);
        let need = table
            .saturating_add(lb)
            .saturating_add(dns)
            .saturating_add(fdb);
        if need == 0 || need.saturating_add(reserve) <= free {
            return Ok(());
        }
        let (field, what) = if fdb >= lb.max(dns) {
            let limits = config.grid.as_ref().map(|g| g.limits).unwrap_or_default();
            (
                "grid.limits.fdb_entries",
                alloc::format!(
                    "the FDB and ARP tables of {} networks full to [grid.limits] \
                     ({} and {} entries each; lower them)",
                    config.networks.len(),
                    limits.fdb_entries,
                    limits.arp_entries
                ),
            )
        } else if lb >= dns {
            (
                "services",
                alloc::format!("the lookup tables of {services} services"),
            )
        } else {
            (
                "containers",
                alloc::format!("the DNS records of {containers} containers"),
            )
        };
        Err(ConfigError {
            field: field.into(),
            message: alloc::format!(
                "the document needs {} KiB of new tables, most for {what}, and the heap has \
                 {} KiB free of which {} KiB stay for the packet path; give the VM more memory",
                need / 1024,
                free / 1024,
                reserve / 1024
            ),
        })
    }

    /// The `status` result at `now`.
    pub fn status(&self, now: Instant) -> Status {
        let uptime = if now > self.booted_at {
            now - self.booted_at
        } else {
            Duration::ZERO
        };
        Status {
            version: protocol::VERSION.into(),
            protocol: protocol::PROTOCOL_VERSION,
            uptime_ms: uptime.total_millis(),
            configured: self.running.is_some(),
            interfaces: Interfaces {
                uplink: self.interface_status(NicId::Uplink),
                link: self.interface_status(NicId::Link),
            },
            control: self.session.counters(),
            overlay: self.netstack.overlay().map(|o| o.status(now)),
            peer_tls: self
                .peer_tls
                .as_ref()
                .map(|t| t.status(now, self.netstack.overlay())),
            dns: self.dns.status(),
            nat: publish::status(&self.netstack),
            services: services::status(&self.netstack),
            heap: self.heap,
            stack: self.stack,
            offloads: self.offloads,
            captures: self.captures.len() as u64,
        }
    }

    fn interface_status(&self, id: NicId) -> InterfaceStatus {
        let nic = self.netstack.nic(id);
        let address = nic.iface.address();
        InterfaceStatus {
            mac: mac_string(nic.iface.mac()),
            addresses: address
                .map(|a| a.cidr)
                .into_iter()
                .chain(nic.iface.extra_address().filter(|_| address.is_some()))
                .filter_map(|c| Ipv4Cidr::new(c.address(), c.prefix_len()).ok())
                .fold(Vec::new(), |mut v, c| {
                    if !v.contains(&c) {
                        v.push(c);
                    }
                    v
                }),
            gateway: address.and_then(|a| a.gateway),
            counters: nic.counters,
        }
    }
}

/// `52:54:00:12:34:56`, as `ip link` prints it (smoltcp's Display uses dashes).
fn mac_string(mac: EthernetAddress) -> String {
    let b = mac.0;
    alloc::format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

fn internal_msg(message: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, message.into())
}

/// The reply of a command that changed the running state, or found it as asked.
fn applied(changed: Result<bool, ErrorBody>) -> Result<CommandResult, ErrorBody> {
    changed.map(|changed| CommandResult::Applied(Applied { changed }))
}

fn not_found(field: &str, message: String) -> ErrorBody {
    ErrorBody::with_field(ErrorCode::NotFound, message, field)
}

/// A refused FDB change; `mac_field` is the argument a table refusal is about.
fn overlay_error(e: OverlayError, mac_field: &str) -> ErrorBody {
    let message = alloc::format!("{e}");
    match e {
        OverlayError::UnknownNetwork(_) => not_found("vni", message),
        OverlayError::UnknownPeer(_) => not_found("peer", message),
        OverlayError::PeerNotInNetwork { .. } | OverlayError::PeerIsSelf(_) => {
            ErrorBody::with_field(ErrorCode::InvalidConfig, message, "peer")
        }
        OverlayError::Table(_) | OverlayError::Config(_) | OverlayError::GridChanged => {
            ErrorBody::with_field(ErrorCode::InvalidConfig, message, mac_field)
        }
    }
}

/// A refused transfer step.
fn transfer_error(e: transfer::TransferError) -> ErrorBody {
    use transfer::TransferError::*;
    let message = alloc::format!("{e}");
    match e {
        NotBegun => ErrorBody::new(ErrorCode::NotReady, message),
        WrongOffset { .. } => ErrorBody::with_field(ErrorCode::InvalidRequest, message, "offset"),
        PastEnd { .. } => ErrorBody::with_field(ErrorCode::InvalidRequest, message, "text"),
        Incomplete { .. } => ErrorBody::new(ErrorCode::InvalidRequest, message),
        NoRoom { .. } => ErrorBody::with_field(ErrorCode::TooLarge, message, "bytes"),
    }
}

fn internal(e: serde_json::Error) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Internal,
        alloc::format!("serializing the result: {e}"),
    )
}
