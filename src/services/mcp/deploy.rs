//! A group deploy as one transaction.
//!
//! 1. **Plan** (nothing touched): per server, the container under its final name is absent
//!    (create), managed by this group with the same spec hash and running (unchanged), managed by
//!    this group otherwise (replace), or not ours (conflict: the whole deploy is refused).
//! 2. **Pull** the images that are missing, at most `max_concurrent` at a time.
//! 3. **Apply**, at most `max_concurrent` servers at a time: a replaced container is stopped and
//!    renamed aside; the new one is created under a temporary name, started and probed until
//!    ready.
//! 4. **Commit** when every server is ready: new containers take their final names, replaced ones
//!    are removed, servers no longer in the group are removed. **Roll back** otherwise: new
//!    containers are removed, replaced ones get their names back and are started again.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::{
    DeployFailure, DeployOutcome, DeployResult, PortMapping, PortProtocol, ProgressStep,
    ServerAction, ServerOutcome, ServerState,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tracing::{info, warn};

use super::plan::{self, GroupSpec};
use super::{McpError, ProgressSink, STOP_GRACE_S, Step, port_mappings};
use crate::agent::Agent;
use crate::docker::containers::{CreateSpec, Inspected};
use crate::docker::spec::{self, Protocol, ServerSpec, Transport};
use crate::docker::{DockerClient, ready};

/// Between two readiness probes of a starting server.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The least time between two `pulling` steps of one image.
const PULL_PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// One probe's own limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the plan decided for one server.
enum Action {
    Create,
    Unchanged(Inspected),
    Replace(Inspected),
}

/// How applying one server went.
struct Applied {
    index: usize,
    /// The new container (under its temporary name), if one was created.
    new_id: Option<String>,
    /// The replaced container, renamed aside, and whether it was running.
    old: Option<(Inspected, bool)>,
    ports: Vec<PortMapping>,
    result: Result<(), String>,
}

pub(super) async fn run(
    agent: &Arc<Agent>,
    group: GroupSpec,
    sink: Arc<dyn ProgressSink>,
) -> Result<DeployResult, McpError> {
    let docker = agent.docker();
    sink.progress(Step::new(ProgressStep::Validated, None));

    // 1. Plan.
    // One inspect per server, all at once (an unchanged redeploy is nothing but these).
    let plans: Vec<BoxFuture<'_, Result<Action, McpError>>> = group
        .servers
        .iter()
        .map(|s| plan_server(docker, &group.group_id, s).boxed())
        .collect();
    let actions = futures_util::future::try_join_all(plans).await?;
    let wanted: BTreeSet<&str> = group
        .servers
        .iter()
        .map(|s| s.container_name.as_str())
        .collect();
    let stale: Vec<Inspected> = docker
        .find(&[
            spec::managed_filter(),
            format!("{}={}", spec::LABEL_GROUP_ID, group.group_id),
        ])
        .await?
        .into_iter()
        .filter(|c| !wanted.contains(c.name.as_str()) && !plan::is_aside(&c.name))
        .collect();
    let all_unchanged = actions.iter().all(|a| matches!(a, Action::Unchanged(_)));
    if all_unchanged && stale.is_empty() {
        let servers = group
            .servers
            .iter()
            .zip(&actions)
            .map(|(s, a)| {
                sink.progress(Step::new(ProgressStep::Unchanged, Some(&s.instance_name)));
                let Action::Unchanged(c) = a else {
                    unreachable!("all actions are Unchanged here")
                };
                outcome(
                    s,
                    ServerAction::Unchanged,
                    Some(c.id.clone()),
                    port_mappings(c),
                )
            })
            .collect();
        info!(group_id = %group.group_id, "MCP group unchanged.");
        return Ok(DeployResult {
            group_id: group.group_id,
            outcome: DeployOutcome::Unchanged,
            servers,
        });
    }

    // 2. Pull what is missing.
    let mut images: Vec<&spec::ImageRef> = Vec::new();
    for (s, a) in group.servers.iter().zip(&actions) {
        if !matches!(a, Action::Unchanged(_)) && !images.iter().any(|i| **i == s.image) {
            images.push(&s.image);
        }
    }
    // Boxed with an explicit `Send`: closures over borrowed data in stream combinators
    // otherwise defeat the compiler's Send inference (rust-lang/rust#102211).
    let pulls: Vec<BoxFuture<'_, Result<(), String>>> = images
        .into_iter()
        .map(|image| pull_if_missing(docker, image, sink.as_ref()).boxed())
        .collect();
    let pulls = futures_util::stream::iter(pulls)
        .buffer_unordered(group.max_concurrent)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = pulls.into_iter().find(Result::is_err) {
        return Err(failed(
            &group.group_id,
            e,
            untouched(&group.servers, &actions),
        ));
    }

    // 3. Apply.
    let deploy_id = format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
    let agent_id = agent.config().agent_id.clone();
    // The operator's network (host, none, a name) wins; otherwise a group that asks for shared
    // networking gets a bridge network of its own, created on first use.
    let mut created_network = None;
    let network = match (&agent.config().mcp_network, group.shared_networking) {
        (Some(n), _) => Some(n.clone()),
        (None, false) => None,
        (None, true) => {
            let name = spec::group_network(&group.group_id);
            if !docker.find_network(&name).await? {
                let labels = [
                    (spec::LABEL_MANAGED, "true".to_owned()),
                    (spec::LABEL_GROUP_ID, group.group_id.clone()),
                    (spec::LABEL_AGENT_ID, agent_id.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                if let Err(e) = docker.ensure_network(&name, labels).await {
                    let servers = group
                        .servers
                        .iter()
                        .map(|s| outcome(s, ServerAction::NotStarted, None, Vec::new()))
                        .collect();
                    return Err(failed(
                        &group.group_id,
                        format!("creating the group's network `{name}`: {e}"),
                        servers,
                    ));
                }
                created_network = Some(name.clone());
            }
            Some(name)
        }
    };
    let work: Vec<BoxFuture<'_, Applied>> = group
        .servers
        .iter()
        .zip(actions.iter())
        .enumerate()
        .filter_map(|(index, (s, a))| {
            let old = match a {
                Action::Unchanged(_) => return None,
                Action::Create => None,
                Action::Replace(c) => Some(c.clone()),
            };
            let ctx = ApplyCtx {
                group_id: &group.group_id,
                agent_id: &agent_id,
                deploy_id: &deploy_id,
                network: network.as_deref(),
            };
            Some(apply(agent, ctx, index, s, old, sink.as_ref()).boxed())
        })
        .collect();
    let applied = futures_util::stream::iter(work)
        .buffer_unordered(group.max_concurrent)
        .collect::<Vec<_>>()
        .await;

    // 4. Commit or roll back.
    if let Some(bad) = applied.iter().find(|a| a.result.is_err()) {
        let message = format!(
            "server `{}` failed: {}",
            group.servers[bad.index].instance_name,
            bad.result.as_ref().err().map_or("", String::as_str)
        );
        let mut servers = untouched(&group.servers, &actions);
        for a in &applied {
            let s = &group.servers[a.index];
            let action = rollback(docker, s, a, sink.as_ref()).await;
            let mut o = outcome(s, action, None, Vec::new());
            if let Err(why) = &a.result {
                o.message = Some(why.clone());
            }
            servers[a.index] = o;
        }
        if let Some(name) = &created_network {
            let _ = docker.remove_network(name).await;
        }
        warn!(group_id = %group.group_id, %message, "MCP group deploy failed and was rolled back.");
        return Err(McpError::DeployFailed {
            message,
            details: DeployFailure {
                group_id: group.group_id,
                servers,
            },
        });
    }
    let mut servers: Vec<ServerOutcome> = Vec::with_capacity(group.servers.len());
    for (s, a) in group.servers.iter().zip(&actions) {
        if let Action::Unchanged(c) = a {
            servers.push(outcome(
                s,
                ServerAction::Unchanged,
                Some(c.id.clone()),
                port_mappings(c),
            ));
            continue;
        }
        let Some(done) = applied
            .iter()
            .find(|x| group.servers[x.index].instance_name == s.instance_name)
        else {
            continue;
        };
        let id = done.new_id.clone().unwrap_or_default();
        docker.rename(&id, &s.container_name).await?;
        let action = match &done.old {
            Some((old, _)) => {
                docker.remove(&old.id).await?;
                ServerAction::Replaced
            }
            None => ServerAction::Created,
        };
        if action == ServerAction::Replaced {
            sink.progress(Step::new(ProgressStep::Replaced, Some(&s.instance_name)));
        }
        servers.push(outcome(s, action, Some(id), done.ports.clone()));
    }
    for c in stale {
        docker.stop(&c.id, STOP_GRACE_S).await?;
        docker.remove(&c.id).await?;
        sink.progress(Step::new(ProgressStep::Removed, Some(&c.name)));
    }
    info!(group_id = %group.group_id, deploy_id, "MCP group deployed.");
    Ok(DeployResult {
        group_id: group.group_id,
        outcome: DeployOutcome::Deployed,
        servers,
    })
}

async fn plan_server(
    docker: &DockerClient,
    group_id: &str,
    s: &ServerSpec,
) -> Result<Action, McpError> {
    let Some(c) = docker.inspect(&s.container_name).await? else {
        return Ok(Action::Create);
    };
    if !spec::is_managed(&c.labels) {
        return Err(McpError::Conflict(format!(
            "a container named `{}` exists and is not managed by this agent; it was left untouched",
            s.container_name
        )));
    }
    let owner = c
        .labels
        .get(spec::LABEL_GROUP_ID)
        .map(String::as_str)
        .unwrap_or("");
    if owner != group_id {
        return Err(McpError::Conflict(format!(
            "instance `{}` belongs to group `{owner}`; remove it there first",
            s.instance_name
        )));
    }
    let same = c.labels.get(spec::LABEL_SPEC_HASH) == Some(&s.hash(group_id));
    if same && (c.running || c.restarting) {
        Ok(Action::Unchanged(c))
    } else {
        Ok(Action::Replace(c))
    }
}

async fn pull_if_missing(
    docker: &DockerClient,
    image: &spec::ImageRef,
    sink: &dyn ProgressSink,
) -> Result<(), String> {
    let reference = image.reference();
    if docker
        .has_image(&reference)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    sink.progress(Step::new(ProgressStep::Pulling, None).with_message(reference.clone()));
    let mut stream = docker.pull(&image.pull_name(), &image.pull_tag());
    // Docker reports every layer's every chunk: pass on at most one step a second.
    let mut last = tokio::time::Instant::now();
    while let Some(item) = stream.next().await {
        let p = item.map_err(|e| format!("pulling `{reference}`: {e}"))?;
        if let Some(current) = p.current
            && last.elapsed() >= PULL_PROGRESS_EVERY
        {
            last = tokio::time::Instant::now();
            let mut step = Step::new(ProgressStep::Pulling, None).with_message(reference.clone());
            step.bytes = Some((current, p.total));
            sink.progress(step);
        }
    }
    sink.progress(Step::new(ProgressStep::Pulled, None).with_message(reference));
    Ok(())
}

struct ApplyCtx<'a> {
    group_id: &'a str,
    agent_id: &'a str,
    deploy_id: &'a str,
    network: Option<&'a str>,
}

async fn apply(
    agent: &Arc<Agent>,
    ctx: ApplyCtx<'_>,
    index: usize,
    s: &ServerSpec,
    old: Option<Inspected>,
    sink: &dyn ProgressSink,
) -> Applied {
    let docker = agent.docker();
    let mut applied = Applied {
        index,
        new_id: None,
        old: None,
        ports: Vec::new(),
        result: Ok(()),
    };
    // Host ports: as asked, else those the old container had, else a free one (kept across
    // restarts by Docker and across redeploys by this rule).
    let ports = host_ports(s, old.as_ref(), ctx.network);
    if let Some(old) = old {
        let was_running = old.running || old.restarting;
        if let Err(e) = docker.stop(&old.id, STOP_GRACE_S).await {
            applied.result = Err(format!("stopping the replaced container: {e}"));
            return applied;
        }
        if let Err(e) = docker
            .rename(&old.id, &plan::old_name(&s.container_name, ctx.deploy_id))
            .await
        {
            applied.result = Err(format!("setting the replaced container aside: {e}"));
            // Still stopped under its name: rollback starts it again.
            applied.old = Some((old, was_running));
            return applied;
        }
        applied.old = Some((old, was_running));
    }
    let create = create_spec(s, &ctx, &ports);
    let id = match docker.create(&create).await {
        Ok(id) => id,
        Err(e) => {
            applied.result = Err(format!("creating the container: {e}"));
            return applied;
        }
    };
    applied.new_id = Some(id.clone());
    sink.progress(Step::new(ProgressStep::Created, Some(&s.instance_name)));
    if let Err(e) = docker.start(&id).await {
        applied.result = Err(format!("starting the container: {e}"));
        return applied;
    }
    sink.progress(Step::new(ProgressStep::Started, Some(&s.instance_name)));
    applied.ports = ports
        .iter()
        .map(|(p, ip, hp)| PortMapping {
            container_port: p.container_port,
            protocol: match p.protocol {
                Protocol::Tcp => PortProtocol::Tcp,
                Protocol::Udp => PortProtocol::Udp,
            },
            host_ip: ip.to_string(),
            host_port: *hp,
        })
        .collect();
    let probe = ProbeTarget::of(s, &ports);
    if let Err(why) = wait_until_ready(docker, &id, probe, s.readiness_timeout).await {
        sink.progress(
            Step::new(ProgressStep::Failed, Some(&s.instance_name)).with_message(why.clone()),
        );
        applied.result = Err(why);
        return applied;
    }
    sink.progress(Step::new(ProgressStep::Ready, Some(&s.instance_name)));
    applied
}

/// Put things back for one server. Returns what happened to it.
async fn rollback(
    docker: &DockerClient,
    s: &ServerSpec,
    a: &Applied,
    sink: &dyn ProgressSink,
) -> ServerAction {
    if let Some(id) = &a.new_id
        && let Err(e) = docker.remove(id).await
    {
        warn!(server = %s.instance_name, error = %e, "Rollback could not remove a new container.");
    }
    match &a.old {
        Some((old, was_running)) => {
            let _ = docker.rename(&old.id, &s.container_name).await;
            if *was_running && let Err(e) = docker.start(&old.id).await {
                warn!(server = %s.instance_name, error = %e, "Rollback could not restart the replaced container.");
            }
            sink.progress(Step::new(ProgressStep::Restored, Some(&s.instance_name)));
            ServerAction::Restored
        }
        None if a.result.is_err() => {
            sink.progress(Step::new(ProgressStep::RolledBack, Some(&s.instance_name)));
            ServerAction::Failed
        }
        None => {
            sink.progress(Step::new(ProgressStep::RolledBack, Some(&s.instance_name)));
            ServerAction::RolledBack
        }
    }
}

/// `(port spec, host ip, host port)` for every port of the server.
fn host_ports(
    s: &ServerSpec,
    old: Option<&Inspected>,
    network: Option<&str>,
) -> Vec<(spec::PortSpec, IpAddr, u16)> {
    let host_network = network == Some("host");
    s.ports
        .iter()
        .map(|p| {
            if host_network {
                // The server binds the host's port itself.
                return (
                    p.clone(),
                    p.host_ip,
                    p.host_port.unwrap_or(p.container_port),
                );
            }
            let key = port_key(p);
            let port = p
                .host_port
                .or_else(|| {
                    old.and_then(|o| {
                        o.ports
                            .iter()
                            .find(|(k, _, _)| *k == key)
                            .map(|(_, _, hp)| *hp)
                    })
                })
                .unwrap_or_else(|| free_port(p.host_ip));
            (p.clone(), p.host_ip, port)
        })
        .collect()
}

fn port_key(p: &spec::PortSpec) -> String {
    match p.protocol {
        Protocol::Tcp => format!("{}/tcp", p.container_port),
        Protocol::Udp => format!("{}/udp", p.container_port),
    }
}

/// A port nobody listens on now (the kernel's pick for port 0). Docker binds it right after;
/// a race with another program is reported as a start failure and rolled back.
fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn create_spec(
    s: &ServerSpec,
    ctx: &ApplyCtx<'_>,
    ports: &[(spec::PortSpec, IpAddr, u16)],
) -> CreateSpec {
    let host_ports: Vec<(String, u16)> =
        ports.iter().map(|(p, _, hp)| (port_key(p), *hp)).collect();
    let labels = spec::labels(s, ctx.group_id, ctx.agent_id, ctx.deploy_id, &host_ports);
    CreateSpec {
        name: plan::new_name(&s.container_name, ctx.deploy_id),
        image: s.image.reference(),
        env: s.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels,
        ports: if ctx.network == Some("host") {
            Vec::new()
        } else {
            ports
                .iter()
                .map(|(p, ip, hp)| (port_key(p), ip.to_string(), *hp))
                .collect()
        },
        memory_bytes: s.limits.memory_bytes as i64,
        nano_cpus: s.limits.nano_cpus,
        pids: s.limits.pids,
        cap_add: s.cap_add.clone(),
        network: ctx.network.map(str::to_owned),
    }
}

/// Where a server's MCP endpoint answers, for the probe.
#[derive(Debug, Clone)]
pub(super) struct ProbeTarget {
    addr: Option<SocketAddr>,
    path: String,
}

impl ProbeTarget {
    fn of(s: &ServerSpec, ports: &[(spec::PortSpec, IpAddr, u16)]) -> ProbeTarget {
        let addr = match s.transport {
            Transport::Stdio => None,
            Transport::Http | Transport::Sse => ports
                .iter()
                .find(|(p, _, _)| p.protocol == Protocol::Tcp)
                .map(|(_, ip, port)| {
                    let ip = if ip.is_unspecified() {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        *ip
                    };
                    SocketAddr::new(ip, *port)
                }),
        };
        ProbeTarget {
            addr,
            path: s.endpoint_path.clone(),
        }
    }
}

/// Poll until the container runs and (for HTTP/SSE) answers an MCP handshake; fail early when
/// it exits.
async fn wait_until_ready(
    docker: &DockerClient,
    id: &str,
    probe: ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("not probed yet");
    loop {
        match docker.inspect(id).await {
            Ok(Some(c)) if !c.running && !c.restarting && c.status != "created" => {
                return Err(format!(
                    "the container exited (exit code {}{}) before it was ready",
                    c.exit_code.unwrap_or(-1),
                    if c.oom_killed { ", out of memory" } else { "" }
                ));
            }
            Ok(Some(c)) if c.running => match probe.addr {
                None => return Ok(()),
                Some(addr) => match ready::probe(addr, &probe.path, PROBE_TIMEOUT).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
            },
            Ok(_) => {}
            Err(e) => return Err(format!("inspecting the container: {e}")),
        }
        if tokio::time::Instant::now() + PROBE_EVERY > deadline {
            return Err(format!(
                "not ready within {} ms: {last}",
                timeout.as_millis()
            ));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// After a restart: wait until the server is ready again, with its deployed readiness rules.
pub(super) async fn wait_ready(
    agent: &Arc<Agent>,
    c: &Inspected,
    sink: &dyn ProgressSink,
) -> Result<(), String> {
    let transport = c.labels.get(spec::LABEL_TRANSPORT).map(String::as_str);
    let path = c
        .labels
        .get(spec::LABEL_ENDPOINT_PATH)
        .cloned()
        .unwrap_or_else(|| "/mcp".into());
    let addr = match transport {
        Some("stdio") => None,
        _ => port_mappings(c)
            .into_iter()
            .find(|p| p.protocol == PortProtocol::Tcp)
            .map(|p| {
                let ip: IpAddr = p.host_ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                let ip = if ip.is_unspecified() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    ip
                };
                SocketAddr::new(ip, p.host_port)
            }),
    };
    let name = c.labels.get(spec::LABEL_INSTANCE_NAME).cloned();
    let r = wait_until_ready(
        agent.docker(),
        &c.id,
        ProbeTarget { addr, path },
        Duration::from_secs(60),
    )
    .await;
    let step = if r.is_ok() {
        ProgressStep::Ready
    } else {
        ProgressStep::Failed
    };
    sink.progress(Step::new(step, name.as_deref()));
    r
}

fn outcome(
    s: &ServerSpec,
    action: ServerAction,
    container_id: Option<String>,
    ports: Vec<PortMapping>,
) -> ServerOutcome {
    let endpoint = match s.transport {
        Transport::Stdio => None,
        _ => ports
            .iter()
            .find(|p| p.protocol == PortProtocol::Tcp)
            .map(|p| {
                let host = if p.host_ip == "0.0.0.0" || p.host_ip.is_empty() {
                    "127.0.0.1"
                } else {
                    &p.host_ip
                };
                format!("http://{host}:{}{}", p.host_port, s.endpoint_path)
            }),
    };
    let state = match action {
        ServerAction::Created | ServerAction::Replaced | ServerAction::Unchanged => {
            Some(ServerState::Ready)
        }
        ServerAction::Restored => Some(ServerState::Ready),
        ServerAction::Failed => Some(ServerState::Failed),
        ServerAction::RolledBack | ServerAction::NotStarted => None,
    };
    ServerOutcome {
        instance_name: s.instance_name.clone(),
        account_tool_instance_id: s.account_tool_instance_id.clone(),
        action,
        state,
        container_id,
        container_name: s.container_name.clone(),
        ports,
        endpoint,
        message: None,
    }
}

/// Each server as it stands before anything was applied: unchanged ones as they run, the others
/// not started.
fn untouched(servers: &[ServerSpec], actions: &[Action]) -> Vec<ServerOutcome> {
    servers
        .iter()
        .zip(actions)
        .map(|(s, a)| match a {
            Action::Unchanged(c) => outcome(
                s,
                ServerAction::Unchanged,
                Some(c.id.clone()),
                port_mappings(c),
            ),
            _ => outcome(s, ServerAction::NotStarted, None, Vec::new()),
        })
        .collect()
}

fn failed(group_id: &str, why: String, servers: Vec<ServerOutcome>) -> McpError {
    McpError::DeployFailed {
        message: why,
        details: DeployFailure {
            group_id: group_id.to_owned(),
            servers,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(ports: serde_json::Value) -> ServerSpec {
        ServerSpec::from_input(
            "servers[0]",
            &spec::ServerInput {
                account_tool_instance_id: "ati-1",
                docker_image_url: "example/mcp:1",
                instance_name_on_toolbox: "s1",
                mcp_endpoint_path: None,
                mcp_transport_type: None,
                port_bindings: Some(&ports),
                environment_variables: None,
                resource_limits: None,
                cap_add: None,
                readiness_timeout_ms: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn host_ports_the_agent_picks_stay_the_same_across_redeploys() {
        let s = server(serde_json::json!({ "8080": 0 }));
        let first = host_ports(&s, None, None);
        let picked = first[0].2;
        assert_ne!(picked, 0);
        // The replaced container had it: the new one gets it again.
        let old = Inspected {
            ports: vec![("8080/tcp".into(), "127.0.0.1".into(), picked)],
            ..Inspected::default()
        };
        assert_eq!(host_ports(&s, Some(&old), None)[0].2, picked);
        // A port the body names wins over the old one.
        let fixed = server(serde_json::json!({ "8080": 18080 }));
        assert_eq!(host_ports(&fixed, Some(&old), None)[0].2, 18080);
        // Under host networking the server binds its own port: the container port.
        assert_eq!(host_ports(&s, None, Some("host"))[0].2, 8080);
    }

    #[test]
    fn the_probe_targets_the_first_tcp_port_on_loopback_for_wildcard_binds() {
        let s = server(
            serde_json::json!({ "9000/udp": 9000, "8080": [{"HostPort": "18081", "HostIp": "0.0.0.0"}] }),
        );
        let ports = host_ports(&s, None, None);
        let target = ProbeTarget::of(&s, &ports);
        assert_eq!(target.addr, Some("127.0.0.1:18081".parse().unwrap()));
        assert_eq!(target.path, "/mcp");
    }
}
