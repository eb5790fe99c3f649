//! The agent's shared state and the channel's reconnect state machine:
//! `Disconnected{backoff} -> Connecting -> Connected(session) -> Disconnected ...`, forever,
//! with one log line per transition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{self, Message};

use dtma_protocol::close_code;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::audit::{AuditLog, Record};
use crate::auth::{Auth, Caller};
use crate::backoff::Backoff;
use crate::config::{ChannelConfig, Config};
use crate::docker::DockerClient;
use crate::exec::Outcome;
use crate::logring::LogRing;
use crate::policy::{Decision, Policy, Role};
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
    /// One command policy for the channel and the local API.
    pub policy: Policy,
    pub audit: AuditLog,
    pub auth: Auth,
    pub docker: DockerClient,
    /// The agent's own recent log lines.
    pub logs: Arc<LogRing>,
    /// Where the local API actually listens (set once bound).
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Slots for commands run through the local API.
    pub http_slots: Arc<tokio::sync::Semaphore>,
}

/// The caller behind every channel request: the backend, which the agent itself dialled.
pub fn backend_caller() -> Caller {
    Caller {
        name: "backend".into(),
        role: Role::Admin,
    }
}

impl Agent {
    pub fn new(config: Config) -> Arc<Agent> {
        Self::with_logs(config, LogRing::new())
    }

    pub fn with_logs(config: Config, logs: Arc<LogRing>) -> Arc<Agent> {
        // Config::load already compiled the policy once; a config built in code may still
        // carry a bad pattern, which then falls back to the built-in rules (and says so).
        let policy = Policy::new(&config.policy).unwrap_or_else(|e| {
            tracing::error!(error = %e, "Policy config rejected; using the built-in rules.");
            Policy::default()
        });
        Arc::new(Agent {
            registry: Registry::new(config.streams.clone()),
            policy,
            audit: AuditLog::new(
                config.audit.path.clone(),
                config.audit.max_bytes,
                config.audit.keep,
            ),
            auth: Auth::from_config(&config),
            docker: DockerClient::new(config.docker_socket.clone()),
            logs,
            http_addr: std::sync::OnceLock::new(),
            http_slots: Arc::new(tokio::sync::Semaphore::new(config.exec.http_max_concurrent)),
            config,
            tracker: TaskTracker::new(),
            work: CancellationToken::new(),
            draining: AtomicBool::new(false),
            link_up: AtomicBool::new(false),
            started: Instant::now(),
            sampler: Sampler::default(),
        })
    }

    /// The one policy check for commands from any path; the decision is audited.
    pub fn authorize_exec(
        &self,
        source: &str,
        caller: &Caller,
        request_id: Option<&str>,
        command: &str,
    ) -> Decision {
        let decision = self.policy.check(caller.role, command);
        if !decision.allowed {
            info!(source, caller = %caller.name, rule = %decision.rule, request_id, "Command denied by policy.");
        }
        let verdict = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.audit.write(&audit_record(
            source,
            caller,
            request_id,
            command,
            (verdict, &decision.rule),
            None,
        ));
        decision
    }

    /// Audit how an allowed command ended.
    pub fn audit_outcome(
        &self,
        source: &str,
        caller: &Caller,
        request_id: Option<&str>,
        command: &str,
        outcome: &Outcome,
    ) {
        let how = if outcome.timed_out {
            "timed_out"
        } else if outcome.cancelled {
            "cancelled"
        } else {
            "exited"
        };
        self.audit.write(&audit_record(
            source,
            caller,
            request_id,
            command,
            ("finished", how),
            Some(outcome),
        ));
    }

    /// MCP containers as the old HTTP heartbeat reported them; empty when Docker is unreachable
    /// (or slower than 2 s: the heartbeat must not wait on it).
    pub async fn tool_statuses(&self) -> Vec<dtma_protocol::ToolStatus> {
        let list = tokio::time::timeout(Duration::from_secs(2), self.docker.containers(true)).await;
        let Ok(Ok(list)) = list else {
            return Vec::new();
        };
        list.into_iter()
            .map(|c| dtma_protocol::ToolStatus {
                account_tool_instance_id: c
                    .labels
                    .get(crate::docker::LABEL_INSTANCE_ID)
                    .cloned()
                    .unwrap_or_default(),
                status_on_toolbox: match c.state.as_str() {
                    "running" => "running",
                    "created" | "restarting" => "starting",
                    "removing" => "stopping",
                    "exited" | "paused" => "stopped",
                    _ => "error",
                }
                .to_owned(),
                runtime_details: serde_json::json!({
                    "container_id": c.id,
                    "image": c.image,
                    "state": c.state,
                    "status": c.status,
                }),
                instance_name_on_toolbox: c.name,
            })
            .collect()
    }

    /// The heartbeat (blocking: reads /proc).
    pub fn status(&self) -> dtma_protocol::Status {
        self.sampler
            .status(self.started.elapsed().as_secs(), self.registry.counts())
    }
}

fn audit_record<'a>(
    source: &'a str,
    caller: &'a Caller,
    request_id: Option<&'a str>,
    command: &'a str,
    (decision, rule): (&'a str, &'a str),
    outcome: Option<&Outcome>,
) -> Record<'a> {
    Record {
        time: crate::now_rfc3339(),
        source,
        caller: &caller.name,
        role: role_name(caller.role),
        command,
        decision,
        rule,
        request_id,
        exit_code: outcome.and_then(|o| o.exit_code),
        signal: outcome.and_then(|o| o.signal),
        duration_ms: outcome.map(|o| o.duration.as_millis() as u64),
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Diagnostics => "diagnostics",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// How the channel reaches the backend. Production dials TCP + TLS + WebSocket
/// ([`TlsDialer`]); tests can hand the state machine in-memory links.
pub trait Dialer: Send + Sync {
    type Link: futures_util::Sink<Message, Error = tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin
        + Send
        + 'static;
    fn dial(&self, url: &str)
    -> impl Future<Output = Result<Self::Link, crate::tls::Error>> + Send;
}

/// The real dialer: TCP, rustls, WebSocket upgrade with the bearer token.
pub struct TlsDialer {
    token: crate::config::Secret,
    chan: ChannelConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl Dialer for TlsDialer {
    type Link = crate::tls::Ws;
    async fn dial(&self, url: &str) -> Result<Self::Link, crate::tls::Error> {
        crate::tls::dial(url, &self.token, &self.chan, self.tls.clone()).await
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
    let dialer = TlsDialer {
        token: agent.config.bearer_token.clone(),
        chan: chan.clone(),
        tls,
    };
    run_channel(agent, chan, stop, dialer).await
}

/// The reconnect state machine over any [`Dialer`].
pub async fn run_channel<D: Dialer>(
    agent: Arc<Agent>,
    chan: ChannelConfig,
    stop: CancellationToken,
    dialer: D,
) {
    let mut backoff = match chan.jitter_seed {
        Some(seed) => Backoff::with_rng(
            chan.backoff_base,
            chan.backoff_cap,
            fastrand::Rng::with_seed(seed),
        ),
        None => Backoff::new(chan.backoff_base, chan.backoff_cap),
    };
    let mut url = chan.url.clone();
    // tokio's clock, so tests can run the state machine on paused time.
    let mut down_since = tokio::time::Instant::now();
    let mut orphans_cancelled = false;
    let mut wait = Duration::ZERO;
    loop {
        if !wait.is_zero() {
            info!(
                delay_ms = wait.as_millis() as u64,
                "Channel disconnected; waiting before redial."
            );
        }
        // Wait out the delay in full; the orphan grace may expire during it (then running
        // commands are cancelled and the wait goes on).
        let redial_at = tokio::time::Instant::now() + wait;
        loop {
            let grace_left = chan.orphan_grace.saturating_sub(down_since.elapsed());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(redial_at) => break,
                _ = tokio::time::sleep(grace_left), if !orphans_cancelled => {
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
            }
        }
        info!(%url, "Channel connecting.");
        let ws = tokio::select! {
            _ = stop.cancelled() => return,
            ws = dialer.dial(&url) => ws,
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                warn!(error = %e, "Channel connect failed.");
                if url != chan.url {
                    info!(configured = %chan.url, "Redirect target unreachable; returning to the configured URL.");
                    url = chan.url.clone();
                }
                wait = backoff.next_delay();
                continue;
            }
        };
        let up_at = tokio::time::Instant::now();
        agent.link_up.store(true, Ordering::Relaxed);
        let end = session::run(ws, &agent, &chan, &stop).await;
        agent.link_up.store(false, Ordering::Relaxed);
        down_since = tokio::time::Instant::now();
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
                match to {
                    Some(to) if to.starts_with("ws://") || to.starts_with("wss://") => url = to,
                    Some(to) => {
                        warn!(url = %to, "Ignoring a redirect to a URL that is not ws:// or wss://.")
                    }
                    None => {}
                }
                wait = after;
            }
            SessionEnd::Incompatible(ref why) => {
                warn!(reason = %why, "Backend protocol version unsupported; retrying slowly.");
                wait = chan.backoff_cap;
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
