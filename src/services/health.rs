//! Each managed MCP server's health, in the protocol's [`ServerState`] vocabulary.
//!
//! - [`Liveness`]: the state machine of one container, pure: Docker's lifecycle events (start,
//!   die, OOM, stop, health status) and the results of the agent's liveness checks go in, the
//!   server's state comes out. One failed check changes nothing (transient);
//!   [`FAILURES_TO_DEGRADE`] in a row make a ready server `degraded`; one success makes it
//!   `ready` again; [`CRASH_LOOP_RESTARTS`] restarts by Docker within [`CRASH_LOOP_WINDOW`]
//!   make it `crash_looping`.
//! - [`HealthBook`]: every managed container's machine, by container id. The Docker event
//!   watcher and the liveness monitor (`services::events`) feed it; `mcp_status`, the heartbeat
//!   and the `mcp_events` stream read it.
//! - [`check`]: one liveness check, `ready::ping` over the MCP era the server proved it speaks
//!   (a fresh `ready::probe` when that is not known or the last check failed).
//!
//! A server that is `starting` (it started and has not answered a check yet) is not degraded by
//! failed checks: it stays `starting` until one passes. The readiness of a deploy is the
//! deploy's business; the monitor only says what it sees.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use dtma_protocol::{ContainerHealth, McpEventKind, PortProtocol, ServerState};
use tokio::time::Instant;

use super::events::ServerEvent;
use super::mcp::{observed_state, port_mappings};
use crate::docker::containers::Inspected;
use crate::docker::events::{Action, ContainerEvent};
use crate::docker::{ready, spec};

/// Failed liveness checks in a row that make a ready server `degraded`.
pub const FAILURES_TO_DEGRADE: u32 = 3;
/// Restarts by Docker (a start after a `die` without a `stop`) within [`CRASH_LOOP_WINDOW`]
/// that make a server `crash_looping`.
pub const CRASH_LOOP_RESTARTS: usize = 3;
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(120);
/// A server that just started is checked this soon (or at the interval, when that is shorter),
/// and again as often while it is `starting`.
pub const STARTING_RECHECK: Duration = Duration::from_secs(1);

fn is_running(state: ServerState) -> bool {
    matches!(
        state,
        ServerState::Starting
            | ServerState::Ready
            | ServerState::Degraded
            | ServerState::CrashLooping
    )
}

/// The state machine of one container. Pure: time comes in as arguments.
#[derive(Debug, Clone)]
pub struct Liveness {
    state: ServerState,
    /// Failed liveness checks in a row.
    failures: u32,
    /// When Docker restarted the container, within the crash-loop window.
    restarts: VecDeque<Instant>,
    /// It died and was not stopped on request: its next start is Docker's restart policy.
    died: bool,
    /// The kernel's OOM killer struck since the last start.
    oom: bool,
    exit_code: Option<i64>,
    docker_health: Option<ContainerHealth>,
}

impl Liveness {
    pub fn new(state: ServerState) -> Liveness {
        Liveness {
            state,
            failures: 0,
            restarts: VecDeque::new(),
            died: false,
            oom: false,
            exit_code: None,
            docker_health: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The last exit code, while the container is not running.
    pub fn exit_code(&self) -> Option<i64> {
        self.exit_code
    }

    /// Docker's health status (`None`: the container has no health check).
    pub fn docker_health(&self) -> Option<ContainerHealth> {
        self.docker_health
    }

    fn crash_looping(&mut self, now: Instant) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASH_LOOP_WINDOW)
        {
            self.restarts.pop_front();
        }
        self.restarts.len() >= CRASH_LOOP_RESTARTS
    }

    /// The state of a running server whose checks pass.
    fn passing(&mut self, now: Instant) -> ServerState {
        if self.crash_looping(now) {
            ServerState::CrashLooping
        } else if self.docker_health == Some(ContainerHealth::Unhealthy) {
            ServerState::Degraded
        } else {
            ServerState::Ready
        }
    }

    /// A liveness check's result. Returns the new state when it changed. Ignored while the
    /// container is not running (a check that raced with its end).
    pub fn checked(&mut self, ok: bool, now: Instant) -> Option<ServerState> {
        if !is_running(self.state) {
            return None;
        }
        let before = self.state;
        if ok {
            self.failures = 0;
            self.state = self.passing(now);
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= FAILURES_TO_DEGRADE && self.state == ServerState::Ready {
                self.state = ServerState::Degraded;
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// The container started (Docker's `start`).
    pub fn started(&mut self, now: Instant) -> ServerState {
        if std::mem::take(&mut self.died) {
            self.restarts.push_back(now);
        }
        self.oom = false;
        self.failures = 0;
        self.exit_code = None;
        if self.docker_health.is_some() {
            self.docker_health = Some(ContainerHealth::Starting);
        }
        self.state = if self.crash_looping(now) {
            ServerState::CrashLooping
        } else {
            ServerState::Starting
        };
        self.state
    }

    /// The kernel's OOM killer struck (Docker's `oom`, before its `die`).
    pub fn oom_killed(&mut self) -> ServerState {
        self.oom = true;
        if self.state != ServerState::CrashLooping {
            self.state = ServerState::Failed;
        }
        self.state
    }

    /// The main process ended (Docker's `die`). A crash-looping server stays so: Docker's
    /// restart policy brings it back.
    pub fn died(&mut self, exit_code: Option<i64>) -> ServerState {
        self.died = true;
        self.exit_code = exit_code;
        if self.state != ServerState::CrashLooping {
            self.state = if self.oom || exit_code.unwrap_or(0) != 0 {
                ServerState::Failed
            } else {
                ServerState::Stopped
            };
        }
        self.state
    }

    /// Stopped on request (Docker's `stop`, after its `die`): the next start is nobody's crash.
    pub fn stopped(&mut self) -> ServerState {
        self.died = false;
        self.state = ServerState::Stopped;
        self.state
    }

    /// Docker's own health check reported.
    pub fn health_reported(&mut self, health: ContainerHealth, now: Instant) -> ServerState {
        self.docker_health = Some(health);
        if is_running(self.state) && self.state != ServerState::CrashLooping {
            match health {
                ContainerHealth::Unhealthy => self.state = ServerState::Degraded,
                ContainerHealth::Healthy if self.failures < FAILURES_TO_DEGRADE => {
                    self.state = self.passing(now)
                }
                ContainerHealth::Healthy | ContainerHealth::Starting => {}
            }
        }
        self.state
    }

    /// What an inspection of the container shows. A container that does not run takes the
    /// state Docker's view gives it; a running one keeps what the machine knows. Returns the
    /// new state when it changed.
    pub fn inspected(
        &mut self,
        running: bool,
        observed: ServerState,
        exit_code: Option<i64>,
        health: Option<ContainerHealth>,
    ) -> Option<ServerState> {
        self.docker_health = health;
        let before = self.state;
        if !running {
            self.exit_code = exit_code;
            self.state = observed;
        } else if !is_running(self.state) {
            // It runs, though the machine missed its start (no event feed at the time).
            self.state = observed;
        }
        (self.state != before).then_some(self.state)
    }
}

/// Where a server's liveness check goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Not known yet: the container has not been inspected.
    Unknown,
    /// Nothing to check: a stdio server, or no published TCP port. Running means live.
    Nothing,
    Endpoint {
        addr: SocketAddr,
        path: String,
    },
}

impl Target {
    /// From the container's labels (transport, endpoint path) and its ports.
    pub fn of(c: &Inspected) -> Target {
        if c.labels.get(spec::LABEL_TRANSPORT).map(String::as_str) == Some("stdio") {
            return Target::Nothing;
        }
        let path = c
            .labels
            .get(spec::LABEL_ENDPOINT_PATH)
            .cloned()
            .unwrap_or_else(|| dtma_protocol::DEFAULT_ENDPOINT_PATH.to_owned());
        let port = port_mappings(c)
            .into_iter()
            .find(|p| p.protocol == PortProtocol::Tcp);
        match port {
            None => Target::Nothing,
            Some(p) => {
                let ip = p
                    .host_ip
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                Target::Endpoint {
                    addr: SocketAddr::new(ip, p.host_port),
                    path,
                }
            }
        }
    }
}

/// A check's outcome: passed or not, the MCP era the server proved (kept for the next ping),
/// and why it failed.
#[derive(Debug)]
pub struct Checked {
    pub ok: bool,
    pub method: Option<ready::Method>,
    pub reason: Option<String>,
}

/// One liveness check. A known era is pinged; an unknown one (first check, or the last check
/// failed: the server may have been replaced by one of another era) is probed.
pub async fn check(target: &Target, method: Option<ready::Method>, timeout: Duration) -> Checked {
    let Target::Endpoint { addr, path } = target else {
        return Checked {
            ok: true,
            method: None,
            reason: None,
        };
    };
    let result = match method {
        Some(m) => ready::ping(*addr, path, m, timeout).await.map(|()| m),
        None => ready::probe(*addr, path, timeout).await.map(|h| h.method),
    };
    match result {
        Ok(m) => Checked {
            ok: true,
            method: Some(m),
            reason: None,
        },
        Err(e) => Checked {
            ok: false,
            method: None,
            reason: Some(e.to_string()),
        },
    }
}

/// Which server a container is, from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerRef {
    group_id: String,
    server: String,
    account_tool_instance_id: String,
}

impl ServerRef {
    fn of(name: &str, labels: &HashMap<String, String>) -> ServerRef {
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        ServerRef {
            group_id: label(spec::LABEL_GROUP_ID),
            server: labels
                .get(spec::LABEL_INSTANCE_NAME)
                .cloned()
                .unwrap_or_else(|| name.trim_start_matches(spec::CONTAINER_PREFIX).to_owned()),
            account_tool_instance_id: label(spec::LABEL_ACCOUNT_TOOL_INSTANCE_ID),
        }
    }
}

struct Entry {
    server: ServerRef,
    liveness: Liveness,
    /// Whether the container's process runs (a created or exited one is never checked).
    running: bool,
    target: Target,
    method: Option<ready::Method>,
    /// When the next liveness check is due.
    due: Instant,
}

impl Entry {
    /// Whether the liveness monitor checks this container.
    fn checked(&self) -> bool {
        self.running && is_running(self.liveness.state()) && self.target != Target::Unknown
    }

    fn event(&self, id: &str, kind: McpEventKind, at: String) -> ServerEvent {
        let state = self.liveness.state();
        ServerEvent {
            at,
            kind,
            group_id: self.server.group_id.clone(),
            server: self.server.server.clone(),
            account_tool_instance_id: self.server.account_tool_instance_id.clone(),
            container_id: id.to_owned(),
            state,
            exit_code: if is_running(state) {
                None
            } else {
                self.liveness.exit_code()
            },
            health: self.liveness.docker_health(),
        }
    }
}

/// A due liveness check: the container, where to check, the era known so far.
#[derive(Debug, Clone)]
pub struct DueCheck {
    pub container_id: String,
    pub target: Target,
    pub method: Option<ready::Method>,
}

/// Every managed container's health, by container id.
#[derive(Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<String, Entry>>,
}

fn health_of(c: &Inspected) -> Option<ContainerHealth> {
    match c.health.as_deref() {
        Some("healthy") => Some(ContainerHealth::Healthy),
        Some("unhealthy") => Some(ContainerHealth::Unhealthy),
        Some("starting") => Some(ContainerHealth::Starting),
        _ => None,
    }
}

impl HealthBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is one step on plain data: a panic elsewhere leaves it consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The monitored state of container `id`, while it runs (a container that does not run
    /// is best described by Docker itself).
    pub fn monitored(&self, id: &str, running: bool) -> Option<ServerState> {
        if !running {
            return None;
        }
        self.lock()
            .get(id)
            .map(|e| e.liveness.state())
            .filter(|s| is_running(*s))
    }

    /// One of Docker's events (not a rename: see [`HealthBook::inspected`] and
    /// [`HealthBook::forget`]). Returns the `mcp_event` to publish, if any. A start makes the
    /// container's next check due soon (at `recheck`).
    pub fn apply(&self, e: &ContainerEvent, now: Instant, recheck: Instant) -> Option<ServerEvent> {
        let mut g = self.lock();
        let entry = g.entry(e.id.clone()).or_insert_with(|| Entry {
            server: ServerRef::of(&e.name, &e.labels),
            liveness: Liveness::new(ServerState::Starting),
            running: false,
            target: Target::Unknown,
            method: None,
            due: recheck,
        });
        let kind = match &e.action {
            Action::Start => {
                entry.running = true;
                entry.liveness.started(now);
                entry.due = recheck;
                McpEventKind::Start
            }
            Action::Die { exit_code } => {
                entry.running = false;
                entry.liveness.died(*exit_code);
                McpEventKind::Die
            }
            Action::Oom => {
                entry.liveness.oom_killed();
                McpEventKind::Oom
            }
            Action::Restart => McpEventKind::Restart,
            Action::Health(h) => {
                let h = match h.as_str() {
                    "healthy" => ContainerHealth::Healthy,
                    "unhealthy" => ContainerHealth::Unhealthy,
                    "starting" => ContainerHealth::Starting,
                    _ => return None,
                };
                entry.liveness.health_reported(h, now);
                McpEventKind::Health
            }
            Action::Stop => {
                entry.liveness.stopped();
                McpEventKind::Stop
            }
            Action::Destroy => {
                let entry = g.remove(&e.id)?;
                let mut event = entry.event(&e.id, McpEventKind::Destroy, at(e.time_nanos));
                if is_running(event.state) {
                    event.state = ServerState::Stopped;
                }
                return Some(event);
            }
            Action::Rename { .. } => return None,
        };
        let mut event = entry.event(&e.id, kind, at(e.time_nanos));
        if let Action::Die { exit_code } = e.action {
            event.exit_code = exit_code;
        }
        Some(event)
    }

    /// An inspected container: its entry is created if new, and its check target learnt. With
    /// `adopt`, a known entry is also brought in line with Docker's view; only the event
    /// watcher adopts, in step with the feed it reads (it lists right after subscribing), so an
    /// inspection taken before an event never overwrites that event's state. Returns the
    /// server's current state as a `resync` event.
    pub fn inspected(&self, c: &Inspected, now: Instant, adopt: bool) -> ServerEvent {
        let mut g = self.lock();
        let health = health_of(c);
        let observed = observed_state(c);
        let mut known = true;
        let entry = g.entry(c.id.clone()).or_insert_with(|| {
            known = false;
            let mut liveness = Liveness::new(observed);
            liveness.inspected(c.running, observed, c.exit_code, health);
            Entry {
                server: ServerRef::of(&c.name, &c.labels),
                liveness,
                running: c.running,
                target: Target::Unknown,
                method: None,
                due: now,
            }
        });
        entry.server = ServerRef::of(&c.name, &c.labels);
        if known && adopt {
            entry.running = c.running;
            entry
                .liveness
                .inspected(c.running, observed, c.exit_code, health);
        }
        let target = Target::of(c);
        if entry.target != target {
            entry.target = target;
            entry.method = None;
        }
        entry.event(&c.id, McpEventKind::Resync, crate::now_rfc3339())
    }

    /// The container no longer is a server (renamed aside by a deploy).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Keep only the entries of `ids` (the managed containers that exist).
    pub fn retain(&self, ids: &[&str]) {
        self.lock().retain(|id, _| ids.contains(&id.as_str()));
    }

    /// Running servers whose check is due.
    pub fn due(&self, now: Instant) -> Vec<DueCheck> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.checked() && e.due <= now)
            .map(|(id, e)| DueCheck {
                container_id: id.clone(),
                target: e.target.clone(),
                method: e.method,
            })
            .collect()
    }

    /// When the next check is due, if any server is checked at all.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|e| e.checked())
            .map(|e| e.due)
            .min()
    }

    /// A check's result. Returns the `health` event when the state changed.
    pub fn checked(
        &self,
        id: &str,
        result: &Checked,
        now: Instant,
        interval: Duration,
    ) -> Option<ServerEvent> {
        let mut g = self.lock();
        let entry = g.get_mut(id)?;
        entry.method = result.method;
        let changed = entry.liveness.checked(result.ok, now);
        entry.due = now
            + if entry.liveness.state() == ServerState::Starting {
                interval.min(STARTING_RECHECK)
            } else {
                interval
            };
        changed.map(|_| entry.event(id, McpEventKind::Health, crate::now_rfc3339()))
    }
}

/// RFC 3339 of Docker's event time (now, when Docker gave none).
fn at(nanos: i128) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) if nanos > 0 => crate::rfc3339(t),
        _ => crate::now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_failure_is_transient_three_degrade_and_one_success_recovers() {
        let t = Instant::now();
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(l.checked(false, t), None);
        assert_eq!(l.checked(true, t), None, "a success resets the count");
        assert_eq!(l.checked(false, t), None);
        assert_eq!(l.checked(false, t), None);
        assert_eq!(l.checked(false, t), Some(ServerState::Degraded));
        assert_eq!(l.checked(false, t), None, "degraded stays degraded");
        assert_eq!(l.checked(true, t), Some(ServerState::Ready));
    }

    #[test]
    fn a_starting_server_becomes_ready_on_its_first_passing_check_only() {
        let t = Instant::now();
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(l.started(t), ServerState::Starting);
        for _ in 0..10 {
            assert_eq!(
                l.checked(false, t),
                None,
                "failures never degrade a starting server"
            );
        }
        assert_eq!(l.checked(true, t), Some(ServerState::Ready));
    }

    #[test]
    fn restarts_in_a_short_window_are_a_crash_loop() {
        let t = Instant::now();
        let mut l = Liveness::new(ServerState::Ready);
        // An operator's stop and start is no crash.
        l.died(Some(0));
        l.stopped();
        assert_eq!(l.started(t), ServerState::Starting);
        // Docker's restart policy: die, start, again and again.
        assert_eq!(l.died(Some(3)), ServerState::Failed);
        assert_eq!(l.started(t + S), ServerState::Starting);
        l.died(Some(3));
        assert_eq!(l.started(t + 2 * S), ServerState::Starting);
        l.died(Some(3));
        assert_eq!(l.started(t + 3 * S), ServerState::CrashLooping);
        assert_eq!(
            l.died(Some(3)),
            ServerState::CrashLooping,
            "it will be back"
        );
        assert_eq!(l.started(t + 4 * S), ServerState::CrashLooping);
        assert_eq!(l.checked(true, t + 5 * S), None, "still in the window");
        // Once the window holds fewer restarts, a passing check makes it ready.
        let later = t + CRASH_LOOP_WINDOW + 3 * S;
        assert_eq!(l.checked(true, later), Some(ServerState::Ready));
        // Stopped on request, it is stopped whatever came before.
        l.died(Some(143));
        assert_eq!(l.stopped(), ServerState::Stopped);
    }

    #[test]
    fn exits_oom_and_checks_after_the_end() {
        let t = Instant::now();
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(l.oom_killed(), ServerState::Failed);
        assert_eq!(l.died(Some(137)), ServerState::Failed);
        assert_eq!(l.exit_code(), Some(137));
        assert_eq!(
            l.checked(true, t),
            None,
            "no check result revives a dead container"
        );
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(l.died(Some(0)), ServerState::Stopped);
    }

    #[test]
    fn docker_health_and_liveness_agree_on_degraded() {
        let t = Instant::now();
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(
            l.health_reported(ContainerHealth::Unhealthy, t),
            ServerState::Degraded
        );
        assert_eq!(l.checked(true, t), None, "Docker still says unhealthy");
        assert_eq!(
            l.health_reported(ContainerHealth::Healthy, t),
            ServerState::Ready
        );
        for _ in 0..FAILURES_TO_DEGRADE {
            l.checked(false, t);
        }
        assert_eq!(
            l.health_reported(ContainerHealth::Healthy, t),
            ServerState::Degraded,
            "the liveness check still fails"
        );
    }

    #[test]
    fn an_inspection_corrects_what_events_missed() {
        let mut l = Liveness::new(ServerState::Ready);
        assert_eq!(
            l.inspected(false, ServerState::Failed, Some(1), None),
            Some(ServerState::Failed)
        );
        assert_eq!(l.exit_code(), Some(1));
        assert_eq!(
            l.inspected(true, ServerState::Ready, None, None),
            Some(ServerState::Ready)
        );
        l.checked(false, Instant::now());
        assert_eq!(
            l.inspected(true, ServerState::Ready, None, None),
            None,
            "a running server keeps its monitored state"
        );
    }

    fn event(action: Action) -> ContainerEvent {
        ContainerEvent {
            action,
            id: "c1".into(),
            name: "dtma-mcp-s1".into(),
            labels: HashMap::from([
                (spec::LABEL_MANAGED.to_owned(), "true".to_owned()),
                (spec::LABEL_GROUP_ID.to_owned(), "g".to_owned()),
                (spec::LABEL_INSTANCE_NAME.to_owned(), "s1".to_owned()),
                (
                    spec::LABEL_ACCOUNT_TOOL_INSTANCE_ID.to_owned(),
                    "ati".to_owned(),
                ),
            ]),
            time_nanos: 1_737_370_800_000_000_000,
        }
    }

    #[test]
    fn the_book_maps_docker_events_to_mcp_events() {
        let book = HealthBook::default();
        let t = Instant::now();
        let e = book.apply(&event(Action::Start), t, t).expect("an event");
        assert_eq!(
            (e.kind, e.state, e.group_id.as_str(), e.server.as_str()),
            (McpEventKind::Start, ServerState::Starting, "g", "s1")
        );
        assert_eq!(e.at, "2025-01-20T11:00:00.000Z");
        assert_eq!(book.monitored("c1", true), Some(ServerState::Starting));
        let e = book
            .apply(&event(Action::Die { exit_code: Some(2) }), t, t)
            .expect("an event");
        assert_eq!((e.state, e.exit_code), (ServerState::Failed, Some(2)));
        assert_eq!(book.monitored("c1", true), None, "not running");
        let e = book.apply(&event(Action::Stop), t, t).expect("an event");
        assert_eq!((e.state, e.exit_code), (ServerState::Stopped, Some(2)));
        let e = book.apply(&event(Action::Destroy), t, t).expect("an event");
        assert_eq!(e.kind, McpEventKind::Destroy);
        assert!(book.lock().is_empty(), "a destroyed container is forgotten");
        assert!(
            book.apply(&event(Action::Health("none".into())), t, t)
                .is_none()
        );
    }
}
