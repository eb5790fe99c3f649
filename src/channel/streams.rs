//! Request streams: sequencing, the unacknowledged-output buffer, credit, and resend after a
//! reconnect.
//!
//! Every request the agent accepts becomes a stream of events numbered from 0. Events stay in
//! the stream's buffer until the backend acknowledges them, so a new connection can resend
//! exactly what the backend is missing. Reading a child's pipes is gated by two limits: the
//! backend's credit and the buffer's free space; when either is exhausted the child blocks on
//! its pipe, so memory stays bounded whatever the backend's speed.
//!
//! **Invariant:** within a stream, events are buffered in `seq` order with no gaps, and a
//! connection sends them in that order, starting from the first one the backend lacks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use dtma_protocol::{
    AgentMessage, ErrorCode, ErrorEvent, Fd, ResumePoint, StateEvent, StreamPhase, StreamResume,
};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::StreamLimits;
use crate::metrics::StreamCounters;
use crate::text::{Chunk, Utf8Carry};

/// Smallest free buffer space worth a read, so a nearly full buffer does not produce a storm
/// of tiny frames.
const MIN_READ_SPACE: usize = 16 << 10;

/// A serialised event waiting for its ack. `Utf8Bytes` is tungstenite's cheaply clonable string:
/// a resend clones a handle, and the writer hands it to the socket without validating it again.
struct Frame {
    seq: u64,
    text: Utf8Bytes,
}

struct Stream {
    next_seq: u64,
    /// Unacknowledged events, oldest first.
    frames: VecDeque<Frame>,
    /// Next seq to send on the current connection.
    cursor: u64,
    /// First seq never sent on any connection: frames below it that are sent again are resends.
    sent_upto: u64,
    buffered: usize,
    /// Output bytes the backend allows in total (absolute, only grows).
    limit: u64,
    /// Output bytes reserved or forwarded so far.
    used: u64,
    finished: bool,
    queued: bool,
    cancel: CancellationToken,
    /// Wakes a reader waiting for credit or buffer space.
    space: Arc<Notify>,
}

impl Stream {
    fn first_seq(&self) -> u64 {
        self.frames.front().map_or(self.next_seq, |f| f.seq)
    }
    fn phase(&self) -> StreamPhase {
        if self.finished {
            StreamPhase::Finished
        } else {
            StreamPhase::Running
        }
    }
    fn has_unsent(&self) -> bool {
        self.cursor < self.next_seq
    }
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Stream>,
    /// Streams with unsent frames, in the order the writer serves them.
    ready: VecDeque<String>,
    closed: HashSet<String>,
    closed_order: VecDeque<String>,
    initial_credit: u64,
    /// False between connections: nothing is queued for a writer then.
    connected: bool,
}

/// All streams of the agent. Shared by request handlers, exec sinks and the session writer.
pub struct Registry {
    inner: Mutex<Inner>,
    writer: Notify,
    /// Woken when the last held stream is acknowledged and removed.
    emptied: Notify,
    limits: StreamLimits,
    counters: StreamCounters,
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The id was seen before: here is where its stream stands. The request is not run again.
    Duplicate(StateEvent),
    TooMany,
}

impl Registry {
    /// A registry whose counters no metrics registry encodes (unit tests, benchmarks).
    pub fn new(limits: StreamLimits) -> Arc<Registry> {
        Self::with_counters(limits, StreamCounters::default())
    }

    /// A registry counting into the agent's metrics.
    pub fn with_counters(limits: StreamLimits, counters: StreamCounters) -> Arc<Registry> {
        Arc::new(Registry {
            inner: Mutex::new(Inner {
                initial_credit: limits.initial_credit,
                ..Inner::default()
            }),
            writer: Notify::new(),
            emptied: Notify::new(),
            limits,
            counters,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (no multi-step invariants are
        // left half done across an await or a fallible call), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open a stream for request `id`. `credit` overrides the session's initial credit.
    pub fn open(
        self: &Arc<Self>,
        id: &str,
        credit: Option<u64>,
        cancel: CancellationToken,
    ) -> Result<StreamHandle, OpenError> {
        let mut g = self.lock();
        if let Some(s) = g.streams.get(id) {
            return Err(OpenError::Duplicate(StateEvent {
                id: id.to_owned(),
                phase: s.phase(),
                next_seq: s.next_seq,
            }));
        }
        if g.closed.contains(id) {
            return Err(OpenError::Duplicate(StateEvent {
                id: id.to_owned(),
                phase: StreamPhase::Closed,
                next_seq: 0,
            }));
        }
        if g.streams.len() >= self.limits.max_streams {
            return Err(OpenError::TooMany);
        }
        let space = Arc::new(Notify::new());
        let credit = credit.unwrap_or(g.initial_credit);
        g.streams.insert(
            id.to_owned(),
            Stream {
                next_seq: 0,
                frames: VecDeque::new(),
                cursor: 0,
                sent_upto: 0,
                buffered: 0,
                limit: credit,
                used: 0,
                finished: false,
                queued: false,
                cancel,
                space: space.clone(),
            },
        );
        self.counters.running.inc();
        Ok(StreamHandle {
            registry: self.clone(),
            id: id.to_owned(),
            space,
            carry: Mutex::new(Utf8Carry::default()),
        })
    }

    /// Append one event to stream `id`; `make` gets the event's seq.
    fn push(&self, g: &mut Inner, id: &str, make: impl FnOnce(u64) -> AgentMessage) {
        self.push_bytes(g, id, |seq| match serde_json::to_string(&make(seq)) {
            Ok(v) => Some(v),
            Err(e) => {
                // Serialising our own types cannot fail; if it ever does, say so.
                tracing::error!(request_id = id, error = %e, "Event serialisation failed.");
                None
            }
        });
    }

    /// Append one serialised event; `make` gets the event's seq.
    fn push_bytes(&self, g: &mut Inner, id: &str, make: impl FnOnce(u64) -> Option<String>) {
        let connected = g.connected;
        let Some(s) = g.streams.get_mut(id) else {
            return;
        };
        if s.finished {
            // Nothing follows a terminal event (a late pipe flush after a give-up, say).
            return;
        }
        let seq = s.next_seq;
        let Some(text) = make(seq).map(Utf8Bytes::from) else {
            return;
        };
        s.next_seq += 1;
        s.buffered += text.len();
        s.frames.push_back(Frame { seq, text });
        if connected && !s.queued {
            s.queued = true;
            g.ready.push_back(id.to_owned());
            self.writer.notify_one();
        }
    }

    /// Next frames to send, fairly across streams (a few frames per stream per turn).
    /// Waits until there is something to send.
    pub async fn next_batch(&self, max_frames: usize) -> Vec<Utf8Bytes> {
        loop {
            let notified = self.writer.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.lock();
                let batch = take_batch(&mut g, max_frames, &self.counters);
                if !batch.is_empty() {
                    return batch;
                }
            }
            notified.await;
        }
    }

    /// The backend holds every event of `id` up to `seq`.
    pub fn ack(&self, id: &str, seq: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(s) = inner.streams.get_mut(id) else {
            return;
        };
        while s.frames.front().is_some_and(|f| f.seq <= seq) {
            if let Some(f) = s.frames.pop_front() {
                s.buffered -= f.text.len();
            }
        }
        s.cursor = s.cursor.max(s.first_seq());
        s.space.notify_one();
        if s.finished && s.frames.is_empty() {
            inner.streams.remove(id);
            remember_closed(inner, id, self.limits.remembered_ids);
            if inner.streams.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    /// Wait until no stream is held: every terminal event has been acknowledged.
    pub async fn wait_all_acked(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.lock().streams.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Raise stream `id`'s credit limit (a lower limit than the current one changes nothing).
    pub fn credit(&self, id: &str, limit: u64) {
        let mut g = self.lock();
        if let Some(s) = g.streams.get_mut(id)
            && limit > s.limit
        {
            s.limit = limit;
            s.space.notify_one();
        }
    }

    /// Ask stream `target` to stop. Returns its phase when it is known.
    pub fn cancel(&self, target: &str) -> (bool, Option<StreamPhase>) {
        let g = self.lock();
        match g.streams.get(target) {
            Some(s) if !s.finished => {
                s.cancel.cancel();
                (true, Some(StreamPhase::Running))
            }
            Some(s) => (false, Some(s.phase())),
            None if g.closed.contains(target) => (false, Some(StreamPhase::Closed)),
            None => (false, None),
        }
    }

    /// Cancel every running stream (the link has been down too long, or shutdown).
    pub fn cancel_all(&self) {
        for s in self.lock().streams.values() {
            s.cancel.cancel();
        }
    }

    /// Streams to list in `hello`.
    pub fn hello_streams(&self) -> Vec<StreamResume> {
        let g = self.lock();
        let mut list: Vec<_> = g
            .streams
            .iter()
            .map(|(id, s)| StreamResume {
                id: id.clone(),
                phase: s.phase(),
                first_seq: s.first_seq(),
                next_seq: s.next_seq,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// A connection's handshake finished: apply the backend's resume points, rewind every
    /// stream to the first event the backend lacks and queue it for sending.
    pub fn connected(&self, resume: &[ResumePoint], initial_credit: Option<u64>) {
        for point in resume {
            if let Some(seq) = point.ack {
                self.ack(&point.id, seq);
            }
            if let Some(limit) = point.credit_limit {
                self.credit(&point.id, limit);
            }
        }
        let mut g = self.lock();
        let inner = &mut *g;
        inner.connected = true;
        if let Some(c) = initial_credit {
            inner.initial_credit = c;
        }
        inner.ready.clear();
        for (id, s) in inner.streams.iter_mut() {
            s.cursor = s.first_seq();
            s.queued = s.has_unsent();
            if s.queued {
                inner.ready.push_back(id.clone());
            }
        }
        self.writer.notify_one();
    }

    /// The connection is gone: stop queueing for a writer until the next handshake.
    pub fn disconnected(&self) {
        let mut g = self.lock();
        g.connected = false;
        g.ready.clear();
        for s in g.streams.values_mut() {
            s.queued = false;
        }
    }

    /// (running, held) stream counts for the heartbeat.
    pub fn counts(&self) -> (u64, u64) {
        let g = self.lock();
        let running = g.streams.values().filter(|s| !s.finished).count();
        (running as u64, g.streams.len() as u64)
    }

    /// Bytes buffered across all streams (for benchmarks and tests).
    pub fn buffered_bytes(&self) -> usize {
        self.lock().streams.values().map(|s| s.buffered).sum()
    }
}

fn take_batch(g: &mut Inner, max_frames: usize, counters: &StreamCounters) -> Vec<Utf8Bytes> {
    const PER_TURN: usize = 4;
    let mut batch = Vec::new();
    while batch.len() < max_frames {
        let Some(id) = g.ready.pop_front() else {
            break;
        };
        let Some(s) = g.streams.get_mut(&id) else {
            continue;
        };
        let mut taken = 0;
        while taken < PER_TURN && batch.len() < max_frames && s.has_unsent() {
            let first = s.first_seq();
            let index = (s.cursor - first) as usize;
            match s.frames.get(index) {
                Some(f) => {
                    let bytes = f.text.len() as u64;
                    if f.seq < s.sent_upto {
                        counters.resent_bytes.inc_by(bytes);
                    } else {
                        counters.sent_bytes.inc_by(bytes);
                        s.sent_upto = f.seq + 1;
                    }
                    batch.push(f.text.clone());
                }
                None => break,
            }
            s.cursor += 1;
            taken += 1;
        }
        if s.has_unsent() {
            g.ready.push_back(id);
        } else {
            s.queued = false;
        }
    }
    batch
}

fn remember_closed(g: &mut Inner, id: &str, cap: usize) {
    if g.closed.insert(id.to_owned()) {
        g.closed_order.push_back(id.to_owned());
    }
    while g.closed_order.len() > cap {
        if let Some(old) = g.closed_order.pop_front() {
            g.closed.remove(&old);
        }
    }
}

/// One stream, as seen by the code producing its events.
pub struct StreamHandle {
    registry: Arc<Registry>,
    id: String,
    space: Arc<Notify>,
    /// Bytes of an incomplete UTF-8 character at the end of the last chunk, per fd. Only the
    /// producer touches it, outside the registry lock.
    carry: Mutex<Utf8Carry>,
}

impl StreamHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Append an event; `make` gets its seq.
    pub fn push(&self, make: impl FnOnce(u64) -> AgentMessage) {
        let mut g = self.registry.lock();
        self.registry.push(&mut g, &self.id, make);
    }

    /// Append the terminal event. Nothing may follow it.
    pub fn finish(&self, make: impl FnOnce(u64) -> AgentMessage) {
        let mut g = self.registry.lock();
        self.registry.push(&mut g, &self.id, make);
        if let Some(s) = g.streams.get_mut(&self.id)
            && !s.finished
        {
            s.finished = true;
            self.registry.counters.running.dec();
        }
    }

    /// End the stream with a typed error.
    pub fn fail(&self, code: ErrorCode, message: String) {
        self.fail_with(code, message, None);
    }

    /// End the stream with a typed error carrying `details` (e.g. a deploy's per-server outcome).
    pub fn fail_with(&self, code: ErrorCode, message: String, details: Option<serde_json::Value>) {
        let id = self.id.clone();
        self.finish(|seq| {
            AgentMessage::Error(ErrorEvent {
                id: Some(id),
                seq: Some(seq),
                code,
                message,
                details,
            })
        });
    }

    /// Whether the terminal event exists.
    pub fn is_finished(&self) -> bool {
        let g = self.registry.lock();
        g.streams.get(&self.id).is_none_or(|s| s.finished)
    }

    /// Whether the unacknowledged events fill the stream's buffer (`DTMA_STREAM_BUFFER_BYTES`).
    /// A gone stream counts as full: nothing more should be produced for it.
    pub fn buffer_full(&self) -> bool {
        let cap = self.registry.limits.buffer_bytes;
        let g = self.registry.lock();
        g.streams.get(&self.id).is_none_or(|s| s.buffered >= cap)
    }

    /// Wait until acknowledgements leave at least half of the stream's buffer free.
    pub async fn wait_half_free(&self) {
        let half = self.registry.limits.buffer_bytes / 2;
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.registry.lock();
                if g.streams.get(&self.id).is_none_or(|s| s.buffered <= half) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Wait for credit and buffer space; reserve up to `want` bytes.
    pub async fn reserve(&self, want: usize) -> usize {
        let cap = self.registry.limits.buffer_bytes;
        let mut stalled = false;
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.registry.lock();
                let Some(s) = g.streams.get_mut(&self.id) else {
                    // The stream is gone (cannot happen while its producer lives): don't block.
                    return want;
                };
                let space = cap.saturating_sub(s.buffered);
                let enough_space = space >= MIN_READ_SPACE.min(cap) || s.buffered == 0;
                let credit = s.limit.saturating_sub(s.used);
                if credit > 0 && enough_space {
                    let take = (want as u64).min(credit).min(space.max(1) as u64);
                    s.used += take;
                    return take as usize;
                }
                if credit == 0 && !stalled {
                    // One stall per wait, however many wake-ups it takes.
                    stalled = true;
                    self.registry.counters.credit_stalls.inc();
                }
            }
            notified.await;
        }
    }

    /// Forward bytes from `fd`; return the unused part of a reservation.
    pub fn output(&self, fd: Fd, data: &[u8], reserved: usize) {
        let unused = reserved.saturating_sub(data.len()) as u64;
        let next_seq = {
            let mut g = self.registry.lock();
            let Some(s) = g.streams.get_mut(&self.id) else {
                return;
            };
            s.used = s.used.saturating_sub(unused);
            s.next_seq
        };
        if data.is_empty() {
            return;
        }
        // Serialise outside the registry lock (a payload can be 256 KiB). This handle is the
        // stream's only producer (started, output, eof, then the terminal event, in that order
        // from one task), so no other event can take the seqs read above.
        let mut frames: Vec<(u64, String)> = Vec::with_capacity(1);
        {
            let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
            carry.push(fd, data, |chunk| {
                let seq = next_seq + frames.len() as u64;
                frames.push((seq, output_frame(&self.id, seq, fd, chunk)));
            });
        }
        let mut g = self.registry.lock();
        for (seq, frame) in frames {
            self.registry.push_bytes(&mut g, &self.id, |actual| {
                if actual != seq {
                    tracing::error!(request_id = %self.id, seq, actual, "Two producers on one stream; output event dropped.");
                    return None;
                }
                Some(frame)
            });
        }
    }

    /// `fd` reached end of file: flush an incomplete trailing character as base64.
    pub fn eof(&self, fd: Fd) {
        let rest = {
            let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
            carry.finish(fd)
        };
        if rest.is_empty() {
            return;
        }
        let mut g = self.registry.lock();
        self.registry.push_bytes(&mut g, &self.id, |seq| {
            Some(output_frame(&self.id, seq, fd, Chunk::Binary(&rest)))
        });
    }
}

/// The JSON of one output chunk.
fn output_frame(id: &str, seq: u64, fd: Fd, chunk: Chunk<'_>) -> String {
    match chunk {
        Chunk::Text(text) => dtma_protocol::fast::output_utf8(id, seq, fd, text),
        Chunk::Binary(bytes) => dtma_protocol::fast::output_base64(id, seq, fd, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resend_after_reconnect_starts_at_the_backends_ack() {
        let reg = Registry::new(StreamLimits::default());
        reg.connected(&[], None);
        let h = reg.open("r", None, CancellationToken::new()).unwrap();
        for i in 0..5 {
            h.output(Fd::Stdout, format!("{i}\n").as_bytes(), 2);
        }
        assert_eq!(reg.next_batch(100).await.len(), 5);
        reg.disconnected();
        let listed = reg.hello_streams();
        assert_eq!((listed[0].first_seq, listed[0].next_seq), (0, 5));
        reg.connected(
            &[ResumePoint {
                id: "r".into(),
                ack: Some(2),
                credit_limit: None,
            }],
            None,
        );
        let again = reg.next_batch(100).await;
        assert_eq!(again.len(), 2);
        assert!(again[0].as_str().contains(r#""seq":3"#));
    }

    #[tokio::test]
    async fn first_sends_and_resends_are_counted_apart() {
        let counters = StreamCounters::default();
        let reg = Registry::with_counters(StreamLimits::default(), counters.clone());
        reg.connected(&[], None);
        let h = reg.open("r", None, CancellationToken::new()).unwrap();
        assert_eq!(counters.running.get(), 1);
        for i in 0..3 {
            h.output(Fd::Stdout, format!("{i}\n").as_bytes(), 2);
        }
        let first: u64 = reg
            .next_batch(100)
            .await
            .iter()
            .map(|f| f.len() as u64)
            .sum();
        assert_eq!(
            (counters.sent_bytes.get(), counters.resent_bytes.get()),
            (first, 0)
        );
        // The backend lacks the last frame after a reconnect: only it is sent again.
        reg.disconnected();
        reg.connected(
            &[ResumePoint {
                id: "r".into(),
                ack: Some(1),
                credit_limit: None,
            }],
            None,
        );
        let again: u64 = reg
            .next_batch(100)
            .await
            .iter()
            .map(|f| f.len() as u64)
            .sum();
        assert!(again > 0);
        assert_eq!(
            (counters.sent_bytes.get(), counters.resent_bytes.get()),
            (first, again)
        );
        h.fail(ErrorCode::Internal, "x".into());
        h.fail(ErrorCode::Internal, "twice".into());
        assert_eq!(counters.running.get(), 0, "a stream stops running once");
    }

    #[tokio::test]
    async fn duplicate_ids_are_refused_with_state() {
        let reg = Registry::new(StreamLimits::default());
        let h = reg.open("r", None, CancellationToken::new()).unwrap();
        assert!(matches!(
            reg.open("r", None, CancellationToken::new()),
            Err(OpenError::Duplicate(StateEvent {
                phase: StreamPhase::Running,
                ..
            }))
        ));
        h.fail(ErrorCode::Internal, "x".into());
        reg.ack("r", 0);
        assert!(matches!(
            reg.open("r", None, CancellationToken::new()),
            Err(OpenError::Duplicate(StateEvent {
                phase: StreamPhase::Closed,
                ..
            }))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_waits_for_acks_to_free_half_of_it() {
        let reg = Registry::new(StreamLimits {
            buffer_bytes: 100,
            ..StreamLimits::default()
        });
        reg.connected(&[], None);
        let h = reg.open("r", None, CancellationToken::new()).unwrap();
        let mut seq = 0;
        while !h.buffer_full() {
            h.push(|s| {
                AgentMessage::Result(dtma_protocol::ResultEvent {
                    id: "r".into(),
                    seq: s,
                    data: serde_json::json!(0),
                })
            });
            seq += 1;
        }
        assert!(seq > 1, "a full buffer takes several events");
        let pending = tokio::time::timeout(std::time::Duration::from_secs(60), h.wait_half_free());
        assert!(pending.await.is_err(), "nothing acknowledged: no room");
        reg.ack("r", seq - 1);
        assert!(!h.buffer_full());
        h.wait_half_free().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_respects_credit() {
        let counters = StreamCounters::default();
        let reg = Registry::with_counters(StreamLimits::default(), counters.clone());
        let h = reg.open("r", Some(10), CancellationToken::new()).unwrap();
        assert_eq!(h.reserve(100).await, 10);
        assert_eq!(counters.credit_stalls.get(), 0);
        // Paused time: the timeout fires only once nothing else can make progress.
        let pending = tokio::time::timeout(std::time::Duration::from_secs(60), h.reserve(5));
        assert!(pending.await.is_err(), "no credit left: reserve must wait");
        reg.credit("r", 13);
        assert_eq!(h.reserve(5).await, 3);
        assert_eq!(counters.credit_stalls.get(), 1, "one wait for credit");
        reg.credit("r", 2); // lower than the limit: ignored
        let pending = tokio::time::timeout(std::time::Duration::from_secs(60), h.reserve(5));
        assert!(pending.await.is_err());
        assert_eq!(counters.credit_stalls.get(), 2);
    }
}
