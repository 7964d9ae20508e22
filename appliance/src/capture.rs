//! Packet capture over the control stream: the `capture-*` commands' arguments and
//! results, the event lines that carry the frames (base64 chunks of libpcap records)
//! and end a capture, the credit that paces them, and the record reader the host tools
//! use. The appliance side (`Streams`) belongs to one connection: a client that goes
//! away (or a new one) ends its captures.
//!
//! The frames are copied by the netstack's tap (`pipeline::capture`) into a bounded
//! buffer; this module only moves whole records from there to the stream while the
//! client's window has room, so other replies are never more than a window behind. It
//! never waits: a slow client leaves frames in the buffer, and what does not fit there
//! is counted as dropped.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use weft_netstack::pipeline::capture::{
    CaptureError, CaptureSpec, CaptureTap, TapPoint, MAX_SNAPLEN, RECORD_HEADER_LEN,
};
use weft_netstack::NicId;

use crate::protocol::{ErrorBody, ErrorCode};
use crate::Config;

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
    pub fn check(&self) -> Result<(), ErrorBody> {
        let bad = |field: &str, message: String| {
            Err(ErrorBody::with_field(
                ErrorCode::InvalidConfig,
                message,
                field,
            ))
        };
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

/// One capture as the stream sees it.
#[derive(Debug, Clone)]
struct Stream {
    id: u32,
    /// Record bytes sent, and acknowledged by the client.
    sent: u64,
    acked: u64,
    frames_sent: u64,
}

/// The captures of the connection: what has been sent of each and what the client
/// acknowledged.
#[derive(Debug, Default)]
pub struct Streams {
    streams: Vec<Stream>,
}

impl Streams {
    /// `capture-start`: the tap point resolved in `running`, the capture started on `tap`.
    pub fn start(
        &mut self,
        args: &CaptureStart,
        running: Option<&Config>,
        tap: &mut CaptureTap,
        now: Instant,
        clock_offset_micros: i64,
    ) -> Result<CaptureStarted, ErrorBody> {
        let point = match args.iface.as_str() {
            "uplink" => TapPoint::Nic(NicId::Uplink),
            "link" => TapPoint::Nic(NicId::Link),
            other => {
                let name = other.strip_prefix("overlay:").unwrap_or(other);
                let net = running
                    .and_then(|c| c.networks.iter().find(|n| n.name == name))
                    .ok_or_else(|| {
                        ErrorBody::with_field(
                            ErrorCode::NotFound,
                            alloc::format!("no overlay network {name:?}"),
                            "iface",
                        )
                    })?;
                TapPoint::Network(net.vni)
            }
        };
        let snaplen = args.snaplen.unwrap_or(MAX_SNAPLEN);
        let spec = CaptureSpec {
            point,
            snaplen,
            count: args.count,
            until: args
                .seconds
                .map(|s| now + Duration::from_secs(u64::from(s))),
            buffer_bytes: BUFFER_BYTES,
            clock_offset_micros,
        };
        let id = tap.start(spec).map_err(|e| match e {
            CaptureError::Busy => ErrorBody::new(ErrorCode::Busy, alloc::format!("{e}")),
            other => ErrorBody::with_field(
                ErrorCode::InvalidConfig,
                alloc::format!("{other}"),
                "snaplen",
            ),
        })?;
        self.streams.push(Stream {
            id,
            sent: 0,
            acked: 0,
            frames_sent: 0,
        });
        Ok(CaptureStarted {
            capture: id,
            iface: args.iface.clone(),
            link_type: LINKTYPE_ETHERNET,
            snaplen,
            buffer_bytes: BUFFER_BYTES as u64,
            window_bytes: WINDOW_BYTES,
        })
    }

    /// `capture-ack`.
    pub fn ack(&mut self, ack: CaptureAck) -> Result<CaptureAcked, ErrorBody> {
        let s = self.find(ack.capture)?;
        if ack.received > s.sent {
            return Err(ErrorBody::with_field(
                ErrorCode::InvalidRequest,
                alloc::format!(
                    "{} bytes acknowledged, but {} were sent",
                    ack.received,
                    s.sent
                ),
                "received",
            ));
        }
        s.acked = s.acked.max(ack.received);
        Ok(CaptureAcked { acked: s.acked })
    }

    /// `capture-stop`: the capture ends now; what its buffer still holds is dropped.
    pub fn stop(&mut self, key: CaptureKey, tap: &mut CaptureTap) -> Result<CaptureEnd, ErrorBody> {
        self.find(key.capture)?;
        Ok(self.end(key.capture, EndReason::Stopped, tap))
    }

    /// The connection ended: every capture stops.
    pub fn stop_all(&mut self, tap: &mut CaptureTap) {
        for s in self.streams.drain(..) {
            tap.stop(s.id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The event lines due at `now`: chunks while each window has room, and the end of
    /// each capture that takes no more frames and has sent all it had.
    pub fn output(&mut self, now: Instant, tap: &mut CaptureTap, out: &mut Vec<u8>) {
        let mut ended = Vec::new();
        let mut chunk = Vec::new();
        for s in &mut self.streams {
            if tap.spec(s.id).is_none() {
                ended.push((s.id, EndReason::Gone));
                continue;
            }
            loop {
                let room = WINDOW_BYTES.saturating_sub(s.sent - s.acked) as usize;
                // A record longer than a chunk goes alone; every record fits a window.
                if tap.head_len(s.id).is_none_or(|len| len > room) {
                    break;
                }
                chunk.clear();
                let frames = tap.drain(s.id, room.min(CHUNK_BYTES), &mut chunk);
                let mut line = alloc::format!(
                    "{{\"event\":\"capture\",\"capture\":{},\"offset\":{},\"frames\":{frames},\"data\":\"",
                    s.id,
                    s.sent
                );
                BASE64.encode_string(&chunk, &mut line);
                line.push_str("\"}\n");
                out.extend_from_slice(line.as_bytes());
                s.sent += chunk.len() as u64;
                s.frames_sent += frames as u64;
            }
            if !tap.is_taking(s.id, now) && tap.buffered_bytes(s.id) == 0 {
                let reason = match tap.spec(s.id).and_then(|spec| spec.count) {
                    Some(n) if tap.counters(s.id).is_some_and(|c| c.buffered >= n) => {
                        EndReason::Count
                    }
                    _ => EndReason::Seconds,
                };
                ended.push((s.id, reason));
            }
        }
        for (id, reason) in ended {
            let end = self.end(id, reason, tap);
            out.extend_from_slice(&Event::CaptureEnd(end).to_line());
        }
    }

    /// The end of capture `id`: removed from the tap and from the streams.
    fn end(&mut self, id: u32, reason: EndReason, tap: &mut CaptureTap) -> CaptureEnd {
        let stream = self
            .streams
            .iter()
            .position(|s| s.id == id)
            .map(|i| self.streams.swap_remove(i));
        let counters = tap.stop(id).map(|(c, _)| c).unwrap_or_default();
        CaptureEnd {
            capture: id,
            reason,
            frames: stream.as_ref().map_or(0, |s| s.frames_sent),
            bytes: stream.as_ref().map_or(0, |s| s.sent),
            dropped: counters.dropped,
        }
    }

    /// Whether an event is due without new frames: a window with room over a buffer
    /// with records, or a capture to end.
    pub fn wants_output(&self, now: Instant, tap: &CaptureTap) -> bool {
        self.streams.iter().any(|s| match tap.head_len(s.id) {
            Some(len) => len as u64 <= WINDOW_BYTES - (s.sent - s.acked),
            None => !tap.is_taking(s.id, now),
        })
    }

    fn find(&mut self, id: u32) -> Result<&mut Stream, ErrorBody> {
        self.streams.iter_mut().find(|s| s.id == id).ok_or_else(|| {
            ErrorBody::with_field(
                ErrorCode::NotFound,
                alloc::format!("no capture {id} on this connection"),
                "capture",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(iface: &str) -> CaptureStart {
        CaptureStart {
            iface: iface.into(),
            snaplen: None,
            count: None,
            seconds: None,
        }
    }

    fn events(out: &[u8]) -> Vec<Event> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Event::parse_line(l).unwrap().unwrap())
            .collect()
    }

    #[test]
    fn arguments_are_checked_field_by_field() {
        assert!(start("uplink").check().is_ok());
        assert!(start("overlay:grid").check().is_ok());
        for (args, field) in [
            (start("eth0"), "iface"),
            (start("overlay:"), "iface"),
            (
                CaptureStart {
                    snaplen: Some(0),
                    ..start("link")
                },
                "snaplen",
            ),
            (
                CaptureStart {
                    count: Some(0),
                    ..start("link")
                },
                "count",
            ),
            (
                CaptureStart {
                    seconds: Some(MAX_SECONDS + 1),
                    ..start("link")
                },
                "seconds",
            ),
        ] {
            assert_eq!(args.check().unwrap_err().field.as_deref(), Some(field));
        }
    }

    #[test]
    fn chunks_follow_the_window_and_the_end_reports_drops() {
        let mut tap = CaptureTap::default();
        let mut streams = Streams::default();
        let now = Instant::ZERO;
        let started = streams
            .start(
                &CaptureStart {
                    seconds: Some(1),
                    ..start("uplink")
                },
                None,
                &mut tap,
                now,
                0,
            )
            .unwrap();
        let id = started.capture;
        let point = TapPoint::Nic(NicId::Uplink);
        // 300 frames of 2000 bytes: more than the buffer (256 KiB) holds.
        for _ in 0..300 {
            tap.offer(point, now, &[0xab; 2000]);
        }
        let mut out = Vec::new();
        streams.output(now, &mut tap, &mut out);
        let first = events(&out);
        // One window's worth, in chunks of whole records, no end yet.
        let sent: usize = first
            .iter()
            .map(|e| match e {
                Event::Capture(d) => d.bytes().unwrap().len(),
                Event::CaptureEnd(_) => panic!("ended early"),
            })
            .sum();
        assert!(sent as u64 <= WINDOW_BYTES && sent as u64 > WINDOW_BYTES - 2016);
        let first_frames: u64 = first
            .iter()
            .map(|e| match e {
                Event::Capture(d) => d.frames,
                Event::CaptureEnd(_) => 0,
            })
            .sum();
        out.clear();
        streams.output(now, &mut tap, &mut out);
        assert!(out.is_empty(), "nothing past the window");
        assert!(!streams.wants_output(now, &tap));
        // Acknowledging everything lets the rest out, then the end.
        let mut total = sent as u64;
        let mut frames = 0;
        for _ in 0..10 {
            streams
                .ack(CaptureAck {
                    capture: id,
                    received: total,
                })
                .unwrap();
            out.clear();
            // The time is up: nothing new is taken, what is buffered still goes.
            streams.output(Instant::from_secs(1), &mut tap, &mut out);
            for e in events(&out) {
                match e {
                    Event::Capture(d) => {
                        assert_eq!(d.offset, total);
                        let bytes = d.bytes().unwrap();
                        frames += records(&bytes).unwrap().len();
                        total += bytes.len() as u64;
                    }
                    Event::CaptureEnd(end) => {
                        assert_eq!(end.reason, EndReason::Seconds);
                        assert_eq!(end.bytes, total);
                        assert_eq!(end.frames, frames as u64 + first_frames);
                        assert_eq!((end.frames, end.dropped), (130, 170));
                        assert!(streams.is_empty());
                        assert!(tap.is_idle());
                        return;
                    }
                }
            }
        }
        panic!("no end after {frames} frames");
    }

    #[test]
    fn acks_and_stops_name_their_capture() {
        let mut tap = CaptureTap::default();
        let mut streams = Streams::default();
        let e = streams
            .ack(CaptureAck {
                capture: 9,
                received: 0,
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let id = streams
            .start(&start("link"), None, &mut tap, Instant::ZERO, 0)
            .unwrap()
            .capture;
        let e = streams
            .ack(CaptureAck {
                capture: id,
                received: 5,
            })
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("received"));
        let e = streams
            .start(&start("overlay:grid"), None, &mut tap, Instant::ZERO, 0)
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::NotFound, Some("iface"))
        );
        tap.offer(TapPoint::Nic(NicId::Link), Instant::ZERO, &[1; 60]);
        let end = streams.stop(CaptureKey { capture: id }, &mut tap).unwrap();
        assert_eq!(
            (end.reason, end.frames, end.dropped),
            (EndReason::Stopped, 0, 1)
        );
        assert!(tap.is_idle() && streams.is_empty());
    }

    #[test]
    fn a_time_limit_ends_the_capture() {
        let mut tap = CaptureTap::default();
        let mut streams = Streams::default();
        let args = CaptureStart {
            seconds: Some(2),
            ..start("uplink")
        };
        streams
            .start(&args, None, &mut tap, Instant::ZERO, 0)
            .unwrap();
        assert_eq!(
            tap.next_deadline(Instant::ZERO),
            Some(Instant::from_secs(2))
        );
        let mut out = Vec::new();
        streams.output(Instant::from_secs(1), &mut tap, &mut out);
        assert!(out.is_empty());
        assert!(streams.wants_output(Instant::from_secs(2), &tap));
        streams.output(Instant::from_secs(2), &mut tap, &mut out);
        let ev = events(&out);
        assert!(matches!(
            ev.as_slice(),
            [Event::CaptureEnd(CaptureEnd {
                reason: EndReason::Seconds,
                ..
            })]
        ));
    }

    #[test]
    fn record_chunks_are_read_or_refused_never_overrun() {
        let mut chunk = Vec::new();
        for f in [1u32, 2, 60, 60, 2, 1] {
            chunk.extend(f.to_le_bytes());
        }
        chunk.truncate(16);
        chunk[8..12].copy_from_slice(&4u32.to_le_bytes());
        chunk[12..16].copy_from_slice(&60u32.to_le_bytes());
        chunk.extend([9, 9, 9, 9]);
        let r = records(&chunk).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].ts_secs, r[0].orig_len, r[0].data),
            (1, 60, &[9u8; 4][..])
        );
        assert_eq!(records(&chunk[..19]), Err(RecordError::Truncated(0)));
        assert_eq!(records(&chunk[..10]), Err(RecordError::Truncated(0)));
        chunk[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(records(&chunk), Err(RecordError::Length(0)));
    }
}
