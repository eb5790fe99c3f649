//! Stream events through JetStream.
//!
//! **Hosting** (the node holding the agent): each event the engine forwards is published to
//! `dtma.ev.<stream key>` with `Nats-Msg-Id: <stream key>.<seq>` (JetStream drops a repeat
//! within its duplicate window) and `Dtma-Seq: <seq>`; once JetStream has stored it, the
//! event is acknowledged to the agent. Credit for the stream arrives on
//! `dtma.gw.credit.<stream key>` from whichever node reads it, as an absolute limit.
//!
//! **Reading** (the node serving the operator): an ordered consumer of the stream's subject
//! from its first event, dropping anything below the next expected `seq` (a resend stored
//! twice outside the duplicate window), and granting credit as it reads, as the engine's own
//! [`dtma_control_plane::StreamRx`] does. The limit is also written to KV (`l.<stream key>`),
//! so that a node adopting the stream after a move starts from it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use dtma_control_plane::{ControlPlane, output_len};
use dtma_protocol::AgentMessage;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Cluster, EVENTS_PREFIX, GW_PREFIX};
use crate::streams::describe;

/// Why a reader could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create a consumer: {0}")]
    Consumer(String),
    #[error("cannot subscribe to credit: {0}")]
    Credit(String),
}

fn events_subject(key: &str) -> String {
    format!("{EVENTS_PREFIX}.{key}")
}

fn credit_subject(key: &str) -> String {
    format!("{GW_PREFIX}.credit.{key}")
}

/// Subscribe to a hosted stream's credit (before reading its limit, so no grant is missed).
pub(super) async fn subscribe_credit(
    cluster: &Cluster,
    key: &str,
) -> Result<async_nats::Subscriber, Error> {
    cluster
        .inner
        .client
        .subscribe(credit_subject(key))
        .await
        .map_err(|e| Error::Credit(e.to_string()))
}

/// Host stream (`agent`, `id`): publish its events, acknowledge them once stored, apply
/// credit. Ends after the terminal event, when the engine drops the stream (the agent moved
/// to another node), or at stop.
pub(super) fn start_hosting(
    cluster: &Cluster,
    agent: String,
    id: String,
    key: String,
    mut rx: mpsc::UnboundedReceiver<AgentMessage>,
    mut credit: async_nats::Subscriber,
) {
    let Some(cp) = cluster.cp().cloned() else {
        return;
    };
    let me = cluster.clone();
    cluster.inner.tasks.spawn(async move {
        let subject = events_subject(&key);
        let mut credit_open = true;
        loop {
            let first = tokio::select! {
                _ = me.inner.stop.cancelled() => return,
                m = credit.next(), if credit_open => {
                    match m {
                        None => credit_open = false,
                        Some(m) => {
                            if let Some(limit) = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse::<u64>().ok()) {
                                cp.raise_limit(&agent, &id, limit);
                            }
                        }
                    }
                    continue;
                }
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => {
                        debug!(agent_id = %agent, request_id = %id, "No longer hosted here.");
                        return;
                    }
                },
            };
            let mut batch = vec![first];
            while batch.len() < 256
                && let Ok(m) = rx.try_recv()
            {
                batch.push(m);
            }
            let Some(done) = publish(&me, &cp, &subject, &key, &agent, &id, batch).await else {
                return;
            };
            if done {
                return;
            }
        }
    });
}

/// Publish `batch` in order, each until stored, then acknowledge the highest seq. `None` at
/// stop; `Some(true)` when the batch held the terminal event.
async fn publish(
    me: &Cluster,
    cp: &ControlPlane,
    subject: &str,
    key: &str,
    agent: &str,
    id: &str,
    batch: Vec<AgentMessage>,
) -> Option<bool> {
    let mut highest = None;
    let mut terminal = false;
    // Sent back to back, then the acknowledgements awaited in order: one round trip per batch.
    let mut pending = Vec::with_capacity(batch.len());
    for m in &batch {
        let (seq, _, end) = describe(m);
        terminal |= end;
        let payload = Bytes::from(serde_json::to_vec(m).unwrap_or_default());
        let mut headers = async_nats::HeaderMap::new();
        let msg_id = match seq {
            Some(s) => format!("{key}.{s}"),
            None => format!("{key}.refused"),
        };
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Dtma-Seq", seq.unwrap_or(0).to_string().as_str());
        let sent = me
            .inner
            .js
            .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
            .await
            .ok();
        pending.push((seq, headers, payload, sent));
    }
    for (seq, headers, payload, sent) in pending {
        let stored = match sent {
            Some(ack) => ack.await.is_ok(),
            None => false,
        };
        if !stored {
            store_with_retry(me, subject, headers, payload).await?;
        }
        if seq.is_some() {
            highest = seq;
        }
    }
    if let Some(seq) = highest {
        cp.ack(agent, id, seq);
    }
    Some(terminal)
}

/// Publish until JetStream stores it (NATS down: retry, doubling up to 2 s). `None` at stop.
async fn store_with_retry(
    me: &Cluster,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: Bytes,
) -> Option<()> {
    let mut delay = Duration::from_millis(50);
    loop {
        let result = match me
            .inner
            .js
            .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => return Some(()),
            Err(e) => warn!(error = %e, "Cannot store an event; retrying."),
        }
        tokio::select! {
            _ = me.inner.stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Take over stream `id` of `agent`, which another node opened or hosted: its resume point is
/// the last event stored, its credit the last limit written.
pub(super) async fn adopt(cluster: &Cluster, cp: &ControlPlane, agent: &str, id: String) {
    let key = super::stream_key(agent, &id);
    let Some(record) = cluster.record(&key).await else {
        debug!(agent_id = %agent, request_id = %id, "Stream unknown to the cluster.");
        return;
    };
    let credit = match subscribe_credit(cluster, &key).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "Cannot adopt a stream.");
            return;
        }
    };
    let limit = match cluster.inner.streams_kv.get(format!("l.{key}")).await {
        Ok(Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok()),
        _ => None,
    }
    .unwrap_or_else(|| cp.initial_limit(&record.request.body));
    let durable = match cluster
        .inner
        .events
        .get_last_raw_message_by_subject(&events_subject(&key))
        .await
    {
        Ok(m) => m
            .headers
            .get("Dtma-Seq")
            .and_then(|v| v.as_str().parse::<u64>().ok()),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(e) => {
            // Unknown position: adopting would risk a gap. The agent keeps the events and
            // offers them again at its next reconnect.
            warn!(error = %e, "Cannot read a stream's last event; not adopting it.");
            return;
        }
    };
    let rx = cp.adopt(agent, &id, durable, limit);
    debug!(agent_id = %agent, request_id = %id, ?durable, limit, "Stream adopted.");
    start_hosting(cluster, agent.to_owned(), id, key, rx, credit);
}

/// The events of one stream, read from JetStream, each once and in order.
pub struct Reader {
    cluster: Cluster,
    key: String,
    messages: consumer::pull::Ordered,
    /// The next `seq` expected.
    next: u64,
    window: u64,
    consumed: u64,
    granted: u64,
}

impl Reader {
    pub(super) async fn new(cluster: &Cluster, key: String, window: u64) -> Result<Reader, Error> {
        let consumer = cluster
            .inner
            .events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: events_subject(&key),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Consumer(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::Consumer(e.to_string()))?;
        Ok(Reader {
            cluster: cluster.clone(),
            key,
            messages,
            next: 0,
            window,
            consumed: 0,
            granted: window,
        })
    }

    /// The next event; `None` when the consumer ends (stop, or NATS gone for good).
    pub async fn recv(&mut self) -> Option<AgentMessage> {
        loop {
            let m = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => {
                    // The ordered consumer recreates itself after a gap or a reconnect.
                    warn!(error = %e, "Stream read error.");
                    continue;
                }
            };
            let Ok(message) = serde_json::from_slice::<AgentMessage>(&m.payload) else {
                warn!("Undecodable stored event; skipped.");
                continue;
            };
            let seq = describe(&message).0.unwrap_or(0);
            if seq < self.next {
                continue;
            }
            self.next = seq + 1;
            if let AgentMessage::Output(o) = &message {
                self.consumed += output_len(o);
                if self.granted.saturating_sub(self.consumed) < self.window / 2 {
                    self.granted = self.consumed + self.window;
                    grant(&self.cluster, &self.key, self.granted).await;
                }
            }
            return Some(message);
        }
    }
}

/// Raise stream `key`'s credit limit to `limit`, wherever it is hosted.
async fn grant(cluster: &Cluster, key: &str, limit: u64) {
    let limit = limit.to_string();
    let inner = &cluster.inner;
    // KV first: a node adopting the stream reads it after subscribing to the subject.
    if let Err(e) = inner
        .streams_kv
        .put(format!("l.{key}"), Bytes::from(limit.clone()))
        .await
    {
        warn!(error = %e, "Cannot record a stream's credit.");
    }
    if let Err(e) = inner
        .client
        .publish(credit_subject(key), Bytes::from(limit))
        .await
    {
        warn!(error = %e, "Cannot send a stream's credit.");
    }
}
