//! Docker stopped and started again under a running agent. The test runs a private `dockerd` of
//! its own (own socket, data and exec roots, its own containerd) so that stopping it disturbs no
//! other test; the agent is pointed at it through `docker_socket`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::docker::{free_port, test_image};
use common::http::{Response, request};
use common::*;

/// A dockerd of the test's own; stopped (and its containers with it) when dropped.
struct PrivateDockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateDockerd {
    fn start() -> PrivateDockerd {
        // Unix socket paths are short (108 bytes): a short directory under /tmp.
        let dir = PathBuf::from(format!(
            "/tmp/dtma-dd-{}-{:04x}",
            std::process::id(),
            fastrand::u16(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = PrivateDockerd { dir, child: None };
        d.run();
        d
    }

    fn socket(&self) -> String {
        format!("unix://{}/d.sock", self.dir.display())
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    fn answers(&self) -> bool {
        self.cli(&["version", "--format", "{{.Server.Version}}"])
            .status
            .success()
    }

    /// Start the daemon and wait (a bounded number of polls) until it answers.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("dockerd.log")).unwrap();
        let d = self.dir.display();
        let child = Command::new("dockerd")
            .args([
                "--host",
                &self.socket(),
                "--data-root",
                &format!("{d}/data"),
                "--exec-root",
                &format!("{d}/exec"),
                "--pidfile",
                &format!("{d}/pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (docker.io) is installed by .ci/test.sh");
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the private dockerd did not answer: {}",
            std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// SIGTERM and wait for the daemon to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Remove what the test left, then stop the daemon; never panic here.
            let ids = self.cli(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server(name: &str, port: u16, extra: serde_json::Value) -> serde_json::Value {
    let mut env = serde_json::json!({ "MCP_PORT": port.to_string(), "MCP_MODE": "discover" });
    if let (Some(e), Some(x)) = (env.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    serde_json::json!({
        "accountToolInstanceId": format!("ati-{name}"),
        "dockerImageUrl": test_image(),
        "instanceNameOnToolbox": name,
        "portBindings": { format!("{port}/tcp"): port },
        "environmentVariables": env,
        "readinessTimeoutMs": 20000,
    })
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    request(
        addr,
        method,
        path,
        Some(&auth),
        body.as_deref().map(str::as_bytes),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_going_away_and_coming_back() {
    let mut dockerd = PrivateDockerd::start();
    // The image exists only in the main daemon: copy it over.
    let image = test_image();
    let copied = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {image} | docker -H {} load",
            dockerd.socket()
        ))
        .status()
        .unwrap();
    assert!(copied.success());

    let mut config = common::local_agent_config();
    config.docker_socket = dockerd.socket();
    config.mcp_network = Some("host".into());
    let agent = InProc::start(config).await;
    let addr = agent.running.as_ref().unwrap().http_addr;

    let group = serde_json::json!({
        "groupId": "down-1",
        "servers": [server("steady", free_port(), serde_json::json!({}))],
    });
    let r = call(addr, "POST", "/mcp/groups", Some(&group)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Docker goes away: MCP routes say so clearly, everything else keeps working.
    dockerd.stop();
    let r = call(addr, "GET", "/mcp/status", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "docker_unavailable");
    assert_eq!(call(addr, "GET", "/health", None).await.status, 200);
    let r = call(
        addr,
        "POST",
        "/ssh/execute",
        Some(&serde_json::json!({ "command": "echo still here" })),
    )
    .await;
    assert_eq!(r.json()["stdout"], "still here\n");

    // Docker returns: the agent picks it up again, and the group is there (found by labels).
    dockerd.run();
    let r = call(addr, "GET", "/mcp/status", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["groups"][0]["group_id"], "down-1");

    // A deploy cut short by the daemon stopping: a clear failure, and once Docker is back the
    // agent removes what the deploy had left (nothing under a temporary name survives).
    let slow = serde_json::json!({
        "groupId": "down-2",
        "servers": [server("slow", free_port(), serde_json::json!({ "MCP_DELAY_MS": "4000" }))],
    });
    let deploying =
        tokio::spawn(async move { call(addr, "POST", "/mcp/groups", Some(&slow)).await });
    // Stop the daemon while the server is starting (its container exists, under its temporary
    // name): poll the private daemon until it does.
    let mut seen = false;
    for _ in 0..200 {
        let names = dockerd.cli(&["ps", "-a", "--format", "{{.Names}}"]);
        if String::from_utf8_lossy(&names.stdout).contains("dtma-mcp-slow-dtma-new-") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the deploy never created its container");
    dockerd.stop();
    let r = within(60, "the interrupted deploy's answer", deploying)
        .await
        .unwrap();
    assert!(r.status >= 500, "{}", String::from_utf8_lossy(&r.body));
    dockerd.run();
    let mut left = String::from("not checked");
    for _ in 0..100 {
        let out = dockerd.cli(&["ps", "-a", "--format", "{{.Names}}"]);
        left = String::from_utf8_lossy(&out.stdout).into_owned();
        if !left.contains("-dtma-new-") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!left.contains("-dtma-new-"), "left behind: {left}");
    assert!(left.contains("dtma-mcp-steady"), "{left}");
    agent.shutdown().await;
}
