//! `GET /metrics` through real HTTP on 127.0.0.1:0, with the real agent against the reference
//! control plane: the counters move with commands over the channel and HTTP and with policy
//! denials; the endpoint needs a token unless `DTMA_METRICS_PUBLIC` opens it; the Grafana
//! dashboard in deploy/ queries only metrics a scrape has.

mod common;

use common::http::{Response, request};
use common::*;
use dtma_control_plane::Options;
use prometheus_parse::{Sample, Scrape, Value};

/// Parse a scrape's body with a Prometheus text parser (not our own encoder's view of it).
fn parse(r: &Response) -> Scrape {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = String::from_utf8(r.body.clone()).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(s: &Sample) -> f64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("not a single value: {s:?}"),
    }
}

/// The value of `metric` with exactly these labels; `None` when no such series exists.
fn get(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(value)
}

async fn scrape(addr: std::net::SocketAddr, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    request(addr, "GET", "/metrics", auth.as_deref(), None).await
}

#[tokio::test]
async fn counters_move_with_channel_http_and_policy() {
    let cp = Cp::start(Options::default()).await;
    let agent = InProc::start(agent_config("metrics-1", cp.url())).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    within(10, "agent connect", cp.cp.wait_for_agent("metrics-1")).await;

    // Before any request: the series exist at zero where that is meaningful.
    let before = parse(&scrape(addr, Some(TOKEN)).await);
    assert_eq!(
        get(
            &before,
            "dtma_channel_reconnects_total",
            &[("cause", "dead")]
        ),
        Some(0.0)
    );
    assert_eq!(
        get(&before, "dtma_stream_resent_bytes_total", &[]),
        Some(0.0)
    );

    // A command over the channel, one over HTTP, and a policy denial over HTTP.
    let s = cp.cp.request("metrics-1", exec("echo hello")).unwrap();
    let c = within(10, "exec", collect(s)).await;
    assert_eq!(c.stdout, b"hello\n");
    let auth = format!("Bearer {TOKEN}");
    let ok = request(
        addr,
        "POST",
        "/ssh/execute",
        Some(&auth),
        Some(br#"{"command":"echo hi"}"#),
    )
    .await;
    assert_eq!(ok.json()["stdout"], "hi\n");
    let denied = request(
        addr,
        "POST",
        "/ssh/execute",
        Some(&auth),
        Some(br#"{"command":"rm -rf /"}"#),
    )
    .await;
    assert_eq!(denied.status, 403);
    let rule = denied.json()["rule"].as_str().unwrap().to_owned();
    assert_eq!(rule, "mass_deletion");

    let m = parse(&scrape(addr, Some(TOKEN)).await);
    let requests = |source, outcome| {
        get(
            &m,
            "dtma_requests_total",
            &[("source", source), ("type", "exec"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("channel", "ok"), Some(1.0));
    assert_eq!(requests("http", "ok"), Some(1.0));
    assert_eq!(requests("http", "denied"), Some(1.0));
    assert_eq!(requests("channel", "denied"), None, "nothing denied there");
    assert_eq!(
        get(&m, "dtma_policy_rejections_total", &[("rule", &rule)]),
        Some(1.0)
    );
    let sent = get(&m, "dtma_stream_sent_bytes_total", &[]).unwrap();
    assert!(sent > 0.0, "bytes streamed: {sent}");
    assert_eq!(
        get(&m, "dtma_channel_state", &[("state", "connected")]),
        Some(1.0)
    );
    assert_eq!(
        get(&m, "dtma_channel_state", &[("state", "backoff")]),
        Some(0.0)
    );
    assert!(get(&m, "dtma_channel_connected_seconds", &[]).unwrap() >= 0.0);
    // Both commands have ended: nothing runs, and every series has its HELP text.
    assert_eq!(
        get(&m, "dtma_commands_running", &[("source", "http")]),
        Some(0.0)
    );
    for s in &m.samples {
        assert!(s.metric.starts_with("dtma_"), "{}", s.metric);
        assert!(m.docs.contains_key(&s.metric), "{} has no HELP", s.metric);
    }
    // A ping over the channel is counted by the channel itself.
    let mut p = cp
        .cp
        .request(
            "metrics-1",
            dtma_protocol::RequestBody::Ping(dtma_protocol::Ping {}),
        )
        .unwrap();
    within(10, "pong", p.recv()).await.unwrap();
    let m = parse(&scrape(addr, Some(TOKEN)).await);
    assert_eq!(
        get(
            &m,
            "dtma_requests_total",
            &[("source", "channel"), ("type", "ping"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn metrics_need_a_token_unless_public() {
    let mut config = dtma::config::Config::for_channel(TOKEN, None);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let guarded = InProc::start(config.clone()).await;
    let addr = guarded.running.as_ref().unwrap().http_addr;
    assert_eq!(scrape(addr, None).await.status, 401);
    assert_eq!(
        scrape(addr, Some("wrong-token-0123456789")).await.status,
        401
    );
    let m = parse(&scrape(addr, Some(TOKEN)).await);
    // Local-only: the channel is in no state.
    assert_eq!(
        get(&m, "dtma_channel_state", &[("state", "connected")]),
        Some(0.0)
    );

    config.metrics_public = true;
    let public = InProc::start(config).await;
    let addr = public.running.as_ref().unwrap().http_addr;
    parse(&scrape(addr, None).await);
    // Only /metrics is opened.
    let status = request(addr, "GET", "/status", None, None).await;
    assert_eq!(status.status, 401);
}

/// Every `dtma_*` name a panel of deploy/grafana-dashboard.json queries is in a scrape, and
/// every family a scrape has is on a panel. A family appears once it has a series, so two
/// agents between them produce them all: one whose Docker socket does not exist (Docker
/// errors) and that denies a command (a policy rejection), one on the host's Docker daemon (the
/// MCP servers' states, sampled from it).
#[tokio::test]
async fn the_grafana_dashboard_and_the_scrape_name_the_same_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let name = regex::Regex::new(r"dtma_[a-z_]+").unwrap();
    let queried: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| name.find_iter(e).map(|m| m.as_str().to_owned()))
        .collect();

    let mut config = dtma::config::Config::for_channel(TOKEN, None);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let on_docker = InProc::start(config.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    config.docker_socket = format!("unix://{}", dir.path().join("none.sock").display());
    let without_docker = InProc::start(config).await;
    let addr = without_docker.running.as_ref().unwrap().http_addr;
    let auth = format!("Bearer {TOKEN}");
    let denied = request(
        addr,
        "POST",
        "/ssh/execute",
        Some(&auth),
        Some(br#"{"command":"rm -rf /"}"#),
    )
    .await;
    assert_eq!(denied.status, 403);
    // The first scrape asks Docker for the MCP servers and fails; the second shows that.
    scrape(addr, Some(TOKEN)).await;
    let mut exported = std::collections::BTreeSet::new();
    for agent in [&without_docker, &on_docker] {
        let m = parse(&scrape(agent.running.as_ref().unwrap().http_addr, Some(TOKEN)).await);
        exported.extend(m.docs.keys().cloned());
    }
    for metric in &queried {
        assert!(
            exported.contains(metric),
            "the dashboard queries {metric}, which no scrape has (scrapes: {exported:?})"
        );
    }
    for family in &exported {
        assert!(queried.contains(family), "no panel shows {family}");
    }
    assert_eq!(exported.len(), 13, "{exported:?}");
}
