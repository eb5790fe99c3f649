//! The service layer: one service per capability, owning a request's whole life (checks, audit,
//! concurrency, the work, the terminal outcome). Both adapters, the channel (`crate::channel`)
//! and the local API (`crate::api`), only decode a request, call a service and encode what it
//! returns or streams; a new capability is one service here plus two small adapters.
//!
//! **Invariant:** services never import an adapter. They receive a sink (a trait) for events and
//! return typed outcomes and errors; each adapter maps those to its own wire (protocol events,
//! JSON bodies, SSE) in one place.

pub mod commands;
pub mod diagnostics;
pub mod events;
pub mod health;
pub mod logs;
pub mod mcp;

use std::sync::Arc;

use crate::agent::Agent;

pub use commands::CommandService;
pub use diagnostics::DiagnosticsService;
pub use events::EventsService;
pub use logs::LogsService;
pub use mcp::McpService;

/// Every service, over one shared [`Agent`]. Adapters hold an `Arc<Services>`.
pub struct Services {
    agent: Arc<Agent>,
    pub commands: CommandService,
    pub diagnostics: DiagnosticsService,
    pub logs: LogsService,
    pub mcp: McpService,
    pub events: EventsService,
}

impl Services {
    pub fn new(agent: Arc<Agent>) -> Arc<Services> {
        // Each server's monitored health: kept by the events service, read by the others.
        let health = Arc::new(health::HealthBook::default());
        Arc::new(Services {
            commands: CommandService::new(agent.clone()),
            diagnostics: DiagnosticsService::new(agent.clone(), health.clone()),
            logs: LogsService::new(agent.clone()),
            mcp: McpService::new(agent.clone(), health.clone()),
            events: EventsService::new(agent.clone(), health),
            agent,
        })
    }

    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// `GET /metrics`: the agent's metrics in the Prometheus text format, with the MCP servers
    /// by state sampled now from the MCP service's status: every state, 0 included, when
    /// Docker answers; no series when it does not answer within 2 s (a scrape never waits on it
    /// longer, and never shows stale or made-up states).
    pub async fn metrics(&self) -> Result<String, std::fmt::Error> {
        use dtma_protocol::ServerState as S;
        let status = tokio::time::timeout(METRICS_DOCKER_BUDGET, self.mcp.status(None)).await;
        let mut by_state: Vec<(&'static str, i64)> = Vec::new();
        if let Ok(Ok(status)) = status {
            let states = [
                S::Starting,
                S::Ready,
                S::Degraded,
                S::CrashLooping,
                S::Failed,
                S::Stopped,
            ];
            let servers: Vec<S> = status
                .groups
                .iter()
                .flat_map(|g| &g.servers)
                .map(|s| s.state)
                .collect();
            by_state = states
                .into_iter()
                .map(|state| {
                    let n = servers.iter().filter(|s| **s == state).count();
                    (state_name(state), n as i64)
                })
                .collect();
        }
        let metrics = self.agent.metrics();
        metrics.set_mcp_servers(&by_state);
        metrics.encode()
    }
}

/// A scrape never waits on Docker longer than this.
const METRICS_DOCKER_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// A server state as its metric label (the protocol's own name for it).
fn state_name(state: dtma_protocol::ServerState) -> &'static str {
    use dtma_protocol::ServerState as S;
    match state {
        S::Starting => "starting",
        S::Ready => "ready",
        S::Degraded => "degraded",
        S::CrashLooping => "crash_looping",
        S::Failed => "failed",
        S::Stopped => "stopped",
    }
}

/// Who asked, through which entry point: named in audit records.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: commands::Source,
    pub caller: crate::auth::Caller,
    /// The channel's request id (none over HTTP).
    pub request_id: Option<String>,
}

/// The agent is shutting down: the one check every service makes before taking new work.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the agent is shutting down and takes no new work")]
pub struct ShuttingDown;

/// Refuse new work while draining.
pub fn admit(agent: &Agent) -> Result<(), ShuttingDown> {
    if agent.is_draining() {
        Err(ShuttingDown)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_state_labels_are_the_protocols_names() {
        use dtma_protocol::ServerState as S;
        for s in [
            S::Starting,
            S::Ready,
            S::Degraded,
            S::CrashLooping,
            S::Failed,
            S::Stopped,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), state_name(s));
        }
    }
}
