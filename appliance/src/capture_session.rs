//! A capture's appliance side (`Streams`): the captures of the control connection,
//! started on the netstack's tap, and their records moved from there to the stream
//! as event lines while the client's window has room. It belongs to one connection:
//! a client that goes away (or a new one) ends its captures. It never waits: a slow
//! client leaves frames in the tap's buffer, and what does not fit there is counted
//! as dropped. The wire types are `capture`'s.

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
