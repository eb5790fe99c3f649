//! Command policy: guard rails against an honest admin's (or a backend bug's) classic slips in a shell command line.
//!
//! **This is not a security boundary.** What a command may touch is decided by the kernel sandbox it runs under
//! (`crate::exec::sandbox`: the role's user, Landlock ruleset, seccomp filter and `no_new_privs`, applied before
//! `/bin/sh` starts). Someone who wants past these rails gets past them (an interpreter, a script on disk, an
//! obfuscated string); they are here to catch `rm -rf /` typed by a tired human, not to stop an attacker.
//!
//! # What it checks
//! The line is parsed as dash (`/bin/sh`) parses it ([`shell`]); every simple command anywhere in it (in
//! substitutions, loops, groups, functions) is looked at through the obvious wrappers (`sudo`, `doas`, `env`, `nice`,
//! `ionice`, `timeout`, `nohup`, `xargs`, `time`, `stdbuf`, `command`, `exec`) and into shell code that can be read
//! statically (`sh -c`/`bash -c CODE`, `eval`, `env -S`, a here-document into a shell), then judged by these rules:
//!
//! | rule | the slip |
//! |---|---|
//! | `mass_deletion` | recursive delete of a system path or of everything in one (`rm -rf /`, `/etc`, `/usr`, `/*`, `/var/lib/docker/*`; `find / -delete`) |
//! | `filesystem_tools` | creating a filesystem (`mkfs*`, `mke2fs`; `mkswap` of a device, not of a file) |
//! | `block_device_write` | raw writes to a disk (`dd of=/dev/sda`, `> /dev/nvme0n1`, `shred`/`wipefs -a`/`blkdiscard`/`tee` on a disk, partition tools that write; `fdisk -l`, `sfdisk -d`, `parted … print` pass) |
//! | `power_state` | `shutdown`, `reboot`, `halt`, `poweroff`, `init 0/1/6`, `systemctl reboot/poweroff/halt/kexec/…`, `kexec -e` |
//! | `account_change` | root account changes (`passwd root`, bare `passwd`, `userdel root`, `usermod -L root`) |
//! | `download_exec` | a download run as code (`curl … \| sh`, `wget -O- \| bash`, `bash -c "$(curl …)"`, `bash <(curl …)`) |
//! | `crontab_remove` | `crontab -r` |
//! | `docker_volume_prune` | `docker system prune --volumes`, `docker volume prune -a` |
//! | `docker_remove_all` | removing every container or volume (`docker rm -f $(docker ps -aq)`, `docker ps -q \| xargs docker rm`) |
//! | `docker_host_access` | `docker run`/`create` with `--privileged` or a bind mount of the host's root (`-v /:/host`) |
//! | `unjudgeable` | an expansion or pattern where a literal could be one of the slips above (`rm -rf /$X`, `$CMD -rf /`, `dd of=$DEV`); literal text that cannot be a slip passes (`rm -rf /tmp/build-*`) |
//! | `unparsable` | dash would reject the line (or it is too long or too deep) |
//!
//! A passing command gets `allowed`; configured `extra_deny` patterns report their own names. The rule names are
//! stable: they reach audit records and API errors.
//!
//! # Known limits
//! - Scripts on disk, interpreters' code (`python3 -c …`), aliases and functions defined elsewhere, and programs' own
//!   ways to run commands (`find -exec`, `git -c`, editors) are not looked into.
//! - A relative path is resolved against `/` (the service's working directory) or the last static `cd` before it;
//!   whether that `cd` succeeded is not known (`cd /x; rm -rf *` is judged as if it had).
//! - A request's own working directory is not known to the rails.
//! - Words are not expanded: `$HOME`, `~`, `$(…)` are unknown strings, judged only where a literal could be a slip.
//!
//! # Layout
//! - [`shell`]: the dash parser (words, patterns, redirections, here-documents, the flat list of simple commands).
//! - `rails` (private): the engine (wrappers, nested code, expansions in program words, `extra_deny`).
//! - `rules` (private): the rule families. `tests/policy_corpus.rs` holds the slips, the legitimate corpus and the
//!   differential test against the real dash.

mod rails;
mod rules;
pub mod shell;

use regex::{Regex, RegexBuilder};

/// Who is asking. The rails apply to every role alike; the role picks the caller's sandbox profile and what the
/// local API lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only diagnostics.
    Diagnostics,
    /// Day-to-day operations, MCP management.
    Operator,
    /// Everything the sandbox's admin profile allows.
    Admin,
}

/// The rule name of a command that passes.
pub const ALLOWED: &str = "allowed";
pub(crate) const UNPARSABLE: &str = "unparsable";
pub(crate) const UNJUDGEABLE: &str = "unjudgeable";
pub(crate) const MASS: &str = "mass_deletion";
pub(crate) const FS_TOOLS: &str = "filesystem_tools";
pub(crate) const BLOCK_WRITE: &str = "block_device_write";
pub(crate) const POWER: &str = "power_state";
pub(crate) const ACCOUNT: &str = "account_change";
pub(crate) const DOWNLOAD: &str = "download_exec";
pub(crate) const CRONTAB: &str = "crontab_remove";
pub(crate) const DOCKER_VOLUMES: &str = "docker_volume_prune";
pub(crate) const DOCKER_REMOVE_ALL: &str = "docker_remove_all";
pub(crate) const DOCKER_HOST: &str = "docker_host_access";

/// Every rule name the built-in rails can report (configured `extra_deny` names come on top).
pub const RULES: &[&str] = &[
    ALLOWED,
    UNPARSABLE,
    UNJUDGEABLE,
    MASS,
    FS_TOOLS,
    BLOCK_WRITE,
    POWER,
    ACCOUNT,
    DOWNLOAD,
    CRONTAB,
    DOCKER_VOLUMES,
    DOCKER_REMOVE_ALL,
    DOCKER_HOST,
];

/// The verdict on one command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Whether the command may run.
    pub allowed: bool,
    /// Stable rule name: one of [`RULES`] or a configured `extra_deny` name.
    pub rule: String,
    /// Human sentence for the caller, naming the offending program or word.
    pub reason: String,
}

/// The `[policy]` section of the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Extra deny regexes, applied to each program's words joined by single spaces (after wrappers). Name = rule name.
    #[serde(default)]
    pub extra_deny: Vec<NamedPattern>,
    /// Accepted for old config files and ignored (with a warning at start): the operator role is a sandbox profile.
    #[serde(default)]
    pub operator_allow: Option<Vec<String>>,
}

/// A named regular expression.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NamedPattern {
    /// Rule name reported when the pattern matches.
    pub name: String,
    /// The regular expression (Rust `regex` syntax).
    pub pattern: String,
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured pattern does not compile.
    #[error("policy rule `{name}`: invalid regex: {source}")]
    BadPattern {
        /// The rule name.
        name: String,
        /// The regex error.
        source: regex::Error,
    },
}

/// The guard rails.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    extra_deny: Vec<(String, Regex)>,
}

impl Policy {
    /// Build the rails plus the configured `extra_deny` patterns.
    pub fn new(cfg: &PolicyConfig) -> Result<Policy, Error> {
        let mut extra_deny = Vec::with_capacity(cfg.extra_deny.len());
        for p in &cfg.extra_deny {
            let re = RegexBuilder::new(&p.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|source| Error::BadPattern {
                    name: p.name.clone(),
                    source,
                })?;
            extra_deny.push((p.name.clone(), re));
        }
        Ok(Policy { extra_deny })
    }

    /// Judge one command line (for every role alike).
    pub fn check(&self, command: &str) -> Decision {
        let engine = rails::Engine {
            extra_deny: &self.extra_deny,
        };
        match engine.check(command, shell::Dialect::Dash, 0) {
            Ok(()) => Decision {
                allowed: true,
                rule: ALLOWED.to_string(),
                reason: "no guard rail applies to this command".to_string(),
            },
            Err(d) => Decision {
                allowed: false,
                rule: d.rule.into_owned(),
                reason: d.reason,
            },
        }
    }
}
