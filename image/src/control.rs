//! The one control-socket client: connects to the appliance's unix socket, checks the
//! greeting, sends one JSON request per line and matches replies by `id`. It owns the
//! line framing on the host side; it never interprets a result beyond what a caller
//! asks for (rendering lives with the caller).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The control protocol version this client speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Replies longer than this are refused (the appliance's own input limit is 64 KiB;
/// a status reply is far smaller).
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// An error reply from the appliance: stable `code`, human `message`, optional `field`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(field) = &self.field {
            write!(f, " [{field}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

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
    Io(io::Error),
    /// The first line was not a weft greeting of a protocol we speak.
    BadGreeting(String),
    /// A line that is not a reply object.
    BadReply(String),
    /// The appliance answered with an error object.
    Remote(RemoteError),
    /// The caller's liveness check failed while waiting (e.g. QEMU exited).
    Gone {
        waiting_for: &'static str,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())
            }
            ControlError::Timeout { waiting_for } => {
                write!(f, "timed out waiting for {waiting_for}")
            }
            ControlError::Closed { waiting_for } => {
                write!(
                    f,
                    "appliance closed the control stream while waiting for {waiting_for}"
                )
            }
            ControlError::Io(e) => write!(f, "control socket: {e}"),
            ControlError::BadGreeting(s) => write!(f, "not a weft greeting: {s}"),
            ControlError::BadReply(s) => write!(f, "malformed reply: {s}"),
            ControlError::Remote(e) => write!(f, "appliance error {e}"),
            ControlError::Gone { waiting_for } => {
                write!(f, "the appliance went away while waiting for {waiting_for}")
            }
        }
    }
}

impl std::error::Error for ControlError {}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        ControlError::Io(e)
    }
}

/// The greeting the appliance sends on connect: `{"weft":{"version":..,"protocol":1}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: String,
    pub protocol: u64,
    pub raw: String,
}

impl Greeting {
    pub fn parse(line: &str) -> Result<Greeting, ControlError> {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| ControlError::BadGreeting(format!("{e}: {line}")))?;
        let weft = v
            .get("weft")
            .ok_or_else(|| ControlError::BadGreeting(line.to_string()))?;
        let protocol = weft
            .get("protocol")
            .and_then(Value::as_u64)
            .ok_or_else(|| ControlError::BadGreeting(format!("no protocol: {line}")))?;
        if protocol != PROTOCOL_VERSION {
            return Err(ControlError::BadGreeting(format!(
                "protocol {protocol}, this tool speaks {PROTOCOL_VERSION}"
            )));
        }
        let version = weft
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        Ok(Greeting {
            version,
            protocol,
            raw: line.to_string(),
        })
    }
}

/// One reply line, parsed: the echoed id and either a result or an error.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub id: Value,
    pub outcome: Result<Value, RemoteError>,
    /// The line as received (for `--json`).
    pub raw: String,
}

impl Reply {
    pub fn parse(line: &str) -> Result<Reply, ControlError> {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| ControlError::BadReply(format!("{e}: {line}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ControlError::BadReply(format!("not an object: {line}")))?;
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        let outcome = match (obj.get("result"), obj.get("error")) {
            (Some(r), None) => Ok(r.clone()),
            (None, Some(e)) => {
                let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                Err(RemoteError {
                    code: s("code").unwrap_or_else(|| "unknown".into()),
                    message: s("message").unwrap_or_default(),
                    field: s("field"),
                })
            }
            _ => {
                return Err(ControlError::BadReply(format!(
                    "neither result nor error: {line}"
                )))
            }
        };
        Ok(Reply {
            id,
            outcome,
            raw: line.to_string(),
        })
    }
}

/// A connected control session.
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
        Client::handshake(stream, deadline, timeout, alive)
    }

    /// Runs the greeting exchange on an already connected stream.
    pub fn handshake(
        stream: UnixStream,
        deadline: Instant,
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Client, ControlError> {
        let mut c = Client {
            stream,
            buf: Vec::new(),
            next_id: 1,
            greeting: Greeting {
                version: String::new(),
                protocol: 0,
                raw: String::new(),
            },
            timeout,
            skipped_lines: 0,
        };
        let line = c.read_line_checked(deadline, "the greeting", alive)?;
        c.greeting = Greeting::parse(&line)?;
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
        let mut line =
            serde_json::to_vec(&req).map_err(|e| ControlError::BadReply(e.to_string()))?;
        line.push(b'\n');
        self.send_raw(&line)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let l = self.read_line_until(deadline, "a reply")?;
            let reply = Reply::parse(&l)?;
            if reply.id == json!(id) {
                return Ok(reply);
            }
            self.skipped_lines += 1;
        }
    }

    /// Like [`Client::call`], but an error reply becomes `Err(ControlError::Remote)`.
    pub fn request(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, ControlError> {
        self.call(cmd, args)?.outcome.map_err(ControlError::Remote)
    }

    pub fn status(&mut self) -> Result<Value, ControlError> {
        self.request("status", None)
    }

    pub fn config(&mut self) -> Result<Value, ControlError> {
        self.request("config", None)
    }

    pub fn ping(&mut self) -> Result<Value, ControlError> {
        self.request("ping", None)
    }

    /// Applies a whole config document (already in its JSON form).
    pub fn apply(&mut self, config: &Value) -> Result<Value, ControlError> {
        self.request("apply", Some(config.clone()))
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
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ControlError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake appliance: a unix-socket server that speaks protocol 1 closely enough
    //! to test the client (greeting, ids echoed, errors for garbage, apply/config).

    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    pub struct FakeAppliance {
        pub path: PathBuf,
        handle: Option<JoinHandle<()>>,
        dir: PathBuf,
    }

    impl FakeAppliance {
        /// Serves `conns` connections one after the other, then exits.
        pub fn start(tag: &str, conns: usize, greeting: &'static str) -> FakeAppliance {
            let dir = std::env::temp_dir().join(format!("weft-fake-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("control.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let handle = std::thread::spawn(move || {
                let mut config = Value::Null;
                for _ in 0..conns {
                    let (mut s, _) = listener.accept().unwrap();
                    s.write_all(greeting.as_bytes()).unwrap();
                    let r = BufReader::new(s.try_clone().unwrap());
                    for line in r.split(b'\n') {
                        let Ok(line) = line else { break };
                        let reply = answer(&line, &mut config);
                        if s.write_all(format!("{reply}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                }
            });
            FakeAppliance {
                path,
                handle: Some(handle),
                dir,
            }
        }

        pub fn join(mut self) {
            if let Some(h) = self.handle.take() {
                h.join().unwrap();
            }
        }
    }

    impl Drop for FakeAppliance {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn err(id: Value, code: &str, msg: &str, field: Option<&str>) -> Value {
        let mut e = json!({"code": code, "message": msg});
        if let Some(f) = field {
            e["field"] = json!(f);
        }
        json!({"id": id, "error": e})
    }

    fn answer(line: &[u8], config: &mut Value) -> Value {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return err(Value::Null, "parse_error", "not JSON", None);
        };
        let id = v.get("id").cloned().unwrap_or(Value::Null);
        match v.get("cmd").and_then(Value::as_str) {
            Some("ping") => json!({"id": id, "result": {"pong": true}}),
            Some("config") => json!({"id": id, "result": config.clone()}),
            Some("status") => json!({"id": id, "result": {
            "version": "0.1.0", "uptime_ms": 1234,
            "interfaces": {
                "uplink": {"mac": "52:54:00:01:02:03", "addresses": ["192.0.2.2/24"], "gateway": "192.0.2.1",
                           "counters": {"rx_packets": 5, "tx_packets": 4, "drops": {"runt": 2}}},
                "link": {"mac": "52:54:00:04:05:06", "addresses": [],
                         "counters": {"rx_packets": 0, "tx_packets": 0, "drops": {}}}
            }}}),
            Some("apply") => {
                let args = v.get("args").cloned().unwrap_or(Value::Null);
                if args.get("uplink").is_none() {
                    return err(id, "invalid_config", "missing section", Some("uplink"));
                }
                *config = args;
                json!({"id": id, "result": {"applied": true}})
            }
            Some(_) => err(id, "unknown_command", "no such command", Some("cmd")),
            None => err(id, "invalid_request", "no cmd", Some("cmd")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeAppliance;
    use super::*;

    const GREETING: &str = "{\"weft\":{\"version\":\"0.1.0\",\"protocol\":1}}\n";
    const T: Duration = Duration::from_secs(10);

    #[test]
    fn greeting_requests_and_ids() {
        let fake = FakeAppliance::start("basic", 1, GREETING);
        let mut c = Client::connect(&fake.path, T).unwrap();
        assert_eq!(c.greeting().version, "0.1.0");
        assert_eq!(c.greeting().protocol, 1);
        assert_eq!(c.ping().unwrap(), json!({"pong": true}));
        assert_eq!(c.config().unwrap(), Value::Null);
        let cfg =
            json!({"uplink": {"address": "192.0.2.2/24"}, "link": {"address": "10.81.0.1/16"}});
        c.apply(&cfg).unwrap();
        assert_eq!(c.config().unwrap(), cfg);
        let st = c.status().unwrap();
        assert_eq!(st["interfaces"]["uplink"]["mac"], "52:54:00:01:02:03");
        let reply = c.call("status", None).unwrap();
        assert_eq!(reply.id, json!(6));
        assert!(reply.raw.starts_with('{'));
        drop(c);
        fake.join();
    }

    #[test]
    fn error_replies_carry_code_field_message() {
        let fake = FakeAppliance::start("errors", 1, GREETING);
        let mut c = Client::connect(&fake.path, T).unwrap();
        match c.apply(&json!({"link": {}})) {
            Err(ControlError::Remote(e)) => {
                assert_eq!(e.code, "invalid_config");
                assert_eq!(e.field.as_deref(), Some("uplink"));
                assert_eq!(e.to_string(), "invalid_config [uplink]: missing section");
            }
            other => panic!("expected a remote error, got {other:?}"),
        }
        match c.request("frobnicate", None) {
            Err(ControlError::Remote(e)) => assert_eq!(e.code, "unknown_command"),
            other => panic!("expected unknown_command, got {other:?}"),
        }
        drop(c);
        fake.join();
    }

    #[test]
    fn replies_to_garbage_are_skipped_until_our_id() {
        let fake = FakeAppliance::start("garbage", 1, GREETING);
        let mut c = Client::connect(&fake.path, T).unwrap();
        let mut garbage = Vec::new();
        for i in 0..200 {
            garbage.extend_from_slice(format!("{{not json {i}\n").as_bytes());
        }
        c.send_raw(&garbage).unwrap();
        assert_eq!(c.ping().unwrap()["pong"], true);
        assert_eq!(c.skipped_lines, 200);
        drop(c);
        fake.join();
    }

    #[test]
    fn reconnect_gets_a_new_greeting() {
        let fake = FakeAppliance::start("reconnect", 2, GREETING);
        let mut a = Client::connect(&fake.path, T).unwrap();
        a.send_raw(b"{\"id\":1,\"cmd\":\"sta").unwrap(); // disconnect mid-line
        drop(a);
        let mut b = Client::connect(&fake.path, T).unwrap();
        assert_eq!(b.ping().unwrap()["pong"], true);
        drop(b);
        fake.join();
    }

    #[test]
    fn wrong_protocol_is_refused() {
        let fake = FakeAppliance::start(
            "proto2",
            1,
            "{\"weft\":{\"version\":\"9\",\"protocol\":2}}\n",
        );
        match Client::connect(&fake.path, T) {
            Err(ControlError::BadGreeting(m)) => assert!(m.contains("protocol 2")),
            Err(e) => panic!("expected BadGreeting, got {e}"),
            Ok(_) => panic!("expected BadGreeting, got a client"),
        }
        fake.join();
    }

    #[test]
    fn no_greeting_times_out_and_absent_socket_fails() {
        let fake = FakeAppliance::start("silent", 1, "");
        let t = Duration::from_millis(300);
        assert!(matches!(
            Client::connect(&fake.path, t),
            Err(ControlError::Timeout { .. })
        ));
        fake.join();
        let fake = FakeAppliance::start("gone", 1, "");
        let mut checks = 0;
        let r = Client::connect_while(&fake.path, T, &mut || {
            checks += 1;
            checks < 3
        });
        assert!(matches!(r, Err(ControlError::Gone { .. })), "{r:?}");
        drop(r);
        fake.join();
        let missing = std::env::temp_dir().join("weft-no-such-dir/control.sock");
        assert!(matches!(
            Client::connect(&missing, t),
            Err(ControlError::Connect { .. })
        ));
    }

    #[test]
    fn reply_parsing() {
        let r = Reply::parse(r#"{"id":3,"result":{"pong":true}}"#).unwrap();
        assert_eq!(r.id, json!(3));
        assert_eq!(r.outcome.unwrap(), json!({"pong": true}));
        let r =
            Reply::parse(r#"{"id":null,"error":{"code":"parse_error","message":"x"}}"#).unwrap();
        assert_eq!(r.outcome.unwrap_err().field, None);
        for bad in [
            "[]",
            "{}",
            "{\"id\":1}",
            "nope",
            r#"{"id":1,"result":1,"error":{}}"#,
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "{}",
            "[1]",
            r#"{"weft":{}}"#,
            r#"{"weft":{"protocol":"1"}}"#,
        ] {
            assert!(Greeting::parse(bad).is_err(), "{bad}");
        }
    }
}
