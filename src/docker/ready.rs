//! MCP readiness at the protocol level, over the Streamable HTTP transport.
//!
//! A server is ready when its endpoint answers an MCP handshake with a valid JSON-RPC result,
//! not when "something answers HTTP": a web server that is up but speaks no MCP, or answers
//! 200 with a health page, is not ready.
//!
//! The handshake, per era of the spec:
//! - modern (revision 2026-07-28, stateless): `server/discover`, with the version in `_meta` and
//!   in the `MCP-Protocol-Version` header; the result's `supportedVersions` names the revision;
//! - legacy (2025-11-25 and earlier): `initialize`, then `notifications/initialized` in the
//!   session the server opened (`Mcp-Session-Id`), then a `DELETE` that ends the session so
//!   probes leave nothing behind. A failed `DELETE` is ignored: the spec lets a server refuse
//!   it (405), and the server is ready either way.
//!
//! The probe tries the modern handshake first and falls back to the legacy one when the
//! server refuses it the way a legacy server does (a JSON-RPC error such as -32601, or
//! 400/404/405), as the 2026-07-28 "Backward Compatibility" section describes. A recognized
//! modern error (-32020..=-32022) means a modern server that refused the probe itself: no
//! fallback, unless it says it only supports legacy revisions.
//!
//! Answers may be `application/json` or `text/event-stream` (an SSE stream scoped to the
//! request: notifications may come first; reading stops at the JSON-RPC response, so a
//! server that keeps the stream open does not stall the probe).
//!
//! Not covered: the deprecated HTTP+SSE transport of 2024-11-05 (GET an event stream, POST to
//! the endpoint it names); such a server is reported not ready with the reason it gave.
//!
//! Each exchange is one HTTP/1.1 connection (hyper's client connection over a tokio
//! `TcpStream`): probes are rare, and a fresh connection is what a restarted server needs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

/// The stateless revision the probe speaks first.
pub const MODERN_REVISION: &str = "2026-07-28";
/// The revision the probe asks for in `initialize` (the server answers with its own).
pub const LEGACY_REVISION: &str = "2025-11-25";

const CLIENT_NAME: &str = "dtma";
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A handshake answer is a few hundred bytes; this bounds what a broken server makes us buffer.
const MAX_BODY: usize = 1 << 20;
/// Body excerpts and server-provided text in errors are cut to this many characters.
const EXCERPT_CHARS: usize = 200;

const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// Request ids, distinct per step so a `WrongId` error says which answer was misplaced.
const DISCOVER_ID: u64 = 1;
const INITIALIZE_ID: u64 = 2;
const PING_ID: u64 = 3;

/// JSON-RPC codes the 2026-07-28 revision reserves: a server answering with one of them is
/// modern, whatever else it refused.
const HEADER_MISMATCH: i64 = -32020;
const MISSING_CLIENT_CAPABILITY: i64 = -32021;
const UNSUPPORTED_VERSION: i64 = -32022;

/// How the server proved it speaks MCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `server/discover` (2026-07-28 and later).
    Discover,
    /// `initialize` (2025-11-25 and earlier).
    Initialize,
}

/// A successful handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub method: Method,
    /// The protocol revision: `2026-07-28` when `supportedVersions` lists it (else the newest
    /// listed) for `Discover`; the `protocolVersion` the server chose for `Initialize`.
    pub revision: String,
    /// `serverInfo.name`, when the server gave one (cut to 200 characters, no control
    /// characters).
    pub server_name: Option<String>,
}

/// The message a failure happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Discover,
    Initialize,
    Initialized,
    Ping,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Discover => "server/discover",
            Step::Initialize => "initialize",
            Step::Initialized => "notifications/initialized",
            Step::Ping => "ping",
        })
    }
}

/// Why a server is not ready. Every text that comes from the server (bodies, error messages)
/// is an excerpt of at most 200 characters without control characters; headers never appear.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("nothing listens on {addr} (connection refused)")]
    Refused { addr: SocketAddr },
    #[error("{step}: the connection to {addr} failed: {reason}")]
    Connection {
        addr: SocketAddr,
        step: Step,
        reason: String,
    },
    #[error("{step}: no complete answer from {addr} within {after:?}")]
    Timeout {
        addr: SocketAddr,
        step: Step,
        after: Duration,
    },
    #[error("{step}: HTTP {status}: {excerpt}")]
    Status {
        step: Step,
        status: u16,
        excerpt: String,
    },
    #[error("{step}: the answer (HTTP {status}) is not JSON: {excerpt}")]
    NotJson {
        step: Step,
        status: u16,
        excerpt: String,
    },
    #[error("{step}: the answer is JSON but not a JSON-RPC response: {excerpt}")]
    NotJsonRpc { step: Step, excerpt: String },
    #[error("{step}: the event stream ended without a JSON-RPC response")]
    NoResponse { step: Step },
    #[error("{step}: the answer is larger than {limit} bytes")]
    TooLarge { step: Step, limit: usize },
    #[error("{step}: the answer is for request id {got}, not {expected}")]
    WrongId {
        step: Step,
        expected: u64,
        got: String,
    },
    #[error("{step}: JSON-RPC error {code}: {message}")]
    Rpc {
        step: Step,
        code: i64,
        message: String,
    },
    #[error("{step}: not a valid {step} result: {reason}")]
    InvalidResult { step: Step, reason: String },
    #[error(
        "server/discover: the server speaks MCP {MODERN_REVISION} or later but refused the \
         probe: JSON-RPC error {code}: {message}"
    )]
    Modern { code: i64, message: String },
    /// `server/discover` was refused the legacy way, and the legacy handshake failed too.
    #[error("{discover}; the legacy handshake failed: {initialize}")]
    Legacy {
        discover: Box<NotReady>,
        initialize: Box<NotReady>,
    },
    #[error("the endpoint path {path:?} is not a valid request target (it must start with '/')")]
    InvalidPath { path: String },
}

/// Probe `path` on `addr` once: the modern handshake, else the legacy one. `timeout_per_try`
/// bounds the whole handshake; the closing `DELETE` of a legacy session gets its own bound.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    timeout_per_try: Duration,
) -> Result<Handshake, NotReady> {
    let client = Client::new(addr, path, timeout_per_try)?;
    let answer = client
        .post(Step::Discover, &discover_request(), &[])
        .await?;
    match rpc_reply(Step::Discover, DISCOVER_ID, answer) {
        Ok(Reply::Result(result)) => discover_handshake(&result),
        Ok(Reply::Error(e)) if e.is_modern() && !e.offers_legacy() => Err(NotReady::Modern {
            code: e.code,
            message: e.message,
        }),
        Ok(Reply::Error(e)) => client.legacy_probe(e.into_not_ready(Step::Discover)).await,
        Err(e @ NotReady::Status { status, .. }) if falls_back(status) => {
            client.legacy_probe(e).await
        }
        Err(e) => Err(e),
    }
}

/// The liveness check of a server that passed `probe` with `method` (the era is a property
/// of the server, so it is not probed again; a server replaced by another era fails here and
/// is probed anew by the caller).
/// - `Discover`: `server/discover` again (stateless, nothing to clean up).
/// - `Initialize`: a fresh `initialize`, `notifications/initialized`, `ping` in that session,
///   then `DELETE`. Holding one session open between checks would save two requests but
///   would make the agent track session lifetimes, notice a server that forgot the session
///   on restart (404) and re-open it; a fresh session per check is the simplest correct
///   thing, and it also proves the server still completes a handshake.
pub async fn ping(
    addr: SocketAddr,
    path: &str,
    method: Method,
    timeout: Duration,
) -> Result<(), NotReady> {
    let client = Client::new(addr, path, timeout)?;
    match method {
        Method::Discover => {
            let answer = client
                .post(Step::Discover, &discover_request(), &[])
                .await?;
            match rpc_reply(Step::Discover, DISCOVER_ID, answer)? {
                Reply::Result(result) => discover_handshake(&result).map(drop),
                Reply::Error(e) => Err(e.into_not_ready(Step::Discover)),
            }
        }
        Method::Initialize => {
            let session = client.initialize().await?;
            let pinged = client.ping_in(&session).await;
            client.end(&session).await;
            pinged
        }
    }
}

/// 400, 404 and 405 are how a legacy server turns down a request it does not know (a
/// modern one would have put a recognized error in the body).
fn falls_back(status: u16) -> bool {
    matches!(status, 400 | 404 | 405)
}

fn discover_request() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": DISCOVER_ID,
        "method": "server/discover",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_REVISION,
                "io.modelcontextprotocol/clientInfo": {"name": CLIENT_NAME, "version": CLIENT_VERSION},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        }
    })
}

fn initialize_request() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": INITIALIZE_ID,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_REVISION,
            "capabilities": {},
            "clientInfo": {"name": CLIENT_NAME, "version": CLIENT_VERSION},
        }
    })
}

/// A legacy session: the revision the server chose and the session id it gave, if any.
struct Session {
    revision: HeaderValue,
    id: Option<HeaderValue>,
    handshake: Handshake,
}

impl Session {
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(MCP_PROTOCOL_VERSION, self.revision.clone())];
        if let Some(id) = &self.id {
            h.push((MCP_SESSION_ID, id.clone()));
        }
        h
    }
}

/// One probe's connection settings and deadline.
struct Client {
    addr: SocketAddr,
    path: String,
    timeout: Duration,
    deadline: Instant,
}

impl Client {
    fn new(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Client, NotReady> {
        let valid = path.starts_with('/') && path.parse::<hyper::Uri>().is_ok();
        if !valid {
            return Err(NotReady::InvalidPath {
                path: path.to_owned(),
            });
        }
        Ok(Client {
            addr,
            path: path.to_owned(),
            timeout,
            deadline: Instant::now() + timeout,
        })
    }

    /// The legacy handshake after `discover` (why the modern one was turned down). The
    /// session is ended whatever the outcome.
    async fn legacy_probe(&self, discover: NotReady) -> Result<Handshake, NotReady> {
        let legacy = |initialize: NotReady| NotReady::Legacy {
            discover: Box::new(discover),
            initialize: Box::new(initialize),
        };
        let session = self.initialize().await.map_err(legacy)?;
        self.end(&session).await;
        Ok(session.handshake)
    }

    /// `initialize`, then `notifications/initialized` in the session it opened. The session is
    /// ended here when the notification fails.
    async fn initialize(&self) -> Result<Session, NotReady> {
        let answer = self
            .post(Step::Initialize, &initialize_request(), &[])
            .await?;
        let id = answer.session.clone();
        let result = match rpc_reply(Step::Initialize, INITIALIZE_ID, answer)? {
            Reply::Result(result) => result,
            Reply::Error(e) => return Err(e.into_not_ready(Step::Initialize)),
        };
        let (revision, handshake) = initialize_handshake(&result)?;
        let session = Session {
            revision,
            id,
            handshake,
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let sent = match self
            .post(Step::Initialized, &note, &session.headers())
            .await
        {
            Ok(answer) => accepted(Step::Initialized, answer),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.end(&session).await;
            return Err(e);
        }
        Ok(session)
    }

    async fn ping_in(&self, session: &Session) -> Result<(), NotReady> {
        let ping = json!({"jsonrpc": "2.0", "id": PING_ID, "method": "ping"});
        let answer = self.post(Step::Ping, &ping, &session.headers()).await?;
        match rpc_reply(Step::Ping, PING_ID, answer)? {
            Reply::Result(_) => Ok(()),
            Reply::Error(e) => Err(e.into_not_ready(Step::Ping)),
        }
    }

    /// `DELETE` the session, under its own timeout (the handshake may have used up the
    /// deadline). Failures are logged and ignored: a server may refuse DELETE (405), and
    /// what matters for readiness was already answered.
    async fn end(&self, session: &Session) {
        let Some(id) = &session.id else { return };
        let request = Request::delete(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(MCP_PROTOCOL_VERSION, session.revision.clone())
            .header(MCP_SESSION_ID, id.clone())
            .body(Full::new(Bytes::new()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                debug!(addr = %self.addr, error = %e, "MCP session DELETE not sent.");
                return;
            }
        };
        let deadline = Instant::now() + self.timeout;
        match self.send(Step::Initialize, request, deadline).await {
            Ok(answer) if answer.status.is_success() => {
                debug!(addr = %self.addr, "MCP session ended.");
            }
            Ok(answer) => debug!(
                addr = %self.addr,
                status = answer.status.as_u16(),
                "MCP session DELETE refused; the server keeps or expires it itself."
            ),
            Err(e) => debug!(addr = %self.addr, error = %e, "MCP session DELETE failed."),
        }
    }

    /// POST one JSON-RPC message under the probe's deadline.
    async fn post(
        &self,
        step: Step,
        message: &Value,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, NotReady> {
        let mut builder = Request::post(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, ACCEPT_BOTH);
        if step == Step::Discover {
            builder = builder
                .header(MCP_PROTOCOL_VERSION, MODERN_REVISION)
                .header(MCP_METHOD, "server/discover");
        }
        for (name, value) in extra {
            builder = builder.header(name, value.clone());
        }
        let request = builder
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|_| NotReady::InvalidPath {
                path: self.path.clone(),
            })?;
        self.send(step, request, self.deadline).await
    }

    async fn send(
        &self,
        step: Step,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Answer, NotReady> {
        timeout_at(deadline, self.exchange(step, request))
            .await
            .map_err(|_| NotReady::Timeout {
                addr: self.addr,
                step,
                after: self.timeout,
            })?
    }

    /// One request on a fresh connection. The connection is driven in the same future as the
    /// request, so a timeout drops both and nothing is left running.
    async fn exchange(
        &self,
        step: Step,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, NotReady> {
        let addr = self.addr;
        let broken = |reason: String| NotReady::Connection { addr, step, reason };
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                NotReady::Refused { addr }
            } else {
                broken(e.to_string())
            }
        })?;
        // Only a latency hint; the exchange works without it.
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| broken(e.to_string()))?;
        let driver = async move {
            // Its errors also reach the request or body below, which reports them.
            if let Err(e) = connection.await {
                debug!(%addr, error = %e, "MCP probe connection ended.");
            }
            // The body may still hold data after the connection closed: keep waiting for it.
            std::future::pending::<Infallible>().await
        };
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| broken(e.to_string()))?;
            read_answer(step, response).await.map_err(|e| match e {
                ReadError::Http(reason) => broken(reason),
                ReadError::NotReady(e) => e,
            })
        };
        tokio::select! {
            answer = exchange => answer,
            never = driver => match never {},
        }
    }
}

/// What came back for one POST.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    session: Option<HeaderValue>,
    payload: Payload,
}

#[derive(Debug)]
enum Payload {
    /// A JSON body, or the JSON-RPC response an event stream carried.
    Json(Value),
    /// A body that is not JSON (its excerpt; empty bodies included).
    NotJson(String),
    /// An event stream that ended before any JSON-RPC response.
    NoResponse,
}

enum ReadError {
    Http(String),
    NotReady(NotReady),
}

async fn read_answer(step: Step, response: Response<Incoming>) -> Result<Answer, ReadError> {
    let status = response.status();
    let session = response.headers().get(MCP_SESSION_ID).cloned();
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"));
    let mut body = response.into_body();
    let payload = if sse {
        read_event_stream(step, &mut body).await?
    } else {
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() + data.len() > MAX_BODY {
                    return Err(ReadError::NotReady(NotReady::TooLarge {
                        step,
                        limit: MAX_BODY,
                    }));
                }
                bytes.extend_from_slice(data);
            }
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Payload::Json(v),
            Err(_) => Payload::NotJson(excerpt(&bytes)),
        }
    };
    Ok(Answer {
        status,
        session,
        payload,
    })
}

/// Read SSE events until one carries a JSON-RPC response; notifications and server requests
/// before it are skipped. Reading stops there: the stream may stay open.
async fn read_event_stream(step: Step, body: &mut Incoming) -> Result<Payload, ReadError> {
    let mut decoder = SseDecoder::default();
    let mut seen = 0usize;
    let mut ended = false;
    while !ended {
        let chunk = match body.frame().await {
            None => {
                ended = true;
                decoder.finish()
            }
            Some(frame) => {
                let frame = frame.map_err(|e| ReadError::Http(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                seen += data.len();
                if seen > MAX_BODY {
                    return Err(ReadError::NotReady(NotReady::TooLarge {
                        step,
                        limit: MAX_BODY,
                    }));
                }
                decoder.push(&data)
            }
        };
        for event in chunk {
            if let Some(payload) = event_payload(&event) {
                return Ok(payload);
            }
        }
    }
    Ok(Payload::NoResponse)
}

/// `Some` when the event ends the wait: a JSON-RPC response, or data that is not a JSON-RPC
/// message at all. `None` for events to skip (other event types, notifications, requests).
fn event_payload(event: &SseEvent) -> Option<Payload> {
    if !(event.kind.is_empty() || event.kind == "message") {
        return None;
    }
    let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
        return Some(Payload::NotJson(excerpt(event.data.as_bytes())));
    };
    match value.as_object() {
        Some(obj) if obj.contains_key("method") => None,
        _ => Some(Payload::Json(value)),
    }
}

/// One dispatched SSE event: its type (empty for the default) and its data lines joined.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    kind: String,
    data: String,
}

/// The event-stream format of the HTML standard, for what a JSON-RPC stream uses: `data:` and
/// `event:` fields, comments, and CRLF, LF or CR line ends (split anywhere across chunks).
/// `id:` and `retry:` are ignored (MCP streams are not resumed here).
#[derive(Default)]
struct SseDecoder {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF that starts the next one is the same line end.
    after_cr: bool,
    kind: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// At the end of the stream. The standard drops an event without its closing blank line;
    /// a server that closes right after its last `data:` line still gave its answer, so a
    /// complete pending line and event are dispatched.
    fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            events.extend(self.line_done(&line));
        }
        events.extend(self.line_done(b""));
        events
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let kind = std::mem::take(&mut self.kind);
            let data = std::mem::take(&mut self.data);
            return std::mem::take(&mut self.has_data).then_some(SseEvent { kind, data });
        }
        if line.starts_with(b":") {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.kind = value.to_owned(),
            _ => {}
        }
        None
    }
}

/// A JSON-RPC error answer.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn is_modern(&self) -> bool {
        matches!(
            self.code,
            HEADER_MISMATCH | MISSING_CLIENT_CAPABILITY | UNSUPPORTED_VERSION
        )
    }

    /// An `UnsupportedProtocolVersionError` whose `supported` list names a revision older
    /// than the modern one: a dual-era server that will answer `initialize`.
    fn offers_legacy(&self) -> bool {
        self.code == UNSUPPORTED_VERSION
            && self
                .data
                .as_ref()
                .and_then(|d| d.get("supported"))
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .filter_map(Value::as_str)
                        .any(|v| v < MODERN_REVISION)
                })
    }

    fn into_not_ready(self, step: Step) -> NotReady {
        NotReady::Rpc {
            step,
            code: self.code,
            message: self.message,
        }
    }
}

enum Reply {
    Result(Map<String, Value>),
    Error(RpcError),
}

/// The JSON-RPC response to request `id` in `answer`, or why there is none. A JSON-RPC error
/// is a reply on 2xx and on 4xx (where servers put refusals); on any other status the status
/// is the failure, with the body as its excerpt.
fn rpc_reply(step: Step, id: u64, answer: Answer) -> Result<Reply, NotReady> {
    let status = answer.status.as_u16();
    let value = match answer.payload {
        Payload::Json(v) => v,
        Payload::NotJson(excerpt) if !answer.status.is_success() => {
            return Err(NotReady::Status {
                step,
                status,
                excerpt,
            });
        }
        Payload::NotJson(excerpt) => {
            return Err(NotReady::NotJson {
                step,
                status,
                excerpt,
            });
        }
        Payload::NoResponse => return Err(NotReady::NoResponse { step }),
    };
    let decoded = decode_response(&value);
    let refusal = answer.status.is_client_error() && matches!(decoded, Some((_, Reply::Error(_))));
    if !answer.status.is_success() && !refusal {
        return Err(NotReady::Status {
            step,
            status,
            excerpt: excerpt(value.to_string().as_bytes()),
        });
    }
    let Some((got, reply)) = decoded else {
        return Err(NotReady::NotJsonRpc {
            step,
            excerpt: excerpt(value.to_string().as_bytes()),
        });
    };
    // An error may carry no id (or null) when the server could not read the request's.
    let id_ok = match (&reply, got) {
        (_, Some(v)) if v.as_u64() == Some(id) => true,
        (Reply::Error(_), None | Some(Value::Null)) => true,
        _ => false,
    };
    if !id_ok {
        return Err(NotReady::WrongId {
            step,
            expected: id,
            got: got.map_or_else(
                || "(none)".to_owned(),
                |v| excerpt(v.to_string().as_bytes()),
            ),
        });
    }
    Ok(reply)
}

/// A JSON-RPC 2.0 response (an object with `result`, or `error` with an integer `code`), with
/// its id; `None` for anything else.
fn decode_response(value: &Value) -> Option<(Option<&Value>, Reply)> {
    let obj = value.as_object()?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || obj.contains_key("method") {
        return None;
    }
    let id = obj.get("id");
    match (obj.get("result"), obj.get("error")) {
        (Some(Value::Object(result)), None) => Some((id, Reply::Result(result.clone()))),
        (None, Some(Value::Object(error))) => {
            let code = error.get("code").and_then(Value::as_i64)?;
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(|m| excerpt(m.as_bytes()))
                .unwrap_or_default();
            Some((
                id,
                Reply::Error(RpcError {
                    code,
                    message,
                    data: error.get("data").cloned(),
                }),
            ))
        }
        _ => None,
    }
}

/// A `DiscoverResult`: `resultType` absent or `complete`, a non-empty `supportedVersions`.
fn discover_handshake(result: &Map<String, Value>) -> Result<Handshake, NotReady> {
    let invalid = |reason: &str| NotReady::InvalidResult {
        step: Step::Discover,
        reason: reason.to_owned(),
    };
    match result.get("resultType") {
        None => {}
        Some(Value::String(t)) if t == "complete" => {}
        Some(_) => return Err(invalid("resultType is not \"complete\"")),
    }
    let versions: Vec<&str> = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("supportedVersions is missing"))?
        .iter()
        .map(|v| v.as_str().filter(|s| revision_ok(s)))
        .collect::<Option<_>>()
        .ok_or_else(|| invalid("supportedVersions holds a value that is not a revision"))?;
    let revision = if versions.contains(&MODERN_REVISION) {
        MODERN_REVISION
    } else {
        // Revisions are dates: the greatest is the newest.
        versions
            .iter()
            .max()
            .copied()
            .ok_or_else(|| invalid("supportedVersions is empty"))?
    };
    Ok(Handshake {
        method: Method::Discover,
        revision: revision.to_owned(),
        server_name: server_name(result),
    })
}

/// An `InitializeResult`: a `protocolVersion` (also sent back as a header value).
fn initialize_handshake(result: &Map<String, Value>) -> Result<(HeaderValue, Handshake), NotReady> {
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| revision_ok(v))
        .ok_or_else(|| NotReady::InvalidResult {
            step: Step::Initialize,
            reason: "protocolVersion is missing or not a revision".to_owned(),
        })?;
    let header = HeaderValue::from_str(version).map_err(|_| NotReady::InvalidResult {
        step: Step::Initialize,
        reason: "protocolVersion is not a valid header value".to_owned(),
    })?;
    Ok((
        header,
        Handshake {
            method: Method::Initialize,
            revision: version.to_owned(),
            server_name: server_name(result),
        },
    ))
}

/// Revisions are dates (`2025-11-25`); anything short and printable is accepted, so a
/// future naming scheme is reported rather than refused.
fn revision_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic())
}

fn server_name(result: &Map<String, Value>) -> Option<String> {
    result
        .get("serverInfo")
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
        .map(|n| excerpt(n.as_bytes()))
        .filter(|n| !n.is_empty())
}

/// The answer to a notification: 2xx (202 by the spec); anything else is the refusal.
fn accepted(step: Step, answer: Answer) -> Result<(), NotReady> {
    if answer.status.is_success() {
        return Ok(());
    }
    let status = answer.status.as_u16();
    match answer.payload {
        Payload::Json(v) => match decode_response(&v) {
            Some((_, Reply::Error(e))) => Err(e.into_not_ready(step)),
            _ => Err(NotReady::Status {
                step,
                status,
                excerpt: excerpt(v.to_string().as_bytes()),
            }),
        },
        Payload::NotJson(excerpt) => Err(NotReady::Status {
            step,
            status,
            excerpt,
        }),
        Payload::NoResponse => Err(NotReady::Status {
            step,
            status,
            excerpt: "(an event stream)".to_owned(),
        }),
    }
}

/// At most 200 characters of server-provided text on one line: control characters become
/// spaces, invalid UTF-8 becomes U+FFFD, a cut is marked with `…`.
fn excerpt(bytes: &[u8]) -> String {
    // 200 characters are at most 800 bytes of UTF-8; decoding more is wasted.
    let head = &bytes[..bytes.len().min(4 * EXCERPT_CHARS + 4)];
    let text: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return if bytes.is_empty() {
            "(empty body)".to_owned()
        } else {
            "(blank)".to_owned()
        };
    }
    let cut = text.chars().count() > EXCERPT_CHARS || head.len() < bytes.len();
    if cut {
        let mut out: String = text.chars().take(EXCERPT_CHARS - 1).collect();
        out.push('…');
        out
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c));
        }
        out.extend(d.finish());
        out
    }

    fn ev(kind: &str, data: &str) -> SseEvent {
        SseEvent {
            kind: kind.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn sse_events_split_anywhere_with_any_line_end() {
        let stream: &[u8] = b": keep-alive\r\nevent: message\r\ndata: {\"a\":\r\ndata:1}\r\n\r\nid: 7\ndata: x\n\ndata: y\r\rretry: 5\n\n";
        let whole = events(&[stream]);
        assert_eq!(
            whole,
            vec![ev("message", "{\"a\":\n1}"), ev("", "x"), ev("", "y")]
        );
        // Byte by byte: a CR at the end of one chunk and LF at the start of the next are one
        // line end, not an empty line.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }

    #[test]
    fn sse_event_without_blank_line_at_eof_is_kept() {
        assert_eq!(events(&[b"data: {}\n"]), vec![ev("", "{}")]);
        assert_eq!(events(&[b"data: {}"]), vec![ev("", "{}")]);
        assert_eq!(events(&[b"event: x\n\n: only a comment\n"]), vec![]);
    }

    #[test]
    fn notifications_in_a_stream_are_skipped() {
        let note = ev("", r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#);
        assert!(event_payload(&note).is_none());
        assert!(event_payload(&ev("endpoint", "/messages?x=1")).is_none());
        assert!(matches!(
            event_payload(&ev("", r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
            Some(Payload::Json(_))
        ));
        assert!(matches!(
            event_payload(&ev("message", "not json")),
            Some(Payload::NotJson(_))
        ));
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            session: None,
            payload: Payload::Json(body),
        }
    }

    #[test]
    fn replies_are_checked_for_shape_status_and_id() {
        let ok = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(200, ok.clone())),
            Ok(Reply::Result(_))
        ));
        assert!(matches!(
            rpc_reply(Step::Discover, 2, answer(200, ok.clone())),
            Err(NotReady::WrongId { expected: 2, .. })
        ));
        // A result on a 4xx, and anything on a 5xx, is the status's failure.
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(404, ok)),
            Err(NotReady::Status { status: 404, .. })
        ));
        let err =
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "bad"}});
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(400, err.clone())),
            Ok(Reply::Error(RpcError { code: -32600, .. }))
        ));
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(500, err)),
            Err(NotReady::Status { status: 500, .. })
        ));
        for not_rpc in [
            json!({"status": "ok"}),
            json!({"jsonrpc": "1.0", "id": 1, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": "yes"}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}}),
            json!([{"jsonrpc": "2.0", "id": 1, "result": {}}]),
        ] {
            assert!(
                matches!(
                    rpc_reply(Step::Discover, 1, answer(200, not_rpc.clone())),
                    Err(NotReady::NotJsonRpc { .. })
                ),
                "{not_rpc}"
            );
        }
    }

    #[test]
    fn modern_errors_end_the_probe_unless_legacy_is_offered() {
        let error = |code, data: Value| RpcError {
            code,
            message: String::new(),
            data: Some(data),
        };
        assert!(!error(-32601, json!(null)).is_modern());
        assert!(error(-32020, json!(null)).is_modern());
        let modern_only = error(-32022, json!({"supported": ["2026-07-28"]}));
        assert!(modern_only.is_modern() && !modern_only.offers_legacy());
        let dual = error(-32022, json!({"supported": ["2025-11-25"]}));
        assert!(dual.offers_legacy());
    }

    #[test]
    fn discover_results_name_the_revision() {
        let result = |v: Value| v.as_object().unwrap().clone();
        let h = discover_handshake(&result(json!({
            "supportedVersions": ["2025-11-25", "2026-07-28", "2027-01-01"],
            "serverInfo": {"name": "x\ny"},
        })))
        .unwrap();
        assert_eq!(h.revision, "2026-07-28");
        assert_eq!(h.server_name.as_deref(), Some("x y"));
        let h = discover_handshake(&result(
            json!({"supportedVersions": ["2027-01-01", "2026-12-01"]}),
        ))
        .unwrap();
        assert_eq!(h.revision, "2027-01-01");
        for bad in [
            json!({}),
            json!({"supportedVersions": []}),
            json!({"supportedVersions": [1]}),
            json!({"supportedVersions": ["2026-07-28"], "resultType": "input_required"}),
        ] {
            assert!(
                matches!(
                    discover_handshake(&result(bad.clone())),
                    Err(NotReady::InvalidResult { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn excerpts_are_short_single_line_text() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"  \n"), "(blank)");
        assert_eq!(excerpt(b"line one\r\nline two"), "line one  line two");
        let long = "é".repeat(1000);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), EXCERPT_CHARS);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn an_invalid_path_is_refused_before_any_connection() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for path in ["mcp", "", "/a b"] {
            assert!(matches!(
                Client::new(addr, path, Duration::from_secs(1)),
                Err(NotReady::InvalidPath { .. })
            ));
        }
    }
}
