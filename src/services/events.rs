//! `EventsService`: the live events of managed MCP containers and each server's health, for
//! the channel's `mcp_events` streams.
//!
//! Two tasks per agent, started by `lib.rs` under the agent's task tree and stopped by
//! [`EventsService::shutdown`]:
//! - the **watcher** reads Docker's event feed of managed containers (`docker::events`), maps
//!   each event through the [`HealthBook`] to a [`ServerEvent`] and publishes it to every
//!   subscriber. When the feed ends or fails (a daemon restart), it subscribes again by itself
//!   after a capped, jittered backoff, and after every (re)subscription publishes a `resync` for
//!   every managed server, so no state change is lost (intermediate ones may be).
//! - the **liveness monitor** checks every running HTTP/SSE server at
//!   `DTMA_MCP_LIVENESS_INTERVAL_MS` (`health::check`) and publishes a `health` event when a
//!   server's state changes; it re-lists the managed containers at that interval to learn
//!   the ones it has not seen yet (states stay the watcher's, which reads them in step with
//!   the feed).
//!
//! Containers a deploy has set aside (`-dtma-new-`, `-dtma-old-`) are not servers: their events
//! are skipped. A deploy commits a server by renaming its new container to the final name: that
//! rename is published as a `resync` of the server (its new container and state).
//!
//! Subscribers get events through a bounded broadcast channel; one that falls behind is told
//! how many it missed and resyncs instead of reading them ([`Next::Missed`]).

use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::{ContainerHealth, McpEvent, McpEventKind, RequestId, ServerState};
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::health::{self, HealthBook};
use super::mcp::is_aside;
use crate::agent::Agent;
use crate::backoff::Backoff;
use crate::docker::events::{Action, ContainerEvent};
use crate::docker::spec;

/// Events buffered for subscribers; a subscriber further behind resyncs instead.
const BROADCAST_CAPACITY: usize = 1024;
/// Re-subscription backoff after the event feed ended or failed.
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// A subscription that lasted this long was healthy: the backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Liveness checks run at once.
const PARALLEL_CHECKS: usize = 8;
/// Bounds of one liveness check's timeout (the interval, within these).
const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// An `mcp_event` before it belongs to a stream (no `id`, no `seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    pub at: String,
    pub kind: McpEventKind,
    pub group_id: String,
    pub server: String,
    pub account_tool_instance_id: String,
    pub container_id: String,
    pub state: ServerState,
    pub exit_code: Option<i64>,
    pub health: Option<ContainerHealth>,
}

impl ServerEvent {
    /// The wire event for stream `id` at `seq`.
    pub fn to_wire(&self, id: RequestId, seq: u64) -> McpEvent {
        McpEvent {
            id,
            seq,
            at: self.at.clone(),
            kind: self.kind,
            group_id: self.group_id.clone(),
            server: self.server.clone(),
            account_tool_instance_id: self.account_tool_instance_id.clone(),
            container_id: self.container_id.clone(),
            state: self.state,
            exit_code: self.exit_code,
            health: self.health,
        }
    }
}

/// What a subscription yields next.
#[derive(Debug)]
pub enum Next {
    Event(ServerEvent),
    /// The subscriber fell behind and `n` events were dropped for it: resync.
    Missed(u64),
    /// The service stopped (agent shutdown).
    Closed,
}

/// Live events, from the moment of [`EventsService::subscribe`].
pub struct Subscription {
    rx: broadcast::Receiver<ServerEvent>,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(e) => Next::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Next::Missed(n),
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }
}

pub struct EventsService {
    agent: Arc<Agent>,
    book: Arc<HealthBook>,
    tx: broadcast::Sender<ServerEvent>,
    /// Cancelled at shutdown: the tasks stop and every stream ends.
    stop: CancellationToken,
    /// Wakes the monitor when a check became due early (a server started).
    wake: Notify,
}

impl EventsService {
    pub fn new(agent: Arc<Agent>, book: Arc<HealthBook>) -> EventsService {
        EventsService {
            agent,
            book,
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            stop: CancellationToken::new(),
            wake: Notify::new(),
        }
    }

    /// Live events from now on. Subscribe first, then [`EventsService::resync`]: together they
    /// miss nothing.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }

    /// A `resync` event per managed server (its current state), sorted by group and name;
    /// none when Docker cannot be reached (the watcher publishes them when it is back).
    pub async fn resync(&self) -> Vec<ServerEvent> {
        match self.list(false).await {
            Ok(events) => events,
            Err(e) => {
                debug!(error = %e, "No MCP resync: Docker is unavailable.");
                Vec::new()
            }
        }
    }

    /// Stop the watcher and the monitor; every `mcp_events` stream ends (`shutting_down`).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Resolves once [`EventsService::shutdown`] was called.
    pub async fn closed(&self) {
        self.stop.cancelled().await
    }

    /// Run the watcher and the liveness monitor until shutdown.
    pub async fn run(&self) {
        tokio::join!(self.watch(), self.monitor());
    }

    fn publish(&self, e: ServerEvent) {
        // No subscriber is fine: the events are for streams that may come later.
        let _ = self.tx.send(e);
    }

    /// A `resync` event per managed server. With `adopt` (the watcher, right after it
    /// subscribed), the book takes Docker's view of every server and forgets the containers
    /// that are gone.
    async fn list(&self, adopt: bool) -> Result<Vec<ServerEvent>, crate::docker::Error> {
        let list = self.agent.docker().find(&[spec::managed_filter()]).await?;
        let now = Instant::now();
        let servers: Vec<_> = list.iter().filter(|c| !is_aside(&c.name)).collect();
        let mut events: Vec<ServerEvent> = servers
            .iter()
            .map(|c| self.book.inspected(c, now, adopt))
            .collect();
        if adopt {
            let ids: Vec<&str> = servers.iter().map(|c| c.id.as_str()).collect();
            self.book.retain(&ids);
        }
        events.sort_by(|a, b| (&a.group_id, &a.server).cmp(&(&b.group_id, &b.server)));
        Ok(events)
    }

    /// The watcher: Docker's event feed, re-subscribed whenever it ends.
    async fn watch(&self) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        let mut up = false;
        // Docker's time of the last event handled (or of the last subscription): after a
        // break, the events Docker still holds from then on are replayed.
        let mut seen: Option<i128> = None;
        loop {
            let since = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            let began = Instant::now();
            if let Some(last) = seen {
                seen = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    s = self.replay(last, since) => Some(s),
                };
            }
            // The feed replays from `since`: what changes while the list below is taken is
            // seen twice at worst, never missed.
            let mut feed = std::pin::pin!(self.agent.docker().container_events(since, None));
            let listed = tokio::select! {
                _ = self.stop.cancelled() => return,
                l = self.list(true) => l,
            };
            let ended = match listed {
                Err(e) => e.to_string(),
                Ok(events) => {
                    if !up {
                        info!(
                            servers = events.len(),
                            "Following Docker's events of MCP containers."
                        );
                        up = true;
                    }
                    for e in events {
                        self.publish(e);
                    }
                    seen = Some(since);
                    loop {
                        let item = tokio::select! {
                            _ = self.stop.cancelled() => return,
                            item = feed.next() => item,
                        };
                        match item {
                            Some(Ok(e)) => {
                                seen = seen.max(Some(e.time_nanos));
                                self.on_docker_event(e).await
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "the daemon ended the feed".to_owned(),
                        }
                    }
                }
            };
            if up {
                warn!(reason = %ended, "Docker's event feed was lost; subscribing again.");
                up = false;
            } else {
                debug!(reason = %ended, "Docker's event feed is still unavailable.");
            }
            if began.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// The events Docker still holds from after `last` to `until` (a gap in the feed), handled
    /// as if they had come live. After a daemon restart there are none; the resync that
    /// follows covers what they would have said. Returns the time up to which the gap is
    /// handled (`until`, unless Docker failed on the way).
    async fn replay(&self, last: i128, until: i128) -> i128 {
        let feed = self.agent.docker().container_events(last + 1, Some(until));
        let mut past = std::pin::pin!(feed);
        let mut done = last;
        let mut n = 0;
        while let Some(item) = past.next().await {
            match item {
                Ok(e) => {
                    n += 1;
                    done = done.max(e.time_nanos);
                    self.on_docker_event(e).await;
                }
                Err(e) => {
                    debug!(error = %e, "Docker's events of the gap could not be replayed.");
                    return done;
                }
            }
        }
        if n > 0 {
            info!(
                events = n,
                "Replayed Docker's events of MCP containers from the gap."
            );
        }
        until
    }

    async fn on_docker_event(&self, e: ContainerEvent) {
        let now = Instant::now();
        if let Action::Rename { .. } = e.action {
            if is_aside(&e.name) {
                // A deploy set the old container aside; its stop was already reported.
                self.book.forget(&e.id);
                return;
            }
            // A container took a server's name: a deploy committed it (or put it back).
            match self.agent.docker().inspect(&e.id).await {
                Ok(Some(c)) => {
                    let event = self.book.inspected(&c, now, true);
                    self.publish(event);
                    self.wake.notify_one();
                }
                Ok(None) => {}
                Err(err) => debug!(error = %err, "A renamed MCP container could not be inspected."),
            }
            return;
        }
        if is_aside(&e.name) {
            return;
        }
        let recheck = now
            + self
                .agent
                .config()
                .mcp_liveness_interval
                .min(health::STARTING_RECHECK);
        if let Some(event) = self.book.apply(&e, now, recheck) {
            debug!(server = %event.server, kind = ?event.kind, state = ?event.state, "MCP container event.");
            self.publish(event);
        }
        if e.action == Action::Start {
            self.wake.notify_one();
        }
    }

    /// The liveness monitor.
    async fn monitor(&self) {
        let interval = self.agent.config().mcp_liveness_interval;
        let timeout = interval.clamp(MIN_CHECK_TIMEOUT, MAX_CHECK_TIMEOUT);
        let mut next_list = Instant::now();
        loop {
            if Instant::now() >= next_list {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.relist() => {}
                }
                next_list = Instant::now() + interval;
            }
            let due = self.book.due(Instant::now());
            if !due.is_empty() {
                let checks = futures_util::stream::iter(due)
                    .map(|d| async move {
                        let r = health::check(&d.target, d.method, timeout).await;
                        (d.container_id, r)
                    })
                    .buffer_unordered(PARALLEL_CHECKS)
                    .collect::<Vec<_>>();
                let results = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = checks => r,
                };
                let now = Instant::now();
                for (id, r) in results {
                    if let Some(event) = self.book.checked(&id, &r, now, interval) {
                        let reason = r.reason.as_deref().unwrap_or("");
                        match event.state {
                            ServerState::Degraded => {
                                warn!(server = %event.server, %reason, "MCP server degraded: its liveness checks fail.")
                            }
                            state => {
                                info!(server = %event.server, ?state, "MCP server state changed.")
                            }
                        }
                        self.publish(event);
                    }
                }
            }
            let wake_at = self.book.next_due().map_or(next_list, |d| d.min(next_list));
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Learn the managed containers the book does not know yet (it checks only what it knows)
    /// and their check targets. States are the watcher's business.
    async fn relist(&self) {
        match self.list(false).await {
            Ok(_) => {}
            Err(e) => debug!(error = %e, "Liveness monitor: Docker is unavailable."),
        }
    }
}
