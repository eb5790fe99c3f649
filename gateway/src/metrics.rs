//! `GET /metrics`: the gateway's state in the Prometheus text format, read at scrape time.
//!
//! Nothing is counted twice: every value comes from where it already lives (the engine's
//! directory and counters, the stream map, the webhook counters, the cluster's mirror), put
//! into a registry built for the scrape. No agent id, request id or token is ever a label: the
//! label values are the closed sets named below.

use dtma_control_plane::ControlPlane;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

use crate::cluster::Cluster;
use crate::streams::Streams;
use crate::webhooks::Webhooks;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// What a scrape reads.
pub struct Sources<'a> {
    pub cp: &'a ControlPlane,
    pub streams: &'a Streams,
    pub webhooks: Option<&'a Webhooks>,
    pub cluster: Option<&'a Cluster>,
    pub draining: bool,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn by_state(reg: &mut Registry, name: &str, help: &str, values: &[(&'static str, usize)]) {
    let f = Family::<State, Gauge<i64>>::default();
    for (state, n) in values {
        f.get_or_create(&State { state }).set(*n as i64);
    }
    reg.register(name, help, f);
}

/// The text of one scrape.
pub fn render(s: &Sources<'_>) -> String {
    let mut reg = Registry::with_prefix("dtma_gateway");
    let agents = s.cp.agents();
    let connected = agents.iter().filter(|a| a.connected).count();
    by_state(
        &mut reg,
        "agents",
        "Agents this node has seen, by state (its own sessions).",
        &[
            ("connected", connected),
            ("disconnected", agents.len() - connected),
        ],
    );
    let st = s.cp.stats();
    counter(
        &mut reg,
        "sessions",
        "Agent sessions accepted.",
        st.sessions.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "duplicate_events",
        "Agent events received again after delivery (resends), dropped.",
        st.duplicates.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "orphan_events",
        "Agent events for streams this node does not hold.",
        st.orphan_events.load(Ordering::Relaxed),
    );
    let (running, retained, busy) = s.streams.counts();
    by_state(
        &mut reg,
        "streams",
        "Operator streams held: running, or ended and retained for resume.",
        &[("running", running), ("retained", retained)],
    );
    gauge(
        &mut reg,
        "operator_work",
        "Operator connections open and opens under way (a drain waits for them).",
        busy as i64,
    );
    gauge(
        &mut reg,
        "draining",
        "1 while the node drains (stopping).",
        i64::from(s.draining),
    );
    if let Some(w) = s.webhooks {
        let ws = *w.stats().borrow();
        let f = Family::<Outcome, Counter<u64>>::default();
        for (outcome, v) in [
            ("delivered", ws.delivered),
            ("failed", ws.failed),
            ("dropped", ws.dropped),
        ] {
            f.get_or_create(&Outcome { outcome }).inc_by(v);
        }
        reg.register("webhook_events", "Webhook events by outcome.", f);
        counter(
            &mut reg,
            "webhook_attempts",
            "Webhook POST attempts.",
            ws.attempts,
        );
        gauge(
            &mut reg,
            "webhook_queue",
            "Webhook events waiting.",
            w.queued() as i64,
        );
    }
    if let Some(c) = s.cluster {
        let all = c.agents();
        let up = all.iter().filter(|a| a["state"] == "connected").count();
        by_state(
            &mut reg,
            "cluster_agents",
            "Agents in the cluster directory, by state (connected: on a live node).",
            &[("connected", up), ("disconnected", all.len() - up)],
        );
        gauge(
            &mut reg,
            "cluster_nodes",
            "Live gateway nodes, as this node sees them.",
            c.live_nodes().len() as i64,
        );
    }
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}
