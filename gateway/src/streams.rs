//! Operator streams: each request's events, buffered (bounded) so that HTTP clients can attach,
//! drop and resume by position without gaps or duplicates.
//!
//! A request sent through the gateway gets one [`Stream`] keyed by `(agent id, request id)`.
//! A pump task reads the engine's [`StreamRx`] (events exactly once, in `seq` order) into the
//! stream's buffer; any number of [`Cursor`]s read the buffer from a position. Credit follows
//! the pump, and the pump follows the readers: when the buffer is full of events no client has
//! been sent, the pump stops reading, the engine stops granting credit and the agent pauses the
//! command. Events that a client has been sent are the first to go when the buffer is full, so
//! a client that drops its connection can resume as long as what it missed is still held
//! (else `410 events_evicted`). An ended stream is kept for the retention time, then forgotten.
//!
//! In a cluster (`crate::cluster`), the request is recorded and routed through NATS and the
//! pump reads the stream's events back from JetStream instead of the local engine; the buffer,
//! cursors and positions are the same.
//!
//! Positions are the protocol's `seq`. A request the agent refused before it became a stream
//! (unsequenced `error`) or whose id it had already seen (`state`) gives a stream of that one
//! message at position 0.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dtma_control_plane::{ControlPlane, StreamRx};
use dtma_protocol::{AgentMessage, Request, RequestBody};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, RouteError, events::Reader};
use crate::config::StreamSettings;

/// One buffered event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The protocol's `seq` (0 for a refusal without one).
    pub seq: u64,
    /// The message's `type` (`started`, `output`, `exit`, ...).
    pub kind: &'static str,
    /// The message as the agent sent it, as compact JSON (one line).
    pub json: Bytes,
    /// The decoded message, for callers that collect (the buffered answer).
    pub message: Arc<AgentMessage>,
    /// True for the last event of the stream.
    pub terminal: bool,
}

/// Why a request could not be opened or attached.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("agent `{0}` has never connected to this gateway")]
    UnknownAgent(String),
    #[error("agent `{0}` is not connected")]
    AgentOffline(String),
    #[error("request id `{0}` is in use by a different request")]
    IdConflict(String),
    #[error("the gateway holds its maximum of {0} streams")]
    TooManyStreams(usize),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the cluster cannot be reached: {0}")]
    ClusterUnavailable(String),
}

impl From<RouteError> for OpenError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownAgent(a) => OpenError::UnknownAgent(a),
            RouteError::Offline(a) => OpenError::AgentOffline(a),
            RouteError::Conflict(id) => OpenError::IdConflict(id),
            RouteError::Nats(m) => OpenError::ClusterUnavailable(m),
            RouteError::Stopping => OpenError::ShuttingDown,
        }
    }
}

/// Where a stream's events come from.
enum Source {
    /// This node's engine (one node on its own).
    Local(StreamRx),
    /// JetStream (a cluster), whichever node hosts the agent.
    Cluster(Box<Reader>),
}

impl Source {
    async fn recv(&mut self) -> Option<AgentMessage> {
        match self {
            Source::Local(rx) => rx.recv().await,
            Source::Cluster(r) => r.recv().await,
        }
    }
}

/// Why a cursor could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no request `{1}` of agent `{0}` is held (unknown, or ended and past its retention)")]
    UnknownRequest(String, String),
    #[error("events before {first_held} are no longer held")]
    Evicted { first_held: u64 },
}

/// Every operator stream of this gateway.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    cp: ControlPlane,
    cluster: Option<Cluster>,
    settings: StreamSettings,
    map: Mutex<HashMap<(String, String), Arc<Stream>>>,
    /// Bumped when a stream ends or an open finishes.
    ended: watch::Sender<u64>,
    /// Work under way that is not a stream yet: operator connections, cluster opens (which
    /// wait for the agent's node). A drain waits for them.
    busy: std::sync::atomic::AtomicUsize,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The outcome of [`Streams::open`].
pub struct Opened {
    pub stream: Arc<Stream>,
    /// False when the request id was already held: the caller attached to that stream.
    pub created: bool,
}

impl Streams {
    pub fn new(
        cp: ControlPlane,
        cluster: Option<Cluster>,
        settings: StreamSettings,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Streams {
        Streams {
            inner: Arc::new(Inner {
                cp,
                cluster,
                settings,
                map: Mutex::new(HashMap::new()),
                ended: watch::channel(0).0,
                busy: std::sync::atomic::AtomicUsize::new(0),
                stop,
                tasks,
            }),
        }
        .with_reaper()
    }

    /// Follows (`logs_follow`, `mcp_events`) never end by themselves: one nobody has read for
    /// `unattended_cancel` is cancelled at the agent, so that a closed browser tab does not
    /// leave a follow (and a stream slot) behind forever. Commands are left alone: they end.
    fn with_reaper(self) -> Streams {
        let Some(after) = self.inner.settings.unattended_cancel else {
            return self;
        };
        let streams = self.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval((after / 4).clamp(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(1),
            ));
            loop {
                tokio::select! {
                    _ = streams.inner.stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let due: Vec<Arc<Stream>> = lock(&streams.inner.map)
                    .values()
                    .filter(|s| s.unattended_for().is_some_and(|d| d >= after))
                    .cloned()
                    .collect();
                for s in due {
                    s.cancel_sent.store(true, std::sync::atomic::Ordering::Relaxed);
                    info!(agent_id = %s.agent, request_id = %s.id, "Nobody reads this follow: cancelling it.");
                    let cancel = RequestBody::Cancel(dtma_protocol::Cancel { target: s.id.clone() });
                    let id = format!("{}~unattended-cancel", s.id);
                    let streams = streams.clone();
                    // Spawned: in a cluster an open may wait for the agent's node.
                    streams.inner.tasks.clone().spawn(async move {
                        if let Err(e) = streams.open(&s.agent, id, None, cancel).await {
                            warn!(agent_id = %s.agent, request_id = %s.id, error = %e, "Cannot cancel an unattended follow.");
                        }
                    });
                }
            }
        });
        self
    }

    /// Send `body` to `agent` as request `id`, or attach to the stream already holding that id
    /// (the same body again: idempotent; a different one: [`OpenError::IdConflict`]). In a
    /// cluster the id is held cluster-wide and the agent may be on any node.
    pub async fn open(
        &self,
        agent: &str,
        id: String,
        expires_at: Option<String>,
        body: RequestBody,
    ) -> Result<Opened, OpenError> {
        let Some(cluster) = self.inner.cluster.clone() else {
            return self.open_local(agent, id, expires_at, body);
        };
        let _busy = self.busy();
        if let Some(held) = self.held(&lock(&self.inner.map), agent, &id, &body)? {
            return Ok(held);
        }
        let request = Request {
            id: id.clone(),
            expires_at,
            body: body.clone(),
        };
        let created = cluster.open(agent, request).await?;
        let reader = cluster
            .reader(agent, &id)
            .await?
            .ok_or_else(|| OpenError::ClusterUnavailable("the stream record vanished".into()))?;
        if created {
            info!(agent_id = %agent, request_id = %id, kind = body.kind(), "Request sent.");
        }
        let (stream, _) = self.hold(agent, id, body, Source::Cluster(Box::new(reader)));
        Ok(Opened { stream, created })
    }

    /// The stream already holding `id` (the same body: attach; another: conflict), or room
    /// for a new one.
    fn held(
        &self,
        map: &HashMap<(String, String), Arc<Stream>>,
        agent: &str,
        id: &str,
        body: &RequestBody,
    ) -> Result<Option<Opened>, OpenError> {
        if let Some(stream) = map.get(&(agent.to_owned(), id.to_owned())) {
            if stream.body != *body {
                return Err(OpenError::IdConflict(id.to_owned()));
            }
            return Ok(Some(Opened {
                stream: stream.clone(),
                created: false,
            }));
        }
        self.room(map)?;
        Ok(None)
    }

    fn room(&self, map: &HashMap<(String, String), Arc<Stream>>) -> Result<(), OpenError> {
        if self.inner.stop.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        if map.len() >= self.inner.settings.max_streams {
            return Err(OpenError::TooManyStreams(self.inner.settings.max_streams));
        }
        Ok(())
    }

    /// Hold a stream fed by `source` (or the one another task put there meanwhile), with its
    /// pump and retention. True when this call created it.
    fn hold(
        &self,
        agent: &str,
        id: String,
        body: RequestBody,
        source: Source,
    ) -> (Arc<Stream>, bool) {
        let key = (agent.to_owned(), id.clone());
        let mut map = lock(&self.inner.map);
        if let Some(existing) = map.get(&key) {
            return (existing.clone(), false);
        }
        let stream = Arc::new(Stream::new(
            agent,
            id,
            body,
            self.inner.settings.buffer_bytes,
        ));
        map.insert(key.clone(), stream.clone());
        drop(map);
        self.spawn_pump(key, stream.clone(), source);
        (stream, true)
    }

    fn spawn_pump(&self, key: (String, String), stream: Arc<Stream>, source: Source) {
        let streams = self.clone();
        self.inner.tasks.spawn(async move {
            stream.pump(source, &streams.inner.stop).await;
            streams.inner.ended.send_modify(|v| *v += 1);
            // Ended (or stopping): keep it for late readers and idempotent repeats, then forget.
            tokio::select! {
                _ = streams.inner.stop.cancelled() => {}
                _ = tokio::time::sleep(streams.inner.settings.retention) => {}
            }
            lock(&streams.inner.map).remove(&key);
            debug!(agent_id = %key.0, request_id = %key.1, "Stream forgotten.");
        });
    }

    fn open_local(
        &self,
        agent: &str,
        id: String,
        expires_at: Option<String>,
        body: RequestBody,
    ) -> Result<Opened, OpenError> {
        let key = (agent.to_owned(), id.clone());
        // Held across the send, so that two requests with one id cannot both reach the agent.
        let mut map = lock(&self.inner.map);
        if let Some(held) = self.held(&map, agent, &id, &body)? {
            return Ok(held);
        }
        match self.inner.cp.agent(agent) {
            None => return Err(OpenError::UnknownAgent(agent.to_owned())),
            Some(rec) if !rec.connected => return Err(OpenError::AgentOffline(agent.to_owned())),
            Some(_) => {}
        }
        let kind = body.kind();
        let rx = self
            .inner
            .cp
            .request_with_id(agent, id.clone(), expires_at, body.clone())
            .map_err(|_| OpenError::AgentOffline(agent.to_owned()))?;
        let stream = Arc::new(Stream::new(
            agent,
            id.clone(),
            body,
            self.inner.settings.buffer_bytes,
        ));
        map.insert(key.clone(), stream.clone());
        drop(map);
        info!(agent_id = %agent, request_id = %id, kind, "Request sent.");
        self.spawn_pump(key, stream.clone(), Source::Local(rx));
        Ok(Opened {
            stream,
            created: true,
        })
    }

    /// The stream of request `id` of `agent`, while held; in a cluster, also one opened
    /// through another node (read back from JetStream).
    pub async fn get(&self, agent: &str, id: &str) -> Result<Arc<Stream>, AttachError> {
        if let Some(s) = lock(&self.inner.map).get(&(agent.to_owned(), id.to_owned())) {
            return Ok(s.clone());
        }
        let unknown = || AttachError::UnknownRequest(agent.to_owned(), id.to_owned());
        let Some(cluster) = &self.inner.cluster else {
            return Err(unknown());
        };
        let key = crate::cluster::stream_key(agent, id);
        let record = cluster.record(&key).await.ok_or_else(unknown)?;
        let reader = cluster
            .reader(agent, id)
            .await
            .ok()
            .flatten()
            .ok_or_else(unknown)?;
        let (stream, _) = self.hold(
            agent,
            id.to_owned(),
            record.request.body,
            Source::Cluster(Box::new(reader)),
        );
        Ok(stream)
    }

    /// Count work under way (see `busy`) while the guard lives.
    pub fn busy(&self) -> Busy {
        self.inner
            .busy
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self.inner.clone())
    }

    /// (streams running, streams ended and retained, other work under way: operator
    /// connections and opens).
    pub fn counts(&self) -> (usize, usize, usize) {
        let map = lock(&self.inner.map);
        let running = map.values().filter(|s| !s.ended()).count();
        (
            running,
            map.len() - running,
            self.inner.busy.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Streams whose terminal event has not arrived yet, and other work under way.
    pub fn running(&self) -> usize {
        lock(&self.inner.map)
            .values()
            .filter(|s| !s.ended())
            .count()
            + self.inner.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that changes whenever a stream ends.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.ended.subscribe()
    }

    /// Streams held now (running or retained).
    pub fn len(&self) -> usize {
        lock(&self.inner.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token that ends every cursor and pump.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.inner.stop
    }
}

/// Work under way, counted by [`Streams::running`] while it lives.
pub struct Busy(Arc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.ended.send_modify(|v| *v += 1);
    }
}

/// One request's events.
pub struct Stream {
    pub agent: String,
    pub id: String,
    body: RequestBody,
    buf: Mutex<Buf>,
    /// Bumped on every change (event appended, end, reader progress).
    changed: watch::Sender<u64>,
    cap: usize,
    /// Cursors reading it now, and since when none has.
    readers: Mutex<(usize, std::time::Instant)>,
    /// The reaper has cancelled it (see `Streams::with_reaper`).
    cancel_sent: std::sync::atomic::AtomicBool,
    /// An operator paused it ([`Stream::pause`]): the pump reads nothing, so no credit.
    paused: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Buf {
    events: VecDeque<Event>,
    bytes: usize,
    /// The position the next event gets.
    next: u64,
    /// The lowest position still held (everything below was evicted).
    first_held: u64,
    /// The highest position handed to any client.
    sent: Option<u64>,
    ended: bool,
    /// Each attached cursor's next position: an event an attached client has not read yet is
    /// never evicted (a slow second reader holds the stream back, as a slow single one does).
    positions: HashMap<u64, u64>,
    next_cursor: u64,
}

impl Buf {
    /// Drop events a client has been sent, and every attached client has read, while over
    /// the cap.
    fn evict(&mut self, cap: usize) {
        let slowest = self.positions.values().min().copied().unwrap_or(u64::MAX);
        // `>=`: the pump needs `bytes < cap` to read on. At exactly the cap, evicting nothing
        // would leave it waiting for a change that never comes.
        while self.bytes >= cap
            && let Some(front) = self.events.front()
            && self.sent.is_some_and(|s| front.seq <= s)
            && front.seq < slowest
        {
            self.bytes -= front.json.len();
            self.events.pop_front();
            self.first_held = self.events.front().map_or(self.next, |e| e.seq);
        }
    }
}

impl Stream {
    /// A cursor from position `from` (0: the start; `Last-Event-ID` + 1 to resume).
    pub fn cursor(self: &Arc<Self>, from: u64) -> Result<Cursor, AttachError> {
        let rx = self.changed.subscribe();
        let buf = lock(&self.buf);
        if from < buf.first_held {
            return Err(AttachError::Evicted {
                first_held: buf.first_held,
            });
        }
        let mut buf = buf;
        let id = buf.next_cursor;
        buf.next_cursor += 1;
        buf.positions.insert(id, from);
        drop(buf);
        lock(&self.readers).0 += 1;
        Ok(Cursor {
            stream: self.clone(),
            id,
            next: from,
            rx,
        })
    }

    fn new(agent: &str, id: String, body: RequestBody, cap: usize) -> Stream {
        Stream {
            agent: agent.to_owned(),
            id,
            body,
            buf: Mutex::new(Buf::default()),
            changed: watch::channel(0).0,
            cap,
            readers: Mutex::new((0, std::time::Instant::now())),
            cancel_sent: std::sync::atomic::AtomicBool::new(false),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stop (`true`) or restart reading the agent's events for this stream. Paused, the
    /// buffer takes nothing more, so no credit is granted and the agent holds the command's
    /// (or the follow's) output back; what is buffered still reaches the clients. This is how
    /// a client pauses when it cannot stop reading its body (a browser's `fetch` keeps
    /// draining a body the page does not read).
    pub fn pause(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long a running follow has had no reader; `None` while read, ended, not a follow,
    /// or already cancelled.
    fn unattended_for(&self) -> Option<std::time::Duration> {
        let follow = matches!(
            self.body,
            RequestBody::LogsFollow(_) | RequestBody::McpEvents(_)
        );
        if !follow || self.ended() || self.cancel_sent.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let (n, since) = *lock(&self.readers);
        (n == 0).then(|| since.elapsed())
    }

    /// True once the terminal event is buffered.
    pub fn ended(&self) -> bool {
        lock(&self.buf).ended
    }

    async fn pump(&self, mut rx: Source, stop: &CancellationToken) {
        let mut changes = self.changed.subscribe();
        loop {
            // Wait for room (readers advance, which lets eviction free it) and while paused.
            loop {
                if lock(&self.buf).bytes < self.cap && !self.paused() {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
            }
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => m,
            };
            let Some(message) = message else {
                // The engine dropped the stream without a terminal event.
                self.end();
                return;
            };
            if self.append(message) {
                return;
            }
        }
    }

    /// Buffer one message; true when it ended the stream.
    fn append(&self, message: AgentMessage) -> bool {
        let (seq, kind, terminal) = describe(&message);
        let json = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        let mut buf = lock(&self.buf);
        let seq = seq.unwrap_or(buf.next);
        buf.next = seq + 1;
        buf.bytes += json.len();
        buf.events.push_back(Event {
            seq,
            kind,
            json,
            message: Arc::new(message),
            terminal,
        });
        buf.ended |= terminal;
        buf.evict(self.cap);
        drop(buf);
        self.changed.send_modify(|v| *v += 1);
        terminal
    }

    fn end(&self) {
        lock(&self.buf).ended = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// A client was handed the event at `seq`.
    fn sent(&self, cursor: u64, seq: u64) {
        let mut buf = lock(&self.buf);
        buf.positions.insert(cursor, seq + 1);
        if buf.sent.is_none_or(|s| s < seq) {
            buf.sent = Some(seq);
        }
        let before = buf.first_held;
        buf.evict(self.cap);
        let freed = buf.first_held != before;
        drop(buf);
        if freed {
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

/// A reader of one stream from a position on.
pub struct Cursor {
    stream: Arc<Stream>,
    id: u64,
    next: u64,
    rx: watch::Receiver<u64>,
}

/// What [`Cursor::next`] found.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// The stream ended and every event up to its end was read.
    End,
    /// Events this cursor needs were evicted (it fell too far behind).
    Evicted {
        first_held: u64,
    },
}

impl Drop for Cursor {
    fn drop(&mut self) {
        {
            let mut buf = lock(&self.stream.buf);
            buf.positions.remove(&self.id);
            buf.evict(self.stream.cap);
        }
        // The pump may be waiting for room.
        self.stream.changed.send_modify(|v| *v += 1);
        let mut r = lock(&self.stream.readers);
        r.0 = r.0.saturating_sub(1);
        if r.0 == 0 {
            r.1 = std::time::Instant::now();
        }
    }
}

impl Cursor {
    /// The next event; waits while there is none yet.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<Next> {
        loop {
            {
                let buf = lock(&self.stream.buf);
                if self.next < buf.first_held {
                    return Some(Next::Evicted {
                        first_held: buf.first_held,
                    });
                }
                let found = buf.events.iter().find(|e| e.seq >= self.next).cloned();
                if let Some(e) = found {
                    drop(buf);
                    self.next = e.seq + 1;
                    self.stream.sent(self.id, e.seq);
                    return Some(Next::Event(e));
                }
                if buf.ended {
                    return Some(Next::End);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = self.rx.changed() => if r.is_err() { return None },
            }
        }
    }
}

/// `seq`, `type` and whether it ends the stream.
pub(crate) fn describe(m: &AgentMessage) -> (Option<u64>, &'static str, bool) {
    match m {
        AgentMessage::Started(x) => (Some(x.seq), "started", false),
        AgentMessage::Output(x) => (Some(x.seq), "output", false),
        AgentMessage::Progress(x) => (Some(x.seq), "progress", false),
        AgentMessage::McpEvent(x) => (Some(x.seq), "mcp_event", false),
        AgentMessage::Exit(x) => (Some(x.seq), "exit", true),
        AgentMessage::Result(x) => (Some(x.seq), "result", true),
        AgentMessage::Error(x) => (x.seq, "error", true),
        AgentMessage::State(_) => (None, "state", true),
        AgentMessage::Status(_) => (None, "status", false),
        AgentMessage::Hello(_) => (None, "hello", false),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtma_protocol::{Encoding, Exit, Fd, Output, Ping};

    fn stream(cap: usize) -> Arc<Stream> {
        Arc::new(Stream::new(
            "a",
            "r".into(),
            RequestBody::Ping(Ping {}),
            cap,
        ))
    }

    fn output(seq: u64) -> AgentMessage {
        AgentMessage::Output(Output {
            id: "r".into(),
            seq,
            fd: Fd::Stdout,
            encoding: Encoding::Utf8,
            data: "x".repeat(100),
        })
    }

    fn exit(seq: u64) -> AgentMessage {
        AgentMessage::Exit(Exit {
            id: "r".into(),
            seq,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            cancelled: false,
            killed_with: None,
            duration_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
        })
    }

    async fn next_seq(c: &mut Cursor) -> u64 {
        match c.next(&CancellationToken::new()).await {
            Some(Next::Event(e)) => e.seq,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unsent_events_are_never_evicted_and_sent_ones_go_first() {
        let s = stream(300);
        for seq in 0..3 {
            assert!(!s.append(output(seq)));
        }
        // Over the cap, but no client has been sent anything: all held (the pump waits).
        assert!(lock(&s.buf).bytes > 300);
        assert_eq!(lock(&s.buf).events.len(), 3);
        let mut c = s.cursor(0).expect("from the start");
        assert_eq!(next_seq(&mut c).await, 0);
        // Seq 0 was sent: it is the one evicted.
        assert_eq!(lock(&s.buf).first_held, 1);
        match s.cursor(0) {
            Err(AttachError::Evicted { first_held }) => assert_eq!(first_held, 1),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Resuming after what was read still works, without duplicates.
        let mut resumed = s.cursor(1).expect("held");
        assert_eq!(next_seq(&mut resumed).await, 1);
        assert_eq!(next_seq(&mut resumed).await, 2);
        // The first cursor, still attached at seq 1, holds what it has not read: a fast
        // second reader does not make it fall behind.
        assert_eq!(lock(&s.buf).first_held, 1);
        assert_eq!(next_seq(&mut c).await, 1);
        assert_eq!(lock(&s.buf).first_held, 2);
        // Back under the cap: nothing more is evicted.
        assert!(lock(&s.buf).bytes <= 300);
        drop(c);
        assert_eq!(lock(&s.buf).first_held, 2);
    }

    #[tokio::test]
    async fn a_buffer_exactly_full_of_read_events_makes_room() {
        let one = serde_json::to_vec(&output(0)).unwrap().len();
        let s = stream(3 * one);
        for seq in 0..3 {
            s.append(output(seq));
        }
        assert_eq!(lock(&s.buf).bytes, 3 * one);
        let mut c = s.cursor(0).expect("from the start");
        for seq in 0..3 {
            assert_eq!(next_seq(&mut c).await, seq);
        }
        // Everything was read: the pump (which needs bytes < cap) must be able to go on.
        assert!(
            lock(&s.buf).bytes < s.cap,
            "{} of {}",
            lock(&s.buf).bytes,
            s.cap
        );
    }

    #[tokio::test]
    async fn a_cursor_waits_for_events_and_sees_the_end() {
        let s = stream(1 << 20);
        let mut c = s.cursor(0).expect("from the start");
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                match c.next(&CancellationToken::new()).await {
                    Some(Next::Event(e)) => seqs.push((e.seq, e.kind, e.terminal)),
                    Some(Next::End) => return seqs,
                    other => panic!("{other:?}"),
                }
            }
        });
        s.append(output(0));
        s.append(output(1));
        assert!(s.append(exit(2)));
        assert!(s.ended());
        let seqs = reader.await.expect("reader");
        assert_eq!(
            seqs,
            vec![
                (0, "output", false),
                (1, "output", false),
                (2, "exit", true)
            ]
        );
        // A reader after the end, resuming past the last event, ends at once.
        let mut late = s.cursor(3).expect("nothing evicted");
        assert!(matches!(
            late.next(&CancellationToken::new()).await,
            Some(Next::End)
        ));
    }
}
