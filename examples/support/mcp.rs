//! Shared by the MCP benchmarks (`bench_mcp.rs`, `bench_logs.rs`), which include it with
//! `#[path]` (the exec benchmark needs none of it): what a bench starts and must remove (the
//! agent, containers by label, a temporary directory), the test image held for the run, free
//! ports, the agent as a child process, and its local HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use crate::support::{lock, stop_child};

/// Upper bound for any single step (a call of the local API, a command), so that every round
/// ends.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Image build script shared with the tests (tests/common/docker.rs).
const IMAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/test-image.sh");

// ---------------------------------------------------------------------------------------------
// Cleanup of everything started
// ---------------------------------------------------------------------------------------------

/// Owns what the bench starts: the agent process, the temporary directory, and the Docker
/// label filters of every group and compose project it deployed. [`Reaper::cleanup`] stops and
/// removes them (idempotent, also run on drop).
pub struct Reaper {
    pub dir: PathBuf,
    pub agent: Mutex<Option<Child>>,
    /// `key=value` labels; every container carrying one was made for this bench.
    labels: Mutex<Vec<String>>,
}

impl Reaper {
    /// `name`: the temporary directory's prefix (`dtma-bench-mcp`).
    pub fn new(name: &str) -> Result<Reaper> {
        let dir = std::env::temp_dir().join(format!(
            "{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Reaper {
            dir,
            agent: Mutex::new(None),
            labels: Mutex::new(Vec::new()),
        })
    }

    /// Remember a label before anything carrying it is created.
    pub fn track(&self, label: String) {
        let mut labels = lock(&self.labels);
        if !labels.contains(&label) {
            labels.push(label);
        }
    }

    pub fn cleanup(&self) {
        // The agent first, so that no deploy of its own runs on while its containers go.
        if let Some(mut agent) = lock(&self.agent).take() {
            stop_child(&mut agent, Duration::from_secs(15));
        }
        let labels: Vec<String> = lock(&self.labels).drain(..).collect();
        for label in labels {
            if let Err(e) = remove_labelled(&label) {
                eprintln!("could not remove the containers labelled {label}: {e:#}");
            }
        }
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Ids of the containers (running or not) carrying `label`.
pub fn labelled(label: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={label}"))
        .stdin(Stdio::null())
        .output()
        .context("running docker ps")?;
    ensure!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// `docker rm -f -v` every container carrying `label`; returns how many there were.
pub fn remove_labelled(label: &str) -> Result<usize> {
    let ids = labelled(label)?;
    if !ids.is_empty() {
        let out = std::process::Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .stdin(Stdio::null())
            .output()
            .context("running docker rm")?;
        ensure!(
            out.status.success(),
            "docker rm failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ids.len())
}

/// `docker ARGS`; fails with its stderr.
pub async fn docker_ok(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker")?;
    ensure!(
        out.status.success(),
        "docker {} failed: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub async fn labelled_async(label: String) -> Result<Vec<String>> {
    tokio::task::spawn_blocking(move || labelled(&label)).await?
}

// ---------------------------------------------------------------------------------------------
// The image, ports
// ---------------------------------------------------------------------------------------------

/// `deploy/test-image.sh SERVER`: builds the image or finds it, prints its reference.
pub async fn test_image(server: &Path) -> Result<String> {
    let out = tokio::process::Command::new("bash")
        .arg(IMAGE_SCRIPT)
        .arg(server)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running bash {IMAGE_SCRIPT}"))?;
    ensure!(
        out.status.success(),
        "{IMAGE_SCRIPT} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        tag.starts_with("dtma-test-mcp:"),
        "{IMAGE_SCRIPT} printed `{tag}`"
    );
    Ok(tag)
}

/// The test image, held by a created (never started) container for the whole run: between
/// rounds no container runs it, and a test elsewhere that tidies the images of other builds
/// (`docker rmi` without -f) would remove it then. Built again if it went in between.
pub async fn pinned_image(server: &Path, reaper: &Reaper, run_id: &str) -> Result<String> {
    let pin = format!("ai.agentopia.dtma.bench-pin={run_id}");
    reaper.track(pin.clone());
    let mut attempt = 0;
    loop {
        let image = test_image(server).await?;
        let created = docker_ok(&[
            "create",
            "--label",
            &pin,
            "--network",
            "none",
            "--name",
            &format!("dtma-bench-pin-{run_id}-{attempt}"),
            &image,
        ])
        .await;
        match created {
            Ok(()) => return Ok(image),
            Err(e) if attempt > 0 => {
                return Err(e.context("creating the container that holds the image"));
            }
            Err(_) => attempt += 1,
        }
    }
}

/// `n` distinct ports that were free a moment ago on 127.0.0.1 (all bound at once, then
/// released for the servers to bind: a container, not this process, must own them).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The agent and its local API
// ---------------------------------------------------------------------------------------------

/// Start the agent `bin` with `DTMA_MCP_NETWORK=host`, listening on a port of its choice on
/// 127.0.0.1, and `env` on top (without `DTMA_WS_URL` there: local-only mode); return that
/// address once its log says so.
pub async fn start_agent(
    bin: &Path,
    reaper: &Reaper,
    id: &str,
    token: &str,
    env: &[(&str, &str)],
) -> Result<SocketAddr> {
    let log_path = reaper.dir.join("dtma.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = std::process::Command::new(bin);
    // Only the settings below: nothing inherited may point the agent elsewhere (DOCKER_HOST
    // stays, so that the agent and docker-compose use the same daemon).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DTMA_")
            || k.starts_with("AGENTOPIA_")
            || k.starts_with("BACKEND_TO_DTMA_")
            || k == "PORT"
            || k == "CREDENTIALS_DIRECTORY"
            || k == "RUST_LOG"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("DTMA_BEARER_TOKEN", token)
        .env("DTMA_AGENT_ID", id)
        .env("DTMA_LISTEN", "127.0.0.1:0")
        .env("DTMA_MCP_NETWORK", "host")
        .env("DTMA_AUDIT_LOG", reaper.dir.join("audit.jsonl"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a Ctrl-C reaches only the bench, which then stops the agent.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    *lock(&reaper.agent) = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        // `Local API listening. http_addr=127.0.0.1:PORT`
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains("Local API listening."))
            .find_map(|l| l.split_once("http_addr=")?.1.split_whitespace().next())
        {
            return addr
                .parse()
                .with_context(|| format!("the agent's log names `{addr}` as its address"));
        }
        let exited = match lock(&reaper.agent).as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        if exited || Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "the agent did not start its local API within 20 s; its log ends with: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Api {
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    /// One request on a fresh connection, as a backend or `curl` would send it; returns the
    /// status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        tokio::time::timeout(STEP_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within {STEP_TIMEOUT:?}"))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "127.0.0.1")
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        let bytes = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(bytes))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        drop(sender);
        conn.abort();
        let json = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{method} {path}: status {status}, body is not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        Ok((status, json))
    }
}

pub fn group_label(group: &str) -> String {
    format!("ai.agentopia.dtma.group_id={group}")
}
