//! The binary under a service manager's eyes: `READY=1`, `STATUS=`, `STOPPING=1` and the
//! watchdog on a real `NOTIFY_SOCKET` (a datagram socket bound in a temporary directory, as
//! systemd's is), the behaviour at stop (a second signal exits at once, a clean drain exits 0),
//! and the unit file, checked by `systemd-analyze verify`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dtma_control_plane::Options;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::{Child, ChildStderr, Command};

/// The watchdog interval the tests give the agent: pings every 200 ms while it is healthy.
const WATCHDOG_USEC: u64 = 400_000;

/// systemd's end of the notification protocol.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The next datagram (one or more `KEY=value` lines).
    async fn recv(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = self.sock.recv(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Datagrams up to and including the first that has `line`; returns them all.
    async fn until(&self, line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.recv().await;
            let done = has_line(&m, line);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

fn has_line(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| l == line)
}

fn has_prefix(datagram: &str, prefix: &str) -> bool {
    datagram.lines().any(|l| l.starts_with(prefix))
}

fn pings(datagrams: &[String]) -> usize {
    datagrams
        .iter()
        .filter(|m| has_line(m, "WATCHDOG=1"))
        .count()
}

fn agent(notify: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dtma"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .env("DTMA_LISTEN", "127.0.0.1:0")
        .env("DTMA_AUDIT_LOG", "-")
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id().unwrap() as i32), sig).unwrap();
}

/// Read the log until it says where the local API listens; the rest of the log is collected
/// by a task (so the agent never blocks on a full pipe) and returned when the agent exits.
async fn listen_addr(
    stderr: ChildStderr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    let addr = within(20, "the listen line", async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap_or_else(|| {
                panic!("the agent exited before listening: {log}");
            });
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("http_addr=").nth(1)
                && let Some(addr) = rest.split_whitespace().next()
            {
                return addr.parse().unwrap();
            }
        }
    })
    .await;
    let rest = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    (addr, rest)
}

fn collect_log(stderr: ChildStderr) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut log = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut log).await;
        log
    })
}

/// `POST /ssh/execute?stream=true`: the open response, read up to the first output that holds
/// `until`; returns the connection (to read the rest) and what was read.
async fn stream_command(
    addr: std::net::SocketAddr,
    command: &str,
    until: &str,
) -> (TcpStream, String) {
    let body = serde_json::json!({ "command": command }).to_string();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /ssh/execute?stream=true HTTP/1.1\r\nHost: dtma\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut seen = String::new();
    within(20, "the command's first output", async {
        let mut buf = [0u8; 4096];
        while !seen.contains(until) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the response ended early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    (conn, seen)
}

/// The watchdog is fed only while the control loop turns: a wedged session loop stops the
/// pings (so systemd would restart the agent after `WatchdogSec=`).
///
/// The agent runs with `WATCHDOG_USEC` = 400 ms: its watchdog task checks every 200 ms and
/// pings only when the progress count moved since its last ping; the reconnect loop and the
/// session tick the count on every turn and at least every 100 ms. SIGUSR1 (a debug-build hook,
/// `DTMA_DEBUG_WEDGE_ON_SIGUSR1`) makes the session loop block for good; its last act is the
/// `STATUS=wedged by the debug hook` datagram. Why the counts below cannot flake:
/// - Healthy: the test waits (without a deadline on the agent) for three pings; a broken
///   watchdog would never send them and the test times out.
/// - Wedged: nothing ticks after the marker (the session loop is blocked and the reconnect
///   loop awaits it), so the watchdog task can ping at most once more: the check that straddled
///   the wedge may still see the last tick. The test then counts pings between two events it
///   controls: the marker, and `STOPPING=1`, which it provokes with SIGTERM after waiting ten
///   watchdog intervals on its own clock. One ping or none is allowed. A slow machine can only
///   make the agent send fewer pings, never more, so the test can only pass wrongly (a
///   descheduled agent), not fail wrongly. The agent's own log must also say it withheld a ping.
/// - The wedged session never ends, so the drain cannot finish either: the second SIGTERM is
///   what ends the process (exit 143), as an operator's would.
#[cfg(debug_assertions)]
#[tokio::test]
async fn watchdog_pings_follow_progress_and_stop_when_the_session_is_wedged() {
    let notify = NotifySocket::bind();
    let cp = Cp::start(Options::default()).await;
    let host = cp.addr.to_string();
    let mut child = agent(&notify.path)
        .env("DTMA_AGENT_ID", "wd1")
        .env("DTMA_WS_URL", cp.url())
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env("DTMA_DEBUG_WEDGE_ON_SIGUSR1", "1")
        .spawn()
        .unwrap();
    let log = collect_log(child.stderr.take().unwrap());

    // READY=1 comes with the channel's state: the first dial has started.
    let first = within(20, "READY=1", notify.until("READY=1")).await;
    let ready = first.last().unwrap();
    assert!(
        has_line(ready, &format!("STATUS=connecting to {host}"))
            || has_line(ready, &format!("STATUS=connected to {host}")),
        "{ready:?}"
    );
    within(20, "the session", cp.cp.wait_for_agent("wd1")).await;
    if !has_line(ready, &format!("STATUS=connected to {host}")) {
        within(
            20,
            "STATUS=connected",
            notify.until(&format!("STATUS=connected to {host}")),
        )
        .await;
    }

    // Healthy and idle (no request, no frame): the session's ticker still feeds the watchdog.
    within(20, "three watchdog pings", async {
        let mut n = 0;
        while n < 3 {
            if has_line(&notify.recv().await, "WATCHDOG=1") {
                n += 1;
            }
        }
    })
    .await;

    signal(&child, Signal::SIGUSR1);
    within(
        20,
        "the wedge marker",
        notify.until("STATUS=wedged by the debug hook"),
    )
    .await;

    // Ten watchdog intervals on the test's clock, then SIGTERM: count the pings in between.
    let mut after = Vec::new();
    let quiet_until = tokio::time::Instant::now() + Duration::from_micros(WATCHDOG_USEC * 10);
    while let Ok(m) = tokio::time::timeout_at(quiet_until, notify.recv()).await {
        after.push(m);
    }
    signal(&child, Signal::SIGTERM);
    after.extend(within(20, "STOPPING=1", notify.until("STOPPING=1")).await);
    assert!(
        pings(&after) <= 1,
        "the watchdog was fed while the session loop was wedged: {after:?}"
    );

    // The wedged session holds the drain; the second signal ends the process at once.
    signal(&child, Signal::SIGTERM);
    let status = within(20, "exit after the second SIGTERM", child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(143));
    let log = within(20, "the log", log).await.unwrap();
    assert!(log.contains("watchdog enabled"), "{log}");
    assert!(log.contains("withholding the watchdog ping"), "{log}");
    assert!(log.contains("Second stop signal"), "{log}");
}

/// `STATUS=` follows the channel: backing off (with the delay and the cause) while the backend
/// is unreachable, connected once it is back, and backing off again when the link is cut.
#[tokio::test]
async fn status_lines_follow_the_channel_state() {
    let notify = NotifySocket::bind();
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    proxy.refuse(true);
    let host = proxy.addr.to_string();
    let mut child = agent(&notify.path)
        .env("DTMA_AGENT_ID", "st1")
        .env("DTMA_WS_URL", proxy.url())
        .env("DTMA_BACKOFF_BASE_MS", "20")
        .env("DTMA_BACKOFF_CAP_MS", "200")
        .spawn()
        .unwrap();
    let log = collect_log(child.stderr.take().unwrap());
    within(20, "READY=1", notify.until("READY=1")).await;
    let backing_off = |m: &String| {
        m.lines()
            .any(|l| l.starts_with("STATUS=backing off ") && l.contains(" s: "))
    };
    let refused = within(20, "STATUS=backing off", async {
        loop {
            let m = notify.recv().await;
            if backing_off(&m) {
                return m;
            }
        }
    })
    .await;
    assert!(
        refused.contains("connect failed") || refused.contains("session failed"),
        "{refused}"
    );

    proxy.refuse(false);
    within(
        20,
        "STATUS=connected",
        notify.until(&format!("STATUS=connected to {host}")),
    )
    .await;
    proxy.cut();
    let cut = within(20, "STATUS=backing off after the cut", async {
        loop {
            let m = notify.recv().await;
            if backing_off(&m) {
                return m;
            }
        }
    })
    .await;
    assert!(cut.contains("session failed"), "{cut}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop(log);
}

/// SIGTERM drains (the agent says `STOPPING=1` and waits for the running command); a second
/// SIGTERM exits at once with 143 and says why. The grace period is ten minutes, so an exit
/// now can only be the second signal's doing; the exit code says which.
#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once_with_143() {
    let notify = NotifySocket::bind();
    let mut child = agent(&notify.path)
        .env("DTMA_SHUTDOWN_GRACE_MS", "600000")
        .spawn()
        .unwrap();
    let (addr, log) = listen_addr(child.stderr.take().unwrap()).await;
    let ready = within(20, "READY=1", notify.until("READY=1")).await;
    assert!(
        has_prefix(ready.last().unwrap(), "STATUS=local-only"),
        "{ready:?}"
    );

    // `exec` keeps the shell's pid, which leads the command's own process group.
    let (_conn, seen) = stream_command(addr, "echo ready $$; exec sleep 600", "ready ").await;
    let pid: i32 = seen
        .split("ready ")
        .nth(1)
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|p| !p.is_empty())
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {seen}"));

    signal(&child, Signal::SIGTERM);
    let stopping = within(20, "STOPPING=1", notify.until("STOPPING=1")).await;
    assert!(
        has_line(
            stopping.last().unwrap(),
            "STATUS=draining: running requests may finish for 600 s"
        ),
        "{stopping:?}"
    );
    // The drain waits for the command (its grace is ten minutes): the agent is still there.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent did not wait"
    );
    signal(&child, Signal::SIGTERM);
    let status = within(20, "exit after the second SIGTERM", child.wait())
        .await
        .unwrap();
    // The command was not waited for; it is the test's to stop now.
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    assert_eq!(status.code(), Some(143));
    let log = within(20, "the log", log).await.unwrap();
    assert!(log.contains("Draining running requests"), "{log}");
    assert!(
        log.contains("Second stop signal during the drain: exiting at once"),
        "{log}"
    );
    assert!(!log.contains("Agent stopped."), "{log}");
}

/// A drain that ends (the running command finishes after SIGTERM) exits 0, and the command's
/// stream gets its exit. The command waits on a FIFO that the test writes only once
/// `STOPPING=1` has arrived, so the drain is under way when the command ends.
#[tokio::test]
async fn a_clean_drain_exits_0() {
    let notify = NotifySocket::bind();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let mut child = agent(&notify.path)
        .env("DTMA_SHUTDOWN_GRACE_MS", "600000")
        .spawn()
        .unwrap();
    let (addr, log) = listen_addr(child.stderr.take().unwrap()).await;
    within(20, "READY=1", notify.until("READY=1")).await;

    let command = format!(
        "echo waiting; read line < {}; echo \"got $line\"",
        fifo.display()
    );
    let (mut conn, mut seen) = stream_command(addr, &command, "waiting").await;

    signal(&child, Signal::SIGTERM);
    within(20, "STOPPING=1", notify.until("STOPPING=1")).await;
    // The drain has started with the command still blocked on the FIFO: release it.
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        f.write_all(b"go\n").unwrap();
    });
    within(20, "the FIFO write", writer).await.unwrap();
    within(20, "the command's exit", async {
        let mut buf = [0u8; 4096];
        while !seen.contains("event:exit") && !seen.contains("event: exit") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the response ended before the exit: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(seen.contains("got go"), "{seen}");
    let status = within(20, "agent exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let log = within(20, "the log", log).await.unwrap();
    assert!(log.contains("Agent stopped."), "{log}");
    assert!(!log.contains("Grace period over"), "{log}");
}

/// The shipped unit passes `systemd-analyze verify` (with `ExecStart=` pointed at the built
/// binary, which verify requires to exist) and keeps the settings the agent relies on.
#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/dtma.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=always",
        "LoadCredential=dtma_bearer_token:/etc/dtma/bearer_token",
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // Stop must outlast the drain: the grace, the final events' wait (2 s) and the audit
    // log's flush (bounded at 10 s).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec= in seconds");
    let needed = dtma::config::DEFAULT_SHUTDOWN_GRACE.as_secs() + 2 + 10;
    assert!(stop > needed, "TimeoutStopSec={stop} is not above {needed}");

    let exec_start = format!("ExecStart={}", env!("CARGO_BIN_EXE_dtma"));
    let mut replaced = 0;
    let copy: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                replaced += 1;
                exec_start.clone()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(replaced, 1, "one ExecStart= expected");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtma.service");
    std::fs::write(&path, copy + "\n").unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package `systemd`; .ci/test.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    // Warnings about the unit itself (unknown keys, bad values) do not fail verify: none allowed.
    assert!(
        !err.contains("dtma.service"),
        "systemd-analyze verify warned: {err}"
    );
}
