//! The agent's own recent log lines, kept in memory for `GET /diagnostics/logs`.
//!
//! A tracing layer formats each event as one line (`time LEVEL target: message key=value ...`)
//! into a bounded ring. Secrets cannot appear: no code of the agent logs them (config holds them
//! as `Secret`), and [`filter`] keeps out the one dependency that would (bollard).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The log filter: `RUST_LOG` (default `info`), except that bollard never logs below `info`
/// whatever `RUST_LOG` asks. At `debug` it logs whole request bodies, and a container's creation
/// body holds its environment: an MCP server's secrets.
pub fn filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let base = rust_log
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    match "bollard=info".parse() {
        Ok(cap) => base.add_directive(cap),
        Err(_) => base,
    }
}

/// Lines kept at most.
pub const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
}

impl LogRing {
    pub fn new() -> Arc<LogRing> {
        Arc::new(LogRing::default())
    }

    pub fn push(&self, line: String) {
        let mut g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() == CAPACITY {
            g.pop_front();
        }
        g.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().skip(g.len().saturating_sub(n)).cloned().collect()
    }
}

/// The tracing layer that feeds a [`LogRing`].
pub struct RingLayer(pub Arc<LogRing>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Line(format!(
            "{} {} {}:",
            crate::now_rfc3339(),
            meta.level(),
            meta.target()
        ));
        event.record(&mut line);
        self.0.push(line.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bollard_never_logs_below_info_whatever_rust_log_says() {
        use tracing_subscriber::layer::SubscriberExt;
        for rust_log in [
            None,
            Some("debug"),
            Some("trace,bollard=trace"),
            Some("bollard=debug"),
        ] {
            let subscriber = tracing_subscriber::registry().with(filter(rust_log));
            tracing::subscriber::with_default(subscriber, || {
                assert!(
                    !tracing::enabled!(target: "bollard::docker", tracing::Level::DEBUG),
                    "{rust_log:?}"
                );
                assert!(tracing::enabled!(target: "bollard::docker", tracing::Level::INFO));
            });
        }
        // The agent's own debug logs still follow RUST_LOG.
        let subscriber = tracing_subscriber::registry().with(filter(Some("debug")));
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "dtma::services", tracing::Level::DEBUG));
        });
    }

    #[test]
    fn keeps_the_last_lines() {
        let ring = LogRing::default();
        for i in 0..CAPACITY + 5 {
            ring.push(i.to_string());
        }
        assert_eq!(
            ring.tail(2),
            vec![(CAPACITY + 3).to_string(), (CAPACITY + 4).to_string()]
        );
        assert_eq!(ring.tail(usize::MAX).len(), CAPACITY);
    }
}
