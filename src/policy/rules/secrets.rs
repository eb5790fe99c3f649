//! The agent's secrets and other processes' environments (`process_secrets`): naming `DTMA_BEARER_TOKEN` and the
//! like, reading `/etc/dtma*`, `/run/credentials`, `/proc/<pid>/environ` or `/proc/<pid>/mem`, or `ps e`.
//!
//! Reading the environment of the command itself (`env`, `printenv`) is allowed: the agent scrubs its secrets from the
//! child's environment before running it.

use super::paths::{is_proc_secret, normalize, under};
use super::{Ctx, Inv, SECRETS, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// Names of the agent's secrets; a word containing one is denied wherever it appears.
const SECRET_NAMES: &[&str] = &[
    "DTMA_BEARER_TOKEN",
    "BACKEND_TO_DTMA_API_KEY",
    "CREDENTIALS_DIRECTORY",
];

/// Any word naming one of the agent's secrets.
pub(super) fn secret_names(w: &Word) -> Verdict {
    for s in SECRET_NAMES {
        if w.raw.contains(s) || w.approx.contains(s) {
            return Err(deny(
                SECRETS,
                format!("`{}` refers to the agent's secret `{s}`", shorten(&w.raw)),
            ));
        }
    }
    Ok(())
}

/// Any word naming (or embedding, as in `if=/proc/1/environ`) another process's environment or memory, or the
/// agent's credential files.
pub(super) fn secret_paths(w: &Word, ctx: &Ctx) -> Verdict {
    let mut paths = ctx.paths(w);
    // Paths embedded in larger text (awk programs, inline code, `if=/proc/…`).
    for piece in w
        .approx
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | '<' | '(' | ','))
    {
        if piece.starts_with('/') {
            paths.push(normalize(piece, "/"));
        }
    }
    for p in paths {
        if is_proc_secret(&p) {
            return Err(deny(
                SECRETS,
                format!("`{p}` exposes another process's environment or memory"),
            ));
        }
        if p.starts_with("/etc/dtma") || under(&p, "/run/credentials") {
            return Err(deny(
                SECRETS,
                format!("`{p}` holds the agent's credentials"),
            ));
        }
    }
    Ok(())
}

/// `ps` with the BSD `e` flag prints every process's environment.
pub(super) fn ps_rules(inv: &Inv) -> Verdict {
    if inv.name != "ps" {
        return Ok(());
    }
    let args = inv.args();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        i += 1;
        let t = a.text();
        if let Some(l) = t.strip_prefix("--") {
            if !l.contains('=')
                && matches!(
                    l,
                    "sort"
                        | "format"
                        | "pid"
                        | "ppid"
                        | "user"
                        | "group"
                        | "cols"
                        | "columns"
                        | "lines"
                        | "rows"
                        | "width"
                        | "tty"
                        | "sid"
                        | "Group"
                        | "User"
                        | "quick-pid"
                )
            {
                i += 1;
            }
            continue;
        }
        if let Some(body) = t.strip_prefix('-') {
            if let Some(k) = body.find(|ch: char| "oOpuUgGtCqs".contains(ch))
                && k + 1 == body.len()
            {
                i += 1;
            }
            continue;
        }
        // BSD-style cluster.
        for (k, c) in t.char_indices() {
            if c == 'e' {
                return Err(deny(
                    SECRETS,
                    format!("`ps {t}` prints other processes' environments"),
                ));
            }
            if "oOpUtk".contains(c) {
                if k + 1 == t.len() {
                    i += 1;
                }
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, inv, judge, rule_of};
    use super::super::{ALLOWED, Role};
    use super::*;

    fn word(cmd: &str) -> String {
        // Every word of the last command, as the engine checks them.
        judge(cmd, |inv, ctx| {
            for w in &inv.words {
                secret_names(w)?;
                secret_paths(w, ctx)?;
            }
            Ok(())
        })
    }

    #[test]
    fn agent_secrets_by_name() {
        assert_eq!(word("echo $DTMA_BEARER_TOKEN"), SECRETS);
        assert_eq!(word("printenv BACKEND_TO_DTMA_API_KEY"), SECRETS);
        assert_eq!(word("ls \"${CREDENTIALS_DIRECTORY}\""), SECRETS);
        assert_eq!(word("printenv PATH"), ALLOWED);
        assert_eq!(word("echo $DTMA_LOG"), ALLOWED);
    }

    #[test]
    fn credential_and_proc_paths() {
        assert_eq!(word("cat /etc/dtma/config.toml"), SECRETS);
        assert_eq!(word("ls /run/credentials/dtma.service"), SECRETS);
        assert_eq!(word("cat /proc/1/environ"), SECRETS);
        assert_eq!(word("cd /proc/1; cat environ"), SECRETS);
        assert_eq!(word("dd if=/proc/self/mem bs=1 count=1"), SECRETS);
        assert_eq!(word("strings /proc/$PID/environ"), SECRETS);
        assert_eq!(word("cat /proc/1/status"), ALLOWED);
        assert_eq!(
            word("cat /etc/hosts /run/systemd/resolve/resolv.conf"),
            ALLOWED
        );
    }

    #[test]
    fn ps_environment_flag() {
        let ps = |cmd: &str| rule_of(ps_rules(&inv(cmd)));
        assert_eq!(ps("ps auxe"), SECRETS);
        assert_eq!(ps("ps eww"), SECRETS);
        assert_eq!(ps("ps aux"), ALLOWED);
        assert_eq!(ps("ps -ef"), ALLOWED);
        // `e` inside an option's value is not the flag.
        assert_eq!(ps("ps -o pid,user,cmd"), ALLOWED);
        assert_eq!(ps("ps axo pid,etime,cmd"), ALLOWED);
        assert_eq!(ps("ps --sort -pcpu -e"), ALLOWED);
    }

    #[test]
    fn every_role_and_every_place() {
        for role in [Role::Admin, Role::Operator, Role::Diagnostics] {
            assert_eq!(check(role, "cat < /proc/1/environ"), SECRETS, "{role:?}");
        }
        assert_eq!(check(Role::Admin, "X=$DTMA_BEARER_TOKEN true"), SECRETS);
        assert_eq!(check(Role::Admin, "env | grep -v TOKEN"), ALLOWED);
    }
}
