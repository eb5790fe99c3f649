//! Files written by redirections or by programs (`tee`, `cp`, `dd of=`, `sed -i`, `curl -o`, …): writing to a block
//! device, an account file or `/proc/sysrq-trigger` is denied.

use super::args::{interp_args, parse_args};
use super::paths::{is_account_file, is_block_device};
use super::{ACCOUNT, BLOCK_WRITE, Ctx, Inv, POWER, Verdict, deny};
use crate::policy::shell::Word;

/// Deny writing `w` (written by `via`) when it names a block device, an account file or the sysrq trigger.
pub(super) fn check_written(w: &Word, via: &str, ctx: &Ctx) -> Verdict {
    let mut paths = ctx.paths(w);
    if !w.is_static() && w.approx.contains(".ssh/authorized_keys") {
        paths.push(w.approx.clone());
    }
    for p in paths {
        if p == "/proc/sysrq-trigger" {
            return Err(deny(
                POWER,
                format!(
                    "{via} writes to `/proc/sysrq-trigger`, which can reboot or crash the machine"
                ),
            ));
        }
        if is_block_device(&p) {
            return Err(deny(
                BLOCK_WRITE,
                format!("{via} writes to block device or memory `{p}`"),
            ));
        }
        if is_account_file(&p) || p.contains(".ssh/authorized_keys") {
            return Err(deny(ACCOUNT, format!("{via} writes to account file `{p}`")));
        }
    }
    Ok(())
}

/// Files a program writes, moves away or deletes (besides redirections).
pub(super) fn written_paths(inv: &Inv) -> Vec<Word> {
    let args = inv.args();
    let own = |v: Vec<&Word>| v.into_iter().cloned().collect::<Vec<Word>>();
    match inv.name.as_str() {
        "tee" | "sponge" | "sudoedit" | "rm" | "unlink" | "shred" | "srm" => {
            own(parse_args(args, "", &[], false).operands)
        }
        "truncate" => own(parse_args(args, "sr", &["size", "reference"], false).operands),
        "cp" | "install" | "ln" | "mv" => {
            let a = parse_args(
                args,
                "tSmog",
                &["target-directory", "suffix", "mode", "owner", "group"],
                false,
            );
            let mut out: Vec<Word> = a
                .values('t', "target-directory")
                .into_iter()
                .cloned()
                .collect();
            if inv.name == "mv" {
                out.extend(a.operands.iter().map(|w| (*w).clone()));
            } else if out.is_empty()
                && let Some(last) = a.operands.last()
            {
                out.push((*last).clone());
            }
            out
        }
        "rsync" | "scp" => {
            let with_arg = if inv.name == "rsync" {
                "eTBfM"
            } else {
                "PiloFcSJ"
            };
            let a = parse_args(
                args,
                with_arg,
                &["rsh", "rsync-path", "exclude", "include"],
                false,
            );
            a.operands
                .last()
                .map(|w| vec![(*w).clone()])
                .unwrap_or_default()
        }
        "dd" => args
            .iter()
            .filter_map(|a| {
                let t = a.text().strip_prefix("of=")?;
                Some(if a.is_static() {
                    Word::literal(t)
                } else {
                    Word {
                        approx: t.to_string(),
                        ..a.to_dynamic()
                    }
                })
            })
            .collect(),
        "sed" => {
            let a = parse_args(args, "efl", &["expression", "file", "line-length"], false);
            let in_place = a.has('i') || a.has_long("in-place") || a.has_long_prefix("in-place");
            if !in_place {
                return Vec::new();
            }
            let skip = usize::from(
                a.values('e', "expression").is_empty() && a.values('f', "file").is_empty(),
            );
            a.operands.iter().skip(skip).map(|w| (*w).clone()).collect()
        }
        "perl" => {
            if interp_args("perl", args).in_place {
                let a = parse_args(args, "eE", &[], false);
                let skip =
                    usize::from(a.values('e', "").is_empty() && a.values('E', "").is_empty());
                a.operands.iter().skip(skip).map(|w| (*w).clone()).collect()
            } else {
                Vec::new()
            }
        }
        "curl" | "wget" => {
            let flags: &[char] = if inv.name == "curl" {
                &['o']
            } else {
                &['O', 'o']
            };
            let longs: &[&str] = if inv.name == "curl" {
                &["--output"]
            } else {
                &["--output-document", "--output-file"]
            };
            let mut out = Vec::new();
            for (k, a) in args.iter().enumerate() {
                let t = a.text();
                if let Some((l, v)) = t.split_once('=')
                    && longs.contains(&l)
                {
                    out.push(Word::literal(v));
                } else if longs.contains(&t) {
                    out.extend(args.get(k + 1).cloned());
                } else if let Some(body) = t.strip_prefix('-')
                    && !body.starts_with('-')
                {
                    // `-o FILE`, `-sSLo FILE`, `-oFILE`
                    if let Some(last) = body.chars().last()
                        && flags.contains(&last)
                    {
                        out.extend(args.get(k + 1).cloned());
                    } else if let Some(first) = body.chars().next()
                        && flags.contains(&first)
                        && body.len() > 1
                    {
                        out.push(Word::literal(body.get(1..).unwrap_or("")));
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::{admin, inv, judge};
    use super::*;

    fn written(cmd: &str) -> Vec<String> {
        written_paths(&inv(cmd))
            .iter()
            .map(|w| w.text().to_string())
            .collect()
    }

    fn check(target: &str) -> String {
        judge("true", |_, ctx| {
            check_written(&Word::literal(target), "`test`", ctx)
        })
    }

    #[test]
    fn files_programs_write() {
        assert_eq!(written("tee -a /tmp/a /tmp/b"), ["/tmp/a", "/tmp/b"]);
        assert_eq!(written("cp -r /src /dst"), ["/dst"]);
        assert_eq!(written("cp -t /dir /a /b"), ["/dir"]);
        assert_eq!(written("mv /a /b"), ["/a", "/b"]);
        assert_eq!(written("dd if=/dev/zero of=/dev/sda bs=1M"), ["/dev/sda"]);
        assert_eq!(written("sed -i s/a/b/ /etc/group"), ["/etc/group"]);
        assert_eq!(written("sed -i -e s/a/b/ /x /y"), ["/x", "/y"]);
        assert_eq!(written("perl -pi -e s/a/b/ /etc/group"), ["/etc/group"]);
        assert_eq!(written("curl -sSLo /tmp/x http://h/x"), ["/tmp/x"]);
        assert_eq!(
            written("wget --output-document=/tmp/y http://h/y"),
            ["/tmp/y"]
        );
        // Readers write nothing.
        assert!(written("sed -n 1p /etc/group").is_empty());
        assert!(written("perl -ne print /etc/group").is_empty());
        assert!(written("cat /etc/passwd").is_empty());
    }

    #[test]
    fn protected_targets() {
        assert_eq!(check("/dev/sda"), BLOCK_WRITE);
        assert_eq!(check("/dev/mapper/root"), BLOCK_WRITE);
        assert_eq!(check("/etc/passwd"), ACCOUNT);
        assert_eq!(check("/root/.ssh/authorized_keys"), ACCOUNT);
        assert_eq!(check("/proc/sysrq-trigger"), POWER);
        for fine in [
            "/dev/null",
            "/tmp/passwd",
            "/etc/hosts",
            "/proc/sys/vm/drop_caches",
        ] {
            assert_eq!(check(fine), ALLOWED, "{fine}");
        }
    }

    #[test]
    fn redirections_and_programs_through_the_engine() {
        assert_eq!(admin("echo x > /dev/sdb"), BLOCK_WRITE);
        assert_eq!(admin("echo x > /tmp/sdb"), ALLOWED);
        assert_eq!(admin("cp /tmp/p /etc/shadow"), ACCOUNT);
        assert_eq!(admin("cp /etc/passwd /tmp/passwd.bak"), ALLOWED);
        assert_eq!(
            admin("echo key | tee -a /home/app/.ssh/authorized_keys"),
            ACCOUNT
        );
        assert_eq!(admin("echo line | tee -a /tmp/log"), ALLOWED);
        assert_eq!(admin("cd /etc && echo x >> passwd"), ACCOUNT);
        assert_eq!(admin("sed -i s/a/b/ /etc/hosts"), ALLOWED);
    }
}
