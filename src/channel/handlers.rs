//! Request handlers: one per request type, all behind [`dispatch`]. Each decodes what the
//! protocol carries, calls a service and turns its outcome into stream events; the work itself
//! (checks, audit, running) is the service's.
//!
//! A request that is valid becomes a stream (so its id is never run twice). A request whose
//! fields are wrong gets an unsequenced `error` with its id and does not become a stream: the
//! backend may correct it and send it again.

use std::sync::Arc;

use dtma_protocol::{
    AgentMessage, CancelResult, ErrorCode, ErrorEvent, Exit, Request, RequestBody, ResultEvent,
    Started,
};
use tracing::info;

use super::Channel;
use super::streams::{OpenError, StreamHandle};
use crate::exec::{ExecSpec, OutputSink};
use crate::services::commands::{CommandEnd, CommandRequest, CommandSink, Refused, Source};
use crate::services::{ShuttingDown, admit};

/// Handle one request. Returns an unsequenced reply when the request did not become a stream.
pub async fn dispatch(channel: &Arc<Channel>, req: Request) -> Option<AgentMessage> {
    let agent = channel.agent();
    let unsequenced = |code, message: String| {
        Some(AgentMessage::Error(ErrorEvent {
            id: Some(req.id.clone()),
            seq: None,
            code,
            message,
            details: None,
        }))
    };
    if let Err(e) = admit(agent) {
        return unsequenced(ErrorCode::ShuttingDown, e.to_string());
    }
    let expired = match req.expires_at.as_deref().map(crate::parse_rfc3339) {
        None => false,
        Some(Ok(at)) => at < time::OffsetDateTime::now_utc(),
        Some(Err(e)) => {
            return unsequenced(
                ErrorCode::InvalidRequest,
                format!("field `expires_at` is not an RFC 3339 time: {e}"),
            );
        }
    };
    // Validate before opening a stream, so that a bad request can be corrected and resent.
    let spec = match &req.body {
        RequestBody::Exec(e) => {
            let spec = ExecSpec::new(
                e.command.clone(),
                e.timeout_ms,
                e.max_output_bytes,
                &agent.config().exec,
            )
            .and_then(|s| s.with_env(e.env.clone()))
            .and_then(|s| s.with_cwd(e.cwd.clone()));
            match spec {
                Ok(mut s) => {
                    s.stdin = e.stdin.clone().map(String::into_bytes);
                    Some(s)
                }
                Err(err) => return unsequenced(ErrorCode::InvalidRequest, err.to_string()),
            }
        }
        _ => None,
    };
    let credit = match &req.body {
        RequestBody::Exec(e) => e.credit,
        _ => None,
    };
    let token = agent.work_token();
    let stream = match channel.registry().open(&req.id, credit, token.clone()) {
        Ok(s) => s,
        Err(OpenError::Duplicate(state)) => return Some(AgentMessage::State(state)),
        Err(OpenError::TooMany) => {
            return unsequenced(
                ErrorCode::TooManyStreams,
                format!(
                    "the agent holds {} streams already; retry when some are acknowledged",
                    agent.config().streams.max_streams
                ),
            );
        }
    };
    if expired {
        stream.fail(
            ErrorCode::Expired,
            format!(
                "the request expired at {} before it arrived; it was not run",
                req.expires_at.unwrap_or_default()
            ),
        );
        return None;
    }
    let kind = req.body.kind();
    match req.body {
        RequestBody::Exec(_) => {
            if let Some(spec) = spec {
                let command = CommandRequest {
                    source: Source::Channel,
                    caller: crate::agent::backend_caller(),
                    request_id: Some(req.id.clone()),
                    spec,
                };
                let stream = Arc::new(stream);
                let services = channel.services();
                if let Err(e) = services
                    .commands
                    .start(command, stream.clone(), token)
                    .await
                {
                    let code = match &e {
                        Refused::ShuttingDown(ShuttingDown) => ErrorCode::ShuttingDown,
                        Refused::Denied { .. } => ErrorCode::Denied,
                        // The channel's own bound is `max_streams`; no slot is taken here.
                        Refused::Busy { .. } => ErrorCode::Internal,
                    };
                    stream.fail(code, e.to_string());
                }
            }
        }
        RequestBody::Cancel(c) => {
            let (cancelled, phase) = channel.registry().cancel(&c.target);
            info!(request_id = %req.id, target = %c.target, cancelled, "Cancel requested.");
            finish_result(
                &stream,
                serde_json::to_value(CancelResult {
                    target: c.target,
                    cancelled,
                    phase,
                }),
            );
        }
        RequestBody::Ping(_) => finish_result(&stream, Ok(serde_json::json!({ "pong": true }))),
        RequestBody::McpDeploy(_)
        | RequestBody::McpRemove(_)
        | RequestBody::McpStatus(_)
        | RequestBody::McpRestart(_)
        | RequestBody::LogsFollow(_)
        | RequestBody::Diagnostics(_)
        | RequestBody::McpEvents(_) => stream.fail(
            ErrorCode::NotImplemented,
            format!("`{kind}` is part of the protocol but not served by this agent build yet"),
        ),
    }
    None
}

fn finish_result(stream: &StreamHandle, data: Result<serde_json::Value, serde_json::Error>) {
    let id = stream.id().to_owned();
    match data {
        Ok(data) => stream.finish(|seq| AgentMessage::Result(ResultEvent { id, seq, data })),
        Err(e) => stream.fail(ErrorCode::Internal, e.to_string()),
    }
}

/// A command's events become the stream's `started`, `output` and terminal events.
impl OutputSink for StreamHandle {
    fn started(&self, pid: u32) {
        let id = self.id().to_owned();
        self.push(|seq| {
            AgentMessage::Started(Started {
                id,
                seq,
                pid,
                at: crate::now_rfc3339(),
            })
        });
    }
    async fn reserve(&self, want: usize) -> usize {
        StreamHandle::reserve(self, want).await
    }
    fn output(&self, fd: dtma_protocol::Fd, data: &[u8], reserved: usize) {
        StreamHandle::output(self, fd, data, reserved);
    }
    fn eof(&self, fd: dtma_protocol::Fd) {
        StreamHandle::eof(self, fd);
    }
}

impl CommandSink for StreamHandle {
    fn end(&self, end: CommandEnd) {
        let id = self.id().to_owned();
        match end {
            CommandEnd::Exited(o) => self.finish(|seq| {
                AgentMessage::Exit(Exit {
                    id,
                    seq,
                    exit_code: o.exit_code,
                    signal: o.signal,
                    timed_out: o.timed_out,
                    cancelled: o.cancelled,
                    killed_with: o.killed_with.map(str::to_owned),
                    duration_ms: o.duration.as_millis() as u64,
                    stdout_bytes: o.stdout_bytes,
                    stderr_bytes: o.stderr_bytes,
                    truncated: o.truncated,
                })
            }),
            CommandEnd::SpawnFailed(message) => self.fail(ErrorCode::SpawnFailed, message),
            CommandEnd::Internal(message) => self.fail(ErrorCode::Internal, message),
        }
    }
}
