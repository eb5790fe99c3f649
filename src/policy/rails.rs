//! The engine: parse, look through wrappers to the programs a command runs, judge nested shell code, apply the rule
//! families of [`super::rules`].

use std::borrow::Cow;
use std::ops::Range;

use regex::Regex;

use super::rules;
use super::shell::{self, ANY, Dialect, RedirOp, Redirect, Script, SimpleCommand, Word};

/// Maximum nesting of shell code inside shell code (`sh -c "bash -c '…'"`).
const MAX_NESTED: usize = 8;
/// Maximum number of wrapper hops (`sudo env nice …`) in one command.
const MAX_HOPS: usize = 16;

/// A denial: rule name and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deny {
    pub(crate) rule: Cow<'static, str>,
    pub(crate) reason: String,
}

pub(crate) fn deny(rule: &'static str, reason: String) -> Deny {
    Deny {
        rule: Cow::Borrowed(rule),
        reason,
    }
}

pub(crate) type Verdict = Result<(), Deny>;

/// "Cannot judge": an expansion or pattern where a literal could be a slip.
pub(crate) fn unjudgeable(w: &Word, what: &str, could: &str) -> Deny {
    deny(
        super::UNJUDGEABLE,
        format!(
            "`{}` is an expansion or pattern where the {what} could be `{could}`; \
             write it literally so the guard rails can judge it",
            shorten(&w.raw)
        ),
    )
}

pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// One program a simple command runs: a wrapper, or the program it wraps.
#[derive(Debug, Clone)]
pub(crate) struct Inv {
    /// Basename of the program word (empty when the word is not exact).
    pub(crate) name: String,
    /// The program word and its arguments.
    pub(crate) words: Vec<Word>,
    /// Whether `xargs` appends words read from stdin.
    pub(crate) via_xargs: bool,
}

impl Inv {
    pub(crate) fn args(&self) -> &[Word] {
        self.words.get(1..).unwrap_or(&[])
    }
}

/// The basename of a program path.
pub(crate) fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// What a rule may look at besides the invocation.
pub(crate) struct Ctx<'s> {
    pub(crate) script: &'s Script,
    pub(crate) cmd: &'s SimpleCommand,
    /// The working directory for relative paths: `Some` when known (`/`, or the last static `cd` before).
    pub(crate) cwd: Option<String>,
}

impl Ctx<'_> {
    /// The commands in `range`, each resolved to its programs' basenames (wrappers included).
    pub(crate) fn programs(&self, range: Range<usize>) -> Vec<(usize, Vec<Inv>)> {
        range
            .filter_map(|i| {
                let cmd = self.script.commands.get(i)?;
                Some((i, resolve(&cmd.words).map(|r| r.invs).unwrap_or_default()))
            })
            .collect()
    }

    /// A downloader (`curl`, `wget`) among the commands in `range`, if any.
    pub(crate) fn downloader(&self, range: Range<usize>) -> Option<String> {
        self.programs(range)
            .into_iter()
            .flat_map(|(_, invs)| invs)
            .find(|inv| matches!(inv.name.as_str(), "curl" | "wget"))
            .map(|inv| inv.name)
    }
}

/// Applies the rails with the configured extras.
pub(crate) struct Engine<'a> {
    pub(crate) extra_deny: &'a [(String, Regex)],
}

impl Engine<'_> {
    /// Judge a command line (nested `depth` levels deep).
    pub(crate) fn check(&self, src: &str, dialect: Dialect, depth: usize) -> Verdict {
        if depth > MAX_NESTED {
            return Err(deny(
                super::UNPARSABLE,
                format!("the command nests shell code deeper than {MAX_NESTED} levels"),
            ));
        }
        let script = shell::parse_nested(src, dialect, depth).map_err(|e| {
            let hint = if dialect == Dialect::Dash && (src.contains("<(") || src.contains(">(")) {
                " (`<(…)` is bash syntax; /bin/sh is dash)"
            } else {
                ""
            };
            deny(
                super::UNPARSABLE,
                format!("the command cannot be parsed as /bin/sh would: {e}{hint}"),
            )
        })?;
        for r in &script.compound_redirects {
            rules::redirect(r)?;
        }
        let mut cwd = Some("/".to_string());
        for cmd in &script.commands {
            let ctx = Ctx {
                script: &script,
                cmd,
                cwd: cwd.clone(),
            };
            for r in &cmd.redirects {
                rules::redirect(r)?;
            }
            self.words(&cmd.words, &ctx, depth, false)?;
            if let Some(first) = cmd.words.first()
                && first.value.as_deref() == Some("cd")
            {
                cwd = match cmd.words.get(1) {
                    None => Some("/root".to_string()),
                    Some(w) => match (w.exact(), &cwd) {
                        (Some(d), _) if d.starts_with('/') => Some(rules::normalize(d)),
                        (Some(d), Some(c)) if d != "-" => {
                            Some(rules::normalize(&format!("{c}/{d}")))
                        }
                        _ => None,
                    },
                };
            }
        }
        Ok(())
    }

    /// Judge one command's words; `speculative` when the program word was substituted by a candidate.
    fn words(&self, words: &[Word], ctx: &Ctx, depth: usize, speculative: bool) -> Verdict {
        if words.is_empty() {
            return Ok(());
        }
        let resolved = resolve(words)?;
        for inv in &resolved.invs {
            self.extra(&inv.words)?;
            rules::program(inv, ctx)?;
            for (code, dialect) in rules::nested_code(inv, ctx)? {
                self.check(&code, dialect, depth + 1).map_err(|d| Deny {
                    rule: d.rule,
                    reason: format!("{} (in code run by `{}`)", d.reason, inv.name),
                })?;
            }
        }
        let Some(rest) = resolved.unresolved else {
            return Ok(());
        };
        // The program word is an expansion or pattern: judge it as each program it could be.
        let Some(first) = rest.first() else {
            return Ok(());
        };
        let base = first.pattern.rsplit('/').next().unwrap_or("");
        for cand in rules::PROGRAMS {
            if !shell::matches(base, cand) {
                continue;
            }
            if speculative {
                return Err(unjudgeable(first, "program", cand));
            }
            let mut alt = rest.clone();
            alt[0] = Word::literal(cand);
            if let Err(d) = self.words(&alt, ctx, depth, true) {
                return Err(Deny {
                    rule: Cow::Borrowed(super::UNJUDGEABLE),
                    reason: format!(
                        "{} (as `{cand}`: {})",
                        unjudgeable(first, "program", cand).reason,
                        d.reason
                    ),
                });
            }
        }
        Ok(())
    }

    fn extra(&self, words: &[Word]) -> Verdict {
        if self.extra_deny.is_empty() {
            return Ok(());
        }
        let joined = words.iter().map(Word::text).collect::<Vec<_>>().join(" ");
        match self.extra_deny.iter().find(|(_, re)| re.is_match(&joined)) {
            Some((name, _)) => Err(Deny {
                rule: Cow::Owned(name.clone()),
                reason: format!(
                    "`{}` matches the configured rule `{name}`",
                    shorten(&joined)
                ),
            }),
            None => Ok(()),
        }
    }
}

/// The programs a command runs through its wrappers.
pub(crate) struct Resolved {
    pub(crate) invs: Vec<Inv>,
    /// The remaining words when a program word is not exact (an expansion or a pattern).
    pub(crate) unresolved: Option<Vec<Word>>,
}

/// A wrapper that runs its operands as a command: short options taking a value, long options taking a value.
struct Wrapper {
    name: &'static str,
    short_values: &'static str,
    long_values: &'static [&'static str],
    /// Leading operands before the command (`timeout`'s duration).
    operands: usize,
}

const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        name: "sudo",
        short_values: "ugCDhprtUTR",
        long_values: &[
            "--user",
            "--group",
            "--close-from",
            "--chdir",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--other-user",
            "--command-timeout",
            "--chroot",
        ],
        operands: 0,
    },
    Wrapper {
        name: "doas",
        short_values: "uC",
        long_values: &[],
        operands: 0,
    },
    Wrapper {
        name: "env",
        short_values: "uCS",
        long_values: &["--unset", "--chdir", "--split-string"],
        operands: 0,
    },
    Wrapper {
        name: "nice",
        short_values: "n",
        long_values: &["--adjustment"],
        operands: 0,
    },
    Wrapper {
        name: "ionice",
        short_values: "cnp",
        long_values: &["--class", "--classdata", "--pid"],
        operands: 0,
    },
    Wrapper {
        name: "timeout",
        short_values: "sk",
        long_values: &["--signal", "--kill-after"],
        operands: 1,
    },
    Wrapper {
        name: "nohup",
        short_values: "",
        long_values: &[],
        operands: 0,
    },
    Wrapper {
        name: "xargs",
        short_values: "adEILnPs",
        long_values: &[
            "--arg-file",
            "--delimiter",
            "--eof",
            "--replace",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--process-slot-var",
        ],
        operands: 0,
    },
    Wrapper {
        name: "time",
        short_values: "fo",
        long_values: &["--format", "--output"],
        operands: 0,
    },
    Wrapper {
        name: "stdbuf",
        short_values: "ioe",
        long_values: &["--input", "--output", "--error"],
        operands: 0,
    },
    Wrapper {
        name: "command",
        short_values: "",
        long_values: &[],
        operands: 0,
    },
    Wrapper {
        name: "exec",
        short_values: "",
        long_values: &[],
        operands: 0,
    },
];

/// Follow wrappers from the program word to the program they run.
pub(crate) fn resolve(words: &[Word]) -> Result<Resolved, Deny> {
    let mut invs = Vec::new();
    let mut rest = words;
    let mut via_xargs = false;
    for _ in 0..MAX_HOPS {
        let Some(first) = rest.first() else {
            return Ok(Resolved {
                invs,
                unresolved: None,
            });
        };
        let Some(prog) = first.exact() else {
            return Ok(Resolved {
                invs,
                unresolved: Some(rest.to_vec()),
            });
        };
        let name = basename(prog).to_string();
        invs.push(Inv {
            name: name.clone(),
            words: rest.to_vec(),
            via_xargs,
        });
        let Some(w) = WRAPPERS.iter().find(|w| w.name == name) else {
            break;
        };
        via_xargs |= name == "xargs";
        // `command -v`/`-V` only describe the program.
        if name == "command"
            && rest
                .iter()
                .skip(1)
                .any(|a| matches!(a.value.as_deref(), Some("-v" | "-V")))
        {
            break;
        }
        match skip_options(rest.get(1..).unwrap_or(&[]), w) {
            Some(r) => rest = r,
            None => break,
        }
    }
    if invs.len() >= MAX_HOPS {
        return Err(deny(
            super::UNJUDGEABLE,
            format!("the command goes through more than {MAX_HOPS} wrappers"),
        ));
    }
    Ok(Resolved {
        invs,
        unresolved: None,
    })
}

/// The words after a wrapper's options and leading operands: the wrapped command.
fn skip_options<'w>(mut args: &'w [Word], w: &Wrapper) -> Option<&'w [Word]> {
    while let Some(a) = args.first() {
        let v = a.text();
        if v == "--" {
            args = &args[1..];
            break;
        }
        if w.name == "env" && a.value.is_some() && shell::is_assignment(a) {
            args = &args[1..];
            continue;
        }
        if !v.starts_with('-') || v == "-" || a.value.is_none() {
            break;
        }
        let takes_next = if let Some(long) = v.strip_prefix("--") {
            !long.contains('=') && w.long_values.contains(&v)
        } else {
            let cluster: Vec<char> = v.chars().skip(1).collect();
            match cluster.iter().position(|c| w.short_values.contains(*c)) {
                Some(i) => i + 1 == cluster.len(),
                None => false,
            }
        };
        args = args.get(if takes_next { 2 } else { 1 }..).unwrap_or(&[]);
    }
    args.get(w.operands..).filter(|r| !r.is_empty())
}

/// A word that could be (the exact string, or matching pattern of) one of `options`.
pub(crate) fn could_be<'o>(w: &Word, options: &[&'o str]) -> Option<&'o str> {
    options.iter().copied().find(|o| match w.exact() {
        Some(v) => v == *o,
        None => shell::matches(&w.pattern, o),
    })
}

/// The part of a word after a literal prefix (`of=` of `of=/dev/sda`), as a word of its own.
pub(crate) fn after_prefix(w: &Word, prefix: &str) -> Option<Word> {
    let pattern = w.pattern.strip_prefix(prefix)?;
    Some(Word {
        raw: w.raw.get(prefix.len()..).unwrap_or(&w.raw).to_string(),
        value: w
            .value
            .as_deref()
            .and_then(|v| v.strip_prefix(prefix))
            .map(str::to_string),
        approx: w
            .approx
            .strip_prefix(prefix)
            .unwrap_or(&w.approx)
            .to_string(),
        glob: w.glob,
        pattern: pattern.to_string(),
        ..w.clone()
    })
}

/// A here-document or here-string feeding stdin, as code text.
pub(crate) fn stdin_text(script: &Script, cmd: &SimpleCommand) -> Option<String> {
    let r: &Redirect = cmd.redirects.iter().rev().find(|r| r.feeds_stdin())?;
    match r.op {
        RedirOp::HereDoc => script.heredocs.get(r.heredoc?).map(|h| h.body.clone()),
        RedirOp::HereString => Some(r.target.approx.clone()),
        _ => None,
    }
}

/// Whether a word's pattern holds an expansion.
pub(crate) fn has_expansion(w: &Word) -> bool {
    w.pattern.contains(ANY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cmd: &str) -> Vec<String> {
        let s = shell::parse(cmd).unwrap_or_default();
        let words = s
            .commands
            .last()
            .map(|c| c.words.clone())
            .unwrap_or_default();
        resolve(&words)
            .map(|r| r.invs.into_iter().map(|i| i.name).collect())
            .unwrap_or_default()
    }

    #[test]
    fn wrappers_are_looked_through() {
        assert_eq!(names("sudo -u root -- /bin/rm -rf /"), ["sudo", "rm"]);
        assert_eq!(
            names("env -i A=1 nice -n 5 timeout -s KILL 10 nohup xargs -n1 rm"),
            ["env", "nice", "timeout", "nohup", "xargs", "rm"]
        );
        assert_eq!(names("timeout 5"), ["timeout"]);
        assert_eq!(names("command -v reboot"), ["command"]);
        assert_eq!(names("time -f %e stdbuf -oL ls"), ["time", "stdbuf", "ls"]);
        // An expansion in a program word is judged as each wrapper it could be.
        assert!(WRAPPERS.iter().all(|w| rules::PROGRAMS.contains(&w.name)));
        let long = "sudo ".repeat(40) + "ls";
        assert!(resolve(&shell::parse(&long).unwrap_or_default().commands[0].words).is_err());
    }

    #[test]
    fn words_and_patterns() {
        let s = shell::parse("x of=/dev/sd* \"of=$D\" /sbin/re*").unwrap_or_default();
        let w = &s.commands[0].words;
        assert_eq!(
            after_prefix(&w[1], "of=").map(|w| w.pattern),
            Some("/dev/sd*".into())
        );
        assert!(after_prefix(&w[2], "of=").is_some_and(|w| has_expansion(&w)));
        assert_eq!(
            could_be(&w[3], &["/sbin/reboot", "/sbin/ls"]),
            Some("/sbin/reboot")
        );
        assert_eq!(shorten(&"a".repeat(70)).chars().count(), 61);
    }
}
