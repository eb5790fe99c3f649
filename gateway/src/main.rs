//! `dtma-gateway`: flags and config into one value, logging, signals, then `dtma_gateway::run`.
#![forbid(unsafe_code)]

use clap::Parser;
use dtma_gateway::config::{Args, Config, LogFormat};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dtma-gateway: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    tracing::info!(?config, "Starting.");
    let shutdown = CancellationToken::new();
    // Installed before anything listens: a signal that comes early is handled, not fatal.
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(term), Ok(int), Ok(hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("dtma-gateway: cannot install signal handlers");
        return std::process::ExitCode::from(71);
    };
    tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
    match dtma_gateway::start(config, shutdown.clone()).await {
        Ok(running) => {
            tokio::spawn(reload_on_sighup(hup, running.token_reloader(), shutdown));
            running.join().await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            std::process::ExitCode::from(match e {
                // Unavailable (EX_UNAVAILABLE): a port taken, NATS unreachable; systemd retries.
                dtma_gateway::StartError::Bind { .. } | dtma_gateway::StartError::Cluster(_) => 69,
                _ => 64,
            })
        }
    }
}

/// SIGHUP: read the agent token file again (a bad file keeps the tokens in force).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: dtma_gateway::TokenReloader,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match reloader.reload() {
            Ok(n) => tracing::info!(tokens = n, "Agent tokens reloaded."),
            Err(e) => {
                tracing::error!(error = %e, "Agent tokens not reloaded; the previous ones stay.")
            }
        }
    }
}

/// SIGTERM or SIGINT: drain (agents told to move, streams finish; see `dtma_gateway::start`).
async fn stop_on_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Stopping.");
    shutdown.cancel();
}
