//! SIGTERM and SIGINT: the first starts the drain, a second one during the drain ends the
//! process at once.
//!
//! systemd sends one SIGTERM and, after `TimeoutStopSec=`, SIGKILL; the second signal is for a
//! person (Ctrl-C twice, `kill` twice, `systemctl kill`) who will not wait for the grace period.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The exit code of a process stopped by a second signal: 128 + the signal's number, as a
    /// shell reports a process killed by it (143 for SIGTERM, 130 for SIGINT).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Term => 128 + 15,
            StopSignal::Int => 128 + 2,
        }
    }
}

/// Both stop signals, or Ctrl-C alone when the handlers cannot be installed.
struct Stops(Option<(Signal, Signal)>);

impl Stops {
    fn install() -> Stops {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Stops(Some((term, int))),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "Cannot handle SIGTERM; stopping on Ctrl-C only.");
                Stops(None)
            }
        }
    }

    async fn next(&mut self) -> StopSignal {
        match &mut self.0 {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => StopSignal::Term,
                _ = int.recv() => StopSignal::Int,
            },
            None => {
                if tokio::signal::ctrl_c().await.is_err() {
                    // No way to be told to stop: wait for SIGKILL.
                    std::future::pending::<()>().await;
                }
                StopSignal::Int
            }
        }
    }
}

/// Wait for a stop signal and cancel `shutdown` (the drain starts); then wait for a second one
/// and return it: the caller exits at once with [`StopSignal::exit_code`].
pub async fn watch(shutdown: CancellationToken) -> StopSignal {
    let mut stops = Stops::install();
    let first = stops.next().await;
    info!(
        signal = first.name(),
        "Stop signal: draining (a second signal exits at once)."
    );
    shutdown.cancel();
    let second = stops.next().await;
    warn!(
        signal = second.name(),
        exit_code = second.exit_code(),
        "Second stop signal during the drain: exiting at once without waiting for running \
         requests; their process groups are left to the service manager."
    );
    second
}
