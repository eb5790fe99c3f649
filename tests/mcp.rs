//! MCP groups against a real Docker daemon, through both entry points: the local API
//! (`/mcp/*`) and the channel (`mcp_*` requests through the reference control plane).
//!
//! The daemon here has no bridge networking, so the agent runs with `DTMA_MCP_NETWORK=host`:
//! each test MCP server binds its own port on 127.0.0.1, named in `environmentVariables`.
//! Every test uses its own group id and instance names, and removes what it created at the end.

mod common;

use common::docker::{docker, docker_ok, free_port, test_image};
use common::http::{Response, request};
use common::mcp::{GroupGuard, unique};
use common::*;
use dtma_control_plane::Options;
use dtma_protocol::{AgentMessage, ErrorCode, RequestBody};

/// A secret value that must never show up outside the container's own environment.
const SECRET: &str = "sk-live-5ecret-value-42";

/// A container made by the test, not by the agent.
struct ForeignContainer(String);
impl Drop for ForeignContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// One server of the test image: `mode` is the test MCP server's `MCP_MODE`.
fn server(name: &str, port: u16, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "accountToolInstanceId": format!("ati-{name}"),
        "dockerImageUrl": test_image(),
        "instanceNameOnToolbox": name,
        "mcpEndpointPath": "/mcp",
        "mcpTransportType": "http",
        "portBindings": { format!("{port}/tcp"): port },
        "environmentVariables": { "MCP_PORT": port.to_string(), "MCP_MODE": mode, "API_KEY": SECRET },
        "resourceLimits": { "memory": "64m", "cpu": 0.5 },
        "readinessTimeoutMs": 5000,
    })
}

fn group(id: &str, servers: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "groupId": id, "servers": servers, "options": { "maxConcurrentDeployments": 2 } })
}

fn config(url: Option<String>) -> dtma::Config {
    common::mcp::mcp_config(url)
}

async fn post(addr: std::net::SocketAddr, path: &str, body: &serde_json::Value) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        path,
        Some(&auth),
        Some(body.to_string().as_bytes()),
    )
    .await
}

async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(addr, method, path, Some(&auth), None).await
}

/// `(id, StartedAt, running)` of a container, by name.
fn container_state(name: &str) -> Option<(String, String, bool)> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{.Id}} {{.State.StartedAt}} {{.State.Running}}",
        name,
    ]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    Some((
        parts.next()?.to_owned(),
        parts.next()?.to_owned(),
        parts.next()? == "true",
    ))
}

fn group_containers(group_id: &str) -> Vec<String> {
    let out = docker_ok(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=ai.agentopia.dtma.group_id={group_id}"),
    ]);
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_redeploy_unchanged_status_and_remove_over_http() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let mut c = config(None);
    c.audit.path = Some(audit.clone());
    let agent = InProc::start(c).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let (a, b) = (unique("a"), unique("b"));
    let body = group(
        &g,
        vec![
            server(&a, free_port(), "legacy"),
            server(&b, free_port(), "discover"),
        ],
    );

    let r = post(addr, "/mcp/groups", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["outcome"], "deployed", "{j}");
    let actions: Vec<&str> = j["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["created", "created"]);
    assert!(
        j["servers"][0]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(
        group_containers(&g),
        [format!("dtma-mcp-{a}"), format!("dtma-mcp-{b}")]
    );
    let before = container_state(&format!("dtma-mcp-{a}")).unwrap();
    assert!(before.2, "server a is not running");

    // The labels say what the agent needs and never carry a secret.
    let labels = docker_ok(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &format!("dtma-mcp-{a}"),
    ]);
    assert!(
        labels.contains("\"ai.agentopia.dtma.managed\":\"true\""),
        "{labels}"
    );
    assert!(labels.contains(&format!("\"ai.agentopia.dtma.group_id\":\"{g}\"")));
    assert!(!labels.contains(SECRET), "{labels}");
    let hardening = docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.SecurityOpt}} {{.HostConfig.CapDrop}} {{.HostConfig.Memory}}",
        &format!("dtma-mcp-{a}"),
    ]);
    assert_eq!(
        hardening,
        "unless-stopped [no-new-privileges:true] [ALL] 67108864"
    );

    // The same body again changes nothing: no container is restarted.
    let r = post(addr, "/mcp/groups", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["outcome"], "unchanged", "{j}");
    assert_eq!(container_state(&format!("dtma-mcp-{a}")).unwrap(), before);

    // Status finds the group by its labels.
    let r = call(addr, "GET", "/mcp/status").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let mine = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["group_id"] == g.as_str())
        .unwrap_or_else(|| panic!("group {g} missing from {j}"));
    assert_eq!(mine["servers"].as_array().unwrap().len(), 2);
    assert_eq!(mine["servers"][0]["state"], "ready");
    assert!(j["mcp_servers"].as_str().unwrap().contains(&a));
    assert!(!r.body.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));

    // Restart one server: it comes back ready, with a new start time.
    let r = post(
        addr,
        &format!("/mcp/servers/{a}/restart"),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["state"], "ready");
    assert_ne!(
        container_state(&format!("dtma-mcp-{a}")).unwrap().1,
        before.1
    );

    // Remove, then remove again: the second finds nothing.
    let r = call(addr, "DELETE", &format!("/mcp/groups/{g}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(group_containers(&g).is_empty());
    let r = call(addr, "DELETE", &format!("/mcp/groups/{g}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    agent.shutdown().await;

    // Every change is audited, by action and target, without the environment's values.
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(SECRET), "{text}");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_owned(),
                r["decision"].as_str().unwrap_or("").to_owned(),
                r["rule"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("mcp_deploy", "allowed", "allowed"),
        ("mcp_deploy", "finished", "ok"),
        ("mcp_restart", "finished", "ok"),
        ("mcp_remove", "finished", "ok"),
        ("mcp_remove", "finished", "not_found"),
    ] {
        let e = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(seen.contains(&e), "{expected:?} missing from {text}");
    }
    assert!(records.iter().all(|r| r["target"].is_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_rolls_the_whole_group_back() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let agent = InProc::start(config(None)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let (a, b) = (unique("a"), unique("b"));
    let port_a = free_port();
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, port_a, "legacy")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let before = container_state(&format!("dtma-mcp-{a}")).unwrap();

    // Change a (a new environment) and add b, which answers HTTP but not MCP: never ready.
    let mut changed = server(&a, port_a, "discover");
    changed["environmentVariables"]["EXTRA"] = "1".into();
    let mut bad = server(&b, free_port(), "http-only");
    bad["readinessTimeoutMs"] = 2000.into();
    let r = post(addr, "/mcp/groups", &group(&g, vec![changed, bad])).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["code"], "deploy_failed", "{j}");
    let by_name = |n: &str| {
        j["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instance_name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name(&a)["action"], "restored", "{j}");
    assert_eq!(by_name(&b)["action"], "failed", "{j}");
    assert!(
        by_name(&b)["message"]
            .as_str()
            .unwrap()
            .contains("not ready"),
        "{j}"
    );
    assert!(!r.body.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));

    // Nothing of the failed deploy is left; the replaced server is back as it was.
    assert_eq!(group_containers(&g), [format!("dtma-mcp-{a}")]);
    let after = container_state(&format!("dtma-mcp-{a}")).unwrap();
    assert_eq!(after.0, before.0, "the original container is back");
    assert!(after.2, "and running");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_unreachable_images_and_foreign_containers_touch_nothing() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let agent = InProc::start(config(None)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let a = unique("a");

    // A bad body names its field.
    let mut bad = server(&a, free_port(), "legacy");
    bad["resourceLimits"]["memory"] = "lots".into();
    let r = post(addr, "/mcp/groups", &group(&g, vec![bad])).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("servers[0].resourceLimits.memory"),
        "{}",
        r.json()
    );

    // An image from a registry that cannot be reached: a clear failure, nothing created.
    let mut remote = server(&a, free_port(), "legacy");
    remote["dockerImageUrl"] = "127.0.0.1:9/nowhere/mcp:1.0".into();
    let r = post(addr, "/mcp/groups", &group(&g, vec![remote])).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["code"], "deploy_failed");
    assert_eq!(j["servers"][0]["action"], "not_started", "{j}");
    assert!(group_containers(&g).is_empty());

    // A container the agent does not manage, under the wanted name: a conflict, untouched.
    let name = format!("dtma-mcp-{a}");
    let foreign = ForeignContainer(name.clone());
    docker_ok(&[
        "create",
        "--name",
        &name,
        "--network",
        "none",
        "--entrypoint",
        "/bin/sleep",
        &test_image(),
        "300",
    ]);
    let before = container_state(&name).unwrap();
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, free_port(), "legacy")]),
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["code"], "conflict");
    assert!(j["error"].as_str().unwrap().contains(&name), "{j}");
    assert_eq!(
        container_state(&name).unwrap(),
        before,
        "the foreign container was touched"
    );
    drop(foreign);
    agent.shutdown().await;
}

/// The same operations over the channel: progress events as they happen, then the terminal
/// `result` (or `error`), every event in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_diagnostics_and_remove_over_the_channel() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let cp = Cp::start(Options::default()).await;
    let agent_id = unique("agent");
    let agent = InProc::start({
        let mut c = config(Some(cp.url()));
        c.agent_id = agent_id.clone();
        c
    })
    .await;

    within(10, "agent connect", cp.cp.wait_for_agent(&agent_id)).await;
    let a = unique("a");
    let body = group(&g, vec![server(&a, free_port(), "discover")]);

    // An invalid group never becomes a stream: an unsequenced invalid_request naming the field.
    let mut bad = body.clone();
    bad["servers"][0]["portBindings"] = serde_json::json!({ "http": 1 });
    let mut notices = cp.cp.notices();
    let req: RequestBody =
        serde_json::from_value(serde_json::json!({ "type": "mcp_deploy", "group": bad })).unwrap();
    let _ = cp
        .cp
        .request_with_id(&agent_id, "bad-deploy".into(), None, req);
    match within(10, "invalid_request", next_notice(&mut notices)).await {
        AgentMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert_eq!(e.seq, None);
            assert!(
                e.message.contains("servers[0].portBindings"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }

    let req: RequestBody =
        serde_json::from_value(serde_json::json!({ "type": "mcp_deploy", "group": body })).unwrap();
    let c = within(
        60,
        "deploy",
        collect(cp.cp.request(&agent_id, req).unwrap()),
    )
    .await;
    let steps: Vec<String> = c
        .events
        .iter()
        .filter_map(|m| match m {
            AgentMessage::Progress(p) => Some(
                serde_json::to_value(p.step)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        ["validated", "created", "started", "ready"],
        "{:?}",
        c.events
    );
    match c.events.last() {
        Some(AgentMessage::Result(r)) => {
            assert_eq!(r.data["outcome"], "deployed");
            assert_eq!(r.data["servers"][0]["action"], "created");
            assert_eq!(r.data["servers"][0]["state"], "ready");
        }
        other => panic!("{other:?}"),
    }

    let req: RequestBody =
        serde_json::from_value(serde_json::json!({ "type": "mcp_status", "group_id": g })).unwrap();
    let c = within(
        30,
        "status",
        collect(cp.cp.request(&agent_id, req).unwrap()),
    )
    .await;
    match c.events.last() {
        Some(AgentMessage::Result(r)) => {
            assert_eq!(r.data["groups"][0]["group_id"], g.as_str());
            assert_eq!(
                r.data["groups"][0]["servers"][0]["instance_name"],
                a.as_str()
            );
        }
        other => panic!("{other:?}"),
    }

    let req: RequestBody =
        serde_json::from_value(serde_json::json!({ "type": "diagnostics", "scope": "docker" }))
            .unwrap();
    let c = within(
        30,
        "diagnostics",
        collect(cp.cp.request(&agent_id, req).unwrap()),
    )
    .await;
    match c.events.last() {
        Some(AgentMessage::Result(r)) => {
            assert_eq!(r.data["docker_info_success"], true);
            assert!(r.data["containers"].as_str().unwrap().contains(&a));
        }
        other => panic!("{other:?}"),
    }

    for expected in ["result", "not_found"] {
        let req: RequestBody =
            serde_json::from_value(serde_json::json!({ "type": "mcp_remove", "group_id": g }))
                .unwrap();
        let c = within(
            30,
            "remove",
            collect(cp.cp.request(&agent_id, req).unwrap()),
        )
        .await;
        match (expected, c.events.last()) {
            ("result", Some(AgentMessage::Result(r))) => {
                assert_eq!(r.data["removed"][0], a.as_str())
            }
            ("not_found", Some(AgentMessage::Error(e))) => {
                assert_eq!(e.code, ErrorCode::NotFound)
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(group_containers(&g).is_empty());
    agent.shutdown().await;
}

/// What an agent (or daemon) that died mid-deploy left is finished by the next agent's start:
/// an uncommitted new container is removed, a replaced one set aside gets its name back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_start_finishes_an_interrupted_deploy() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let (a, b) = (unique("a"), unique("b"));
    let config = config(None);
    let agent_id = config.agent_id.clone();
    let labels = |name: &str| {
        vec![
            "--label".to_owned(),
            "ai.agentopia.dtma.managed=true".to_owned(),
            "--label".to_owned(),
            format!("ai.agentopia.dtma.group_id={g}"),
            "--label".to_owned(),
            format!("ai.agentopia.dtma.instance_name={name}"),
            "--label".to_owned(),
            format!("ai.agentopia.dtma.agent_id={agent_id}"),
        ]
    };
    let image = test_image();
    let create = |container: &str, instance: &str| {
        let mut args = vec!["create".to_owned(), "--name".into(), container.into()];
        args.extend(labels(instance));
        args.extend(
            [
                "--network",
                "none",
                "--entrypoint",
                "/bin/sleep",
                &image,
                "300",
            ]
            .map(String::from),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
    };
    // a: a new container that never committed. b: a replaced one, set aside, never put back.
    create(&format!("dtma-mcp-{a}-dtma-new-0000feed"), &a);
    create(&format!("dtma-mcp-{b}-dtma-old-0000feed"), &b);
    let agent = InProc::start(config).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    // The start-up check runs in the background; status shows its end state once it is done.
    let mut names = Vec::new();
    for _ in 0..200 {
        names = group_containers(&g);
        if names == [format!("dtma-mcp-{b}")] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(names, [format!("dtma-mcp-{b}")]);
    assert!(
        container_state(&format!("dtma-mcp-{b}")).unwrap().2,
        "restored and started"
    );
    let r = call(addr, "GET", "/mcp/status").await;
    assert!(String::from_utf8_lossy(&r.body).contains(&b));
    agent.shutdown().await;
}

/// Status comes from Docker's labels, not from the agent's memory: a new agent process sees the
/// groups an earlier one deployed, and can remove them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_survives_an_agent_restart() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let a = unique("a");
    let first = InProc::start(config(None)).await;
    let addr = first.running.as_ref().unwrap().http_addr;
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, free_port(), "discover")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    first.shutdown().await;

    let second = InProc::start(config(None)).await;
    let addr = second.running.as_ref().unwrap().http_addr;
    let j = call(addr, "GET", "/mcp/status").await.json();
    let mine = j["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["group_id"] == g.as_str())
        .unwrap_or_else(|| panic!("group {g} missing after the restart: {j}"));
    assert_eq!(mine["servers"][0]["instance_name"], a.as_str());
    assert_eq!(mine["servers"][0]["state"], "ready");
    let r = call(addr, "DELETE", &format!("/mcp/groups/{g}")).await;
    assert_eq!(r.status, 200);
    second.shutdown().await;
}

/// `POST /mcp/groups?stream=true`: the deploy's progress as server-sent events, then `result`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_progress_streams_over_http() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let agent = InProc::start(config(None)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let a = unique("a");
    let r = post(
        addr,
        "/mcp/groups?stream=true",
        &group(&g, vec![server(&a, free_port(), "legacy")]),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event:").map(str::trim))
        .collect();
    assert_eq!(
        events,
        ["progress", "progress", "progress", "progress", "result"],
        "{text}"
    );
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(result["outcome"], "deployed", "{text}");
    assert!(!text.contains(SECRET));
    agent.shutdown().await;
}

/// The real binary, logging at debug level: after a deploy, a failed deploy (with its rollback
/// and messages) and a status, no environment value is in its log, its log ring or its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_agents_log() {
    use tokio::io::AsyncBufReadExt;
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dtma"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .env("DTMA_AGENT_ID", unique("agent"))
        .env("DTMA_LISTEN", format!("127.0.0.1:{port}"))
        .env("DTMA_MCP_NETWORK", "host")
        .env("DTMA_AUDIT_LOG", "-")
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read the log all along (a full pipe would stall the agent), and say when it listens.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (listening_tx, listening) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut log = String::new();
        let mut listening_tx = Some(listening_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Local API listening")
                && let Some(tx) = listening_tx.take()
            {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    within(20, "the agent's start", listening).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (a, b) = (unique("a"), unique("b"));
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, free_port(), "discover")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut bad = server(&b, free_port(), "http-only");
    bad["readinessTimeoutMs"] = 1000.into();
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, free_port(), "legacy"), bad]),
    )
    .await;
    assert_eq!(r.status, 500);
    let mut answers = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !answers.contains(SECRET),
        "the failed deploy's answer carries the secret"
    );
    for path in ["/mcp/status", "/status", "/diagnostics/logs?lines=10000"] {
        let body = String::from_utf8_lossy(&call(addr, "GET", path).await.body).into_owned();
        if let Some(i) = body.find(SECRET) {
            panic!(
                "{path} carries the secret: …{}…",
                &body[i.saturating_sub(300)..(i + 50).min(body.len())]
            );
        }
        answers.push_str(&body);
    }
    assert!(
        answers.contains("Exec") || answers.contains(&g),
        "the log ring is not empty"
    );
    child.start_kill().unwrap();
    let log = within(20, "the agent's log", reader).await.unwrap();
    assert!(log.contains(&g), "the log names the group: {log}");
    assert!(!log.contains(SECRET), "the agent's log carries the secret");
}

/// A redeploy with one server changed replaces that one only; two deploys of one group at the
/// same time run one after the other (the second finds the first's result and changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_server_alone_is_replaced_and_deploys_of_a_group_are_serialised() {
    let g = unique("grp");
    let _guard = GroupGuard(g.clone());
    let agent = InProc::start(config(None)).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let (a, b) = (unique("a"), unique("b"));
    let (port_a, port_b) = (free_port(), free_port());
    let body = group(
        &g,
        vec![server(&a, port_a, "discover"), server(&b, port_b, "legacy")],
    );
    let (r1, r2) = tokio::join!(
        post(addr, "/mcp/groups", &body),
        post(addr, "/mcp/groups", &body)
    );
    let outcomes = [r1.json()["outcome"].clone(), r2.json()["outcome"].clone()];
    assert!(
        outcomes.contains(&"deployed".into()) && outcomes.contains(&"unchanged".into()),
        "{outcomes:?}"
    );
    let before_a = container_state(&format!("dtma-mcp-{a}")).unwrap();
    let before_b = container_state(&format!("dtma-mcp-{b}")).unwrap();

    let mut changed_b = server(&b, port_b, "legacy");
    changed_b["environmentVariables"]["EXTRA"] = "2".into();
    let r = post(
        addr,
        "/mcp/groups",
        &group(&g, vec![server(&a, port_a, "discover"), changed_b]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let action = |n: &str| {
        j["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instance_name"] == n)
            .map(|s| s["action"].clone())
            .unwrap()
    };
    assert_eq!(action(&a), "unchanged", "{j}");
    assert_eq!(action(&b), "replaced", "{j}");
    assert_eq!(container_state(&format!("dtma-mcp-{a}")).unwrap(), before_a);
    let after_b = container_state(&format!("dtma-mcp-{b}")).unwrap();
    assert_ne!(after_b.0, before_b.0, "b runs in a new container");
    assert!(after_b.2);
    assert_eq!(
        group_containers(&g),
        [format!("dtma-mcp-{a}"), format!("dtma-mcp-{b}")],
        "nothing set aside is left"
    );
    agent.shutdown().await;
}
