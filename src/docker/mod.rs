//! The Docker client seam (bollard over the local socket): the read-only questions the local
//! API and the heartbeat ask (here), the container operations MCP deployment needs
//! ([`containers`]), a container's log as a stream of timestamped messages ([`logs`]), the event
//! feed of managed containers ([`events`]), and the MCP readiness probe of deployed servers
//! ([`ready`], an HTTP client of the containers).

pub mod containers;
pub mod events;
pub mod logs;
pub mod ready;

pub mod spec;

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::metrics::DockerErrorLabels;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Docker daemon at {socket} is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("Docker API error: {0}")]
    Api(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A lazily connected Docker client.
#[derive(Clone)]
pub struct DockerClient {
    socket: String,
    /// `dtma_docker_errors_total`: calls the daemon failed or did not answer, by operation.
    errors: Family<DockerErrorLabels, Counter>,
}

#[derive(Debug, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    pub created: i64,
    pub labels: HashMap<String, String>,
    pub ports: Vec<PortInfo>,
}

#[derive(Debug, Serialize)]
pub struct PortInfo {
    pub ip: Option<String>,
    pub private_port: u16,
    pub public_port: Option<u16>,
    #[serde(rename = "type")]
    pub kind: String,
}

impl DockerClient {
    /// `socket` is a path or `unix://` URL (from `DOCKER_HOST`, default `/var/run/docker.sock`).
    pub fn new(socket: impl Into<String>) -> DockerClient {
        DockerClient {
            socket: socket.into(),
            errors: Family::default(),
        }
    }

    /// Count failed calls into `errors` (the agent's registry) rather than a private family.
    pub fn counting_errors(mut self, errors: Family<DockerErrorLabels, Counter>) -> DockerClient {
        self.errors = errors;
        self
    }

    pub(crate) fn count_error(&self, operation: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&DockerErrorLabels { operation, kind })
            .inc();
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    pub(crate) fn connect(&self) -> Result<Docker, Error> {
        Docker::connect_with_socket(&self.socket, 30, bollard::API_DEFAULT_VERSION).map_err(|e| {
            self.count_error("connect", "unreachable");
            Error::Unreachable {
                socket: self.socket.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// One mapping of bollard's errors: 404 and 409 keep their meaning, other answers are API
    /// errors, anything else means the daemon is not reachable. The last two are counted under
    /// `operation`; 404 and 409 are answers their callers act on (an absent container is often
    /// the point of asking), not failures.
    pub(crate) fn map_err(&self, operation: &'static str, e: bollard::errors::Error) -> Error {
        let mapped = self.classify(e);
        match &mapped {
            Error::Unreachable { .. } => self.count_error(operation, "unreachable"),
            Error::Api(_) => self.count_error(operation, "api"),
            Error::NotFound(_) | Error::Conflict(_) => {}
        }
        mapped
    }

    fn classify(&self, e: bollard::errors::Error) -> Error {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            } => Error::NotFound(message),
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            } => Error::Conflict(message),
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => Error::Api(format!("{status_code}: {message}")),
            other => Error::Unreachable {
                socket: self.socket.clone(),
                reason: other.to_string(),
            },
        }
    }

    /// Version and summary counts, as `GET /diagnostics/docker` shows them.
    pub async fn diagnostics(&self) -> Result<serde_json::Value, Error> {
        let docker = self.connect()?;
        let version = docker
            .version()
            .await
            .map_err(|e| self.map_err("version", e))?;
        let info = docker.info().await.map_err(|e| self.map_err("info", e))?;
        let containers = self.containers(false).await?;
        let mut table = String::from("CONTAINER ID   IMAGE   STATUS   NAMES\n");
        for c in &containers {
            table.push_str(&format!(
                "{}   {}   {}   {}\n",
                c.id.chars().take(12).collect::<String>(),
                c.image,
                c.status,
                c.name
            ));
        }
        Ok(serde_json::json!({
            "docker_version": format!(
                "Docker version {}, API {}",
                version.version.unwrap_or_default(),
                version.api_version.unwrap_or_default()
            ),
            "docker_info_success": true,
            "docker_info": {
                "ServerVersion": info.server_version,
                "Containers": info.containers,
                "ContainersRunning": info.containers_running,
                "ContainersPaused": info.containers_paused,
                "ContainersStopped": info.containers_stopped,
            },
            "containers": table,
            "container_list": containers,
        }))
    }

    /// All containers (or only MCP ones, by label).
    pub async fn containers(&self, mcp_only: bool) -> Result<Vec<ContainerInfo>, Error> {
        let docker = self.connect()?;
        let mut builder = ListContainersOptionsBuilder::default().all(true);
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_string(), vec![spec::managed_filter()])]);
        if mcp_only {
            builder = builder.filters(&filters);
        }
        let list = docker
            .list_containers(Some(builder.build()))
            .await
            .map_err(|e| self.map_err("list", e))?;
        Ok(list
            .into_iter()
            .filter(|c| {
                // Containers a deploy set aside (temporary names) are not servers.
                !c.names
                    .as_ref()
                    .and_then(|n| n.first())
                    .is_some_and(|n| spec::is_aside(n))
            })
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                created: c.created.unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                ports: c
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| PortInfo {
                        ip: p.ip,
                        private_port: p.private_port,
                        public_port: p.public_port,
                        kind: p.typ.map(|t| t.to_string()).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect())
    }
}

impl DockerClient {
    /// The last `lines` log lines of `container` (stdout and stderr interleaved).
    pub async fn logs_tail(&self, container: &str, lines: usize) -> Result<String, Error> {
        use futures_util::StreamExt;
        let docker = self.connect()?;
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = docker.logs(container, Some(opts));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|e| self.map_err("logs", e))?;
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_daemon_is_counted_under_the_operation() {
        let dir = tempfile::tempdir().unwrap();
        let socket = format!("unix://{}", dir.path().join("no-daemon.sock").display());
        let errors = Family::<DockerErrorLabels, Counter>::default();
        let client = DockerClient::new(socket).counting_errors(errors.clone());
        assert!(matches!(
            client.containers(true).await,
            Err(Error::Unreachable { .. })
        ));
        // bollard checks that the socket exists before any call: the failure is `connect`'s.
        let connect = DockerErrorLabels {
            operation: "connect",
            kind: "unreachable",
        };
        assert_eq!(errors.get(&connect).map(|c| c.get()), Some(1));
        let list = DockerErrorLabels {
            operation: "list",
            kind: "unreachable",
        };
        assert!(errors.get(&list).is_none(), "one failure, counted once");
    }
}
