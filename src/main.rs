//! The `dtma` binary: parse configuration, start logging, run until SIGTERM/SIGINT (a second
//! one exits at once, `dtma::signals`).

use std::process::ExitCode;

use dtma::config::{Action, Config, Sources};
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
    let config = match Config::load(&Sources::from_process()) {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dtma: {e}");
            return ExitCode::from(64);
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Logs go to stderr and into an in-memory ring that `/diagnostics/logs` serves.
    let logs = dtma::logring::LogRing::new();
    tracing_subscriber::registry()
        .with(dtma::logring::filter(
            std::env::var("RUST_LOG").ok().as_deref(),
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(dtma::logring::RingLayer(logs.clone()))
        .init();
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
