//! The `dtma` binary: pick the form (`src/cli/`: the agent, `check-config`, the local client),
//! and for the agent start logging and run until SIGTERM/SIGINT (a second one exits at once,
//! `dtma::signals`). As PID 1 (a container) it first becomes a minimal init (`dtma::init`).

use std::process::ExitCode;

use dtma::cli::Invocation;
use dtma::config::Sources;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // The hidden launcher the agent runs in front of every sandboxed command (src/exec/sandbox.rs).
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(dtma::exec::sandbox::SUBCOMMAND)) {
        let error = match dtma::exec::sandbox::Launch::parse(args) {
            Ok(launch) => dtma::exec::sandbox::exec(&launch),
            Err(e) => e,
        };
        eprintln!("dtma sandbox-exec: {error}");
        return ExitCode::from(error.exit_code());
    }
    // Secrets given by environment leave /proc/<pid>/environ: the process re-execs itself with
    // them in a memfd (src/config/handoff.rs). Returns only if it cannot.
    let handoff = dtma::config::handoff::reexec_without_secrets();
    // PID 1 (a container's entrypoint): become a minimal init that reaps orphaned processes and
    // run the agent as its child (src/init.rs). After the hand-off, so the init's own environment
    // holds no secret.
    if let Some(code) = dtma::init::run_if_pid1() {
        return ExitCode::from(code);
    }
    let sources = match Sources::from_process() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dtma: {e}");
            return ExitCode::from(64);
        }
    };
    let config = match dtma::cli::dispatch(sources) {
        Invocation::Agent(config) => *config,
        Invocation::Exit(code) => return ExitCode::from(code),
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Logs go to stderr (text or JSON, DTMA_LOG_FORMAT) and into an in-memory ring that
    // `/diagnostics/logs` serves, whatever the format.
    let logs = dtma::logring::LogRing::new();
    let json = config.log_format == dtma::config::LogFormat::Json;
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(dtma::logring::filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        ))
        .with(text_layer)
        .with(json_layer)
        .with(dtma::logring::RingLayer(logs.clone()))
        .init();
    if let Err(e) = handoff {
        tracing::warn!(error = %e, "Secrets given by environment stay readable in /proc/<pid>/environ; prefer token files or systemd credentials.");
    }
    dtma::raise_fd_limit();
    tracing::info!(version = dtma::VERSION, config = ?config, "Starting.");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dtma: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let systemd = dtma::systemd::Systemd::from_env();
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(dtma::signals::watch(shutdown.clone()));
        tokio::select! {
            r = dtma::run(config, logs, systemd, shutdown) => Ok(r),
            Ok(second) = signals => Err(second),
        }
    });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("dtma: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(second) => {
            // A second stop signal: leave now, without waiting for the runtime's tasks.
            runtime.shutdown_background();
            ExitCode::from(second.exit_code())
        }
    }
}
