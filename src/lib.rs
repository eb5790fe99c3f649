//! DTMA, the Droplet Tool Management Agent.
//!
//! # Layout
//! - [`config`]: the configuration value (flags > env > file > defaults).
//! - [`agent`]: shared state, the reconnect state machine, shutdown drain.
//! - [`session`]: one WebSocket connection: handshake, reader, writer, keepalive, heartbeat.
//! - [`tls`]: dialling the backend (TCP, rustls, WebSocket upgrade with the bearer token).
//! - [`backoff`]: capped exponential backoff with full jitter.
//! - [`handlers`]: one handler per request type, behind `dispatch`.
//! - [`streams`]: per-request event streams: sequencing, unacked buffer, credit, resend.
//! - [`exec`]: the exec engine shared by the channel and the local API.
//! - [`status`]: system status samples (sysinfo) for the heartbeat.
//! - [`http`]: the local HTTP API (warp).
//! - [`control_plane`]: a reference backend (used by `examples/control_plane.rs` and tests).
#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod control_plane;
pub mod diagnostics;
pub mod docker;
pub mod exec;
pub mod handlers;
pub mod http;
pub mod logring;
pub mod policy;
pub mod session;
pub mod status;
pub mod streams;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;

/// The agent's version (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What this agent announces in `hello`.
pub const CAPABILITIES: [&str; 5] = ["exec", "cancel", "ping", "credit", "resume"];

/// Current UTC time as RFC 3339 with milliseconds (`2025-01-20T10:30:00.000Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

/// Random id of this process start, sent in `hello`.
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
}

pub fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, time::error::Parse> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
}

/// Raise the soft open-file limit to the hard limit: every running command holds two pipes, so
/// the usual soft limit of 1024 would cap the agent near 500 concurrent commands.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "Raised the open-file limit."),
            Err(e) => tracing::warn!(error = %e, "Could not raise the open-file limit."),
        }
    }
}

/// A running agent.
pub struct Running {
    pub agent: Arc<agent::Agent>,
    /// Where the local API listens.
    pub http_addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Wait until the agent has shut down.
    pub async fn join(self) -> Result<(), tokio::task::JoinError> {
        self.done.await
    }
}

/// Start the agent: the local API on `config.listen` and, when configured, the channel.
/// Cancelling `shutdown` drains running work and stops everything.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    start_with_logs(config, logring::LogRing::new(), shutdown).await
}

/// [`start`], with the ring that the process's log subscriber feeds (for `/diagnostics/logs`).
pub async fn start_with_logs(
    config: Config,
    logs: std::sync::Arc<logring::LogRing>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let http_addr = listener.local_addr()?;
    let agent = agent::Agent::with_logs(config, logs);
    let _ = agent.http_addr.set(http_addr);
    match &agent.config.channel {
        Some(c) => {
            info!(url = %c.url, agent_id = %agent.config.agent_id, "Control channel configured.")
        }
        None => {
            info!("No AGENTOPIA_API_BASE_URL or DTMA_WS_URL: running local-only (HTTP API only).")
        }
    }
    info!(%http_addr, "Local API listening.");

    let http_stop = CancellationToken::new();
    let server = warp::serve(http::routes(agent.clone()))
        .incoming(listener)
        .graceful({
            let t = http_stop.clone();
            async move { t.cancelled().await }
        })
        .run();
    let http_task = tokio::spawn(server);
    let chan_stop = CancellationToken::new();
    let chan_task = agent
        .config
        .channel
        .clone()
        .map(|c| tokio::spawn(agent::channel_loop(agent.clone(), c, chan_stop.clone())));

    let a = agent.clone();
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        info!("Shutdown requested.");
        agent::drain(&a, a.config.shutdown_grace).await;
        // Give the channel a moment to deliver the final events before closing.
        if a.link_up.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while a.registry.counts().1 > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        chan_stop.cancel();
        http_stop.cancel();
        if let Some(t) = chan_task {
            let _ = t.await;
        }
        let _ = http_task.await;
        info!("Agent stopped.");
    });
    Ok(Running {
        agent,
        http_addr,
        done,
    })
}

/// Run until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    logs: std::sync::Arc<logring::LogRing>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start_with_logs(config, logs, shutdown).await?;
    running.join().await?;
    Ok(())
}
