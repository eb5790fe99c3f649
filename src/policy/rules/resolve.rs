//! Program resolution: the programs a simple command runs, looking through wrappers (`sudo`, `env`, `timeout`,
//! `xargs`, `find -exec`, `busybox`, …), and the shell code it hands to a nested shell (`sh -c`, `su -c`, `watch`,
//! `flock -c`, `env -S`, `sudo -s`), which the engine parses and judges recursively.
//!
//! Each wrapper family is one step: it records the wrapper as an [`Inv`], queues any nested code, and returns the
//! index of the word where the wrapped program starts (or `None` when nothing further runs). Steps that recurse
//! (into shell code or a command list) are here; wrappers that only skip their own options are in [`wrappers`].

mod wrappers;

use super::args::{parse_args, shell_args};
use super::paths::program_name;
use super::{Chain, Ctx, Deny, Engine, Inv, MAX_HOPS, UNJUDGEABLE, Verdict, deny, static_join};
use crate::policy::shell::{self, Word};

/// Shells whose `-c` code is parsed and judged, and which read code from stdin otherwise.
pub(super) const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "rbash", "yash", "posh", "fish",
    "csh", "tcsh",
];

/// Nesting of wrappers that run a command list of their own (`xargs`, `find -exec`) beyond which nothing is judged.
const MAX_LEVEL: usize = 4;

/// What a step returns: the index in the command's words of the wrapped program, if one runs.
type Step = Result<Option<usize>, Deny>;

impl Engine<'_> {
    /// Resolve the programs a command runs, looking through wrappers. With `probe`, no denial is computed for
    /// dynamic words beyond a plain "unjudgeable" (used when classifying other commands).
    pub(super) fn resolve(
        &self,
        words: &[Word],
        ctx: &Ctx,
        chain: &mut Chain,
        level: usize,
        probe: bool,
    ) -> Verdict {
        Resolver {
            engine: self,
            ctx,
            level,
            probe,
        }
        .run(words, chain)
    }
}

/// One resolution pass over a command's words.
#[derive(Clone, Copy)]
struct Resolver<'r> {
    engine: &'r Engine<'r>,
    ctx: &'r Ctx<'r>,
    /// How many `xargs`/`find -exec` command lists deep this pass is.
    level: usize,
    probe: bool,
}

/// The program word being resolved: `words[at]`, with its basename.
struct Hop<'w> {
    words: &'w [Word],
    at: usize,
    word: &'w Word,
    name: String,
}

impl<'w> Hop<'w> {
    /// The program's arguments.
    fn args(&self) -> &'w [Word] {
        self.words.get(self.at + 1..).unwrap_or(&[])
    }

    /// Index in the command's words of argument `k`.
    fn arg_at(&self, k: usize) -> usize {
        self.at + 1 + k
    }

    /// Record the program (with its arguments) as an invocation.
    fn push(&self, chain: &mut Chain, transparent: bool) {
        chain.invs.push(Inv {
            name: self.name.clone(),
            words: self.words.get(self.at..).unwrap_or(&[]).to_vec(),
            transparent,
        });
    }

    /// Record an interactive shell started by the wrapper (`sudo -s`, `su`, `chroot DIR`).
    fn shell_marker(&self, chain: &mut Chain) {
        chain.invs.push(Inv {
            name: "sh".to_string(),
            words: vec![self.word.clone()],
            transparent: false,
        });
    }
}

fn too_many_wrappers() -> Deny {
    deny(UNJUDGEABLE, "too many nested command wrappers".to_string())
}

impl Resolver<'_> {
    fn run(&self, words: &[Word], chain: &mut Chain) -> Verdict {
        if self.level > MAX_LEVEL {
            return Err(too_many_wrappers());
        }
        let mut at = 0usize;
        for _ in 0..MAX_HOPS {
            let Some(word) = words.get(at) else {
                return Ok(());
            };
            let Some(v) = word.value.as_deref() else {
                return Err(self.dynamic(word, "the command word"));
            };
            let hop = Hop {
                words,
                at,
                word,
                name: program_name(v).to_string(),
            };
            match self.step(&hop, chain)? {
                Some(n) => at = n,
                None => return Ok(()),
            }
        }
        Err(too_many_wrappers())
    }

    /// Resolve the words of a command list a wrapper runs (`xargs CMD`, `find -exec CMD ;`), one level deeper.
    fn run_inner(&self, words: &[Word], chain: &mut Chain) -> Verdict {
        Resolver {
            level: self.level + 1,
            ..*self
        }
        .run(words, chain)
    }

    /// The denial for a dynamic word whose value decides what runs.
    fn dynamic(&self, w: &Word, what: &str) -> Deny {
        self.engine.dynamic_denial(w, self.ctx, what, self.probe)
    }

    /// Queue static shell code for a nested check, or deny dynamic code.
    fn nested_code(&self, chain: &mut Chain, code: &Word, via: String, what: &str) -> Verdict {
        match code.value.as_deref() {
            Some(c) => {
                chain.nested.push((c.to_string(), via));
                Ok(())
            }
            None => Err(self.dynamic(code, what)),
        }
    }

    fn step(&self, hop: &Hop, chain: &mut Chain) -> Step {
        match hop.name.as_str() {
            "sudo" | "doas" | "pkexec" => wrappers::sudo(hop, chain),
            "env" => self.env(hop, chain),
            "nice" | "nohup" | "time" | "stdbuf" | "exec" | "setsid" | "strace" | "timeout"
            | "command" | "builtin" | "busybox" | "ionice" | "systemd-run" => {
                Ok(wrappers::run_wrapper(hop, chain))
            }
            "chroot" | "nsenter" | "unshare" => Ok(wrappers::namespace(hop, chain)),
            "xargs" => self.xargs(hop, chain),
            "find" => self.find_exec(hop, chain),
            "watch" => wrappers::watch(hop, chain),
            "flock" => self.flock(hop, chain),
            "su" | "runuser" => self.su(hop, chain),
            n if SHELLS.contains(&n) => self.shell(hop, chain),
            _ => {
                hop.push(chain, false);
                Ok(None)
            }
        }
    }

    // ------------------------------------------------------------------ wrappers with shell code

    /// `env [OPTIONS] [NAME=VALUE…] CMD`; `env -S 'CODE'` splits its string into a command line.
    fn env(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let args = hop.args();
        hop.push(chain, true);
        let mut j = 0;
        let mut split: Option<Word> = None;
        while let Some(x) = args.get(j) {
            let Some(xv) = x.value.as_deref() else { break };
            match xv {
                "-" | "-i" | "--ignore-environment" | "-0" | "--null" | "-v" | "--debug" => j += 1,
                "--" => {
                    j += 1;
                    break;
                }
                "-u" | "--unset" | "-C" | "--chdir" => j += 2,
                "-S" | "--split-string" => {
                    split = args.get(j + 1).cloned();
                    j += 2;
                    break;
                }
                _ => {
                    if let Some(r) = xv
                        .strip_prefix("--split-string=")
                        .or_else(|| xv.strip_prefix("-S"))
                    {
                        split = Some(Word::literal(r));
                        j += 1;
                        break;
                    } else if xv.starts_with("--") {
                        j += 1;
                    } else if xv.starts_with('-') && xv.len() > 1 {
                        j += if xv.ends_with('u') || xv.ends_with('C') {
                            2
                        } else {
                            1
                        };
                    } else {
                        break;
                    }
                }
            }
        }
        while args.get(j).is_some_and(shell::is_assignment) {
            j += 1;
        }
        if let Some(sw) = split {
            let Some(head) = sw.value.clone() else {
                return Err(self.dynamic(&sw, "`env -S` code"));
            };
            let tail = static_join(args.get(j..).unwrap_or(&[])).unwrap_or_default();
            chain
                .nested
                .push((format!("{head} {tail}"), "env -S".to_string()));
            Ok(None)
        } else if j < args.len() {
            Ok(Some(hop.arg_at(j)))
        } else {
            Ok(None)
        }
    }

    /// `flock [OPTIONS] FILE CMD…` or `flock FILE -c 'CODE'`.
    fn flock(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let a = parse_args(
            hop.args(),
            "wEc",
            &["timeout", "conflict-exit-code", "command"],
            true,
        );
        hop.push(chain, false);
        let codes = a.values('c', "command");
        if codes.is_empty() {
            return Ok(a
                .first_operand
                .map(|k| hop.arg_at(k) + 1)
                .filter(|n| *n < hop.words.len()));
        }
        for c in codes {
            self.nested_code(chain, c, "flock -c".to_string(), "`flock -c` code")?;
        }
        Ok(None)
    }

    /// `su [-c CODE] [USER]`, `runuser [-u USER] CMD…`; without code both start a login shell.
    fn su(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let name = hop.name.as_str();
        let a = parse_args(
            hop.args(),
            "csgGwu",
            &[
                "command",
                "shell",
                "group",
                "supp-group",
                "whitelist-environment",
                "session-command",
                "user",
            ],
            name == "runuser",
        );
        hop.push(chain, false);
        let mut codes = a.values('c', "command");
        codes.extend(a.values('\0', "session-command"));
        if !codes.is_empty() {
            for c in codes {
                self.nested_code(chain, c, format!("{name} -c"), &format!("`{name} -c` code"))?;
            }
            Ok(None)
        } else if name == "runuser" && (a.has('u') || a.has_long("user")) {
            Ok(a.first_operand.map(|k| hop.arg_at(k)))
        } else {
            hop.shell_marker(chain);
            Ok(None)
        }
    }

    /// `sh -c 'CODE'` (nested code); a shell running a script or reading stdin is judged by the code rules.
    fn shell(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let sa = shell_args(hop.args());
        hop.push(chain, sa.code.is_some());
        if let Some(code) = sa.code {
            let name = hop.name.as_str();
            self.nested_code(
                chain,
                code,
                format!("{name} -c"),
                &format!("`{name} -c` code"),
            )?;
        }
        Ok(None)
    }

    // ------------------------------------------------------------------ wrappers with command lists

    /// `xargs [OPTIONS] CMD…`: the command gets arguments from stdin, which are unknown.
    fn xargs(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let args = hop.args();
        let a = parse_args(
            args,
            "adEILnPs",
            &[
                "arg-file",
                "delimiter",
                "max-args",
                "max-procs",
                "max-chars",
                "process-slot-var",
            ],
            true,
        );
        hop.push(chain, true);
        let mut repl: Option<String> = None;
        for (c, v) in &a.short {
            match c {
                'I' => repl = v.as_ref().map(|w| w.text().to_string()),
                'i' => repl = Some("{}".to_string()),
                _ => {}
            }
        }
        for (l, v) in &a.long {
            if l == "replace" {
                repl = Some(
                    v.as_ref()
                        .map_or("{}".to_string(), |w| w.text().to_string()),
                );
            }
        }
        let mut inner: Vec<Word> = match a.first_operand {
            Some(k) => args.get(k..).unwrap_or(&[]).to_vec(),
            None => vec![Word::literal("echo")],
        };
        match repl.filter(|r| !r.is_empty()) {
            Some(r) => {
                for iw in inner.iter_mut().skip(1) {
                    if iw.text().contains(&r) {
                        *iw = iw.to_dynamic();
                    }
                }
            }
            None => inner.push(Word {
                raw: "$(xargs stdin)".to_string(),
                value: None,
                approx: "$(xargs stdin)".to_string(),
                ..Word::default()
            }),
        }
        self.run_inner(&inner, chain)?;
        Ok(None)
    }

    /// `find … -exec CMD {} ;` (and `-execdir`, `-ok`, `-okdir`): each command runs on unknown paths.
    fn find_exec(&self, hop: &Hop, chain: &mut Chain) -> Step {
        let args = hop.args();
        hop.push(chain, false);
        let mut j = 0;
        while let Some(x) = args.get(j) {
            j += 1;
            if !matches!(
                x.value.as_deref(),
                Some("-exec" | "-execdir" | "-ok" | "-okdir")
            ) {
                continue;
            }
            let mut seg: Vec<Word> = Vec::new();
            while let Some(y) = args.get(j) {
                j += 1;
                if matches!(y.value.as_deref(), Some(";" | "+")) {
                    break;
                }
                if seg.is_empty() || !y.text().contains("{}") {
                    seg.push(y.clone());
                } else {
                    let mut d = y.to_dynamic();
                    d.approx = d.approx.replace("{}", "$(find path)");
                    if d.approx.starts_with('$') {
                        d.approx = format!("./{}", d.approx);
                    }
                    seg.push(d);
                }
            }
            self.run_inner(&seg, chain)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, rule_of};
    use super::super::{ALLOWED, MASS};
    use super::*;
    use crate::policy::shell::Script;

    /// Resolve the last simple command of `line` (substitutions come first) into its chain, or the denial's rule.
    fn chain(line: &str) -> Result<Chain, String> {
        let script = shell::parse(line).unwrap_or_else(|_| Script::default());
        let ctx = Ctx::new(&script);
        let engine = Engine {
            extra_deny: &[],
            operator_allow: &[],
        };
        let words = script
            .commands
            .last()
            .map(|c| c.words.clone())
            .unwrap_or_default();
        let mut chain = Chain::default();
        engine
            .resolve(&words, &ctx, &mut chain, 0, false)
            .map_err(|d| rule_of(Err(d)))?;
        Ok(chain)
    }

    /// The rule that denies resolving `line`, if any.
    pub(super) fn resolved(line: &str) -> Result<(), String> {
        chain(line).map(|_| ())
    }

    /// The names of the programs `line` runs, wrappers included.
    pub(super) fn names(line: &str) -> Vec<String> {
        chain(line)
            .map(|c| c.invs.into_iter().map(|i| i.name).collect())
            .unwrap_or_default()
    }

    /// The shell code `line` hands to nested shells.
    pub(super) fn nested(line: &str) -> Vec<String> {
        chain(line)
            .map(|c| c.nested.into_iter().map(|(code, _)| code).collect())
            .unwrap_or_default()
    }

    #[test]
    fn env_options_assignments_and_split_strings() {
        assert_eq!(
            names("env -i -u HOME X=1 Y=2 nice -n 5 reboot"),
            ["env", "nice", "reboot"]
        );
        assert_eq!(names("env"), ["env"]);
        assert_eq!(nested("env -S 'rm -rf' /"), ["rm -rf /"]);
        assert_eq!(
            resolved("env -S \"$X\"").err().as_deref(),
            Some(UNJUDGEABLE)
        );
        assert_eq!(admin("env -S 'rm -rf /'"), MASS);
        assert_eq!(admin("FOO=bar env | sort"), ALLOWED);
    }

    #[test]
    fn command_lists_of_xargs_and_find() {
        assert_eq!(names("xargs -n1 rm -f"), ["xargs", "rm"]);
        assert_eq!(names("xargs"), ["xargs", "echo"]);
        assert_eq!(
            names("find /tmp -exec rm {} \\; -exec ls {} +"),
            ["find", "rm", "ls"]
        );
        assert_eq!(names("find /tmp -name x"), ["find"]);
        // The paths xargs and find supply are unknown: a recursive delete of them cannot be judged.
        assert_eq!(admin("xargs rm -rf < list"), MASS);
        assert_eq!(admin("xargs -I{} rm -f /tmp/{}"), ALLOWED);
        assert_eq!(
            resolved(&format!("{}ls", "xargs ".repeat(6)))
                .err()
                .as_deref(),
            Some(UNJUDGEABLE)
        );
    }

    #[test]
    fn shell_code_is_queued_for_a_nested_check() {
        assert_eq!(nested("bash -lc 'echo hi' name"), ["echo hi"]);
        assert_eq!(names("bash script.sh"), ["bash"]);
        assert_eq!(nested("su -c 'id' alice"), ["id"]);
        assert_eq!(names("su alice"), ["su", "sh"]);
        assert_eq!(names("runuser -u app -- id"), ["runuser", "id"]);
        assert_eq!(nested("watch -n 1 df -h"), ["df -h"]);
        assert_eq!(names("watch -x df -h"), ["watch", "df"]);
        assert_eq!(nested("flock -c 'ls' /tmp/l"), ["ls"]);
        assert_eq!(names("flock /tmp/l ls"), ["flock", "ls"]);
        for dynamic in [
            "bash -c \"$CODE\"",
            "su -c \"$X\"",
            "flock -c \"$X\" /l",
            "watch $X",
        ] {
            assert_eq!(
                resolved(dynamic).err().as_deref(),
                Some(UNJUDGEABLE),
                "{dynamic}"
            );
        }
    }

    #[test]
    fn dynamic_program_words_and_wrapper_limits() {
        assert_eq!(resolved("$X -rf /").err().as_deref(), Some(UNJUDGEABLE));
        assert_eq!(
            resolved("sudo $(echo rm) -rf /").err().as_deref(),
            Some(UNJUDGEABLE)
        );
        let many = format!("{}ls", "nice ".repeat(MAX_HOPS));
        assert_eq!(resolved(&many).err().as_deref(), Some(UNJUDGEABLE));
        let enough = format!("{}ls", "nice ".repeat(MAX_HOPS - 1));
        assert_eq!(names(&enough).last().map(String::as_str), Some("ls"));
        // The decision names where the dynamic word came from when it can.
        assert_eq!(admin("$(curl -s http://x) -rf /"), super::super::DOWNLOAD);
    }
}
