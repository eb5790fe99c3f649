//! The agent directory in KV bucket `dtma_agents`: written by the node holding each agent,
//! mirrored by every node.
//!
//! Writes follow the engine's directory events, in order, from one task per node. A connect is
//! an unconditional put (the newest session wins); heartbeats and the disconnect are
//! compare-and-set on the revision this node wrote, so a node whose agent has moved on cannot
//! overwrite the entry of the node that holds it now, nor mark the agent offline. When such a
//! write loses, the agent is somewhere else: the streams this node hosted for it were adopted
//! there, and are dropped here.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use dtma_control_plane::{AgentRecord, ControlPlane, DirectoryEvent};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{debug, warn};

use super::{Cluster, Error, agent_key, lock};

/// One agent's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub agent_id: String,
    /// The node holding (or last holding) the agent's session.
    pub node: String,
    pub session_id: String,
    /// True while that node holds the session. Shown as connected only while the node lives.
    pub connected: bool,
    /// The agent as the API shows it ([`crate::view::agent_view`]), as that node saw it.
    pub view: serde_json::Value,
}

impl Entry {
    fn of(node: &str, rec: &AgentRecord) -> Entry {
        Entry {
            agent_id: rec.agent_id.clone(),
            node: node.to_owned(),
            session_id: rec.session_id.clone(),
            connected: rec.connected,
            view: crate::view::agent_view(rec),
        }
    }
}

impl Cluster {
    /// Every agent of the cluster as the API shows it, sorted by id: `state` is `connected`
    /// only while the node named in the entry lives; `node` names it.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        let mut entries: Vec<Entry> = lock(&self.inner.mirror).values().cloned().collect();
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        entries.iter().map(|e| self.show(e)).collect()
    }

    /// One agent as the API shows it.
    pub fn agent(&self, id: &str) -> Option<serde_json::Value> {
        let entry = lock(&self.inner.mirror).get(id).cloned()?;
        Some(self.show(&entry))
    }

    fn show(&self, e: &Entry) -> serde_json::Value {
        let mut v = e.view.clone();
        let connected = e.connected && self.node_alive(&e.node);
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "state".into(),
                if connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
            );
            obj.insert("node".into(), e.node.clone().into());
        }
        v
    }
}

/// Mirror the bucket: every entry now, then every change.
pub(super) async fn start_mirror(cluster: &Cluster) -> Result<(), Error> {
    let mut watch = cluster
        .inner
        .agents_kv
        .watch_with_history(">")
        .await
        .map_err(|e| Error::Setup {
            what: "directory watch",
            message: e.to_string(),
        })?;
    let me = cluster.clone();
    cluster.inner.tasks.spawn(async move {
        loop {
            let item = tokio::select! {
                _ = me.inner.stop.cancelled() => return,
                item = watch.next() => item,
            };
            match item {
                None => {
                    warn!("The directory watch ended; the mirror is frozen.");
                    return;
                }
                Some(Err(e)) => warn!(error = %e, "Directory watch error."),
                Some(Ok(entry)) => {
                    match entry.operation {
                        kv::Operation::Put => match serde_json::from_slice::<Entry>(&entry.value) {
                            Ok(e) => {
                                let agent = e.agent_id.clone();
                                let moved_away = e.node != me.inner.node;
                                let previous = lock(&me.inner.mirror).insert(agent.clone(), e);
                                // The agent left this node for another, which adopted its
                                // streams: stop hosting them here.
                                if moved_away
                                    && previous.is_some_and(|p| p.node == me.inner.node)
                                    && let Some(cp) = me.cp()
                                {
                                    cp.forget_hosted(&agent);
                                }
                            }
                            Err(e) => {
                                warn!(key = %entry.key, error = %e, "Undecodable directory entry.")
                            }
                        },
                        kv::Operation::Delete | kv::Operation::Purge => {
                            lock(&me.inner.mirror).retain(|id, _| agent_key(id) != entry.key);
                        }
                    }
                    me.inner.changed.send_modify(|v| *v += 1);
                }
            }
        }
    });
    Ok(())
}

/// Write this node's agents into the bucket, following the engine's events in order per
/// agent. The events ready at once are taken as a batch and their agents written
/// concurrently (each agent's own events in order), so a reconnect wave of thousands costs a
/// few round trips, not thousands.
pub(super) fn start_writer(cluster: &Cluster, cp: ControlPlane) {
    let mut events = cp.directory_events();
    // Agents that connected before the writer subscribed (none, when attached before serving).
    let early: Vec<AgentRecord> = cp.agents().into_iter().filter(|r| r.connected).collect();
    let me = cluster.clone();
    cluster.inner.tasks.spawn(async move {
        // agent id → (session id, revision this node wrote).
        let mut owned: HashMap<String, Owned> = HashMap::new();
        let early = early.into_iter().map(DirectoryEvent::Connected).collect();
        me.apply(&cp, &mut owned, early).await;
        loop {
            let first = tokio::select! {
                _ = me.inner.stop.cancelled() => break,
                e = events.recv() => e,
            };
            let mut batch = Vec::new();
            let mut lagged = false;
            let mut next = Some(first);
            while let Some(event) = next.take() {
                match event {
                    Ok(ev) => batch.push(ev),
                    Err(RecvError::Lagged(n)) => {
                        warn!(
                            missed = n,
                            "Directory writer lagged; rewriting this node's agents."
                        );
                        lagged = true;
                    }
                    Err(RecvError::Closed) => return,
                }
                if batch.len() < 4096 {
                    next = match events.try_recv() {
                        Ok(ev) => Some(Ok(ev)),
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    };
                }
            }
            if lagged {
                // What was missed is unknown: the engine's directory now is the truth.
                batch = cp
                    .agents()
                    .into_iter()
                    .map(|r| {
                        if r.connected {
                            DirectoryEvent::Connected(r)
                        } else {
                            DirectoryEvent::Disconnected(r)
                        }
                    })
                    .collect();
            }
            me.apply(&cp, &mut owned, batch).await;
        }
        // Stopping: the agents are leaving this node (drained, or cut now). Mark those still
        // ours offline, unless another node has taken them meanwhile.
        let last = cp
            .agents()
            .into_iter()
            .filter(|r| owned.contains_key(&r.agent_id))
            .map(|mut r| {
                r.connected = false;
                DirectoryEvent::Disconnected(r)
            })
            .collect();
        // Bounded, like every step after the stop: NATS may be gone.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            me.apply(&cp, &mut owned, last),
        )
        .await;
    });
}

/// The session this node wrote an agent's entry for, and the entry's revision.
type Owned = (String, u64);

impl Cluster {
    /// Write `batch`: agents concurrently, each agent's events in order.
    async fn apply(
        &self,
        cp: &ControlPlane,
        owned: &mut HashMap<String, Owned>,
        batch: Vec<DirectoryEvent>,
    ) {
        let mut by_agent: HashMap<String, Vec<DirectoryEvent>> = HashMap::new();
        for ev in batch {
            let id = match &ev {
                DirectoryEvent::Connected(r) | DirectoryEvent::Disconnected(r) => &r.agent_id,
                DirectoryEvent::Heartbeat { record, .. } => &record.agent_id,
            };
            by_agent.entry(id.clone()).or_default().push(ev);
        }
        let work = by_agent.into_iter().map(|(agent, evs)| {
            let mut own = owned.remove(&agent);
            async move {
                for ev in evs {
                    match ev {
                        DirectoryEvent::Connected(rec) => self.put(&mut own, &rec).await,
                        DirectoryEvent::Heartbeat { record, .. } => {
                            self.update(cp, &mut own, &record).await
                        }
                        DirectoryEvent::Disconnected(rec) => {
                            // Moved (make-before-break): connected elsewhere, and the node it
                            // moved to writes the entry; marking it offline here could only be
                            // wrong.
                            if !rec.moved {
                                self.update(cp, &mut own, &rec).await;
                            }
                            own = None;
                        }
                    }
                }
                (agent, own)
            }
        });
        for (agent, own) in futures_util::future::join_all(work).await {
            if let Some(o) = own {
                owned.insert(agent, o);
            }
        }
    }

    async fn put(&self, own: &mut Option<Owned>, rec: &AgentRecord) {
        let entry = Entry::of(&self.inner.node, rec);
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        match self
            .inner
            .agents_kv
            .put(agent_key(&rec.agent_id), value.into())
            .await
        {
            Ok(rev) => *own = Some((rec.session_id.clone(), rev)),
            Err(e) => warn!(agent_id = %rec.agent_id, error = %e, "Cannot write the directory."),
        }
    }

    /// Rewrite `rec`'s entry if it is still the one this node wrote for that session.
    async fn update(&self, cp: &ControlPlane, own: &mut Option<Owned>, rec: &AgentRecord) {
        let Some((session, rev)) = own.clone() else {
            return;
        };
        if session != rec.session_id {
            return;
        }
        let entry = Entry::of(&self.inner.node, rec);
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        match self
            .inner
            .agents_kv
            .update(agent_key(&rec.agent_id), value.into(), rev)
            .await
        {
            Ok(rev) => *own = Some((session, rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let dropped = cp.forget_hosted(&rec.agent_id);
                debug!(agent_id = %rec.agent_id, dropped, "The agent is held by another node now.");
                *own = None;
            }
            Err(e) => warn!(agent_id = %rec.agent_id, error = %e, "Cannot update the directory."),
        }
    }
}
