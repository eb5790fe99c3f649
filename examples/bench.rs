//! Benchmark: the `dtma` agent next to OpenSSH on loopback, in one run, printed as one table.
//!
//! Run it with `bash deploy/bench.sh` (builds `dtma` and this example in release mode first).
//! The control plane runs in this process; the agent is the real `target/release/dtma` binary,
//! started as a child process and connected on 127.0.0.1. OpenSSH runs as a throwaway `sshd` on
//! 127.0.0.1 with its own host key and authorized key in a temporary directory.
//!
//! Measured:
//! - exec round trip of `true`: `ControlPlane::request` until the `exit` event arrives, against
//!   `ssh -S ctl host true` through a multiplexed master and `sh -c true` spawned from here;
//! - 1 GiB of command output streamed to the backend over ws:// and wss://, against OpenSSH
//!   (`aes128-gcm@openssh.com`, output to /dev/null) and a plain pipe read here;
//! - the agent's RSS idle and with 1,000 concurrent streaming commands, against `sshd` and an
//!   idle Node HTTP server.
//!
//! Options (environment): `BENCH_BYTES` (default 1073741824), `BENCH_RTT_RUNS` (500),
//! `BENCH_SSH_RUNS` (100), `BENCH_STREAMS` (1000), `BENCH_SAMPLE_SECS` (5), `BENCH_REPEATS`
//! (3: transfers per streaming row, median reported), `BENCH_CREDIT`
//! (the streaming requests' `Exec.credit`, for diagnosis; default unset), `DTMA_BIN` (the
//! agent binary; default `dtma` next to this example's directory). `--write FILE` replaces the
//! generated section of FILE (between the `bench:results` markers) with this run's results.
//!
//! Everything started here (agent, sshd, ssh master, node, commands still running in the
//! agent) is stopped and the temporary directory removed at the end, on error and on Ctrl-C.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dtma_control_plane::{ControlPlane, Options, StreamRx};
use dtma_protocol::{AgentMessage, Cancel, Encoding, Exec, Exit, RequestBody};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

mod support;
use support::{lock, machine_ticks, stop_child};

/// The streaming command of the 1,000-streams test: one short line every 50 ms.
const TICKER: &str = r#"while :; do echo "$$ line"; sleep 0.05; done"#;
const RTT_WARMUP: usize = 50;
const SSH_WARMUP: usize = 10;
/// Upper bound for any single wait, so that every loop of the bench ends.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Settings, results
// ---------------------------------------------------------------------------------------------

struct Settings {
    bytes: u64,
    rtt_runs: usize,
    ssh_runs: usize,
    streams: usize,
    sample: Duration,
    /// Transfers per streaming measurement; the median is reported.
    repeats: usize,
    /// `Exec.credit` of the streaming requests (diagnosis only; default: the session's).
    credit: Option<u64>,
    write: Option<PathBuf>,
    dtma_bin: PathBuf,
}

impl Settings {
    fn load() -> Result<Settings> {
        let num = |var: &str, default: u64| support::env_num(var, default, 1, u64::MAX);
        let write = support::write_arg()?;
        let dtma_bin = support::dtma_bin()?;
        Ok(Settings {
            bytes: num("BENCH_BYTES", 1 << 30)?,
            rtt_runs: num("BENCH_RTT_RUNS", 500)? as usize,
            ssh_runs: num("BENCH_SSH_RUNS", 100)? as usize,
            streams: num("BENCH_STREAMS", 1000)? as usize,
            sample: Duration::from_secs(num("BENCH_SAMPLE_SECS", 5)?),
            repeats: num("BENCH_REPEATS", 3)? as usize,
            credit: match std::env::var("BENCH_CREDIT") {
                Ok(v) if !v.is_empty() => Some(num("BENCH_CREDIT", 0)?),
                _ => None,
            },
            write,
            dtma_bin,
        })
    }
}

/// A measurement, or why it is missing.
type M<T> = Result<T, String>;

fn missing<T>(why: impl Into<String>) -> M<T> {
    Err(why.into())
}

#[derive(Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    runs: usize,
}

impl Latency {
    fn of(mut v: Vec<Duration>) -> Latency {
        v.sort();
        let pick = |p: f64| {
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Latency {
            p50: pick(0.50),
            p99: pick(0.99),
            runs: v.len(),
        }
    }
}

#[derive(Clone, Copy)]
struct Throughput {
    bytes: u64,
    took: Duration,
    /// CPU seconds spent by the sending side (agent or sshd) and the receiving side (backend
    /// or ssh client) during the transfer, when known.
    cpu: Option<(f64, f64)>,
    /// Slowest and fastest run in MiB/s when this is the median of several.
    spread: Option<(f64, f64)>,
}

impl Throughput {
    /// The run with the median time, carrying the spread of all of them.
    fn median(mut runs: Vec<Throughput>) -> Throughput {
        runs.sort_by_key(|t| t.took);
        let mut mid = runs[runs.len() / 2];
        let rates: Vec<f64> = runs.iter().map(Throughput::mib_s).collect();
        mid.spread = Some((
            rates.iter().cloned().fold(f64::INFINITY, f64::min),
            rates.iter().cloned().fold(0.0, f64::max),
        ));
        mid
    }

    fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.took.as_secs_f64()
    }
}

/// RSS in kB (as /proc says: KiB).
#[derive(Clone, Copy)]
struct Rss {
    kib: u64,
}

impl Rss {
    fn mb(&self) -> f64 {
        (self.kib * 1024) as f64 / 1e6
    }
}

struct Results {
    rtt_ws: M<Latency>,
    /// The same round trip with `DTMA_SANDBOX=off`: what the sandbox costs.
    rtt_ws_off: M<Latency>,
    rtt_wss: M<Latency>,
    rtt_ssh: M<Latency>,
    rtt_sh: M<Latency>,
    tp_ws: M<Throughput>,
    tp_wss: M<Throughput>,
    tp_ssh: M<Throughput>,
    tp_pipe: M<Throughput>,
    rss_idle: M<Rss>,
    rss_streams: M<Rss>,
    rss_sshd: M<Rss>,
    rss_node: M<Rss>,
    /// Facts worth printing under the table (n/a reasons, side measurements).
    notes: Vec<String>,
}

impl Default for Results {
    fn default() -> Self {
        fn nr<T>() -> M<T> {
            missing("not run")
        }
        Results {
            rtt_ws: nr(),
            rtt_ws_off: nr(),
            rtt_wss: nr(),
            rtt_ssh: nr(),
            rtt_sh: nr(),
            tp_ws: nr(),
            tp_wss: nr(),
            tp_ssh: nr(),
            tp_pipe: nr(),
            rss_idle: nr(),
            rss_streams: nr(),
            rss_sshd: nr(),
            rss_node: nr(),
            notes: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cleanup of everything started
// ---------------------------------------------------------------------------------------------

/// Owns every process and directory the bench starts; [`Reaper::cleanup`] stops and removes
/// them (idempotent, also run on drop).
struct Reaper {
    dir: PathBuf,
    children: Mutex<Vec<(String, Child)>>,
    /// Process groups of commands the agent started that have not reported `exit` yet.
    groups: Arc<Mutex<HashSet<i32>>>,
    /// `/run/sshd` when this bench had to create it (sshd's privilege separation directory).
    made_dirs: Mutex<Vec<PathBuf>>,
}

impl Reaper {
    fn new() -> Result<Reaper> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("dtma-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Reaper {
            dir,
            children: Mutex::new(Vec::new()),
            groups: Arc::new(Mutex::new(HashSet::new())),
            made_dirs: Mutex::new(Vec::new()),
        })
    }

    fn adopt(&self, name: &str, child: Child) -> u32 {
        let pid = child.id();
        lock(&self.children).push((name.to_owned(), child));
        pid
    }

    fn alive(&self, pid: u32) -> bool {
        let mut kids = lock(&self.children);
        match kids.iter_mut().find(|(_, c)| c.id() == pid) {
            Some((_, c)) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM the child, wait up to `grace`, then SIGKILL; forget it.
    fn stop(&self, pid: u32, grace: Duration) {
        let child = {
            let mut kids = lock(&self.children);
            kids.iter()
                .position(|(_, c)| c.id() == pid)
                .map(|i| kids.remove(i))
        };
        if let Some((_, mut c)) = child {
            stop_child(&mut c, grace);
        }
    }

    fn cleanup(&self) {
        // Commands still running in the agent (interrupted before their cancel and exit).
        for g in lock(&self.groups).drain() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        let kids: Vec<_> = lock(&self.children).drain(..).collect();
        for (_, mut c) in kids.into_iter().rev() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        for d in lock(&self.made_dirs).drain(..) {
            let _ = std::fs::remove_dir(d);
        }
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Wait for `c` in a blocking `wait` (so the time is exact, not rounded up to a poll
/// interval); a watchdog thread kills it when `limit` passes first.
fn wait_exact(mut c: Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let pid = Pid::from_raw(c.id() as i32);
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        // Disconnected (the child was reaped) or told: nothing to do.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(limit) {
            let _ = kill(pid, Signal::SIGKILL);
            return true;
        }
        false
    });
    let status = c.wait();
    drop(done);
    let killed = dog.join().unwrap_or(false);
    ensure!(!killed, "the command did not finish within {limit:?}");
    Ok(status?)
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::load()?;
    let load = support::load_at_start();
    let reaper = Arc::new(Reaper::new()?);
    let mut results = Results::default();
    let outcome = support::until_interrupted(run(&settings, &reaper, &mut results)).await;
    let cleanup_reaper = reaper.clone();
    tokio::task::spawn_blocking(move || cleanup_reaper.cleanup()).await?;

    let report = render(&settings, &results, &load);
    println!("{}", report.table);
    for n in &report.notes {
        println!("- {n}");
    }
    if let Some(path) = &settings.write {
        write_markdown(path, &report)?;
        eprintln!("bench: wrote the results into {}", path.display());
    }
    outcome?;
    let dtma_rows = [
        results.rtt_ws.is_ok(),
        results.rtt_wss.is_ok(),
        results.tp_ws.is_ok(),
        results.tp_wss.is_ok(),
        results.rss_idle.is_ok(),
        results.rss_streams.is_ok(),
    ];
    ensure!(
        dtma_rows.iter().all(|ok| *ok),
        "some dtma measurements failed (see the notes)"
    );
    Ok(())
}

async fn run(settings: &Settings, reaper: &Arc<Reaper>, r: &mut Results) -> Result<()> {
    let token = format!("bench-{:016x}", fastrand::u64(..));
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let cp = ControlPlane::new(Options {
        tokens: vec![token.clone()],
        ..Options::default()
    });

    // ws:// and wss:// listeners of the same control plane.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = plain.local_addr()?;
    cp.serve_tls(plain, None, stop.clone());
    let (tls, ca_pem, suite) = tls_config()?;
    let ca_file = reaper.dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem)?;
    let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let secure_addr = secure.local_addr()?;
    cp.serve_tls(secure, Some(tls), stop.clone());

    // --- The agent over ws:// ---------------------------------------------------------------
    eprintln!("bench: agent over ws://{plain_addr}");
    let agent = Agent::start(
        settings,
        reaper,
        &cp,
        "bench-ws",
        &format!("ws://{plain_addr}/dtma/connect"),
        &token,
        &[],
    )
    .await;
    match agent {
        Err(e) => {
            let why = format!("the ws:// agent did not come up: {e:#}");
            r.rss_idle = missing(why.clone());
            r.rtt_ws = missing(why.clone());
            r.rss_streams = missing(why.clone());
            r.tp_ws = missing(why);
        }
        Ok(agent) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.rss_idle = rss(agent.pid).ok_or_else(|| "cannot read VmRSS".to_owned());
            eprintln!(
                "bench: exec round trips over ws:// ({} runs)",
                settings.rtt_runs
            );
            r.rtt_ws = exec_rtt(&cp, &agent.id, settings.rtt_runs)
                .await
                .map_err(|e| format!("ws:// round trips failed: {e:#}"));
            eprintln!("bench: {} concurrent streaming commands", settings.streams);
            r.rss_streams = many_streams(&cp, &agent, reaper, settings, &mut r.notes)
                .await
                .map_err(|e| format!("{} streams failed: {e:#}", settings.streams));
            eprintln!("bench: {} bytes over ws://", settings.bytes);
            r.tp_ws = repeat_stream(&cp, &agent, settings)
                .await
                .map_err(|e| format!("ws:// streaming failed: {e:#}"));
            agent.stop(reaper).await;
        }
    }

    // --- The agent over ws:// with the sandbox off: what the sandbox costs a round trip ------
    eprintln!("bench: agent over ws://{plain_addr}, DTMA_SANDBOX=off");
    let agent = Agent::start(
        settings,
        reaper,
        &cp,
        "bench-ws-off",
        &format!("ws://{plain_addr}/dtma/connect"),
        &token,
        &[("DTMA_SANDBOX", "off")],
    )
    .await;
    match agent {
        Err(e) => r.rtt_ws_off = missing(format!("the unsandboxed agent did not come up: {e:#}")),
        Ok(agent) => {
            eprintln!(
                "bench: exec round trips, sandbox off ({} runs)",
                settings.rtt_runs
            );
            r.rtt_ws_off = exec_rtt(&cp, &agent.id, settings.rtt_runs)
                .await
                .map_err(|e| format!("unsandboxed round trips failed: {e:#}"));
            agent.stop(reaper).await;
        }
    }

    // --- The agent over wss:// --------------------------------------------------------------
    eprintln!("bench: agent over wss://{secure_addr} ({suite})");
    let agent = Agent::start(
        settings,
        reaper,
        &cp,
        "bench-wss",
        &format!("wss://{secure_addr}/dtma/connect"),
        &token,
        &[("DTMA_CA_FILE", &ca_file.to_string_lossy())],
    )
    .await;
    match agent {
        Err(e) => {
            let why = format!("the wss:// agent did not come up: {e:#}");
            r.rtt_wss = missing(why.clone());
            r.tp_wss = missing(why);
        }
        Ok(agent) => {
            eprintln!(
                "bench: exec round trips over wss:// ({} runs)",
                settings.rtt_runs
            );
            r.rtt_wss = exec_rtt(&cp, &agent.id, settings.rtt_runs)
                .await
                .map_err(|e| format!("wss:// round trips failed: {e:#}"));
            eprintln!("bench: {} bytes over wss://", settings.bytes);
            r.tp_wss = repeat_stream(&cp, &agent, settings)
                .await
                .map_err(|e| format!("wss:// streaming failed: {e:#}"));
            agent.stop(reaper).await;
        }
    }
    r.notes.push(format!(
        "wss:// uses TLS 1.3 with {suite} only (the bench's control plane offers just that \
         suite, to match OpenSSH's aes128-gcm); certificate self-signed by rcgen, trusted by the \
         agent through DTMA_CA_FILE."
    ));

    // --- Baselines ---------------------------------------------------------------------------
    let (rtt_runs, bytes, repeats) = (settings.rtt_runs, settings.bytes, settings.repeats);
    eprintln!("bench: baselines (sh -c true, plain pipe, node)");
    let (sh, pipe) = tokio::task::spawn_blocking(move || {
        let pipe = (0..repeats)
            .map(|_| pipe_bytes(bytes))
            .collect::<Result<Vec<_>>>()
            .map(Throughput::median);
        (sh_rtt(rtt_runs), pipe)
    })
    .await?;
    r.rtt_sh = sh.map_err(|e| format!("sh -c true failed: {e:#}"));
    r.tp_pipe = pipe.map_err(|e| format!("plain pipe failed: {e:#}"));
    r.rss_node = node_rss(reaper).await;

    // --- OpenSSH ----------------------------------------------------------------------------
    eprintln!("bench: OpenSSH");
    let reaper2 = reaper.clone();
    let ssh_runs = settings.ssh_runs;
    let (rtt, tp, rss_sshd) =
        tokio::task::spawn_blocking(move || openssh(&reaper2, ssh_runs, bytes, repeats)).await?;
    r.rtt_ssh = rtt;
    r.tp_ssh = tp;
    r.rss_sshd = rss_sshd;
    r.notes.push(
        "OpenSSH: a throwaway sshd on 127.0.0.1 (own host key, authorized key and config in a \
         temp dir); round trips and streaming go through one multiplexed master connection \
         (`ssh -M -S ctl -c aes128-gcm@openssh.com`), so no handshake is timed. sshd runs \
         commands through the login shell (bash); `SetEnv SHLVL=1` stops Debian's bash from \
         sourcing ~/.bashrc for them, as the agent's `/bin/sh -c` reads no rc file either."
            .into(),
    );
    let mut cpu = Vec::new();
    for (what, m, sender, receiver) in [
        ("dtma ws://", &r.tp_ws, "agent", "backend"),
        ("dtma wss://", &r.tp_wss, "agent", "backend"),
        ("OpenSSH", &r.tp_ssh, "sshd", "ssh client"),
    ] {
        if let Ok(Throughput {
            cpu: Some((a, b)),
            bytes,
            ..
        }) = m
        {
            let per_gib = (1u64 << 30) as f64 / *bytes as f64;
            cpu.push(format!(
                "{what}: {sender} {:.2} s + {receiver} {:.2} s",
                a * per_gib,
                b * per_gib
            ));
        }
    }
    if !cpu.is_empty() {
        r.notes.push(format!(
            "CPU time per GiB streamed (user + system; the generator's own processes not \
             counted): {}.",
            cpu.join("; ")
        ));
    }
    if let Some(c) = settings.credit {
        r.notes.push(format!(
            "BENCH_CREDIT: the streaming requests asked for a credit window of {c} bytes \
             (`Exec.credit`) instead of the session's default."
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------------------------

struct Agent {
    id: String,
    pid: u32,
}

impl Agent {
    async fn start(
        settings: &Settings,
        reaper: &Reaper,
        cp: &ControlPlane,
        id: &str,
        url: &str,
        token: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let log_path = reaper.dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(&settings.dtma_bin);
        // Only the settings below: nothing inherited may point the agent elsewhere.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("DTMA_")
                || k.starts_with("AGENTOPIA_")
                || k.starts_with("BACKEND_TO_DTMA_")
                || k == "PORT"
                || k == "CREDENTIALS_DIRECTORY"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("DTMA_BEARER_TOKEN", token)
            .env("DTMA_WS_URL", url)
            .env("DTMA_AGENT_ID", id)
            .env("DTMA_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Each stream of the many-streams test also gets a cancel request (a stream too).
        let needed = settings.streams * 2 + 64;
        if needed > 2048 {
            cmd.env("DTMA_MAX_STREAMS", needed.to_string());
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", settings.dtma_bin.display()))?;
        let pid = reaper.adopt(id, child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cp.session(id).is_some() {
                return Ok(Agent {
                    id: id.to_owned(),
                    pid,
                });
            }
            if !reaper.alive(pid) || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                reaper.stop(pid, Duration::from_secs(2));
                bail!(
                    "agent `{id}` did not connect within 20 s; its log ends with: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self, reaper: &Arc<Reaper>) {
        let reaper = reaper.clone();
        let _ = tokio::task::spawn_blocking(move || reaper.stop(self.pid, Duration::from_secs(15)))
            .await;
    }
}

/// Read events of one request until its terminal event; returns output bytes and the exit.
async fn until_exit(rx: &mut StreamRx) -> Result<(u64, Exit)> {
    let mut bytes = 0u64;
    loop {
        match rx.recv().await {
            Some(AgentMessage::Output(o)) => bytes += output_len(&o),
            Some(AgentMessage::Exit(e)) => return Ok((bytes, e)),
            Some(AgentMessage::Error(e)) => bail!("error event: {:?}: {}", e.code, e.message),
            Some(AgentMessage::Result(r)) => bail!("unexpected result: {}", r.data),
            Some(_) => {}
            None => bail!("the stream ended without an exit event"),
        }
    }
}

/// Output bytes of an event without copying them.
fn output_len(o: &dtma_protocol::Output) -> u64 {
    match o.encoding {
        Encoding::Utf8 => o.data.len() as u64,
        Encoding::Base64 => dtma_control_plane::output_bytes(o).len() as u64,
    }
}

async fn exec_rtt(cp: &ControlPlane, agent: &str, runs: usize) -> Result<Latency> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..RTT_WARMUP + runs {
        let start = Instant::now();
        let mut rx = cp.request(
            agent,
            RequestBody::Exec(Exec {
                command: "true".into(),
                ..Exec::default()
            }),
        )?;
        let (_, exit) = tokio::time::timeout(Duration::from_secs(10), until_exit(&mut rx))
            .await
            .context("no exit within 10 s")??;
        let took = start.elapsed();
        ensure!(exit.exit_code == Some(0), "`true` exited with {exit:?}");
        if i >= RTT_WARMUP {
            times.push(took);
        }
    }
    Ok(Latency::of(times))
}

fn generator(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' a")
}

async fn repeat_stream(cp: &ControlPlane, agent: &Agent, s: &Settings) -> Result<Throughput> {
    let mut runs = Vec::new();
    for _ in 0..s.repeats {
        runs.push(stream_bytes(cp, agent, s.bytes, s.credit).await?);
    }
    Ok(Throughput::median(runs))
}

async fn stream_bytes(
    cp: &ControlPlane,
    agent: &Agent,
    bytes: u64,
    credit: Option<u64>,
) -> Result<Throughput> {
    let me = std::process::id();
    let cpu_before = (cpu_secs(&[agent.pid]), cpu_secs(&[me]));
    let start = Instant::now();
    let mut rx = cp.request(
        &agent.id,
        RequestBody::Exec(Exec {
            command: generator(bytes),
            timeout_ms: Some(STEP_TIMEOUT.as_millis() as u64),
            max_output_bytes: Some(bytes + 1),
            credit,
            ..Exec::default()
        }),
    )?;
    let (got, exit) = tokio::time::timeout(STEP_TIMEOUT + Duration::from_secs(10), async {
        until_exit(&mut rx).await
    })
    .await
    .context("no exit in time")??;
    let took = start.elapsed();
    ensure!(
        exit.exit_code == Some(0) && !exit.truncated,
        "the command ended badly: {exit:?}"
    );
    ensure!(got == bytes, "received {got} bytes, expected {bytes}");
    let cpu = (
        cpu_secs(&[agent.pid]) - cpu_before.0,
        cpu_secs(&[me]) - cpu_before.1,
    );
    Ok(Throughput {
        bytes: got,
        took,
        cpu: Some(cpu),
        spread: None,
    })
}

/// Start `settings.streams` streaming commands, sample the agent's RSS while they run, cancel
/// them. Returns the peak RSS seen while all of them ran.
async fn many_streams(
    cp: &ControlPlane,
    agent: &Agent,
    reaper: &Reaper,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<Rss> {
    let n = settings.streams;
    let started = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::with_capacity(n);
    let mut overall_peak = 0u64;
    let begin = Instant::now();
    for _ in 0..n {
        let mut rx = cp.request(
            &agent.id,
            RequestBody::Exec(Exec {
                command: TICKER.into(),
                timeout_ms: Some(STEP_TIMEOUT.as_millis() as u64),
                ..Exec::default()
            }),
        )?;
        ids.push(rx.id().to_owned());
        let (started, lines, groups) = (started.clone(), lines.clone(), reaper.groups.clone());
        tasks.spawn(async move {
            let mut pid = None;
            loop {
                match rx.recv().await {
                    Some(AgentMessage::Started(s)) => {
                        pid = Some(s.pid as i32);
                        lock(&groups).insert(s.pid as i32);
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(AgentMessage::Output(o)) => {
                        lines.fetch_add(o.data.matches('\n').count() as u64, Ordering::Relaxed);
                    }
                    Some(AgentMessage::Exit(e)) => {
                        if let Some(p) = pid {
                            lock(&groups).remove(&p);
                        }
                        return e.cancelled;
                    }
                    Some(AgentMessage::Error(_)) | None => return false,
                    Some(_) => {}
                }
            }
        });
    }
    // All started?
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::Relaxed) < n {
        if let Some(r) = rss(agent.pid) {
            overall_peak = overall_peak.max(r.kib);
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} commands started within 60 s",
            started.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp = begin.elapsed();
    // Steady state: sample the peak while the backend reads.
    let lines_before = lines.load(Ordering::Relaxed);
    let cpu_before = cpu_secs(&[agent.pid]);
    let machine_before = machine_ticks();
    let window = Instant::now();
    let mut peak = 0u64;
    while window.elapsed() < settings.sample {
        let r = rss(agent.pid).context("cannot read the agent's VmRSS")?;
        peak = peak.max(r.kib);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate =
        (lines.load(Ordering::Relaxed) - lines_before) as f64 / window.elapsed().as_secs_f64();
    let agent_cpu = (cpu_secs(&[agent.pid]) - cpu_before) / window.elapsed().as_secs_f64();
    let machine_busy = match (machine_before, machine_ticks()) {
        (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => {
            (busy1 - busy0) as f64 / (all1 - all0) as f64
        }
        _ => f64::NAN,
    };
    overall_peak = overall_peak.max(peak);
    // Cancel them all and wait for their exits.
    let cancel_start = Instant::now();
    let mut cancels = Vec::with_capacity(n);
    for id in ids {
        cancels.push(cp.request(&agent.id, RequestBody::Cancel(Cancel { target: id }))?);
    }
    let mut cancelled = 0;
    let mut ended = 0;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = tasks.join_next().await {
            ended += 1;
            if matches!(r, Ok(true)) {
                cancelled += 1;
            }
            if let Some(r) = rss(agent.pid) {
                overall_peak = overall_peak.max(r.kib);
            }
        }
    })
    .await;
    drop(cancels);
    let hwm = vm_field(agent.pid, "VmHWM:");
    ensure!(
        waited.is_ok(),
        "only {ended} of {n} commands ended within 60 s of the cancels"
    );
    let expected = n as f64 * 20.0;
    let lag = if rate < expected * 0.9 {
        format!(
            "; the commands themselves lag: {n} shells each starting `sleep` 20 times a second \
             need more CPU than the machine has (it was {:.0}% busy)",
            machine_busy * 100.0
        )
    } else {
        String::new()
    };
    notes.push(format!(
        "{n} streams: all started {:.1} s after the first request. In the {:.0} s window the \
         backend received {rate:.0} lines/s ({expected:.0} if every command printed every 50 \
         ms{lag}); the agent used {:.0}% of one core. {cancelled} of {n} ended by `cancel` \
         within {:.1} s. Agent RSS peak including ramp-up and cancel: {:.1} MB (VmHWM {}).",
        ramp.as_secs_f64(),
        settings.sample.as_secs_f64(),
        agent_cpu * 100.0,
        cancel_start.elapsed().as_secs_f64(),
        Rss { kib: overall_peak }.mb(),
        hwm.map_or("n/a".into(), |k| format!("{:.1} MB", Rss { kib: k }.mb())),
    ));
    Ok(Rss { kib: peak })
}

// ---------------------------------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------------------------------

fn sh_rtt(runs: usize) -> Result<Latency> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..RTT_WARMUP + runs {
        let start = Instant::now();
        let status = Command::new("/bin/sh")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let took = start.elapsed();
        ensure!(status.success(), "sh -c true: {status}");
        if i >= RTT_WARMUP {
            times.push(took);
        }
    }
    Ok(Latency::of(times))
}

fn pipe_bytes(bytes: u64) -> Result<Throughput> {
    let start = Instant::now();
    let mut child = Command::new("/bin/sh")
        .args(["-c", &generator(bytes)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let status = child.wait()?;
    let took = start.elapsed();
    ensure!(status.success(), "the generator failed: {status}");
    ensure!(got == bytes, "read {got} bytes, expected {bytes}");
    Ok(Throughput {
        bytes: got,
        took,
        cpu: None,
        spread: None,
    })
}

async fn node_rss(reaper: &Arc<Reaper>) -> M<Rss> {
    let child = Command::new("node")
        .args([
            "-e",
            "require('http').createServer((q,s)=>s.end()).listen(0, '127.0.0.1')",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return missing(format!("node is not available: {e}")),
    };
    let pid = reaper.adopt("node", child);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = if reaper.alive(pid) {
        rss(pid).ok_or_else(|| "cannot read node's VmRSS".to_owned())
    } else {
        missing("node exited early")
    };
    let reaper = reaper.clone();
    let _ = tokio::task::spawn_blocking(move || reaper.stop(pid, Duration::from_secs(3))).await;
    r
}

// ---------------------------------------------------------------------------------------------
// OpenSSH
// ---------------------------------------------------------------------------------------------

/// Runs sshd on 127.0.0.1 and measures through a multiplexed master. Blocking.
fn openssh(
    reaper: &Reaper,
    runs: usize,
    bytes: u64,
    repeats: usize,
) -> (M<Latency>, M<Throughput>, M<Rss>) {
    match Ssh::start(reaper) {
        Err(e) => {
            let why = format!("sshd could not be used: {e:#}");
            (missing(why.clone()), missing(why.clone()), missing(why))
        }
        Ok(ssh) => {
            let rss = sshd_rss(ssh.sshd_pid).ok_or_else(|| "cannot read sshd's VmRSS".to_owned());
            let rtt = ssh
                .rtt(runs)
                .map_err(|e| format!("ssh round trips failed: {e:#}"));
            let tp = (0..repeats)
                .map(|_| ssh.stream(bytes))
                .collect::<Result<Vec<_>>>()
                .map(Throughput::median)
                .map_err(|e| format!("ssh streaming failed: {e:#}"));
            ssh.stop(reaper);
            (rtt, tp, rss)
        }
    }
}

struct Ssh {
    dir: PathBuf,
    port: u16,
    user: String,
    sshd_pid: u32,
    master_pid: u32,
}

impl Ssh {
    fn start(reaper: &Reaper) -> Result<Ssh> {
        let sshd = Path::new("/usr/sbin/sshd");
        ensure!(
            sshd.is_file(),
            "/usr/sbin/sshd is missing (deploy/bench.sh installs openssh-server)"
        );
        let dir = reaper.dir.join("ssh");
        std::fs::create_dir(&dir)?;
        for key in ["host_ed25519", "id_ed25519"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "dtma-bench", "-f"])
                .arg(dir.join(key))
                .stdin(Stdio::null())
                .status()
                .context("ssh-keygen")?;
            ensure!(st.success(), "ssh-keygen failed: {st}");
        }
        std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))?;
        // sshd refuses to start without its privilege separation directory.
        let privsep = Path::new("/run/sshd");
        if !privsep.exists() && nix::unistd::getuid().is_root() {
            std::fs::create_dir_all(privsep)?;
            lock(&reaper.made_dirs).push(privsep.to_owned());
        }
        let port = free_port()?;
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .context("cannot tell the current user's name")?;
        let d = dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nMaxSessions 100\nLogLevel ERROR\n\
             # Debian's bash sources ~/.bashrc for commands run by sshd unless SHLVL says it is\n\
             # nested; the agent's /bin/sh -c reads no rc file, so neither should this.\n\
             SetEnv SHLVL=1\n"
        );
        let cfg = dir.join("sshd_config");
        std::fs::write(&cfg, config)?;
        let check = Command::new(sshd)
            .arg("-t")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            check.status.success(),
            "sshd -t rejected the config: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        let sshd_pid = reaper.adopt("sshd", child);
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !reaper.alive(sshd_pid) || up.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                bail!("sshd did not start listening: {}", log.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut ssh = Ssh {
            dir,
            port,
            user,
            sshd_pid,
            master_pid: 0,
        };
        let master = ssh
            .client()
            .args(["-M", "-N", "-o", "ControlPersist=no"])
            .args(["-c", "aes128-gcm@openssh.com"])
            .arg(ssh.host())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(ssh.dir.join("master.log"))?)
            .spawn()
            .context("starting the ssh master")?;
        ssh.master_pid = reaper.adopt("ssh master", master);
        let up = Instant::now();
        loop {
            let st = ssh
                .client()
                .args(["-O", "check"])
                .arg(ssh.host())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if st.success() {
                break;
            }
            if !reaper.alive(ssh.master_pid) || up.elapsed() > Duration::from_secs(15) {
                let log = std::fs::read_to_string(ssh.dir.join("master.log")).unwrap_or_default();
                bail!("the ssh master connection failed: {}", log.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ssh)
    }

    fn host(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    /// `ssh` with this bench's options (no user config, throwaway known_hosts, control socket).
    fn client(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg("/dev/null")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-i")
            .arg(self.dir.join("id_ed25519"))
            .arg("-S")
            .arg(self.dir.join("ctl"))
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ));
        c
    }

    fn rtt(&self, runs: usize) -> Result<Latency> {
        let mut times = Vec::with_capacity(runs);
        for i in 0..SSH_WARMUP + runs {
            let start = Instant::now();
            let child = self
                .client()
                .arg("-n")
                .arg(self.host())
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let st = wait_exact(child, Duration::from_secs(10))?;
            let took = start.elapsed();
            ensure!(st.success(), "ssh host true: {st}");
            if i >= SSH_WARMUP {
                times.push(took);
            }
        }
        Ok(Latency::of(times))
    }

    fn stream(&self, bytes: u64) -> Result<Throughput> {
        // The sshd side: the listener and its descendants alive now (the connection's session
        // processes); the command's own processes are not counted, as for the agent.
        let server = family(self.sshd_pid);
        let before = (cpu_secs(&server), cpu_secs(&[self.master_pid]));
        let start = Instant::now();
        let child = self
            .client()
            .arg("-n")
            .arg(self.host())
            .arg(generator(bytes))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let st = wait_exact(child, STEP_TIMEOUT)?;
        let took = start.elapsed();
        ensure!(st.success(), "ssh streaming: {st}");
        let cpu = (
            cpu_secs(&server) - before.0,
            cpu_secs(&[self.master_pid]) - before.1,
        );
        Ok(Throughput {
            bytes,
            took,
            cpu: Some(cpu),
            spread: None,
        })
    }

    fn stop(self, reaper: &Reaper) {
        let _ = self
            .client()
            .args(["-O", "exit"])
            .arg(self.host())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        reaper.stop(self.master_pid, Duration::from_secs(3));
        reaper.stop(self.sshd_pid, Duration::from_secs(3));
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// RSS of sshd: the listener plus its descendants (the master connection's session processes).
fn sshd_rss(pid: u32) -> Option<Rss> {
    let kib = family(pid)
        .iter()
        .filter_map(|p| rss(*p))
        .map(|r| r.kib)
        .sum();
    Some(Rss { kib })
}

/// `pid` and all its descendants.
fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

/// User + system CPU seconds of these processes (all threads; not their children).
fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 (utime, stime); `rest` starts at field 3. USER_HZ is 100.
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// /proc, TLS, machine facts
// ---------------------------------------------------------------------------------------------

fn vm_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn rss(pid: u32) -> Option<Rss> {
    vm_field(pid, "VmRSS:").map(|kib| Rss { kib })
}

/// A TLS 1.3 server config with a fresh self-signed certificate; returns it, the certificate
/// PEM for the agent's DTMA_CA_FILE, and the one cipher suite offered.
fn tls_config() -> Result<(Arc<rustls::ServerConfig>, String, &'static str)> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    Ok((Arc::new(config), ck.cert.pem(), "TLS13_AES_128_GCM_SHA256"))
}

fn machine_facts() -> Vec<(String, String)> {
    let mut facts = support::machine_facts();
    facts.push(("OpenSSH".into(), support::version("ssh", &["-V"])));
    facts.push(("node".into(), support::version("node", &["--version"])));
    facts
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Report {
    table: String,
    notes: Vec<String>,
    facts: Vec<(String, String)>,
    when: String,
}

fn render(s: &Settings, r: &Results, load: &str) -> Report {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let p50 = |m: &M<Latency>| cell(m, |l| ms(l.p50));
    let p99 = |m: &M<Latency>| cell(m, |l| ms(l.p99));
    let tp = |m: &M<Throughput>| {
        cell(m, |t| {
            format!("{:.0} MiB/s ({:.2} s)", t.mib_s(), t.took.as_secs_f64())
        })
    };
    let mb = |m: &M<Rss>| cell(m, |x| format!("{:.1} MB", x.mb()));
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "unknown",
    };
    let size = if s.bytes == 1 << 30 {
        "1 GiB".to_owned()
    } else {
        format!("{} bytes", s.bytes)
    };
    let runs = |m: &M<Latency>| m.as_ref().map_or(0, |l| l.runs);

    let mut rows: Vec<[String; 5]> = Vec::new();
    rows.push([
        format!(
            "exec `true` round trip p50 (ws://, sandbox on: admin profile; ssh -S mux; sh -c), {} / {} / {} runs",
            runs(&r.rtt_ws),
            runs(&r.rtt_ssh),
            runs(&r.rtt_sh)
        ),
        p50(&r.rtt_ws),
        p50(&r.rtt_ssh),
        format!("{} (sh -c true)", p50(&r.rtt_sh)),
        format!(
            "< 3 ms: {}",
            verdict(
                r.rtt_ws
                    .as_ref()
                    .ok()
                    .map(|l| l.p50 < Duration::from_millis(3))
            )
        ),
    ]);
    rows.push([
        format!(
            "the same over ws:// with DTMA_SANDBOX=off p50 / p99, {} runs (the sandbox's cost)",
            runs(&r.rtt_ws_off)
        ),
        format!("{} / {}", p50(&r.rtt_ws_off), p99(&r.rtt_ws_off)),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    rows.push([
        "exec `true` round trip p99 (same runs)".into(),
        p99(&r.rtt_ws),
        p99(&r.rtt_ssh),
        format!("{} (sh -c true)", p99(&r.rtt_sh)),
        "-".into(),
    ]);
    rows.push([
        format!(
            "exec `true` round trip over wss:// p50 / p99, {} runs",
            runs(&r.rtt_wss)
        ),
        format!("{} / {}", p50(&r.rtt_wss), p99(&r.rtt_wss)),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    rows.push([
        format!("stream {size} of output over ws://"),
        tp(&r.tp_ws),
        "-".into(),
        format!("{} (plain pipe)", tp(&r.tp_pipe)),
        "-".into(),
    ]);
    rows.push([
        format!("stream {size} of output over wss:// (ssh: aes128-gcm)"),
        tp(&r.tp_wss),
        tp(&r.tp_ssh),
        format!("{} (plain pipe)", tp(&r.tp_pipe)),
        format!(
            "> OpenSSH: {}",
            verdict(match (&r.tp_wss, &r.tp_ssh) {
                (Ok(a), Ok(b)) => Some(a.mib_s() > b.mib_s()),
                _ => None,
            })
        ),
    ]);
    rows.push([
        "RSS idle, connected (VmRSS)".into(),
        mb(&r.rss_idle),
        format!("{} (sshd + session)", mb(&r.rss_sshd)),
        format!("{} (node http)", mb(&r.rss_node)),
        format!(
            "< 15 MB: {}",
            verdict(r.rss_idle.as_ref().ok().map(|x| x.mb() < 15.0))
        ),
    ]);
    rows.push([
        format!("RSS peak, {} concurrent streaming commands", s.streams),
        mb(&r.rss_streams),
        "-".into(),
        "-".into(),
        format!(
            "< 100 MB: {}",
            verdict(r.rss_streams.as_ref().ok().map(|x| x.mb() < 100.0))
        ),
    ]);

    let header = ["measurement", "dtma", "OpenSSH", "baseline", "target"];
    let mut table = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    table.push_str(&line(&header.map(String::from)));
    table.push_str(&line(&header.map(|_| "---".to_owned())));
    for row in &rows {
        table.push_str(&line(row));
    }

    let mut notes = Vec::new();
    for (what, m) in [
        ("dtma ws:// round trip", r.rtt_ws.as_ref().err()),
        (
            "dtma ws:// round trip, sandbox off",
            r.rtt_ws_off.as_ref().err(),
        ),
        ("dtma wss:// round trip", r.rtt_wss.as_ref().err()),
        ("OpenSSH round trip", r.rtt_ssh.as_ref().err()),
        ("sh -c true", r.rtt_sh.as_ref().err()),
        ("dtma ws:// streaming", r.tp_ws.as_ref().err()),
        ("dtma wss:// streaming", r.tp_wss.as_ref().err()),
        ("OpenSSH streaming", r.tp_ssh.as_ref().err()),
        ("plain pipe", r.tp_pipe.as_ref().err()),
        ("dtma idle RSS", r.rss_idle.as_ref().err()),
        ("dtma streams RSS", r.rss_streams.as_ref().err()),
        ("sshd RSS", r.rss_sshd.as_ref().err()),
        ("node RSS", r.rss_node.as_ref().err()),
    ] {
        if let Some(why) = m {
            notes.push(format!("n/a {what}: {why}"));
        }
    }
    let spreads: Vec<String> = [
        ("dtma ws://", &r.tp_ws),
        ("dtma wss://", &r.tp_wss),
        ("OpenSSH", &r.tp_ssh),
        ("pipe", &r.tp_pipe),
    ]
    .iter()
    .filter_map(|(what, m)| {
        let (lo, hi) = m.as_ref().ok()?.spread?;
        Some(format!("{what} {lo:.0}-{hi:.0}"))
    })
    .collect();
    if !spreads.is_empty() {
        notes.push(format!(
            "Streaming rows: the median of {} transfers of {size} each, timed from the request to \
             the `exit` event (ssh: from spawning `ssh` to its exit); range of all runs in MiB/s: \
             {}.",
            s.repeats,
            spreads.join(", ")
        ));
    }
    notes.extend(r.notes.iter().cloned());
    Report {
        table: table.trim_end().to_owned(),
        notes,
        facts: {
            let mut f = machine_facts();
            f.push((
                "load average (1, 5, 15 min) at start".into(),
                load.to_owned(),
            ));
            f
        },
        when: dtma::now_rfc3339(),
    }
}

/// A table cell: the formatted value, or `n/a` (the reason goes into the notes).
fn cell<T>(m: &M<T>, f: impl Fn(&T) -> String) -> String {
    m.as_ref().map_or_else(|_| "n/a".to_owned(), f)
}

const BEGIN: &str = "<!-- bench:results:begin (generated by examples/bench.rs; do not edit) -->";
const END: &str = "<!-- bench:results:end -->";

fn write_markdown(path: &Path, report: &Report) -> Result<()> {
    let section = support::results_section(
        BEGIN,
        END,
        &format!("Run of {} (`bash deploy/bench.sh`):", report.when),
        &report.table,
        &report.notes,
        &report.facts,
    );
    support::replace_section(path, BEGIN, END, "## Results", &section)
}
