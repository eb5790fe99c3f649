//! The agent's own recent log lines, kept in memory for `GET /diagnostics/logs`.
//!
//! A tracing layer formats each event as one line (`time LEVEL target: message key=value ...`)
//! into a bounded ring. Secrets cannot appear: no code logs them (config holds them as `Secret`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

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
