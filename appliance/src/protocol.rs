//! Control protocol version 1: the typed requests, replies and errors spoken as JSON
//! lines on the control socket. Shared with the host tool (`weft ctl`), so every type
//! here serializes and deserializes both ways. Parsing a line yields a whole typed
//! `Request` (arguments validated) or a `RequestError`; this module never changes state.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};
use weft_netstack::pipeline::datapath::DatapathStatus;
use weft_netstack::stage::overlay::config::{NetworkConfig, PeerConfig};
use weft_netstack::NicCounters;

pub use crate::command_error::{ErrorBody, ErrorCode};
use crate::config::{Config, Ipv4Cidr};
use crate::dns::ContainerEntry;
use crate::dns_service::{ContainerKey, DnsStatus};
use crate::overlay::{FdbEntry, FdbKey, NetworkKey, PeerKey};
use crate::publish::{FlowsQuery, PublishKey};
use weft_netstack::stage::nat::PublishRule;

/// The protocol version this appliance speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The appliance's release version (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The longest request line accepted, not counting the `\n` (or `\r\n`) that ends it.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// The largest document `apply-begin` takes (UTF-8 bytes of its JSON text), whatever
/// the heap; a smaller heap lowers it (see `Appliance`'s heap checks).
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// The first line the appliance sends on a new connection:
/// `{"weft":{"version":"0.1.0","protocol":1}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Greeting {
    pub weft: GreetingInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreetingInfo {
    pub version: String,
    pub protocol: u32,
}

impl Greeting {
    pub fn current() -> Self {
        Greeting {
            weft: GreetingInfo {
                version: VERSION.to_owned(),
                protocol: PROTOCOL_VERSION,
            },
        }
    }
}

/// A request's `id`, echoed in its reply: a JSON number or string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(Number),
    String(String),
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId::Number(n.into())
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId::String(s.to_owned())
    }
}

/// What a request asks for. A later command is one more variant here, one more arm in
/// `Command::parse` and one in `Command::name`/`args`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Version, uptime, per-interface addresses and counters, control-session counters.
    Status,
    /// The running configuration document (null before the first `apply`).
    Config,
    /// Replace the whole configuration, atomically.
    Apply(Config),
    /// Cheap liveness: `{"pong":true}`.
    Ping,
    /// Add an overlay peer, or replace the one at its underlay address.
    PeerAdd(PeerConfig),
    /// Remove an overlay peer (and every FDB entry behind it).
    PeerRemove(PeerKey),
    /// Add an overlay network, or change the one with its VNI.
    NetworkAdd(NetworkConfig),
    /// Remove an overlay network (and its tables).
    NetworkRemove(NetworkKey),
    /// Pin a MAC address of a network behind a peer or on the local link.
    FdbAdd(FdbEntry),
    /// Remove a pinned MAC address.
    FdbRemove(FdbKey),
    /// Register a container as DNS records, or replace the one of its name.
    ContainerAdd(ContainerEntry),
    /// Remove a container's DNS records.
    ContainerRemove(ContainerKey),
    /// Publish a port on the uplink address (DNAT to a container).
    PublishAdd(PublishRule),
    /// Withdraw a published port.
    PublishRemove(PublishKey),
    /// List tracked connections (limit and filter).
    Flows(FlowsQuery),
    /// Add an L4 service, or replace the one of its name.
    ServiceAdd(weft_netstack::stage::lb::ServiceConfig),
    /// Remove a service (its flows are cut).
    ServiceRemove(crate::services::ServiceKey),
    /// Add a backend to a service or change its weight (0 drains it).
    BackendSet(crate::services::BackendSet),
    /// Remove a backend (its flows are cut).
    BackendRemove(crate::services::BackendKey),
    /// Start a document sent in parts (longer than one line): its size in bytes.
    ApplyBegin(ApplyBegin),
    /// The next part of the document's text.
    ApplyPart(ApplyPart),
    /// Apply the document sent in parts, as `apply` does.
    ApplyCommit,
    /// Drop the document being sent in parts.
    ApplyAbort,
    /// Every counter and gauge, as Prometheus text.
    Metrics,
    /// Start capturing frames at a tap point; they arrive as `capture` events.
    CaptureStart(crate::capture::CaptureStart),
    /// The client has the capture's bytes up to `received`: the window moves on.
    CaptureAck(crate::capture::CaptureAck),
    /// End a capture now.
    CaptureStop(crate::capture::CaptureKey),
}

/// The args of `apply-begin`: the document's size, in bytes of its UTF-8 JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyBegin {
    pub bytes: u64,
}

/// The args of `apply-part`: the text that starts at byte `offset` of the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPart {
    pub offset: u64,
    pub text: String,
}

impl Command {
    /// Every command name, for error messages.
    pub const NAMES: &'static [&'static str] = &[
        "status",
        "config",
        "apply",
        "ping",
        "peer-add",
        "peer-remove",
        "network-add",
        "network-remove",
        "fdb-add",
        "fdb-remove",
        "container-add",
        "container-remove",
        "publish-add",
        "publish-remove",
        "flows",
        "service-add",
        "service-remove",
        "backend-set",
        "backend-remove",
        "apply-begin",
        "apply-part",
        "apply-commit",
        "apply-abort",
        "metrics",
        "capture-start",
        "capture-ack",
        "capture-stop",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Config => "config",
            Command::Apply(_) => "apply",
            Command::Ping => "ping",
            Command::PeerAdd(_) => "peer-add",
            Command::PeerRemove(_) => "peer-remove",
            Command::NetworkAdd(_) => "network-add",
            Command::NetworkRemove(_) => "network-remove",
            Command::FdbAdd(_) => "fdb-add",
            Command::FdbRemove(_) => "fdb-remove",
            Command::ContainerAdd(_) => "container-add",
            Command::ContainerRemove(_) => "container-remove",
            Command::PublishAdd(_) => "publish-add",
            Command::PublishRemove(_) => "publish-remove",
            Command::Flows(_) => "flows",
            Command::ServiceAdd(_) => "service-add",
            Command::ServiceRemove(_) => "service-remove",
            Command::BackendSet(_) => "backend-set",
            Command::BackendRemove(_) => "backend-remove",
            Command::ApplyBegin(_) => "apply-begin",
            Command::ApplyPart(_) => "apply-part",
            Command::ApplyCommit => "apply-commit",
            Command::ApplyAbort => "apply-abort",
            Command::Metrics => "metrics",
            Command::CaptureStart(_) => "capture-start",
            Command::CaptureAck(_) => "capture-ack",
            Command::CaptureStop(_) => "capture-stop",
        }
    }

    /// Build the command `name` from its `args`, validating them completely.
    pub fn parse(name: &str, args: Option<&Value>) -> Result<Command, ErrorBody> {
        match name {
            "status" => no_args(name, args).map(|()| Command::Status),
            "config" => no_args(name, args).map(|()| Command::Config),
            "ping" => no_args(name, args).map(|()| Command::Ping),
            "apply" => {
                let doc = args.ok_or_else(|| {
                    ErrorBody::with_field(
                        ErrorCode::InvalidRequest,
                        "apply needs the configuration document as `args`".to_owned(),
                        "args",
                    )
                })?;
                Config::from_json_value(doc)
                    .map(Command::Apply)
                    .map_err(|e| ErrorBody {
                        code: ErrorCode::InvalidConfig,
                        message: e.message,
                        field: Some(e.field),
                    })
            }
            "peer-add" => overlay_args(name, args).map(Command::PeerAdd),
            "peer-remove" => overlay_args(name, args).map(Command::PeerRemove),
            "network-add" => overlay_args(name, args).map(Command::NetworkAdd),
            "network-remove" => overlay_args(name, args).map(Command::NetworkRemove),
            "fdb-add" => {
                let entry: FdbEntry = overlay_args(name, args)?;
                entry.check().map_err(|(field, message)| {
                    ErrorBody::with_field(ErrorCode::InvalidConfig, message, field)
                })?;
                Ok(Command::FdbAdd(entry))
            }
            "fdb-remove" => overlay_args(name, args).map(Command::FdbRemove),
            "container-add" => {
                let entry: ContainerEntry = overlay_args(name, args)?;
                crate::dns_service::check_entry(&entry)?;
                Ok(Command::ContainerAdd(entry))
            }
            "container-remove" => overlay_args(name, args).map(Command::ContainerRemove),
            "publish-add" => {
                let rule: PublishRule = overlay_args(name, args)?;
                weft_netstack::stage::nat::validate_publish(&rule, [], &[]).map_err(|e| {
                    ErrorBody::with_field(ErrorCode::InvalidConfig, format!("{e}"), e.field())
                })?;
                Ok(Command::PublishAdd(rule))
            }
            "publish-remove" => overlay_args(name, args).map(Command::PublishRemove),
            "service-add" => {
                let s: weft_netstack::stage::lb::ServiceConfig = overlay_args(name, args)?;
                weft_netstack::stage::lb::validate_service(0, &s).map_err(|e| {
                    let field = e
                        .field
                        .strip_prefix("services[0].")
                        .unwrap_or(&e.field)
                        .to_owned();
                    ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, &field)
                })?;
                Ok(Command::ServiceAdd(s))
            }
            "service-remove" => overlay_args(name, args).map(Command::ServiceRemove),
            "backend-set" => overlay_args(name, args).map(Command::BackendSet),
            "backend-remove" => overlay_args(name, args).map(Command::BackendRemove),
            "apply-begin" => request_args(name, args).map(Command::ApplyBegin),
            "apply-part" => request_args(name, args).map(Command::ApplyPart),
            "apply-commit" => no_args(name, args).map(|()| Command::ApplyCommit),
            "apply-abort" => no_args(name, args).map(|()| Command::ApplyAbort),
            "metrics" => no_args(name, args).map(|()| Command::Metrics),
            "capture-start" => {
                let start: crate::capture::CaptureStart = overlay_args(name, args)?;
                start.check().map_err(|e| {
                    ErrorBody::with_field(ErrorCode::InvalidConfig, e.message, e.field)
                })?;
                Ok(Command::CaptureStart(start))
            }
            "capture-ack" => request_args(name, args).map(Command::CaptureAck),
            "capture-stop" => request_args(name, args).map(Command::CaptureStop),
            "flows" => match args {
                None | Some(Value::Null) => Ok(Command::Flows(FlowsQuery::default())),
                Some(_) => overlay_args(name, args).map(Command::Flows),
            },
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command {other:?}; known: {}",
                    Command::NAMES.join(", ")
                ),
            )),
        }
    }
}

/// The typed `args` of an overlay command; refusals name the field inside `args`.
fn overlay_args<T: serde::de::DeserializeOwned>(
    name: &str,
    args: Option<&Value>,
) -> Result<T, ErrorBody> {
    let args = args.ok_or_else(|| {
        ErrorBody::with_field(
            ErrorCode::InvalidRequest,
            format!("{name} needs its arguments as `args`"),
            "args",
        )
    })?;
    crate::field_path::from_value(args).map_err(|e| ErrorBody {
        code: ErrorCode::InvalidConfig,
        message: e.message,
        field: Some(e.field),
    })
}

/// The typed `args` of a protocol-level command (a transfer step): a refusal is an
/// `invalid_request` naming the field inside `args`.
fn request_args<T: serde::de::DeserializeOwned>(
    name: &str,
    args: Option<&Value>,
) -> Result<T, ErrorBody> {
    overlay_args(name, args).map_err(|e| ErrorBody {
        code: ErrorCode::InvalidRequest,
        ..e
    })
}

fn no_args(name: &str, args: Option<&Value>) -> Result<(), ErrorBody> {
    match args {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(ErrorBody::with_field(
            ErrorCode::InvalidRequest,
            format!("{name} takes no arguments"),
            "args",
        )),
    }
}

/// One request line: `{"id": 1, "cmd": "status"}` or
/// `{"id": 2, "cmd": "apply", "args": {...config...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub command: Command,
}

/// A line that is not a valid request: the error to answer with, and the id to echo
/// when the line had a usable one.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub id: Option<RequestId>,
    pub error: ErrorBody,
}

impl RequestError {
    pub fn new(id: Option<RequestId>, error: ErrorBody) -> Self {
        RequestError { id, error }
    }

    pub fn into_reply(self) -> Reply {
        Reply {
            id: self.id,
            outcome: Outcome::Error(self.error),
        }
    }
}

impl Request {
    pub fn new(id: impl Into<RequestId>, command: Command) -> Self {
        Request {
            id: id.into(),
            command,
        }
    }

    /// Parse one line (without its line ending).
    pub fn parse_line(line: &[u8]) -> Result<Request, RequestError> {
        let text = core::str::from_utf8(line).map_err(|e| {
            RequestError::new(
                None,
                ErrorBody::new(ErrorCode::ParseError, format!("line is not UTF-8: {e}")),
            )
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            RequestError::new(
                None,
                ErrorBody::new(ErrorCode::ParseError, format!("not JSON: {e}")),
            )
        })?;
        Request::from_value(&value)
    }

    /// Interpret a parsed JSON value as a request.
    pub fn from_value(value: &Value) -> Result<Request, RequestError> {
        let invalid = |id: Option<RequestId>, field: &str, message: String| {
            RequestError::new(
                id,
                ErrorBody::with_field(ErrorCode::InvalidRequest, message, field),
            )
        };
        let Value::Object(map) = value else {
            return Err(RequestError::new(
                None,
                ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "a request is a JSON object".to_owned(),
                ),
            ));
        };
        let id = match map.get("id") {
            Some(Value::Number(n)) => RequestId::Number(n.clone()),
            Some(Value::String(s)) => RequestId::String(s.clone()),
            Some(other) => {
                return Err(invalid(
                    None,
                    "id",
                    format!("id must be a number or a string, not {}", json_kind(other)),
                ))
            }
            None => return Err(invalid(None, "id", "missing id".to_owned())),
        };
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "id" | "cmd" | "args"))
        {
            return Err(invalid(
                Some(id),
                key,
                format!("unknown member {key:?}; a request has id, cmd, args"),
            ));
        }
        let cmd = match map.get("cmd") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(invalid(
                    Some(id),
                    "cmd",
                    format!("cmd must be a string, not {}", json_kind(other)),
                ))
            }
            None => return Err(invalid(Some(id), "cmd", "missing cmd".to_owned())),
        };
        match Command::parse(cmd, map.get("args")) {
            Ok(command) => Ok(Request { id, command }),
            Err(error) => Err(RequestError::new(Some(id), error)),
        }
    }
}

/// What a JSON value is, for error messages that name what was given instead.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Request::from_value(&value).map_err(|e| serde::de::Error::custom(e.error))
    }
}

/// A reply line: `{"id":1,"result":{...}}` or `{"id":1,"error":{...}}` (id null when the
/// request had none usable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: Option<RequestId>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Result(Value),
    Error(ErrorBody),
}

impl Reply {
    pub fn result(id: RequestId, result: Value) -> Self {
        Reply {
            id: Some(id),
            outcome: Outcome::Result(result),
        }
    }

    pub fn error(id: Option<RequestId>, error: ErrorBody) -> Self {
        Reply {
            id,
            outcome: Outcome::Error(error),
        }
    }

    /// The reply as one line, `\n` included. Serializing our own types cannot fail in
    /// practice; if it ever does, the line is an `internal` error instead.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"id":null,"error":{"code":"internal","message":"reply could not be serialized"}}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// The typed result of a command; serializes as the bare result (`{"pong":true}`,
/// a `Status`, the config document or null, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CommandResult {
    Status(alloc::boxed::Box<Status>),
    Config(Option<alloc::boxed::Box<Config>>),
    Applied(Applied),
    Pong(Pong),
    Flows(Vec<weft_netstack::table::conntrack::FlowInfo>),
    Begun(Begun),
    Received(Received),
    Discarded(Discarded),
    Metrics(MetricsText),
    CaptureStarted(crate::capture::CaptureStarted),
    CaptureAcked(crate::capture::CaptureAcked),
    CaptureEnded(crate::capture::CaptureEnd),
}

/// The result of `metrics`: Prometheus text (made by the metrics module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsText {
    pub content_type: String,
    pub text: String,
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: String,
    pub protocol: u32,
    pub uptime_ms: u64,
    /// Whether a configuration has been applied.
    pub configured: bool,
    pub interfaces: Interfaces,
    pub control: ControlCounters,
    /// The overlay (present once a document with a `[grid]` is applied): per-network
    /// and per-peer counters, drops by reason, FDB and ARP tables, underlay neighbours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<DatapathStatus>,
    /// The peer channel (present with `[grid] auth = "tls"`): this node's certificate,
    /// the channel's counters, and per peer its TLS state, certificate, sessions and
    /// sleeve epochs (docs/peer-tls.md, "Configuration and status").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<crate::peer_tls::PeerTlsStatus>,
    /// The DNS service (present once a document with a `[dns]` is applied): zone,
    /// containers, queries in flight, the resolver's counters and drops by reason, and
    /// the socket side's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,
    /// Port publishing and masquerade (present once configured): table size, inserts,
    /// translations and drops by reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<crate::publish::NatStatus>,
    /// L4 services (present when any is configured): each with its backends' weight,
    /// health and Maglev table slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
    /// The appliance's heap, as the platform measures it (absent when it does not): its
    /// size, the bytes in use now and the most ever in use since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapStatus>,
    /// The stack the appliance runs on, as the platform measures it (absent when it does
    /// not): its size and the most of it ever used since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackStatus>,
    /// The virtio-net offloads of each NIC, as the platform reports them (absent when it
    /// does not): what was negotiated and what they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<OffloadStatus>,
    /// Captures running (`capture-start`), absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub captures: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The offloads of both NICs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadStatus {
    pub uplink: NicOffloads,
    pub link: NicOffloads,
}

/// One NIC's offloads: the virtio-net features negotiated, and counters since boot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicOffloads {
    /// The device completes checksums left partial (`CSUM`).
    pub csum: bool,
    /// The device hands over frames with partial or verified checksums (`GUEST_CSUM`).
    pub guest_csum: bool,
    /// The device takes TCP/IPv4 super-frames (`HOST_TSO4`).
    pub host_tso4: bool,
    /// The device hands over TCP/IPv4 super-frames (`GUEST_TSO4`).
    pub guest_tso4: bool,
    /// The device spreads a received frame over several buffers (`MRG_RXBUF`).
    pub mrg_rxbuf: bool,
    /// Super-frames received, and the segments they were cut into.
    pub rx_super_frames: u64,
    pub rx_segments: u64,
    /// Partial checksums received and completed before the frame went on.
    pub rx_csum_completed: u64,
    /// Received frames dropped because their virtio-net header made no sense: a
    /// segmentation kind not negotiated, a super-frame that cannot be cut, a partial
    /// checksum outside the frame or at an odd offset, buffers that do not add up.
    pub rx_refused: u64,
    /// Super-frames sent, and the segments merged into them.
    pub tx_super_frames: u64,
    pub tx_merged_segments: u64,
    /// Segments not merged because their TCP checksum was wrong (sent as they came).
    pub tx_bad_checksum: u64,
    /// Segments lost with a super-frame the device's queue had no room for.
    pub tx_merged_dropped: u64,
}

/// Heap figures in bytes: `peak_bytes` is the high-water mark since boot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeapStatus {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub peak_bytes: u64,
}

/// Stack figures in bytes: `peak_bytes` is the deepest the stack has been since boot,
/// `running_peak_bytes` the deepest since bring-up ended (what the main loop needs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackStatus {
    pub size_bytes: u64,
    pub peak_bytes: u64,
    pub running_peak_bytes: u64,
}

/// Per-NIC status, one named field per NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    pub uplink: InterfaceStatus,
    pub link: InterfaceStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceStatus {
    /// `"52:54:00:12:34:56"`.
    pub mac: String,
    /// Empty while unconfigured.
    pub addresses: Vec<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub counters: NicCounters,
}

/// Counters of the control session (all connections since boot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlCounters {
    /// Connections (greetings sent).
    pub connects: u64,
    /// Non-empty lines received (including over-long and malformed ones).
    pub lines: u64,
    /// Lines that were valid requests.
    pub requests: u64,
    /// Error replies sent.
    pub errors: u64,
    /// Partial lines discarded because the client disconnected mid-line.
    pub partial_discarded: u64,
    /// Documents begun in parts (`apply-begin` accepted).
    #[serde(default)]
    pub transfers: u64,
    /// Of those, dropped unfinished: the client disconnected, began another, or aborted.
    #[serde(default)]
    pub transfers_discarded: u64,
}

/// The result of `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    /// Whether the document differed from the running configuration.
    pub changed: bool,
}

/// The result of `apply-begin`: the size the document was begun with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Begun {
    pub bytes: u64,
}

/// The result of `apply-part`: the bytes of the document received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Received {
    pub received: u64,
}

/// The result of `apply-abort`: the bytes of the dropped document (0: there was none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discarded {
    pub discarded: u64,
}

/// The result of `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pong {
    pub pong: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use serde_json::json;

    fn config() -> Config {
        Config::from_json_value(&json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"}
        }))
        .unwrap()
    }

    /// Requests are only ever read: a client sends the JSON its user wrote (an `apply`
    /// document with its secret), never a re-serialized `Config`, whose serialization
    /// is the display form (`config`, secrets as "set"). So `Request` has no `Serialize`.
    #[test]
    fn requests_parse_from_lines() {
        let doc = json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"}
        });
        let cases = vec![
            (
                json!({"id": 1, "cmd": "status"}),
                Request::new(1, Command::Status),
            ),
            (
                json!({"id": "abc", "cmd": "config"}),
                Request::new("abc", Command::Config),
            ),
            (
                json!({"id": u64::MAX, "cmd": "ping"}),
                Request::new(u64::MAX, Command::Ping),
            ),
            (
                json!({"id": -3, "cmd": "apply", "args": doc}),
                Request::new(
                    RequestId::Number(Number::from(-3)),
                    Command::Apply(config()),
                ),
            ),
            (
                json!({"id": 1.5, "cmd": "ping"}),
                Request::new(
                    RequestId::Number(Number::from_f64(1.5).unwrap()),
                    Command::Ping,
                ),
            ),
        ];
        for (value, req) in cases {
            let line = serde_json::to_string(&value).unwrap();
            assert_eq!(
                Request::parse_line(line.as_bytes()),
                Ok(req.clone()),
                "{line}"
            );
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = vec![
            Reply::result(RequestId::from(1), json!({"pong": true})),
            Reply::result(RequestId::from("x"), Value::Null),
            Reply::error(None, ErrorBody::new(ErrorCode::ParseError, "bad".into())),
            Reply::error(
                Some(RequestId::from(4)),
                ErrorBody::with_field(ErrorCode::InvalidConfig, "no".into(), "uplink.gateway"),
            ),
        ];
        for reply in replies {
            let line = reply.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let back: Reply = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, reply);
        }
        let line = Reply::error(None, ErrorBody::new(ErrorCode::LineTooLong, "m".into())).to_line();
        assert_eq!(
            core::str::from_utf8(&line).unwrap(),
            "{\"id\":null,\"error\":{\"code\":\"line_too_long\",\"message\":\"m\"}}\n"
        );
    }

    #[test]
    fn error_codes_are_stable_snake_case() {
        let all = [
            (ErrorCode::ParseError, "parse_error"),
            (ErrorCode::InvalidRequest, "invalid_request"),
            (ErrorCode::UnknownCommand, "unknown_command"),
            (ErrorCode::InvalidConfig, "invalid_config"),
            (ErrorCode::LineTooLong, "line_too_long"),
            (ErrorCode::NotReady, "not_ready"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::Internal, "internal"),
            (ErrorCode::TooLarge, "too_large"),
            (ErrorCode::Busy, "busy"),
        ];
        for (code, text) in all {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(text));
            assert_eq!(
                serde_json::from_value::<ErrorCode>(json!(text)).unwrap(),
                code
            );
        }
    }

    fn refusal(line: &str) -> RequestError {
        Request::parse_line(line.as_bytes()).expect_err(line)
    }

    #[test]
    fn malformed_requests_get_typed_errors() {
        let cases: &[(&str, ErrorCode, Option<&str>, Option<RequestId>)] = &[
            ("nope", ErrorCode::ParseError, None, None),
            ("{\"id\":1,", ErrorCode::ParseError, None, None),
            ("[1,2]", ErrorCode::InvalidRequest, None, None),
            ("\"status\"", ErrorCode::InvalidRequest, None, None),
            ("{\"cmd\":\"status\"}", ErrorCode::InvalidRequest, Some("id"), None),
            ("{\"id\":null,\"cmd\":\"status\"}", ErrorCode::InvalidRequest, Some("id"), None),
            ("{\"id\":[1],\"cmd\":\"status\"}", ErrorCode::InvalidRequest, Some("id"), None),
            ("{\"id\":1}", ErrorCode::InvalidRequest, Some("cmd"), Some(RequestId::from(1))),
            ("{\"id\":1,\"cmd\":5}", ErrorCode::InvalidRequest, Some("cmd"), Some(RequestId::from(1))),
            ("{\"id\":1,\"cmd\":\"ping\",\"x\":0}", ErrorCode::InvalidRequest, Some("x"), Some(RequestId::from(1))),
            ("{\"id\":1,\"cmd\":\"ping\",\"args\":[1]}", ErrorCode::InvalidRequest, Some("args"), Some(RequestId::from(1))),
            ("{\"id\":\"a\",\"cmd\":\"apply\"}", ErrorCode::InvalidRequest, Some("args"), Some(RequestId::from("a"))),
            ("{\"id\":2,\"cmd\":\"reboot\"}", ErrorCode::UnknownCommand, None, Some(RequestId::from(2))),
            ("{\"id\":2,\"cmd\":\"STATUS\"}", ErrorCode::UnknownCommand, None, Some(RequestId::from(2))),
            (
                "{\"id\":3,\"cmd\":\"apply\",\"args\":{\"uplink\":{\"address\":\"192.0.2.2/24\"}}}",
                ErrorCode::InvalidConfig,
                Some("link"),
                Some(RequestId::from(3)),
            ),
            (
                "{\"id\":3,\"cmd\":\"apply\",\"args\":{\"uplink\":{\"address\":\"192.0.2.2/24\",\"gateway\":\"10.0.0.1\"},\"link\":{\"address\":\"10.81.0.1/16\"}}}",
                ErrorCode::InvalidConfig,
                Some("uplink.gateway"),
                Some(RequestId::from(3)),
            ),
        ];
        for (line, code, field, id) in cases {
            let e = refusal(line);
            assert_eq!(e.error.code, *code, "{line}: {}", e.error);
            assert_eq!(e.error.field.as_deref(), *field, "{line}");
            assert_eq!(&e.id, id, "{line}");
        }
    }

    #[test]
    fn empty_args_are_accepted_for_commands_without_args() {
        for line in [
            "{\"id\":1,\"cmd\":\"status\",\"args\":{}}",
            "{\"id\":1,\"cmd\":\"status\",\"args\":null}",
            "{\"args\":{},\"cmd\":\"ping\",\"id\":1}",
        ] {
            assert!(Request::parse_line(line.as_bytes()).is_ok(), "{line}");
        }
    }

    #[test]
    fn greeting_round_trips() {
        let g = Greeting::current();
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(
            text,
            alloc::format!("{{\"weft\":{{\"version\":\"{VERSION}\",\"protocol\":1}}}}")
        );
        assert_eq!(serde_json::from_str::<Greeting>(&text).unwrap(), g);
    }
}
