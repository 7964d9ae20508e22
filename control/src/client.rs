//! The one control-socket client: connects to the appliance's unix socket, checks the
//! greeting, sends one JSON request per line and matches replies by `id`. The wire
//! types are `weft_appliance::protocol`'s, so the protocol has one definition. It owns
//! the host side of the line framing; it never renders anything (see `status`).

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

    /// Sends `{"id":N,"cmd":cmd[,"args":args]}` and waits for the reply with id N.
    /// Lines with other ids are skipped (counted in `skipped_lines`).
    pub fn call(&mut self, cmd: &str, args: Option<Value>) -> Result<Reply, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"id": id, "cmd": cmd});
        if let Some(a) = args {
            req["args"] = a;
        }
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line)?;
        let want = Some(RequestId::from(id));
        let deadline = Instant::now() + self.timeout;
        loop {
            let l = self.read_line_until(deadline, "a reply")?;
            let reply = Reply::parse(&l)?;
            if reply.id == want {
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

    /// Applies a document as it is, valid or not (tests send broken ones).
    pub fn apply_value(&mut self, doc: &Value) -> Result<Applied, ControlError> {
        self.request("apply", Some(doc.clone()))
    }

    /// Writes bytes as they are (tests use it for garbage and partial lines).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream.write_all(bytes)?;
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
