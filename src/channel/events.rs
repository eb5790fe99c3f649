//! The `mcp_events` stream: the events service's subscription, turned into `mcp_event`s.
//!
//! First one `resync` per managed server, then every live event, until `cancel` (or the orphan
//! grace) ends the stream with `result {reason: "cancelled"}` or shutdown with `error
//! shutting_down`. Exactly-once delivery across reconnects is the stream registry's (sequenced,
//! acknowledged, resent).
//!
//! Memory stays bounded when the backend does not acknowledge: while the stream's buffer is
//! full, live events are dropped instead of buffered; once acknowledgements have freed half of
//! it, a `resync` of every server replaces what was dropped, then live events flow again. A
//! subscriber that fell behind the service's broadcast resyncs the same way.

use std::sync::Arc;

use dtma_protocol::{AgentMessage, ErrorCode, EventsEnd, EventsEndReason, ResultEvent};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Channel;
use super::handlers::EndsStream;
use super::streams::StreamHandle;
use crate::metrics::Outcome;
use crate::services::events::{Next, ServerEvent};

/// Serve an accepted `mcp_events` request on `stream` until it is cancelled or the agent stops.
pub fn spawn(channel: &Arc<Channel>, stream: StreamHandle, cancel: CancellationToken) {
    let services = channel.services().clone();
    let stream = Arc::new(stream);
    channel.agent().spawn(async move {
        let _guard = EndsStream(stream.clone());
        let events = &services.events;
        // Subscribe before listing: together they miss nothing.
        let mut live = events.subscribe();
        info!(request_id = %stream.id(), "MCP event stream opened.");
        for e in events.resync().await {
            push(&stream, &e);
        }
        // Live events were dropped (full buffer, or behind the broadcast): resync when the
        // buffer has room again.
        let mut missed = false;
        let outcome = loop {
            tokio::select! {
                biased;
                _ = events.closed() => break shutting_down(&stream),
                _ = cancel.cancelled() => {
                    cancelled(&stream);
                    break Outcome::Cancelled;
                }
                _ = stream.wait_half_free(), if missed => {
                    missed = false;
                    debug!(request_id = %stream.id(), "MCP event stream has room again: resync.");
                    for e in events.resync().await {
                        push(&stream, &e);
                    }
                }
                next = live.next() => match next {
                    Next::Event(e) if !missed && !stream.buffer_full() => push(&stream, &e),
                    Next::Event(_) | Next::Missed(_) => {
                        if !missed {
                            debug!(request_id = %stream.id(), "MCP event stream is full or behind: coalescing.");
                        }
                        missed = true;
                    }
                    Next::Closed => break shutting_down(&stream),
                },
            }
        };
        services
            .agent()
            .metrics()
            .request("channel", "mcp_events", outcome);
        info!(request_id = %stream.id(), "MCP event stream ended.");
    });
}

fn push(stream: &StreamHandle, e: &ServerEvent) {
    let id = stream.id().to_owned();
    stream.push(|seq| AgentMessage::McpEvent(e.to_wire(id, seq)));
}

/// The stream ends with the agent: it served until then (`ok`).
fn shutting_down(stream: &StreamHandle) -> Outcome {
    stream.fail(
        ErrorCode::ShuttingDown,
        "the agent is shutting down; send a new mcp_events after it is back".into(),
    );
    Outcome::Ok
}

fn cancelled(stream: &StreamHandle) {
    let id = stream.id().to_owned();
    let data = serde_json::to_value(EventsEnd {
        reason: EventsEndReason::Cancelled,
    });
    match data {
        Ok(data) => stream.finish(|seq| AgentMessage::Result(ResultEvent { id, seq, data })),
        Err(e) => stream.fail(ErrorCode::Internal, e.to_string()),
    }
}
