//! The control session over a byte stream: line framing (64 KiB maximum, `\n` or
//! `\r\n`), the greeting, and parsing each line into a typed request. It holds at most
//! one partial line; it never executes anything and never panics on input bytes.

use alloc::vec::Vec;

use crate::protocol::{
    ControlCounters, ErrorBody, ErrorCode, Greeting, Request, RequestError, MAX_LINE_LEN,
};

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
