//! The gateway's settings, built once into a [`Config`] value: flags > environment > TOML file
//! > defaults. `main` builds it; tests write the value directly.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default address agents dial (`ws://HOST:8080/dtma/connect`).
pub const DEFAULT_AGENT_LISTEN: &str = "0.0.0.0:8080";
/// Default address of the operator API: loopback, so that it is exposed only on purpose.
pub const DEFAULT_OPERATOR_LISTEN: &str = "127.0.0.1:8081";

/// Command-line flags (each also read from its environment variable).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "dtma-gateway",
    version,
    about = "Holds DTMA agents' connections; serves the operator API."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DTMA_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address agents connect to (`/dtma/connect`).
    #[arg(long, env = "DTMA_GATEWAY_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,
    /// Address of the operator API (`/v1/...`).
    #[arg(long, env = "DTMA_GATEWAY_OPERATOR_LISTEN")]
    pub operator_listen: Option<SocketAddr>,
    /// The agent token file: one `agent_id token` per line.
    #[arg(long, env = "DTMA_GATEWAY_AGENT_TOKENS")]
    pub agent_tokens: Option<PathBuf>,
    /// A file of operator bearer tokens, one per line (never on the command line: `ps` shows it).
    #[arg(long, env = "DTMA_GATEWAY_OPERATOR_TOKENS_FILE")]
    pub operator_tokens_file: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "DTMA_GATEWAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Where agent events are POSTed (`http://` or `https://`); none: no webhooks.
    #[arg(long, env = "DTMA_GATEWAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Agent token hook URL: asked about tokens the file does not hold (see gateway/README.md).
    #[arg(long, env = "DTMA_GATEWAY_AGENT_AUTH_HOOK")]
    pub agent_auth_hook: Option<String>,
    /// PEM certificate chain for the agent listener (agents then dial `wss://`).
    #[arg(long, env = "DTMA_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the agent listener.
    #[arg(long, env = "DTMA_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// NATS server of the cluster (`nats://HOST:4222`); none: a node on its own.
    #[arg(long, env = "DTMA_GATEWAY_NATS_URL")]
    pub nats_url: Option<String>,
    /// This node's name in the cluster (letters, digits, `-`, `_`); default: the host name.
    #[arg(long, env = "DTMA_GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// The file holding the webhook signing secret (never on the command line).
    #[arg(long, env = "DTMA_GATEWAY_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
}

/// A bearer token: compared by the caller, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How operator streams are buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Bytes of events (as JSON) held per stream. Events a client has been sent are dropped
    /// first when it is full; when none has been sent, the gateway stops reading the stream
    /// (no credit: the agent pauses the command) until a client reads.
    pub buffer_bytes: usize,
    /// How long an ended stream stays available for `Last-Event-ID` resume and for an
    /// idempotent repeat of its request id.
    pub retention: Duration,
    /// Output bytes a buffered (`wait`) answer collects; the rest is counted, not kept.
    pub wait_output_bytes: usize,
    /// Streams held at once (running or retained); more are refused with 429.
    pub max_streams: usize,
    /// The credit window each stream starts with (`welcome.initial_credit`).
    pub initial_credit: u64,
    /// A follow (`logs_follow`, `mcp_events`) that no client has read for this long is
    /// cancelled at the agent; `None`: never. Commands are not affected.
    pub unattended_cancel: Option<Duration>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            buffer_bytes: 4 << 20,
            retention: Duration::from_secs(300),
            wait_output_bytes: 1 << 20,
            max_streams: 10_000,
            initial_credit: 1 << 20,
            unattended_cancel: Some(Duration::from_secs(300)),
        }
    }
}

/// Where and how agent events are delivered ([`crate::webhooks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key of `Dtma-Signature` (read from `secret_file`).
    pub secret: Secret,
    /// PEM certificates trusted for an `https` URL besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Attempts per event (the first one included) before it is given up.
    pub max_attempts: u32,
    /// Events waiting for delivery; when full, the oldest is dropped (and counted).
    pub queue: usize,
    /// The first retry delay; it doubles up to `backoff_cap` (plus a jitter below `backoff_base`).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// One attempt (connect, TLS, request, response head).
    pub timeout: Duration,
    /// At shutdown, how long queued events may still be delivered.
    pub shutdown_grace: Duration,
}

impl WebhookSettings {
    /// Defaults around the two settings that have none.
    pub fn new(url: impl Into<String>, secret: Secret) -> WebhookSettings {
        WebhookSettings {
            url: url.into(),
            secret,
            ca_file: None,
            max_attempts: 8,
            queue: 10_000,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Scale-out through NATS (`[cluster]`); see `crate::cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub nats_url: String,
    /// This node's name: unique in the cluster, a NATS subject token.
    pub node_id: String,
    /// How often the node announces itself.
    pub node_beat: Duration,
    /// A node unheard for this long is dead; its agents show disconnected until they dial
    /// another node.
    pub node_ttl: Duration,
    /// How long an operator request waits for its agent to be reachable (moving, or
    /// reconnecting after its node died) before `503 agent_offline`.
    pub open_wait: Duration,
    /// How long stream records and events are kept in JetStream.
    pub stream_max_age: Duration,
    /// The event stream's size limit in bytes (-1: none); the oldest events go first.
    pub events_max_bytes: i64,
    /// Keep JetStream data in memory instead of files (tests; a NATS restart loses it).
    pub memory_storage: bool,
}

impl ClusterSettings {
    pub fn new(nats_url: impl Into<String>, node_id: impl Into<String>) -> ClusterSettings {
        ClusterSettings {
            nats_url: nats_url.into(),
            node_id: node_id.into(),
            node_beat: Duration::from_millis(500),
            node_ttl: Duration::from_secs(2),
            open_wait: Duration::from_secs(10),
            stream_max_age: Duration::from_secs(24 * 3600),
            events_max_bytes: 1 << 30,
            memory_storage: false,
        }
    }
}

/// How a stopping node hands its agents over (SIGTERM, or the shutdown token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainSettings {
    /// Agents are told to `reconnect` spread over this time, so they do not all redial at once.
    pub spread: Duration,
    /// The longest a stop waits for agents to move and operator streams to end.
    pub timeout: Duration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        DrainSettings {
            spread: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent_listen: SocketAddr,
    pub operator_listen: SocketAddr,
    /// The agent token file ([`crate::tokens::FileTokenStore`]).
    pub agent_tokens: Option<PathBuf>,
    /// The agent token hook (`[agent_auth]`): asked about tokens the file does not hold.
    pub agent_auth_hook: Option<HookSettings>,
    /// Bearer tokens of the operator API. Never an agent token: start-up refuses an overlap.
    pub operator_tokens: Vec<Secret>,
    pub streams: StreamSettings,
    /// `heartbeat_interval_ms` sent in `welcome`; the agent's default when `None`.
    pub heartbeat_interval: Option<Duration>,
    pub log_format: LogFormat,
    /// Agent events POSTed to the backend; `None`: no webhooks.
    pub webhooks: Option<WebhookSettings>,
    /// Scale-out through NATS; `None`: one node on its own.
    pub cluster: Option<ClusterSettings>,
    /// TLS on the agent listener: (certificate chain, private key), PEM files. `None`: plain
    /// `ws://` (TLS terminated in front, or a private network).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub drain: DrainSettings,
}

impl Config {
    /// Defaults around the two settings that have none.
    pub fn new(agent_tokens: impl Into<PathBuf>, operator_tokens: Vec<Secret>) -> Config {
        Config {
            agent_listen: DEFAULT_AGENT_LISTEN.parse().expect("a valid literal"),
            operator_listen: DEFAULT_OPERATOR_LISTEN.parse().expect("a valid literal"),
            agent_tokens: Some(agent_tokens.into()),
            agent_auth_hook: None,
            operator_tokens,
            streams: StreamSettings::default(),
            heartbeat_interval: None,
            log_format: LogFormat::Text,
            webhooks: None,
            cluster: None,
            tls: None,
            drain: DrainSettings::default(),
        }
    }

    /// Build the value from flags (with their environment variables) and the TOML file.
    pub fn load(args: &Args) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let hook = agent_auth(args, &file.agent_auth)?;
        let agent_tokens = args.agent_tokens.clone().or(file.agent_tokens);
        if agent_tokens.is_none() && hook.is_none() {
            return Err(Error::Missing(
                "agent_tokens (--agent-tokens), or an agent token hook ([agent_auth] hook_url)",
            ));
        }
        let mut operator_tokens: Vec<Secret> = file
            .operator_tokens
            .into_iter()
            .map(|t| Secret::new(t.trim()))
            .collect();
        if let Some(path) = args
            .operator_tokens_file
            .as_ref()
            .or(file.operator_tokens_file.as_ref())
        {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            operator_tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new),
            );
        }
        let mut c = Config::new(PathBuf::new(), operator_tokens);
        c.agent_tokens = agent_tokens;
        c.agent_auth_hook = hook;
        if let Some(a) = args.agent_listen.or(file.agent_listen) {
            c.agent_listen = a;
        }
        if let Some(a) = args.operator_listen.or(file.operator_listen) {
            c.operator_listen = a;
        }
        let s = file.streams;
        let d = StreamSettings::default();
        c.streams = StreamSettings {
            buffer_bytes: s.buffer_bytes.unwrap_or(d.buffer_bytes),
            retention: s.retention_s.map_or(d.retention, Duration::from_secs),
            wait_output_bytes: s.wait_output_bytes.unwrap_or(d.wait_output_bytes),
            max_streams: s.max_streams.unwrap_or(d.max_streams),
            initial_credit: s.initial_credit.unwrap_or(d.initial_credit),
            unattended_cancel: match s.unattended_cancel_s {
                None => d.unattended_cancel,
                Some(0) => None,
                Some(n) => Some(Duration::from_secs(n)),
            },
        };
        c.heartbeat_interval = file.heartbeat_interval_ms.map(Duration::from_millis);
        c.log_format = match args.log_format.as_deref().or(file.log_format.as_deref()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "log_format `{other}`: use text or json"
                )));
            }
        };
        c.webhooks = webhooks(args, file.webhooks)?;
        c.cluster = cluster(args, file.cluster)?;
        c.tls = match (
            args.tls_cert.clone().or(file.tls.cert_file),
            args.tls_key.clone().or(file.tls.key_file),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Invalid(
                    "tls: give both the certificate (--tls-cert) and the key (--tls-key)".into(),
                ));
            }
        };
        let d = DrainSettings::default();
        c.drain = DrainSettings {
            spread: file.drain.spread_ms.map_or(d.spread, Duration::from_millis),
            timeout: file.drain.timeout_s.map_or(d.timeout, Duration::from_secs),
        };
        c.validate()?;
        Ok(c)
    }

    /// The checks no type expresses.
    pub fn validate(&self) -> Result<(), Error> {
        if self.operator_tokens.is_empty() {
            return Err(Error::Missing(
                "operator_tokens (config file, or --operator-tokens-file)",
            ));
        }
        if let Some(short) = self
            .operator_tokens
            .iter()
            .position(|t| t.expose().len() < 16)
        {
            return Err(Error::Invalid(format!(
                "operator token #{} is shorter than 16 characters",
                short + 1
            )));
        }
        if self.streams.buffer_bytes < 64 << 10 {
            return Err(Error::Invalid(
                "streams.buffer_bytes must be at least 65536".into(),
            ));
        }
        if self.streams.max_streams == 0 {
            return Err(Error::Invalid(
                "streams.max_streams must be at least 1".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            if c.node_id.is_empty()
                || !c
                    .node_id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(Error::Invalid(format!(
                    "cluster.node_id `{}`: use letters, digits, `-` and `_`",
                    c.node_id
                )));
            }
            if c.node_beat.is_zero() || c.node_ttl <= c.node_beat {
                return Err(Error::Invalid(
                    "cluster: node_beat_ms must be above 0 and below node_ttl_ms".into(),
                ));
            }
        }
        if let Some(w) = &self.webhooks {
            crate::webhooks::Target::parse(&w.url)
                .map_err(|e| Error::Invalid(format!("webhooks.url: {e}")))?;
            if w.secret.expose().len() < 16 {
                return Err(Error::Invalid(
                    "webhooks.secret_file: the secret is shorter than 16 characters".into(),
                ));
            }
            if w.max_attempts == 0 || w.queue == 0 {
                return Err(Error::Invalid(
                    "webhooks.max_attempts and webhooks.queue must be at least 1".into(),
                ));
            }
            if w.backoff_base.is_zero() || w.backoff_cap < w.backoff_base || w.timeout.is_zero() {
                return Err(Error::Invalid(
                    "webhooks: backoff_base_ms and timeout_ms must be above 0, backoff_cap_ms at least backoff_base_ms".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The agent token hook: the backend answers for tokens (see `crate::hook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    /// `http://` or `https://` URL the gateway POSTs `{"token_sha256"}` to.
    pub url: String,
    /// Extra CA certificates (PEM) for an `https` hook, beside the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer` to the hook.
    pub bearer: Option<Secret>,
    pub timeout: Duration,
    /// How long a known token is remembered (and so how long a revoked one still works).
    pub cache: Duration,
}

fn agent_auth(args: &Args, file: &FileAgentAuth) -> Result<Option<HookSettings>, Error> {
    let Some(url) = args.agent_auth_hook.clone().or(file.hook_url.clone()) else {
        return Ok(None);
    };
    let bearer = match &file.hook_token_file {
        None => None,
        Some(path) => Some(Secret::new(
            std::fs::read_to_string(path)
                .map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?
                .trim(),
        )),
    };
    Ok(Some(HookSettings {
        url,
        ca_file: file.hook_ca_file.clone(),
        bearer,
        timeout: file
            .hook_timeout_ms
            .map_or(Duration::from_secs(3), Duration::from_millis),
        cache: file
            .hook_cache_s
            .map_or(Duration::from_secs(60), Duration::from_secs),
    }))
}

/// `[cluster]` with the flags over it; no NATS URL anywhere: one node on its own.
fn cluster(args: &Args, file: FileCluster) -> Result<Option<ClusterSettings>, Error> {
    let Some(url) = args.nats_url.clone().or(file.nats_url) else {
        return Ok(None);
    };
    let node_id = match args.node_id.clone().or(file.node_id) {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().replace('.', "-"))
            .map_err(|_| {
                Error::Missing("cluster.node_id (--node-id): no host name to default to")
            })?,
    };
    let mut c = ClusterSettings::new(url, node_id);
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    c.node_beat = ms(file.node_beat_ms, c.node_beat);
    c.node_ttl = ms(file.node_ttl_ms, c.node_ttl);
    c.open_wait = ms(file.open_wait_ms, c.open_wait);
    c.stream_max_age = file
        .stream_max_age_s
        .map_or(c.stream_max_age, Duration::from_secs);
    c.events_max_bytes = file.events_max_bytes.unwrap_or(c.events_max_bytes);
    c.memory_storage = match file.storage.as_deref() {
        None | Some("file") => false,
        Some("memory") => true,
        Some(other) => {
            return Err(Error::Invalid(format!(
                "cluster.storage `{other}`: use file or memory"
            )));
        }
    };
    Ok(Some(c))
}

/// `[webhooks]` with the flags over it; no URL anywhere: no webhooks.
fn webhooks(args: &Args, file: FileWebhooks) -> Result<Option<WebhookSettings>, Error> {
    let Some(url) = args.webhook_url.clone().or(file.url) else {
        return Ok(None);
    };
    let path = args
        .webhook_secret_file
        .clone()
        .or(file.secret_file)
        .ok_or(Error::Missing(
            "webhooks.secret_file (--webhook-secret-file), needed with a webhook URL",
        ))?;
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let mut w = WebhookSettings::new(url, Secret::new(text.trim()));
    w.ca_file = file.ca_file;
    w.max_attempts = file.max_attempts.unwrap_or(w.max_attempts);
    w.queue = file.queue.unwrap_or(w.queue);
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    w.backoff_base = ms(file.backoff_base_ms, w.backoff_base);
    w.backoff_cap = ms(file.backoff_cap_ms, w.backoff_cap);
    w.timeout = ms(file.timeout_ms, w.timeout);
    w.shutdown_grace = ms(file.shutdown_grace_ms, w.shutdown_grace);
    Ok(Some(w))
}

/// The TOML file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    agent_listen: Option<SocketAddr>,
    operator_listen: Option<SocketAddr>,
    agent_tokens: Option<PathBuf>,
    #[serde(default)]
    operator_tokens: Vec<String>,
    operator_tokens_file: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    log_format: Option<String>,
    #[serde(default)]
    streams: FileStreams,
    #[serde(default)]
    webhooks: FileWebhooks,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    agent_auth: FileAgentAuth,
    #[serde(default)]
    drain: FileDrain,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgentAuth {
    hook_url: Option<String>,
    hook_ca_file: Option<PathBuf>,
    hook_token_file: Option<PathBuf>,
    hook_timeout_ms: Option<u64>,
    hook_cache_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    nats_url: Option<String>,
    node_id: Option<String>,
    node_beat_ms: Option<u64>,
    node_ttl_ms: Option<u64>,
    open_wait_ms: Option<u64>,
    stream_max_age_s: Option<u64>,
    events_max_bytes: Option<i64>,
    storage: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDrain {
    spread_ms: Option<u64>,
    timeout_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhooks {
    url: Option<String>,
    secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    max_attempts: Option<u32>,
    queue: Option<usize>,
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStreams {
    buffer_bytes: Option<usize>,
    retention_s: Option<u64>,
    wait_output_bytes: Option<usize>,
    max_streams: Option<usize>,
    initial_credit: Option<u64>,
    unattended_cancel_s: Option<u64>,
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("missing setting: {0}")]
    Missing(&'static str),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = write(
            r#"
agent_listen = "127.0.0.1:9000"
agent_tokens = "/from/file"
operator_tokens = ["0123456789abcdef-op"]
[streams]
retention_s = 7
"#,
        );
        let args = Args {
            config: Some(file.path().to_owned()),
            agent_tokens: Some("/from/flag".into()),
            ..Args::default()
        };
        let c = Config::load(&args).expect("loads");
        assert_eq!(c.agent_tokens, Some(PathBuf::from("/from/flag")));
        assert_eq!(c.agent_listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(
            c.operator_listen,
            DEFAULT_OPERATOR_LISTEN.parse().expect("addr")
        );
        assert_eq!(c.streams.retention, Duration::from_secs(7));
        assert_eq!(
            c.streams.buffer_bytes,
            StreamSettings::default().buffer_bytes
        );
        assert!(
            !format!("{c:?}").contains("0123456789abcdef-op"),
            "secrets are redacted"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let unknown = write("agent_tokens = \"/x\"\nbogus = 1\n");
        let args = Args {
            config: Some(unknown.path().to_owned()),
            ..Args::default()
        };
        assert!(matches!(Config::load(&args), Err(Error::Parse { .. })));

        let no_operator = write("agent_tokens = \"/x\"\n");
        let args = Args {
            config: Some(no_operator.path().to_owned()),
            ..Args::default()
        };
        assert!(matches!(Config::load(&args), Err(Error::Missing(_))));

        let short = write("agent_tokens = \"/x\"\noperator_tokens = [\"short\"]\n");
        let args = Args {
            config: Some(short.path().to_owned()),
            ..Args::default()
        };
        assert!(matches!(Config::load(&args), Err(Error::Invalid(_))));
    }

    #[test]
    fn webhooks_come_from_the_file_and_flags_with_the_secret_redacted() {
        let secret = write("whsec-secret-0123456789\n");
        let file = write(&format!(
            r#"
agent_tokens = "/x"
operator_tokens = ["0123456789abcdef-op"]
[webhooks]
url = "http://from-file/hooks"
secret_file = "{}"
max_attempts = 3
backoff_base_ms = 5
"#,
            secret.path().display()
        ));
        let args = Args {
            config: Some(file.path().to_owned()),
            webhook_url: Some("https://from-flag/hooks".into()),
            ..Args::default()
        };
        let c = Config::load(&args).expect("loads");
        let w = c.webhooks.as_ref().expect("webhooks on");
        assert_eq!(w.url, "https://from-flag/hooks");
        assert_eq!(w.secret.expose(), "whsec-secret-0123456789");
        assert_eq!(w.max_attempts, 3);
        assert_eq!(w.backoff_base, Duration::from_millis(5));
        assert_eq!(w.queue, WebhookSettings::new("", Secret::new("")).queue);
        assert!(
            !format!("{c:?}").contains("whsec-secret"),
            "the webhook secret is redacted"
        );

        // No URL: no webhooks, whatever else is set.
        let plain = write("agent_tokens = \"/x\"\noperator_tokens = [\"0123456789abcdef-op\"]\n");
        let args = Args {
            config: Some(plain.path().to_owned()),
            webhook_secret_file: Some(secret.path().to_owned()),
            ..Args::default()
        };
        assert!(Config::load(&args).expect("loads").webhooks.is_none());

        // A URL without a secret, a bad URL, a short secret: refused.
        let base = Args {
            config: Some(plain.path().to_owned()),
            ..Args::default()
        };
        let no_secret = Args {
            webhook_url: Some("http://x/".into()),
            ..base
        };
        assert!(matches!(Config::load(&no_secret), Err(Error::Missing(_))));
        let bad_url = Args {
            config: Some(plain.path().to_owned()),
            webhook_url: Some("ftp://x/".into()),
            webhook_secret_file: Some(secret.path().to_owned()),
            ..Args::default()
        };
        assert!(matches!(Config::load(&bad_url), Err(Error::Invalid(_))));
        let short = write("short\n");
        let short_secret = Args {
            config: Some(plain.path().to_owned()),
            webhook_url: Some("http://x/".into()),
            webhook_secret_file: Some(short.path().to_owned()),
            ..Args::default()
        };
        assert!(matches!(
            Config::load(&short_secret),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn a_token_hook_can_stand_in_for_the_token_file() {
        let hooked = write(
            "operator_tokens = [\"0123456789abcdef-op\"]\n[agent_auth]\nhook_url = \"https://backend.example/agent-token\"\nhook_cache_s = 5\n",
        );
        let c = Config::load(&Args {
            config: Some(hooked.path().to_owned()),
            ..Args::default()
        })
        .expect("loads");
        assert_eq!(c.agent_tokens, None);
        let hook = c.agent_auth_hook.expect("the hook");
        assert_eq!(hook.cache, Duration::from_secs(5));
        let neither = write("operator_tokens = [\"0123456789abcdef-op\"]\n");
        assert!(matches!(
            Config::load(&Args {
                config: Some(neither.path().to_owned()),
                ..Args::default()
            }),
            Err(Error::Missing(_))
        ));
    }
}
