//! Benchmark: `dtma-gateway` holding 10,000 simulated agents, side by side with `nats-server`
//! holding as many idle client connections, in one run, printed as one table.
//!
//! Run it with `bash deploy/bench.sh` (its gateway section; `BENCH_ONLY_GATEWAY=1` for only
//! this one), or build `cargo build --release -p dtma-gateway --bin dtma-gateway --example
//! gateway_bench` and run `target/release/examples/gateway_bench [--write BENCHMARKS.md]`.
//!
//! The gateway is the real release binary, started here as a child process on 127.0.0.1; the
//! agents are [`sim`]: light WebSocket clients in this process speaking the real protocol.
//! The peer is Debian's `nats-server`, holding plain TCP NATS clients ([`nats`]).
//!
//! Each measurement is one function over a running server process, so a mode is one more
//! function and one more row:
//! - [`memory`]: VmRSS of the server after N connections settled, minus before, divided by N;
//! - [`heartbeats`]: the server's CPU time (utime + stime) over a window while every
//!   connection beats at a scaled interval, per heartbeat;
//! - [`fanout`]: `exec true` to M agents at once through the operator API, until every
//!   answer is back;
//! - [`cluster::round_trips`]: one `exec true` at a time through a lone node, through a
//!   cluster node holding the agent and through another node (NATS between them);
//! - [`cluster::failover`]: SIGKILL a node holding K agents that redial to the other two, and
//!   time each agent's first request through a survivor, sent right after the kill.
//!
//! Correctness, so that a broken run cannot print a good table: every agent must get
//! `welcome`, the gateway's directory must list all of them connected with a heartbeat, every
//! fan-out answer must be an `exit` with code 0, every simulated `exec` must have been
//! answered, and no agent session may drop (in the failover, every agent must lose its session
//! once and be back once). A failed check turns its row into `n/a` (reason in
//! the notes) and the exit status into 1.
//!
//! Options (environment): `BENCH_GW_AGENTS` (10000), `BENCH_GW_FANOUT` (1000),
//! `BENCH_GW_FANOUT_ROUNDS` (3), `BENCH_GW_BEAT_MS` (2000: the scaled heartbeat interval),
//! `BENCH_GW_WINDOW_SECS` (10: the CPU window), `BENCH_GW_SOURCES` (4: source addresses
//! 127.0.0.1..), `BENCH_GW_PARALLEL` (256: handshakes in flight), `BENCH_GW_CROSS_AGENTS` (10),
//! `BENCH_GW_CROSS_REQUESTS` (2000 per path), `BENCH_GW_FAILOVER_AGENTS` (1000),
//! `BENCH_GW_CLUSTER_ONLY` (1: skip the one-node and nats-server rows), `DTMA_GATEWAY_BIN` (default:
//! `dtma-gateway` beside this example's directory), `NATS_SERVER` (default `nats-server`).
//! `--write FILE` replaces the generated gateway section of FILE.
//!
//! Everything started here (gateway, nats-server, connections) is stopped and the temporary
//! directory removed at the end, on error and on Ctrl-C.
#![forbid(unsafe_code)]

mod cluster;
mod nats;
mod sim;
// Stopping children, machine facts, the load at the start, replacing a generated section:
// shared with the agent's benchmarks (examples/bench*.rs at the workspace root).
#[allow(dead_code)]
#[path = "../../../examples/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sim::{AgentSpec, Beat, Counters};
use tokio::task::JoinSet;

use support::{busy_between, lock, machine_ticks, stop_child};

/// The real agent's heartbeat interval (`status` every 30 s).
const REAL_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound for any single wait, so that every loop of the bench ends.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time before a memory reading.
const SETTLE: Duration = Duration::from_secs(2);
const TARGET_BYTES_PER_AGENT: f64 = 20_000.0;

// ---------------------------------------------------------------------------------------------
// Settings, results
// ---------------------------------------------------------------------------------------------

struct Settings {
    agents: usize,
    fanout: usize,
    rounds: usize,
    beat: Duration,
    window: Duration,
    sources: Vec<IpAddr>,
    parallel: usize,
    cross_agents: usize,
    cross_requests: usize,
    failover_agents: usize,
    cluster_only: bool,
    gateway_bin: PathBuf,
    nats_bin: String,
    write: Option<PathBuf>,
}

impl Settings {
    fn load() -> Result<Settings> {
        let num = |var: &str, default: u64, max: u64| support::env_num(var, default, 1, max);
        let agents = num("BENCH_GW_AGENTS", 10_000, 60_000)? as usize;
        let fanout = num("BENCH_GW_FANOUT", 1000, 10_000)? as usize;
        ensure!(
            fanout <= agents,
            "BENCH_GW_FANOUT ({fanout}) must not exceed BENCH_GW_AGENTS ({agents})"
        );
        let cross_agents = num("BENCH_GW_CROSS_AGENTS", 10, 1000)? as usize;
        let failover_agents = num("BENCH_GW_FAILOVER_AGENTS", 1000, 20_000)? as usize;
        ensure!(
            cross_agents <= agents && failover_agents <= agents,
            "BENCH_GW_CROSS_AGENTS ({cross_agents}) and BENCH_GW_FAILOVER_AGENTS \
             ({failover_agents}) must not exceed BENCH_GW_AGENTS ({agents})"
        );
        let sources = (1..=num("BENCH_GW_SOURCES", 4, 250)? as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        let gateway_bin = match std::env::var_os("DTMA_GATEWAY_BIN") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join("dtma-gateway"))
                .context("cannot locate dtma-gateway; set DTMA_GATEWAY_BIN")?,
        };
        ensure!(
            gateway_bin.is_file(),
            "`{}` not found: run `cargo build --release -p dtma-gateway --bin dtma-gateway` \
             (or set DTMA_GATEWAY_BIN)",
            gateway_bin.display()
        );
        Ok(Settings {
            agents,
            fanout,
            rounds: num("BENCH_GW_FANOUT_ROUNDS", 3, 100)? as usize,
            beat: Duration::from_millis(num("BENCH_GW_BEAT_MS", 2000, 60_000)?),
            window: Duration::from_secs(num("BENCH_GW_WINDOW_SECS", 10, 600)?),
            sources,
            parallel: num("BENCH_GW_PARALLEL", 256, 10_000)? as usize,
            cross_agents,
            cross_requests: num("BENCH_GW_CROSS_REQUESTS", 2000, 100_000)? as usize,
            failover_agents,
            cluster_only: std::env::var("BENCH_GW_CLUSTER_ONLY").is_ok_and(|v| v == "1"),
            gateway_bin,
            nats_bin: std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
            write: support::write_arg()?,
        })
    }
}

/// A measurement, or why it is missing.
type M<T> = Result<T, String>;

const NOT_RUN: &str = "not run (an earlier step failed)";

fn missing<T>() -> M<T> {
    Err(NOT_RUN.into())
}

/// Resident memory of a server before and after N connections.
#[derive(Clone, Copy)]
struct Mem {
    before: u64,
    after: u64,
    n: usize,
}

impl Mem {
    fn per_conn(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.n as f64
    }
}

/// A server's CPU time while its connections beat, and while they idled.
#[derive(Clone)]
struct Cpu {
    cpu_s: f64,
    beats: u64,
    /// WebSocket pings sent in the window (agents only).
    pings: u64,
    window_s: f64,
    idle_cpu_s: f64,
    /// How busy the whole machine was during the beating window ("NN%").
    machine_busy: String,
}

impl Cpu {
    fn us_per_beat(&self) -> f64 {
        self.cpu_s * 1e6 / self.beats.max(1) as f64
    }

    /// Heartbeats sent in the window as a share of `n` connections beating every `beat`: below
    /// 100% the simulator (which shares the machine) fell behind.
    fn achieved_pct(&self, n: usize, beat: Duration) -> f64 {
        self.beats as f64 * 100.0 / (n as f64 * self.window_s / beat.as_secs_f64())
    }

    /// Share of one core for `n` connections beating every [`REAL_INTERVAL`].
    fn core_pct_at_real(&self, n: usize) -> f64 {
        n as f64 / REAL_INTERVAL.as_secs_f64() * self.us_per_beat() / 1e6 * 100.0
    }
}

#[derive(Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
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
            max: v.last().copied().unwrap_or_default(),
            runs: v.len(),
        }
    }
}

struct Fanout {
    per_request: Latency,
    /// Time until every answer of a round was back, per round.
    totals: Vec<Duration>,
}

impl Fanout {
    fn median_total(&self) -> Duration {
        let mut t = self.totals.clone();
        t.sort();
        t.get(t.len() / 2).copied().unwrap_or_default()
    }
}

struct Results {
    gw_mem: M<Mem>,
    gw_cpu: M<Cpu>,
    fanout: M<Fanout>,
    nats_mem: M<Mem>,
    nats_cpu: M<Cpu>,
    cross: M<cluster::Cross>,
    failover: M<cluster::Failover>,
    notes: Vec<String>,
}

impl Default for Results {
    fn default() -> Self {
        Results {
            gw_mem: missing(),
            gw_cpu: missing(),
            fanout: missing(),
            nats_mem: missing(),
            nats_cpu: missing(),
            cross: missing(),
            failover: missing(),
            notes: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes started here
// ---------------------------------------------------------------------------------------------

/// Owns the temporary directory and every process the bench starts; [`Procs::cleanup`] stops
/// and removes them (idempotent, also run on drop).
struct Procs {
    dir: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl Procs {
    fn new() -> Result<Procs> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("dtma-gwbench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Procs {
            dir,
            children: Mutex::new(Vec::new()),
        })
    }

    /// Start `cmd` with its stderr copied into `<dir>/<name>.log`; wait (at most `limit`) for
    /// the first stderr line containing `ready` and return the pid and that line.
    fn spawn(&self, name: &str, cmd: &mut Command, ready: &str) -> Result<(u32, String)> {
        let log_path = self.dir.join(format!("{name}.log"));
        let mut log = std::fs::File::create(&log_path)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("stderr is piped")?;
        lock(&self.children).push(child);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Ends at EOF: when the child exits.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains(&ready)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => Ok((pid, line)),
            Err(_) => {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "{name} did not report ready within 30 s; its last log lines: {:?}",
                    tail
                )
            }
        }
    }

    fn stop(&self, pid: u32) {
        let child = {
            let mut kids = lock(&self.children);
            kids.iter()
                .position(|c| c.id() == pid)
                .map(|i| kids.remove(i))
        };
        if let Some(mut c) = child {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }

    /// SIGKILL `pid` (a child started here) and reap it; the instant just before the signal.
    fn kill(&self, pid: u32) -> Result<Instant> {
        let mut kids = lock(&self.children);
        let i = kids
            .iter()
            .position(|c| c.id() == pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a child of the bench"))?;
        let mut child = kids.remove(i);
        drop(kids);
        let at = Instant::now();
        // `kill` fails only for a child already reaped, so the wait cannot hang.
        let sent = child.kill();
        let reaped = child.wait();
        sent.with_context(|| format!("SIGKILL {pid}"))?;
        reaped.with_context(|| format!("reaping {pid}"))?;
        Ok(at)
    }

    fn cleanup(&self) {
        let kids: Vec<_> = lock(&self.children).drain(..).collect();
        for mut c in kids {
            stop_child(&mut c, Duration::from_secs(10));
        }
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Bytes resident (VmRSS) of `pid`.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32, ticks_per_s: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        Ok(f.get(n - 3)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    Ok((field(14)? + field(15)?) / ticks_per_s)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raise the soft RLIMIT_NOFILE to the hard one when below `need`; children inherit it.
fn raise_nofile(need: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        hard >= need,
        "RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this run needs: raise \
         it (ulimit -Hn) or lower BENCH_GW_AGENTS"
    );
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::load()?;
    let load = support::load_at_start();
    let procs = Arc::new(Procs::new()?);
    let mut results = Results::default();
    let outcome = support::until_interrupted(run(&settings, &procs, &mut results)).await;
    let p = procs.clone();
    tokio::task::spawn_blocking(move || p.cleanup()).await?;

    let report = render(&settings, &results, &load);
    println!("{}", report.table);
    for n in &report.notes {
        println!("- {n}");
    }
    if let Some(path) = &settings.write {
        write_markdown(path, &report)?;
        eprintln!("gateway_bench: wrote the results into {}", path.display());
    }
    outcome?;
    ensure!(
        (settings.cluster_only
            || results.gw_mem.is_ok() && results.gw_cpu.is_ok() && results.fanout.is_ok())
            && results.cross.is_ok()
            && results.failover.is_ok(),
        "some gateway measurements failed (see the notes)"
    );
    Ok(())
}

async fn run(s: &Settings, procs: &Procs, r: &mut Results) -> Result<()> {
    // Both ends of every connection live in processes started from here: this one holds
    // the clients, the server its side.
    let limit = raise_nofile(s.agents as u64 + s.fanout as u64 + 1024)?;
    r.notes.push(format!(
        "RLIMIT_NOFILE {limit} for this process and the servers; connections from {} source \
         addresses (127.0.0.1..{}), at most {} handshakes in flight.",
        s.sources.len(),
        s.sources.len(),
        s.parallel
    ));
    let salt = getrandom::u64().map_err(|e| anyhow!("getrandom: {e}"))?;
    let agents: Vec<AgentSpec> = (0..s.agents)
        .map(|i| AgentSpec {
            id: format!("sim-{i:05}"),
            token: format!("sim-token-{i:05}-{salt:016x}"),
        })
        .collect();
    let operator = format!("bench-operator-{salt:016x}");
    let ticks = clock_ticks();
    let files = token_files(procs, &agents, &operator)?;

    if !s.cluster_only {
        if let Err(e) = gateway_rows(s, procs, &files, &agents, &operator, ticks, r).await {
            let why = format!("{e:#}");
            for m in [
                &mut r.gw_mem as &mut dyn SetErr,
                &mut r.gw_cpu,
                &mut r.fanout,
            ] {
                m.set_err_if_missing(&why);
            }
        }
        if let Err(e) = nats_rows(s, procs, ticks, r).await {
            let why = format!("{e:#}");
            for m in [&mut r.nats_mem as &mut dyn SetErr, &mut r.nats_cpu] {
                m.set_err_if_missing(&why);
            }
        }
    }
    if let Err(e) = cluster::rows(s, procs, &files, &agents, &operator, r).await {
        let why = format!("{e:#}");
        for m in [&mut r.cross as &mut dyn SetErr, &mut r.failover] {
            m.set_err_if_missing(&why);
        }
    }
    Ok(())
}

/// The token files every gateway process of the run reads.
struct TokenFiles {
    agents: PathBuf,
    operators: PathBuf,
}

fn token_files(procs: &Procs, agents: &[AgentSpec], operator: &str) -> Result<TokenFiles> {
    let tokens = procs.dir.join("agent-tokens");
    let mut text = String::with_capacity(agents.len() * 48);
    for a in agents {
        let _ = writeln!(text, "{} {}", a.id, a.token);
    }
    std::fs::write(&tokens, text)?;
    let operators = procs.dir.join("operator-tokens");
    std::fs::write(&operators, format!("{operator}\n"))?;
    Ok(TokenFiles {
        agents: tokens,
        operators,
    })
}

/// A `dtma-gateway` process started here.
struct Gateway {
    pid: u32,
    agent_addr: SocketAddr,
    api: SocketAddr,
}

/// Start the release gateway as `name` on 127.0.0.1 (port 0 for both listeners, read back
/// from its JSON log), with default settings plus `extra` flags.
fn start_gateway(
    s: &Settings,
    procs: &Procs,
    name: &str,
    files: &TokenFiles,
    extra: &[&str],
) -> Result<Gateway> {
    let (pid, line) = procs.spawn(
        name,
        Command::new(&s.gateway_bin)
            .arg("--agent-tokens")
            .arg(&files.agents)
            .arg("--operator-tokens-file")
            .arg(&files.operators)
            .args(["--agent-listen", "127.0.0.1:0"])
            .args(["--operator-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info"),
        "Gateway listening",
    )?;
    let (agent_addr, api) = listening(&line)?;
    Ok(Gateway {
        pid,
        agent_addr,
        api,
    })
}

/// Mark a still-missing measurement with the reason its step failed.
trait SetErr {
    fn set_err_if_missing(&mut self, why: &str);
}

impl<T> SetErr for M<T> {
    fn set_err_if_missing(&mut self, why: &str) {
        if matches!(self, Err(e) if e == NOT_RUN) {
            *self = Err(why.to_owned());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dtma-gateway
// ---------------------------------------------------------------------------------------------

async fn gateway_rows(
    s: &Settings,
    procs: &Procs,
    files: &TokenFiles,
    agents: &[AgentSpec],
    operator: &str,
    ticks: f64,
    r: &mut Results,
) -> Result<()> {
    let Gateway {
        pid,
        agent_addr,
        api,
    } = start_gateway(s, procs, "dtma-gateway", files, &[])?;
    let dial = sim::Dial {
        addr: agent_addr,
        sources: s.sources.clone(),
        parallel: s.parallel,
        timeout: Duration::from_secs(60),
    };

    let connect = || async {
        let started = Instant::now();
        let (fleet, failed) = sim::Fleet::connect(&dial, agents.to_vec()).await;
        let welcomed = Counters::get(&fleet.counters.welcomed);
        if !failed.is_empty() || welcomed != agents.len() as u64 {
            let first: Vec<String> = failed
                .iter()
                .take(3)
                .map(|(id, e)| format!("{id}: {e}"))
                .collect();
            fleet.stop(STEP_TIMEOUT).await;
            bail!(
                "{welcomed} of {} agents got welcome; first failures: {first:?}",
                agents.len()
            );
        }
        Ok((fleet, started.elapsed()))
    };
    let ((fleet, took), mem) = memory(pid, agents.len(), connect).await?;
    r.notes.push(format!(
        "dtma-gateway: {} agents connected (upgrade, `hello`, `welcome`, first `status`) in {:.1} s.",
        agents.len(),
        took.as_secs_f64()
    ));
    let c = fleet.counters.clone();
    r.gw_mem = match directory_check(api, operator, agents.len()).await {
        Ok(()) if Counters::get(&c.dropped) == 0 => Ok(mem),
        Ok(()) => Err(format!("agent sessions dropped: {:?}", lock(&c.samples))),
        Err(e) => Err(format!("{e:#}")),
    };

    let cpu = heartbeats(pid, &Beating::Gateway(&fleet), s, ticks).await;
    r.gw_cpu = match cpu {
        Ok(_) if Counters::get(&c.dropped) > 0 => {
            Err(format!("agent sessions dropped: {:?}", lock(&c.samples)))
        }
        Ok(cpu) => {
            r.notes.push(format!(
                "dtma-gateway heartbeats: {} `status` frames ({:.0}% of the intended rate) and {} \
                 WebSocket pings from {} agents in a window of {:.1} s, {:.2} s CPU; {:.2} s CPU \
                 in a window of the same length with all agents idle. Whole machine busy during \
                 the window: {}.",
                cpu.beats,
                cpu.achieved_pct(agents.len(), s.beat),
                cpu.pings,
                agents.len(),
                cpu.window_s,
                cpu.cpu_s,
                cpu.idle_cpu_s,
                cpu.machine_busy
            ));
            Ok(cpu)
        }
        Err(e) => Err(format!("{e:#}")),
    };
    match rss(pid) {
        Ok(after) => r.notes.push(format!(
            "dtma-gateway VmRSS after the heartbeat phase: {:.1} MB (after connecting: {}).",
            after as f64 / 1e6,
            r.gw_mem
                .as_ref()
                .map_or("n/a".into(), |m| format!("{:.1} MB", m.after as f64 / 1e6))
        )),
        Err(e) => r.notes.push(format!("dtma-gateway VmRSS: {e:#}")),
    }

    // Fan-out to every k-th agent, so that all source addresses take part.
    let step = (agents.len() / s.fanout).max(1);
    let ids: Vec<String> = agents
        .iter()
        .step_by(step)
        .take(s.fanout)
        .map(|a| a.id.clone())
        .collect();
    let mut rounds = Vec::new();
    let mut fan_err = None;
    for round in 0..s.rounds {
        let execs0 = Counters::get(&c.execs_true);
        match fanout(api, operator, &ids).await {
            Ok((lat, total)) => {
                let answered = Counters::get(&c.execs_true) - execs0;
                if answered != ids.len() as u64 {
                    fan_err = Some(format!(
                        "round {round}: the agents answered {answered} execs of `true`, expected {}",
                        ids.len()
                    ));
                    break;
                }
                rounds.push((lat, total));
            }
            Err(e) => {
                fan_err = Some(format!("round {round}: {e:#}"));
                break;
            }
        }
    }
    r.fanout = match fan_err {
        Some(e) => Err(e),
        None if Counters::get(&c.dropped) > 0 || Counters::get(&c.unexpected) > 0 => Err(format!(
            "the simulator saw {} dropped sessions and {} unexpected frames: {:?}",
            Counters::get(&c.dropped),
            Counters::get(&c.unexpected),
            lock(&c.samples)
        )),
        None => Ok(Fanout {
            per_request: Latency::of(rounds.iter().flat_map(|(l, _)| l.clone()).collect()),
            totals: rounds.iter().map(|(_, t)| *t).collect(),
        }),
    };
    r.notes.push(format!(
        "Acks received by the simulated agents over the whole run: {} (the gateway acknowledges \
         each stream's events once per burst).",
        Counters::get(&c.acks)
    ));
    if !fleet.stop(STEP_TIMEOUT).await {
        r.notes
            .push("Some simulated agents did not close within 120 s (aborted).".into());
    }
    procs.stop(pid);
    Ok(())
}

/// The agent and operator addresses from the gateway's JSON "listening" log line.
fn listening(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("the gateway's log line is not JSON: {line}"))?;
    let addr = |k: &str| -> Result<SocketAddr> {
        v["fields"][k]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no `{k}` in the gateway's log line: {line}"))
    };
    Ok((addr("agent_addr")?, addr("operator_addr")?))
}

/// The gateway's own view: `GET /v1/agents` lists every agent connected, each with a
/// heartbeat (so the gateway processed every first `status`).
async fn directory_check(api: SocketAddr, operator: &str, n: usize) -> Result<()> {
    let (status, body) = http(api, operator, "GET", "/v1/agents", None).await?;
    ensure!(status == 200, "GET /v1/agents: {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let list = v["agents"]
        .as_array()
        .ok_or_else(|| anyhow!("GET /v1/agents: no `agents` array"))?;
    let connected = list.iter().filter(|a| a["state"] == "connected").count();
    let beating = list
        .iter()
        .filter(|a| a["last_heartbeat_at"].is_string())
        .count();
    ensure!(
        connected == n && beating == n,
        "GET /v1/agents: {connected} connected and {beating} with a heartbeat, of {n}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// nats-server
// ---------------------------------------------------------------------------------------------

async fn nats_rows(s: &Settings, procs: &Procs, ticks: f64, r: &mut Results) -> Result<()> {
    let (pid, line) = procs.spawn(
        "nats-server",
        Command::new(&s.nats_bin).args(["-a", "127.0.0.1", "-p", "-1"]),
        "Listening for client connections on",
    )?;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| anyhow!("no address in nats-server's line: {line}"))?;
    let payload: Arc<str> = sim::status_json().into();
    let connect = || async {
        let (fleet, failed) = nats::Fleet::connect(
            addr,
            s.agents,
            &s.sources,
            s.parallel,
            Duration::from_secs(60),
            payload.clone(),
        )
        .await;
        if !failed.is_empty() {
            fleet.stop(STEP_TIMEOUT).await;
            bail!(
                "{} of {} NATS clients failed; first: {:?}",
                failed.len(),
                s.agents,
                failed.iter().take(3).collect::<Vec<_>>()
            );
        }
        Ok(fleet)
    };
    let (fleet, mem) = memory(pid, s.agents, connect).await?;
    let c = fleet.counters.clone();
    r.nats_mem = Ok(mem);
    let cpu = heartbeats(pid, &Beating::Nats(&fleet), s, ticks).await;
    r.nats_cpu = match cpu {
        Ok(_) if Counters::get(&c.errors) > 0 => Err(format!(
            "{} NATS clients saw -ERR or lost their connection",
            Counters::get(&c.errors)
        )),
        Ok(cpu) => {
            r.notes.push(format!(
                "nats-server: {} PUBs of the same status JSON ({} bytes; {:.0}% of the intended \
                 rate) in {:.1} s, {:.2} s CPU; {:.2} s CPU in a window of the same length with \
                 all clients idle. Whole machine busy during the window: {}.",
                cpu.beats,
                payload.len(),
                cpu.achieved_pct(s.agents, s.beat),
                cpu.window_s,
                cpu.cpu_s,
                cpu.idle_cpu_s,
                cpu.machine_busy
            ));
            Ok(cpu)
        }
        Err(e) => Err(format!("{e:#}")),
    };
    fleet.stop(STEP_TIMEOUT).await;
    procs.stop(pid);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// VmRSS of server `pid` settled before `connect` and settled after it, for `n` connections.
async fn memory<T, F, Fut>(pid: u32, n: usize, connect: F) -> Result<(T, Mem)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let before = settled_rss(pid).await?;
    let held = tokio::time::timeout(STEP_TIMEOUT * 5, connect())
        .await
        .map_err(|_| anyhow!("connecting {n} clients took more than 600 s"))??;
    let after = settled_rss(pid).await?;
    Ok((held, Mem { before, after, n }))
}

/// VmRSS after [`SETTLE`], then every 250 ms until two readings agree within 0.5% (at most
/// 10 s more): the last reading.
async fn settled_rss(pid: u32) -> Result<u64> {
    tokio::time::sleep(SETTLE).await;
    let mut last = rss(pid)?;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss(pid)?;
        let stable = now.abs_diff(last) as f64 <= last as f64 * 0.005;
        last = now;
        if stable {
            break;
        }
    }
    Ok(last)
}

/// A fleet whose connections can beat.
enum Beating<'a> {
    Gateway(&'a sim::Fleet),
    Nats(&'a nats::Fleet),
}

impl Beating<'_> {
    fn beat(&self, b: Beat) {
        match self {
            Beating::Gateway(f) => f.beat(b),
            Beating::Nats(f) => f.beat(b),
        }
    }

    /// Heartbeats sent so far: `status` frames (agents) or `PUB`s (NATS clients).
    fn beats(&self) -> u64 {
        match self {
            Beating::Gateway(f) => Counters::get(&f.counters.statuses),
            Beating::Nats(f) => Counters::get(&f.counters.published),
        }
    }

    /// WebSocket pings sent so far (NATS clients send none of their own).
    fn pings(&self) -> u64 {
        match self {
            Beating::Gateway(f) => Counters::get(&f.counters.pings),
            Beating::Nats(_) => 0,
        }
    }
}

/// The server's CPU time over a window with every connection idle, then over a window while
/// every connection beats once per `s.beat` (after two intervals of warm-up).
async fn heartbeats(pid: u32, fleet: &Beating<'_>, s: &Settings, ticks: f64) -> Result<Cpu> {
    let idle0 = cpu_secs(pid, ticks)?;
    tokio::time::sleep(s.window).await;
    let idle_cpu_s = cpu_secs(pid, ticks)? - idle0;

    fleet.beat(Beat::Every(s.beat));
    tokio::time::sleep(s.beat * 2).await;
    let (cpu0, beats0, pings0, machine0, t0) = (
        cpu_secs(pid, ticks)?,
        fleet.beats(),
        fleet.pings(),
        machine_ticks(),
        Instant::now(),
    );
    tokio::time::sleep(s.window).await;
    let (cpu1, beats1, pings1, machine1, window) = (
        cpu_secs(pid, ticks)?,
        fleet.beats(),
        fleet.pings(),
        machine_ticks(),
        t0.elapsed(),
    );
    fleet.beat(Beat::Idle);
    ensure!(beats1 > beats0, "no heartbeat was sent in the window");
    Ok(Cpu {
        cpu_s: cpu1 - cpu0,
        beats: beats1 - beats0,
        pings: pings1 - pings0,
        window_s: window.as_secs_f64(),
        idle_cpu_s,
        machine_busy: busy_between(machine0, machine1),
    })
}

/// `exec true` to every agent of `ids` at once through `POST /v1/agents/{id}/requests
/// ?wait=true`, one HTTP/1.1 connection per request (opened before the clock starts). Every
/// answer must be an `exit` with code 0. Returns each request's time and the time until the
/// last answer.
async fn fanout(
    api: SocketAddr,
    operator: &str,
    ids: &[String],
) -> Result<(Vec<Duration>, Duration)> {
    let mut senders = Vec::with_capacity(ids.len());
    for _ in ids {
        senders.push(http_conn(api).await?);
    }
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (id, mut sender) in ids.iter().cloned().zip(senders) {
        let operator = operator.to_owned();
        set.spawn(async move {
            let start = Instant::now();
            exec_true(&mut sender, &operator, &id).await?;
            Ok::<_, anyhow::Error>(start.elapsed())
        });
    }
    let mut times = Vec::with_capacity(ids.len());
    let collect = async {
        while let Some(done) = set.join_next().await {
            times.push(done??);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(STEP_TIMEOUT, collect)
        .await
        .map_err(|_| anyhow!("not every answer was back within 120 s"))??;
    Ok((times, t0.elapsed()))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// `POST /v1/agents/{id}/requests?wait=true` with `{"type":"exec","command":"true"}` on
/// `sender` (a keep-alive connection): the answer must be `200` with two events, the last an
/// `exit` with code 0.
async fn exec_true(sender: &mut Sender, operator: &str, id: &str) -> Result<()> {
    sender.ready().await?;
    let req = hyper::Request::post(format!("/v1/agents/{id}/requests?wait=true"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {operator}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"type":"exec","command":"true"}"#,
        )))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{id}: status {status}, not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let t = &v["terminal"];
    ensure!(
        status == 200 && t["type"] == "exit" && t["exit_code"] == 0 && v["events"] == 2,
        "{id}: status {status}, {} events, terminal {t}; body {v}",
        v["events"]
    );
    Ok(())
}

async fn http_conn(addr: SocketAddr) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One operator API exchange on a fresh connection: status and body.
async fn http(
    api: SocketAddr,
    operator: &str,
    method: &str,
    path: &str,
    body: Option<&'static str>,
) -> Result<(u16, Bytes)> {
    let mut sender = http_conn(api).await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {operator}"))
        .body(Full::new(Bytes::from_static(
            body.unwrap_or_default().as_bytes(),
        )))?;
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok::<_, anyhow::Error>((status, resp.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within 120 s"))?
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
    let kb = |m: &M<Mem>| {
        cell(m, |x| {
            format!(
                "{:.1} KB ({:.1} → {:.1} MB)",
                x.per_conn() / 1e3,
                x.before as f64 / 1e6,
                x.after as f64 / 1e6
            )
        })
    };
    let us = |m: &M<Cpu>| cell(m, |c| format!("{:.1} µs", c.us_per_beat()));
    let pct = |m: &M<Cpu>| cell(m, |c| format!("{:.2}%", c.core_pct_at_real(s.agents)));
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "unknown",
    };
    let n = s.agents;
    let beat_s = s.beat.as_secs_f64();
    let mut rows: Vec<[String; 4]> = vec![
        [
            format!(
                "memory per idle agent connection, {n} connected (VmRSS after − before, ÷ {n})"
            ),
            kb(&r.gw_mem),
            format!("{} (NATS clients: CONNECT, PING)", kb(&r.nats_mem)),
            format!(
                "< 20 KB: {}",
                verdict(
                    r.gw_mem
                        .as_ref()
                        .ok()
                        .map(|m| m.per_conn() < TARGET_BYTES_PER_AGENT)
                )
            ),
        ],
        [
            format!(
                "heartbeat CPU per agent interval: one `status` + two WebSocket pings (NATS: one \
                 PUB of the same JSON), {n} connections beating every {beat_s} s"
            ),
            us(&r.gw_cpu),
            us(&r.nats_cpu),
            "-".into(),
        ],
        [
            format!("the same at the real 30 s interval, {n} agents (share of one core)"),
            pct(&r.gw_cpu),
            pct(&r.nats_cpu),
            "-".into(),
        ],
    ];
    let fan = &r.fanout;
    rows.push([
        format!(
            "fan-out: exec `true` to {} agents at once (`?wait=true`, one HTTP connection per \
             request), until every exit is back; median of {} rounds",
            s.fanout, s.rounds
        ),
        cell(fan, |f| ms(f.median_total())),
        "-".into(),
        "-".into(),
    ]);
    rows.push([
        "fan-out per request p50 / p99 (all rounds)".into(),
        cell(fan, |f| {
            format!(
                "{} / {} ({} requests)",
                ms(f.per_request.p50),
                ms(f.per_request.p99),
                f.per_request.runs
            )
        }),
        "-".into(),
        "-".into(),
    ]);
    let dash = || "-".to_owned();
    let pair = |l: &Latency| format!("{} / {}", ms(l.p50), ms(l.p99));
    let added = |x: &Latency, base: &Latency| {
        let d = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
        format!(
            "{:+.2} ms / {:+.2} ms",
            d(x.p50, base.p50),
            d(x.p99, base.p99)
        )
    };
    let cross = &r.cross;
    for (what, pick) in [
        (
            "lone node, no NATS",
            (|c: &cluster::Cross| c.lone) as fn(&cluster::Cross) -> Latency,
        ),
        (
            "cluster, through node A holding the agent (same node)",
            |c| c.same,
        ),
        ("cluster, through node B (cross node)", |c| c.cross),
    ] {
        rows.push([
            format!(
                "one `exec true` at a time (`?wait=true`, keep-alive), {} per path, p50 / p99: \
                 {what}",
                s.cross_requests
            ),
            cell(cross, |c| pair(&pick(c))),
            dash(),
            dash(),
        ]);
    }
    rows.push([
        "cross-node request overhead through NATS, p50 / p99 added: node B − node A (and \
         clustering: node A − lone node)"
            .into(),
        cell(cross, |c| {
            format!("{} ({})", added(&c.cross, &c.same), added(&c.same, &c.lone))
        }),
        dash(),
        dash(),
    ]);
    let fo = &r.failover;
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    rows.push([
        format!(
            "after a node holding {} agents is killed (SIGKILL): each agent reachable again \
             (its request through a survivor answered) p50 / p99 / max",
            s.failover_agents
        ),
        cell(fo, |f| {
            format!(
                "{} / {} / {}",
                secs(f.reachable.p50),
                secs(f.reachable.p99),
                secs(f.reachable.max)
            )
        }),
        dash(),
        format!(
            "p99 < 5 s: {}",
            verdict(fo.as_ref().ok().map(cluster::Failover::met))
        ),
    ]);
    rows.push([
        "handshakes/s at the survivors during the reconnect wave: mean (first to last \
         `welcome`) / busiest 100 ms"
            .into(),
        cell(fo, |f| {
            format!("{:.0}/s / {:.0}/s", f.mean_rate, f.peak_rate)
        }),
        dash(),
        dash(),
    ]);

    let header = [
        "measurement",
        "dtma-gateway",
        "nats-server (peer)",
        "target",
    ];
    let mut table = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    table.push_str(&line(&header.map(String::from)));
    table.push_str(&line(&header.map(|_| "---".to_owned())));
    for row in &rows {
        table.push_str(&line(row));
    }

    let mut notes = Vec::new();
    for (what, err) in [
        ("dtma-gateway memory", r.gw_mem.as_ref().err()),
        ("dtma-gateway heartbeats", r.gw_cpu.as_ref().err()),
        ("dtma-gateway fan-out", r.fanout.as_ref().err()),
        ("nats-server memory", r.nats_mem.as_ref().err()),
        ("nats-server heartbeats", r.nats_cpu.as_ref().err()),
        ("cluster round trips", r.cross.as_ref().err()),
        ("cluster failover", r.failover.as_ref().err()),
    ] {
        if let Some(why) = err {
            notes.push(format!("n/a {what}: {why}"));
        }
    }
    if let Ok(f) = fan {
        let totals: Vec<String> = f.totals.iter().map(|t| ms(*t)).collect();
        notes.push(format!(
            "Fan-out rounds (each: {} answers of `started` + `exit` with code 0): {}; slowest single request {}.",
            s.fanout,
            totals.join(", "),
            ms(f.per_request.max)
        ));
    }
    if let Ok(c) = cross {
        notes.push(format!(
            "Round trips: {} agents connected to the lone node and (the same ids) to node A; \
             requests interleaved (lone, A, B, lone, ...), one in flight at a time, {} per path \
             after {} of warm-up; slowest: lone {}, A {}, B {}. The added latencies are \
             differences of the percentiles.",
            c.agents,
            s.cross_requests,
            cluster::WARMUP,
            ms(c.lone.max),
            ms(c.same.max),
            ms(c.cross.max)
        ));
    }
    if let Ok(f) = fo {
        let per_node: Vec<String> = f.per_node.iter().map(|(n, k)| format!("{n} {k}")).collect();
        notes.push(format!(
            "Failover: {} agents on node C redial after a full-jitter backoff (uniform in [0, \
             500 ms], then [0, 1 s], ...: the real agent's defaults) to A or B (alternating by \
             agent, the next one after a failed dial); {} needed more than one dial. All {} \
             requests (`exec true`, `?wait=true`, through A) were sent within {} of the \
             SIGKILL and waited in A for the directory. `welcome` again after the kill: p50 {} \
             / p99 {} (first {}, last {}); handshakes per survivor: {}. From an agent's \
             `welcome` to its answer (the new node's directory write reaching A, A's retry, \
             the request): p50 {} / p99 {} / max {}.",
            f.agents,
            f.redialed,
            f.agents,
            ms(f.dispatch),
            secs(f.rejoined.p50),
            secs(f.rejoined.p99),
            secs(f.first),
            secs(f.last),
            per_node.join(", "),
            secs(f.after_welcome.p50),
            secs(f.after_welcome.p99),
            secs(f.after_welcome.max)
        ));
    }
    notes.extend(r.notes.iter().cloned());
    Report {
        table: table.trim_end().to_owned(),
        notes,
        facts: {
            let mut f = support::machine_facts();
            f.push((
                "nats-server".into(),
                support::version(&s.nats_bin, &["--version"]),
            ));
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

const BEGIN: &str =
    "<!-- bench:gateway:begin (generated by gateway/examples/gateway_bench; do not edit) -->";
const END: &str = "<!-- bench:gateway:end -->";

fn write_markdown(path: &Path, report: &Report) -> Result<()> {
    let section = support::results_section(
        BEGIN,
        END,
        &format!(
            "Run of {} (`BENCH_ONLY_GATEWAY=1 bash deploy/bench.sh`):",
            report.when
        ),
        &report.table,
        &report.notes,
        &report.facts,
    );
    support::replace_section(path, BEGIN, END, "### Results (gateway)", &section)
}
