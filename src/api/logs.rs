//! `GET /mcp/servers/:instanceName/logs?tail=N&since=RFC3339&timestamps=bool&follow=bool`:
//! decode the query, call the logs service, encode. Following (the default) answers server-sent
//! events (`stdout`/`stderr` `{encoding, data}` as `/ssh/execute?stream=true`, `progress`, then
//! `end {reason, stdout_bytes, stderr_bytes}` or `error {code, message}`); `follow=false` answers
//! one JSON body with the tail. Open to every role.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtma_protocol::{DEFAULT_TAIL, Fd, MAX_TAIL};
use warp::{Rejection, Reply};

use super::error::ApiError;
use super::sse::SseSink;
use super::{HTTP_MAX_OUTPUT, bool_param};
use crate::auth::Caller;
use crate::exec::OutputSink;
use crate::services::Services;
use crate::services::logs::LogsOptions;
use crate::services::mcp::{ProgressSink, Step};

pub async fn logs(
    name: String,
    s: Arc<Services>,
    _caller: Caller,
    q: HashMap<String, String>,
) -> Result<warp::reply::Response, Rejection> {
    let options = options(&q)?;
    let source = s.logs.find(&name).await.map_err(ApiError::from)?;
    let agent = s.agent();
    let cancel = agent.work_token();
    if options.follow {
        // The follow runs in the agent's tracker; the client going away cancels it.
        let (sink, events) = SseSink::new(cancel.clone());
        let services = s.clone();
        agent.spawn(async move {
            let end = services
                .logs
                .follow(source, &options, sink.clone(), cancel)
                .await;
            match end.map(serde_json::to_value) {
                Ok(Ok(end)) => sink.event("end", end),
                Ok(Err(e)) => sink.event(
                    "error",
                    serde_json::json!({ "code": "internal", "message": e.to_string() }),
                ),
                Err(e) => {
                    let e = ApiError::from(e);
                    sink.event(
                        "error",
                        serde_json::json!({ "code": e.code, "message": e.message }),
                    );
                }
            }
        });
        return Ok(warp::sse::reply(events).into_response());
    }
    let sink = Arc::new(Tail::default());
    // A client that goes away takes the read with it (hyper drops this future).
    let client_gone = cancel.clone().drop_guard();
    let end = s
        .logs
        .follow(source, &options, sink.clone(), cancel)
        .await
        .map_err(ApiError::from)?;
    client_gone.disarm();
    let (stdout, stderr, truncated) = sink.take();
    Ok(warp::reply::json(&serde_json::json!({
        "success": true,
        "instance_name": name,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "stdout_bytes": end.stdout_bytes,
        "stderr_bytes": end.stderr_bytes,
        "truncated": truncated,
        "timestamp": crate::now_rfc3339(),
    }))
    .into_response())
}

fn options(q: &HashMap<String, String>) -> Result<LogsOptions, ApiError> {
    let tail = match q.get("tail") {
        None => DEFAULT_TAIL,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_TAIL)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter `tail` must be a whole number from 0 to {MAX_TAIL}, got `{v}`"
                ))
            })?,
    };
    let since = match q.get("since") {
        None => None,
        Some(v) => Some(crate::parse_rfc3339(v).map_err(|e| {
            ApiError::bad_request(format!(
                "query parameter `since` must be an RFC 3339 time such as 2025-01-20T10:00:00Z \
                 (a `+` offset written %2B), got `{v}`: {e}"
            ))
        })?),
    };
    Ok(LogsOptions {
        tail,
        since,
        timestamps: bool_param(q, "timestamps", false)?,
        follow: bool_param(q, "follow", true)?,
    })
}

/// The `follow=false` answer's sink: the tail in memory, up to [`HTTP_MAX_OUTPUT`] bytes
/// (stdout and stderr together); the rest is dropped and `truncated` set.
#[derive(Default)]
struct Tail {
    inner: Mutex<(Vec<u8>, Vec<u8>, bool)>,
}

impl Tail {
    fn take(&self) -> (Vec<u8>, Vec<u8>, bool) {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl OutputSink for Tail {
    fn started(&self, _pid: u32) {}
    async fn reserve(&self, want: usize) -> usize {
        want
    }
    fn output(&self, fd: Fd, data: &[u8], _reserved: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (out, err, truncated) = &mut *g;
        let held = (out.len() + err.len()) as u64;
        let room = HTTP_MAX_OUTPUT.saturating_sub(held) as usize;
        if data.len() > room {
            *truncated = true;
        }
        let kept = &data[..data.len().min(room)];
        match fd {
            Fd::Stdout => out.extend_from_slice(kept),
            Fd::Stderr => err.extend_from_slice(kept),
        }
    }
    fn eof(&self, _fd: Fd) {}
}

impl ProgressSink for Tail {
    fn progress(&self, _step: Step) {}
}
