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
use crate::metrics::Outcome;
use crate::services::commands::{CommandEnd, CommandRequest, CommandSink, Refused, Source};
use crate::services::logs::LogsOptions;
use crate::services::mcp::{GroupSpec, McpError, ProgressSink, Step};
use crate::services::{Origin, Services, ShuttingDown, admit, diagnostics};

/// What a request needs beyond its decoded fields, checked before it becomes a stream.
enum Prepared {
    Exec(ExecSpec),
    Deploy(GroupSpec),
    Logs(LogsOptions),
    Nothing,
}

/// Handle one request. Returns an unsequenced reply when the request did not become a stream.
///
/// Every request is counted once in `dtma_requests_total`: here when it is refused before its
/// service sees it or when the channel serves it itself (`ping`, `cancel`, reads); by the
/// service that owns it otherwise (`exec` by the command service, MCP changes by the MCP
/// service).
pub async fn dispatch(channel: &Arc<Channel>, req: Request) -> Option<AgentMessage> {
    let agent = channel.agent();
    let kind = req.body.kind();
    let unsequenced = |code, message: String| {
        let outcome = match code {
            ErrorCode::ShuttingDown | ErrorCode::TooManyStreams => Outcome::Refused,
            _ => Outcome::Error,
        };
        agent.metrics().request("channel", kind, outcome);
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
    let prepared = match &req.body {
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
                    Prepared::Exec(s)
                }
                Err(err) => return unsequenced(ErrorCode::InvalidRequest, err.to_string()),
            }
        }
        RequestBody::McpDeploy(d) => match channel.services().mcp.validate(&d.group) {
            Ok(spec) => Prepared::Deploy(spec),
            Err(e) => {
                return unsequenced(ErrorCode::InvalidRequest, format!("group: {e}"));
            }
        },
        RequestBody::LogsFollow(l) => match logs_options(l) {
            Ok(options) => Prepared::Logs(options),
            Err(message) => return unsequenced(ErrorCode::InvalidRequest, message),
        },
        _ => Prepared::Nothing,
    };
    let credit = match &req.body {
        RequestBody::Exec(e) => e.credit,
        RequestBody::LogsFollow(l) => l.credit,
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
        agent.metrics().request("channel", kind, Outcome::Refused);
        stream.fail(
            ErrorCode::Expired,
            format!(
                "the request expired at {} before it arrived; it was not run",
                req.expires_at.unwrap_or_default()
            ),
        );
        return None;
    }
    let count = |outcome| agent.metrics().request("channel", kind, outcome);
    match (req.body, prepared) {
        (RequestBody::Exec(_), Prepared::Exec(spec)) => {
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
        (RequestBody::Cancel(c), _) => {
            let (cancelled, phase) = channel.registry().cancel(&c.target);
            info!(request_id = %req.id, target = %c.target, cancelled, "Cancel requested.");
            count(Outcome::Ok);
            finish_result(
                &stream,
                serde_json::to_value(CancelResult {
                    target: c.target,
                    cancelled,
                    phase,
                }),
            );
        }
        (RequestBody::Ping(_), _) => {
            count(Outcome::Ok);
            finish_result(&stream, Ok(serde_json::json!({ "pong": true })))
        }
        (RequestBody::McpDeploy(_), Prepared::Deploy(spec)) => {
            let origin = origin(&req.id);
            spawn_request(channel, stream, None, |s, sink| async move {
                s.mcp.deploy(&origin, spec, sink).await.map_err(mcp_error)
            })
        }
        (RequestBody::McpRemove(r), _) => {
            let origin = origin(&req.id);
            spawn_request(channel, stream, None, |s, sink| async move {
                s.mcp
                    .remove(&origin, &r.group_id, sink)
                    .await
                    .map_err(mcp_error)
            })
        }
        (RequestBody::McpStatus(q), _) => {
            spawn_request(channel, stream, Some(kind), |s, _| async move {
                s.mcp.status(q.group_id.as_deref()).await.map_err(mcp_error)
            })
        }
        (RequestBody::McpRestart(r), _) => {
            let origin = origin(&req.id);
            spawn_request(channel, stream, None, |s, sink| async move {
                s.mcp
                    .restart(&origin, &r.instance_name, sink)
                    .await
                    .map_err(mcp_error)
            })
        }
        (RequestBody::Diagnostics(d), _) => {
            spawn_request(channel, stream, Some(kind), |s, _| async move {
                use dtma_protocol::DiagnosticsScope;
                let r = match d.scope {
                    DiagnosticsScope::System => s.diagnostics.system().await,
                    DiagnosticsScope::Docker => s.diagnostics.docker().await,
                    DiagnosticsScope::Logs => s.diagnostics.logs(d.lines() as usize).await,
                };
                r.map_err(diagnostics_error)
            })
        }
        (RequestBody::LogsFollow(l), Prepared::Logs(options)) => {
            spawn_request(channel, stream, Some(kind), |s, sink| async move {
                let source = s.logs.find(&l.instance_name).await.map_err(mcp_error)?;
                s.logs
                    .follow(source, &options, sink, token)
                    .await
                    .map_err(mcp_error)
            })
        }
        (RequestBody::McpEvents(_), _) => super::events::spawn(channel, stream, token),
        (_, _) => {
            count(Outcome::Error);
            stream.fail(
                ErrorCode::Internal,
                format!("`{kind}` was prepared for another request type (an agent bug)"),
            )
        }
    }
    None
}

/// Every channel request comes from the backend, which the agent dialled itself.
fn origin(request_id: &str) -> Origin {
    Origin {
        source: Source::Channel,
        caller: crate::agent::backend_caller(),
        request_id: Some(request_id.to_owned()),
    }
}

/// A `logs_follow`'s fields as the service's options (`since` must be an RFC 3339 time).
fn logs_options(l: &dtma_protocol::LogsFollow) -> Result<LogsOptions, String> {
    let since = match l.since.as_deref().map(crate::parse_rfc3339) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return Err(format!("field `since` is not an RFC 3339 time: {e}")),
    };
    Ok(LogsOptions {
        tail: l.tail(),
        since,
        timestamps: l.timestamps(),
        follow: l.follow(),
    })
}

/// A failure as the channel's terminal error: code, message, details.
type WireError = (ErrorCode, String, Option<serde_json::Value>);

fn mcp_error(e: McpError) -> WireError {
    let code = match &e {
        McpError::ShuttingDown(_) => ErrorCode::ShuttingDown,
        McpError::Invalid(_) => ErrorCode::InvalidRequest,
        McpError::DockerUnavailable(_) => ErrorCode::DockerUnavailable,
        McpError::Forbidden(_) => ErrorCode::Denied,
        McpError::NotFound(_) => ErrorCode::NotFound,
        McpError::Conflict(_) => ErrorCode::Conflict,
        McpError::DeployFailed { .. } => ErrorCode::DeployFailed,
        McpError::Docker(_) => ErrorCode::Internal,
    };
    let message = e.to_string();
    let details = match e {
        McpError::DeployFailed { details, .. } => serde_json::to_value(details).ok(),
        _ => None,
    };
    (code, message, details)
}

fn diagnostics_error(e: diagnostics::Error) -> WireError {
    let code = match &e {
        diagnostics::Error::BadLines(_) => ErrorCode::InvalidRequest,
        diagnostics::Error::Docker(_) => ErrorCode::DockerUnavailable,
        diagnostics::Error::Internal(_) => ErrorCode::Internal,
    };
    (code, e.to_string(), None)
}

/// Run a request's work in the agent's task tracker, with the stream as its sink (progress, and
/// a log follow's output); its value becomes the stream's `result`, its error the terminal
/// `error`. A task that ends without either (a panic) still ends the stream, with `internal`.
/// `counted`: the request type to count at the end, when no service counts it.
fn spawn_request<F, Fut, T>(
    channel: &Arc<Channel>,
    stream: StreamHandle,
    counted: Option<&'static str>,
    work: F,
) where
    F: FnOnce(Arc<Services>, Arc<StreamHandle>) -> Fut,
    Fut: Future<Output = Result<T, WireError>> + Send + 'static,
    T: serde::Serialize,
{
    let stream = Arc::new(stream);
    let fut = work(channel.services().clone(), stream.clone());
    let agent = channel.agent().clone();
    channel.agent().spawn(async move {
        let _guard = EndsStream(stream.clone());
        let outcome = match fut.await {
            Ok(v) => {
                finish_result(&stream, serde_json::to_value(v));
                Outcome::Ok
            }
            Err((code, message, details)) => {
                let outcome = match code {
                    ErrorCode::Denied => Outcome::Denied,
                    ErrorCode::ShuttingDown => Outcome::Refused,
                    _ => Outcome::Error,
                };
                stream.fail_with(code, message, details);
                outcome
            }
        };
        if let Some(kind) = counted {
            agent.metrics().request("channel", kind, outcome);
        }
    });
}

/// Ends its stream with `internal` when dropped before the stream ended (a panic unwinding).
/// After a normal end it changes nothing: a finished stream takes no more events.
pub(super) struct EndsStream(pub(super) Arc<StreamHandle>);

impl Drop for EndsStream {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            tracing::error!(request_id = %self.0.id(), "A request's task ended without a result (a bug).");
            self.0.fail(
                ErrorCode::Internal,
                "the agent failed while serving this request (an agent bug; see its log)".into(),
            );
        }
    }
}

/// Progress of MCP requests becomes the stream's `progress` events.
impl ProgressSink for StreamHandle {
    fn progress(&self, step: Step) {
        let id = self.id().to_owned();
        self.push(|seq| {
            AgentMessage::Progress(dtma_protocol::Progress {
                id,
                seq,
                step: step.step,
                server: step.server,
                message: step.message,
                bytes: step
                    .bytes
                    .map(|(current, total)| dtma_protocol::ProgressBytes { current, total }),
            })
        });
    }
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
