//! Benchmark: a group of MCP servers deployed by the `dtma` agent next to the same servers
//! deployed by docker-compose, in one run, printed as one table.
//!
//! Run it with `bash deploy/bench-mcp.sh` (installs docker-compose and busybox-static when
//! missing, builds `dtma`, `dtma-test-mcp` and this example in release mode first). It needs a
//! running Docker daemon, as `.ci/test.sh` starts it.
//!
//! - The image is the test image (`deploy/test-image.sh`: the test MCP server
//!   `tests/support/mcp_server.rs` with busybox, imported from local files, no registry).
//! - The agent is the real `target/release/dtma`, a child process in local-only mode (no
//!   channel) with `DTMA_MCP_NETWORK=host`, driven over its local HTTP API: `POST /mcp/groups`,
//!   the same body again, `DELETE /mcp/groups/:id`.
//! - docker-compose gets an equivalent compose file (same image, environment, host network,
//!   memory, CPU and pids limits, restart policy, capabilities, security options, log options)
//!   and runs `up -d`, `up -d` again, `down`.
//! - Each of the `BENCH_SERVERS` (10) servers binds its own free port on 127.0.0.1 (`MCP_PORT`).
//!   The agent's deploy returns when every server answered an MCP handshake; `docker-compose
//!   up -d` waits for nothing, so its rounds also time `up -d` plus a loop that probes every
//!   server with the agent's own probe (`dtma::docker::ready::probe`) until all answered.
//! - `BENCH_ROUNDS` (5) measured rounds per tool, interleaved (the first tool alternates), after
//!   one warm-up round each; the median and the range are reported. `BENCH_SERIAL_ROUNDS` (3;
//!   0 skips) more agent deploys with `maxConcurrentDeployments` 1, the agent's default.
//!
//! Options (environment): `BENCH_SERVERS`, `BENCH_ROUNDS`, `BENCH_SERIAL_ROUNDS`, `DTMA_BIN`
//! (default: `dtma` next to this example's directory), `BENCH_MCP_SERVER` (the test server
//! binary put in the image; default `dtma-test-mcp` next to `dtma`), `BENCH_COMPOSE` (default
//! `docker-compose`). `--write FILE` replaces the generated section of FILE (between the
//! `bench-mcp:results` markers) with this run's results.
//!
//! Everything started here (the agent, docker-compose, every container of the agent's groups
//! and of the compose projects, a created container that keeps the image from being tidied
//! away mid-run) is stopped and removed, and the temporary directory deleted, at
//! the end, on error and on Ctrl-C. No network is created: every container uses the host's.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

#[path = "support/mcp.rs"]
mod mcp;
mod support;
use mcp::{
    Api, Reaper, STEP_TIMEOUT, free_ports, group_label, labelled_async, pinned_image,
    remove_labelled, start_agent,
};
use support::machine_ticks;

/// The test server's mode: the 2025-11-25 revision (`initialize` handshake, sessions), which
/// the probe reaches after `server/discover` is refused, as with most servers deployed today.
const MODE: &str = "legacy";
const MEMORY: &str = "64m";
const CPUS: f64 = 0.5;
/// The agent's default, written into the compose file too.
const PIDS: u32 = 256;
const ENDPOINT: &str = "/mcp";
/// How often the compose rounds' wait loop probes a server that is not ready yet (the agent's
/// own interval is 200 ms; a tighter loop favours docker-compose).
const POLL: Duration = Duration::from_millis(50);
/// One probe's limit, as the agent's.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Settings, results
// ---------------------------------------------------------------------------------------------

struct Settings {
    servers: usize,
    rounds: usize,
    serial_rounds: usize,
    write: Option<PathBuf>,
    dtma_bin: PathBuf,
    server_bin: PathBuf,
    compose: String,
}

impl Settings {
    fn load() -> Result<Settings> {
        fn num(var: &str, default: usize, min: usize, max: usize) -> Result<usize> {
            Ok(support::env_num(var, default as u64, min as u64, max as u64)? as usize)
        }
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
        Ok(Settings {
            // A group holds at most 50 servers; maxConcurrentDeployments is at most 16.
            servers: num("BENCH_SERVERS", 10, 1, 16)?,
            rounds: num("BENCH_ROUNDS", 5, 1, 100)?,
            serial_rounds: num("BENCH_SERIAL_ROUNDS", 3, 0, 100)?,
            write,
            dtma_bin,
            server_bin,
            compose: std::env::var("BENCH_COMPOSE")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "docker-compose".into()),
        })
    }
}

/// A measurement, or why it is missing.
type M<T> = Result<T, String>;

/// The times of one measurement over several rounds.
#[derive(Clone, Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
    /// The middle run (of an even count, the upper of the two middle ones).
    fn median(&self) -> Duration {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }
    fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }
}

/// Each measurement's samples; `Err` says why it is missing (the rounds of that tool stop at
/// their first failure).
struct Results {
    dtma_deploy: M<Samples>,
    dtma_redeploy: M<Samples>,
    dtma_remove: M<Samples>,
    dtma_serial: M<Samples>,
    compose_up: M<Samples>,
    compose_up_ready: M<Samples>,
    compose_redeploy: M<Samples>,
    compose_down: M<Samples>,
    compose_startup: M<Samples>,
    notes: Vec<String>,
    /// Docker and docker-compose versions, for the machine facts.
    facts: Vec<(String, String)>,
    /// CPU busy over the measured rounds, and the load average after them.
    busy: String,
}

impl Default for Results {
    fn default() -> Self {
        let nr = || Err("not run".to_owned());
        Results {
            dtma_deploy: nr(),
            dtma_redeploy: nr(),
            dtma_remove: nr(),
            dtma_serial: nr(),
            compose_up: nr(),
            compose_up_ready: nr(),
            compose_redeploy: nr(),
            compose_down: nr(),
            compose_startup: nr(),
            notes: Vec::new(),
            facts: Vec::new(),
            busy: "unknown".into(),
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
    let reaper = Arc::new(Reaper::new("dtma-bench-mcp")?);
    let mut results = Results::default();
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
            eprintln!("bench-mcp: wrote the results into {}", path.display());
        }
        (Some(path), Err(_)) => {
            eprintln!(
                "bench-mcp: the run ended early; {} left as it was",
                path.display()
            );
        }
        (None, _) => {}
    }
    outcome?;
    ensure!(
        [
            &results.dtma_deploy,
            &results.dtma_redeploy,
            &results.dtma_remove
        ]
        .iter()
        .all(|m| m.is_ok()),
        "some dtma measurements failed (see the notes)"
    );
    Ok(())
}

/// Names of one round's deployment: the agent's group and instances, or a compose project.
struct Round {
    group: String,
    instances: Vec<String>,
}

impl Round {
    fn new(run_id: &str, what: &str, n: usize, servers: usize) -> Round {
        let group = format!("bench-{run_id}-{what}{n}");
        let instances = (1..=servers)
            .map(|i| format!("bench-{run_id}-{what}{n}-s{i:02}"))
            .collect();
        Round { group, instances }
    }
}

async fn run(s: &Settings, reaper: &Arc<Reaper>, r: &mut Results) -> Result<()> {
    let compose_version = support::version(&s.compose, &["version", "--short"]);
    r.facts = vec![
        (
            "Docker".into(),
            support::version("docker", &["version", "--format", "{{.Server.Version}}"]),
        ),
        ("docker-compose".into(), compose_version.clone()),
    ];

    let run_id = format!("{:06x}", fastrand::u32(..0x100_0000));
    eprintln!("bench-mcp: the test image (deploy/test-image.sh)");
    let image = pinned_image(&s.server_bin, reaper, &run_id).await?;
    r.facts.push(("image".into(), image.clone()));
    let ports = free_ports(s.servers)?;

    let token = format!("bench-{:016x}", fastrand::u64(..));
    let agent_id = format!("bench-mcp-{run_id}");
    let api = Api {
        addr: start_agent(&s.dtma_bin, reaper, &agent_id, &token, &[]).await?,
        token,
    };
    eprintln!("bench-mcp: agent's local API on {}", api.addr);

    let compose = Compose {
        program: s.compose.clone(),
        file: reaper.dir.join("docker-compose.yml"),
        log: reaper.dir.join("docker-compose.log"),
    };
    std::fs::write(&compose.file, compose_file(&image, &ports))?;
    let compose_ok = compose_version != "not installed";
    if !compose_ok {
        let why = format!("`{}` is not installed", s.compose);
        r.compose_up = Err(why.clone());
        r.compose_up_ready = Err(why.clone());
        r.compose_redeploy = Err(why.clone());
        r.compose_down = Err(why.clone());
        r.compose_startup = Err(why);
    }

    // Warm-up: page cache, Docker's image and layer metadata, docker-compose's Python modules.
    eprintln!("bench-mcp: warm-up round of each");
    let warm = Round::new(&run_id, "w", 0, s.servers);
    reaper.track(group_label(&warm.group));
    dtma_round(
        &api,
        &group_body(&warm, &image, &ports, s.servers),
        &warm,
        &ports,
    )
    .await
    .context("the agent's warm-up round")?;
    let mut compose_failed: Option<String> = None;
    if compose_ok {
        reaper.track(project_label(&warm.group));
        if let Err(e) = compose_round(&compose, &warm.group, &ports).await {
            compose_failed = Some(format!("docker-compose's warm-up round failed: {e:#}"));
        }
    }

    let machine_before = machine_ticks();
    let (mut dd, mut dr, mut dx) = (Samples::default(), Samples::default(), Samples::default());
    let (mut cu, mut cr, mut cd, mut cx) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut dtma_failed: Option<String> = None;
    for n in 1..=s.rounds {
        // Alternate who goes first, so that a slow spell of the machine is shared.
        for turn in 0..2 {
            let dtma_turn = (n + turn) % 2 == 0;
            if dtma_turn && dtma_failed.is_none() {
                eprintln!("bench-mcp: round {n}/{}: dtma", s.rounds);
                let round = Round::new(&run_id, "d", n, s.servers);
                reaper.track(group_label(&round.group));
                match dtma_round(
                    &api,
                    &group_body(&round, &image, &ports, s.servers),
                    &round,
                    &ports,
                )
                .await
                {
                    Ok(t) => {
                        dd.0.push(t.deploy);
                        dr.0.push(t.redeploy);
                        dx.0.push(t.remove);
                    }
                    Err(e) => {
                        dtma_failed = Some(format!("round {n}: {e:#}"));
                        let _ = tokio::task::spawn_blocking({
                            let label = group_label(&round.group);
                            move || remove_labelled(&label)
                        })
                        .await;
                    }
                }
            } else if !dtma_turn && compose_ok && compose_failed.is_none() {
                eprintln!("bench-mcp: round {n}/{}: docker-compose", s.rounds);
                let project = Round::new(&run_id, "c", n, s.servers).group;
                reaper.track(project_label(&project));
                match compose_round(&compose, &project, &ports).await {
                    Ok(t) => {
                        cu.0.push(t.up);
                        cx.0.push(t.up_ready);
                        cr.0.push(t.redeploy);
                        cd.0.push(t.down);
                    }
                    Err(e) => {
                        compose_failed = Some(format!("round {n}: {e:#}"));
                        let _ = tokio::task::spawn_blocking({
                            let label = project_label(&project);
                            move || remove_labelled(&label)
                        })
                        .await;
                    }
                }
            }
        }
    }
    let fill = |samples: Samples, failed: &Option<String>| match failed {
        Some(why) => Err(why.clone()),
        None => Ok(samples),
    };
    r.dtma_deploy = fill(dd, &dtma_failed);
    r.dtma_redeploy = fill(dr, &dtma_failed);
    r.dtma_remove = fill(dx, &dtma_failed);
    if compose_ok {
        r.compose_up = fill(cu, &compose_failed);
        r.compose_up_ready = fill(cx, &compose_failed);
        r.compose_redeploy = fill(cr, &compose_failed);
        r.compose_down = fill(cd, &compose_failed);
    }

    // The agent's default: one server at a time.
    let mut serial = Samples::default();
    let mut serial_failed = None;
    for n in 1..=s.serial_rounds {
        eprintln!(
            "bench-mcp: dtma with maxConcurrentDeployments 1, {n}/{}",
            s.serial_rounds
        );
        let round = Round::new(&run_id, "s", n, s.servers);
        reaper.track(group_label(&round.group));
        match dtma_deploy_only(&api, &group_body(&round, &image, &ports, 1), &round, &ports).await {
            Ok(t) => serial.0.push(t),
            Err(e) => {
                serial_failed = Some(format!("round {n}: {e:#}"));
                let label = group_label(&round.group);
                let _ = tokio::task::spawn_blocking(move || remove_labelled(&label)).await;
                break;
            }
        }
    }
    r.dtma_serial = if s.serial_rounds == 0 {
        Err("skipped (BENCH_SERIAL_ROUNDS=0)".into())
    } else {
        fill(serial, &serial_failed)
    };
    r.busy = format!(
        "{} (load average after: {})",
        support::busy_between(machine_before, machine_ticks()),
        support::load_average()
    );

    // How much of a docker-compose command is its own start-up (Python, imports).
    if compose_ok {
        let mut startup = Samples::default();
        for _ in 0..s.rounds {
            let t = Instant::now();
            compose.run(&["version", "--short"]).await?;
            startup.0.push(t.elapsed());
        }
        r.compose_startup = Ok(startup);
    }
    Ok(())
}

/// The backend's deploy body: one server per port, `concurrency` of them started at once.
fn group_body(round: &Round, image: &str, ports: &[u16], concurrency: usize) -> Value {
    let servers: Vec<Value> = round
        .instances
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            json!({
                "accountToolInstanceId": format!("ati-{name}"),
                "dockerImageUrl": image,
                "instanceNameOnToolbox": name,
                "mcpEndpointPath": ENDPOINT,
                "mcpTransportType": "http",
                "portBindings": { format!("{port}/tcp"): port },
                "environmentVariables": { "MCP_PORT": port.to_string(), "MCP_MODE": MODE },
                "resourceLimits": { "memory": MEMORY, "cpu": CPUS, "pids": PIDS },
                "readinessTimeoutMs": 60_000,
            })
        })
        .collect();
    json!({
        "groupId": round.group,
        "servers": servers,
        "options": { "maxConcurrentDeployments": concurrency },
    })
}

struct DtmaTimes {
    deploy: Duration,
    redeploy: Duration,
    remove: Duration,
}

/// Deploy, deploy the same body again, remove; each step checked, outside the timed part.
async fn dtma_round(api: &Api, body: &Value, round: &Round, ports: &[u16]) -> Result<DtmaTimes> {
    let deploy = dtma_deploy(api, body, round, ports).await?;

    let t = Instant::now();
    let (status, j) = api.call("POST", "/mcp/groups", Some(body)).await?;
    let redeploy = t.elapsed();
    ensure!(
        status == 200 && j["outcome"] == "unchanged",
        "the unchanged redeploy answered {status}: {j}"
    );

    let remove = dtma_remove(api, round).await?;
    Ok(DtmaTimes {
        deploy,
        redeploy,
        remove,
    })
}

/// A deploy timed, then removed untimed.
async fn dtma_deploy_only(
    api: &Api,
    body: &Value,
    round: &Round,
    ports: &[u16],
) -> Result<Duration> {
    let deploy = dtma_deploy(api, body, round, ports).await?;
    dtma_remove(api, round).await?;
    Ok(deploy)
}

async fn dtma_deploy(api: &Api, body: &Value, round: &Round, ports: &[u16]) -> Result<Duration> {
    let t = Instant::now();
    let (status, j) = api.call("POST", "/mcp/groups", Some(body)).await?;
    let took = t.elapsed();
    ensure!(
        status == 200 && j["outcome"] == "deployed",
        "the deploy answered {status}: {j}"
    );
    let ready = j["servers"]
        .as_array()
        .map_or(0, |v| v.iter().filter(|s| s["state"] == "ready").count());
    ensure!(
        ready == round.instances.len(),
        "{ready} of {} servers ready: {j}",
        round.instances.len()
    );
    // The agent's word checked independently: every server answers now.
    wait_all_ready(ports, Duration::from_secs(5))
        .await
        .context("a server the agent reported ready does not answer")?;
    Ok(took)
}

async fn dtma_remove(api: &Api, round: &Round) -> Result<Duration> {
    let t = Instant::now();
    let (status, j) = api
        .call("DELETE", &format!("/mcp/groups/{}", round.group), None)
        .await?;
    let took = t.elapsed();
    let removed = j["removed"].as_array().map_or(0, Vec::len);
    ensure!(
        status == 200 && removed == round.instances.len(),
        "the remove answered {status}: {j}"
    );
    let left = labelled_async(group_label(&round.group)).await?;
    ensure!(
        left.is_empty(),
        "{} containers left after the remove",
        left.len()
    );
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// docker-compose
// ---------------------------------------------------------------------------------------------

struct Compose {
    program: String,
    file: PathBuf,
    /// Everything docker-compose prints, appended (it reports progress on stderr).
    log: PathBuf,
}

impl Compose {
    /// Run `docker-compose ARGS` to its end; fail with the end of its output.
    async fn run(&self, args: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group (a Ctrl-C reaches only the bench); killed if the bench
            // drops the run (interrupted).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.program))?;
        let status = match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "`{} {}` did not end within {STEP_TIMEOUT:?}",
                    self.program,
                    args.join(" ")
                );
            }
        };
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "`{} {}` failed ({status}): {}",
                self.program,
                args.join(" "),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(())
    }

    async fn project(&self, project: &str, args: &[&str]) -> Result<()> {
        let file = self.file.to_string_lossy().into_owned();
        let mut full = vec!["-p", project, "-f", file.as_str()];
        full.extend_from_slice(args);
        self.run(&full).await
    }
}

fn project_label(project: &str) -> String {
    format!("com.docker.compose.project={project}")
}

/// The compose file: the agent's container settings for each server, written out.
fn compose_file(image: &str, ports: &[u16]) -> String {
    let mut f = String::from(
        "# Written by examples/bench_mcp.rs: the servers the agent deploys, with the same\n\
         # container settings (src/docker/containers.rs).\nversion: \"2.4\"\nservices:\n",
    );
    for (i, port) in ports.iter().enumerate() {
        let _ = write!(
            f,
            "  s{n:02}:\n    image: {image}\n    environment:\n      MCP_PORT: \"{port}\"\n      \
             MCP_MODE: {MODE}\n    network_mode: host\n    mem_limit: {MEMORY}\n    cpus: {CPUS}\n    \
             pids_limit: {PIDS}\n    restart: unless-stopped\n    cap_drop: [ALL]\n    \
             security_opt: [\"no-new-privileges:true\"]\n    logging:\n      driver: json-file\n      \
             options:\n        max-size: 10m\n        max-file: \"3\"\n",
            n = i + 1
        );
    }
    f
}

struct ComposeTimes {
    up: Duration,
    up_ready: Duration,
    redeploy: Duration,
    down: Duration,
}

/// `up -d` (and the wait until every server answers), `up -d` again, `down`; each step
/// checked, outside the timed part.
async fn compose_round(c: &Compose, project: &str, ports: &[u16]) -> Result<ComposeTimes> {
    let label = project_label(project);
    let t = Instant::now();
    c.project(project, &["up", "-d"]).await?;
    let up = t.elapsed();
    wait_all_ready(ports, Duration::from_secs(60)).await?;
    let up_ready = t.elapsed();
    let mut before = labelled_async(label.clone()).await?;
    ensure!(
        before.len() == ports.len(),
        "{} containers after `up -d`, expected {}",
        before.len(),
        ports.len()
    );

    let t = Instant::now();
    c.project(project, &["up", "-d"]).await?;
    let redeploy = t.elapsed();
    let mut after = labelled_async(label.clone()).await?;
    before.sort();
    after.sort();
    ensure!(before == after, "the second `up -d` replaced containers");

    let t = Instant::now();
    c.project(project, &["down"]).await?;
    let down = t.elapsed();
    let left = labelled_async(label).await?;
    ensure!(
        left.is_empty(),
        "{} containers left after `down`",
        left.len()
    );
    Ok(ComposeTimes {
        up,
        up_ready,
        redeploy,
        down,
    })
}

/// Probe every server (all at once) until each answered an MCP handshake.
async fn wait_all_ready(ports: &[u16], limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let waits = ports.iter().map(|port| async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        loop {
            match dtma::docker::ready::probe(addr, ENDPOINT, PROBE_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + POLL > deadline => {
                    bail!("the server on port {port} was not ready within {limit:?}: {e}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    });
    futures_util::future::try_join_all(waits).await?;
    Ok(())
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

/// A duration in ms below one second (one decimal below 10 ms), else in s.
fn ms(d: Duration) -> String {
    let (value, unit) = scaled(d, d);
    format!("{value} {unit}")
}

/// `d` written in the unit that suits `like` (so that a range shares its median's unit).
fn scaled(d: Duration, like: Duration) -> (String, &'static str) {
    let (x, l) = (d.as_secs_f64() * 1e3, like.as_secs_f64() * 1e3);
    if l >= 1000.0 {
        (format!("{:.2}", x / 1e3), "s")
    } else if l < 10.0 {
        (format!("{x:.1}"), "ms")
    } else {
        (format!("{x:.0}"), "ms")
    }
}

/// A table cell: median (min-max) in the median's unit, or `n/a` (the reason goes into the
/// notes).
fn cell(m: &M<Samples>) -> String {
    m.as_ref().map_or_else(
        |_| "n/a".to_owned(),
        |s| {
            let med = s.median();
            if s.0.len() < 2 {
                return ms(med);
            }
            let (lo, hi) = (scaled(s.min(), med).0, scaled(s.max(), med).0);
            let (mid, unit) = scaled(med, med);
            format!("{mid} {unit} ({lo}-{hi})")
        },
    )
}

fn render(s: &Settings, r: &Results, load: &str) -> Report {
    let verdict = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "unknown",
    };
    let med = |m: &M<Samples>| m.as_ref().ok().map(Samples::median);
    let not_slower = |a: &M<Samples>, b: &M<Samples>| match (med(a), med(b)) {
        (Some(a), Some(b)) => Some(a <= b),
        _ => None,
    };
    let n = s.servers;
    let mut rows: Vec<[String; 4]> = Vec::new();
    rows.push([
        format!(
            "first deploy of {n} servers (dtma: until every server answers MCP; compose: `up -d`, \
             waits for nothing)"
        ),
        cell(&r.dtma_deploy),
        cell(&r.compose_up),
        format!(
            "no slower than docker-compose: {}",
            verdict(not_slower(&r.dtma_deploy, &r.compose_up))
        ),
    ]);
    rows.push([
        "first deploy, both until every server answers MCP (compose: `up -d`, then a probe loop)"
            .into(),
        cell(&r.dtma_deploy),
        cell(&r.compose_up_ready),
        format!(
            "no slower: {}",
            verdict(not_slower(&r.dtma_deploy, &r.compose_up_ready))
        ),
    ]);
    let speedup = match (med(&r.dtma_redeploy), med(&r.compose_redeploy)) {
        (Some(a), Some(b)) if !a.is_zero() => Some(b.as_secs_f64() / a.as_secs_f64()),
        _ => None,
    };
    rows.push([
        "redeploy unchanged (the same body / `up -d` again)".into(),
        cell(&r.dtma_redeploy),
        cell(&r.compose_redeploy),
        format!(
            "< 100 ms and >= 10x faster: {}{}",
            verdict(match (med(&r.dtma_redeploy), speedup) {
                (Some(d), Some(x)) => Some(d < Duration::from_millis(100) && x >= 10.0),
                (Some(d), None) if d >= Duration::from_millis(100) => Some(false),
                _ => None,
            }),
            speedup.map_or(String::new(), |x| format!(" ({x:.0}x)"))
        ),
    ]);
    rows.push([
        "remove (`DELETE /mcp/groups/:id` / `down`)".into(),
        cell(&r.dtma_remove),
        cell(&r.compose_down),
        "-".into(),
    ]);
    rows.push([
        format!(
            "first deploy with `maxConcurrentDeployments` 1 (the agent's default), {n} servers"
        ),
        cell(&r.dtma_serial),
        "-".into(),
        "-".into(),
    ]);

    let header = ["measurement", "dtma", "docker-compose", "target"];
    let mut table = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    table.push_str(&line(&header.map(String::from)));
    table.push_str(&line(&header.map(|_| "---".to_owned())));
    for row in &rows {
        table.push_str(&line(row));
    }

    let count = |m: &M<Samples>| m.as_ref().map_or(0, |x| x.0.len());
    let rounds = |k: usize| format!("{k} round{}", if k == 1 { "" } else { "s" });
    let mut notes = vec![format!(
        "Each cell: the median of {} (min-max); {} for the last row. The rounds of \
         the two tools alternate (which one goes first alternates too), after one warm-up round \
         each. Every step is checked outside the timed part: the agent's answer (`deployed` \
         with every server `ready`, then `unchanged`, then all removed), every server answering \
         an MCP handshake after the deploy, the compose containers being the same ones after \
         the second `up -d`, no container left after a remove.",
        rounds(count(&r.dtma_deploy).max(count(&r.compose_up))),
        rounds(count(&r.dtma_serial))
    )];
    notes.push(format!(
        "Fairness: the agent's deploy returns only when every server answered an MCP handshake \
         (`server/discover`, refused by these {MODE}-mode servers, then `initialize`, \
         `notifications/initialized`, `DELETE` of the session), probing each starting server \
         every 200 ms; `docker-compose up -d` returns once the containers are started and waits \
         for nothing, so the first row compares a deploy to a start. The second row adds to \
         compose a wait loop that runs the agent's probe (`dtma::docker::ready::probe`) against \
         every server at once, every {} ms, until all answered: like for like, with a tighter \
         loop than the agent's. The agent deploys with `maxConcurrentDeployments` {n} (all at \
         once, as compose does); the last row uses its default, one server at a time.",
        POLL.as_millis()
    ));
    for (what, m) in [
        ("dtma deploy", &r.dtma_deploy),
        ("dtma redeploy", &r.dtma_redeploy),
        ("dtma remove", &r.dtma_remove),
        ("dtma serial deploy", &r.dtma_serial),
        ("compose up", &r.compose_up),
        ("compose up + wait", &r.compose_up_ready),
        ("compose redeploy", &r.compose_redeploy),
        ("compose down", &r.compose_down),
        ("compose start-up", &r.compose_startup),
    ] {
        if let Err(why) = m {
            notes.push(format!("n/a {what}: {why}"));
        }
    }
    if let (Ok(up), Ok(ready)) = (&r.compose_up, &r.compose_up_ready) {
        let waits = Samples(
            ready
                .0
                .iter()
                .zip(&up.0)
                .map(|(r, u)| r.saturating_sub(*u))
                .collect(),
        );
        notes.push(format!(
            "The wait after `up -d` until every server answered took {}: these test servers \
             listen at once, so the first two rows nearly agree; a server that needs seconds to \
             start would add them to both the agent's deploy and this wait.",
            cell(&Ok(waits))
        ));
    }
    if let Ok(startup) = &r.compose_startup {
        notes.push(format!(
            "docker-compose's own start-up (`docker-compose version --short`, {} runs): {}; \
             every compose command above pays it before talking to Docker.",
            startup.0.len(),
            cell(&r.compose_startup)
        ));
    }
    notes.push(format!(
        "CPU busy (both cores, everything on the machine) during the measured rounds: {}.",
        r.busy
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
    "<!-- bench-mcp:results:begin (generated by examples/bench_mcp.rs; do not edit) -->";
const END: &str = "<!-- bench-mcp:results:end -->";

fn write_markdown(path: &Path, report: &Report) -> Result<()> {
    let section = support::results_section(
        BEGIN,
        END,
        &format!("Run of {} (`bash deploy/bench-mcp.sh`):", report.when),
        &report.table,
        &report.notes,
        &report.facts,
    );
    support::replace_section(
        path,
        BEGIN,
        END,
        "## MCP deploy (dtma vs docker-compose)",
        &section,
    )
}
