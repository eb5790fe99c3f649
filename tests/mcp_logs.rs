//! Following an MCP server's log against a real Docker daemon, over the channel (`logs_follow`
//! through the reference control plane) and the local API (`GET /mcp/servers/:name/logs`).
//!
//! The test MCP server logs `<prefix> <n>` every few milliseconds (n = 1, 2, ... per run;
//! every 10th line also to stderr). Every test deploys its own group (unique ids and instance
//! names, `DTMA_MCP_NETWORK=host`), runs its own agent (unique agent id), and removes the
//! group's containers at the end, however it ends. What a follow delivered is checked against
//! `docker logs` of the same container: it must be a prefix of it, byte for byte.

mod common;

use common::docker::{docker, docker_ok, free_port, test_image};
use common::http::{Response, request};
use common::mcp::{GroupGuard, unique};
use common::*;
use dtma_control_plane::{Options, StreamRx, output_bytes};
use dtma_protocol::{AgentMessage, Cancel, ErrorCode, LogsEndReason, ProgressStep, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(url: Option<String>) -> dtma::Config {
    let mut c = common::mcp::mcp_config(url);
    // A follow never ends on its own: shutdown must end it when the drain starts, not after
    // the grace period (an hour here, so a follow that held shutdown would time the test out).
    c.shutdown_grace = std::time::Duration::from_secs(3600);
    c
}

/// A test MCP server that logs `<prefix> <n>` every `every_ms`.
fn logging_server(name: &str, every_ms: u32, prefix: &str) -> serde_json::Value {
    let port = free_port();
    serde_json::json!({
        "accountToolInstanceId": format!("ati-{name}"),
        "dockerImageUrl": test_image(),
        "instanceNameOnToolbox": name,
        "portBindings": { format!("{port}/tcp"): port },
        "environmentVariables": {
            "MCP_PORT": port.to_string(),
            "MCP_MODE": "discover",
            "MCP_LOG_EVERY_MS": every_ms.to_string(),
            "MCP_LOG_PREFIX": prefix,
        },
        "resourceLimits": { "memory": "64m", "cpu": 0.5 },
        "readinessTimeoutMs": 20000,
    })
}

async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(addr, method, path, Some(&auth), None).await
}

async fn deploy(addr: std::net::SocketAddr, group: &str, server: serde_json::Value) {
    let body = serde_json::json!({ "groupId": group, "servers": [server] });
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        addr,
        "POST",
        "/mcp/groups",
        Some(&auth),
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `docker logs` of a container: (stdout, stderr).
fn docker_logs(container: &str) -> (Vec<u8>, Vec<u8>) {
    let out = docker(&["logs", container]);
    assert!(
        out.status.success(),
        "docker logs {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, out.stderr)
}

/// Poll `docker logs` (bounded) until `enough` holds for it; return what it had then.
async fn wait_for_log(
    container: &str,
    what: &str,
    enough: impl Fn(&[u8], &[u8]) -> bool,
) -> (Vec<u8>, Vec<u8>) {
    for _ in 0..400 {
        let (out, err) = docker_logs(container);
        if enough(&out, &err) {
            return (out, err);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{container}: the log never had {what}");
}

/// The `n` of each `<prefix> <n>` line, in order.
fn numbers(stdout: &[u8], prefix: &str) -> Vec<u64> {
    let head = format!("{prefix} ");
    String::from_utf8_lossy(stdout)
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.strip_prefix(&head)?.trim_end().parse().ok())
        .collect()
}

fn lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

fn assert_prefix(got: &[u8], of: &[u8], what: &str) {
    assert!(
        of.starts_with(got),
        "{what}: what the follow delivered ({} bytes) is not a prefix of `docker logs` ({} bytes); \
         first difference at byte {}",
        got.len(),
        of.len(),
        got.iter()
            .zip(of)
            .position(|(a, b)| a != b)
            .unwrap_or(of.len())
    );
}

fn logs_follow(fields: serde_json::Value) -> RequestBody {
    let mut fields = fields;
    fields["type"] = "logs_follow".into();
    serde_json::from_value(fields).unwrap()
}

/// One `logs_follow` stream as it arrives: seq checked, output and progress gathered.
struct Follow {
    rx: StreamRx,
    next_seq: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    steps: Vec<ProgressStep>,
    end: Option<AgentMessage>,
}

impl Follow {
    fn new(rx: StreamRx) -> Follow {
        Follow {
            rx,
            next_seq: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            steps: Vec::new(),
            end: None,
        }
    }

    async fn next(&mut self) {
        assert!(self.end.is_none(), "read past the end");
        let m = self.rx.recv().await.expect("the stream closed early");
        assert_eq!(seq_of(&m), Some(self.next_seq), "out of order: {m:?}");
        self.next_seq += 1;
        match m {
            AgentMessage::Output(o) => match o.fd {
                dtma_protocol::Fd::Stdout => self.stdout.extend(output_bytes(&o)),
                dtma_protocol::Fd::Stderr => self.stderr.extend(output_bytes(&o)),
            },
            AgentMessage::Progress(p) => self.steps.push(p.step),
            m @ (AgentMessage::Result(_) | AgentMessage::Error(_)) => self.end = Some(m),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Read until `done` holds, for at most `secs`.
    async fn until(&mut self, secs: u64, what: &str, done: impl Fn(&Follow) -> bool) {
        within(secs, what, async {
            while !done(self) {
                self.next().await;
            }
        })
        .await
    }

    async fn read_to_end(&mut self, secs: u64, what: &str) -> &AgentMessage {
        self.until(secs, what, |f| f.end.is_some()).await;
        self.end.as_ref().unwrap()
    }

    fn bytes(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }
}

fn reason(end: &AgentMessage) -> LogsEndReason {
    match end {
        AgentMessage::Result(r) => serde_json::from_value(r.data["reason"].clone()).unwrap(),
        other => panic!("not a result: {other:?}"),
    }
}

/// A channel, an agent on it, and a deployed logging server.
struct Setup {
    cp: Cp,
    agent: InProc,
    agent_id: String,
    addr: std::net::SocketAddr,
    instance: String,
    container: String,
    _guard: GroupGuard,
}

async fn setup(every_ms: u32, prefix: &str) -> Setup {
    let group = unique("grp");
    let guard = GroupGuard(group.clone());
    let cp = Cp::start(Options::default()).await;
    let config = config(Some(cp.url()));
    let agent_id = config.agent_id.clone();
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let instance = unique("logs");
    deploy(addr, &group, logging_server(&instance, every_ms, prefix)).await;
    Setup {
        cp,
        agent,
        agent_id,
        addr,
        container: format!("dtma-mcp-{instance}"),
        instance,
        _guard: guard,
    }
}

impl Setup {
    fn follow(&self, fields: serde_json::Value) -> Follow {
        let mut fields = fields;
        fields["instance_name"] = self.instance.clone().into();
        Follow::new(
            self.cp
                .cp
                .request(&self.agent_id, logs_follow(fields))
                .unwrap(),
        )
    }

    fn cancel(&self, f: &Follow) {
        let target = f.rx.id().to_owned();
        let _ = self
            .cp
            .cp
            .request(&self.agent_id, RequestBody::Cancel(Cancel { target }))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_delivers_every_line_once_in_order_across_a_restart() {
    let prefix = unique("tok");
    let s = setup(5, &prefix).await;
    let mut f = s.follow(serde_json::json!({ "tail": 10000 }));
    f.until(30, "40 lines of the first run", |f| {
        numbers(&f.stdout, &prefix).len() >= 40
    })
    .await;
    assert_eq!(f.steps.first(), Some(&ProgressStep::Following));
    // No gap so far: the first run counts 1, 2, 3, ... from its start (tail covers it all).
    let first = numbers(&f.stdout, &prefix);
    assert!(
        first.iter().copied().eq(1..=first.len() as u64),
        "{first:?}"
    );

    let container = s.container.clone();
    tokio::task::spawn_blocking(move || docker_ok(&["restart", "-t", "5", &container]))
        .await
        .unwrap();
    // The second run counts from 1 again: read until it has logged 40 lines.
    f.until(60, "40 lines of the second run", |f| {
        let n = numbers(&f.stdout, &prefix);
        let reset = n.windows(2).position(|w| w[1] <= w[0]);
        reset.is_some_and(|at| n.len() - at > 40)
    })
    .await;
    assert!(
        f.steps.contains(&ProgressStep::ContainerRestarted),
        "{:?}",
        f.steps
    );
    if let Some(waiting) = f.steps.iter().position(|s| *s == ProgressStep::Waiting) {
        let restarted = f
            .steps
            .iter()
            .position(|s| *s == ProgressStep::ContainerRestarted);
        assert!(restarted > Some(waiting), "{:?}", f.steps);
    }

    s.cancel(&f);
    let end = f
        .read_to_end(30, "the cancelled follow's result")
        .await
        .clone();
    assert_eq!(reason(&end), LogsEndReason::Cancelled);
    if let AgentMessage::Result(r) = &end {
        assert_eq!(r.data["stdout_bytes"], f.stdout.len() as u64);
        assert_eq!(r.data["stderr_bytes"], f.stderr.len() as u64);
    }

    // Every number exactly once, in order: 1..=a, then 1..=b; nothing repeated, nothing lost.
    let n = numbers(&f.stdout, &prefix);
    let resets: Vec<usize> = (1..n.len()).filter(|&i| n[i] != n[i - 1] + 1).collect();
    assert_eq!(resets.len(), 1, "one restart, one reset: {n:?}");
    assert_eq!(n[resets[0]], 1, "the second run starts at 1: {n:?}");
    // And byte for byte what Docker holds, both streams.
    let (out, err) = docker_logs(&s.container);
    assert_prefix(&f.stdout, &out, "stdout");
    assert_prefix(&f.stderr, &err, "stderr");
    // Every 10th line also goes to stderr: 10, 20, 30 of each run at least.
    assert!(
        lines(&f.stderr) >= 6,
        "{}",
        String::from_utf8_lossy(&f.stderr)
    );
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_pauses_its_follow_and_then_gets_everything() {
    // Fat lines, quickly: the log grows far beyond what the agent may hold.
    let prefix = format!("{}-{}", unique("slow"), "x".repeat(400));
    let s = setup(1, &prefix).await;
    const CREDIT: usize = 4096;
    let rx =
        s.cp.cp
            .request(
                &s.agent_id,
                logs_follow(serde_json::json!({
                    "instance_name": s.instance, "tail": 10000, "credit": CREDIT,
                })),
            )
            .unwrap()
            .manual_credit();
    let mut f = Follow::new(rx);
    f.until(30, "the first credit's worth", |f| f.bytes() >= CREDIT)
        .await;
    assert_eq!(f.bytes(), CREDIT, "no output beyond the credit");

    // Docker's log goes on growing; the agent holds next to nothing for the paused stream.
    let (out, err) = wait_for_log(&s.container, "1 MiB more", |o, e| {
        o.len() + e.len() >= CREDIT + (1 << 20)
    })
    .await;
    let held = s.agent.channel().registry().buffered_bytes();
    assert!(held < 64 << 10, "the agent buffers {held} bytes");

    // Credit again: everything Docker had, in order, exactly once.
    f.rx.grant(1 << 30);
    let want = out.len() + err.len();
    f.until(60, "the rest of the log", |f| f.bytes() >= want)
        .await;
    let (out, err) = docker_logs(&s.container);
    assert_prefix(&f.stdout, &out, "stdout");
    assert_prefix(&f.stderr, &err, "stderr");
    let n = numbers(&f.stdout, &prefix);
    assert!(n.iter().copied().eq(1..=n.len() as u64), "gap or repeat");

    // Shutdown ends a running follow at once, with `cancelled`, flushed before the agent stops.
    within(60, "shutdown with a follow running", s.agent.shutdown()).await;
    let end = f.read_to_end(30, "the follow's result").await;
    assert_eq!(reason(end), LogsEndReason::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_removals_and_refusals_over_the_channel() {
    let prefix = unique("tail");
    let s = setup(5, &prefix).await;
    wait_for_log(&s.container, "20 lines", |o, _| {
        numbers(o, &prefix).len() >= 20
    })
    .await;

    // Not following: the last 5 messages (both streams), Docker's timestamps kept.
    let mut f = s.follow(serde_json::json!({ "tail": 5, "follow": false, "timestamps": true }));
    let end = f.read_to_end(30, "the tail").await.clone();
    assert_eq!(reason(&end), LogsEndReason::Ended);
    assert_eq!(f.steps, [ProgressStep::Following]);
    assert_eq!(lines(&f.stdout) + lines(&f.stderr), 5);
    for line in String::from_utf8_lossy(&f.stdout).lines() {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert!(
            stamp.len() >= 20 && stamp.ends_with('Z') && stamp.contains('T'),
            "{line}"
        );
        assert!(
            rest.starts_with(&prefix) || rest.starts_with("dtma-test-mcp"),
            "{line}"
        );
    }

    // Without timestamps, from now on (tail 0): only lines logged after the follow began.
    let before = numbers(&docker_logs(&s.container).0, &prefix);
    let mut live = s.follow(serde_json::json!({ "tail": 0 }));
    live.until(30, "new lines", |f| numbers(&f.stdout, &prefix).len() >= 5)
        .await;
    let got = numbers(&live.stdout, &prefix);
    assert!(got[0] > *before.last().unwrap(), "{got:?} after {before:?}");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");

    // The group removed under the follow: it ends with `removed`.
    let r = call(s.addr, "DELETE", &format!("/mcp/groups/{}", s._guard.0)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let end = live.read_to_end(60, "the follow's end").await;
    assert_eq!(reason(end), LogsEndReason::Removed);

    // An unknown instance: `not_found`, as the stream's only event.
    let mut gone = s.follow(serde_json::json!({}));
    match gone.read_to_end(30, "not_found").await {
        AgentMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert_eq!(e.seq, Some(0));
        }
        other => panic!("{other:?}"),
    }

    // A bad `since` never becomes a stream: an unsequenced invalid_request naming it.
    let mut notices = s.cp.cp.notices();
    let _ = s.cp.cp.request_with_id(
        &s.agent_id,
        "bad-since".into(),
        None,
        logs_follow(serde_json::json!({ "instance_name": s.instance, "since": "yesterday" })),
    );
    match within(10, "invalid_request", next_notice(&mut notices)).await {
        AgentMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert_eq!(e.seq, None);
            assert!(e.message.contains("since"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    s.agent.shutdown().await;
}

/// Server-sent events of `GET /mcp/servers/:name/logs`, read from a raw connection.
struct Sse {
    tcp: tokio::net::TcpStream,
    raw: Vec<u8>,
}

impl Sse {
    async fn open(addr: std::net::SocketAddr, path: &str) -> Sse {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        Sse {
            tcp,
            raw: Vec::new(),
        }
    }

    /// Events so far: (name, data).
    fn events(&self) -> Vec<(String, serde_json::Value)> {
        let text = String::from_utf8_lossy(&self.raw);
        text.split("\n\n")
            .filter_map(|block| {
                let name = block.lines().find_map(|l| l.strip_prefix("event:"))?.trim();
                let data = block.lines().find_map(|l| l.strip_prefix("data:"))?.trim();
                Some((name.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect()
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Sse) -> bool) {
        let mut buf = [0u8; 4096];
        within(30, what, async {
            while !done(self) {
                let n = self.tcp.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "closed early: {}",
                    String::from_utf8_lossy(&self.raw)
                );
                self.raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
    }

    fn count(&self, name: &str) -> usize {
        self.events().iter().filter(|(n, _)| n == name).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_serves_a_tail_and_a_follow() {
    let group = unique("grp");
    let _guard = GroupGuard(group.clone());
    let agent = InProc::start(config(None)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let instance = unique("logs");
    let prefix = unique("http");
    deploy(addr, &group, logging_server(&instance, 5, &prefix)).await;
    let container = format!("dtma-mcp-{instance}");
    wait_for_log(&container, "20 lines", |o, _| {
        numbers(o, &prefix).len() >= 20
    })
    .await;
    let path = format!("/mcp/servers/{instance}/logs");

    // follow=false: the tail as JSON.
    let r = call(addr, "GET", &format!("{path}?follow=false&tail=3")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["instance_name"], instance.as_str());
    let (out, err) = (j["stdout"].as_str().unwrap(), j["stderr"].as_str().unwrap());
    assert_eq!(lines(out.as_bytes()) + lines(err.as_bytes()), 3, "{j}");
    assert_eq!(j["stdout_bytes"], out.len() as u64);
    let r = call(
        addr,
        "GET",
        &format!("{path}?follow=0&tail=1&timestamps=true"),
    )
    .await;
    let j = r.json();
    let line = format!(
        "{}{}",
        j["stdout"].as_str().unwrap(),
        j["stderr"].as_str().unwrap()
    );
    assert!(line.split(' ').next().unwrap().ends_with('Z'), "{line}");

    // Bad query values name their parameter; an unknown instance is 404.
    for (query, param) in [
        ("tail=10001", "tail"),
        ("tail=-1", "tail"),
        ("since=yesterday", "since"),
        ("follow=maybe", "follow"),
        ("timestamps=2", "timestamps"),
    ] {
        let r = call(addr, "GET", &format!("{path}?{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        let message = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            message.contains(&format!("`{param}`")),
            "{query}: {message}"
        );
    }
    let r = call(
        addr,
        "GET",
        &format!("/mcp/servers/{}/logs", unique("nope")),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");

    // follow (the default): server-sent events; a client that leaves ends the follow.
    // The agent's own long-lived tasks (the Docker event watcher, the liveness monitor) run too.
    let baseline = agent.agent().running_tasks();
    let mut sse = Sse::open(addr, &format!("{path}?tail=0")).await;
    sse.until("three stdout events", |s| s.count("stdout") >= 3)
        .await;
    let head = String::from_utf8_lossy(&sse.raw).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let events = sse.events();
    assert_eq!(events[0].0, "progress");
    assert_eq!(events[0].1["step"], "following");
    let (_, chunk) = events.iter().find(|(n, _)| n == "stdout").unwrap();
    assert_eq!(chunk["encoding"], "utf8");
    drop(sse);
    let mut tasks = usize::MAX;
    for _ in 0..200 {
        tasks = agent.agent().running_tasks();
        if tasks <= baseline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(tasks <= baseline, "the follow outlived its client");
    let r = call(addr, "GET", "/health").await;
    assert_eq!(r.status, 200);

    // A follow whose container is removed ends with `end` `removed`, then the response ends.
    let mut sse = Sse::open(addr, &format!("{path}?tail=1")).await;
    sse.until("a stdout event", |s| s.count("stdout") >= 1)
        .await;
    let r = call(addr, "DELETE", &format!("/mcp/groups/{group}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    sse.until("the end event", |s| s.count("end") >= 1).await;
    let (_, end) = sse.events().into_iter().find(|(n, _)| n == "end").unwrap();
    assert_eq!(end["reason"], "removed", "{end}");
    assert!(end["stdout_bytes"].as_u64().unwrap() > 0, "{end}");
    agent.shutdown().await;
}
