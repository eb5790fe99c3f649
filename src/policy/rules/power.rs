//! Programs that change the machine's power state: `shutdown`, `reboot`, `init 0`, `systemctl poweroff`, starting a
//! shutdown target, or asking logind to reboot over D-Bus. (Writing to `/proc/sysrq-trigger` is in [`super::writes`].)

use super::args::parse_args;
use super::services::{SYSTEMCTL_LONG, is_readonly_systemctl};
use super::{Inv, POWER, UNJUDGEABLE, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// The `power_state` denial naming what was run.
fn power(what: String) -> Verdict {
    Err(deny(
        POWER,
        format!("`{what}` changes the machine's power state"),
    ))
}

/// Power-state changes by any of the programs that can make them.
pub(super) fn power_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    match name {
        "shutdown" | "reboot" | "halt" | "poweroff" | "kexec" => power(name.to_string()),
        "dbus-send" | "busctl" | "gdbus" | "qdbus" => {
            for a in args {
                let t = a.text().to_ascii_lowercase();
                if [
                    "reboot",
                    "poweroff",
                    "powerOff",
                    "halt",
                    "suspend",
                    "hibernate",
                    "kexec",
                ]
                .iter()
                .any(|k| t.contains(&k.to_ascii_lowercase()))
                {
                    return power(format!("{name} … {}", shorten(a.text())));
                }
            }
            Ok(())
        }
        "init" | "telinit" => {
            for a in args {
                match a.value.as_deref() {
                    Some(v @ ("0" | "6" | "1" | "s" | "S" | "single" | "emergency")) => {
                        return power(format!("{name} {v}"));
                    }
                    None => return power(format!("{name} {}", a.raw)),
                    _ => {}
                }
            }
            Ok(())
        }
        "systemctl" | "loginctl" => systemctl_power(name, args),
        _ => Ok(()),
    }
}

/// `systemctl poweroff`/`isolate`/…, `loginctl reboot`, and `systemctl start reboot.target` and the like.
fn systemctl_power(name: &str, args: &[Word]) -> Verdict {
    let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
    let Some(verb) = a.operands.first() else {
        return Ok(());
    };
    let Some(v) = verb.value.as_deref() else {
        return Err(deny(
            UNJUDGEABLE,
            format!("`{name}` verb `{}` is not static", shorten(&verb.raw)),
        ));
    };
    const VERBS: &[&str] = &[
        "poweroff",
        "reboot",
        "halt",
        "kexec",
        "suspend",
        "hibernate",
        "hybrid-sleep",
        "suspend-then-hibernate",
        "rescue",
        "emergency",
        "isolate",
        "soft-reboot",
        "switch-root",
        "default",
        "exit",
    ];
    if VERBS.contains(&v) {
        return power(format!("{name} {v}"));
    }
    if name != "systemctl" || is_readonly_systemctl(v) {
        return Ok(());
    }
    const TARGETS: &[&str] = &[
        "poweroff",
        "reboot",
        "halt",
        "kexec",
        "rescue",
        "emergency",
        "shutdown",
        "suspend",
        "hibernate",
        "sleep",
        "soft-reboot",
        "ctrl-alt-del",
        "exit",
        "hybrid-sleep",
        "suspend-then-hibernate",
    ];
    const SERVICES: &[&str] = &[
        "systemd-poweroff",
        "systemd-reboot",
        "systemd-halt",
        "systemd-kexec",
        "systemd-suspend",
        "systemd-hibernate",
    ];
    for u in a.operands.iter().skip(1) {
        let unit = u.text();
        let base = unit.rsplit_once('.').map_or(unit, |(b, _)| b);
        if TARGETS.contains(&base) || SERVICES.iter().any(|p| base.starts_with(p)) {
            return power(format!("systemctl {v} {unit}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, inv};
    use super::super::{ALLOWED, testing::rule_of};
    use super::*;

    fn rule(cmd: &str) -> String {
        rule_of(power_rules(&inv(cmd)))
    }

    #[test]
    fn power_programs_are_denied_whatever_their_arguments() {
        assert_eq!(rule("shutdown -h now"), POWER);
        assert_eq!(rule("/sbin/reboot"), POWER);
        assert_eq!(rule("poweroff --help"), POWER);
        // Mentioning them is fine.
        assert_eq!(rule("grep shutdown /var/log/syslog"), ALLOWED);
        assert_eq!(rule("echo reboot"), ALLOWED);
        assert_eq!(admin("grep -c reboot /var/log/syslog"), ALLOWED);
    }

    #[test]
    fn runlevels() {
        assert_eq!(rule("init 0"), POWER);
        assert_eq!(rule("telinit S"), POWER);
        assert_eq!(rule("init $LEVEL"), POWER);
        assert_eq!(rule("init 3"), ALLOWED);
        assert_eq!(rule("telinit q"), ALLOWED);
    }

    #[test]
    fn systemctl_verbs_and_targets() {
        assert_eq!(rule("systemctl --no-block reboot"), POWER);
        assert_eq!(rule("loginctl suspend"), POWER);
        assert_eq!(rule("systemctl isolate multi-user.target"), POWER);
        assert_eq!(rule("systemctl start poweroff.target"), POWER);
        assert_eq!(rule("systemctl restart systemd-reboot.service"), POWER);
        assert_eq!(rule("systemctl $VERB"), UNJUDGEABLE);
        assert_eq!(rule("systemctl status reboot.target"), ALLOWED);
        assert_eq!(rule("systemctl restart nginx"), ALLOWED);
        assert_eq!(rule("loginctl list-sessions"), ALLOWED);
    }

    #[test]
    fn dbus_calls() {
        assert_eq!(
            rule(
                "busctl call org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager PowerOff b true"
            ),
            POWER
        );
        assert_eq!(
            rule(
                "busctl call org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager ListSessions"
            ),
            ALLOWED
        );
    }

    #[test]
    fn through_wrappers_and_nested_code() {
        assert_eq!(admin("sudo nohup halt &"), POWER);
        assert_eq!(admin("bash -c 'shutdown now'"), POWER);
        assert_eq!(admin("echo 'shutdown now' > /tmp/todo"), ALLOWED);
    }
}
