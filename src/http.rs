//! The local HTTP API on `DTMA_LISTEN` (default 127.0.0.1:30000): the seed's endpoints with the
//! seed's response shapes, for the backend's old HTTP path and for a person on the droplet.
//!
//! `routes(agent)` builds every filter; handlers return `Result<Response, Rejection>`, and one
//! [`handle_rejection`] turns every failure into a JSON body with a stable `code`:
//! 400 bad input, 401 auth, 403 role or policy, 404, 405, 411/413 body size, 503 Docker or
//! shutdown. Commands go through the same policy check and exec engine as the channel.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dtma_protocol::{Encoding, Fd};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::agent::Agent;
use crate::auth::Caller;
use crate::exec::{self, Collect, ExecSpec, OutputSink};
use crate::policy::Role;

/// Largest request body accepted.
pub const MAX_BODY: u64 = 1 << 20;
/// Output kept for a buffered `/ssh/execute` reply (stdout + stderr); the rest is discarded and
/// `truncated` is set. The streaming form has no such cap (it follows the client's pace).
pub const HTTP_MAX_OUTPUT: u64 = 4 << 20;
pub const MAX_LOG_LINES: usize = 10_000;

/// A failure with its HTTP status and stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body (e.g. `command`, `rule`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Rejection {
        warp::reject::custom(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
        ))
    }
    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

/// A handler's background task panicked or was aborted: a bug, reported as 500.
fn task_failed(e: tokio::task::JoinError) -> Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        e.to_string(),
    ))
}

fn docker_unavailable(e: crate::docker::Error) -> Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "docker_unavailable",
        e.to_string(),
    ))
}

/// Every route of the local API.
pub fn routes(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_agent = {
        let agent = agent.clone();
        warp::any().map(move || agent.clone())
    };
    let auth = with_agent
        .clone()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .and_then(authenticate)
        .untuple_one();

    let health = warp::path!("health")
        .and(warp::get())
        .and(with_agent.clone())
        .map(|a: Arc<Agent>| warp::reply::json(&health_body(&a)));

    let execute = warp::path!("ssh" / "execute")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body::<ExecuteRequest>())
        .and_then(execute);

    let mcp_status = warp::path!("mcp" / "status")
        .and(warp::get())
        .and(auth.clone())
        .and_then(mcp_status);
    let mcp_deploy = warp::path!("mcp" / "groups")
        .and(warp::post())
        .and(auth.clone())
        .and(json_body::<serde_json::Value>())
        .and_then(
            |a: Arc<Agent>, c: Caller, body: serde_json::Value| async move {
                require_operator(&c)?;
                let group = body
                    .get("groupId")
                    .and_then(|g| g.as_str())
                    .filter(|g| !g.is_empty())
                    .ok_or_else(|| ApiError::bad_request("field `groupId` is missing or empty"))?;
                let servers_ok = body.get("servers").is_some_and(|s| s.is_array());
                if !servers_ok {
                    return Err(ApiError::bad_request("field `servers` must be an array"));
                }
                docker_pending(&a, &format!("deploying MCP group `{group}`")).await
            },
        );
    let mcp_remove = warp::path!("mcp" / "groups" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and_then(|group: String, a: Arc<Agent>, c: Caller| async move {
            require_operator(&c)?;
            docker_pending(&a, &format!("removing MCP group `{group}`")).await
        });
    let mcp_restart = warp::path!("mcp" / "servers" / String / "restart")
        .and(warp::post())
        .and(auth.clone())
        .and_then(|name: String, a: Arc<Agent>, c: Caller| async move {
            require_operator(&c)?;
            docker_pending(&a, &format!("restarting MCP server `{name}`")).await
        });

    let diag_docker = warp::path!("diagnostics" / "docker")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|a: Arc<Agent>, _c: Caller| async move {
            let d = a.docker.diagnostics().await.map_err(docker_unavailable)?;
            Ok::<_, Rejection>(success("diagnostics", d))
        });
    let diag_system = warp::path!("diagnostics" / "system")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|a: Arc<Agent>, _c: Caller| async move {
            let a2 = a.clone();
            let d = tokio::task::spawn_blocking(move || crate::diagnostics::system(&a2))
                .await
                .map_err(task_failed)?;
            Ok::<_, Rejection>(success("diagnostics", d))
        });
    let diag_logs = warp::path!("diagnostics" / "logs")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(logs);
    let status = warp::path!("status")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|a: Arc<Agent>, _c: Caller| async move {
            Ok::<_, Rejection>(warp::reply::json(
                &crate::diagnostics::console_status(&a).await,
            ))
        });

    health
        .or(execute)
        .or(mcp_status)
        .or(mcp_deploy)
        .or(mcp_remove)
        .or(mcp_restart)
        .or(diag_docker)
        .or(diag_system)
        .or(diag_logs)
        .or(status)
        .with(warp::log::custom(|info| {
            tracing::debug!(
                method = %info.method(),
                path = info.path(),
                status = info.status().as_u16(),
                elapsed_ms = info.elapsed().as_millis() as u64,
                "HTTP request."
            );
        }))
        .recover(handle_rejection)
}

/// `{"success": true, <key>: <value>, "timestamp": ...}`, the seed's envelope.
fn success(key: &str, value: serde_json::Value) -> warp::reply::Response {
    let mut body = serde_json::Map::new();
    body.insert("success".into(), true.into());
    body.insert(key.into(), value);
    body.insert("timestamp".into(), crate::now_rfc3339().into());
    warp::reply::json(&serde_json::Value::Object(body)).into_response()
}

fn health_body(a: &Agent) -> serde_json::Value {
    serde_json::json!({
        "status": if a.draining.load(Ordering::Relaxed) { "draining" } else { "ok" },
        "service": "dtma",
        "version": crate::VERSION,
        "uptime_s": a.started.elapsed().as_secs(),
        "channel_configured": a.config.channel.is_some(),
        "channel_connected": a.link_up.load(Ordering::Relaxed),
        "timestamp": crate::now_rfc3339(),
    })
}

async fn authenticate(
    agent: Arc<Agent>,
    header: Option<String>,
    peer: Option<SocketAddr>,
) -> Result<(Arc<Agent>, Caller), Rejection> {
    let ip = peer.map(|p| p.ip());
    match agent.auth.check(header.as_deref()) {
        Ok(caller) => {
            agent.auth.succeeded(ip);
            Ok((agent, caller))
        }
        Err(e) => {
            let delay = agent.auth.failed(ip);
            tracing::info!(peer = ?peer, reason = %e, delay_ms = delay.as_millis() as u64, "Local API auth failed.");
            tokio::time::sleep(delay).await;
            Err(warp::reject::custom(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                e.to_string(),
            )))
        }
    }
}

/// A JSON body under [`MAX_BODY`], decoded with field-naming errors.
fn json_body<T: DeserializeOwned + Send>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
{
    warp::body::content_length_limit(MAX_BODY)
        .and(warp::body::bytes())
        .and_then(|bytes: bytes::Bytes| async move {
            let de = &mut serde_json::Deserializer::from_slice(&bytes);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
                } else if path == "." {
                    ApiError::bad_request(format!("invalid body: {inner}"))
                } else {
                    ApiError::bad_request(format!("field `{path}`: {inner}"))
                }
            })
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub command: String,
    /// Milliseconds; the agent's default (30 s) when absent.
    pub timeout: Option<u64>,
}

fn require_operator(c: &Caller) -> Result<(), Rejection> {
    if c.role == Role::Diagnostics {
        return Err(warp::reject::custom(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has the diagnostics role; this needs operator or admin",
                c.name
            ),
        )));
    }
    Ok(())
}

/// MCP management: routes and auth are here; the Docker work arrives with the Docker issue.
async fn docker_pending(a: &Agent, what: &str) -> Result<warp::reply::Response, Rejection> {
    a.docker
        .containers(true)
        .await
        .map_err(docker_unavailable)?;
    Err(warp::reject::custom(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!("{what} is not implemented by this agent build yet"),
    )))
}

async fn mcp_status(a: Arc<Agent>, _c: Caller) -> Result<warp::reply::Response, Rejection> {
    let list = a
        .docker
        .containers(true)
        .await
        .map_err(docker_unavailable)?;
    let mut table = String::from("NAMES\t\t\tSTATUS\t\tPORTS\n");
    for c in &list {
        let ports: Vec<String> = c
            .ports
            .iter()
            .map(|p| match p.public_port {
                Some(pp) => format!(
                    "{}:{}->{}/{}",
                    p.ip.clone().unwrap_or_default(),
                    pp,
                    p.private_port,
                    p.kind
                ),
                None => format!("{}/{}", p.private_port, p.kind),
            })
            .collect();
        table.push_str(&format!("{}\t{}\t{}\n", c.name, c.status, ports.join(", ")));
    }
    Ok(warp::reply::json(&serde_json::json!({
        "success": true,
        "mcp_servers": table,
        "servers": list,
        "timestamp": crate::now_rfc3339(),
    }))
    .into_response())
}

async fn logs(
    a: Arc<Agent>,
    _c: Caller,
    q: HashMap<String, String>,
) -> Result<warp::reply::Response, Rejection> {
    let lines = match q.get("lines") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "query parameter `lines` must be a whole number from 1 to {MAX_LOG_LINES}, got `{v}`"
                )));
            }
        },
    };
    Ok(success("logs", crate::diagnostics::logs(&a, lines).await))
}

async fn execute(
    a: Arc<Agent>,
    caller: Caller,
    q: HashMap<String, String>,
    req: ExecuteRequest,
) -> Result<warp::reply::Response, Rejection> {
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "query parameter `stream` must be true or false, got `{v}`"
            )));
        }
    };
    if a.draining.load(Ordering::Relaxed) {
        return Err(warp::reject::custom(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down and takes no new work",
        )));
    }
    let max_output = if stream { None } else { Some(HTTP_MAX_OUTPUT) };
    let spec = ExecSpec::new(req.command.clone(), req.timeout, max_output, &a.config.exec)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let decision = a.authorize_exec("http", &caller, None, &spec.command);
    if !decision.allowed {
        return Err(warp::reject::custom(
            ApiError::new(StatusCode::FORBIDDEN, "denied", decision.reason.clone())
                .with("command", req.command)
                .with("rule", decision.rule),
        ));
    }
    let Ok(slot) = a.http_slots.clone().try_acquire_owned() else {
        return Err(warp::reject::custom(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_commands",
            format!(
                "{} commands are running through the local API already (DTMA_HTTP_MAX_CONCURRENT); retry when one ends",
                a.config.exec.http_max_concurrent
            ),
        )));
    };
    let cancel = a.work.child_token();
    if stream {
        return Ok(stream_exec(a, caller, spec, cancel, slot));
    }
    let sink = Arc::new(Collect::default());
    let command = spec.command.clone();
    // A client that goes away takes its command with it (when hyper notices the close, it
    // drops this future, and the guard cancels the command).
    let client_gone = cancel.clone().drop_guard();
    let outcome = a
        .tracker
        .spawn({
            let a = a.clone();
            let sink = sink.clone();
            let command = command.clone();
            async move {
                let r = exec::run(spec, &a.config.exec, &a.config.secrets, sink, cancel).await;
                drop(slot);
                if let Ok(o) = &r {
                    a.audit_outcome("http", &caller, None, &command, o);
                }
                r
            }
        })
        .await
        .map_err(task_failed)?
        .map_err(|e| {
            warp::reject::custom(
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "spawn_failed",
                    e.to_string(),
                )
                .with("command", command.clone()),
            )
        })?;
    client_gone.disarm();
    let (stdout, stderr) = sink.take();
    Ok(warp::reply::json(&serde_json::json!({
        "success": outcome.exit_code == Some(0) && !outcome.timed_out,
        "command": command,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "timestamp": crate::now_rfc3339(),
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "timed_out": outcome.timed_out,
        "truncated": outcome.truncated,
        "duration_ms": outcome.duration.as_millis() as u64,
    }))
    .into_response())
}

/// `?stream=true`: server-sent events as output arrives (`started`, `stdout`/`stderr`, `exit`).
/// The client's reading pace is the command's pace: a full event queue blocks the pipes.
fn stream_exec(
    a: Arc<Agent>,
    caller: Caller,
    spec: ExecSpec,
    cancel: CancellationToken,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> warp::reply::Response {
    let (tx, rx) = mpsc::channel::<warp::sse::Event>(32);
    let sink = Arc::new(SseSink {
        tx: tx.clone(),
        carry: std::sync::Mutex::new([Vec::new(), Vec::new()]),
        client_gone: cancel.clone(),
    });
    let command = spec.command.clone();
    a.tracker.spawn({
        let a = a.clone();
        async move {
            let result = exec::run(spec, &a.config.exec, &a.config.secrets, sink, cancel).await;
            drop(slot);
            let event = match result {
                Ok(o) => {
                    a.audit_outcome("http", &caller, None, &command, &o);
                    warp::sse::Event::default()
                        .event("exit")
                        .json_data(serde_json::json!({
                            "success": o.exit_code == Some(0) && !o.timed_out,
                            "exit_code": o.exit_code,
                            "signal": o.signal,
                            "timed_out": o.timed_out,
                            "cancelled": o.cancelled,
                            "truncated": o.truncated,
                            "duration_ms": o.duration.as_millis() as u64,
                            "stdout_bytes": o.stdout_bytes,
                            "stderr_bytes": o.stderr_bytes,
                        }))
                }
                Err(e) => warp::sse::Event::default().event("error").json_data(
                    serde_json::json!({ "code": "spawn_failed", "message": e.to_string() }),
                ),
            };
            if let Ok(ev) = event {
                let _ = tx.send(ev).await;
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    warp::sse::reply(events).into_response()
}

struct SseSink {
    tx: mpsc::Sender<warp::sse::Event>,
    carry: std::sync::Mutex<[Vec<u8>; 2]>,
    /// Cancelled when the client goes away: nobody is left to read the output.
    client_gone: CancellationToken,
}

impl SseSink {
    fn send(&self, name: &str, data: serde_json::Value) {
        if let Ok(ev) = warp::sse::Event::default().event(name).json_data(data)
            && self.tx.try_send(ev).is_err()
            && self.tx.is_closed()
        {
            self.client_gone.cancel();
        }
    }
}

impl OutputSink for SseSink {
    fn started(&self, pid: u32) {
        self.send("started", serde_json::json!({ "pid": pid }));
    }
    async fn reserve(&self, want: usize) -> usize {
        // The pump is the only producer: once a slot is free, the next `output` fits.
        match self.tx.reserve().await {
            Ok(permit) => drop(permit),
            Err(_) => self.client_gone.cancel(),
        }
        want
    }
    fn output(&self, fd: Fd, data: &[u8], _reserved: usize) {
        if data.is_empty() {
            return;
        }
        let chunks = {
            let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
            let slot = match fd {
                Fd::Stdout => &mut carry[0],
                Fd::Stderr => &mut carry[1],
            };
            crate::streams::split_utf8(slot, data)
        };
        let name = match fd {
            Fd::Stdout => "stdout",
            Fd::Stderr => "stderr",
        };
        for (encoding, text) in chunks {
            let encoding = match encoding {
                Encoding::Utf8 => "utf8",
                Encoding::Base64 => "base64",
            };
            self.send(
                name,
                serde_json::json!({ "encoding": encoding, "data": text }),
            );
        }
    }
    fn eof(&self, fd: Fd) {
        let rest = {
            let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
            match fd {
                Fd::Stdout => std::mem::take(&mut carry[0]),
                Fd::Stderr => std::mem::take(&mut carry[1]),
            }
        };
        if !rest.is_empty() {
            use base64::Engine as _;
            let name = if fd == Fd::Stdout { "stdout" } else { "stderr" };
            self.send(
                name,
                serde_json::json!({
                    "encoding": "base64",
                    "data": base64::engine::general_purpose::STANDARD.encode(rest),
                }),
            );
        }
    }
}

/// One place that turns rejections into JSON errors.
pub async fn handle_rejection(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(e) = r.find::<ApiError>() {
        ApiError {
            status: e.status,
            code: e.code,
            message: e.message.clone(),
            extra: e.extra.clone(),
        }
    } else if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        )
    } else if let Some(q) = r.find::<warp::reject::InvalidQuery>() {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid query: {q}"),
        )
    } else if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", h.to_string())
    } else {
        tracing::warn!(rejection = ?r, "Unhandled rejection.");
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    let mut body = serde_json::Map::new();
    body.insert("success".into(), false.into());
    body.insert("error".into(), e.message.into());
    body.insert("code".into(), e.code.into());
    body.insert("timestamp".into(), crate::now_rfc3339().into());
    body.extend(e.extra);
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::Value::Object(body)),
        e.status,
    )
    .into_response())
}
