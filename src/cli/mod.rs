//! The command line: which form was asked for, and the local client.
//!
//! - `dtma [SETTINGS]`, `dtma run [SETTINGS]`: the agent ([`Invocation::Agent`]); its flags,
//!   `--print-config`, `--help` and `--version` are the configuration's (`crate::config`).
//! - `dtma check-config [SETTINGS]`: the effective configuration, secrets redacted, or every
//!   problem (exit 64).
//! - `dtma exec|status|logs|mcp`: the local client, an adapter over HTTP only: it finds the
//!   agent's address and token as the agent itself reads them (plus the droplet's
//!   `/etc/dtma/dtma.env` and `/etc/dtma/bearer_token`), asks the local API, and shows the
//!   answer. It calls no service: what the agent does for it is exactly what it does for curl.
//! - `dtma completions SHELL` (hidden): completion scripts for the package.
//!
//! - [`args`]: the client's clap types and each subcommand's examples.
//! - [`client`]: the HTTP client, server-sent events, [`client::Failure`] and its exit codes.
//! - [`commands`]: each subcommand's request and how its answer is shown.

pub mod args;
pub mod client;
pub mod commands;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{Command, FromArgMatches, Subcommand};

use crate::config::{Action, Config, Sources, settings};
use args::{CHECK_CONFIG_HELP, ClientCommand, McpCommand, RUN_HELP, Target};
use client::{Client, Failure};

/// What `main` does next.
pub enum Invocation {
    /// Run the agent with this configuration.
    Agent(Box<Config>),
    /// Done (help, a check, a client command): exit with this code.
    Exit(u8),
}

/// Names that, as the first argument, select a client subcommand (`help` included: its clap
/// tree knows every form).
const CLIENT: [&str; 6] = ["exec", "status", "logs", "mcp", "completions", "help"];

/// Decide the form from the arguments, and do everything but running the agent.
pub fn dispatch(sources: Sources) -> Invocation {
    let first = sources
        .args
        .first()
        .and_then(|a| a.to_str())
        .map(str::to_owned);
    match first.as_deref() {
        Some(sub @ ("run" | "check-config")) => {
            let rest = Sources {
                args: sources.args[1..].to_vec(),
                env: sources.env,
            };
            if wants_help(&rest.args) {
                return print_help(Some(sub));
            }
            if sub == "run" {
                agent(&rest)
            } else {
                check_config(&rest)
            }
        }
        // `dtma help [run|check-config]`: the agent's forms, with their variables.
        Some("help") if sources.args.len() == 1 => print_help(None),
        Some("help")
            if sources.args.len() == 2
                && matches!(sources.args[1].to_str(), Some("run" | "check-config")) =>
        {
            print_help(sources.args[1].to_str())
        }
        Some(name) if CLIENT.contains(&name) => Invocation::Exit(client(&sources)),
        _ if wants_help(&sources.args) => print_help(None),
        _ => agent(&sources),
    }
}

/// Every form as one clap tree: for `--help`, `dtma help ...`, completions, and parsing the
/// client's subcommands. The agent's own arguments are the configuration's (`settings`).
pub fn command() -> Command {
    let agent = settings::command()
        .mut_args(|a| a.hide_env_values(true))
        .max_term_width(100);
    let agent_args: Vec<clap::Arg> = agent.get_arguments().cloned().collect();
    let settings_help = agent
        .get_after_help()
        .map(ToString::to_string)
        .unwrap_or_default();
    let run = Command::new("run")
        .about("Run the agent (the default form: `dtma [SETTINGS]` is the same)")
        .args(agent_args.iter().cloned())
        .after_help(format!("{settings_help}\n\n{RUN_HELP}"));
    let check = Command::new("check-config")
        .about(
            "Check the configuration: print it (JSON, secrets redacted), or list every problem \
             and exit 64",
        )
        .args(
            agent_args
                .iter()
                .filter(|a| a.get_id() != "print_config")
                .cloned(),
        )
        .after_help(CHECK_CONFIG_HELP);
    let top = agent
        .after_help(format!("{settings_help}\n\n{RUN_HELP}"))
        .subcommand_help_heading("Commands")
        .args_conflicts_with_subcommands(true)
        .subcommand(run)
        .subcommand(check);
    ClientCommand::augment_subcommands(top)
}

/// `-h`/`--help` among the arguments (before any `--`).
fn wants_help(args: &[OsString]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
}

fn print_help(sub: Option<&str>) -> Invocation {
    let mut cmd = command();
    cmd.build();
    let text = match sub.and_then(|name| cmd.find_subcommand_mut(name)) {
        Some(sub) => sub.render_help(),
        None => cmd.render_help(),
    };
    print!("{text}");
    Invocation::Exit(0)
}

fn agent(sources: &Sources) -> Invocation {
    match Config::load(sources) {
        Ok(Action::Run(config)) => Invocation::Agent(config),
        Ok(Action::Print(text)) => {
            print!("{text}");
            Invocation::Exit(0)
        }
        Err(e) => {
            eprintln!("dtma: {e}");
            Invocation::Exit(64)
        }
    }
}

fn check_config(sources: &Sources) -> Invocation {
    match Config::check(sources) {
        Ok(text) => {
            print!("{text}");
            Invocation::Exit(0)
        }
        Err(e) => {
            eprintln!("dtma: {e}");
            Invocation::Exit(64)
        }
    }
}

/// A client subcommand, start to end; the exit code.
fn client(sources: &Sources) -> u8 {
    let argv =
        std::iter::once(OsStr::new("dtma")).chain(sources.args.iter().map(OsString::as_os_str));
    // The agent's arguments read no environment here: a bad DTMA_* value is not the client's
    // business unless it is one the client needs (then `Config::local_target` reports it).
    let parsed = command()
        .mut_args(|a| a.env(None::<&str>))
        .try_get_matches_from(argv)
        .and_then(|m| ClientCommand::from_arg_matches(&m));
    let cmd = match parsed {
        Ok(cmd) => cmd,
        Err(e) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    if let ClientCommand::Completions { shell } = cmd {
        clap_complete::generate(shell, &mut command(), "dtma", &mut std::io::stdout());
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dtma: cannot start the runtime: {e}");
            return 70;
        }
    };
    match runtime.block_on(run_client(cmd, &sources.env)) {
        Ok(code) => code,
        Err(f) => {
            // A closed pipe (`dtma logs x | head`) is the reader's choice, not an error.
            if !matches!(&f, Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
                eprintln!("dtma: {f}");
            }
            f.exit_code()
        }
    }
}

async fn run_client(cmd: ClientCommand, env: &BTreeMap<OsString, OsString>) -> Result<u8, Failure> {
    match cmd {
        ClientCommand::Exec(a) => commands::exec(&connect(&a.target, env)?, &a).await,
        ClientCommand::Status(a) => commands::status(&connect(&a.target, env)?, &a).await,
        ClientCommand::Logs(a) => commands::logs(&connect(&a.target, env)?, &a).await,
        ClientCommand::Mcp(McpCommand::Ls { json, target }) => {
            commands::mcp_ls(&connect(&target, env)?, json).await
        }
        ClientCommand::Mcp(McpCommand::Restart { name, target }) => {
            commands::mcp_restart(&connect(&target, env)?, &name).await
        }
        ClientCommand::Completions { .. } => Ok(0),
    }
}

/// The client for `target`: the URL and token as given, else as the agent would find them.
fn connect(target: &Target, env: &BTreeMap<OsString, OsString>) -> Result<Client, Failure> {
    // Inside a command the agent runs: the command's own URL and token (its caller's role,
    // valid while it runs), unless the invocation names its target.
    let given = |var: &str| env.get(OsStr::new(var)).and_then(|v| v.to_str());
    if let (Some(url), Some(token), None, None, None) = (
        given(crate::config::API_URL_VAR),
        given(crate::config::API_TOKEN_VAR),
        &target.url,
        &target.token_file,
        &target.config,
    ) {
        let url = url.to_owned();
        return Client::new(&url, crate::config::Secret::new(token));
    }
    // The service's environment file below the process environment, as systemd gives it.
    let mut merged = read_env_file(&target.env_file);
    merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(path) = &target.token_file {
        merged.remove(OsStr::new("DTMA_BEARER_TOKEN"));
        merged.insert("DTMA_BEARER_TOKEN_FILE".into(), path.clone().into());
    }
    let args = match &target.config {
        Some(path) => vec![OsString::from("--config"), path.clone().into()],
        None => Vec::new(),
    };
    let sources = Sources { args, env: merged };
    let found = Config::local_target(&sources, Some(Path::new(args::DEFAULT_TOKEN_FILE)))
        .map_err(|e| Failure::Auth(e.problems.join("; ")))?;
    let url = match &target.url {
        Some(url) => url.clone(),
        None => format!("http://{}", found.addr),
    };
    Client::new(&url, found.token)
}

/// `KEY=VALUE` lines as systemd's `EnvironmentFile=` reads them (comments, blank lines,
/// `export`, one level of quotes). A missing or unreadable file is no variables: the client
/// then reports what it could not find.
fn read_env_file(path: &Path) -> BTreeMap<OsString, OsString> {
    std::fs::read_to_string(path)
        .map(|text| parse_env_file(&text))
        .unwrap_or_default()
}

fn parse_env_file(text: &str) -> BTreeMap<OsString, OsString> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.insert(key.trim().into(), unquoted.into());
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_as_systemd_reads_them() {
        let vars = parse_env_file(
            "# the service's settings\nDTMA_LISTEN=0.0.0.0:31000\n\n; old comment\n\
             export PORT=\"32000\"\nAGENTOPIA_API_BASE_URL='https://x'\nnonsense\n",
        );
        let get = |k: &str| vars.get(OsStr::new(k)).and_then(|v| v.to_str());
        assert_eq!(get("DTMA_LISTEN"), Some("0.0.0.0:31000"));
        assert_eq!(get("PORT"), Some("32000"));
        assert_eq!(get("AGENTOPIA_API_BASE_URL"), Some("https://x"));
        assert_eq!(vars.len(), 3);
    }

    #[test]
    fn the_tree_has_every_form_and_checks_itself() {
        let cmd = command();
        cmd.clone().debug_assert();
        let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        for want in [
            "run",
            "check-config",
            "exec",
            "status",
            "logs",
            "mcp",
            "completions",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for name in CLIENT.iter().filter(|n| **n != "help") {
            assert!(names.contains(name), "{name} is not a subcommand");
        }
    }

    #[test]
    fn the_client_target_follows_the_agent_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let token = dir.join("token");
        std::fs::write(&token, "from-the-file\n").unwrap();
        let env: BTreeMap<OsString, OsString> = [("PORT", "4321"), ("DTMA_LISTEN", "0.0.0.0:1")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let target = Target {
            token_file: Some(token.clone()),
            env_file: dir.join("missing.env"),
            ..Target::default()
        };
        assert!(connect(&target, &env).is_ok());
        let found = Config::local_target(
            &Sources {
                args: Vec::new(),
                env: [("DTMA_BEARER_TOKEN_FILE".into(), token.clone().into())]
                    .into_iter()
                    .chain(env.clone())
                    .collect(),
            },
            None,
        )
        .unwrap();
        assert_eq!(found.addr.to_string(), "127.0.0.1:4321");
        assert_eq!(found.token.expose(), "from-the-file");
        let missing = Config::local_target(
            &Sources {
                args: Vec::new(),
                env: env.clone(),
            },
            Some(&dir.join("absent")),
        )
        .unwrap_err();
        assert!(
            missing.problems.iter().any(|p| p.contains("no token")),
            "{missing}"
        );
    }
}
