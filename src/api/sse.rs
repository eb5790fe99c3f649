//! The server-sent-events sink of the local API's streaming routes (`/ssh/execute?stream=true`,
//! `/mcp/servers/:instanceName/logs`): output as `stdout`/`stderr` events `{encoding, data}`
//! (UTF-8 text, or base64 for bytes that are not), progress as `progress` events, and whatever
//! control events the route adds (`started`, `exit`, `end`, `error`).
//!
//! The client's reading pace is the producer's pace: at most [`SSE_WINDOW`] output events wait
//! unread before [`OutputSink::reserve`] makes the producer wait (a command's pipes stay full,
//! a log follow stops reading Docker). Control events go out without waiting, so none is ever
//! dropped. The client going away (the response stream dropped, or an event that cannot be
//! queued any more) cancels the token the route gave, which stops the producer.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use dtma_protocol::{Encoding, Fd};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::exec::OutputSink;
use crate::services::mcp::{ProgressSink, Step};
use crate::text::Utf8Carry;

/// Output events a streaming client may be behind before the producer waits for it.
const SSE_WINDOW: usize = 32;

pub struct SseSink {
    tx: mpsc::UnboundedSender<(warp::sse::Event, bool)>,
    /// Output events the client may still be behind; one is returned per event it reads.
    window: Arc<Semaphore>,
    carry: Mutex<Utf8Carry>,
    /// Cancelled when the client goes away: nobody is left to read the output.
    client_gone: CancellationToken,
}

impl SseSink {
    /// The sink, and the events for `warp::sse::reply`. `client_gone` is cancelled when the
    /// client goes away (and, harmlessly, once the last event was taken).
    pub fn new(
        client_gone: CancellationToken,
    ) -> (
        Arc<SseSink>,
        impl futures_util::Stream<Item = Result<warp::sse::Event, Infallible>> + Send + Sync + 'static,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(SSE_WINDOW));
        // Dropped with the stream: when hyper drops the response of a closed connection, the
        // producer learns it at once, not only at its next event.
        let gone = client_gone.clone().drop_guard();
        let sink = Arc::new(SseSink {
            tx,
            window: window.clone(),
            carry: Mutex::new(Utf8Carry::default()),
            client_gone,
        });
        let events =
            futures_util::stream::unfold((rx, window, gone), |(mut rx, window, gone)| async move {
                let (event, windowed) = rx.recv().await?;
                if windowed {
                    window.add_permits(1);
                }
                Some((Ok::<_, Infallible>(event), (rx, window, gone)))
            });
        (sink, events)
    }

    /// A control event: sent without waiting for the client.
    pub fn event(&self, name: &str, data: serde_json::Value) {
        self.send(name, data, false);
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
        self.event("started", serde_json::json!({ "pid": pid }));
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

/// `progress` events: the channel's `progress` fields without `id` and `seq`.
impl ProgressSink for SseSink {
    fn progress(&self, step: Step) {
        let mut data = serde_json::json!({ "step": step.step });
        if let Some(m) = data.as_object_mut() {
            if let Some(server) = step.server {
                m.insert("server".into(), server.into());
            }
            if let Some(message) = step.message {
                m.insert("message".into(), message.into());
            }
            if let Some((current, total)) = step.bytes {
                m.insert(
                    "bytes".into(),
                    serde_json::json!({ "current": current, "total": total }),
                );
            }
        }
        self.event("progress", data);
    }
}
