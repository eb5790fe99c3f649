//! Benchmark: following an MCP server's container log through the `dtma` agent next to
//! `docker logs -f`, in one run, printed as one table.
//!
//! Run it with `bash deploy/bench-logs.sh` (installs busybox-static when missing, builds `dtma`,
//! `dtma-test-mcp` and this example in release mode first). It needs a running Docker daemon,
//! as `.ci/test.sh` starts it.
//!
//! - The image is the test image (`deploy/test-image.sh`: the test MCP server
//!   `tests/support/mcp_server.rs` with busybox, imported from local files, no registry). Its
//!   log modes are the log sources: `MCP_LOG_MODE=stamp` prints `<prefix> <n> <ns>` lines that
//!   carry the writer's `CLOCK_REALTIME`, `MCP_LOG_BYTES` writes a burst of lines as fast as
//!   the pipe takes them on each SIGUSR1.
//! - The control plane (`dtma_control_plane::ControlPlane`, default options) runs in this
//!   process on 127.0.0.1; the agent is the real `target/release/dtma`, a child process
//!   connected to it, with its local API on 127.0.0.1 and `DTMA_MCP_NETWORK=host`. Servers are
//!   deployed over the local API (`POST /mcp/groups`); logs are followed over the channel
//!   (`logs_follow`, the product path) and, for latency, over the local API's server-sent
//!   events too (`GET /mcp/servers/:name/logs?follow=true&tail=0`). The peer is `docker logs
//!   -f --tail 0 <container>` spawned here, its stdout read here.
//! - Latency: a line's `CLOCK_REALTIME` at the writer to `CLOCK_REALTIME` here when the piece of
//!   output that completes it arrives, `BENCH_LINES` (1000) lines per tool, in `BENCH_BLOCKS`
//!   (5) alternating blocks; p50/p99 nearest rank.
//! - Throughput: one burst of `BENCH_BYTES` (200 MB) per round, from the writer's `start`
//!   stamp to the arrival of its `done` line; `BENCH_ROUNDS` (3) rounds per tool after one
//!   warm-up each, alternating; median and range. Once for each line length in
//!   `BENCH_LINE_BYTES` (`100,1000`), each from its own container.
//! - Memory: the agent's VmRSS while it follows `BENCH_FOLLOWS` (50) logging containers at
//!   once over the channel, sampled every 100 ms for `BENCH_SAMPLE_SECS` (5); next to it the
//!   summed VmRSS of as many `docker logs -f` processes.
//!
//! Options (environment): those above, `BENCH_EVERY_MS` (10: the stamped lines' interval),
//! `BENCH_PARTS` (`latency,throughput,memory`: which parts run), `DTMA_BIN` (default: `dtma` next to this example's directory), `BENCH_MCP_SERVER`
//! (the test server binary put in the image; default `dtma-test-mcp` next to `dtma`).
//! `--write FILE` replaces the generated section of FILE (between the `bench-logs:results`
//! markers) with this run's results.
//!
//! Everything started here (the agent, every container of its groups, the `docker logs`
//! processes, a created container that keeps the image from being tidied away mid-run) is
//! stopped and removed, and the temporary directory deleted, at the end, on error and on
//! Ctrl-C. No network is created: every container uses the host's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use dtma_control_plane::{ControlPlane, Options, StreamRx, output_bytes};
use dtma_protocol::{AgentMessage, Cancel, Fd, LogsFollow, RequestBody};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

#[path = "support/mcp.rs"]
mod mcp;
mod support;
use mcp::{Api, Reaper, STEP_TIMEOUT, free_ports, group_label, labelled_async, pinned_image};
use support::{lock, machine_ticks};

/// Every server speaks the stateless revision (one probe exchange to be ready).
const MODE: &str = "discover";
const ENDPOINT: &str = "/mcp";
/// The throughput container's stamped ticker: how a reader knows it is attached.
const TICK_MS: u64 = 200;
/// The memory test's containers: a `<prefix> <n>` line every this many ms (every 10th also to
/// stderr).
const RSS_EVERY_MS: u64 = 100;
/// A throughput follow that delivers nothing this long after its burst ended has stalled.
const STALL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Settings, results
// ---------------------------------------------------------------------------------------------

struct Settings {
    lines: usize,
    every_ms: u64,
    blocks: usize,
    bytes: u64,
    /// The bursts' line lengths, one throughput row each.
    line_bytes: Vec<u64>,
    rounds: usize,
    follows: usize,
    sample: Duration,
    parts: Vec<String>,
    write: Option<PathBuf>,
    dtma_bin: PathBuf,
    server_bin: PathBuf,
}

impl Settings {
    fn load() -> Result<Settings> {
        let num = support::env_num;
        let write = support::write_arg()?;
        let dtma_bin = support::dtma_bin()?;
        let server_bin = match std::env::var_os("BENCH_MCP_SERVER") {
            Some(p) => PathBuf::from(p),
            None => dtma_bin.with_file_name("dtma-test-mcp"),
        };
        ensure!(
            server_bin.is_file(),
            "test MCP server `{}` not found: run `cargo build --release --bin dtma-test-mcp` \
             (or set BENCH_MCP_SERVER)",
            server_bin.display()
        );
        let all = ["latency", "throughput", "memory"];
        let parts: Vec<String> = match std::env::var("BENCH_PARTS") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|p| p.trim().to_owned()).collect(),
            _ => all.iter().map(|p| (*p).to_owned()).collect(),
        };
        if let Some(bad) = parts.iter().find(|p| !all.contains(&p.as_str())) {
            bail!("BENCH_PARTS: unknown part `{bad}` (latency, throughput, memory)");
        }
        Ok(Settings {
            lines: num("BENCH_LINES", 1000, 10, 100_000)? as usize,
            every_ms: num("BENCH_EVERY_MS", 10, 1, 1000)?,
            blocks: num("BENCH_BLOCKS", 5, 1, 100)? as usize,
            bytes: num("BENCH_BYTES", 200_000_000, 1, 1 << 40)?,
            line_bytes: match std::env::var("BENCH_LINE_BYTES") {
                Ok(v) if !v.trim().is_empty() => v
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<u64>()
                            .ok()
                            .filter(|n| (40..=16 << 10).contains(n))
                            .ok_or_else(|| {
                                anyhow!("BENCH_LINE_BYTES: `{n}` is not a whole number 40..=16384")
                            })
                    })
                    .collect::<Result<_>>()?,
                _ => vec![100, 1000],
            },
            rounds: num("BENCH_ROUNDS", 3, 1, 100)? as usize,
            // A group holds at most 50 servers.
            follows: num("BENCH_FOLLOWS", 50, 1, 50)? as usize,
            sample: Duration::from_secs(num("BENCH_SAMPLE_SECS", 5, 1, 600)?),
            parts,
            write,
            dtma_bin,
            server_bin,
        })
    }

    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// A measurement, or why it is missing.
type M<T> = Result<T, String>;

fn not_run<T>() -> M<T> {
    Err("not run".into())
}

/// The three ways of following a log that are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// `logs_follow` over the agent's channel, through the control plane in this process.
    Channel,
    /// `GET /mcp/servers/:name/logs` (server-sent events) on the agent's local API.
    Sse,
    /// `docker logs -f --tail 0`.
    Docker,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Channel => "dtma channel",
            Tool::Sse => "dtma local API (SSE)",
            Tool::Docker => "docker logs -f",
        }
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

/// One burst followed to its end.
#[derive(Clone, Copy)]
struct Transfer {
    /// Bytes of the burst's lines that arrived (newlines included; repeats counted again).
    received: u64,
    /// Lines of the burst that never arrived, and lines that arrived more than once.
    missing: u64,
    repeated: u64,
    /// From the writer's `start` stamp to the arrival of the `done` line.
    follow: Duration,
    /// From the writer's `start` stamp to its `done` stamp: how fast Docker took the bytes in
    /// (`None`: the `done` line could not be read back).
    writer: Option<Duration>,
    /// The follower never got the `start` line (timed from the signal instead), or the `done`
    /// line (timed to the first ticker line after the burst).
    start_lost: bool,
    done_lost: bool,
    /// The follow stopped delivering (nothing for [`STALL`] after the burst had ended): no rate.
    stalled: bool,
}

/// Memory (and CPU) of the followers of many containers.
#[derive(Clone, Copy)]
struct Held {
    /// Peak VmRSS in the sampling window, KiB (summed over processes).
    peak_kib: u64,
    /// VmRSS just before the follows were opened, KiB (the agent only).
    before_kib: Option<u64>,
    /// CPU used over the window, as a share of one core.
    cpu: f64,
    /// Lines delivered per second over the window (all follows).
    lines_per_s: f64,
    /// How long until every follow had delivered a line.
    attach: Duration,
}

struct Results {
    latency: [M<Latency>; 3],
    /// Per line length: dtma (channel), docker logs -f.
    throughput: Vec<(u64, [M<Vec<Transfer>>; 2])>,
    memory: [M<Held>; 2],
    /// VmHWM of the agent at the end, KiB.
    agent_hwm: Option<u64>,
    notes: Vec<String>,
    facts: Vec<(String, String)>,
    busy: Vec<String>,
}

impl Default for Results {
    fn default() -> Self {
        Results {
            latency: [not_run(), not_run(), not_run()],
            throughput: Vec::new(),
            memory: [not_run(), not_run()],
            agent_hwm: None,
            notes: Vec::new(),
            facts: Vec::new(),
            busy: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::load()?;
    let load = support::load_at_start();
    let reaper = Arc::new(Reaper::new("dtma-bench-logs")?);
    let mut results = Results::default();
    // Dropping the run (interrupted) kills its `docker logs` processes (kill_on_drop).
    let outcome = support::until_interrupted(run(&settings, &reaper, &mut results)).await;
    let cleanup_reaper = reaper.clone();
    tokio::task::spawn_blocking(move || cleanup_reaper.cleanup()).await?;
    if let Err(e) = &outcome {
        results.notes.push(format!("The run ended early: {e:#}."));
    }

    let report = render(&settings, &results, &load);
    println!("{}", report.table);
    for n in &report.notes {
        println!("- {n}");
    }
    match (&settings.write, &outcome) {
        (Some(path), Ok(())) => {
            write_markdown(path, &report)?;
            eprintln!("bench-logs: wrote the results into {}", path.display());
        }
        (Some(path), Err(_)) => {
            eprintln!(
                "bench-logs: the run ended early; {} left as it was",
                path.display()
            );
        }
        (None, _) => {}
    }
    outcome?;
    let failed = results.latency.iter().any(Result::is_err) && settings.runs("latency")
        || results
            .throughput
            .iter()
            .flat_map(|t| &t.1)
            .any(Result::is_err)
            && settings.runs("throughput")
        || results.memory.iter().any(Result::is_err) && settings.runs("memory");
    ensure!(!failed, "some measurements failed (see the notes)");
    Ok(())
}

/// What every part needs: the control plane, the agent (its id, pid and local API).
struct Ctx {
    cp: ControlPlane,
    agent_id: String,
    agent_pid: u32,
    api: Api,
}

async fn run(s: &Settings, reaper: &Arc<Reaper>, r: &mut Results) -> Result<()> {
    r.facts = vec![
        (
            "Docker".into(),
            support::version("docker", &["version", "--format", "{{.Server.Version}}"]),
        ),
        (
            "docker CLI".into(),
            support::version("docker", &["version", "--format", "{{.Client.Version}}"]),
        ),
    ];
    let run_id = format!("{:06x}", fastrand::u32(..0x100_0000));
    eprintln!("bench-logs: the test image (deploy/test-image.sh)");
    let image = pinned_image(&s.server_bin, reaper, &run_id).await?;
    r.facts.push(("image".into(), image.clone()));

    // The control plane, here, on a port of its choice; the agent connects to it.
    let token = format!("bench-{:016x}", fastrand::u64(..));
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let cp = ControlPlane::new(Options {
        tokens: vec![token.clone()],
        ..Options::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cp_addr = listener.local_addr()?;
    cp.serve(listener, stop.clone());
    let agent_id = format!("bench-logs-{run_id}");
    let url = format!("ws://{cp_addr}/dtma/connect");
    let addr = mcp::start_agent(
        &s.dtma_bin,
        reaper,
        &agent_id,
        &token,
        &[("DTMA_WS_URL", url.as_str())],
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(20), cp.wait_for_agent(&agent_id))
        .await
        .map_err(|_| anyhow!("the agent did not connect to the control plane within 20 s"))?;
    let agent_pid = lock(&reaper.agent)
        .as_ref()
        .map(std::process::Child::id)
        .context("the agent is gone")?;
    eprintln!("bench-logs: agent connected over {url}; local API on {addr}");
    let ctx = Ctx {
        cp,
        agent_id,
        agent_pid,
        api: Api { addr, token },
    };

    if s.runs("latency") || s.runs("throughput") {
        let group = format!("bench-{run_id}-one");
        reaper.track(group_label(&group));
        let ports = free_ports(1 + s.line_bytes.len())?;
        let lat = Source::new(&run_id, "lat", &ports[0..1]);
        let tp = Source::new(&run_id, "tp", &ports[1..]);
        let mut servers = vec![server(
            &lat.instances[0],
            &image,
            ports[0],
            json!({
                    "MCP_LOG_EVERY_MS": s.every_ms.to_string(),
                    "MCP_LOG_MODE": "stamp",
                    "MCP_LOG_PREFIX": lat.prefix,
            }),
        )];
        for (i, line) in s.line_bytes.iter().enumerate() {
            servers.push(server(
                &tp.instances[i],
                &image,
                ports[1 + i],
                json!({
                    "MCP_LOG_EVERY_MS": TICK_MS.to_string(),
                    "MCP_LOG_MODE": "stamp",
                    "MCP_LOG_PREFIX": tp.prefix,
                    "MCP_LOG_BYTES": s.bytes.to_string(),
                    "MCP_LOG_LINE_BYTES": line.to_string(),
                }),
            ));
        }
        let n = servers.len();
        eprintln!("bench-logs: deploying the log sources");
        deploy(&ctx.api, &group, servers, n).await?;
        if s.runs("latency") {
            let before = machine_ticks();
            r.latency = latency(&ctx, s, &lat).await;
            r.busy.push(format!(
                "latency {}",
                support::busy_between(before, machine_ticks())
            ));
        }
        if s.runs("throughput") {
            let before = machine_ticks();
            for (i, line) in s.line_bytes.iter().enumerate() {
                let t = throughput(&ctx, s, &tp, i, *line, &mut r.notes).await;
                r.throughput.push((*line, t));
            }
            r.busy.push(format!(
                "throughput {}",
                support::busy_between(before, machine_ticks())
            ));
        }
        remove(&ctx.api, &group, n).await?;
    }

    if s.runs("memory") {
        let group = format!("bench-{run_id}-many");
        reaper.track(group_label(&group));
        let ports = free_ports(s.follows)?;
        let many = Source::new(&run_id, "m", &ports);
        let servers = many
            .instances
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                server(
                    name,
                    &image,
                    *port,
                    json!({
                        "MCP_LOG_EVERY_MS": RSS_EVERY_MS.to_string(),
                        "MCP_LOG_PREFIX": many.prefix,
                    }),
                )
            })
            .collect();
        eprintln!("bench-logs: deploying {} logging servers", s.follows);
        deploy(&ctx.api, &group, servers, 16).await?;
        let before = machine_ticks();
        r.memory = memory(&ctx, s, &many).await;
        r.busy.push(format!(
            "memory {}",
            support::busy_between(before, machine_ticks())
        ));
        remove(&ctx.api, &group, s.follows).await?;
    }
    r.agent_hwm = support_vm(ctx.agent_pid, "VmHWM:");
    r.busy
        .push(format!("load average after: {}", support::load_average()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// The servers of one part: instance names and the prefix their log lines carry.
struct Source {
    instances: Vec<String>,
    prefix: String,
}

impl Source {
    fn new(run_id: &str, what: &str, ports: &[u16]) -> Source {
        Source {
            instances: (1..=ports.len())
                .map(|i| format!("bench-{run_id}-{what}{i:02}"))
                .collect(),
            prefix: format!("{what}{run_id}"),
        }
    }

    fn container(&self, i: usize) -> String {
        dtma::docker::spec::container_name(&self.instances[i])
    }
}

/// One server of a deploy body: the test server on `port`, with `env` added.
fn server(name: &str, image: &str, port: u16, env: Value) -> Value {
    let mut vars = json!({ "MCP_PORT": port.to_string(), "MCP_MODE": MODE });
    if let (Some(v), Some(extra)) = (vars.as_object_mut(), env.as_object()) {
        v.extend(extra.clone());
    }
    json!({
        "accountToolInstanceId": format!("ati-{name}"),
        "dockerImageUrl": image,
        "instanceNameOnToolbox": name,
        "mcpEndpointPath": ENDPOINT,
        "mcpTransportType": "http",
        "portBindings": { format!("{port}/tcp"): port },
        "environmentVariables": vars,
        "resourceLimits": { "memory": "64m", "cpu": 1 },
        "readinessTimeoutMs": 60_000,
    })
}

async fn deploy(api: &Api, group: &str, servers: Vec<Value>, concurrency: usize) -> Result<()> {
    let n = servers.len();
    let body = json!({
        "groupId": group,
        "servers": servers,
        "options": { "maxConcurrentDeployments": concurrency.min(16) },
    });
    let (status, j) = api.call("POST", "/mcp/groups", Some(&body)).await?;
    ensure!(
        status == 200 && j["outcome"] == "deployed",
        "the deploy answered {status}: {j}"
    );
    let ready = j["servers"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|s| s["state"] == "ready").count());
    ensure!(ready == n, "{ready} of {n} servers ready: {j}");
    Ok(())
}

async fn remove(api: &Api, group: &str, n: usize) -> Result<()> {
    let (status, j) = api
        .call("DELETE", &format!("/mcp/groups/{group}"), None)
        .await?;
    let removed = j["removed"].as_array().map_or(0, Vec::len);
    ensure!(
        status == 200 && removed == n,
        "the remove answered {status}: {j}"
    );
    let left = labelled_async(group_label(group)).await?;
    ensure!(
        left.is_empty(),
        "{} containers left after the remove",
        left.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Followers
// ---------------------------------------------------------------------------------------------

/// One open follow of a container's log, from now on (`tail` 0), whatever the tool.
enum Follower {
    Channel {
        cp: ControlPlane,
        agent: String,
        rx: StreamRx,
    },
    Sse {
        /// Kept for the connection's life.
        _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        body: Incoming,
        conn: tokio::task::JoinHandle<()>,
        /// Received text not yet cut into events.
        pending: Vec<u8>,
    },
    Docker {
        child: tokio::process::Child,
        out: tokio::process::ChildStdout,
        buf: Vec<u8>,
    },
}

impl Follower {
    async fn open(tool: Tool, ctx: &Ctx, instance: &str) -> Result<Follower> {
        match tool {
            Tool::Channel => {
                let body = RequestBody::LogsFollow(LogsFollow {
                    instance_name: instance.to_owned(),
                    tail: Some(0),
                    since: None,
                    timestamps: None,
                    follow: None,
                    credit: None,
                });
                Ok(Follower::Channel {
                    cp: ctx.cp.clone(),
                    agent: ctx.agent_id.clone(),
                    rx: ctx.cp.request(&ctx.agent_id, body)?,
                })
            }
            Tool::Sse => {
                use hyper::header::{AUTHORIZATION, HOST};
                let tcp = tokio::net::TcpStream::connect(ctx.api.addr).await?;
                tcp.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let req = hyper::Request::builder()
                    .method("GET")
                    .uri(format!("/mcp/servers/{instance}/logs?follow=true&tail=0"))
                    .header(HOST, "127.0.0.1")
                    .header(AUTHORIZATION, format!("Bearer {}", ctx.api.token))
                    .body(Empty::<Bytes>::new())?;
                let resp = sender.send_request(req).await?;
                ensure!(
                    resp.status() == 200,
                    "GET .../logs answered {}",
                    resp.status()
                );
                Ok(Follower::Sse {
                    _sender: sender,
                    body: resp.into_body(),
                    conn,
                    pending: Vec::new(),
                })
            }
            Tool::Docker => {
                let mut child = tokio::process::Command::new("docker")
                    .args(["logs", "-f", "--tail", "0", &container_of(instance)])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    // Its own process group (a Ctrl-C reaches only the bench); killed when
                    // dropped.
                    .process_group(0)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting docker logs -f")?;
                let out = child.stdout.take().context("docker logs: no stdout")?;
                Ok(Follower::Docker {
                    child,
                    out,
                    buf: vec![0; 64 << 10],
                })
            }
        }
    }

    /// The container's stdout bytes that arrived next (possibly none, after an event that
    /// carries no stdout). Fails when the follow ends.
    async fn next(&mut self, into: &mut Vec<u8>) -> Result<()> {
        into.clear();
        match self {
            Follower::Channel { rx, .. } => match rx.recv().await {
                Some(AgentMessage::Output(o)) => {
                    if o.fd == Fd::Stdout {
                        *into = output_bytes(&o);
                    }
                    Ok(())
                }
                Some(AgentMessage::Progress(_)) => Ok(()),
                Some(other) => bail!("the follow ended: {other:?}"),
                None => bail!("the follow's stream closed"),
            },
            Follower::Sse { body, pending, .. } => {
                let frame = body
                    .frame()
                    .await
                    .context("the SSE response ended")?
                    .context("reading the SSE response")?;
                if let Ok(data) = frame.into_data() {
                    pending.extend_from_slice(&data);
                }
                sse_stdout(pending, into)
            }
            Follower::Docker { out, buf, .. } => {
                let n = out.read(buf).await?;
                ensure!(n > 0, "docker logs -f ended");
                into.extend_from_slice(&buf[..n]);
                Ok(())
            }
        }
    }

    /// Stop following: `cancel` over the channel (and its end read), the connection dropped,
    /// the process killed.
    async fn close(self) -> Result<()> {
        match self {
            Follower::Channel { cp, agent, mut rx } => {
                let target = rx.id().to_owned();
                cp.request(&agent, RequestBody::Cancel(Cancel { target }))?;
                let end = tokio::time::timeout(Duration::from_secs(30), async {
                    loop {
                        match rx.recv().await {
                            Some(AgentMessage::Result(r)) => return Ok(r.data),
                            Some(AgentMessage::Error(e)) => bail!("{:?}: {}", e.code, e.message),
                            Some(_) => {}
                            None => bail!("the stream closed without a result"),
                        }
                    }
                })
                .await
                .map_err(|_| anyhow!("no result within 30 s of the cancel"))??;
                ensure!(
                    end["reason"] == "cancelled",
                    "the cancelled follow ended with {end}"
                );
                Ok(())
            }
            Follower::Sse {
                _sender,
                body,
                conn,
                ..
            } => {
                drop((body, _sender));
                conn.abort();
                Ok(())
            }
            Follower::Docker { mut child, .. } => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Ok(())
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Follower::Docker { child, .. } => child.id(),
            _ => None,
        }
    }
}

fn container_of(instance: &str) -> String {
    dtma::docker::spec::container_name(instance)
}

/// Cut the complete `event:`/`data:` blocks off `pending`; append the text of each `stdout`
/// event to `into`.
fn sse_stdout(pending: &mut Vec<u8>, into: &mut Vec<u8>) -> Result<()> {
    let mut used = 0;
    while let Some(end) = find(&pending[used..], b"\n\n") {
        let block = std::str::from_utf8(&pending[used..used + end]).context("SSE is not UTF-8")?;
        used += end + 2;
        let mut name = "";
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = Some(v.trim());
            }
        }
        match (name, data) {
            ("stdout", Some(d)) => {
                let v: Value = serde_json::from_str(d).context("an SSE data line")?;
                let text = v["data"].as_str().unwrap_or_default();
                ensure!(v["encoding"] == "utf8", "a base64 chunk: {d}");
                into.extend_from_slice(text.as_bytes());
            }
            ("end" | "error", d) => bail!("the follow ended: {name} {}", d.unwrap_or_default()),
            _ => {}
        }
    }
    pending.drain(..used);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Cuts bytes into lines across pieces.
#[derive(Default)]
struct Lines {
    carry: Vec<u8>,
}

impl Lines {
    /// Call `each` with every line that `data` completes (without its newline).
    fn feed(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if self.carry.is_empty() {
                each(&rest[..i]);
            } else {
                self.carry.extend_from_slice(&rest[..i]);
                each(&self.carry);
                self.carry.clear();
            }
            rest = &rest[i + 1..];
        }
        self.carry.extend_from_slice(rest);
    }
}

/// `CLOCK_REALTIME` in Unix nanoseconds, the clock the writer stamps its lines with.
fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The words after `<prefix> ` of a line, when it has that prefix.
fn words<'a>(line: &'a [u8], prefix: &str) -> Option<std::str::SplitAsciiWhitespace<'a>> {
    let rest = line.strip_prefix(prefix.as_bytes())?.strip_prefix(b" ")?;
    Some(std::str::from_utf8(rest).ok()?.split_ascii_whitespace())
}

/// A stamped line `<prefix> <n> <ns>`: its ns.
fn stamp_of(line: &[u8], prefix: &str) -> Option<i128> {
    let mut w = words(line, prefix)?;
    w.next()?.parse::<u64>().ok()?;
    let ns = w.next()?.parse().ok()?;
    w.next().is_none().then_some(ns)
}

// ---------------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------------

const TOOLS: [Tool; 3] = [Tool::Channel, Tool::Sse, Tool::Docker];

async fn latency(ctx: &Ctx, s: &Settings, src: &Source) -> [M<Latency>; 3] {
    let per_block = s.lines.div_ceil(s.blocks);
    let mut got: [Vec<Duration>; 3] = Default::default();
    let mut failed: [Option<String>; 3] = Default::default();
    for b in 0..s.blocks {
        // Who goes first rotates from block to block.
        for k in 0..TOOLS.len() {
            let i = (b + k) % TOOLS.len();
            if failed[i].is_some() {
                continue;
            }
            let need = per_block.min(s.lines - got[i].len());
            eprintln!(
                "bench-logs: latency block {}/{}: {} ({need} lines)",
                b + 1,
                s.blocks,
                TOOLS[i].name()
            );
            let block = tokio::time::timeout(
                STEP_TIMEOUT,
                latency_block(ctx, TOOLS[i], &src.instances[0], &src.prefix, need),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("no {need} lines within {STEP_TIMEOUT:?}")));
            match block {
                Ok(v) => got[i].extend(v),
                Err(e) => failed[i] = Some(format!("{} latency: {e:#}", TOOLS[i].name())),
            }
        }
    }
    let mut out: [M<Latency>; 3] = [not_run(), not_run(), not_run()];
    for i in 0..TOOLS.len() {
        out[i] = match failed[i].take() {
            Some(why) => Err(why),
            None => Ok(Latency::of(std::mem::take(&mut got[i]))),
        };
    }
    out
}

/// Open a follow, take the delays of the next `need` stamped lines written after the follow
/// was seen live (a line arrived), close it.
async fn latency_block(
    ctx: &Ctx,
    tool: Tool,
    instance: &str,
    prefix: &str,
    need: usize,
) -> Result<Vec<Duration>> {
    let mut f = Follower::open(tool, ctx, instance).await?;
    let mut lines = Lines::default();
    let mut chunk = Vec::new();
    let mut live_since: Option<i128> = None;
    let mut got = Vec::with_capacity(need);
    while got.len() < need {
        f.next(&mut chunk).await?;
        let now = realtime_ns();
        lines.feed(&chunk, |line| {
            let Some(at) = stamp_of(line, prefix) else {
                return;
            };
            match live_since {
                // Lines written before the follow was seen live may have waited for it to
                // open; only later ones are timed.
                None => live_since = Some(now),
                Some(live) if at > live && got.len() < need => {
                    got.push(Duration::from_nanos((now - at).max(0) as u64));
                }
                Some(_) => {}
            }
        });
    }
    f.close().await?;
    Ok(got)
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// The rounds of both tools on server `index` of `src`, which writes `line`-byte lines.
async fn throughput(
    ctx: &Ctx,
    s: &Settings,
    src: &Source,
    index: usize,
    line: u64,
    notes: &mut Vec<String>,
) -> [M<Vec<Transfer>>; 2] {
    let tools = [Tool::Channel, Tool::Docker];
    let mut got: [Vec<Transfer>; 2] = Default::default();
    let mut failed: [Option<String>; 2] = Default::default();
    // The container counts its bursts; one per SIGUSR1.
    let mut burst = 0u64;
    for round in 0..=s.rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            if failed[i].is_some() {
                continue;
            }
            burst += 1;
            let what = if round == 0 {
                "warm-up".to_owned()
            } else {
                format!("round {round}/{}", s.rounds)
            };
            eprintln!(
                "bench-logs: throughput, {line}-byte lines, {what}: {} ({} bytes)",
                tools[i].name(),
                s.bytes
            );
            let t = tokio::time::timeout(
                STEP_TIMEOUT,
                follow_burst(ctx, tools[i], src, index, burst, s.bytes, line),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow!(
                    "burst {burst} not received within {STEP_TIMEOUT:?}"
                ))
            });
            match t {
                Ok(t) if round > 0 => {
                    eprintln!(
                        "bench-logs: {:.0} MB/s; {} bytes, {} lines missing, {} repeated{}",
                        mb_per_s(t.received, t.follow),
                        t.received,
                        t.missing,
                        t.repeated,
                        if t.stalled { "; stalled" } else { "" }
                    );
                    got[i].push(t)
                }
                Ok(t) => notes.push(format!(
                    "Throughput warm-up, {line}-byte lines, {}: {}.",
                    tools[i].name(),
                    if t.stalled {
                        "stopped delivering".to_owned()
                    } else {
                        format!("{:.0} MB/s", mb_per_s(t.received, t.follow))
                    }
                )),
                Err(e) => {
                    failed[i] = Some(format!(
                        "{} throughput, {line}-byte lines: {e:#}",
                        tools[i].name()
                    ))
                }
            }
        }
    }
    let mut out: [M<Vec<Transfer>>; 2] = [not_run(), not_run()];
    for i in 0..2 {
        out[i] = match failed[i].take() {
            Some(why) => Err(why),
            None => Ok(std::mem::take(&mut got[i])),
        };
    }
    out
}

/// Attach a follower, wait until it is live (a ticker line arrived), ask the container for
/// burst `k` (SIGUSR1), read to its `done` line.
async fn follow_burst(
    ctx: &Ctx,
    tool: Tool,
    src: &Source,
    index: usize,
    k: u64,
    bytes: u64,
    line_bytes: u64,
) -> Result<Transfer> {
    let container = src.container(index);
    let prefix = src.prefix.as_str();
    let mut f = Follower::open(tool, ctx, &src.instances[index]).await?;
    let mut lines = Lines::default();
    let mut chunk = Vec::new();
    // Live: a ticker line arrived.
    loop {
        f.next(&mut chunk).await?;
        let mut live = false;
        lines.feed(&chunk, |l| live |= stamp_of(l, prefix).is_some());
        if live {
            break;
        }
    }
    let signalled = realtime_ns();
    let out = tokio::process::Command::new("docker")
        .args(["kill", "-s", "USR1", &container])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker kill")?;
    ensure!(
        out.status.success(),
        "docker kill -s USR1 failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let body = format!("{prefix} {k}.");
    let (start, done) = (
        format!("{prefix} start {k} "),
        format!("{prefix} done {k} "),
    );
    let mut received = 0u64;
    let mut seq = Sequence::default();
    let mut started: Option<i128> = None;
    let mut seen_body = false;
    // The arrival of the `done` line (and its stamp), or of the first ticker line written after
    // the burst: Docker may drop the `done` line with the rest of a rotated file, and the
    // ticker cannot write during a burst (the burst holds stdout's lock, and a line's stamp is
    // read under it), so a ticker line stamped after the burst's start follows its end.
    let mut ended: Option<(Option<i128>, i128)> = None;
    let mut stalled = false;
    while ended.is_none() {
        if let Ok(next) = tokio::time::timeout(STALL, f.next(&mut chunk)).await {
            next?;
        } else {
            // Nothing for a while: if the burst is over, this follow stopped delivering.
            if let Some(ns) = done_stamp(&container, &done).await {
                stalled = true;
                ended = Some((Some(ns), realtime_ns()));
            }
            continue;
        }
        let now = realtime_ns();
        lines.feed(&chunk, |l| {
            if let Some(rest) = l.strip_prefix(body.as_bytes()) {
                received += l.len() as u64 + 1;
                seen_body = true;
                seq.see(rest);
            } else if let Some(ns) = l.strip_prefix(start.as_bytes()) {
                started = std::str::from_utf8(ns).ok().and_then(|n| n.parse().ok());
            } else if let Some(rest) = l.strip_prefix(done.as_bytes()) {
                let ns = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|r| r.split(' ').nth(1)?.parse().ok());
                ended = ended.or(Some((ns, now)));
            } else if let Some(ns) = stamp_of(l, prefix)
                && seen_body
                && ns > started.unwrap_or(signalled)
            {
                ended = ended.or(Some((None, now)));
            }
        });
    }
    f.close().await?;
    let Some((done_ns, arrived)) = ended else {
        bail!("burst {k}: no end seen");
    };
    let done_ns = match done_ns {
        Some(ns) => Some(ns),
        None => done_stamp(&container, &done).await,
    };
    seq.end(bytes.div_ceil(line_bytes));
    // Without the `start` line (lost the same way), from the signal: a little earlier.
    let start_ns = started.unwrap_or(signalled);
    let span = |a: i128, b: i128| Duration::from_nanos((b - a).max(0) as u64);
    Ok(Transfer {
        follow: span(start_ns, arrived),
        writer: done_ns.map(|d| span(start_ns, d)),
        received,
        missing: seq.missing,
        repeated: seq.repeated,
        start_lost: started.is_none(),
        done_lost: !matches!(ended, Some((Some(_), _))),
        stalled,
    })
}

/// The `done` stamp read back from the end of the container's log (`docker logs --tail`), for
/// a follower that never got the line.
async fn done_stamp(container: &str, done: &str) -> Option<i128> {
    let out = tokio::process::Command::new("docker")
        .args(["logs", "--tail", "100", container])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(done)?.split(' ').nth(1)?.parse().ok())
}

/// Checks that a burst's numbered lines arrive once each, in order.
#[derive(Default)]
struct Sequence {
    /// The next line number expected (from 1).
    next: u64,
    missing: u64,
    repeated: u64,
}

impl Sequence {
    /// `rest`: a burst line after `<prefix> <k>.`, i.e. `<n> xxx...`.
    fn see(&mut self, rest: &[u8]) {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let Some(n) = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
        else {
            self.missing += 1;
            return;
        };
        let next = self.next.max(1);
        if n < next {
            self.repeated += 1;
        } else {
            self.missing += n - next;
            self.next = n + 1;
        }
    }

    /// The burst had `lines` lines.
    fn end(&mut self, lines: u64) {
        self.missing += (lines + 1).saturating_sub(self.next.max(1));
    }
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// Memory with many follows
// ---------------------------------------------------------------------------------------------

async fn memory(ctx: &Ctx, s: &Settings, src: &Source) -> [M<Held>; 2] {
    let mut out: [M<Held>; 2] = [not_run(), not_run()];
    for (i, tool) in [Tool::Channel, Tool::Docker].into_iter().enumerate() {
        eprintln!(
            "bench-logs: {} follows at once: {}",
            src.instances.len(),
            tool.name()
        );
        out[i] = tokio::time::timeout(STEP_TIMEOUT, hold_many(ctx, s, src, tool))
            .await
            .unwrap_or_else(|_| Err(anyhow!("did not finish within {STEP_TIMEOUT:?}")))
            .map_err(|e| format!("{} with many follows: {e:#}", tool.name()));
    }
    out
}

/// Follow every container of `src` with `tool` at once; once each delivered a line, sample
/// the memory of the follower processes (the agent, or the `docker logs` processes).
async fn hold_many(ctx: &Ctx, s: &Settings, src: &Source, tool: Tool) -> Result<Held> {
    let before_kib = (tool == Tool::Channel)
        .then(|| support_vm(ctx.agent_pid, "VmRSS:"))
        .flatten();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let lines = Arc::new(AtomicU64::new(0));
    let (live_tx, mut live_rx) = tokio::sync::mpsc::unbounded_channel::<Option<u32>>();
    let mut tasks = Vec::new();
    for instance in &src.instances {
        let mut f = Follower::open(tool, ctx, instance).await?;
        let (stop, lines, live_tx) = (stop.clone(), lines.clone(), live_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut chunk = Vec::new();
            let mut first = true;
            let read = async {
                loop {
                    f.next(&mut chunk).await?;
                    let n = chunk.iter().filter(|b| **b == b'\n').count() as u64;
                    if n > 0 && first {
                        first = false;
                        let _ = live_tx.send(f.pid());
                    }
                    lines.fetch_add(n, Ordering::Relaxed);
                }
            };
            let r: Result<()> = tokio::select! {
                r = read => r,
                _ = stop.cancelled() => Ok(()),
            };
            let closed = f.close().await;
            r.and(closed)
        }));
    }
    drop(live_tx);
    // Stop every follow however this ends.
    let _stop = stop.clone().drop_guard();
    let (mut pids, mut live) = (Vec::new(), 0);
    while live < tasks.len() {
        match live_rx.recv().await {
            Some(pid) => {
                live += 1;
                pids.extend(pid);
            }
            None => break,
        }
    }
    if live < tasks.len() {
        stop.cancel();
        for t in tasks {
            t.await??;
        }
        bail!("{live} of {} follows delivered a line", src.instances.len());
    }
    let attach = started.elapsed();
    let procs: Vec<u32> = match tool {
        Tool::Docker => pids,
        _ => vec![ctx.agent_pid],
    };
    let (cpu0, lines0, t0) = (
        cpu_secs(&procs),
        lines.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut peak = 0;
    while t0.elapsed() < s.sample {
        let sum: u64 = procs.iter().filter_map(|p| support_vm(*p, "VmRSS:")).sum();
        peak = peak.max(sum);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = (cpu_secs(&procs) - cpu0) / window;
    let lines_per_s = (lines.load(Ordering::Relaxed) - lines0) as f64 / window;
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    ensure!(peak > 0, "cannot read VmRSS");
    Ok(Held {
        peak_kib: peak,
        before_kib,
        cpu,
        lines_per_s,
        attach,
    })
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), in KiB.
fn support_vm(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
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

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

struct Report {
    table: String,
    notes: Vec<String>,
    facts: Vec<(String, String)>,
    when: String,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 * 1024.0 / 1e6)
}

fn render(s: &Settings, r: &Results, load: &str) -> Report {
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "unknown",
    };
    let lat = |m: &M<Latency>, pick: fn(&Latency) -> Duration| {
        m.as_ref()
            .map_or_else(|_| "n/a".to_owned(), |l| ms(pick(l)))
    };
    let [ch, sse, dk] = &r.latency;
    let mut rows: Vec<[String; 4]> = Vec::new();
    let gap = match (ch, dk) {
        (Ok(a), Ok(b)) => Some(a.p50.as_secs_f64() - b.p50.as_secs_f64()),
        _ => None,
    };
    rows.push([
        format!(
            "log follow latency p50, write in the container to arrival, {} lines (dtma: channel \
             through the control plane)",
            s.lines
        ),
        lat(ch, |l| l.p50),
        lat(dk, |l| l.p50),
        format!(
            "p50 within 5 ms of docker logs -f: {}{}",
            verdict(gap.map(|g| g <= 0.005)),
            gap.map_or(String::new(), |g| format!(" ({:+.2} ms)", g * 1e3))
        ),
    ]);
    rows.push([
        "log follow latency p99 (same lines)".into(),
        lat(ch, |l| l.p99),
        lat(dk, |l| l.p99),
        "-".into(),
    ]);
    rows.push([
        format!(
            "log follow latency p50 / p99 over the local API (SSE), {} lines",
            s.lines
        ),
        match sse {
            Ok(l) => format!("{} / {}", ms(l.p50), ms(l.p99)),
            Err(_) => "n/a".into(),
        },
        "-".into(),
        "-".into(),
    ]);
    let tp = |m: &M<Vec<Transfer>>| match m {
        Ok(v) if !v.is_empty() => {
            let mut rates: Vec<f64> = v
                .iter()
                .filter(|t| !t.stalled)
                .map(|t| mb_per_s(t.received, t.follow))
                .collect();
            if rates.is_empty() {
                return "n/a (stalled)".into();
            }
            rates.sort_by(f64::total_cmp);
            let med = rates[rates.len() / 2];
            if rates.len() < 2 {
                format!("{med:.0} MB/s")
            } else {
                format!(
                    "{med:.0} MB/s ({:.0}-{:.0})",
                    rates[0],
                    rates[rates.len() - 1]
                )
            }
        }
        _ => "n/a".into(),
    };
    for (line, [a, b]) in &r.throughput {
        rows.push([
            format!(
                "log follow throughput, a container writing {} MB in {line}-byte lines (dtma: \
                 channel)",
                s.bytes as f64 / 1e6,
            ),
            tp(a),
            tp(b),
            "-".into(),
        ]);
    }
    let [mem_dtma, mem_docker] = &r.memory;
    rows.push([
        format!(
            "RSS following {} containers at once (dtma: the agent; docker: {} `docker logs -f` \
             processes, summed)",
            s.follows, s.follows
        ),
        mem_dtma
            .as_ref()
            .map_or_else(|_| "n/a".into(), |h| mb(h.peak_kib)),
        mem_docker
            .as_ref()
            .map_or_else(|_| "n/a".into(), |h| mb(h.peak_kib)),
        format!(
            "< 60 MB: {}",
            verdict(
                mem_dtma
                    .as_ref()
                    .ok()
                    .map(|h| (h.peak_kib as f64 * 1024.0) < 60e6)
            )
        ),
    ]);

    let header = ["measurement", "dtma", "docker logs -f", "target"];
    let mut table = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    table.push_str(&line(&header.map(String::from)));
    table.push_str(&line(&header.map(|_| "---".to_owned())));
    for row in &rows {
        table.push_str(&line(row));
    }

    let mut notes = Vec::new();
    if ch.is_ok() || dk.is_ok() || sse.is_ok() {
        let maxes: Vec<String> = TOOLS
            .iter()
            .zip(&r.latency)
            .filter_map(|(t, m)| {
                let l = m.as_ref().ok()?;
                Some(format!("{} {} ({} lines)", t.name(), ms(l.max), l.runs))
            })
            .collect();
        notes.push(format!(
            "Latency: the test server prints `<prefix> <n> <ns>` every {} ms, `<ns>` its \
             `CLOCK_REALTIME` just before the write; the delay is `CLOCK_REALTIME` in the bench \
             when the piece of output that completes the line arrives, minus `<ns>` (one host, \
             one clock). Each tool follows the same container from now on (`tail` 0) in {} \
             blocks, taking turns (who goes first rotates); in each block only lines written \
             after the follow delivered its first line count. The path measured: the \
             container's stdout, Docker's json-file log, Docker's log API, then the agent, its \
             channel and the control plane's decoding (or the agent's SSE response, read with \
             hyper), or the docker CLI and a pipe. Worst single line: {}.",
            s.every_ms,
            s.blocks,
            maxes.join(", ")
        ));
    }
    let writer = |m: &M<Vec<Transfer>>| -> Option<String> {
        let v = m.as_ref().ok()?;
        let mut w: Vec<f64> = v
            .iter()
            .filter_map(|t| Some(mb_per_s(s.bytes, t.writer?)))
            .collect();
        w.sort_by(f64::total_cmp);
        Some(format!("{:.0}", w.get(w.len() / 2)?))
    };
    if !r.throughput.is_empty() {
        notes.push(format!(
            "Throughput: on SIGUSR1 (`docker kill -s USR1`) the test server writes a `start` \
             stamp, {} bytes of numbered lines as fast as its stdout takes them, and a `done` \
             stamp; a round is timed from the `start` stamp to the arrival of the `done` line, \
             the follower having been seen live before the signal. MB/s: the bytes of the \
             burst's lines that arrived (repeats included) over that time, 1 MB = 10^6 bytes. \
             One warm-up burst per tool, then {} rounds each, alternating; median (min-max). \
             The writer cannot outrun Docker's log pipeline (its stdout blocks), so no \
             follower is faster than Docker's intake, shown below. The agent's containers log \
             to json-file files of 10 MB (3 kept), so a burst rotates the log many times; \
             Docker (20.10) ends a follower's read of the old file at each rotation and goes \
             on from the start of the new one, so a follower that is behind at that moment \
             loses the rest of the old file (and Docker sends some lines twice): both tools \
             read the same API, and both lose lines, as shown per round below.",
            s.bytes, s.rounds
        ));
    }
    for (line, [a, b]) in &r.throughput {
        let integrity = |m: &M<Vec<Transfer>>| -> Option<String> {
            let v = m.as_ref().ok()?;
            let lines = s.bytes.div_ceil(*line) as f64;
            let rounds: Vec<String> = v
                .iter()
                .map(|t| {
                    if t.stalled {
                        return format!(
                            "stopped delivering ({:.1}% of the burst's bytes had arrived)",
                            t.received as f64 * 100.0 / s.bytes as f64
                        );
                    }
                    format!(
                        "{:.1}% lost, {:.1}% repeated{}{}",
                        t.missing as f64 * 100.0 / lines,
                        t.repeated as f64 * 100.0 / lines,
                        if t.start_lost {
                            " (`start` line lost: timed from the signal)"
                        } else {
                            ""
                        },
                        if t.done_lost {
                            " (`done` line lost: timed to the next ticker line)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            Some(rounds.join("; "))
        };
        if let (Some(wa), Some(wb), Some(ia), Some(ib)) =
            (writer(a), writer(b), integrity(a), integrity(b))
        {
            notes.push(format!(
                "{line}-byte lines: Docker took the burst in at a median {wa} MB/s in the dtma \
                 rounds and {wb} MB/s in the docker logs rounds (`start` to `done` stamp). Lines \
                 of the burst per round, dtma: {ia}; docker logs -f: {ib}."
            ));
        }
    }
    if let (Ok(a), Ok(b)) = (mem_dtma, mem_docker) {
        notes.push(format!(
            "Memory: {n} containers each print a line every {RSS_EVERY_MS} ms (every 10th also \
             to stderr); the agent follows all of them over the channel (`logs_follow`, `tail` \
             0), then, separately, {n} `docker logs -f --tail 0` processes do, read by this \
             process. Once every follow delivered a line (after {:.1} s and {:.1} s), VmRSS is \
             sampled every 100 ms for {} s, peak shown (the docker column sums the {n} \
             processes, shared pages counted in each). Agent VmRSS before the follows: {}; \
             VmHWM at the end of the run (after the throughput rounds too): {}. In the window \
             the agent delivered {:.0} lines/s using {:.0}% of one core; the docker CLIs \
             {:.0} lines/s using {:.0}%.",
            a.attach.as_secs_f64(),
            b.attach.as_secs_f64(),
            s.sample.as_secs(),
            a.before_kib.map_or("unknown".into(), mb),
            r.agent_hwm.map_or("unknown".into(), mb),
            a.lines_per_s,
            a.cpu * 100.0,
            b.lines_per_s,
            b.cpu * 100.0,
            n = s.follows,
        ));
    }
    for m in r.latency.iter().filter_map(|m| m.as_ref().err()) {
        notes.push(format!("n/a: {m}"));
    }
    for m in r
        .throughput
        .iter()
        .flat_map(|t| &t.1)
        .filter_map(|m| m.as_ref().err())
    {
        notes.push(format!("n/a: {m}"));
    }
    for m in r.memory.iter().filter_map(|m| m.as_ref().err()) {
        notes.push(format!("n/a: {m}"));
    }
    notes.push(format!(
        "CPU busy (both cores, everything on the machine) during each part: {}.",
        r.busy.join("; ")
    ));
    notes.extend(r.notes.iter().cloned());

    let mut facts = support::machine_facts();
    facts.extend(r.facts.iter().cloned());
    facts.push((
        "load average (1, 5, 15 min) at start".into(),
        load.to_owned(),
    ));
    Report {
        table: table.trim_end().to_owned(),
        notes,
        facts,
        when: dtma::now_rfc3339(),
    }
}

const BEGIN: &str =
    "<!-- bench-logs:results:begin (generated by examples/bench_logs.rs; do not edit) -->";
const END: &str = "<!-- bench-logs:results:end -->";

fn write_markdown(path: &Path, report: &Report) -> Result<()> {
    let section = support::results_section(
        BEGIN,
        END,
        &format!("Run of {} (`bash deploy/bench-logs.sh`):", report.when),
        &report.table,
        &report.notes,
        &report.facts,
    );
    support::replace_section(
        path,
        BEGIN,
        END,
        "## Log follow (dtma vs docker logs -f)",
        &section,
    )
}
