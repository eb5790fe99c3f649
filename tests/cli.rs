//! The command line through the real binary: the local client (`exec`, `status`, `logs`,
//! `mcp`) against the real agent on 127.0.0.1:0 (in-process, with the reference control plane
//! where the channel matters), `check-config`, `--version`, completions and help.
//!
//! The client runs with a cleared environment, so the test runner's own `DTMA_*` values and the
//! machine's `/etc/dtma` files never reach it (`--env-file` points at nothing, and every test
//! gives the token).

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use common::{Cp, InProc, TOKEN, agent_config, within};
use dtma_control_plane::Options;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// The `dtma` binary with only `env`, the token and a missing env file.
fn client(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dtma"));
    c.args(args)
        .env_clear()
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// `dtma SUB --url http://ADDR --env-file /nonexistent ARGS...`, run to its end.
async fn run(addr: SocketAddr, sub: &[&str], args: &[&str]) -> Output {
    let url = format!("http://{addr}");
    let mut all: Vec<&str> = sub.to_vec();
    all.extend(["--url", &url, "--env-file", "/nonexistent/dtma.env"]);
    all.extend(args);
    within(60, "the client", client(&all, &[]).output())
        .await
        .expect("the dtma binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A local-only agent on 127.0.0.1:0.
async fn local_agent() -> InProc {
    let mut config = agent_config("cli-test", String::new());
    config.channel = None;
    InProc::start(config).await
}

fn addr(agent: &InProc) -> SocketAddr {
    agent.running.as_ref().unwrap().http_addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_stdout_stderr_and_the_exit_code_through() {
    let agent = local_agent().await;
    let out = run(
        addr(&agent),
        &["exec"],
        &["--", "sh", "-c", "echo a; echo b >&2; exit 3"],
    )
    .await;
    assert_eq!(text(&out.stdout), "a\n");
    assert_eq!(text(&out.stderr), "b\n");
    assert_eq!(out.status.code(), Some(3));

    // A signal is 128+N; one argument is shell code as written.
    let out = run(addr(&agent), &["exec"], &["kill -9 $$"]).await;
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));
    // A timeout is 124, and says so.
    let out = run(
        addr(&agent),
        &["exec"],
        &["--timeout", "200", "--", "sleep", "30"],
    )
    .await;
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    agent.shutdown().await;
}

/// The first line reaches the client's stdout while the command still waits on a FIFO that only
/// the test opens for writing: the output streamed, it was not collected at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_before_the_command_ends() {
    let agent = local_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = format!(
        "echo first; read line < '{}'; echo \"second $line\"",
        fifo.display()
    );
    let url = format!("http://{}", addr(&agent));
    let mut child = client(
        &[
            "exec",
            "--url",
            &url,
            "--env-file",
            "/nonexistent",
            "--",
            &script,
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    within(30, "the first line", stdout.read_line(&mut first))
        .await
        .unwrap();
    assert_eq!(first, "first\n");
    // Only now may the command go on (opening a FIFO for writing waits for its reader).
    let path = fifo.clone();
    within(
        30,
        "the FIFO's reader",
        tokio::task::spawn_blocking(move || std::fs::write(path, "go\n")),
    )
    .await
    .unwrap()
    .unwrap();
    let mut rest = String::new();
    within(30, "the rest", stdout.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, "second go\n");
    let status = within(30, "the client's exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_denial_a_wrong_token_and_no_agent_have_their_own_codes() {
    let agent = local_agent().await;
    let out = run(addr(&agent), &["exec"], &["--", "reboot"]).await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("denied by the policy"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    let url = format!("http://{}", addr(&agent));
    let wrong = "wrong-token-0123456789";
    let out = within(
        30,
        "the client",
        client(
            &["status", "--url", &url, "--env-file", "/nonexistent"],
            &[("DTMA_BEARER_TOKEN", wrong)],
        )
        .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(67));
    let err = text(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(TOKEN), "{err}");

    // Nothing listens on port 1 of loopback.
    let out = within(
        30,
        "the client",
        client(
            &[
                "exec",
                "--url",
                "http://127.0.0.1:1",
                "--env-file",
                "/nonexistent",
                "--",
                "true",
            ],
            &[],
        )
        .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(
        text(&out.stderr).contains("cannot reach the agent"),
        "{}",
        text(&out.stderr)
    );

    // No token anywhere (the fallback file is the droplet's, absent here or unreadable).
    let out = within(
        30,
        "the client",
        Command::new(env!("CARGO_BIN_EXE_dtma"))
            .args(["status", "--url", &url, "--env-file", "/nonexistent"])
            .env_clear()
            .env("DTMA_BEARER_TOKEN_FILE", "/nonexistent/token")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(67), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/nonexistent/token"),
        "{}",
        text(&out.stderr)
    );
    agent.shutdown().await;
}

/// `status` finds the agent as the agent reads its own address (here `DTMA_LISTEN` in an
/// environment file, and no `--url`), and shows the channel's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_channel_as_json_and_as_a_table() {
    let cp = Cp::start(Options::default()).await;
    let agent = InProc::start(agent_config("cli-status", cp.url())).await;
    within(
        30,
        "the agent's session",
        cp.cp.wait_for_agent("cli-status"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("dtma.env");
    std::fs::write(
        &env_file,
        format!("# as on a droplet\nDTMA_LISTEN={}\n", addr(&agent)),
    )
    .unwrap();
    let env_file = env_file.to_string_lossy().into_owned();

    let out = within(
        30,
        "status --json",
        client(&["status", "--json", "--env-file", &env_file], &[]).output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["channel"]["state"], "connected", "{v}");
    assert_eq!(v["channel"]["url"], cp.url());
    assert_eq!(v["channel_connected"], true);
    assert_eq!(v["protocol_version"], dtma_protocol::PROTOCOL_VERSION);
    assert!(v["streams"]["running"].is_u64(), "{v}");
    assert!(!text(&out.stdout).contains(TOKEN));

    let out = within(
        30,
        "status",
        client(&["status", "--env-file", &env_file], &[]).output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for heading in [
        "AGENT",
        "CHANNEL",
        "STREAMS",
        "SANDBOX",
        "DOCKER",
        "MCP SERVERS",
    ] {
        assert!(table.contains(heading), "{heading} missing:\n{table}");
    }
    assert!(
        table.contains(&format!("connected  {}", cp.url())),
        "{table}"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_ls_and_logs_of_an_unknown_server() {
    let agent = local_agent().await;
    let out = run(addr(&agent), &["mcp", "ls"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    // Other tests may run MCP servers on the same daemon at the same time: either none, or a
    // table under its heading.
    assert!(
        listing == "no MCP servers\n" || listing.starts_with("GROUP  "),
        "{listing}"
    );

    let out = run(addr(&agent), &["logs", "no-such-server-cli"], &[]).await;
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-server-cli"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let out = run(addr(&agent), &["logs", "no-such-server-cli"], &["-f"]).await;
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));

    let out = run(addr(&agent), &["mcp", "restart", "no-such-server-cli"], &[]).await;
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    agent.shutdown().await;
}

/// Blocking runs of the binary that need no agent.
fn dtma(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dtma"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the dtma binary runs")
}

#[test]
fn check_config_lists_every_problem_of_a_bad_file_and_prints_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtma.toml");
    std::fs::write(
        &path,
        "max_streams = \"many\"\nping_interval_ms = 0\nnonsense_key = 1\n\
         docker_host = \"tcp://10.0.0.1:2375\"\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let path = path.to_string_lossy().into_owned();
    let out = dtma(
        &["check-config", "--config", &path],
        &[("DTMA_BEARER_TOKEN", "t")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("  - ")).collect();
    assert_eq!(problems.len(), 5, "{err}");
    // Type errors and unknown keys (read key by key) and rule violations (validated), each
    // naming its key where it is in the file.
    for key in ["max_streams", "nonsense_key", "listen"] {
        let own = format!("`{key}`: ");
        assert!(problems.iter().any(|l| l.contains(&own)), "{key}:\n{err}");
    }
    for key in ["ping_interval_ms", "docker_host"] {
        let own = format!("`{key}` in `{path}`");
        assert!(problems.iter().any(|l| l.contains(&own)), "{key}:\n{err}");
    }

    std::fs::write(dir.path().join("dtma.toml"), "max_streams = 7\n").unwrap();
    let secret = "check-config-secret-0123456789";
    let out = dtma(
        &["check-config", "--config", &path],
        &[("DTMA_BEARER_TOKEN", secret)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["max_streams"], 7);
    assert_eq!(json["bearer_token"], "[redacted]");
    assert!(!text(&out.stdout).contains(secret));
    // `--print-config` stays the same thing.
    let alias = dtma(
        &["--print-config", "--config", &path],
        &[("DTMA_BEARER_TOKEN", secret)],
    );
    assert_eq!(alias.status.code(), Some(0));
    let alias: serde_json::Value = serde_json::from_slice(&alias.stdout).unwrap();
    assert_eq!(alias["max_streams"], json["max_streams"]);
}

#[test]
fn version_names_the_commit_and_the_protocol() {
    for flag in ["--version", "-V"] {
        let out = dtma(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0));
        let line = text(&out.stdout);
        assert_eq!(
            line.trim(),
            format!(
                "dtma {} (commit {}, protocol {})",
                dtma::VERSION,
                dtma::GIT_COMMIT,
                dtma_protocol::PROTOCOL_VERSION
            )
        );
        assert!(!dtma::GIT_COMMIT.is_empty());
    }
}

#[test]
fn completions_and_help_with_examples() {
    for shell in ["bash", "zsh", "fish"] {
        let out = dtma(&["completions", shell], &[]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains("check-config"), "{shell}: {script}");
        assert!(script.contains("exec"), "{shell}");
    }
    for sub in [
        &["run"][..],
        &["check-config"],
        &["exec"],
        &["status"],
        &["logs"],
        &["mcp"],
        &["mcp", "ls"],
        &["mcp", "restart"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = dtma(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{sub:?}");
        let help = text(&out.stdout);
        assert!(help.contains("Examples:"), "{sub:?}: {help}");
        assert!(
            help.contains(&format!("Usage: dtma {}", sub.join(" "))),
            "{help}"
        );
    }
    // The top-level help lists the subcommands; completions stay out of sight.
    let help = text(&dtma(&["--help"], &[]).stdout);
    for sub in ["run", "check-config", "exec", "status", "logs", "mcp"] {
        assert!(help.contains(&format!("\n  {sub} ")), "{sub}: {help}");
    }
    assert!(!help.contains("completions"));
    assert_eq!(text(&dtma(&["help"], &[]).stdout), help);
    let run_help = text(&dtma(&["run", "--help"], &[]).stdout);
    assert_eq!(text(&dtma(&["help", "run"], &[]).stdout), run_help);
    assert!(run_help.contains("[env: DTMA_LISTEN]"), "{run_help}");
    // A usage mistake in the client is clap's (2), with the usage line.
    let out = dtma(&["exec"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Usage: dtma exec"),
        "{}",
        text(&out.stderr)
    );
}
