//! Keepalive, dead-link detection and the status heartbeat, on paused time over an in-memory
//! WebSocket (the session loop is generic over its transport).

use std::time::Duration;

use dtma::agent::Agent;
use dtma::channel::Channel;
use dtma::channel::session::{self, SessionEnd};
use dtma::config::{ChannelConfig, Config};
use dtma::services::Services;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

fn channel() -> ChannelConfig {
    ChannelConfig {
        ping_interval: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(30),
        ..ChannelConfig::with_url("ws://unused/")
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeat_follows_welcome_and_a_silent_link_is_dead_after_two_intervals() {
    let (client, server) = tokio::io::duplex(4 << 20);
    let agent_ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut backend = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let agent = Agent::new(Config::for_channel("t", None)).unwrap();
    let chan = Channel::new(Services::new(agent), channel());
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { session::run(agent_ws, &chan, &stop, "test").await }
    });

    let hello = backend.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains(r#""type":"hello""#));
    backend
        .send(Message::text(
            r#"{"type":"welcome","protocol_version":1,"session_id":"hb","heartbeat_interval_ms":4000}"#,
        ))
        .await
        .unwrap();
    let t0 = Instant::now();

    // Read for 25 s of virtual time: status every 4 s (the welcome's interval, not the
    // agent's 30 s default) and a ping every 10 s.
    let mut statuses = 0;
    let mut pings = 0;
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout_at(t0 + Duration::from_secs(25), backend.next()).await
    {
        match m {
            Message::Text(t) if t.as_str().contains(r#""type":"status""#) => {
                // The sandbox's level rides on every heartbeat (enforced by default).
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["sandbox"]["mode"], "enforce", "{v}");
                assert!(v["sandbox"]["refused_profiles"].is_array(), "{v}");
                statuses += 1;
            }
            Message::Ping(_) => pings += 1,
            _ => {}
        }
    }
    // 0, 4, 8, ..., 24 s: seven samples (one may still be in flight at the edge).
    assert!(
        (6..=7).contains(&statuses),
        "{statuses} status messages in 25 s"
    );
    assert_eq!(pings, 2, "pings at 10 s and 20 s");

    // Now the backend stops reading (and so stops answering pings): the agent must declare
    // the link dead within two ping intervals of the last frame it received (the pong to the
    // 20 s ping), i.e. at the 40 s tick.
    let silent_from = Instant::now();
    let end = run.await.unwrap();
    assert_eq!(end, SessionEnd::Dead);
    let waited = silent_from.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
        "declared dead after {waited:?} of silence"
    );
    drop(backend);
}

#[tokio::test(start_paused = true)]
async fn no_welcome_within_the_connect_timeout_fails_the_session() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let agent_ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut backend = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let agent = Agent::new(Config::for_channel("t", None)).unwrap();
    let chan = Channel::new(Services::new(agent), channel());
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let run = tokio::spawn(async move { session::run(agent_ws, &chan, &stop, "test").await });
    let _hello = backend.next().await;
    let end = run.await.unwrap();
    assert!(
        matches!(end, SessionEnd::Failed(ref why) if why.contains("welcome")),
        "{end:?}"
    );
    assert_eq!(t0.elapsed(), channel().connect_timeout);
}
