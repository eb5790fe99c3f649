//! The agent simulator: many light WebSocket clients in one process, each speaking the agent's
//! side of protocol/README.md as far as the benchmark needs it. Also used by
//! tests/sim_smoke.rs.
//!
//! A simulated agent dials `ws://ADDR/dtma/connect` (from one of several 127.0.0.x source
//! addresses, so that 10,000 connections never run out of ephemeral ports) with its bearer
//! token, sends `hello`, waits for `welcome`, sends one `status` (the real agent's first
//! heartbeat after the handshake) and then idles. While the fleet beats ([`Fleet::beat`]),
//! each agent sends a WebSocket ping every half interval and a `status` every interval: the
//! real agent's ratio (pings every 15 s, `status` every 30 s). An `exec` is answered at once
//! with `started` (seq 0) and `exit` (seq 1; code 0 for `true`). Acks are counted, not
//! checked: the simulator never resends, so it holds nothing an ack would free.
//!
//! A fleet connected with [`Fleet::connect_redialing`] behaves like the real agent when its
//! connection ends: it redials after a jittered backoff ([`Redial`]), to the next address of a
//! list (what a TCP balancer would do), and records when it got `welcome` again.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dtma_protocol::{
    AgentMessage, BackendMessage, Control, Exit, Hello, MemoryStatus, PROTOCOL_VERSION,
    RequestBody, Sandbox, SandboxLevel, SandboxMode, Started, Status,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<TcpStream>;

/// Why an agent could not join.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TCP connect from {from}: {source}")]
    Connect {
        from: IpAddr,
        source: std::io::Error,
    },
    #[error("WebSocket upgrade: {0}")]
    Upgrade(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("no welcome within {0:?}")]
    Timeout(Duration),
}

/// One simulated agent: its id and the token the gateway's file gives it.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub id: String,
    pub token: String,
}

/// Where and how the fleet dials.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The gateway's agent listener.
    pub addr: SocketAddr,
    /// Source addresses, used round-robin (at least one).
    pub sources: Vec<IpAddr>,
    /// Handshakes in flight at once.
    pub parallel: usize,
    /// Limit for one agent's dial, upgrade, `hello` and `welcome`.
    pub timeout: Duration,
}

/// How an agent of a redialing fleet comes back after its connection ended: the real agent's
/// reconnect (full jitter: each delay uniform in `[0, envelope]`, the envelope `base`, `2 *
/// base`, ... capped at `cap`), to `addrs[(index + attempt) % len]`, at most `attempts` dials.
#[derive(Debug, Clone)]
pub struct Redial {
    pub addrs: Vec<SocketAddr>,
    pub base: Duration,
    pub cap: Duration,
    pub attempts: u32,
    /// Seed of the jitter (each agent mixes in its index).
    pub seed: u64,
}

/// An agent of a redialing fleet got `welcome` again.
#[derive(Debug, Clone, Copy)]
pub struct Rejoin {
    pub index: usize,
    pub at: Instant,
    /// Where it got in.
    pub addr: SocketAddr,
    /// Dials it took (1: the first one worked).
    pub dials: u32,
}

/// What the fleet's heartbeat does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing after the first `status`.
    Idle,
    /// A `status` per interval and a WebSocket ping per half interval, spread over the fleet.
    Every(Duration),
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct Counters {
    pub welcomed: AtomicU64,
    /// `status` frames sent (the first one after `welcome` included).
    pub statuses: AtomicU64,
    pub pings: AtomicU64,
    /// `exec` requests answered with `started` + `exit`.
    pub execs: AtomicU64,
    /// Of those, the ones answered with exit code 0 (the command was `true`).
    pub execs_true: AtomicU64,
    pub acks: AtomicU64,
    /// Frames the simulator does not expect (a request other than `exec`, a second
    /// `welcome`, an undecodable frame, a binary frame).
    pub unexpected: AtomicU64,
    /// Sessions that ended before the fleet was stopped (and, when redialing, whose agent
    /// gave up after [`Redial::attempts`] dials).
    pub dropped: AtomicU64,
    /// Sessions that ended before the fleet was stopped and were redialed ([`Redial`]).
    pub lost: AtomicU64,
    /// Agents back after a lost session, in the order they got `welcome`.
    pub rejoins: Mutex<Vec<Rejoin>>,
    /// The first few unexpected frames or drop reasons, for the report.
    pub samples: Mutex<Vec<String>>,
}

impl Counters {
    fn sample(&self, what: String) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < 5 {
            s.push(what);
        }
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The connected agents. Stop them with [`Fleet::stop`].
pub struct Fleet {
    pub counters: Arc<Counters>,
    beat: watch::Sender<Beat>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Connect every agent of `agents` (at most `dial.parallel` handshakes at once) and keep
    /// the ones that got `welcome` running. Returns the fleet and the agents that failed.
    pub async fn connect(dial: &Dial, agents: Vec<AgentSpec>) -> (Fleet, Vec<(String, Error)>) {
        Fleet::connect_with(dial, agents, None).await
    }

    /// As [`Fleet::connect`], and each agent redials as `redial` says when its connection
    /// ends.
    pub async fn connect_redialing(
        dial: &Dial,
        agents: Vec<AgentSpec>,
        redial: Redial,
    ) -> (Fleet, Vec<(String, Error)>) {
        Fleet::connect_with(dial, agents, Some(Arc::new(redial))).await
    }

    async fn connect_with(
        dial: &Dial,
        agents: Vec<AgentSpec>,
        redial: Option<Arc<Redial>>,
    ) -> (Fleet, Vec<(String, Error)>) {
        let counters = Arc::new(Counters::default());
        let (beat, _) = watch::channel(Beat::Idle);
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Semaphore::new(dial.parallel.max(1)));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<(String, Error)>>();
        let n = agents.len();
        let status = Utf8Bytes::from(status_json());
        for (index, spec) in agents.into_iter().enumerate() {
            let dial = dial.clone();
            let gate = gate.clone();
            let counters = counters.clone();
            let beat = beat.subscribe();
            let stop = stop.clone();
            let done = done_tx.clone();
            let status = status.clone();
            let redial = redial.clone();
            tasks.spawn(async move {
                let joined = {
                    let Ok(_permit) = gate.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(
                        dial.timeout,
                        handshake(&dial, dial.addr, &spec, index, &counters, &status),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout(dial.timeout)),
                    }
                };
                match joined {
                    Ok(ws) => {
                        let _ = done.send(None);
                        // Only the handshake reports: the channel closes when all have.
                        drop(done);
                        let agent = SimAgent {
                            ws,
                            index,
                            n,
                            counters,
                            status,
                            spec,
                            dial,
                            redial,
                        };
                        agent.run(beat, stop).await;
                    }
                    Err(e) => {
                        let _ = done.send(Some((spec.id, e)));
                    }
                }
            });
        }
        drop(done_tx);
        let mut failed = Vec::new();
        // Every task reports once (or is gone), so this ends.
        while let Some(r) = done_rx.recv().await {
            if let Some(f) = r {
                failed.push(f);
            }
        }
        (
            Fleet {
                counters,
                beat,
                stop,
                tasks,
            },
            failed,
        )
    }

    /// Change what every agent's heartbeat does.
    pub fn beat(&self, beat: Beat) {
        self.beat.send_replace(beat);
    }

    /// Close every connection (a close frame each) and wait for the agents' tasks, at most
    /// `limit`. Returns false when some did not end in time (they are aborted).
    pub async fn stop(mut self, limit: Duration) -> bool {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_ok() {
            true
        } else {
            self.tasks.abort_all();
            false
        }
    }
}

struct SimAgent {
    ws: Ws,
    index: usize,
    n: usize,
    counters: Arc<Counters>,
    status: Utf8Bytes,
    spec: AgentSpec,
    dial: Dial,
    redial: Option<Arc<Redial>>,
}

/// Why a session loop returned.
enum Ended {
    /// The fleet was stopped.
    Stopped,
    /// The connection ended, or a send failed.
    Lost(String),
}

impl SimAgent {
    async fn run(mut self, mut beat: watch::Receiver<Beat>, stop: CancellationToken) {
        loop {
            let why = match self.session(&mut beat, &stop).await {
                Ended::Stopped => return,
                Ended::Lost(why) => why,
            };
            let Some(redial) = self.redial.clone() else {
                self.dropped(why, &stop);
                return;
            };
            if stop.is_cancelled() {
                return;
            }
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            match self.redial(&redial, &stop).await {
                Some(ws) => self.ws = ws,
                None => {
                    self.dropped(format!("{why}; no redial worked"), &stop);
                    return;
                }
            }
        }
    }

    /// Dial `redial.addrs` in turn after jittered delays until one gives `welcome`; `None`
    /// after `redial.attempts` dials or at stop.
    async fn redial(&self, redial: &Redial, stop: &CancellationToken) -> Option<Ws> {
        let mut rng =
            SplitMix(redial.seed ^ (self.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut envelope = redial.base;
        for attempt in 0..redial.attempts {
            let delay = envelope.mul_f64(rng.unit());
            envelope = (envelope * 2).min(redial.cap);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            let &addr = redial
                .addrs
                .get((self.index + attempt as usize) % redial.addrs.len().max(1))?;
            let joined = tokio::select! {
                _ = stop.cancelled() => return None,
                r = tokio::time::timeout(
                    self.dial.timeout,
                    handshake(&self.dial, addr, &self.spec, self.index, &self.counters, &self.status),
                ) => r,
            };
            if let Ok(Ok(ws)) = joined {
                lock(&self.counters.rejoins).push(Rejoin {
                    index: self.index,
                    at: Instant::now(),
                    addr,
                    dials: attempt + 1,
                });
                return Some(ws);
            }
        }
        None
    }

    /// Serve the connection until it ends or the fleet stops.
    async fn session(
        &mut self,
        beat: &mut watch::Receiver<Beat>,
        stop: &CancellationToken,
    ) -> Ended {
        let mut ticker: Option<Interval> = self.ticker(*beat.borrow());
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = self.ws.close(None).await;
                    return Ended::Stopped;
                }
                changed = beat.changed() => {
                    if changed.is_err() {
                        return Ended::Stopped;
                    }
                    let now = *beat.borrow_and_update();
                    ticker = self.ticker(now);
                    ticks = 0;
                }
                _ = tick(&mut ticker) => {
                    ticks += 1;
                    // A ping every half interval, a `status` every second one.
                    self.counters.pings.fetch_add(1, Ordering::Relaxed);
                    let mut sent = self.ws.send(Message::Ping(Bytes::new())).await;
                    if sent.is_ok() && ticks.is_multiple_of(2) {
                        self.counters.statuses.fetch_add(1, Ordering::Relaxed);
                        sent = self.ws.send(Message::Text(self.status.clone())).await;
                    }
                    if let Err(e) = sent {
                        return Ended::Lost(format!("send failed: {e}"));
                    }
                }
                frame = self.ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if let Err(e) = self.on_text(&t).await {
                            return Ended::Lost(format!("send failed: {e}"));
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(f))) => {
                        return Ended::Lost(format!("closed by the gateway: {f:?}"));
                    }
                    None => return Ended::Lost("connection ended".into()),
                    Some(Err(e)) => return Ended::Lost(format!("read failed: {e}")),
                    Some(Ok(other)) => {
                        self.counters.unexpected.fetch_add(1, Ordering::Relaxed);
                        self.counters.sample(format!("unexpected frame {other:?}"));
                    }
                },
            }
        }
    }

    /// The heartbeat timer for `beat`; agents are spread evenly over the half interval.
    fn ticker(&self, beat: Beat) -> Option<Interval> {
        let Beat::Every(period) = beat else {
            return None;
        };
        let half = (period / 2).max(Duration::from_millis(1));
        let offset = half.mul_f64(self.index as f64 / self.n.max(1) as f64);
        let mut i = tokio::time::interval_at(Instant::now() + offset, half);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(i)
    }

    fn dropped(&self, why: String, stop: &CancellationToken) {
        if !stop.is_cancelled() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters
                .sample(format!("agent #{}: {why}", self.index));
        }
    }

    async fn on_text(
        &mut self,
        text: &Utf8Bytes,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let c = &self.counters;
        match dtma_protocol::decode_backend(text.as_str()) {
            Ok(BackendMessage::Request(r)) => match r.body {
                RequestBody::Exec(e) => {
                    let code = if e.command.trim() == "true" {
                        c.execs_true.fetch_add(1, Ordering::Relaxed);
                        0
                    } else {
                        // Only `true` is simulated; anything else "fails" visibly.
                        127
                    };
                    c.execs.fetch_add(1, Ordering::Relaxed);
                    let started = AgentMessage::Started(Started {
                        id: r.id.clone(),
                        seq: 0,
                        pid: 4242,
                        at: now(),
                    });
                    let exit = AgentMessage::Exit(Exit {
                        id: r.id,
                        seq: 1,
                        exit_code: Some(code),
                        signal: None,
                        timed_out: false,
                        cancelled: false,
                        killed_with: None,
                        duration_ms: 0,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                        truncated: false,
                    });
                    self.ws.feed(Message::text(json(&started))).await?;
                    self.ws.send(Message::text(json(&exit))).await?;
                }
                other => {
                    c.unexpected.fetch_add(1, Ordering::Relaxed);
                    c.sample(format!("unsimulated request {other:?}"));
                }
            },
            Ok(BackendMessage::Control(Control::Ack(_))) => {
                c.acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(BackendMessage::Control(Control::Credit(_))) => {}
            Ok(BackendMessage::Control(other)) => {
                c.unexpected.fetch_add(1, Ordering::Relaxed);
                c.sample(format!("unexpected control {other:?}"));
            }
            Err(e) => {
                c.unexpected.fetch_add(1, Ordering::Relaxed);
                c.sample(format!("undecodable frame ({e}): {}", text.as_str()));
            }
        }
        Ok(())
    }
}

/// Wait for the next tick, or for ever without a timer.
pub async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn handshake(
    dial: &Dial,
    addr: SocketAddr,
    spec: &AgentSpec,
    index: usize,
    counters: &Counters,
    status: &Utf8Bytes,
) -> Result<Ws, Error> {
    let from = dial
        .sources
        .get(index % dial.sources.len().max(1))
        .copied()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let connect = async {
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(tcp)
    };
    let tcp = connect
        .await
        .map_err(|source| Error::Connect { from, source })?;
    let mut request = format!("ws://{addr}/dtma/connect").into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", spec.token))
        .map_err(|e| Error::Handshake(format!("token is not a header value: {e}")))?;
    request.headers_mut().insert("authorization", bearer);
    // Small buffers: the simulator is not what is measured, but it shares the machine.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(request, tcp, Some(config)).await?;
    ws.send(Message::text(json(&AgentMessage::Hello(hello(
        spec, index,
    )))))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match dtma_protocol::decode_backend(t.as_str()) {
                Ok(BackendMessage::Control(Control::Welcome(w)))
                    if w.protocol_version == PROTOCOL_VERSION =>
                {
                    break;
                }
                _ => {
                    return Err(Error::Handshake(format!(
                        "expected welcome, got {}",
                        t.as_str()
                    )));
                }
            },
            Some(Ok(Message::Close(f))) => {
                return Err(Error::Handshake(format!("closed before welcome: {f:?}")));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Handshake("connection ended before welcome".into())),
        }
    }
    counters.welcomed.fetch_add(1, Ordering::Relaxed);
    ws.send(Message::Text(status.clone())).await?;
    counters.statuses.fetch_add(1, Ordering::Relaxed);
    Ok(ws)
}

fn hello(spec: &AgentSpec, index: usize) -> Hello {
    Hello {
        agent_id: spec.id.clone(),
        agent_version: "0.1.0".into(),
        boot_id: format!("{:032x}", 0x5f0c_2a9e_0000_0000_u64 + index as u64),
        protocol_version: PROTOCOL_VERSION,
        capabilities: ["exec", "cancel", "ping", "credit", "resume"]
            .map(String::from)
            .to_vec(),
        streams: Vec::new(),
        max_frame_bytes: 1 << 20,
        sandbox: Some(sandbox()),
    }
}

fn sandbox() -> Sandbox {
    Sandbox {
        mode: SandboxMode::Enforce,
        landlock_abi: Some(6),
        level: SandboxLevel::Full,
        degradations: Vec::new(),
        refused_profiles: Vec::new(),
    }
}

/// A heartbeat the size of a real one (about 500 bytes), the same for every agent and beat.
pub fn status_json() -> String {
    json(&AgentMessage::Status(Status {
        agent_version: "0.1.0".into(),
        uptime_s: 86_400,
        at: now(),
        load_average: [0.42, 0.35, 0.3],
        cpu_load_percent: 7.5,
        memory: MemoryStatus {
            total_bytes: 2_147_483_648,
            used_bytes: 734_003_200,
            free_bytes: 412_090_368,
            available_bytes: 1_288_699_904,
        },
        disk: Some(dtma_protocol::DiskStatus {
            mount: "/".into(),
            total_bytes: 53_687_091_200,
            used_bytes: 10_737_418_240,
            free_bytes: 42_949_672_960,
        }),
        streams_running: 0,
        streams_held: 0,
        tool_statuses: Vec::new(),
        sandbox: Some(sandbox()),
    }))
}

/// SplitMix64: enough randomness for jitter, without a dependency.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json(m: &AgentMessage) -> String {
    serde_json::to_string(m).expect("agent messages always serialise")
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}
