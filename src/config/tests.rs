use std::os::unix::ffi::OsStringExt;

use super::*;

fn sources(args: &[&str], env: &[(&str, &str)]) -> Sources {
    Sources {
        args: args.iter().map(OsString::from).collect(),
        env: env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect(),
    }
}

fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    match Config::load(&sources(args, env))? {
        Action::Run(config) => Ok(*config),
        Action::Print(text) => panic!("expected a config, got output: {text}"),
    }
}

/// A directory removed when the test ends.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(_name: &str) -> Self {
        TempDir(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

#[test]
fn derives_ws_url_from_api_base() {
    let cfg = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            (
                "AGENTOPIA_API_BASE_URL",
                "https://api.example.com/functions/v1/",
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        cfg.channel.unwrap().url,
        "wss://api.example.com/functions/v1/dtma/connect"
    );
    assert_eq!(cfg.listen, "127.0.0.1:30000".parse().unwrap());
}

#[test]
fn flags_beat_env_and_port_overrides_only_the_port() {
    let cfg = load(
        &["--ws-url", "ws://127.0.0.1:9/x", "--listen=0.0.0.0:1"],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            ("DTMA_WS_URL", "ws://elsewhere/"),
            ("DTMA_LISTEN", "127.0.0.1:5"),
            ("PORT", "4242"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.channel.unwrap().url, "ws://127.0.0.1:9/x");
    assert_eq!(cfg.listen, "0.0.0.0:4242".parse().unwrap());
}

#[test]
fn local_only_without_base_url() {
    let cfg = load(&[], &[("DTMA_BEARER_TOKEN", "t")]).unwrap();
    assert!(cfg.channel.is_none());
}

#[test]
fn all_problems_are_reported_together() {
    let err = load(
        &["--bogus"],
        &[
            ("AGENTOPIA_API_BASE_URL", "ftp://x"),
            ("PORT", "99999"),
            ("DTMA_PING_INTERVAL_MS", "soon"),
        ],
    )
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
fn every_variable_is_read_by_its_own_name() {
    let cfg = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            ("DTMA_WS_URL", "ws://h/"),
            ("DTMA_AGENT_ID", "a1"),
            ("DTMA_CONNECT_TIMEOUT_MS", "1"),
            ("DTMA_PING_INTERVAL_MS", "2"),
            ("DTMA_HEARTBEAT_INTERVAL_MS", "3"),
            ("DTMA_BACKOFF_BASE_MS", "4"),
            ("DTMA_BACKOFF_CAP_MS", "5"),
            ("DTMA_HEALTHY_AFTER_MS", "6"),
            ("DTMA_ORPHAN_GRACE_MS", "7"),
            ("DTMA_MAX_FRAME_BYTES", "8"),
            ("DTMA_EXEC_DEFAULT_TIMEOUT_MS", "9"),
            ("DTMA_EXEC_MAX_TIMEOUT_MS", "10"),
            ("DTMA_EXEC_KILL_GRACE_MS", "11"),
            ("DTMA_EXEC_MAX_OUTPUT_BYTES", "12"),
            ("DTMA_STREAM_INITIAL_CREDIT", "13"),
            ("DTMA_STREAM_BUFFER_BYTES", "14"),
            ("DTMA_MAX_STREAMS", "15"),
            ("DTMA_HTTP_MAX_CONCURRENT", "16"),
            ("DTMA_SHUTDOWN_GRACE_MS", "17"),
            ("DTMA_AUDIT_LOG", "-"),
            ("DTMA_AUDIT_MAX_BYTES", "18"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("DTMA_METRICS_PUBLIC", "true"),
            ("DTMA_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    assert!(cfg.metrics_public);
    assert_eq!(cfg.log_format, LogFormat::Json);
    let ch = cfg.channel.unwrap();
    let ms = Duration::from_millis;
    assert_eq!(cfg.agent_id, "a1");
    assert_eq!(
        [
            ch.connect_timeout,
            ch.ping_interval,
            ch.heartbeat_interval,
            ch.backoff_base,
            ch.backoff_cap,
            ch.healthy_after,
            ch.orphan_grace,
        ],
        [ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(7)]
    );
    assert_eq!(ch.max_frame_bytes, 8);
    assert_eq!(
        [
            cfg.exec.default_timeout,
            cfg.exec.max_timeout,
            cfg.exec.kill_grace,
        ],
        [ms(9), ms(10), ms(11)]
    );
    assert_eq!(cfg.exec.default_max_output, 12);
    assert_eq!(cfg.streams.initial_credit, 13);
    assert_eq!(cfg.streams.buffer_bytes, 14);
    assert_eq!(cfg.streams.max_streams, 15);
    assert_eq!(cfg.exec.http_max_concurrent, 16);
    assert_eq!(cfg.shutdown_grace, ms(17));
    assert_eq!(cfg.audit.path, None, "`-` is the agent's own log");
    assert_eq!(cfg.audit.max_bytes, 18);
    assert_eq!(cfg.docker_socket, "unix:///run/docker.sock");
}

#[test]
fn defaults_are_the_output_types_defaults() {
    let cfg = load(&["--ws-url", "ws://h/"], &[("DTMA_BEARER_TOKEN", "t")]).unwrap();
    let ch = cfg.channel.unwrap();
    let want = ChannelConfig::with_url("ws://h/");
    assert_eq!(
        format!("{ch:?}"),
        format!("{want:?}"),
        "the clap defaults and ChannelConfig::with_url disagree"
    );
    assert_eq!(
        format!("{:?}", cfg.exec),
        format!("{:?}", ExecLimits::default())
    );
    assert_eq!(
        format!("{:?}", cfg.streams),
        format!("{:?}", StreamLimits::default())
    );
    assert_eq!(
        format!("{:?}", cfg.audit),
        format!("{:?}", AuditConfig::default())
    );
    assert_eq!(cfg.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(cfg.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(cfg.docker_socket, DEFAULT_DOCKER_SOCKET);
    assert!(cfg.backend_api_key.is_none());
    assert!(!cfg.metrics_public, "/metrics needs a token by default");
    assert_eq!(cfg.log_format, LogFormat::Text);
}

#[test]
fn a_log_format_other_than_text_or_json_is_a_problem_naming_it() {
    let e = load(
        &[],
        &[("DTMA_BEARER_TOKEN", "t"), ("DTMA_LOG_FORMAT", "yaml")],
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(e.problems[0].contains("DTMA_LOG_FORMAT"), "{e}");
    assert!(e.problems[0].contains("`yaml`"), "{e}");
    let e = load(&["--log-format=xml"], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert!(e.problems[0].contains("--log-format"), "{e}");
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let cfg = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            ("DTMA_PING_INTERVAL_MS", ""),
            ("DTMA_WS_URL", "ws://h/"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.channel.unwrap().ping_interval, Duration::from_secs(15));
}

#[test]
fn odd_variables_are_checked() {
    let err = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            ("DOCKER_HOST", "tcp://10.0.0.1:2375"),
            ("DTMA_EXEC_USER", "no-such-user-dtma"),
            ("DTMA_EXEC_RLIMIT_NOFILE", "0"),
            ("DTMA_BACKOFF_BASE_MS", "900"),
            ("DTMA_BACKOFF_CAP_MS", "800"),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "DOCKER_HOST must be a unix:// socket",
        "DTMA_EXEC_USER: no user named `no-such-user-dtma`",
        "DTMA_EXEC_RLIMIT_NOFILE must be a whole number above 0",
        "DTMA_BACKOFF_CAP_MS must not be below DTMA_BACKOFF_BASE_MS",
    ] {
        assert!(text.contains(needle), "missing {needle}: {text}");
    }
    assert_eq!(err.problems.len(), 4, "{text}");
}

#[test]
fn secrets_are_not_taken_from_flags() {
    let err = load(&["--bearer-token", "visible-in-ps"], &[]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("DTMA_BEARER_TOKEN is read from the environment only"),
        "{text}"
    );
    assert!(!text.contains("visible-in-ps"), "{text}");
}

#[test]
fn a_bad_secret_value_is_not_echoed() {
    let mut src = sources(&[], &[]);
    src.env.insert(
        OsString::from("DTMA_BEARER_TOKEN"),
        OsString::from_vec(b"hunter\xff2".to_vec()),
    );
    let err = Config::load(&src).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("DTMA_BEARER_TOKEN is not valid UTF-8"),
        "{text}"
    );
    assert!(!text.contains("hunter"), "{text}");
}

#[test]
fn non_utf8_variables_nobody_reads_are_ignored() {
    let mut src = sources(&[], &[("DTMA_BEARER_TOKEN", "t")]);
    src.env.insert(
        OsString::from_vec(b"JUNK\xff".to_vec()),
        OsString::from_vec(b"\xfe\xff".to_vec()),
    );
    src.env.insert(
        OsString::from("LANGUAGE"),
        OsString::from_vec(b"\xfe".to_vec()),
    );
    assert!(matches!(Config::load(&src), Ok(Action::Run(_))));
    src.env.insert(
        OsString::from("DTMA_LISTEN"),
        OsString::from_vec(b"127.0.0.1:\xff".to_vec()),
    );
    let err = Config::load(&src).unwrap_err();
    assert_eq!(err.problems, ["DTMA_LISTEN is not valid UTF-8"]);
}

#[test]
fn token_from_file_and_credentials_directory() {
    let dir = TempDir::new("cfg-creds");
    dir.write("dtma_bearer_token", "from-creds\n");
    let creds = dir.0.path().to_string_lossy().into_owned();
    let cfg = load(&[], &[("CREDENTIALS_DIRECTORY", &creds)]).unwrap();
    assert_eq!(cfg.bearer_token.expose(), "from-creds");
    let file = dir.write("tok", "  from-file\n");
    let cfg = load(&[], &[("DTMA_BEARER_TOKEN_FILE", &file)]).unwrap();
    assert_eq!(cfg.bearer_token.expose(), "from-file");
    // The variable beats the file, the file beats the credentials directory.
    let cfg = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "from-env"),
            ("DTMA_BEARER_TOKEN_FILE", &file),
        ],
    )
    .unwrap();
    assert_eq!(cfg.bearer_token.expose(), "from-env");
    let cfg = load(
        &["--bearer-token-file", &file],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    )
    .unwrap();
    assert_eq!(cfg.bearer_token.expose(), "from-file");
    let empty = dir.write("empty", " \n");
    let err = load(&[], &[("DTMA_BEARER_TOKEN_FILE", &empty)]).unwrap_err();
    assert!(
        err.to_string().contains("DTMA_BEARER_TOKEN_FILE: `"),
        "{err}"
    );
}

#[test]
fn config_file_is_below_env() {
    let dir = TempDir::new("cfg-file");
    let path = dir.write(
        "dtma.toml",
        "ws_url = \"ws://file/\"\nlisten = \"127.0.0.1:7\"\nmax_streams = 3\n\
         audit_log = \"-\"\nexec_rlimit_cpu_secs = 5\n",
    );
    let cfg = load(
        &["--config", &path],
        &[("DTMA_BEARER_TOKEN", "t"), ("DTMA_LISTEN", "127.0.0.1:8")],
    )
    .unwrap();
    assert_eq!(cfg.channel.unwrap().url, "ws://file/");
    assert_eq!(cfg.listen.port(), 8);
    assert_eq!(cfg.streams.max_streams, 3);
    assert_eq!(cfg.audit.path, None);
    // The file is named by DTMA_CONFIG as well, and a flag beats both.
    let cfg = load(
        &["--max-streams", "4"],
        &[("DTMA_BEARER_TOKEN", "t"), ("DTMA_CONFIG", &path)],
    )
    .unwrap();
    assert_eq!(cfg.streams.max_streams, 4);
    assert_eq!(cfg.listen.port(), 7);

    dir.write("dtma.toml", "nonsense_key = 1\n");
    let err = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert!(err.to_string().contains("nonsense_key"), "{err}");
    // A secret value has no place in a file that is usually world-readable.
    dir.write("dtma.toml", "bearer_token = \"in-the-file\"\n");
    let err = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert!(err.to_string().contains("bearer_token"), "{err}");
}

/// The file used to skip the `> 0` checks the environment got: a zero interval reached
/// `tokio::time::interval` and panicked the channel task.
#[test]
fn file_values_meet_the_same_rules_as_variables() {
    let dir = TempDir::new("cfg-rules");
    let path = dir.write(
        "dtma.toml",
        "ping_interval_ms = 0\nheartbeat_interval_ms = 0\nmax_streams = 0\n\
         exec_rlimit_nproc = 0\ndocker_host = \"tcp://x\"\n",
    );
    let err = load(
        &["--config", &path, "--ws-url", "ws://h/"],
        &[("DTMA_BEARER_TOKEN", "t")],
    )
    .unwrap_err();
    let text = err.to_string();
    for key in [
        "ping_interval_ms",
        "heartbeat_interval_ms",
        "max_streams",
        "exec_rlimit_nproc",
        "docker_host",
    ] {
        assert!(
            text.contains(&format!("`{key}` in `{path}`")),
            "missing {key}: {text}"
        );
    }
    assert_eq!(err.problems.len(), 5, "{text}");
    // The same rule through a flag names the flag.
    let err = load(&["--ping-interval-ms", "0"], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert_eq!(
        err.problems,
        ["--ping-interval-ms must be a whole number above 0, got 0"]
    );
}

#[test]
fn tokens_roles_and_policy_come_from_the_file() {
    let dir = TempDir::new("cfg-tok");
    let tok = dir.write("oncall.token", "oncall-token-0123456789\n");
    let path = dir.write(
        "dtma.toml",
        &format!(
            "[[tokens]]\nname = \"oncall\"\nrole = \"diagnostics\"\ntoken_file = \"{tok}\"\n\n\
             [[tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"ops-token-0123456789\"\n\n\
             [policy]\noperator_allow = [\"systemctl\"]\n\
             extra_deny = [{{ name = \"no_metadata\", pattern = \"169\\\\.254\" }}]\n"
        ),
    );
    let cfg = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap();
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
    let d = policy.check("curl http://169.254.169.254/");
    assert_eq!((d.allowed, d.rule.as_str()), (false, "no_metadata"));
    // Accepted for old files, ignored (the agent warns at start).
    assert_eq!(
        cfg.policy.operator_allow,
        Some(vec!["systemctl".to_string()])
    );

    dir.write(
        "dtma.toml",
        "[[tokens]]\nname = \"x\"\nrole = \"root\"\ntoken = \"short\"\n",
    );
    let err = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert!(err.to_string().contains("root"), "{err}");
    dir.write(
        "dtma.toml",
        "[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"short\"\n",
    );
    let err = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert_eq!(err.problems, ["token `x` is shorter than 16 characters"]);
    dir.write(
        "dtma.toml",
        "[policy]\nextra_deny = [{ name = \"bad\", pattern = \"(\" }]\n",
    );
    let err = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap_err();
    assert!(err.to_string().contains("bad"), "{err}");
}

#[test]
fn print_config_shows_effective_values_and_redacts_secrets() {
    let dir = TempDir::new("cfg-print");
    let path = dir.write(
        "dtma.toml",
        "max_streams = 3\n[[tokens]]\nname = \"ops\"\nrole = \"operator\"\n\
         token = \"ops-token-0123456789\"\n",
    );
    let out = Config::load(&sources(
        &["--print-config", "--config", &path],
        &[
            ("DTMA_BEARER_TOKEN", "bearer-secret"),
            ("BACKEND_TO_DTMA_API_KEY", "key-secret"),
            ("AGENTOPIA_API_BASE_URL", "https://api.example.com"),
            ("PORT", "4242"),
        ],
    ))
    .unwrap();
    let Action::Print(text) = out else {
        panic!("--print-config prints")
    };
    for secret in ["bearer-secret", "key-secret", "ops-token-0123456789"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["ws_url"], "wss://api.example.com/dtma/connect");
    assert_eq!(json["listen"], "127.0.0.1:4242");
    assert_eq!(json["max_streams"], 3);
    assert_eq!(json["ping_interval_ms"], 15000);
    assert_eq!(json["bearer_token"], "[redacted]");
    assert_eq!(json["backend_api_key"], "[redacted]");
    assert_eq!(json["tokens"][0]["name"], "ops");
    assert_eq!(json["tokens"][0]["token"], "[redacted]");
    assert_eq!(json["config"], path.as_str());
}

#[test]
fn help_and_version_are_printed() {
    let Ok(Action::Print(help)) = Config::load(&sources(&["--help"], &[])) else {
        panic!("--help prints")
    };
    assert!(help.contains("--ping-interval-ms"), "{help}");
    assert!(help.contains("DTMA_BEARER_TOKEN"), "{help}");
    let Ok(Action::Print(version)) = Config::load(&sources(&["-V"], &[])) else {
        panic!("-V prints")
    };
    assert_eq!(version.trim(), format!("dtma {}", crate::long_version()));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let cfg = Config::for_channel("super-secret-token", None);
    assert!(!format!("{cfg:?}").contains("super-secret-token"));
}

#[test]
fn derive_ws_url_rejects_what_it_cannot_map() {
    assert_eq!(
        derive_ws_url("http://h:1/base", "/x").unwrap(),
        "ws://h:1/base/x"
    );
    assert!(derive_ws_url("https://h/?q=1", "x").is_err());
    assert!(derive_ws_url("h", "x").is_err());
}

#[test]
fn sandbox_paths_come_as_lists_from_env_and_file_and_must_be_absolute() {
    let cfg = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            (
                "DTMA_SANDBOX_HIDE",
                "/var/run/docker.sock,/run/dbus/system_bus_socket",
            ),
            ("DTMA_SANDBOX_OPERATOR_WRITABLE", "/srv/mcp"),
        ],
    )
    .unwrap();
    let sandbox = &cfg.exec.sandbox;
    assert!(sandbox.enforce);
    assert!(sandbox.protect.contains(&"/var/run/docker.sock".into()));
    assert!(
        sandbox
            .protect
            .contains(&"/run/dbus/system_bus_socket".into())
    );
    assert_eq!(
        sandbox.operator_writable,
        vec![std::path::PathBuf::from("/srv/mcp")]
    );
    assert!(sandbox.diagnostics_writable.is_empty());

    let dir = TempDir::new("sandbox-lists");
    let path = dir.write(
        "dtma.toml",
        "sandbox_diagnostics_writable = [\"/srv/scratch\"]\n",
    );
    let cfg = load(&["--config", &path], &[("DTMA_BEARER_TOKEN", "t")]).unwrap();
    assert_eq!(
        cfg.exec.sandbox.diagnostics_writable,
        vec![std::path::PathBuf::from("/srv/scratch")]
    );

    let err = load(
        &[],
        &[
            ("DTMA_BEARER_TOKEN", "t"),
            ("DTMA_SANDBOX_HIDE", "relative/path,/"),
        ],
    )
    .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("DTMA_SANDBOX_HIDE"), "{err}");
}
