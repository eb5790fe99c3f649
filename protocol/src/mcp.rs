//! MCP server groups on the channel: the bodies of `mcp_deploy`, `mcp_remove`, `mcp_status`,
//! `mcp_restart`, `logs_follow`, `diagnostics` and `mcp_events`, the events their streams carry
//! (`progress`, `mcp_event`) and the typed payloads the agent writes into `result.data` and
//! `error.details`.
//!
//! * The deploy body ([`McpGroup`]) is the backend's `POST /mcp/groups` body, camelCase and byte
//!   for byte, so the backend can forward it; everything else follows the envelope's snake_case.
//! * Plain field checks (lengths, patterns, ranges, capability names) are [`validate`] steps that
//!   `decode_backend` runs, so a bad frame is refused with `invalid_request` naming the field.
//!   The constants below are the single source of those limits: the schema is built from them
//!   and the agent reuses them (HTTP routes, defaults).
//! * `portBindings`, `environmentVariables` and `resourceLimits` stay JSON values here: the agent
//!   normalises them (naming the field on error). Their accepted forms are stated once, as the
//!   `*_PATTERN` constants and the JSON Schemas built from them at the end of this file
//!   (`PortBindings`, `Environment`, `ResourceLimits`), and in protocol/README.md.
//!
//! [`validate`]: McpGroup::validate

use std::borrow::Cow;
use std::collections::BTreeSet;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{ID_FORBIDDEN, RequestId};

// ---------------------------------------------------------------------------------------------
// Limits and defaults
// ---------------------------------------------------------------------------------------------

/// Longest `groupId` (ASCII, so characters and bytes agree).
pub const MAX_GROUP_ID_LEN: usize = 64;
/// `groupId`: ASCII letters, digits, `_`, `.`, `-`; the first one a letter or digit.
pub const GROUP_ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";
/// Fewest servers in a group.
pub const MIN_SERVERS: usize = 1;
/// Most servers in a group.
pub const MAX_SERVERS: usize = 50;
/// Longest `accountToolInstanceId`, in characters.
pub const MAX_ACCOUNT_TOOL_INSTANCE_ID_LEN: usize = 128;
/// Longest instance name (`instanceNameOnToolbox`, `instance_name`).
pub const MAX_INSTANCE_NAME_LEN: usize = 63;
/// An instance name: lower-case ASCII letters, digits, `_`, `.`, `-`; the first one a letter or
/// digit. Upper case is refused, never lowered.
pub const INSTANCE_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_.-]{0,62}$";
/// `dockerImageUrl`: a non-empty image reference of visible ASCII (no space, no control).
pub const IMAGE_PATTERN: &str = "^[!-~]+$";
/// `mcpEndpointPath`: starts with `/`, then visible ASCII only.
pub const ENDPOINT_PATH_PATTERN: &str = "^/[!-~]*$";
/// `mcpEndpointPath` when absent.
pub const DEFAULT_ENDPOINT_PATH: &str = "/mcp";
/// `readinessTimeoutMs` bounds and default.
pub const MIN_READINESS_TIMEOUT_MS: u32 = 1_000;
pub const MAX_READINESS_TIMEOUT_MS: u32 = 600_000;
pub const DEFAULT_READINESS_TIMEOUT_MS: u32 = 60_000;
/// `options.maxConcurrentDeployments` bounds and default.
pub const MIN_CONCURRENT_DEPLOYMENTS: u32 = 1;
pub const MAX_CONCURRENT_DEPLOYMENTS: u32 = 16;
pub const DEFAULT_CONCURRENT_DEPLOYMENTS: u32 = 1;
/// `logs_follow.tail` bound and default (lines).
pub const MAX_TAIL: u32 = 10_000;
pub const DEFAULT_TAIL: u32 = 100;
/// `diagnostics.lines` bounds and default (`scope: "logs"` only).
pub const MIN_LINES: u32 = 1;
pub const MAX_LINES: u32 = 10_000;
pub const DEFAULT_LINES: u32 = 100;

/// The Linux capability names `capAdd` accepts (`capabilities(7)`, without the `CAP_` prefix).
/// Every other capability is dropped from the container.
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

// The accepted forms of the three free-form deploy values. The agent's normaliser must accept
// exactly these (the schema is built from them; protocol/tests/schema.rs pins examples).

/// A `portBindings` key: a container port 1..=65535, optionally `/tcp` or `/udp`.
pub const CONTAINER_PORT_PATTERN: &str = "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/(tcp|udp))?$";
/// A host port written as a string: 1..=65535 in plain digits, or `""` / `"0"` ("the agent
/// picks a stable one"). As a number: 0..=65535.
pub const HOST_PORT_PATTERN: &str =
    "^(|0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
/// The host address a port binds to unless `HostIp` says otherwise.
pub const DEFAULT_HOST_IP: &str = "127.0.0.1";
/// An `environmentVariables` key (object form) or the part before the first `=` (list form).
pub const ENV_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// An entry of the list form of `environmentVariables`: `KEY=value`.
pub const ENV_ENTRY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*=";
/// `resourceLimits.memory` as a string: plain digits, optionally with a unit `k`, `m` or `g`
/// (powers of 1024, case-insensitive, optionally followed by `b` or `ib`), or a bare `b`.
pub const MEMORY_PATTERN: &str = "^[1-9][0-9]*([bB]|[kKmMgG]([iI]?[bB])?)?$";
/// Largest `resourceLimits.memory` in bytes (Docker keeps it in an `i64`).
pub const MAX_MEMORY_BYTES: u64 = i64::MAX as u64;
/// `resourceLimits.cpu` as a string: digits with an optional fraction, 0.01..=64.
pub const CPU_PATTERN: &str =
    "^(0\\.(0[1-9]|[1-9])[0-9]*|([1-9]|[1-5][0-9]|6[0-3])(\\.[0-9]+)?|64(\\.0+)?)$";
/// `resourceLimits.cpu` bounds (cores).
pub const MIN_CPU: f64 = 0.01;
pub const MAX_CPU: f64 = 64.0;
/// `resourceLimits.pids` bounds.
pub const MIN_PIDS: u32 = 1;
pub const MAX_PIDS: u32 = 32_768;
/// Limits that apply when `resourceLimits` leaves them out.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
pub const DEFAULT_CPU: f64 = 1.0;
pub const DEFAULT_PIDS: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------------

/// A field that failed a check: its path (as `serde_path_to_error` writes it, e.g.
/// `group.servers[0].instanceNameOnToolbox`) and what is wrong with it. The message never
/// quotes a value that could be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error one level down: `parent.field` (or `parent[i]` for an index).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// `groupId` / `group_id`: [`GROUP_ID_PATTERN`].
pub fn check_group_id(s: &str) -> Result<(), String> {
    match s.chars().next() {
        None => Err("must not be empty".into()),
        Some(_) if s.len() > MAX_GROUP_ID_LEN => {
            Err(format!("is longer than {MAX_GROUP_ID_LEN} characters"))
        }
        Some(first) if first.is_ascii_alphanumeric() && s.chars().all(is_id_char) => Ok(()),
        Some(_) => Err(
            "must hold only ASCII letters, digits, `_`, `.` and `-`, and start with a letter \
             or digit"
                .into(),
        ),
    }
}

/// `instanceNameOnToolbox` / `instance_name`: [`INSTANCE_NAME_PATTERN`].
pub fn check_instance_name(s: &str) -> Result<(), String> {
    match s.chars().next() {
        None => Err("must not be empty".into()),
        Some(_) if s.len() > MAX_INSTANCE_NAME_LEN => {
            Err(format!("is longer than {MAX_INSTANCE_NAME_LEN} characters"))
        }
        Some(_) if s.chars().any(|c| c.is_ascii_uppercase()) => Err(format!(
            "must be lower case (`{}` would do; names are not lowered for you)",
            s.to_ascii_lowercase()
        )),
        Some(first)
            if (first.is_ascii_lowercase() || first.is_ascii_digit())
                && s.chars().all(is_id_char) =>
        {
            Ok(())
        }
        Some(_) => Err(
            "must hold only lower-case ASCII letters, digits, `_`, `.` and `-`, and start \
             with a letter or digit"
                .into(),
        ),
    }
}

fn is_visible_ascii(c: char) -> bool {
    ('!'..='~').contains(&c)
}

fn check_range(value: u32, min: u32, max: u32) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be {min} to {max} (got {value})"))
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (backend -> agent)
// ---------------------------------------------------------------------------------------------

/// Decode a `POST /mcp/groups` body exactly as the channel decodes `mcp_deploy.group`: serde
/// (naming the field), then [`McpGroup::validate`]. The error is the message for a 400.
pub fn decode_group(body: &[u8]) -> Result<McpGroup, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let group: McpGroup = crate::typed(value)?;
    group.validate().map_err(|e| e.to_string())?;
    Ok(group)
}

/// `mcp_deploy`: bring a group of MCP server containers to the given spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpDeploy {
    /// The group: the same JSON as the body of `POST /mcp/groups` (camelCase).
    pub group: McpGroup,
}

/// A group of MCP servers: the body of `POST /mcp/groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpGroup {
    /// The group's name: 1 to 64 ASCII letters, digits, `_`, `.`, `-`, starting with a letter or
    /// digit (e.g. `agent-42-mcp`).
    #[schemars(regex(pattern = GROUP_ID_PATTERN))]
    pub group_id: String,
    /// The servers of the group: 1 to 50, instance names unique within the request.
    #[schemars(length(min = MIN_SERVERS, max = MAX_SERVERS))]
    pub servers: Vec<McpServer>,
    /// Deployment options; defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<McpOptions>,
}

impl McpGroup {
    /// The plain field checks (the decoder runs them; the HTTP route must too). Field paths are
    /// relative to the group (`servers[0].capAdd[1]`).
    pub fn validate(&self) -> Result<(), FieldError> {
        check_group_id(&self.group_id).map_err(|p| FieldError::new("groupId", p))?;
        let n = self.servers.len();
        if !(MIN_SERVERS..=MAX_SERVERS).contains(&n) {
            return Err(FieldError::new(
                "servers",
                format!("must list {MIN_SERVERS} to {MAX_SERVERS} servers (got {n})"),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("servers[{i}]");
            server.validate().map_err(|e| e.within(&at))?;
            if !names.insert(server.instance_name_on_toolbox.as_str()) {
                return Err(FieldError::new(
                    format!("{at}.instanceNameOnToolbox"),
                    format!(
                        "`{}` names two servers of this group",
                        server.instance_name_on_toolbox
                    ),
                ));
            }
        }
        if let Some(options) = &self.options {
            options.validate().map_err(|e| e.within("options"))?;
        }
        Ok(())
    }

    pub fn shared_networking(&self) -> bool {
        self.options
            .as_ref()
            .and_then(|o| o.shared_networking)
            .unwrap_or(false)
    }

    pub fn max_concurrent_deployments(&self) -> u32 {
        self.options
            .as_ref()
            .and_then(|o| o.max_concurrent_deployments)
            .unwrap_or(DEFAULT_CONCURRENT_DEPLOYMENTS)
    }
}

/// `options` of a group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpOptions {
    /// Put the group's containers on one shared Docker network (default `false`: one network
    /// per server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_networking: Option<bool>,
    /// How many servers are pulled and started at once: 1 to 16 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_CONCURRENT_DEPLOYMENTS, max = MAX_CONCURRENT_DEPLOYMENTS))]
    pub max_concurrent_deployments: Option<u32>,
}

impl McpOptions {
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(n) = self.max_concurrent_deployments {
            check_range(n, MIN_CONCURRENT_DEPLOYMENTS, MAX_CONCURRENT_DEPLOYMENTS)
                .map_err(|p| FieldError::new("maxConcurrentDeployments", p))?;
        }
        Ok(())
    }
}

/// How a server speaks MCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP on the endpoint path (the default).
    #[default]
    Http,
    /// Server-sent events on the endpoint path.
    Sse,
    /// Standard input and output; the container publishes no endpoint.
    Stdio,
}

/// One MCP server container of a group. Its `Debug` output hides the environment's values.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServer {
    /// The backend's id of this tool instance: 1 to 128 characters, no control characters.
    #[schemars(
        length(min = 1, max = MAX_ACCOUNT_TOOL_INSTANCE_ID_LEN),
        regex(pattern = crate::schema::without_controls())
    )]
    pub account_tool_instance_id: String,
    /// The image to run (e.g. `ghcr.io/org/some-mcp:1.2.0`): visible ASCII, no spaces.
    #[schemars(regex(pattern = IMAGE_PATTERN))]
    pub docker_image_url: String,
    /// The server's name on this droplet, unique across groups: 1 to 63 lower-case ASCII
    /// letters, digits, `_`, `.`, `-`, starting with a letter or digit. Upper case is refused.
    /// The container is named `dtma-mcp-<instanceNameOnToolbox>`.
    #[schemars(regex(pattern = INSTANCE_NAME_PATTERN))]
    pub instance_name_on_toolbox: String,
    /// Path of the MCP endpoint inside the container; starts with `/` (default `/mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ENDPOINT_PATH_PATTERN))]
    pub mcp_endpoint_path: Option<String>,
    /// `http` (default), `sse` or `stdio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_transport_type: Option<McpTransport>,
    /// Container port -> host port; see the `PortBindings` schema for the accepted forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema_forms::PortBindings>")]
    pub port_bindings: Option<serde_json::Value>,
    /// Environment of the server. Values are secrets: never logged, labelled or echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema_forms::Environment>")]
    pub environment_variables: Option<serde_json::Value>,
    /// Memory, CPU and process limits (defaults: 512 MiB, 1 core, 256 processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema_forms::ResourceLimits>")]
    pub resource_limits: Option<serde_json::Value>,
    /// Linux capabilities to keep (e.g. `NET_BIND_SERVICE`, without `CAP_`); all others are
    /// dropped. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<schema_forms::LinuxCapability>>")]
    pub cap_add: Option<Vec<String>>,
    /// How long the server may take to become ready: 1000 to 600000 ms (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_READINESS_TIMEOUT_MS, max = MAX_READINESS_TIMEOUT_MS))]
    pub readiness_timeout_ms: Option<u32>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values are secrets: show the keys (object form) or nothing.
        let env = self.environment_variables.as_ref().map(|env| match env {
            serde_json::Value::Object(map) => map
                .keys()
                .map(|k| format!("{k}=<redacted>"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "<redacted>".to_owned(),
        });
        f.debug_struct("McpServer")
            .field("account_tool_instance_id", &self.account_tool_instance_id)
            .field("docker_image_url", &self.docker_image_url)
            .field("instance_name_on_toolbox", &self.instance_name_on_toolbox)
            .field("mcp_endpoint_path", &self.mcp_endpoint_path)
            .field("mcp_transport_type", &self.mcp_transport_type)
            .field("port_bindings", &self.port_bindings)
            .field("environment_variables", &env)
            .field("resource_limits", &self.resource_limits)
            .field("cap_add", &self.cap_add)
            .field("readiness_timeout_ms", &self.readiness_timeout_ms)
            .finish()
    }
}

impl McpServer {
    /// The plain field checks; the free-form values are the agent's to normalise.
    pub fn validate(&self) -> Result<(), FieldError> {
        let id = &self.account_tool_instance_id;
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_ACCOUNT_TOOL_INSTANCE_ID_LEN {
            return Err(FieldError::new(
                "accountToolInstanceId",
                format!("must be 1 to {MAX_ACCOUNT_TOOL_INSTANCE_ID_LEN} characters (got {chars})"),
            ));
        }
        if id
            .chars()
            .any(|c| ID_FORBIDDEN.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)))
        {
            return Err(FieldError::new(
                "accountToolInstanceId",
                "contains control characters",
            ));
        }
        let image = &self.docker_image_url;
        if image.is_empty() || !image.chars().all(is_visible_ascii) {
            return Err(FieldError::new(
                "dockerImageUrl",
                "must be an image reference of visible ASCII characters (no spaces)",
            ));
        }
        check_instance_name(&self.instance_name_on_toolbox)
            .map_err(|p| FieldError::new("instanceNameOnToolbox", p))?;
        if let Some(path) = &self.mcp_endpoint_path {
            let mut chars = path.chars();
            if chars.next() != Some('/') || !chars.all(is_visible_ascii) {
                return Err(FieldError::new(
                    "mcpEndpointPath",
                    "must start with `/` and hold only visible ASCII characters (no spaces)",
                ));
            }
        }
        for (i, cap) in self.cap_add.iter().flatten().enumerate() {
            if !LINUX_CAPABILITIES.contains(&cap.as_str()) {
                return Err(FieldError::new(
                    format!("capAdd[{i}]"),
                    format!(
                        "`{cap}` is not a Linux capability name (upper case, without `CAP_`, \
                         e.g. `NET_BIND_SERVICE`)"
                    ),
                ));
            }
        }
        if let Some(ms) = self.readiness_timeout_ms {
            check_range(ms, MIN_READINESS_TIMEOUT_MS, MAX_READINESS_TIMEOUT_MS)
                .map_err(|p| FieldError::new("readinessTimeoutMs", p))?;
        }
        Ok(())
    }

    pub fn endpoint_path(&self) -> &str {
        self.mcp_endpoint_path
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT_PATH)
    }

    pub fn transport(&self) -> McpTransport {
        self.mcp_transport_type.unwrap_or_default()
    }

    pub fn readiness_timeout_ms(&self) -> u32 {
        self.readiness_timeout_ms
            .unwrap_or(DEFAULT_READINESS_TIMEOUT_MS)
    }
}

/// `mcp_remove`: stop and remove every container of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpRemove {
    /// The group to remove (same rules as `groupId`).
    #[schemars(regex(pattern = GROUP_ID_PATTERN))]
    pub group_id: String,
}

impl McpRemove {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_group_id(&self.group_id).map_err(|p| FieldError::new("group_id", p))
    }
}

/// `mcp_status`: the state of one group, or of all groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpStatus {
    /// Only this group (same rules as `groupId`); every group when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GROUP_ID_PATTERN))]
    pub group_id: Option<String>,
}

impl McpStatus {
    pub fn validate(&self) -> Result<(), FieldError> {
        match &self.group_id {
            Some(g) => check_group_id(g).map_err(|p| FieldError::new("group_id", p)),
            None => Ok(()),
        }
    }
}

/// `mcp_restart`: restart one managed server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpRestart {
    /// The server's `instanceNameOnToolbox`.
    #[schemars(regex(pattern = INSTANCE_NAME_PATTERN))]
    pub instance_name: String,
}

impl McpRestart {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_instance_name(&self.instance_name).map_err(|p| FieldError::new("instance_name", p))
    }
}

/// `logs_follow`: a managed server's logs as `output` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsFollow {
    /// The server's `instanceNameOnToolbox`.
    #[schemars(regex(pattern = INSTANCE_NAME_PATTERN))]
    pub instance_name: String,
    /// Lines from the end of the log to send first: 0 to 10000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_TAIL))]
    pub tail: Option<u32>,
    /// Only lines logged at or after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub since: Option<String>,
    /// Prefix each line with Docker's RFC 3339 timestamp and a space (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<bool>,
    /// Keep following new lines (default `true`); `false` ends after the tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    /// This stream's initial credit limit in bytes, instead of the session's `initial_credit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u64>,
}

impl LogsFollow {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_instance_name(&self.instance_name)
            .map_err(|p| FieldError::new("instance_name", p))?;
        if let Some(tail) = self.tail {
            check_range(tail, 0, MAX_TAIL).map_err(|p| FieldError::new("tail", p))?;
        }
        Ok(())
    }

    pub fn tail(&self) -> u32 {
        self.tail.unwrap_or(DEFAULT_TAIL)
    }

    pub fn timestamps(&self) -> bool {
        self.timestamps.unwrap_or(false)
    }

    pub fn follow(&self) -> bool {
        self.follow.unwrap_or(true)
    }
}

/// Which diagnostics report to build (the `GET /diagnostics/<scope>` routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticsScope {
    System,
    Docker,
    Logs,
}

/// `diagnostics`: one of the diagnostics reports. `lines` is allowed with `scope: "logs"` only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = { "properties": { "scope": { "const": "logs" } } },
    "else" = { "properties": { "lines": { "type": "null" } } }
))]
pub struct Diagnostics {
    pub scope: DiagnosticsScope,
    /// Log lines per source, 1 to 10000 (default 100); `scope: "logs"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_LINES, max = MAX_LINES))]
    pub lines: Option<u32>,
}

impl Diagnostics {
    pub fn validate(&self) -> Result<(), FieldError> {
        match (self.scope, self.lines) {
            (_, None) => Ok(()),
            (DiagnosticsScope::Logs, Some(n)) => {
                check_range(n, MIN_LINES, MAX_LINES).map_err(|p| FieldError::new("lines", p))
            }
            (_, Some(_)) => Err(FieldError::new(
                "lines",
                "is allowed with `scope: \"logs\"` only",
            )),
        }
    }

    pub fn lines(&self) -> u32 {
        self.lines.unwrap_or(DEFAULT_LINES)
    }
}

/// `mcp_events`: a long-lived stream of `mcp_event`s for managed containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpEvents {}

// ---------------------------------------------------------------------------------------------
// Events (agent -> backend)
// ---------------------------------------------------------------------------------------------

/// What a `progress` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressStep {
    /// The request passed the agent's checks (deploy: every server's spec normalised).
    Validated,
    /// An image is being pulled; `bytes` counts the layers' download.
    Pulling,
    /// The image is present.
    Pulled,
    /// A container was created.
    Created,
    /// A container was started.
    Started,
    /// A server passed its readiness check.
    Ready,
    /// A server already runs with the same spec: nothing to do.
    Unchanged,
    /// A server's old container was replaced by the new one.
    Replaced,
    /// A container is being stopped.
    Stopping,
    /// A container was removed.
    Removed,
    /// A container is being restarted.
    Restarting,
    /// A container this deploy created was removed again after a failure.
    RolledBack,
    /// A container this deploy replaced was put back after a failure.
    Restored,
    /// A step failed for one server; `message` says why.
    Failed,
    /// `logs_follow` is attached to the container's log stream.
    Following,
    /// `logs_follow`: the container restarted; following goes on.
    ContainerRestarted,
    /// Deploy/restart: waiting for readiness; `logs_follow`: waiting for a stopped container
    /// to run again.
    Waiting,
}

/// Bytes done so far of a step (an image pull).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressBytes {
    pub current: u64,
    /// `null` while the total is not known.
    pub total: Option<u64>,
}

/// A step of a long request (deploy, remove, restart, logs_follow). Sequenced, not terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    pub id: RequestId,
    pub seq: u64,
    pub step: ProgressStep,
    /// The server (instance name) the step is about; omitted when it concerns the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub server: Option<String>,
    /// Human-readable detail; not stable. Omitted when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub message: Option<String>,
    /// Transfer progress (image pulls); omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ProgressBytes")]
    pub bytes: Option<ProgressBytes>,
}

/// What happened to a managed container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpEventKind {
    /// The current state of a server: sent for every managed server when the stream starts
    /// (and again whenever the agent had to reconnect to Docker's event feed).
    Resync,
    Start,
    Die,
    Oom,
    Restart,
    /// Docker's health status changed; see `health`.
    Health,
    Stop,
    Destroy,
}

/// Docker's health status of a container with a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerHealth {
    Healthy,
    Unhealthy,
    Starting,
}

/// The agent's view of a managed server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Running; the readiness check has not passed yet.
    Starting,
    /// Running and ready.
    Ready,
    /// Running, but its health check fails.
    Degraded,
    /// Restarting again and again (Docker's restart policy keeps bringing it back).
    CrashLooping,
    /// Not running after a failure (non-zero exit, OOM, readiness timeout).
    Failed,
    /// Not running, and not because of a failure (stopped, exited 0, never started).
    Stopped,
}

/// A Docker event about a managed container, on an `mcp_events` stream. Sequenced, not terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct McpEvent {
    pub id: RequestId,
    pub seq: u64,
    /// RFC 3339 UTC time of the Docker event (of the sample, for `resync`).
    pub at: String,
    pub kind: McpEventKind,
    pub group_id: String,
    /// The server's instance name.
    pub server: String,
    pub account_tool_instance_id: String,
    pub container_id: String,
    /// The server's state after the event.
    pub state: ServerState,
    /// The container's exit code for `die` (and `resync`/`stop` of an exited container);
    /// `null` otherwise.
    pub exit_code: Option<i64>,
    /// Docker's health status; `null` when the container has no health check.
    pub health: Option<ContainerHealth>,
}

// ---------------------------------------------------------------------------------------------
// `result.data` and `error.details` payloads
// ---------------------------------------------------------------------------------------------

/// Whether a deploy changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    /// At least one server was created or replaced.
    Deployed,
    /// Every server already ran with the requested spec.
    Unchanged,
}

/// What a deploy did to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerAction {
    /// A new container (the server did not run before).
    Created,
    /// The spec changed: the old container was replaced by a new one.
    Replaced,
    /// The spec is the same: the container was left alone.
    Unchanged,
    /// (`deploy_failed` only) This server's own step failed (pull, create, start, readiness);
    /// `message` says why. A container this deploy created for it was removed.
    Failed,
    /// (`deploy_failed` only) The deploy failed elsewhere; the container it had created for
    /// this server was removed again.
    RolledBack,
    /// (`deploy_failed` only) The container this deploy replaced was put back.
    Restored,
    /// (`deploy_failed` only) The deploy stopped before reaching this server.
    NotStarted,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

/// A published container port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: PortProtocol,
    /// The host address it is bound to (`127.0.0.1` unless the deploy said otherwise).
    pub host_ip: String,
    pub host_port: u16,
}

/// One server of a deploy's result (or of `deploy_failed`'s details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerOutcome {
    pub instance_name: String,
    pub account_tool_instance_id: String,
    pub action: ServerAction,
    /// The server's state at the end of the deploy; `null` when it has no container
    /// (`not_started`, `rolled_back`, or `failed` before its container existed).
    pub state: Option<ServerState>,
    /// `null` when the server has no container.
    pub container_id: Option<String>,
    /// `dtma-mcp-<instance_name>`.
    pub container_name: String,
    pub ports: Vec<PortMapping>,
    /// `http://<host_ip>:<host_port><endpoint path>` of an `http`/`sse` server with a published
    /// TCP port (with several, that of the lowest container port); `null` otherwise (`stdio`, no
    /// TCP port, no container).
    pub endpoint: Option<String>,
    /// What went wrong for this server (always with `failed`); omitted when nothing did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub message: Option<String>,
}

/// `data` of the `result` ending an `mcp_deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployResult {
    pub group_id: String,
    pub outcome: DeployOutcome,
    /// One entry per requested server, in request order.
    pub servers: Vec<ServerOutcome>,
}

/// `details` of the `error` `deploy_failed` ending an `mcp_deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployFailure {
    pub group_id: String,
    /// One entry per requested server, in request order.
    pub servers: Vec<ServerOutcome>,
}

/// `data` of the `result` ending an `mcp_remove`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveResult {
    pub group_id: String,
    /// Instance names of the servers removed.
    pub removed: Vec<String>,
}

/// A managed server as `mcp_status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerStatus {
    pub instance_name: String,
    pub account_tool_instance_id: String,
    pub container_id: String,
    pub image: String,
    pub state: ServerState,
    /// Docker's own state: `created`, `running`, `paused`, `restarting`, `removing`, `exited`
    /// or `dead`.
    pub docker_state: String,
    /// `null` when the container has no health check.
    pub health: Option<ContainerHealth>,
    pub ports: Vec<PortMapping>,
    /// RFC 3339 creation time.
    pub created: String,
    /// RFC 3339 time of the last start; `null` when it never started.
    pub started_at: Option<String>,
    pub restart_count: u64,
    /// The last exit code; `null` while running or when it never exited.
    pub exit_code: Option<i64>,
    /// The kernel's OOM killer ended the last run.
    pub oom_killed: bool,
}

/// One group as `mcp_status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupStatus {
    pub group_id: String,
    pub servers: Vec<ServerStatus>,
}

/// `data` of the `result` ending an `mcp_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusResult {
    /// Sorted by `group_id`; servers sorted by `instance_name`.
    pub groups: Vec<GroupStatus>,
    /// A `docker ps`-like table (`NAMES`, `STATUS`, `PORTS`) of the same servers, as the
    /// `GET /mcp/status` route has always returned it.
    pub mcp_servers: String,
}

/// `data` of the `result` ending an `mcp_restart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestartResult {
    pub instance_name: String,
    pub container_id: String,
    /// The server's state when the restart was done.
    pub state: ServerState,
}

/// Why a `logs_follow` stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogsEndReason {
    /// `follow: false` and the tail has been sent.
    Ended,
    /// The container was removed (also by a redeploy that replaced it).
    Removed,
    /// A `cancel`, the agent's orphan grace or the agent's shutdown stopped it.
    Cancelled,
}

/// `data` of the `result` ending a `logs_follow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogsEnd {
    pub reason: LogsEndReason,
    /// Log bytes forwarded from stdout / stderr.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Why an `mcp_events` stream ended with a `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventsEndReason {
    /// A `cancel` (or the agent's orphan grace) stopped it.
    Cancelled,
}

/// `data` of the `result` ending an `mcp_events` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventsEnd {
    pub reason: EventsEndReason,
}

// ---------------------------------------------------------------------------------------------
// The schemas of the free-form deploy values
// ---------------------------------------------------------------------------------------------

/// JSON Schemas of the values the agent normalises itself. Only their schemas are used: the
/// Rust fields stay `serde_json::Value`.
pub(crate) mod schema_forms {
    use super::*;

    /// A port number, 0..=65535, as a JSON number or a string.
    const PORT_MAX: u16 = u16::MAX;

    pub(crate) struct PortBindings;

    impl JsonSchema for PortBindings {
        fn schema_name() -> Cow<'static, str> {
            "PortBindings".into()
        }

        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            let host_port = generator.subschema_for::<HostPort>();
            let docker = generator.subschema_for::<DockerPortBinding>();
            json_schema!({
                "description": "Container port (`8080`, `8080/tcp`, `53/udp`) -> host port. Each \
                    value is a host port (the simple form) or Docker's list of bindings. Host \
                    port 0 or \"\": the agent picks a stable one. Host address: 127.0.0.1 unless \
                    `HostIp` says otherwise.",
                "type": "object",
                "propertyNames": { "pattern": CONTAINER_PORT_PATTERN },
                "additionalProperties": {
                    "anyOf": [
                        host_port,
                        { "type": "array", "minItems": 1, "items": docker },
                    ],
                },
            })
        }
    }

    pub(crate) struct HostPort;

    impl JsonSchema for HostPort {
        fn schema_name() -> Cow<'static, str> {
            "HostPort".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "A host port: 1 to 65535, or 0 / \"\" for \"the agent picks a \
                    stable one\"; a number or a string of plain digits.",
                "anyOf": [
                    { "type": "integer", "minimum": 0, "maximum": PORT_MAX },
                    { "type": "string", "pattern": HOST_PORT_PATTERN },
                ],
            })
        }
    }

    pub(crate) struct DockerPortBinding;

    impl JsonSchema for DockerPortBinding {
        fn schema_name() -> Cow<'static, str> {
            "DockerPortBinding".into()
        }

        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            let host_port = generator.subschema_for::<HostPort>();
            json_schema!({
                "description": "One of Docker's `PortBindings` entries.",
                "type": "object",
                "properties": {
                    "HostPort": host_port,
                    "HostIp": {
                        "description": "The host address to bind (default 127.0.0.1).",
                        "type": "string",
                        "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }],
                    },
                },
                "required": ["HostPort"],
                "additionalProperties": false,
            })
        }
    }

    pub(crate) struct Environment;

    impl JsonSchema for Environment {
        fn schema_name() -> Cow<'static, str> {
            "Environment".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            let nul = crate::schema::NUL_PATTERN;
            json_schema!({
                "description": "Environment variables: an object `{\"KEY\": \"value\"}` (numbers \
                    and booleans are written as text) or a list `[\"KEY=value\"]`. Keys: \
                    [A-Za-z_][A-Za-z0-9_]*, each at most once. Values hold no NUL. Values are \
                    secrets: never logged, labelled or echoed.",
                "anyOf": [
                    {
                        "type": "object",
                        "propertyNames": { "pattern": ENV_KEY_PATTERN },
                        "additionalProperties": {
                            "anyOf": [
                                { "type": "string", "not": { "pattern": nul } },
                                { "type": "number" },
                                { "type": "boolean" },
                            ],
                        },
                    },
                    {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "pattern": ENV_ENTRY_PATTERN,
                            "not": { "pattern": nul },
                        },
                    },
                ],
            })
        }
    }

    pub(crate) struct ResourceLimits;

    impl JsonSchema for ResourceLimits {
        fn schema_name() -> Cow<'static, str> {
            "ResourceLimits".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "Container limits; each one defaults when absent or `null` \
                    (memory 512 MiB, cpu 1 core, pids 256).",
                "type": "object",
                "properties": {
                    "memory": {
                        "description": "Bytes: an integer, or a string of digits with an \
                            optional unit k, m or g (powers of 1024; case-insensitive; \
                            optionally followed by b or ib) or b: \"512m\", \"1g\", \"1073741824\".",
                        "anyOf": [
                            { "type": "integer", "minimum": 1, "maximum": MAX_MEMORY_BYTES },
                            { "type": "string", "pattern": MEMORY_PATTERN },
                            { "type": "null" },
                        ],
                    },
                    "cpu": {
                        "description": "CPU cores, 0.01 to 64: a number, or a string of digits \
                            with an optional fraction (\"0.5\").",
                        "anyOf": [
                            { "type": "number", "minimum": MIN_CPU, "maximum": MAX_CPU },
                            { "type": "string", "pattern": CPU_PATTERN },
                            { "type": "null" },
                        ],
                    },
                    "pids": {
                        "description": "Most processes in the container, 1 to 32768.",
                        "anyOf": [
                            { "type": "integer", "minimum": MIN_PIDS, "maximum": MAX_PIDS },
                            { "type": "null" },
                        ],
                    },
                },
                "additionalProperties": false,
            })
        }
    }

    pub(crate) struct LinuxCapability;

    impl JsonSchema for LinuxCapability {
        fn schema_name() -> Cow<'static, str> {
            "LinuxCapability".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "A Linux capability name, upper case, without `CAP_`.",
                "type": "string",
                "enum": LINUX_CAPABILITIES.to_vec(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{BackendMessage, ErrorCode, RequestBody, decode_backend};

    fn server() -> serde_json::Value {
        json!({
            "accountToolInstanceId": "t1",
            "dockerImageUrl": "ghcr.io/org/some-mcp:1.2.0",
            "instanceNameOnToolbox": "s1",
        })
    }

    /// The `invalid_request` message for a deploy whose first server has `field` = `value`.
    fn refusal(field: &str, value: serde_json::Value) -> String {
        let mut s = server();
        s[field] = value;
        let frame = json!({"type": "mcp_deploy", "id": "d", "group": {"groupId": "g",
            "servers": [server_named("s0"), s]}});
        let e = decode_backend(&frame.to_string()).expect_err("refused");
        assert_eq!((e.code(), e.id()), (ErrorCode::InvalidRequest, Some("d")));
        e.to_string()
    }

    fn server_named(name: &str) -> serde_json::Value {
        let mut s = server();
        s["instanceNameOnToolbox"] = json!(name);
        s
    }

    #[test]
    fn deploy_decodes_the_contract_body_with_defaults() {
        let frame = json!({"type": "mcp_deploy", "id": "d", "group": {"groupId": "agent-42-mcp",
            "servers": [server()]}});
        let BackendMessage::Request(r) = decode_backend(&frame.to_string()).expect("decodes")
        else {
            panic!("not a request")
        };
        let RequestBody::McpDeploy(d) = r.body else {
            panic!("not a deploy: {:?}", r.body)
        };
        let s = &d.group.servers[0];
        assert_eq!(s.endpoint_path(), "/mcp");
        assert_eq!(s.transport(), McpTransport::Http);
        assert_eq!(s.readiness_timeout_ms(), DEFAULT_READINESS_TIMEOUT_MS);
        assert!(!d.group.shared_networking());
        assert_eq!(d.group.max_concurrent_deployments(), 1);
        assert_eq!(
            serde_json::to_value(&d.group).expect("serialises"),
            frame["group"],
            "the group re-serialises byte for byte (as a JSON value)"
        );
    }

    #[test]
    fn deploy_errors_name_the_field() {
        for (field, value, path, words) in [
            (
                "instanceNameOnToolbox",
                json!("Reasoning"),
                "group.servers[1].instanceNameOnToolbox",
                "lower case (`reasoning`",
            ),
            (
                "capAdd",
                json!(["NET_RAW", "ALL"]),
                "group.servers[1].capAdd[1]",
                "`ALL` is not a Linux capability",
            ),
            (
                "readinessTimeoutMs",
                json!(999),
                "group.servers[1].readinessTimeoutMs",
                "1000 to 600000 (got 999)",
            ),
            (
                "mcpEndpointPath",
                json!("mcp"),
                "group.servers[1].mcpEndpointPath",
                "start with `/`",
            ),
            (
                "accountToolInstanceId",
                json!(""),
                "group.servers[1].accountToolInstanceId",
                "1 to 128 characters (got 0)",
            ),
            (
                "mcpTransportType",
                json!("grpc"),
                "group.servers[1].mcpTransportType",
                "unknown variant `grpc`",
            ),
            (
                "bogus",
                json!(1),
                "group.servers[1].bogus",
                "unknown field `bogus`",
            ),
        ] {
            let message = refusal(field, value);
            assert!(
                message.contains(&format!("field `{path}`")) && message.contains(words),
                "{field}: {message}"
            );
        }
        let message = refusal("instanceNameOnToolbox", json!("s0"));
        assert!(
            message.contains("group.servers[1].instanceNameOnToolbox")
                && message.contains("names two servers"),
            "{message}"
        );
    }

    #[test]
    fn secrets_are_never_echoed() {
        let mut s = server();
        s["environmentVariables"] = json!({"API_KEY": "hunter2-secret"});
        s["bogus"] = json!(true);
        let frame = json!({"type": "mcp_deploy", "id": "d", "group": {"groupId": "g",
            "servers": [s]}});
        let e = decode_backend(&frame.to_string()).expect_err("refused");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        s.as_object_mut().map(|o| o.remove("bogus"));
        let server: McpServer = serde_json::from_value(s).expect("decodes");
        let debug = format!("{server:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("API_KEY"), "keys are not secret: {debug}");
    }

    #[test]
    fn the_other_requests_check_their_fields() {
        for (frame, words) in [
            (
                json!({"type": "mcp_remove", "id": "r", "group_id": "-g"}),
                "field `group_id`: must hold only",
            ),
            (
                json!({"type": "mcp_status", "id": "r", "group_id": ""}),
                "field `group_id`: must not be empty",
            ),
            (
                json!({"type": "mcp_restart", "id": "r", "instance_name": "A"}),
                "field `instance_name`: must be lower case",
            ),
            (
                json!({"type": "logs_follow", "id": "r", "instance_name": "a", "tail": 10001}),
                "field `tail`: must be 0 to 10000",
            ),
            (
                json!({"type": "diagnostics", "id": "r", "scope": "docker", "lines": 5}),
                "field `lines`: is allowed with `scope: \"logs\"` only",
            ),
            (
                json!({"type": "diagnostics", "id": "r", "scope": "logs", "lines": 0}),
                "field `lines`: must be 1 to 10000",
            ),
            (
                json!({"type": "mcp_events", "id": "r", "x": 1}),
                "unknown field `x`",
            ),
        ] {
            let e = decode_backend(&frame.to_string()).expect_err("refused");
            assert_eq!((e.code(), e.id()), (ErrorCode::InvalidRequest, Some("r")));
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn decode_group_is_the_channel_decoder() {
        let body = json!({"groupId": "g", "servers": [server()]}).to_string();
        assert!(decode_group(body.as_bytes()).is_ok());
        let e = decode_group(br#"{"groupId":"g","servers":[]}"#).expect_err("refused");
        assert!(e.contains("field `servers`: must list 1 to 50"), "{e}");
        let e = decode_group(b"{").expect_err("refused");
        assert!(e.starts_with("malformed JSON"), "{e}");
    }

    #[test]
    fn group_id_and_instance_name_checks_match_their_patterns() {
        // The patterns are checked against the schema validator in tests/schema.rs; here the
        // hand-written checks are compared with a literal reading of each pattern.
        let group_ok = |s: &str| {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && b[0].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        };
        let name_ok = |s: &str| {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
        };
        let alphabet = ["a", "Z", "0", "_", ".", "-", " ", "é", "/", "\n"];
        let mut samples = vec![
            String::new(),
            "a".repeat(63),
            "a".repeat(64),
            "a".repeat(65),
        ];
        for x in alphabet {
            for y in alphabet {
                samples.push(format!("{x}{y}"));
            }
        }
        for s in &samples {
            assert_eq!(check_group_id(s).is_ok(), group_ok(s), "{s:?}");
            assert_eq!(check_instance_name(s).is_ok(), name_ok(s), "{s:?}");
        }
    }
}
