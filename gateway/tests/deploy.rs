//! What ships to run the gateway: the systemd unit, the sample configuration, and the binary's
//! signals (SIGHUP reloads the agent tokens, SIGTERM drains and exits 0).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{OPERATOR, within};
use tokio::io::{AsyncBufReadExt, BufReader};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("deploy/dtma-gateway.service")).unwrap();
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // The stop must outlast the default drain.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec= in seconds");
    let drain = dtma_gateway::config::DrainSettings::default()
        .timeout
        .as_secs();
    assert!(
        stop > drain,
        "TimeoutStopSec={stop} is not above the drain's {drain} s"
    );
    // verify needs ExecStart's binary to exist: point it at the built one.
    let copy: String = unit
        .lines()
        .map(
            |l| match l.strip_prefix("ExecStart=/usr/bin/dtma-gateway") {
                Some(rest) => format!("ExecStart={}{rest}", env!("CARGO_BIN_EXE_dtma-gateway")),
                None => l.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtma-gateway.service");
    std::fs::write(&path, copy + "\n").unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package `systemd`; .ci/test.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    assert!(
        !err.contains("dtma-gateway.service"),
        "systemd-analyze verify warned: {err}"
    );
}

#[test]
fn the_sample_configuration_loads() {
    let args = dtma_gateway::config::Args {
        config: Some(repo().join("deploy/gateway.toml")),
        // The sample names files under /etc; the token file is read at start, not at load,
        // but the operator tokens file is: point it at a real one.
        operator_tokens_file: Some({
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), format!("{OPERATOR}\n")).unwrap();
            f.into_temp_path().keep().unwrap()
        }),
        ..Default::default()
    };
    let c = dtma_gateway::Config::load(&args).expect("deploy/gateway.toml loads");
    assert_eq!(c.agent_listen.port(), 8080);
    assert_eq!(c.operator_listen.ip().to_string(), "127.0.0.1");
    assert!(c.cluster.is_none() && c.tls.is_none() && c.webhooks.is_none());
}

#[tokio::test]
async fn sighup_reloads_the_agent_tokens_and_sigterm_drains_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let operators = dir.path().join("operators");
    std::fs::write(&agents, "a1 agent-a1-token-0123456789\n").unwrap();
    std::fs::write(&operators, format!("{OPERATOR}\n")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dtma-gateway"))
        .arg("--agent-tokens")
        .arg(&agents)
        .arg("--operator-tokens-file")
        .arg(&operators)
        .args([
            "--agent-listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = async |what: &str| {
        within(20, what, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(what) {
                    return line;
                }
            }
            panic!("the gateway ended before logging {what:?}");
        })
        .await
    };
    wait_for("Gateway listening").await;
    std::fs::write(
        &agents,
        "a1 agent-a1-token-0123456789\na2 agent-a2-token-0123456789\n",
    )
    .unwrap();
    common::cluster::signal(pid, "HUP");
    let line = wait_for("Agent tokens reloaded").await;
    assert!(line.contains("tokens=2"), "{line}");
    // A file that does not parse keeps the tokens in force.
    std::fs::write(&agents, "a1 short\n").unwrap();
    common::cluster::signal(pid, "HUP");
    wait_for("Agent tokens not reloaded").await;
    common::cluster::signal(pid, "TERM");
    wait_for("Gateway stopped").await;
    let status = within(20, "exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}
