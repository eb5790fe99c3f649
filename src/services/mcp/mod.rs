//! `McpService`: groups of MCP server containers. Deploy (one transaction per group), remove,
//! status and restart, for the channel's `mcp_*` requests and the local API's `/mcp/*` routes.
//!
//! Requests on the same group are serialised (one lock per group); different groups run in
//! parallel. Every container the agent manages carries labels under
//! [`spec::LABEL_PREFIX`](crate::docker::spec::LABEL_PREFIX), so status, restart and removal
//! find them again after an agent restart.

mod deploy;
mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtma_protocol::{
    DeployFailure, GroupStatus, McpGroup, PortMapping, PortProtocol, ProgressStep, RemoveResult,
    RestartResult, ServerState, ServerStatus, StatusResult,
};

use super::health::HealthBook;
use super::{ShuttingDown, admit};
use crate::agent::Agent;
use crate::docker::containers::Inspected;
use crate::docker::spec::{self, SpecError};

pub use plan::GroupSpec;
pub(crate) use plan::is_aside;

/// Seconds a container gets between SIGTERM and SIGKILL when the agent stops it.
pub const STOP_GRACE_S: i32 = 10;

/// Why an MCP request failed. Each adapter maps these to its wire once.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    /// The body is wrong; nothing was touched.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("the Docker daemon is unavailable: {0}")]
    DockerUnavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The group could not be deployed; what this deploy changed was put back.
    #[error("{message}")]
    DeployFailed {
        message: String,
        details: DeployFailure,
    },
    #[error("Docker error: {0}")]
    Docker(String),
}

impl From<crate::docker::Error> for McpError {
    fn from(e: crate::docker::Error) -> McpError {
        use crate::docker::Error;
        match e {
            Error::Unreachable { .. } => McpError::DockerUnavailable(e.to_string()),
            Error::NotFound(m) => McpError::NotFound(m),
            Error::Conflict(m) => McpError::Conflict(m),
            Error::Api(m) => McpError::Docker(m),
        }
    }
}

/// One step of a request's progress, for the caller to stream (or ignore).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub step: ProgressStep,
    pub server: Option<String>,
    pub message: Option<String>,
    /// Pull progress: bytes so far and the total when Docker knows it.
    pub bytes: Option<(u64, Option<u64>)>,
}

impl Step {
    pub fn new(step: ProgressStep, server: Option<&str>) -> Step {
        Step {
            step,
            server: server.map(str::to_owned),
            message: None,
            bytes: None,
        }
    }
    pub fn with_message(mut self, message: impl Into<String>) -> Step {
        self.message = Some(message.into());
        self
    }
}

/// Where a request's progress goes.
pub trait ProgressSink: Send + Sync + 'static {
    fn progress(&self, step: Step);
}

/// A caller that does not stream progress.
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn progress(&self, _step: Step) {}
}

pub struct McpService {
    agent: Arc<Agent>,
    /// The monitored state of each server (`services::health`), which `status` reports.
    health: Arc<HealthBook>,
    /// One lock per group id: requests on a group run one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl McpService {
    pub fn new(agent: Arc<Agent>, health: Arc<HealthBook>) -> McpService {
        McpService {
            agent,
            health,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn lock_for(&self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group_id.to_owned())
            .or_default()
            .clone()
    }

    /// Check and normalise a deploy body. Nothing is touched; a bad body names the field.
    pub fn validate(&self, group: &McpGroup) -> Result<GroupSpec, McpError> {
        Ok(GroupSpec::from_wire(group)?)
    }

    /// Bring the group to `spec` as one transaction (see `deploy.rs`).
    pub async fn deploy(
        &self,
        spec: GroupSpec,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<dtma_protocol::DeployResult, McpError> {
        admit(&self.agent)?;
        let lock = self.lock_for(&spec.group_id);
        let _held = lock.lock().await;
        deploy::run(&self.agent, spec, sink).await
    }

    /// Finish what deploys interrupted by an agent or daemon restart left behind (see
    /// `plan.rs`): containers under a `-dtma-new-` name were never committed and are removed;
    /// a `-dtma-old-` container gets its final name back and is started, unless a committed
    /// container already holds that name (then the deploy had committed and it is removed).
    /// Returns how many containers it touched.
    pub async fn reconcile(&self) -> Result<usize, McpError> {
        let docker = self.agent.docker();
        let mut touched = 0;
        // Only this agent's: another agent on the same daemon may be mid-deploy.
        let mine = format!("{}={}", spec::LABEL_AGENT_ID, self.agent.config().agent_id);
        for c in docker.find(&[spec::managed_filter(), mine]).await? {
            let Some((final_name, is_new)) = plan::leftover(&c.name) else {
                continue;
            };
            let group = c
                .labels
                .get(spec::LABEL_GROUP_ID)
                .cloned()
                .unwrap_or_default();
            let lock = self.lock_for(&group);
            let _held = lock.lock().await;
            if is_new || docker.inspect(final_name).await?.is_some() {
                docker.remove(&c.id).await?;
            } else {
                docker.rename(&c.id, final_name).await?;
                docker.start(&c.id).await?;
            }
            tracing::warn!(container = %c.name, group_id = %group, "Cleaned up after an interrupted MCP deploy.");
            touched += 1;
        }
        Ok(touched)
    }

    /// Stop and remove every container of `group_id`. Unknown group: `NotFound`.
    pub async fn remove(
        &self,
        group_id: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RemoveResult, McpError> {
        admit(&self.agent)?;
        let lock = self.lock_for(group_id);
        let _held = lock.lock().await;
        let docker = self.agent.docker();
        let members = docker
            .find(&[
                spec::managed_filter(),
                format!("{}={group_id}", spec::LABEL_GROUP_ID),
            ])
            .await?;
        if members.is_empty() {
            return Err(McpError::NotFound(format!(
                "no MCP group `{group_id}` on this agent"
            )));
        }
        let mut removed = Vec::new();
        for c in members {
            let name = instance_name(&c);
            sink.progress(Step::new(ProgressStep::Stopping, Some(&name)));
            docker.stop(&c.id, STOP_GRACE_S).await?;
            docker.remove(&c.id).await?;
            sink.progress(Step::new(ProgressStep::Removed, Some(&name)));
            removed.push(name);
        }
        removed.sort();
        tracing::info!(group_id, removed = removed.len(), "MCP group removed.");
        Ok(RemoveResult {
            group_id: group_id.to_owned(),
            removed,
        })
    }

    /// Every managed server (or one group's), grouped, with the seed's table text.
    pub async fn status(&self, group_id: Option<&str>) -> Result<StatusResult, McpError> {
        let mut filters = vec![spec::managed_filter()];
        if let Some(g) = group_id {
            filters.push(format!("{}={g}", spec::LABEL_GROUP_ID));
        }
        let list = self.agent.docker().find(&filters).await?;
        let mut groups: std::collections::BTreeMap<String, Vec<ServerStatus>> = Default::default();
        for c in &list {
            // Containers kept aside by an unfinished deploy are not servers.
            if plan::is_aside(&c.name) {
                continue;
            }
            let group = c
                .labels
                .get(spec::LABEL_GROUP_ID)
                .cloned()
                .unwrap_or_default();
            let mut status = server_status(c);
            if let Some(state) = self.health.monitored(&c.id, c.running) {
                status.state = state;
            }
            groups.entry(group).or_default().push(status);
        }
        let mut table = String::from("NAMES\t\t\tSTATUS\t\tPORTS\n");
        for servers in groups.values_mut() {
            servers.sort_by(|a, b| a.instance_name.cmp(&b.instance_name));
            for s in servers.iter() {
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}->{}/{}",
                            p.host_ip,
                            p.host_port,
                            p.container_port,
                            protocol_name(p.protocol)
                        )
                    })
                    .collect();
                table.push_str(&format!(
                    "{}\t{}\t{}\n",
                    spec::container_name(&s.instance_name),
                    s.docker_state,
                    ports.join(", ")
                ));
            }
        }
        Ok(StatusResult {
            groups: groups
                .into_iter()
                .map(|(group_id, servers)| GroupStatus { group_id, servers })
                .collect(),
            mcp_servers: table,
        })
    }

    /// Restart one managed server by instance name. Unknown or unmanaged: `NotFound`.
    pub async fn restart(
        &self,
        instance: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RestartResult, McpError> {
        admit(&self.agent)?;
        let docker = self.agent.docker();
        let name = spec::container_name(instance);
        let found = docker
            .inspect(&name)
            .await?
            .filter(|c| spec::is_managed(&c.labels));
        let Some(c) = found else {
            return Err(McpError::NotFound(format!(
                "no MCP server `{instance}` managed by this agent"
            )));
        };
        let group = c
            .labels
            .get(spec::LABEL_GROUP_ID)
            .cloned()
            .unwrap_or_default();
        let lock = self.lock_for(&group);
        let _held = lock.lock().await;
        sink.progress(Step::new(ProgressStep::Restarting, Some(instance)));
        docker.restart(&c.id, STOP_GRACE_S).await?;
        let after = docker.inspect(&c.id).await?.unwrap_or(c);
        let state = deploy::wait_ready(&self.agent, &after, sink.as_ref()).await;
        Ok(RestartResult {
            instance_name: instance.to_owned(),
            container_id: after.id,
            state: match state {
                Ok(()) => ServerState::Ready,
                Err(_) => ServerState::Failed,
            },
        })
    }
}

fn instance_name(c: &Inspected) -> String {
    c.labels
        .get(spec::LABEL_INSTANCE_NAME)
        .cloned()
        .unwrap_or_else(|| c.name.trim_start_matches(spec::CONTAINER_PREFIX).to_owned())
}

fn protocol_name(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

/// `8080/tcp` -> (8080, Tcp).
pub(crate) fn parse_port_key(key: &str) -> Option<(u16, PortProtocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        _ => return None,
    };
    Some((port.parse().ok()?, proto))
}

/// Published ports, or (under host networking, which publishes nothing) the ports the deploy
/// recorded in its label.
pub(crate) fn port_mappings(c: &Inspected) -> Vec<PortMapping> {
    if c.ports.is_empty()
        && let Some(recorded) = c.labels.get(spec::LABEL_HOST_PORTS)
    {
        return recorded
            .split(',')
            .filter_map(|item| {
                let (key, port) = item.split_once('=')?;
                let (container_port, protocol) = parse_port_key(key)?;
                Some(PortMapping {
                    container_port,
                    protocol,
                    host_ip: "127.0.0.1".into(),
                    host_port: port.parse().ok()?,
                })
            })
            .collect();
    }
    c.ports
        .iter()
        .filter_map(|(key, ip, host_port)| {
            let (container_port, protocol) = parse_port_key(key)?;
            Some(PortMapping {
                container_port,
                protocol,
                host_ip: ip.clone(),
                host_port: *host_port,
            })
        })
        .collect()
}

/// The server's state as far as Docker tells it (readiness is probed at deploy and restart).
pub(crate) fn observed_state(c: &Inspected) -> ServerState {
    if c.restarting {
        return ServerState::CrashLooping;
    }
    if c.running {
        return match c.health.as_deref() {
            Some("unhealthy") => ServerState::Degraded,
            Some("starting") => ServerState::Starting,
            _ => ServerState::Ready,
        };
    }
    match c.status.as_str() {
        "created" => ServerState::Starting,
        "exited" | "dead" if c.exit_code.unwrap_or(0) != 0 || c.oom_killed => ServerState::Failed,
        _ => ServerState::Stopped,
    }
}

fn server_status(c: &Inspected) -> ServerStatus {
    ServerStatus {
        instance_name: instance_name(c),
        account_tool_instance_id: c
            .labels
            .get(spec::LABEL_ACCOUNT_TOOL_INSTANCE_ID)
            .cloned()
            .unwrap_or_default(),
        container_id: c.id.clone(),
        image: c.image.clone(),
        state: observed_state(c),
        docker_state: c.status.clone(),
        health: match c.health.as_deref() {
            Some("healthy") => Some(dtma_protocol::ContainerHealth::Healthy),
            Some("unhealthy") => Some(dtma_protocol::ContainerHealth::Unhealthy),
            Some("starting") => Some(dtma_protocol::ContainerHealth::Starting),
            _ => None,
        },
        ports: port_mappings(c),
        created: c.created.clone().unwrap_or_default(),
        started_at: c.started_at.clone(),
        restart_count: c.restart_count.max(0) as u64,
        exit_code: c.exit_code,
        oom_killed: c.oom_killed,
    }
}
