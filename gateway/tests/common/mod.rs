//! Test harness: the real gateway on 127.0.0.1:0, the real agent in-process (`dtma::start`)
//! dialling it, and a small real HTTP/1.1 client (hyper) that reads bodies frame by frame.
#![allow(dead_code)]

pub mod cluster;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dtma::agent::LinkState;
use dtma::config::{ChannelConfig, Config as AgentConfig};
use dtma_gateway::config::{Config, Secret};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const OPERATOR: &str = "operator-token-0123456789";

/// Agent ids and their tokens in the gateway's token file.
pub const AGENTS: &[(&str, &str)] = &[
    ("a1", "agent-a1-token-0123456789"),
    ("a2", "agent-a2-token-0123456789"),
    ("a3", "agent-a3-token-0123456789"),
];

pub fn token_of(agent: &str) -> &'static str {
    AGENTS
        .iter()
        .find(|(id, _)| *id == agent)
        .map(|(_, t)| *t)
        .unwrap_or("no-such-token-0123456789")
}

/// A gateway serving until the test ends.
pub struct Gw {
    pub running: Option<dtma_gateway::Running>,
    pub stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Gw {
    pub async fn start() -> Gw {
        Gw::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agents");
        let text: String = AGENTS.iter().map(|(a, t)| format!("{a} {t}\n")).collect();
        std::fs::write(&file, text).unwrap();
        let mut config = Config::new(&file, vec![Secret::new(OPERATOR)]);
        config.agent_listen = "127.0.0.1:0".parse().unwrap();
        config.operator_listen = "127.0.0.1:0".parse().unwrap();
        config.heartbeat_interval = Some(Duration::from_millis(200));
        tweak(&mut config);
        let stop = CancellationToken::new();
        let running = dtma_gateway::start(config, stop.clone()).await.unwrap();
        Gw {
            running: Some(running),
            stop,
            _dir: dir,
        }
    }

    pub fn r(&self) -> &dtma_gateway::Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/dtma/connect", self.r().agent_addr())
    }

    pub fn api(&self) -> SocketAddr {
        self.r().operator_addr()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The agent's configuration for these tests: its token, fast reconnects, the local API on
/// 127.0.0.1:0, and the kernel sandbox off (channel requests run as admin, unconfined: the
/// sandbox is the agent's business, tested in the agent's own suite).
pub fn agent_config(id: &str, token: &str, url: String) -> AgentConfig {
    let mut c = AgentConfig::for_channel(token, None);
    c.agent_id = id.to_owned();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.exec.sandbox.enforce = false;
    c.exec.kill_grace = Duration::from_millis(500);
    c.channel = Some(ChannelConfig {
        connect_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_millis(250),
        heartbeat_interval: Duration::from_millis(200),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        healthy_after: Duration::from_secs(60),
        ..ChannelConfig::with_url(url)
    });
    c
}

/// The real agent, in this process.
pub struct Agent {
    pub running: Option<dtma::Running>,
    pub stop: CancellationToken,
}

impl Agent {
    pub async fn start(id: &str, gw: &Gw) -> Agent {
        Agent::start_with(agent_config(id, token_of(id), gw.url())).await
    }

    pub async fn start_with(config: AgentConfig) -> Agent {
        let stop = CancellationToken::new();
        let running = dtma::start(config, stop.clone()).await.unwrap();
        Agent {
            running: Some(running),
            stop,
        }
    }

    pub fn link(&self) -> tokio::sync::watch::Receiver<LinkState> {
        self.running.as_ref().unwrap().agent().link_state()
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(r) = self.running.take() {
            r.join().await.unwrap();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(r) = &self.running {
            r.agent().cancel_all_work();
        }
    }
}

/// Fail the test (instead of hanging) when `f` takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Wait until the engine has a session of `agent`.
pub async fn connected(gw: &Gw, agent: &str) {
    within(
        20,
        "agent connect",
        gw.r().control_plane().wait_for_agent(agent),
    )
    .await;
}

/// One HTTP/1.1 exchange over a fresh connection; the body is left to read.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> hyper::Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let has_body = body.is_some();
    if has_body {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// The whole body as JSON, with the status.
pub async fn json_of(resp: hyper::Response<Incoming>) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    json_of(send(addr, "GET", path, Some(OPERATOR), &[], None).await).await
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

impl SseEvent {
    pub fn seq(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }
}

/// Reads server-sent events off a response body as they arrive.
pub struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

impl Sse {
    pub fn new(resp: hyper::Response<Incoming>) -> Sse {
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream",
            "{resp:?}"
        );
        Sse {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// Like [`Sse::next`], but a body cut mid-way (the node serving it stopped) is an end too.
    pub async fn next_or_cut(&mut self) -> Option<SseEvent> {
        self.next_inner(false).await
    }

    /// The next event; `None` at the end of the body. Comments (keepalives) are skipped.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_inner(true).await
    }

    async fn next_inner(&mut self, strict: bool) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue;
                }
                return Some(SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            match self.body.frame().await {
                None => {
                    assert!(
                        self.buf.iter().all(|b| b.is_ascii_whitespace()),
                        "trailing bytes"
                    );
                    return None;
                }
                Some(Err(e)) if !strict => {
                    let _ = e;
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// A named pipe: commands block reading it until the test writes a line.
pub fn fifo(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let status = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .unwrap();
    assert!(status.success());
    p
}

/// Release a command blocked on `read < fifo` (blocks until the reader has it open).
pub async fn release(fifo: std::path::PathBuf) {
    tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n").unwrap())
        .await
        .unwrap();
}
