//! PID 1 in a container: a minimal init in front of the agent.
//!
//! Docker runs the image's entrypoint as PID 1 of the container's pid namespace. A command's
//! background jobs (`sh -c 'sleep 30 &'`) outlive their shell and are re-parented to PID 1, and
//! only PID 1 can reap them: left alone they stay zombies until the pid limit is exhausted. The
//! agent cannot simply `waitpid(-1)`: that would steal the exit status of its own commands from
//! tokio, which waits on their pids. So when the agent finds itself PID 1 it splits in two: it
//! spawns itself (`/proc/self/exe`, same arguments, [`CHILD_VAR`] set) as its only child, the
//! agent proper with an ordinary pid, and this process becomes the init ([`Init::run`]): it
//! reaps every child it gets, forwards the stop signals to the agent, and exits with the
//! agent's exit status (128 + the signal's number when a signal ended it). When it exits, the
//! kernel kills whatever is left in the namespace.
//!
//! Signals: the kernel delivers to PID 1 only the signals it handles, except that a *blocked*
//! signal is queued, never ignored. The init blocks the forwarded signals and SIGCHLD before it
//! spawns the agent (so a `docker stop` that arrives early is not lost) and takes them one by
//! one with `sigwait`: no handler, no self-pipe, no unsafe code. A child inherits the signal
//! mask (std's `Command` does not reset it, and resetting it in the child would need `pre_exec`,
//! which is unsafe), so the agent unblocks the same set first thing ([`run_if_pid1`] in the
//! marked child); otherwise its SIGTERM handler would never run and `docker stop` would end in
//! SIGKILL.
//!
//! `main.rs` calls [`run_if_pid1`] after the `sandbox-exec` branch (a launcher is never an
//! init) and after the secrets hand-off (`config::handoff`), so that the init's own
//! `/proc/1/environ`, readable by admin commands, holds no secret; the hand-off's descriptor
//! goes to the agent and the init closes its copy.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Set in the agent the init spawns: it unblocks the signals it inherited blocked, and never
/// becomes an init itself.
pub const CHILD_VAR: &str = "DTMA_INIT_CHILD";

/// The signals passed on to the agent: the stop signals (`docker stop` sends SIGTERM, a
/// terminal SIGINT) and the two others a supervisor may send; the agent decides what they mean.
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Why the init could not start the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot block the signals the init forwards: {0}")]
    Mask(Errno),
    #[error("cannot start the agent under the init (/proc/self/exe): {0}")]
    Spawn(std::io::Error),
}

/// Whether this process should become the init: it is PID 1, and not the agent an init spawned.
pub fn should_become_init(pid: u32, marked_child: bool) -> bool {
    pid == 1 && !marked_child
}

/// The exit code a reaped process's status stands for, as a shell reports it; `None` for a
/// status that is not an end (stopped, continued, still alive).
pub fn exit_code(status: WaitStatus) -> Option<u8> {
    match status {
        // The kernel keeps only the low 8 bits of an exit status.
        WaitStatus::Exited(_, code) => Some((code & 0xff) as u8),
        WaitStatus::Signaled(_, signal, _) => Some(128u8.saturating_add(signal as u8)),
        _ => None,
    }
}

/// What the init does with a signal it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reap every child that has ended.
    Reap,
    /// Send this signal to the agent.
    Forward(Signal),
}

/// The init's answer to `signal` (only SIGCHLD and [`FORWARDED`] are ever unblocked for it).
pub fn action(signal: Signal) -> Action {
    match signal {
        Signal::SIGCHLD => Action::Reap,
        other => Action::Forward(other),
    }
}

/// The signals the init takes with `sigwait`: [`FORWARDED`] and SIGCHLD.
fn taken() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// If this process is PID 1 (and not an init's child), become the init: spawn the agent and
/// supervise it; returns the exit code for `main`. `None`: run the agent in this process, as
/// before (not PID 1, or the init could not start; then it says why on stderr: logging is not
/// set up yet). In the init's child, first unblock the signals the init blocked.
pub fn run_if_pid1() -> Option<u8> {
    let marked = std::env::var_os(CHILD_VAR).is_some();
    if marked {
        if let Err(e) = taken().thread_unblock() {
            eprintln!("dtma: cannot unblock the signals inherited from the init: {e}");
        }
        return None;
    }
    if !should_become_init(std::process::id(), marked) {
        return None;
    }
    match Init::start() {
        Ok(init) => Some(init.run()),
        Err(e) => {
            eprintln!("dtma: {e}; running as PID 1 without reaping orphaned processes");
            None
        }
    }
}

/// The init: the agent's pid, the signals it takes.
#[derive(Debug)]
pub struct Init {
    agent: Pid,
    signals: SigSet,
}

impl Init {
    /// Block the taken signals, spawn the agent (`/proc/self/exe` with this process's
    /// arguments and [`CHILD_VAR`]), and close this process's copy of the secrets hand-off
    /// descriptor. On failure the signals are unblocked again.
    pub fn start() -> Result<Init, Error> {
        let signals = taken();
        signals.thread_block().map_err(Error::Mask)?;
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(argv0) = args.next() {
            cmd.arg0(argv0);
        }
        cmd.args(args).env(CHILD_VAR, "1");
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Best effort: the agent then runs here, and must get its signals.
                let _ = signals.thread_unblock();
                return Err(Error::Spawn(e));
            }
        };
        // The child inherited the descriptor; this process never reads it.
        if let Some(fd) = std::env::var_os(crate::config::handoff::FD_VAR).and_then(descriptor) {
            let _ = nix::unistd::close(fd);
        }
        let agent = Pid::from_raw(child.id() as i32);
        // `child` is dropped without a wait: the loop reaps it by pid with every other child.
        Ok(Init { agent, signals })
    }

    /// Reap and forward until the agent ends; return its exit code.
    pub fn run(self) -> u8 {
        loop {
            let signal = match self.signals.wait() {
                Ok(s) => s,
                Err(e) => {
                    // sigwait fails only on an invalid set: reap without forwarding.
                    eprintln!("dtma init: sigwait failed ({e}); reaping without forwarding");
                    return self.reap_blocking();
                }
            };
            match action(signal) {
                Action::Reap => {
                    if let Some(code) = self.reap() {
                        return code;
                    }
                }
                Action::Forward(s) => match kill(self.agent, s) {
                    // Already gone: its SIGCHLD is queued.
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => eprintln!("dtma init: cannot forward {s} to the agent: {e}"),
                },
            }
        }
    }

    /// Reap every child that has ended (SIGCHLD is not queued per child); the agent's exit
    /// code once it is among them.
    fn reap(&self) -> Option<u8> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
                Ok(status) if status.pid() == Some(self.agent) => {
                    if let Some(code) = exit_code(status) {
                        return Some(code);
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("dtma init: waitpid failed: {e}");
                    return None;
                }
            }
        }
    }

    fn reap_blocking(&self) -> u8 {
        loop {
            match waitpid(None, None) {
                Ok(status) if status.pid() == Some(self.agent) => {
                    if let Some(code) = exit_code(status) {
                        return code;
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                // No child left, the agent included: it was reaped without a status.
                Err(_) => return 70,
            }
        }
    }
}

/// A descriptor number from the hand-off variable (never stdin, stdout or stderr).
fn descriptor(value: OsString) -> Option<i32> {
    value.to_str()?.parse().ok().filter(|fd| *fd > 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unmarked_pid_1_becomes_the_init() {
        assert!(should_become_init(1, false));
        assert!(!should_become_init(1, true), "the init's own child");
        assert!(!should_become_init(2, false));
        assert!(!should_become_init(std::process::id(), false));
    }

    #[test]
    fn exit_codes_are_what_a_shell_reports() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 64)), Some(64));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 256 + 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            Some(143)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, true)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
        assert_eq!(exit_code(WaitStatus::Continued(pid)), None);
        assert_eq!(
            exit_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)),
            None,
            "a stopped agent has not ended"
        );
    }

    #[test]
    fn sigchld_reaps_and_every_other_taken_signal_is_forwarded() {
        assert_eq!(action(Signal::SIGCHLD), Action::Reap);
        for s in FORWARDED {
            assert_eq!(action(s), Action::Forward(s));
        }
        let set = taken();
        assert!(set.contains(Signal::SIGCHLD));
        assert!(FORWARDED.iter().all(|s| set.contains(*s)));
        assert!(
            !set.contains(Signal::SIGKILL) && !set.contains(Signal::SIGPIPE),
            "only what the init handles is blocked"
        );
    }

    #[test]
    fn the_handoff_descriptor_is_parsed_strictly() {
        assert_eq!(descriptor("5".into()), Some(5));
        for bad in ["2", "0", "-1", "x", ""] {
            assert_eq!(descriptor(bad.into()), None, "{bad}");
        }
    }
}
