//! `mcp_events` against a real Docker daemon: the events of managed containers as the backend
//! receives them through the reference control plane (resync, start, die, oom, stop, destroy,
//! health), exactly once and in order across cut links, coalesced into a resync when the
//! backend does not acknowledge, re-subscribed when the Docker feed breaks, and the liveness
//! monitor's `degraded` / `ready`.
//!
//! As in tests/mcp.rs the agent runs with `DTMA_MCP_NETWORK=host`; each test has its own group,
//! instance names and agent id and removes its containers at the end. Other tests share the
//! daemon, so a stream also carries their containers' events: every assertion looks at this
//! test's containers only. A test that needs its stream to be live before something happens
//! first waits for the `resync` of a server that already exists (it comes after the agent
//! subscribed to live events).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::docker::{docker_ok, free_port, test_image};
use common::http::{Response, request};
use common::mcp::{GroupGuard, unique};
use common::*;
use dtma_control_plane::{ControlPlane, Options, StreamRx};
use dtma_protocol::{
    AgentMessage, Cancel, ErrorCode, McpEvent, McpEventKind, McpEvents, RequestBody, ServerState,
};
use tokio_util::sync::CancellationToken;

fn server(name: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "accountToolInstanceId": format!("ati-{name}"),
        "dockerImageUrl": test_image(),
        "instanceNameOnToolbox": name,
        "portBindings": { format!("{port}/tcp"): port },
        "environmentVariables": { "MCP_PORT": port.to_string(), "MCP_MODE": "discover" },
        "resourceLimits": { "memory": "64m", "cpu": 0.5 },
        "readinessTimeoutMs": 10000,
    })
}

fn config(url: String) -> dtma::Config {
    common::mcp::mcp_config(Some(url))
}

fn http_addr(agent: &InProc) -> std::net::SocketAddr {
    agent.running.as_ref().unwrap().http_addr
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string().into_bytes());
    request(addr, method, path, Some(&auth), body.as_deref()).await
}

/// Deploy `servers` as group `g` over the local API; the container id of each, in order.
async fn deploy(
    addr: std::net::SocketAddr,
    g: &str,
    servers: Vec<serde_json::Value>,
) -> Vec<String> {
    let body = serde_json::json!({ "groupId": g, "servers": servers });
    let r = call(addr, "POST", "/mcp/groups", Some(&body)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["container_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The state `GET /mcp/status` reports for `instance`.
async fn status_of(addr: std::net::SocketAddr, instance: &str) -> String {
    let r = call(addr, "GET", "/mcp/status", None).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    j["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance_name"] == instance)
        .unwrap_or_else(|| panic!("{instance} missing from {j}"))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An open `mcp_events` stream: the events read so far, each checked to follow the last by
/// exactly one seq.
struct Feed {
    rx: StreamRx,
    events: Vec<McpEvent>,
    next_seq: u64,
}

impl Feed {
    fn open(cp: &ControlPlane, agent: &str) -> Feed {
        let rx = cp
            .request(agent, RequestBody::McpEvents(McpEvents {}))
            .unwrap();
        Feed {
            rx,
            events: Vec::new(),
            next_seq: 0,
        }
    }

    fn id(&self) -> String {
        self.rx.id().to_owned()
    }

    /// The next message, checked for its seq.
    async fn recv(&mut self) -> Option<AgentMessage> {
        let m = self.rx.recv().await?;
        assert_eq!(seq_of(&m), Some(self.next_seq), "out of order: {m:?}");
        self.next_seq += 1;
        Some(m)
    }

    /// Read until an event matches; return it.
    async fn until(
        &mut self,
        secs: u64,
        what: &str,
        wanted: impl Fn(&McpEvent) -> bool,
    ) -> McpEvent {
        within(secs, what, async {
            loop {
                match self.recv().await {
                    Some(AgentMessage::McpEvent(e)) => {
                        self.events.push(e.clone());
                        if wanted(&e) {
                            return e;
                        }
                    }
                    other => panic!("waiting for {what}, got {other:?}"),
                }
            }
        })
        .await
    }

    /// Read to the terminal event (events before it are kept).
    async fn end(&mut self, secs: u64) -> AgentMessage {
        within(secs, "the end of the stream", async {
            loop {
                match self.recv().await {
                    Some(AgentMessage::McpEvent(e)) => self.events.push(e),
                    Some(end) => return end,
                    None => panic!("the stream closed without a terminal event"),
                }
            }
        })
        .await
    }

    /// Like [`Feed::until`], but an event already read (from index `from` on) counts too.
    async fn seen(
        &mut self,
        from: usize,
        secs: u64,
        what: &str,
        wanted: impl Fn(&McpEvent) -> bool,
    ) -> McpEvent {
        match self.events[from..].iter().find(|e| wanted(e)) {
            Some(e) => e.clone(),
            None => self.until(secs, what, wanted).await,
        }
    }

    /// The events of one container read so far, without the liveness monitor's `health`
    /// events (their timing is the monitor's) and without a `resync` that repeats the one
    /// before it (the stream's first resync and the watcher's may both tell of a server that
    /// was just deployed).
    fn lifecycle(&self, container: &str) -> Vec<(McpEventKind, ServerState, Option<i64>)> {
        let mut out: Vec<(McpEventKind, ServerState, Option<i64>)> = Vec::new();
        for e in &self.events {
            if e.container_id != container || e.kind == McpEventKind::Health {
                continue;
            }
            let item = (e.kind, e.state, e.exit_code);
            if e.kind == McpEventKind::Resync && out.last() == Some(&item) {
                continue;
            }
            out.push(item);
        }
        out
    }
}

fn is(e: &McpEvent, container: &str, kind: McpEventKind) -> bool {
    e.container_id == container && e.kind == kind
}

/// Poll (at most `tries` times, 50 ms apart) until `done`; panic with `what` otherwise.
async fn poll(tries: u32, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..tries {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

/// The next seq of stream `id` in the agent's registry.
fn next_seq(agent: &InProc, id: &str) -> u64 {
    agent
        .channel()
        .registry()
        .hello_streams()
        .into_iter()
        .find(|s| s.id == id)
        .map_or(0, |s| s.next_seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_life_from_deploy_to_destroy_then_cancel() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let config = config(cp.url());
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    let session = within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    assert!(session.hello.capabilities.iter().any(|c| c == "events"));
    let addr = http_addr(&agent);
    let (a, b) = (unique("a"), unique("b"));
    let (port_a, port_b) = (free_port(), free_port());
    let ids = deploy(addr, &g, vec![server(&a, port_a)]).await;
    let id_a = ids[0].clone();

    // The stream starts with the current state of every server.
    let mut feed = Feed::open(&cp.cp, &agent_id);
    let e = feed
        .until(30, "the resync of a", |e| {
            is(e, &id_a, McpEventKind::Resync)
        })
        .await;
    assert_eq!(
        (e.group_id.as_str(), e.server.as_str(), e.state, e.exit_code),
        (g.as_str(), a.as_str(), ServerState::Ready, None)
    );
    assert_eq!(e.account_tool_instance_id, format!("ati-{a}"));
    assert!(dtma::parse_rfc3339(&e.at).is_ok(), "{}", e.at);

    // A server deployed now: its container takes the server's name once ready.
    let ids = deploy(addr, &g, vec![server(&a, port_a), server(&b, port_b)]).await;
    assert_eq!(ids[0], id_a, "a is unchanged");
    let id_b = ids[1].clone();
    let e = feed
        .until(30, "b deployed", |e| e.container_id == id_b)
        .await;
    assert_eq!(
        (e.kind, e.server.as_str(), e.state),
        (McpEventKind::Resync, b.as_str(), ServerState::Ready)
    );

    // Killed: `die` with the exit code (a killed container is not restarted by Docker).
    docker_ok(&["kill", "-s", "KILL", &format!("dtma-mcp-{b}")]);
    let e = feed
        .until(30, "b's die", |e| is(e, &id_b, McpEventKind::Die))
        .await;
    assert_eq!((e.state, e.exit_code), (ServerState::Failed, Some(137)));

    // Started again: `start`, then the liveness check finds it ready.
    docker_ok(&["start", &format!("dtma-mcp-{b}")]);
    let e = feed
        .until(30, "b's start", |e| is(e, &id_b, McpEventKind::Start))
        .await;
    assert_eq!((e.state, e.exit_code), (ServerState::Starting, None));
    feed.until(30, "b ready again", |e| {
        is(e, &id_b, McpEventKind::Health) && e.state == ServerState::Ready
    })
    .await;
    assert_eq!(status_of(addr, &b).await, "ready");

    // Removed: stopped (the test server exits 0 on SIGTERM), then destroyed.
    let r = call(addr, "DELETE", &format!("/mcp/groups/{g}"), None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for id in [&id_a, &id_b] {
        feed.seen(0, 30, "a destroy", |e| is(e, id, McpEventKind::Destroy))
            .await;
    }
    use McpEventKind::*;
    use ServerState::*;
    assert_eq!(
        feed.lifecycle(&id_b),
        [
            (Resync, Ready, None),
            (Die, Failed, Some(137)),
            (Start, Starting, None),
            (Die, Stopped, Some(0)),
            (Stop, Stopped, Some(0)),
            (Destroy, Stopped, Some(0)),
        ]
    );

    // Cancel ends the stream with `result {reason: cancelled}`.
    let c = cp
        .cp
        .request(&agent_id, RequestBody::Cancel(Cancel { target: feed.id() }))
        .unwrap();
    let c = within(10, "cancel", collect(c)).await;
    match c.events.last() {
        Some(AgentMessage::Result(r)) => assert_eq!(r.data["cancelled"], true, "{:?}", r.data),
        other => panic!("{other:?}"),
    }
    match feed.end(10).await {
        AgentMessage::Result(r) => assert_eq!(r.data, serde_json::json!({"reason": "cancelled"})),
        other => panic!("{other:?}"),
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_reported() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let config = config(cp.url());
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;

    // A managed container (as a deploy labels it) that needs more memory than it may have.
    let name = unique("oom");
    let container = format!("dtma-mcp-{name}");
    let labels = [
        "ai.agentopia.dtma.managed=true".to_owned(),
        format!("ai.agentopia.dtma.group_id={g}"),
        format!("ai.agentopia.dtma.instance_name={name}"),
        format!("ai.agentopia.dtma.account_tool_instance_id=ati-{name}"),
        "ai.agentopia.dtma.transport=stdio".to_owned(),
    ];
    let image = test_image();
    let mut args = vec!["create", "--name", &container, "--network", "none"];
    for l in &labels {
        args.extend(["--label", l]);
    }
    args.extend([
        "--memory",
        "16m",
        "--memory-swap",
        "16m",
        "-e",
        "MCP_MODE=exit",
        "-e",
        "MCP_ALLOC_MB=64",
        &image,
    ]);
    let id = docker_ok(&args);

    let mut feed = Feed::open(&cp.cp, &agent_id);
    let e = feed
        .until(30, "the resync", |e| is(e, &id, McpEventKind::Resync))
        .await;
    assert_eq!(e.state, ServerState::Starting, "created, never started");
    docker_ok(&["start", &container]);
    let e = feed
        .until(30, "the oom", |e| is(e, &id, McpEventKind::Oom))
        .await;
    assert_eq!(e.state, ServerState::Failed);
    let e = feed
        .until(30, "the die", |e| is(e, &id, McpEventKind::Die))
        .await;
    assert_eq!((e.state, e.exit_code), (ServerState::Failed, Some(137)));
    assert_eq!(
        feed.lifecycle(&id)
            .iter()
            .map(|(k, _, _)| *k)
            .collect::<Vec<_>>(),
        [
            McpEventKind::Resync,
            McpEventKind::Start,
            McpEventKind::Oom,
            McpEventKind::Die
        ]
    );
    agent.shutdown().await;
}

/// Events produced while the link is down, and events in flight when it is cut, reach the
/// backend exactly once and in order after the agent reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_exactly_once_and_in_order_across_cut_links() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    let config = config(proxy.url());
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let a = unique("a");
    let id = deploy(http_addr(&agent), &g, vec![server(&a, free_port())]).await[0].clone();
    let mut feed = Feed::open(&cp.cp, &agent_id);
    feed.until(30, "the resync", |e| is(e, &id, McpEventKind::Resync))
        .await;

    // Down: the events wait in the stream's buffer.
    proxy.refuse(true);
    proxy.cut();
    let before = next_seq(&agent, &feed.id());
    docker_ok(&["kill", "-s", "KILL", &format!("dtma-mcp-{a}")]);
    docker_ok(&["start", &format!("dtma-mcp-{a}")]);
    poll(400, "die and start buffered", || {
        next_seq(&agent, &feed.id()) >= before + 2
    })
    .await;
    proxy.refuse(false);
    feed.until(30, "the start", |e| is(e, &id, McpEventKind::Start))
        .await;

    // Cut while the stop's events may be on their way.
    docker_ok(&["stop", "-t", "5", &format!("dtma-mcp-{a}")]);
    proxy.cut();
    feed.until(30, "the stop", |e| is(e, &id, McpEventKind::Stop))
        .await;

    use McpEventKind::*;
    use ServerState::*;
    assert_eq!(
        feed.lifecycle(&id),
        [
            (Resync, Ready, None),
            (Die, Failed, Some(137)),
            (Start, Starting, None),
            (Die, Stopped, Some(0)),
            (Stop, Stopped, Some(0)),
        ]
    );
    assert!(
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the agent reconnected twice"
    );
    assert_eq!(
        cp.cp
            .stats()
            .gaps
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    agent.shutdown().await;
}

/// A backend that does not acknowledge does not make the agent buffer without bound: live
/// events are dropped while the stream's buffer is full, and a resync replaces them once it
/// has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_coalesces_into_a_resync() {
    const BUFFER: usize = 2048;
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    let mut config = config(proxy.url());
    config.streams.buffer_bytes = BUFFER;
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let a = unique("a");
    let id = deploy(http_addr(&agent), &g, vec![server(&a, free_port())]).await[0].clone();
    let container = format!("dtma-mcp-{a}");
    let mut feed = Feed::open(&cp.cp, &agent_id);
    feed.until(30, "the resync", |e| is(e, &id, McpEventKind::Resync))
        .await;
    // A live event: whatever the watcher published before it has been read too.
    docker_ok(&["restart", "-t", "5", &container]);
    feed.until(30, "a restart", |e| is(e, &id, McpEventKind::Restart))
        .await;
    let mark = feed.events.len();

    // No acknowledgements while the link is down: 5 restarts give 20 events, about 7 KB.
    proxy.refuse(true);
    proxy.cut();
    const RESTARTS: usize = 5;
    for _ in 0..RESTARTS {
        docker_ok(&["restart", "-t", "5", &container]);
    }
    poll(400, "a full buffer", || {
        agent.channel().registry().buffered_bytes() >= BUFFER
    })
    .await;
    let held = agent.channel().registry().buffered_bytes();
    assert!(
        held < BUFFER + 1024,
        "{held} bytes held for a {BUFFER}-byte buffer"
    );

    // Back: what was held is delivered and acknowledged, then a resync of every server.
    proxy.refuse(false);
    let e = feed
        .seen(mark, 30, "the resync after the gap", |e| {
            is(e, &id, McpEventKind::Resync)
        })
        .await;
    assert!(
        matches!(e.state, ServerState::Starting | ServerState::Ready),
        "{e:?}"
    );
    let restarts = feed.events[mark..]
        .iter()
        .filter(|e| is(e, &id, McpEventKind::Restart))
        .count();
    assert!(
        restarts < RESTARTS,
        "{restarts} restarts delivered: nothing was dropped"
    );
    // Live events flow again afterwards.
    docker_ok(&["kill", "-s", "KILL", &container]);
    feed.until(30, "a die after the resync", |e| {
        is(e, &id, McpEventKind::Die)
    })
    .await;
    agent.shutdown().await;
}

/// The liveness monitor: a server that stops answering MCP (paused) is `degraded` after three
/// failed checks, and `ready` again after one that passes; `mcp_status` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_degraded_then_ready_again() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let mut config = config(cp.url());
    config.mcp_liveness_interval = std::time::Duration::from_millis(300);
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let addr = http_addr(&agent);
    let a = unique("a");
    let id = deploy(addr, &g, vec![server(&a, free_port())]).await[0].clone();
    let mut feed = Feed::open(&cp.cp, &agent_id);
    feed.until(30, "the resync", |e| is(e, &id, McpEventKind::Resync))
        .await;

    let container = format!("dtma-mcp-{a}");
    docker_ok(&["pause", &container]);
    let e = feed
        .until(60, "degraded", |e| {
            is(e, &id, McpEventKind::Health) && e.state == ServerState::Degraded
        })
        .await;
    assert_eq!((e.server.as_str(), e.exit_code), (a.as_str(), None));
    assert_eq!(status_of(addr, &a).await, "degraded");

    docker_ok(&["unpause", &container]);
    feed.until(60, "ready again", |e| {
        is(e, &id, McpEventKind::Health) && e.state == ServerState::Ready
    })
    .await;
    assert_eq!(status_of(addr, &a).await, "ready");
    // Nothing but the monitor's health events came for it in between.
    let kinds: Vec<McpEventKind> = feed
        .events
        .iter()
        .filter(|e| e.container_id == id && e.kind != McpEventKind::Resync)
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [McpEventKind::Health, McpEventKind::Health]);
    agent.shutdown().await;
}

/// A unix-socket proxy in front of the Docker daemon that can cut every connection.
struct DockerProxy {
    path: PathBuf,
    kill: Arc<Mutex<CancellationToken>>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl DockerProxy {
    fn start() -> DockerProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let kill = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (k, s) = (kill.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut down, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
                };
                let token = k.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    }
                });
            }
        });
        DockerProxy {
            path,
            kill,
            _dir: dir,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Close every connection through the proxy (as a daemon restart would).
    fn cut(&self) {
        let old = std::mem::replace(&mut *self.kill.lock().unwrap(), CancellationToken::new());
        old.cancel();
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill.lock().unwrap().cancel();
    }
}

/// When Docker's event feed breaks, the agent subscribes again by itself, replays what Docker
/// still holds from the gap, and sends a resync of every server; live events follow as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_docker_feed_is_resubscribed_with_a_resync() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let daemon = DockerProxy::start();
    let cp = Cp::start(Options::default()).await;
    let mut config = config(cp.url());
    config.docker_socket = daemon.url();
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let a = unique("a");
    let container = format!("dtma-mcp-{a}");
    let id = deploy(http_addr(&agent), &g, vec![server(&a, free_port())]).await[0].clone();
    let mut feed = Feed::open(&cp.cp, &agent_id);
    feed.until(30, "the first resync", |e| is(e, &id, McpEventKind::Resync))
        .await;
    // A live event: whatever the watcher published before it has been read too.
    docker_ok(&["restart", "-t", "5", &container]);
    feed.until(30, "the restart", |e| is(e, &id, McpEventKind::Restart))
        .await;

    // The feed breaks; the container dies around the time the agent subscribes again.
    let mark = feed.events.len();
    daemon.cut();
    docker_ok(&["kill", "-s", "KILL", &container]);
    let e = feed
        .seen(mark, 30, "the die", |e| is(e, &id, McpEventKind::Die))
        .await;
    assert_eq!((e.state, e.exit_code), (ServerState::Failed, Some(137)));
    let e = feed
        .seen(mark, 30, "the resync after the feed broke", |e| {
            is(e, &id, McpEventKind::Resync)
        })
        .await;
    // Before the kill (just restarted: starting or ready) or after it.
    assert!(
        matches!(
            e.state,
            ServerState::Starting | ServerState::Ready | ServerState::Failed
        ),
        "{e:?}"
    );
    // Exactly once, live or replayed.
    let dies = feed.events[mark..]
        .iter()
        .filter(|e| is(e, &id, McpEventKind::Die))
        .count();
    assert_eq!(dies, 1);
    // Live events flow on the new subscription.
    docker_ok(&["start", &container]);
    feed.until(30, "the start", |e| is(e, &id, McpEventKind::Start))
        .await;
    agent.shutdown().await;
}

/// Shutdown ends an event stream with `error shutting_down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_stream() {
    let cp = Cp::start(Options::default()).await;
    let config = config(cp.url());
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let mut feed = Feed::open(&cp.cp, &agent_id);
    let id = feed.id();
    poll(200, "the stream open", || {
        agent
            .channel()
            .registry()
            .hello_streams()
            .iter()
            .any(|s| s.id == id)
    })
    .await;
    let running = tokio::spawn(agent.shutdown());
    match feed.end(30).await {
        AgentMessage::Error(e) => assert_eq!(e.code, ErrorCode::ShuttingDown, "{e:?}"),
        other => panic!("{other:?}"),
    }
    within(30, "shutdown", running).await.unwrap();
}
