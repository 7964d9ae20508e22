//! Packet capture over the control stream, the wire side: the `capture-*` commands'
//! arguments and results, the event lines that carry the frames (base64 chunks of
//! libpcap records) and end a capture, and the record reader the host tools use. The
//! appliance side is `capture_session`; the frames are copied by the netstack's tap
//! (`pipeline::capture`) into a bounded buffer. It depends on nothing else of the
//! appliance.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use weft_netstack::pipeline::capture::{MAX_SNAPLEN, RECORD_HEADER_LEN};

/// libpcap's LINKTYPE_ETHERNET: every tap point carries Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The buffer each capture gets in the appliance.
pub const BUFFER_BYTES: usize = 256 * 1024;
/// Record bytes sent and not yet acknowledged, at most.
pub const WINDOW_BYTES: u64 = 128 * 1024;
/// Record bytes in one event line at most (a record longer than this goes alone):
/// base64 makes 43 KiB of it.
pub const CHUNK_BYTES: usize = 32 * 1024;
/// The longest a capture may be asked to run.
pub const MAX_SECONDS: u32 = 86_400;

/// The args of `capture-start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStart {
    /// `uplink`, `link` or `overlay:<network name>`.
    pub iface: String,
    /// Bytes kept of each frame (default and most: 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
    /// Stop after this many frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
}

impl CaptureStart {
    /// The checks that need no running configuration.
    pub fn check(&self) -> Result<(), ArgError> {
        let bad = |field: &'static str, message: String| Err(ArgError { field, message });
        if let Some(s) = self.snaplen.filter(|s| *s == 0 || *s > MAX_SNAPLEN) {
            return bad(
                "snaplen",
                alloc::format!("snaplen {s} is not in 1..={MAX_SNAPLEN}"),
            );
        }
        if self.count == Some(0) {
            return bad("count", "count 0 would capture nothing".into());
        }
        if let Some(s) = self.seconds.filter(|s| *s == 0 || *s > MAX_SECONDS) {
            return bad(
                "seconds",
                alloc::format!("seconds {s} is not in 1..={MAX_SECONDS}"),
            );
        }
        match self.iface.as_str() {
            "uplink" | "link" => Ok(()),
            name if name.strip_prefix("overlay:").is_some_and(|n| !n.is_empty()) => Ok(()),
            other => bad(
                "iface",
                alloc::format!("no interface {other:?}; uplink, link or overlay:<network>"),
            ),
        }
    }
}

/// Why `capture-start`'s args were refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    pub field: &'static str,
    pub message: String,
}

/// The result of `capture-start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStarted {
    /// The id the capture's events and the `capture-ack`/`capture-stop` carry.
    pub capture: u32,
    pub iface: String,
    pub link_type: u32,
    pub snaplen: u32,
    pub buffer_bytes: u64,
    pub window_bytes: u64,
}

/// The args of `capture-ack`: every record byte up to `received` has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureAck {
    pub capture: u32,
    pub received: u64,
}

/// The result of `capture-ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureAcked {
    pub acked: u64,
}

/// The args of `capture-stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureKey {
    pub capture: u32,
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `count` frames were captured.
    Count,
    /// `seconds` passed.
    Seconds,
    /// `capture-stop`.
    Stopped,
    /// The configuration it watched went (its network was removed).
    Gone,
    /// The link between the client and the appliance broke (said by the agent).
    Disconnected,
}

/// How a capture ended: the result of `capture-stop`, and the `capture-end` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureEnd {
    pub capture: u32,
    pub reason: EndReason,
    /// Frames sent to the client.
    pub frames: u64,
    /// Record bytes sent to the client.
    pub bytes: u64,
    /// Frames seen but never sent: the buffer was full, or the capture stopped first.
    pub dropped: u64,
}

/// One chunk of a capture: whole records starting at byte `offset` of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureData {
    pub capture: u32,
    pub offset: u64,
    pub frames: u64,
    /// The records, base64.
    pub data: String,
}

impl CaptureData {
    /// The record bytes `data` carries; text that is not canonical base64 is an error.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.data)
    }
}

/// A line the appliance sends without a request: only to a connection that started a
/// capture. `{"event":"capture",...}` or `{"event":"capture-end",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Capture(CaptureData),
    CaptureEnd(CaptureEnd),
}

impl Event {
    /// The event of a line, or `None` for a line that is no event (a reply). A line
    /// with an `event` member that does not read as one is an error.
    pub fn parse_line(line: &[u8]) -> Option<Result<Event, String>> {
        let value: serde_json::Value = serde_json::from_slice(line).ok()?;
        value.get("event")?;
        Some(serde_json::from_value(value).map_err(|e| alloc::format!("{e}")))
    }

    /// The line, `\n` included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    pub fn capture(&self) -> u32 {
        match self {
            Event::Capture(d) => d.capture,
            Event::CaptureEnd(e) => e.capture,
        }
    }
}

/// One libpcap record of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub ts_secs: u32,
    pub ts_micros: u32,
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// Why a chunk is not a sequence of whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The chunk ends inside a record's header or bytes, at this offset.
    Truncated(usize),
    /// A record whose captured length is over its original length or `MAX_SNAPLEN`.
    Length(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated(at) => write!(f, "capture chunk cut inside a record at {at}"),
            RecordError::Length(at) => write!(f, "capture record at {at} has a bad length"),
        }
    }
}

impl core::error::Error for RecordError {}

/// The records of a chunk, in order.
pub fn records(chunk: &[u8]) -> Result<Vec<Record<'_>>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let Some(head) = chunk.get(at..at + RECORD_HEADER_LEN) else {
            return Err(RecordError::Truncated(at));
        };
        let u = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (incl, orig) = (u(8), u(12));
        if incl > orig || incl > MAX_SNAPLEN {
            return Err(RecordError::Length(at));
        }
        let start = at + RECORD_HEADER_LEN;
        let Some(data) = chunk.get(start..start + incl as usize) else {
            return Err(RecordError::Truncated(at));
        };
        out.push(Record {
            ts_secs: u(0),
            ts_micros: u(4),
            orig_len: orig,
            data,
        });
        at = start + incl as usize;
    }
    Ok(out)
}
