//! Killing init (pid 1), every process (`kill -1`, `killall5`, `pkill -u root`) or a critical daemon (`dockerd`,
//! `containerd`, `sshd`, the agent), by pid, name, pattern or systemd unit.

use regex::RegexBuilder;

use super::args::parse_args;
use super::paths::program_name;
use super::services::{SYSTEMCTL_LONG, protected_unit};
use super::{Inv, KILL, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// Processes that must survive: init, the container runtime, SSH and the agent.
const PROTECTED_PROCS: &[&str] = &[
    "init",
    "systemd",
    "dockerd",
    "docker",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "sshd",
    "dtma",
];

/// The `kill_init` denial naming what was run.
fn hit(what: String) -> Verdict {
    Err(deny(
        KILL,
        format!("`{what}` would kill init, every process or a critical daemon"),
    ))
}

/// Whether a (dynamic) word's source text names a protected process.
fn mentions_protected(w: &Word) -> bool {
    let t = w.raw.to_ascii_lowercase();
    PROTECTED_PROCS.iter().any(|p| t.contains(p))
}

/// Signals sent to init, to every process or to a critical daemon.
pub(super) fn kill_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    match name {
        "killall5" => hit(name.to_string()),
        "kill" => kill_pids(args),
        "pkill" | "killall" => kill_by_name(name, args),
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            if a.operands.first().map(|w| w.text()) == Some("kill") {
                for u in a.operands.iter().skip(1) {
                    if protected_unit(u.text()) {
                        return hit(format!("systemctl kill {}", u.text()));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `kill [-SIGNAL] PID…`: pid 1, pid -1 (every process), or a substitution naming a protected daemon.
fn kill_pids(args: &[Word]) -> Verdict {
    let mut targets: Vec<&Word> = Vec::new();
    let mut i = 0;
    let mut first = true;
    while let Some(a) = args.get(i) {
        i += 1;
        let v = a.value.as_deref();
        if first {
            first = false;
            match v {
                Some("--") => {
                    targets.extend(args.get(i..).unwrap_or(&[]));
                    break;
                }
                Some("-l" | "-L" | "--list" | "--table") => return Ok(()),
                Some("-s" | "-n" | "--signal") => i += 1,
                // `kill -1` alone: pid -1 (or a missing pid); treat as all processes.
                Some(s) if s.starts_with('-') && s.len() > 1 => {
                    if args.len() == 1 {
                        targets.push(a);
                    }
                }
                _ => targets.push(a),
            }
            continue;
        }
        // After the signal, `-N` is a negative pid (process group); `--` is skipped.
        if v != Some("--") {
            targets.push(a);
        }
    }
    for t in targets {
        match t.value.as_deref() {
            Some(v @ ("1" | "-1")) => return hit(format!("kill {v}")),
            None if mentions_protected(t) => {
                return hit(format!("kill {}", shorten(&t.raw)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `pkill`/`killall` by name, regex, parent or user.
fn kill_by_name(name: &str, args: &[Word]) -> Verdict {
    let mut rest = args;
    if let Some(first) = args.first().and_then(|a| a.value.as_deref())
        && is_signal_spec(first)
    {
        rest = args.get(1..).unwrap_or(&[]);
    }
    let with_arg = if name == "pkill" {
        "uUgGPstFr"
    } else {
        "uoysZn"
    };
    let a = parse_args(
        rest,
        with_arg,
        &[
            "signal",
            "euid",
            "uid",
            "group",
            "pgroup",
            "parent",
            "session",
            "terminal",
            "pidfile",
            "ns",
            "nslist",
            "runstates",
            "user",
            "older-than",
            "younger-than",
            "context",
        ],
        false,
    );
    for p in a.values('P', "parent") {
        if p.text() == "1" || p.text() == "0" {
            return hit(format!("{name} -P {}", p.text()));
        }
    }
    for u in a
        .values('u', "user")
        .into_iter()
        .chain(a.values('U', "uid"))
    {
        if a.operands.is_empty() && matches!(u.text(), "root" | "0") {
            return hit(format!("{name} -u {}", u.text()));
        }
    }
    let regex_mode = name == "pkill" || a.has('r') || a.has_long("regexp");
    for pat in &a.operands {
        let Some(v) = pat.value.as_deref() else {
            if mentions_protected(pat) {
                return hit(format!("{name} {}", shorten(&pat.raw)));
            }
            continue;
        };
        if regex_mode {
            let re = RegexBuilder::new(v).size_limit(1 << 16).build();
            match re {
                Ok(re) => {
                    if let Some(p) = PROTECTED_PROCS.iter().find(|p| re.is_match(p)) {
                        return Err(deny(
                            KILL,
                            format!("`{name} {v}` matches critical process `{p}`"),
                        ));
                    }
                }
                Err(_) => {
                    return Err(deny(
                        KILL,
                        format!("`{name}` pattern `{}` cannot be judged", shorten(v)),
                    ));
                }
            }
        } else if PROTECTED_PROCS.contains(&program_name(v)) {
            return hit(format!("{name} {v}"));
        }
    }
    Ok(())
}

/// `-9`, `-KILL`, `-SIGTERM`: a signal given as the first argument of `pkill`/`killall`.
fn is_signal_spec(v: &str) -> bool {
    let Some(s) = v.strip_prefix('-') else {
        return false;
    };
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        || (s.len() >= 2
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::{admin, inv, rule_of};
    use super::*;

    fn rule(cmd: &str) -> String {
        rule_of(kill_rules(&inv(cmd)))
    }

    #[test]
    fn kill_by_pid() {
        assert_eq!(rule("kill -9 1"), KILL);
        assert_eq!(rule("kill -s KILL -1"), KILL);
        assert_eq!(rule("kill -1"), KILL);
        assert_eq!(rule("kill -TERM -- -1"), KILL);
        assert_eq!(rule("kill $(pidof dockerd)"), KILL);
        assert_eq!(rule("kill -9 4242 4243"), ALLOWED);
        assert_eq!(rule("kill -HUP $(cat /run/nginx.pid)"), ALLOWED);
        assert_eq!(rule("kill -l"), ALLOWED);
        assert_eq!(rule("kill 10"), ALLOWED);
    }

    #[test]
    fn kill_by_name_or_pattern() {
        assert_eq!(rule("pkill -9 dockerd"), KILL);
        assert_eq!(rule("killall -9 sshd"), KILL);
        assert_eq!(rule("pkill -f 'contain.*'"), KILL);
        assert_eq!(rule("killall -r '^ssh'"), KILL);
        assert_eq!(rule("pkill -P 1"), KILL);
        assert_eq!(rule("pkill -u root"), KILL);
        assert_eq!(rule("pkill '('"), KILL);
        assert_eq!(rule("killall5"), KILL);
        assert_eq!(rule("pkill -f my-worker"), ALLOWED);
        assert_eq!(rule("killall nginx"), ALLOWED);
        // Without -r, killall matches whole names only.
        assert_eq!(rule("killall docker-compose"), ALLOWED);
        assert_eq!(rule("pkill -u root nginx"), ALLOWED);
    }

    #[test]
    fn systemctl_kill() {
        assert_eq!(rule("systemctl kill -s KILL docker"), KILL);
        assert_eq!(rule("systemctl kill nginx"), ALLOWED);
        assert_eq!(rule("systemctl stop docker"), ALLOWED);
    }

    #[test]
    fn signal_specs() {
        for s in ["-9", "-KILL", "-SIGTERM", "-RTMIN+1"] {
            assert!(is_signal_spec(s), "{s}");
        }
        for s in ["9", "-f", "-u", "--signal"] {
            assert!(!is_signal_spec(s), "{s}");
        }
    }

    #[test]
    fn through_the_engine() {
        assert_eq!(admin("sudo kill -9 1"), KILL);
        assert_eq!(admin("kill -TERM 4242"), ALLOWED);
    }
}
