//! The service manager's side of the process: systemd's notification protocol (`Type=notify`)
//! and a watchdog fed only by real progress of the control loop.
//!
//! - [`Systemd`]: `READY=1`, `STATUS=`, `STOPPING=1` and `WATCHDOG=1` through the `sd-notify`
//!   crate; every call is a no-op when the process was not started with `NOTIFY_SOCKET`.
//! - [`Progress`]: the control loop's heartbeat. The reconnect loop and the session's select
//!   loop tick it on every turn (and at least every quarter of the watchdog interval, through
//!   their [`Ticker`]); [`spawn_watchdog`] sends `WATCHDOG=1` at half the interval only when the
//!   count moved since its last ping. A session task stuck on an `await` stops the count, so the
//!   pings stop and systemd restarts the agent after `WatchdogSec=`.
//! - [`spawn_reporter`]: `READY=1` once the local API listens and the channel's first dial has
//!   started, then one `STATUS=` line per change of the channel's state (`agent::LinkState`).
//!
//! This module knows nothing of the agent: the wiring (`lib.rs`) hands it the pieces.
//!
//! In debug builds only, `DTMA_DEBUG_WEDGE_ON_SIGUSR1=1` makes the session loop block for good
//! on SIGUSR1 (see [`Progress::wedge`]): the test of the watchdog (`tests/systemd.rs`) wedges
//! the real binary with it. Release builds compile the hook out.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The debug-build variable that arms the wedge hook.
pub const WEDGE_HOOK_VAR: &str = "DTMA_DEBUG_WEDGE_ON_SIGUSR1";

/// What the service manager asked of this process, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Systemd {
    /// `NOTIFY_SOCKET` was set: notifications go there.
    notify: bool,
    /// `WATCHDOG_USEC` (for this pid): ping at least this often.
    watchdog: Option<Duration>,
    /// Debug builds: `DTMA_DEBUG_WEDGE_ON_SIGUSR1` was set.
    wedge_hook: bool,
}

impl Systemd {
    /// From the process environment (the binary's start; tests of the library use
    /// [`Systemd::disabled`], so they never write to a socket the test runner inherited).
    pub fn from_env() -> Systemd {
        Systemd {
            notify: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            wedge_hook: cfg!(debug_assertions)
                && std::env::var_os(WEDGE_HOOK_VAR).is_some_and(|v| v == "1"),
        }
    }

    /// No service manager: every notification is dropped, no watchdog.
    pub fn disabled() -> Systemd {
        Systemd::default()
    }

    /// The watchdog interval, when systemd enabled one for this process.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.notify)
    }

    /// Whether the debug wedge hook is armed (always false in release builds).
    pub fn wedge_hook(&self) -> bool {
        self.wedge_hook
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.notify {
            return;
        }
        // A failed notification is no reason to stop the agent: systemd then times the start
        // or the watchdog out and says so in the journal.
        if let Err(e) = sd_notify::notify(states) {
            debug!(error = %e, "Could not notify the service manager.");
        }
    }

    /// Start-up is finished.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A one-line state shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The drain has started.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The control loop's heartbeat (see the module documentation).
#[derive(Debug, Default)]
pub struct Progress {
    count: AtomicU64,
    /// How often an idle loop still ticks: a quarter of the watchdog interval, so that every
    /// half-interval check sees at least one tick. `None` without a watchdog.
    every: Option<Duration>,
    #[cfg(debug_assertions)]
    wedge: tokio_util::sync::CancellationToken,
}

impl Progress {
    pub fn new(watchdog: Option<Duration>) -> Progress {
        Progress {
            every: watchdog.map(|w| (w / 4).max(Duration::from_millis(1))),
            ..Progress::default()
        }
    }

    /// The loop made a turn.
    pub fn tick(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A timer for a loop's `select!`, so that a loop idle on its other branches still turns
    /// (and ticks) between two watchdog checks. Never fires without a watchdog.
    pub fn ticker(&self) -> Ticker {
        Ticker(self.every.map(|every| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    /// Debug builds: ask the session loop to block for good (the watchdog test's wedge).
    #[cfg(debug_assertions)]
    pub fn wedge(&self) {
        self.wedge.cancel();
    }

    /// Resolves when a wedge was asked for (debug builds); never in release builds. The
    /// session loop selects on it and, when it resolves, blocks in [`Progress::hold`].
    pub async fn wedge_requested(&self) {
        #[cfg(debug_assertions)]
        self.wedge.cancelled().await;
        #[cfg(not(debug_assertions))]
        std::future::pending::<()>().await;
    }

    /// The wedge itself: say so (log and `STATUS=`), then never return. The status line is the
    /// marker the watchdog test waits for: nothing ticks after it.
    pub async fn hold(&self, systemd: &Systemd) -> ! {
        warn!("Session loop wedged by the debug hook; the watchdog pings stop.");
        systemd.status("wedged by the debug hook");
        std::future::pending::<()>().await;
        unreachable!("a pending future never resolves")
    }
}

/// See [`Progress::ticker`].
pub struct Ticker(Option<tokio::time::Interval>);

impl Ticker {
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Feed systemd's watchdog at half its interval, only when `progress` moved since the last
/// ping. Not tracked by the agent's task tree: shutdown never waits for it.
pub fn spawn_watchdog(systemd: Arc<Systemd>, progress: Arc<Progress>) {
    let Some(interval) = systemd.watchdog() else {
        return;
    };
    info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled; fed while the control loop makes progress."
    );
    tokio::spawn(async move {
        let mut check = tokio::time::interval(interval / 2);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = progress.count();
        let mut stalled = false;
        loop {
            check.tick().await;
            let now = progress.count();
            if now != last {
                systemd.watchdog_ping();
                last = now;
                if stalled {
                    info!("The control loop moves again; watchdog pings resume.");
                    stalled = false;
                }
            } else if !stalled {
                warn!(
                    interval_ms = interval.as_millis() as u64,
                    "The control loop made no progress; withholding the watchdog ping."
                );
                stalled = true;
            }
        }
    });
}

/// `READY=1` with the first state that `ready` accepts (the channel's first dial, or at once
/// when local-only), then a `STATUS=` line per change. Untracked, like the watchdog.
pub fn spawn_reporter<T>(
    systemd: Arc<Systemd>,
    mut state: watch::Receiver<T>,
    ready: fn(&T) -> bool,
) where
    T: fmt::Display + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let first = match state.wait_for(ready).await {
            Ok(s) => s.to_string(),
            Err(_) => return,
        };
        systemd.ready(&first);
        debug!(status = %first, "Told the service manager we are ready.");
        while state.changed().await.is_ok() {
            let status = state.borrow_and_update().to_string();
            systemd.status(&status);
        }
    });
}

/// A local-only agent has no reconnect loop: the runtime's own liveness feeds the watchdog.
pub fn spawn_local_ticker(systemd: &Systemd, progress: Arc<Progress>) {
    if systemd.watchdog().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut ticker = progress.ticker();
        loop {
            ticker.tick().await;
            progress.tick();
        }
    });
}

/// Debug builds: SIGUSR1 wedges the session loop when [`WEDGE_HOOK_VAR`] is `1`.
pub fn spawn_wedge_hook(systemd: &Systemd, progress: Arc<Progress>) {
    #[cfg(debug_assertions)]
    if systemd.wedge_hook() {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                warn!("{WEDGE_HOOK_VAR}=1: SIGUSR1 will wedge the session loop (debug build).");
                tokio::spawn(async move {
                    if usr1.recv().await.is_some() {
                        progress.wedge();
                    }
                });
            }
            Err(e) => warn!(error = %e, "Cannot arm the wedge hook."),
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (systemd, progress);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_come_at_a_quarter_of_the_watchdog_interval() {
        let p = Progress::new(Some(Duration::from_secs(30)));
        assert_eq!(p.every, Some(Duration::from_millis(7500)));
        assert_eq!(Progress::new(None).every, None);
    }

    #[test]
    fn without_notify_socket_there_is_no_watchdog() {
        let s = Systemd {
            notify: false,
            watchdog: Some(Duration::from_secs(30)),
            wedge_hook: false,
        };
        assert_eq!(s.watchdog(), None);
        // And every notification is a no-op (nothing to send to).
        s.ready("x");
        s.stopping("y");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticker_fires_every_quarter_interval_and_never_without_a_watchdog() {
        let p = Progress::new(Some(Duration::from_millis(400)));
        let mut t = p.ticker();
        let t0 = tokio::time::Instant::now();
        t.tick().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        t.tick().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        let mut never = Progress::new(None).ticker();
        let r = tokio::time::timeout(Duration::from_secs(3600), never.tick()).await;
        assert!(r.is_err(), "a ticker without a watchdog fired");
    }
}
