//! `DiagnosticsService`: the system, Docker, MCP and log views (the seed's shapes), the
//! console's `/status`, and the channel's heartbeat. Filled from sysinfo, bollard and the agent's
//! own state rather than by shelling out (except `journalctl`, which has no library here).
//!
//! One mapping from a Docker container to a tool instance ([`tool_status`]) serves both the
//! heartbeat's `tool_statuses` and `/status`'s `tool_instances`.

use std::sync::Arc;
use std::time::Duration;

use sysinfo::{Disks, ProcessesToUpdate, System};

use super::health::HealthBook;
use crate::agent::Agent;
use crate::docker::{self, ContainerInfo};

/// Log lines a caller may ask for at once.
pub const MAX_LOG_LINES: usize = 10_000;
/// The heartbeat never waits longer than this on Docker.
const HEARTBEAT_DOCKER_BUDGET: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`lines` must be a whole number from 1 to {MAX_LOG_LINES}, got {0}")]
    BadLines(usize),
    #[error(transparent)]
    Docker(#[from] docker::Error),
    /// The blocking sampler task failed (a bug).
    #[error("the system sample failed: {0}")]
    Internal(String),
}

pub struct DiagnosticsService {
    agent: Arc<Agent>,
    /// Each MCP server's monitored state, for the heartbeat.
    health: Arc<HealthBook>,
}

impl DiagnosticsService {
    pub fn new(agent: Arc<Agent>, health: Arc<HealthBook>) -> DiagnosticsService {
        DiagnosticsService { agent, health }
    }

    /// `GET /diagnostics/system`: sampled off the reactor (sysinfo reads /proc).
    pub async fn system(&self) -> Result<serde_json::Value, Error> {
        let a = self.agent.clone();
        tokio::task::spawn_blocking(move || system(&a))
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// `GET /diagnostics/logs?lines=N`.
    pub async fn logs(&self, lines: usize) -> Result<serde_json::Value, Error> {
        if !(1..=MAX_LOG_LINES).contains(&lines) {
            return Err(Error::BadLines(lines));
        }
        Ok(logs(&self.agent, lines).await)
    }

    /// `GET /diagnostics/docker`.
    pub async fn docker(&self) -> Result<serde_json::Value, Error> {
        Ok(self.agent.docker().diagnostics().await?)
    }

    /// `GET /status`: the console's health monitor shape.
    pub async fn console_status(&self) -> serde_json::Value {
        console_status(&self.agent, &self.health).await
    }

    /// MCP containers as the heartbeat's `tool_statuses`; empty when Docker is unreachable or
    /// slower than 2 s (the heartbeat must not wait on it).
    pub async fn tool_statuses(&self) -> Vec<dtma_protocol::ToolStatus> {
        let list = tokio::time::timeout(
            HEARTBEAT_DOCKER_BUDGET,
            self.agent.docker().containers(true),
        )
        .await;
        let Ok(Ok(list)) = list else {
            return Vec::new();
        };
        list.into_iter()
            .map(|c| {
                // A paused container still runs (as `docker inspect` says).
                let running = matches!(c.state.as_str(), "running" | "paused");
                let state = self.health.monitored(&c.id, running);
                tool_status(c, state)
            })
            .collect()
    }

    /// The channel's `status` heartbeat; `streams` is the channel's (running, held) count.
    pub async fn heartbeat(&self, streams: (u64, u64)) -> Option<dtma_protocol::Status> {
        let tools = self.tool_statuses().await;
        let a = self.agent.clone();
        // sysinfo reads /proc: keep it off the reactor.
        tokio::task::spawn_blocking(move || {
            let mut status = a.sampler().status(a.uptime().as_secs(), streams);
            status.tool_statuses = tools;
            status.sandbox = Some(a.enforcement().clone());
            status
        })
        .await
        .ok()
    }
}

/// A container as a tool instance of the backend's (`status_on_toolbox` in its vocabulary).
/// `state`, the server's monitored state, goes into `runtime_details.server_state` when known.
pub fn tool_status(
    c: ContainerInfo,
    state: Option<dtma_protocol::ServerState>,
) -> dtma_protocol::ToolStatus {
    let mut runtime_details = serde_json::json!({
        "container_id": c.id,
        "image": c.image,
        "state": c.state,
        "status": c.status,
        "ports": c.ports,
        "created": c.created,
    });
    if let Some(state) = state {
        runtime_details["server_state"] = serde_json::json!(state);
    }
    dtma_protocol::ToolStatus {
        account_tool_instance_id: c
            .labels
            .get(docker::spec::LABEL_ACCOUNT_TOOL_INSTANCE_ID)
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
        runtime_details,
        instance_name_on_toolbox: c.name,
    }
}

fn system(a: &Agent) -> serde_json::Value {
    let snap = a.sampler().sample();
    let up = System::uptime();
    let uptime = format!(
        "up {} days, {:02}:{:02}, load average: {:.2}, {:.2}, {:.2}",
        up / 86400,
        (up % 86400) / 3600,
        (up % 3600) / 60,
        snap.load_average[0],
        snap.load_average[1],
        snap.load_average[2]
    );

    let mut disk_usage = String::from("Filesystem      Size  Used Avail Use% Mounted on\n");
    for d in Disks::new_with_refreshed_list().list() {
        let total = d.total_space();
        let avail = d.available_space();
        let used = total.saturating_sub(avail);
        let pct = (used * 100).checked_div(total).unwrap_or(0);
        disk_usage.push_str(&format!(
            "{:<15} {:>5} {:>5} {:>5} {:>3}% {}\n",
            d.name().to_string_lossy(),
            human(total),
            human(used),
            human(avail),
            pct,
            d.mount_point().display()
        ));
    }

    let mut sys = System::new();
    sys.refresh_memory();
    let memory_info = format!(
        "               total        used        free   available\nMem:    {:>12} {:>11} {:>11} {:>11}\nSwap:   {:>12} {:>11} {:>11}",
        human(sys.total_memory()),
        human(sys.used_memory()),
        human(sys.free_memory()),
        human(sys.available_memory()),
        human(sys.total_swap()),
        human(sys.used_swap()),
        human(sys.free_swap()),
    );

    // CPU usage needs two samples of every process.
    sys.refresh_processes(ProcessesToUpdate::All, true);
    std::thread::sleep(Duration::from_millis(200));
    sys.refresh_processes(ProcessesToUpdate::All, true);
    let total_mem = sys.total_memory().max(1) as f64;
    let mut procs: Vec<_> = sys.processes().values().collect();
    procs.sort_by(|x, y| {
        y.cpu_usage()
            .total_cmp(&x.cpu_usage())
            .then(y.memory().cmp(&x.memory()))
    });
    let mut top_processes = String::from("PID      %CPU  %MEM       RSS COMMAND\n");
    for p in procs.iter().take(15) {
        top_processes.push_str(&format!(
            "{:<8} {:>5.1} {:>5.1} {:>9} {}\n",
            p.pid().as_u32(),
            p.cpu_usage(),
            p.memory() as f64 * 100.0 / total_mem,
            human(p.memory()),
            p.name().to_string_lossy()
        ));
    }

    let listen = a.http_addr().unwrap_or(a.config().listen).to_string();
    let dtma_port_status = format!(
        "tcp LISTEN {listen} {}/dtma; control channel: {}",
        std::process::id(),
        match (&a.config().channel, a.link_up()) {
            (None, _) => "not configured (local-only)".to_owned(),
            (Some(_), true) => "connected".to_owned(),
            (Some(_), false) => "disconnected (reconnecting)".to_owned(),
        }
    );
    serde_json::json!({
        "uptime": uptime,
        "disk_usage": disk_usage,
        "memory_info": memory_info,
        "top_processes": top_processes,
        "dtma_port_status": dtma_port_status,
        "environment": {
            "version": crate::VERSION,
            "runtime": "native Rust binary (no Node.js: node_version is not applicable)",
            "platform": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "pid": std::process::id(),
        },
        "cpu_load_percent": snap.cpu_load_percent,
        "memory": {
            "total_bytes": snap.memory.total_bytes,
            "active_bytes": snap.memory.used_bytes,
            "used_bytes": snap.memory.used_bytes,
            "free_bytes": snap.memory.free_bytes,
            "available_bytes": snap.memory.available_bytes,
        },
        "disk": snap.disk,
    })
}

async fn logs(a: &Agent, lines: usize) -> serde_json::Value {
    let journal = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("journalctl")
            .args(["-u", "dtma", "-n", &lines.to_string(), "--no-pager"])
            .env_clear()
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let dtma_service = match journal {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(Err(e)) => format!("journalctl is not available on this host: {e}"),
        Err(_) => "journalctl did not answer within 5 s".to_owned(),
    };
    let mcp_containers = match a.docker().containers(true).await {
        Ok(list) => {
            let mut out = String::new();
            for c in list {
                let text = a
                    .docker()
                    .logs_tail(&c.name, lines)
                    .await
                    .unwrap_or_else(|e| format!("({e})\n"));
                out.push_str(&format!("==> {} <==\n{text}", c.name));
            }
            out
        }
        Err(e) => format!("({e})"),
    };
    serde_json::json!({
        "dtma_service": dtma_service,
        "mcp_containers": mcp_containers,
        "application_logs": a.logs().tail(lines),
    })
}

/// `GET /status`: the shape the console's health monitor reads.
async fn console_status(a: &Agent, health: &HealthBook) -> serde_json::Value {
    let (tool_instances, docker_error) = match a.docker().containers(true).await {
        Ok(list) => (
            list.into_iter()
                .map(|c| {
                    let running = matches!(c.state.as_str(), "running" | "paused");
                    let state = health.monitored(&c.id, running);
                    let t = tool_status(c, state);
                    let d = &t.runtime_details;
                    serde_json::json!({
                        "account_tool_instance_id": t.account_tool_instance_id,
                        "instance_name_on_toolbox": t.instance_name_on_toolbox,
                        "container_id": d["container_id"],
                        "status": d["state"],
                        "status_on_toolbox": t.status_on_toolbox,
                        "server_state": d.get("server_state"),
                        "image": d["image"],
                        "ports": d["ports"],
                        "created": d["created"],
                    })
                })
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let port = a.http_addr().map_or(a.config().listen.port(), |x| x.port());
    let channel = a.config().channel.as_ref();
    let (running, held) = a.stream_counts();
    serde_json::json!({
        "status": if a.is_draining() { "draining" } else { "healthy" },
        "timestamp": crate::now_rfc3339(),
        "version": crate::VERSION,
        "commit": crate::GIT_COMMIT,
        "protocol_version": dtma_protocol::PROTOCOL_VERSION,
        "service": "dtma",
        "agent_id": a.config().agent_id,
        "uptime_s": a.uptime().as_secs(),
        "environment": {
            "hasAuthToken": true,
            "hasApiKey": a.config().backend_api_key.is_some(),
            "hasApiBaseUrl": channel.is_some(),
            "port": port,
        },
        "channel_connected": a.link_up(),
        "channel": {
            "state": match (channel, a.link_up()) {
                (None, _) => "local_only",
                (Some(_), true) => "connected",
                (Some(_), false) => "disconnected",
            },
            "url": channel.map(|c| without_userinfo(&c.url)),
        },
        "streams": { "running": running, "held": held },
        "sandbox": a.enforcement(),
        "tool_instances": tool_instances,
        "docker_error": docker_error,
    })
}

/// A URL without `user:password@`, should one have been configured: `/status` shows the
/// backend's address, never a credential.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Bytes as `1.5G`, `512M`, `3.0K` (df/free -h style).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::without_userinfo;

    #[test]
    fn status_urls_lose_their_credentials_only() {
        assert_eq!(
            without_userinfo("wss://u:p@api.example.com/dtma/connect"),
            "wss://api.example.com/dtma/connect"
        );
        assert_eq!(
            without_userinfo("ws://127.0.0.1:9/a@b"),
            "ws://127.0.0.1:9/a@b"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }
}
