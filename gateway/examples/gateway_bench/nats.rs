//! The peer's clients: plain TCP NATS clients holding idle connections to `nats-server`, the
//! way a NATS client library does: read `INFO`, send `CONNECT {..}` and `PING`, wait for
//! `PONG`, then answer the server's `PING`s. While beating, each client publishes the agent
//! simulator's `status` JSON once per interval (`PUB dtma.status.<n>`; nobody subscribes).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::sim::{Beat, tick};

#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    /// `PUB`s sent.
    pub published: AtomicU64,
    /// The server's `PING`s answered.
    pub pongs: AtomicU64,
    /// `-ERR` lines, or connections that ended before the fleet was stopped.
    pub errors: AtomicU64,
}

pub struct Fleet {
    pub counters: Arc<Counters>,
    beat: watch::Sender<Beat>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Connect `n` clients to `addr` (at most `parallel` at once); the failures come back as
    /// messages.
    pub async fn connect(
        addr: SocketAddr,
        n: usize,
        sources: &[IpAddr],
        parallel: usize,
        timeout: Duration,
        payload: Arc<str>,
    ) -> (Fleet, Vec<String>) {
        let counters = Arc::new(Counters::default());
        let (beat, _) = watch::channel(Beat::Idle);
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<String>>();
        for index in 0..n {
            let from = sources
                .get(index % sources.len().max(1))
                .copied()
                .unwrap_or(IpAddr::from([127, 0, 0, 1]));
            let (gate, counters, stop, done) = (
                gate.clone(),
                counters.clone(),
                stop.clone(),
                done_tx.clone(),
            );
            let beat = beat.subscribe();
            let payload = payload.clone();
            tasks.spawn(async move {
                let joined = {
                    let Ok(_permit) = gate.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(timeout, handshake(addr, from, index)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no PONG within {timeout:?}")),
                    }
                };
                match joined {
                    Ok((lines, w)) => {
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                        let _ = done.send(None);
                        // Only the handshake reports: the channel closes when all have.
                        drop(done);
                        let client = Client {
                            lines,
                            w,
                            index,
                            n,
                            counters,
                            payload,
                        };
                        client.run(beat, stop).await;
                    }
                    Err(e) => {
                        let _ = done.send(Some(format!("client #{index}: {e}")));
                    }
                }
            });
        }
        drop(done_tx);
        let mut failed = Vec::new();
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

    pub fn beat(&self, beat: Beat) {
        self.beat.send_replace(beat);
    }

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

async fn handshake(
    addr: SocketAddr,
    from: IpAddr,
    index: usize,
) -> Result<(Lines<BufReader<OwnedReadHalf>>, OwnedWriteHalf), String> {
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect from {from}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (r, mut w) = tcp.into_split();
    let mut lines = BufReader::new(r).lines();
    let first = lines.next_line().await.map_err(|e| e.to_string())?;
    if !first.as_deref().is_some_and(|l| l.starts_with("INFO ")) {
        return Err(format!("expected INFO, got {first:?}"));
    }
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"sim-{index}\",\"lang\":\"rust\",\"version\":\"bench\",\"protocol\":1}}\r\nPING\r\n"
    );
    w.write_all(connect.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match lines.next_line().await.map_err(|e| e.to_string())? {
            Some(l) if l == "PONG" => return Ok((lines, w)),
            Some(l) if l == "PING" => w.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?,
            Some(l) if l.starts_with("-ERR") => return Err(l),
            Some(_) => {}
            None => return Err("connection ended before PONG".into()),
        }
    }
}

struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    index: usize,
    n: usize,
    counters: Arc<Counters>,
    payload: Arc<str>,
}

impl Client {
    async fn run(mut self, mut beat: watch::Receiver<Beat>, stop: CancellationToken) {
        let mut ticker: Option<Interval> = None;
        let subject = format!("dtma.status.{}", self.index);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = beat.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    ticker = match *beat.borrow_and_update() {
                        Beat::Idle => None,
                        Beat::Every(period) => {
                            let offset = period.mul_f64(self.index as f64 / self.n.max(1) as f64);
                            let mut i = tokio::time::interval_at(Instant::now() + offset, period);
                            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            Some(i)
                        }
                    };
                }
                _ = tick(&mut ticker) => {
                    let msg = format!("PUB {subject} {}\r\n{}\r\n", self.payload.len(), self.payload);
                    if self.w.write_all(msg.as_bytes()).await.is_err() {
                        self.lost(&stop);
                        return;
                    }
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                line = self.lines.next_line() => match line {
                    Ok(Some(l)) if l == "PING" => {
                        if self.w.write_all(b"PONG\r\n").await.is_err() {
                            self.lost(&stop);
                            return;
                        }
                        self.counters.pongs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(l)) if l.starts_with("-ERR") => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        self.lost(&stop);
                        return;
                    }
                },
            }
        }
    }

    fn lost(&self, stop: &CancellationToken) {
        if !stop.is_cancelled() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
