//! Command policy: decides whether a shell command line sent by the backend may run, by reasoning about what it runs.
//!
//! # Approach
//! The command line is parsed the way `/bin/sh -c` (dash) would parse it ([`shell`]): quoting, escapes, here-documents,
//! subshells, groups, loops, `if`/`case`, functions, command/process substitutions and backticks. The result is a flat
//! list of every simple command anywhere in the tree, each with its words (static literal or dynamic) and its
//! redirections. Then every simple command and every redirection is judged (`rules`):
//! - the program is resolved by basename, looking through wrappers (`sudo`, `env`, `timeout`, `xargs`,
//!   `find -exec`, `busybox`, …) and into nested shell code (`sh -c`, `su -c`, `watch`, `trap`, …), which is parsed and
//!   judged recursively;
//! - deny rules match on the program and its parsed arguments, never on raw substrings of the line (so
//!   `grep -i shutdown /var/log/syslog` is fine while `/sbin/shutdown -h now` is not);
//! - anything that cannot be judged statically is denied: a non-static command word (`$X`, `$(echo rm)`), `eval`,
//!   shell code that is dynamic, code piped or here-doc'ed into a shell or interpreter, recursive deletes of
//!   non-static paths, inline interpreter code that can run commands, input that does not parse, nests too deep
//!   or is too long;
//! - finally the role's allow-list applies: `Diagnostics` gets a read-only set (no output redirection except to
//!   `/dev/null`, no credential files such as `/etc/shadow`); `Operator` gets that set plus `docker` (any
//!   subcommand) plus the configured programs (with any arguments), and may redirect output to files; `Admin` has
//!   no allow-list. Wrappers that only adjust how a program runs (`timeout`, `nice`, `env`, `xargs`, `sh -c` with
//!   static code, …) are looked through; `sudo`, `su`, `chroot` and the like must themselves be allowed.
//!
//! Reading the environment (`env`, `printenv`, `set`, `export -p`) is allowed on purpose: the agent scrubs secrets
//! from the child's environment before running it. Naming the agent's secrets (`DTMA_BEARER_TOKEN`,
//! `BACKEND_TO_DTMA_API_KEY`, `$CREDENTIALS_DIRECTORY`, `/etc/dtma*`) or reading another process's
//! `/proc/<pid>/environ` is denied.
//!
//! Relative paths are resolved against `/` (a systemd service's working directory) and against every directory a
//! static `cd` in the same line may switch to; a dynamic `cd` makes relative paths of dangerous operations
//! unjudgeable.
//!
//! # Layout
//! - [`shell`]: the dash-like parser (words, redirections, the flat list of simple commands).
//! - `rules/` (private): the engine (`rules/mod.rs`: rule order, per-script context, rule names) and one module per
//!   rule family: `resolve` (wrappers and nested shell code), `args`, `paths`, `writes`, `deletion`, `power`,
//!   `processes`, `secrets`, `services`, `firewall`, `network`, `permissions`, `code`, `awk_sed`, `embedded`,
//!   `containers`, `roles`. Each carries unit tests of its family; `tests/policy_corpus.rs` is the end-to-end corpus.
//!
//! # Known limits
//! The policy judges the command line, not the programs' behaviour:
//! - aliases, functions and `PATH` entries defined earlier on the machine (e.g. in profile files) are unknown;
//! - scripts on disk run by a shell or interpreter (`bash deploy.sh`, `python3 script.py`) are allowed whatever they do;
//! - inline interpreter code is screened by a deny-list of names, which a determined author can obfuscate;
//! - programs with their own command-execution options are covered only for common ones (`find -exec`, `xargs`,
//!   `tar --to-command`, `rsync -e`, `ssh -o ProxyCommand`, `git -c core.*`, `sed e`, `awk system()`);
//!   others (editors, pagers, `docker run` with host mounts, remote `ssh host cmd`) are not;
//! - arithmetic and parameter expansions are treated as opaque data (bash array-subscript tricks are out of scope,
//!   the agent runs dash).

mod rules;
pub mod shell;

use regex::{Regex, RegexBuilder};

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only diagnostics.
    Diagnostics,
    /// Day-to-day operations: diagnostics plus docker plus configured programs.
    Operator,
    /// Anything the deny rules pass.
    Admin,
}

/// The verdict on one command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Whether the command may run.
    pub allowed: bool,
    /// Stable name of the rule that decided, e.g. "power_state", "mass_deletion", "unparsable", "role_diagnostics", "allowed".
    pub rule: String,
    /// Human sentence for the caller, naming the offending program/argument, e.g. "`shutdown` changes the machine's power state".
    pub reason: String,
}

/// Extra configuration from the agent's config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Extra deny regexes (applied to each simple command's words joined by single spaces, after parsing). Name = rule name.
    #[serde(default)]
    pub extra_deny: Vec<NamedPattern>,
    /// Programs (basename) an Operator may run in addition to the diagnostics set.
    #[serde(default)]
    pub operator_allow: Vec<String>,
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

/// The command policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    extra_deny: Vec<(String, Regex)>,
    operator_allow: Vec<String>,
}

impl Policy {
    /// Build a policy from the built-in rules plus the configuration.
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
        Ok(Policy {
            extra_deny,
            operator_allow: cfg.operator_allow.clone(),
        })
    }

    /// Judge one command line for a role.
    pub fn check(&self, role: Role, command: &str) -> Decision {
        let engine = rules::Engine {
            extra_deny: &self.extra_deny,
            operator_allow: &self.operator_allow,
        };
        match engine.check(role, command, 0) {
            Ok(()) => Decision {
                allowed: true,
                rule: rules::ALLOWED.to_string(),
                reason: "no rule denies this command".to_string(),
            },
            Err(d) => Decision {
                allowed: false,
                rule: d.rule.into_owned(),
                reason: d.reason,
            },
        }
    }
}
