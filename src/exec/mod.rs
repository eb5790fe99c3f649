//! The exec engine: `/bin/sh -c` in a new process group, both pipes read concurrently under
//! the sink's flow control, timeout and cancel that stop the whole group (SIGTERM, then SIGKILL).
//!
//! The engine knows nothing about WebSockets or HTTP: it reads pipes into an [`OutputSink`].
//! The channel's sink applies credit and buffering; the local API's sink collects into memory.

pub mod sandbox;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dtma_protocol::Fd;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::{ExecLimits, Secret};

/// Largest single read from a pipe. Pipes are enlarged to [`PIPE_SIZE`] so a fast writer can
/// get this far ahead; per-read costs (an event, a frame) then fall on bigger chunks.
const READ_CHUNK: usize = 256 << 10;
/// Read buffers start small and double up to [`READ_CHUNK`] when reads fill them, so a thousand
/// commands that print a line now and then cost little memory.
const FIRST_READ: usize = 16 << 10;
/// Requested pipe capacity (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
const PIPE_SIZE: i32 = 1 << 20;

/// Errors before the command ran. Once it runs, everything is reported in [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the command is empty")]
    EmptyCommand,
    #[error("timeout must be between 1 and {max_ms} ms, got {got_ms}")]
    BadTimeout { got_ms: u64, max_ms: u64 },
    #[error("environment variable name `{0}` is not allowed")]
    BadEnvName(String),
    #[error("field `{0}` contains a NUL byte, which no process argument can carry")]
    NulByte(&'static str),
    #[error("cannot start /bin/sh: {0}")]
    Spawn(std::io::Error),
    /// The child was reaped before its pid could be read; without a pid its process group
    /// cannot be signalled safely (group 0 would be the agent's own).
    #[error("the command's process exited before its pid could be read")]
    NoPid,
}

/// A command's process group, never 0 or negative: `killpg(0)` would signal the agent's own
/// group, so a group id comes only from a real child pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    pub fn of(pid: u32) -> Option<ProcessGroup> {
        i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .map(|p| ProcessGroup(Pid::from_raw(p)))
    }

    fn signal(self, signal: Signal) {
        let _ = killpg(self.0, signal);
    }
}

/// A command to run, already validated against the limits by [`ExecSpec::new`].
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub command: String,
    pub timeout: Duration,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Option<Vec<u8>>,
    pub max_output: u64,
    /// The sandbox profile the command runs under when the sandbox is on (`DTMA_SANDBOX`);
    /// the caller's role sets it, [`ExecSpec::new`] starts from the least privileged.
    pub profile: sandbox::Profile,
}

impl ExecSpec {
    /// Validate a request's fields against the engine's limits.
    pub fn new(
        command: String,
        timeout_ms: Option<u64>,
        max_output: Option<u64>,
        limits: &ExecLimits,
    ) -> Result<ExecSpec, Error> {
        if command.trim().is_empty() {
            return Err(Error::EmptyCommand);
        }
        if command.contains('\0') {
            return Err(Error::NulByte("command"));
        }
        let max_ms = limits.max_timeout.as_millis() as u64;
        let timeout = match timeout_ms {
            None => limits.default_timeout,
            Some(ms) if (1..=max_ms).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => return Err(Error::BadTimeout { got_ms: ms, max_ms }),
        };
        Ok(ExecSpec {
            command,
            timeout,
            cwd: None,
            env: BTreeMap::new(),
            stdin: None,
            max_output: max_output.unwrap_or(limits.default_max_output),
            profile: sandbox::Profile::Diagnostics,
        })
    }

    pub fn with_env(mut self, env: BTreeMap<String, String>) -> Result<ExecSpec, Error> {
        if env.values().any(|v| v.contains('\0')) {
            return Err(Error::NulByte("env"));
        }
        for name in env.keys() {
            let valid = !name.is_empty()
                && !name.contains(['=', '\0'])
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::BadEnvName(name.clone()));
            }
        }
        self.env = env;
        Ok(self)
    }

    pub fn with_cwd(mut self, cwd: Option<String>) -> Result<ExecSpec, Error> {
        if cwd.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err(Error::NulByte("cwd"));
        }
        self.cwd = cwd;
        Ok(self)
    }
}

/// Where output goes. Implementations decide how much may be read next (flow control).
pub trait OutputSink: Send + Sync + 'static {
    /// The child is running with this pid.
    fn started(&self, pid: u32);
    /// Wait until output may be forwarded, then reserve up to `want` bytes of it.
    fn reserve(&self, want: usize) -> impl Future<Output = usize> + Send;
    /// Forward `data` (at most what was reserved); the rest of the reservation is returned.
    fn output(&self, fd: Fd, data: &[u8], reserved: usize);
    /// No more output will come from `fd`.
    fn eof(&self, fd: Fd);
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// The last signal the engine sent to the process group, if it had to stop it.
    pub killed_with: Option<&'static str>,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
}

/// Counters shared by the two pipe readers.
#[derive(Default)]
struct Counters {
    stdout: AtomicU64,
    stderr: AtomicU64,
    forwarded: AtomicU64,
    truncated: AtomicBool,
}

/// Run one command to completion. `cancel` stops it early (the outcome says `cancelled`).
pub async fn run<S: OutputSink>(
    spec: ExecSpec,
    limits: &ExecLimits,
    secrets: &[Secret],
    sink: Arc<S>,
    cancel: CancellationToken,
) -> Result<Outcome, Error> {
    let start = Instant::now();
    let prlimit = limits.rlimits.prlimit_args();
    // prlimit sets the limits on itself and then execs the shell: same pid, same group.
    let mut program: Vec<OsString> = Vec::new();
    if !prlimit.is_empty() {
        program.push(crate::config::PRLIMIT.into());
        program.extend(prlimit.iter().map(OsString::from));
        program.push("--".into());
    }
    program.extend(["/bin/sh".into(), "-c".into(), OsString::from(&spec.command)]);
    let sandbox = &limits.sandbox;
    if sandbox.enforce {
        // The launcher confines itself and execs the rest: same pid, same group.
        let launch = sandbox::Launch {
            profile: spec.profile,
            user: match spec.profile {
                sandbox::Profile::Diagnostics => Some(sandbox.diagnostics_user.clone()),
                sandbox::Profile::Operator => Some(sandbox.operator_user.clone()),
                sandbox::Profile::Admin => None,
            },
            protect: sandbox.protect.clone(),
            writable: match spec.profile {
                sandbox::Profile::Diagnostics => sandbox.diagnostics_writable.clone(),
                sandbox::Profile::Operator => sandbox.operator_writable.clone(),
                sandbox::Profile::Admin => Vec::new(),
            },
            accept_no_landlock: sandbox.accept_no_landlock,
            program,
        };
        program = std::iter::once(sandbox.launcher.clone().into_os_string())
            .chain(launch.to_args())
            .collect();
    }
    let mut cmd = Command::new(&program[0]);
    cmd.args(&program[1..])
        .process_group(0)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .env_clear()
        .envs(child_env(std::env::vars_os(), &limits.scrub_env, secrets))
        .envs(&spec.env);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // The sandbox switches users itself (and needs root to do it).
    if let Some((uid, gid)) = limits.run_as.filter(|_| !sandbox.enforce) {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    let Some((pid, group)) = child.id().and_then(|p| Some((p, ProcessGroup::of(p)?))) else {
        // Not reachable in practice (nothing has waited on the child yet); never guess a pid.
        let _ = child.start_kill();
        return Err(Error::NoPid);
    };
    sink.started(pid);

    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), spec.stdin) {
        // A child that never reads its stdin must not block us: write in the background.
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }

    for fd in [
        child.stdout.as_ref().map(|p| p.as_fd()),
        child.stderr.as_ref().map(|p| p.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // Best effort: a smaller pipe only means smaller reads.
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    let counters = Arc::new(Counters::default());
    // Set once the group has been killed: the reader stops waiting for credit and discards.
    let stopped = CancellationToken::new();
    let reader = tokio::spawn(pump(
        child.stdout.take().map(boxed),
        child.stderr.take().map(boxed),
        sink.clone(),
        counters.clone(),
        spec.max_output,
        stopped.clone(),
    ));
    let reader_abort = reader.abort_handle();
    let readers = [reader];

    let work = async {
        let status = child.wait().await;
        for r in readers {
            let _ = r.await;
        }
        status
    };
    tokio::pin!(work);

    let mut timed_out = false;
    let mut cancelled = false;
    let mut killed_with = None;
    let status = tokio::select! {
        status = &mut work => status,
        _ = tokio::time::sleep(spec.timeout) => { timed_out = true; Err(std::io::ErrorKind::TimedOut.into()) }
        _ = cancel.cancelled() => { cancelled = true; Err(std::io::ErrorKind::Interrupted.into()) }
    };
    let status = if timed_out || cancelled {
        // Stop the whole group: a shell's background children die with it.
        group.signal(Signal::SIGTERM);
        killed_with = Some("SIGTERM");
        match tokio::time::timeout(limits.kill_grace, &mut work).await {
            Ok(status) => status,
            Err(_) => {
                group.signal(Signal::SIGKILL);
                killed_with = Some("SIGKILL");
                stopped.cancel();
                match tokio::time::timeout(limits.kill_grace, &mut work).await {
                    Ok(status) => status,
                    // A process that left the group still holds a pipe: give up on it.
                    Err(_) => {
                        reader_abort.abort();
                        Err(std::io::ErrorKind::TimedOut.into())
                    }
                }
            }
        }
    } else {
        status
    };
    stopped.cancel();

    let (exit_code, signal) = match status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, Some(Signal::SIGKILL as i32)),
    };
    Ok(Outcome {
        pid,
        exit_code,
        signal,
        timed_out,
        cancelled,
        killed_with,
        duration: start.elapsed(),
        stdout_bytes: counters.stdout.load(Ordering::Relaxed),
        stderr_bytes: counters.stderr.load(Ordering::Relaxed),
        truncated: counters.truncated.load(Ordering::Relaxed),
    })
}

fn boxed<R: AsyncRead + Unpin + Send + 'static>(r: R) -> Box<dyn AsyncRead + Unpin + Send> {
    Box::new(r)
}

type Pipe = Box<dyn AsyncRead + Unpin + Send>;

/// Copy both pipes into the sink, forwarding only as much as the sink grants.
///
/// One loop serves both pipes. It reads first and asks the sink for credit for what it read, so
/// the end of a pipe is noticed whatever the credit (a command whose output exactly uses up its
/// credit, or that prints nothing under zero credit, still ends). Bytes read beyond the credit
/// are held in the pipe's read buffer, and that pipe is not read again until they are
/// forwarded, so a stream without credit leaves its child blocked on a full pipe while memory
/// stays at one read buffer per pipe. Dropping the losing futures of the `select!` is safe:
/// tokio's `read` is cancellation safe and the sink's `reserve` takes nothing until it returns.
async fn pump<S: OutputSink>(
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    sink: Arc<S>,
    counters: Arc<Counters>,
    max_output: u64,
    stopped: CancellationToken,
) {
    const FDS: [Fd; 2] = [Fd::Stdout, Fd::Stderr];
    let mut pipes = [stdout, stderr];
    let mut bufs = [vec![0u8; FIRST_READ], vec![0u8; FIRST_READ]];
    // Bytes of each buffer read but not yet forwarded.
    let mut held = [0..0, 0..0];
    // The pipe whose held bytes are served first (alternates, so neither starves).
    let mut turn = 0;
    loop {
        let left = max_output.saturating_sub(counters.forwarded.load(Ordering::Relaxed));
        // Past the cap (or after a kill): keep the child unblocked and discard the rest.
        let discard = left == 0 || stopped.is_cancelled();
        if discard {
            for range in held.iter_mut() {
                if !(*range).is_empty() {
                    counters.truncated.store(true, Ordering::Relaxed);
                    *range = 0..0;
                }
            }
        }
        if pipes.iter().all(Option::is_none) && held.iter().all(|r| r.is_empty()) {
            break;
        }
        let serve = [turn, 1 - turn].into_iter().find(|&i| !held[i].is_empty());
        let want = serve.map_or(0, |i| (held[i].len() as u64).min(left) as usize);
        let [out_pipe, err_pipe] = &mut pipes;
        let [out_buf, err_buf] = &mut bufs;
        tokio::select! {
            granted = sink.reserve(want), if serve.is_some() => {
                let Some(i) = serve else { continue };
                let n = granted.min(want);
                let range = held[i].start..held[i].start + n;
                counters.forwarded.fetch_add(n as u64, Ordering::Relaxed);
                sink.output(FDS[i], &bufs[i][range], granted);
                held[i].start += n;
                if held[i].is_empty() {
                    held[i] = 0..0;
                }
                turn = 1 - i;
            }
            n = read_some(out_pipe, &mut out_buf[..]), if held[0].is_empty() => {
                take_read(0, n, &mut pipes, &mut bufs, &mut held, &counters, &*sink, discard);
            }
            n = read_some(err_pipe, &mut err_buf[..]), if held[1].is_empty() => {
                take_read(1, n, &mut pipes, &mut bufs, &mut held, &counters, &*sink, discard);
            }
            _ = stopped.cancelled(), if !discard => {}
            else => break,
        }
    }
}

/// Account for one read from pipe `i`: end of file closes it; otherwise the bytes are held for
/// forwarding (or dropped when discarding).
#[allow(clippy::too_many_arguments)]
fn take_read<S: OutputSink>(
    i: usize,
    n: usize,
    pipes: &mut [Option<Pipe>; 2],
    bufs: &mut [Vec<u8>; 2],
    held: &mut [std::ops::Range<usize>; 2],
    counters: &Counters,
    sink: &S,
    discard: bool,
) {
    let fd = [Fd::Stdout, Fd::Stderr][i];
    if n == 0 {
        pipes[i] = None;
        sink.eof(fd);
        return;
    }
    let total = match fd {
        Fd::Stdout => &counters.stdout,
        Fd::Stderr => &counters.stderr,
    };
    total.fetch_add(n as u64, Ordering::Relaxed);
    if discard {
        counters.truncated.store(true, Ordering::Relaxed);
        return;
    }
    held[i] = 0..n;
    let buf = &mut bufs[i];
    if n == buf.len() && buf.len() < READ_CHUNK {
        buf.resize(buf.len() * 2, 0);
    }
}

/// Read from a pipe that may already be closed (then never ready). Errors count as EOF.
async fn read_some(pipe: &mut Option<Pipe>, buf: &mut [u8]) -> usize {
    match pipe {
        Some(p) => p.read(buf).await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// The child's environment: the agent's own, minus secret variables and any variable whose
/// value is one of the secrets.
/// Names and values are OS strings: a variable that is not UTF-8 passes through unchanged
/// (reading the environment as `String`s would panic on it).
fn child_env(
    base: impl Iterator<Item = (OsString, OsString)>,
    scrub: &[String],
    secrets: &[Secret],
) -> Vec<(OsString, OsString)> {
    base.filter(|(k, v)| {
        let v = v.as_encoded_bytes();
        !scrub.iter().any(|s| k == s.as_str())
            && !secrets.iter().any(|s| {
                let s = s.expose().as_bytes();
                !s.is_empty() && v.windows(s.len()).any(|w| w == s)
            })
    })
    .collect()
}

/// A sink that collects output in memory, for callers that answer in one piece (local API).
#[derive(Default)]
pub struct Collect {
    inner: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl Collect {
    /// Stdout and stderr collected so far.
    pub fn take(&self) -> (Vec<u8>, Vec<u8>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *g)
    }
}

impl OutputSink for Collect {
    fn started(&self, _pid: u32) {}
    async fn reserve(&self, want: usize) -> usize {
        want
    }
    fn output(&self, fd: Fd, data: &[u8], _reserved: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match fd {
            Fd::Stdout => g.0.extend_from_slice(data),
            Fd::Stderr => g.1.extend_from_slice(data),
        }
    }
    fn eof(&self, _fd: Fd) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's limits with the sandbox off: these tests are about the engine, and their
    /// own executable (the test binary) is no launcher. `tests/sandbox.rs` covers the sandbox.
    fn unconfined() -> ExecLimits {
        let mut l = ExecLimits::default();
        l.sandbox.enforce = false;
        l
    }

    fn spec(cmd: &str, timeout_ms: u64) -> ExecSpec {
        ExecSpec::new(cmd.into(), Some(timeout_ms), None, &unconfined()).unwrap()
    }

    async fn run_collect(spec: ExecSpec, limits: &ExecLimits) -> (Outcome, Vec<u8>, Vec<u8>) {
        let sink = Arc::new(Collect::default());
        let out = run(
            spec,
            limits,
            &[Secret::new("hunter2-secret")],
            sink.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let (o, e) = sink.take();
        (out, o, e)
    }

    #[tokio::test]
    async fn captures_both_pipes_and_exit_code() {
        let (out, o, e) = run_collect(
            spec("echo out; echo err >&2; exit 3", 10_000),
            &unconfined(),
        )
        .await;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(o, b"out\n");
        assert_eq!(e, b"err\n");
        assert!(!out.timed_out && !out.cancelled && !out.truncated);
        assert_eq!((out.stdout_bytes, out.stderr_bytes), (4, 4));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        // The background sleep holds stdout open; only killing the group ends the command.
        let limits = ExecLimits {
            kill_grace: Duration::from_millis(500),
            ..unconfined()
        };
        let (out, o, _) = run_collect(spec("sleep 30 & echo $!; wait", 300), &limits).await;
        assert!(out.timed_out);
        assert_eq!(out.killed_with, Some("SIGTERM"));
        let bg: i32 = String::from_utf8_lossy(&o).trim().parse().unwrap();
        // The background child is gone (or a zombie about to be reaped by init). Its pipe
        // closes a moment before it turns into a zombie, so allow the kernel a bounded moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut alive = true;
        while alive && Instant::now() < deadline {
            alive = std::fs::read_to_string(format!("/proc/{bg}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false);
            if alive {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(!alive, "background child {bg} survived the timeout");
    }

    #[tokio::test]
    async fn sigterm_ignored_escalates_to_sigkill() {
        let limits = ExecLimits {
            kill_grace: Duration::from_millis(300),
            ..unconfined()
        };
        let (out, _, _) = run_collect(
            spec(
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
                200,
            ),
            &limits,
        )
        .await;
        assert!(out.timed_out);
        assert_eq!(out.killed_with, Some("SIGKILL"));
        assert_eq!(out.signal, Some(9));
    }

    #[tokio::test]
    async fn output_cap_truncates_but_drains() {
        let mut s = spec("head -c 1000000 /dev/zero", 10_000);
        s.max_output = 1000;
        let (out, o, _) = run_collect(s, &unconfined()).await;
        assert_eq!(out.exit_code, Some(0));
        assert!(out.truncated);
        assert_eq!(o.len(), 1000);
        assert_eq!(out.stdout_bytes, 1_000_000);
    }

    #[test]
    fn secrets_are_scrubbed_from_the_child_env() {
        let base = [
            ("PATH", "/bin"),
            ("DTMA_BEARER_TOKEN", "tok"),
            ("CREDENTIALS_DIRECTORY", "/run/creds"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "30000000"),
            ("COPY", "prefix-hunter2-secret"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = child_env(
            base.into_iter(),
            &unconfined().scrub_env,
            &[Secret::new("hunter2-secret")],
        );
        assert_eq!(env, vec![("PATH".into(), "/bin".into())]);
    }

    #[test]
    fn variables_that_are_not_utf8_pass_through_and_are_still_scrubbed() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'a', 0xff, b'b']);
        let odd_secret = OsString::from_vec(vec![0xfe, b'h', b'u', b'n', b't', b'e', b'r', b'2']);
        let base = [
            (OsString::from("ODD"), odd.clone()),
            (OsString::from("LEAK"), odd_secret),
        ];
        let env = child_env(base.into_iter(), &[], &[Secret::new("hunter2")]);
        assert_eq!(env, vec![("ODD".into(), odd)]);
    }

    /// A sink that grants exactly `budget` bytes in total, then waits for ever (a backend that
    /// grants only what it wants, or starts a stream paused).
    struct Budget {
        left: std::sync::Mutex<usize>,
        out: std::sync::Mutex<Vec<u8>>,
    }
    impl OutputSink for Budget {
        fn started(&self, _pid: u32) {}
        async fn reserve(&self, want: usize) -> usize {
            let take = {
                let mut left = self.left.lock().unwrap();
                let take = want.min(*left);
                *left -= take;
                take
            };
            if take == 0 {
                std::future::pending::<()>().await;
            }
            take
        }
        fn output(&self, _fd: Fd, data: &[u8], _reserved: usize) {
            self.out.lock().unwrap().extend_from_slice(data);
        }
        fn eof(&self, _fd: Fd) {}
    }

    async fn run_with_budget(cmd: &str, budget: usize) -> (Outcome, Vec<u8>) {
        let sink = Arc::new(Budget {
            left: std::sync::Mutex::new(budget),
            out: Default::default(),
        });
        let out = run(
            spec(cmd, 20_000),
            &unconfined(),
            &[],
            sink.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let bytes = sink.out.lock().unwrap().clone();
        (out, bytes)
    }

    #[tokio::test]
    async fn output_that_exactly_uses_up_the_credit_still_ends() {
        let (out, bytes) = run_with_budget("printf abc", 3).await;
        assert_eq!(bytes, b"abc");
        assert_eq!(out.exit_code, Some(0));
        assert!(!out.timed_out, "{out:?}");
        assert_eq!(out.killed_with, None);
    }

    #[tokio::test]
    async fn a_silent_command_ends_under_zero_credit() {
        let (out, bytes) = run_with_budget("true", 0).await;
        assert!(bytes.is_empty());
        assert_eq!(out.exit_code, Some(0));
        assert!(!out.timed_out, "{out:?}");
    }

    #[tokio::test]
    async fn output_beyond_the_credit_waits_and_the_child_blocks() {
        // 1 byte of credit for 4 MiB: the rest is held (or left in the pipe) and the command can
        // only end by its timeout, with the pipes' bytes never forwarded.
        let sink = Arc::new(Budget {
            left: std::sync::Mutex::new(1),
            out: Default::default(),
        });
        let out = run(
            spec("head -c 4194304 /dev/zero; echo done >&2", 500),
            &ExecLimits {
                kill_grace: Duration::from_millis(200),
                ..unconfined()
            },
            &[],
            sink.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(out.timed_out, "{out:?}");
        assert_eq!(sink.out.lock().unwrap().len(), 1);
        // The agent read at most its read buffer plus the pipe's capacity, not the 4 MiB.
        assert!(out.stdout_bytes < 4 << 20, "{out:?}");
    }

    #[test]
    fn a_process_group_is_never_zero() {
        assert_eq!(ProcessGroup::of(0), None);
        assert_eq!(ProcessGroup::of(u32::MAX), None);
        assert_eq!(ProcessGroup::of(42), Some(ProcessGroup(Pid::from_raw(42))));
    }

    #[tokio::test]
    async fn rlimits_and_run_as_apply_to_the_child() {
        let limits = ExecLimits {
            rlimits: crate::config::Rlimits {
                open_files: Some(77),
                ..Default::default()
            },
            run_as: Some((65534, 65534)),
            ..unconfined()
        };
        let (out, o, e) = run_collect(spec("ulimit -n; id -u", 10_000), &limits).await;
        assert_eq!(out.exit_code, Some(0), "{}", String::from_utf8_lossy(&e));
        assert_eq!(String::from_utf8_lossy(&o), "77\n65534\n");
    }

    #[test]
    fn bad_specs_are_typed() {
        let l = unconfined();
        assert!(matches!(
            ExecSpec::new("  ".into(), None, None, &l),
            Err(Error::EmptyCommand)
        ));
        assert!(matches!(
            ExecSpec::new("x".into(), Some(0), None, &l),
            Err(Error::BadTimeout { .. })
        ));
        let bad = BTreeMap::from([("A=B".to_string(), "x".to_string())]);
        assert!(matches!(
            ExecSpec::new("x".into(), None, None, &l)
                .unwrap()
                .with_env(bad),
            Err(Error::BadEnvName(_))
        ));
    }
}
