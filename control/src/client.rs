//! The one control-socket client: connects to the appliance's unix socket, checks the
//! greeting, sends one JSON request per line and takes its reply: the one with its `id`,
//! or an error with `"id": null` in its place (every non-empty line gets exactly one
//! reply, in order, so the client counts the lines it sent). A document too long for
//! one `apply` line goes in parts (`apply-begin`, `apply-part`s, `apply-commit`). The
//! wire types are `weft_appliance::protocol`'s, so the protocol has one definition. It
//! owns the host side of the line framing; it never renders anything (see `status`).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use weft_appliance::protocol::{
    self, Applied, ErrorBody, ErrorCode, Greeting, Outcome, Pong, RequestId, Status,
};
use weft_appliance::Config;

const GREETING: &str = "the greeting";

/// Replies longer than this are refused (a status reply is a few hundred bytes).
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// The most text one `apply-part` line carries, escaped as a JSON string: the line,
/// with its id and the other members, stays under the appliance's line limit.
pub const PART_BYTES: usize = protocol::MAX_LINE_LEN - 1024;

/// `apply-part` lines sent before the client waits for the oldest one's reply: the
/// replies never pile up unread, and a refused part stops the rest early.
const PARTS_IN_FLIGHT: usize = 8;

/// Why a control exchange failed.
#[derive(Debug)]
pub enum ControlError {
    /// Could not connect before the deadline.
    Connect {
        path: PathBuf,
        source: io::Error,
    },
    /// Nothing (or no whole line) arrived before the deadline.
    Timeout {
        waiting_for: &'static str,
    },
    /// The appliance closed the stream.
    Closed {
        waiting_for: &'static str,
    },
    /// The caller's liveness check failed while waiting (e.g. QEMU exited).
    Gone {
        waiting_for: &'static str,
    },
    Io(io::Error),
    /// The first line was not a weft greeting of the protocol we speak.
    BadGreeting(String),
    /// A line that is not a reply, or a result of the wrong shape.
    BadReply(String),
    /// The appliance answered with an error object.
    Remote(ErrorBody),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())
            }
            ControlError::Timeout { waiting_for } => {
                write!(f, "timed out waiting for {waiting_for}")?;
                if *waiting_for == GREETING {
                    // QEMU's socket chardev serves one client; others wait in its backlog.
                    write!(
                        f,
                        " (is another client connected? the appliance serves one at a time)"
                    )?;
                }
                Ok(())
            }
            ControlError::Closed { waiting_for } => {
                write!(
                    f,
                    "the appliance closed the control stream while waiting for {waiting_for}"
                )
            }
            ControlError::Gone { waiting_for } => {
                write!(f, "the appliance went away while waiting for {waiting_for}")
            }
            ControlError::Io(e) => write!(f, "control socket: {e}"),
            ControlError::BadGreeting(s) => write!(f, "not a weft greeting: {s}"),
            ControlError::BadReply(s) => write!(f, "malformed reply: {s}"),
            ControlError::Remote(e) => write!(f, "appliance error {}", remote_line(e)),
        }
    }
}

/// The wire name of an error code (`invalid_config`).
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// `code [field]: message`
pub fn remote_line(e: &ErrorBody) -> String {
    let code = code_name(e.code);
    match &e.field {
        Some(f) => format!("{code} [{f}]: {}", e.message),
        None => format!("{code}: {}", e.message),
    }
}

impl std::error::Error for ControlError {}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        ControlError::Io(e)
    }
}

/// Parses and checks a greeting line.
pub fn parse_greeting(line: &str) -> Result<Greeting, ControlError> {
    let g: Greeting = serde_json::from_str(line)
        .map_err(|e| ControlError::BadGreeting(format!("{e}: {line}")))?;
    if g.weft.protocol != protocol::PROTOCOL_VERSION {
        return Err(ControlError::BadGreeting(format!(
            "protocol {}, this tool speaks {}",
            g.weft.protocol,
            protocol::PROTOCOL_VERSION
        )));
    }
    Ok(g)
}

/// One reply line: the echoed id and either a result or an error, plus the raw line.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub id: Option<RequestId>,
    pub outcome: Result<Value, ErrorBody>,
    /// The line as received (for `--json`).
    pub raw: String,
}

impl Reply {
    pub fn parse(line: &str) -> Result<Reply, ControlError> {
        let r: protocol::Reply = serde_json::from_str(line)
            .map_err(|e| ControlError::BadReply(format!("{e}: {line}")))?;
        Ok(Reply {
            id: r.id,
            outcome: match r.outcome {
                Outcome::Result(v) => Ok(v),
                Outcome::Error(e) => Err(e),
            },
            raw: line.to_string(),
        })
    }
}

/// A connected control session. QEMU serves one client at a time: drop it to let the
/// next one in.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    greeting: Greeting,
    timeout: Duration,
    /// Lines skipped while waiting for a reply (e.g. errors for garbage we sent).
    pub skipped_lines: u64,
    /// The lines sent so far that get a reply, and the replies read so far.
    lines_sent: u64,
    replies_read: u64,
    /// The line being sent (by `send_raw` without its newline yet).
    open_line: OpenLine,
}

/// What the appliance will make of the line being sent: it answers a line that has
/// anything but whitespace, or that is over its length limit.
#[derive(Debug, Default, Clone, Copy)]
struct OpenLine {
    len: usize,
    content: bool,
}

/// A request sent and not yet answered: its id and its place among the replies.
#[derive(Debug, Clone)]
struct Pending {
    id: RequestId,
    position: u64,
}

impl Client {
    /// Connects (retrying while the socket is absent or refuses, up to `timeout`)
    /// and reads the greeting (within the same `timeout`). `timeout` is also the
    /// per-request reply timeout afterwards.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ControlError> {
        Client::connect_while(path, timeout, &mut || true)
    }

    /// [`Client::connect`], giving up early with [`ControlError::Gone`] as soon as
    /// `alive` returns false (checked at least every 100 ms while waiting).
    pub fn connect_while(
        path: &Path,
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Client, ControlError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            if !alive() {
                return Err(ControlError::Gone {
                    waiting_for: "the control socket",
                });
            }
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(ControlError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        let mut c = Client {
            stream,
            buf: Vec::new(),
            next_id: 1,
            greeting: Greeting::current(),
            timeout,
            skipped_lines: 0,
            lines_sent: 0,
            replies_read: 0,
            open_line: OpenLine::default(),
        };
        let line = c.read_line_checked(deadline, GREETING, alive)?;
        c.greeting = parse_greeting(&line)?;
        Ok(c)
    }

    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `{"id":N,"cmd":cmd[,"args":args]}` and waits for its reply: the one with
    /// id N, or an error with a null id in its place (`line_too_long`, `parse_error`).
    /// Replies to earlier lines are skipped (counted in `skipped_lines`).
    pub fn call(&mut self, cmd: &str, args: Option<Value>) -> Result<Reply, ControlError> {
        let pending = self.send_request(cmd, args)?;
        let deadline = Instant::now() + self.timeout;
        self.wait_reply(&pending, deadline)
    }

    fn send_request(&mut self, cmd: &str, args: Option<Value>) -> Result<Pending, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"id": id, "cmd": cmd});
        if let Some(a) = args {
            req["args"] = a;
        }
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        self.send_line(id, &line)
    }

    /// Sends one whole request line with id `id`.
    fn send_line(&mut self, id: u64, line: &[u8]) -> Result<Pending, ControlError> {
        self.send_raw(line)?;
        Ok(Pending {
            id: RequestId::from(id),
            position: self.lines_sent,
        })
    }

    fn wait_reply(&mut self, pending: &Pending, deadline: Instant) -> Result<Reply, ControlError> {
        loop {
            let l = self.read_line_until(deadline, "a reply")?;
            self.replies_read += 1;
            let reply = Reply::parse(&l)?;
            if reply.id.as_ref() == Some(&pending.id) {
                // Count from here on even if a line we sent was counted wrongly.
                self.replies_read = self.replies_read.max(pending.position);
                return Ok(reply);
            }
            if reply.id.is_none() && self.replies_read == pending.position {
                return Ok(reply);
            }
            self.skipped_lines += 1;
        }
    }
    /// [`Client::call`] with an error reply as `Err(ControlError::Remote)` and the
    /// result read as `T`.
    pub fn request<T: DeserializeOwned>(
        &mut self,
        cmd: &str,
        args: Option<Value>,
    ) -> Result<T, ControlError> {
        let v = self
            .call(cmd, args)?
            .outcome
            .map_err(ControlError::Remote)?;
        serde_json::from_value(v).map_err(|e| ControlError::BadReply(format!("{cmd} result: {e}")))
    }

    pub fn status(&mut self) -> Result<Status, ControlError> {
        self.request("status", None)
    }

    /// The running configuration (None before the first apply).
    pub fn config(&mut self) -> Result<Option<Config>, ControlError> {
        self.request("config", None)
    }

    pub fn ping(&mut self) -> Result<Pong, ControlError> {
        self.request("ping", None)
    }

    /// Applies a checked document as its author wrote it.
    pub fn apply(&mut self, doc: &crate::document::Document) -> Result<Applied, ControlError> {
        self.apply_value(doc.json())
    }

    /// Applies a document as it is, valid or not (tests send broken ones), however
    /// large: see [`Client::apply_reply`].
    pub fn apply_value(&mut self, doc: &Value) -> Result<Applied, ControlError> {
        let reply = self.apply_reply(doc)?;
        let v = reply.outcome.map_err(ControlError::Remote)?;
        serde_json::from_value(v).map_err(|e| ControlError::BadReply(format!("apply result: {e}")))
    }

    /// Applies a document, valid or not, and returns the reply that decides it: one
    /// `apply` line when it fits the appliance's line limit, else the document's text in
    /// parts (`apply-begin`, `apply-part`s, `apply-commit`), which the appliance applies
    /// as one `apply`, all or nothing; a refused step ends it (its reply is returned).
    pub fn apply_reply(&mut self, doc: &Value) -> Result<Reply, ControlError> {
        let text = doc.to_string();
        let id = self.next_id;
        let line = format!("{{\"id\":{id},\"cmd\":\"apply\",\"args\":{text}}}\n");
        if line.len() <= protocol::MAX_LINE_LEN + 1 {
            self.next_id += 1;
            let pending = self.send_line(id, line.as_bytes())?;
            let deadline = Instant::now() + self.timeout;
            return self.wait_reply(&pending, deadline);
        }
        drop(line);
        self.apply_in_parts(&text, PART_BYTES)
    }

    /// Applies the document `text` in parts of at most `part_bytes` bytes each once
    /// escaped as a JSON string, whatever its size; returns the reply that decides it
    /// (the first refusal, or `apply-commit`'s). Waits for `apply-commit` longer than
    /// for other replies: applying a large document takes a while.
    pub fn apply_in_parts(&mut self, text: &str, part_bytes: usize) -> Result<Reply, ControlError> {
        let begin = self.call("apply-begin", Some(json!({"bytes": text.len()})))?;
        if begin.outcome.is_err() {
            return Ok(begin);
        }
        let mut in_flight: VecDeque<Pending> = VecDeque::new();
        let mut refused: Option<Reply> = None;
        let mut offset = 0;
        for part in split_escaped(text, part_bytes.max(8)) {
            if in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(p) = in_flight.pop_front() {
                    let r = self.wait_reply(&p, Instant::now() + self.timeout)?;
                    if r.outcome.is_err() {
                        refused = Some(r);
                        break;
                    }
                }
            }
            let args = json!({"offset": offset, "text": part});
            in_flight.push_back(self.send_request("apply-part", Some(args))?);
            offset += part.len();
        }
        while let Some(p) = in_flight.pop_front() {
            let r = self.wait_reply(&p, Instant::now() + self.timeout)?;
            if r.outcome.is_err() && refused.is_none() {
                refused = Some(r);
            }
        }
        if let Some(r) = refused {
            // Frees what the appliance holds for the document at once.
            self.call("apply-abort", None)?;
            return Ok(r);
        }
        let pending = self.send_request("apply-commit", None)?;
        let deadline = Instant::now() + commit_timeout(self.timeout, text.len());
        self.wait_reply(&pending, deadline)
    }

    /// Writes bytes as they are (tests use it for garbage and partial lines).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream.write_all(bytes)?;
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.open_line);
                if line.content || line.len > protocol::MAX_LINE_LEN + 1 {
                    self.lines_sent += 1;
                }
            } else {
                self.open_line.len += 1;
                self.open_line.content |= !b.is_ascii_whitespace();
            }
        }
        Ok(())
    }

    /// Reads the next whole line (without its newline) within the client timeout.
    pub fn read_line(&mut self) -> Result<String, ControlError> {
        let deadline = Instant::now() + self.timeout;
        self.read_line_until(deadline, "a line")
    }

    fn read_line_until(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
    ) -> Result<String, ControlError> {
        self.read_line_checked(deadline, waiting_for, &mut || true)
    }

    fn read_line_checked(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<String, ControlError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return String::from_utf8(line)
                    .map_err(|_| ControlError::BadReply("reply is not UTF-8".into()));
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(ControlError::BadReply(format!(
                    "line longer than {MAX_REPLY_BYTES} bytes"
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::Timeout { waiting_for });
            }
            if !alive() {
                return Err(ControlError::Gone { waiting_for });
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            self.stream.set_read_timeout(Some(slice))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ControlError::Closed { waiting_for }),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ControlError::Io(e)),
            }
        }
    }
}

/// How long `apply-commit` may take: the usual reply time-out, and as long again for
/// every MiB of the document (parsing and applying it is linear in its size).
fn commit_timeout(timeout: Duration, bytes: usize) -> Duration {
    let mib = u32::try_from(bytes >> 20).unwrap_or(u32::MAX);
    timeout.saturating_mul(mib.saturating_add(1))
}

/// The bytes a character takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `text` cut at character boundaries into pieces of at most `max` bytes once escaped.
fn split_escaped(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, c) in text.char_indices() {
        let n = escaped_len(c);
        if size + n > max && i > start {
            parts.push(&text[start..i]);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimAppliance;
    use std::os::unix::net::UnixListener;

    const T: Duration = Duration::from_secs(10);

    /// A scratch directory removed on drop.
    struct Tmp(PathBuf);

    impl std::ops::Deref for Tmp {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("weft-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn demo_config() -> crate::document::Document {
        crate::document::default_document()
    }

    #[test]
    fn greeting_requests_and_ids_against_the_real_appliance() {
        let dir = tmp("basic");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        assert_eq!(c.greeting(), &Greeting::current());
        assert!(c.ping().unwrap().pong);
        assert_eq!(c.config().unwrap(), None);
        let st = c.status().unwrap();
        assert!(!st.configured);
        assert!(st.interfaces.uplink.addresses.is_empty());
        let cfg = demo_config();
        assert!(c.apply(&cfg).unwrap().changed);
        assert!(!c.apply(&cfg).unwrap().changed);
        assert_eq!(c.config().unwrap().as_ref(), Some(cfg.config()));
        let st = c.status().unwrap();
        assert!(st.configured);
        assert_eq!(
            st.interfaces.uplink.addresses,
            vec![cfg.config().uplink.address]
        );
        assert_eq!(
            st.interfaces.link.addresses,
            vec![cfg.config().link.address]
        );
        let reply = c.call("status", None).unwrap();
        assert_eq!(reply.id, Some(RequestId::from(8)));
        assert!(reply.raw.starts_with('{'));
    }

    #[test]
    fn invalid_apply_is_a_remote_error_naming_the_field_and_changes_nothing() {
        let dir = tmp("errors");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        c.apply(&demo_config()).unwrap();
        let cases = [
            (
                json!({"uplink": {"address": "192.0.2.300/24"}, "link": {"address": "10.81.0.1/16"}}),
                "uplink.address",
            ),
            (
                json!({"uplink": {"address": "192.0.2.2/24", "mtu": 9000}, "link": {"address": "10.81.0.1/16"}}),
                "uplink.mtu",
            ),
            (
                json!({"uplink": {"address": "192.0.2.2/24", "gateway": "10.0.0.1"}, "link": {"address": "10.81.0.1/16"}}),
                "uplink.gateway",
            ),
        ];
        for (doc, field) in cases {
            match c.apply_value(&doc) {
                Err(ControlError::Remote(e)) => {
                    assert_eq!(e.code, ErrorCode::InvalidConfig, "{doc}");
                    assert_eq!(e.field.as_deref(), Some(field), "{doc}: {}", e.message);
                }
                other => panic!("{doc}: expected invalid_config, got {other:?}"),
            }
            assert_eq!(c.config().unwrap().as_ref(), Some(demo_config().config()));
        }
        match c.request::<Value>("frobnicate", None) {
            Err(ControlError::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::UnknownCommand);
                assert!(remote_line(&e).starts_with("unknown_command: "));
            }
            other => panic!("expected unknown_command, got {other:?}"),
        }
    }

    #[test]
    fn replies_to_garbage_are_skipped_until_our_id() {
        let dir = tmp("garbage");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        let mut garbage = Vec::new();
        for i in 0..200 {
            garbage.extend_from_slice(format!("{{not json {i}\n").as_bytes());
        }
        c.send_raw(&garbage).unwrap();
        assert!(c.ping().unwrap().pong);
        assert_eq!(c.skipped_lines, 200);
        let st = c.status().unwrap();
        assert!(st.control.errors >= 200);
    }

    #[test]
    fn reconnect_gets_a_new_greeting_and_a_partial_line_is_discarded() {
        let dir = tmp("reconnect");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut a = Client::connect(sim.path(), T).unwrap();
        a.send_raw(b"{\"id\":1,\"cmd\":\"sta").unwrap();
        drop(a);
        let mut b = Client::connect(sim.path(), T).unwrap();
        assert!(b.ping().unwrap().pong);
        let st = b.status().unwrap();
        assert_eq!(st.control.connects, 2);
        assert_eq!(st.control.partial_discarded, 1);
    }

    #[test]
    fn a_second_client_waits_like_with_qemu_and_is_told_why() {
        let dir = tmp("busy");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut first = Client::connect(sim.path(), T).unwrap();
        let second = Client::connect(sim.path(), Duration::from_millis(400));
        match second {
            Err(e @ ControlError::Timeout { .. }) => {
                assert!(e.to_string().contains("another client"), "{e}")
            }
            other => panic!("expected a greeting timeout, got {other:?}"),
        }
        assert!(first.ping().unwrap().pong);
        drop(first);
        let mut third = Client::connect(sim.path(), T).unwrap();
        assert!(third.ping().unwrap().pong);
    }

    /// A server that greets with `greeting` and then says nothing.
    fn one_shot(dir: &Path, greeting: &'static str) -> (PathBuf, std::thread::JoinHandle<()>) {
        let path = dir.join("c.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(greeting.as_bytes()).unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        (path, h)
    }

    #[test]
    fn wrong_protocol_is_refused() {
        let dir = tmp("proto2");
        let (p, h) = one_shot(&dir, "{\"weft\":{\"version\":\"9\",\"protocol\":2}}\n");
        match Client::connect(&p, T) {
            Err(ControlError::BadGreeting(m)) => assert!(m.contains("protocol 2"), "{m}"),
            other => panic!("expected BadGreeting, got {other:?}"),
        }
        h.join().unwrap();
    }

    #[test]
    fn silence_times_out_dead_peer_is_gone_absent_socket_fails() {
        let dir = tmp("silent");
        let (p, h) = one_shot(&dir, "");
        let t = Duration::from_millis(300);
        assert!(matches!(
            Client::connect(&p, t),
            Err(ControlError::Timeout { .. })
        ));
        h.join().unwrap();

        let dir = tmp("gone");
        let (p, h) = one_shot(&dir, "");
        let mut checks = 0;
        let r = Client::connect_while(&p, T, &mut || {
            checks += 1;
            checks < 3
        });
        assert!(matches!(r, Err(ControlError::Gone { .. })), "{r:?}");
        drop(r);
        h.join().unwrap();

        let missing = std::env::temp_dir().join("weft-no-such-dir/control.sock");
        assert!(matches!(
            Client::connect(&missing, t),
            Err(ControlError::Connect { .. })
        ));
    }

    /// A grid document of `n` containers: about 60 bytes each.
    fn grid_doc(n: usize) -> Value {
        let containers: Vec<Value> = (0..n)
            .map(|i| {
                json!({"name": format!("c-{i}"), "service": format!("s-{}", i % 7),
                       "address": format!("10.81.{}.{}", 1 + i / 250, 1 + i % 250)})
            })
            .collect();
        json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "dns": {"grid": "g"},
            "containers": containers,
        })
    }

    #[test]
    fn a_document_too_long_for_one_line_goes_in_parts_and_reads_back() {
        let dir = tmp("parts");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        let doc = grid_doc(5_000);
        assert!(doc.to_string().len() > 3 * protocol::MAX_LINE_LEN);
        assert!(c.apply_value(&doc).unwrap().changed);
        assert!(!c.apply_value(&doc).unwrap().changed);
        let shown = c.call("config", None).unwrap().outcome.unwrap();
        let echo = crate::document::echo(&doc, &shown);
        assert_eq!(echo.mismatched, Vec::<String>::new());
        let st = c.status().unwrap();
        assert_eq!(
            (st.control.transfers, st.control.transfers_discarded),
            (2, 0)
        );
        // A small document still goes in one line.
        c.apply(&demo_config()).unwrap();
        assert_eq!(c.status().unwrap().control.transfers, 2);
        assert_eq!(c.config().unwrap().as_ref(), Some(demo_config().config()));
    }

    #[test]
    fn parts_of_any_size_apply_and_refuse_exactly_as_one_line() {
        let dir = tmp("tiny");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        let good = grid_doc(5);
        let mut bad = grid_doc(5);
        bad["dns"]["domain"] = json!("bär\"\\.local");
        let mut bad2 = grid_doc(5);
        bad2["containers"][3]["address"] = json!("10.81.1.x");
        for part in [8, 9, 13, 64, 1000] {
            let text = bad.to_string();
            let one = c
                .call("apply", Some(bad.clone()))
                .unwrap()
                .outcome
                .unwrap_err();
            let parts = c.apply_in_parts(&text, part).unwrap().outcome.unwrap_err();
            assert_eq!(parts, one, "parts of {part}");
            assert_eq!(parts.field.as_deref(), Some("dns.domain"));
            let parts = c
                .apply_in_parts(&bad2.to_string(), part)
                .unwrap()
                .outcome
                .unwrap_err();
            assert_eq!(parts.field.as_deref(), Some("containers[3].address"));
            assert_eq!(
                c.config().unwrap(),
                None,
                "a refused document changes nothing"
            );
        }
        let reply = c.apply_in_parts(&good.to_string(), 8).unwrap();
        assert_eq!(reply.outcome.unwrap(), json!({"changed": true}));
        assert_eq!(
            c.config().unwrap(),
            Some(Config::from_json_value(&good).unwrap())
        );
    }

    #[test]
    fn a_client_that_vanishes_mid_document_changes_nothing() {
        let dir = tmp("vanish");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), T).unwrap();
        c.apply(&demo_config()).unwrap();
        let text = grid_doc(50).to_string();
        let begin = c
            .call("apply-begin", Some(json!({"bytes": text.len()})))
            .unwrap();
        assert!(begin.outcome.is_ok());
        let half = &text[..text.len() / 2];
        let part = c
            .call("apply-part", Some(json!({"offset": 0, "text": half})))
            .unwrap();
        assert_eq!(part.outcome.unwrap(), json!({"received": half.len()}));
        drop(c);
        let mut c = Client::connect(sim.path(), T).unwrap();
        assert_eq!(c.config().unwrap().as_ref(), Some(demo_config().config()));
        let st = c.status().unwrap();
        assert_eq!(
            (st.control.transfers, st.control.transfers_discarded),
            (1, 1)
        );
        // Its parts mean nothing to the next connection.
        let late = c.call("apply-commit", None).unwrap().outcome.unwrap_err();
        assert_eq!(late.code, ErrorCode::NotReady);
    }

    /// An error with a null id is the answer to the line it is about: a line over the
    /// limit, or one that is not JSON, is reported at once, not waited on.
    #[test]
    fn errors_with_a_null_id_answer_the_request_they_are_about() {
        let dir = tmp("nullid");
        let sim = SimAppliance::start(&dir).unwrap();
        let mut c = Client::connect(sim.path(), Duration::from_secs(60)).unwrap();
        let pad = "x".repeat(protocol::MAX_LINE_LEN);
        let reply = c.call("ping", Some(json!({ "pad": pad }))).unwrap();
        assert_eq!(reply.id, None);
        assert_eq!(reply.outcome.unwrap_err().code, ErrorCode::LineTooLong);
        match c.request::<Value>("ping", Some(json!({ "pad": pad }))) {
            Err(ControlError::Remote(e)) => assert_eq!(e.code, ErrorCode::LineTooLong),
            other => panic!("expected line_too_long, got {other:?}"),
        }
        // A partial line sent before: the request completes it, into garbage.
        c.send_raw(b"{oops").unwrap();
        let reply = c.call("ping", None).unwrap();
        assert_eq!(reply.id, None);
        assert_eq!(reply.outcome.unwrap_err().code, ErrorCode::ParseError);
        // Replies to earlier garbage are still skipped, and the stream is in step.
        c.send_raw(b"nope\n\n  \r\n[1]\n").unwrap();
        assert!(c.ping().unwrap().pong);
        assert_eq!(c.skipped_lines, 2);
    }

    #[test]
    fn split_escaped_cuts_at_characters_within_the_escaped_size() {
        let text = "a\"b\\c\u{1}dé€😀\n";
        for max in 1..20 {
            let parts = split_escaped(text, max);
            assert_eq!(parts.concat(), text, "max {max}");
            for p in &parts {
                let escaped = serde_json::to_string(p).unwrap().len() - 2;
                assert!(escaped <= max || p.chars().count() == 1, "{p:?} max {max}");
            }
        }
        assert!(split_escaped("", 8).is_empty());
    }

    #[test]
    fn reply_parsing() {
        let r = Reply::parse(r#"{"id":3,"result":{"pong":true}}"#).unwrap();
        assert_eq!(r.id, Some(RequestId::from(3)));
        assert_eq!(r.outcome.unwrap(), json!({"pong": true}));
        let r =
            Reply::parse(r#"{"id":null,"error":{"code":"parse_error","message":"x"}}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.outcome.unwrap_err().code, ErrorCode::ParseError);
        for bad in [
            "[]",
            "{}",
            "{\"id\":1}",
            "nope",
            r#"{"id":1,"error":{"code":"nope","message":""}}"#,
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "{}",
            "[1]",
            r#"{"weft":{}}"#,
            r#"{"weft":{"version":"1","protocol":"1"}}"#,
        ] {
            assert!(parse_greeting(bad).is_err(), "{bad}");
        }
    }
}
