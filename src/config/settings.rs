//! The settings as an operator writes them: one struct that clap fills from flags and the
//! environment and serde fills from the config file.
//!
//! Each setting is one field of [`Settings`]; its flag, environment variable, default and help
//! text are that field's attributes, and its config-file key is the field's name. Each source is
//! read into a `Settings` of its own (`None`: not given there) and the four are overlaid key by
//! key: flags > environment > file > defaults. What a value must satisfy is checked afterwards, once,
//! whatever its source (`validate.rs`).
//!
//! clap itself only ever parses flags here: the environment comes from a map (so tests inject
//! one, and a variable that is not UTF-8 is a problem rather than a panic) and is fed to the
//! same parser as `--flag=value`, one variable at a time so that every bad value is reported.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};

use crate::policy::{PolicyConfig, Role};

/// The command line: the settings, plus what only flags or the environment may give.
#[derive(Parser, Default)]
#[command(
    name = "dtma",
    version = crate::long_version(),
    about = "Droplet Tool Management Agent: an outbound WebSocket control channel for running \
             commands and MCP server containers on a droplet.",
    long_about = None,
    max_term_width = 100
)]
pub struct Cli {
    /// Print the effective configuration as JSON (secrets redacted) and exit: 0 when it is
    /// valid, 64 with every problem otherwise.
    #[arg(long)]
    pub print_config: bool,
    /// TOML config file: the settings below by their long names in snake_case (`max_streams =
    /// 500`), plus `[[tokens]]` (`name`, `role`, `token` or `token_file`, trimmed of surrounding
    /// whitespace) and `[policy]` tables. Flags and the environment override it.
    #[arg(long, env = "DTMA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's identity towards the backend, sent as `Authorization: Bearer` when it dials.
    /// Or DTMA_BEARER_TOKEN_FILE, or $CREDENTIALS_DIRECTORY/dtma_bearer_token. Required.
    #[arg(long, env = "DTMA_BEARER_TOKEN", hide = true, hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// Key the backend uses on the local API. Or BACKEND_TO_DTMA_API_KEY_FILE, or
    /// $CREDENTIALS_DIRECTORY/backend_to_dtma_api_key.
    #[arg(
        long,
        env = "BACKEND_TO_DTMA_API_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub backend_api_key: Option<String>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting a flag, a variable or the config file may give. `None`: not given by that
/// source. The `default_value`s are applied by the overlay, below every source.
#[derive(Args, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Name the agent gives itself in `hello` [default: the host name].
    #[arg(long, env = "DTMA_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<String>,
    /// File holding the bearer token; surrounding whitespace (a trailing newline) is trimmed.
    #[arg(long, env = "DTMA_BEARER_TOKEN_FILE", value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// File holding the backend's API key; surrounding whitespace is trimmed.
    #[arg(long, env = "BACKEND_TO_DTMA_API_KEY_FILE", value_name = "FILE")]
    pub backend_api_key_file: Option<PathBuf>,
    /// systemd credentials: `dtma_bearer_token` and `backend_to_dtma_api_key` in this directory
    /// are used when neither the variable nor its _FILE is set (whitespace trimmed).
    #[arg(long, env = "CREDENTIALS_DIRECTORY", value_name = "DIR")]
    pub credentials_directory: Option<PathBuf>,

    /// `http(s)://` base of the backend; the channel URL is this with `ws(s)://` plus the WS
    /// path. Neither this nor the WS URL: local-only mode.
    #[arg(
        long,
        env = "AGENTOPIA_API_BASE_URL",
        value_name = "URL",
        help_heading = "Channel"
    )]
    pub api_base_url: Option<String>,
    /// Path of the connect endpoint below the API base URL.
    #[arg(
        long,
        env = "DTMA_WS_PATH",
        value_name = "PATH",
        default_value = "dtma/connect",
        help_heading = "Channel"
    )]
    pub ws_path: Option<String>,
    /// Full `ws://` or `wss://` URL of the connect endpoint; overrides the two above.
    #[arg(
        long,
        env = "DTMA_WS_URL",
        value_name = "URL",
        help_heading = "Channel"
    )]
    pub ws_url: Option<String>,
    /// Extra PEM CA certificates to trust (private backends), besides the webpki roots.
    #[arg(
        long,
        env = "DTMA_CA_FILE",
        value_name = "FILE",
        help_heading = "Channel"
    )]
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS + upgrade, and the wait for `welcome`.
    #[arg(
        long,
        env = "DTMA_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000",
        help_heading = "Channel"
    )]
    pub connect_timeout_ms: Option<u64>,
    /// WebSocket ping period; the link is dead after two periods of silence.
    #[arg(
        long,
        env = "DTMA_PING_INTERVAL_MS",
        value_name = "MS",
        default_value = "15000",
        help_heading = "Channel"
    )]
    pub ping_interval_ms: Option<u64>,
    /// `status` heartbeat period (the backend's `welcome` may override it).
    #[arg(
        long,
        env = "DTMA_HEARTBEAT_INTERVAL_MS",
        value_name = "MS",
        default_value = "30000",
        help_heading = "Channel"
    )]
    pub heartbeat_interval_ms: Option<u64>,
    /// First reconnect delay: exponential envelope with full jitter.
    #[arg(
        long,
        env = "DTMA_BACKOFF_BASE_MS",
        value_name = "MS",
        default_value = "500",
        help_heading = "Channel"
    )]
    pub backoff_base_ms: Option<u64>,
    /// Largest reconnect delay (not below the base).
    #[arg(
        long,
        env = "DTMA_BACKOFF_CAP_MS",
        value_name = "MS",
        default_value = "30000",
        help_heading = "Channel"
    )]
    pub backoff_cap_ms: Option<u64>,
    /// A link must stay up this long before the backoff resets.
    #[arg(
        long,
        env = "DTMA_HEALTHY_AFTER_MS",
        value_name = "MS",
        default_value = "30000",
        help_heading = "Channel"
    )]
    pub healthy_after_ms: Option<u64>,
    /// Running commands are cancelled when the link has been down this long.
    #[arg(
        long,
        env = "DTMA_ORPHAN_GRACE_MS",
        value_name = "MS",
        default_value = "600000",
        help_heading = "Channel"
    )]
    pub orphan_grace_ms: Option<u64>,
    /// Largest backend frame accepted (larger: `frame_too_large`).
    #[arg(
        long,
        env = "DTMA_MAX_FRAME_BYTES",
        value_name = "BYTES",
        default_value = "1048576",
        help_heading = "Channel"
    )]
    pub max_frame_bytes: Option<u64>,

    /// Local API address.
    #[arg(
        long,
        env = "DTMA_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:30000",
        help_heading = "Local API"
    )]
    pub listen: Option<SocketAddr>,
    /// Overrides only the local API's port (as the original service did).
    #[arg(long, env = "PORT", value_name = "PORT", help_heading = "Local API")]
    pub port: Option<u16>,
    /// Commands the local API runs at once; more get 429.
    #[arg(
        long,
        env = "DTMA_HTTP_MAX_CONCURRENT",
        value_name = "N",
        default_value = "64",
        help_heading = "Local API"
    )]
    pub http_max_concurrent: Option<u64>,
    /// `true`: `GET /metrics` answers without a token (for a scraper on the same host); the
    /// other endpoints still need one.
    #[arg(
        long,
        env = "DTMA_METRICS_PUBLIC",
        value_name = "BOOL",
        default_value = "false",
        help_heading = "Local API"
    )]
    pub metrics_public: Option<bool>,
    /// Format of the agent's log lines on stderr: `text` (one readable line each) or `json`
    /// (one JSON object each, for a log shipper). The level is set by RUST_LOG.
    #[arg(
        long,
        env = "DTMA_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text",
        help_heading = "Local API"
    )]
    pub log_format: Option<String>,

    /// Timeout of a command that names none.
    #[arg(
        long,
        env = "DTMA_EXEC_DEFAULT_TIMEOUT_MS",
        value_name = "MS",
        default_value = "30000",
        help_heading = "Command execution"
    )]
    pub exec_default_timeout_ms: Option<u64>,
    /// Largest timeout a command may ask for (not below the default).
    #[arg(
        long,
        env = "DTMA_EXEC_MAX_TIMEOUT_MS",
        value_name = "MS",
        default_value = "86400000",
        help_heading = "Command execution"
    )]
    pub exec_max_timeout_ms: Option<u64>,
    /// SIGTERM to SIGKILL delay for a command's process group.
    #[arg(
        long,
        env = "DTMA_EXEC_KILL_GRACE_MS",
        value_name = "MS",
        default_value = "2000",
        help_heading = "Command execution"
    )]
    pub exec_kill_grace_ms: Option<u64>,
    /// Default cap on a command's forwarded output (stdout + stderr).
    #[arg(
        long,
        env = "DTMA_EXEC_MAX_OUTPUT_BYTES",
        value_name = "BYTES",
        default_value = "268435456",
        help_heading = "Command execution"
    )]
    pub exec_max_output_bytes: Option<u64>,
    /// Run commands as this user [default: the agent's user].
    #[arg(
        long,
        env = "DTMA_EXEC_USER",
        value_name = "USER",
        help_heading = "Command execution"
    )]
    pub exec_user: Option<String>,
    /// Per-command address-space limit (through util-linux `prlimit`).
    #[arg(
        long,
        env = "DTMA_EXEC_RLIMIT_AS_BYTES",
        value_name = "BYTES",
        help_heading = "Command execution"
    )]
    pub exec_rlimit_as_bytes: Option<u64>,
    /// Per-command CPU time limit.
    #[arg(
        long,
        env = "DTMA_EXEC_RLIMIT_CPU_SECS",
        value_name = "SECS",
        help_heading = "Command execution"
    )]
    pub exec_rlimit_cpu_secs: Option<u64>,
    /// Per-command open-file limit.
    #[arg(
        long,
        env = "DTMA_EXEC_RLIMIT_NOFILE",
        value_name = "N",
        help_heading = "Command execution"
    )]
    pub exec_rlimit_nofile: Option<u64>,
    /// Per-command process limit (of the command's user).
    #[arg(
        long,
        env = "DTMA_EXEC_RLIMIT_NPROC",
        value_name = "N",
        help_heading = "Command execution"
    )]
    pub exec_rlimit_nproc: Option<u64>,
    /// `enforce`: every command runs under its role's kernel sandbox (`dtma sandbox-exec`:
    /// user, no capabilities, Landlock, seccomp); `off`: admin commands run unconfined as the
    /// agent's user and diagnostics/operator commands are refused.
    #[arg(
        long,
        env = "DTMA_SANDBOX",
        value_name = "off|enforce",
        default_value = "enforce",
        help_heading = "Command execution"
    )]
    pub sandbox: Option<String>,
    /// User of the `diagnostics` sandbox profile (must exist; never root).
    #[arg(
        long,
        env = "DTMA_SANDBOX_DIAGNOSTICS_USER",
        value_name = "USER",
        default_value = "dtma-diagnostics",
        help_heading = "Command execution"
    )]
    pub sandbox_diagnostics_user: Option<String>,
    /// User of the `operator` sandbox profile (must exist; never root).
    #[arg(
        long,
        env = "DTMA_SANDBOX_OPERATOR_USER",
        value_name = "USER",
        default_value = "dtma-operator",
        help_heading = "Command execution"
    )]
    pub sandbox_operator_user: Option<String>,
    /// `true`: on a kernel without Landlock, run the diagnostics and operator profiles with
    /// the user switch and seccomp only, instead of refusing their commands.
    #[arg(
        long,
        env = "DTMA_SANDBOX_ACCEPT_NO_LANDLOCK",
        value_name = "BOOL",
        default_value = "false",
        help_heading = "Command execution"
    )]
    pub sandbox_accept_no_landlock: Option<bool>,
    /// More paths (comma-separated) no command may read or write, in every profile, admin
    /// included: e.g. `/var/run/docker.sock,/run/dbus/system_bus_socket` closes the Docker and
    /// systemd routes around the admin profile (admin then has no `docker` or `systemctl`).
    #[arg(
        long,
        env = "DTMA_SANDBOX_HIDE",
        value_name = "PATHS",
        value_delimiter = ',',
        help_heading = "Command execution"
    )]
    pub sandbox_hide: Option<Vec<PathBuf>>,
    /// More paths (comma-separated) the `diagnostics` profile may write, besides the scratch
    /// directories (`/tmp`, `/var/tmp`, `/dev/shm`).
    #[arg(
        long,
        env = "DTMA_SANDBOX_DIAGNOSTICS_WRITABLE",
        value_name = "PATHS",
        value_delimiter = ',',
        help_heading = "Command execution"
    )]
    pub sandbox_diagnostics_writable: Option<Vec<PathBuf>>,
    /// More paths (comma-separated) the `operator` profile may write, besides the scratch
    /// directories: e.g. an MCP servers' data directory.
    #[arg(
        long,
        env = "DTMA_SANDBOX_OPERATOR_WRITABLE",
        value_name = "PATHS",
        value_delimiter = ',',
        help_heading = "Command execution"
    )]
    pub sandbox_operator_writable: Option<Vec<PathBuf>>,
    /// How long running commands may finish after SIGTERM before their groups are stopped.
    #[arg(
        long,
        env = "DTMA_SHUTDOWN_GRACE_MS",
        value_name = "MS",
        default_value = "10000",
        help_heading = "Command execution"
    )]
    pub shutdown_grace_ms: Option<u64>,

    /// Credit a stream starts with, unless the backend says otherwise.
    #[arg(
        long,
        env = "DTMA_STREAM_INITIAL_CREDIT",
        value_name = "BYTES",
        default_value = "1048576",
        help_heading = "Streams"
    )]
    pub stream_initial_credit: Option<u64>,
    /// Unacknowledged bytes kept per stream for resend.
    #[arg(
        long,
        env = "DTMA_STREAM_BUFFER_BYTES",
        value_name = "BYTES",
        default_value = "2097152",
        help_heading = "Streams"
    )]
    pub stream_buffer_bytes: Option<u64>,
    /// Streams held at once (running or awaiting their final ack).
    #[arg(
        long,
        env = "DTMA_MAX_STREAMS",
        value_name = "N",
        default_value = "2048",
        help_heading = "Streams"
    )]
    pub max_streams: Option<u64>,

    /// Audit log path (`-`: the agent's own log, target `audit`).
    #[arg(
        long,
        env = "DTMA_AUDIT_LOG",
        value_name = "FILE",
        default_value = "/var/log/dtma/audit.jsonl",
        help_heading = "Audit and Docker"
    )]
    pub audit_log: Option<String>,
    /// Audit log rotation size.
    #[arg(
        long,
        env = "DTMA_AUDIT_MAX_BYTES",
        value_name = "BYTES",
        default_value = "10485760",
        help_heading = "Audit and Docker"
    )]
    pub audit_max_bytes: Option<u64>,
    /// Docker daemon socket (`unix://` only).
    #[arg(
        long,
        env = "DOCKER_HOST",
        value_name = "URL",
        default_value = "unix:///var/run/docker.sock",
        help_heading = "Audit and Docker"
    )]
    pub docker_host: Option<String>,
    /// Docker network for MCP server containers: unset for Docker's default (a bridge, with the
    /// port bindings published on the host); `host` where the machine has no bridge networking
    /// (each server binds its port on the host itself); `none`; or a network's name [default:
    /// Docker's default].
    #[arg(
        long,
        env = "DTMA_MCP_NETWORK",
        value_name = "NETWORK",
        help_heading = "Audit and Docker"
    )]
    pub mcp_network: Option<String>,
    /// How often the agent checks that each running HTTP/SSE MCP server still answers the MCP
    /// handshake; three failures in a row make it `degraded`.
    #[arg(
        long,
        env = "DTMA_MCP_LIVENESS_INTERVAL_MS",
        value_name = "MS",
        default_value = "30000",
        help_heading = "Audit and Docker"
    )]
    pub mcp_liveness_interval_ms: Option<u64>,

    /// Local API tokens beyond the two seed tokens (config file only).
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub tokens: Vec<FileToken>,
    /// Extra command policy rules (config file only).
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub policy: PolicyConfig,
}

/// `[[tokens]]` in the config file: exactly one of `token` and `token_file`.
/// No `Debug`: it may hold the token itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub name: String,
    pub role: Role,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// The source that gave a setting its value; a problem names the setting as that source does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Flag,
    Env,
    File,
    Default,
}

/// The whole command, with environment variables and defaults: for `--help`, and for the
/// names of each setting.
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let mut extra = String::from(
        "Secrets, from the environment only (on the command line any local user could read them):\n",
    );
    for arg in cmd.get_arguments().filter(|a| a.is_hide_set()) {
        if let (Some(var), Some(help)) = (arg.get_env(), arg.get_help()) {
            let _ = writeln!(extra, "  {}\n          {help}", var.to_string_lossy());
        }
    }
    extra.push_str(
        "\nAn empty variable counts as unset. Logging: RUST_LOG (default `info`), to stderr.\n\
         Precedence: flags > environment > config file > defaults. Every problem is reported at \
         once; the exit code is then 64.",
    );
    cmd.after_help(extra)
}

/// The command without environment variables or defaults: it reads the given arguments only.
fn bare_command(keep_defaults: bool) -> clap::Command {
    Cli::command().mut_args(|a| {
        let a = a.env(None::<&str>);
        if keep_defaults {
            a
        } else {
            a.default_value(None::<&str>)
        }
    })
}

/// What the command line asked for.
pub(crate) enum FromFlags {
    Parsed(Box<Cli>),
    /// `--help` or `--version`: print this and exit 0.
    Print(String),
    Invalid(String),
}

/// The flags layer. `args` excludes the program name.
pub(crate) fn from_flags(args: &[OsString]) -> FromFlags {
    if let Some(bad) = args.iter().find(|a| a.to_str().is_none()) {
        return FromFlags::Invalid(format!(
            "argument `{}` is not valid UTF-8",
            bad.to_string_lossy()
        ));
    }
    let argv = std::iter::once(OsStr::new("dtma")).chain(args.iter().map(OsString::as_os_str));
    let matches = match bare_command(false).try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp => {
                    // The current values of variables are --print-config's business.
                    let mut cmd = command().mut_args(|a| a.hide_env_values(true));
                    FromFlags::Print(cmd.render_help().to_string())
                }
                ErrorKind::DisplayVersion => FromFlags::Print(command().render_version()),
                _ => FromFlags::Invalid(format!("{} (see --help)", first_line(&e))),
            };
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return FromFlags::Invalid(first_line(&e)),
    };
    let cmd = command();
    if let Some(arg) = cmd
        .get_arguments()
        .find(|a| a.is_hide_set() && matches.contains_id(a.get_id().as_str()))
    {
        let var = arg.get_env().unwrap_or_default().to_string_lossy();
        return FromFlags::Invalid(format!(
            "{var} is read from the environment only: on the command line any local user could \
             read it"
        ));
    }
    FromFlags::Parsed(Box::new(cli))
}

/// The environment layer: every variable a setting names, parsed as its flag would be.
/// Variables no setting names are ignored, whatever their bytes.
pub(crate) fn from_env(env: &BTreeMap<OsString, OsString>, problems: &mut Vec<String>) -> Cli {
    let names = command();
    let mut parser = bare_command(false);
    let mut argv = vec![OsString::from("dtma")];
    for arg in names.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let Some(value) = env.get(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let var = var.to_string_lossy();
        let Some(text) = value.to_str() else {
            problems.push(format!("{var} is not valid UTF-8"));
            continue;
        };
        let flag = OsString::from(format!("--{long}={text}"));
        match parser.try_get_matches_from_mut([OsString::from("dtma"), flag.clone()]) {
            Ok(_) => argv.push(flag),
            Err(e) => {
                let reason = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| first_line(&e));
                problems.push(if arg.is_hide_env_values_set() {
                    format!("{var}: {reason}")
                } else {
                    format!("{var}: {reason}, got `{text}`")
                });
            }
        }
    }
    match parser
        .try_get_matches_from_mut(argv)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            problems.push(format!("environment: {}", first_line(&e)));
            Cli::default()
        }
    }
}

/// The config file layer. Each key is read on its own before the whole, so that every bad key
/// is a problem of its own (not only the first serde meets); a TOML syntax error stops the
/// reading of the file and is one problem.
pub(crate) fn from_file(path: &Path, problems: &mut Vec<String>) -> Settings {
    let file = format!("config file `{}`", path.display());
    let table = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string()));
    let table = match table {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{file}: {e}"));
            return Settings::default();
        }
    };
    let mut good = toml::Table::new();
    for (key, value) in table {
        let one = toml::Table::from_iter([(key.clone(), value)]);
        match toml::Value::Table(one.clone()).try_into::<Settings>() {
            Ok(_) => good.extend(one),
            Err(e) => {
                let e = e.to_string();
                // serde's message lists every field; the help says it better.
                let reason = if e.starts_with("unknown field") {
                    "not a setting (the keys are the long flags of `dtma --help` in snake_case)"
                } else {
                    e.trim()
                };
                problems.push(format!("{file}: `{key}`: {reason}"));
            }
        }
    }
    toml::Value::Table(good)
        .try_into()
        .unwrap_or_else(|e: toml::de::Error| {
            problems.push(format!("{file}: {}", e.to_string().trim()));
            Settings::default()
        })
}

/// The defaults layer: every `default_value`.
pub(crate) fn defaults() -> Settings {
    bare_command(true)
        .try_get_matches_from(["dtma"])
        .and_then(|m| Cli::from_arg_matches(&m))
        .map(|cli| cli.settings)
        .unwrap_or_default()
}

/// Settings overlaid from their sources, and where each value came from.
pub(crate) struct Merged {
    pub settings: Settings,
    pub origins: BTreeMap<String, Origin>,
}

/// Overlay the layers, highest first: each key takes the first value given. The overlay works on
/// the layers' JSON form so that it needs no code per setting. `[[tokens]]` and `[policy]` come
/// from the file layer alone.
pub(crate) fn overlay(layers: Vec<(Origin, Settings)>) -> Result<Merged, String> {
    let mut merged = serde_json::Map::new();
    let mut origins = BTreeMap::new();
    let mut tokens = Vec::new();
    let mut policy = PolicyConfig::default();
    for (origin, mut layer) in layers {
        if origin == Origin::File {
            tokens = std::mem::take(&mut layer.tokens);
            policy = std::mem::take(&mut layer.policy);
        }
        let serde_json::Value::Object(values) =
            serde_json::to_value(&layer).map_err(|e| e.to_string())?
        else {
            return Err("settings are not a map".into());
        };
        for (key, value) in values {
            if !value.is_null() && !merged.contains_key(&key) {
                origins.insert(key.clone(), origin);
                merged.insert(key, value);
            }
        }
    }
    let mut settings: Settings =
        serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| e.to_string())?;
    settings.tokens = tokens;
    settings.policy = policy;
    Ok(Merged { settings, origins })
}

/// How each source spells a setting, by the setting's id (its field name).
pub(crate) struct Names {
    cmd: clap::Command,
}

impl Names {
    pub(crate) fn new() -> Self {
        Names { cmd: command() }
    }

    /// The environment variable of a setting, else its id.
    pub(crate) fn var(&self, id: &str) -> String {
        self.arg(id)
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_owned())
    }

    /// The setting as the source that gave it spells it.
    pub(crate) fn label(&self, id: &str, origin: Option<Origin>, file: Option<&Path>) -> String {
        match origin {
            Some(Origin::Flag) => match self.arg(id).and_then(|a| a.get_long()) {
                Some(long) => format!("--{long}"),
                None => id.to_owned(),
            },
            Some(Origin::File) => match file {
                Some(path) => format!("`{id}` in `{}`", path.display()),
                None => format!("`{id}` in the config file"),
            },
            Some(Origin::Default) => format!("`{id}` (default)"),
            Some(Origin::Env) | None => self.var(id),
        }
    }

    fn arg(&self, id: &str) -> Option<&clap::Arg> {
        self.cmd.get_arguments().find(|a| a.get_id() == id)
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}
