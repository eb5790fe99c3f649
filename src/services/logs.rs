//! `LogsService`: a managed MCP server's container log, for the channel's `logs_follow` and the
//! local API's `GET /mcp/servers/:instanceName/logs`.
//!
//! The log goes into the caller's [`OutputSink`] under its flow control, one Docker message
//! at a time: the next message is read from Docker only once the sink has granted credit for
//! the current one, so a consumer without credit pauses the follow (Docker's bytes wait in the
//! socket) and memory stays at one message.
//!
//! A follow outlives the container's runs. Docker ends a follow when the container stops; the
//! service then waits for it to run again (polling `inspect` at a capped interval) and reopens
//! the log just after the last message it accounted for. Each message carries Docker's
//! timestamp (always requested, stripped unless the caller asked for it); the service keeps
//! the keys (time, stream) of the latest messages, and a reopened log skips what it has seen,
//! so every message arrives exactly once and in order across restarts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::{Fd, LogsEnd, LogsEndReason, ProgressStep};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use super::admit;
use super::mcp::{McpError, ProgressSink, Step};
use crate::agent::Agent;
use crate::docker::containers::Inspected;
use crate::docker::logs::{LogMessage, LogsQuery};
use crate::docker::spec;
use crate::docker::{self, DockerClient};
use crate::exec::OutputSink;

/// Messages whose keys are kept to resume a follow. A reopened log is read again from about
/// this many messages back; more only costs a longer re-read.
const RECENT: usize = 256;
/// With `tail: 0`, how many of the last messages mark where "new" starts.
const WATERMARK: u32 = 64;
/// Polling `inspect` while the container is not running: first and longest interval.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);
/// Pause before reopening when Docker ended a follow of a container that still runs the same
/// run (it should not happen; if a daemon does it, it is not asked again at once).
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// What to read, already validated by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsOptions {
    /// Messages from the end of the log to send first (0 to 10000).
    pub tail: u32,
    /// Only messages logged at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// Keep Docker's RFC 3339 timestamp and a space before each message.
    pub timestamps: bool,
    /// Keep following (across restarts) instead of ending after the tail.
    pub follow: bool,
}

impl Default for LogsOptions {
    fn default() -> LogsOptions {
        LogsOptions {
            tail: dtma_protocol::DEFAULT_TAIL,
            since: None,
            timestamps: false,
            follow: true,
        }
    }
}

/// A managed server's container, found by [`LogsService::find`].
#[derive(Debug, Clone)]
pub struct LogSource {
    instance: String,
    container: Inspected,
}

impl LogSource {
    pub fn instance(&self) -> &str {
        &self.instance
    }
    pub fn container_id(&self) -> &str {
        &self.container.id
    }
}

pub struct LogsService {
    agent: Arc<Agent>,
}

impl LogsService {
    pub fn new(agent: Arc<Agent>) -> LogsService {
        LogsService { agent }
    }

    /// The container of server `instance`. Not an instance name: `Invalid`; unknown, or not
    /// managed by an agent: `NotFound`.
    pub async fn find(&self, instance: &str) -> Result<LogSource, McpError> {
        admit(&self.agent)?;
        spec::parse_instance_name("instance_name", instance)?;
        let found = self
            .agent
            .docker()
            .inspect(&spec::container_name(instance))
            .await?
            .filter(|c| spec::is_managed(&c.labels));
        match found {
            Some(container) => Ok(LogSource {
                instance: instance.to_owned(),
                container,
            }),
            None => Err(McpError::NotFound(format!(
                "no MCP server `{instance}` managed by this agent"
            ))),
        }
    }

    /// Send the log of `source` into `sink`: first `progress` `following`, then the messages,
    /// with `waiting` / `container_restarted` as the container stops and runs again. Ends with
    /// `ended` (not following, the tail sent), `removed` (the container is gone) or `cancelled`
    /// (`cancel`, or the agent's shutdown). The sink's output is flushed (`eof`) before this
    /// returns, so the caller's terminal event comes last.
    pub async fn follow<S: OutputSink + ProgressSink>(
        &self,
        source: LogSource,
        options: &LogsOptions,
        sink: Arc<S>,
        cancel: CancellationToken,
    ) -> Result<LogsEnd, McpError> {
        let mut run = Follow {
            docker: self.agent.docker().clone(),
            sink,
            options,
            stop: Stop {
                cancel,
                drain: self.agent.drain_started(),
            },
            since_ns: options.since.map(|t| t.unix_timestamp_nanos()),
            cursor: Cursor::default(),
            bytes: [0, 0],
        };
        run.sink
            .progress(Step::new(ProgressStep::Following, Some(&source.instance)));
        let reason = run.run(&source).await;
        run.sink.eof(Fd::Stdout);
        run.sink.eof(Fd::Stderr);
        let reason = reason?;
        tracing::debug!(instance = %source.instance, ?reason, stdout_bytes = run.bytes[0],
            stderr_bytes = run.bytes[1], "Log follow ended.");
        Ok(LogsEnd {
            reason,
            stdout_bytes: run.bytes[0],
            stderr_bytes: run.bytes[1],
        })
    }
}

/// The request's cancel token, or the agent's shutdown: either stops a follow.
struct Stop {
    cancel: CancellationToken,
    drain: CancellationToken,
}

impl Stop {
    async fn wait(&self) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.drain.cancelled() => {}
        }
    }

    /// Sleep for `d`; true if stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

/// The keys (Docker time, stream) of the latest messages accounted for: forwarded, or (with
/// `tail: 0`) present before the follow began.
#[derive(Debug, Default)]
struct Cursor {
    recent: VecDeque<(i128, Fd)>,
    /// The newest time among keys dropped from `recent`.
    evicted_max: Option<i128>,
}

impl Cursor {
    fn push(&mut self, at: i128, fd: Fd) {
        if self.recent.len() == RECENT
            && let Some((t, _)) = self.recent.pop_front()
        {
            self.evicted_max = Some(self.evicted_max.map_or(t, |m| m.max(t)));
        }
        self.recent.push_back((at, fd));
    }

    /// What a reopened log must skip, or `None` when nothing was accounted for yet.
    ///
    /// Docker orders a log by when each message was written, and stamps it just before, so
    /// stdout and stderr messages logged within microseconds of each other may appear slightly
    /// out of time order. Hence a set of keys rather than one timestamp: every accounted
    /// message at or after `low` is in `seen` (anything older than `low` was dropped from
    /// `recent`, or precedes what was accounted for), and nothing later than `max` was seen.
    fn resume(&self) -> Option<Resume> {
        let min = self.recent.iter().map(|k| k.0).min()?;
        let max = self.recent.iter().map(|k| k.0).max()?;
        let low = match self.evicted_max {
            Some(e) => (e + 1).max(min),
            None => min,
        };
        Some(Resume {
            low,
            max,
            seen: self.recent.iter().copied().collect(),
        })
    }
}

/// Where a reopened log picks up.
#[derive(Debug)]
struct Resume {
    low: i128,
    max: i128,
    seen: Vec<(i128, Fd)>,
}

impl Resume {
    fn skips(&self, at: i128, fd: Fd) -> bool {
        at <= self.max && (at < self.low || self.seen.contains(&(at, fd)))
    }

    /// Docker's `since` for the reopened log: whole seconds, rounded down.
    fn since_s(&self) -> i64 {
        i64::try_from(self.low.div_euclid(1_000_000_000)).unwrap_or(0)
    }
}

enum Pumped {
    /// Docker ended the log (end of the tail, or the container stopped).
    End,
    Stopped,
}

enum Waited {
    /// Running again; its start time.
    Running(Option<String>),
    Removed,
    Stopped,
}

struct Follow<'a, S> {
    docker: DockerClient,
    sink: Arc<S>,
    options: &'a LogsOptions,
    stop: Stop,
    since_ns: Option<i128>,
    cursor: Cursor,
    /// Forwarded bytes: stdout, stderr.
    bytes: [u64; 2],
}

impl<S: OutputSink + ProgressSink> Follow<'_, S> {
    async fn run(&mut self, source: &LogSource) -> Result<LogsEndReason, McpError> {
        let id = source.container.id.as_str();
        let follow = self.options.follow;
        let user_since_s = self.options.since.map_or(0, |t| t.unix_timestamp());
        // `tail: 0` means "from now on". Docker's own `tail=0` would lose what is logged
        // between a restart and the reopen, so mark where "now" is and resume from there.
        let mut first = !(follow && self.options.tail == 0);
        if !first {
            self.watermark(id).await?;
        }
        let mut started_at = source.container.started_at.clone();
        loop {
            let (query, resume) = if first {
                let query = LogsQuery {
                    follow,
                    tail: Some(self.options.tail),
                    since_s: user_since_s,
                };
                (query, None)
            } else {
                let resume = self.cursor.resume();
                let since_s = resume.as_ref().map_or(0, Resume::since_s).max(user_since_s);
                let query = LogsQuery {
                    follow,
                    tail: None,
                    since_s,
                };
                (query, resume)
            };
            first = false;
            let log = self.docker.logs(id, query);
            if let Pumped::Stopped = self.pump(log, resume.as_ref()).await? {
                return Ok(LogsEndReason::Cancelled);
            }
            if !follow {
                return Ok(LogsEndReason::Ended);
            }
            // Docker ended the follow: the container stopped (and may run again), or is gone.
            let Some(now) = self.docker.inspect(id).await? else {
                return Ok(LogsEndReason::Removed);
            };
            let now_started = if is_live(&now) {
                now.started_at
            } else {
                self.sink
                    .progress(Step::new(ProgressStep::Waiting, Some(&source.instance)));
                match self.wait_live(id).await? {
                    Waited::Running(c) => c,
                    Waited::Removed => return Ok(LogsEndReason::Removed),
                    Waited::Stopped => return Ok(LogsEndReason::Cancelled),
                }
            };
            if now_started != started_at {
                self.sink.progress(Step::new(
                    ProgressStep::ContainerRestarted,
                    Some(&source.instance),
                ));
                started_at = now_started;
            } else if self.stop.sleep(REOPEN_PAUSE).await {
                return Ok(LogsEndReason::Cancelled);
            }
        }
    }

    /// Forward one opened log until Docker ends it or the follow is stopped.
    async fn pump(
        &mut self,
        mut log: BoxStream<'static, Result<LogMessage, docker::Error>>,
        resume: Option<&Resume>,
    ) -> Result<Pumped, McpError> {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(Pumped::Stopped),
                next = log.next() => next,
            };
            let message = match next {
                None => return Ok(Pumped::End),
                Some(Ok(m)) => m,
                // Removed under the open log: the caller's inspect says so.
                Some(Err(docker::Error::NotFound(_))) => return Ok(Pumped::End),
                Some(Err(e)) => return Err(e.into()),
            };
            if let Some(at) = message.at {
                let early = self.since_ns.is_some_and(|s| at < s);
                if early || resume.is_some_and(|r| r.skips(at, message.fd)) {
                    continue;
                }
            }
            let data = if self.options.timestamps {
                message.raw.clone()
            } else {
                message.text()
            };
            if !self.forward(message.fd, &data).await {
                return Ok(Pumped::Stopped);
            }
            if let Some(at) = message.at {
                self.cursor.push(at, message.fd);
            }
        }
    }

    /// Hand `data` to the sink as its credit allows. False if stopped first (then the message
    /// is not accounted for, and nothing follows it).
    async fn forward(&mut self, fd: Fd, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            // `reserve` takes nothing until it returns, so losing the race to `stop` is safe.
            let granted = tokio::select! {
                biased;
                _ = self.stop.wait() => return false,
                g = self.sink.reserve(data.len()) => g,
            };
            let n = granted.min(data.len());
            self.sink.output(fd, &data[..n], granted);
            self.bytes[fd_index(fd)] += n as u64;
            data = &data[n..];
        }
        true
    }

    /// Account for the last messages already in the log (they are not sent).
    async fn watermark(&mut self, id: &str) -> Result<(), McpError> {
        let query = LogsQuery {
            follow: false,
            tail: Some(WATERMARK),
            since_s: 0,
        };
        let mut log = self.docker.logs(id, query);
        while let Some(m) = log.next().await {
            let m = m?;
            if let Some(at) = m.at {
                self.cursor.push(at, m.fd);
            }
        }
        Ok(())
    }

    /// Poll until the container runs again, is removed, or the follow is stopped.
    async fn wait_live(&self, id: &str) -> Result<Waited, McpError> {
        let mut every = POLL_FIRST;
        loop {
            if self.stop.sleep(every).await {
                return Ok(Waited::Stopped);
            }
            match self.docker.inspect(id).await? {
                None => return Ok(Waited::Removed),
                Some(c) if is_live(&c) => return Ok(Waited::Running(c.started_at)),
                Some(_) => every = (every * 2).min(POLL_MAX),
            }
        }
    }
}

/// Running, and not between two runs of its restart policy (Docker counts that as running).
fn is_live(c: &Inspected) -> bool {
    c.running && !c.restarting
}

fn fd_index(fd: Fd) -> usize {
    match fd {
        Fd::Stdout => 0,
        Fd::Stderr => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_skips_exactly_what_was_accounted_for() {
        let mut c = Cursor::default();
        assert!(c.resume().is_none());
        // Two streams stamped a hair out of order, as Docker may write them.
        for (at, fd) in [(100, Fd::Stdout), (103, Fd::Stderr), (102, Fd::Stdout)] {
            c.push(at, fd);
        }
        let r = c.resume().unwrap();
        assert!(r.skips(100, Fd::Stdout) && r.skips(102, Fd::Stdout));
        assert!(r.skips(103, Fd::Stderr));
        assert!(r.skips(99, Fd::Stdout), "older than anything accounted for");
        assert!(!r.skips(101, Fd::Stdout), "never seen, inside the window");
        assert!(!r.skips(103, Fd::Stdout), "same time, other stream");
        assert!(!r.skips(104, Fd::Stderr), "newer than everything seen");
    }

    #[test]
    fn evicted_keys_move_the_low_mark() {
        let mut c = Cursor::default();
        for i in 0..(RECENT as i128 + 10) {
            c.push(1_000 + i, Fd::Stdout);
        }
        let r = c.resume().unwrap();
        assert_eq!(r.low, 1_010);
        assert!(r.skips(1_005, Fd::Stdout));
        assert!(r.skips(1_010, Fd::Stdout));
        assert_eq!(r.max, 1_000 + RECENT as i128 + 9);
        assert_eq!(r.since_s(), 0);
        let mut late = Cursor::default();
        late.push(1_737_367_201_123_456_789, Fd::Stdout);
        assert_eq!(late.resume().unwrap().since_s(), 1_737_367_201);
    }
}
