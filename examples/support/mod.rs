//! Shared by the benchmark examples (`bench.rs`, `bench_mcp.rs`, `bench_logs.rs`, and the gateway's
//! `gateway_bench` through `#[path]`): running until done or interrupted, stopping
//! child processes, what the machine was and how busy it was, and replacing a generated
//! section of BENCHMARKS.md between its markers. The MCP benchmarks also share `mcp.rs`.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Run a bench's measurements until they end, panic, or SIGINT/SIGTERM arrives: a panic or a
/// signal becomes an error, so the caller still cleans up its processes and prints what it has.
/// Dropping `run` (at a signal) drops whatever it holds, `kill_on_drop` children included.
pub async fn until_interrupted(run: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    use futures_util::FutureExt;
    use tokio::signal::unix::{SignalKind, signal};
    let interrupted = async {
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        r = std::panic::AssertUnwindSafe(run).catch_unwind() => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the bench panicked")),
        },
        _ = interrupted => Err(anyhow::anyhow!("interrupted")),
    }
}

/// A poisoned lock still holds valid data here (a panicking bench task only adds entries).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGTERM the child, wait up to `grace`, then SIGKILL and reap it.
pub fn stop_child(c: &mut Child, grace: Duration) {
    if matches!(c.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
    if wait_timeout(c, grace).is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn wait_timeout(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// (busy, total) ticks of all CPUs since boot, from /proc/stat.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

/// How busy all CPUs were between two [`machine_ticks`] readings, as "NN%".
pub fn busy_between(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> String {
    match (before, after) {
        (Some((b0, a0)), Some((b1, a1))) if a1 > a0 => {
            format!("{:.0}%", (b1 - b0) as f64 * 100.0 / (a1 - a0) as f64)
        }
        _ => "unknown".into(),
    }
}

/// The load average (1, 5, 15 min) from /proc/loadavg.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Other work on the machine skews every row: the load average and how busy the CPUs were in
/// the second before the start (this call takes that second).
pub fn load_at_start() -> String {
    let before = machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy = busy_between(before, machine_ticks());
    format!(
        "{}; CPU busy in the second before the start: {busy}",
        load_average()
    )
}

/// The first line a program prints for `args` (stdout, else stderr), or "not installed".
pub fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not installed".into())
}

/// CPU count and model, memory, kernel, OS and the agent's version.
pub fn machine_facts() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |k| {
            format!("{:.1} GiB", k as f64 / 1048576.0)
        });
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    vec![
        ("nproc".into(), nproc.to_string()),
        ("CPU".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("OS".into(), os),
        ("dtma".into(), dtma::VERSION.to_owned()),
    ]
}

/// Put `section` (which starts with `begin` and ends with `end`) in place of the old one in
/// the file at `path`; without markers, append it under `heading`.
/// A generated results section: the markers, the run line, the table, its notes and the machine.
pub fn results_section(
    begin: &str,
    end: &str,
    run: &str,
    table: &str,
    notes: &[String],
    facts: &[(String, String)],
) -> String {
    use std::fmt::Write as _;
    let mut section = String::new();
    let _ = writeln!(section, "{begin}");
    let _ = writeln!(section, "{run}\n");
    let _ = writeln!(section, "{table}\n");
    for n in notes {
        let _ = writeln!(section, "- {n}");
    }
    let _ = writeln!(section, "\nMachine:\n");
    for (k, v) in facts {
        let _ = writeln!(section, "- {k}: {v}");
    }
    let _ = write!(section, "{end}");
    section
}

pub fn replace_section(
    path: &Path,
    begin: &str,
    end: &str,
    heading: &str,
    section: &str,
) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ if old.trim().is_empty() => format!("# Benchmarks\n\n{heading}\n\n{section}\n"),
        _ => format!("{}\n\n{heading}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `VAR` as a whole number in `min..=max`, `default` when unset or empty.
pub fn env_num(var: &str, default: u64, min: u64, max: u64) -> Result<u64> {
    match std::env::var(var).ok().filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                anyhow::anyhow!("{var} must be a whole number {min}..={max}, got `{v}`")
            }),
        None => Ok(default),
    }
}

/// The benches' one argument: `--write FILE` (where the results section goes).
pub fn write_arg() -> Result<Option<std::path::PathBuf>> {
    let mut write = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write" => {
                write = Some(std::path::PathBuf::from(
                    args.next().context("--write FILE")?,
                ))
            }
            other => anyhow::bail!("unknown argument `{other}` (only --write FILE)"),
        }
    }
    Ok(write)
}

/// The release `dtma` binary beside the running example (or `DTMA_BIN`).
pub fn dtma_bin() -> Result<std::path::PathBuf> {
    let bin = match std::env::var_os("DTMA_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()?;
            // target/release/examples/<bench> -> target/release/dtma
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("dtma"))
                .context("cannot locate the dtma binary; set DTMA_BIN")?
        }
    };
    anyhow::ensure!(
        bin.is_file(),
        "agent binary `{}` not found: run `cargo build --release --bin dtma` (or set DTMA_BIN)",
        bin.display()
    );
    Ok(bin)
}
