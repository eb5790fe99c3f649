//! Scale-out on NATS: a real `nats-server` and three real `dtma-gateway` processes on loopback,
//! the real agent in this process behind a TCP load balancer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::cluster::{Files, Lb, Nats, Node, Receiver, logs};
use common::{
    Agent, OPERATOR, Sse, agent_config, fifo, get_json, json_of, release, send, token_of, within,
};

/// Every stdout byte of an SSE stream until its terminal event; asserts seqs are 0, 1, 2, ...
async fn read_until(
    sse: &mut Sse,
    next_seq: &mut u64,
    out: &mut String,
    until: &str,
) -> Option<serde_json::Value> {
    while !out.contains(until) {
        let e = sse.next().await.expect("the stream ended early");
        assert_eq!(e.seq(), *next_seq, "each event once, in order");
        *next_seq += 1;
        match e.event.as_str() {
            "output" => out.push_str(e.data["data"].as_str().unwrap()),
            "exit" | "error" => return Some(e.data),
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_through_one_node_reaches_an_agent_on_another_and_survives_that_node_dying() {
    let nats = Nats::start().await;
    let files = Files::new("");
    let a = Node::start("a", &nats, &files).await;
    let b = Node::start("b", &nats, &files).await;
    let mut c = Node::start("c", &nats, &files).await;
    // The balancer sends the agent to C first.
    let lb = Lb::start(vec![c.agent_addr]).await;
    let _agent = Agent::start_with(agent_config("a1", token_of("a1"), lb.url())).await;

    let dir = tempfile::tempdir().unwrap();
    let gate = fifo(dir.path(), "gate");
    let command = format!(
        "for i in $(seq 1 200); do echo before-$i; done; read x < {}; for i in $(seq 1 200); do echo after-$i; done",
        gate.display()
    );
    // Through node A, for an agent on node C (A waits for its directory to name C).
    let resp = send(
        a.operator_addr,
        "POST",
        "/v1/agents/a1/requests",
        Some(OPERATOR),
        &[],
        Some(
            serde_json::json!({"type": "exec", "id": "r-failover", "command": command}).to_string(),
        ),
    )
    .await;
    let mut sse = Sse::new(resp);
    let (mut seq, mut out) = (0, String::new());
    within(
        30,
        "the first half through node A",
        read_until(&mut sse, &mut seq, &mut out, "before-200\n"),
    )
    .await;
    let (_, listed) = get_json(a.operator_addr, "/v1/agents/a1").await;
    assert_eq!(listed["node"], "c", "{listed}");
    assert_eq!(listed["state"], "connected", "{listed}");

    // C dies mid-stream; the balancer now sends the agent to B.
    lb.set(vec![b.agent_addr]);
    c.kill().await;
    release(gate).await;
    let exit = within(
        30,
        "the rest after C died",
        read_until(&mut sse, &mut seq, &mut out, "\u{0}never"),
    )
    .await
    .unwrap_or_else(|| panic!("no exit\n{}", logs(&[&a, &b, &c])));
    assert_eq!(exit["exit_code"], 0, "{exit}");
    let expected: String = (1..=200)
        .map(|i| format!("before-{i}\n"))
        .chain((1..=200).map(|i| format!("after-{i}\n")))
        .collect();
    assert_eq!(out, expected, "every line once, in order");
    assert!(
        sse.next().await.is_none(),
        "the body ends after the terminal event"
    );

    // The agent is on B now, as every node's directory says; a new request through A works.
    let (status, answer) = json_of(
        send(
            a.operator_addr,
            "POST",
            "/v1/agents/a1/requests?wait=true",
            Some(OPERATOR),
            &[],
            Some(serde_json::json!({"type": "exec", "command": "echo after-failover"}).to_string()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stdout"], "after-failover\n", "{answer}");
    let (_, listed) = get_json(b.operator_addr, "/v1/agents/a1").await;
    assert_eq!(listed["node"], "b", "{listed}");
    assert_eq!(listed["state"], "connected", "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_opened_on_one_node_resumes_on_another_with_last_event_id() {
    let nats = Nats::start().await;
    let files = Files::new("");
    let a = Node::start("a", &nats, &files).await;
    let b = Node::start("b", &nats, &files).await;
    let lb = Lb::start(vec![a.agent_addr]).await;
    let _agent = Agent::start_with(agent_config("a2", token_of("a2"), lb.url())).await;
    let body =
        serde_json::json!({"type": "exec", "id": "r-resume", "command": "seq 1 50"}).to_string();
    let (status, first) = json_of(
        send(
            a.operator_addr,
            "POST",
            "/v1/agents/a2/requests?wait=true",
            Some(OPERATOR),
            &[],
            Some(body.clone()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let expected: String = (1..=50).map(|i| format!("{i}\n")).collect();
    assert_eq!(first["stdout"], expected);
    // The same id through B: attached to the recorded stream, not a second run.
    let resp = send(
        b.operator_addr,
        "POST",
        "/v1/agents/a2/requests",
        Some(OPERATOR),
        &[],
        Some(body),
    )
    .await;
    assert_eq!(resp.headers()["dtma-attached"], "true");
    let mut all = Sse::new(resp);
    let mut seqs = Vec::new();
    while let Some(e) = all.next().await {
        seqs.push(e.seq());
    }
    assert!(seqs.len() >= 3, "{seqs:?}");
    // Resume through B from the middle: exactly the rest.
    let from = seqs[seqs.len() / 2];
    let resp = send(
        b.operator_addr,
        "GET",
        "/v1/agents/a2/requests/r-resume/events",
        Some(OPERATOR),
        &[("last-event-id", &from.to_string())],
        None,
    )
    .await;
    let mut rest = Sse::new(resp);
    let mut got = Vec::new();
    while let Some(e) = rest.next().await {
        got.push(e.seq());
    }
    assert_eq!(got, seqs[seqs.len() / 2 + 1..].to_vec());
    // A different body under the held id is a conflict on any node.
    let (status, err) = json_of(
        send(
            b.operator_addr,
            "POST",
            "/v1/agents/a2/requests",
            Some(OPERATOR),
            &[],
            Some(
                serde_json::json!({"type": "exec", "id": "r-resume", "command": "true"})
                    .to_string(),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "{err}");
}

/// One operator call through the balancer: a fresh connection, `?wait=true`. A connection
/// that breaks before any answer (the node it reached was closing) is tried again with the
/// same request id, which the gateway makes safe (no second run). Returns the answer, and how
/// many tries it took.
async fn call(
    lb: std::net::SocketAddr,
    agent: &str,
    id: &str,
    command: &str,
) -> (u16, serde_json::Value, u32) {
    let body = serde_json::json!({"type": "exec", "id": id, "command": command}).to_string();
    let mut tries = 0;
    loop {
        tries += 1;
        let path = format!("/v1/agents/{agent}/requests?wait=true");
        let attempt = async {
            let resp = try_send(lb, "POST", &path, &[], Some(body.clone())).await?;
            Some(json_of(resp).await)
        };
        if let Some((status, v)) = attempt.await {
            return (status, v, tries);
        }
        assert!(tries < 20, "call {id}: no answer after {tries} connections");
    }
}

/// One exchange through the balancer; `None` when the connection broke before an answer.
async fn try_send(
    lb: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Option<hyper::Response<hyper::body::Incoming>> {
    let tcp = tokio::net::TcpStream::connect(lb).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw")
        .header("authorization", format!("Bearer {OPERATOR}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))
        .ok()?;
    sender.send_request(req).await.ok()
}

/// Run `command` on `agent` as request `id` and follow its events through the balancer to the
/// end, attaching again with `Last-Event-ID` whenever a body ends before the terminal event.
/// Returns stdout, the terminal event and how many bodies it took.
async fn follow(
    lb: std::net::SocketAddr,
    agent: &str,
    id: &str,
    command: String,
) -> (String, serde_json::Value, u32) {
    let (mut out, mut next, mut attaches, mut posted) = (String::new(), 0u64, 0u32, false);
    let body = serde_json::json!({"type": "exec", "id": id, "command": command}).to_string();
    loop {
        attaches += 1;
        assert!(attaches < 50, "no end after {attaches} attaches");
        let last = next.checked_sub(1).map(|s| s.to_string());
        let mut headers = vec![];
        if let Some(l) = &last {
            headers.push(("last-event-id", l.as_str()));
        }
        // Until the POST got an answer, it is repeated (the same request id: attached, never
        // run twice); after that, the stream is attached with `Last-Event-ID`.
        let (method, path, payload) = if posted {
            (
                "GET",
                format!("/v1/agents/{agent}/requests/{id}/events"),
                None,
            )
        } else {
            (
                "POST",
                format!("/v1/agents/{agent}/requests"),
                Some(body.clone()),
            )
        };
        // A connection the stopping node cut before any answer: try again.
        let Some(resp) = try_send(lb, method, &path, &headers, payload).await else {
            continue;
        };
        posted = true;
        let mut sse = Sse::new(resp);
        while let Some(e) = sse.next_or_cut().await {
            assert_eq!(e.seq(), next, "each event once, in order");
            next += 1;
            match e.event.as_str() {
                "output" => out.push_str(e.data["data"].as_str().unwrap()),
                "exit" | "error" => return (out, e.data, attaches),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_every_node_under_load_fails_no_call() {
    let nats = Nats::start().await;
    // A node holding a running operator stream waits at most 3 s for it, then stops; the
    // client resumes it through another node.
    // Every node posts webhooks to one receiver: a move must not be reported as a disconnect.
    let hooks = Receiver::start().await;
    let files = Files::new_with_drain_timeout(&hooks.toml(), 3);
    let mut nodes = [
        Node::start("a", &nats, &files).await,
        Node::start("b", &nats, &files).await,
        Node::start("c", &nats, &files).await,
    ];
    let agents_lb = Lb::start(nodes.iter().map(|n| n.agent_addr).collect()).await;
    let operators_lb = Lb::start(nodes.iter().map(|n| n.operator_addr).collect()).await;
    let _a1 = Agent::start_with(agent_config("a1", token_of("a1"), agents_lb.url())).await;
    let _a2 = Agent::start_with(agent_config("a2", token_of("a2"), agents_lb.url())).await;
    let _a3 = Agent::start_with(agent_config("a3", token_of("a3"), agents_lb.url())).await;

    // Every agent answers before the restarts begin.
    for agent in ["a1", "a2", "a3"] {
        let (status, v, _) = call(operators_lb.addr, agent, &format!("{agent}-warm"), "true").await;
        assert_eq!(status, 200, "{v}");
    }
    // A long stream across every restart: a batch of lines, then a wait on a FIFO that the
    // test opens after each restart. Read through the balancer and resumed with
    // `Last-Event-ID` whenever the node serving it stops.
    let dir = tempfile::tempdir().unwrap();
    let gate = fifo(dir.path(), "gate");
    let command = format!(
        "for r in 0 1 2 3; do for i in $(seq 1 100); do echo r$r-$i; done; [ $r -lt 3 ] && read x < {}; done; true",
        gate.display()
    );
    let long = tokio::spawn(follow(operators_lb.addr, "a1", "long-1", command));
    // Steady load: calls one after another to each agent until the restarts are over.
    let done = Arc::new(AtomicBool::new(false));
    // Meanwhile the directory, sampled through the balancer, never shows an agent offline
    // (every agent stays connected: it moves make-before-break).
    let watcher = {
        let (done, lb) = (done.clone(), operators_lb.addr);
        tokio::spawn(async move {
            let (mut offline, mut samples) = (Vec::new(), 0u32);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(resp) = try_send(lb, "GET", "/v1/agents", &[], None).await else {
                    continue;
                };
                let (status, v) = json_of(resp).await;
                if status != 200 {
                    continue;
                }
                samples += 1;
                for a in v["agents"].as_array().into_iter().flatten() {
                    if a["state"] != "connected" {
                        offline.push(a.to_string());
                    }
                }
            }
            (offline, samples)
        })
    };
    let retried = Arc::new(AtomicU64::new(0));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let progress_tx = Arc::new(progress_tx);
    let mut load = Vec::new();
    for agent in ["a1", "a2", "a3"] {
        let (done, retried, lb) = (done.clone(), retried.clone(), operators_lb.addr);
        let progress_tx = progress_tx.clone();
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u32;
            // Bounded: stops after the restarts, or after 2,000 calls.
            while n < 2_000 && !(done.load(Ordering::Relaxed) && n >= 5) {
                n += 1;
                let id = format!("{agent}-load-{n}");
                let (status, v, tries) = call(lb, agent, &id, &format!("echo {id}")).await;
                retried.fetch_add(u64::from(tries - 1), Ordering::Relaxed);
                let ok = status == 200
                    && v["stdout"] == format!("{id}\n")
                    && v["terminal"]["type"] == "exit"
                    && v["terminal"]["exit_code"] == 0;
                if !ok {
                    failures.push(format!("{id}: {status} {v}"));
                }
                progress_tx.send_modify(|c| *c += 1);
            }
            (n, failures)
        }));
    }
    // Restart every node in turn: SIGTERM (drain), wait for the exit, start it again.
    for node in nodes.iter_mut() {
        let status = node.stop().await;
        assert!(status.success(), "node {} exited with {status}", node.id);
        node.spawn().await;
        within(
            60,
            "the long command to wait on its FIFO",
            release(gate.clone()),
        )
        .await;
        // The next restart only after the load has made progress with this node back.
        let before = *progress.borrow_and_update();
        within(
            60,
            "load progress after a restart",
            progress.wait_for(|c| *c >= before + 6),
        )
        .await
        .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (shown_offline, samples) = within(30, "the directory watcher", watcher).await.unwrap();
    assert!(
        samples >= 10,
        "the directory was sampled during the restarts: {samples}"
    );
    assert!(
        shown_offline.is_empty(),
        "connected agents shown disconnected during the restarts: {shown_offline:?}"
    );
    assert_eq!(
        hooks.count("agent.disconnected"),
        0,
        "webhooks: {:?}",
        hooks.events.lock().unwrap()
    );
    assert!(
        hooks.count("agent.connected") >= 6,
        "each agent's first connect and its moves are reported: {:?}",
        hooks.events.lock().unwrap()
    );
    let mut total = 0;
    let mut failures = Vec::new();
    for l in load {
        let (n, f) = within(120, "the load to finish", l).await.unwrap();
        total += n;
        failures.extend(f);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let (out, exit, attaches) = within(120, "the long stream to end", long).await.unwrap();
    assert_eq!(exit["exit_code"], 0, "{exit}");
    let expected: String = (0..4)
        .flat_map(|r| (1..=100).map(move |i| format!("r{r}-{i}\n")))
        .collect();
    assert_eq!(
        out, expected,
        "every byte once, in order, across the restarts"
    );
    assert!(
        failures.is_empty(),
        "failed calls: {failures:#?}\n{}",
        logs(&refs)
    );
    assert!(
        total >= 15,
        "the load ran during the restarts: {total} calls"
    );
    // The drains really moved agents (each node told those it held to go).
    let told: usize = nodes
        .iter()
        .flat_map(|n| n.log.lock().unwrap().clone())
        .filter(|l| l.contains("agents told to move"))
        .filter_map(|l| {
            l.split("agents=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        told >= 3,
        "agents moved by the drains: {told}\n{}",
        logs(&refs)
    );
    eprintln!(
        "rolling restart: {total} calls, 0 failed, {} connections retried before any answer; the long stream was attached {attaches} times",
        retried.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_nats_is_gone_still_drains_and_exits_0() {
    let mut nats = Nats::start().await;
    let files = Files::new("");
    let mut a = Node::start("a", &nats, &files).await;
    nats.kill().await;
    // Before, the node's last beat ("gone") waited for a flush that never came: SIGTERM
    // drained, then the process stayed up for ever.
    let status = a.stop().await;
    assert!(status.success(), "{status}\n{}", logs(&[&a]));
}
