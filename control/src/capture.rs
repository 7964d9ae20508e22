//! The host end of a capture: starts it, writes its frames as they come as a pcap or
//! pcapng stream (pcapng names the interface), acknowledges each chunk so the next
//! ones come, and stops it when asked. Everything about the stream's shape is
//! `weft_appliance::capture`'s; this module owns the file formats and the loop. A
//! gap or a malformed chunk ends the capture with an error, never a panic.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, PcapError};
use serde_json::json;
use weft_appliance::capture::{
    records, CaptureEnd, CaptureStart, CaptureStarted, Event, Record, LINKTYPE_ETHERNET,
};

use crate::client::{Client, ControlError};

/// The file format written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// libpcap's classic format (microsecond timestamps, LINKTYPE_ETHERNET).
    Pcap,
    /// pcapng: one interface, named after the tap point.
    Pcapng,
}

/// Writes the records of a capture in `format` (the file formats are `pcap-file`'s).
pub struct Writer<W: Write> {
    inner: Inner<W>,
    out: Shared<W>,
}

enum Inner<W: Write> {
    Pcap(PcapWriter<Shared<W>>),
    Pcapng(PcapNgWriter<Shared<W>>),
}

/// The output, shared between the format writer and [`Writer::flush`] (a live capture
/// is flushed after each chunk; `pcap-file`'s pcap writer does not hand its output back).
struct Shared<W>(Rc<RefCell<W>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

fn io_error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<W: Write> Writer<W> {
    /// Writes the file header for the capture `started` describes (pcapng: a section
    /// and one interface named after the tap point).
    pub fn new(out: W, format: Format, started: &CaptureStarted) -> io::Result<Writer<W>> {
        let shared = Rc::new(RefCell::new(out));
        let datalink = DataLink::from(started.link_type);
        let inner = match format {
            Format::Pcap => {
                let header = PcapHeader {
                    snaplen: started.snaplen,
                    datalink,
                    endianness: Endianness::Little,
                    ..PcapHeader::default()
                };
                Inner::Pcap(
                    PcapWriter::with_header(Shared(shared.clone()), header).map_err(io_error)?,
                )
            }
            Format::Pcapng => {
                let mut w =
                    PcapNgWriter::with_endianness(Shared(shared.clone()), Endianness::Little)
                        .map_err(io_error)?;
                w.write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: datalink,
                    snaplen: started.snaplen,
                    // pcap-file writes packet timestamps in nanoseconds: say so
                    // (if_tsresol 9), or readers take them for microseconds.
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Borrowed(started.iface.as_str())),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .map_err(io_error)?;
                Inner::Pcapng(w)
            }
        };
        Ok(Writer {
            inner,
            out: Shared(shared),
        })
    }

    /// Writes one record.
    pub fn record(&mut self, r: &Record<'_>) -> io::Result<()> {
        let timestamp = Duration::from_secs(u64::from(r.ts_secs))
            + Duration::from_micros(u64::from(r.ts_micros));
        match &mut self.inner {
            Inner::Pcap(w) => w
                .write_packet(&PcapPacket::new(timestamp, r.orig_len, r.data))
                .map(|_| ())
                .map_err(io_error),
            Inner::Pcapng(w) => w
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: r.orig_len,
                    data: Cow::Borrowed(r.data),
                    options: vec![],
                })
                .map(|_| ())
                .map_err(io_error),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why a capture stream failed.
#[derive(Debug)]
pub enum CaptureFailure {
    Control(ControlError),
    /// Writing the file (or the pipe) failed: the reader went away.
    Write(io::Error),
    /// The appliance's stream did not read as one capture.
    Stream(String),
}

impl std::fmt::Display for CaptureFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureFailure::Control(e) => write!(f, "{e}"),
            CaptureFailure::Write(e) => write!(f, "writing the capture: {e}"),
            CaptureFailure::Stream(s) => write!(f, "capture stream: {s}"),
        }
    }
}

impl std::error::Error for CaptureFailure {}

impl From<ControlError> for CaptureFailure {
    fn from(e: ControlError) -> Self {
        CaptureFailure::Control(e)
    }
}

/// Starts a capture on `client` (refusals come back as `ControlError::Remote`).
pub fn start(client: &mut Client, args: &CaptureStart) -> Result<CaptureStarted, ControlError> {
    let v = serde_json::to_value(args).map_err(|e| ControlError::BadReply(e.to_string()))?;
    client.request("capture-start", Some(v))
}

/// Streams the capture `started` into `writer` until it ends, or until `stop` is set
/// (then it is stopped, and what had arrived is written). Returns how it ended.
pub fn stream<W: Write>(
    client: &mut Client,
    started: &CaptureStarted,
    writer: &mut Writer<W>,
    stop: &AtomicBool,
) -> Result<CaptureEnd, CaptureFailure> {
    let id = started.capture;
    let mut received = 0u64;
    let mut stopped: Option<CaptureEnd> = None;
    loop {
        if stopped.is_none() && stop.load(Ordering::SeqCst) {
            let end: CaptureEnd = client.request("capture-stop", Some(json!({ "capture": id })))?;
            stopped = Some(end);
        }
        let event = match client.next_event(Duration::from_millis(100))? {
            Some(e) => e,
            None if stopped.is_some() => break,
            None => continue,
        };
        match event {
            Event::Capture(d) if d.capture == id => {
                if d.offset != received {
                    return Err(CaptureFailure::Stream(format!(
                        "a chunk at byte {} after {received} bytes",
                        d.offset
                    )));
                }
                let bytes = d
                    .bytes()
                    .map_err(|e| CaptureFailure::Stream(e.to_string()))?;
                let recs = records(&bytes).map_err(|e| CaptureFailure::Stream(e.to_string()))?;
                for r in &recs {
                    writer.record(r).map_err(CaptureFailure::Write)?;
                }
                writer.flush().map_err(CaptureFailure::Write)?;
                received += bytes.len() as u64;
                if stopped.is_none() {
                    // Acknowledged without waiting: the window moves on while the next
                    // chunk is written.
                    client.send_request_only(
                        "capture-ack",
                        Some(json!({"capture": id, "received": received})),
                    )?;
                }
            }
            Event::CaptureEnd(end) if end.capture == id => return Ok(end),
            // Another capture's (a shared connection): not ours to write.
            _ => {}
        }
    }
    stopped.ok_or_else(|| CaptureFailure::Stream("stopped without an end".into()))
}

/// The link type every capture has (Ethernet).
pub const LINK_TYPE: u32 = LINKTYPE_ETHERNET;

#[cfg(test)]
mod tests {
    use super::*;

    fn started(iface: &str) -> CaptureStarted {
        CaptureStarted {
            capture: 1,
            iface: iface.into(),
            link_type: LINK_TYPE,
            snaplen: 65535,
            buffer_bytes: 0,
            window_bytes: 0,
        }
    }

    /// What a writer wrote, as bytes.
    fn written(format: Format, iface: &str, rec: &Record<'_>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), format, &started(iface)).unwrap();
        w.record(rec).unwrap();
        let out = w.out.0.clone();
        drop(w);
        Rc::try_unwrap(out).ok().unwrap().into_inner()
    }

    #[test]
    fn pcap_and_pcapng_read_back_with_the_record_and_the_interface_name() {
        use pcap_file::pcap::PcapReader;
        use pcap_file::pcapng::{Block, PcapNgReader};
        let rec = Record {
            ts_secs: 2,
            ts_micros: 5,
            orig_len: 60,
            data: &[0xaa; 5],
        };
        let pcap = written(Format::Pcap, "uplink", &rec);
        assert_eq!(pcap.len(), 24 + 16 + 5);
        let mut r = PcapReader::new(&pcap[..]).unwrap();
        assert_eq!(r.header().datalink, DataLink::ETHERNET);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.timestamp, Duration::new(2, 5_000));
        assert_eq!((p.orig_len, &p.data[..]), (60, &[0xaa; 5][..]));
        assert!(r.next_packet().is_none());

        let ng = written(Format::Pcapng, "overlay:grid", &rec);
        let mut r = PcapNgReader::new(&ng[..]).unwrap();
        let Block::InterfaceDescription(idb) = r.next_block().unwrap().unwrap() else {
            panic!("no interface block first");
        };
        assert!(idb
            .options
            .contains(&InterfaceDescriptionOption::IfName("overlay:grid".into())));
        assert!(idb
            .options
            .contains(&InterfaceDescriptionOption::IfTsResol(9)));
        let Block::EnhancedPacket(epb) = r.next_block().unwrap().unwrap() else {
            panic!("no packet block");
        };
        assert_eq!(epb.timestamp, Duration::new(2, 5_000));
        assert_eq!((epb.original_len, &epb.data[..]), (60, &[0xaa; 5][..]));
        assert!(r.next_block().is_none());
    }
}
