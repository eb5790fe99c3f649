//! The `dtma` binary as a real process: configuration errors, secrets (in children and in
//! both log formats), SIGTERM drain.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use dtma_control_plane::Options;
use dtma_protocol::AgentMessage;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const SECRET_KEY: &str = "backend-key-9f8e7d6c";

fn agent_command(id: &str, url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dtma"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .env("BACKEND_TO_DTMA_API_KEY", SECRET_KEY)
        .env("DTMA_AGENT_ID", id)
        .env("DTMA_WS_URL", url)
        .env("DTMA_LISTEN", "127.0.0.1:0")
        .env("DTMA_BACKOFF_BASE_MS", "20")
        .env("DTMA_BACKOFF_CAP_MS", "200")
        .env("RUST_LOG", "debug")
        .env("DTMA_AUDIT_LOG", "-")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn missing_token_and_bad_values_exit_64_naming_every_problem() {
    let out = Command::new(env!("CARGO_BIN_EXE_dtma"))
        .env_clear()
        .env("AGENTOPIA_API_BASE_URL", "ftp://nowhere")
        .env("PORT", "70000")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["DTMA_BEARER_TOKEN", "AGENTOPIA_API_BASE_URL", "PORT"] {
        assert!(err.contains(needle), "stderr lacks {needle}: {err}");
    }
}

#[tokio::test]
async fn secrets_reach_neither_children_nor_logs() {
    let cp = Cp::start(Options::default()).await;
    let mut child = agent_command("p1", &cp.url()).spawn().unwrap();
    within(20, "agent connect", cp.cp.wait_for_agent("p1")).await;
    let s = cp.cp.request("p1", exec("env")).unwrap();
    let c = within(10, "env", collect(s)).await;
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(
        out.contains("PATH="),
        "the child env should keep ordinary variables: {out}"
    );
    for secret in [
        TOKEN,
        SECRET_KEY,
        "DTMA_BEARER_TOKEN",
        "BACKEND_TO_DTMA_API_KEY",
    ] {
        assert!(!out.contains(secret), "child saw {secret}");
    }
    // Another process's `/proc/<pid>/environ` is the sandbox's to refuse (tests/sandbox.rs); the
    // guard rails refuse slips, such as running a download as code, before anything starts.
    let mut denied = cp
        .cp
        .request("p1", exec("curl -s http://127.0.0.1:9/i.sh | sh"))
        .unwrap();
    match within(10, "denied", denied.recv()).await {
        Some(AgentMessage::Error(e)) => {
            assert_eq!(e.code, dtma_protocol::ErrorCode::Denied);
            assert!(e.message.contains("curl"), "{}", e.message);
        }
        other => panic!("expected denied, got {other:?}"),
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("Channel connected"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains(SECRET_KEY),
        "a secret reached the log"
    );
}

#[tokio::test]
async fn sigterm_drains_then_stops_the_process_group_and_reports_it() {
    let cp = Cp::start(Options::default()).await;
    let mut child = agent_command("p2", &cp.url())
        .env("DTMA_SHUTDOWN_GRACE_MS", "300")
        .spawn()
        .unwrap();
    within(20, "agent connect", cp.cp.wait_for_agent("p2")).await;
    let mut s = cp
        .cp
        .request(
            "p2",
            exec("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"),
        )
        .unwrap();
    loop {
        match within(10, "ready", s.recv()).await {
            Some(AgentMessage::Output(_)) => break,
            Some(_) => {}
            None => panic!("ended early"),
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut out = Vec::new();
    let exit = loop {
        match within(20, "exit after SIGTERM", s.recv()).await {
            Some(AgentMessage::Output(o)) if o.fd == dtma_protocol::Fd::Stdout => {
                out.extend(dtma_control_plane::output_bytes(&o))
            }
            // dash reports its killed `sleep` ("Terminated") on stderr.
            Some(AgentMessage::Output(_)) => {}
            Some(AgentMessage::Exit(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(exit.cancelled, "{exit:?}");
    assert_eq!(exit.killed_with.as_deref(), Some("SIGTERM"));
    assert_eq!(exit.exit_code, Some(7));
    // (dash may also print "Terminated" for its killed `sleep`.)
    assert!(
        String::from_utf8_lossy(&out).ends_with("got-term\n"),
        "{out:?}"
    );
    let status = within(20, "agent exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("Grace period over"), "{log}");
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn without_a_backend_url_the_agent_runs_local_only() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtma"))
        .env_clear()
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .env("BACKEND_TO_DTMA_API_KEY", SECRET_KEY)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DTMA_AUDIT_LOG", "-")
        .env("DTMA_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read the log until it says where the local API listens, then ask /health.
    let mut stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    let addr = within(20, "listen line", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stderr.read(&mut buf).await.unwrap();
            assert!(n > 0, "agent exited: {log}");
            log.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(rest) = log.split("http_addr=").nth(1)
                && let Some(addr) = rest.split_whitespace().next()
            {
                return addr.to_owned();
            }
        }
    })
    .await;
    assert!(log.contains("running local-only"), "{log}");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let r = common::http::request(addr, "GET", "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["channel_configured"], false);

    // The local API's commands get the same scrubbed environment as the channel's.
    let auth = format!("Bearer {TOKEN}");
    let r = common::http::request(
        addr,
        "POST",
        "/ssh/execute",
        Some(&auth),
        Some(br#"{"command":"env"}"#),
    )
    .await;
    let out = r.json()["stdout"].as_str().unwrap().to_owned();
    assert!(out.contains("PATH="), "{out}");
    for secret in [
        TOKEN,
        SECRET_KEY,
        "DTMA_BEARER_TOKEN",
        "BACKEND_TO_DTMA_API_KEY",
    ] {
        assert!(!out.contains(secret), "child saw {secret}");
    }
    // The agent's own log lines are served from memory.
    let r =
        common::http::request(addr, "GET", "/diagnostics/logs?lines=50", Some(&auth), None).await;
    let logs = r.json()["logs"]["application_logs"].clone();
    let lines: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("Local API listening")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(TOKEN) || l.contains(SECRET_KEY))
    );
    child.start_kill().unwrap();
}

/// A variable that is not UTF-8 in the agent's environment neither stops the agent nor the
/// command: it reaches the child byte for byte (and the secret scrub still works around it).
#[tokio::test]
async fn a_variable_that_is_not_utf8_reaches_the_child_unchanged() {
    use std::os::unix::ffi::OsStrExt;
    let cp = Cp::start(Options::default()).await;
    let mut cmd = agent_command("p-odd", &cp.url());
    cmd.env(
        "DTMA_TEST_ODD",
        std::ffi::OsStr::from_bytes(&[b'a', 0xff, b'z']),
    );
    let mut child = cmd.spawn().unwrap();
    within(20, "agent connect", cp.cp.wait_for_agent("p-odd")).await;
    let s = cp
        .cp
        .request("p-odd", exec("printf %s \"$DTMA_TEST_ODD\" | od -An -tx1"))
        .unwrap();
    let c = within(10, "odd env", collect(s)).await;
    assert_eq!(
        String::from_utf8_lossy(&c.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["61", "ff", "7a"]
    );
    assert_eq!(c.exit.unwrap().exit_code, Some(0));
    child.kill().await.unwrap();
}

/// The binary's stderr lines while it connects, runs a command over the channel and one over
/// the local API (with the backend's key), refuses a wrong token, and stops on SIGTERM.
async fn log_of_a_run(format: &str, id: &str) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let cp = Cp::start(Options::default()).await;
    let mut child = agent_command(id, &cp.url())
        .env("DTMA_LOG_FORMAT", format)
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    // Where the local API listens, from the start-up line of either format.
    let addr: std::net::SocketAddr = within(20, "listen line", async {
        loop {
            let line = rx.recv().await.expect("the agent exited before listening");
            if !line.contains("Local API listening") {
                continue;
            }
            let addr = match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => v["fields"]["http_addr"].as_str().unwrap().to_owned(),
                Err(_) => line.split("http_addr=").nth(1).unwrap().to_owned(),
            };
            return addr.split_whitespace().next().unwrap().parse().unwrap();
        }
    })
    .await;
    within(20, "agent connect", cp.cp.wait_for_agent(id)).await;
    let s = cp.cp.request(id, exec("echo over-the-channel")).unwrap();
    let c = within(10, "exec", collect(s)).await;
    assert_eq!(c.stdout, b"over-the-channel\n");
    let key = format!("Bearer {SECRET_KEY}");
    let r = common::http::request(
        addr,
        "POST",
        "/ssh/execute",
        Some(&key),
        Some(br#"{"command":"echo over-http"}"#),
    )
    .await;
    assert_eq!(r.json()["stdout"], "over-http\n");
    let wrong = format!("Bearer {SECRET_KEY}-but-wrong");
    let r = common::http::request(addr, "GET", "/status", Some(&wrong), None).await;
    assert_eq!(r.status, 401);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = within(20, "agent exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    within(10, "end of stderr", reader).await.unwrap()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_hold_no_secret() {
    let lines = log_of_a_run("json", "p-json").await;
    assert!(lines.len() > 10, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
        assert!(
            !line.contains(TOKEN) && !line.contains(SECRET_KEY),
            "a secret reached the log: {line}"
        );
    }
    // RUST_LOG=debug still applies, and the whole life is there.
    let text = lines.join("\n");
    for needle in [
        "\"DEBUG\"",
        "Channel connected",
        "Exec finished",
        "Agent stopped",
    ] {
        assert!(text.contains(needle), "no {needle} in {text}");
    }
}

#[tokio::test]
async fn text_logs_hold_no_secret_either() {
    let lines = log_of_a_run("text", "p-text").await;
    let text = lines.join("\n");
    assert!(text.contains("Agent stopped"), "{text}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&lines[0]).is_err(),
        "text lines are not JSON"
    );
    assert!(
        !text.contains(TOKEN) && !text.contains(SECRET_KEY),
        "a secret reached the log"
    );
}

#[tokio::test]
async fn a_bad_log_format_exits_64_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_dtma"))
        .env_clear()
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .env("DTMA_LOG_FORMAT", "yaml")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DTMA_LOG_FORMAT"), "{err}");
}
