//! The agent's shared state: configuration, the task tree, the policy, audit, auth, Docker and
//! the agent's own logs. Everything above it (services, adapters) reads it through methods; no
//! field can be flipped from outside.
//!
//! **Invariant:** nothing here imports a service or an adapter.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::audit::{AuditLog, Record};
use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::docker::DockerClient;
use crate::exec::sandbox::{self, Enforcement};
use crate::logring::LogRing;
use crate::metrics::Metrics;
use crate::policy::{Policy, Role};
use crate::status::Sampler;
use crate::systemd::{Progress, Systemd};

/// Why the agent cannot start with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured command policy does not compile. The agent refuses to start rather than
    /// run without the configured deny rules.
    #[error("the command policy in the configuration is invalid: {0}")]
    Policy(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// The process exit code: 64 (EX_USAGE) for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Policy(_) => 64,
            StartError::Listen { .. } => 1,
        }
    }
}

/// State shared by the services and both adapters.
pub struct Agent {
    config: Config,
    /// Every request task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Parent of every request's cancellation token.
    work: CancellationToken,
    /// Set on shutdown: new requests are refused.
    draining: AtomicBool,
    /// Cancelled when the drain starts: open-ended work (a log follow) ends then instead of
    /// holding shutdown for the whole grace period.
    drain_started: CancellationToken,
    /// The channel's state (for `/health`, the heartbeat and systemd's `STATUS=`).
    link: watch::Sender<LinkState>,
    /// What the service manager asked for (notifications, watchdog).
    systemd: Arc<Systemd>,
    /// The control loop's heartbeat, which feeds the watchdog.
    progress: Arc<Progress>,
    started: Instant,
    sampler: Sampler,
    policy: Policy,
    /// What the kernel sandbox enforces, assessed once at start.
    enforcement: Enforcement,
    audit: AuditLog,
    auth: Auth,
    docker: DockerClient,
    logs: Arc<LogRing>,
    /// The agent's metrics: the wiring (`lib.rs`) builds the one registry; services count here.
    metrics: Arc<Metrics>,
    /// Where the local API actually listens (set once bound).
    http_addr: OnceLock<SocketAddr>,
    /// The channel's (running, held) stream counts, for `/status`; set by the wiring when a
    /// channel exists (the agent names no adapter, so it holds a reader, not the registry).
    stream_counts: OnceLock<StreamCounts>,
}

/// Reads the channel's (running, held) stream counts.
pub type StreamCounts = Box<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The channel's state, as systemd's `STATUS=` line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// The channel has not dialled yet.
    Starting,
    /// No channel configured: the local API only.
    LocalOnly,
    /// Dialling the backend (TCP, TLS, upgrade, `hello`/`welcome`).
    Connecting { host: String },
    /// A session is up (`welcome` received).
    Connected { host: String },
    /// Waiting before the next dial, after `cause`.
    BackingOff { delay: Duration, cause: String },
    /// The channel cannot run at all (its TLS set-up failed); the local API still serves.
    Failed { cause: String },
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkState::Starting => f.write_str("starting"),
            LinkState::LocalOnly => f.write_str("local-only (no control channel configured)"),
            LinkState::Connecting { host } => write!(f, "connecting to {host}"),
            LinkState::Connected { host } => write!(f, "connected to {host}"),
            LinkState::BackingOff { delay, cause } => {
                write!(f, "backing off {:.1} s: {cause}", delay.as_secs_f64())
            }
            LinkState::Failed { cause } => write!(f, "channel down for good: {cause}"),
        }
    }
}

/// The caller behind every channel request: the backend, which the agent itself dialled.
pub fn backend_caller() -> Caller {
    Caller {
        name: "backend".into(),
        role: Role::Admin,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Diagnostics => "diagnostics",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

impl Agent {
    pub fn new(config: Config) -> Result<Arc<Agent>, StartError> {
        Self::with_logs(config, LogRing::new())
    }

    /// The agent with the log ring the process's subscriber feeds and its own metrics.
    pub fn with_logs(config: Config, logs: Arc<LogRing>) -> Result<Arc<Agent>, StartError> {
        Self::build(config, logs, Arc::new(Metrics::new()), Systemd::disabled())
    }

    /// The agent with the log ring the process's subscriber feeds, the metrics registry the
    /// wiring built and the service manager's handle (notifications, watchdog). Fails closed: a
    /// policy that does not compile stops the start instead of falling back to fewer rules. A
    /// sandbox the kernel cannot enforce refuses the profiles it cannot confine
    /// ([`sandbox::assess`]).
    pub fn build(
        config: Config,
        logs: Arc<LogRing>,
        metrics: Arc<Metrics>,
        systemd: Systemd,
    ) -> Result<Arc<Agent>, StartError> {
        let policy = Policy::new(&config.policy).map_err(|e| StartError::Policy(e.to_string()))?;
        let enforcement = sandbox::assess(
            &config.exec.sandbox,
            sandbox::detected_abi(),
            sandbox::Privileges::of_this_process(),
        );
        let link = watch::Sender::new(if config.channel.is_some() {
            LinkState::Starting
        } else {
            LinkState::LocalOnly
        });
        Ok(Arc::new(Agent {
            policy,
            enforcement,
            audit: AuditLog::new(
                config.audit.path.clone(),
                config.audit.max_bytes,
                config.audit.keep,
                metrics.audit_write_failures(),
            ),
            auth: Auth::from_config(&config),
            docker: DockerClient::new(config.docker_socket.clone())
                .counting_errors(metrics.docker_errors()),
            logs,
            metrics,
            http_addr: OnceLock::new(),
            stream_counts: OnceLock::new(),
            config,
            tracker: TaskTracker::new(),
            work: CancellationToken::new(),
            draining: AtomicBool::new(false),
            drain_started: CancellationToken::new(),
            link,
            progress: Arc::new(Progress::new(systemd.watchdog())),
            systemd: Arc::new(systemd),
            started: Instant::now(),
            sampler: Sampler::default(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    /// What the kernel sandbox enforces on this host (assessed once at start).
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }
    pub fn auth(&self) -> &Auth {
        &self.auth
    }
    pub fn docker(&self) -> &DockerClient {
        &self.docker
    }
    pub fn logs(&self) -> &LogRing {
        &self.logs
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Queue an audit record (see [`AuditLog::write`]).
    pub async fn audit(&self, record: &Record<'_>) {
        self.audit.write(record).await
    }

    /// Whether the agent is shutting down (new work is refused).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a channel session is up right now.
    pub fn link_up(&self) -> bool {
        matches!(*self.link.borrow(), LinkState::Connected { .. })
    }
    /// The channel reports its state.
    pub fn set_link_state(&self, state: LinkState) {
        use crate::metrics::ChannelState;
        self.metrics.channel_state(match &state {
            LinkState::Starting | LinkState::Connecting { .. } => ChannelState::Connecting,
            LinkState::Connected { .. } => ChannelState::Connected,
            LinkState::BackingOff { .. } => ChannelState::Backoff,
            LinkState::LocalOnly | LinkState::Failed { .. } => ChannelState::Stopped,
        });
        self.link.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
    /// The channel's state, and its changes.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.link.subscribe()
    }

    pub fn systemd(&self) -> &Arc<Systemd> {
        &self.systemd
    }
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr.get().copied()
    }
    pub(crate) fn set_http_addr(&self, addr: SocketAddr) {
        let _ = self.http_addr.set(addr);
    }

    /// The channel's (running, held) streams; (0, 0) without a channel.
    pub fn stream_counts(&self) -> (u64, u64) {
        self.stream_counts.get().map_or((0, 0), |f| f())
    }
    pub(crate) fn set_stream_counts(&self, counts: StreamCounts) {
        let _ = self.stream_counts.set(counts);
    }

    /// A token for one request's work: cancelled by the request's own cancel, or when the
    /// shutdown grace runs out.
    pub fn work_token(&self) -> CancellationToken {
        self.work.child_token()
    }

    /// Cancelled when shutdown starts draining. Work that would otherwise never end on its own
    /// (following a log) stops on it; bounded work runs on through the grace period.
    pub fn drain_started(&self) -> CancellationToken {
        self.drain_started.clone()
    }

    /// Run a request's task where shutdown can wait for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Requests running now (for the shutdown log and tests).
    pub fn running_tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Stop every running request now (their process groups get SIGTERM, then SIGKILL).
    pub fn cancel_all_work(&self) {
        self.work.cancel();
    }

    /// Stop taking work, let running requests finish for up to `grace`, then cancel them and
    /// wait for their final events; finally flush the audit log.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_started.cancel();
        self.tracker.close();
        let running = self.tracker.len();
        if running > 0 {
            info!(
                running,
                grace_s = grace.as_secs(),
                "Draining running requests."
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.tracker.len(),
                "Grace period over; stopping the remaining commands' process groups."
            );
            self.work.cancel();
            self.tracker.wait().await;
        }
        self.audit.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NamedPattern;

    #[test]
    fn a_policy_that_does_not_compile_stops_the_start() {
        let mut config = Config::for_channel("t", None);
        config.policy.extra_deny.push(NamedPattern {
            name: "broken".into(),
            pattern: "(".into(),
        });
        match Agent::new(config) {
            Err(e @ StartError::Policy(_)) => {
                assert_eq!(e.exit_code(), 64);
                assert!(e.to_string().contains("broken"), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("the agent started without its configured deny rules"),
        }
    }
}
