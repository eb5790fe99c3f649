//! Role allow-lists. `Diagnostics` may run a read-only set of programs (with read-only arguments), may not redirect
//! output except to `/dev/null`, and may not touch credential files; `Operator` gets that set plus `docker` (any
//! subcommand) plus the configured programs. `Admin` has no allow-list. Wrappers that only adjust how a program runs
//! are looked through; `sudo`, `su`, `chroot` and the like must themselves be allowed.

use super::args::parse_args;
use super::awk_sed::{awk_args, awk_runs_commands, scan_sed, sed_scripts};
use super::containers::docker_readonly;
use super::paths::{is_credential_file, is_safe_sink};
use super::services::{SYSTEMCTL_LONG, is_readonly_systemctl};
use super::{Chain, Ctx, Engine, Inv, ROLE_DIAG, ROLE_OPERATOR, Role, Verdict, deny, shorten};
use crate::policy::shell::{Redirect, SimpleCommand, Word};

impl Engine<'_> {
    /// The role's allow-list for one simple command (and, recursively, the shell code it runs).
    pub(super) fn role_rules(
        &self,
        role: Role,
        cmd: &SimpleCommand,
        ctx: &Ctx,
        depth: usize,
    ) -> Verdict {
        for r in &cmd.redirects {
            role_redirect(role, r)?;
        }
        let (rule, label) = match role {
            Role::Diagnostics => (ROLE_DIAG, "diagnostics"),
            _ => (ROLE_OPERATOR, "operator"),
        };
        for w in cmd
            .words
            .iter()
            .chain(cmd.redirects.iter().map(|r| &r.target))
        {
            for p in ctx.paths(w) {
                if is_credential_file(&p) {
                    return Err(deny(
                        rule,
                        format!(
                            "access to credential file `{p}` is not allowed for the {label} role"
                        ),
                    ));
                }
            }
        }
        if cmd.words.is_empty() {
            return Ok(());
        }
        let mut chain = Chain::default();
        self.resolve(&cmd.words, ctx, &mut chain, 0, false)?;
        for inv in &chain.invs {
            if inv.transparent {
                continue;
            }
            if role == Role::Operator
                && (inv.name == "docker" || self.operator_allow.contains(&inv.name))
            {
                continue;
            }
            if let Err(why) = diagnostics_allows(inv) {
                return Err(deny(rule, format!("{why} for the {label} role")));
            }
        }
        for (code, via) in &chain.nested {
            self.nested(role, code, via, depth)?;
        }
        Ok(())
    }
}

/// Output redirections of the diagnostics role: only to `/dev/null`, stdout or stderr.
pub(super) fn role_redirect(role: Role, r: &Redirect) -> Verdict {
    if role == Role::Diagnostics && r.writes_file() && !is_safe_sink(&r.target) {
        return Err(deny(
            ROLE_DIAG,
            format!(
                "output redirection `{}` to `{}` is not allowed for the diagnostics role",
                r.op.as_str(),
                shorten(&r.target.raw)
            ),
        ));
    }
    Ok(())
}

/// Whether a program (with its arguments) is in the read-only diagnostics set; `Err` says why not.
fn diagnostics_allows(inv: &Inv) -> Result<(), String> {
    let name = inv.name.as_str();
    let args = inv.args();
    match name {
        "df" | "free" | "uptime" | "cat" | "head" | "tail" | "grep" | "egrep" | "fgrep"
        | "zgrep" | "wc" | "ls" | "stat" | "du" | "ss" | "netstat" | "lsblk" | "lscpu" | "lsof"
        | "nproc" | "uname" | "id" | "whoami" | "printenv" | "env" | "echo" | "printf" | "true"
        | "false" | "cut" | "which" | "test" | "[" | "[[" | "ps" | "pwd" | "sleep" | "seq"
        | "basename" | "dirname" | "tr" | "tac" | "nl" | "md5sum" | "sha256sum" | "realpath"
        | "readlink" | "vmstat" | "iostat" | "w" | "who" | "pgrep" | "pidof" | "lsmod"
        | "lspci" | ":" | "cd" | "exit" | "type" | "command" => Ok(()),
        "uniq" | "sort" | "awk" | "gawk" | "mawk" | "nawk" | "sed" | "find" => {
            text_tool_allows(name, args)
        }
        "top" | "journalctl" | "dmesg" => log_tool_allows(name, args),
        "systemctl" | "ip" | "hostname" | "date" => system_tool_allows(name, args),
        "docker" => docker_readonly(args),
        _ => Err(format!("`{name}` is not allowed")),
    }
}

/// Text tools that read unless told to write a file or run commands.
fn text_tool_allows(name: &str, args: &[Word]) -> Result<(), String> {
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    match name {
        "uniq" => {
            let a = parse_args(
                args,
                "fsw",
                &["skip-fields", "skip-chars", "check-chars"],
                false,
            );
            if a.operands.len() > 1 {
                Err("`uniq` with an output file is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "sort" => {
            let a = parse_args(
                args,
                "oktST",
                &[
                    "output",
                    "key",
                    "field-separator",
                    "buffer-size",
                    "temporary-directory",
                ],
                false,
            );
            if a.has('o') || a.has_long("output") {
                Err("`sort -o` writes a file, which is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "awk" | "gawk" | "mawk" | "nawk" => {
            let a = awk_args(args);
            if a.has('f') || a.has('E') || a.has('o') || a.has_long("file") || a.has_long("exec") {
                return Err(format!("`{name}` with program files is not allowed"));
            }
            let p = a.operands.first().map(|w| w.text()).unwrap_or("");
            let writes = p.contains(">>")
                || p.match_indices('>').any(|(k, _)| {
                    p.get(k + 1..)
                        .map(str::trim_start)
                        .is_some_and(|r| r.starts_with('"'))
                });
            if awk_runs_commands(p).is_some() || writes {
                Err(format!(
                    "`{name}` program that runs commands or writes files is not allowed"
                ))
            } else {
                Ok(())
            }
        }
        "sed" => {
            let a = parse_args(args, "efl", &["expression", "file", "line-length"], false);
            if a.has('i') || a.has_long_prefix("in-place") {
                return Err("`sed -i` edits files, which is not allowed".to_string());
            }
            if sed_scripts(args).iter().any(|s| {
                let info = scan_sed(s);
                info.exec || !info.writes.is_empty()
            }) {
                return Err(
                    "`sed` scripts that write files or run commands are not allowed".to_string(),
                );
            }
            Ok(())
        }
        "find" => {
            let bad = texts.iter().any(|t| {
                matches!(
                    *t,
                    "-delete" | "-exec" | "-execdir" | "-ok" | "-okdir" | "-fls"
                ) || t.starts_with("-fprint")
            });
            if bad {
                Err("`find` with `-delete`/`-exec`/`-fprint` is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        _ => Err(format!("`{name}` is not allowed")),
    }
}

/// Process and log viewers, without the options that clear or rotate logs or run interactively.
fn log_tool_allows(name: &str, args: &[Word]) -> Result<(), String> {
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    let short_has = |c: char| {
        texts.iter().any(|t| {
            t.strip_prefix('-')
                .is_some_and(|b| !b.starts_with('-') && b.contains(c))
        })
    };
    match name {
        "top" => {
            if short_has('b') && (short_has('n') || texts.iter().any(|t| t.starts_with("-n"))) {
                Ok(())
            } else {
                Err("`top` is only allowed as `top -b -n 1`".to_string())
            }
        }
        "journalctl" => {
            let bad = texts.iter().any(|t| {
                t.starts_with("--vacuum")
                    || matches!(
                        *t,
                        "--rotate"
                            | "--flush"
                            | "--sync"
                            | "--relinquish-var"
                            | "--smart-relinquish-var"
                            | "--setup-keys"
                            | "--update-catalog"
                    )
                    || t.starts_with("--cursor-file")
            });
            if bad {
                Err("`journalctl` maintenance options are not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "dmesg" => {
            let bad = texts.iter().any(|t| {
                matches!(
                    *t,
                    "--clear"
                        | "--read-clear"
                        | "--console-off"
                        | "--console-on"
                        | "--console-level"
                ) || t
                    .strip_prefix('-')
                    .is_some_and(|b| !b.starts_with('-') && b.chars().any(|c| "CcDEn".contains(c)))
            });
            if bad {
                Err(
                    "`dmesg` options that clear or change the kernel log are not allowed"
                        .to_string(),
                )
            } else {
                Ok(())
            }
        }
        _ => Err(format!("`{name}` is not allowed")),
    }
}

/// System state viewers that can also change it: only their read-only forms.
fn system_tool_allows(name: &str, args: &[Word]) -> Result<(), String> {
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    match name {
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            match a.operands.first().map(|w| w.text()) {
                Some(v) if is_readonly_systemctl(v) => Ok(()),
                None => Ok(()),
                Some(v) => Err(format!("`systemctl {v}` is not allowed")),
            }
        }
        "ip" => {
            let mut ops = texts.iter().filter(|t| !t.starts_with('-'));
            if texts
                .iter()
                .any(|t| matches!(*t, "-b" | "-batch" | "-n" | "-netns" | "-force"))
            {
                return Err("`ip` batch/netns options are not allowed".to_string());
            }
            let obj = ops.next().copied().unwrap_or("");
            let act = ops.next().copied().unwrap_or("show");
            let abbrev = |full: &str, x: &str| !x.is_empty() && full.starts_with(x);
            let obj_ok = [
                "address",
                "route",
                "link",
                "neighbour",
                "rule",
                "maddress",
                "netconf",
            ]
            .iter()
            .any(|f| abbrev(f, obj))
                || obj == "neighbor";
            let act_ok = ["show", "list", "lst"].iter().any(|f| abbrev(f, act))
                || (abbrev("route", obj) && act == "get")
                || act.starts_with("dev")
                || act == "dev";
            if obj_ok && act_ok {
                Ok(())
            } else {
                Err(format!("`ip {obj} {act}` is not allowed"))
            }
        }
        "hostname" => {
            let ok = texts.iter().all(|t| {
                matches!(
                    *t,
                    "-I" | "-i"
                        | "-f"
                        | "-s"
                        | "-d"
                        | "-A"
                        | "-a"
                        | "--fqdn"
                        | "--short"
                        | "--domain"
                        | "--ip-address"
                        | "--all-ip-addresses"
                        | "--all-fqdns"
                        | "--long"
                )
            });
            if ok {
                Ok(())
            } else {
                Err("`hostname` that sets the host name is not allowed".to_string())
            }
        }
        "date" => {
            let bad = texts.iter().any(|t| {
                *t == "--set"
                    || t.starts_with("--set=")
                    || t.strip_prefix('-')
                        .is_some_and(|b| !b.starts_with('-') && b.contains('s'))
                    || !(t.starts_with('-') || t.starts_with('+'))
            });
            if bad {
                Err("`date` that sets the clock is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        _ => Err(format!("`{name}` is not allowed")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, rule_of};
    use super::super::{ALLOWED, MASS};
    use super::*;

    fn diag(cmd: &str) -> String {
        check(Role::Diagnostics, cmd)
    }

    #[test]
    fn read_only_programs() {
        assert_eq!(diag("df -h"), ALLOWED);
        assert_eq!(diag("tail -n 100 /var/log/syslog | grep -v debug"), ALLOWED);
        assert_eq!(diag("rm /tmp/x"), ROLE_DIAG);
        assert_eq!(diag("apt-get update"), ROLE_DIAG);
        // Deny rules still come first.
        assert_eq!(diag("rm -rf /"), MASS);
    }

    #[test]
    fn text_tools_that_would_write_or_run() {
        assert_eq!(diag("sort -k2 /tmp/x"), ALLOWED);
        assert_eq!(diag("sort -o /tmp/y /tmp/x"), ROLE_DIAG);
        assert_eq!(diag("uniq -c /tmp/x"), ALLOWED);
        assert_eq!(diag("uniq /tmp/x /tmp/y"), ROLE_DIAG);
        assert_eq!(diag("awk '{print $1}' /etc/hosts"), ALLOWED);
        assert_eq!(diag("awk '{print > \"/tmp/x\"}' /etc/hosts"), ROLE_DIAG);
        assert_eq!(diag("awk -f /opt/x.awk /etc/hosts"), ROLE_DIAG);
        assert_eq!(diag("sed -n 1,5p /etc/hosts"), ALLOWED);
        assert_eq!(diag("sed -i s/a/b/ /tmp/x"), ROLE_DIAG);
        assert_eq!(diag("sed -n 'w /tmp/y' /tmp/x"), ROLE_DIAG);
        assert_eq!(diag("find /var/log -name '*.gz'"), ALLOWED);
        assert_eq!(diag("find /tmp -exec ls {} +"), ROLE_DIAG);
        assert_eq!(diag("find /tmp -fprint /tmp/list"), ROLE_DIAG);
    }

    #[test]
    fn log_and_system_viewers() {
        assert_eq!(diag("top -b -n 1"), ALLOWED);
        assert_eq!(diag("top"), ROLE_DIAG);
        assert_eq!(diag("journalctl -u dtma --since today"), ALLOWED);
        assert_eq!(diag("journalctl --rotate"), ROLE_DIAG);
        assert_eq!(diag("dmesg -T"), ALLOWED);
        assert_eq!(diag("dmesg -c"), ROLE_DIAG);
        assert_eq!(diag("systemctl list-timers"), ALLOWED);
        assert_eq!(diag("systemctl restart nginx"), ROLE_DIAG);
        assert_eq!(diag("ip route get 1.1.1.1"), ALLOWED);
        assert_eq!(diag("ip -br link show"), ALLOWED);
        assert_eq!(diag("ip route add 10.0.0.0/8 dev eth0"), ROLE_DIAG);
        assert_eq!(diag("ip -n other addr"), ROLE_DIAG);
        assert_eq!(diag("hostname -I"), ALLOWED);
        assert_eq!(diag("hostname evil"), ROLE_DIAG);
        assert_eq!(diag("date -u +%s"), ALLOWED);
        assert_eq!(diag("date -s '2020-01-01'"), ROLE_DIAG);
        assert_eq!(diag("date 010100002020"), ROLE_DIAG);
    }

    #[test]
    fn wrappers_nested_code_and_credentials() {
        assert_eq!(diag("timeout 5 nice df -h"), ALLOWED);
        assert_eq!(diag("sh -c 'df -h; uptime'"), ALLOWED);
        assert_eq!(diag("sh -c 'df -h; touch /tmp/x'"), ROLE_DIAG);
        assert_eq!(diag("sudo df -h"), ROLE_DIAG);
        assert_eq!(diag("cat /etc/passwd"), ALLOWED);
        assert_eq!(diag("cat /etc/shadow"), ROLE_DIAG);
        assert_eq!(diag("grep x < /etc/sudoers"), ROLE_DIAG);
        assert_eq!(check(Role::Operator, "ls /root/.ssh"), ROLE_OPERATOR);
    }

    #[test]
    fn redirections() {
        let r = |role: Role, cmd: &str| {
            let script = crate::policy::shell::parse(cmd).expect("the line parses");
            let redirect = script
                .commands
                .first()
                .and_then(|c| c.redirects.first().cloned())
                .expect("one redirection");
            rule_of(role_redirect(role, &redirect))
        };
        assert_eq!(r(Role::Diagnostics, "echo x > /tmp/note"), ROLE_DIAG);
        assert_eq!(r(Role::Diagnostics, "echo x >> /tmp/note"), ROLE_DIAG);
        assert_eq!(r(Role::Diagnostics, "ls 2>/dev/null"), ALLOWED);
        assert_eq!(r(Role::Diagnostics, "ls 2>&1"), ALLOWED);
        assert_eq!(r(Role::Diagnostics, "grep x < /tmp/in"), ALLOWED);
        assert_eq!(r(Role::Operator, "echo x > /tmp/note"), ALLOWED);
        assert_eq!(diag("{ ls; } > /tmp/out"), ROLE_DIAG);
    }

    #[test]
    fn operator_adds_docker_and_configured_programs() {
        let op = |cmd: &str| check(Role::Operator, cmd);
        assert_eq!(op("docker compose up -d"), ALLOWED);
        assert_eq!(op("df -h && docker restart x"), ALLOWED);
        assert_eq!(op("echo done > /tmp/marker"), ALLOWED);
        assert_eq!(op("systemctl restart nginx"), ROLE_OPERATOR);
        assert_eq!(op("sudo docker ps"), ROLE_OPERATOR);
        let allow = ["systemctl".to_string()];
        let engine = Engine {
            extra_deny: &[],
            operator_allow: &allow,
        };
        let configured = |role: Role, cmd: &str| rule_of(engine.check(role, cmd, 0));
        assert_eq!(
            configured(Role::Operator, "systemctl restart nginx"),
            ALLOWED
        );
        assert_eq!(
            configured(Role::Diagnostics, "systemctl restart nginx"),
            ROLE_DIAG
        );
        assert_eq!(
            configured(Role::Operator, "systemctl stop sshd"),
            super::super::SERVICE
        );
        assert_eq!(check(Role::Admin, "apt-get install -y htop"), ALLOWED);
    }
}
