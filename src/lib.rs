//! DTMA, the Droplet Tool Management Agent.
//!
//! # Layout
//! Two adapters (the WebSocket channel and the local HTTP API) over one service layer, over the
//! engines and the shared state. ARCHITECTURE.md has the full map and the dependency rules.
//! - [`channel`]: the channel adapter: reconnect loop, session, request handlers, streams, TLS.
//! - [`api`]: the local HTTP adapter (warp): routes, bodies, JSON errors, SSE.
//! - [`services`]: one service per capability (commands, diagnostics, MCP, logs, MCP events
//!   and health), used by both adapters.
//! - [`exec`]: the exec engine (`/bin/sh -c` in a process group, both pipes under flow control).
//! - [`policy`]: the command policy (pure: parse as dash would, judge each simple command).
//! - [`docker`]: the Docker client seam (bollard).
//! - [`agent`]: shared state with private fields: config, task tree, policy, audit, auth.
//! - [`config`]: the configuration value (flags > env > file > defaults).
//! - [`cli`]: the command line: subcommands, and the local client (`exec`, `status`, `logs`,
//!   `mcp`), an HTTP client of the local API that names no service.
//! - [`systemd`]: `Type=notify` (ready, status, stopping) and the watchdog fed by the control
//!   loop's progress; [`signals`]: SIGTERM/SIGINT (the first drains, the second exits at once).
//! - [`init`]: as PID 1 (a container), a minimal init in front of the agent: reaps orphans,
//!   forwards stop signals, exits with the agent's status.
//! - [`audit`], [`auth`], [`status`], [`logring`], [`text`], [`backoff`]: the audit log (own
//!   writer thread), bearer tokens and roles, heartbeat samples, the agent's recent log lines,
//!   UTF-8-safe output chunking shared by both adapters, and the retry backoff (channel
//!   reconnects, Docker event feed).
//! - [`metrics`]: the Prometheus registry (one per agent, built here in [`start_with_logs`])
//!   and the typed counters the services, the channel, Docker and audit count into.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod channel;
pub mod cli;
pub mod config;
pub mod docker;
pub mod exec;
pub mod init;
pub mod logring;
pub mod metrics;
pub mod policy;
pub mod services;
pub mod signals;
pub mod status;
pub mod systemd;
pub mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

pub use agent::StartError;
pub use config::Config;

use agent::Agent;
use channel::Channel;
use services::Services;

/// The agent's version (from Cargo).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (`build.rs`), or `unknown`.
pub const GIT_COMMIT: &str = env!("DTMA_GIT_COMMIT");

/// What `dtma --version` says after the name: version, commit and wire protocol version.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{VERSION} (commit {GIT_COMMIT}, protocol {})",
            dtma_protocol::PROTOCOL_VERSION
        )
    })
}

/// What this agent announces in `hello`.
pub const CAPABILITIES: [&str; 10] = [
    "exec",
    "cancel",
    "ping",
    "credit",
    "resume",
    "mcp",
    "logs",
    "diagnostics",
    "events",
    // On `reconnect`, the new link is welcomed before the old one closes.
    "make_before_break",
];

/// How long shutdown waits for the backend to acknowledge the final events.
const FINAL_EVENTS_WAIT: Duration = Duration::from_secs(2);

/// Current UTC time as RFC 3339 with milliseconds (`2025-01-20T10:30:00.000Z`).
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A time as RFC 3339 in UTC with milliseconds (`2025-01-20T10:30:00.000Z`).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
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
    services: Arc<Services>,
    channel: Option<Arc<Channel>>,
    /// Where the local API listens.
    pub http_addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn agent(&self) -> &Arc<Agent> {
        self.services.agent()
    }
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }
    /// The channel, when one is configured.
    pub fn channel(&self) -> Option<&Arc<Channel>> {
        self.channel.as_ref()
    }
    /// Wait until the agent has shut down.
    pub async fn join(self) -> Result<(), tokio::task::JoinError> {
        self.done.await
    }
}

/// Start the agent: the local API on `config.listen` and, when configured, the channel.
/// Cancelling `shutdown` drains running work and stops everything.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    start_supervised(
        config,
        logring::LogRing::new(),
        systemd::Systemd::disabled(),
        shutdown,
    )
    .await
}

/// [`start`], with the ring that the process's log subscriber feeds (for `/diagnostics/logs`)
/// and what the service manager asked for (notifications, watchdog).
pub async fn start_supervised(
    config: Config,
    logs: Arc<logring::LogRing>,
    systemd: systemd::Systemd,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    // The one metrics registry: the agent hands its counters to whoever counts.
    let metrics = Arc::new(metrics::Metrics::new());
    let agent = Agent::build(config, logs, metrics, systemd)?;
    log_enforcement(agent.enforcement());
    if agent.config().policy.operator_allow.is_some() {
        tracing::warn!(
            "The config file's `[policy] operator_allow` is ignored: the operator role is a kernel sandbox profile now."
        );
    }
    let addr = agent.config().listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    agent.set_http_addr(http_addr);
    let services = Services::new(agent.clone());
    let channel = agent
        .config()
        .channel
        .clone()
        .map(|c| Channel::new(services.clone(), c));
    if let Some(c) = &channel {
        let registry = c.registry().clone();
        agent.set_stream_counts(Box::new(move || registry.counts()));
    }
    match &channel {
        Some(c) => {
            info!(url = %c.config().url, agent_id = %agent.config().agent_id, "Control channel configured.")
        }
        None => {
            info!("No AGENTOPIA_API_BASE_URL or DTMA_WS_URL: running local-only (HTTP API only).")
        }
    }
    info!(%http_addr, "Local API listening.");

    // One tree: the adapters stop on their own tokens after the drain, below `shutdown`.
    let http_stop = CancellationToken::new();
    let server = warp::serve(api::routes(services.clone()))
        .incoming(listener)
        .graceful({
            let t = http_stop.clone();
            async move { t.cancelled().await }
        })
        .run();
    let http_task = tokio::spawn(server);
    // The Docker event watcher and the liveness monitor of MCP servers, until shutdown.
    agent.spawn({
        let services = services.clone();
        async move { services.events.run().await }
    });
    // Leftovers of MCP deploys an earlier agent (or daemon) did not finish; Docker may be down.
    agent.spawn({
        let services = services.clone();
        async move {
            match services.mcp.reconcile().await {
                Ok(0) => {}
                Ok(n) => info!(containers = n, "Finished interrupted MCP deploys."),
                Err(e) => tracing::debug!(error = %e, "MCP start-up check skipped."),
            }
        }
    });
    let chan_stop = CancellationToken::new();
    let chan_task = channel
        .clone()
        .map(|c| tokio::spawn(c.run(chan_stop.clone())));
    // READY=1 once the channel's first dial has started (the API listens already), STATUS=
    // lines after it; the watchdog fed by the reconnect loop and the session (or, local-only,
    // by a ticker on the runtime). None of these is tracked: the drain never waits for them.
    let (sd, progress) = (agent.systemd(), agent.progress());
    systemd::spawn_reporter(sd.clone(), agent.link_state(), |s| {
        !matches!(s, agent::LinkState::Starting)
    });
    if channel.is_none() {
        systemd::spawn_local_ticker(sd, progress.clone());
    }
    systemd::spawn_watchdog(sd.clone(), progress.clone());
    systemd::spawn_wedge_hook(sd, progress.clone());

    let done = tokio::spawn({
        let agent = agent.clone();
        let channel = channel.clone();
        let services = services.clone();
        async move {
            shutdown.cancelled().await;
            info!("Shutdown requested.");
            agent.systemd().stopping(&format!(
                "draining: running requests may finish for {} s",
                agent.config().shutdown_grace.as_secs()
            ));
            // Event streams have no natural end: they end now (`shutting_down`), with the
            // watcher and the monitor, so the drain below waits only for finite work.
            services.events.shutdown();
            agent.drain(agent.config().shutdown_grace).await;
            if let Some(c) = &channel {
                c.flush(FINAL_EVENTS_WAIT).await;
            }
            chan_stop.cancel();
            http_stop.cancel();
            if let Some(t) = chan_task {
                let _ = t.await;
            }
            let _ = http_task.await;
            info!("Agent stopped.");
        }
    });
    Ok(Running {
        services,
        channel,
        http_addr,
        done,
    })
}

/// One start-up line on the kernel sandbox; a warning when some protection does not hold.
fn log_enforcement(e: &exec::sandbox::Enforcement) {
    let (mode, level) = (e.mode.name(), e.level.name());
    if e.degradations.is_empty() {
        info!(
            mode,
            level,
            landlock_abi = e.landlock_abi,
            "Kernel sandbox."
        );
    } else {
        tracing::warn!(mode, level, landlock_abi = e.landlock_abi, degradations = ?e.degradations, "Kernel sandbox degraded.");
    }
}

/// Run until `shutdown` is cancelled and the drain is over.
pub async fn run(
    config: Config,
    logs: Arc<logring::LogRing>,
    systemd: systemd::Systemd,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let running = start_supervised(config, logs, systemd, shutdown).await?;
    if let Err(e) = running.join().await {
        tracing::error!(error = %e, "The shutdown task failed.");
    }
    Ok(())
}
