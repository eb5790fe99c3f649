//! The operator API (hyper): routes, operator authentication, request decoding. Handlers only
//! decode, call [`Streams`] or the engine's directory, and encode; `events.rs` writes bodies,
//! `error.rs` maps every failure once.
//!
//! Routes (documented in gateway/openapi.json, checked by tests/openapi.rs against [`ROUTES`]):
//! - `GET /healthz` (no auth): the process serves.
//! - `GET /v1/agents`, `GET /v1/agents/{agent_id}`: the directory.
//! - `POST /v1/agents/{agent_id}/requests`: send a protocol request; its events stream back.
//! - `GET /v1/agents/{agent_id}/requests/{request_id}/events`: attach or resume.
//! - `GET /console`, `/console/app.js`, `/console/app.css` (no auth): the web console.

pub mod console;
pub mod error;
pub mod events;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use dtma_control_plane::ControlPlane;
use dtma_protocol::{BackendMessage, decode_backend};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::streams::Streams;
use crate::tokens::{TokenDigest, digest};
use crate::view::agent_view;
pub(crate) use crate::view::rfc3339;
pub use error::ApiError;
use events::Format;

pub type Body = BoxBody<Bytes, Infallible>;

/// Every route as (method, path template): the OpenAPI test compares this list with the
/// document, and [`route`] is the only matcher of these paths.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/agents"),
    ("GET", "/v1/agents/{agent_id}"),
    ("POST", "/v1/agents/{agent_id}/requests"),
    ("GET", "/v1/agents/{agent_id}/requests/{request_id}/events"),
    ("POST", "/v1/agents/{agent_id}/requests/{request_id}/pause"),
    ("POST", "/v1/agents/{agent_id}/requests/{request_id}/resume"),
    ("GET", "/console"),
    ("GET", "/console/app.js"),
    ("GET", "/console/app.css"),
];

/// A request body above this is refused (the agent's default frame limit).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the handlers share.
pub struct Api {
    cp: ControlPlane,
    streams: Streams,
    operator_tokens: HashSet<TokenDigest>,
    wait_output_bytes: usize,
    /// Stop taking connections (the drain starts).
    accept_stop: CancellationToken,
    /// End every response (the drain is over).
    stop: CancellationToken,
    next_id: AtomicU64,
    /// The cluster's directory, when the node runs in one.
    cluster: Option<crate::cluster::Cluster>,
    /// The webhook service's counters, when it runs.
    webhooks: Option<crate::webhooks::Webhooks>,
}

impl Api {
    pub fn new(
        cp: ControlPlane,
        streams: Streams,
        operator_tokens: HashSet<TokenDigest>,
        wait_output_bytes: usize,
        accept_stop: CancellationToken,
        stop: CancellationToken,
    ) -> Api {
        Api {
            cp,
            streams,
            operator_tokens,
            wait_output_bytes,
            accept_stop,
            stop,
            next_id: AtomicU64::new(0),
            cluster: None,
            webhooks: None,
        }
    }

    /// Show the webhook counters in `/metrics`.
    pub fn with_webhooks(mut self, webhooks: Option<crate::webhooks::Webhooks>) -> Api {
        self.webhooks = webhooks;
        self
    }

    /// List agents from the cluster's directory instead of this node's engine.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::Cluster>) -> Api {
        self.cluster = cluster;
        self
    }
}

/// Serve the operator API on `listener` until `stop`; connections finish their current
/// response (streams end at `stop` too) and are tracked by `tasks`.
pub fn serve(api: Arc<Api>, listener: TcpListener, tasks: TaskTracker) {
    let stop = api.accept_stop.clone();
    let inner_tasks = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => { warn!(error = %e, "Operator accept failed."); continue; }
                },
            };
            let _ = tcp.set_nodelay(true);
            let api = api.clone();
            let stop = stop.clone();
            // A drain waits for this connection: a request on it finishes before the node stops.
            let busy = api.streams.busy();
            inner_tasks.spawn(async move {
                let _busy = busy;
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(route(&api, req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "Operator connection ended."); },
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
}

async fn route(
    api: &Api,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> hyper::Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        ["healthz"] => only(&req, Method::GET)
            .map(|()| json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        // Counts only (no ids), on the operator listener: no token, as for /healthz.
        ["metrics"] => only(&req, Method::GET).map(|()| {
            let text = crate::metrics::render(&crate::metrics::Sources {
                cp: &api.cp,
                streams: &api.streams,
                webhooks: api.webhooks.as_ref(),
                cluster: api.cluster.as_ref(),
                draining: api.accept_stop.is_cancelled(),
            });
            let mut r = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from(text))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }),
        ["console", rest @ ..] => only(&req, Method::GET).and_then(|()| {
            let name = match rest {
                [] => Some(""),
                [name] => Some(*name),
                _ => None,
            };
            name.and_then(console::file)
                .ok_or_else(|| ApiError::NoRoute(path.clone()))
        }),
        ["v1", rest @ ..] => match authorize(api, req.headers()) {
            Err(e) => Err(e),
            Ok(()) => match rest {
                ["agents"] => only(&req, Method::GET).map(|()| list_agents(api)),
                ["agents", agent] => only(&req, Method::GET).and_then(|()| one_agent(api, agent)),
                [
                    "agents",
                    agent,
                    "requests",
                    rid,
                    action @ ("pause" | "resume"),
                ] => match only(&req, Method::POST) {
                    Ok(()) => match api.streams.get(agent, rid).await {
                        Ok(stream) => {
                            stream.pause(*action == "pause");
                            Ok(json(
                                StatusCode::OK,
                                &serde_json::json!({ "paused": stream.paused() }),
                            ))
                        }
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e),
                },
                ["agents", agent, "requests"] => match only(&req, Method::POST) {
                    Ok(()) => {
                        let agent = (*agent).to_owned();
                        send_request(api, req, &agent).await
                    }
                    Err(e) => Err(e),
                },
                ["agents", agent, "requests", rid, "events"] => match only(&req, Method::GET) {
                    Ok(()) => attach(api, req.headers(), agent, rid).await,
                    Err(e) => Err(e),
                },
                _ => Err(ApiError::NoRoute(path.clone())),
            },
        },
        _ => Err(ApiError::NoRoute(path.clone())),
    };
    result.unwrap_or_else(|e| {
        debug!(%peer, path, code = e.code(), "Operator request refused.");
        let mut r = json(e.status(), &e.body());
        if matches!(e, ApiError::Unauthorized) {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    })
}

fn only(req: &hyper::Request<Incoming>, method: Method) -> Result<(), ApiError> {
    if *req.method() == method {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    // Compared as digests: the lookup's timing says nothing about the tokens.
    if api.operator_tokens.contains(&digest(token)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn list_agents(api: &Api) -> hyper::Response<Body> {
    let agents: Vec<serde_json::Value> = match &api.cluster {
        Some(c) => c.agents(),
        None => api.cp.agents().iter().map(agent_view).collect(),
    };
    json(StatusCode::OK, &serde_json::json!({ "agents": agents }))
}

fn one_agent(api: &Api, agent: &str) -> Result<hyper::Response<Body>, ApiError> {
    let view = match &api.cluster {
        Some(c) => c.agent(agent),
        None => api.cp.agent(agent).map(|r| agent_view(&r)),
    }
    .ok_or_else(|| crate::streams::OpenError::UnknownAgent(agent.to_owned()))?;
    Ok(json(StatusCode::OK, &view))
}

async fn send_request(
    api: &Api,
    req: hyper::Request<Incoming>,
    agent: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let wait = wants_wait(&parts);
    let format = format(&parts.headers);
    let from = last_event_id(&parts.headers)?;
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::BodyTooLarge(MAX_BODY_BYTES))?
        .to_bytes();
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    if !obj.contains_key("id") {
        obj.insert("id".into(), new_request_id(api).into());
    }
    let text = value.to_string();
    let request = match decode_backend(&text) {
        Ok(BackendMessage::Request(r)) => r,
        Ok(BackendMessage::Control(_)) => {
            return Err(ApiError::BadRequest(
                "control messages (welcome, ack, credit, reconnect) are the gateway's own".into(),
            ));
        }
        Err(e) => return Err(ApiError::BadRequest(e.to_string())),
    };
    let opened = api
        .streams
        .open(agent, request.id, request.expires_at, request.body)
        .await?;
    let stream = opened.stream;
    let cursor = stream.cursor(from)?;
    let mut response = if wait {
        let answer = events::collect(&stream, cursor, &api.stop, api.wait_output_bytes)
            .await
            .ok_or(ApiError::Open(crate::streams::OpenError::ShuttingDown))?;
        json(StatusCode::OK, &answer)
    } else {
        streaming(events::body(cursor, api.stop.clone(), format), format)
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&stream.id) {
        h.insert("dtma-request-id", v);
    }
    let location = format!("/v1/agents/{}/requests/{}/events", stream.agent, stream.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        "dtma-attached",
        HeaderValue::from_static(if opened.created { "false" } else { "true" }),
    );
    Ok(response)
}

async fn attach(
    api: &Api,
    headers: &HeaderMap,
    agent: &str,
    rid: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    let from = last_event_id(headers)?;
    let stream = api.streams.get(agent, rid).await?;
    let cursor = stream.cursor(from)?;
    let format = format(headers);
    Ok(streaming(
        events::body(cursor, api.stop.clone(), format),
        format,
    ))
}

fn streaming(body: Body, format: Format) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // For reverse proxies that buffer by default (nginx).
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `?wait=true` or `Prefer: wait`.
fn wants_wait(parts: &hyper::http::request::Parts) -> bool {
    let query = parts.uri.query().unwrap_or("");
    let by_query = query
        .split('&')
        .any(|kv| kv == "wait=true" || kv == "wait=1" || kv == "wait");
    let by_prefer = parts
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("wait"));
    by_query || by_prefer
}

fn format(headers: &HeaderMap) -> Format {
    let ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-ndjson"));
    if ndjson { Format::Ndjson } else { Format::Sse }
}

/// The first position wanted: `Last-Event-ID` + 1, or 0.
fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be a seq (an integer)".into())),
    }
}

/// A fresh request id: 128 random bits in hex (a process counter if the OS RNG fails).
fn new_request_id(api: &Api) -> String {
    let mut bytes = [0u8; 16];
    match getrandom::fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => {
            let n = api.next_id.fetch_add(1, Ordering::Relaxed);
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("gw-{t}-{n}")
        }
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
