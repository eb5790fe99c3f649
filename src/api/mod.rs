//! The local HTTP adapter on `DTMA_LISTEN` (default 127.0.0.1:30000): the seed's endpoints with
//! the seed's response shapes, for the backend's old HTTP path and for a person on the droplet.
//!
//! Each route only decodes (auth, path, query, body), calls a service and encodes its answer;
//! `GET /metrics` renders the services' Prometheus text (no counting happens here); it needs a
//! token unless `DTMA_METRICS_PUBLIC` opens it for a local scraper.
//! Every failure is an [`ApiError`] turned into JSON by [`error::handle_rejection`]:
//! 400 bad input, 401 auth, 403 role or policy, 404, 405, 411/413 body size, 429 too many
//! commands, 503 Docker or shutdown.
//!
//! - [`commands`]: `/ssh/execute`, buffered or SSE.
//! - [`mcp`]: `/mcp/*`: deploy, remove, restart, status.
//! - [`logs`]: `/mcp/servers/:instanceName/logs`, an MCP server's log, followed (SSE) or not.
//! - [`sse`]: the server-sent-events sink both streaming routes share.
//! - [`body`]: JSON bodies, and the 413 that reaches clients that send everything first.
//! - [`error`]: the error body and the rejection mapping.

pub mod body;
pub mod commands;
pub mod error;
pub mod logs;
pub mod mcp;
pub mod sse;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::auth::Caller;
use crate::services::Services;
pub use commands::HTTP_MAX_OUTPUT;
pub use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: u64 = 1 << 20;

/// Every route of the local API.
pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_services = {
        let s = services.clone();
        warp::any().map(move || s.clone())
    };
    let auth = with_services
        .clone()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .and_then(authenticate)
        .untuple_one();

    let health = warp::path!("health")
        .and(warp::get())
        .and(with_services.clone())
        .map(|s: Arc<Services>| warp::reply::json(&health_body(&s)));

    let execute = warp::path!("ssh" / "execute")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(body::json::<commands::ExecuteRequest>())
        .and_then(commands::execute);

    let mcp_status = warp::path!("mcp" / "status")
        .and(warp::get())
        .and(auth.clone())
        .and_then(mcp::status);
    let mcp_deploy = warp::path!("mcp" / "groups")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(body::json::<serde_json::Value>())
        .and_then(mcp::deploy);
    let mcp_remove = warp::path!("mcp" / "groups" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and_then(mcp::remove);
    let mcp_restart = warp::path!("mcp" / "servers" / String / "restart")
        .and(warp::post())
        .and(auth.clone())
        .and_then(mcp::restart);
    let mcp_logs = warp::path!("mcp" / "servers" / String / "logs")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(logs::logs);

    let diag_docker = warp::path!("diagnostics" / "docker")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|s: Arc<Services>, _c: Caller| async move {
            let d = s.diagnostics.docker().await.map_err(ApiError::from)?;
            Ok::<_, Rejection>(success("diagnostics", d))
        });
    let diag_system = warp::path!("diagnostics" / "system")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|s: Arc<Services>, _c: Caller| async move {
            let d = s.diagnostics.system().await.map_err(ApiError::from)?;
            Ok::<_, Rejection>(success("diagnostics", d))
        });
    let diag_logs = warp::path!("diagnostics" / "logs")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and_then(logs);
    // Public only when the operator says so; otherwise the same auth as every other route.
    let metrics_public = services.agent().config().metrics_public;
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_services.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .and_then(
            move |s: Arc<Services>, header: Option<String>, peer: Option<SocketAddr>| async move {
                let s = if metrics_public {
                    s
                } else {
                    authenticate(s, header, peer).await?.0
                };
                metrics(s).await
            },
        );
    let status = warp::path!("status")
        .and(warp::get())
        .and(auth.clone())
        .and_then(|s: Arc<Services>, _c: Caller| async move {
            Ok::<_, Rejection>(warp::reply::json(&s.diagnostics.console_status().await))
        });

    health
        .or(execute)
        .or(mcp_status)
        .or(mcp_deploy)
        .or(mcp_remove)
        .or(mcp_restart)
        .or(mcp_logs)
        .or(diag_docker)
        .or(diag_system)
        .or(diag_logs)
        .or(status)
        .or(metrics)
        .with(warp::log::custom(|info| {
            tracing::debug!(
                method = %info.method(),
                path = info.path(),
                status = info.status().as_u16(),
                elapsed_ms = info.elapsed().as_millis() as u64,
                "HTTP request."
            );
        }))
        .recover(error::handle_rejection)
}

/// `{"success": true, <key>: <value>, "timestamp": ...}`, the seed's envelope.
fn success(key: &str, value: serde_json::Value) -> warp::reply::Response {
    let mut body = serde_json::Map::new();
    body.insert(key.into(), value);
    success_merged(serde_json::Value::Object(body))
}

/// The seed's envelope around an object's own fields.
pub(crate) fn success_merged(value: serde_json::Value) -> warp::reply::Response {
    let mut body = serde_json::Map::new();
    body.insert("success".into(), true.into());
    if let serde_json::Value::Object(fields) = value {
        body.extend(fields);
    }
    body.insert("timestamp".into(), crate::now_rfc3339().into());
    warp::reply::json(&serde_json::Value::Object(body)).into_response()
}

fn health_body(s: &Services) -> serde_json::Value {
    let a = s.agent();
    serde_json::json!({
        "status": if a.is_draining() { "draining" } else { "ok" },
        "service": "dtma",
        "version": crate::VERSION,
        "uptime_s": a.uptime().as_secs(),
        "channel_configured": a.config().channel.is_some(),
        "channel_connected": a.link_up(),
        "timestamp": crate::now_rfc3339(),
    })
}

async fn authenticate(
    services: Arc<Services>,
    header: Option<String>,
    peer: Option<SocketAddr>,
) -> Result<(Arc<Services>, Caller), Rejection> {
    let ip = peer.map(|p| p.ip());
    let auth = services.agent().auth();
    match auth.check(header.as_deref()) {
        Ok(caller) => {
            auth.succeeded(ip);
            Ok((services, caller))
        }
        Err(e) => {
            let delay = auth.failed(ip);
            tracing::info!(peer = ?peer, reason = %e, delay_ms = delay.as_millis() as u64, "Local API auth failed.");
            tokio::time::sleep(delay).await;
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()).into())
        }
    }
}

/// A boolean query parameter: `true`/`1`/empty (`?follow`) or `false`/`0`; `default` when
/// absent.
pub(crate) fn bool_param(
    q: &HashMap<String, String>,
    name: &str,
    default: bool,
) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "query parameter `{name}` must be true or false, got `{v}`"
        ))),
    }
}

async fn metrics(s: Arc<Services>) -> Result<warp::reply::Response, Rejection> {
    let text = s.metrics().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the metrics could not be encoded: {e}"),
        )
    })?;
    Ok(warp::reply::with_header(
        text,
        warp::http::header::CONTENT_TYPE,
        crate::metrics::CONTENT_TYPE,
    )
    .into_response())
}

async fn logs(
    s: Arc<Services>,
    _c: Caller,
    q: HashMap<String, String>,
) -> Result<warp::reply::Response, Rejection> {
    let lines = match q.get("lines") {
        None => 100,
        Some(v) => v.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter `lines` must be a whole number from 1 to {}, got `{v}`",
                crate::services::diagnostics::MAX_LOG_LINES
            ))
        })?,
    };
    let v = s.diagnostics.logs(lines).await.map_err(ApiError::from)?;
    Ok(success("logs", v))
}
