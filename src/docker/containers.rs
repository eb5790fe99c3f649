//! Container and image operations the MCP service needs, each one bollard call with its errors
//! mapped once: a missing object is [`Error::NotFound`], a name clash [`Error::Conflict`], a
//! daemon that does not answer [`Error::Unreachable`].

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, RestartContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

use super::{DockerClient, Error};

/// What the agent asks Docker to create for one server.
#[derive(Clone)]
pub struct CreateSpec {
    pub name: String,
    pub image: String,
    /// `KEY=VALUE` pairs; secrets, never logged.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// `(container port with protocol, host ip, host port)`.
    pub ports: Vec<(String, String, u16)>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub cap_add: Vec<String>,
    /// `None`: Docker's default network; `host`, `none` or a network name otherwise.
    pub network: Option<String>,
}

impl std::fmt::Debug for CreateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env", &format_args!("[{} redacted]", self.env.len()))
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// One step of an image pull, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// A container as inspected.
#[derive(Debug, Clone, Default)]
pub struct Inspected {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    pub restarting: bool,
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restart_count: i64,
    pub started_at: Option<String>,
    pub created: Option<String>,
    pub health: Option<String>,
    /// Published ports: `(container port/proto, host ip, host port)`.
    pub ports: Vec<(String, String, u16)>,
}

impl From<ContainerInspectResponse> for Inspected {
    fn from(c: ContainerInspectResponse) -> Inspected {
        let state = c.state.unwrap_or_default();
        let mut ports = Vec::new();
        let bindings = c
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.clone())
            .unwrap_or_default();
        for (port, list) in bindings {
            for b in list.unwrap_or_default() {
                let host_port = b.host_port.as_deref().and_then(|p| p.parse().ok());
                if let Some(hp) = host_port {
                    ports.push((port.clone(), b.host_ip.unwrap_or_default(), hp));
                }
            }
        }
        ports.sort();
        Inspected {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.image.clone())
                .unwrap_or_default(),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default(),
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            restart_count: c.restart_count.unwrap_or(0),
            started_at: state.started_at,
            created: c.created.map(|d| d.to_string()),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            ports,
        }
    }
}

impl DockerClient {
    /// The container called `name` (or with this id), if there is one.
    pub async fn inspect(&self, name: &str) -> Result<Option<Inspected>, Error> {
        let docker = self.connect()?;
        match docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c.into())),
            Err(e) => match self.map_err("inspect", e) {
                Error::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Whether `image` is present locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, Error> {
        let docker = self.connect()?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => match self.map_err("inspect_image", e) {
                Error::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Pull `name:tag` (or `name@digest` as the tag), reporting Docker's progress lines.
    pub fn pull(
        &self,
        name: &str,
        tag: &str,
    ) -> impl Stream<Item = Result<PullProgress, Error>> + Send + use<> {
        let client = self.clone();
        let opts = CreateImageOptionsBuilder::new()
            .from_image(name)
            .tag(tag)
            .build();
        let docker = self.connect();
        async_stream(docker, move |docker| {
            docker
                .create_image(Some(opts), None, None)
                .map(move |item| match item {
                    Ok(info) => {
                        if let Some(err) = info.error_detail.and_then(|d| d.message) {
                            client.count_error("pull", "api");
                            return Err(Error::Api(err));
                        }
                        let detail = info.progress_detail.unwrap_or_default();
                        Ok(PullProgress {
                            status: info.status.unwrap_or_default(),
                            current: detail.current.and_then(|c| u64::try_from(c).ok()),
                            total: detail.total.and_then(|t| u64::try_from(t).ok()),
                        })
                    }
                    Err(e) => Err(client.map_err("pull", e)),
                })
                .boxed()
        })
    }

    /// Create a container (not started). Returns its id.
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, Error> {
        let docker = self.connect()?;
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for (port, ip, host_port) in &spec.ports {
            port_bindings
                .entry(port.clone())
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(ip.clone()),
                    host_port: Some(host_port.to_string()),
                });
        }
        let exposed: Vec<String> = port_bindings.keys().cloned().collect();
        let host_config = HostConfig {
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            memory: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            pids_limit: Some(spec.pids),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "3".to_string()),
                ])),
            }),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            network_mode: spec.network.clone(),
            ..HostConfig::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| self.map_err("create", e))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), Error> {
        let docker = self.connect()?;
        docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| self.map_err("start", e))
    }

    /// Stop with a grace period (SIGTERM, then SIGKILL after `grace_s`). Stopping a stopped
    /// container is fine.
    pub async fn stop(&self, id: &str, grace_s: i32) -> Result<(), Error> {
        let docker = self.connect()?;
        let opts = StopContainerOptionsBuilder::new().t(grace_s).build();
        match docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.map_err("stop", e)),
        }
    }

    /// Remove (forced: a running container is killed). A missing one is fine.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let docker = self.connect()?;
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.map_err("remove", e) {
                Error::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    pub async fn rename(&self, id: &str, to: &str) -> Result<(), Error> {
        let docker = self.connect()?;
        let opts = RenameContainerOptionsBuilder::new().name(to).build();
        docker
            .rename_container(id, opts)
            .await
            .map_err(|e| self.map_err("rename", e))
    }

    pub async fn restart(&self, id: &str, grace_s: i32) -> Result<(), Error> {
        let docker = self.connect()?;
        let opts = RestartContainerOptionsBuilder::new().t(grace_s).build();
        docker
            .restart_container(id, Some(opts))
            .await
            .map_err(|e| self.map_err("restart", e))
    }

    /// Create the bridge network `name` unless it exists (a group's shared network).
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let docker = self.connect()?;
        match docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => match self.map_err("inspect_network", e) {
                Error::NotFound(_) => {}
                other => return Err(other),
            },
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            ..Default::default()
        };
        docker
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|e| self.map_err("create_network", e))
    }

    /// Whether the network `name` exists.
    pub async fn find_network(&self, name: &str) -> Result<bool, Error> {
        let docker = self.connect()?;
        match docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.map_err("inspect_network", e) {
                Error::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Remove the network `name`; a missing one is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        let docker = self.connect()?;
        match docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) => match self.map_err("remove_network", e) {
                Error::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Ids of every container carrying all of `labels` (`key=value` or `key`), running or not.
    pub async fn find(&self, labels: &[String]) -> Result<Vec<Inspected>, Error> {
        let docker = self.connect()?;
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_string(), labels.to_vec())]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.map_err("list", e))?;
        let mut out = Vec::new();
        for c in list {
            if let Some(id) = c.id
                && let Some(i) = self.inspect(&id).await?
            {
                out.push(i);
            }
        }
        Ok(out)
    }
}

/// A stream that first needs a connected client; a failed connection is its only item.
fn async_stream<T: Send + 'static>(
    docker: Result<bollard::Docker, Error>,
    make: impl FnOnce(bollard::Docker) -> futures_util::stream::BoxStream<'static, Result<T, Error>>,
) -> futures_util::stream::BoxStream<'static, Result<T, Error>> {
    match docker {
        Ok(d) => make(d),
        Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
    }
}
