//! The local HTTP API on `DTMA_LISTEN` (default 127.0.0.1:30000), for a person on the droplet.
//!
//! This module serves `/health` and maps every other path to a JSON 404; the seed's
//! authenticated endpoints (`/ssh/execute`, `/diagnostics/*`, `/mcp/*`, `/status`) are built on
//! the same exec engine in the local-API issue.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::agent::Agent;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_s: u64,
    channel_configured: bool,
    channel_connected: bool,
    timestamp: String,
}

/// Every route of the local API.
pub fn routes(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let health = warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            warp::reply::json(&Health {
                status: "ok",
                version: crate::VERSION,
                uptime_s: agent.started.elapsed().as_secs(),
                channel_configured: agent.config.channel.is_some(),
                channel_connected: agent.link_up.load(Ordering::Relaxed),
                timestamp: crate::now_rfc3339(),
            })
        });
    health.recover(handle_rejection)
}

#[derive(Serialize)]
struct ErrorBody {
    success: bool,
    error: String,
    code: &'static str,
    timestamp: String,
}

/// One place that turns rejections into JSON errors.
pub async fn handle_rejection(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, code, error) = if r.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint".to_owned(),
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint".to_owned(),
        )
    } else {
        (StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    };
    let body = warp::reply::json(&ErrorBody {
        success: false,
        error,
        code,
        timestamp: crate::now_rfc3339(),
    });
    Ok(warp::reply::with_status(body, status).into_response())
}
