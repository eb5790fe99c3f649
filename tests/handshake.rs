//! How the wait for `welcome` ends, and what a `reconnect` with a URL the agent cannot use does,
//! as protocol/README.md states them (Handshake, Server-directed reconnect, Make-before-break).
//! Paused time, in-memory WebSockets to a scripted backend.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use dtma::agent::Agent;
use dtma::channel::{Channel, Dialer};
use dtma::config::{ChannelConfig, Config};
use dtma::services::Services;
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

const URL: &str = "ws://configured/";

#[derive(Clone, Debug)]
enum Step {
    /// The dial fails.
    Refuse,
    /// Read `hello`, then send nothing.
    Silent,
    /// Read `hello`, then send this frame instead of `welcome`.
    Send(&'static str),
    /// Handshake, then `reconnect` with this URL and delay.
    Redirect(&'static str, u64),
}

/// What the backend saw after its step, with the time it saw it.
#[derive(Debug, PartialEq)]
enum Seen {
    Hello,
    Close(u16, String),
    DroppedWithoutClose,
}

struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    dials: watch::Sender<Vec<(String, Instant)>>,
    seen: mpsc::UnboundedSender<(Seen, Instant)>,
}

impl Dialer for Scripted {
    type Link = WebSocketStream<DuplexStream>;
    async fn dial(&self, url: &str) -> Result<Self::Link, dtma::channel::tls::Error> {
        self.dials
            .send_modify(|d| d.push((url.to_owned(), Instant::now())));
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Refuse);
        if let Step::Refuse = step {
            return Err(dtma::channel::tls::Error::WebSocket(
                tungstenite::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
            ));
        }
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(backend(server, step, self.seen.clone()));
        Ok(WebSocketStream::from_raw_socket(client, Role::Client, None).await)
    }
}

async fn backend(io: DuplexStream, step: Step, seen: mpsc::UnboundedSender<(Seen, Instant)>) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let Some(Ok(hello)) = ws.next().await else {
        return;
    };
    assert!(hello.to_text().unwrap().contains(r#""type":"hello""#));
    let _ = seen.send((Seen::Hello, Instant::now()));
    match step {
        Step::Refuse | Step::Silent => {}
        Step::Send(frame) => ws.send(Message::text(frame)).await.unwrap(),
        Step::Redirect(url, after_ms) => {
            let welcome = r#"{"type":"welcome","protocol_version":1,"session_id":"s"}"#;
            ws.send(Message::text(welcome)).await.unwrap();
            let m = serde_json::json!({"type": "reconnect", "after_ms": after_ms, "url": url});
            ws.send(Message::text(m.to_string())).await.unwrap();
        }
    }
    // Skip the agent's pings and status; report how the link ended.
    let end = loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                break Seen::Close(f.code.into(), f.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => break Seen::Close(0, String::new()),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break Seen::DroppedWithoutClose,
        }
    };
    let _ = seen.send((end, Instant::now()));
}

struct Run {
    dials: Vec<(String, Instant)>,
    seen: Vec<(Seen, Instant)>,
}

/// Run the agent's channel over `script` until it has dialled `dials` times.
async fn run(script: Vec<Step>, dials: usize) -> Run {
    let (dial_tx, mut dial_rx) = watch::channel(Vec::new());
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let dialer = Scripted {
        steps: Mutex::new(script.into()),
        dials: dial_tx,
        seen: seen_tx,
    };
    let chan = ChannelConfig {
        connect_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(3600),
        jitter_seed: Some(7),
        ..ChannelConfig::with_url(URL)
    };
    let agent = Agent::new(Config::for_channel("t", None)).unwrap();
    let stop = CancellationToken::new();
    let channel = Channel::new(Services::new(agent), chan);
    let task = tokio::spawn(channel.run_with(stop.clone(), dialer));
    dial_rx.wait_for(|d| d.len() >= dials).await.unwrap();
    stop.cancel();
    task.await.unwrap();
    let dials = dial_rx.borrow().clone();
    let mut seen = Vec::new();
    while let Ok(s) = seen_rx.try_recv() {
        seen.push(s);
    }
    Run { dials, seen }
}

#[tokio::test(start_paused = true)]
async fn no_welcome_in_time_drops_the_link_without_a_close_frame() {
    let r = run(vec![Step::Silent], 2).await;
    let [(Seen::Hello, hello_at), (end, end_at)] = &r.seen[..] else {
        panic!("backend saw {:?}", r.seen)
    };
    assert_eq!(*end, Seen::DroppedWithoutClose);
    // The connect timeout, counted from the end of the upgrade (hello goes out at once).
    assert_eq!(*end_at - *hello_at, Duration::from_secs(10));
    assert_eq!(r.dials[1].0, URL, "the agent dials again");
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_other_than_welcome_is_closed_with_4003() {
    for frame in [
        r#"{"type":"ping","id":"a"}"#,
        r#"{"type":"ack","id":"a","seq":0}"#,
        r#"{"type":"welcome","protocol_version":1}"#,
        "not json",
    ] {
        let r = run(vec![Step::Send(frame)], 2).await;
        let [(Seen::Hello, _), (end, _)] = &r.seen[..] else {
            panic!("{frame}: backend saw {:?}", r.seen)
        };
        assert_eq!(
            *end,
            Seen::Close(
                dtma_protocol::close_code::PROTOCOL_ERROR,
                "expected `welcome`".into()
            ),
            "{frame}"
        );
        assert_eq!(r.dials.len(), 2, "{frame}: the agent dials again");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_to_a_url_that_is_not_a_websocket_keeps_the_current_url() {
    let r = run(
        vec![
            Step::Redirect("https://elsewhere.example/", 700),
            // A usable target is followed; while the current link lives, a failed dial to it is
            // retried (make-before-break), not replaced by the configured URL.
            Step::Redirect("ws://elsewhere.example/", 0),
            Step::Refuse,
        ],
        4,
    )
    .await;
    let urls: Vec<&str> = r.dials.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        urls,
        [
            URL,
            URL,
            "ws://elsewhere.example/",
            "ws://elsewhere.example/"
        ],
        "dialled URLs"
    );
    // `after_ms` still applies to the ignored URL.
    assert_eq!(r.dials[1].1 - r.dials[0].1, Duration::from_millis(700));
    // Make before break: the new link says hello, then the old one is closed with 1000.
    let kinds: Vec<&Seen> = r.seen.iter().map(|(s, _)| s).collect();
    assert_eq!(
        kinds[..3],
        [
            &Seen::Hello,
            &Seen::Hello,
            &Seen::Close(1000, "moved".into())
        ],
        "{:?}",
        r.seen
    );
}
