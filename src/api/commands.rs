//! `POST /ssh/execute`: decode, call the command service, encode. Buffered (the seed's JSON
//! answer) or, with `?stream=true`, server-sent events as output arrives ([`SseSink`]:
//! `started`, `stdout`/`stderr` `{encoding, data}`, then `exit` or `error`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtma_protocol::Fd;
use serde::Deserialize;
use tokio::sync::oneshot;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::error::ApiError;
use super::sse::SseSink;
use crate::auth::Caller;
use crate::exec::{Collect, ExecSpec, Outcome, OutputSink};
use crate::services::Services;
use crate::services::commands::{CommandEnd, CommandRequest, CommandSink, Refused, Source};

/// Output kept for a buffered `/ssh/execute` reply (stdout + stderr); the rest is discarded and
/// `truncated` is set. The streaming form has no such cap (it follows the client's pace).
pub const HTTP_MAX_OUTPUT: u64 = 4 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub command: String,
    /// Milliseconds; the agent's default (30 s) when absent.
    pub timeout: Option<u64>,
}

pub async fn execute(
    services: Arc<Services>,
    caller: Caller,
    q: HashMap<String, String>,
    req: ExecuteRequest,
) -> Result<warp::reply::Response, Rejection> {
    let stream = super::bool_param(&q, "stream", false)?;
    let agent = services.agent();
    let max_output = if stream { None } else { Some(HTTP_MAX_OUTPUT) };
    let spec = ExecSpec::new(
        req.command.clone(),
        req.timeout,
        max_output,
        &agent.config().exec,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let command = CommandRequest {
        source: Source::Http,
        caller,
        request_id: None,
        spec,
    };
    let cancel = agent.work_token();
    if stream {
        let (sink, events) = SseSink::new(cancel.clone());
        services
            .commands
            .start(command, sink, cancel)
            .await
            .map_err(|e| refused(e, &req.command))?;
        return Ok(warp::sse::reply(events).into_response());
    }
    let (tx, ended) = oneshot::channel();
    let sink = Arc::new(Buffered {
        output: Collect::default(),
        end: Mutex::new(Some(tx)),
    });
    // A client that goes away takes its command with it (when hyper notices the close, it
    // drops this future, and the guard cancels the command).
    let client_gone = cancel.clone().drop_guard();
    services
        .commands
        .start(command, sink.clone(), cancel)
        .await
        .map_err(|e| refused(e, &req.command))?;
    let end = ended.await.unwrap_or_else(|_| {
        CommandEnd::Internal("the command's task ended without an outcome".into())
    });
    client_gone.disarm();
    match end {
        CommandEnd::Exited(o) => {
            let (stdout, stderr) = sink.output.take();
            let mut body = exit_body(&o);
            body.insert("command".into(), req.command.into());
            body.insert(
                "stdout".into(),
                String::from_utf8_lossy(&stdout).into_owned().into(),
            );
            body.insert(
                "stderr".into(),
                String::from_utf8_lossy(&stderr).into_owned().into(),
            );
            body.insert("timestamp".into(), crate::now_rfc3339().into());
            Ok(warp::reply::json(&body).into_response())
        }
        CommandEnd::SpawnFailed(m) => {
            Err(
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "spawn_failed", m)
                    .with("command", req.command)
                    .into(),
            )
        }
        CommandEnd::Internal(m) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m).into())
        }
    }
}

/// The service's refusals as the local API's statuses.
fn refused(e: Refused, command: &str) -> ApiError {
    match e {
        Refused::ShuttingDown(s) => s.into(),
        Refused::Denied { rule, reason } => ApiError::new(StatusCode::FORBIDDEN, "denied", reason)
            .with("command", command)
            .with("rule", rule),
        Refused::Busy { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_commands",
            e.to_string(),
        ),
    }
}

/// The fields both answers share: the buffered body and the SSE `exit` event.
fn exit_body(o: &Outcome) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "success": o.exit_code == Some(0) && !o.timed_out,
        "exit_code": o.exit_code,
        "signal": o.signal,
        "timed_out": o.timed_out,
        "cancelled": o.cancelled,
        "truncated": o.truncated,
        "duration_ms": o.duration.as_millis() as u64,
        "stdout_bytes": o.stdout_bytes,
        "stderr_bytes": o.stderr_bytes,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The buffered answer's sink: output in memory, the end through a oneshot.
struct Buffered {
    output: Collect,
    end: Mutex<Option<oneshot::Sender<CommandEnd>>>,
}

impl OutputSink for Buffered {
    fn started(&self, pid: u32) {
        self.output.started(pid)
    }
    async fn reserve(&self, want: usize) -> usize {
        self.output.reserve(want).await
    }
    fn output(&self, fd: Fd, data: &[u8], reserved: usize) {
        self.output.output(fd, data, reserved)
    }
    fn eof(&self, fd: Fd) {
        self.output.eof(fd)
    }
}

impl CommandSink for Buffered {
    fn end(&self, end: CommandEnd) {
        if let Some(tx) = self.end.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(end);
        }
    }
}

/// `?stream=true` ends with `exit` (or `error`).
impl CommandSink for SseSink {
    fn end(&self, end: CommandEnd) {
        match end {
            CommandEnd::Exited(o) => self.event("exit", exit_body(&o).into()),
            CommandEnd::SpawnFailed(m) => self.event(
                "error",
                serde_json::json!({ "code": "spawn_failed", "message": m }),
            ),
            CommandEnd::Internal(m) => self.event(
                "error",
                serde_json::json!({ "code": "internal", "message": m }),
            ),
        }
    }
}
