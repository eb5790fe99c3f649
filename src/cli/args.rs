//! The local client's subcommands as clap types, with the examples `--help` shows.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The service's environment file on a droplet (`EnvironmentFile=` of deploy/dtma.service).
pub const DEFAULT_ENV_FILE: &str = "/etc/dtma/dtma.env";
/// The token file on a droplet (the source of the unit's `LoadCredential=dtma_bearer_token`).
pub const DEFAULT_TOKEN_FILE: &str = "/etc/dtma/bearer_token";

/// How the client finds the agent and its token. Shared by every client subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct Target {
    /// The agent's local API [default: http://127.0.0.1:PORT, PORT from DTMA_LISTEN/PORT as
    /// the agent reads them]
    #[arg(long, value_name = "URL", help_heading = "Finding the agent")]
    pub url: Option<String>,
    /// The agent's TOML config file, read as the agent reads it (or DTMA_CONFIG)
    #[arg(long, value_name = "FILE", help_heading = "Finding the agent")]
    pub config: Option<PathBuf>,
    /// The service's environment file (KEY=VALUE lines); the process environment wins over it
    #[arg(
        long,
        value_name = "FILE",
        default_value = DEFAULT_ENV_FILE,
        help_heading = "Finding the agent"
    )]
    pub env_file: PathBuf,
    /// Read the token from this file instead [default: DTMA_BEARER_TOKEN, its _FILE, the
    /// credentials directory, the config file, then /etc/dtma/bearer_token]
    #[arg(long, value_name = "FILE", help_heading = "Finding the agent")]
    pub token_file: Option<PathBuf>,
}

// The local client: talks to the agent's HTTP API on this machine. (No doc comment: clap
// would make it the `about` of the command the subcommands are added to.)
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Run a command through the agent (policy, audit and sandbox included); its output
    /// streams as it arrives and its exit code is dtma's
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// The agent's state: channel, backend, streams, sandbox, Docker, MCP servers
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// An MCP server's container log, optionally followed
    #[command(after_help = LOGS_HELP)]
    Logs(LogsArgs),
    /// MCP servers the agent manages
    #[command(subcommand, after_help = MCP_HELP)]
    Mcp(McpCommand),
    /// Print a shell completion script (the package installs them)
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Stop the command after this many milliseconds [default: the agent's,
    /// DTMA_EXEC_DEFAULT_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub target: Target,
    /// One argument: a shell command line, run as written. Several: words, each quoted for the
    /// shell (`dtma exec -- ls -l "my file"`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the agent's JSON (`GET /status`) instead of the table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The server's instance name (`dtma mcp ls` lists them)
    #[arg(value_name = "SERVER")]
    pub server: String,
    /// Keep following the log (across restarts) until interrupted or the server is removed
    #[arg(short, long)]
    pub follow: bool,
    /// Lines from the end to start with (0: only new lines when following)
    #[arg(long, value_name = "N", default_value_t = dtma_protocol::DEFAULT_TAIL)]
    pub tail: u32,
    /// Prefix each line with Docker's timestamp
    #[arg(short, long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand, Debug)]
pub enum McpCommand {
    /// List the MCP servers: group, name, state, Docker state, image, ports, restarts
    #[command(visible_alias = "list", after_help = MCP_LS_HELP)]
    Ls {
        /// Print the agent's JSON (`GET /mcp/status`) instead of the table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Restart one server and wait until it answers the MCP handshake again
    #[command(after_help = MCP_RESTART_HELP)]
    Restart {
        /// The server's instance name
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// The exit codes every client subcommand shares (`Failure::exit_code` in src/cli/client.rs).
macro_rules! exit_codes {
    () => {
        "

Exit codes of the client (a command run by `exec` has its own):
  64  bad client configuration (a --url that is not http://)
  65  the agent rejected the request as invalid (400: e.g. a timeout above its maximum)
  66  no such server (404)
  67  authentication failed: the agent refused the token (401), or no token was found
  69  the agent is unreachable or shutting down, or Docker is unreachable (503)
  70  the agent failed (500, a command that could not be started)
  75  too many commands running at once (429): try again
  76  the agent's answer was cut short or not understood
  77  denied: by the command policy (the rule is named) or the token's role (403)"
    };
}

const EXEC_HELP: &str = concat!(
    "\
Exit code: the command's own; 128+N when a signal N ended it; 124 when it timed out. The
client's own failures use 64-77 (below), so a script can tell `the command failed` from `the
agent said no`.

Examples:
  sudo dtma exec -- uptime
  sudo dtma exec -- 'docker ps --format {{.Names}} | sort'
  sudo dtma exec --timeout 600000 -- journalctl -u docker -n 200 --no-pager
  sudo dtma exec -- sh -c 'echo out; echo err >&2; exit 3'; echo $?   # out, err, 3",
    exit_codes!()
);

const STATUS_HELP: &str = concat!(
    "\
Examples:
  sudo dtma status
  sudo dtma status --json | jq .channel
  dtma status --url http://127.0.0.1:30000 --token-file ~/dtma.token",
    exit_codes!()
);

const LOGS_HELP: &str = concat!(
    "\
Examples:
  sudo dtma logs reasoning-server
  sudo dtma logs reasoning-server -f --tail 0
  sudo dtma logs reasoning-server --tail 1000 --timestamps > server.log",
    exit_codes!()
);

const MCP_HELP: &str = concat!(
    "\
Examples:
  sudo dtma mcp ls
  sudo dtma mcp restart reasoning-server",
    exit_codes!()
);

const MCP_LS_HELP: &str = concat!(
    "\
Examples:
  sudo dtma mcp ls
  sudo dtma mcp ls --json | jq '.servers[] | {instance_name, state}'",
    exit_codes!()
);

const MCP_RESTART_HELP: &str = concat!(
    "\
Examples:
  sudo dtma mcp restart reasoning-server",
    exit_codes!()
);

/// Examples of the agent's own forms, for `dtma --help` and `dtma run --help`.
pub const RUN_HELP: &str = "\
Examples:
  DTMA_BEARER_TOKEN=... AGENTOPIA_API_BASE_URL=https://api.example.com dtma
  dtma run --config /etc/dtma/config.toml
  dtma check-config --config /etc/dtma/config.toml";

pub const CHECK_CONFIG_HELP: &str = "\
Prints the effective configuration as JSON (secrets redacted) and exits 0; or lists every
problem found (flags, environment and config file together) and exits 64.

It reads what the agent would read from this process: on a droplet, give it the service's
environment and token file.

Examples:
  dtma check-config --config ./dtma.toml
  sudo sh -c 'set -a; . /etc/dtma/dtma.env
    DTMA_BEARER_TOKEN_FILE=/etc/dtma/bearer_token dtma check-config'";
