//! The operator API against the real gateway and the real agent: the directory, streaming
//! (SSE with `id:` = seq, NDJSON), resume with `Last-Event-ID`, idempotent request ids, the
//! buffered answer, and every refusal (agent token, operator token, unknown, offline, bad body).

mod common;

use std::time::Duration;

use common::*;
use dtma::agent::LinkState;

fn exec_body(id: Option<&str>, command: &str) -> String {
    let mut v = serde_json::json!({ "type": "exec", "command": command, "timeout_ms": 60_000 });
    if let Some(id) = id {
        v["id"] = id.into();
    }
    v.to_string()
}

async fn post(
    gw: &Gw,
    agent: &str,
    headers: &[(&str, &str)],
    body: String,
) -> hyper::Response<hyper::body::Incoming> {
    send(
        gw.api(),
        "POST",
        &format!("/v1/agents/{agent}/requests"),
        Some(OPERATOR),
        headers,
        Some(body),
    )
    .await
}

/// The stdout text of output events.
fn text_of(e: &SseEvent) -> String {
    assert_eq!(e.event, "output", "{e:?}");
    assert_eq!(e.data["encoding"], "utf8");
    e.data["data"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn lists_agents_with_state_heartbeat_and_capabilities() {
    let gw = Gw::start().await;
    let mut notices = gw.r().control_plane().notices();
    let agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    // The first heartbeat: `last_heartbeat_at` and the statuses come from it.
    within(20, "a status", async {
        loop {
            if let Ok((id, dtma_protocol::AgentMessage::Status(_))) = notices.recv().await
                && id == "a1"
            {
                return;
            }
        }
    })
    .await;

    let (status, v) = get_json(gw.api(), "/v1/agents").await;
    assert_eq!(status, 200, "{v}");
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{v}");
    let a = &agents[0];
    assert_eq!(a["agent_id"], "a1");
    assert_eq!(a["state"], "connected");
    assert_eq!(a["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        a["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "exec"),
        "{a}"
    );
    assert!(
        a["last_heartbeat_at"].as_str().unwrap().ends_with('Z'),
        "{a}"
    );
    assert!(a["tool_statuses"].is_array(), "{a}");
    assert_eq!(a["sandbox"]["mode"], "off", "{a}");
    assert!(a.get("disconnected_at").is_none());

    let (status, one) = get_json(gw.api(), "/v1/agents/a1").await;
    assert_eq!(status, 200);
    assert_eq!(one["session_id"], a["session_id"]);

    // Gone: still listed, as disconnected; requests get 503 with their own code.
    let mut changed = gw.r().control_plane().sessions_changed();
    agent.shutdown().await;
    within(20, "disconnect", async {
        while gw.r().control_plane().session("a1").is_some() {
            changed.changed().await.unwrap();
        }
    })
    .await;
    let (_, v) = get_json(gw.api(), "/v1/agents/a1").await;
    assert_eq!(v["state"], "disconnected", "{v}");
    assert!(v["disconnected_at"].is_string(), "{v}");
    let (status, v) = json_of(post(&gw, "a1", &[], exec_body(None, "true")).await).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "agent_offline");
}

#[tokio::test]
async fn exec_streams_lines_before_the_end_and_resumes_exactly_once() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate1 = fifo(tmp.path(), "gate1");
    let gate2 = fifo(tmp.path(), "gate2");
    let command = format!(
        "echo line-1; read x < {}; echo line-2; read y < {}; i=3; while [ $i -le 300 ]; do echo line-$i; i=$((i+1)); done",
        gate1.display(),
        gate2.display()
    );

    let resp = post(&gw, "a1", &[], exec_body(Some("stream-1"), &command)).await;
    assert_eq!(resp.headers()["dtma-request-id"], "stream-1");
    assert_eq!(resp.headers()["dtma-attached"], "false");
    assert_eq!(
        resp.headers()["location"],
        "/v1/agents/a1/requests/stream-1/events"
    );
    let mut sse = Sse::new(resp);
    let started = within(20, "started", sse.next()).await.unwrap();
    assert_eq!((started.event.as_str(), started.seq()), ("started", 0));
    assert_eq!(started.data["type"], "started");
    // The command is blocked on gate1: this line arrived before its end.
    let first = within(20, "line-1", sse.next()).await.unwrap();
    assert_eq!(first.seq(), 1);
    assert_eq!(text_of(&first), "line-1\n");
    let mut text = text_of(&first);
    let mut last = first.seq();

    // Drop the connection mid-stream; the command goes on meanwhile.
    drop(sse);
    release(gate1).await;

    // Resume: the rest from seq 2, up to line-2 (the command then waits on gate2).
    let path = "/v1/agents/a1/requests/stream-1/events";
    let id = last.to_string();
    let resp = send(
        gw.api(),
        "GET",
        path,
        Some(OPERATOR),
        &[("last-event-id", &id)],
        None,
    )
    .await;
    let mut sse = Sse::new(resp);
    let e = within(20, "line-2", sse.next()).await.unwrap();
    assert_eq!(e.seq(), last + 1, "no gap, no duplicate");
    text.push_str(&text_of(&e));
    last = e.seq();
    drop(sse);
    release(gate2).await;

    // Resume again: everything else, then `exit`, then the end of the body.
    let id = last.to_string();
    let resp = send(
        gw.api(),
        "GET",
        path,
        Some(OPERATOR),
        &[("last-event-id", &id)],
        None,
    )
    .await;
    let mut sse = Sse::new(resp);
    let exit = loop {
        let e = within(20, "events", sse.next())
            .await
            .expect("the stream ends with exit");
        assert_eq!(e.seq(), last + 1, "no gap, no duplicate: {e:?}");
        last = e.seq();
        if e.event == "exit" {
            break e;
        }
        text.push_str(&text_of(&e));
    };
    assert_eq!(exit.data["exit_code"], 0);
    assert!(within(20, "body end", sse.next()).await.is_none());
    let expected: String = (1..=300).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(text, expected);

    // A late reader from the start gets the whole stream again, as NDJSON this time.
    let resp = send(
        gw.api(),
        "GET",
        path,
        Some(OPERATOR),
        &[("accept", "application/x-ndjson")],
        None,
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let lines: Vec<serde_json::Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, last + 1);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64);
    }
    assert_eq!(lines.last().unwrap()["type"], "exit");
}

#[tokio::test]
async fn the_same_request_id_twice_runs_one_command() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let command = format!("echo run >> {}; echo done", runs.display());
    let body = exec_body(Some("once-1"), &command);

    let first = post(&gw, "a1", &[("prefer", "wait")], body.clone()).await;
    assert_eq!(first.headers()["dtma-attached"], "false");
    let (status, a) = json_of(first).await;
    assert_eq!(status, 200, "{a}");
    let second = post(&gw, "a1", &[("prefer", "wait")], body.clone()).await;
    assert_eq!(second.headers()["dtma-attached"], "true");
    let (status, b) = json_of(second).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a, b, "the same stream, the same answer");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n", "one run");

    // The same id with another body is a conflict, not a second command.
    let (status, v) =
        json_of(post(&gw, "a1", &[], exec_body(Some("once-1"), "echo other")).await).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "request_id_conflict");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
}

#[tokio::test]
async fn the_buffered_answer_has_the_exit_code_and_the_output() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a2", &gw).await;
    connected(&gw, "a2").await;
    let resp = send(
        gw.api(),
        "POST",
        "/v1/agents/a2/requests?wait=true",
        Some(OPERATOR),
        &[],
        Some(exec_body(None, "echo hello; echo oops >&2; exit 3")),
    )
    .await;
    let rid = resp.headers()["dtma-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(rid.len(), 32, "a generated id: {rid}");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["request_id"], rid.as_str());
    assert_eq!(v["stdout"], "hello\n");
    assert_eq!(v["stderr"], "oops\n");
    assert_eq!(v["output_truncated"], false);
    assert_eq!(v["terminal"]["type"], "exit");
    assert_eq!(v["terminal"]["exit_code"], 3);

    // Any protocol request, not only exec: a ping answers `result`.
    let (status, v) = json_of(
        post(
            &gw,
            "a2",
            &[("prefer", "wait")],
            r#"{"type":"ping"}"#.into(),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["terminal"]["type"], "result");
    assert_eq!(v["terminal"]["data"]["pong"], true);

    // A request the agent refuses before it runs ends the stream with that error.
    let (status, v) =
        json_of(post(&gw, "a2", &[("prefer", "wait")], exec_body(None, "   ")).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["terminal"]["type"], "error");
    assert_eq!(v["terminal"]["code"], "invalid_request");
}

#[tokio::test]
async fn operators_need_their_own_token() {
    let gw = Gw::start().await;
    for auth in [None, Some("wrong-token-0123456789"), Some(token_of("a1"))] {
        let resp = send(gw.api(), "GET", "/v1/agents", auth, &[], None).await;
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let (status, v) = json_of(resp).await;
        assert_eq!(status, 401, "{auth:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // Health needs none (load balancers).
    let (status, _) = json_of(send(gw.api(), "GET", "/healthz", None, &[], None).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn typed_errors_for_unknown_agents_requests_and_bad_bodies() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("nobody", exec_body(None, "true"), 404, "unknown_agent"),
        ("a1", "not json".into(), 400, "bad_request"),
        ("a1", "[1]".into(), 400, "bad_request"),
        ("a1", r#"{"type":"exec"}"#.into(), 400, "bad_request"),
        ("a1", r#"{"type":"launch"}"#.into(), 400, "bad_request"),
        (
            "a1",
            r#"{"type":"ack","id":"x","seq":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "a1",
            r#"{"type":"exec","command":"true","bogus":1}"#.into(),
            400,
            "bad_request",
        ),
    ];
    for (agent, body, want, code) in cases {
        let (status, v) = json_of(post(&gw, agent, &[], body.clone()).await).await;
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap()),
            (want, code),
            "{body}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, v) = get_json(gw.api(), "/v1/agents/nobody").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_agent"))
    );
    let (status, v) = get_json(gw.api(), "/v1/agents/a1/requests/never/events").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_request"))
    );
    let (status, v) = get_json(gw.api(), "/v1/nothing").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, v) =
        json_of(send(gw.api(), "DELETE", "/v1/agents", Some(OPERATOR), &[], None).await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

/// Wait until the agent backs off after a refused dial, and return why.
async fn refusal(agent: &Agent) -> String {
    let mut link = agent.link();
    within(20, "a refused dial", async {
        loop {
            if let LinkState::BackingOff { cause, .. } = &*link.borrow_and_update() {
                return cause.clone();
            }
            link.changed().await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn agents_with_a_wrong_token_are_refused() {
    let gw = Gw::start().await;
    // A token the store does not know: 401 at the upgrade.
    let stranger =
        Agent::start_with(agent_config("a1", "unknown-token-0123456789", gw.url())).await;
    let cause = refusal(&stranger).await;
    assert!(cause.contains("401"), "{cause}");
    // Another agent's token: the upgrade passes, `hello` names the wrong id: closed with 4003.
    let impostor = Agent::start_with(agent_config("a1", token_of("a2"), gw.url())).await;
    let cause = refusal(&impostor).await;
    assert!(cause.contains("4003"), "{cause}");
    assert!(gw.r().control_plane().agents().is_empty());
    assert_eq!(
        gw.r()
            .control_plane()
            .stats()
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn stopping_ends_operator_streams_and_join_returns() {
    // A stream still running when the drain times out is cut.
    let mut gw = Gw::start_with(|c| c.drain.timeout = Duration::from_millis(300)).await;
    let _agent = Agent::start("a3", &gw).await;
    connected(&gw, "a3").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate = fifo(tmp.path(), "gate");
    let command = format!("echo waiting; read x < {}", gate.display());
    let mut sse = Sse::new(post(&gw, "a3", &[], exec_body(None, &command)).await);
    assert_eq!(
        within(20, "started", sse.next()).await.unwrap().event,
        "started"
    );
    assert_eq!(
        text_of(&within(20, "output", sse.next()).await.unwrap()),
        "waiting\n"
    );

    // The command is still blocked: the body ends because the gateway stops, not the command.
    gw.stop.cancel();
    assert!(within(20, "body end", sse.next()).await.is_none());
    within(20, "join", gw.running.take().unwrap().join()).await;
    // Dropping the agent cancels its work: the blocked child is killed with its group.
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_drains_running_streams_to_their_end() {
    let mut gw = Gw::start().await;
    let _agent = Agent::start("a3", &gw).await;
    connected(&gw, "a3").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate = fifo(tmp.path(), "gate");
    let command = format!("echo waiting; read x < {}; echo done", gate.display());
    let mut sse = Sse::new(post(&gw, "a3", &[], exec_body(None, &command)).await);
    assert_eq!(
        within(20, "started", sse.next()).await.unwrap().event,
        "started"
    );
    assert_eq!(
        text_of(&within(20, "output", sse.next()).await.unwrap()),
        "waiting\n"
    );

    gw.stop.cancel();
    // The running stream goes on to its end: the drain waits for it.
    release(gate).await;
    assert_eq!(
        text_of(&within(20, "output", sse.next()).await.unwrap()),
        "done\n"
    );
    assert_eq!(within(20, "exit", sse.next()).await.unwrap().event, "exit");
    assert!(within(20, "body end", sse.next()).await.is_none());
    within(20, "join", gw.running.take().unwrap().join()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_nobody_reads_is_cancelled_at_the_agent() {
    let gw =
        Gw::start_with(|c| c.streams.unattended_cancel = Some(Duration::from_millis(200))).await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    // Open a follow and go away without reading it.
    let resp = post(
        &gw,
        "a1",
        &[],
        r#"{"type":"mcp_events","id":"ev-unread"}"#.into(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The gateway cancels it at the agent, and it ends.
    let stream = gw.r().streams().get("a1", "ev-unread").await.unwrap();
    let mut ended = gw.r().streams().changed();
    within(20, "the unread follow to end", async {
        while !stream.ended() {
            ended.changed().await.unwrap();
        }
    })
    .await;
    let mut sse = Sse::new(
        send(
            gw.api(),
            "GET",
            "/v1/agents/a1/requests/ev-unread/events",
            Some(OPERATOR),
            &[],
            None,
        )
        .await,
    );
    let mut last = None;
    while let Some(e) = within(20, "events", sse.next()).await {
        last = Some(e);
    }
    let last = last.expect("a terminal event");
    assert_eq!(last.event, "result", "{:?}", last.data);
    assert_eq!(last.data["data"]["reason"], "cancelled", "{:?}", last.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_agents_sessions_and_streams_without_a_token() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a2", &gw).await;
    connected(&gw, "a2").await;
    let (status, answer) = json_of(
        send(
            gw.api(),
            "POST",
            "/v1/agents/a2/requests?wait=true",
            Some(OPERATOR),
            &[],
            Some(r#"{"type":"exec","command":"echo counted"}"#.into()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let resp = send(gw.api(), "GET", "/metrics", None, &[], None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
            || resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
    );
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{text}"))
    };
    assert_eq!(
        value("dtma_gateway_agents", Some(("state", "connected"))),
        1.0
    );
    assert!(value("dtma_gateway_sessions_total", None) >= 1.0);
    assert_eq!(
        value("dtma_gateway_streams", Some(("state", "retained"))),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("dtma_gateway_streams", Some(("state", "running"))),
        0.0,
        "{text}"
    );
    // This scrape's own connection.
    assert!(value("dtma_gateway_operator_work", None) >= 1.0, "{text}");
    assert_eq!(value("dtma_gateway_draining", None), 0.0);
    // Counts only: no agent id, no token in the text.
    assert!(
        !text.contains("a2\"") && !text.contains(token_of("a2")),
        "{text}"
    );
}
