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
use tokio::sync::broadcast::error::RecvError;
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

/// Write this node's agents into the bucket, following the engine's events in order.
pub(super) fn start_writer(cluster: &Cluster, cp: ControlPlane) {
    let mut events = cp.directory_events();
    // Agents that connected before the writer subscribed (none, when attached before serving).
    let early: Vec<AgentRecord> = cp.agents().into_iter().filter(|r| r.connected).collect();
    let me = cluster.clone();
    cluster.inner.tasks.spawn(async move {
        // agent id → (session id, revision this node wrote).
        let mut owned: HashMap<String, (String, u64)> = HashMap::new();
        for rec in early {
            me.put(&mut owned, &rec).await;
        }
        loop {
            let event = tokio::select! {
                _ = me.inner.stop.cancelled() => break,
                e = events.recv() => e,
            };
            match event {
                Ok(DirectoryEvent::Connected(rec)) => me.put(&mut owned, &rec).await,
                Ok(DirectoryEvent::Heartbeat { record, .. }) => {
                    me.update(&cp, &mut owned, &record).await
                }
                Ok(DirectoryEvent::Disconnected(rec)) => {
                    // Moved (make-before-break): connected elsewhere, and the node it moved to
                    // writes the entry; marking it offline here could only be wrong.
                    if !rec.moved {
                        me.update(&cp, &mut owned, &rec).await;
                    }
                    owned.remove(&rec.agent_id);
                }
                Err(RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "Directory writer lagged; rewriting this node's agents."
                    );
                    for rec in cp.agents() {
                        if rec.connected {
                            me.put(&mut owned, &rec).await;
                        } else {
                            me.update(&cp, &mut owned, &rec).await;
                            owned.remove(&rec.agent_id);
                        }
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
        // Stopping: the agents are leaving this node (drained, or cut now). Mark those still
        // ours offline, unless another node has taken them meanwhile.
        for rec in cp.agents() {
            if owned.contains_key(&rec.agent_id) {
                let mut rec = rec;
                rec.connected = false;
                me.update(&cp, &mut owned, &rec).await;
            }
        }
    });
}

impl Cluster {
    async fn put(&self, owned: &mut HashMap<String, (String, u64)>, rec: &AgentRecord) {
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
            Ok(rev) => {
                owned.insert(rec.agent_id.clone(), (rec.session_id.clone(), rev));
            }
            Err(e) => warn!(agent_id = %rec.agent_id, error = %e, "Cannot write the directory."),
        }
    }

    /// Rewrite `rec`'s entry if it is still the one this node wrote for that session.
    async fn update(
        &self,
        cp: &ControlPlane,
        owned: &mut HashMap<String, (String, u64)>,
        rec: &AgentRecord,
    ) {
        let Some((session, rev)) = owned.get(&rec.agent_id).cloned() else {
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
            Ok(rev) => {
                owned.insert(rec.agent_id.clone(), (session, rev));
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let dropped = cp.forget_hosted(&rec.agent_id);
                debug!(agent_id = %rec.agent_id, dropped, "The agent is held by another node now.");
                owned.remove(&rec.agent_id);
            }
            Err(e) => warn!(agent_id = %rec.agent_id, error = %e, "Cannot update the directory."),
        }
    }
}
