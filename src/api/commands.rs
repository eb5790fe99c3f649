//! `POST /ssh/execute`: decode, call the command service, encode. Buffered (the seed's JSON
//! answer) or, with `?stream=true`, server-sent events as output arrives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use dtma_protocol::{Encoding, Fd};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::error::ApiError;
use crate::auth::Caller;
use crate::exec::{Collect, ExecSpec, Outcome, OutputSink};
use crate::services::Services;
use crate::services::commands::{CommandEnd, CommandRequest, CommandSink, Refused, Source};
use crate::text::Utf8Carry;

/// Output kept for a buffered `/ssh/execute` reply (stdout + stderr); the rest is discarded and
/// `truncated` is set. The streaming form has no such cap (it follows the client's pace).
pub const HTTP_MAX_OUTPUT: u64 = 4 << 20;
/// Output events a streaming client may be behind before the command waits for it.
const SSE_WINDOW: usize = 32;

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
    let stream = stream_param(&q)?;
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

/// `?stream=`: absent, `false`, `0` or `true`, `1`, empty.
pub(super) fn stream_param(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("stream").map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "query parameter `stream` must be true or false, got `{v}`"
        ))),
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

/// `?stream=true`: `started`, `stdout`/`stderr` `{encoding, data}`, then `exit` (or `error`).
///
/// The client's reading pace is the command's pace: at most [`SSE_WINDOW`] output events wait
/// unread before the command's pipes are left full. The few other events (`started`, a carried
/// UTF-8 tail, the end) go out without waiting, so none is ever dropped.
struct SseSink {
    tx: mpsc::UnboundedSender<(warp::sse::Event, bool)>,
    /// Output events the client may still be behind; one is returned per event it reads.
    window: Arc<Semaphore>,
    carry: Mutex<Utf8Carry>,
    /// Cancelled when the client goes away: nobody is left to read the output.
    client_gone: CancellationToken,
}

impl SseSink {
    fn new(
        client_gone: CancellationToken,
    ) -> (
        Arc<SseSink>,
        impl futures_util::Stream<Item = Result<warp::sse::Event, Infallible>> + Send + Sync + 'static,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(SSE_WINDOW));
        let sink = Arc::new(SseSink {
            tx,
            window: window.clone(),
            carry: Mutex::new(Utf8Carry::default()),
            client_gone,
        });
        let events = futures_util::stream::unfold((rx, window), |(mut rx, window)| async move {
            let (event, windowed) = rx.recv().await?;
            if windowed {
                window.add_permits(1);
            }
            Some((Ok::<_, Infallible>(event), (rx, window)))
        });
        (sink, events)
    }

    fn send(&self, name: &str, data: serde_json::Value, windowed: bool) {
        if let Ok(ev) = warp::sse::Event::default().event(name).json_data(data)
            && self.tx.send((ev, windowed)).is_err()
        {
            self.client_gone.cancel();
        }
    }

    fn send_chunk(&self, fd: Fd, (encoding, data): (Encoding, String), windowed: bool) {
        let name = match fd {
            Fd::Stdout => "stdout",
            Fd::Stderr => "stderr",
        };
        let encoding = match encoding {
            Encoding::Utf8 => "utf8",
            Encoding::Base64 => "base64",
        };
        self.send(
            name,
            serde_json::json!({ "encoding": encoding, "data": data }),
            windowed,
        );
    }
}

impl OutputSink for SseSink {
    fn started(&self, pid: u32) {
        self.send("started", serde_json::json!({ "pid": pid }), false);
    }
    async fn reserve(&self, want: usize) -> usize {
        tokio::select! {
            permit = self.window.acquire() => match permit {
                // Given back by the reader when it takes the event this output becomes.
                Ok(p) => p.forget(),
                Err(_) => self.client_gone.cancel(),
            },
            _ = self.tx.closed() => self.client_gone.cancel(),
        }
        want
    }
    fn output(&self, fd: Fd, data: &[u8], _reserved: usize) {
        let mut chunk = None;
        self.carry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fd, data, |c| chunk = Some(c.encode()));
        match chunk {
            Some(c) => self.send_chunk(fd, c, true),
            // Only part of a character arrived: nothing to send, give the slot back.
            None => self.window.add_permits(1),
        }
    }
    fn eof(&self, fd: Fd) {
        let rest = self
            .carry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(fd);
        if !rest.is_empty() {
            self.send_chunk(fd, crate::text::Chunk::Binary(&rest).encode(), false);
        }
    }
}

impl CommandSink for SseSink {
    fn end(&self, end: CommandEnd) {
        match end {
            CommandEnd::Exited(o) => self.send("exit", exit_body(&o).into(), false),
            CommandEnd::SpawnFailed(m) => self.send(
                "error",
                serde_json::json!({ "code": "spawn_failed", "message": m }),
                false,
            ),
            CommandEnd::Internal(m) => self.send(
                "error",
                serde_json::json!({ "code": "internal", "message": m }),
                false,
            ),
        }
    }
}
