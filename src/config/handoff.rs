//! Keeping the agent's secrets out of its own `/proc/<pid>/environ`.
//!
//! The kernel shows a process's initial environment to anyone allowed to read
//! `/proc/<pid>/environ`: root, the admin sandbox profile included (on the kernels measured,
//! 6.18, that file is not behind the ptrace check that Landlock applies to `mem`, `fd/` or
//! `root`). A token given as `DTMA_BEARER_TOKEN=...` would sit there for the life of the
//! process; removing it from `std::env` does not change what the kernel shows. (Secrets given as
//! flags are refused by the configuration: the command line is readable by every local user.)
//!
//! So at its very start, when a secret arrived that way, the agent writes the secrets into an
//! anonymous memory file (`memfd`), and `exec`s itself with the same arguments and environment
//! minus the secrets, plus `DTMA_SECRETS_FD=<fd>`. The new image (same pid, so systemd and
//! supervisors see no change) reads the secrets back through `/proc/self/fd/<fd>`, closes the
//! descriptor before any command can inherit it, and takes them as if they were environment
//! variables. Token files and systemd credentials (`LoadCredential=`) never need this.
//!
//! Fails open to a warning, not to a stop: if the `exec` fails, the agent runs on with the
//! secrets where they were (and says so), as it did before this hand-off existed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

/// Variables whose values are secrets. (The same settings given as flags are refused by the
/// configuration: the command line is readable by every local user.)
pub const SECRETS: [&str; 2] = ["DTMA_BEARER_TOKEN", "BACKEND_TO_DTMA_API_KEY"];

/// The variable that names the hand-off descriptor in the new image.
pub const FD_VAR: &str = "DTMA_SECRETS_FD";

/// Why the hand-off did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot keep the secrets out of /proc/self/environ: {0}")]
    Reexec(String),
    #[error("cannot read the secrets handed over by the previous image: {0}")]
    Read(String),
}

/// The secrets given by environment (UTF-8 only: others are left for the configuration to
/// report).
fn secrets(env: &BTreeMap<OsString, OsString>) -> BTreeMap<String, String> {
    SECRETS
        .iter()
        .filter_map(|var| {
            let v = env.get(OsStr::new(var))?.to_str()?;
            Some(((*var).to_owned(), v.to_owned()))
        })
        .collect()
}

/// Re-`exec` this program without its secrets in the environment (see the module doc). Returns `Ok` when there is nothing to hand off (or this image already received them);
/// on success it does not return at all.
pub fn reexec_without_secrets() -> Result<(), Error> {
    let env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    if env.contains_key(OsStr::new(FD_VAR)) {
        return Ok(());
    }
    let secrets = secrets(&env);
    if secrets.is_empty() {
        return Ok(());
    }
    let fail = |e: &dyn std::fmt::Display| Error::Reexec(e.to_string());
    let json = serde_json::to_vec(&secrets).map_err(|e| fail(&e))?;
    // Without MFD_CLOEXEC: the descriptor must survive the exec below.
    let fd = nix::sys::memfd::memfd_create(c"dtma-secrets", nix::sys::memfd::MFdFlags::empty())
        .map_err(|e| fail(&e))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&json).map_err(|e| fail(&e))?;
    file.rewind().map_err(|e| fail(&e))?;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(argv0) = args.next() {
        cmd.arg0(argv0);
    }
    cmd.args(args);
    for var in SECRETS {
        cmd.env_remove(var);
    }
    cmd.env(FD_VAR, file.as_raw_fd().to_string());
    let e = cmd.exec();
    Err(fail(&e))
}

/// In the new image: take the handed-over secrets into `env` (the configuration's view of the
/// environment) and close the descriptor. No-op without [`FD_VAR`].
pub fn receive(env: &mut BTreeMap<OsString, OsString>) -> Result<(), Error> {
    let Some(value) = env.remove(OsStr::new(FD_VAR)) else {
        return Ok(());
    };
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| Error::Read(format!("{FD_VAR}={value:?} is not a descriptor")))?;
    let read = || -> Result<BTreeMap<String, String>, String> {
        let mut text = String::new();
        std::fs::File::open(format!("/proc/self/fd/{fd}"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let secrets = read();
    // Closed whatever happened: a command must never inherit it.
    let closed = nix::unistd::close(fd);
    let secrets = secrets.map_err(Error::Read)?;
    closed.map_err(|e| Error::Read(format!("closing descriptor {fd}: {e}")))?;
    for (var, value) in secrets {
        if SECRETS.contains(&var.as_str()) {
            env.insert(var.into(), value.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_variables_are_handed_off() {
        let env: BTreeMap<OsString, OsString> = [
            ("DTMA_BEARER_TOKEN", "t"),
            ("BACKEND_TO_DTMA_API_KEY", "k"),
            ("DTMA_BEARER_TOKEN_FILE", "/f"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let got = secrets(&env);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got["DTMA_BEARER_TOKEN"].as_str(),
                got["BACKEND_TO_DTMA_API_KEY"].as_str()
            ),
            ("t", "k")
        );
        assert!(secrets(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_bad_descriptor_variable_is_a_typed_error() {
        let mut env: BTreeMap<OsString, OsString> =
            [(OsString::from(FD_VAR), OsString::from("stdin"))].into();
        assert!(matches!(receive(&mut env), Err(Error::Read(_))));
        assert!(env.is_empty(), "the variable is consumed");
        assert!(receive(&mut BTreeMap::new()).is_ok());
    }
}
