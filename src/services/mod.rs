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
