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
use futures_util::FutureExt;

use super::health::HealthBook;
use super::{Origin, ShuttingDown, admit};
use crate::agent::{Agent, role_name};
use crate::audit::Record;
use crate::docker::containers::Inspected;
use crate::docker::spec::{self, SpecError};
use crate::policy::Role;

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
    /// The caller's role may not change MCP servers.
    #[error("{0}")]
    Forbidden(String),
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

/// One lock per group id: requests on a group run one at a time.
#[derive(Default)]
struct GroupLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl GroupLocks {
    fn get(&self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group_id.to_owned())
            .or_default()
            .clone()
    }
}

pub struct McpService {
    agent: Arc<Agent>,
    /// The monitored state of each server (`services::health`), which `status` reports.
    health: Arc<HealthBook>,
    locks: Arc<GroupLocks>,
}

/// Between two attempts to clean up after a deploy that Docker interrupted.
const CLEANUP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

impl McpService {
    pub fn new(agent: Arc<Agent>, health: Arc<HealthBook>) -> McpService {
        McpService {
            agent,
            health,
            locks: Arc::default(),
        }
    }

    fn lock_for(&self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.get(group_id)
    }

    /// Check and normalise a deploy body. Nothing is touched; a bad body names the field.
    pub fn validate(&self, group: &McpGroup) -> Result<GroupSpec, McpError> {
        Ok(GroupSpec::from_wire(group)?)
    }

    /// Changing servers needs the operator or admin role; the decision and the outcome are
    /// audited (never with an environment value).
    async fn authorize(
        &self,
        origin: &Origin,
        action: &'static str,
        target: &str,
    ) -> Result<(), McpError> {
        if let Err(e) = admit(&self.agent) {
            let e = McpError::from(e);
            self.count(origin, action, Err(&e));
            return Err(e);
        }
        let check = Self::may_change(&origin.caller, action);
        if let Err(e) = &check {
            self.count(origin, action, Err(e));
        }
        let (decision, rule) = if check.is_ok() {
            ("allowed", "allowed")
        } else {
            ("denied", "role_diagnostics")
        };
        self.audit(origin, action, target, decision, rule).await;
        check
    }

    /// Whether `caller` may run `action` (deploy, remove, restart): operator or admin. The
    /// local API asks before it even reads the body.
    pub fn may_change(caller: &crate::auth::Caller, action: &str) -> Result<(), McpError> {
        if caller.role == Role::Diagnostics {
            return Err(McpError::Forbidden(format!(
                "token `{}` has the diagnostics role; `{action}` needs operator or admin",
                caller.name
            )));
        }
        Ok(())
    }

    async fn audit(&self, origin: &Origin, action: &str, target: &str, decision: &str, rule: &str) {
        self.agent
            .audit(&Record {
                time: crate::now_rfc3339(),
                source: origin.source.name(),
                caller: &origin.caller.name,
                role: role_name(origin.caller.role),
                action,
                command: None,
                profile: None,
                enforcement: None,
                target: Some(target),
                decision,
                rule,
                request_id: origin.request_id.as_deref(),
                exit_code: None,
                signal: None,
                duration_ms: None,
            })
            .await;
    }

    /// Count an MCP change's end in `dtma_requests_total`.
    fn count(&self, origin: &Origin, action: &'static str, result: Result<(), &McpError>) {
        use crate::metrics::Outcome;
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(McpError::Forbidden(_)) => Outcome::Denied,
            Err(McpError::ShuttingDown(_)) => Outcome::Refused,
            Err(_) => Outcome::Error,
        };
        self.agent
            .metrics()
            .request(origin.source.name(), action, outcome);
    }

    /// Authorize, run `work`, and audit how it ended.
    async fn audited<T>(
        &self,
        origin: &Origin,
        action: &'static str,
        target: &str,
        work: impl Future<Output = Result<T, McpError>>,
    ) -> Result<T, McpError> {
        self.authorize(origin, action, target).await?;
        let result = work.await;
        self.audit_end(origin, action, target, &result).await;
        result
    }

    /// The audit record of how a change ended: `finished`, with the outcome as its rule; the
    /// end is counted too.
    async fn audit_end<T>(
        &self,
        origin: &Origin,
        action: &'static str,
        target: &str,
        result: &Result<T, McpError>,
    ) {
        self.count(origin, action, result.as_ref().map(|_| ()));
        let how = match result {
            Ok(_) => "ok",
            Err(e) => error_name(e),
        };
        self.audit(origin, action, target, "finished", how).await;
    }

    /// Bring the group to `spec` as one transaction (see `deploy.rs`).
    pub async fn deploy(
        &self,
        origin: &Origin,
        spec: GroupSpec,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<dtma_protocol::DeployResult, McpError> {
        let group_id = spec.group_id.clone();
        self.authorize(origin, "mcp_deploy", &group_id).await?;
        let lock = self.lock_for(&spec.group_id);
        let held = lock.lock().await;
        let result = deploy::run(&self.agent, spec, sink).await;
        drop(held);
        if result.is_err() {
            self.clean_up_when_docker_answers();
        }
        self.audit_end(origin, "mcp_deploy", &group_id, &result)
            .await;
        result
    }

    /// A deploy that failed may have been cut short by the daemon (its rollback then could not
    /// run): retry the clean-up in the background until Docker answers (or shutdown).
    fn clean_up_when_docker_answers(&self) {
        let agent = self.agent.clone();
        let locks = self.locks.clone();
        let stop = agent.work_token();
        self.agent.spawn(async move {
            loop {
                if !matches!(
                    reconcile(&agent, &locks).await,
                    Err(McpError::DockerUnavailable(_))
                ) {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CLEANUP_RETRY) => {}
                }
            }
        });
    }

    /// Finish what deploys interrupted by an agent or daemon restart left behind (see
    /// `plan.rs`): containers under a `-dtma-new-` name were never committed and are removed;
    /// a `-dtma-old-` container gets its final name back and is started, unless a committed
    /// container already holds that name (then the deploy had committed and it is removed).
    /// Returns how many containers it touched.
    pub async fn reconcile(&self) -> Result<usize, McpError> {
        reconcile(&self.agent, &self.locks).await
    }

    /// Stop and remove every container of `group_id`. Unknown group: `NotFound`.
    pub async fn remove(
        &self,
        origin: &Origin,
        group_id: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RemoveResult, McpError> {
        self.audited(
            origin,
            "mcp_remove",
            group_id,
            self.remove_group(group_id, sink),
        )
        .await
    }

    async fn remove_group(
        &self,
        group_id: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RemoveResult, McpError> {
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
        // All containers at once: each may take its whole stop grace.
        let stops: Vec<futures_util::future::BoxFuture<'_, Result<String, McpError>>> = members
            .iter()
            .map(|c| {
                let sink = sink.clone();
                async move {
                    let name = instance_name(c);
                    sink.progress(Step::new(ProgressStep::Stopping, Some(&name)));
                    docker.stop(&c.id, STOP_GRACE_S).await?;
                    docker.remove(&c.id).await?;
                    sink.progress(Step::new(ProgressStep::Removed, Some(&name)));
                    Ok(name)
                }
                .boxed()
            })
            .collect();
        let mut removed = futures_util::future::try_join_all(stops).await?;
        removed.sort();
        // The group's shared network, if it had one (a network in use elsewhere stays).
        if let Err(e) = docker.remove_network(&spec::group_network(group_id)).await {
            tracing::warn!(group_id, error = %e, "The group's network could not be removed.");
        }
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
        origin: &Origin,
        instance: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RestartResult, McpError> {
        self.audited(
            origin,
            "mcp_restart",
            instance,
            self.restart_server(instance, sink),
        )
        .await
    }

    async fn restart_server(
        &self,
        instance: &str,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<RestartResult, McpError> {
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

async fn reconcile(agent: &Agent, locks: &GroupLocks) -> Result<usize, McpError> {
    let docker = agent.docker();
    let mut touched = 0;
    // Only this agent's: another agent on the same daemon may be mid-deploy.
    let mine = format!("{}={}", spec::LABEL_AGENT_ID, agent.config().agent_id);
    for c in docker.find(&[spec::managed_filter(), mine]).await? {
        let Some((final_name, is_new)) = plan::leftover(&c.name) else {
            continue;
        };
        let group = c
            .labels
            .get(spec::LABEL_GROUP_ID)
            .cloned()
            .unwrap_or_default();
        let lock = locks.get(&group);
        let _held = lock.lock().await;
        // Read again under the lock: a deploy of this group may have finished in between.
        if docker.inspect(&c.id).await?.is_none() {
            continue;
        }
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

/// A stable name of each failure, for audit records and logs.
fn error_name(e: &McpError) -> &'static str {
    match e {
        McpError::ShuttingDown(_) => "shutting_down",
        McpError::Invalid(_) => "invalid_request",
        McpError::DockerUnavailable(_) => "docker_unavailable",
        McpError::Forbidden(_) => "forbidden",
        McpError::NotFound(_) => "not_found",
        McpError::Conflict(_) => "conflict",
        McpError::DeployFailed { .. } => "deploy_failed",
        McpError::Docker(_) => "docker_error",
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
