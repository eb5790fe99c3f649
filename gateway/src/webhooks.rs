//! Webhooks: the engine's directory events (an agent connected, disconnected, its MCP tools
//! changed) POSTed as signed JSON to the backend's URL, with retries, in order, never holding
//! back the agent side.
//!
//! Two tasks. The reader turns [`DirectoryEvent`]s into [`Event`]s and appends them to a
//! bounded queue (full: the oldest is dropped and counted); it never waits on the network, so
//! the engine's broadcast cannot lag because of a slow endpoint. When it lags anyway, it
//! re-reads [`ControlPlane::agents`] and reports what changed since its own last view. The
//! sender delivers the queue front to back, one event at a time (so an agent's events arrive
//! in order), retrying connection errors, 5xx and 429 with exponential backoff up to
//! `max_attempts`; any other answer ends that event's attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use dtma_control_plane::{AgentRecord, ControlPlane, DirectoryEvent};
use dtma_protocol::{Sandbox, ToolStatus};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::WebhookSettings;

/// Why webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid webhook URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("webhook CA file `{path}`: {reason}")]
    CaFile { path: String, reason: String },
    #[error("webhook TLS setup: {0}")]
    Tls(String),
}

/// Why one delivery attempt failed before an HTTP status came back.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// The event types a backend receives (`type` in the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "agent.connected")]
    Connected,
    #[serde(rename = "agent.disconnected")]
    Disconnected,
    #[serde(rename = "agent.mcp_status_changed")]
    McpStatusChanged,
}

/// One webhook body: `{"id", "type", "agent_id", "at", "data"}` (gateway/README.md, and the
/// `WebhookEvent` schema of gateway/openapi.json).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event, the same on every attempt: the receiver's deduplication key.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub agent_id: String,
    /// RFC 3339 UTC: when the gateway saw the change.
    pub at: String,
    pub data: EventData,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EventData {
    Connected(Connected),
    Disconnected(Disconnected),
    McpStatusChanged(McpStatusChanged),
}

/// `agent.connected`: the new session and what the agent said in `hello`.
#[derive(Debug, Clone, Serialize)]
pub struct Connected {
    pub session_id: String,
    pub agent_version: String,
    pub boot_id: String,
    pub protocol_version: u32,
    pub capabilities: Vec<String>,
    /// The TCP peer (the load balancer's address when there is one).
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
}

/// `agent.disconnected`: the session that ended (not sent for a session replaced by a newer one
/// of the same agent: that agent is still connected).
#[derive(Debug, Clone, Serialize)]
pub struct Disconnected {
    pub session_id: String,
    pub connected_at: String,
}

/// `agent.mcp_status_changed`: the tools that appeared, disappeared or changed, and the list as
/// it is now.
#[derive(Debug, Clone, Serialize)]
pub struct McpStatusChanged {
    pub session_id: String,
    pub changes: Vec<ToolChange>,
    pub tools: Vec<ToolStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One tool's change: `before` is `null` for `added`, `after` for `removed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolChange {
    pub change: Change,
    pub account_tool_instance_id: String,
    pub instance_name_on_toolbox: String,
    pub before: Option<ToolStatus>,
    pub after: Option<ToolStatus>,
}

/// The tool changes a backend cares about between two heartbeats: a tool (keyed by account tool
/// instance id and container name) appearing or disappearing, or its state changing:
/// `status_on_toolbox`, and in `runtime_details` the Docker `state`, the monitored
/// `server_state` (health) and the `container_id` (a recreated container). Docker's `status`
/// text ("Up 5 minutes") changes every heartbeat and is ignored, as are ports and times.
pub fn tool_changes(before: &[ToolStatus], after: &[ToolStatus]) -> Vec<ToolChange> {
    fn key(t: &ToolStatus) -> (&str, &str) {
        (&t.account_tool_instance_id, &t.instance_name_on_toolbox)
    }
    fn state(t: &ToolStatus) -> [&serde_json::Value; 3] {
        let d = &t.runtime_details;
        [&d["state"], &d["server_state"], &d["container_id"]]
    }
    let change =
        |change, t: &ToolStatus, before: Option<&ToolStatus>, after: Option<&ToolStatus>| {
            ToolChange {
                change,
                account_tool_instance_id: t.account_tool_instance_id.clone(),
                instance_name_on_toolbox: t.instance_name_on_toolbox.clone(),
                before: before.cloned(),
                after: after.cloned(),
            }
        };
    let old: HashMap<_, &ToolStatus> = before.iter().map(|t| (key(t), t)).collect();
    let new: HashMap<_, &ToolStatus> = after.iter().map(|t| (key(t), t)).collect();
    let mut out = Vec::new();
    for t in after {
        match old.get(&key(t)) {
            None => out.push(change(Change::Added, t, None, Some(t))),
            Some(b) if b.status_on_toolbox != t.status_on_toolbox || state(b) != state(t) => {
                out.push(change(Change::Changed, t, Some(b), Some(t)));
            }
            Some(_) => {}
        }
    }
    for t in before {
        if !new.contains_key(&key(t)) {
            out.push(change(Change::Removed, t, Some(t), None));
        }
    }
    out
}

/// What the backend has been told of an agent.
#[derive(Debug, Clone, Default)]
struct Known {
    session_id: String,
    connected: bool,
    tools: Vec<ToolStatus>,
}

/// Turns directory changes into events against what has been reported so far. Tools are
/// compared with the last list *reported*, not the heartbeat's `previous`: the same thing while
/// no event is lost, and still right after a lag.
#[derive(Debug, Default)]
pub struct Reporter {
    known: HashMap<String, Known>,
}

impl Reporter {
    pub fn new() -> Reporter {
        Reporter::default()
    }

    /// The events one directory change gives.
    pub fn on_event(&mut self, ev: &DirectoryEvent) -> Vec<Event> {
        match ev {
            DirectoryEvent::Connected(rec) => {
                let k = self.known.entry(rec.agent_id.clone()).or_default();
                if k.connected && k.session_id == rec.session_id {
                    return Vec::new(); // Seen already (a resync got there first).
                }
                k.connected = true;
                k.session_id = rec.session_id.clone();
                vec![connected(rec)]
            }
            DirectoryEvent::Disconnected(rec) if rec.moved => {
                // It closed this link because it is connected elsewhere (make-before-break).
                Vec::new()
            }
            DirectoryEvent::Disconnected(rec) => {
                let k = self.known.entry(rec.agent_id.clone()).or_default();
                if k.session_id == rec.session_id && !k.connected {
                    return Vec::new();
                }
                if k.session_id != rec.session_id && k.connected {
                    // An older session's end, sent after the newer one's start (the engine
                    // sends both outside its lock): the agent is still connected.
                    return Vec::new();
                }
                k.connected = false;
                k.session_id = rec.session_id.clone();
                vec![disconnected(rec)]
            }
            DirectoryEvent::Heartbeat { record, .. } => self.tools(record).into_iter().collect(),
        }
    }

    /// After a lag: the events that bring the backend from what it was told to `records`.
    pub fn resync(&mut self, records: &[AgentRecord]) -> Vec<Event> {
        let mut out = Vec::new();
        for rec in records {
            let k = self.known.entry(rec.agent_id.clone()).or_default();
            let same_session = k.session_id == rec.session_id;
            if rec.connected && !(same_session && k.connected) {
                out.push(connected(rec));
            } else if !rec.connected && (!same_session || k.connected) {
                if !same_session {
                    // A whole session came and went while we were behind.
                    out.push(connected(rec));
                }
                out.push(disconnected(rec));
            }
            k.connected = rec.connected;
            k.session_id = rec.session_id.clone();
            out.extend(self.tools(rec));
        }
        out
    }

    fn tools(&mut self, rec: &AgentRecord) -> Option<Event> {
        let now = rec.status.as_ref().map(|s| s.tool_statuses.as_slice())?;
        let k = self.known.entry(rec.agent_id.clone()).or_default();
        let changes = tool_changes(&k.tools, now);
        k.tools = now.to_vec();
        if changes.is_empty() {
            return None;
        }
        Some(Event {
            id: event_id(),
            kind: EventType::McpStatusChanged,
            agent_id: rec.agent_id.clone(),
            at: crate::http::rfc3339(rec.last_heartbeat.unwrap_or_else(SystemTime::now)),
            data: EventData::McpStatusChanged(McpStatusChanged {
                session_id: rec.session_id.clone(),
                changes,
                tools: now.to_vec(),
            }),
        })
    }
}

fn connected(rec: &AgentRecord) -> Event {
    Event {
        id: event_id(),
        kind: EventType::Connected,
        agent_id: rec.agent_id.clone(),
        at: crate::http::rfc3339(rec.connected_at),
        data: EventData::Connected(Connected {
            session_id: rec.session_id.clone(),
            agent_version: rec.hello.agent_version.clone(),
            boot_id: rec.hello.boot_id.clone(),
            protocol_version: rec.hello.protocol_version,
            capabilities: rec.hello.capabilities.clone(),
            peer: rec.peer.to_string(),
            sandbox: rec.hello.sandbox.clone(),
        }),
    }
}

fn disconnected(rec: &AgentRecord) -> Event {
    Event {
        id: event_id(),
        kind: EventType::Disconnected,
        agent_id: rec.agent_id.clone(),
        at: crate::http::rfc3339(rec.disconnected_at.unwrap_or_else(SystemTime::now)),
        data: EventData::Disconnected(Disconnected {
            session_id: rec.session_id.clone(),
            connected_at: crate::http::rfc3339(rec.connected_at),
        }),
    }
}

/// `evt_` and 128 random bits in hex (time and a counter if the OS RNG fails).
fn event_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    match getrandom::fill(&mut bytes) {
        Ok(()) => format!("evt_{}", hex(&bytes)),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("evt_{t:x}_{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Dtma-Signature` value: `t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex(&mac.finalize().into_bytes()))
}

/// Counters (a snapshot; [`Webhooks::stats`] to watch them change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events put in the queue.
    pub enqueued: u64,
    /// Events the endpoint accepted (2xx).
    pub delivered: u64,
    /// Events given up: refused (4xx but 429, 3xx) or out of attempts.
    pub failed: u64,
    /// Events dropped unsent because the queue was full (the oldest go first).
    pub dropped: u64,
    /// POST attempts made.
    pub attempts: u64,
    /// Times the reader lagged behind the engine and re-read the directory.
    pub resyncs: u64,
    /// Disconnects held back until the cluster shows whether the agent is still connected
    /// elsewhere (cluster only). A drain waits for them to be decided.
    pub held_disconnects: usize,
}

/// An event ready to send: its body is serialized once, so every attempt sends the same bytes.
#[derive(Debug, Clone)]
struct Pending {
    id: String,
    kind: EventType,
    agent_id: String,
    body: Bytes,
}

/// The bounded queue between the reader and the sender.
#[derive(Debug)]
struct Queue {
    items: VecDeque<Pending>,
    capacity: usize,
}

impl Queue {
    /// Append; returns the event dropped to make room, if any.
    fn push(&mut self, p: Pending) -> Option<Pending> {
        let dropped = if self.items.len() >= self.capacity {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(p);
        dropped
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
    stats: watch::Sender<Stats>,
}

impl Shared {
    fn enqueue(&self, events: Vec<Event>) {
        for ev in events {
            let body = match serde_json::to_vec(&ev) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    warn!(error = %e, "Webhook event not serializable; skipped.");
                    continue;
                }
            };
            let p = Pending {
                id: ev.id,
                kind: ev.kind,
                agent_id: ev.agent_id,
                body,
            };
            let dropped = lock(&self.queue).push(p);
            let mut total = 0;
            self.stats.send_modify(|s| {
                s.enqueued += 1;
                if dropped.is_some() {
                    s.dropped += 1;
                    total = s.dropped;
                }
            });
            if let Some(d) = dropped {
                warn!(
                    event_id = %d.id, event_type = ?d.kind, agent_id = %d.agent_id,
                    dropped_total = total,
                    "Webhook queue full: the oldest event was dropped unsent."
                );
            }
            self.ready.notify_one();
        }
    }

    fn pop(&self) -> Option<Pending> {
        lock(&self.queue).items.pop_front()
    }

    fn len(&self) -> usize {
        lock(&self.queue).items.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where events go, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header.
    pub(crate) authority: String,
    pub(crate) path_and_query: String,
    pub(crate) https: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http or https".into()),
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not supported (the signature authenticates)".into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Target {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            https,
        })
    }
}

/// The running webhook service: counters for tests and operators.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

impl Webhooks {
    /// The counters; `wait_for` on the receiver to see them change.
    pub fn stats(&self) -> watch::Receiver<Stats> {
        self.shared.stats.subscribe()
    }

    /// Events waiting in the queue (the one being sent is not counted).
    pub fn queued(&self) -> usize {
        self.shared.len()
    }
}

/// Subscribe to `cp`'s directory (call before agents can connect, so none is missed) and start
/// the reader and the sender on `tasks`. At shutdown the reader stops; the sender goes on with
/// what is queued for `shutdown_grace`, then stops.
pub fn start(
    cp: &ControlPlane,
    cluster: Option<crate::cluster::Cluster>,
    settings: WebhookSettings,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Webhooks, Error> {
    let target = Target::parse(&settings.url).map_err(|reason| Error::Url {
        url: settings.url.clone(),
        reason,
    })?;
    let tls = if target.https {
        Some(tls_config(settings.ca_file.as_deref())?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            capacity: settings.queue,
        }),
        ready: Notify::new(),
        stats: watch::channel(Stats::default()).0,
    });
    let events = cp.directory_events();
    tasks.spawn(read(
        cp.clone(),
        cluster,
        events,
        shared.clone(),
        shutdown.clone(),
    ));
    info!(
        url = %settings.url,
        max_attempts = settings.max_attempts,
        queue = settings.queue,
        "Webhooks on."
    );
    let sender = Sender {
        shared: shared.clone(),
        target,
        tls,
        settings,
    };
    tasks.spawn(sender.run(shutdown));
    Ok(Webhooks { shared })
}

/// The reader: directory events into the queue, never waiting on delivery.
///
/// In a cluster, a disconnect is held for the cluster's `node_ttl` and dropped if the agent is
/// then connected anywhere (it moved to another node, or came back): the backend hears
/// `agent.disconnected` only for an agent that is really gone, whichever node it left.
async fn read(
    cp: ControlPlane,
    cluster: Option<crate::cluster::Cluster>,
    mut events: broadcast::Receiver<DirectoryEvent>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut reporter = Reporter::new();
    // Disconnects held back (cluster only): agent id → (when to decide, the event).
    let mut held: HashMap<String, (tokio::time::Instant, DirectoryEvent)> = HashMap::new();
    loop {
        let next_due = held.values().map(|(at, _)| *at).min();
        let ev = tokio::select! {
            // A drain waits for what is held (`held_disconnects`), so normally nothing is left.
            _ = shutdown.cancelled() => return,
            _ = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                let due: Vec<String> = held
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in due {
                    let Some((_, ev)) = held.remove(&id) else { continue };
                    let n = held.len();
                    shared.stats.send_modify(|s| s.held_disconnects = n);
                    let elsewhere = cluster.as_ref().and_then(|c| c.holder(&id));
                    match elsewhere {
                        Some(node) => debug!(agent_id = %id, node, "Disconnect not reported: the agent is connected to the cluster."),
                        None => shared.enqueue(reporter.on_event(&ev)),
                    }
                }
                continue;
            }
            ev = events.recv() => ev,
        };
        match ev {
            Ok(DirectoryEvent::Disconnected(rec)) if cluster.is_some() => {
                let grace = cluster.as_ref().map_or(Duration::ZERO, |c| c.node_ttl());
                held.insert(
                    rec.agent_id.clone(),
                    (
                        tokio::time::Instant::now() + grace,
                        DirectoryEvent::Disconnected(rec),
                    ),
                );
                let n = held.len();
                shared.stats.send_modify(|s| s.held_disconnects = n);
            }
            Ok(ev) => {
                if let DirectoryEvent::Connected(rec) = &ev {
                    // Back before its disconnect was decided: never gone.
                    if held.remove(&rec.agent_id).is_some() {
                        let n = held.len();
                        shared.stats.send_modify(|s| s.held_disconnects = n);
                    }
                }
                shared.enqueue(reporter.on_event(&ev))
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(missed, "Webhooks fell behind the directory; re-reading it.");
                shared.stats.send_modify(|s| s.resyncs += 1);
                shared.enqueue(reporter.resync(&cp.agents()));
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The sender: the queue, front to back, each event until delivered or given up.
struct Sender {
    shared: Arc<Shared>,
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    settings: WebhookSettings,
}

enum Outcome {
    Delivered,
    Retry(String),
    Refused(StatusCode),
}

impl Sender {
    async fn run(self, shutdown: CancellationToken) {
        let grace = self.settings.shutdown_grace;
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = self.work(&shutdown) => {}
            _ = deadline => {
                let left = self.shared.len();
                if left > 0 {
                    warn!(left, ?grace, "Webhooks: stopping with events still queued.");
                }
            }
        }
    }

    async fn work(&self, shutdown: &CancellationToken) {
        loop {
            match self.shared.pop() {
                Some(p) => self.deliver(&p).await,
                None if shutdown.is_cancelled() => return,
                None => {
                    tokio::select! {
                        _ = self.shared.ready.notified() => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn deliver(&self, p: &Pending) {
        let s = &self.settings;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(s.backoff_base)
            .with_max_delay(s.backoff_cap)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(s.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX))
            .build();
        let mut attempt = 1u32;
        loop {
            let outcome = match self.attempt(&p.body).await {
                Ok(status) if status.is_success() => Outcome::Delivered,
                Ok(status)
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
                {
                    Outcome::Retry(format!("HTTP {}", status.as_u16()))
                }
                Ok(status) => Outcome::Refused(status),
                Err(e) => Outcome::Retry(e.to_string()),
            };
            self.shared.stats.send_modify(|st| st.attempts += 1);
            match outcome {
                Outcome::Delivered => {
                    debug!(event_id = %p.id, event_type = ?p.kind, agent_id = %p.agent_id, attempt, "Webhook delivered.");
                    self.shared.stats.send_modify(|st| st.delivered += 1);
                    return;
                }
                Outcome::Refused(status) => {
                    warn!(event_id = %p.id, event_type = ?p.kind, agent_id = %p.agent_id, status = status.as_u16(), "Webhook refused by the endpoint; not retried.");
                    self.shared.stats.send_modify(|st| st.failed += 1);
                    return;
                }
                Outcome::Retry(reason) => match delays.next() {
                    Some(delay) => {
                        debug!(event_id = %p.id, attempt, %reason, ?delay, "Webhook attempt failed; retrying.");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => {
                        warn!(event_id = %p.id, event_type = ?p.kind, agent_id = %p.agent_id, attempts = attempt, %reason, "Webhook given up after its last attempt.");
                        self.shared.stats.send_modify(|st| st.failed += 1);
                        return;
                    }
                },
            }
        }
    }

    /// One POST under the attempt timeout; the status of the answer.
    async fn attempt(&self, body: &Bytes) -> Result<StatusCode, AttemptError> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.post(body))
            .await
            .map_err(|_| AttemptError::Timeout(timeout))?
    }

    async fn post(&self, body: &Bytes) -> Result<StatusCode, AttemptError> {
        let t = &self.target;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut sig = HeaderValue::from_str(&signature(
            self.settings.secret.expose().as_bytes(),
            now,
            body,
        ))
        .map_err(hyper::http::Error::from)?;
        sig.set_sensitive(true);
        let req = hyper::Request::post(t.path_and_query.as_str())
            .header(header::HOST, t.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("dtma-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONNECTION, "close")
            .header("dtma-signature", sig)
            .body(Full::new(body.clone()))?;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(AttemptError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(TokioIo::new(tcp), req).await,
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(t.host.clone()).map_err(|e| {
                    AttemptError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(AttemptError::Tls)?;
                exchange(TokioIo::new(tls), req).await
            }
        }
    }
}

/// Send `req` on a fresh HTTP/1.1 connection over `io`; the answer's status (its body is not
/// read: the connection closes).
async fn exchange<IO>(io: IO, req: hyper::Request<Full<Bytes>>) -> Result<StatusCode, AttemptError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(sender.send_request(req));
    let resp = tokio::select! {
        biased;
        r = &mut answer => r?,
        // The connection may finish as it hands over the answer: take the answer then.
        c = &mut conn => {
            c?;
            answer.await?
        }
    };
    Ok(resp.status())
}

/// rustls client configuration: the webpki roots plus the certificates of `ca_file`.
pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let err = |reason: String| Error::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtma_protocol::{Hello, PROTOCOL_VERSION};

    fn tool(
        id: &str,
        name: &str,
        on_toolbox: &str,
        state: &str,
        server: &str,
        text: &str,
    ) -> ToolStatus {
        ToolStatus {
            account_tool_instance_id: id.into(),
            instance_name_on_toolbox: name.into(),
            status_on_toolbox: on_toolbox.into(),
            runtime_details: serde_json::json!({
                "container_id": format!("c-{name}"),
                "state": state,
                "status": text,
                "server_state": server,
            }),
        }
    }

    #[test]
    fn tool_changes_report_presence_and_state_but_not_uptime_text() {
        let a = tool(
            "ati-1",
            "mcp-a",
            "running",
            "running",
            "ready",
            "Up 1 minute",
        );
        let b = tool(
            "ati-2",
            "mcp-b",
            "running",
            "running",
            "ready",
            "Up 1 minute",
        );
        // Docker's status text moves every heartbeat: not a change.
        let a_later = tool(
            "ati-1",
            "mcp-a",
            "running",
            "running",
            "ready",
            "Up 2 minutes",
        );
        assert!(tool_changes(&[a.clone(), b.clone()], &[a_later.clone(), b.clone()]).is_empty());
        assert!(tool_changes(&[], &[]).is_empty());

        // Health (server_state) alone is a change.
        let a_degraded = tool(
            "ati-1",
            "mcp-a",
            "running",
            "running",
            "degraded",
            "Up 2 minutes",
        );
        let c = tool_changes(&[a.clone(), b.clone()], &[a_degraded.clone(), b.clone()]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].change, Change::Changed);
        assert_eq!(c[0].before.as_ref(), Some(&a));
        assert_eq!(c[0].after.as_ref(), Some(&a_degraded));

        // Stopped: status_on_toolbox and the Docker state.
        let a_stopped = tool(
            "ati-1",
            "mcp-a",
            "stopped",
            "exited",
            "stopped",
            "Exited (0)",
        );
        let c = tool_changes(std::slice::from_ref(&a), &[a_stopped]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].change, Change::Changed);

        // A recreated container (new id, same name and state) is a change.
        let mut a_new = a.clone();
        a_new.runtime_details["container_id"] = "c-other".into();
        assert_eq!(tool_changes(std::slice::from_ref(&a), &[a_new]).len(), 1);

        // Appearing and disappearing, with the missing side null.
        let c = tool_changes(std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].change, c[0].before.as_ref(), c[0].after.as_ref()),
            (Change::Added, None, Some(&b))
        );
        assert_eq!(
            (c[1].change, c[1].before.as_ref(), c[1].after.as_ref()),
            (Change::Removed, Some(&a), None)
        );
        let v = serde_json::to_value(&c[0]).unwrap();
        assert_eq!(v["change"], "added");
        assert!(v["before"].is_null());
    }

    fn record(
        agent: &str,
        session: &str,
        connected: bool,
        tools: Option<Vec<ToolStatus>>,
    ) -> AgentRecord {
        AgentRecord {
            agent_id: agent.into(),
            connected,
            session_id: session.into(),
            hello: Hello {
                agent_id: agent.into(),
                agent_version: "1.2.3".into(),
                boot_id: "boot-1".into(),
                protocol_version: PROTOCOL_VERSION,
                capabilities: vec!["exec".into()],
                streams: Vec::new(),
                max_frame_bytes: 1 << 20,
                sandbox: None,
            },
            peer: "127.0.0.1:40000".parse().unwrap(),
            connected_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            disconnected_at: (!connected)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100)),
            last_heartbeat: None,
            status: tools.map(status),
            moved: false,
        }
    }

    fn status(tools: Vec<ToolStatus>) -> dtma_protocol::Status {
        serde_json::from_value(serde_json::json!({
            "agent_version": "1.2.3", "uptime_s": 1, "at": "2024-01-01T00:00:00Z",
            "load_average": [0.0, 0.0, 0.0], "cpu_load_percent": 0.0,
            "memory": {"total_bytes": 1, "used_bytes": 1, "free_bytes": 0, "available_bytes": 0},
            "disk": null, "streams_running": 0, "streams_held": 0, "tool_statuses": tools,
        }))
        .unwrap()
    }

    fn kinds(events: &[Event]) -> Vec<EventType> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn reporter_reports_each_change_once() {
        let mut r = Reporter::new();
        let a = tool("ati-1", "mcp-a", "running", "running", "ready", "Up");
        let up = r.on_event(&DirectoryEvent::Connected(record("a1", "s1", true, None)));
        assert_eq!(kinds(&up), [EventType::Connected]);
        let v = serde_json::to_value(&up[0]).unwrap();
        assert_eq!(v["type"], "agent.connected");
        assert_eq!(v["agent_id"], "a1");
        assert_eq!(v["at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["session_id"], "s1");
        assert_eq!(v["data"]["agent_version"], "1.2.3");
        assert_eq!(v["data"]["peer"], "127.0.0.1:40000");
        assert!(v["id"].as_str().unwrap().starts_with("evt_"));
        // The same session again (a resync got there first): nothing.
        assert!(
            r.on_event(&DirectoryEvent::Connected(record("a1", "s1", true, None)))
                .is_empty()
        );

        let beat = |tools| DirectoryEvent::Heartbeat {
            previous: None,
            record: record("a1", "s1", true, Some(tools)),
        };
        // No tools, then a tool appears, then the same again: one event.
        assert!(r.on_event(&beat(vec![])).is_empty());
        let added = r.on_event(&beat(vec![a.clone()]));
        assert_eq!(kinds(&added), [EventType::McpStatusChanged]);
        let v = serde_json::to_value(&added[0]).unwrap();
        assert_eq!(v["data"]["changes"][0]["change"], "added");
        assert_eq!(v["data"]["tools"][0]["instance_name_on_toolbox"], "mcp-a");
        assert!(r.on_event(&beat(vec![a.clone()])).is_empty());

        let down = r.on_event(&DirectoryEvent::Disconnected(record(
            "a1", "s1", false, None,
        )));
        assert_eq!(kinds(&down), [EventType::Disconnected]);
        let v = serde_json::to_value(&down[0]).unwrap();
        assert_eq!(v["at"], "2023-11-14T22:15:00Z");
        assert_eq!(v["data"]["connected_at"], "2023-11-14T22:13:20Z");
        let ids: std::collections::HashSet<_> = [&up[0], &added[0], &down[0]]
            .iter()
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(ids.len(), 3, "ids are unique");
    }

    #[test]
    fn resync_reports_what_was_missed_and_nothing_else() {
        let mut r = Reporter::new();
        let a = tool("ati-1", "mcp-a", "running", "running", "ready", "Up");
        r.on_event(&DirectoryEvent::Connected(record("a1", "s1", true, None)));
        r.on_event(&DirectoryEvent::Connected(record("a2", "s1", true, None)));
        r.on_event(&DirectoryEvent::Connected(record("a3", "s1", true, None)));
        // Missed: a1 got a tool; a2 reconnected (new session) and left; a3 nothing; a4 came.
        let records = [
            record("a1", "s1", true, Some(vec![a.clone()])),
            record("a2", "s2", false, None),
            record("a3", "s1", true, None),
            record("a4", "s1", true, None),
        ];
        let ev = r.resync(&records);
        let got: Vec<(&str, EventType)> =
            ev.iter().map(|e| (e.agent_id.as_str(), e.kind)).collect();
        assert_eq!(
            got,
            [
                ("a1", EventType::McpStatusChanged),
                ("a2", EventType::Connected),
                ("a2", EventType::Disconnected),
                ("a4", EventType::Connected),
            ]
        );
        // Up to date now: again gives nothing, and so do the stale events still in the channel.
        assert!(r.resync(&records).is_empty());
        // An older session's end arriving after the newer session's start changes nothing.
        assert!(
            r.on_event(&DirectoryEvent::Disconnected(record(
                "a3", "s0", false, None
            )))
            .is_empty()
        );
        assert!(
            r.on_event(&DirectoryEvent::Disconnected(record(
                "a2", "s2", false, None
            )))
            .is_empty()
        );
        assert!(
            r.on_event(&DirectoryEvent::Connected(record("a4", "s1", true, None)))
                .is_empty()
        );
    }

    fn shared(capacity: usize) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                capacity,
            }),
            ready: Notify::new(),
            stats: watch::channel(Stats::default()).0,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let q = shared(2);
        let events: Vec<Event> = ["s1", "s2", "s3"]
            .iter()
            .map(|s| connected(&record("a1", s, true, None)))
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        q.enqueue(events);
        let stats = *q.stats.borrow();
        assert_eq!((stats.enqueued, stats.dropped), (3, 1));
        assert_eq!(q.len(), 2);
        let left: Vec<String> = std::iter::from_fn(|| q.pop()).map(|p| p.id).collect();
        assert_eq!(left, ids[1..]);
        let body: serde_json::Value = {
            q.enqueue(vec![connected(&record("a9", "s", true, None))]);
            serde_json::from_slice(&q.pop().unwrap().body).unwrap()
        };
        assert_eq!(body["agent_id"], "a9");
    }

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently (Python: hmac.new(key, b'1700000000.{"a":1}', sha256)).
        assert_eq!(
            signature(b"whsec-0123456789abcdef", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=d77c78ac4da074c56908b55eac30358b2a7bfc573be4c76819af5102e8dcf939"
        );
    }

    #[test]
    fn targets_parse_with_default_ports_and_refuse_the_rest() {
        let t = Target::parse("http://hooks.example/dtma?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.https),
            ("hooks.example", 80, false)
        );
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("hooks.example", "/dtma?x=1")
        );
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.https, t.path_and_query.as_str()),
            ("::1", 8443, true, "/")
        );
        for bad in [
            "ftp://x/",
            "hooks.example/x",
            "http://user:pw@x/",
            "/relative",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
