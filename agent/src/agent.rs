//! The agent as a whole: reads the node's config, opens the store, serves the API,
//! owns the appliance link, optionally boots the appliance, and runs the loop that
//! keeps the appliance equal to the grid: store events update the grid view, a new
//! greeting forgets what the appliance runs, and whenever the two differ the sync
//! state machine's plan is carried out. It leaves the appliance exactly as it is while
//! the store is away, and applies nothing before it has read the grid once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use weft_appliance::weft_netstack::base::NodeId;
use weft_control::document::{self, Document};

use crate::api::{self, ApiCounters};
use crate::follow::{follow, Joining, StoreEvent};
use crate::grid::{Effect, GridView};
use crate::link::{Link, LinkEvent, RunOutcome};
use crate::schema::{NodeRecord, Prefix};
use crate::store::{Store, StoreSpec};
use crate::supervisor::{BootSpec, Supervisor};
use crate::sync::{desired, doc_node, plan, Desired, Local};

/// Everything `weft agent` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The node's own config (TOML); `[grid] node` may be left out.
    pub config: PathBuf,
    /// The appliance's control socket.
    pub control: PathBuf,
    /// The agent's API socket.
    pub api: PathBuf,
    pub store: StoreSpec,
    /// The node's name in the grid (default: the host name).
    pub name: Option<String>,
    /// The grid (default: the config's `[dns] grid`, else `weft`).
    pub grid: Option<String>,
    /// The node's lease time.
    pub ttl: Duration,
    pub private_address: Option<Ipv4Addr>,
    pub public_address: Option<Ipv4Addr>,
    /// Boot and supervise the appliance.
    pub boot: Option<BootSpec>,
    /// Serve `GET /metrics` (Prometheus) on this address.
    pub metrics: Option<std::net::SocketAddr>,
}

impl AgentOptions {
    /// An agent named `name` on one host: its grid in the file `store`, every other
    /// option at `weft agent`'s default (no boot, no metrics).
    pub fn local(
        config: PathBuf,
        control: PathBuf,
        api: PathBuf,
        store: PathBuf,
        name: &str,
    ) -> Self {
        AgentOptions {
            config,
            control,
            api,
            store: StoreSpec::File(store),
            name: Some(name.to_string()),
            grid: None,
            ttl: DEFAULT_TTL,
            private_address: None,
            public_address: None,
            boot: None,
            metrics: None,
        }
    }
}

/// An agent run on a thread of its own, with its own runtime, until dropped: for
/// programs and tests that hold an agent beside other work.
pub struct AgentThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl AgentThread {
    pub fn spawn(opts: AgentOptions) -> AgentThread {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run_until(opts, async move {
                let _ = rx.await;
            }))
        });
        AgentThread {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Whether the agent's run has ended (an error at start, say) without being stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Stops the agent and returns how its run ended.
    pub fn stop(mut self) -> Result<()> {
        self.halt().unwrap_or(Ok(()))
    }

    fn halt(&mut self) -> Option<Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the agent's thread panicked"))),
        )
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Default lease time of a node's live entry.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

pub fn log(msg: &str) {
    eprintln!("weft agent: {msg}");
}

/// The node's config as written, checked as the appliance would check it with a node
/// number in place (see [`fill_node`]).
pub fn load_node_config(path: &std::path::Path) -> Result<Value> {
    // As every sender: `[grid.tls]` files are read into the document here.
    let json = document::file_to_json(path)?;
    if !json.is_object() {
        bail!("{}: not a config document", path.display());
    }
    let mut probe = json.clone();
    // The number given, or one the grid may allocate.
    let given = doc_node(&json);
    let node = given.unwrap_or(NodeId::new(1).unwrap_or_else(|| unreachable!()));
    fill_node(&mut probe, node, given.is_none());
    Document::from_json(probe).with_context(|| format!("in {}", path.display()))?;
    Ok(json)
}

/// Puts the node number into `[grid] node`. When the number was allocated (not in
/// the file), a link address inside the grid subnet becomes the node's overlay address
/// (the appliance requires exactly that), keeping its prefix length.
pub fn fill_node(doc: &mut Value, node: NodeId, allocated: bool) {
    let Some(grid) = doc.get_mut("grid").and_then(Value::as_object_mut) else {
        return;
    };
    grid.insert("node".into(), json!(node.get()));
    if !allocated {
        return;
    }
    let ident = Ident::from_doc(node, doc);
    let (base, len) = ident.subnet;
    let inside = |a: Ipv4Addr| {
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        u32::from(a) & mask == u32::from(base) & mask
    };
    let Some(link) = doc.pointer_mut("/link/address") else {
        return;
    };
    let Some((addr, plen)) = link
        .as_str()
        .and_then(|s| s.split_once('/'))
        .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.to_string())))
    else {
        return;
    };
    if inside(addr) {
        *link = json!(format!("{}/{plen}", ident.gateway()));
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weft".into())
}

/// What the API handlers need from the node's identity.
#[derive(Clone, Debug)]
pub struct Ident {
    pub node: NodeId,
    pub networks: Vec<String>,
    pub share: Option<(Ipv4Addr, Ipv4Addr)>,
    pub subnet: (Ipv4Addr, u8),
    pub mtu: u64,
    pub sleeve: bool,
}

/// The grid subnet of a node's document (`[grid] subnet`, default `10.81.0.0/16`).
fn doc_subnet(doc: &Value) -> (Ipv4Addr, u8) {
    doc.pointer("/grid/subnet")
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('/'))
        .and_then(|(a, l)| Some((a.parse().ok()?, l.parse().ok()?)))
        .unwrap_or((Ipv4Addr::new(10, 81, 0, 0), 16))
}

impl Ident {
    pub(crate) fn from_doc(node: NodeId, doc: &Value) -> Ident {
        let subnet = doc_subnet(doc);
        let networks: Vec<String> = doc
            .get("networks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("name")?.as_str().map(str::to_string))
            .collect();
        let sleeve = doc
            .pointer("/networks/0/mode")
            .and_then(Value::as_str)
            .is_some_and(|m| m != "vxlan");
        Ident {
            node,
            networks,
            share: crate::registry::node_share(subnet.0, subnet.1, node),
            subnet,
            mtu: doc
                .pointer("/grid/mtu")
                .and_then(Value::as_u64)
                .unwrap_or(1450),
            sleeve,
        }
    }

    /// The node's overlay address (the containers' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.node
            .address_in(self.subnet.0, self.subnet.1)
            .unwrap_or(self.subnet.0)
    }
}

/// State the API handlers read and the engine writes.
pub struct Shared {
    pub prefix: Prefix,
    pub store: Store,
    pub link: Link,
    pub ident: RwLock<Option<Ident>>,
    pub view: RwLock<GridView>,
    pub status: Mutex<Value>,
    pub api: Arc<ApiCounters>,
    pub docs: mpsc::UnboundedSender<(Value, oneshot::Sender<bool>)>,
    pub node_doc: Mutex<Value>,
}

impl Shared {
    pub fn ident(&self) -> Option<Ident> {
        self.ident.read().ok().and_then(|g| g.clone())
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(opts: AgentOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        run_until(opts, stop).await
    })
}

/// Runs the agent until `stop` completes (tests stop it this way).
pub async fn run_until(
    opts: AgentOptions,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let doc = load_node_config(&opts.config)?;
    let grid = match &opts.grid {
        Some(g) => g.clone(),
        None => doc
            .pointer("/dns/grid")
            .and_then(Value::as_str)
            .unwrap_or("weft")
            .to_string(),
    };
    let prefix = Prefix::new(&grid).map_err(anyhow::Error::msg)?;
    let name = opts.name.clone().unwrap_or_else(host_name);
    if !crate::schema::valid_node_name(&name) {
        bail!("node name {name:?} must be 1..=64 characters of A-Z a-z 0-9 _ . - (use --name)");
    }
    let uplink: Ipv4Addr = doc
        .pointer("/uplink/address")
        .and_then(Value::as_str)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .context("the config has no uplink address")?;
    let record = NodeRecord {
        node: NodeId::new(1).unwrap_or_else(|| unreachable!()),
        name: name.clone(),
        address: uplink,
        private_address: opts.private_address,
        public_address: opts.public_address,
        region: doc
            .pointer("/grid/region")
            .and_then(Value::as_str)
            .map(str::to_string),
        networks: doc
            .get("networks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("name")?.as_str().map(str::to_string))
            .collect(),
    };
    let join = Joining {
        name,
        wanted: doc_node(&doc),
        max_node: crate::registry::max_node(doc_subnet(&doc).1),
        record,
        ttl: opts.ttl,
    };
    main(opts, doc, prefix, join, stop).await
}

async fn main(
    opts: AgentOptions,
    doc: Value,
    prefix: Prefix,
    join: Joining,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let store = Store::open(&opts.store)
        .await
        .map_err(|e| anyhow::anyhow!("opening the store {}: {e}", opts.store))?;
    let listener = api::bind(&opts.api)
        .with_context(|| format!("binding the API socket {}", opts.api.display()))?;
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let (link, link_thread) = Link::spawn(opts.control.clone(), link_tx);
    let (docs_tx, docs_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        prefix: prefix.clone(),
        store: store.clone(),
        link: link.clone(),
        ident: RwLock::new(None),
        view: RwLock::new(GridView::default()),
        status: Mutex::new(Value::Null),
        api: Arc::new(ApiCounters::default()),
        docs: docs_tx,
        node_doc: Mutex::new(doc.clone()),
    });
    log(&format!(
        "node {:?} of grid {} ({}), store {}, control {}, API {}",
        join.name,
        prefix.as_str(),
        join.record.address,
        opts.store,
        opts.control.display(),
        opts.api.display()
    ));
    let supervisor = opts
        .boot
        .clone()
        .map(|spec| Supervisor::start(spec, opts.control.clone(), link.clone(), log));
    let api_task = tokio::spawn(api::serve(listener, shared.clone(), shared.api.clone()));
    let metrics_task = match opts.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            log(&format!("metrics on http://{addr}/metrics"));
            Some(tokio::spawn(crate::metrics::serve(l, shared.clone())))
        }
        None => None,
    };
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let follower = tokio::spawn(follow(store, prefix, join.clone(), store_tx));
    let mut engine = Engine::new(shared.clone(), doc, &opts, join);
    engine.boots = supervisor.as_ref().map(|s| s.boots.clone());
    let outcome = engine.run(store_rx, link_rx, docs_rx, stop).await;
    log("stopping");
    follower.abort();
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&opts.api);
    if let Some(s) = supervisor {
        s.stop();
    }
    drop(engine);
    drop(shared);
    drop(link);
    let _ = tokio::task::spawn_blocking(move || link_thread.join()).await;
    outcome
}

/// The sync loop's state.
struct Engine {
    shared: Arc<Shared>,
    /// The node's document as written (`[grid] node` filled in once joined).
    doc: Value,
    local: Option<Local>,
    have_grid: bool,
    /// Something the desired state depends on changed since it was last planned.
    dirty: bool,
    /// What the appliance runs, as far as the agent knows (None: unknown).
    applied: Option<Desired>,
    applied_revision: i64,
    generation: Option<u64>,
    in_flight: Option<(Desired, i64)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    left_out: BTreeSet<String>,
    unappliable: Option<String>,
    skipped_logged: BTreeSet<String>,
    counters: Counters,
    store_state: String,
    store_error: Option<String>,
    lease: Option<i64>,
    version: Option<String>,
    link_error: Option<String>,
    last_error: Option<String>,
    opts: AgentOptions,
    join: Joining,
    boots: Option<Arc<std::sync::atomic::AtomicU64>>,
}

#[derive(Default)]
struct Counters {
    greetings: u64,
    full_applies: u64,
    plans: u64,
    commands: u64,
    command_errors: u64,
    fdb_refused: u64,
    resyncs: u64,
    snapshots: u64,
    store_losses: u64,
    changes: u64,
}

impl Engine {
    fn new(shared: Arc<Shared>, doc: Value, opts: &AgentOptions, join: Joining) -> Engine {
        Engine {
            shared,
            doc,
            local: None,
            have_grid: false,
            dirty: true,
            applied: None,
            applied_revision: 0,
            generation: None,
            in_flight: None,
            retry_at: None,
            backoff: Duration::from_secs(1),
            left_out: BTreeSet::new(),
            unappliable: None,
            skipped_logged: BTreeSet::new(),
            counters: Counters::default(),
            store_state: "connecting".into(),
            store_error: None,
            lease: None,
            version: None,
            link_error: None,
            last_error: None,
            opts: opts.clone(),
            join,
            boots: None,
        }
    }

    async fn run(
        &mut self,
        mut store_rx: mpsc::UnboundedReceiver<StoreEvent>,
        mut link_rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut docs_rx: mpsc::UnboundedReceiver<(Value, oneshot::Sender<bool>)>,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RunOutcome>();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(stop);
        self.publish_status();
        loop {
            tokio::select! {
                Some(ev) = store_rx.recv() => self.on_store(ev),
                Some(ev) = link_rx.recv() => self.on_link(ev),
                Some(out) = done_rx.recv() => self.on_done(out),
                Some((doc, reply)) = docs_rx.recv() => {
                    let changed = self.on_doc(doc);
                    let _ = reply.send(changed);
                }
                _ = tick.tick() => {}
                _ = &mut stop => return Ok(()),
            }
            self.maybe_sync(&done_tx);
            self.publish_status();
        }
    }

    fn on_store(&mut self, ev: StoreEvent) {
        let prefix = self.shared.prefix.clone();
        self.dirty = true;
        match ev {
            StoreEvent::Joined(node) => {
                log(&format!("joined the grid as node {node}"));
                fill_node(&mut self.doc, node, self.join.wanted.is_none());
                self.local = Some(Local {
                    me: node,
                    doc: self.doc.clone(),
                });
                if let Ok(mut i) = self.shared.ident.write() {
                    *i = Some(Ident::from_doc(node, &self.doc));
                }
                if let Ok(mut d) = self.shared.node_doc.lock() {
                    *d = self.doc.clone();
                }
            }
            StoreEvent::Leased(l) => {
                if self.lease != Some(l) {
                    self.lease = Some(l);
                }
            }
            StoreEvent::Snapshot { kvs, revision } => {
                let (view, effects) = GridView::from_snapshot(&prefix, &kvs, revision);
                self.counters.snapshots += 1;
                if self.have_grid {
                    self.counters.resyncs += 1;
                    log(&format!(
                        "read the grid again at revision {revision} (resync)"
                    ));
                }
                if let Ok(mut v) = self.shared.view.write() {
                    let seen = v.skipped_total;
                    *v = view;
                    v.skipped_total += seen;
                }
                self.log_effects(effects);
                self.have_grid = true;
            }
            StoreEvent::Changes { changes, .. } => {
                self.counters.changes += changes.len() as u64;
                let effects: Vec<Effect> = match self.shared.view.write() {
                    Ok(mut v) => changes.iter().map(|c| v.apply(&prefix, c)).collect(),
                    Err(_) => Vec::new(),
                };
                self.log_effects(effects);
            }
            StoreEvent::Up => {
                if self.store_state != "up" {
                    log("the store serves");
                }
                self.store_state = "up".into();
                self.store_error = None;
            }
            StoreEvent::Down(why) => {
                log(&format!(
                    "the store is unreachable, leaving the appliance as it is: {why}"
                ));
                self.counters.store_losses += 1;
                self.store_state = "down".into();
                self.store_error = Some(why);
            }
        }
    }

    fn log_effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            if let Effect::Skipped { key, reason } = e {
                if self.skipped_logged.insert(format!("{key}\u{0}{reason}")) {
                    log(&format!("skipping {key}: {reason}"));
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected {
                generation,
                version,
            } => {
                self.counters.greetings += 1;
                log(&format!(
                    "the appliance greeted (weft {version}); applying the whole state"
                ));
                self.generation = Some(generation);
                self.version = Some(version);
                self.applied = None;
                self.dirty = true;
                self.retry_at = None;
                self.link_error = None;
            }
            LinkEvent::Disconnected { reason } => {
                log(&format!("the appliance is not connected: {reason}"));
                self.generation = None;
                self.applied = None;
                self.link_error = Some(reason);
            }
        }
    }

    fn on_doc(&mut self, mut doc: Value) -> bool {
        if let (Some(l), Some(g)) = (
            &self.local,
            doc.get_mut("grid").and_then(Value::as_object_mut),
        ) {
            g.insert("node".into(), json!(l.me.get()));
        }
        let changed = doc != self.doc;
        self.doc = doc.clone();
        if let Some(l) = self.local.as_mut() {
            l.doc = doc.clone();
            if let Ok(mut i) = self.shared.ident.write() {
                *i = Some(Ident::from_doc(l.me, &doc));
            }
        }
        if let Ok(mut d) = self.shared.node_doc.lock() {
            *d = doc;
        }
        self.unappliable = None;
        self.dirty = true;
        changed
    }

    fn on_done(&mut self, out: RunOutcome) {
        let Some((desired, revision)) = self.in_flight.take() else {
            return;
        };
        self.counters.commands += out.done as u64;
        if Some(out.generation) != self.generation {
            return;
        }
        // A full FDB table refuses pinned entries; the overlay still learns those MACs.
        // That is counted, not retried: retrying could only fail again until entries
        // leave, and the next whole apply pushes every entry anyway.
        let (fdb, fatal): (Vec<_>, Vec<_>) = out
            .failures
            .into_iter()
            .partition(|(_, cmd, _)| cmd == "fdb-add");
        if !fdb.is_empty() {
            self.counters.fdb_refused += fdb.len() as u64;
            log(&format!(
                "the appliance refused {} FDB entries (first: {}); their MACs are learned instead",
                fdb.len(),
                fdb[0].2
            ));
        }
        if fatal.is_empty() && out.broken.is_none() {
            self.applied = Some(desired);
            self.applied_revision = revision;
            self.backoff = Duration::from_secs(1);
            return;
        }
        self.counters.command_errors += fatal.len() as u64;
        for (i, cmd, e) in fatal.iter().take(5) {
            log(&format!("the appliance refused command {i} ({cmd}): {e}"));
        }
        if fatal.len() > 5 {
            log(&format!("... and {} more refusals", fatal.len() - 5));
        }
        if let Some(why) = &out.broken {
            log(&format!("the connection broke during a sync: {why}"));
        }
        self.last_error = fatal
            .first()
            .map(|(_, c, e)| format!("{c}: {e}"))
            .or(out.broken);
        // What the appliance runs is unknown now: the next sync applies it whole.
        self.applied = None;
        self.dirty = true;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }

    fn maybe_sync(&mut self, done: &mpsc::UnboundedSender<RunOutcome>) {
        let (Some(local), Some(generation)) = (&self.local, self.generation) else {
            return;
        };
        if !self.have_grid || self.in_flight.is_some() {
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Nothing changed since the last plan and the appliance runs it: no work (the
        // desired state costs O(grid) to build and check).
        if !self.dirty && (self.applied.is_some() || self.unappliable.is_some()) {
            return;
        }
        self.dirty = false;
        let (d, left, revision) = {
            let Ok(view) = self.shared.view.read() else {
                return;
            };
            match desired(&view, local) {
                Ok((d, left)) => (d, left, view.revision),
                Err(e) => {
                    let msg = e.to_string();
                    if self.unappliable.as_deref() != Some(&msg) {
                        log(&format!(
                            "the node's config and the grid together are refused, nothing applied: {msg}"
                        ));
                        self.unappliable = Some(msg);
                    }
                    return;
                }
            }
        };
        self.unappliable = None;
        let now: BTreeSet<String> = left
            .iter()
            .map(|l| format!("{}: {}", l.what, l.reason))
            .collect();
        for l in now.difference(&self.left_out) {
            log(&format!("left out of the appliance's document: {l}"));
        }
        self.left_out = now;
        if self.applied.as_ref() == Some(&d) {
            self.applied_revision = revision;
            return;
        }
        let ops = plan(self.applied.as_ref(), &d);
        if ops.is_empty() {
            self.applied = Some(d);
            self.applied_revision = revision;
            return;
        }
        self.retry_at = None;
        self.counters.plans += 1;
        if ops.first().is_some_and(|o| o.cmd == "apply") {
            self.counters.full_applies += 1;
        }
        self.in_flight = Some((d, revision));
        let rx = self.shared.link.run(ops, generation);
        let done = done.clone();
        tokio::spawn(async move {
            if let Ok(out) = rx.await {
                let _ = done.send(out);
            }
        });
    }

    fn publish_status(&self) {
        let (kind, endpoints) = self.shared.store.describe();
        let view = self.shared.view.read();
        let grid = match &view {
            Ok(v) => json!({
                "revision": v.revision,
                "nodes": v.nodes.len(),
                "node_names": v.node_names.len(),
                "containers": v.containers.len(),
                "live_containers": self.local.as_ref().map_or(0, |l| v.live_containers(l.me).count()),
                "addresses": v.addresses.len(),
                "publish": v.publish.len(),
                "services": v.services.len(),
                "skipped": {
                    "entries": v.skipped.len(),
                    "total": v.skipped_total,
                    "keys": v.skipped.iter().take(20).map(|(k, r)| json!({"key": k, "reason": r})).collect::<Vec<_>>(),
                },
            }),
            Err(_) => Value::Null,
        };
        drop(view);
        let c = &self.counters;
        let status = json!({
            "name": self.join.name,
            "grid": self.shared.prefix.as_str(),
            "node": self.local.as_ref().map(|l| l.me.get()),
            "store": {
                "kind": kind,
                "endpoints": endpoints,
                "state": self.store_state,
                "error": self.store_error,
                "lease": self.lease.map(|l| format!("{l:x}")),
                "lease_ttl_secs": self.opts.ttl.as_secs(),
                "snapshots": c.snapshots,
                "resyncs": c.resyncs,
                "losses": c.store_losses,
                "changes": c.changes,
            },
            "appliance": {
                "control": self.opts.control.display().to_string(),
                "state": if self.generation.is_some() { "connected" } else { "disconnected" },
                "version": self.version,
                "error": self.link_error,
                "greetings": c.greetings,
                "in_sync": self.applied.is_some() && self.in_flight.is_none(),
                "synced_revision": self.applied_revision,
                "plans": c.plans,
                "full_applies": c.full_applies,
                "commands": c.commands,
                "command_errors": c.command_errors,
                "fdb_refused": c.fdb_refused,
                "last_error": self.last_error,
                "unappliable": self.unappliable,
                "supervised": self.boots.is_some(),
                "boots": self.boots.as_ref().map(|b| b.load(std::sync::atomic::Ordering::SeqCst)),
                "state_counts": self.applied.as_ref().map(Desired::counts),
                "left_out": self.left_out.iter().take(20).collect::<Vec<_>>(),
            },
            "grid_view": grid,
            "api": self.shared.api.json(),
        });
        if let Ok(mut s) = self.shared.status.lock() {
            *s = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node file with `[grid] node` set is checked with that node: its link address
    /// must be that node's overlay address, not node 1's.
    #[test]
    fn a_node_file_is_checked_with_its_own_node() {
        let dir = std::env::temp_dir().join(format!("weft-agent-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, node: &str, link: &str| {
            let path = dir.join(name);
            std::fs::write(
                &path,
                format!(
                    "[uplink]\naddress = \"192.0.2.12/24\"\n\n[link]\naddress = \"{link}\"\n\n\
                     [grid]\n{node}\n\n[[networks]]\nname = \"grid\"\nvni = 100\n"
                ),
            )
            .unwrap();
            path
        };
        assert!(load_node_config(&file("two.toml", "node = 2", "10.81.0.2/16")).is_ok());
        let wrong = load_node_config(&file("wrong.toml", "node = 2", "10.81.0.1/16"))
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("wrong.toml"), "{wrong}");
        // Without a node, any link address in the grid subnet becomes the node's.
        assert!(load_node_config(&file("any.toml", "", "10.81.0.7/16")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
