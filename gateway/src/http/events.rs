//! A stream's events as an HTTP body: Server-Sent Events (`id:` = seq, `event:` = type,
//! `data:` = the JSON), NDJSON (one JSON message per line), or one buffered JSON answer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use dtma_control_plane::output_bytes;
use dtma_protocol::{AgentMessage, Fd};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::sync::CancellationToken;

use super::Body;
use crate::streams::{Cursor, Next, Stream};

/// An SSE comment this often while a stream is quiet, so that proxies keep the connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// The body that streams `cursor` until the stream's end (or the gateway's stop). The cursor
/// moves only as hyper pulls the body, so "sent" means handed to the connection.
pub fn body(cursor: Cursor, stop: CancellationToken, format: Format) -> Body {
    let frames = futures_util::stream::unfold(Some((cursor, stop)), move |state| async move {
        let (mut cursor, stop) = state?;
        loop {
            let next = tokio::select! {
                n = cursor.next(&stop) => n,
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if format == Format::Sse {
                        let ping = Bytes::from_static(b": keepalive\n\n");
                        return Some((Ok::<_, Infallible>(Frame::data(ping)), Some((cursor, stop))));
                    }
                    continue;
                }
            };
            return match next {
                None | Some(Next::End) => None,
                Some(Next::Event(e)) => {
                    let chunk = match format {
                        Format::Sse => sse(&e.seq.to_string(), e.kind, &e.json),
                        Format::Ndjson => ndjson(&e.json),
                    };
                    let more = (!e.terminal).then_some((cursor, stop));
                    Some((Ok(Frame::data(chunk)), more))
                }
                Some(Next::Evicted { first_held }) => {
                    // Cannot happen to a reader that keeps up; said once, then the body ends.
                    let json = serde_json::json!({
                        "type": "gateway_error",
                        "code": "events_evicted",
                        "message": "the client fell behind the stream buffer",
                        "first_held": first_held,
                    })
                    .to_string();
                    let chunk = match format {
                        Format::Sse => sse("", "gateway_error", json.as_bytes()),
                        Format::Ndjson => ndjson(json.as_bytes()),
                    };
                    Some((Ok(Frame::data(chunk)), None))
                }
            };
        }
    });
    BodyExt::boxed(StreamBody::new(frames))
}

fn sse(id: &str, kind: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 32);
    if !id.is_empty() {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    // Compact JSON has no raw newline (they are escaped in strings), so one `data:` line.
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn ndjson(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.extend_from_slice(json);
    out.push(b'\n');
    Bytes::from(out)
}

/// The buffered answer: the stream read to its end.
pub async fn collect(
    stream: &Stream,
    mut cursor: Cursor,
    stop: &CancellationToken,
    cap: usize,
) -> Option<serde_json::Value> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut output_bytes_total: u64 = 0;
    let mut truncated = false;
    let mut events: u64 = 0;
    let mut terminal = serde_json::Value::Null;
    loop {
        match cursor.next(stop).await? {
            Next::End => break,
            Next::Evicted { .. } => {
                // Another client read and the buffer moved on; what was lost is said.
                truncated = true;
                break;
            }
            Next::Event(e) => {
                events += 1;
                if let AgentMessage::Output(o) = e.message.as_ref() {
                    let bytes = output_bytes(o);
                    output_bytes_total += bytes.len() as u64;
                    let room = cap.saturating_sub(stdout.len() + stderr.len());
                    let target = match o.fd {
                        Fd::Stdout => &mut stdout,
                        Fd::Stderr => &mut stderr,
                    };
                    if bytes.len() > room {
                        truncated = true;
                    }
                    target.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                if e.terminal {
                    terminal = serde_json::from_slice(&e.json).unwrap_or_default();
                    break;
                }
            }
        }
    }
    Some(serde_json::json!({
        "agent_id": stream.agent,
        "request_id": stream.id,
        "events": events,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "output_bytes": output_bytes_total,
        "output_truncated": truncated,
        "terminal": terminal,
    }))
}
