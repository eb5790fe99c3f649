//! Commands embedded in other commands: `eval` and `alias` (unjudgeable), `trap` actions, and programs with options
//! that run a shell command of their own (`tar --to-command`, `rsync -e`, `ssh -o ProxyCommand`, `git -c core.pager`,
//! `script -c`). Static commands are queued for a nested check; dynamic ones cannot be judged.

use super::args::parse_args;
use super::{Inv, UNJUDGEABLE, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// Nested code queued for the engine: (code, what runs it).
type Nested = Vec<(String, String)>;

/// Queue a static command run by `via`, or deny a dynamic one.
fn queue(nested: &mut Nested, code: &Word, via: &str) -> Verdict {
    match code.value.as_deref() {
        Some(c) => {
            nested.push((c.to_string(), via.to_string()));
            Ok(())
        }
        None => Err(deny(
            UNJUDGEABLE,
            format!("`{via}` command `{}` is not static", shorten(&code.raw)),
        )),
    }
}

/// Shell builtins that run or redefine code: `eval`, `alias NAME=…`, `trap ACTION SIGNAL…`.
pub(super) fn shell_builtin_rules(inv: &Inv, nested: &mut Nested) -> Verdict {
    let args = inv.args();
    match inv.name.as_str() {
        "eval" if !args.is_empty() => {
            return Err(deny(
                UNJUDGEABLE,
                "`eval` runs its arguments as shell code, which cannot be judged".to_string(),
            ));
        }
        "alias" if args.iter().any(|a| a.text().contains('=')) => {
            return Err(deny(
                UNJUDGEABLE,
                "`alias` definitions change what later words run, which cannot be judged"
                    .to_string(),
            ));
        }
        "trap" => {
            let a = parse_args(args, "", &[], true);
            if let Some(action) = a.operands.first()
                && a.operands.len() > 1
            {
                match action.value.as_deref() {
                    Some(code) => nested.push((code.to_string(), "trap".to_string())),
                    None => {
                        return Err(deny(
                            UNJUDGEABLE,
                            format!("`trap` action `{}` is not static", shorten(&action.raw)),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Options of common programs that take a shell command of their own.
pub(super) fn embedded_commands(inv: &Inv, nested: &mut Nested) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    match name {
        "tar" => tar_commands(args, nested)?,
        "rsync" => {
            let a = parse_args(args, "e", &["rsh"], false);
            for v in a.values('e', "rsh") {
                queue(nested, v, "rsync -e")?;
            }
        }
        "ssh" | "scp" | "sftp" => ssh_commands(name, args, nested)?,
        "git" => git_commands(args, nested)?,
        "script" => {
            let a = parse_args(
                args,
                "cEIOTBm",
                &[
                    "command",
                    "echo",
                    "log-in",
                    "log-out",
                    "log-timing",
                    "log-io",
                    "logging-format",
                ],
                false,
            );
            for v in a.values('c', "command") {
                queue(nested, v, "script -c")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `tar --to-command=…`, `--checkpoint-action=exec=…`, `-I PROG`, `--info-script`, ….
fn tar_commands(args: &[Word], nested: &mut Nested) -> Verdict {
    for (k, a) in args.iter().enumerate() {
        let t = a.text();
        for opt in [
            "--to-command=",
            "--checkpoint-action=exec=",
            "--use-compress-program=",
            "--rsh-command=",
            "--info-script=",
            "--new-volume-script=",
        ] {
            if let Some(v) = t.strip_prefix(opt) {
                queue(
                    nested,
                    &Word {
                        value: a.value.as_ref().map(|_| v.to_string()),
                        ..a.clone()
                    },
                    &format!("tar {opt}"),
                )?;
            }
        }
        if matches!(
            t,
            "-I" | "--to-command" | "--use-compress-program" | "-F" | "--info-script"
        ) && let Some(v) = args.get(k + 1)
        {
            queue(nested, v, &format!("tar {t}"))?;
        }
    }
    Ok(())
}

/// `ssh -o ProxyCommand=…` (and `LocalCommand`, `KnownHostsCommand`); also for `scp` and `sftp`.
fn ssh_commands(name: &str, args: &[Word], nested: &mut Nested) -> Verdict {
    let a = parse_args(args, "oFiJlLpRSDEbcmOQWw", &[], true);
    for v in a.values('o', "") {
        let t = v.text();
        let (key, val) = match t.split_once(['=', ' ']) {
            Some((k, val)) => (k.trim().to_ascii_lowercase(), val.trim()),
            None => (t.to_ascii_lowercase(), ""),
        };
        if matches!(
            key.as_str(),
            "proxycommand" | "localcommand" | "knownhostscommand"
        ) {
            queue(
                nested,
                &Word {
                    value: v.value.as_ref().map(|_| val.to_string()),
                    ..v.clone()
                },
                &format!("{name} -o {key}"),
            )?;
        }
    }
    Ok(())
}

/// `git -c KEY=VALUE` for keys whose value is a command (`core.pager`, `core.sshCommand`, `alias.x=!cmd`, …).
fn git_commands(args: &[Word], nested: &mut Nested) -> Verdict {
    for (k, a) in args.iter().enumerate() {
        if a.text() != "-c" {
            continue;
        }
        let Some(kv) = args.get(k + 1) else { continue };
        let t = kv.text();
        let (key, val) = t.split_once('=').unwrap_or((t, ""));
        let key = key.to_ascii_lowercase();
        let runs = matches!(
            key.as_str(),
            "core.sshcommand"
                | "core.pager"
                | "core.editor"
                | "core.fsmonitor"
                | "core.askpass"
                | "diff.external"
                | "sequence.editor"
                | "gpg.program"
                | "credential.helper"
        ) || key.starts_with("pager.")
            || (key.starts_with("alias.") && val.starts_with('!'));
        if runs {
            let code = val.trim_start_matches('!').to_string();
            queue(
                nested,
                &Word {
                    value: kv.value.as_ref().map(|_| code.clone()),
                    ..kv.clone()
                },
                &format!("git -c {key}"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, inv, rule_of};
    use super::super::{ALLOWED, MASS, POWER};
    use super::*;

    /// The rule and the queued code of one rule function applied to `cmd`.
    fn run(rule: fn(&Inv, &mut Nested) -> Verdict, cmd: &str) -> (String, Vec<String>) {
        let mut nested = Nested::new();
        let r = rule_of(rule(&inv(cmd), &mut nested));
        (r, nested.into_iter().map(|(code, _)| code).collect())
    }

    #[test]
    fn builtins() {
        assert_eq!(run(shell_builtin_rules, "eval \"$CMD\"").0, UNJUDGEABLE);
        assert_eq!(run(shell_builtin_rules, "eval").0, ALLOWED);
        assert_eq!(
            run(shell_builtin_rules, "alias ls='rm -rf /'").0,
            UNJUDGEABLE
        );
        assert_eq!(run(shell_builtin_rules, "alias").0, ALLOWED);
        assert_eq!(
            run(shell_builtin_rules, "trap 'rm -f /tmp/lock' EXIT"),
            (ALLOWED.to_string(), vec!["rm -f /tmp/lock".to_string()])
        );
        assert_eq!(
            run(shell_builtin_rules, "trap \"$ACTION\" EXIT").0,
            UNJUDGEABLE
        );
        assert_eq!(run(shell_builtin_rules, "trap -p").1, Vec::<String>::new());
        assert_eq!(admin("trap 'rm -rf /' EXIT"), MASS);
        assert_eq!(admin("trap 'rm -f /tmp/lock' EXIT INT"), ALLOWED);
    }

    #[test]
    fn tar_and_rsync() {
        assert_eq!(
            run(embedded_commands, "tar xf a.tar --to-command='sh -c id'").1,
            ["sh -c id"]
        );
        assert_eq!(
            run(embedded_commands, "tar -I zstd -cf a.tar.zst /srv").1,
            ["zstd"]
        );
        assert_eq!(
            run(embedded_commands, "tar czf /tmp/logs.tgz /var/log/nginx").1,
            Vec::<String>::new()
        );
        assert_eq!(
            run(embedded_commands, "rsync -e 'ssh -p 2222' a h:b").1,
            ["ssh -p 2222"]
        );
        assert_eq!(
            run(embedded_commands, "rsync -e \"$RSH\" a h:b").0,
            UNJUDGEABLE
        );
        assert_eq!(
            admin("tar xf a.tar --checkpoint=1 --checkpoint-action=exec='reboot'"),
            POWER
        );
    }

    #[test]
    fn ssh_git_and_script() {
        assert_eq!(
            run(embedded_commands, "ssh -o ProxyCommand='nc %h %p' host").1,
            ["nc %h %p"]
        );
        assert_eq!(
            run(
                embedded_commands,
                "ssh -o StrictHostKeyChecking=no host uptime"
            )
            .1,
            Vec::<String>::new()
        );
        assert_eq!(
            run(embedded_commands, "git -c core.pager='less -R' log").1,
            ["less -R"]
        );
        assert_eq!(
            run(embedded_commands, "git -c alias.x='!reboot' x").1,
            ["reboot"]
        );
        assert_eq!(
            run(embedded_commands, "git -c user.name=x commit").1,
            Vec::<String>::new()
        );
        assert_eq!(
            run(embedded_commands, "script -qc 'ls' /dev/null").1,
            ["ls"]
        );
        assert_eq!(admin("git -c core.sshCommand='reboot' fetch"), POWER);
        assert_eq!(admin("git status"), ALLOWED);
    }
}
