//! A capture's appliance side (`Streams`): the captures of the control connection,
//! started on the netstack's tap, and their records moved from there to the stream
//! as event lines while the client's window has room. It belongs to one connection:
//! a client that goes away (or a new one) ends its captures. It never waits: a slow
//! client leaves frames in the tap's buffer, and what does not fit there is counted
//! as dropped. The wire types are `capture`'s.
//!
//! The output is the capture's costly part (copying records out, base64, the event
//! lines, the control channel's writes), and it runs on the datapath's CPU. So it
//! gets a bounded share of the time: the platform reports what each output took
//! (`charge`), and output runs only while that stays under `OUTPUT_SHARE_PERCENT` of
//! the time that passed. Under load the buffer then fills and the frames past it are
//! only counted, which costs the datapath a counter increment each.

use alloc::vec::Vec;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use smoltcp::time::{Duration, Instant};
use weft_netstack::pipeline::capture::{
    CaptureError, CaptureSpec, CaptureTap, TapPoint, MAX_SNAPLEN,
};
use weft_netstack::NicId;

use crate::capture::*;
use crate::config::Config;
use crate::protocol::{ErrorBody, ErrorCode};

/// One capture as the stream sees it.
#[derive(Debug, Clone)]
struct Stream {
    id: u32,
    /// Record bytes sent, and acknowledged by the client.
    sent: u64,
    acked: u64,
    frames_sent: u64,
}

/// Percent of the time that passes which the captures' output may take, as measured
/// by the platform (`Streams::charge`).
pub const OUTPUT_SHARE_PERCENT: i64 = 3;
/// The most output time saved up while there was nothing to send, in microseconds:
/// after a quiet spell, a burst of this much runs at once.
const MAX_CREDIT_MICROS: i64 = 2_000;
/// Record bytes one `output` moves at most: the slice of work done between two turns
/// of the datapath.
const TURN_BYTES: usize = 16 * 1024;

/// The captures of the connection: what has been sent of each and what the client
/// acknowledged, and the time their output may still take.
#[derive(Debug, Default)]
pub struct Streams {
    streams: Vec<Stream>,
    /// Output time available, in hundredths of a microsecond (negative: owed); the
    /// unit makes each microsecond that passes earn a whole `OUTPUT_SHARE_PERCENT`.
    credit: i64,
    /// When `credit` was last brought up to date.
    credit_at: Option<Instant>,
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
        if self.streams.is_empty() {
            self.credit = MAX_CREDIT_MICROS * 100;
            self.credit_at = Some(now);
        }
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

    /// Captures running.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// The output time the platform measured for what `output` gave (including its
    /// writing to the control channel): taken from the captures' share.
    pub fn charge(&mut self, took: Duration) {
        if !self.streams.is_empty() {
            let took = i64::try_from(took.total_micros()).unwrap_or(i64::MAX);
            self.credit = self.credit.saturating_sub(took.saturating_mul(100));
        }
    }

    /// The share of the time from the last update to `now`, added to the credit.
    fn accrue(&mut self, now: Instant) {
        self.credit = self.credit_at(now);
        self.credit_at = Some(now);
    }

    /// The credit as it stands at `now`.
    fn credit_at(&self, now: Instant) -> i64 {
        let at = self.credit_at.unwrap_or(now);
        let passed = if now > at {
            i64::try_from((now - at).total_micros()).unwrap_or(i64::MAX)
        } else {
            0
        };
        self.credit
            .saturating_add(passed.saturating_mul(OUTPUT_SHARE_PERCENT))
            .min(MAX_CREDIT_MICROS * 100)
    }

    /// The event lines due at `now`: chunks while each window has room and the
    /// captures' share of the time allows (`TURN_BYTES` at most), and the end of each
    /// capture that takes no more frames and has sent all it had.
    pub fn output(&mut self, now: Instant, tap: &mut CaptureTap, out: &mut Vec<u8>) {
        self.accrue(now);
        let mut budget = if self.credit >= 0 { TURN_BYTES } else { 0 };
        let mut ended = Vec::new();
        let mut chunk = Vec::new();
        for s in &mut self.streams {
            if tap.spec(s.id).is_none() {
                ended.push((s.id, EndReason::Gone));
                continue;
            }
            while budget > 0 {
                let room = WINDOW_BYTES.saturating_sub(s.sent - s.acked) as usize;
                // A record longer than a chunk goes alone; every record fits a window.
                if tap.head_len(s.id).is_none_or(|len| len > room) {
                    break;
                }
                chunk.clear();
                let frames = tap.drain(s.id, room.min(CHUNK_BYTES).min(budget), &mut chunk);
                budget = budget.saturating_sub(chunk.len());
                let head = alloc::format!(
                    "{{\"event\":\"capture\",\"capture\":{},\"offset\":{},\"frames\":{frames},\"data\":\"",
                    s.id,
                    s.sent
                );
                out.extend_from_slice(head.as_bytes());
                let at = out.len();
                out.resize(at + base64::encoded_len(chunk.len(), true).unwrap_or(0), 0);
                let written = BASE64.encode_slice(&chunk, &mut out[at..]).unwrap_or(0);
                out.truncate(at + written);
                out.extend_from_slice(b"\"}\n");
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
    /// with records (and the share of time to send it), or a capture to end.
    pub fn wants_output(&self, now: Instant, tap: &CaptureTap) -> bool {
        self.next_output(now, tap).is_some_and(|t| t <= now)
    }

    /// When an event is due without new frames: at once for a capture to end; for a
    /// window with room over a buffer with records, once the captures' share of the
    /// time allows (`None`: nothing is due).
    pub fn next_output(&self, now: Instant, tap: &CaptureTap) -> Option<Instant> {
        let mut data = false;
        for s in &self.streams {
            match tap.head_len(s.id) {
                Some(len) => data |= len as u64 <= WINDOW_BYTES - (s.sent - s.acked),
                None if !tap.is_taking(s.id, now) => return Some(now),
                None => {}
            }
        }
        if !data {
            return None;
        }
        let credit = self.credit_at(now);
        if credit >= 0 {
            return Some(now);
        }
        let wait = credit.unsigned_abs().div_ceil(OUTPUT_SHARE_PERCENT as u64);
        Some(now + Duration::from_micros(wait))
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
            assert_eq!(args.check().unwrap_err().field, field);
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
        // Output in turns until the window is full (no time is charged: no share
        // holds it back).
        let mut out = Vec::new();
        loop {
            let before = out.len();
            streams.output(now, &mut tap, &mut out);
            if out.len() == before {
                break;
            }
        }
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
    fn output_keeps_to_its_share_of_the_time() {
        let mut tap = CaptureTap::default();
        let mut streams = Streams::default();
        let t = |ms: i64| Instant::from_millis(ms);
        let id = streams
            .start(&start("uplink"), None, &mut tap, t(0), 0)
            .unwrap()
            .capture;
        let point = TapPoint::Nic(NicId::Uplink);
        for _ in 0..100 {
            tap.offer(point, t(0), &[0xab; 1000]);
        }
        let sent = |out: &[u8]| -> usize {
            events(out)
                .iter()
                .map(|e| match e {
                    Event::Capture(d) => d.bytes().unwrap().len(),
                    Event::CaptureEnd(_) => 0,
                })
                .sum()
        };
        // One turn moves a slice of the buffer, not all of it.
        let mut out = Vec::new();
        streams.output(t(0), &mut tap, &mut out);
        let first = sent(&out);
        assert!(first > 0 && first <= TURN_BYTES + 1016, "{first}");
        // That turn took 30 ms: at 3 % the captures are owed 1 s less 2 ms saved up.
        streams.charge(Duration::from_millis(30));
        let due = streams.next_output(t(0), &tap).unwrap();
        let owed = (30_000 - MAX_CREDIT_MICROS) * 100;
        assert_eq!(
            due,
            Instant::from_micros((owed + OUTPUT_SHARE_PERCENT - 1) / OUTPUT_SHARE_PERCENT)
        );
        // Earned a microsecond at a time, the share adds up the same.
        let mut probe = Streams {
            streams: streams.streams.clone(),
            credit: -owed,
            credit_at: Some(t(0)),
        };
        for us in 1..=1000 {
            probe.accrue(Instant::from_micros(us));
        }
        assert_eq!(probe.credit, -owed + 1000 * OUTPUT_SHARE_PERCENT);
        assert!(!streams.wants_output(t(500), &tap));
        out.clear();
        streams.output(t(500), &mut tap, &mut out);
        assert!(out.is_empty(), "nothing before the share allows");
        assert!(streams.wants_output(due, &tap));
        streams.output(due, &mut tap, &mut out);
        assert!(sent(&out) > 0);
        // Frames that found the buffer full were counted, none lost from the count.
        tap.offer(point, t(1000), &[0xcd; 1000]);
        let c = tap.counters(id).unwrap();
        assert_eq!(c.seen, c.buffered + c.dropped);
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
