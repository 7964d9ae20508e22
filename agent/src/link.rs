//! The agent's one connection to its appliance's control socket (QEMU's chardev
//! serves one client): a thread that owns the `weft_control` client, connects and
//! reconnects, tells the agent each time the appliance greets (a new greeting means
//! the appliance may have restarted, so its whole state is applied again), pings it
//! when idle, and carries commands: one at a time for the API's pass-through, a whole
//! plan pipelined for the sync. It never decides what to send.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use weft_appliance::protocol::{ErrorCode, RequestId, MAX_LINE_LEN};
use weft_control::client::{Client, ControlError, Reply};

use crate::sync::Op;

/// How long one connection attempt waits for the socket and the greeting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one reply may take (an apply of a large grid under TCG is slow).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time after which the appliance is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Requests of a plan in flight at once.
const WINDOW: usize = 64;

/// What the link tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The appliance greeted on a new connection (`generation` counts them).
    Connected { generation: u64, version: String },
    /// The connection is gone (or could not be made), once per loss.
    Disconnected { reason: String },
}

/// How a plan went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOutcome {
    pub generation: u64,
    /// Commands answered.
    pub done: usize,
    /// `(index, command, error)` of every refused command.
    pub failures: Vec<(usize, String, String)>,
    /// The connection broke before every command was answered.
    pub broken: Option<String>,
}

enum Request {
    Call {
        cmd: String,
        args: Option<Value>,
        reply: oneshot::Sender<Result<Reply, String>>,
    },
    Run {
        ops: Vec<Op>,
        generation: u64,
        reply: oneshot::Sender<RunOutcome>,
    },
}

/// A handle to the link thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct Link {
    tx: std_mpsc::Sender<Request>,
    connected: Arc<AtomicBool>,
}

impl Link {
    /// Starts the thread for the control socket at `path`.
    pub fn spawn(
        path: PathBuf,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> (Link, JoinHandle<()>) {
        let (tx, rx) = std_mpsc::channel();
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let thread = std::thread::Builder::new()
            .name("weft-agent-link".into())
            .spawn(move || serve(path, rx, events, flag))
            .unwrap_or_else(|e| panic!("cannot start a thread: {e}"));
        (Link { tx, connected }, thread)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// One command, answered with the appliance's reply (its id is the link's own).
    pub async fn call(&self, cmd: &str, args: Option<Value>) -> Result<Reply, String> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Call {
            cmd: cmd.to_string(),
            args,
            reply,
        };
        self.tx
            .send(req)
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the agent is stopping".to_string()))
    }

    /// Runs a plan on connection `generation` (refused if that one is gone).
    pub fn run(&self, ops: Vec<Op>, generation: u64) -> oneshot::Receiver<RunOutcome> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Request::Run {
            ops,
            generation,
            reply,
        });
        rx
    }
}

struct Conn {
    client: Client,
    generation: u64,
    seq: u64,
}

/// The link thread's connection and what the agent has been told about it.
struct State {
    path: PathBuf,
    conn: Option<Conn>,
    generation: u64,
    /// Whether the agent has been told the link is down (so it is told once).
    reported_down: bool,
    events: mpsc::UnboundedSender<LinkEvent>,
    connected: Arc<AtomicBool>,
}

impl State {
    fn connect(&mut self) {
        match Client::connect(&self.path, CONNECT_TIMEOUT) {
            Ok(mut client) => {
                client.set_timeout(REPLY_TIMEOUT);
                self.generation += 1;
                let version = client.greeting().weft.version.clone();
                self.conn = Some(Conn {
                    client,
                    generation: self.generation,
                    seq: 0,
                });
                self.reported_down = false;
                self.connected.store(true, Ordering::SeqCst);
                let _ = self.events.send(LinkEvent::Connected {
                    generation: self.generation,
                    version,
                });
            }
            Err(e) => self.lost(e.to_string()),
        }
    }

    fn lost(&mut self, reason: String) {
        self.conn = None;
        self.connected.store(false, Ordering::SeqCst);
        if !self.reported_down {
            self.reported_down = true;
            let _ = self.events.send(LinkEvent::Disconnected { reason });
        }
    }

    /// One pass-through command. A connection found dead when writing (the appliance
    /// restarted while the link was idle) is replaced and the command sent once more:
    /// it never reached the old appliance.
    fn call(&mut self, cmd: &str, args: Option<Value>) -> Result<Reply, String> {
        for attempt in 0..2 {
            let Some(c) = self.conn.as_mut() else {
                return Err("the appliance is not connected".into());
            };
            match c.client.call(cmd, args.clone()) {
                Ok(r) => return Ok(r),
                Err(ControlError::Io(e))
                    if attempt == 0 && e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    self.lost(e.to_string());
                    self.connect();
                }
                Err(e) => {
                    self.lost(e.to_string());
                    return Err(format!("the appliance: {e}"));
                }
            }
        }
        Err("the appliance is not connected".into())
    }
}

fn serve(
    path: PathBuf,
    rx: std_mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<LinkEvent>,
    connected: Arc<AtomicBool>,
) {
    let mut st = State {
        path,
        conn: None,
        generation: 0,
        reported_down: false,
        events,
        connected,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        if st.conn.is_none() {
            st.connect();
            if st.conn.is_some() {
                backoff = Duration::from_millis(200);
            }
        }
        let wait = if st.conn.is_some() {
            PING_EVERY
        } else {
            backoff
        };
        match rx.recv_timeout(wait) {
            Ok(Request::Call { cmd, args, reply }) => {
                let _ = reply.send(st.call(&cmd, args));
            }
            Ok(Request::Run {
                ops,
                generation: want,
                reply,
            }) => {
                let outcome = match st.conn.as_mut() {
                    Some(c) if c.generation == want => {
                        let out = run(c, &ops);
                        if let Some(why) = &out.broken {
                            st.lost(why.clone());
                        }
                        out
                    }
                    _ => RunOutcome {
                        generation: want,
                        broken: Some("the connection it was planned for is gone".into()),
                        ..RunOutcome::default()
                    },
                };
                let _ = reply.send(outcome);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if let Some(c) = st.conn.as_mut() {
                    if let Err(e) = c.client.ping() {
                        st.lost(e.to_string());
                    }
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Sends a plan with up to [`WINDOW`] requests in flight; the appliance answers in
/// order, one reply per request. A request too long for one protocol line (an `apply`
/// of a big grid) waits until nothing is in flight and goes through the client's
/// transfer in parts (`apply-begin`, `apply-part`s, `apply-commit`), whose deciding
/// reply counts as its own.
fn run(c: &mut Conn, ops: &[Op]) -> RunOutcome {
    c.seq += 1;
    let mut out = RunOutcome {
        generation: c.generation,
        ..RunOutcome::default()
    };
    let id = |i: usize| format!("s{}.{i}", c.seq);
    let mut sent = 0;
    while out.done < ops.len() {
        while sent < ops.len() && sent - out.done < WINDOW {
            let op = &ops[sent];
            let mut line = json!({"id": id(sent), "cmd": op.cmd, "args": op.args})
                .to_string()
                .into_bytes();
            if line.len() > MAX_LINE_LEN {
                if sent > out.done {
                    // Its turn comes once the replies before it are in.
                    break;
                }
                sent += 1;
                if op.cmd != "apply" {
                    out.done += 1;
                    let why = format!("{} longer than a protocol line", op.cmd);
                    out.failures.push((sent - 1, op.cmd.to_string(), why));
                    continue;
                }
                let reply = match c.client.apply_reply(&op.args) {
                    Ok(r) => r,
                    Err(e) => {
                        out.broken = Some(e.to_string());
                        return out;
                    }
                };
                settle(&mut out, ops, reply, None);
                continue;
            }
            line.push(b'\n');
            if let Err(e) = c.client.send_raw(&line) {
                out.broken = Some(e.to_string());
                return out;
            }
            sent += 1;
        }
        if out.done == sent {
            continue;
        }
        let line = match c.client.read_line() {
            Ok(l) => l,
            Err(e) => {
                out.broken = Some(e.to_string());
                return out;
            }
        };
        let reply = match Reply::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                out.broken = Some(ControlError::to_string(&e));
                return out;
            }
        };
        let expected = RequestId::String(id(out.done));
        settle(&mut out, ops, reply, Some(expected));
    }
    out
}

/// Counts the reply to `ops[out.done]`; a refusal is a failure unless it is the
/// `not_found` of a removal (already gone) answering the request it should.
fn settle(out: &mut RunOutcome, ops: &[Op], reply: Reply, expected: Option<RequestId>) {
    let i = out.done;
    out.done += 1;
    if let Err(e) = reply.outcome {
        let answered = match &expected {
            Some(want) => reply.id.is_none() || reply.id.as_ref() == Some(want),
            None => true,
        };
        let gone = e.code == ErrorCode::NotFound && ops[i].tolerates_not_found();
        if !(gone && answered) {
            out.failures.push((
                i,
                ops[i].cmd.to_string(),
                weft_control::client::remote_line(&e),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_control::sim::SimAppliance;

    #[tokio::test]
    async fn it_greets_runs_plans_and_notices_a_new_appliance() {
        let dir = std::env::temp_dir().join(format!("weft-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sim = SimAppliance::start(&dir).unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        let (link, thread) = Link::spawn(sim.path().to_path_buf(), tx);
        let LinkEvent::Connected { generation, .. } = events.recv().await.unwrap() else {
            panic!("no greeting")
        };
        let doc = weft_control::document::default_document().json().clone();
        let ops = vec![
            Op {
                cmd: "apply",
                args: doc,
            },
            Op {
                cmd: "publish-remove",
                args: json!({"proto": "tcp", "host_port": 9}),
            },
            Op {
                cmd: "peer-add",
                args: json!({"node": 2, "address": "192.0.2.9", "networks": []}),
            },
        ];
        let out = link.run(ops, generation).await.unwrap();
        assert_eq!(out.done, 3);
        assert!(out.broken.is_none());
        // The removal of something absent is fine; a peer without a grid is not.
        assert_eq!(out.failures.len(), 1, "{out:?}");
        assert_eq!(out.failures[0].1, "peer-add");
        let r = link.call("config", None).await.unwrap();
        assert_eq!(r.outcome.unwrap()["link"]["address"], "10.81.0.1/16");
        // A plan for an old connection is refused.
        assert!(link
            .run(vec![], generation + 7)
            .await
            .unwrap()
            .broken
            .is_some());

        // The appliance goes away and a new one comes: a new greeting.
        drop(sim);
        assert!(matches!(
            events.recv().await.unwrap(),
            LinkEvent::Disconnected { .. }
        ));
        let _sim = SimAppliance::start(&dir).unwrap();
        let LinkEvent::Connected { generation: g2, .. } = events.recv().await.unwrap() else {
            panic!("no second greeting")
        };
        assert!(g2 > generation);
        drop(link);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_document_longer_than_a_line_goes_in_parts_within_a_plan() {
        let dir = std::env::temp_dir().join(format!("weft-link-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sim = SimAppliance::start(&dir).unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        let (link, thread) = Link::spawn(sim.path().to_path_buf(), tx);
        let LinkEvent::Connected { generation, .. } = events.recv().await.unwrap() else {
            panic!("no greeting")
        };
        let mut doc = weft_control::document::default_document().json().clone();
        doc["dns"] = json!({"grid": "big"});
        doc["containers"] = (0..3000)
            .map(|i| json!({"name": format!("app-{i}"), "address": format!("10.81.{}.{}", 1 + i / 250, 1 + i % 250)}))
            .collect();
        assert!(doc.to_string().len() > MAX_LINE_LEN);
        let ops = vec![
            Op {
                cmd: "container-add",
                args: json!({"name": "before", "address": "10.81.100.1"}),
            },
            Op {
                cmd: "apply",
                args: doc,
            },
            Op {
                cmd: "container-add",
                args: json!({"name": "after", "address": "10.81.100.2"}),
            },
        ];
        let out = link.run(ops, generation).await.unwrap();
        assert_eq!((out.done, out.broken.as_deref()), (3, None), "{out:?}");
        // The first add came before any document with [dns]; the rest went through.
        assert_eq!(out.failures.len(), 1, "{out:?}");
        assert_eq!(out.failures[0].1, "container-add");
        let r = link.call("config", None).await.unwrap();
        let containers = r.outcome.unwrap()["containers"].as_array().unwrap().len();
        assert_eq!(containers, 3001);
        drop(link);
        drop(sim);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
