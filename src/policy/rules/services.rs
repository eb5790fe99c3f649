//! Critical services: stopping, disabling, masking or killing the units the machine is managed through (`docker`,
//! `containerd`, `ssh`/`sshd`, the agent itself, `systemd-*`), by `systemctl`, `service` or an init script. Also the
//! `systemctl` vocabulary the other families share.

use regex::Regex;

use super::args::parse_args;
use super::{Inv, SERVICE, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// `systemctl` long options that take a separate value.
pub(super) const SYSTEMCTL_LONG: &[&str] = &[
    "type",
    "property",
    "host",
    "machine",
    "lines",
    "output",
    "signal",
    "kill-whom",
    "kill-value",
    "root",
    "state",
    "job-mode",
    "what",
    "reboot-argument",
    "message",
    "when",
    "image",
    "preset-mode",
    "timestamp",
    "drop-in",
    "check-inhibitors",
];

/// `systemctl` verbs that only read state.
pub(super) fn is_readonly_systemctl(verb: &str) -> bool {
    matches!(
        verb,
        "status"
            | "show"
            | "cat"
            | "help"
            | "is-active"
            | "is-enabled"
            | "is-failed"
            | "is-system-running"
            | "list-units"
            | "list-unit-files"
            | "list-timers"
            | "list-sockets"
            | "list-dependencies"
            | "list-jobs"
            | "list-machines"
            | "show-environment"
            | "get-default"
    )
}

/// Units whose loss cuts the machine off its management: the container runtime, SSH, the agent, systemd itself.
pub(super) fn protected_unit(unit: &str) -> bool {
    let base = unit
        .strip_suffix(".service")
        .or_else(|| unit.strip_suffix(".socket"))
        .unwrap_or(unit);
    if base.contains(['*', '?', '[']) {
        let re: String = base
            .chars()
            .map(|c| match c {
                '*' => ".*".to_string(),
                '?' => ".".to_string(),
                c => regex::escape(&c.to_string()),
            })
            .collect();
        return match Regex::new(&format!("^{re}$")) {
            Ok(re) => [
                "docker",
                "containerd",
                "sshd",
                "ssh",
                "dtma",
                "systemd-journald",
            ]
            .iter()
            .any(|n| re.is_match(n)),
            Err(_) => true,
        };
    }
    matches!(base, "docker" | "containerd" | "sshd" | "ssh")
        || base.starts_with("dtma")
        || base.starts_with("systemd-")
}

/// Stopping or disabling a critical service.
pub(super) fn service_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let stop = |svc: &str, how: &str| {
        Err(deny(
            SERVICE,
            format!("`{how}` stops or disables critical service `{svc}`"),
        ))
    };
    match name {
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            let Some(verb) = a.operands.first().map(|w| w.text()) else {
                return Ok(());
            };
            if matches!(verb, "stop" | "disable" | "mask" | "kill" | "freeze") {
                for u in a.operands.iter().skip(1) {
                    if !u.is_static() {
                        return Err(deny(
                            SERVICE,
                            format!(
                                "`systemctl {verb}` of non-static unit `{}` cannot be judged",
                                shorten(&u.raw)
                            ),
                        ));
                    }
                    if protected_unit(u.text()) {
                        return stop(u.text(), &format!("systemctl {verb}"));
                    }
                }
            }
            Ok(())
        }
        "service" | "invoke-rc.d" | "update-rc.d" => {
            let ops: Vec<&str> = args.iter().map(Word::text).collect();
            if let [svc, action, ..] = ops.as_slice()
                && matches!(
                    *action,
                    "stop" | "force-stop" | "disable" | "remove" | "kill"
                )
                && protected_unit(svc)
            {
                return stop(svc, &format!("{name} {svc} {action}"));
            }
            Ok(())
        }
        _ if inv.prog().starts_with("/etc/init.d/") => {
            if let Some(action) = args.first().map(|w| w.text())
                && matches!(action, "stop" | "force-stop")
                && protected_unit(name)
            {
                return stop(name, &format!("{} {action}", inv.prog()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, inv, rule_of};
    use super::super::{ALLOWED, KILL};
    use super::*;

    fn rule(cmd: &str) -> String {
        rule_of(service_rules(&inv(cmd)))
    }

    #[test]
    fn protected_units() {
        for unit in [
            "docker",
            "docker.service",
            "containerd",
            "ssh",
            "sshd.socket",
            "dtma-agent",
            "systemd-journald",
        ] {
            assert!(protected_unit(unit), "{unit}");
        }
        for unit in ["nginx", "nginx.service", "cron", "dockerish"] {
            assert!(!protected_unit(unit), "{unit}");
        }
        // Globs are matched against the protected names.
        assert!(protected_unit("dock*"));
        assert!(protected_unit("*"));
        assert!(!protected_unit("ngin?"));
    }

    #[test]
    fn systemctl() {
        assert_eq!(rule("systemctl stop docker"), SERVICE);
        assert_eq!(rule("systemctl disable --now sshd.service"), SERVICE);
        assert_eq!(rule("systemctl mask 'dtma*'"), SERVICE);
        assert_eq!(rule("systemctl stop nginx docker"), SERVICE);
        assert_eq!(rule("systemctl stop \"$UNIT\""), SERVICE);
        assert_eq!(rule("systemctl stop nginx"), ALLOWED);
        assert_eq!(rule("systemctl restart docker"), ALLOWED);
        assert_eq!(rule("systemctl status sshd"), ALLOWED);
        assert!(is_readonly_systemctl("list-units") && !is_readonly_systemctl("restart"));
    }

    #[test]
    fn service_and_init_scripts() {
        assert_eq!(rule("service docker stop"), SERVICE);
        assert_eq!(rule("update-rc.d ssh remove"), SERVICE);
        assert_eq!(rule("/etc/init.d/ssh stop"), SERVICE);
        assert_eq!(rule("service nginx stop"), ALLOWED);
        assert_eq!(rule("service docker status"), ALLOWED);
        assert_eq!(rule("/etc/init.d/ssh reload"), ALLOWED);
    }

    #[test]
    fn through_the_engine() {
        // `systemctl kill` of a critical unit is reported as a kill (see the processes family), first.
        assert_eq!(admin("systemctl kill docker"), KILL);
        assert_eq!(admin("sudo systemctl stop containerd"), SERVICE);
        assert_eq!(admin("systemctl restart docker"), ALLOWED);
    }
}
