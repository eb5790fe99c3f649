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
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            buffer_bytes: 4 << 20,
            retention: Duration::from_secs(300),
            wait_output_bytes: 1 << 20,
            max_streams: 10_000,
            initial_credit: 1 << 20,
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
    pub agent_tokens: PathBuf,
    /// Bearer tokens of the operator API. Never an agent token: start-up refuses an overlap.
    pub operator_tokens: Vec<Secret>,
    pub streams: StreamSettings,
    /// `heartbeat_interval_ms` sent in `welcome`; the agent's default when `None`.
    pub heartbeat_interval: Option<Duration>,
    pub log_format: LogFormat,
}

impl Config {
    /// Defaults around the two settings that have none.
    pub fn new(agent_tokens: impl Into<PathBuf>, operator_tokens: Vec<Secret>) -> Config {
        Config {
            agent_listen: DEFAULT_AGENT_LISTEN.parse().expect("a valid literal"),
            operator_listen: DEFAULT_OPERATOR_LISTEN.parse().expect("a valid literal"),
            agent_tokens: agent_tokens.into(),
            operator_tokens,
            streams: StreamSettings::default(),
            heartbeat_interval: None,
            log_format: LogFormat::Text,
        }
    }

    /// Build the value from flags (with their environment variables) and the TOML file.
    pub fn load(args: &Args) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let agent_tokens = args
            .agent_tokens
            .clone()
            .or(file.agent_tokens)
            .ok_or(Error::Missing("agent_tokens (--agent-tokens)"))?;
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
        let mut c = Config::new(agent_tokens, operator_tokens);
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
        Ok(())
    }
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStreams {
    buffer_bytes: Option<usize>,
    retention_s: Option<u64>,
    wait_output_bytes: Option<usize>,
    max_streams: Option<usize>,
    initial_credit: Option<u64>,
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
        assert_eq!(c.agent_tokens, PathBuf::from("/from/flag"));
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
}
