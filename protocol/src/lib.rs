//! Wire types of the DTMA control channel.
//!
//! This crate is the contract between the agent (`dtma`) and the backend. It holds serde types and
//! pure functions over them, nothing that does I/O. `protocol/README.md` is the prose spec; the
//! JSON Schema in `protocol/schema/` is generated from these types (see [`schema`]) and a test
//! fails when the committed copy drifts.
//!
//! Every WebSocket text frame carries exactly one JSON object with a `type` field.
//! * [`AgentMessage`]: agent -> backend.
//! * [`BackendMessage`]: backend -> agent, decoded with [`decode_backend`] so that every bad
//!   frame becomes a typed [`DecodeError`] that still carries the request id when one was readable.
//!
//! # Layout
//! * this file: the envelope (handshake, stream events, control messages, `exec`/`cancel`/`ping`),
//!   the decoder, the schema generator and [`fast`] (the `output` hot path);
//! * [`mcp`]: the MCP, logs, diagnostics and events requests, their events and result payloads,
//!   re-exported here.
#![forbid(unsafe_code)]

pub mod mcp;
pub use mcp::*;

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The protocol version this crate describes. Sent in `hello`, echoed in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request id the agent accepts, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// WebSocket close codes used on the channel (RFC 6455 reserves 4000-4999 for applications).
pub mod close_code {
    /// The backend does not speak the agent's protocol version (sent by the backend).
    pub const UNSUPPORTED_VERSION: u16 = 4001;
    /// The backend replaced this session with a newer one for the same agent id.
    pub const REPLACED: u16 = 4002;
    /// The backend broke the handshake order: its first message was not `welcome` (sent by
    /// the agent, which then reconnects with backoff).
    pub const PROTOCOL_ERROR: u16 = 4003;
    /// The agent is shutting down; it will not reconnect.
    pub const SHUTDOWN: u16 = 4004;
    /// Reserved for a backend that declares an agent's link dead. (The agent itself sends no
    /// close frame on a dead link: it simply redials.)
    pub const DEAD_LINK: u16 = 4005;
}

/// A request id chosen by the backend. Unique per agent; 1 to [`MAX_ID_LEN`] bytes without
/// [`ID_FORBIDDEN`] characters (checked by [`decode_backend`] for requests only).
pub type RequestId = String;

/// Characters a request id must not contain: Unicode category Cc, the set `char::is_control`
/// tests. The decoder and the schema's `pattern` are both built from this list.
pub const ID_FORBIDDEN: [(char, char); 2] = [('\u{0}', '\u{1f}'), ('\u{7f}', '\u{9f}')];

/// Which pipe of a child process a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fd {
    Stdout,
    Stderr,
}

/// How `data` in an `output` event is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `data` is the bytes as UTF-8 text. Chunks never split a UTF-8 character.
    Utf8,
    /// `data` is standard base64 (RFC 4648, with padding) of bytes that are not valid UTF-8.
    Base64,
}

/// Where a stream stands, as reported in `hello` and `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamPhase {
    /// The request is still producing events.
    Running,
    /// The terminal event has been produced; it waits for the backend's ack.
    Finished,
    /// The terminal event was acknowledged; the agent keeps only the id (to refuse a re-run).
    Closed,
}

// ---------------------------------------------------------------------------------------------
// Agent -> backend
// ---------------------------------------------------------------------------------------------

/// Every message the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello(Hello),
    Started(Started),
    Output(Output),
    Exit(Exit),
    Progress(Progress),
    McpEvent(McpEvent),
    Result(ResultEvent),
    Error(ErrorEvent),
    State(StateEvent),
    Status(Status),
}

/// First frame on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hello {
    pub agent_id: String,
    pub agent_version: String,
    /// Random per agent process start. A new value means the agent restarted and holds none of
    /// the streams of earlier boots: requests that never got an event may be sent again.
    pub boot_id: String,
    pub protocol_version: u32,
    /// Request types and features this agent serves (e.g. `exec`, `credit`, `resume`; `mcp`,
    /// `logs`, `diagnostics`, `events` once it serves those requests). A backend checks before
    /// sending: an unserved request type ends with `not_implemented`.
    pub capabilities: Vec<String>,
    /// Streams the agent still holds from before this connection.
    pub streams: Vec<StreamResume>,
    /// Largest text frame the agent accepts, in bytes.
    pub max_frame_bytes: u64,
    /// The kernel sandbox commands run under. This agent always sends it; omitted (never
    /// `null`) by agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Sandbox")]
    pub sandbox: Option<Sandbox>,
}

/// The kernel sandbox commands run under, as the agent assessed it once at start (sent in
/// `hello` and `status`, served in `GET /status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sandbox {
    /// `DTMA_SANDBOX`: `off` runs commands unconfined; `enforce` under their role's profile.
    pub mode: SandboxMode,
    /// The kernel's Landlock ABI; `null` when the kernel has no (enabled) Landlock.
    pub landlock_abi: Option<u8>,
    /// `full`: every protection of the profiles holds; `partial`: some are missing (listed in
    /// `degradations`); `none`: the sandbox is off.
    pub level: SandboxLevel,
    /// Each protection that does not hold on this host, in words. Empty when `level` is `full`.
    pub degradations: Vec<String>,
    /// The profiles whose commands this agent refuses (`denied`, rule `sandbox_unavailable`):
    /// `diagnostics` and `operator` when `mode` is `off`, or when the kernel has no Landlock and
    /// the configuration does not accept the weaker sandbox. Omitted by agents that predate it.
    #[serde(default)]
    pub refused_profiles: Vec<SandboxProfile>,
}

/// A sandbox profile: one per caller role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxProfile {
    Diagnostics,
    Operator,
    Admin,
}

impl SandboxProfile {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SandboxProfile::Diagnostics => "diagnostics",
            SandboxProfile::Operator => "operator",
            SandboxProfile::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    Off,
    Enforce,
}

impl SandboxMode {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SandboxMode::Off => "off",
            SandboxMode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxLevel {
    Full,
    Partial,
    None,
}

impl SandboxLevel {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SandboxLevel::Full => "full",
            SandboxLevel::Partial => "partial",
            SandboxLevel::None => "none",
        }
    }
}

/// One stream the agent still holds, listed in `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamResume {
    pub id: RequestId,
    /// `running` or `finished`: a held stream is never `closed` (closed streams are not held).
    #[schemars(with = "HeldPhase")]
    pub phase: StreamPhase,
    /// Lowest sequence number the agent still buffers (everything below was acknowledged).
    pub first_seq: u64,
    /// Sequence number the next new event of this stream will get.
    pub next_seq: u64,
}

/// The phases a held stream can be in: the schema of [`StreamResume::phase`].
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used
enum HeldPhase {
    Running,
    Finished,
}

/// An exec has spawned its child. Always `seq` 0 of an exec stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Started {
    pub id: RequestId,
    pub seq: u64,
    pub pid: u32,
    /// RFC 3339 UTC time the child was spawned.
    pub at: String,
}

/// A chunk of a child's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Output {
    pub id: RequestId,
    pub seq: u64,
    pub fd: Fd,
    pub encoding: Encoding,
    pub data: String,
}

/// The terminal event of an exec stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Exit {
    pub id: RequestId,
    pub seq: u64,
    /// The exit code when the child exited normally; `null` otherwise.
    pub exit_code: Option<i32>,
    /// The signal number when the child was killed by a signal (e.g. 15, 9); `null` otherwise.
    pub signal: Option<i32>,
    /// True when the request's timeout fired.
    pub timed_out: bool,
    /// True when a `cancel` request (or agent shutdown) stopped it.
    pub cancelled: bool,
    /// When the agent had to stop the child: the last signal it sent to the process group
    /// (`SIGTERM`, or `SIGKILL` after the grace period). `null` when the child ended by itself.
    #[schemars(extend("enum" = ["SIGTERM", "SIGKILL", null]))]
    pub killed_with: Option<String>,
    pub duration_ms: u64,
    /// Bytes the child wrote to stdout / stderr (including bytes past the cap, which were read
    /// and discarded).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// True when output was read and discarded: beyond the request's `max_output_bytes`, or
    /// after the agent had to SIGKILL the group.
    pub truncated: bool,
}

/// The terminal event of a one-shot request (`ping`, `cancel`, ...). `data` depends on the
/// request type; see protocol/README.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultEvent {
    pub id: RequestId,
    pub seq: u64,
    pub data: serde_json::Value,
}

/// A typed error. With `seq` it is the terminal event of stream `id` and must be acknowledged;
/// without `seq` it answers a frame that never became a stream (undecodable input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorEvent {
    /// The request id; omitted (never `null`) when the frame had no readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "RequestId")]
    pub id: Option<RequestId>,
    /// The event number when this error ends stream `id`; omitted (never `null`) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
    /// Structured detail for some codes (`deploy_failed`: a [`DeployFailure`]); omitted (never
    /// `null`) otherwise. Always a JSON object when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub details: Option<serde_json::Value>,
}

/// The answer to a request whose id the agent has already seen: the request is not run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StateEvent {
    pub id: RequestId,
    pub phase: StreamPhase,
    /// Next sequence number of the stream (its event count so far); 0 for `closed` streams,
    /// of which the agent keeps only the id.
    pub next_seq: u64,
}

/// Periodic heartbeat. Not sequenced, not acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    pub agent_version: String,
    pub uptime_s: u64,
    /// RFC 3339 UTC time of the sample.
    pub at: String,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    pub cpu_load_percent: f64,
    pub memory: MemoryStatus,
    pub disk: Option<DiskStatus>,
    /// Requests currently producing events.
    pub streams_running: u64,
    /// Streams held (running or waiting for their final ack).
    pub streams_held: u64,
    /// MCP tool containers (filled by the Docker work; empty until then).
    pub tool_statuses: Vec<ToolStatus>,
    /// The kernel sandbox commands run under. This agent always sends it; omitted (never
    /// `null`) by agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Sandbox")]
    pub sandbox: Option<Sandbox>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryStatus {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiskStatus {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// One MCP tool container, as the old HTTP heartbeat reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolStatus {
    pub account_tool_instance_id: String,
    pub instance_name_on_toolbox: String,
    pub status_on_toolbox: String,
    pub runtime_details: serde_json::Value,
}

/// Stable error codes. The agent never invents others within a protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    MalformedJson,
    /// The text frame is longer than `max_frame_bytes`.
    FrameTooLarge,
    /// A binary frame: the backend sends text frames only.
    UnsupportedFrame,
    /// `type` is missing or not one the agent knows.
    UnknownType,
    /// A field is missing, mistyped or out of range; `message` names it.
    InvalidRequest,
    /// `expires_at` had passed when the request arrived; it was not run.
    Expired,
    /// The request type is known but not served by this build yet.
    NotImplemented,
    /// The command policy refused the command.
    Denied,
    /// The child process could not be started.
    SpawnFailed,
    /// The agent holds too many streams (a stream counts until its terminal event is
    /// acknowledged); retry after acknowledging finished streams.
    TooManyStreams,
    /// The agent is shutting down and takes no new work.
    ShuttingDown,
    /// A handshake message out of place (a second `welcome`).
    ProtocolError,
    /// A bug or an unexpected local failure; `message` says what.
    Internal,
    /// The Docker daemon is unreachable; retry later.
    DockerUnavailable,
    /// The group or instance named by the request is not managed by this agent.
    NotFound,
    /// A container with the wanted name exists and is not this agent's, or the instance name
    /// belongs to another group; `message` names it.
    Conflict,
    /// A deploy failed; `details` is a [`DeployFailure`] saying what became of each server.
    DeployFailed,
}

// ---------------------------------------------------------------------------------------------
// Backend -> agent
// ---------------------------------------------------------------------------------------------

/// Every message the backend sends: control messages and requests share the `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum BackendMessage {
    Control(Control),
    Request(Request),
}

/// Messages that steer the channel itself. They carry no request id of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Welcome(Welcome),
    Ack(Ack),
    Credit(Credit),
    Reconnect(Reconnect),
}

/// The backend's answer to `hello`. The agent processes nothing else before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Welcome {
    pub protocol_version: u32,
    /// The backend's name for this session (for logs on both sides).
    pub session_id: String,
    /// How often the agent sends `status`; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Credit limit each new stream starts with, in bytes; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_credit: Option<u64>,
    /// For streams listed in `hello`: the highest seq the backend already holds. The agent
    /// resends from the next one. A stream missing here is resent from its `first_seq`.
    #[serde(default)]
    pub resume: Vec<ResumePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResumePoint {
    pub id: RequestId,
    /// Highest seq the backend holds; `null` when it holds none.
    pub ack: Option<u64>,
    /// The stream's current credit limit (as in `credit`), in case a `credit` was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<u64>,
}

/// Cumulative acknowledgement: the backend holds every event of stream `id` up to `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    pub id: RequestId,
    pub seq: u64,
}

/// Flow control: stream `id` may forward output up to `limit` bytes in total, counted in raw
/// bytes (before any encoding) from the stream's start. Limits only grow: a smaller or repeated
/// value changes nothing, so resending a credit (e.g. after a reconnect) is always safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Credit {
    pub id: RequestId,
    pub limit: u64,
}

/// Server-directed backoff or redirect: the agent closes this connection, waits `after_ms`
/// and dials `url` (a `ws://` or `wss://` URL; when absent, the URL it used last). A redirect
/// URL is kept until a dial to it fails; then the agent returns to its configured URL. Any
/// other `url` decodes but is ignored (with a warning in the agent's log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reconnect {
    #[serde(default)]
    pub after_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A request: an id, an optional deadline, and one of the request bodies. Its schema is written
/// by hand (below) because the body is flattened into the same JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    /// RFC 3339 time after which the agent must not start the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub body: RequestBody,
}

/// The closed set of request types. Each one's replies are listed in protocol/README.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Run a shell command; streams `started`, `output`*, then `exit`.
    Exec(Exec),
    /// Stop a running request; answers `result` with [`CancelResult`].
    Cancel(Cancel),
    /// Liveness check through the request path; answers `result` with `{"pong": true}`.
    Ping(Ping),
    /// Deploy a group of MCP server containers; streams `progress`*, then `result` with
    /// [`DeployResult`] or `error` (`deploy_failed` with a [`DeployFailure`]).
    McpDeploy(McpDeploy),
    /// Remove a group; streams `progress`*, then `result` with [`RemoveResult`].
    McpRemove(McpRemove),
    /// State of one or all groups; answers `result` with [`StatusResult`].
    McpStatus(McpStatus),
    /// Restart one server; streams `progress`*, then `result` with [`RestartResult`].
    McpRestart(McpRestart),
    /// Follow a server's logs; streams `progress`, `output`*, then `result` with [`LogsEnd`].
    LogsFollow(LogsFollow),
    /// A diagnostics report; answers `result` with the matching HTTP route's JSON object.
    Diagnostics(Diagnostics),
    /// Docker events of managed containers; streams `mcp_event`* until cancelled (`result`
    /// with [`EventsEnd`]) or the agent stops.
    McpEvents(McpEvents),
}

impl RequestBody {
    /// The wire name of this request type.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestBody::Exec(_) => "exec",
            RequestBody::Cancel(_) => "cancel",
            RequestBody::Ping(_) => "ping",
            RequestBody::McpDeploy(_) => "mcp_deploy",
            RequestBody::McpRemove(_) => "mcp_remove",
            RequestBody::McpStatus(_) => "mcp_status",
            RequestBody::McpRestart(_) => "mcp_restart",
            RequestBody::LogsFollow(_) => "logs_follow",
            RequestBody::Diagnostics(_) => "diagnostics",
            RequestBody::McpEvents(_) => "mcp_events",
        }
    }

    /// The checks on plain fields that serde cannot express (lengths, patterns, ranges);
    /// [`decode_backend`] runs them. `exec`'s checks live in the agent (some depend on its
    /// configuration).
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            RequestBody::Exec(_)
            | RequestBody::Cancel(_)
            | RequestBody::Ping(_)
            | RequestBody::McpEvents(_) => Ok(()),
            RequestBody::McpDeploy(d) => d.group.validate().map_err(|e| e.within("group")),
            RequestBody::McpRemove(r) => r.validate(),
            RequestBody::McpStatus(s) => s.validate(),
            RequestBody::McpRestart(r) => r.validate(),
            RequestBody::LogsFollow(l) => l.validate(),
            RequestBody::Diagnostics(d) => d.validate(),
        }
    }
}

impl JsonSchema for Request {
    fn schema_name() -> Cow<'static, str> {
        "Request".into()
    }

    /// One complete object per request type, with `type`, `id`, `expires_at` and the body's
    /// fields side by side: only then does `additionalProperties: false` (the body's
    /// `deny_unknown_fields`) see every field the decoder allows.
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = RequestBody::json_schema(generator);
        let id = generator.subschema_for::<schema::OwnRequestId>().to_value();
        let expires_at = generator.subschema_for::<schema::ExpiresAt>().to_value();
        let variants = schema
            .get_mut("oneOf")
            .and_then(serde_json::Value::as_array_mut)
            .expect("an internally tagged enum has a `oneOf` of its variants");
        for variant in variants {
            let variant = variant
                .as_object_mut()
                .expect("every variant schema is an object");
            let properties = variant
                .entry("properties")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(properties) = properties.as_object_mut() {
                properties.insert("id".into(), id.clone());
                properties.insert("expires_at".into(), expires_at.clone());
            }
            let required = variant
                .entry("required")
                .or_insert_with(|| serde_json::json!([]));
            if let Some(required) = required.as_array_mut() {
                required.insert(required.len().min(1), "id".into());
            }
        }
        schema.insert(
            "description".into(),
            "A request: `type`, `id`, an optional `expires_at` and the fields of its type.".into(),
        );
        schema
    }
}

/// Run `/bin/sh -c command`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The shell command: not blank, no NUL byte (the agent's exec checks refuse both).
    #[schemars(transform = schema::command)]
    pub command: String,
    /// Milliseconds before the process group gets SIGTERM (then SIGKILL). Agent default when
    /// absent; must be 1..=the agent's maximum (`DTMA_EXEC_MAX_TIMEOUT_MS`, not in the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Working directory; the agent's when absent. No NUL byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = schema::without_nul)]
    pub cwd: Option<String>,
    /// Extra environment variables for the child. Names are ASCII letters, digits and `_`;
    /// values hold no NUL byte.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = schema::env)]
    pub env: BTreeMap<String, String>,
    /// Text written to the child's stdin, which is then closed. Stdin is empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// This stream's initial credit limit in bytes, instead of the session's `initial_credit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u64>,
    /// Cap on output bytes forwarded (stdout + stderr); the rest is read and discarded and
    /// `exit.truncated` is set. The agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The id of the request to stop.
    pub target: RequestId,
}

/// `data` of the `result` answering a `cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelResult {
    pub target: RequestId,
    /// True when the target was running and has been told to stop; its own stream ends with
    /// `exit` (`cancelled: true`).
    pub cancelled: bool,
    /// The target's phase when the cancel arrived; `null` when the agent never saw it.
    pub phase: Option<StreamPhase>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

// ---------------------------------------------------------------------------------------------
// Decoding backend frames
// ---------------------------------------------------------------------------------------------

/// Why a backend frame could not be decoded. Each variant maps to one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    MalformedJson {
        detail: String,
    },
    UnknownType {
        id: Option<RequestId>,
        kind: Option<String>,
    },
    Invalid {
        id: Option<RequestId>,
        detail: String,
    },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::MalformedJson { .. } => ErrorCode::MalformedJson,
            DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
            DecodeError::Invalid { .. } => ErrorCode::InvalidRequest,
        }
    }

    /// The request id, when the frame had a readable one.
    pub fn id(&self) -> Option<&str> {
        match self {
            DecodeError::MalformedJson { .. } => None,
            DecodeError::UnknownType { id, .. } | DecodeError::Invalid { id, .. } => id.as_deref(),
        }
    }

    /// The error as the agent sends it back (unsequenced).
    pub fn to_event(&self) -> ErrorEvent {
        ErrorEvent {
            id: self.id().map(str::to_owned),
            seq: None,
            code: self.code(),
            message: self.to_string(),
            details: None,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::MalformedJson { detail } => write!(f, "malformed JSON: {detail}"),
            DecodeError::UnknownType { kind: None, .. } => {
                write!(f, "the message has no string field `type`")
            }
            DecodeError::UnknownType { kind: Some(k), .. } => {
                write!(f, "unknown message type `{k}`")
            }
            DecodeError::Invalid { detail, .. } => write!(f, "invalid message: {detail}"),
        }
    }
}

impl std::error::Error for DecodeError {}

const CONTROL_TYPES: [&str; 4] = ["welcome", "ack", "credit", "reconnect"];
const REQUEST_TYPES: [&str; 10] = [
    "exec",
    "cancel",
    "ping",
    "mcp_deploy",
    "mcp_remove",
    "mcp_status",
    "mcp_restart",
    "logs_follow",
    "diagnostics",
    "mcp_events",
];

/// Decode one backend text frame. The id is read first so that every later failure can name it,
/// and field errors name the field (`timeout_ms: invalid value ...`). Request bodies then pass
/// [`RequestBody::validate`].
pub fn decode_backend(text: &str) -> Result<BackendMessage, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::MalformedJson {
            detail: e.to_string(),
        })?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(DecodeError::MalformedJson {
            detail: "expected a JSON object".into(),
        });
    };
    let id = match map.get("id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let kind = match map.remove("type") {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(DecodeError::UnknownType { id, kind: None }),
    };
    let invalid = |detail: String| DecodeError::Invalid {
        id: id.clone(),
        detail,
    };
    if CONTROL_TYPES.contains(&kind.as_str()) {
        let v = serde_json::Value::Object(map);
        let control = match kind.as_str() {
            "welcome" => typed(v).map(Control::Welcome),
            "ack" => typed(v).map(Control::Ack),
            "credit" => typed(v).map(Control::Credit),
            _ => typed(v).map(Control::Reconnect),
        };
        return control.map(BackendMessage::Control).map_err(invalid);
    }
    if !REQUEST_TYPES.contains(&kind.as_str()) {
        return Err(DecodeError::UnknownType {
            id,
            kind: Some(kind),
        });
    }
    let request_id = match map.remove("id") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(invalid("field `id` must be a string".into())),
        None => return Err(invalid("missing field `id`".into())),
    };
    validate_id(&request_id).map_err(&invalid)?;
    let expires_at = match map.remove("expires_at") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(invalid("field `expires_at` must be a string".into())),
    };
    let v = serde_json::Value::Object(map);
    let body = match kind.as_str() {
        "exec" => typed(v).map(RequestBody::Exec),
        "cancel" => typed(v).map(RequestBody::Cancel),
        "ping" => typed(v).map(RequestBody::Ping),
        "mcp_deploy" => typed(v).map(RequestBody::McpDeploy),
        "mcp_remove" => typed(v).map(RequestBody::McpRemove),
        "mcp_status" => typed(v).map(RequestBody::McpStatus),
        "mcp_restart" => typed(v).map(RequestBody::McpRestart),
        "logs_follow" => typed(v).map(RequestBody::LogsFollow),
        "diagnostics" => typed(v).map(RequestBody::Diagnostics),
        _ => typed(v).map(RequestBody::McpEvents),
    }
    .map_err(&invalid)?;
    body.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(BackendMessage::Request(Request {
        id: request_id,
        expires_at,
        body,
    }))
}

/// Deserialise one message body, naming the offending field on error.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("field `{path}`: {}", e.inner())
        }
    })
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("field `id` must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("field `id` is longer than {MAX_ID_LEN} bytes"));
    }
    if id
        .chars()
        .any(|c| ID_FORBIDDEN.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)))
    {
        return Err("field `id` contains control characters".into());
    }
    Ok(())
}

/// JSON Schemas of both directions, as committed in `protocol/schema/`.
///
/// * The agent schema describes what the serializer writes: a field is `required` when it is
///   always written, and nullable only where `null` is written (an omitted field is neither).
/// * The backend schema describes what the agent accepts: what [`decode_backend`] decodes,
///   narrowed by the `exec` field checks that do not depend on the agent's configuration. What no
///   JSON Schema can say is listed next to the schemas in protocol/README.md.
///
/// [`decode_backend`]: super::decode_backend
pub mod schema {
    use std::borrow::Cow;

    use schemars::generate::SchemaSettings;
    use schemars::transform::RecursiveTransform;
    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
    use serde_json::json;

    use super::{ID_FORBIDDEN, MAX_ID_LEN};

    /// Unicode `White_Space`, what `str::trim` removes: the agent refuses a command made of
    /// these only.
    pub(crate) const WHITE_SPACE: [(char, char); 10] = [
        ('\u{9}', '\u{d}'),
        (' ', ' '),
        ('\u{85}', '\u{85}'),
        ('\u{a0}', '\u{a0}'),
        ('\u{1680}', '\u{1680}'),
        ('\u{2000}', '\u{200a}'),
        ('\u{2028}', '\u{2029}'),
        ('\u{202f}', '\u{202f}'),
        ('\u{205f}', '\u{205f}'),
        ('\u{3000}', '\u{3000}'),
    ];

    /// Environment variable names the agent's exec checks accept.
    const ENV_NAME_PATTERN: &str = "^[A-Za-z0-9_]+$";

    /// Matches a string that contains a NUL character (used under `not`).
    pub(crate) const NUL_PATTERN: &str = "\\u0000";

    /// `(file name, pretty JSON)` for each committed schema file.
    pub fn generate() -> Vec<(&'static str, String)> {
        let settings =
            || SchemaSettings::draft2020_12().with_transform(RecursiveTransform(integer_bounds));
        let pretty = |s: Schema| {
            let mut text =
                serde_json::to_string_pretty(&s).expect("a schema is always serialisable");
            text.push('\n');
            text
        };
        vec![
            (
                "agent-message.schema.json",
                pretty(
                    settings()
                        .for_serialize()
                        .into_generator()
                        .into_root_schema_for::<super::AgentMessage>(),
                ),
            ),
            (
                "backend-message.schema.json",
                pretty(
                    settings()
                        .for_deserialize()
                        .into_generator()
                        .into_root_schema_for::<super::BackendMessage>(),
                ),
            ),
            (
                "results.schema.json",
                pretty(
                    settings()
                        .for_serialize()
                        .into_generator()
                        .into_root_schema_for::<ResultPayloads>(),
                ),
            ),
        ]
    }

    /// The typed payloads of `result.data` and `error.details`: the root of
    /// `results.schema.json`, so that code generators emit every one of them.
    struct ResultPayloads;

    impl JsonSchema for ResultPayloads {
        fn schema_name() -> Cow<'static, str> {
            "ResultPayloads".into()
        }

        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            use super::mcp::*;
            let payloads = [
                generator.subschema_for::<super::CancelResult>(),
                generator.subschema_for::<DeployResult>(),
                generator.subschema_for::<DeployFailure>(),
                generator.subschema_for::<RemoveResult>(),
                generator.subschema_for::<StatusResult>(),
                generator.subschema_for::<RestartResult>(),
                generator.subschema_for::<LogsEnd>(),
                generator.subschema_for::<EventsEnd>(),
            ];
            json_schema!({
                "description": "The typed payloads the agent writes: `result.data` of `cancel` \
                    (CancelResult), `mcp_deploy` (DeployResult), `mcp_remove` (RemoveResult), \
                    `mcp_status` (StatusResult), `mcp_restart` (RestartResult), `logs_follow` \
                    (LogsEnd), `mcp_events` (EventsEnd); `error.details` of `deploy_failed` \
                    (DeployFailure). See protocol/README.md.",
                "anyOf": payloads,
            })
        }
    }

    /// The body of a regex character class holding `ranges`, as `\uXXXX` escapes (read alike by
    /// ECMA-262 and Rust regexes; every range lies in the Basic Multilingual Plane).
    pub(crate) fn class(ranges: &[(char, char)]) -> String {
        ranges
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    format!("\\u{:04x}", u32::from(lo))
                } else {
                    format!("\\u{:04x}-\\u{:04x}", u32::from(lo), u32::from(hi))
                }
            })
            .collect()
    }

    /// The schema of a request's own `id`, as `decode_backend` checks it (`maxLength` counts
    /// characters, the decoder bytes: see the README). Ids that only name a stream (`ack`,
    /// `credit`, `cancel.target`) are not checked and stay plain strings.
    pub(crate) struct OwnRequestId;

    impl JsonSchema for OwnRequestId {
        fn schema_name() -> Cow<'static, str> {
            "RequestId".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": format!(
                    "A request's own id: 1 to {MAX_ID_LEN} bytes (UTF-8), no control characters."
                ),
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_LEN,
                "pattern": format!("^[^{}]*$", class(&ID_FORBIDDEN)),
            })
        }
    }

    /// The schema of a request's `expires_at`.
    pub(crate) struct ExpiresAt;

    impl JsonSchema for ExpiresAt {
        fn schema_name() -> Cow<'static, str> {
            "ExpiresAt".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "RFC 3339 time after which the agent must not start the request \
                                (`null` reads as absent).",
                "type": ["string", "null"],
                "format": "date-time",
            })
        }
    }

    /// A `pattern` for strings without control characters (the request-id rule, in characters).
    pub(crate) fn without_controls() -> String {
        format!("^[^{}]*$", class(&ID_FORBIDDEN))
    }

    /// `exec.command`: at least one character that is not white space, and no NUL.
    pub(crate) fn command(schema: &mut Schema) {
        schema.insert(
            "pattern".into(),
            format!("[^{}]", class(&WHITE_SPACE)).into(),
        );
        without_nul(schema);
    }

    /// A string that holds no NUL character (no process argument can carry one). `type` inside
    /// `not` keeps a `null` (absent) value valid.
    pub(crate) fn without_nul(schema: &mut Schema) {
        schema.insert(
            "not".into(),
            json!({ "type": "string", "pattern": NUL_PATTERN }),
        );
    }

    /// `exec.env`: names the agent accepts, values without NUL.
    pub(crate) fn env(schema: &mut Schema) {
        schema.insert(
            "propertyNames".into(),
            json!({ "pattern": ENV_NAME_PATTERN }),
        );
        schema.insert(
            "additionalProperties".into(),
            json!({ "type": "string", "not": { "type": "string", "pattern": NUL_PATTERN } }),
        );
    }

    /// The range of each Rust integer type, which schemars states only as a `format`: serde
    /// refuses a number outside it.
    fn integer_bounds(schema: &mut Schema) {
        let (min, max) = match schema.get("format").and_then(|f| f.as_str()) {
            Some("uint8") => (json!(0), json!(u8::MAX)),
            Some("uint16") => (json!(0), json!(u16::MAX)),
            Some("uint32") => (json!(0), json!(u32::MAX)),
            Some("uint64") => (json!(0), json!(u64::MAX)),
            Some("int8") => (json!(i8::MIN), json!(i8::MAX)),
            Some("int16") => (json!(i16::MIN), json!(i16::MAX)),
            Some("int32") => (json!(i32::MIN), json!(i32::MAX)),
            Some("int64") => (json!(i64::MIN), json!(i64::MAX)),
            _ => return,
        };
        // A tighter bound set by an attribute (`timeout_ms` >= 1) stays.
        schema.ensure_object().entry("minimum").or_insert(min);
        schema.ensure_object().entry("maximum").or_insert(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_decodes_with_defaults() {
        let m = decode_backend(r#"{"type":"exec","id":"r1","command":"true"}"#).unwrap();
        let BackendMessage::Request(r) = m else {
            panic!("not a request: {m:?}")
        };
        assert_eq!(r.id, "r1");
        assert_eq!(
            r.body,
            RequestBody::Exec(Exec {
                command: "true".into(),
                ..Exec::default()
            })
        );
    }

    #[test]
    fn bad_frames_are_typed_and_keep_the_id() {
        let e = decode_backend("{nope").unwrap_err();
        assert_eq!(e.code(), ErrorCode::MalformedJson);
        let e = decode_backend("[1,2]").unwrap_err();
        assert_eq!(e.code(), ErrorCode::MalformedJson);
        let e = decode_backend(r#"{"id":"a"}"#).unwrap_err();
        assert_eq!((e.code(), e.id()), (ErrorCode::UnknownType, Some("a")));
        let e = decode_backend(r#"{"type":"launch","id":"b"}"#).unwrap_err();
        assert_eq!((e.code(), e.id()), (ErrorCode::UnknownType, Some("b")));
        let e = decode_backend(r#"{"type":"exec","id":"c"}"#).unwrap_err();
        assert_eq!((e.code(), e.id()), (ErrorCode::InvalidRequest, Some("c")));
        assert!(e.to_string().contains("command"), "{e}");
        let e = decode_backend(r#"{"type":"exec","id":"d","command":7}"#).unwrap_err();
        assert_eq!((e.code(), e.id()), (ErrorCode::InvalidRequest, Some("d")));
        let e = decode_backend(r#"{"type":"exec","id":"","command":"x"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest);
        let e = decode_backend(r#"{"type":"ack","id":"e","seq":-1}"#).unwrap_err();
        assert_eq!((e.code(), e.id()), (ErrorCode::InvalidRequest, Some("e")));
        let e = decode_backend(r#"{"type":"exec","id":"f","command":"x","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn hostile_frames_never_panic() {
        // Deterministic xorshift so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\"type\"",
            "\"id\"",
            "\"exec\"",
            "\"ack\"",
            "\"command\"",
            "\"seq\"",
            "\"credit\"",
            "\"limit\"",
            "\"welcome\"",
            "null",
            "true",
            "-1",
            "1e999",
            "18446744073709551616",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"é\"",
            " ",
            "\"expires_at\"",
            "\"2020-01-01T00:00:00Z\"",
            "{\"type\":\"exec\",\"id\":\"a\",",
        ];
        for _ in 0..20_000 {
            let n = (next() % 24) as usize;
            let text: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            if let Err(e) = decode_backend(&text) {
                let _ = e.to_event();
            }
        }
        let deep = "[".repeat(100_000);
        assert_eq!(
            decode_backend(&deep).unwrap_err().code(),
            ErrorCode::MalformedJson
        );
        let deep_obj = format!(
            "{{\"type\":\"exec\",\"id\":\"d\",\"command\":{}",
            "[".repeat(100_000)
        );
        assert!(decode_backend(&deep_obj).is_err());
    }

    /// Every Unicode scalar value, for exhaustive checks of character sets.
    fn every_char() -> impl Iterator<Item = char> {
        (0..=u32::from(char::MAX)).filter_map(char::from_u32)
    }

    fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
        ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
    }

    #[test]
    fn id_forbidden_is_exactly_the_control_characters() {
        for c in every_char() {
            assert_eq!(in_ranges(&ID_FORBIDDEN, c), c.is_control(), "{c:?}");
        }
        assert_eq!(
            schema::class(&ID_FORBIDDEN),
            "\\u0000-\\u001f\\u007f-\\u009f"
        );
    }

    #[test]
    fn white_space_is_exactly_what_trim_removes() {
        for c in every_char() {
            assert_eq!(
                in_ranges(&schema::WHITE_SPACE, c),
                c.to_string().trim().is_empty(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn control_round_trips() {
        let c = BackendMessage::Control(Control::Credit(Credit {
            id: "x".into(),
            limit: 5,
        }));
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"type":"credit","id":"x","limit":5}"#);
        assert_eq!(decode_backend(&text).unwrap(), c);
    }
}

// ---------------------------------------------------------------------------------------------
// The hot path: `output` events written without serde
// ---------------------------------------------------------------------------------------------

/// Fast serialisation of the most frequent event. Produces the same JSON as serde would for
/// [`AgentMessage::Output`] (tests check it), but escapes the payload eight bytes at a time.
pub mod fast {
    use super::{Encoding, Fd};

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// True when any byte of `w` is below 0x20, a `"` or a `\`.
    #[inline]
    fn needs_escape(w: u64) -> bool {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let q = w ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q & HIGHS;
        let b = w ^ (ONES * u64::from(b'\\'));
        let backslash = b.wrapping_sub(ONES) & !b & HIGHS;
        (below_space | quote | backslash) != 0
    }

    /// Append `s` as a JSON string literal (quotes included).
    pub fn json_string(out: &mut String, s: &str) {
        let bytes = s.as_bytes();
        out.reserve(bytes.len() + 2 + bytes.len() / 16);
        out.push('"');
        let mut clean_from = 0;
        let mut i = 0;
        while i < bytes.len() {
            if let Some(word) = bytes.get(i..i + 8) {
                let mut arr = [0u8; 8];
                arr.copy_from_slice(word);
                if !needs_escape(u64::from_le_bytes(arr)) {
                    i += 8;
                    continue;
                }
            }
            let end = (i + 8).min(bytes.len());
            while i < end {
                let c = bytes[i];
                let esc = match c {
                    b'"' => "\\\"",
                    b'\\' => "\\\\",
                    b'\n' => "\\n",
                    b'\r' => "\\r",
                    b'\t' => "\\t",
                    0x08 => "\\b",
                    0x0c => "\\f",
                    c if c < 0x20 => "",
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                // `i` is at an ASCII byte, so both ends of the clean run are char boundaries.
                out.push_str(s.get(clean_from..i).unwrap_or_default());
                if esc.is_empty() {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(c >> 4)]));
                    out.push(char::from(HEX[usize::from(c & 0xf)]));
                } else {
                    out.push_str(esc);
                }
                i += 1;
                clean_from = i;
            }
        }
        out.push_str(s.get(clean_from..).unwrap_or_default());
        out.push('"');
    }

    /// The JSON of an `output` event whose payload is valid UTF-8 text.
    pub fn output_utf8(id: &str, seq: u64, fd: Fd, text: &str) -> String {
        let mut out = head(id, seq, fd, Encoding::Utf8, text.len());
        json_string(&mut out, text);
        out.push('}');
        out
    }

    /// The JSON of an `output` event carrying `raw` as standard base64 with padding. The
    /// buffer is sized for the encoded text up front; `encode_string` appends through a stack
    /// buffer, so the frame is the only allocation.
    pub fn output_base64(id: &str, seq: u64, fd: Fd, raw: &[u8]) -> String {
        use base64::Engine as _;
        let mut out = head(id, seq, fd, Encoding::Base64, raw.len().div_ceil(3) * 4);
        out.push('"');
        base64::engine::general_purpose::STANDARD.encode_string(raw, &mut out);
        out.push_str("\"}");
        out
    }

    fn head(id: &str, seq: u64, fd: Fd, enc: Encoding, payload: usize) -> String {
        let mut out = String::with_capacity(payload + payload / 16 + 96 + id.len());
        out.push_str("{\"type\":\"output\",\"id\":");
        json_string(&mut out, id);
        out.push_str(",\"seq\":");
        out.push_str(&seq.to_string());
        out.push_str(match fd {
            Fd::Stdout => ",\"fd\":\"stdout\"",
            Fd::Stderr => ",\"fd\":\"stderr\"",
        });
        out.push_str(match enc {
            Encoding::Utf8 => ",\"encoding\":\"utf8\",\"data\":",
            Encoding::Base64 => ",\"encoding\":\"base64\",\"data\":",
        });
        out
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    fn serde_output(
        id: &str,
        seq: u64,
        fd: Fd,
        encoding: Encoding,
        data: String,
    ) -> serde_json::Value {
        serde_json::to_value(AgentMessage::Output(Output {
            id: id.into(),
            seq,
            fd,
            encoding,
            data,
        }))
        .unwrap()
    }

    #[test]
    fn utf8_frames_equal_serde_for_every_escape_and_alignment() {
        let mut all_controls = String::new();
        for c in 0u8..0x20 {
            all_controls.push(char::from(c));
        }
        let samples = [
            String::new(),
            "a".into(),
            "plain text without escapes, long enough to span words".into(),
            "line\n".repeat(9),
            "quote\"back\\slash".into(),
            all_controls,
            "héllo ✓ 𝄞 \u{7f} end".into(),
            "x".repeat(7) + "\n" + &"y".repeat(9) + "\"",
        ];
        for (i, s) in samples.iter().enumerate() {
            for shift in 0..9 {
                let text = format!("{}{s}", "-".repeat(shift));
                let id = format!("id\"{i}\\");
                let fast = fast::output_utf8(&id, 42, Fd::Stderr, &text);
                let parsed: serde_json::Value = serde_json::from_str(&fast).unwrap();
                assert_eq!(
                    parsed,
                    serde_output(&id, 42, Fd::Stderr, Encoding::Utf8, text.clone())
                );
                let back: AgentMessage = serde_json::from_str(&fast).unwrap();
                assert!(matches!(back, AgentMessage::Output(ref o) if o.data == text));
            }
        }
    }

    #[test]
    fn base64_frames_equal_serde_and_decode_to_the_bytes() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let every_byte: Vec<u8> = (0..=255u8).collect();
        let mut samples: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xff],
            vec![0xff, 0xfe],
            vec![0xff, 0x00, 0x80, 0x41],
            every_byte.clone(),
        ];
        // Past the base64 crate's internal chunk (1 KiB of output), with each remainder length.
        for extra in 0..3 {
            samples.push(every_byte.repeat(5).into_iter().chain(0..extra).collect());
        }
        for raw in &samples {
            let id = "r\"1\\";
            let fast = fast::output_base64(id, 9, Fd::Stdout, raw);
            let parsed: serde_json::Value = serde_json::from_str(&fast).unwrap();
            assert_eq!(
                parsed,
                serde_output(id, 9, Fd::Stdout, Encoding::Base64, b64.encode(raw))
            );
            let AgentMessage::Output(o) = serde_json::from_str(&fast).unwrap() else {
                panic!("not an output event: {fast}")
            };
            assert_eq!(&b64.decode(&o.data).unwrap(), raw);
        }
        // RFC 4648 section 10 vectors pin the alphabet and the padding independently of the crate.
        let data = |raw: &[u8]| {
            let fast = fast::output_base64("r", 0, Fd::Stderr, raw);
            let v: serde_json::Value = serde_json::from_str(&fast).unwrap();
            v["data"].as_str().unwrap().to_owned()
        };
        for (raw, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xfe], "+//+"),
        ] {
            assert_eq!(data(raw), text, "{raw:?}");
        }
    }

    #[test]
    fn base64_frames_are_sized_up_front() {
        // A frame that had to grow would have at least doubled its capacity.
        let raw = vec![0xffu8; 256 * 1024];
        let frame = fast::output_base64("req-1", 3, Fd::Stdout, &raw);
        assert!(
            frame.capacity() < frame.len() + frame.len() / 8 + 256,
            "capacity {} for {} bytes",
            frame.capacity(),
            frame.len()
        );
    }
}
