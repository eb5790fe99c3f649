//! The `dtma` binary: pick the form (`src/cli/`: the agent, `check-config`, the local client),
//! and for the agent start logging and run until SIGTERM/SIGINT.

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
    let config = match dtma::cli::dispatch(Sources::from_process()) {
        Invocation::Agent(config) => *config,
        Invocation::Exit(code) => return ExitCode::from(code),
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
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            s.cancel();
        });
        match dtma::run(config, logs, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dtma: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
