//! The agent's shared state and the channel's reconnect state machine:
//! `Disconnected{backoff} -> Connecting -> Connected(session) -> Disconnected ...`, forever,
//! with one log line per transition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dtma_protocol::close_code;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::{ChannelConfig, Config};
use crate::session::{self, SessionEnd};
use crate::status::Sampler;
use crate::streams::Registry;

/// State shared by the channel, the handlers and the local API.
pub struct Agent {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// Every request task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Parent of every request's cancellation token.
    pub work: CancellationToken,
    /// Set on shutdown: new requests are refused.
    pub draining: AtomicBool,
    /// Whether a channel session is up right now (for `/health`).
    pub link_up: AtomicBool,
    pub started: Instant,
    pub sampler: Sampler,
}

impl Agent {
    pub fn new(config: Config) -> Arc<Agent> {
        Arc::new(Agent {
            registry: Registry::new(config.streams.clone()),
            config,
            tracker: TaskTracker::new(),
            work: CancellationToken::new(),
            draining: AtomicBool::new(false),
            link_up: AtomicBool::new(false),
            started: Instant::now(),
            sampler: Sampler::default(),
        })
    }

    /// The heartbeat (blocking: reads /proc).
    pub fn status(&self) -> dtma_protocol::Status {
        self.sampler
            .status(self.started.elapsed().as_secs(), self.registry.counts())
    }
}

/// Keep the channel up until `stop` is cancelled.
pub async fn channel_loop(agent: Arc<Agent>, chan: ChannelConfig, stop: CancellationToken) {
    let tls = match crate::tls::client_config(chan.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            // Config validation checked the file exists; a bad PEM is an operator error.
            tracing::error!(error = %e, "TLS set-up failed; the channel stays down.");
            return;
        }
    };
    let mut backoff = Backoff::new(chan.backoff_base, chan.backoff_cap);
    let mut url = chan.url.clone();
    let mut down_since = Instant::now();
    let mut orphans_cancelled = false;
    let mut wait = Duration::ZERO;
    loop {
        if !wait.is_zero() {
            info!(
                delay_ms = wait.as_millis() as u64,
                "Channel disconnected; waiting before redial."
            );
            let grace_left = chan.orphan_grace.saturating_sub(down_since.elapsed());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::time::sleep(grace_left), if !orphans_cancelled => {}
            }
        }
        if stop.is_cancelled() {
            return;
        }
        if !orphans_cancelled && down_since.elapsed() >= chan.orphan_grace {
            let (running, _) = agent.registry.counts();
            if running > 0 {
                warn!(
                    running,
                    grace_s = chan.orphan_grace.as_secs(),
                    "Link down past the grace period; cancelling running commands."
                );
            }
            agent.registry.cancel_all();
            orphans_cancelled = true;
        }
        info!(%url, "Channel connecting.");
        let ws = tokio::select! {
            _ = stop.cancelled() => return,
            ws = crate::tls::dial(&url, &agent.config.bearer_token, &chan, tls.clone()) => ws,
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                warn!(error = %e, "Channel connect failed.");
                wait = backoff.next_delay();
                continue;
            }
        };
        let up_at = Instant::now();
        agent.link_up.store(true, Ordering::Relaxed);
        let end = session::run(ws, &agent, &chan, &stop).await;
        agent.link_up.store(false, Ordering::Relaxed);
        down_since = Instant::now();
        orphans_cancelled = false;
        if up_at.elapsed() >= chan.healthy_after {
            backoff.reset();
        }
        wait = backoff.next_delay();
        match end {
            SessionEnd::Shutdown => {
                info!("Channel closed for shutdown.");
                return;
            }
            SessionEnd::Redirect { after, url: to } => {
                if let Some(to) = to {
                    url = to;
                }
                wait = after;
            }
            SessionEnd::Closed { code, ref reason } => {
                warn!(?code, %reason, "Channel closed by the backend.");
                if code == Some(close_code::REPLACED)
                    || code == Some(close_code::UNSUPPORTED_VERSION)
                {
                    // Another agent holds our id, or the backend cannot talk to us: come back
                    // slowly rather than fight over the session.
                    wait = chan.backoff_cap;
                }
            }
            SessionEnd::Dead => warn!("Channel declared dead: no frame for two ping intervals."),
            SessionEnd::Failed(ref why) => warn!(reason = %why, "Channel session failed."),
        }
    }
}

/// Stop taking work, let running commands finish for up to `grace`, then cancel them (their
/// process groups get SIGTERM, then SIGKILL) and wait for their final events.
pub async fn drain(agent: &Arc<Agent>, grace: Duration) {
    agent.draining.store(true, Ordering::Relaxed);
    agent.tracker.close();
    let (running, _) = agent.registry.counts();
    if running > 0 {
        info!(
            running,
            grace_s = grace.as_secs(),
            "Draining running commands."
        );
    }
    if tokio::time::timeout(grace, agent.tracker.wait())
        .await
        .is_err()
    {
        let (running, _) = agent.registry.counts();
        warn!(
            running,
            "Grace period over; stopping the remaining commands' process groups."
        );
        agent.work.cancel();
        agent.tracker.wait().await;
    }
}
