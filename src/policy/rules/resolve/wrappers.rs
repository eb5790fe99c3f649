//! Wrappers that only parse their own options and point at the program they run: `sudo`/`doas`/`pkexec`,
//! `nice`/`timeout`/`stdbuf`/`ionice`/`systemd-run`/…, `chroot`/`nsenter`/`unshare`, and `watch` (whose code is
//! joined from its operands).

use super::{Hop, Step};
use crate::policy::rules::args::parse_args;
use crate::policy::rules::{Chain, Inv, UNJUDGEABLE, deny, static_join};

/// `sudo`, `doas`, `pkexec`: run a command as another user; `sudo -s`/`-i` run it through a shell, `sudo -e` edits.
pub(super) fn sudo(hop: &Hop, chain: &mut Chain) -> Step {
    let name = hop.name.as_str();
    let args = hop.args();
    let a = parse_args(
        args,
        "ugpCUrtTRD",
        &[
            "user",
            "group",
            "prompt",
            "close-from",
            "host",
            "other-user",
            "role",
            "type",
            "command-timeout",
            "chroot",
            "chdir",
        ],
        true,
    );
    if name == "sudo" && (a.has('e') || a.has_long("edit")) {
        let mut ws = vec![hop.word.clone()];
        ws.extend(a.operands.iter().map(|o| (*o).clone()));
        chain.invs.push(Inv {
            name: "sudoedit".to_string(),
            words: ws,
            transparent: false,
        });
        return Ok(None);
    }
    hop.push(chain, false);
    let shell = a.has('s') || a.has('i') || a.has_long("shell");
    if a.has('l') || a.has_long("list") {
        return Ok(None);
    }
    let Some(k) = a.first_operand else {
        if shell {
            hop.shell_marker(chain);
        }
        return Ok(None);
    };
    if !shell {
        return Ok(Some(hop.arg_at(k)));
    }
    match static_join(args.get(k..).unwrap_or(&[])) {
        Some(code) => {
            chain.nested.push((code, format!("{name} -s")));
            Ok(None)
        }
        None => Err(deny(
            UNJUDGEABLE,
            format!("`{name} -s` runs non-static shell code"),
        )),
    }
}

/// Wrappers that adjust how their operand runs (priority, time limit, buffering, tracing, a new session, a
/// transient unit) or pick a builtin or applet. All but `setsid`, `strace` with `-p`, `command -v` and the like
/// are transparent for the role allow-lists.
pub(super) fn run_wrapper(hop: &Hop, chain: &mut Chain) -> Option<usize> {
    let name = hop.name.as_str();
    let args = hop.args();
    match name {
        "timeout" => {
            let a = parse_args(args, "sk", &["signal", "kill-after"], true);
            hop.push(chain, true);
            // The first operand is the duration.
            a.first_operand
                .map(|k| hop.arg_at(k) + 1)
                .filter(|n| *n < hop.words.len())
        }
        "command" => {
            let a = parse_args(args, "", &[], true);
            if a.has('v') || a.has('V') {
                hop.push(chain, false);
                None
            } else {
                hop.push(chain, true);
                a.first_operand.map(|k| hop.arg_at(k))
            }
        }
        "builtin" => {
            hop.push(chain, true);
            Some(hop.arg_at(0))
        }
        "busybox" => match args.first().and_then(|a| a.value.as_deref()) {
            Some(applet) if !applet.starts_with('-') => {
                hop.push(chain, true);
                Some(hop.arg_at(0))
            }
            _ => {
                hop.push(chain, false);
                None
            }
        },
        "ionice" => {
            let a = parse_args(
                args,
                "cnpPu",
                &["class", "classdata", "pid", "pgid", "uid"],
                true,
            );
            hop.push(chain, true);
            if a.has('p') || a.has('P') || a.has('u') {
                None
            } else {
                a.first_operand.map(|k| hop.arg_at(k))
            }
        }
        "systemd-run" => {
            let a = parse_args(
                args,
                "upHME",
                &[
                    "unit",
                    "property",
                    "host",
                    "machine",
                    "setenv",
                    "description",
                    "slice",
                    "uid",
                    "gid",
                    "working-directory",
                    "nice",
                    "service-type",
                ],
                true,
            );
            hop.push(chain, false);
            a.first_operand.map(|k| hop.arg_at(k))
        }
        _ => {
            let (with_arg, longs): (&str, &[&str]) = match name {
                "nice" => ("n", &["adjustment"]),
                "time" => ("fo", &["format", "output"]),
                "stdbuf" => ("ioe", &["input", "output", "error"]),
                "exec" => ("a", &[]),
                "strace" => ("abeEIopPsSuUX", &["output", "signal", "trace"]),
                _ => ("", &[]),
            };
            let a = parse_args(args, with_arg, longs, true);
            hop.push(chain, name != "setsid");
            if name == "strace" && a.has('p') {
                None
            } else {
                a.first_operand.map(|k| hop.arg_at(k))
            }
        }
    }
}

/// `chroot DIR [CMD…]`, `nsenter … [CMD…]`, `unshare … [CMD…]`: without a command they start a shell.
pub(super) fn namespace(hop: &Hop, chain: &mut Chain) -> Option<usize> {
    let name = hop.name.as_str();
    let (with_arg, longs): (&str, &[&str]) = match name {
        "chroot" => ("", &["userspec", "groups"]),
        "nsenter" => ("tSG", &["target", "setuid", "setgid"]),
        _ => ("", &["propagation", "setgroups", "map-user", "map-group"]),
    };
    let a = parse_args(hop.args(), with_arg, longs, true);
    hop.push(chain, false);
    let cmd_at = if name == "chroot" {
        // The first operand is the new root.
        a.first_operand.map(|k| hop.arg_at(k) + 1)
    } else {
        a.first_operand.map(|k| hop.arg_at(k))
    };
    match cmd_at.filter(|n| *n < hop.words.len()) {
        Some(n) => Some(n),
        None => {
            hop.shell_marker(chain);
            None
        }
    }
}

/// `watch [OPTIONS] CODE…` runs its joined operands through `sh -c`; `watch -x CMD…` runs the command itself.
pub(super) fn watch(hop: &Hop, chain: &mut Chain) -> Step {
    let args = hop.args();
    let a = parse_args(args, "nq", &["interval"], true);
    hop.push(chain, false);
    if a.has('x') || a.has_long("exec") {
        return Ok(a.first_operand.map(|k| hop.arg_at(k)));
    }
    if let Some(k) = a.first_operand {
        match static_join(args.get(k..).unwrap_or(&[])) {
            Some(code) => chain.nested.push((code, "watch".to_string())),
            None => {
                return Err(deny(
                    UNJUDGEABLE,
                    "`watch` runs non-static shell code".to_string(),
                ));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{names, nested, resolved};
    use crate::policy::rules::testing::admin;
    use crate::policy::rules::{ALLOWED, MASS, POWER, UNJUDGEABLE};

    #[test]
    fn privilege_wrappers() {
        assert_eq!(names("sudo -u root -- rm -rf /tmp/x"), ["sudo", "rm"]);
        assert_eq!(names("doas reboot"), ["doas", "reboot"]);
        assert_eq!(names("sudo -e /etc/hosts"), ["sudoedit"]);
        assert_eq!(names("sudo -l"), ["sudo"]);
        assert_eq!(names("sudo -i"), ["sudo", "sh"]);
        assert_eq!(nested("sudo -s rm -rf /"), ["rm -rf /"]);
        assert_eq!(
            resolved("sudo -s rm $X").err().as_deref(),
            Some(UNJUDGEABLE)
        );
        // Through the engine: the wrapped program decides.
        assert_eq!(admin("sudo -s rm -rf /"), MASS);
        assert_eq!(admin("sudo systemctl status nginx"), ALLOWED);
    }

    #[test]
    fn run_wrappers() {
        assert_eq!(
            names("timeout -s KILL 5 ionice -c 3 stdbuf -oL time -f %e rm x"),
            ["timeout", "ionice", "stdbuf", "time", "rm"]
        );
        assert_eq!(names("timeout 5"), ["timeout"]);
        assert_eq!(names("command -v reboot"), ["command"]);
        assert_eq!(names("command reboot"), ["command", "reboot"]);
        assert_eq!(names("busybox rm -rf /"), ["busybox", "rm"]);
        assert_eq!(names("busybox --list"), ["busybox"]);
        assert_eq!(names("strace -p 42"), ["strace"]);
        assert_eq!(
            names("systemd-run --unit x -p Nice=5 reboot"),
            ["systemd-run", "reboot"]
        );
        assert_eq!(admin("nice -n 10 timeout 5 rm -rf /usr"), MASS);
        assert_eq!(admin("command -v reboot"), ALLOWED);
    }

    #[test]
    fn namespaces_start_a_shell_without_a_command() {
        assert_eq!(names("chroot /mnt reboot"), ["chroot", "reboot"]);
        assert_eq!(names("chroot /mnt"), ["chroot", "sh"]);
        assert_eq!(names("nsenter -t 1 -m -- reboot"), ["nsenter", "reboot"]);
        assert_eq!(names("unshare -r"), ["unshare", "sh"]);
        assert_eq!(admin("nsenter -t 1 -m -u -i -n -p -- reboot"), POWER);
    }
}
