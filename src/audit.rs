//! The audit log: one JSON line per command decision (and its outcome), rotated by size.
//!
//! Records name the caller by token name and role, never by token value.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

/// One audited decision.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    /// `http` or `channel`.
    pub source: &'a str,
    pub caller: &'a str,
    pub role: &'a str,
    pub command: &'a str,
    /// `allowed` or `denied`.
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
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: usize,
    file: Mutex<Option<(File, u64)>>,
}

impl AuditLog {
    /// An audit log at `path`; `None` writes audit records to the tracing log instead.
    pub fn new(path: Option<PathBuf>, max_bytes: u64, keep: usize) -> AuditLog {
        AuditLog {
            path,
            max_bytes,
            keep,
            file: Mutex::new(None),
        }
    }

    pub fn write(&self, r: &Record<'_>) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let Some(path) = &self.path else {
            tracing::info!(target: "audit", "{}", String::from_utf8_lossy(&line).trim_end());
            return;
        };
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref()
            .is_some_and(|(_, size)| *size + line.len() as u64 > self.max_bytes)
        {
            *g = None;
            self.rotate();
        }
        if g.is_none() {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    *g = Some((f, size));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "Cannot open the audit log; record follows.");
                    tracing::info!(target: "audit", "{}", String::from_utf8_lossy(&line).trim_end());
                    return;
                }
            }
        }
        if let Some((f, size)) = g.as_mut() {
            if let Err(e) = f.write_all(&line) {
                tracing::error!(error = %e, "Audit log write failed.");
            }
            *size += line.len() as u64;
        }
    }

    /// audit.jsonl -> audit.jsonl.1 -> ... -> audit.jsonl.<keep> (dropped).
    fn rotate(&self) {
        let Some(path) = &self.path else { return };
        let name = |i: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(path, name(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("dtma-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let log = AuditLog::new(Some(path.clone()), 400, 2);
        for i in 0..20 {
            let cmd = format!("echo {i}");
            log.write(&Record {
                time: "t".into(),
                source: "http",
                caller: "c",
                role: "admin",
                command: &cmd,
                decision: "allowed",
                rule: "allowed",
                request_id: None,
                exit_code: Some(0),
                signal: None,
                duration_ms: Some(1),
            });
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 400);
        assert!(current.contains("echo 19"));
        assert!(dir.join("audit.jsonl.1").exists());
        assert!(dir.join("audit.jsonl.2").exists());
        assert!(!dir.join("audit.jsonl.3").exists());
        for line in current.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["decision"], "allowed");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
