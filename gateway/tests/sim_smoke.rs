//! The gateway benchmark's agent simulator (examples/gateway_bench/sim.rs) against the real
//! gateway, with a few agents: each completes the handshake, shows up with its heartbeat,
//! beats while told to, and answers an `exec` sent through the operator API. Keeps the
//! benchmark's simulator honest (a simulator that stopped speaking the protocol would make
//! the benchmark measure nothing).

mod common;
#[allow(dead_code)]
#[path = "../examples/gateway_bench/sim.rs"]
mod sim;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use common::{AGENTS, Gw, OPERATOR, json_of, send, within};
use dtma_control_plane::DirectoryEvent;
use sim::{AgentSpec, Beat, Counters, Dial, Fleet};

/// Wait until every agent of `AGENTS` has sent `count` more heartbeats.
async fn heartbeats(
    events: &mut tokio::sync::broadcast::Receiver<DirectoryEvent>,
    count: usize,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < AGENTS.len() || seen.values().any(|n| *n < count) {
        if let Ok(DirectoryEvent::Heartbeat { record, .. }) = events.recv().await {
            *seen.entry(record.agent_id).or_default() += 1;
        }
    }
    seen
}

#[tokio::test]
async fn simulated_agents_handshake_beat_and_answer_exec() {
    let gw = Gw::start().await;
    let mut events = gw.r().control_plane().directory_events();
    let agents = AGENTS
        .iter()
        .map(|(id, token)| AgentSpec {
            id: (*id).to_owned(),
            token: (*token).to_owned(),
        })
        .collect();
    let dial = Dial {
        addr: gw.r().agent_addr(),
        sources: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])],
        parallel: 2,
        timeout: Duration::from_secs(10),
    };
    let (fleet, failed) = within(20, "the handshakes", Fleet::connect(&dial, agents)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let c = fleet.counters.clone();
    assert_eq!(Counters::get(&c.welcomed), AGENTS.len() as u64);

    // Each agent's first `status` reached the gateway's directory.
    within(10, "the first heartbeats", heartbeats(&mut events, 1)).await;
    let listed = gw.r().control_plane().agents();
    assert_eq!(listed.len(), AGENTS.len());
    assert!(
        listed
            .iter()
            .all(|a| a.connected && a.last_heartbeat.is_some())
    );

    // Beating: every agent sends more; the pings go along (two per status).
    fleet.beat(Beat::Every(Duration::from_millis(100)));
    within(10, "beating", heartbeats(&mut events, 2)).await;
    fleet.beat(Beat::Idle);
    assert!(Counters::get(&c.statuses) >= 3 * AGENTS.len() as u64);
    assert!(Counters::get(&c.pings) >= 2 * AGENTS.len() as u64);

    // An exec through the operator API: `started` and `exit` with code 0.
    let resp = send(
        gw.api(),
        "POST",
        "/v1/agents/a2/requests?wait=true",
        Some(OPERATOR),
        &[],
        Some(r#"{"type":"exec","command":"true"}"#.into()),
    )
    .await;
    let (status, v) = within(10, "the exec answer", json_of(resp)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["terminal"]["type"], "exit", "{v}");
    assert_eq!(v["terminal"]["exit_code"], 0, "{v}");
    assert_eq!(v["events"], 2, "started and exit: {v}");
    assert_eq!(Counters::get(&c.execs_true), 1);

    assert_eq!(Counters::get(&c.dropped), 0, "{:?}", c.samples);
    assert_eq!(Counters::get(&c.unexpected), 0, "{:?}", c.samples);
    assert!(within(20, "the fleet to stop", fleet.stop(Duration::from_secs(10))).await);
}
