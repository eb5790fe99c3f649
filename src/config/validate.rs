//! One set of rules for merged settings, whatever source gave each value: they become a
//! [`Config`] or a list of every problem found.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::settings::{Names, Origin, Settings};
use super::{
    AuditConfig, ChannelConfig, Config, DEFAULT_LISTEN, DEFAULT_WS_PATH, ExecLimits, LocalTarget,
    LogFormat, PRLIMIT, Rlimits, SandboxConfig, Secret, StreamLimits, TokenConfig, derive_ws_url,
};

/// Settings overlaid from every source, ready to be checked.
pub(crate) struct Resolved {
    pub settings: Settings,
    /// Which source gave each setting (by id) its value.
    pub origins: std::collections::BTreeMap<String, Origin>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// `DTMA_BEARER_TOKEN` (environment only).
    pub bearer_token: Option<String>,
    /// `BACKEND_TO_DTMA_API_KEY` (environment only).
    pub backend_api_key: Option<String>,
}

/// A setting's value with its id, for problems that name it.
macro_rules! setting {
    ($s:ident . $field:ident) => {
        (&$s.$field, stringify!($field))
    };
}

impl Resolved {
    /// Apply every rule; all problems are returned together.
    pub(crate) fn validate(&self) -> Result<Config, Vec<String>> {
        let mut c = Checker {
            names: Names::new(),
            resolved: self,
            problems: Vec::new(),
        };
        let s = &self.settings;

        let bearer_token = c.secret(
            self.bearer_token.as_deref(),
            setting!(s.bearer_token_file),
            "dtma_bearer_token",
        );
        if bearer_token.is_none() {
            c.problems.push(
                "DTMA_BEARER_TOKEN is not set (nor DTMA_BEARER_TOKEN_FILE, nor \
                 $CREDENTIALS_DIRECTORY/dtma_bearer_token): the agent needs its token to start"
                    .into(),
            );
        }
        let backend_api_key = c.secret(
            self.backend_api_key.as_deref(),
            setting!(s.backend_api_key_file),
            "backend_to_dtma_api_key",
        );

        let connect_timeout = c.millis(setting!(s.connect_timeout_ms));
        let ping_interval = c.millis(setting!(s.ping_interval_ms));
        let heartbeat_interval = c.millis(setting!(s.heartbeat_interval_ms));
        let backoff_base = c.millis(setting!(s.backoff_base_ms));
        let backoff_cap = c.millis(setting!(s.backoff_cap_ms));
        let healthy_after = c.millis(setting!(s.healthy_after_ms));
        let orphan_grace = c.millis(setting!(s.orphan_grace_ms));
        let shutdown_grace = c.millis(setting!(s.shutdown_grace_ms));
        let default_timeout = c.millis(setting!(s.exec_default_timeout_ms));
        let max_timeout = c.millis(setting!(s.exec_max_timeout_ms));
        let kill_grace = c.millis(setting!(s.exec_kill_grace_ms));
        let max_frame_bytes = c.size(setting!(s.max_frame_bytes));
        let default_max_output = c.count(setting!(s.exec_max_output_bytes));
        let initial_credit = c.count(setting!(s.stream_initial_credit));
        let buffer_bytes = c.size(setting!(s.stream_buffer_bytes));
        let max_streams = c.size(setting!(s.max_streams));
        let http_max_concurrent = c.size(setting!(s.http_max_concurrent));
        let audit_max_bytes = c.count(setting!(s.audit_max_bytes));
        let mcp_liveness_interval = c.millis(setting!(s.mcp_liveness_interval_ms));
        if backoff_cap < backoff_base {
            let (cap, base) = (c.name("backoff_cap_ms"), c.name("backoff_base_ms"));
            c.problems.push(format!("{cap} must not be below {base}"));
        }
        if max_timeout < default_timeout {
            let max = c.name("exec_max_timeout_ms");
            let default = c.name("exec_default_timeout_ms");
            c.problems
                .push(format!("{max} must not be below {default}"));
        }

        let run_as =
            s.exec_user
                .as_ref()
                .and_then(|name| match nix::unistd::User::from_name(name) {
                    Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
                    _ => {
                        let label = c.name("exec_user");
                        c.problems.push(format!("{label}: no user named `{name}`"));
                        None
                    }
                });
        let rlimits = Rlimits {
            address_space_bytes: c.optional_count(setting!(s.exec_rlimit_as_bytes)),
            cpu_seconds: c.optional_count(setting!(s.exec_rlimit_cpu_secs)),
            open_files: c.optional_count(setting!(s.exec_rlimit_nofile)),
            processes: c.optional_count(setting!(s.exec_rlimit_nproc)),
        };
        if rlimits != Rlimits::default() && !Path::new(PRLIMIT).is_file() {
            c.problems.push(format!(
                "DTMA_EXEC_RLIMIT_*: resource limits need `{PRLIMIT}` (util-linux), which is missing"
            ));
        }

        let log_format = match s.log_format.as_deref() {
            Some("text") | None => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                let label = c.name("log_format");
                c.problems
                    .push(format!("{label} must be `text` or `json`, got `{other}`"));
                LogFormat::Text
            }
        };
        let sandbox_enforce = match s.sandbox.as_deref() {
            Some("enforce") | None => true,
            Some("off") => false,
            Some(other) => {
                let label = c.name("sandbox");
                c.problems
                    .push(format!("{label} must be `off` or `enforce`, got `{other}`"));
                false
            }
        };
        let mut sandbox_user = |id: &str, value: &Option<String>| {
            let name = value.clone().unwrap_or_default();
            let valid = !name.is_empty()
                && name != "root"
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
            if !valid {
                let label = c.name(id);
                c.problems.push(format!(
                    "{label} must name an unprivileged user (letters, digits, `._-`), got `{name}`"
                ));
            }
            name
        };
        let diagnostics_user =
            sandbox_user("sandbox_diagnostics_user", &s.sandbox_diagnostics_user);
        let operator_user = sandbox_user("sandbox_operator_user", &s.sandbox_operator_user);

        let audit = AuditConfig {
            path: match s.audit_log.as_deref() {
                Some("-") => None,
                Some(p) => Some(PathBuf::from(p)),
                None => AuditConfig::default().path,
            },
            max_bytes: audit_max_bytes,
            ..AuditConfig::default()
        };
        let extra_tokens = c.tokens();
        // The agent's own files, masked from sandboxed commands (neither read nor written).
        let mut protect: Vec<PathBuf> = [
            s.credentials_directory.clone(),
            s.bearer_token_file.clone(),
            s.backend_api_key_file.clone(),
            self.file.clone(),
            audit
                .path
                .as_deref()
                .and_then(Path::parent)
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf),
        ]
        .into_iter()
        .flatten()
        .collect();
        protect.extend(s.tokens.iter().filter_map(|t| t.token_file.clone()));
        let mut sandbox_paths = |id: &str, value: &Option<Vec<PathBuf>>| {
            let paths = value.clone().unwrap_or_default();
            for p in &paths {
                if !p.is_absolute() || p == Path::new("/") {
                    let label = c.name(id);
                    c.problems.push(format!(
                        "{label}: `{}` must be an absolute path other than `/`",
                        p.display()
                    ));
                }
            }
            paths
        };
        protect.extend(sandbox_paths("sandbox_hide", &s.sandbox_hide));
        let diagnostics_writable = sandbox_paths(
            "sandbox_diagnostics_writable",
            &s.sandbox_diagnostics_writable,
        );
        let operator_writable =
            sandbox_paths("sandbox_operator_writable", &s.sandbox_operator_writable);
        let sandbox = SandboxConfig {
            diagnostics_writable,
            operator_writable,
            enforce: sandbox_enforce,
            diagnostics_user,
            operator_user,
            accept_no_landlock: s.sandbox_accept_no_landlock.unwrap_or(false),
            protect,
            ..SandboxConfig::default()
        };
        if let Err(e) = crate::policy::Policy::new(&s.policy) {
            c.problems.push(format!("[policy]: {e}"));
        }

        let docker_socket = match s.docker_host.as_deref() {
            Some(h) if h.starts_with("unix://") => h.to_owned(),
            other => {
                let label = c.name("docker_host");
                c.problems.push(format!(
                    "{label} must be a unix:// socket for this agent, got `{}`",
                    other.unwrap_or_default()
                ));
                String::new()
            }
        };

        let listen = listen(s);

        let url = c.channel_url();
        if let Some(ca) = &s.ca_file
            && !ca.is_file()
        {
            let label = c.name("ca_file");
            c.problems
                .push(format!("{label} `{}` is not a readable file", ca.display()));
        }
        let agent_id = s
            .agent_id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(hostname)
            .unwrap_or_else(|| "dtma".to_owned());

        let problems = c.problems;
        let Some(bearer_token) = bearer_token.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        let secrets: Vec<Secret> = [Some(bearer_token.clone()), backend_api_key.clone()]
            .into_iter()
            .flatten()
            .chain(extra_tokens.iter().map(|t| t.token.clone()))
            .collect();
        let channel = url.map(|url| ChannelConfig {
            url,
            ca_file: s.ca_file.clone(),
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
        Ok(Config {
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
                sandbox,
                ..ExecLimits::default()
            },
            streams: StreamLimits {
                initial_credit,
                buffer_bytes,
                max_streams,
                ..StreamLimits::default()
            },
            secrets,
            shutdown_grace,
            extra_tokens,
            policy: s.policy.clone(),
            audit,
            docker_socket,
            mcp_network: s.mcp_network.clone().filter(|n| !n.is_empty()),
            mcp_liveness_interval,
            metrics_public: s.metrics_public.unwrap_or(false),
            log_format,
        })
    }

    /// The local client's view: the agent's address (loopback for an unspecified one) and the
    /// token, the bearer token first, then the backend key, then `fallback` (a file).
    pub(crate) fn local_target(&self, fallback: Option<&Path>) -> Result<LocalTarget, Vec<String>> {
        let mut c = Checker {
            names: Names::new(),
            resolved: self,
            problems: Vec::new(),
        };
        let s = &self.settings;
        let token = c
            .secret(
                self.bearer_token.as_deref(),
                setting!(s.bearer_token_file),
                "dtma_bearer_token",
            )
            .or_else(|| {
                c.secret(
                    self.backend_api_key.as_deref(),
                    setting!(s.backend_api_key_file),
                    "backend_to_dtma_api_key",
                )
            })
            .or_else(|| {
                // Only when nothing was configured: a configured source that fails is the
                // problem to report, not a reason to look elsewhere.
                if !c.problems.is_empty() {
                    return None;
                }
                let path = fallback?;
                match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
                    Ok(_) => {
                        c.problems.push(format!("`{}` is empty", path.display()));
                        None
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    // The package's /etc/dtma is 0750 root:dtma: an unreadable token is not
                    // "no token".
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        c.problems.push(format!(
                            "cannot read `{}`: {e} (root and members of the `dtma` group may)",
                            path.display()
                        ));
                        None
                    }
                    Err(e) => {
                        c.problems
                            .push(format!("cannot read `{}`: {e}", path.display()));
                        None
                    }
                }
            });
        let Some(token) = token else {
            let mut problems = c.problems;
            problems.push(format!(
                "no token: set DTMA_BEARER_TOKEN (or DTMA_BEARER_TOKEN_FILE, or \
                 $CREDENTIALS_DIRECTORY/dtma_bearer_token){}",
                fallback.map_or(String::new(), |p| format!(
                    ", or put it in `{}`",
                    p.display()
                ))
            ));
            return Err(problems);
        };
        let mut addr = listen(s);
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(LocalTarget { addr, token })
    }

    /// The effective configuration as JSON, secrets redacted: every setting by its config-file
    /// key, with the values in effect for `agent_id`, `ws_url` (derived from `api_base_url`)
    /// and `listen` (after `PORT`).
    pub(crate) fn to_json(&self, config: &Config) -> serde_json::Value {
        const REDACTED: &str = "[redacted]";
        let mut map = match serde_json::to_value(&self.settings) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let redacted = |set: bool| set.then_some(REDACTED);
        let policy = &self.settings.policy;
        let effective = serde_json::json!({
            "config": self.file.as_ref().map(|p| p.display().to_string()),
            "agent_id": config.agent_id,
            "ws_url": config.channel.as_ref().map(|c| &c.url),
            "listen": config.listen.to_string(),
            "bearer_token": REDACTED,
            "backend_api_key": redacted(config.backend_api_key.is_some()),
            "tokens": config.extra_tokens.iter().map(|t| serde_json::json!({
                "name": t.name,
                "role": t.role,
                "token": REDACTED,
            })).collect::<Vec<_>>(),
            "policy": {
                "extra_deny": policy.extra_deny.iter().map(|p| serde_json::json!({
                    "name": p.name,
                    "pattern": p.pattern,
                })).collect::<Vec<_>>(),
            },
        });
        if let serde_json::Value::Object(effective) = effective {
            map.extend(effective);
        }
        serde_json::Value::Object(map)
    }
}

/// Collects problems, naming each setting as the source that gave it does.
struct Checker<'a> {
    names: Names,
    resolved: &'a Resolved,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn name(&self, id: &str) -> String {
        let r = self.resolved;
        self.names
            .label(id, r.origins.get(id).copied(), r.file.as_deref())
    }

    /// A whole number above 0. A missing value (no default) is a problem too.
    fn positive(&mut self, (value, id): (&Option<u64>, &str)) -> Option<u64> {
        match *value {
            Some(v) if v > 0 => Some(v),
            Some(v) => {
                let label = self.name(id);
                self.problems
                    .push(format!("{label} must be a whole number above 0, got {v}"));
                None
            }
            None => {
                let label = self.name(id);
                self.problems.push(format!("{label} is not set"));
                None
            }
        }
    }

    fn millis(&mut self, setting: (&Option<u64>, &str)) -> Duration {
        Duration::from_millis(self.positive(setting).unwrap_or_default())
    }

    fn count(&mut self, setting: (&Option<u64>, &str)) -> u64 {
        self.positive(setting).unwrap_or_default()
    }

    /// A count held in memory: above `usize::MAX` is no limit at all.
    fn size(&mut self, setting: (&Option<u64>, &str)) -> usize {
        usize::try_from(self.count(setting)).unwrap_or(usize::MAX)
    }

    /// Unset is fine; a value must be above 0.
    fn optional_count(&mut self, (value, id): (&Option<u64>, &str)) -> Option<u64> {
        value.as_ref()?;
        self.positive((value, id))
    }

    /// A secret from its environment variable, else its file setting, else the systemd
    /// credentials directory. Surrounding whitespace is trimmed.
    fn secret(
        &mut self,
        value: Option<&str>,
        (path, id): (&Option<PathBuf>, &str),
        credential: &str,
    ) -> Option<Secret> {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            return Some(Secret::new(v));
        }
        let (path, label) = match path {
            Some(path) => (path.clone(), self.name(id)),
            None => {
                let dir = self.resolved.settings.credentials_directory.as_ref()?;
                let path = dir.join(credential);
                if !path.is_file() {
                    return None;
                }
                (path, self.name("credentials_directory"))
            }
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
            Ok(_) => {
                self.problems
                    .push(format!("{label}: `{}` is empty", path.display()));
                None
            }
            Err(e) => {
                self.problems
                    .push(format!("{label}: cannot read `{}`: {e}", path.display()));
                None
            }
        }
    }

    /// The channel URL, or `None` (local-only) when neither a URL nor a base URL is set.
    fn channel_url(&mut self) -> Option<String> {
        let s = &self.resolved.settings;
        if let Some(url) = &s.ws_url {
            if url.starts_with("ws://") || url.starts_with("wss://") {
                return Some(url.clone());
            }
            let label = self.name("ws_url");
            self.problems.push(format!(
                "{label} must start with ws:// or wss://, got `{url}`"
            ));
            return None;
        }
        let base = s.api_base_url.as_ref()?;
        let path = s.ws_path.as_deref().unwrap_or(DEFAULT_WS_PATH);
        match derive_ws_url(base, path) {
            Ok(url) => Some(url),
            Err(e) => {
                let label = self.name("api_base_url");
                self.problems.push(format!("{label}: {e}"));
                None
            }
        }
    }

    /// `[[tokens]]`: each with exactly one of `token` and `token_file`, at least 16 characters.
    fn tokens(&mut self) -> Vec<TokenConfig> {
        let mut tokens = Vec::new();
        for t in &self.resolved.settings.tokens {
            let token = match (&t.token, &t.token_file) {
                (Some(v), None) => Some(v.trim().to_owned()),
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(v) => Some(v.trim().to_owned()),
                    Err(e) => {
                        self.problems.push(format!(
                            "token `{}`: cannot read `{}`: {e}",
                            t.name,
                            path.display()
                        ));
                        None
                    }
                },
                _ => {
                    self.problems.push(format!(
                        "token `{}`: give exactly one of `token` and `token_file`",
                        t.name
                    ));
                    None
                }
            };
            match token {
                Some(v) if v.len() >= 16 => tokens.push(TokenConfig {
                    name: t.name.clone(),
                    role: t.role,
                    token: Secret::new(v),
                }),
                Some(_) => self
                    .problems
                    .push(format!("token `{}` is shorter than 16 characters", t.name)),
                None => {}
            }
        }
        tokens
    }
}

/// The local API's address: `listen` with `port` over its port.
fn listen(s: &Settings) -> SocketAddr {
    let mut listen = s.listen.unwrap_or_else(|| {
        DEFAULT_LISTEN
            .parse::<SocketAddr>()
            .expect("the default address parses")
    });
    if let Some(port) = s.port {
        listen.set_port(port);
    }
    listen
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}
