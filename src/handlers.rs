//! Request handlers: one per request type, all behind [`dispatch`].
//!
//! A request that is valid becomes a stream (so its id is never run twice). A request whose
//! fields are wrong gets an unsequenced `error` with its id and does not become a stream: the
//! backend may correct it and send it again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dtma_protocol::{
    AgentMessage, CancelResult, ErrorCode, ErrorEvent, Exit, Request, RequestBody, ResultEvent,
    Started,
};
use tracing::{info, warn};

use crate::agent::Agent;
use crate::exec::{self, ExecSpec, OutputSink};
use crate::streams::{OpenError, StreamHandle};

/// Handle one request. Returns an unsequenced reply when the request did not become a stream.
pub fn dispatch(agent: &Arc<Agent>, req: Request) -> Option<AgentMessage> {
    let unsequenced = |code, message: String| {
        Some(AgentMessage::Error(ErrorEvent {
            id: Some(req.id.clone()),
            seq: None,
            code,
            message,
        }))
    };
    if agent.draining.load(Ordering::Relaxed) {
        return unsequenced(
            ErrorCode::ShuttingDown,
            "the agent is shutting down and takes no new work".into(),
        );
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
                &agent.config.exec,
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
    let token = agent.work.child_token();
    let stream = match agent.registry.open(&req.id, credit, token.clone()) {
        Ok(s) => s,
        Err(OpenError::Duplicate(state)) => return Some(AgentMessage::State(state)),
        Err(OpenError::TooMany) => {
            return unsequenced(
                ErrorCode::TooManyStreams,
                format!(
                    "the agent holds {} streams already; retry when some are acknowledged",
                    agent.config.streams.max_streams
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
                let caller = crate::agent::backend_caller();
                let decision =
                    agent.authorize_exec("channel", &caller, Some(&req.id), &spec.command);
                if decision.allowed {
                    start_exec(agent, stream, spec, token);
                } else {
                    stream.fail(
                        ErrorCode::Denied,
                        format!("denied by rule `{}`: {}", decision.rule, decision.reason),
                    );
                }
            }
        }
        RequestBody::Cancel(c) => {
            let (cancelled, phase) = agent.registry.cancel(&c.target);
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
        | RequestBody::Diagnostics(_) => stream.fail(
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

fn start_exec(
    agent: &Arc<Agent>,
    stream: StreamHandle,
    spec: ExecSpec,
    token: tokio_util::sync::CancellationToken,
) {
    let agent2 = agent.clone();
    agent.tracker.spawn(async move {
        let stream = Arc::new(stream);
        let id = stream.id().to_owned();
        info!(request_id = %id, "Exec started.");
        let command = spec.command.clone();
        let result = exec::run(
            spec,
            &agent2.config.exec,
            &agent2.config.secrets,
            stream.clone(),
            token,
        )
        .await;
        match result {
            Ok(o) => {
                agent2.audit_outcome(
                    "channel",
                    &crate::agent::backend_caller(),
                    Some(&id),
                    &command,
                    &o,
                );
                info!(
                    request_id = %id,
                    exit_code = ?o.exit_code,
                    signal = ?o.signal,
                    timed_out = o.timed_out,
                    cancelled = o.cancelled,
                    duration_ms = o.duration.as_millis() as u64,
                    "Exec finished."
                );
                stream.finish(|seq| {
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
                });
            }
            Err(e) => {
                warn!(request_id = %id, error = %e, "Exec could not start.");
                stream.fail(ErrorCode::SpawnFailed, e.to_string());
            }
        }
    });
}

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
