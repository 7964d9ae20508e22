//! The agent's API socket: the control protocol (greeting, one JSON request per line,
//! one reply per request, in order, `id` echoed, errors with the protocol's codes and
//! the same 64 KiB line limit) served to any number of clients at once, each on its
//! own task. It frames and checks requests; what a command does is the handler's. A
//! client that misbehaves gets errors, never a crash, and never delays another. Lines a
//! handler sends a client on its own (a capture's events) are written between replies.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use weft_appliance::protocol::{
    json_kind, ErrorBody, ErrorCode, Greeting, Reply, Request, RequestId, MAX_LINE_LEN,
};

/// One API client as a handler sees it: where lines for it go besides its replies,
/// and the captures it started (stopped when it goes away).
#[derive(Debug)]
pub struct ClientCtx {
    pub events: mpsc::UnboundedSender<Vec<u8>>,
    pub captures: Mutex<Vec<u32>>,
}

/// What serves the requests.
pub trait Handler: Send + Sync + 'static {
    /// `cmd` with its `args` (absent: None), already framed and checked for shape.
    fn handle(
        &self,
        cmd: String,
        args: Option<Value>,
    ) -> impl Future<Output = Result<Value, ErrorBody>> + Send;

    /// [`Handler::handle`] for the client `client` (what a command needs of its client,
    /// such as where a capture's events go).
    fn handle_for(
        &self,
        _client: &ClientCtx,
        cmd: String,
        args: Option<Value>,
    ) -> impl Future<Output = Result<Value, ErrorBody>> + Send {
        self.handle(cmd, args)
    }

    /// The client went away (its captures are to be stopped).
    fn client_gone(&self, _client: &ClientCtx) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The API's own counters.
#[derive(Debug, Default)]
pub struct ApiCounters {
    pub connects: AtomicU64,
    pub open: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

impl ApiCounters {
    pub fn json(&self) -> Value {
        serde_json::json!({
            "connects": self.connects.load(Ordering::Relaxed),
            "clients": self.open.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

/// Binds `path` (a stale socket file is replaced), readable and writable by its owner
/// and group only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Accepts clients until the task is dropped.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    counters: Arc<ApiCounters>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let (h, c) = (handler.clone(), counters.clone());
        tokio::spawn(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = ClientCtx {
                events: tx,
                captures: Mutex::new(Vec::new()),
            };
            let _ = client(stream, &*h, &c, &ctx, rx).await;
            h.client_gone(&ctx).await;
            c.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn line(reply: &Reply) -> Vec<u8> {
    reply.to_line()
}

async fn client<H: Handler>(
    stream: UnixStream,
    handler: &H,
    counters: &ApiCounters,
    ctx: &ClientCtx,
    mut events: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    let (mut reader, mut stream) = stream.into_split();
    let mut greeting = serde_json::to_vec(&Greeting::current()).unwrap_or_default();
    greeting.push(b'\n');
    stream.write_all(&greeting).await?;
    let mut buf: Vec<u8> = Vec::new();
    // Skipping the rest of a line that was too long.
    let mut discarding = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = reader.read(&mut chunk) => n?,
            Some(line) = events.recv() => {
                stream.write_all(&line).await?;
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let mut l: Vec<u8> = buf.drain(..=pos).collect();
            l.pop();
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            if std::mem::take(&mut discarding) {
                continue;
            }
            if l.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let reply = request(&l, handler, ctx).await;
            if matches!(reply.outcome, weft_appliance::protocol::Outcome::Error(_)) {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            stream.write_all(&line(&reply)).await?;
        }
        if buf.len() > MAX_LINE_LEN {
            buf.clear();
            if !discarding {
                discarding = true;
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let e = ErrorBody::new(
                    ErrorCode::LineTooLong,
                    format!("line longer than {MAX_LINE_LEN} bytes; discarded up to its newline"),
                );
                stream.write_all(&line(&Reply::error(None, e))).await?;
            }
        }
    }
}

/// The request's id, command and arguments, or the error reply. The framing rules
/// and their messages are the appliance's own (`Request::parse_line`): the line is
/// checked by it with the command swapped for `ping`, so that the agent's commands
/// and their arguments are left to the handler.
pub fn frame(l: &[u8]) -> Result<(RequestId, String, Option<Value>), Reply> {
    let value: Value = match serde_json::from_slice(l) {
        Ok(v) => v,
        Err(_) => {
            let e = Request::parse_line(l).err().map(|e| e.into_reply());
            return Err(e.unwrap_or_else(|| {
                Reply::error(
                    None,
                    ErrorBody::new(ErrorCode::ParseError, "not JSON".into()),
                )
            }));
        }
    };
    let mut probe = value.clone();
    let mut cmd = None;
    let mut args = None;
    if let Some(map) = probe.as_object_mut() {
        if let Some(Value::String(c)) = map.get("cmd") {
            cmd = Some(c.clone());
            map.insert("cmd".into(), Value::String("ping".into()));
            args = map.remove("args");
        }
    }
    let request = Request::from_value(&probe).map_err(|e| e.into_reply())?;
    match cmd {
        Some(cmd) => Ok((request.id, cmd, args)),
        None => Err(Reply::error(
            Some(request.id),
            ErrorBody::with_field(ErrorCode::InvalidRequest, "missing cmd".into(), "cmd"),
        )),
    }
}

async fn request<H: Handler>(l: &[u8], handler: &H, ctx: &ClientCtx) -> Reply {
    let (id, cmd, args) = match frame(l) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    match handler.handle_for(ctx, cmd, args).await {
        Ok(v) => Reply::result(id, v),
        Err(e) => Reply::error(Some(id), e),
    }
}

/// The `args` of a command as an object (absent or null: empty).
pub fn args_object(args: Option<Value>) -> Result<Map<String, Value>, ErrorBody> {
    match args {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(ErrorBody::with_field(
            ErrorCode::InvalidRequest,
            format!("args must be an object, not {}", json_kind(&other)),
            "args",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// Echoes its arguments after a delay that depends on them, so a slow request of
    /// one client overlaps the others'.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, cmd: String, args: Option<Value>) -> Result<Value, ErrorBody> {
            if cmd == "fail" {
                return Err(ErrorBody::with_field(
                    ErrorCode::NotFound,
                    "no such thing".into(),
                    "x",
                ));
            }
            let ms = args
                .as_ref()
                .and_then(|a| a["sleep_ms"].as_u64())
                .unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(serde_json::json!({"cmd": cmd, "args": args}))
        }
    }

    async fn start(
        tag: &str,
    ) -> (
        std::path::PathBuf,
        tokio::task::JoinHandle<()>,
        Arc<ApiCounters>,
    ) {
        let dir = std::env::temp_dir().join(format!("weft-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("api.sock");
        let l = bind(&path).unwrap();
        let counters = Arc::new(ApiCounters::default());
        let task = tokio::spawn(serve(l, Arc::new(Echo), counters.clone()));
        (path, task, counters)
    }

    struct Conn {
        r: BufReader<tokio::net::unix::OwnedReadHalf>,
        w: tokio::net::unix::OwnedWriteHalf,
    }

    impl Conn {
        async fn open(path: &Path) -> Conn {
            let s = UnixStream::connect(path).await.unwrap();
            let (r, w) = s.into_split();
            let mut c = Conn {
                r: BufReader::new(r),
                w,
            };
            let g = c.line().await;
            assert_eq!(
                serde_json::from_str::<Greeting>(&g).unwrap(),
                Greeting::current()
            );
            c
        }

        async fn line(&mut self) -> String {
            let mut s = String::new();
            self.r.read_line(&mut s).await.unwrap();
            s.trim_end().to_string()
        }

        async fn send(&mut self, s: &str) {
            self.w.write_all(s.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn many_clients_at_once_each_get_their_own_replies_in_order() {
        let (path, task, counters) = start("many").await;
        let mut clients = Vec::new();
        for c in 0..40u64 {
            let path = path.clone();
            clients.push(tokio::spawn(async move {
                let mut conn = Conn::open(&path).await;
                // Pipelined requests, the first one slow.
                for i in 0..5u64 {
                    let sleep = if i == 0 { 50 } else { 0 };
                    conn.send(&format!(
                        "{{\"id\":{i},\"cmd\":\"c{c}\",\"args\":{{\"sleep_ms\":{sleep}}}}}\n"
                    ))
                    .await;
                }
                for i in 0..5u64 {
                    let v: Value = serde_json::from_str(&conn.line().await).unwrap();
                    assert_eq!(v["id"], i);
                    assert_eq!(v["result"]["cmd"], format!("c{c}"));
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        assert_eq!(counters.requests.load(Ordering::Relaxed), 200);
        assert_eq!(counters.connects.load(Ordering::Relaxed), 40);
        task.abort();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn bad_lines_get_the_protocols_errors_and_the_session_goes_on() {
        let (path, task, _) = start("bad").await;
        let mut c = Conn::open(&path).await;
        let cases = [
            ("hello\n", r#"{"id":null,"error":{"code":"parse_error""#),
            ("[1]\n", r#"{"id":null,"error":{"code":"invalid_request""#),
            ("{\"cmd\":\"x\"}\n", r#""field":"id""#),
            ("{\"id\":true,\"cmd\":\"x\"}\n", r#""field":"id""#),
            (
                "{\"id\":1,\"cmd\":\"x\",\"extra\":1}\n",
                r#""field":"extra""#,
            ),
            ("{\"id\":2,\"cmd\":7}\n", r#""field":"cmd""#),
            (
                "{\"id\":\"s\",\"cmd\":\"fail\"}\n",
                r#"{"id":"s","error":{"code":"not_found""#,
            ),
        ];
        for (send, want) in cases {
            c.send(send).await;
            let got = c.line().await;
            assert!(got.contains(want), "{send:?}: {got}");
        }
        c.w.write_all(b"\xff\n").await.unwrap();
        assert!(c.line().await.contains("not UTF-8"));
        // A line over the limit: one error, the rest of it ignored, then service as usual.
        let long = "x".repeat(MAX_LINE_LEN + 10);
        c.send(&long).await;
        c.send(&long).await;
        c.send("\n{\"id\":9,\"cmd\":\"ok\"}\n").await;
        assert!(c.line().await.contains("line_too_long"));
        let v: Value = serde_json::from_str(&c.line().await).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["result"]["cmd"], "ok");
        task.abort();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
