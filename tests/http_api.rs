//! The local HTTP API through real HTTP on 127.0.0.1:0: every endpoint, status code and bad
//! input, the shared policy, concurrency, caps and the audit log.

mod common;

use std::time::{Duration, Instant};

use common::http::{Response, request};
use common::*;
use dtma::config::{Config, Secret, TokenConfig};
use dtma::policy::Role;

const API_KEY: &str = "backend-api-key-0123456789";
const DIAG: &str = "diagnostics-token-0123456789";
const OPS: &str = "operator-token-0123456789";

fn local_config(audit: Option<std::path::PathBuf>) -> Config {
    let mut c = common::local_agent_config();
    c.backend_api_key = Some(Secret::new(API_KEY));
    c.extra_tokens = vec![
        TokenConfig {
            name: "diag".into(),
            role: Role::Diagnostics,
            token: Secret::new(DIAG),
        },
        TokenConfig {
            name: "ops".into(),
            role: Role::Operator,
            token: Secret::new(OPS),
        },
    ];
    c.audit.path = audit;
    c.exec.kill_grace = Duration::from_millis(300);
    c
}

struct Local {
    // Held for its lifetime: dropping it stops the agent.
    _agent: InProc,
    addr: std::net::SocketAddr,
}

impl Local {
    async fn start(config: Config) -> Local {
        let agent = InProc::start(config).await;
        let addr = agent.running.as_ref().unwrap().http_addr;
        Local {
            _agent: agent,
            addr,
        }
    }
    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        request(self.addr, "GET", path, auth.as_deref(), None).await
    }
    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        request(
            self.addr,
            "POST",
            path,
            auth.as_deref(),
            Some(body.as_bytes()),
        )
        .await
    }
    /// Shut the agent down (its audit log is flushed by then).
    async fn stop(self) {
        self._agent.shutdown().await;
    }
    async fn exec(&self, body: serde_json::Value) -> Response {
        self.post("/ssh/execute", Some(TOKEN), &body.to_string())
            .await
    }
}

/// Whether `pid` is gone (or a zombie) within 5 s. The kernel closes a dying process's pipes
/// a moment before it turns into a zombie, so "the command ended" can precede this by a little.
async fn gone_soon(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        if !alive {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn is_iso_utc(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && dtma::parse_rfc3339(s).is_ok()
}

#[tokio::test]
async fn health_needs_no_auth() {
    let l = Local::start(local_config(None)).await;
    let r = l.get("/health", None).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["version"], dtma::VERSION);
    assert_eq!(j["channel_connected"], false);
    assert!(j["uptime_s"].is_u64());
}

#[tokio::test]
async fn auth_is_bearer_only_and_never_echoes_tokens() {
    let l = Local::start(local_config(None)).await;
    for (auth, what) in [
        (None, "missing"),
        (Some("Basic dXNlcjpwYXNz".to_string()), "malformed"),
        (Some("Bearer".to_string()), "malformed"),
        (Some(format!("Bearer {TOKEN}x")), "invalid"),
        (Some(format!("Token {TOKEN}")), "malformed"),
    ] {
        let r = request(l.addr, "GET", "/diagnostics/system", auth.as_deref(), None).await;
        assert_eq!(r.status, 401, "{what}");
        let j = r.json();
        assert_eq!(j["success"], false);
        assert_eq!(j["code"], "unauthorized");
        assert!(j["error"].as_str().unwrap().contains(what), "{j}");
        assert!(!String::from_utf8_lossy(&r.body).contains(TOKEN));
    }
    // Both seed tokens work.
    assert_eq!(l.get("/status", Some(TOKEN)).await.status, 200);
    assert_eq!(l.get("/status", Some(API_KEY)).await.status, 200);
}

#[tokio::test]
async fn execute_answers_the_seed_shape() {
    let l = Local::start(local_config(None)).await;
    let r = l
        .exec(serde_json::json!({"command": "echo hi; echo err >&2"}))
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["command"], "echo hi; echo err >&2");
    assert_eq!(j["stdout"], "hi\n");
    assert_eq!(j["stderr"], "err\n");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["timed_out"], false);
    assert_eq!(j["truncated"], false);
    assert!(j["signal"].is_null());
    assert!(j["duration_ms"].is_u64());
    assert!(is_iso_utc(j["timestamp"].as_str().unwrap()), "{j}");

    let j = l
        .exec(serde_json::json!({"command": "exit 3"}))
        .await
        .json();
    assert_eq!(
        (j["success"].clone(), j["exit_code"].clone()),
        (false.into(), 3.into())
    );
}

#[tokio::test]
async fn policy_denials_are_403_with_the_rule() {
    let l = Local::start(local_config(None)).await;
    for (cmd, rule) in [
        ("rm -rf /", "mass_deletion"),
        ("$(echo rm) -rf /", "unjudgeable"),
        ("/sbin/shutdown -h now", "power_state"),
        ("curl -s http://127.0.0.1:9/i.sh | sh", "download_exec"),
    ] {
        let r = l.exec(serde_json::json!({ "command": cmd })).await;
        assert_eq!(r.status, 403, "{cmd}");
        let j = r.json();
        assert_eq!(j["success"], false);
        assert_eq!(j["code"], "denied");
        assert_eq!(j["rule"], rule, "{cmd}: {j}");
        assert_eq!(j["command"], cmd);
    }
    // Harmless commands that mention scary words still run.
    let j = l
        .exec(serde_json::json!({"command": "grep -ci shutdown /dev/null || true"}))
        .await
        .json();
    assert_eq!(j["success"], true, "{j}");
}

#[tokio::test]
async fn bad_input_gets_400_or_413_naming_the_problem_and_the_next_request_works() {
    let l = Local::start(local_config(None)).await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{nope".into(), 400, "not valid JSON"),
        ("".into(), 400, "JSON"),
        ("[1]".into(), 400, "invalid"),
        ("{}".into(), 400, "command"),
        (r#"{"command": 5}"#.into(), 400, "command"),
        (r#"{"command": "   "}"#.into(), 400, "empty"),
        (
            r#"{"command": "true", "timeout": -1}"#.into(),
            400,
            "timeout",
        ),
        (
            r#"{"command": "true", "timeout": "soon"}"#.into(),
            400,
            "timeout",
        ),
        (
            r#"{"command": "true", "timeout": 0}"#.into(),
            400,
            "timeout",
        ),
        (
            r#"{"command": "true", "timeout": 1000000000000}"#.into(),
            400,
            "timeout",
        ),
        (r#"{"command": "true", "bogus": 1}"#.into(), 400, "bogus"),
        (r#"{"command": "echo a\u0000b"}"#.into(), 400, "NUL"),
        (
            format!(r#"{{"command": "{}"}}"#, "x".repeat(2 << 20)),
            413,
            "larger",
        ),
    ];
    for (body, status, needle) in cases {
        let r = l.post("/ssh/execute", Some(TOKEN), &body).await;
        let shown: String = body.chars().take(60).collect();
        assert_eq!(
            r.status,
            status,
            "{shown}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let j = r.json();
        assert_eq!(j["success"], false);
        assert!(
            j["error"].as_str().unwrap().contains(needle),
            "{shown}: {j}"
        );
    }
    let r = l
        .post(
            "/ssh/execute?stream=maybe",
            Some(TOKEN),
            r#"{"command":"true"}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("stream"));
    for (q, ok) in [
        ("lines=abc", false),
        ("lines=0", false),
        ("lines=10001", false),
        ("lines=-3", false),
        ("lines=5", true),
    ] {
        let r = l.get(&format!("/diagnostics/logs?{q}"), Some(TOKEN)).await;
        assert_eq!(r.status, if ok { 200 } else { 400 }, "{q}");
        if !ok {
            assert!(r.json()["error"].as_str().unwrap().contains("lines"));
        }
    }
    let j = l
        .exec(serde_json::json!({"command": "echo still-up"}))
        .await
        .json();
    assert_eq!(j["stdout"], "still-up\n");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_in_json() {
    let l = Local::start(local_config(None)).await;
    let r = l.get("/nope", Some(TOKEN)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    let r = l.get("/ssh/execute", Some(TOKEN)).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "method_not_allowed");
    let r = request(l.addr, "DELETE", "/health", None, None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_commands_run_concurrently() {
    let l = Local::start(local_config(None)).await;
    let start = Instant::now();
    let runs = (0..40).map(|i| {
        let addr = l.addr;
        async move {
            let body = format!(r#"{{"command": "sleep 1; echo {i}"}}"#);
            let auth = format!("Bearer {TOKEN}");
            request(
                addr,
                "POST",
                "/ssh/execute",
                Some(&auth),
                Some(body.as_bytes()),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let elapsed = start.elapsed();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.json()["stdout"], format!("{i}\n"));
    }
    // One after another would take 40 s; together they take about one.
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[tokio::test]
async fn the_timeout_kills_background_children_too() {
    let l = Local::start(local_config(None)).await;
    let j = l
        .exec(serde_json::json!({"command": "sleep 30 & echo $!; wait", "timeout": 300}))
        .await
        .json();
    assert_eq!(j["timed_out"], true);
    assert_eq!(j["success"], false);
    let pid: i32 = j["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(gone_soon(pid).await, "background child {pid} survived");
}

#[tokio::test]
async fn a_200_mb_output_is_capped_and_memory_stays_bounded() {
    let l = Local::start(local_config(None)).await;
    let j = l
        .exec(serde_json::json!({"command": "head -c 200000000 /dev/zero | tr '\\0' a", "timeout": 60000}))
        .await
        .json();
    assert_eq!(j["truncated"], true);
    assert_eq!(j["exit_code"], 0);
    assert_eq!(
        j["stdout"].as_str().unwrap().len() as u64,
        dtma::api::HTTP_MAX_OUTPUT
    );
    // This test runs in its own process (nextest): its peak RSS would pass 200 MB if the output
    // had been buffered.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm_kb < 120_000, "peak RSS {hwm_kb} kB");
}

#[tokio::test]
async fn streaming_form_sends_events_as_output_arrives() {
    let l = Local::start(local_config(None)).await;
    let r = l
        .post(
            "/ssh/execute?stream=true",
            Some(TOKEN),
            r#"{"command": "echo one; printf '\\377'; echo two >&2; exit 4"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("text/event-stream")
    );
    let text = String::from_utf8_lossy(&r.body);
    let events: Vec<(&str, serde_json::Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event:"))?.trim();
            let data = block.lines().find_map(|l| l.strip_prefix("data:"))?.trim();
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(events.first().unwrap().0, "started");
    let (last, exit) = events.last().unwrap();
    assert_eq!(*last, "exit");
    assert_eq!(exit["exit_code"], 4);
    let bytes = |fd: &str| -> Vec<u8> {
        use base64::Engine as _;
        let mut out = Vec::new();
        for (n, d) in &events {
            if *n == fd {
                let data = d["data"].as_str().unwrap();
                match d["encoding"].as_str().unwrap() {
                    "utf8" => out.extend_from_slice(data.as_bytes()),
                    _ => out.extend(
                        base64::engine::general_purpose::STANDARD
                            .decode(data)
                            .unwrap(),
                    ),
                }
            }
        }
        out
    };
    assert_eq!(bytes("stdout"), b"one\n\xff");
    assert_eq!(bytes("stderr"), b"two\n");
}

#[tokio::test]
async fn diagnostics_and_status_have_the_seed_and_console_shapes() {
    let l = Local::start(local_config(None)).await;
    let j = l.get("/diagnostics/system", Some(TOKEN)).await.json();
    assert_eq!(j["success"], true);
    let d = &j["diagnostics"];
    for k in [
        "uptime",
        "disk_usage",
        "memory_info",
        "top_processes",
        "dtma_port_status",
    ] {
        assert!(d[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {d}");
    }
    assert!(d["uptime"].as_str().unwrap().starts_with("up "));
    assert!(d["disk_usage"].as_str().unwrap().contains("Mounted on"));
    assert!(
        d["dtma_port_status"]
            .as_str()
            .unwrap()
            .contains(&l.addr.to_string())
    );
    assert_eq!(d["environment"]["pid"], std::process::id());
    assert_eq!(d["environment"]["platform"], "linux");
    assert!(d["cpu_load_percent"].is_number());
    for k in ["total_bytes", "active_bytes", "free_bytes", "used_bytes"] {
        assert!(d["memory"][k].is_u64(), "{k}");
    }
    assert_eq!(d["disk"]["mount"], "/");

    let j = l.get("/diagnostics/logs?lines=5", Some(TOKEN)).await.json();
    assert!(j["logs"]["application_logs"].is_array());
    assert!(j["logs"]["dtma_service"].is_string());
    assert!(j["logs"]["mcp_containers"].is_string());

    let j = l.get("/status", Some(TOKEN)).await.json();
    for k in [
        "status",
        "timestamp",
        "version",
        "service",
        "tool_instances",
    ] {
        assert!(!j[k].is_null(), "{k}: {j}");
    }
    assert_eq!(j["environment"]["hasAuthToken"], true);
    assert_eq!(j["environment"]["hasApiKey"], true);
    assert_eq!(j["environment"]["hasApiBaseUrl"], false);
    assert_eq!(j["environment"]["port"], l.addr.port());
    assert_eq!(j["sandbox"]["mode"], "enforce", "{j}");
    assert!(j["sandbox"]["degradations"].is_array(), "{j}");
    assert!(j["sandbox"]["refused_profiles"].is_array(), "{j}");
}

#[tokio::test]
async fn docker_routes_answer_503_when_the_daemon_is_unreachable() {
    let mut c = local_config(None);
    c.docker_socket = "unix:///nonexistent/docker.sock".into();
    let l = Local::start(c).await;
    for (method, path, body) in [
        ("GET", "/diagnostics/docker", None),
        ("GET", "/mcp/status", None),
        (
            "POST",
            "/mcp/groups",
            Some(
                r#"{"groupId":"agent-1-mcp","servers":[{"accountToolInstanceId":"t1","dockerImageUrl":"ghcr.io/org/x:1","instanceNameOnToolbox":"reasoning-server","portBindings":{"8080":8080}}]}"#,
            ),
        ),
        ("DELETE", "/mcp/groups/agent-1-mcp", None),
        ("POST", "/mcp/servers/reasoning-server/restart", None),
    ] {
        let auth = format!("Bearer {TOKEN}");
        let r = request(l.addr, method, path, Some(&auth), body.map(str::as_bytes)).await;
        assert_eq!(r.status, 503, "{method} {path}");
        let j = r.json();
        assert_eq!(j["code"], "docker_unavailable");
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/docker.sock"),
            "{j}"
        );
    }
    // The agent is still up.
    assert_eq!(l.get("/health", None).await.status, 200);
    let j = l.get("/status", Some(TOKEN)).await.json();
    assert!(j["docker_error"].as_str().is_some());
}

#[tokio::test]
async fn docker_diagnostics_with_the_real_daemon() {
    let l = Local::start(local_config(None)).await;
    let r = l.get("/diagnostics/docker", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let d = &r.json()["diagnostics"];
    assert!(
        d["docker_version"]
            .as_str()
            .unwrap()
            .starts_with("Docker version")
    );
    assert_eq!(d["docker_info_success"], true);
    assert!(d["docker_info"]["Containers"].is_u64());
    let j = l.get("/mcp/status", Some(TOKEN)).await.json();
    assert_eq!(j["success"], true);
    assert!(j["mcp_servers"].as_str().unwrap().starts_with("NAMES"));
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let l = Local::start(local_config(None)).await;
    let diag = |cmd: &str| {
        let body = serde_json::json!({ "command": cmd }).to_string();
        let addr = l.addr;
        async move {
            request(
                addr,
                "POST",
                "/ssh/execute",
                Some(&format!("Bearer {DIAG}")),
                Some(body.as_bytes()),
            )
            .await
        }
    };
    assert_eq!(diag("df -h").await.status, 200);
    // The guard rails apply to every role alike (what a role may write is the sandbox's job:
    // tests/sandbox.rs); a refused command never runs.
    let r = diag("systemctl reboot").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["rule"], "power_state");
    // MCP management needs operator or admin.
    let r = l
        .post("/mcp/groups", Some(DIAG), r#"{"groupId":"g","servers":[]}"#)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden");
    let r = l.post("/mcp/groups", Some(OPS), r#"{"servers":[]}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("groupId"));
    // Deny rules hold for every role, admin included.
    let r = l
        .post("/ssh/execute", Some(OPS), r#"{"command":"reboot"}"#)
        .await;
    assert_eq!(r.json()["rule"], "power_state");
}

#[tokio::test]
async fn every_decision_is_audited_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("audit.jsonl");
    let l = Local::start(local_config(Some(path.clone()))).await;
    l.exec(serde_json::json!({"command": "echo audited"})).await;
    l.post("/ssh/execute", Some(OPS), r#"{"command":"reboot"}"#)
        .await;
    // Records are written by the audit thread; shutdown flushes it.
    l.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["decision"], "allowed");
    assert_eq!(lines[0]["role"], "admin");
    assert_eq!(lines[0]["caller"], "dtma_bearer_token");
    // Sandboxed by default: every exec record names the profile and the level that applied.
    for (l, profile) in lines.iter().zip(["admin", "admin", "operator"]) {
        assert_eq!(l["profile"], profile, "{l}");
        assert!(
            ["full", "partial"].contains(&l["enforcement"].as_str().unwrap()),
            "{l}"
        );
    }
    assert_eq!(lines[1]["decision"], "finished");
    assert_eq!(lines[1]["exit_code"], 0);
    assert!(lines[1]["duration_ms"].is_u64());
    assert_eq!(lines[2]["decision"], "denied");
    assert_eq!(lines[2]["rule"], "power_state");
    assert_eq!(lines[2]["caller"], "ops");
    for secret in [TOKEN, API_KEY, OPS, DIAG] {
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn repeated_auth_failures_from_one_address_are_slowed_down() {
    let l = Local::start(local_config(None)).await;
    let wrong = "Bearer not-the-token-0000000000";
    for _ in 0..5 {
        let r = request(l.addr, "GET", "/status", Some(wrong), None).await;
        assert_eq!(r.status, 401);
    }
    // The sixth and seventh failures are held back (250 ms, then 500 ms): a lower bound only.
    for min in [250, 500] {
        let start = Instant::now();
        let r = request(l.addr, "GET", "/status", Some(wrong), None).await;
        assert_eq!(r.status, 401);
        assert!(
            start.elapsed() >= Duration::from_millis(min),
            "{:?}",
            start.elapsed()
        );
    }
    // The right token still gets in (that it clears the record is checked without a clock in
    // `auth`'s unit tests: a wall-clock upper bound here would fail on a loaded machine).
    assert_eq!(l.get("/status", Some(TOKEN)).await.status, 200);
}

#[tokio::test]
async fn local_api_commands_are_limited_and_the_limit_frees_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = local_config(None);
    c.exec.http_max_concurrent = 2;
    let l = Local::start(c).await;
    // Two streaming commands, each held open until its `started` event has arrived.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(l.addr).await.unwrap();
        let body = r#"{"command":"sleep 1"}"#;
        let req = format!(
            "POST /ssh/execute?stream=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("event:started") {
            let n = within(10, "started event", tcp.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        held.push(tcp);
    }
    let r = l.exec(serde_json::json!({"command": "true"})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "too_many_commands");
    // Once they end, commands run again.
    for mut tcp in held {
        let mut rest = Vec::new();
        within(10, "stream end", tcp.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&rest).contains("event:exit"));
    }
    let j = l
        .exec(serde_json::json!({"command": "echo free"}))
        .await
        .json();
    assert_eq!(j["stdout"], "free\n");
}

/// A client that writes its whole body before reading (Python's urllib does) gets the 413,
/// not a connection reset: the agent reads an oversized body (up to a bound) before answering.
#[tokio::test]
async fn an_oversized_body_sent_in_full_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = Local::start(local_config(None)).await;
    let body = vec![b'x'; 8 << 20];
    let mut tcp = tokio::net::TcpStream::connect(l.addr).await.unwrap();
    let head = format!(
        "POST /ssh/execute HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body)
        .await
        .expect("the agent reads the whole body before it answers");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .await
        .expect("the answer arrives without a reset");
    let r = common::http::parse(&raw);
    assert_eq!(r.status, 413);
    let j = r.json();
    assert_eq!(j["code"], "payload_too_large");
    // The agent is still there for the next request.
    assert_eq!(l.get("/health", None).await.status, 200);
}

#[tokio::test]
async fn with_the_sandbox_off_only_admin_commands_run() {
    let mut config = local_config(None);
    config.exec.sandbox.enforce = false;
    let l = Local::start(config).await;
    for token in [DIAG, OPS] {
        let r = l
            .post("/ssh/execute", Some(token), r#"{"command":"echo hi"}"#)
            .await;
        assert_eq!(r.status, 403, "{:?}", r);
        assert_eq!(r.json()["rule"], "sandbox_unavailable", "{:?}", r);
    }
    let ok = l
        .exec(serde_json::json!({"command": "echo hi"}))
        .await
        .json();
    assert_eq!(ok["stdout"], "hi\n", "{ok}");
    let status = l.get("/status", Some(TOKEN)).await.json();
    assert_eq!(
        status["sandbox"]["refused_profiles"],
        serde_json::json!(["diagnostics", "operator"]),
        "{status}"
    );
}

/// A command reaches the local API with a token of its caller's role, valid while it runs: the
/// operator profile's way to MCP (no Docker socket). `dtma` finds it by `DTMA_API_URL` and
/// `DTMA_API_TOKEN`; it never carries the agent's own tokens and dies with the command.
#[tokio::test]
async fn a_command_reaches_the_local_api_with_its_callers_role_until_it_ends() {
    let l = Local::start(local_config(None)).await;
    let dtma = common::DTMA;
    let run = async |token: &str, command: String| {
        let body = serde_json::json!({ "command": command }).to_string();
        let r = l.post("/ssh/execute", Some(token), &body).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    // The operator's command, in the operator sandbox, asks the agent for its status.
    let ops = run(OPS, format!("{dtma} status --json; echo \"exit=$?\"")).await;
    let out = ops["stdout"].as_str().unwrap();
    assert!(out.contains("\"sandbox\""), "{ops}");
    assert!(out.ends_with("exit=0\n"), "{ops}");
    // A diagnostics command gets a diagnostics token: changes are refused for its role.
    let diag = run(
        DIAG,
        format!("{dtma} mcp restart no-such-server; echo \"exit=$?\""),
    )
    .await;
    assert!(
        diag["stdout"].as_str().unwrap().ends_with("exit=77\n"),
        "{diag}"
    );
    // The token is the command's own, never one of the agent's, and ends with the command.
    let shown = run(OPS, "printf %s \"$DTMA_API_TOKEN\"".into()).await;
    let token = shown["stdout"].as_str().unwrap().to_owned();
    assert!(token.starts_with("dtma-cmd-"), "{shown}");
    assert!(![TOKEN, API_KEY, DIAG, OPS].contains(&token.as_str()));
    assert_eq!(l.get("/status", Some(&token)).await.status, 401);
}
