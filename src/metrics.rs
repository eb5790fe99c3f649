//! The agent's Prometheus metrics: one registry, built once by the wiring (`lib.rs`) and handed
//! to whoever counts: the agent keeps it (services reach it there), the channel's stream
//! registry, the Docker client and the audit writer hold clones of their own counters. `GET
//! /metrics` (`crate::api`) only renders what [`Metrics::encode`] produces.
//!
//! No global statics: two agents in one process (the tests run several) keep separate counts.
//!
//! **Invariant:** every label value is a `&'static str` from a closed set named here or in the
//! code that counts (request types, outcomes, causes, states, Docker operations), except a policy
//! rule's name, which comes from the policy's own rules or the operator's configured ones (a set
//! fixed at start). No command line, token, path or container environment is ever a label.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s text: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where the reconnect state machine (`crate::channel`) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Dialling, or waiting for `welcome`.
    Connecting,
    /// A session is up (after `welcome`).
    Connected,
    /// Waiting out the backoff before the next dial.
    Backoff,
    /// The channel has stopped (shutdown), or none is configured.
    Stopped,
}

impl ChannelState {
    const SHOWN: [ChannelState; 3] = [
        ChannelState::Connecting,
        ChannelState::Connected,
        ChannelState::Backoff,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Connecting => "connecting",
            ChannelState::Connected => "connected",
            ChannelState::Backoff => "backoff",
            ChannelState::Stopped => "stopped",
        }
    }
}

/// Why the channel dials again: the ends the reconnect loop distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectCause {
    /// The dial itself failed (TCP, TLS, upgrade).
    ConnectFailed,
    /// The backend asked for it (`reconnect`).
    Redirect,
    /// The backend closed the link.
    Closed,
    /// No frame for two ping intervals.
    Dead,
    /// The backend speaks another protocol version.
    Incompatible,
    /// A failed handshake or a transport error.
    Failed,
}

impl ReconnectCause {
    pub const ALL: [ReconnectCause; 6] = [
        ReconnectCause::ConnectFailed,
        ReconnectCause::Redirect,
        ReconnectCause::Closed,
        ReconnectCause::Dead,
        ReconnectCause::Incompatible,
        ReconnectCause::Failed,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ReconnectCause::ConnectFailed => "connect_failed",
            ReconnectCause::Redirect => "redirect",
            ReconnectCause::Closed => "closed",
            ReconnectCause::Dead => "dead",
            ReconnectCause::Incompatible => "incompatible",
            ReconnectCause::Failed => "failed",
        }
    }
}

/// How a request ended, as `dtma_requests_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served (a command that ran to its exit, whatever its exit code).
    Ok,
    /// Failed: invalid, could not start, Docker failed, an agent bug.
    Error,
    /// Refused by the policy or the caller's role.
    Denied,
    /// Cancelled before it ended on its own.
    Cancelled,
    /// A command killed at its timeout.
    TimedOut,
    /// Not taken: shutting down, too many commands or streams.
    Refused,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    source: &'static str,
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

/// Labels of `dtma_docker_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DockerErrorLabels {
    /// What the agent asked the daemon (`inspect`, `create`, `pull`, ...).
    pub operation: &'static str,
    /// `unreachable`, `api`, `not_found` or `conflict`.
    pub kind: &'static str,
}

/// The counters of the channel's stream registry (`crate::channel::streams`), cloned out of
/// [`Metrics`] so the registry counts without holding the whole set. `Default`: counters that
/// no registry encodes (unit tests, benchmarks).
#[derive(Clone, Default)]
pub struct StreamCounters {
    /// Streams whose terminal event is not written yet.
    pub running: Gauge,
    /// Event bytes written to the backend for the first time.
    pub sent_bytes: Counter,
    /// Event bytes written again after a reconnect (the backend lacked them).
    pub resent_bytes: Counter,
    /// Times a stream's producer waited for credit.
    pub credit_stalls: Counter,
}

/// Every metric of the agent, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    channel_state: Family<StateLabels, Gauge>,
    /// When the current session came up (for `dtma_channel_connected_seconds`).
    connected_at: Mutex<Option<Instant>>,
    connected_seconds: Gauge<f64, AtomicU64>,
    reconnects: Family<CauseLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    commands_running: Family<SourceLabels, Gauge>,
    streams: StreamCounters,
    policy_rejections: Family<RuleLabels, Counter>,
    audit_write_failures: Counter,
    docker_errors: Family<DockerErrorLabels, Counter>,
    mcp_servers: Family<StateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            channel_state: Family::default(),
            connected_at: Mutex::new(None),
            connected_seconds: Gauge::default(),
            reconnects: Family::default(),
            requests: Family::default(),
            commands_running: Family::default(),
            streams: StreamCounters::default(),
            policy_rejections: Family::default(),
            audit_write_failures: Counter::default(),
            docker_errors: Family::default(),
            mcp_servers: Family::default(),
        };
        // Series that exist before their first event, so a dashboard shows 0 rather than nothing.
        for state in ChannelState::SHOWN {
            m.channel_state.get_or_create_owned(&StateLabels {
                state: state.name(),
            });
        }
        for cause in ReconnectCause::ALL {
            m.reconnects.get_or_create_owned(&CauseLabels {
                cause: cause.name(),
            });
        }
        for source in ["channel", "http"] {
            m.commands_running
                .get_or_create_owned(&SourceLabels { source });
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "dtma_channel_state",
            "Where the control channel stands: 1 for the current state (connecting, connected, backoff), 0 for the others",
            self.channel_state.clone(),
        );
        r.register(
            "dtma_channel_connected_seconds",
            "Age of the current channel session in seconds (0 while disconnected)",
            self.connected_seconds.clone(),
        );
        r.register(
            "dtma_channel_reconnects",
            "Channel redials by cause (connect_failed, redirect, closed, dead, incompatible, failed)",
            self.reconnects.clone(),
        );
        r.register(
            "dtma_requests",
            "Requests by entry point (source), type and outcome (ok, error, denied, cancelled, timed_out, refused)",
            self.requests.clone(),
        );
        r.register(
            "dtma_commands_running",
            "Shell commands running now, by entry point",
            self.commands_running.clone(),
        );
        r.register(
            "dtma_streams_running",
            "Channel request streams whose terminal event is not written yet",
            self.streams.running.clone(),
        );
        r.register(
            "dtma_stream_sent_bytes",
            "Stream event bytes written to the backend for the first time",
            self.streams.sent_bytes.clone(),
        );
        r.register(
            "dtma_stream_resent_bytes",
            "Stream event bytes written again after a reconnect",
            self.streams.resent_bytes.clone(),
        );
        r.register(
            "dtma_stream_credit_stalls",
            "Times a stream had to wait for the backend's credit before forwarding output",
            self.streams.credit_stalls.clone(),
        );
        r.register(
            "dtma_policy_rejections",
            "Commands refused by the command policy, by rule",
            self.policy_rejections.clone(),
        );
        r.register(
            "dtma_audit_write_failures",
            "Audit records the audit log could not take (they went to the agent's log instead)",
            self.audit_write_failures.clone(),
        );
        r.register(
            "dtma_docker_errors",
            "Failed Docker API calls by operation and kind (unreachable, api, not_found, conflict)",
            self.docker_errors.clone(),
        );
        r.register(
            "dtma_mcp_servers",
            "Managed MCP servers by state, sampled at scrape time",
            self.mcp_servers.clone(),
        );
        self
    }

    /// The channel moved to `state`.
    pub fn channel_state(&self, state: ChannelState) {
        for shown in ChannelState::SHOWN {
            self.channel_state
                .get_or_create(&StateLabels {
                    state: shown.name(),
                })
                .set(i64::from(shown == state));
        }
        let mut at = self.connected_at.lock().unwrap_or_else(|p| p.into_inner());
        *at = (state == ChannelState::Connected).then(Instant::now);
    }

    /// The channel dials again because of `cause`.
    pub fn reconnect(&self, cause: ReconnectCause) {
        self.reconnects
            .get_or_create(&CauseLabels {
                cause: cause.name(),
            })
            .inc();
    }

    /// A request through `source` (`channel`, `http`) of type `kind` ended with `outcome`.
    pub fn request(&self, source: &'static str, kind: &'static str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                source,
                r#type: kind,
                outcome: outcome.name(),
            })
            .inc();
    }

    /// A command started through `source`; it counts as running until the guard drops.
    pub fn command_running(&self, source: &'static str) -> RunningGuard {
        let gauge = self
            .commands_running
            .get_or_create_owned(&SourceLabels { source });
        gauge.inc();
        RunningGuard(gauge)
    }

    /// The policy refused a command by `rule`.
    pub fn policy_rejection(&self, rule: &str) {
        self.policy_rejections
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// The stream registry's counters.
    pub fn streams(&self) -> StreamCounters {
        self.streams.clone()
    }

    /// The audit writer's failure counter.
    pub fn audit_write_failures(&self) -> Counter {
        self.audit_write_failures.clone()
    }

    /// The Docker client's error counters.
    pub fn docker_errors(&self) -> Family<DockerErrorLabels, Counter> {
        self.docker_errors.clone()
    }

    /// Replace the MCP servers' count by state with a fresh sample (`state`, count).
    pub fn set_mcp_servers(&self, sample: &[(&'static str, i64)]) {
        self.mcp_servers.clear();
        for &(state, n) in sample {
            self.mcp_servers
                .get_or_create(&StateLabels { state })
                .inc_by(n);
        }
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let since = *self.connected_at.lock().unwrap_or_else(|p| p.into_inner());
        self.connected_seconds
            .set(since.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Lowers a command's `dtma_commands_running` when dropped (also when its task panics).
pub struct RunningGuard(Gauge);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_family_has_help_and_the_dtma_prefix() {
        let m = Metrics::new();
        // A family without any series is not encoded at all: give each labelled one a series.
        m.request("http", "exec", Outcome::Ok);
        m.policy_rejection("mass_deletion");
        m.docker_errors()
            .get_or_create(&DockerErrorLabels {
                operation: "list",
                kind: "api",
            })
            .inc();
        m.set_mcp_servers(&[("ready", 1)]);
        let text = m.encode().unwrap();
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        assert_eq!(helps.len(), 13, "{text}");
        for help in helps {
            assert!(help.starts_with("# HELP dtma_"), "{help}");
        }
    }

    #[test]
    fn channel_state_is_one_hot_and_the_session_age_resets() {
        let m = Metrics::new();
        m.channel_state(ChannelState::Connected);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"dtma_channel_state{state="connected"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"dtma_channel_state{state="backoff"}"#),
            Some(0.0)
        );
        m.channel_state(ChannelState::Backoff);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"dtma_channel_state{state="connected"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"dtma_channel_state{state="backoff"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, "dtma_channel_connected_seconds "), Some(0.0));
    }

    #[test]
    fn a_running_guard_lowers_the_gauge_when_dropped() {
        let m = Metrics::new();
        let g = m.command_running("http");
        let line = r#"dtma_commands_running{source="http"}"#;
        assert_eq!(sample(&m.encode().unwrap(), line), Some(1.0));
        drop(g);
        assert_eq!(sample(&m.encode().unwrap(), line), Some(0.0));
    }

    #[test]
    fn mcp_servers_are_replaced_by_each_sample() {
        let m = Metrics::new();
        m.set_mcp_servers(&[("ready", 2), ("failed", 1)]);
        m.set_mcp_servers(&[("ready", 1)]);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"dtma_mcp_servers{state="ready"}"#),
            Some(1.0)
        );
        assert!(!text.contains(r#"state="failed""#), "{text}");
    }
}
