//! `CommandService`: a shell command's whole life, for the channel's `exec` and the local API's
//! `/ssh/execute` alike: the draining check, the concurrency slot, the policy decision and its
//! audit record, the run itself (in the agent's task tracker), the outcome's audit record, and
//! exactly one terminal outcome delivered to the caller's sink, even when the task panics.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ShuttingDown, admit};
use crate::agent::{Agent, role_name};
use crate::audit::Record;
use crate::auth::Caller;
use crate::exec::{self, ExecSpec, Outcome, OutputSink};
use crate::metrics;
use crate::policy::Role;

/// Which entry point a request came through (named in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Channel,
    Http,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Channel => "channel",
            Source::Http => "http",
        }
    }
}

/// A validated command with who asked for it.
#[derive(Debug)]
pub struct CommandRequest {
    pub source: Source,
    pub caller: Caller,
    /// The channel's request id (none over HTTP).
    pub request_id: Option<String>,
    pub spec: ExecSpec,
}

/// Why a command was not run. Each adapter maps these to its wire once.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    #[error("denied by rule `{rule}`: {reason}")]
    Denied { rule: String, reason: String },
    #[error(
        "{limit} commands are running through the local API already (DTMA_HTTP_MAX_CONCURRENT); retry when one ends"
    )]
    Busy { limit: usize },
}

/// How a command's request ended, as its sink receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// The command ran; how it ended.
    Exited(Outcome),
    /// The command could not be started.
    SpawnFailed(String),
    /// The request's task ended without an outcome: an agent bug (a panic), already logged.
    Internal(String),
}

/// Where a command's events go: its output (with the sink's flow control) and, last and
/// exactly once, how it ended.
pub trait CommandSink: OutputSink {
    fn end(&self, end: CommandEnd);
}

pub struct CommandService {
    agent: Arc<Agent>,
    /// Slots for commands run through the local API (the channel is bounded by its streams).
    http_slots: Arc<Semaphore>,
}

impl CommandService {
    pub fn new(agent: Arc<Agent>) -> CommandService {
        CommandService {
            http_slots: Arc::new(Semaphore::new(agent.config().exec.http_max_concurrent)),
            agent,
        }
    }

    /// Check, audit and start a command. On `Ok` the command runs in the background and `sink`
    /// gets its events, then exactly one [`CommandSink::end`]. `cancel` stops it early.
    pub async fn start<S: CommandSink>(
        &self,
        req: CommandRequest,
        sink: Arc<S>,
        cancel: CancellationToken,
    ) -> Result<(), Refused> {
        let agent = &self.agent;
        let source = req.source.name();
        let refused = |e: Refused| {
            agent
                .metrics()
                .request(source, "exec", metrics::Outcome::Refused);
            e
        };
        admit(agent).map_err(|e| refused(e.into()))?;
        let slot = match req.source {
            Source::Http => Some(self.http_slots.clone().try_acquire_owned().map_err(|_| {
                refused(Refused::Busy {
                    limit: agent.config().exec.http_max_concurrent,
                })
            })?),
            Source::Channel => None,
        };
        let decision = match sandbox_refusal(agent, req.caller.role) {
            Some(refused) => refused,
            None => agent.policy().check(&req.spec.command),
        };
        let verdict = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        agent
            .audit(&record(agent, &req, (verdict, &decision.rule), None))
            .await;
        if !decision.allowed {
            info!(source, caller = %req.caller.name, rule = %decision.rule,
                request_id = req.request_id, "Command denied.");
            agent.metrics().policy_rejection(&decision.rule);
            agent
                .metrics()
                .request(source, "exec", metrics::Outcome::Denied);
            return Err(Refused::Denied {
                rule: decision.rule,
                reason: decision.reason,
            });
        }
        let task = run(agent.clone(), req, sink, cancel, slot);
        agent.spawn(task);
        Ok(())
    }
}

async fn run<S: CommandSink>(
    agent: Arc<Agent>,
    req: CommandRequest,
    sink: Arc<S>,
    cancel: CancellationToken,
    slot: Option<OwnedSemaphorePermit>,
) {
    let source = req.source.name();
    let guard = EndGuard {
        sink: Some(sink.clone()),
        agent: Some(agent.clone()),
        source,
    };
    let _running = agent.metrics().command_running(source);
    let request_id = req.request_id.as_deref();
    info!(source, request_id, "Exec started.");
    let config = agent.config();
    let mut spec = req.spec.clone();
    spec.profile = profile(req.caller.role);
    let delegation = Delegation::for_command(&agent, &req.caller, &mut spec);
    let result = exec::run(spec, &config.exec, &config.secrets, sink, cancel).await;
    drop(delegation);
    drop(slot);
    match result {
        Ok(o) => {
            let how = if o.timed_out {
                "timed_out"
            } else if o.cancelled {
                "cancelled"
            } else {
                "exited"
            };
            agent
                .audit(&record(&agent, &req, ("finished", how), Some(&o)))
                .await;
            info!(
                source,
                request_id,
                exit_code = ?o.exit_code,
                signal = ?o.signal,
                timed_out = o.timed_out,
                cancelled = o.cancelled,
                duration_ms = o.duration.as_millis() as u64,
                "Exec finished."
            );
            guard.end(CommandEnd::Exited(o));
        }
        Err(e) => {
            warn!(source, request_id, error = %e, "Exec could not start.");
            guard.end(CommandEnd::SpawnFailed(e.to_string()));
        }
    }
}

/// Delivers the terminal outcome and counts it; if the task ends without one (a panic unwinds
/// through it), it delivers [`CommandEnd::Internal`] so the caller's stream still ends.
struct EndGuard<S: CommandSink> {
    sink: Option<Arc<S>>,
    /// Where the outcome is counted (`None` in unit tests).
    agent: Option<Arc<Agent>>,
    source: &'static str,
}

impl<S: CommandSink> EndGuard<S> {
    fn end(mut self, end: CommandEnd) {
        self.deliver(end);
    }

    fn deliver(&mut self, end: CommandEnd) {
        if let Some(sink) = self.sink.take() {
            if let Some(agent) = &self.agent {
                agent
                    .metrics()
                    .request(self.source, "exec", outcome_of(&end));
            }
            sink.end(end);
        }
    }
}

impl<S: CommandSink> Drop for EndGuard<S> {
    fn drop(&mut self) {
        if self.sink.is_some() {
            error!(
                "A command's task ended without an outcome (a bug); its stream ends with `internal`."
            );
            self.deliver(CommandEnd::Internal(
                "the agent failed while running this request (an agent bug; see its log)".into(),
            ));
        }
    }
}

/// The command's own way to the local API: `DTMA_API_URL` and a token of its caller's role in
/// `DTMA_API_TOKEN` (so `dtma mcp ls` works in an operator's command, with no Docker socket),
/// revoked when the command ends. Never one of the agent's own tokens.
struct Delegation {
    agent: Arc<Agent>,
    token: crate::config::Secret,
}

impl Delegation {
    fn for_command(agent: &Arc<Agent>, caller: &Caller, spec: &mut ExecSpec) -> Option<Delegation> {
        let addr = agent.http_addr()?;
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let token = agent.auth().delegate(caller)?;
        spec.env.insert(
            crate::config::API_URL_VAR.into(),
            format!("http://{host}:{}", addr.port()),
        );
        spec.env.insert(
            crate::config::API_TOKEN_VAR.into(),
            token.expose().to_owned(),
        );
        Some(Delegation {
            agent: agent.clone(),
            token,
        })
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        self.agent.auth().revoke(&self.token);
    }
}

/// The decision for a role whose sandbox profile this host cannot confine (fail closed).
fn sandbox_refusal(agent: &Agent, role: Role) -> Option<crate::policy::Decision> {
    let profile = profile(role);
    let enforcement = agent.enforcement();
    exec::sandbox::refuses(enforcement, profile).then(|| crate::policy::Decision {
        allowed: false,
        rule: "sandbox_unavailable".into(),
        reason: format!(
            "the `{}` sandbox profile cannot run here: {}",
            profile.name(),
            enforcement.degradations.first().map_or("", String::as_str)
        ),
    })
}

/// How a command's end counts in `dtma_requests_total`: a command that ran to its exit is
/// `ok` whatever its exit code (the agent did its job).
fn outcome_of(end: &CommandEnd) -> metrics::Outcome {
    match end {
        CommandEnd::Exited(o) if o.timed_out => metrics::Outcome::TimedOut,
        CommandEnd::Exited(o) if o.cancelled => metrics::Outcome::Cancelled,
        CommandEnd::Exited(_) => metrics::Outcome::Ok,
        CommandEnd::SpawnFailed(_) | CommandEnd::Internal(_) => metrics::Outcome::Error,
    }
}

/// The sandbox profile of a caller's role.
fn profile(role: Role) -> exec::sandbox::Profile {
    match role {
        Role::Diagnostics => exec::sandbox::Profile::Diagnostics,
        Role::Operator => exec::sandbox::Profile::Operator,
        Role::Admin => exec::sandbox::Profile::Admin,
    }
}

fn record<'a>(
    agent: &Agent,
    req: &'a CommandRequest,
    (decision, rule): (&'a str, &'a str),
    outcome: Option<&Outcome>,
) -> Record<'a> {
    let sandboxed = agent.enforcement().mode == exec::sandbox::Mode::Enforce;
    Record {
        time: crate::now_rfc3339(),
        source: req.source.name(),
        caller: &req.caller.name,
        role: role_name(req.caller.role),
        action: "exec",
        command: Some(&req.spec.command),
        profile: sandboxed.then(|| profile(req.caller.role).name()),
        enforcement: Some(exec::sandbox::audit_level(agent.enforcement())),
        target: None,
        decision,
        rule,
        request_id: req.request_id.as_deref(),
        exit_code: outcome.and_then(|o| o.exit_code),
        signal: outcome.and_then(|o| o.signal),
        duration_ms: outcome.map(|o| o.duration.as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Ends(Mutex<Vec<CommandEnd>>);
    impl OutputSink for Ends {
        fn started(&self, _pid: u32) {}
        async fn reserve(&self, want: usize) -> usize {
            want
        }
        fn output(&self, _fd: dtma_protocol::Fd, _data: &[u8], _reserved: usize) {}
        fn eof(&self, _fd: dtma_protocol::Fd) {}
    }
    impl CommandSink for Ends {
        fn end(&self, end: CommandEnd) {
            self.0.lock().unwrap().push(end);
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_still_ends_its_sink_once() {
        let sink = Arc::new(Ends::default());
        let s = sink.clone();
        let joined = tokio::spawn(async move {
            let _guard = EndGuard {
                sink: Some(s),
                agent: None,
                source: "http",
            };
            panic!("a bug in a request task");
        })
        .await;
        assert!(joined.unwrap_err().is_panic());
        let ends = sink.0.lock().unwrap();
        assert!(
            matches!(ends.as_slice(), [CommandEnd::Internal(_)]),
            "{ends:?}"
        );
    }

    #[tokio::test]
    async fn a_normal_end_is_delivered_once() {
        let sink = Arc::new(Ends::default());
        EndGuard {
            sink: Some(sink.clone()),
            agent: None,
            source: "http",
        }
        .end(CommandEnd::SpawnFailed("x".into()));
        let ends = sink.0.lock().unwrap();
        assert_eq!(ends.as_slice(), [CommandEnd::SpawnFailed("x".into())]);
    }
}
