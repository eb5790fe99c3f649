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

mod http;
mod jsonrpc;
mod sse;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{self, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::debug;

use http::{Client, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use jsonrpc::{Reply, accepted, discover_handshake, initialize_handshake, rpc_reply};

/// The stateless revision the probe speaks first.
pub const MODERN_REVISION: &str = "2026-07-28";
/// The revision the probe asks for in `initialize` (the server answers with its own).
pub const LEGACY_REVISION: &str = "2025-11-25";

const CLIENT_NAME: &str = "dtma";
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Body excerpts and server-provided text in errors are cut to this many characters.
const EXCERPT_CHARS: usize = 200;

/// Request ids, distinct per step so a `WrongId` error says which answer was misplaced.
const DISCOVER_ID: u64 = 1;
const INITIALIZE_ID: u64 = 2;
const PING_ID: u64 = 3;

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

/// The handshake steps; the HTTP exchange they run on is in `http`.
impl Client {
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
}
