//! The agent's configuration: one value built once from flags > environment > file > defaults.
//!
//! Every source goes through [`Sources`] so tests inject maps instead of touching the process
//! environment. All problems are collected and reported together (the binary exits 64).
//!
//! - [`settings`]: the one struct of settings (flag, variable, file key, default, help text per
//!   field), each source read into it, and the overlay.
//! - `validate`: the rules every merged value must meet, and the [`Config`] they make.
//! - this module: the output types the rest of the agent uses.

pub mod handoff;
mod validate;

pub mod settings;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::{PolicyConfig, Role};

use settings::{Cli, FromFlags, Origin, Settings};
use validate::Resolved;

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything the agent needs to run. Built by [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Name the agent gives itself in `hello` (`DTMA_AGENT_ID`, default the host name).
    pub agent_id: String,
    /// The agent's identity towards the backend (`DTMA_BEARER_TOKEN`).
    pub bearer_token: Secret,
    /// The key the backend uses on the local API (`BACKEND_TO_DTMA_API_KEY`).
    pub backend_api_key: Option<Secret>,
    /// The control channel; `None` runs the agent local-only.
    pub channel: Option<ChannelConfig>,
    /// Socket address of the local HTTP API.
    pub listen: SocketAddr,
    pub exec: ExecLimits,
    pub streams: StreamLimits,
    /// Every secret value, so that child environments and logs can be scrubbed of them.
    pub secrets: Vec<Secret>,
    /// On SIGTERM, running commands may finish for this long before their groups are stopped.
    pub shutdown_grace: Duration,
    /// Local API tokens beyond the two seed tokens, each with a role (config file `[[tokens]]`).
    pub extra_tokens: Vec<TokenConfig>,
    /// Extra rules for the command policy (config file `[policy]`).
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    /// The Docker daemon's socket (`DOCKER_HOST` when it is a `unix://` URL).
    pub docker_socket: String,
    /// Network mode of MCP server containers (`DTMA_MCP_NETWORK`); `None`: Docker's default.
    pub mcp_network: Option<String>,
    /// Period of the liveness check of running HTTP/SSE MCP servers
    /// (`DTMA_MCP_LIVENESS_INTERVAL_MS`).
    pub mcp_liveness_interval: Duration,
    /// `GET /metrics` without a token (`DTMA_METRICS_PUBLIC`).
    pub metrics_public: bool,
    /// How the binary writes its log lines (`DTMA_LOG_FORMAT`).
    pub log_format: LogFormat,
}

/// The log lines' format on stderr (`DTMA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per event (tracing-subscriber's JSON layer: `timestamp`, `level`,
    /// `target`, `fields`).
    Json,
}

/// A local API token from the config file.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Safe to log and audit; the token itself is not.
    pub name: String,
    pub role: Role,
    pub token: Secret,
}

/// Where audit records go.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `None`: the tracing log (target `audit`).
    pub path: Option<PathBuf>,
    /// Rotate when the file would exceed this.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: Some(PathBuf::from(DEFAULT_AUDIT_LOG)),
            max_bytes: 10 << 20,
            keep: 3,
        }
    }
}

/// The outbound WebSocket channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// `ws://` or `wss://` URL of the backend's connect endpoint.
    pub url: String,
    /// Extra PEM CA certificates trusted besides the webpki roots (private backends).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// WebSocket ping period; the link is dead after twice this without any frame from the backend.
    pub ping_interval: Duration,
    /// Default `status` heartbeat period (the backend's `welcome` may override it).
    pub heartbeat_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A link must stay up this long before the reconnect backoff resets.
    pub healthy_after: Duration,
    /// Running commands are cancelled when the link has been down this long.
    pub orphan_grace: Duration,
    /// Fixed seed for the backoff jitter (tests; `None` in production: a random seed).
    pub jitter_seed: Option<u64>,
    /// Largest backend text frame accepted; larger ones get `frame_too_large`.
    pub max_frame_bytes: usize,
}

/// Limits of the exec engine, shared by the channel and the local API.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// Time between SIGTERM and SIGKILL to a command's process group.
    pub kill_grace: Duration,
    /// Default cap on forwarded output per command (stdout + stderr).
    pub default_max_output: u64,
    /// Environment variable names never passed to children (besides every secret's value).
    pub scrub_env: Vec<String>,
    /// Run commands as this user (uid, gid) instead of the agent's.
    pub run_as: Option<(u32, u32)>,
    /// Resource limits applied to every command (through util-linux `prlimit`).
    pub rlimits: Rlimits,
    /// Commands the local API runs at once; more get 429 (the channel has `max_streams`).
    pub http_max_concurrent: usize,
    /// The kernel sandbox commands run under (`src/exec/sandbox.rs`).
    pub sandbox: SandboxConfig,
}

/// The sandbox launcher: `dtma-sandbox` beside the agent's binary when it is there (a small
/// program, so each command loads 1.6 MB instead of the whole agent: about 0.7 ms less per
/// command, BENCHMARKS.md), else the agent itself (`/proc/self/exe sandbox-exec`). Both take
/// the same arguments.
pub fn default_launcher() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("dtma-sandbox"))
        .filter(|launcher| launcher.is_file())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Default users of the unprivileged sandbox profiles (created by the package).
pub const DEFAULT_DIAGNOSTICS_USER: &str = "dtma-diagnostics";
pub const DEFAULT_OPERATOR_USER: &str = "dtma-operator";

/// The kernel sandbox of commands (`DTMA_SANDBOX*`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `false` (`DTMA_SANDBOX=off`): admin commands run unconfined, the others are refused.
    pub enforce: bool,
    pub diagnostics_user: String,
    pub operator_user: String,
    pub accept_no_landlock: bool,
    /// The launcher ([`default_launcher`]); tests point it at a built binary because their
    /// process is the test binary.
    pub launcher: PathBuf,
    /// The agent's own files no command may read or write: credentials, token files, the
    /// config file, the audit log's directory; plus `DTMA_SANDBOX_HIDE`.
    pub protect: Vec<PathBuf>,
    /// Paths each unprivileged profile may write besides the scratch directories.
    pub diagnostics_writable: Vec<PathBuf>,
    pub operator_writable: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enforce: true,
            diagnostics_user: DEFAULT_DIAGNOSTICS_USER.to_owned(),
            operator_user: DEFAULT_OPERATOR_USER.to_owned(),
            accept_no_landlock: false,
            launcher: default_launcher(),
            diagnostics_writable: Vec::new(),
            operator_writable: Vec::new(),
            // The default audit log's directory, as `validate` derives it.
            protect: AuditConfig::default()
                .path
                .as_deref()
                .and_then(std::path::Path::parent)
                .map(std::path::Path::to_path_buf)
                .into_iter()
                .collect(),
        }
    }
}

/// Per-command resource limits; `None` leaves the agent's own limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rlimits {
    pub address_space_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
}

impl Rlimits {
    /// `prlimit` arguments, or none when no limit is set.
    pub fn prlimit_args(&self) -> Vec<String> {
        [
            ("--as", self.address_space_bytes),
            ("--cpu", self.cpu_seconds),
            ("--nofile", self.open_files),
            ("--nproc", self.processes),
        ]
        .into_iter()
        .filter_map(|(flag, v)| v.map(|v| format!("{flag}={v}")))
        .collect()
    }
}

/// Per-stream flow control and buffering on the channel.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Credit a new stream starts with unless `welcome` or the request says otherwise.
    pub initial_credit: u64,
    /// Unacknowledged bytes kept per stream; reading the child stops when it is full.
    pub buffer_bytes: usize,
    /// Streams held at once (running or awaiting their final ack).
    pub max_streams: usize,
    /// Closed request ids remembered to refuse re-runs.
    pub remembered_ids: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(24 * 3600),
            kill_grace: Duration::from_secs(2),
            default_max_output: 256 << 20,
            scrub_env: SECRET_VARS
                .iter()
                .chain(&SERVICE_MANAGER_VARS)
                .map(|s| s.to_string())
                .collect(),
            run_as: None,
            rlimits: Rlimits::default(),
            http_max_concurrent: 64,
            sandbox: SandboxConfig::default(),
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            initial_credit: 1 << 20,
            buffer_bytes: 2 << 20,
            max_streams: 2048,
            remembered_ids: 65536,
        }
    }
}

impl ChannelConfig {
    /// A channel to `url` with the default timings.
    pub fn with_url(url: impl Into<String>) -> Self {
        ChannelConfig {
            url: url.into(),
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(600),
            max_frame_bytes: 1 << 20,
            jitter_seed: None,
        }
    }
}

/// Variables that hold secrets or point at them: never passed to children.
pub const SECRET_VARS: [&str; 6] = [
    "DTMA_BEARER_TOKEN",
    "BACKEND_TO_DTMA_API_KEY",
    "DTMA_BEARER_TOKEN_FILE",
    "BACKEND_TO_DTMA_API_KEY_FILE",
    "CREDENTIALS_DIRECTORY",
    handoff::FD_VAR,
];

/// The variables through which systemd talks to the agent (`src/systemd.rs`): not passed to
/// children either, so a command cannot speak for the agent (and systemd would ignore it under
/// `NotifyAccess=main` anyway).
pub const SERVICE_MANAGER_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The variables a command finds the local API by: its URL and a token of the command's
/// caller's role, valid while the command runs (`services::commands`; read by `dtma`'s client
/// subcommands).
pub const API_URL_VAR: &str = "DTMA_API_URL";
pub const API_TOKEN_VAR: &str = "DTMA_API_TOKEN";

/// Default path of the connect endpoint below `AGENTOPIA_API_BASE_URL`.
pub const DEFAULT_WS_PATH: &str = "dtma/connect";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:30000";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";
pub const DEFAULT_MCP_LIVENESS_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/dtma/audit.jsonl";

/// Where configuration values come from. Tests build one from maps.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Command-line arguments after the program name.
    pub args: Vec<OsString>,
    /// The environment. Only the variables a setting names are read; the others may hold any
    /// bytes.
    pub env: BTreeMap<OsString, OsString>,
}

impl Sources {
    /// The real process arguments and environment (which need not be UTF-8), with the
    /// secrets a previous image of the agent handed over ([`handoff`]).
    pub fn from_process() -> Result<Self, handoff::Error> {
        let mut env = std::env::vars_os().collect();
        handoff::receive(&mut env)?;
        Ok(Sources {
            args: std::env::args_os().skip(1).collect(),
            env,
        })
    }
}

/// All configuration problems found, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Action {
    /// Run the agent.
    Run(Box<Config>),
    /// `--help`, `--version`, `--print-config`: print this to stdout and exit 0.
    Print(String),
}

/// Where the local client (`dtma status`, `dtma exec`, ...) finds the agent.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// The agent's `listen` address, with an unspecified address (`0.0.0.0`, `::`) made
    /// loopback: the client runs on the same machine.
    pub addr: SocketAddr,
    /// The token to present: `DTMA_BEARER_TOKEN` as the agent finds it, else the backend key.
    pub token: Secret,
}

impl Config {
    /// Build the configuration: flags > environment > config file > defaults, every value
    /// checked by the same rules whatever its source.
    pub fn load(sources: &Sources) -> Result<Action, ConfigError> {
        Self::load_as(sources, false)
    }

    /// `dtma check-config`: the effective configuration as `--print-config` prints it (JSON,
    /// secrets redacted), or every problem.
    pub fn check(sources: &Sources) -> Result<String, ConfigError> {
        match Self::load_as(sources, true)? {
            Action::Print(text) => Ok(text),
            // `load_as` prints whenever the configuration is valid.
            Action::Run(_) => Err(ConfigError {
                problems: vec!["internal: the configuration was not printed".into()],
            }),
        }
    }

    fn load_as(sources: &Sources, print: bool) -> Result<Action, ConfigError> {
        let (resolved, mut problems, print_config) = match resolve(sources) {
            Ok(r) => r,
            Err(Stop::Print(text)) => return Ok(Action::Print(text)),
            Err(Stop::Problems(e)) => return Err(e),
        };
        match resolved.validate() {
            Ok(config) if problems.is_empty() => {
                if print || print_config {
                    let json = resolved.to_json(&config);
                    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
                    Ok(Action::Print(text + "\n"))
                } else {
                    Ok(Action::Run(Box::new(config)))
                }
            }
            Ok(_) => Err(ConfigError { problems }),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError { problems })
            }
        }
    }

    /// The agent's address and token for the local client, read from the same sources as the
    /// agent's own (`--config`, the environment, the config file, `_FILE` settings, the
    /// credentials directory); `fallback_token` is tried when none of them gives a token. Only
    /// these two are resolved: a problem elsewhere in the configuration is the agent's business
    /// and is reported only when the token cannot be found.
    pub fn local_target(
        sources: &Sources,
        fallback_token: Option<&std::path::Path>,
    ) -> Result<LocalTarget, ConfigError> {
        let (resolved, mut problems, _) = match resolve(sources) {
            Ok(r) => r,
            Err(Stop::Print(_)) => {
                return Err(ConfigError {
                    problems: vec!["the client reads no --help or --version here".into()],
                });
            }
            Err(Stop::Problems(e)) => return Err(e),
        };
        match resolved.local_target(fallback_token) {
            Ok(target) => Ok(target),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError { problems })
            }
        }
    }

    /// A minimal config for tests and examples: a token, a channel URL, defaults elsewhere.
    pub fn for_channel(token: &str, url: Option<String>) -> Config {
        let bearer_token = Secret::new(token);
        Config {
            agent_id: "test-agent".into(),
            secrets: vec![bearer_token.clone()],
            bearer_token,
            backend_api_key: None,
            channel: url.map(ChannelConfig::with_url),
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            exec: ExecLimits::default(),
            streams: StreamLimits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            extra_tokens: Vec::new(),
            policy: PolicyConfig::default(),
            audit: AuditConfig {
                path: None,
                ..AuditConfig::default()
            },
            docker_socket: DEFAULT_DOCKER_SOCKET.to_owned(),
            mcp_network: None,
            mcp_liveness_interval: DEFAULT_MCP_LIVENESS_INTERVAL,
            metrics_public: false,
            log_format: LogFormat::Text,
        }
    }
}

/// Why reading the sources stopped before validation.
enum Stop {
    /// `--help` or `--version`: print this.
    Print(String),
    Problems(ConfigError),
}

/// Every source read and overlaid: the settings to validate, the problems met on the way, and
/// whether `--print-config` was given.
fn resolve(sources: &Sources) -> Result<(Resolved, Vec<String>, bool), Stop> {
    let mut problems = Vec::new();
    let flags = match settings::from_flags(&sources.args) {
        FromFlags::Parsed(cli) => *cli,
        FromFlags::Print(text) => return Err(Stop::Print(text)),
        FromFlags::Invalid(problem) => {
            problems.push(problem);
            Cli::default()
        }
    };
    let env = settings::from_env(&sources.env, &mut problems);
    let file_path = flags.config.or(env.config);
    let file = match &file_path {
        Some(path) => settings::from_file(path, &mut problems),
        None => Settings::default(),
    };
    let merged = settings::overlay(vec![
        (Origin::Flag, flags.settings),
        (Origin::Env, env.settings),
        (Origin::File, file),
        (Origin::Default, settings::defaults()),
    ]);
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("settings: {e}"));
            return Err(Stop::Problems(ConfigError { problems }));
        }
    };
    let resolved = Resolved {
        settings: merged.settings,
        origins: merged.origins,
        file: file_path,
        bearer_token: env.bearer_token,
        backend_api_key: env.backend_api_key,
    };
    Ok((resolved, problems, flags.print_config))
}

/// Where `prlimit` (util-linux) lives on Debian.
pub const PRLIMIT: &str = "/usr/bin/prlimit";

/// `https://host/base` + `dtma/connect` -> `wss://host/base/dtma/connect`.
pub fn derive_ws_url(base: &str, path: &str) -> Result<String, String> {
    let rest = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(format!("must start with http:// or https://, got `{base}`"));
    };
    if rest.contains(['?', '#']) {
        return Err(format!("must not carry a query or fragment, got `{base}`"));
    }
    Ok(format!(
        "{}/{}",
        rest.trim_end_matches('/'),
        path.trim_start_matches('/')
    ))
}

#[cfg(test)]
mod tests;
