//! Mode and ownership changes of system paths (`chmod -R 777 /`, `chown -R … /etc`, `chattr +i /etc/…`), and the tools
//! that change user accounts or credentials (`passwd`, `useradd`, `visudo`, …). Writing account files directly is in
//! [`super::writes`].

use super::args::{Args, parse_args};
use super::paths::{PRIMARY_SYSTEM, glob_dir, is_system_path, under, under_os_dir};
use super::{ACCOUNT, Ctx, Inv, PERMS, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// `chmod`/`chown`/`chgrp`/`setfacl`/`chattr` of a system path, recursively under an OS directory, or making one
/// world-writable.
pub(super) fn permission_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let (a, mode, targets): (Args, Option<&Word>, Vec<&Word>) = match name {
        "chmod" | "chown" | "chgrp" => {
            let a = parse_args(args, "", &["reference", "from"], false);
            let by_ref = a.has_long("reference");
            let (mode, targets) = if by_ref {
                (None, a.operands.clone())
            } else {
                (
                    a.operands.first().copied(),
                    a.operands.get(1..).unwrap_or(&[]).to_vec(),
                )
            };
            (a, mode, targets)
        }
        "setfacl" => {
            let a = parse_args(
                args,
                "mMxX",
                &[
                    "modify",
                    "modify-file",
                    "remove",
                    "remove-file",
                    "set",
                    "set-file",
                ],
                false,
            );
            let targets = a.operands.clone();
            (a, None, targets)
        }
        "chattr" => {
            for w in args {
                let Some(v) = w.value.as_deref() else {
                    continue;
                };
                if v.starts_with(['+', '-', '=']) {
                    continue;
                }
                for p in ctx.paths(w) {
                    if p == "/" || is_system_path(&p) || under_os_dir(&p) {
                        return Err(deny(
                            PERMS,
                            format!(
                                "`chattr` on system path `{p}` can make the machine unmanageable"
                            ),
                        ));
                    }
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    // chmod accepts `-R` only; a mode like `-w` is an operand-looking option, handled as a flag here.
    let recursive = a.has('R') || a.has_long("recursive");
    let world_writable = name == "chmod" && mode.is_some_and(|m| is_world_writable(m.text()));
    for t in targets {
        if !t.is_static() {
            if recursive {
                return Err(deny(
                    PERMS,
                    format!(
                        "recursive `{name}` of non-static `{}` cannot be judged",
                        shorten(&t.raw)
                    ),
                ));
            }
            continue;
        }
        for p in ctx.paths(t) {
            let glob_sys = glob_dir(&p).is_some_and(|d| is_system_path(&d) || under_os_dir(&d));
            if p == "/" || is_system_path(&p) || glob_sys {
                return Err(deny(PERMS, format!("`{name}` of system path `{p}`")));
            }
            if recursive && under_os_dir(&p) {
                return Err(deny(
                    PERMS,
                    format!("recursive `{name}` under system path `{p}`"),
                ));
            }
            if world_writable && (under_os_dir(&p) || PRIMARY_SYSTEM.iter().any(|d| under(&p, d))) {
                return Err(deny(
                    PERMS,
                    format!("`chmod` makes system path `{p}` world-writable"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a `chmod` mode grants write permission to others (`777`, `o+w`, `a=rwx`).
fn is_world_writable(mode: &str) -> bool {
    if !mode.is_empty() && mode.chars().all(|c| c.is_ascii_digit()) {
        return mode
            .chars()
            .last()
            .and_then(|c| c.to_digit(8))
            .is_some_and(|d| d & 2 != 0);
    }
    mode.split(',').any(|clause| {
        let who: String = clause.chars().take_while(|c| "ugoa".contains(*c)).collect();
        let rest = clause.get(who.len()..).unwrap_or("");
        (who.contains('o') || who.contains('a'))
            && (rest.starts_with('+') || rest.starts_with('='))
            && rest.contains('w')
    })
}

/// Tools that change user accounts, groups or credentials.
pub(super) fn account_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    if matches!(
        name,
        "passwd"
            | "chpasswd"
            | "chgpasswd"
            | "usermod"
            | "useradd"
            | "userdel"
            | "groupadd"
            | "groupdel"
            | "groupmod"
            | "adduser"
            | "deluser"
            | "addgroup"
            | "delgroup"
            | "chage"
            | "visudo"
            | "vipw"
            | "vigr"
            | "gpasswd"
            | "newusers"
            | "chsh"
            | "chfn"
            | "pwconv"
            | "grpconv"
    ) {
        return Err(deny(
            ACCOUNT,
            format!("`{name}` changes user accounts or credentials"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::{admin, inv, judge, rule_of};
    use super::*;

    fn perms(cmd: &str) -> String {
        judge(cmd, permission_rules)
    }

    #[test]
    fn system_paths() {
        assert_eq!(perms("chmod 755 /"), PERMS);
        assert_eq!(perms("chown nobody /etc"), PERMS);
        assert_eq!(perms("chmod 777 /usr/*"), PERMS);
        assert_eq!(perms("setfacl -m u:x:rwx /var"), PERMS);
        assert_eq!(perms("chattr +i /etc/resolv.conf"), PERMS);
        assert_eq!(perms("chmod 644 /tmp/x"), ALLOWED);
        assert_eq!(perms("chattr +i /srv/app/lock"), ALLOWED);
        assert_eq!(perms("chown app /home/app/file"), ALLOWED);
    }

    #[test]
    fn recursive_changes() {
        assert_eq!(perms("chown -R app /usr/local/lib"), PERMS);
        assert_eq!(perms("chmod -R g+w \"$DIR\""), PERMS);
        assert_eq!(perms("chown -R app:app /srv/app/data"), ALLOWED);
        // A single file under /etc may change its owner; a tree may not.
        assert_eq!(
            perms("chown root:ssl-cert /etc/ssl/private/key.pem"),
            ALLOWED
        );
        assert_eq!(perms("chown -R root /etc/ssl"), PERMS);
        assert_eq!(perms("chmod 600 \"$FILE\""), ALLOWED);
    }

    #[test]
    fn world_writable() {
        assert!(is_world_writable("777") && is_world_writable("0666") && is_world_writable("o+w"));
        assert!(is_world_writable("u+x,a=rwx"));
        assert!(
            !is_world_writable("755") && !is_world_writable("g+w") && !is_world_writable("o-w")
        );
        assert_eq!(perms("chmod 666 /etc/hosts"), PERMS);
        assert_eq!(perms("chmod o+w /var/log/app.log"), PERMS);
        assert_eq!(perms("chmod 644 /etc/hosts"), ALLOWED);
        assert_eq!(perms("chmod 666 /tmp/app.sock"), ALLOWED);
        // Anything under a top-level system directory counts, not only the OS.
        assert_eq!(perms("chmod 666 /srv/app/socket"), PERMS);
        assert_eq!(perms("chmod --reference=/tmp/a /tmp/b"), ALLOWED);
    }

    #[test]
    fn accounts() {
        let rule = |cmd: &str| rule_of(account_rules(&inv(cmd)));
        assert_eq!(rule("passwd root"), ACCOUNT);
        assert_eq!(rule("useradd -o -u 0 evil"), ACCOUNT);
        assert_eq!(rule("visudo"), ACCOUNT);
        assert_eq!(rule("id root"), ALLOWED);
        assert_eq!(rule("getent passwd root"), ALLOWED);
        assert_eq!(admin("sudo usermod -aG docker app"), ACCOUNT);
        assert_eq!(admin("grep root /etc/passwd"), ALLOWED);
    }
}
