//! Several gateway nodes as one, through NATS (see gateway/README.md, "Scale-out").
//!
//! Each node holds the sessions of the agents that dialled it (the engine, as on one node) and
//! shares three things through a NATS server with JetStream:
//! - **the agent directory** (`directory`): KV bucket `dtma_agents`, one entry per agent naming
//!   the node and session that hold it, written by that node (compare-and-set, so a node that
//!   lost the agent cannot overwrite the node that has it) and mirrored by every node;
//! - **node liveness**: each node publishes a beat on `dtma.gw.node.<node>` every
//!   `node_beat`; a node unheard for `node_ttl` is dead, and the agents it held are shown
//!   disconnected until they dial a live node. (Debian's nats-server 2.9 has no per-key TTL in
//!   KV; core messages need none.)
//! - **the streams** (`events`): every operator request is recorded in KV bucket
//!   `dtma_streams` (cluster-wide idempotency and resume state), its events are published to
//!   JetStream stream `DTMA_EVENTS` by the node hosting the agent, and acknowledged to the agent
//!   only once stored. The node serving the operator reads them back in `seq` order, whatever
//!   node hosts the agent now; credit travels back on `dtma.gw.credit.<stream>`.
//!
//! An agent that reconnects to another node lists its streams in `hello`; that node adopts
//! them from KV and JetStream ([`dtma_control_plane::ResumeHook`]) and the agent resends what
//! was not stored. Operators see each event once, in order, on any node.

pub mod directory;
pub mod events;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use dtma_control_plane::{ControlPlane, ResumeHook, auth::BoxFuture};
use dtma_protocol::Request;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ClusterSettings;

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream {what}: {message}")]
    Setup { what: &'static str, message: String },
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe { subject: String, message: String },
}

/// Why a request could not be routed to the node holding its agent.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("agent `{0}` has never connected to this cluster")]
    UnknownAgent(String),
    #[error("agent `{0}` is not connected to any live node")]
    Offline(String),
    #[error("request id `{0}` is in use by a different request")]
    Conflict(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("this node is stopping")]
    Stopping,
}

/// The record of one operator request, in KV bucket `dtma_streams` (key `s.<stream key>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub agent: String,
    pub request: Request,
    /// The node that accepted the operator's request.
    pub opened_by: String,
}

/// What a node answers on `dtma.gw.<node>.open`.
#[derive(Debug, Serialize, Deserialize)]
enum OpenReply {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "offline")]
    Offline,
    #[serde(rename = "moving")]
    Moving,
}

/// This node's handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .finish()
    }
}

struct Inner {
    node: String,
    settings: ClusterSettings,
    client: async_nats::Client,
    js: jetstream::Context,
    agents_kv: kv::Store,
    streams_kv: kv::Store,
    events: stream::Stream,
    /// Set once, right after the engine is built (the engine needs the cluster as its hook).
    cp: OnceLock<ControlPlane>,
    /// The directory as mirrored from KV: agent id → entry.
    mirror: Mutex<HashMap<String, directory::Entry>>,
    /// Nodes heard from, with when.
    nodes: Mutex<HashMap<String, Instant>>,
    started: Instant,
    /// Bumped when the mirror or the node table changes.
    changed: watch::Sender<u64>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// Connect to NATS, create the buckets and the event stream if missing, and start the
    /// node's beat, the directory mirror and the request service. [`Cluster::attach`] must be
    /// called with the engine before agents are served.
    pub async fn join(
        settings: ClusterSettings,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Cluster, Error> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("dtma-gateway {}", settings.node_id))
            .retry_on_initial_connect()
            .connect(settings.nats_url.as_str())
            .await
            .map_err(|source| Error::Connect {
                url: settings.nats_url.clone(),
                source,
            })?;
        let js = jetstream::new(client.clone());
        let storage = if settings.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        };
        // The buckets' streams are created here rather than with `create_key_value`: that call
        // first reads the account's info, which async-nats 0.51 cannot decode from a 2.9 server.
        let bucket = |name: &str, max_age: Duration| stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage,
            max_age,
            ..Default::default()
        };
        let setup = |what: &'static str| move |e: String| Error::Setup { what, message: e };
        js.get_or_create_stream(bucket(AGENTS_BUCKET, Duration::ZERO))
            .await
            .map_err(|e| setup("agents bucket")(e.to_string()))?;
        js.get_or_create_stream(bucket(STREAMS_BUCKET, settings.stream_max_age))
            .await
            .map_err(|e| setup("streams bucket")(e.to_string()))?;
        let agents_kv = js
            .get_key_value(AGENTS_BUCKET)
            .await
            .map_err(|e| setup("agents bucket")(e.to_string()))?;
        let streams_kv = js
            .get_key_value(STREAMS_BUCKET)
            .await
            .map_err(|e| setup("streams bucket")(e.to_string()))?;
        let events = js
            .get_or_create_stream(stream::Config {
                name: EVENTS_STREAM.into(),
                subjects: vec![format!("{EVENTS_PREFIX}.>")],
                max_age: settings.stream_max_age,
                max_bytes: settings.events_max_bytes,
                duplicate_window: Duration::from_secs(120).min(settings.stream_max_age),
                allow_direct: true,
                storage,
                ..Default::default()
            })
            .await
            .map_err(|e| setup("event stream")(e.to_string()))?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node: settings.node_id.clone(),
                settings,
                client,
                js,
                agents_kv,
                streams_kv,
                events,
                cp: OnceLock::new(),
                mirror: Mutex::new(HashMap::new()),
                nodes: Mutex::new(HashMap::new()),
                started: Instant::now(),
                changed: watch::channel(0).0,
                stop,
                tasks,
            }),
        };
        cluster.start_beats().await?;
        directory::start_mirror(&cluster).await?;
        cluster.start_open_service().await?;
        info!(node = %cluster.inner.node, "Joined the cluster.");
        Ok(cluster)
    }

    /// Give the cluster its engine and start writing the directory from the engine's events.
    pub fn attach(&self, cp: ControlPlane) {
        if self.inner.cp.set(cp.clone()).is_ok() {
            directory::start_writer(self, cp);
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Silence after which a node counts as dead.
    pub fn node_ttl(&self) -> Duration {
        self.inner.settings.node_ttl
    }

    fn cp(&self) -> Option<&ControlPlane> {
        self.inner.cp.get()
    }

    /// A receiver that changes whenever the directory mirror or the node table changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// True when `node` is this node or was heard from within `node_ttl`. A node not heard
    /// from at all counts as alive during this node's first `node_ttl` (its beats may not
    /// have arrived yet): a node that just started does not show every agent offline.
    pub fn node_alive(&self, node: &str) -> bool {
        let ttl = self.inner.settings.node_ttl;
        node == self.inner.node
            || match lock(&self.inner.nodes).get(node) {
                Some(t) => t.elapsed() < ttl,
                None => self.inner.started.elapsed() < ttl,
            }
    }

    /// Live nodes, this one included, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.nodes)
            .iter()
            .filter(|(_, t)| t.elapsed() < self.inner.settings.node_ttl)
            .map(|(n, _)| n.clone())
            .collect();
        if !v.contains(&self.inner.node) {
            v.push(self.inner.node.clone());
        }
        v.sort();
        v
    }

    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, Error> {
        self.inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Subscribe {
                subject,
                message: e.to_string(),
            })
    }

    async fn start_beats(&self) -> Result<(), Error> {
        let mut beats = self.subscribe(format!("{NODE_PREFIX}.*")).await?;
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(me.inner.settings.node_beat);
            let own = format!("{NODE_PREFIX}.{}", me.inner.node);
            loop {
                tokio::select! {
                    _ = me.inner.stop.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = me.inner.client.publish(own.clone(), Bytes::from_static(b"up")).await {
                            warn!(error = %e, "Cannot publish the node's beat.");
                        }
                        // A node that falls silent changes liveness without a message.
                        me.inner.changed.send_modify(|v| *v += 1);
                    }
                    m = beats.next() => {
                        let Some(m) = m else { break };
                        let Some(node) = m.subject.as_str().strip_prefix(NODE_PREFIX).and_then(|s| s.strip_prefix('.')) else { continue };
                        let gone = m.payload.as_ref() == b"gone";
                        let fresh = {
                            let mut nodes = lock(&me.inner.nodes);
                            if gone {
                                nodes.remove(node).is_some()
                            } else {
                                nodes.insert(node.to_owned(), Instant::now()).is_none()
                            }
                        };
                        if fresh {
                            debug!(node, gone, "Node table changed.");
                            me.inner.changed.send_modify(|v| *v += 1);
                        }
                    }
                }
            }
            // Leaving on purpose: tell the others at once rather than after `node_ttl`. Bounded:
            // with NATS unreachable, a flush would wait for ever and the node never stop.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = me.inner.client.publish(own, Bytes::from_static(b"gone")).await;
                let _ = me.inner.client.flush().await;
            })
            .await;
        });
        Ok(())
    }

    /// Serve `dtma.gw.<node>.open`: another node asks this one to send a request to an agent
    /// this node holds.
    async fn start_open_service(&self) -> Result<(), Error> {
        let mut sub = self
            .subscribe(format!("{GW_PREFIX}.{}.open", self.inner.node))
            .await?;
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = me.inner.stop.cancelled() => return,
                    m = sub.next() => match m { Some(m) => m, None => return },
                };
                let Some(reply) = m.reply.clone() else {
                    continue;
                };
                let answer = match serde_json::from_slice::<StreamRecord>(&m.payload) {
                    Ok(rec) => me.host_local(&rec.agent, rec.request).await,
                    Err(e) => {
                        warn!(error = %e, "Undecodable open request from another node.");
                        continue;
                    }
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = me.inner.client.publish(reply, body.into()).await {
                    warn!(error = %e, "Cannot answer another node.");
                }
            }
        });
        Ok(())
    }

    /// Send `request` to `agent` from this node (it holds the agent's session) and host its
    /// events.
    async fn host_local(&self, agent: &str, request: Request) -> OpenReply {
        let Some(cp) = self.cp() else {
            return OpenReply::Offline;
        };
        let key = stream_key(agent, &request.id);
        // Credit first: a grant published while the stream starts is not missed.
        let credit = match events::subscribe_credit(self, &key).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot subscribe to a stream's credit.");
                return OpenReply::Offline;
            }
        };
        match cp.host(agent, &request.id, request.expires_at, request.body) {
            Ok((rx, _limit)) => {
                events::start_hosting(self, agent.to_owned(), request.id, key, rx, credit);
                OpenReply::Ok
            }
            Err(dtma_control_plane::Error::Moving(_)) => OpenReply::Moving,
            Err(dtma_control_plane::Error::NotConnected(_)) => OpenReply::Offline,
        }
    }

    /// Record `request` cluster-wide and have the node holding `agent` send it. Returns false
    /// when the id was already recorded with the same request (the caller attaches to it).
    pub async fn open(&self, agent: &str, request: Request) -> Result<bool, RouteError> {
        let key = stream_key(agent, &request.id);
        let record = StreamRecord {
            agent: agent.to_owned(),
            request: request.clone(),
            opened_by: self.inner.node.clone(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| RouteError::Nats(e.to_string()))?;
        match self
            .inner
            .streams_kv
            .create(format!("s.{key}"), value.into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return match self.record(&key).await {
                    Some(held) if held.request == request && held.agent == agent => Ok(false),
                    Some(_) => Err(RouteError::Conflict(request.id)),
                    // Expired between the two calls: a stale id, refuse rather than guess.
                    None => Err(RouteError::Conflict(request.id)),
                };
            }
            Err(e) => return Err(RouteError::Nats(e.to_string())),
        }
        match self.route(agent, request).await {
            Ok(()) => Ok(true),
            Err(e) => {
                // Never sent: the id may be used again.
                let _ = self.inner.streams_kv.purge(format!("s.{key}")).await;
                Err(e)
            }
        }
    }

    /// Send to the node holding `agent`, waiting up to `open_wait` for it to be connected to a
    /// live node (it may be moving, or reconnecting after a node died).
    async fn route(&self, agent: &str, request: Request) -> Result<(), RouteError> {
        let deadline = tokio::time::Instant::now() + self.inner.settings.open_wait;
        let mut changed = self.changed();
        // The holder last asked, and when to ask it again anyway: the directory and node table
        // change for every agent, but only a change of this agent's holder makes a new answer
        // likely (thousands of waiting requests must not each re-ask at every change).
        let mut asked: Option<(Option<String>, tokio::time::Instant)> = None;
        loop {
            let holder = self.holder(agent);
            let due = match &asked {
                None => true,
                Some((h, again)) => *h != holder || tokio::time::Instant::now() >= *again,
            };
            if due {
                let answer = match &holder {
                    Some(node) if *node == self.inner.node => {
                        self.host_local(agent, request.clone()).await
                    }
                    Some(node) => self.ask(node, agent, &request).await,
                    None => OpenReply::Offline,
                };
                match answer {
                    OpenReply::Ok => return Ok(()),
                    OpenReply::Offline | OpenReply::Moving => {
                        debug!(
                            agent,
                            ?answer,
                            "Agent not reachable yet; waiting for the directory."
                        );
                    }
                }
                asked = Some((
                    holder,
                    tokio::time::Instant::now() + self.inner.settings.node_ttl,
                ));
            }
            let gone = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => true,
                _ = self.inner.stop.cancelled() => return Err(RouteError::Stopping),
                r = changed.changed() => r.is_err(),
            };
            if gone {
                return Err(if lock(&self.inner.mirror).contains_key(agent) {
                    RouteError::Offline(agent.to_owned())
                } else {
                    RouteError::UnknownAgent(agent.to_owned())
                });
            }
        }
    }

    async fn ask(&self, node: &str, agent: &str, request: &Request) -> OpenReply {
        let record = StreamRecord {
            agent: agent.to_owned(),
            request: request.clone(),
            opened_by: self.inner.node.clone(),
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            return OpenReply::Offline;
        };
        let subject = format!("{GW_PREFIX}.{node}.open");
        match tokio::time::timeout(
            self.inner.settings.node_ttl,
            self.inner.client.request(subject, body.into()),
        )
        .await
        {
            Ok(Ok(m)) => serde_json::from_slice(&m.payload).unwrap_or(OpenReply::Offline),
            Ok(Err(e)) => {
                debug!(node, error = %e, "Node did not answer an open request.");
                OpenReply::Offline
            }
            Err(_) => OpenReply::Offline,
        }
    }

    /// The live node holding `agent`'s session, per the mirror.
    pub fn holder(&self, agent: &str) -> Option<String> {
        let node = lock(&self.inner.mirror)
            .get(agent)
            .filter(|e| e.connected)
            .map(|e| e.node.clone())?;
        self.node_alive(&node).then_some(node)
    }

    /// The recorded request of stream `key`, if any.
    pub async fn record(&self, key: &str) -> Option<StreamRecord> {
        match self.inner.streams_kv.get(format!("s.{key}")).await {
            Ok(Some(v)) => serde_json::from_slice(&v).ok(),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "Cannot read a stream record.");
                None
            }
        }
    }

    /// A reader of stream (`agent`, `id`)'s events from the start, with credit relayed to
    /// whichever node hosts it. `None` when the cluster has no record of it.
    pub async fn reader(
        &self,
        agent: &str,
        id: &str,
    ) -> Result<Option<events::Reader>, RouteError> {
        let key = stream_key(agent, id);
        let Some(record) = self.record(&key).await else {
            return Ok(None);
        };
        let window = self
            .cp()
            .map_or(1 << 20, |cp| cp.initial_limit(&record.request.body));
        events::Reader::new(self, key, window)
            .await
            .map(Some)
            .map_err(|e| RouteError::Nats(e.to_string()))
    }
}

impl ResumeHook for Cluster {
    fn unknown_streams<'a>(
        &'a self,
        cp: &'a ControlPlane,
        agent: &'a str,
        ids: Vec<String>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for id in ids {
                events::adopt(self, cp, agent, id).await;
            }
        })
    }
}

/// The bucket of agent entries.
pub const AGENTS_BUCKET: &str = "dtma_agents";
/// The bucket of stream records and credit limits.
pub const STREAMS_BUCKET: &str = "dtma_streams";
/// The JetStream stream of every operator stream's events.
pub const EVENTS_STREAM: &str = "DTMA_EVENTS";
const EVENTS_PREFIX: &str = "dtma.ev";
const GW_PREFIX: &str = "dtma.gw";
const NODE_PREFIX: &str = "dtma.gw.node";

/// A stream's name in subjects and keys: agent and request ids may hold any character, NATS
/// tokens may not, so the pair is hashed (SHA-256, 128 bits in hex).
pub fn stream_key(agent: &str, id: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(agent.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    hex(&h.finalize()[..16])
}

/// An agent id as a KV key (hex: ids may hold characters keys may not).
fn agent_key(agent: &str) -> String {
    hex(agent.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
