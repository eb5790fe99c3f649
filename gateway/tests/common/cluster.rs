//! Cluster harness: a real `nats-server` (JetStream, loopback, random port), gateway nodes as
//! real `dtma-gateway` processes (so a node can be killed with SIGKILL or stopped with
//! SIGTERM), and a small TCP load balancer in front of them (round robin over the backends
//! that accept a connection, as any TCP balancer does).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{AGENTS, OPERATOR, within};

/// A `nats-server -js` on 127.0.0.1, stopped when dropped.
pub struct Nats {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (Debian package nats-server) is installed");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut url = None;
        within(20, "nats-server ready", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                    url = Some(format!("nats://{}", addr.trim()));
                }
                if line.contains("Server is ready") {
                    return;
                }
            }
            panic!("nats-server ended before it was ready");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Nats {
            child,
            url: url.expect("nats-server printed its port"),
            _dir: dir,
        }
    }
}

impl Nats {
    /// SIGKILL: NATS is gone for good.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// The files every node shares: agent tokens, operator tokens, a config.
pub struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub fn new(extra_toml: &str) -> Files {
        Files::new_with_drain_timeout(extra_toml, 20)
    }

    pub fn new_with_drain_timeout(extra_toml: &str, drain_timeout_s: u64) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let agents: String = AGENTS.iter().map(|(a, t)| format!("{a} {t}\n")).collect();
        std::fs::write(dir.path().join("agents"), agents).unwrap();
        std::fs::write(dir.path().join("operators"), format!("{OPERATOR}\n")).unwrap();
        std::fs::write(
            dir.path().join("webhook-secret"),
            "webhook-secret-0123456789\n",
        )
        .unwrap();
        let extra_toml = extra_toml.replace(
            "WEBHOOK_SECRET_FILE",
            &dir.path().join("webhook-secret").display().to_string(),
        );
        let toml = format!(
            "heartbeat_interval_ms = 200\n{extra_toml}\n[cluster]\nstorage = \"memory\"\nnode_beat_ms = 200\nnode_ttl_ms = 1000\nopen_wait_ms = 15000\n[drain]\nspread_ms = 300\ntimeout_s = {drain_timeout_s}\n"
        );
        std::fs::write(dir.path().join("gateway.toml"), toml).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Two free loopback ports (bound together, so they differ, then released for the node).
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// One gateway node, a real process.
pub struct Node {
    pub id: String,
    pub agent_addr: SocketAddr,
    pub operator_addr: SocketAddr,
    child: Option<Child>,
    nats: String,
    config: PathBuf,
    agents: PathBuf,
    operators: PathBuf,
    /// Every log line the node printed (for a failing test's message).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub async fn start(id: &str, nats: &Nats, files: &Files) -> Node {
        let (agent_addr, operator_addr) = free_addrs();
        let mut node = Node {
            id: id.to_owned(),
            agent_addr,
            operator_addr,
            child: None,
            nats: nats.url.clone(),
            config: files.path("gateway.toml"),
            agents: files.path("agents"),
            operators: files.path("operators"),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        node.spawn().await;
        node
    }

    /// Start the process (again, on the same addresses) and wait until it listens.
    pub async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dtma-gateway"))
            .arg("--config")
            .arg(&self.config)
            .arg("--agent-tokens")
            .arg(&self.agents)
            .arg("--operator-tokens-file")
            .arg(&self.operators)
            .args(["--agent-listen", &self.agent_addr.to_string()])
            .args(["--operator-listen", &self.operator_addr.to_string()])
            .args(["--nats-url", &self.nats, "--node-id", &self.id])
            .env("RUST_LOG", "info,dtma_gateway=debug")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = self.log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Gateway listening") {
                    let _ = ready_tx.send(());
                }
                log.lock().unwrap().push(line);
            }
        });
        let id = self.id.clone();
        let log = self.log.clone();
        within(30, "gateway node listening", async move {
            if ready_rx.recv().await.is_none() {
                panic!(
                    "node {id} ended before listening:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        })
        .await;
        self.child = Some(child);
    }

    /// SIGKILL: the node dies without a word.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM, then wait for the drain to finish and the process to exit; its exit status.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().expect("pid");
        signal(pid, "TERM");
        within(60, "node drained and exited", c.wait())
            .await
            .unwrap()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn url(&self) -> String {
        format!("ws://{}/dtma/connect", self.agent_addr)
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A TCP load balancer on 127.0.0.1: each connection goes to the next backend (round robin)
/// that accepts it.
pub struct Lb {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Lb {
    pub async fn start(backends: Vec<SocketAddr>) -> Lb {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let list = backends.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let list = list.lock().unwrap().clone();
                let start = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for i in 0..list.len() {
                        let target = list[(start + i) % list.len()];
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = server.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Lb { addr, backends }
    }

    pub fn set(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }

    pub fn url(&self) -> String {
        format!("ws://{}/dtma/connect", self.addr)
    }
}

/// A webhook receiver on 127.0.0.1: answers 200 and keeps `(type, agent_id)` of each event.
pub struct Receiver {
    pub addr: SocketAddr,
    pub events: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let kept = events.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                                    kept.lock().unwrap().push((
                                        v["type"].as_str().unwrap_or_default().to_owned(),
                                        v["agent_id"].as_str().unwrap_or_default().to_owned(),
                                    ));
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::new()),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver { addr, events }
    }

    /// The `[webhooks]` section for [`Files::new`].
    pub fn toml(&self) -> String {
        format!(
            "[webhooks]\nurl = \"http://{}/hook\"\nsecret_file = \"WEBHOOK_SECRET_FILE\"\nbackoff_base_ms = 20\nbackoff_cap_ms = 200\n",
            self.addr
        )
    }

    pub fn count(&self, kind: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == kind)
            .count()
    }
}

/// The log of every node, for a failure message.
pub fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- node {} ---\n{}",
                n.id,
                n.log.lock().unwrap().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
