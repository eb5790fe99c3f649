//! The audit log: one JSON line per command decision (and its outcome), rotated by size.
//!
//! Records name the caller by token name and role, never by token value. Writing happens on a
//! thread of its own behind a bounded queue, so a slow or blocked disk never stalls the task that
//! decided (the channel's reader, an HTTP handler): they wait only when the queue is full.
//! [`AuditLog::close`] flushes every queued record before shutdown completes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

/// Records queued for the writer thread before callers have to wait.
const QUEUE: usize = 4096;
/// How long shutdown waits for the writer to flush the queue.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One audited decision.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    /// `http` or `channel`.
    pub source: &'a str,
    pub caller: &'a str,
    pub role: &'a str,
    /// What was asked: `exec`, `mcp_deploy`, `mcp_remove`, `mcp_restart`.
    pub action: &'a str,
    /// The command line (`exec` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<&'a str>,
    /// The sandbox profile the command runs under (`exec` only; absent when the sandbox is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<&'a str>,
    /// The sandbox's enforcement level for the command: `full`, `partial` or `off` (`exec` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<&'a str>,
    /// What the action applies to: a group id or an instance name (MCP actions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// `allowed`, `denied` or `finished`.
    pub decision: &'a str,
    pub rule: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

pub struct AuditLog {
    /// `None` once closed, or when records go to the tracing log.
    tx: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records that should have reached the file and did not (`dtma_audit_write_failures`).
    failures: Counter,
}

impl AuditLog {
    /// An audit log at `path`; `None` writes audit records to the tracing log instead.
    /// `failures` counts the records the file could not take.
    pub fn new(path: Option<PathBuf>, max_bytes: u64, keep: usize, failures: Counter) -> AuditLog {
        let Some(path) = path else {
            return AuditLog {
                tx: Mutex::new(None),
                writer: Mutex::new(None),
                failures,
            };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut file = RotatingFile {
            path,
            max_bytes,
            keep,
            file: None,
            failures: failures.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("dtma-audit".into())
            .spawn(move || file.run(rx));
        match writer {
            Ok(handle) => AuditLog {
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                failures,
            },
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the audit writer; records go to the log.");
                AuditLog {
                    tx: Mutex::new(None),
                    writer: Mutex::new(None),
                    failures,
                }
            }
        }
    }

    /// Queue one record. Waits only while the writer is `QUEUE` records behind.
    pub async fn write(&self, r: &Record<'_>) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .cloned();
        match tx {
            Some(tx) => {
                if let Err(mpsc::error::SendError(line)) = tx.send(line).await {
                    // The writer is gone: the file will not get this record.
                    self.failures.inc();
                    to_log(&line);
                }
            }
            None => to_log(&line),
        }
    }

    /// Write every queued record and stop the writer. Later records go to the tracing log.
    pub async fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            // The thread ends once every sender is gone and the queue is empty. A log that
            // never accepts writes (a hung mount) must not hold shutdown for ever.
            let joined =
                tokio::time::timeout(CLOSE_WAIT, tokio::task::spawn_blocking(move || w.join()))
                    .await;
            if joined.is_err() {
                tracing::error!(
                    wait_s = CLOSE_WAIT.as_secs(),
                    "The audit log did not accept its last records in time; they may be lost."
                );
            }
        }
    }
}

fn to_log(line: &[u8]) {
    tracing::info!(target: "audit", "{}", String::from_utf8_lossy(line).trim_end());
}

/// The writer thread's file.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<(File, u64)>,
    failures: Counter,
}

impl RotatingFile {
    fn run(&mut self, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(line) = rx.blocking_recv() {
            self.write(&line);
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self
            .file
            .as_ref()
            .is_some_and(|(_, size)| *size + line.len() as u64 > self.max_bytes)
        {
            self.file = None;
            rotate(&self.path, self.keep);
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some((f, size));
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "Cannot open the audit log; record follows.");
                    self.failures.inc();
                    to_log(line);
                    return;
                }
            }
        }
        if let Some((f, size)) = self.file.as_mut() {
            if let Err(e) = f.write_all(line) {
                tracing::error!(error = %e, "Audit log write failed; record follows.");
                self.failures.inc();
                to_log(line);
            }
            *size += line.len() as u64;
        }
    }
}

/// audit.jsonl -> audit.jsonl.1 -> ... -> audit.jsonl.<keep> (dropped).
fn rotate(path: &Path, keep: usize) {
    let name = |i: usize| {
        let mut p = path.to_path_buf().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    let _ = std::fs::remove_file(name(keep));
    for i in (1..keep).rev() {
        let _ = std::fs::rename(name(i), name(i + 1));
    }
    let _ = std::fs::rename(path, name(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cmd: &str) -> Record<'_> {
        Record {
            time: "t".into(),
            source: "http",
            caller: "c",
            role: "admin",
            action: "exec",
            command: Some(cmd),
            profile: Some("admin"),
            enforcement: Some("full"),
            target: None,
            decision: "allowed",
            rule: "allowed",
            request_id: None,
            exit_code: Some(0),
            signal: None,
            duration_ms: Some(1),
        }
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::new(Some(path.clone()), 400, 2, Counter::default());
        for i in 0..20 {
            log.write(&record(&format!("echo {i}"))).await;
        }
        log.close().await;
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 400);
        assert!(current.contains("echo 19"));
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
        for line in current.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["decision"], "allowed");
        }
    }

    #[tokio::test]
    async fn close_writes_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::new(Some(path.clone()), 10 << 20, 3, Counter::default());
        for i in 0..1000 {
            log.write(&record(&format!("echo {i}"))).await;
        }
        log.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.lines().last().unwrap().contains("echo 999"));
    }

    #[tokio::test]
    async fn records_the_file_cannot_take_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        // The log's directory is a file: every open fails.
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        let failures = Counter::default();
        let log = AuditLog::new(
            Some(blocker.join("audit.jsonl")),
            10 << 20,
            3,
            failures.clone(),
        );
        for i in 0..3 {
            log.write(&record(&format!("echo {i}"))).await;
        }
        log.close().await;
        assert_eq!(failures.get(), 3);
    }
}
