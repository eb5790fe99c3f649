//! The agent's configuration: one value built once from flags > environment > file > defaults.
//!
//! Every source goes through [`Sources`] so tests inject maps instead of touching the process
//! environment. All problems are collected and reported together (the binary exits 64).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{PolicyConfig, Role};

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
            scrub_env: SECRET_VARS.iter().map(|s| s.to_string()).collect(),
            run_as: None,
            rlimits: Rlimits::default(),
            http_max_concurrent: 64,
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

/// Variables that hold secrets: never passed to children.
pub const SECRET_VARS: [&str; 5] = [
    "DTMA_BEARER_TOKEN",
    "BACKEND_TO_DTMA_API_KEY",
    "DTMA_BEARER_TOKEN_FILE",
    "BACKEND_TO_DTMA_API_KEY_FILE",
    "CREDENTIALS_DIRECTORY",
];

/// Default path of the connect endpoint below `AGENTOPIA_API_BASE_URL`.
pub const DEFAULT_WS_PATH: &str = "dtma/connect";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:30000";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/dtma/audit.jsonl";

/// Where configuration values come from. Tests build one from maps.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Command-line arguments after the program name.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// The real process arguments and environment.
    pub fn from_process() -> Self {
        Sources {
            args: std::env::args().skip(1).collect(),
            env: std::env::vars().collect(),
        }
    }
}

/// All configuration problems found, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// What the command line asked for besides configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run,
    Help,
    Version,
}

/// The config file (`--config` / `DTMA_CONFIG`), TOML. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    agent_id: Option<String>,
    api_base_url: Option<String>,
    ws_url: Option<String>,
    ws_path: Option<String>,
    listen: Option<String>,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    backend_api_key_file: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    ping_interval_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    healthy_after_ms: Option<u64>,
    orphan_grace_ms: Option<u64>,
    max_frame_bytes: Option<usize>,
    exec_default_timeout_ms: Option<u64>,
    exec_max_timeout_ms: Option<u64>,
    exec_kill_grace_ms: Option<u64>,
    exec_max_output_bytes: Option<u64>,
    stream_initial_credit: Option<u64>,
    stream_buffer_bytes: Option<usize>,
    max_streams: Option<usize>,
    http_max_concurrent: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    audit_log: Option<String>,
    audit_max_bytes: Option<u64>,
    exec_user: Option<String>,
    exec_rlimit_as_bytes: Option<u64>,
    exec_rlimit_cpu_secs: Option<u64>,
    exec_rlimit_nofile: Option<u64>,
    exec_rlimit_nproc: Option<u64>,
    #[serde(default)]
    tokens: Vec<FileToken>,
    #[serde(default)]
    policy: PolicyConfig,
}

/// `[[tokens]]` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    role: Role,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

pub const USAGE: &str = "\
dtma: Droplet Tool Management Agent

USAGE: dtma [--config FILE] [--api-base-url URL] [--ws-url URL] [--listen ADDR] [--agent-id ID]
       dtma --help | --version

Environment: DTMA_BEARER_TOKEN (or DTMA_BEARER_TOKEN_FILE, or $CREDENTIALS_DIRECTORY/dtma_bearer_token),
AGENTOPIA_API_BASE_URL, DTMA_WS_URL, DTMA_WS_PATH, BACKEND_TO_DTMA_API_KEY (or _FILE), DTMA_LISTEN, PORT,
DTMA_AGENT_ID, DTMA_CA_FILE, DTMA_CONFIG, RUST_LOG. Precedence: flags > environment > file > defaults.
";

/// Flags recognised on the command line, with the environment variable each one overrides.
const FLAGS: [(&str, &str); 5] = [
    ("--config", "DTMA_CONFIG"),
    ("--api-base-url", "AGENTOPIA_API_BASE_URL"),
    ("--ws-url", "DTMA_WS_URL"),
    ("--listen", "DTMA_LISTEN"),
    ("--agent-id", "DTMA_AGENT_ID"),
];

impl Config {
    /// Build the configuration. Returns the mode and, for [`Mode::Run`], the config.
    pub fn load(sources: &Sources) -> Result<(Mode, Option<Config>), ConfigError> {
        let mut problems = Vec::new();
        // Flags become environment overrides: one lookup path for both.
        let mut env = sources.env.clone();
        let mut args = sources.args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok((Mode::Help, None)),
                "-V" | "--version" => return Ok((Mode::Version, None)),
                _ => {}
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let Some((_, var)) = FLAGS.iter().find(|(f, _)| *f == flag) else {
                problems.push(format!("unknown argument `{arg}` (see --help)"));
                continue;
            };
            match inline.or_else(|| args.next().cloned()) {
                Some(v) => {
                    env.insert(var.to_string(), v);
                }
                None => problems.push(format!("flag `{flag}` needs a value")),
            }
        }

        let file = match env.get("DTMA_CONFIG") {
            Some(path) => read_file_config(Path::new(path), &mut problems),
            None => FileConfig::default(),
        };
        let get = |var: &str| env.get(var).filter(|v| !v.is_empty()).cloned();

        let bearer_token = read_secret(
            &env,
            "DTMA_BEARER_TOKEN",
            file.bearer_token_file.as_deref(),
            "dtma_bearer_token",
            &mut problems,
        );
        let backend_api_key = read_secret(
            &env,
            "BACKEND_TO_DTMA_API_KEY",
            file.backend_api_key_file.as_deref(),
            "backend_to_dtma_api_key",
            &mut problems,
        );
        if bearer_token.is_none() {
            problems.push(
                "DTMA_BEARER_TOKEN is not set (nor DTMA_BEARER_TOKEN_FILE, nor \
                 $CREDENTIALS_DIRECTORY/dtma_bearer_token): the agent needs its token to start"
                    .into(),
            );
        }

        let mut ms = |var: &str, file_value: Option<u64>, default: Duration| -> Duration {
            match get(var) {
                Some(text) => match text.parse::<u64>() {
                    Ok(v) if v > 0 => Duration::from_millis(v),
                    _ => {
                        problems.push(format!(
                            "{var} must be a whole number of milliseconds above 0, got `{text}`"
                        ));
                        default
                    }
                },
                None => file_value.map(Duration::from_millis).unwrap_or(default),
            }
        };
        let defaults = ChannelConfig::with_url("");
        let connect_timeout = ms(
            "DTMA_CONNECT_TIMEOUT_MS",
            file.connect_timeout_ms,
            defaults.connect_timeout,
        );
        let ping_interval = ms(
            "DTMA_PING_INTERVAL_MS",
            file.ping_interval_ms,
            defaults.ping_interval,
        );
        let heartbeat_interval = ms(
            "DTMA_HEARTBEAT_INTERVAL_MS",
            file.heartbeat_interval_ms,
            defaults.heartbeat_interval,
        );
        let backoff_base = ms(
            "DTMA_BACKOFF_BASE_MS",
            file.backoff_base_ms,
            defaults.backoff_base,
        );
        let backoff_cap = ms(
            "DTMA_BACKOFF_CAP_MS",
            file.backoff_cap_ms,
            defaults.backoff_cap,
        );
        let healthy_after = ms(
            "DTMA_HEALTHY_AFTER_MS",
            file.healthy_after_ms,
            defaults.healthy_after,
        );
        let orphan_grace = ms(
            "DTMA_ORPHAN_GRACE_MS",
            file.orphan_grace_ms,
            defaults.orphan_grace,
        );
        let shutdown_grace = ms(
            "DTMA_SHUTDOWN_GRACE_MS",
            file.shutdown_grace_ms,
            DEFAULT_SHUTDOWN_GRACE,
        );
        let exec_defaults = ExecLimits::default();
        let default_timeout = ms(
            "DTMA_EXEC_DEFAULT_TIMEOUT_MS",
            file.exec_default_timeout_ms,
            exec_defaults.default_timeout,
        );
        let max_timeout = ms(
            "DTMA_EXEC_MAX_TIMEOUT_MS",
            file.exec_max_timeout_ms,
            exec_defaults.max_timeout,
        );
        let kill_grace = ms(
            "DTMA_EXEC_KILL_GRACE_MS",
            file.exec_kill_grace_ms,
            exec_defaults.kill_grace,
        );

        let mut num = |var: &str, file_value: Option<u64>, default: u64| -> u64 {
            match get(var) {
                Some(text) => match text.parse::<u64>() {
                    Ok(v) if v > 0 => v,
                    _ => {
                        problems.push(format!(
                            "{var} must be a whole number above 0, got `{text}`"
                        ));
                        default
                    }
                },
                None => file_value.unwrap_or(default),
            }
        };
        let stream_defaults = StreamLimits::default();
        let max_frame_bytes = num(
            "DTMA_MAX_FRAME_BYTES",
            file.max_frame_bytes.map(|v| v as u64),
            defaults.max_frame_bytes as u64,
        ) as usize;
        let default_max_output = num(
            "DTMA_EXEC_MAX_OUTPUT_BYTES",
            file.exec_max_output_bytes,
            exec_defaults.default_max_output,
        );
        let initial_credit = num(
            "DTMA_STREAM_INITIAL_CREDIT",
            file.stream_initial_credit,
            stream_defaults.initial_credit,
        );
        let buffer_bytes = num(
            "DTMA_STREAM_BUFFER_BYTES",
            file.stream_buffer_bytes.map(|v| v as u64),
            stream_defaults.buffer_bytes as u64,
        ) as usize;
        let max_streams = num(
            "DTMA_MAX_STREAMS",
            file.max_streams.map(|v| v as u64),
            stream_defaults.max_streams as u64,
        ) as usize;
        let http_max_concurrent = num(
            "DTMA_HTTP_MAX_CONCURRENT",
            file.http_max_concurrent.map(|v| v as u64),
            exec_defaults.http_max_concurrent as u64,
        ) as usize;

        if backoff_cap < backoff_base {
            problems.push("DTMA_BACKOFF_CAP_MS must not be below DTMA_BACKOFF_BASE_MS".into());
        }
        if max_timeout < default_timeout {
            problems.push(
                "DTMA_EXEC_MAX_TIMEOUT_MS must not be below DTMA_EXEC_DEFAULT_TIMEOUT_MS".into(),
            );
        }

        let run_as = get("DTMA_EXEC_USER")
            .or(file.exec_user.clone())
            .and_then(|name| match nix::unistd::User::from_name(&name) {
                Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
                _ => {
                    problems.push(format!("DTMA_EXEC_USER: no user named `{name}`"));
                    None
                }
            });
        let rlimits = Rlimits {
            address_space_bytes: opt_num(
                &env,
                "DTMA_EXEC_RLIMIT_AS_BYTES",
                file.exec_rlimit_as_bytes,
                &mut problems,
            ),
            cpu_seconds: opt_num(
                &env,
                "DTMA_EXEC_RLIMIT_CPU_SECS",
                file.exec_rlimit_cpu_secs,
                &mut problems,
            ),
            open_files: opt_num(
                &env,
                "DTMA_EXEC_RLIMIT_NOFILE",
                file.exec_rlimit_nofile,
                &mut problems,
            ),
            processes: opt_num(
                &env,
                "DTMA_EXEC_RLIMIT_NPROC",
                file.exec_rlimit_nproc,
                &mut problems,
            ),
        };
        if rlimits != Rlimits::default() && !Path::new(PRLIMIT).is_file() {
            problems.push(format!(
                "DTMA_EXEC_RLIMIT_*: resource limits need `{PRLIMIT}` (util-linux), which is missing"
            ));
        }
        let audit_defaults = AuditConfig::default();
        let audit = AuditConfig {
            path: match get("DTMA_AUDIT_LOG").or(file.audit_log.clone()) {
                Some(p) if p == "-" => None,
                Some(p) => Some(PathBuf::from(p)),
                None => audit_defaults.path.clone(),
            },
            max_bytes: opt_num(
                &env,
                "DTMA_AUDIT_MAX_BYTES",
                file.audit_max_bytes,
                &mut problems,
            )
            .unwrap_or(audit_defaults.max_bytes),
            keep: audit_defaults.keep,
        };
        let mut extra_tokens = Vec::new();
        for t in &file.tokens {
            let token = match (&t.token, &t.token_file) {
                (Some(v), None) => Some(v.trim().to_owned()),
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(v) => Some(v.trim().to_owned()),
                    Err(e) => {
                        problems.push(format!(
                            "token `{}`: cannot read `{}`: {e}",
                            t.name,
                            path.display()
                        ));
                        None
                    }
                },
                _ => {
                    problems.push(format!(
                        "token `{}`: give exactly one of `token` and `token_file`",
                        t.name
                    ));
                    None
                }
            };
            match token {
                Some(v) if v.len() >= 16 => extra_tokens.push(TokenConfig {
                    name: t.name.clone(),
                    role: t.role,
                    token: Secret::new(v),
                }),
                Some(_) => {
                    problems.push(format!("token `{}` is shorter than 16 characters", t.name))
                }
                None => {}
            }
        }
        if let Err(e) = crate::policy::Policy::new(&file.policy) {
            problems.push(format!("[policy]: {e}"));
        }

        let docker_socket = match get("DOCKER_HOST") {
            None => DEFAULT_DOCKER_SOCKET.to_owned(),
            Some(h) if h.starts_with("unix://") => h,
            Some(h) => {
                problems.push(format!(
                    "DOCKER_HOST must be a unix:// socket for this agent, got `{h}`"
                ));
                DEFAULT_DOCKER_SOCKET.to_owned()
            }
        };

        let listen = resolve_listen(
            get("DTMA_LISTEN").or(file.listen.clone()),
            get("PORT"),
            &mut problems,
        );

        let url = match get("DTMA_WS_URL").or(file.ws_url.clone()) {
            Some(url) => check_ws_url(&url, "DTMA_WS_URL", &mut problems),
            None => get("AGENTOPIA_API_BASE_URL")
                .or(file.api_base_url.clone())
                .and_then(|base| {
                    let path = get("DTMA_WS_PATH")
                        .or(file.ws_path.clone())
                        .unwrap_or_else(|| DEFAULT_WS_PATH.to_owned());
                    match derive_ws_url(&base, &path) {
                        Ok(url) => Some(url),
                        Err(e) => {
                            problems.push(format!("AGENTOPIA_API_BASE_URL: {e}"));
                            None
                        }
                    }
                }),
        };
        let ca_file = get("DTMA_CA_FILE").map(PathBuf::from).or(file.ca_file);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            problems.push(format!(
                "DTMA_CA_FILE `{}` is not a readable file",
                ca.display()
            ));
        }

        let agent_id = get("DTMA_AGENT_ID")
            .or(file.agent_id)
            .or_else(hostname)
            .unwrap_or_else(|| "dtma".to_owned());

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let Some(bearer_token) = bearer_token else {
            return Err(ConfigError { problems });
        };
        let secrets: Vec<Secret> = [Some(bearer_token.clone()), backend_api_key.clone()]
            .into_iter()
            .flatten()
            .chain(extra_tokens.iter().map(|t| t.token.clone()))
            .collect();
        let channel = url.map(|url| ChannelConfig {
            url,
            ca_file,
            connect_timeout,
            ping_interval,
            heartbeat_interval,
            backoff_base,
            backoff_cap,
            healthy_after,
            orphan_grace,
            max_frame_bytes,
            jitter_seed: None,
        });
        Ok((
            Mode::Run,
            Some(Config {
                agent_id,
                bearer_token,
                backend_api_key,
                channel,
                listen,
                exec: ExecLimits {
                    default_timeout,
                    max_timeout,
                    kill_grace,
                    default_max_output,
                    run_as,
                    rlimits,
                    http_max_concurrent,
                    ..exec_defaults
                },
                streams: StreamLimits {
                    initial_credit,
                    buffer_bytes,
                    max_streams,
                    ..stream_defaults
                },
                secrets,
                shutdown_grace,
                extra_tokens,
                policy: file.policy,
                audit,
                docker_socket,
            }),
        ))
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
        }
    }
}

/// Where `prlimit` (util-linux) lives on Debian.
pub const PRLIMIT: &str = "/usr/bin/prlimit";

fn opt_num(
    env: &BTreeMap<String, String>,
    var: &str,
    file_value: Option<u64>,
    problems: &mut Vec<String>,
) -> Option<u64> {
    match env.get(var).filter(|v| !v.is_empty()) {
        Some(text) => match text.parse::<u64>() {
            Ok(v) if v > 0 => Some(v),
            _ => {
                problems.push(format!(
                    "{var} must be a whole number above 0, got `{text}`"
                ));
                None
            }
        },
        None => file_value,
    }
}

fn read_file_config(path: &Path, problems: &mut Vec<String>) -> FileConfig {
    match std::fs::read_to_string(path) {
        Ok(text) => match toml::from_str(&text) {
            Ok(cfg) => cfg,
            Err(e) => {
                problems.push(format!("config file `{}`: {e}", path.display()));
                FileConfig::default()
            }
        },
        Err(e) => {
            problems.push(format!("config file `{}`: {e}", path.display()));
            FileConfig::default()
        }
    }
}

/// A secret from `VAR`, else `VAR_FILE`, else the config file's path, else systemd credentials.
fn read_secret(
    env: &BTreeMap<String, String>,
    var: &str,
    file_path: Option<&Path>,
    credential: &str,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
        return Some(Secret::new(v.trim()));
    }
    let file_var = format!("{var}_FILE");
    let path = env
        .get(&file_var)
        .map(PathBuf::from)
        .or_else(|| file_path.map(Path::to_path_buf))
        .or_else(|| {
            let dir = env.get("CREDENTIALS_DIRECTORY")?;
            let p = Path::new(dir).join(credential);
            p.is_file().then_some(p)
        })?;
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
        Ok(_) => {
            problems.push(format!("{file_var}: `{}` is empty", path.display()));
            None
        }
        Err(e) => {
            problems.push(format!("{file_var}: cannot read `{}`: {e}", path.display()));
            None
        }
    }
}

fn resolve_listen(
    listen: Option<String>,
    port: Option<String>,
    problems: &mut Vec<String>,
) -> SocketAddr {
    let fallback: SocketAddr = DEFAULT_LISTEN.parse().expect("the default address parses");
    let mut addr = match listen {
        Some(text) => text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "DTMA_LISTEN must be a socket address like 127.0.0.1:30000, got `{text}`"
            ));
            fallback
        }),
        None => fallback,
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) => addr.set_port(p),
            Err(_) => problems.push(format!("PORT must be a port number, got `{port}`")),
        }
    }
    addr
}

fn check_ws_url(url: &str, var: &str, problems: &mut Vec<String>) -> Option<String> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        Some(url.to_owned())
    } else {
        problems.push(format!(
            "{var} must start with ws:// or wss://, got `{url}`"
        ));
        None
    }
}

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

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(args: &[&str], env: &[(&str, &str)]) -> Sources {
        Sources {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn derives_ws_url_from_api_base() {
        let (_, cfg) = Config::load(&sources(
            &[],
            &[
                ("DTMA_BEARER_TOKEN", "t"),
                (
                    "AGENTOPIA_API_BASE_URL",
                    "https://api.example.com/functions/v1/",
                ),
            ],
        ))
        .unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(
            cfg.channel.unwrap().url,
            "wss://api.example.com/functions/v1/dtma/connect"
        );
        assert_eq!(cfg.listen, "127.0.0.1:30000".parse().unwrap());
    }

    #[test]
    fn flags_beat_env_and_port_overrides_only_the_port() {
        let (_, cfg) = Config::load(&sources(
            &["--ws-url", "ws://127.0.0.1:9/x", "--listen=0.0.0.0:1"],
            &[
                ("DTMA_BEARER_TOKEN", "t"),
                ("DTMA_WS_URL", "ws://elsewhere/"),
                ("DTMA_LISTEN", "127.0.0.1:5"),
                ("PORT", "4242"),
            ],
        ))
        .unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(cfg.channel.unwrap().url, "ws://127.0.0.1:9/x");
        assert_eq!(cfg.listen, "0.0.0.0:4242".parse().unwrap());
    }

    #[test]
    fn local_only_without_base_url() {
        let (_, cfg) = Config::load(&sources(&[], &[("DTMA_BEARER_TOKEN", "t")])).unwrap();
        assert!(cfg.unwrap().channel.is_none());
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = Config::load(&sources(
            &["--bogus"],
            &[
                ("AGENTOPIA_API_BASE_URL", "ftp://x"),
                ("PORT", "99999"),
                ("DTMA_PING_INTERVAL_MS", "soon"),
            ],
        ))
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "--bogus",
            "DTMA_BEARER_TOKEN is not set",
            "AGENTOPIA_API_BASE_URL",
            "PORT",
            "DTMA_PING_INTERVAL_MS",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    #[test]
    fn token_from_file_and_credentials_directory() {
        let dir = std::env::temp_dir().join(format!("dtma-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dtma_bearer_token"), "from-creds\n").unwrap();
        let creds = dir.to_string_lossy().to_string();
        let (_, cfg) = Config::load(&sources(&[], &[("CREDENTIALS_DIRECTORY", &creds)])).unwrap();
        assert_eq!(cfg.unwrap().bearer_token.expose(), "from-creds");
        let file = dir.join("tok");
        std::fs::write(&file, "from-file").unwrap();
        let (_, cfg) = Config::load(&sources(
            &[],
            &[("DTMA_BEARER_TOKEN_FILE", &file.to_string_lossy())],
        ))
        .unwrap();
        assert_eq!(cfg.unwrap().bearer_token.expose(), "from-file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_file_is_below_env() {
        let dir = std::env::temp_dir().join(format!("dtma-cfgfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dtma.toml");
        std::fs::write(
            &path,
            "ws_url = \"ws://file/\"\nlisten = \"127.0.0.1:7\"\nmax_streams = 3\n",
        )
        .unwrap();
        let (_, cfg) = Config::load(&sources(
            &["--config", &path.to_string_lossy()],
            &[("DTMA_BEARER_TOKEN", "t"), ("DTMA_LISTEN", "127.0.0.1:8")],
        ))
        .unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(cfg.channel.unwrap().url, "ws://file/");
        assert_eq!(cfg.listen.port(), 8);
        assert_eq!(cfg.streams.max_streams, 3);
        std::fs::write(&path, "nonsense_key = 1\n").unwrap();
        let err = Config::load(&sources(
            &["--config", &path.to_string_lossy()],
            &[("DTMA_BEARER_TOKEN", "t")],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("nonsense_key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_roles_and_policy_come_from_the_file() {
        let dir = std::env::temp_dir().join(format!("dtma-cfgtok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("oncall.token");
        std::fs::write(&tok, "oncall-token-0123456789\n").unwrap();
        let path = dir.join("dtma.toml");
        std::fs::write(
            &path,
            format!(
                "[[tokens]]\nname = \"oncall\"\nrole = \"diagnostics\"\ntoken_file = \"{}\"\n\n\
                 [[tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"ops-token-0123456789\"\n\n\
                 [policy]\noperator_allow = [\"systemctl\"]\n\
                 extra_deny = [{{ name = \"no_metadata\", pattern = \"169\\\\.254\" }}]\n",
                tok.display()
            ),
        )
        .unwrap();
        let (_, cfg) = Config::load(&sources(
            &["--config", &path.to_string_lossy()],
            &[("DTMA_BEARER_TOKEN", "t")],
        ))
        .unwrap();
        let cfg = cfg.unwrap();
        let names: Vec<(&str, Role)> = cfg
            .extra_tokens
            .iter()
            .map(|t| (t.name.as_str(), t.role))
            .collect();
        assert_eq!(
            names,
            [("oncall", Role::Diagnostics), ("ops", Role::Operator)]
        );
        assert_eq!(
            cfg.extra_tokens[0].token.expose(),
            "oncall-token-0123456789"
        );
        // Extra tokens are secrets too: scrubbed from children, never printed.
        assert_eq!(cfg.secrets.len(), 3);
        let policy = crate::policy::Policy::new(&cfg.policy).unwrap();
        let d = policy.check(Role::Admin, "curl http://169.254.169.254/");
        assert_eq!((d.allowed, d.rule.as_str()), (false, "no_metadata"));

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"x\"\nrole = \"root\"\ntoken = \"short\"\n",
        )
        .unwrap();
        let err = Config::load(&sources(
            &["--config", &path.to_string_lossy()],
            &[("DTMA_BEARER_TOKEN", "t")],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        std::fs::write(
            &path,
            "[policy]\nextra_deny = [{ name = \"bad\", pattern = \"(\" }]\n",
        )
        .unwrap();
        let err = Config::load(&sources(
            &["--config", &path.to_string_lossy()],
            &[("DTMA_BEARER_TOKEN", "t")],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cfg = Config::for_channel("super-secret-token", None);
        assert!(!format!("{cfg:?}").contains("super-secret-token"));
    }
}
