//! A reference backend: accepts agent connections on `/dtma/connect` and lets an operator drive
//! them over HTTP. Used by `examples/control_plane.rs`, the integration tests and benchmarks.
//!
//! It implements the backend's side of the protocol the way protocol/README.md asks: it answers
//! `hello` with `welcome` and resume points, delivers each stream's events exactly once and in
//! order (dropping resent duplicates by `seq`), acknowledges them, and grants credit as its
//! consumers read. Operator API:
//! - `GET /agents`: connected agents.
//! - `POST /agents/{id}/exec` with an `exec` body (`{"command": "..."}`): the output streams back
//!   as it arrives (raw text), ending with a `[dtma] exit ...` line; `?format=ndjson` gives the
//!   events as JSON lines instead.
//!
//! These two routes have no operator authentication: they are for loopback and tests. The
//! gateway (`gateway/`) uses this crate as its agent-side engine with them switched off
//! ([`Options::operator_http`]), a [`TokenStore`] of its own, and its own operator API on top
//! of [`ControlPlane::request_with_id`] and [`ControlPlane::agents`].
//!
//! # Layout
//! - `auth`: the [`TokenStore`] seam agents are authenticated through.
//! - this file: sessions (handshake, resume points, replacement), delivery (dedup by seq, acks,
//!   credit as the consumer reads), the agent directory, the reference operator routes.

pub mod auth;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use auth::{AgentGrant, StaticTokens, TokenStore, TokenStoreError};
use base64::Engine as _;
use bytes::Bytes;
use dtma_protocol::{
    AgentMessage, BackendMessage, Control, Credit, Encoding, Exec, Hello, LogsFollow,
    PROTOCOL_VERSION, Reconnect, Request, RequestBody, ResumePoint, Status, Welcome, close_code,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

type Body = BoxBody<Bytes, Infallible>;

/// How the reference backend behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bearer tokens agents may connect with (any agent id), when `token_store` is not set.
    pub tokens: Vec<String>,
    /// Where agent tokens are looked up instead of `tokens`.
    pub token_store: Option<Arc<dyn TokenStore>>,
    /// Serve the reference operator routes (`/agents`, `/agents/{id}/exec`, unauthenticated)
    /// next to `/dtma/connect`. The gateway turns them off and serves its own API.
    pub operator_http: bool,
    /// Credit limit of a new stream, in bytes.
    pub initial_credit: u64,
    /// `heartbeat_interval_ms` sent in `welcome`.
    pub heartbeat_interval_ms: Option<u64>,
    /// Protocol version announced in `welcome` (tests set a wrong one).
    pub protocol_version: u32,
    /// Prefix of session ids (`{prefix}s{n}`): a gateway node sets its node id, so that session
    /// ids are unique across nodes.
    pub session_prefix: String,
    /// Consulted at `hello` for the streams the agent lists that this engine holds no slot for
    /// (a cluster: streams opened through another node). See [`ResumeHook`].
    pub resume_hook: Option<Arc<dyn ResumeHook>>,
}

/// Streams that outlive this engine (a gateway cluster keeps them in NATS). At `hello`, the
/// engine asks the hook about the listed streams it does not hold; the hook takes over those it
/// knows with [`ControlPlane::adopt`], before the engine computes the resume points. With a hook
/// set, events of streams nobody holds are not acknowledged (the agent keeps them and resends
/// them after its next reconnect, when the hook can adopt them) instead of being dropped.
pub trait ResumeHook: Send + Sync + std::fmt::Debug {
    fn unknown_streams<'a>(
        &'a self,
        cp: &'a ControlPlane,
        agent: &'a str,
        ids: Vec<String>,
    ) -> auth::BoxFuture<'a, ()>;
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: Vec::new(),
            token_store: None,
            operator_http: true,
            initial_credit: 1 << 20,
            heartbeat_interval_ms: None,
            protocol_version: PROTOCOL_VERSION,
            session_prefix: String::new(),
            resume_hook: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent `{0}` is not connected")]
    NotConnected(String),
    #[error("agent `{0}` has been told to move to another node")]
    Moving(String),
}

/// Counters a test can assert on.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events received again after they had been delivered (resends); dropped.
    pub duplicates: AtomicU64,
    /// Events that skipped a seq: a protocol violation by the agent.
    pub gaps: AtomicU64,
    /// Sessions accepted so far.
    pub sessions: AtomicU64,
    /// Events for streams this backend does not know (acknowledged and dropped).
    pub orphan_events: AtomicU64,
}

/// One connected agent.
pub struct Session {
    pub agent_id: String,
    pub hello: Hello,
    pub session_id: String,
    tx: mpsc::UnboundedSender<Message>,
    /// Set by [`ControlPlane::drain`]: no new request is sent on this session (it is leaving a
    /// node that is stopping). A single `redirect` does not set it: if the agent cannot reach
    /// its new target it stays, and must stay usable.
    moving: std::sync::atomic::AtomicBool,
}

impl Session {
    fn send_json<T: serde::Serialize>(&self, m: &T) {
        if let Ok(text) = serde_json::to_string(m) {
            let _ = self.tx.send(Message::text(text));
        }
    }
}

struct Slot {
    /// Highest seq delivered to the consumer.
    highest: Option<u64>,
    /// For a hosted stream ([`ControlPlane::host`]): the highest seq its owner has made durable
    /// and acknowledged ([`ControlPlane::ack`]); the resume point. `None` for ordinary streams,
    /// which are acknowledged as they are delivered.
    durable: Option<Option<u64>>,
    /// Credit limit granted so far.
    limit: u64,
    tx: mpsc::UnboundedSender<AgentMessage>,
}

/// What the backend knows of an agent that has connected at least once.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub agent_id: String,
    /// True while a session of this agent is open.
    pub connected: bool,
    /// The latest session's id.
    pub session_id: String,
    /// The latest session's `hello`.
    pub hello: Hello,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    /// When the latest session ended; `None` while connected.
    pub disconnected_at: Option<SystemTime>,
    /// When the latest `status` heartbeat arrived, and that heartbeat.
    pub last_heartbeat: Option<SystemTime>,
    pub status: Option<Status>,
    /// The latest session ended with the agent's close "moved" (make-before-break): the agent
    /// is connected elsewhere, this record's `connected = false` is only this backend's view.
    pub moved: bool,
}

/// A change to the agent directory ([`ControlPlane::directory_events`]).
#[derive(Debug, Clone)]
pub enum DirectoryEvent {
    /// A session opened (a new agent, a reconnect, or a replacement of the agent's session).
    Connected(AgentRecord),
    /// The agent's session ended and no newer one replaced it.
    Disconnected(AgentRecord),
    /// A `status` heartbeat arrived; `previous` is the one before it (of any session).
    Heartbeat {
        previous: Option<Box<Status>>,
        record: AgentRecord,
    },
}

struct Inner {
    opts: Options,
    store: Arc<dyn TokenStore>,
    /// Every agent seen since start, connected or not.
    directory: Mutex<HashMap<String, AgentRecord>>,
    agents: Mutex<HashMap<String, Arc<Session>>>,
    changed: watch::Sender<u64>,
    /// Streams by (agent id, request id); they outlive sessions.
    slots: Mutex<HashMap<(String, String), Slot>>,
    notices: broadcast::Sender<(String, AgentMessage)>,
    directory_events: broadcast::Sender<DirectoryEvent>,
    next_id: AtomicU64,
    stats: Stats,
}

/// The reference backend. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    pub fn new(opts: Options) -> ControlPlane {
        let store = opts
            .token_store
            .clone()
            .unwrap_or_else(|| Arc::new(StaticTokens::new(opts.tokens.clone())));
        ControlPlane {
            inner: Arc::new(Inner {
                opts,
                store,
                directory: Mutex::new(HashMap::new()),
                agents: Mutex::new(HashMap::new()),
                changed: watch::channel(0).0,
                slots: Mutex::new(HashMap::new()),
                notices: broadcast::channel(4096).0,
                directory_events: broadcast::channel(4096).0,
                next_id: AtomicU64::new(1),
                stats: Stats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Serve agents and operators on `listener` until `stop` is cancelled.
    pub fn serve(
        &self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.serve_tls(listener, None, stop)
    }

    /// Like [`ControlPlane::serve`], with TLS when `tls` is given (agents then dial `wss://`).
    pub fn serve_tls(
        &self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.serve_until(listener, tls, stop.clone(), stop)
    }

    /// Like [`ControlPlane::serve_tls`], with the listener closed at `accept_stop` and the
    /// sessions ended at `stop`: a draining node stops taking agents while those it holds move.
    pub fn serve_until(
        &self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        accept_stop: CancellationToken,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(v) => v,
                        Err(e) => { warn!(error = %e, "accept failed"); continue; }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let cp = cp.clone();
                let stop = stop.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => cp.serve_conn(tcp, peer, stop).await,
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => cp.serve_conn(tls, peer, stop).await,
                            Err(e) => warn!(%peer, error = %e, "TLS handshake failed."),
                        },
                    }
                });
            }
        })
    }

    async fn serve_conn<IO>(self, io: IO, peer: SocketAddr, stop: CancellationToken)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let cp = self.clone();
            let stop = stop.clone();
            async move { Ok::<_, Infallible>(cp.route(req, peer, stop).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
    }

    /// Bind `addr` and serve. Returns the bound address.
    pub async fn bind(
        &self,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, self.serve(listener, stop)))
    }

    /// The session of agent `id`, when connected.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.inner.agents).get(id).cloned()
    }

    /// Every agent seen since start, sorted by id.
    pub fn agents(&self) -> Vec<AgentRecord> {
        let mut list: Vec<AgentRecord> = lock(&self.inner.directory).values().cloned().collect();
        list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        list
    }

    /// What is known of agent `id`, if it has ever connected.
    pub fn agent(&self, id: &str) -> Option<AgentRecord> {
        lock(&self.inner.directory).get(id).cloned()
    }

    /// A receiver that changes whenever an agent connects or disconnects.
    pub fn sessions_changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Wait until agent `id` is connected and return its session.
    pub async fn wait_for_agent(&self, id: &str) -> Arc<Session> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if let Some(s) = self.session(id) {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Wait until agent `id` connects with a session other than `old`.
    pub async fn wait_for_new_session(&self, id: &str, old: &str) -> Arc<Session> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if let Some(s) = self.session(id)
                && s.session_id != old
            {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Unsequenced messages from agents (errors without seq, state, status).
    pub fn notices(&self) -> broadcast::Receiver<(String, AgentMessage)> {
        self.inner.notices.subscribe()
    }

    /// Changes to the agent directory as they happen: connects, disconnects and heartbeats. A
    /// receiver that lags (more than 4096 behind) gets `RecvError::Lagged` and should re-read
    /// [`ControlPlane::agents`].
    pub fn directory_events(&self) -> broadcast::Receiver<DirectoryEvent> {
        self.inner.directory_events.subscribe()
    }

    /// Send a request; its events arrive on the returned stream.
    pub fn request(&self, agent: &str, body: RequestBody) -> Result<StreamRx, Error> {
        let id = format!("req-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        self.request_with_id(agent, id, None, body)
    }

    /// Send a request with a chosen id and optional `expires_at`.
    pub fn request_with_id(
        &self,
        agent: &str,
        id: String,
        expires_at: Option<String>,
        body: RequestBody,
    ) -> Result<StreamRx, Error> {
        let (rx, limit) = self.open_slot(agent, &id, expires_at, body, false)?;
        Ok(StreamRx {
            cp: self.clone(),
            agent: agent.to_owned(),
            id,
            rx,
            auto_credit: true,
            window: limit,
            consumed: 0,
            granted: limit,
        })
    }

    /// Send a request whose events the caller makes durable before they are acknowledged: the
    /// engine forwards each event once, in order, and acknowledges nothing until the caller
    /// calls [`ControlPlane::ack`]; credit is raised with [`ControlPlane::raise_limit`]. A
    /// gateway cluster hosts its streams this way (events go to NATS first). Returns the events
    /// and the stream's first credit limit.
    pub fn host(
        &self,
        agent: &str,
        id: &str,
        expires_at: Option<String>,
        body: RequestBody,
    ) -> Result<(mpsc::UnboundedReceiver<AgentMessage>, u64), Error> {
        self.open_slot(agent, id, expires_at, body, true)
    }

    /// Take over a stream opened elsewhere (another node) that the agent reported in `hello`:
    /// called by a [`ResumeHook`]. `durable` is the highest seq already made durable (the
    /// resume point), `limit` the credit limit granted so far.
    pub fn adopt(
        &self,
        agent: &str,
        id: &str,
        durable: Option<u64>,
        limit: u64,
    ) -> mpsc::UnboundedReceiver<AgentMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.slots).insert(
            (agent.to_owned(), id.to_owned()),
            Slot {
                highest: durable,
                durable: Some(durable),
                limit,
                tx,
            },
        );
        rx
    }

    /// The events up to `seq` of hosted stream `id` are durable: acknowledge them to the agent.
    pub fn ack(&self, agent: &str, id: &str, seq: u64) {
        if let Some(slot) = lock(&self.inner.slots).get_mut(&(agent.to_owned(), id.to_owned()))
            && slot.durable.is_some()
        {
            slot.durable = Some(Some(seq.max(slot.durable.flatten().unwrap_or(0))));
        }
        if let Some(s) = self.session(agent) {
            s.send_json(&BackendMessage::Control(Control::Ack(dtma_protocol::Ack {
                id: id.to_owned(),
                seq,
            })));
        }
    }

    /// Raise hosted stream `id`'s credit limit to `limit` (absolute; a lower value is ignored).
    pub fn raise_limit(&self, agent: &str, id: &str, limit: u64) {
        let raised = {
            let mut slots = lock(&self.inner.slots);
            match slots.get_mut(&(agent.to_owned(), id.to_owned())) {
                Some(slot) if limit > slot.limit => {
                    slot.limit = limit;
                    true
                }
                _ => false,
            }
        };
        if raised && let Some(s) = self.session(agent) {
            s.send_json(&BackendMessage::Control(Control::Credit(Credit {
                id: id.to_owned(),
                limit,
            })));
        }
    }

    /// Drop every hosted stream of `agent` (it moved to another node, which adopted them).
    pub fn forget_hosted(&self, agent: &str) -> usize {
        let mut slots = lock(&self.inner.slots);
        let before = slots.len();
        slots.retain(|(a, _), slot| a != agent || slot.durable.is_none());
        before - slots.len()
    }

    /// The credit limit a new stream of `body` starts with: its own `credit`, or the engine's
    /// `initial_credit`.
    pub fn initial_limit(&self, body: &RequestBody) -> u64 {
        match body {
            RequestBody::Exec(Exec {
                credit: Some(c), ..
            }) => *c,
            RequestBody::LogsFollow(LogsFollow {
                credit: Some(c), ..
            }) => *c,
            _ => self.inner.opts.initial_credit,
        }
    }

    fn open_slot(
        &self,
        agent: &str,
        id: &str,
        expires_at: Option<String>,
        body: RequestBody,
        hosted: bool,
    ) -> Result<(mpsc::UnboundedReceiver<AgentMessage>, u64), Error> {
        let session = self
            .session(agent)
            .ok_or_else(|| Error::NotConnected(agent.to_owned()))?;
        if session.moving.load(Ordering::Relaxed) {
            return Err(Error::Moving(agent.to_owned()));
        }
        let limit = self.initial_limit(&body);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.slots).insert(
            (agent.to_owned(), id.to_owned()),
            Slot {
                highest: None,
                durable: hosted.then_some(None),
                limit,
                tx,
            },
        );
        session.send_json(&BackendMessage::Request(Request {
            id: id.to_owned(),
            expires_at,
            body,
        }));
        Ok((rx, limit))
    }

    /// Send a raw text frame to agent `id` (for tests of bad input).
    pub fn send_raw(&self, agent: &str, text: impl Into<String>) -> Result<(), Error> {
        let s = self
            .session(agent)
            .ok_or_else(|| Error::NotConnected(agent.to_owned()))?;
        let _ = s.tx.send(Message::text(text.into()));
        Ok(())
    }

    /// Send any WebSocket frame to agent `id` (e.g. a binary frame, for tests).
    pub fn send_frame(&self, agent: &str, frame: Message) -> Result<(), Error> {
        let s = self
            .session(agent)
            .ok_or_else(|| Error::NotConnected(agent.to_owned()))?;
        let _ = s.tx.send(frame);
        Ok(())
    }

    /// Close agent `id`'s session with `code` and `reason` (e.g. its token was revoked).
    pub fn disconnect(&self, agent: &str, code: u16, reason: &str) -> Result<(), Error> {
        self.send_frame(agent, close(code, reason))
    }

    /// Send any message to agent `id`.
    pub fn send(&self, agent: &str, m: &BackendMessage) -> Result<(), Error> {
        let s = self
            .session(agent)
            .ok_or_else(|| Error::NotConnected(agent.to_owned()))?;
        s.send_json(m);
        Ok(())
    }

    /// Ask agent `id` to reconnect after `after_ms`, optionally elsewhere.
    pub fn redirect(&self, agent: &str, after_ms: u64, url: Option<String>) -> Result<(), Error> {
        self.send(
            agent,
            &BackendMessage::Control(Control::Reconnect(Reconnect {
                after_ms,
                url,
                reason: Some("directed by the control plane".into()),
            })),
        )
    }

    fn grant(&self, agent: &str, id: &str, more: u64) {
        let limit = {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&(agent.to_owned(), id.to_owned())) else {
                return;
            };
            slot.limit += more;
            slot.limit
        };
        // A credit lost with a dropped connection is repeated in the next `welcome`.
        if let Some(s) = self.session(agent) {
            s.send_json(&BackendMessage::Control(Control::Credit(Credit {
                id: id.to_owned(),
                limit,
            })));
        }
    }

    async fn route(
        &self,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> hyper::Response<Body> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if !self.inner.opts.operator_http && segments.as_slice() != ["dtma", "connect"] {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        }
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["dtma", "connect"]) => self.upgrade(req, peer, stop).await,
            (&Method::GET, ["agents"]) => {
                let list: Vec<serde_json::Value> = lock(&self.inner.agents)
                    .values()
                    .map(|s| {
                        serde_json::json!({
                            "agent_id": s.agent_id,
                            "agent_version": s.hello.agent_version,
                            "session_id": s.session_id,
                            "capabilities": s.hello.capabilities,
                        })
                    })
                    .collect();
                json(StatusCode::OK, &serde_json::json!({ "agents": list }))
            }
            (&Method::POST, ["agents", agent, "exec"]) => {
                let agent = agent.to_string();
                let ndjson = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("format=ndjson"));
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
                let exec: Exec = match serde_json::from_slice(&body) {
                    Ok(e) => e,
                    Err(e) => {
                        return text(StatusCode::BAD_REQUEST, format!("bad exec body: {e}\n"));
                    }
                };
                match self.request(&agent, RequestBody::Exec(exec)) {
                    Ok(stream) => stream_response(stream, ndjson),
                    Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    async fn upgrade(
        &self,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> hyper::Response<Body> {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let grant = match token {
            None => None,
            Some(t) => match self.inner.store.lookup(&t).await {
                Ok(g) => g,
                Err(e) => {
                    warn!(%peer, error = %e, "Agent not admitted: the token store failed.");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "token store unavailable\n".into(),
                    );
                }
            },
        };
        let Some(grant) = grant else {
            warn!(%peer, "Agent refused: missing or unknown token.");
            return text(StatusCode::UNAUTHORIZED, "unknown agent token\n".into());
        };
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return text(StatusCode::BAD_REQUEST, "not a WebSocket upgrade\n".into());
        };
        let cp = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(ws_config()),
                    )
                    .await;
                    cp.run_session(ws, peer, grant, stop).await;
                }
                Err(e) => warn!(%peer, error = %e, "Upgrade failed."),
            }
        });
        hyper::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(empty())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
    }

    async fn run_session<S>(
        &self,
        ws: WebSocketStream<S>,
        peer: SocketAddr,
        grant: AgentGrant,
        stop: CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let hello = match stream.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<AgentMessage>(t.as_str()) {
                Ok(AgentMessage::Hello(h)) => h,
                _ => {
                    let _ = sink
                        .send(close(close_code::PROTOCOL_ERROR, "expected hello"))
                        .await;
                    return;
                }
            },
            _ => return,
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let _ = sink
                .send(close(
                    close_code::UNSUPPORTED_VERSION,
                    "unsupported protocol version",
                ))
                .await;
            return;
        }
        if grant
            .agent_id
            .as_ref()
            .is_some_and(|id| *id != hello.agent_id)
        {
            // The protocol has no close code of its own for this; the handshake is what failed.
            warn!(%peer, agent_id = %hello.agent_id, "Agent refused: its token belongs to another agent id.");
            let _ = sink
                .send(close(
                    close_code::PROTOCOL_ERROR,
                    "the token does not belong to this agent_id",
                ))
                .await;
            return;
        }
        let n = self.inner.stats.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let session_id = format!("{}s{n}", self.inner.opts.session_prefix);
        let agent_id = hello.agent_id.clone();
        if let Some(hook) = self.inner.opts.resume_hook.clone() {
            let unknown: Vec<String> = {
                let slots = lock(&self.inner.slots);
                hello
                    .streams
                    .iter()
                    .filter(|s| !slots.contains_key(&(agent_id.clone(), s.id.clone())))
                    .map(|s| s.id.clone())
                    .collect()
            };
            if !unknown.is_empty() {
                hook.unknown_streams(self, &agent_id, unknown).await;
            }
        }
        let resume = {
            let slots = lock(&self.inner.slots);
            hello
                .streams
                .iter()
                .map(|s| {
                    let slot = slots.get(&(agent_id.clone(), s.id.clone()));
                    ResumePoint {
                        id: s.id.clone(),
                        ack: slot.and_then(|x| x.durable.unwrap_or(x.highest)),
                        credit_limit: slot.map(|x| x.limit),
                    }
                })
                .collect()
        };
        let welcome = BackendMessage::Control(Control::Welcome(Welcome {
            protocol_version: self.inner.opts.protocol_version,
            session_id: session_id.clone(),
            heartbeat_interval_ms: self.inner.opts.heartbeat_interval_ms,
            initial_credit: Some(self.inner.opts.initial_credit),
            resume,
        }));
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            connected: true,
            session_id: session_id.clone(),
            hello: hello.clone(),
            peer,
            connected_at: SystemTime::now(),
            disconnected_at: None,
            last_heartbeat: None,
            status: None,
            moved: false,
        };
        let session = Arc::new(Session {
            agent_id: agent_id.clone(),
            hello,
            session_id: session_id.clone(),
            tx,
            moving: std::sync::atomic::AtomicBool::new(false),
        });
        session.send_json(&welcome);
        let replaced = {
            let mut agents = lock(&self.inner.agents);
            // Directory and session table change together, so a reader never sees a connected
            // record without its session.
            let mut directory = lock(&self.inner.directory);
            let previous = directory.insert(agent_id.clone(), record);
            if let (Some(prev), Some(rec)) = (previous, directory.get_mut(&agent_id)) {
                // The last heartbeat stays known until the new session's first one.
                rec.last_heartbeat = prev.last_heartbeat;
                rec.status = prev.status;
            }
            let replaced = agents.insert(agent_id.clone(), session.clone());
            // Sent under the lock, so that directory events of one agent keep their order.
            if let Some(rec) = directory.get(&agent_id) {
                let _ = self
                    .inner
                    .directory_events
                    .send(DirectoryEvent::Connected(rec.clone()));
            }
            replaced
        };
        if let Some(old) = replaced {
            // A newer session for the same agent wins: the old one is stale.
            let _ = old
                .tx
                .send(close(close_code::REPLACED, "replaced by a newer session"));
        }
        self.inner.changed.send_modify(|v| *v += 1);
        info!(%peer, agent_id = %agent_id, session_id = %session_id, "Agent connected.");

        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let is_close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || is_close {
                    break;
                }
            }
        });
        // Acks are cumulative: one per stream per burst of frames is enough.
        let mut acks: HashMap<String, u64> = HashMap::new();
        let mut burst = 0;
        let mut moved = false;
        loop {
            let ready = if acks.is_empty() || burst >= 64 {
                None
            } else {
                futures_util::FutureExt::now_or_never(stream.next())
            };
            let frame = match ready {
                Some(f) => f,
                None => {
                    for (id, seq) in acks.drain() {
                        session.send_json(&BackendMessage::Control(Control::Ack(
                            dtma_protocol::Ack { id, seq },
                        )));
                    }
                    burst = 0;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        f = stream.next() => f,
                    }
                }
            };
            burst += 1;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Some((id, seq)) = self.on_event(&session, &t) {
                        acks.insert(id, seq);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    moved = frame.is_some_and(|f| f.reason.as_str() == MOVED_REASON);
                    break;
                }
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        {
            let mut agents = lock(&self.inner.agents);
            if agents
                .get(&agent_id)
                .is_some_and(|s| s.session_id == session_id)
            {
                agents.remove(&agent_id);
                let mut directory = lock(&self.inner.directory);
                if let Some(rec) = directory.get_mut(&agent_id) {
                    rec.connected = false;
                    rec.moved = moved;
                    rec.disconnected_at = Some(SystemTime::now());
                    let _ = self
                        .inner
                        .directory_events
                        .send(DirectoryEvent::Disconnected(rec.clone()));
                }
            }
            // Otherwise a newer session replaced this one: the agent is still connected.
        }
        self.inner.changed.send_modify(|v| *v += 1);
        writer.abort();
        info!(agent_id = %agent_id, session_id = %session_id, "Agent disconnected.");
    }

    /// Deliver one agent frame; returns the `(id, seq)` to acknowledge.
    fn on_event(&self, session: &Session, text: &Utf8Bytes) -> Option<(String, u64)> {
        let msg: AgentMessage = match serde_json::from_str(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Undecodable agent frame.");
                return None;
            }
        };
        let (id, seq, terminal) = match &msg {
            AgentMessage::Started(m) => (m.id.clone(), m.seq, false),
            AgentMessage::Output(m) => (m.id.clone(), m.seq, false),
            AgentMessage::Progress(m) => (m.id.clone(), m.seq, false),
            AgentMessage::McpEvent(m) => (m.id.clone(), m.seq, false),
            AgentMessage::Exit(m) => (m.id.clone(), m.seq, true),
            AgentMessage::Result(m) => (m.id.clone(), m.seq, true),
            AgentMessage::Error(m) => match (&m.id, m.seq) {
                (Some(id), Some(seq)) => (id.clone(), seq, true),
                (Some(id), None) => {
                    self.refused(session, id, &msg);
                    let _ = self.inner.notices.send((session.agent_id.clone(), msg));
                    return None;
                }
                _ => {
                    let _ = self.inner.notices.send((session.agent_id.clone(), msg));
                    return None;
                }
            },
            AgentMessage::State(s) => {
                self.refused(session, &s.id, &msg);
                let _ = self.inner.notices.send((session.agent_id.clone(), msg));
                return None;
            }
            AgentMessage::Status(s) => {
                {
                    let mut directory = lock(&self.inner.directory);
                    if let Some(rec) = directory.get_mut(&session.agent_id)
                        && rec.session_id == session.session_id
                    {
                        rec.last_heartbeat = Some(SystemTime::now());
                        let previous = rec.status.replace(s.clone());
                        let _ = self.inner.directory_events.send(DirectoryEvent::Heartbeat {
                            previous: previous.map(Box::new),
                            record: rec.clone(),
                        });
                    }
                }
                let _ = self.inner.notices.send((session.agent_id.clone(), msg));
                return None;
            }
            AgentMessage::Hello(_) => {
                let _ = self.inner.notices.send((session.agent_id.clone(), msg));
                return None;
            }
        };
        let key = (session.agent_id.clone(), id.clone());
        let mut slots = lock(&self.inner.slots);
        let mut hosted = false;
        match slots.get_mut(&key) {
            None => {
                self.inner
                    .stats
                    .orphan_events
                    .fetch_add(1, Ordering::Relaxed);
                if self.inner.opts.resume_hook.is_some() {
                    // Another node may hold it: the agent keeps it until a node adopts it.
                    return None;
                }
            }
            Some(slot) => {
                let expected = slot.highest.map_or(0, |h| h + 1);
                if seq < expected {
                    self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                if seq > expected {
                    self.inner.stats.gaps.fetch_add(1, Ordering::Relaxed);
                }
                slot.highest = Some(seq);
                hosted = slot.durable.is_some();
                let _ = slot.tx.send(msg);
                if terminal {
                    slots.remove(&key);
                }
            }
        }
        drop(slots);
        // A hosted stream is acknowledged by its owner once durable.
        (!hosted).then_some((id, seq))
    }

    /// Tell every connected agent to move (this node is being stopped): `reconnect` with
    /// `after_ms` spread uniformly over `spread` (the i-th of n agents, by id, waits
    /// i·spread/n), to `url` when given, else to the URL each agent dialled. Agents that announce
    /// `make_before_break` open their new link before they let this one go. Returns how many
    /// agents were told.
    pub fn drain(&self, spread: std::time::Duration, url: Option<String>) -> usize {
        let mut sessions: Vec<Arc<Session>> = lock(&self.inner.agents).values().cloned().collect();
        sessions.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let n = sessions.len() as u128;
        for (i, s) in sessions.iter().enumerate() {
            // No new request goes out on a session that is leaving (see `Error::Moving`).
            s.moving.store(true, Ordering::Relaxed);
            let after_ms = u64::try_from(spread.as_millis() * i as u128 / n).unwrap_or(u64::MAX);
            s.send_json(&BackendMessage::Control(Control::Reconnect(Reconnect {
                after_ms,
                url: url.clone(),
                reason: Some("node draining".into()),
            })));
        }
        info!(
            agents = sessions.len(),
            spread_ms = spread.as_millis() as u64,
            "Draining: agents told to move."
        );
        sessions.len()
    }
}

impl ControlPlane {
    /// A request that never became a stream (unsequenced `error` with its id) or whose id the
    /// agent had already seen (`state`): the requester gets that answer as the stream's last
    /// message, so nobody waits for events that will never come. A stream that has delivered
    /// events already is left alone (a `state` for a resend must not end the original).
    fn refused(&self, session: &Session, id: &str, msg: &AgentMessage) {
        let key = (session.agent_id.clone(), id.to_owned());
        let mut slots = lock(&self.inner.slots);
        if slots.get(&key).is_some_and(|s| s.highest.is_none())
            && let Some(slot) = slots.remove(&key)
        {
            let _ = slot.tx.send(msg.clone());
        }
    }
}

/// The events of one request, in order, each exactly once. A request the agent refused
/// (unsequenced `error`) or had already seen (`state`) yields that one message and ends.
pub struct StreamRx {
    cp: ControlPlane,
    agent: String,
    id: String,
    rx: mpsc::UnboundedReceiver<AgentMessage>,
    auto_credit: bool,
    /// The credit window kept ahead of what the consumer has read.
    window: u64,
    consumed: u64,
    granted: u64,
}

impl StreamRx {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stop granting credit as events are read (the test grants with [`StreamRx::grant`]).
    pub fn manual_credit(mut self) -> Self {
        self.auto_credit = false;
        self
    }

    /// Raise the stream's credit limit by `bytes`.
    pub fn grant(&self, bytes: u64) {
        self.cp.grant(&self.agent, &self.id, bytes);
    }

    /// The next event; `None` after the terminal one.
    pub async fn recv(&mut self) -> Option<AgentMessage> {
        let m = self.rx.recv().await?;
        if self.auto_credit
            && let AgentMessage::Output(o) = &m
        {
            // Keep a full window ahead of the consumer, topping up when half is used (one
            // credit per half window, not one per event).
            self.consumed += output_len(o);
            if self.granted.saturating_sub(self.consumed) < self.window / 2 {
                let more = self.consumed + self.window - self.granted;
                self.granted += more;
                self.grant(more);
            }
        }
        Some(m)
    }
}

/// The number of raw bytes an output event carries (without decoding it).
pub fn output_len(o: &dtma_protocol::Output) -> u64 {
    match o.encoding {
        Encoding::Utf8 => o.data.len() as u64,
        Encoding::Base64 => {
            let pad = o.data.bytes().rev().take_while(|b| *b == b'=').count();
            (o.data.len() / 4 * 3).saturating_sub(pad) as u64
        }
    }
}

/// The raw bytes of an output event.
pub fn output_bytes(o: &dtma_protocol::Output) -> Vec<u8> {
    match o.encoding {
        Encoding::Utf8 => o.data.as_bytes().to_vec(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(&o.data)
            .unwrap_or_default(),
    }
}

fn stream_response(mut stream: StreamRx, ndjson: bool) -> hyper::Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        while let Some(m) = stream.recv().await {
            let chunk = if ndjson {
                let mut line = serde_json::to_vec(&m).unwrap_or_default();
                line.push(b'\n');
                line
            } else {
                match &m {
                    AgentMessage::Output(o) => output_bytes(o),
                    AgentMessage::Exit(e) => format!(
                        "[dtma] exit code={} signal={} timed_out={} cancelled={} duration_ms={} truncated={}\n",
                        e.exit_code.map_or("-".into(), |c| c.to_string()),
                        e.signal.map_or("-".into(), |c| c.to_string()),
                        e.timed_out, e.cancelled, e.duration_ms, e.truncated
                    )
                    .into_bytes(),
                    AgentMessage::Error(e) => {
                        format!("[dtma] error {:?}: {}\n", e.code, e.message).into_bytes()
                    }
                    _ => continue,
                }
            };
            // The HTTP client's pace is the stream's pace: credit follows consumption.
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header(
            "content-type",
            if ndjson {
                "application/x-ndjson"
            } else {
                "text/plain; charset=utf-8"
            },
        )
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
}

/// The agent sockets' settings. tungstenite's default read buffer is 128 KiB, zero-filled before
/// each read, so every idle session kept 128 KiB resident (139 KB per idle agent at 10,000
/// agents, BENCHMARKS.md); 8 KiB holds a typical frame and grows only for a read that needs it.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 << 10)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

fn text(status: StatusCode, body: String) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> hyper::Response<Body> {
    let mut r = text(status, v.to_string());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The reason of the close an agent sends on its old link once a make-before-break move is
/// done (protocol/README.md, "Make-before-break").
pub const MOVED_REASON: &str = "moved";

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}
