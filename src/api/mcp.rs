//! `/mcp/*`: decode, call the MCP service, encode. Deploy, remove and restart need the operator
//! or admin role; status is open to every token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::mpsc;

use dtma_protocol::McpGroup;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::error::ApiError;
use super::success_merged;
use crate::auth::Caller;
use crate::services::commands::Source;
use crate::services::mcp::{GroupSpec, McpError, McpService, NoProgress, ProgressSink, Step};
use crate::services::{Origin, Services};

fn origin(caller: Caller) -> Origin {
    Origin {
        source: Source::Http,
        caller,
        request_id: None,
    }
}

/// The MCP service's failures as the local API's statuses.
impl From<McpError> for ApiError {
    fn from(e: McpError) -> ApiError {
        match e {
            McpError::ShuttingDown(s) => s.into(),
            McpError::Invalid(e) => ApiError::bad_request(e.to_string()),
            McpError::DockerUnavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable", m)
            }
            McpError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            McpError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            McpError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            McpError::DeployFailed { message, details } => {
                let servers = serde_json::to_value(&details.servers).unwrap_or_default();
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "deploy_failed", message)
                    .with("group_id", details.group_id)
                    .with("servers", servers)
            }
            McpError::Docker(m) => ApiError::new(StatusCode::BAD_GATEWAY, "docker_error", m),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Rejection> {
    serde_json::to_value(v).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into()
    })
}

/// `POST /mcp/groups`: the backend's deploy body. With `?stream=true`, server-sent events:
/// `progress` as the deploy goes, then `result` (the deploy result) or `error`
/// (`{code, message, details?}`).
pub async fn deploy(
    s: Arc<Services>,
    caller: Caller,
    q: HashMap<String, String>,
    body: serde_json::Value,
) -> Result<warp::reply::Response, Rejection> {
    let stream = super::bool_param(&q, "stream", false)?;
    McpService::may_change(&caller, "mcp_deploy").map_err(ApiError::from)?;
    let group: McpGroup = super::body::decode_value(body)?;
    let spec = s.mcp.validate(&group).map_err(ApiError::from)?;
    if stream {
        return Ok(deploy_events(s, origin(caller), spec));
    }
    let result = s
        .mcp
        .deploy(&origin(caller), spec, Arc::new(NoProgress))
        .await
        .map_err(ApiError::from)?;
    Ok(success_merged(to_json(&result)?))
}

/// A deploy's progress as server-sent events. The deploy runs to its end even when the client
/// leaves (it is one transaction); the events are few, so they queue without a bound.
fn deploy_events(s: Arc<Services>, origin: Origin, spec: GroupSpec) -> warp::reply::Response {
    struct SseProgress(mpsc::UnboundedSender<warp::sse::Event>);
    impl ProgressSink for SseProgress {
        fn progress(&self, step: Step) {
            let data = serde_json::json!({
                "step": step.step,
                "server": step.server,
                "message": step.message,
                "bytes": step.bytes.map(|(current, total)| serde_json::json!({"current": current, "total": total})),
            });
            if let Ok(ev) = warp::sse::Event::default()
                .event("progress")
                .json_data(data)
            {
                let _ = self.0.send(ev);
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(SseProgress(tx.clone()));
    let agent = s.agent().clone();
    agent.spawn(async move {
        let event = match s.mcp.deploy(&origin, spec, sink).await {
            Ok(result) => warp::sse::Event::default()
                .event("result")
                .json_data(result),
            Err(e) => {
                let body = ApiError::from(e);
                let mut data = serde_json::Map::new();
                data.insert("code".into(), body.code.into());
                data.insert("message".into(), body.message.into());
                data.extend(body.extra);
                warp::sse::Event::default().event("error").json_data(data)
            }
        };
        if let Ok(ev) = event {
            let _ = tx.send(ev);
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    warp::sse::reply(events).into_response()
}

/// `DELETE /mcp/groups/:groupId`.
pub async fn remove(
    group: String,
    s: Arc<Services>,
    caller: Caller,
) -> Result<warp::reply::Response, Rejection> {
    let result = s
        .mcp
        .remove(&origin(caller), &group, Arc::new(NoProgress))
        .await
        .map_err(ApiError::from)?;
    Ok(success_merged(to_json(&result)?))
}

/// `POST /mcp/servers/:instanceName/restart`.
pub async fn restart(
    name: String,
    s: Arc<Services>,
    caller: Caller,
) -> Result<warp::reply::Response, Rejection> {
    let result = s
        .mcp
        .restart(&origin(caller), &name, Arc::new(NoProgress))
        .await
        .map_err(ApiError::from)?;
    Ok(success_merged(to_json(&result)?))
}

/// `GET /mcp/status`: the seed's `mcp_servers` table, `groups`, and `servers` (flat).
pub async fn status(s: Arc<Services>, _caller: Caller) -> Result<warp::reply::Response, Rejection> {
    let result = s.mcp.status(None).await.map_err(ApiError::from)?;
    let servers: Vec<_> = result
        .groups
        .iter()
        .flat_map(|g| {
            g.servers.iter().map(move |srv| {
                let mut v = serde_json::to_value(srv).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("group_id".into(), g.group_id.clone().into());
                }
                v
            })
        })
        .collect();
    let mut body = to_json(&result)?;
    if let Some(m) = body.as_object_mut() {
        m.insert("servers".into(), servers.into());
    }
    Ok(success_merged(body).into_response())
}
