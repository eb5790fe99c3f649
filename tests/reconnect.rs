//! The reconnect state machine on paused time: backoff growth, server-directed delays, the
//! slow return after a replacement, and the reset after a healthy link. The links are
//! in-memory WebSockets to a scripted backend (the dialer is the state machine's seam).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use dtma::agent::Agent;
use dtma::backoff::Backoff;
use dtma::channel::{Channel, Dialer};
use dtma::config::{ChannelConfig, Config};
use dtma::services::Services;
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The dial fails (connection refused).
    Refuse,
    /// Handshake, then `reconnect {after_ms}`.
    Redirect(u64),
    /// Handshake, then close 4002 (replaced by a newer session).
    Replaced,
    /// Handshake, keep the link (answering pings) for this long, then close normally.
    Stay(Duration),
}

struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    dials: watch::Sender<Vec<Instant>>,
}

impl Dialer for Scripted {
    type Link = WebSocketStream<DuplexStream>;
    async fn dial(&self, _url: &str) -> Result<Self::Link, dtma::channel::tls::Error> {
        self.dials.send_modify(|d| d.push(Instant::now()));
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Refuse);
        let refused = || {
            dtma::channel::tls::Error::WebSocket(tungstenite::Error::Io(
                std::io::ErrorKind::ConnectionRefused.into(),
            ))
        };
        if let Step::Refuse = step {
            return Err(refused());
        }
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(backend(server, step));
        Ok(WebSocketStream::from_raw_socket(client, Role::Client, None).await)
    }
}

async fn backend(io: DuplexStream, step: Step) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let Some(Ok(hello)) = ws.next().await else {
        return;
    };
    assert!(hello.to_text().unwrap().contains(r#""type":"hello""#));
    ws.send(Message::text(
        r#"{"type":"welcome","protocol_version":1,"session_id":"s"}"#,
    ))
    .await
    .unwrap();
    let close = |code: u16| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "scripted".into(),
        }))
    };
    match step {
        Step::Refuse => {}
        Step::Redirect(ms) => {
            let m = format!(r#"{{"type":"reconnect","after_ms":{ms}}}"#);
            ws.send(Message::text(m)).await.unwrap();
        }
        Step::Replaced => {
            let _ = ws.send(close(4002)).await;
        }
        Step::Stay(d) => {
            let until = Instant::now() + d;
            // Reading answers the agent's pings (tungstenite replies on read).
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, ws.next()).await {}
            let _ = ws.send(close(1000)).await;
        }
    }
    // Drain until the agent closes its side.
    while let Some(Ok(_)) = ws.next().await {}
}

const SEED: u64 = 0x5eed;

/// tokio's timer rounds a sleep up to the next millisecond.
fn assert_tick(actual: Duration, expected: Duration) {
    assert!(
        actual >= expected && actual - expected <= Duration::from_millis(1),
        "waited {actual:?}, expected {expected:?}"
    );
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(start_paused = true)]
async fn backoff_redirect_replacement_and_reset_follow_the_rules() {
    use Step::*;
    let script = [
        Refuse,
        Refuse,
        Refuse,
        Refuse,
        Refuse,
        Redirect(1234),
        Replaced,
        Stay(Duration::from_secs(31)),
        Stay(Duration::from_secs(1)),
        Refuse,
    ];
    let (dials, mut seen) = watch::channel(Vec::new());
    let dialer = Scripted {
        steps: Mutex::new(script.into_iter().collect()),
        dials,
    };
    let chan = ChannelConfig {
        backoff_base: Duration::from_millis(500),
        backoff_cap: Duration::from_secs(30),
        healthy_after: Duration::from_secs(30),
        ping_interval: Duration::from_secs(15),
        heartbeat_interval: Duration::from_secs(3600),
        jitter_seed: Some(SEED),
        ..ChannelConfig::with_url("ws://scripted/")
    };
    let agent = Agent::new(Config::for_channel("t", None)).unwrap();
    let channel = Channel::new(Services::new(agent.clone()), chan);
    let stop = CancellationToken::new();
    let run = tokio::spawn(channel.run_with(stop.clone(), dialer));
    seen.wait_for(|d| d.len() >= script.len()).await.unwrap();
    stop.cancel();
    run.await.unwrap();

    // Each redial is counted by the cause the state machine saw; a stopped channel is in no
    // state. (The last refusal may or may not be counted before the stop.)
    let metrics = agent.metrics().encode().unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    let failed = value(r#"dtma_channel_reconnects_total{cause="connect_failed"}"#);
    assert!((5.0..=6.0).contains(&failed), "{failed}");
    assert_eq!(
        value(r#"dtma_channel_reconnects_total{cause="redirect"}"#),
        1.0
    );
    assert_eq!(
        value(r#"dtma_channel_reconnects_total{cause="closed"}"#),
        3.0
    );
    assert_eq!(value(r#"dtma_channel_reconnects_total{cause="dead"}"#), 0.0);
    for state in ["connecting", "connected", "backoff"] {
        let series = format!(r#"dtma_channel_state{{state="{state}"}}"#);
        assert_eq!(value(&series), 0.0, "{state}");
    }

    let t = seen.borrow().clone();
    let gap = |i: usize| t[i + 1] - t[i];
    // The same seeded backoff, driven through the same calls as the state machine makes.
    let mut expected = Backoff::with_rng(
        Duration::from_millis(500),
        Duration::from_secs(30),
        fastrand::Rng::with_seed(SEED),
    );
    // The first dial is immediate; refusals back off with full jitter under a doubling envelope.
    for (i, envelope) in [500u128, 1000, 2000, 4000, 8000].into_iter().enumerate() {
        let d = expected.next_delay();
        assert_tick(gap(i), d);
        assert!(ms(d) <= envelope, "gap {i}: {d:?} > {envelope} ms");
    }
    // `reconnect {after_ms: 1234}`: exactly that long.
    assert_eq!(ms(gap(5)), 1234);
    // Closed with 4002: the full cap, no jitter.
    assert_eq!(gap(6), Duration::from_secs(30));
    expected.next_delay(); // drawn after the redirected session, then overridden
    expected.next_delay(); // drawn after the replaced session, then overridden
    // A link that stayed up 31 s (past healthy_after) resets the backoff: the next wait is
    // drawn from the first envelope again.
    expected.reset();
    let after_healthy = expected.next_delay();
    assert_tick(gap(7), Duration::from_secs(31) + after_healthy);
    assert!(ms(after_healthy) <= 500);
    // A 1 s link is not healthy: the envelope keeps growing (second step: up to 1 s).
    let after_short = expected.next_delay();
    assert_tick(gap(8), Duration::from_secs(1) + after_short);
}
