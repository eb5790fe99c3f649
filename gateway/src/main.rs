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
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match dtma_gateway::start(config, shutdown.clone()).await {
        Ok(running) => {
            tokio::spawn(reload_on_sighup(running.token_reloader(), shutdown));
            running.join().await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            std::process::ExitCode::from(match e {
                dtma_gateway::StartError::Bind { .. } => 69,
                _ => 64,
            })
        }
    }
}

/// SIGHUP: read the agent token file again (a bad file keeps the tokens in force).
async fn reload_on_sighup(reloader: dtma_gateway::TokenReloader, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("Cannot install the SIGHUP handler; token reload needs a restart.");
        return;
    };
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
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Stopping.");
    shutdown.cancel();
}
