//! The agent in its container image, run the way Agentopia runs it: PID 1 of a container with
//! Docker's default capabilities and seccomp profile, the Docker socket mounted, the token in
//! the environment. The image is `deploy/local-image.sh`'s (the Dockerfile's layout built from
//! the built binary and busybox-static: no registry is reachable here), built once per binary.
//! The network is the host's (no bridge may exist on these machines), so the container's agent
//! dials a reference control plane on 127.0.0.1 and listens on a free loopback port.
//!
//! Covered: the channel and an exec streamed back; the init (src/init.rs) reaping a command's
//! orphaned background jobs while exit codes stay right; the sandbox without CAP_SYS_ADMIN (the
//! degradation listed, each profile's user, writes outside scratch and a denied syscall refused,
//! our seccomp filter told apart from Docker's); `docker stop` draining to exit 0.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::docker::{Container, docker_ok, free_port};
use common::http::request;
use common::*;
use dtma_control_plane::Options;

const IMAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local-image.sh");
const DIAGNOSTICS_TOKEN: &str = "diagnostics-token-0123456789";

/// The image of this build's `dtma`, `dtma-local:<12 hex>` (a hash of its files).
fn image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(IMAGE_SCRIPT)
                .arg(DTMA)
                .output()
                .unwrap_or_else(|e| panic!("cannot run bash {IMAGE_SCRIPT}: {e}"));
            assert!(
                out.status.success(),
                "{IMAGE_SCRIPT} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert!(tag.starts_with("dtma-local:"), "printed `{tag}`");
            tag
        })
        .clone()
}

/// The agent in a container, connected to `cp`, with its local API on 127.0.0.1:`port`.
struct Agent {
    container: Container,
    id: String,
    addr: SocketAddr,
}

impl Agent {
    /// `docker run` the image as Agentopia does (plus host networking and the test's channel),
    /// with `extra` docker arguments before the image; wait for the channel.
    async fn start(cp: &Cp, extra: &[&str]) -> Agent {
        let port = free_port();
        let id = format!("ct-{}-{:08x}", std::process::id(), fastrand::u32(..));
        let (url, listen) = (cp.url(), format!("127.0.0.1:{port}"));
        let envs = [
            format!("DTMA_BEARER_TOKEN={TOKEN}"),
            format!("DTMA_WS_URL={url}"),
            format!("DTMA_AGENT_ID={id}"),
            format!("DTMA_LISTEN={listen}"),
            "DTMA_BACKOFF_BASE_MS=20".to_owned(),
            "DTMA_BACKOFF_CAP_MS=200".to_owned(),
            "DTMA_SHUTDOWN_GRACE_MS=500".to_owned(),
        ];
        let mut args: Vec<&str> = vec![
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
        ];
        for e in &envs {
            args.extend(["-e", e]);
        }
        args.extend_from_slice(extra);
        let image = image();
        args.push(&image);
        let container = Container::run(&args);
        let addr: SocketAddr = listen.parse().unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(60), cp.cp.wait_for_agent(&id));
        if connected.await.is_err() {
            panic!(
                "the agent in {} did not connect:\n{}",
                container.name,
                container.logs()
            );
        }
        container.wait_listening(port, 600);
        Agent {
            container,
            id,
            addr,
        }
    }

    /// An exec over the channel (the backend's role, admin), collected to its end.
    async fn exec(&self, cp: &Cp, command: &str) -> Collected {
        let s = cp.cp.request(&self.id, exec(command)).unwrap();
        within(60, command, collect(s)).await
    }

    /// `POST /ssh/execute` with `token`: the JSON answer (`exit_code`, `stdout`, `stderr`).
    async fn http_exec(&self, token: &str, command: &str) -> serde_json::Value {
        let body = serde_json::json!({ "command": command }).to_string();
        let auth = format!("Bearer {token}");
        let r = request(
            self.addr,
            "POST",
            "/ssh/execute",
            Some(&auth),
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{command}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// `docker exec <container> sh -c SCRIPT`: stdout (outside the agent, as root).
    fn sh(&self, script: &str) -> String {
        docker_ok(&["exec", &self.container.name, "sh", "-c", script])
    }
}

fn stdout(c: &Collected) -> String {
    String::from_utf8_lossy(&c.stdout).into_owned()
}

fn exit_code(c: &Collected) -> Option<i32> {
    c.exit.as_ref().and_then(|e| e.exit_code)
}

/// `(pid, state, ppid)` of every process in the container's pid namespace, from `/proc/*/stat`
/// (the command name may hold spaces and parentheses: the fields follow the last `)`).
fn processes(agent: &Agent) -> Vec<(u32, char, u32)> {
    // Processes may end between the glob and the read: cat's complaints are not data.
    let text = agent.sh("cat /proc/[0-9]*/stat 2>/dev/null; true");
    text.lines()
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?.parse().ok()?;
            let rest = &l[l.rfind(')')? + 1..];
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid = f.next()?.parse().ok()?;
            Some((pid, state, ppid))
        })
        .collect()
}

#[tokio::test]
async fn the_image_connects_and_streams_an_exec_with_the_agent_under_its_init() {
    let cp = Cp::start(Options::default()).await;
    let agent = Agent::start(&cp, &[]).await;
    let c = agent
        .exec(
            &cp,
            "echo out; echo err >&2; id -u; grep PPid /proc/$PPID/status",
        )
        .await;
    assert_eq!(exit_code(&c), Some(0), "{c:?}");
    assert_eq!(String::from_utf8_lossy(&c.stderr), "err\n");
    // Output, the admin profile's root, and the agent (the shell's parent) is the init's child.
    let out = stdout(&c);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["out", "0"], "{out}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["PPid:", "1"]
    );
    // PID 1 is the init: the same binary, whose environment never held the token (the
    // secrets hand-off ran before it split), while the agent's carries the init's marker.
    let init = agent.sh("tr '\\0' ' ' </proc/1/cmdline; echo; tr '\\0' '\\n' </proc/1/environ");
    assert!(init.starts_with("/usr/local/bin/dtma"), "{init}");
    assert!(
        !init.contains(TOKEN),
        "the init's environment holds the token: {init}"
    );
    assert!(!init.contains(dtma::init::CHILD_VAR), "{init}");
    let children: Vec<(u32, char, u32)> =
        processes(&agent).into_iter().filter(|p| p.2 == 1).collect();
    assert_eq!(
        children.len(),
        1,
        "the init has one child, the agent: {children:?}"
    );
    let environ = agent.sh(&format!("tr '\\0' '\\n' </proc/{}/environ", children[0].0));
    assert!(
        environ.contains(&format!("{}=1", dtma::init::CHILD_VAR)),
        "{environ}"
    );
}

#[tokio::test]
async fn orphaned_background_jobs_are_reaped_and_exit_codes_stay_right() {
    const JOBS: usize = 5;
    let cp = Cp::start(Options::default()).await;
    let agent = Agent::start(&cp, &[]).await;
    // The jobs block on a FIFO until the test opens it for writing; their shell exits first,
    // so they are re-parented to PID 1.
    let fifo = "/tmp/dtma-reap-test";
    let c = agent
        .exec(
            &cp,
            &format!(
                "mkfifo {fifo} && for i in $(seq {JOBS}); do cat {fifo} >/dev/null 2>&1 & echo $!; done; exit 7"
            ),
        )
        .await;
    assert_eq!(exit_code(&c), Some(7), "{c:?}");
    let jobs: Vec<u32> = stdout(&c).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(jobs.len(), JOBS, "{c:?}");
    // Each job is re-parented to PID 1 and, once asleep, blocked opening the FIFO (busybox is
    // static: its first blocking call is that open), so one writer releases them all.
    let mut before = Vec::new();
    for _ in 0..400 {
        before = processes(&agent);
        let asleep = |job: &u32| before.iter().any(|p| p.0 == *job && p.1 == 'S');
        if jobs.iter().all(asleep) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for job in &jobs {
        let p = before.iter().find(|p| p.0 == *job);
        assert!(
            matches!(p, Some((_, 'S', 1))),
            "job {job} should be asleep with PID 1 as its parent: {p:?} in {before:?}"
        );
    }
    // Release them: one writer opens the FIFO (every blocked reader's open returns), closes it,
    // and each `cat` reads end-of-file and exits.
    agent.sh(&format!(": >{fifo}"));
    let mut left = Vec::new();
    for _ in 0..400 {
        let now = processes(&agent);
        left = now
            .iter()
            .filter(|p| jobs.contains(&p.0) || p.1 == 'Z')
            .copied()
            .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        left.is_empty(),
        "jobs or zombies left in the container: {left:?}"
    );
    // The agent's own children still report their own status (the init reaps only its own).
    for (command, code) in [("exit 0", 0), ("exit 3", 3), ("sleep 0.1 & exit 42", 42)] {
        let c = agent.exec(&cp, command).await;
        assert_eq!(exit_code(&c), Some(code), "{command}: {c:?}");
    }
    let killed = agent.exec(&cp, "kill -9 $$").await;
    let exit = killed.exit.as_ref().unwrap();
    assert_eq!((exit.exit_code, exit.signal), (None, Some(9)), "{exit:?}");
}

/// A config file with a diagnostics token, and a directory outside scratch that everyone may
/// write by its permissions (so only the sandbox can stop a write there), for bind mounts.
fn diagnostics_fixture() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dtma.toml");
    std::fs::write(
        &config,
        format!(
            "[[tokens]]\nname = \"oncall\"\nrole = \"diagnostics\"\ntoken = \"{DIAGNOSTICS_TOKEN}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::write(open.join("planted"), "planted\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(open.join("planted"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mounts = (
        format!("{}:/etc/dtma/dtma.toml:ro", config.display()),
        format!("{}:/srv/open", open.display()),
    );
    (dir, mounts.0, mounts.1)
}

#[tokio::test]
async fn the_sandbox_runs_every_profile_without_cap_sys_admin_and_lists_the_degradation() {
    let cp = Cp::start(Options::default()).await;
    let (dir, config, open) = diagnostics_fixture();
    let agent = Agent::start(
        &cp,
        &[
            "-v",
            &config,
            "-v",
            &open,
            "-e",
            "DTMA_CONFIG=/etc/dtma/dtma.toml",
        ],
    )
    .await;
    let auth = format!("Bearer {TOKEN}");
    let status = request(agent.addr, "GET", "/status", Some(&auth), None)
        .await
        .json();
    let sandbox = &status["sandbox"];
    assert_eq!(sandbox["mode"], "enforce", "{status}");
    assert_eq!(sandbox["level"], "partial", "{status}");
    assert_eq!(
        sandbox["refused_profiles"],
        serde_json::json!([]),
        "{status}"
    );
    let degradations = sandbox["degradations"].to_string();
    assert!(degradations.contains("CAP_SYS_ADMIN"), "{status}");
    // hello said the same.
    let hello = cp.cp.session(&agent.id).unwrap().hello.clone();
    let said = serde_json::to_value(hello.sandbox.as_ref().unwrap()).unwrap();
    assert_eq!(&said, sandbox, "hello and /status disagree");

    let admin = agent
        .http_exec(TOKEN, "id -un; touch /srv/open/by-admin && echo ok")
        .await;
    assert_eq!(admin["exit_code"], 0, "{admin}");
    assert_eq!(admin["stdout"], "root\nok\n", "{admin}");

    let diag = |cmd: &'static str| agent.http_exec(DIAGNOSTICS_TOKEN, cmd);
    let who = diag("id -un; echo scratch >/tmp/diag-ok && cat /tmp/diag-ok").await;
    assert_eq!(who["exit_code"], 0, "{who}");
    assert_eq!(who["stdout"], "dtma-diagnostics\nscratch\n", "{who}");
    // Outside scratch, writable by permissions, refused by Landlock.
    for write in [
        "echo x >/srv/open/planted",
        "echo x >/srv/open/new",
        "rm /srv/open/planted",
    ] {
        let j = diag(write).await;
        assert_ne!(j["exit_code"], 0, "{write}: {j}");
        assert!(
            j["stderr"].as_str().unwrap().contains("Permission denied"),
            "{write}: {j}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("open/planted")).unwrap(),
        "planted\n"
    );
    assert!(!dir.path().join("open/new").exists());
    // Without masks, the config file (root, 0600) is protected by its permissions only: still
    // unreadable to the diagnostics user.
    let j = diag("cat /etc/dtma/dtma.toml").await;
    assert_ne!(j["exit_code"], 0, "{j}");
    assert!(
        !j["stdout"].as_str().unwrap().contains(DIAGNOSTICS_TOKEN),
        "{j}"
    );
    // A denied syscall: creating a user namespace needs no capability, so only a filter stops
    // it. Docker's default profile refuses it to the admin profile too (without CAP_SYS_ADMIN);
    // the next test tells the two filters apart.
    let j = diag("unshare -U true").await;
    assert_ne!(j["exit_code"], 0, "{j}");
    assert!(
        j["stderr"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{j}"
    );
}

#[tokio::test]
async fn our_seccomp_filter_refuses_what_dockers_would_allow() {
    // Docker's seccomp profile off, Docker's default capabilities kept: admin may create a user
    // namespace, diagnostics may not (EPERM from the launcher's filter).
    let cp = Cp::start(Options::default()).await;
    let (_dir, config, _open) = diagnostics_fixture();
    let agent = Agent::start(
        &cp,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "-v",
            &config,
            "-e",
            "DTMA_CONFIG=/etc/dtma/dtma.toml",
        ],
    )
    .await;
    let admin = agent
        .http_exec(TOKEN, "unshare -U true && echo created")
        .await;
    assert_eq!(admin["exit_code"], 0, "{admin}");
    assert_eq!(admin["stdout"], "created\n", "{admin}");
    let diag = agent
        .http_exec(DIAGNOSTICS_TOKEN, "unshare -U true && echo created")
        .await;
    assert_ne!(diag["exit_code"], 0, "{diag}");
    assert_eq!(diag["stdout"], "", "{diag}");
    assert!(
        diag["stderr"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{diag}"
    );
}

#[tokio::test]
async fn docker_stop_drains_the_agent_and_the_container_exits_0() {
    let cp = Cp::start(Options::default()).await;
    let agent = Agent::start(&cp, &[]).await;
    // A command still running at the stop: the drain's grace (500 ms) ends it.
    let mut running = cp
        .cp
        .request(&agent.id, exec("echo started; sleep 300"))
        .unwrap();
    loop {
        match within(60, "started", running.recv()).await {
            Some(dtma_protocol::AgentMessage::Output(_)) => break,
            Some(_) => {}
            None => panic!("the stream ended before its output"),
        }
    }
    // A long stop timeout: a SIGKILL from Docker (exit 137) must not hide a lost SIGTERM.
    docker_ok(&["stop", "--time", "120", &agent.container.name]);
    let c = within(60, "the drained command", collect_rest(running)).await;
    let exit = c.unwrap_or_else(|| panic!("no exit event:\n{}", agent.container.logs()));
    assert!(exit.cancelled, "{exit:?}");
    let code = docker_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &agent.container.name,
    ]);
    assert_eq!(code, "0", "{}", agent.container.logs());
    let logs = agent.container.logs();
    assert!(logs.contains("Stop signal: draining"), "{logs}");
}

/// The rest of a stream, to its `exit`.
async fn collect_rest(mut s: dtma_control_plane::StreamRx) -> Option<dtma_protocol::Exit> {
    while let Some(m) = s.recv().await {
        if let dtma_protocol::AgentMessage::Exit(e) = m {
            return Some(e);
        }
    }
    None
}
