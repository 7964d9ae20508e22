//! The control session over a byte stream: line framing (64 KiB maximum, `\n` or
//! `\r\n`), the greeting, parsing each line into a typed request, and the state that
//! lives as long as one connection: at most one partial line and at most one document
//! being sent in parts (`transfer`). Both go when the client connects or disconnects.
//! It never executes anything and never panics on input bytes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::protocol::{
    ControlCounters, ErrorBody, ErrorCode, Greeting, Request, RequestError, MAX_LINE_LEN,
};
use crate::transfer::{Transfer, TransferError};

/// One parsed line: a request to execute, or the error to answer with.
pub type LineResult = Result<Request, RequestError>;

/// Framing and parsing state of the control stream.
#[derive(Debug, Default)]
pub struct ControlSession {
    /// The partial line received so far (never more than `MAX_LINE_LEN + 1` bytes).
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line, up to its newline.
    discarding: bool,
    connected: bool,
    counters: ControlCounters,
    /// The document this connection is sending in parts, if any.
    transfer: Transfer,
}

impl ControlSession {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client connected: start afresh and write the greeting line to `out`.
    pub fn connected(&mut self, out: &mut Vec<u8>) {
        self.reset();
        self.connected = true;
        self.counters.connects = self.counters.connects.wrapping_add(1);
        // Serializing the greeting cannot fail; fall back to nothing rather than panic.
        if let Ok(mut line) = serde_json::to_vec(&Greeting::current()) {
            line.push(b'\n');
            out.extend_from_slice(&line);
        }
    }

    /// The client went away: a partial line is discarded.
    pub fn disconnected(&mut self) {
        if !self.partial.is_empty() {
            self.counters.partial_discarded = self.counters.partial_discarded.wrapping_add(1);
        }
        self.reset();
        self.connected = false;
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn counters(&self) -> ControlCounters {
        self.counters
    }

    /// Count an error reply that was produced after parsing (while executing).
    pub fn count_error(&mut self) {
        self.counters.errors = self.counters.errors.wrapping_add(1);
    }

    fn reset(&mut self) {
        self.partial.clear();
        self.discarding = false;
        self.abort_document();
    }

    /// `apply-begin`: an unfinished document is dropped, then `bytes` are reserved.
    pub fn begin_document(&mut self, bytes: u64) -> Result<(), TransferError> {
        self.abort_document();
        self.transfer.begin(bytes)?;
        self.counters.transfers = self.counters.transfers.wrapping_add(1);
        Ok(())
    }

    /// `apply-part`: the bytes received so far.
    pub fn document_part(&mut self, offset: u64, text: &str) -> Result<u64, TransferError> {
        self.transfer.part(offset, text)
    }

    /// `apply-commit`: the whole text; the transfer ends either way.
    pub fn commit_document(&mut self) -> Result<String, TransferError> {
        self.transfer.commit()
    }

    /// Drops the unfinished document, if any (counted); returns the bytes it had.
    pub fn abort_document(&mut self) -> u64 {
        match self.transfer.abort() {
            Some(received) => {
                self.counters.transfers_discarded =
                    self.counters.transfers_discarded.wrapping_add(1);
                received
            }
            None => 0,
        }
    }

    /// Heap bytes the unfinished document holds (what it reserved at `apply-begin`).
    pub fn document_held_bytes(&self) -> u64 {
        self.transfer.held_bytes()
    }

    /// Feed bytes from the stream; returns one entry per complete line (empty lines are
    /// skipped) and one `line_too_long` error per over-long line, as soon as it is seen.
    pub fn input(&mut self, bytes: &[u8]) -> Vec<LineResult> {
        let mut results = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let part = &rest[..i];
                    rest = &rest[i + 1..];
                    if self.discarding {
                        self.discarding = false;
                    } else if self.partial.len() + part.len() > MAX_LINE_LEN + 1 {
                        self.partial.clear();
                        results.push(self.too_long());
                    } else {
                        self.partial.extend_from_slice(part);
                        let line = core::mem::take(&mut self.partial);
                        if let Some(r) = self.finish_line(&line) {
                            results.push(r);
                        }
                        // Keep the allocation for the next line.
                        self.partial = line;
                        self.partial.clear();
                    }
                }
                None => {
                    if !self.discarding {
                        // One byte of slack for a `\r` that may precede the newline.
                        if self.partial.len() + rest.len() > MAX_LINE_LEN + 1 {
                            self.partial.clear();
                            self.discarding = true;
                            results.push(self.too_long());
                        } else {
                            self.partial.extend_from_slice(rest);
                        }
                    }
                    break;
                }
            }
        }
        self.counters.errors = self
            .counters
            .errors
            .wrapping_add(results.iter().filter(|r| r.is_err()).count() as u64);
        self.counters.requests = self
            .counters
            .requests
            .wrapping_add(results.iter().filter(|r| r.is_ok()).count() as u64);
        results
    }

    fn too_long(&mut self) -> LineResult {
        self.counters.lines = self.counters.lines.wrapping_add(1);
        Err(RequestError::new(
            None,
            ErrorBody::new(
                ErrorCode::LineTooLong,
                alloc::format!(
                    "line longer than {MAX_LINE_LEN} bytes; discarded up to its newline"
                ),
            ),
        ))
    }

    fn finish_line(&mut self, line: &[u8]) -> Option<LineResult> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        if line.len() > MAX_LINE_LEN {
            return Some(self.too_long());
        }
        self.counters.lines = self.counters.lines.wrapping_add(1);
        Some(Request::parse_line(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, RequestId};
    use alloc::format;
    use alloc::vec;

    fn codes(results: &[LineResult]) -> Vec<Result<&'static str, ErrorCode>> {
        results
            .iter()
            .map(|r| match r {
                Ok(req) => Ok(req.command.name()),
                Err(e) => Err(e.error.code),
            })
            .collect()
    }

    #[test]
    fn greeting_is_one_exact_line() {
        let mut s = ControlSession::new();
        let mut out = Vec::new();
        s.connected(&mut out);
        let expected = format!(
            "{{\"weft\":{{\"version\":\"{}\",\"protocol\":1}}}}\n",
            crate::protocol::VERSION
        );
        assert_eq!(core::str::from_utf8(&out).unwrap(), expected);
        assert_eq!(s.counters().connects, 1);
        assert!(s.is_connected());
    }

    #[test]
    fn lines_split_anywhere_give_the_same_requests() {
        let stream = b"{\"id\":1,\"cmd\":\"ping\"}\r\n\n   \r\n{\"id\":\"b\",\"cmd\":\"status\"}\n{oops\n{\"id\":3,\"cmd\":\"config\"}\n";
        let expected = vec![
            Ok("ping"),
            Ok("status"),
            Err(ErrorCode::ParseError),
            Ok("config"),
        ];
        for split in 0..=stream.len() {
            let mut s = ControlSession::new();
            let mut got = s.input(&stream[..split]);
            got.extend(s.input(&stream[split..]));
            assert_eq!(codes(&got), expected, "split at {split}");
            assert_eq!(got[1].as_ref().unwrap().id, RequestId::from("b"));
        }
        // Byte by byte.
        let mut s = ControlSession::new();
        let got: Vec<LineResult> = stream.iter().flat_map(|b| s.input(&[*b])).collect();
        assert_eq!(codes(&got), expected);
        let c = s.counters();
        assert_eq!((c.lines, c.requests, c.errors), (4, 3, 1));
    }

    #[test]
    fn invalid_utf8_is_a_parse_error() {
        let mut s = ControlSession::new();
        let got = s.input(b"{\"id\":1,\"cmd\":\"pi\xffng\"}\n");
        assert_eq!(codes(&got), vec![Err(ErrorCode::ParseError)]);
        assert_eq!(got[0].as_ref().unwrap_err().id, None);
    }

    #[test]
    fn over_long_line_gets_one_error_and_is_discarded_to_its_newline() {
        let mut s = ControlSession::new();
        let chunk = vec![b'x'; 10_000];
        let mut got = Vec::new();
        for _ in 0..20 {
            got.extend(s.input(&chunk));
        }
        // Reported as soon as it is known, once.
        assert_eq!(codes(&got), vec![Err(ErrorCode::LineTooLong)]);
        got.extend(s.input(b"still the long line\n{\"id\":2,\"cmd\":\"ping\"}\n"));
        assert_eq!(codes(&got), vec![Err(ErrorCode::LineTooLong), Ok("ping")]);
    }

    #[test]
    fn line_length_limit_is_exact() {
        // A request padded with spaces to exactly MAX_LINE_LEN bytes is accepted, with `\n`
        // or `\r\n`; one byte more is refused.
        let request = b"{\"id\":1,\"cmd\":\"ping\"}";
        for (extra, ending, expect) in [
            (0usize, &b"\n"[..], Ok("ping")),
            (0, b"\r\n", Ok("ping")),
            (1, b"\n", Err(ErrorCode::LineTooLong)),
            (1, b"\r\n", Err(ErrorCode::LineTooLong)),
        ] {
            let mut line = request.to_vec();
            line.resize(MAX_LINE_LEN + extra, b' ');
            line.extend_from_slice(ending);
            let mut s = ControlSession::new();
            assert_eq!(
                codes(&s.input(&line)),
                vec![expect],
                "extra {extra} ending {ending:?}"
            );
            // The session is in a clean state afterwards.
            assert_eq!(
                codes(&s.input(b"{\"id\":9,\"cmd\":\"ping\"}\n")),
                vec![Ok("ping")]
            );
        }
    }

    #[test]
    fn disconnect_mid_line_discards_the_partial_line() {
        let mut s = ControlSession::new();
        let mut out = Vec::new();
        s.connected(&mut out);
        assert!(s.input(b"{\"id\":1,\"cm").is_empty());
        s.disconnected();
        assert!(!s.is_connected());
        assert_eq!(s.counters().partial_discarded, 1);
        s.connected(&mut out);
        let got = s.input(b"d\":\"ping\"}\n{\"id\":2,\"cmd\":\"ping\"}\n");
        assert_eq!(codes(&got), vec![Err(ErrorCode::ParseError), Ok("ping")]);
        // Also while skipping an over-long line: the next connection starts clean.
        s.input(&vec![b'x'; MAX_LINE_LEN + 10]);
        s.disconnected();
        s.connected(&mut out);
        assert_eq!(
            codes(&s.input(b"{\"id\":3,\"cmd\":\"ping\"}\n")),
            vec![Ok("ping")]
        );
    }

    #[test]
    fn parsed_requests_are_typed() {
        let mut s = ControlSession::new();
        let got = s.input(b"{\"id\":7,\"cmd\":\"apply\",\"args\":{\"uplink\":{\"address\":\"192.0.2.2/24\"},\"link\":{\"address\":\"10.81.0.1/16\"}}}\n");
        let req = got[0].as_ref().unwrap();
        assert_eq!(req.id, RequestId::from(7));
        let Command::Apply(config) = &req.command else {
            panic!("not apply: {req:?}");
        };
        assert_eq!(config.link.address.to_string(), "10.81.0.1/16");
    }

    #[test]
    fn a_disconnect_or_a_new_connection_drops_an_unfinished_document() {
        let mut s = ControlSession::new();
        let mut out = Vec::new();
        s.connected(&mut out);
        s.begin_document(10).unwrap();
        assert_eq!(s.document_part(0, "{\"a\":"), Ok(5));
        assert_eq!(s.document_held_bytes(), 10);
        s.disconnected();
        assert_eq!(s.document_held_bytes(), 0);
        assert_eq!(s.document_part(5, "1}"), Err(TransferError::NotBegun));
        let c = s.counters();
        assert_eq!((c.transfers, c.transfers_discarded), (1, 1));
        // A connect without a disconnect seen (a transport that missed it) too.
        s.connected(&mut out);
        s.begin_document(2).unwrap();
        s.connected(&mut out);
        assert_eq!(s.commit_document(), Err(TransferError::NotBegun));
        // A second begin drops the first; a finished one is not counted as dropped.
        s.begin_document(2).unwrap();
        s.begin_document(2).unwrap();
        s.document_part(0, "{}").unwrap();
        assert_eq!(s.commit_document().as_deref(), Ok("{}"));
        assert_eq!(s.abort_document(), 0);
        let c = s.counters();
        assert_eq!((c.transfers, c.transfers_discarded), (4, 3));
    }

    use alloc::string::ToString;
}
