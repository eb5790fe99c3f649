//! Test harness: a real control plane on 127.0.0.1:0, the real agent (in-process or as the
//! `dtma` binary), and a TCP proxy between them that a test can cut, black-hole and restore.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod docker;
pub mod http;
pub mod mcp;

use dtma::config::{ChannelConfig, Config};
use dtma_control_plane::{ControlPlane, Options, StreamRx, output_bytes};
use dtma_protocol::{AgentMessage, Exec, Exit, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789";

/// A control plane serving on 127.0.0.1:0 until the test ends.
pub struct Cp {
    pub cp: ControlPlane,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Cp {
    pub async fn start(opts: Options) -> Cp {
        let opts = Options {
            tokens: if opts.tokens.is_empty() {
                vec![TOKEN.to_owned()]
            } else {
                opts.tokens
            },
            ..opts
        };
        let cp = ControlPlane::new(opts);
        let stop = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        cp.serve(listener, stop.clone());
        Cp { cp, addr, stop }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/dtma/connect", self.addr)
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Channel settings fast enough for tests.
pub fn fast_channel(url: String) -> ChannelConfig {
    ChannelConfig {
        connect_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_millis(250),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        healthy_after: Duration::from_secs(60),
        ..ChannelConfig::with_url(url)
    }
}

/// The built agent binary: the sandbox launcher of in-process agents (whose own executable is
/// the test binary).
pub const DTMA: &str = env!("CARGO_BIN_EXE_dtma");
/// The small launcher (`src/bin/dtma-sandbox.rs`), as an installed agent finds it beside itself.
pub const DTMA_SANDBOX: &str = env!("CARGO_BIN_EXE_dtma-sandbox");

/// An agent's configuration for tests: the seed token, the local API on 127.0.0.1:0, and the
/// kernel sandbox on (the default) with the small launcher as an installed agent finds it, and
/// the profiles' users present.
pub fn local_agent_config() -> Config {
    let mut c = Config::for_channel(TOKEN, None);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.exec.sandbox.launcher = DTMA_SANDBOX.into();
    system_user("dtma-diagnostics");
    system_user("dtma-operator");
    c
}

/// A system user, created once per machine (the package creates them on a droplet); a lock
/// file serialises concurrent tests.
pub fn system_user(name: &str) -> nix::unistd::User {
    let lock = std::fs::File::create("/tmp/dtma-sandbox-test-useradd.lock").unwrap();
    lock.lock().unwrap();
    if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
        return u;
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "useradd: {out:?}");
    nix::unistd::User::from_name(name).unwrap().unwrap()
}

pub fn agent_config(id: &str, url: String) -> Config {
    let mut c = local_agent_config();
    c.agent_id = id.to_owned();
    c.channel = Some(fast_channel(url));
    c.exec.kill_grace = Duration::from_millis(500);
    c
}

/// The real agent running in this process.
pub struct InProc {
    pub running: Option<dtma::Running>,
    pub stop: CancellationToken,
}

impl InProc {
    pub async fn start(config: Config) -> InProc {
        let stop = CancellationToken::new();
        let running = dtma::start(config, stop.clone()).await.unwrap();
        InProc {
            running: Some(running),
            stop,
        }
    }
    pub fn agent(&self) -> &Arc<dtma::agent::Agent> {
        self.running.as_ref().unwrap().agent()
    }
    pub fn channel(&self) -> &Arc<dtma::channel::Channel> {
        self.running.as_ref().unwrap().channel().unwrap()
    }
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(r) = self.running.take() {
            r.join().await.unwrap();
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(r) = &self.running {
            r.agent().cancel_all_work();
        }
    }
}

pub fn exec(cmd: &str) -> RequestBody {
    RequestBody::Exec(Exec {
        command: cmd.to_owned(),
        timeout_ms: Some(60_000),
        ..Exec::default()
    })
}

/// Everything a finished exec stream delivered.
#[derive(Debug, Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub events: Vec<AgentMessage>,
    pub exit: Option<Exit>,
}

/// Read a stream to its terminal event, checking that seq numbers run 0, 1, 2, ...
pub async fn collect(mut s: StreamRx) -> Collected {
    let mut c = Collected::default();
    let mut expected = 0;
    while let Some(m) = s.recv().await {
        let seq = seq_of(&m);
        assert_eq!(seq, Some(expected), "out of order: {m:?}");
        expected += 1;
        match &m {
            AgentMessage::Output(o) => match o.fd {
                dtma_protocol::Fd::Stdout => c.stdout.extend(output_bytes(o)),
                dtma_protocol::Fd::Stderr => c.stderr.extend(output_bytes(o)),
            },
            AgentMessage::Exit(e) => c.exit = Some(e.clone()),
            _ => {}
        }
        c.events.push(m);
    }
    c
}

pub fn seq_of(m: &AgentMessage) -> Option<u64> {
    match m {
        AgentMessage::Started(x) => Some(x.seq),
        AgentMessage::Output(x) => Some(x.seq),
        AgentMessage::Exit(x) => Some(x.seq),
        AgentMessage::Result(x) => Some(x.seq),
        AgentMessage::Error(x) => x.seq,
        AgentMessage::Progress(x) => Some(x.seq),
        AgentMessage::McpEvent(x) => Some(x.seq),
        _ => None,
    }
}

/// Bound a future in time so a broken test fails instead of hanging CI.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Next unsequenced notice that is not a heartbeat.
pub async fn next_notice(
    rx: &mut tokio::sync::broadcast::Receiver<(String, AgentMessage)>,
) -> AgentMessage {
    loop {
        match rx.recv().await {
            Ok((_, AgentMessage::Status(_))) => continue,
            Ok((_, m)) => return m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("notices closed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can cut, black-hole and restore connections.
// ---------------------------------------------------------------------------------------------

struct Conn {
    kill: CancellationToken,
    frozen: watch::Sender<bool>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    /// Connections accepted so far (each a dial by the agent).
    pub accepted: Arc<AtomicU64>,
    accepted_tx: watch::Sender<u64>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let (accepted_tx, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r2 = refusing.clone();
        let (c2, a2, tx2, s2) = (
            conns.clone(),
            accepted.clone(),
            accepted_tx.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (down, _) = tokio::select! {
                    _ = s2.cancelled() => return,
                    r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
                };
                let n = a2.fetch_add(1, Ordering::SeqCst) + 1;
                tx2.send_replace(n);
                if r2.load(Ordering::SeqCst) {
                    // The backend is unreachable: the connection closes at once.
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(target).await else {
                    continue;
                };
                let kill = s2.child_token();
                let (frozen, frozen_rx) = watch::channel(false);
                c2.lock().unwrap().push(Conn {
                    kill: kill.clone(),
                    frozen,
                });
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, kill.clone(), frozen_rx.clone()));
                tokio::spawn(pipe(ur, dw, kill, frozen_rx));
            }
        });
        Proxy {
            addr,
            conns,
            accepted,
            accepted_tx,
            refusing,
            stop,
        }
    }

    /// While set, new connections are closed at once (the backend is unreachable).
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("ws://{}/dtma/connect", self.addr)
    }

    /// Close every current connection (both sides see the TCP connection end).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.kill.cancel();
        }
    }

    /// Stop forwarding on every current connection without closing it. New connections work.
    pub fn blackhole(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.frozen.send_replace(true);
        }
    }

    /// Resume forwarding on frozen connections.
    pub fn restore(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.frozen.send_replace(false);
        }
    }

    /// Wait until at least `n` connections have been accepted.
    pub async fn wait_accepted(&self, n: u64) {
        let mut rx = self.accepted_tx.subscribe();
        rx.wait_for(|v| *v >= n).await.unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    kill: CancellationToken,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // While frozen, hold the sockets open and move nothing.
        tokio::select! {
            _ = kill.cancelled() => return,
            r = frozen.wait_for(|f| !*f) => if r.is_err() { return },
        }
        let n = tokio::select! {
            _ = kill.cancelled() => return,
            n = r.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        if *frozen.borrow() {
            // Frozen mid-read: the bytes are swallowed, as a black hole would.
            continue;
        }
        tokio::select! {
            _ = kill.cancelled() => return,
            r = w.write_all(&buf[..n]) => if r.is_err() { return },
        }
    }
}
