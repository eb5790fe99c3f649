//! The cluster rows: `nats-server -js` and real `dtma-gateway` nodes joined through it
//! (gateway/README.md, "Scale-out").
//!
//! - [`round_trips`]: the same `exec true` one at a time through a lone node (no NATS),
//!   through cluster node A holding the agent, and through node B (cross node), interleaved so
//!   that the machine's noise falls on the three paths alike;
//! - [`failover`]: K agents on node C, which redial to A or B when their connection ends;
//!   SIGKILL C and send each agent a request through A at once: its completion is the time
//!   until the agent is reachable again (the request waits in A up to `open_wait` for the
//!   directory to name a live node).
//!
//! Every node runs with default settings (`node_beat_ms` 500, `node_ttl_ms` 2000,
//! `open_wait_ms` 10000, JetStream file storage in the bench's temporary directory).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::task::JoinSet;

use super::sim::{self, AgentSpec, Counters, Redial};
use super::{
    Gateway, Latency, Procs, Results, STEP_TIMEOUT, Settings, TokenFiles, exec_true, http,
    http_conn, start_gateway,
};
use crate::support::lock;

/// Requests per path before the measured ones (connections, JIT-free but cache-warm paths).
pub const WARMUP: usize = 50;
/// The simulator's reconnect: the real agent's defaults (`backoff_base_ms` 500, cap 30 s, full
/// jitter).
const REDIAL_BASE: Duration = Duration::from_millis(500);
const REDIAL_CAP: Duration = Duration::from_secs(30);
const REDIAL_ATTEMPTS: u32 = 8;
/// Window for the peak handshake rate.
const PEAK_WINDOW: Duration = Duration::from_millis(100);

/// One request at a time through each path.
pub struct Cross {
    pub lone: Latency,
    pub same: Latency,
    pub cross: Latency,
    pub agents: usize,
}

pub struct Failover {
    pub agents: usize,
    /// From the kill until each agent's request through A was answered.
    pub reachable: Latency,
    /// From the kill until each agent got `welcome` from a survivor.
    pub rejoined: Latency,
    /// From each agent's `welcome` until its request was answered: the new node's directory
    /// write, its way to A's mirror, A's retry and the request itself.
    pub after_welcome: Latency,
    /// Handshakes per second over the wave (first to last `welcome`).
    pub mean_rate: f64,
    /// Handshakes per second in the busiest [`PEAK_WINDOW`].
    pub peak_rate: f64,
    /// First and last `welcome` after the kill.
    pub first: Duration,
    pub last: Duration,
    /// Handshakes per surviving node.
    pub per_node: Vec<(String, usize)>,
    /// Agents that needed more than one dial.
    pub redialed: usize,
    /// Time to send all K requests after the kill.
    pub dispatch: Duration,
}

impl Failover {
    /// The target: reachable within 5 s (p99).
    pub fn met(&self) -> bool {
        self.reachable.p99 <= Duration::from_secs(5)
    }
}

pub async fn rows(
    s: &Settings,
    procs: &Procs,
    files: &TokenFiles,
    agents: &[AgentSpec],
    operator: &str,
    r: &mut Results,
) -> Result<()> {
    let nats_dir = procs.dir.join("jetstream");
    std::fs::create_dir(&nats_dir)?;
    let (nats, line) = procs.spawn(
        "nats-server-js",
        Command::new(&s.nats_bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&nats_dir),
        "Listening for client connections on",
    )?;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| anyhow!("no address in nats-server's line: {line}"))?;
    let url = format!("nats://{addr}");
    let node = |name: &str| -> Result<Gateway> {
        start_gateway(
            s,
            procs,
            name,
            files,
            &["--nats-url", &url, "--node-id", name],
        )
    };
    let a = node("gw-a")?;
    let b = node("gw-b")?;

    r.cross = cross_rows(s, procs, files, &agents[..s.cross_agents], operator, &a, &b)
        .await
        .map_err(|e| format!("{e:#}"));

    let c = node("gw-c")?;
    r.failover = failover(
        s,
        procs,
        &agents[..s.failover_agents],
        operator,
        [&a, &b, &c],
    )
    .await
    .map_err(|e| format!("{e:#}"));
    for g in [a, b] {
        procs.stop(g.pid);
    }
    procs.stop(nats);
    Ok(())
}

fn dial(s: &Settings, addr: SocketAddr) -> sim::Dial {
    sim::Dial {
        addr,
        sources: s.sources.clone(),
        parallel: s.parallel,
        timeout: Duration::from_secs(60),
    }
}

/// Connect `agents` to `addr` (optionally redialing); every one must get `welcome`.
async fn connect(
    s: &Settings,
    addr: SocketAddr,
    agents: &[AgentSpec],
    redial: Option<Redial>,
) -> Result<sim::Fleet> {
    let d = dial(s, addr);
    let (fleet, failed) = match redial {
        Some(r) => sim::Fleet::connect_redialing(&d, agents.to_vec(), r).await,
        None => sim::Fleet::connect(&d, agents.to_vec()).await,
    };
    let welcomed = Counters::get(&fleet.counters.welcomed);
    if !failed.is_empty() || welcomed != agents.len() as u64 {
        let first: Vec<String> = failed
            .iter()
            .take(3)
            .map(|(id, e)| format!("{id}: {e}"))
            .collect();
        fleet.stop(STEP_TIMEOUT).await;
        bail!(
            "{welcomed} of {} agents got welcome at {addr}; first failures: {first:?}",
            agents.len()
        );
    }
    Ok(fleet)
}

/// Poll `GET /v1/agents` on `api` (every 50 ms, at most 60 s) until every agent of `ids` is
/// `connected` on `node` (any node: `None`).
async fn await_directory(
    api: SocketAddr,
    operator: &str,
    ids: &[String],
    node: Option<&str>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(api, operator, "GET", "/v1/agents", None).await?;
        ensure!(status == 200, "GET /v1/agents: {status}");
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        // `node` is there only in a cluster.
        let listed: HashMap<&str, (&str, &str)> = v["agents"]
            .as_array()
            .ok_or_else(|| anyhow!("GET /v1/agents: no `agents` array"))?
            .iter()
            .filter_map(|a| {
                Some((
                    a["agent_id"].as_str()?,
                    (a["state"].as_str()?, a["node"].as_str().unwrap_or("")),
                ))
            })
            .collect();
        let missing = ids
            .iter()
            .filter(|id| {
                !listed.get(id.as_str()).is_some_and(|(state, at)| {
                    *state == "connected" && node.is_none_or(|n| n == *at)
                })
            })
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after 60 s, {api} lists {missing} of {} agents not connected{}",
                ids.len(),
                node.map_or(String::new(), |n| format!(" on {n}"))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lone node and nodes A, B: the same agents connected to the lone node and to A.
async fn cross_rows(
    s: &Settings,
    procs: &Procs,
    files: &TokenFiles,
    agents: &[AgentSpec],
    operator: &str,
    a: &Gateway,
    b: &Gateway,
) -> Result<Cross> {
    let lone = start_gateway(s, procs, "gw-lone", files, &[])?;
    let outcome = async {
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let on_lone = connect(s, lone.agent_addr, agents, None).await?;
        let on_a = connect(s, a.agent_addr, agents, None).await;
        let on_a = match on_a {
            Ok(f) => f,
            Err(e) => {
                on_lone.stop(STEP_TIMEOUT).await;
                return Err(e);
            }
        };
        let measured = async {
            await_directory(lone.api, operator, &ids, None).await?;
            await_directory(a.api, operator, &ids, Some("gw-a")).await?;
            await_directory(b.api, operator, &ids, Some("gw-a")).await?;
            let paths = [lone.api, a.api, b.api];
            let times = round_trips(&paths, operator, &ids, s.cross_requests).await?;
            let sent = (WARMUP + s.cross_requests) as u64;
            for (fleet, expected, name) in [(&on_lone, sent, "lone node"), (&on_a, 2 * sent, "A")] {
                let c = &fleet.counters;
                let answered = Counters::get(&c.execs_true);
                ensure!(
                    answered == expected
                        && Counters::get(&c.dropped) == 0
                        && Counters::get(&c.unexpected) == 0,
                    "the agents on {name} answered {answered} execs of `true` (expected \
                     {expected}), {} sessions dropped, {} unexpected frames: {:?}",
                    Counters::get(&c.dropped),
                    Counters::get(&c.unexpected),
                    lock(&c.samples)
                );
            }
            let [lone, same, cross] = times.map(Latency::of);
            Ok(Cross {
                lone,
                same,
                cross,
                agents: ids.len(),
            })
        }
        .await;
        on_lone.stop(STEP_TIMEOUT).await;
        on_a.stop(STEP_TIMEOUT).await;
        measured
    }
    .await;
    procs.stop(lone.pid);
    outcome
}

/// `WARMUP + n` rounds; in each, one `exec true` through every path of `paths` in turn (each
/// on its own keep-alive connection), round `i` to agent `ids[i % len]`. Returns the times of
/// the last `n` rounds per path, from sending to the whole answer.
pub async fn round_trips<const P: usize>(
    paths: &[SocketAddr; P],
    operator: &str,
    ids: &[String],
    n: usize,
) -> Result<[Vec<Duration>; P]> {
    ensure!(!ids.is_empty() && n > 0, "no agents or no requests");
    let mut senders = Vec::with_capacity(P);
    for p in paths {
        senders.push(http_conn(*p).await?);
    }
    let mut times: [Vec<Duration>; P] = std::array::from_fn(|_| Vec::with_capacity(n));
    for round in 0..WARMUP + n {
        let id = &ids[round % ids.len()];
        for (i, sender) in senders.iter_mut().enumerate() {
            let start = Instant::now();
            tokio::time::timeout(STEP_TIMEOUT, exec_true(sender, operator, id))
                .await
                .map_err(|_| anyhow!("round {round}, {}: no answer within 120 s", paths[i]))?
                .with_context(|| format!("round {round}, through {}", paths[i]))?;
            if round >= WARMUP {
                times[i].push(start.elapsed());
            }
        }
    }
    Ok(times)
}

/// K agents on C (redialing to A or B), C killed, one request per agent through A at once.
pub async fn failover(
    s: &Settings,
    procs: &Procs,
    agents: &[AgentSpec],
    operator: &str,
    [a, b, c]: [&Gateway; 3],
) -> Result<Failover> {
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let redial = Redial {
        addrs: vec![a.agent_addr, b.agent_addr],
        base: REDIAL_BASE,
        cap: REDIAL_CAP,
        attempts: REDIAL_ATTEMPTS,
        seed: getrandom::u64().map_err(|e| anyhow!("getrandom: {e}"))?,
    };
    let fleet = connect(s, c.agent_addr, agents, Some(redial)).await?;
    let outcome = async {
        await_directory(a.api, operator, &ids, Some("gw-c")).await?;
        // One keep-alive connection per request, opened before the kill.
        let mut senders = Vec::with_capacity(ids.len());
        for _ in &ids {
            senders.push(http_conn(a.api).await?);
        }
        let c0 = &fleet.counters;
        let execs0 = Counters::get(&c0.execs_true);

        let killed = procs.kill(c.pid)?;
        let mut set = JoinSet::new();
        for (index, (id, mut sender)) in ids.iter().cloned().zip(senders).enumerate() {
            let operator = operator.to_owned();
            set.spawn(async move {
                exec_true(&mut sender, &operator, &id).await?;
                Ok::<_, anyhow::Error>((index, killed.elapsed()))
            });
        }
        let dispatch = killed.elapsed();
        // (agent index, answered after the kill)
        let mut reachable: Vec<(usize, Duration)> = Vec::with_capacity(ids.len());
        let collect = async {
            while let Some(done) = set.join_next().await {
                reachable.push(done??);
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(STEP_TIMEOUT, collect)
            .await
            .map_err(|_| anyhow!("not every request through A was answered within 120 s"))??;

        // Every agent lost C once and is back once (its `welcome` is recorded just after the
        // handshake, which the answered request already needed).
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&c0.rejoins).len() < ids.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rejoins = lock(&c0.rejoins).clone();
        let (lost, dropped, unexpected) = (
            Counters::get(&c0.lost),
            Counters::get(&c0.dropped),
            Counters::get(&c0.unexpected),
        );
        let answered = Counters::get(&c0.execs_true) - execs0;
        let distinct: std::collections::HashSet<usize> = rejoins.iter().map(|j| j.index).collect();
        ensure!(
            lost == ids.len() as u64
                && rejoins.len() == ids.len()
                && distinct.len() == ids.len()
                && dropped == 0
                && unexpected == 0
                && answered == ids.len() as u64,
            "of {} agents: {lost} lost C, {} came back, {dropped} gave up, {unexpected} \
             unexpected frames, {answered} execs of `true` answered: {:?}",
            ids.len(),
            rejoins.len(),
            lock(&c0.samples)
        );
        // Every node's directory agrees: all connected, on A or B.
        for api in [a.api, b.api] {
            await_directory(api, operator, &ids, None).await?;
        }

        // How long after its `welcome` each agent's request was answered.
        let welcomed: HashMap<usize, Duration> = rejoins
            .iter()
            .map(|j| (j.index, j.at.into_std().saturating_duration_since(killed)))
            .collect();
        let lag: Vec<Duration> = reachable
            .iter()
            .map(|(i, t)| t.saturating_sub(welcomed.get(i).copied().unwrap_or_default()))
            .collect();
        let mut at: Vec<Duration> = rejoins
            .iter()
            .map(|j| j.at.into_std().saturating_duration_since(killed))
            .collect();
        at.sort();
        let (first, last) = (at[0], at[at.len() - 1]);
        let wave = (last - first).max(Duration::from_millis(1));
        let mut peak = 0;
        let mut lo = 0;
        for hi in 0..at.len() {
            while at[hi] - at[lo] >= PEAK_WINDOW {
                lo += 1;
            }
            peak = peak.max(hi - lo + 1);
        }
        let mut per_node = Vec::new();
        for (name, g) in [("gw-a", a), ("gw-b", b)] {
            let n = rejoins.iter().filter(|j| j.addr == g.agent_addr).count();
            per_node.push((name.to_owned(), n));
        }
        Ok(Failover {
            agents: ids.len(),
            reachable: Latency::of(reachable.into_iter().map(|(_, t)| t).collect()),
            after_welcome: Latency::of(lag),
            rejoined: Latency::of(at),
            mean_rate: ids.len() as f64 / wave.as_secs_f64(),
            peak_rate: peak as f64 / PEAK_WINDOW.as_secs_f64(),
            first,
            last,
            per_node,
            redialed: rejoins.iter().filter(|j| j.dials > 1).count(),
            dispatch,
        })
    }
    .await;
    fleet.stop(STEP_TIMEOUT).await;
    outcome
}
