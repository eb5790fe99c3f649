//! Docker for tests: an image holding the test MCP server (`tests/support/mcp_server.rs`),
//! built from local files by `deploy/test-image.sh` because no registry can be reached;
//! container names that do not clash between parallel tests; a guard that removes a container
//! however the test ends.
//!
//! Tests drive the `docker` CLI; the agent itself talks to the daemon through bollard. A
//! missing CLI or daemon fails the test with a message: Docker tests never skip.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// The test MCP server, built by cargo alongside the integration tests.
pub const MCP_BINARY: &str = env!("CARGO_BIN_EXE_dtma-test-mcp");
/// Where the image keeps it (and its entrypoint).
pub const MCP_IN_IMAGE: &str = "/usr/local/bin/dtma-test-mcp";
const REPOSITORY: &str = "dtma-test-mcp";

/// Run `docker ARGS`. Panics when the CLI cannot be started.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run the docker CLI ({e}): Docker tests need Docker; .ci/test.sh installs and starts it")
    })
}

/// Run `docker ARGS`, panic on failure with its stderr, return its stdout trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds or reuses the test image and prints its reference; shared with the MCP benchmark.
pub const IMAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/test-image.sh");

/// The test image's reference, `dtma-test-mcp:<12 hex>`: a hash of every file in it, so a
/// rebuilt server (or a changed busybox or libc) gets a new image. Built once per machine by
/// `deploy/test-image.sh` and reused; concurrent callers serialise on its lock file.
pub fn test_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| image_for(Path::new(MCP_BINARY)))
        .clone()
}

/// Run `deploy/test-image.sh SERVER` (no caching here); panics with its stderr on failure.
pub fn image_for(server: &Path) -> String {
    let out = Command::new("bash")
        .arg(IMAGE_SCRIPT)
        .arg(server)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {IMAGE_SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "{IMAGE_SCRIPT} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        tag.starts_with(&format!("{REPOSITORY}:")),
        "{IMAGE_SCRIPT} printed `{tag}`, not an image reference"
    );
    tag
}

/// A port that was free a moment ago on 127.0.0.1. Binding and dropping leaves a window in
/// which another process could take it; for a port that a container binds (not this test
/// process, so no listener can be handed over) that is the best there is, and a clash shows
/// as a loud bind failure in the container's log, not a wrong result.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address").port()
}

/// A container name no other test (or test process) uses at the same time.
pub fn container_name() -> String {
    format!("dtma-test-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A test container, removed (`docker rm -f`) when dropped: after a pass, a failed
/// assertion or a panic alike.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique> ARGS...` (ARGS end with the image and its arguments).
    pub fn run(args: &[&str]) -> Container {
        // The guard exists before the container does: a half-created one is removed too.
        let c = Container {
            name: container_name(),
        };
        let mut full = vec!["run", "-d", "--name", &c.name];
        full.extend_from_slice(args);
        docker_ok(&full);
        c
    }

    /// Everything the container printed so far, stdout then stderr.
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn is_running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.name]).stdout == b"true\n"
    }

    /// Poll until something accepts TCP connections on 127.0.0.1:`port`, at most `attempts`
    /// times with a short pause between; fail with the container's log when it exits first or
    /// never listens.
    pub fn wait_listening(&self, port: u16, attempts: u32) {
        for attempt in 0..attempts {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            if attempt % 10 == 9 && !self.is_running() {
                panic!(
                    "container {} exited before listening on {port}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "container {} not listening on {port} after {attempts} attempts:\n{}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Never panic in drop (it may run during a panic); say what was left behind.
        let out = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
        let failure = match &out {
            Ok(o) if o.status.success() => return,
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "could not remove container {}: {failure}",
            self.name
        );
    }
}
