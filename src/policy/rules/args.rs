//! Option parsing shared by the rules: getopt-style arguments, and what a shell or interpreter invocation runs.

use super::could_be_option;
use crate::policy::shell::Word;

/// getopt-style parse of a program's arguments.
#[derive(Default)]
pub(super) struct Args<'w> {
    pub(super) short: Vec<(char, Option<Word>)>,
    pub(super) long: Vec<(String, Option<Word>)>,
    pub(super) operands: Vec<&'w Word>,
    /// Index (in the parsed slice) of the first operand.
    pub(super) first_operand: Option<usize>,
    /// A dynamic word that could expand to options was seen.
    pub(super) maybe_opts: bool,
}

impl Args<'_> {
    pub(super) fn has(&self, c: char) -> bool {
        self.short.iter().any(|(s, _)| *s == c)
    }

    pub(super) fn has_long(&self, name: &str) -> bool {
        self.long.iter().any(|(l, _)| l == name)
    }

    pub(super) fn has_long_prefix(&self, prefix: &str) -> bool {
        self.long.iter().any(|(l, _)| l.starts_with(prefix))
    }

    /// Values of `-c VALUE` and `--long VALUE`.
    pub(super) fn values(&self, c: char, long: &str) -> Vec<&Word> {
        let mut out: Vec<&Word> = self
            .short
            .iter()
            .filter(|(s, _)| *s == c)
            .filter_map(|(_, v)| v.as_ref())
            .collect();
        out.extend(
            self.long
                .iter()
                .filter(|(l, _)| l == long)
                .filter_map(|(_, v)| v.as_ref()),
        );
        out
    }
}

/// Parse options. `with_arg`: short letters taking a value; `long_with_arg`: long names taking a separate value.
/// With `stop_at_operand`, everything from the first operand on is an operand (POSIX/wrapper style).
pub(super) fn parse_args<'w>(
    args: &'w [Word],
    with_arg: &str,
    long_with_arg: &[&str],
    stop_at_operand: bool,
) -> Args<'w> {
    let mut a = Args::default();
    let mut only_operands = false;
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let idx = i;
        i += 1;
        let operand = move |a: &mut Args<'w>, only: &mut bool| {
            if a.first_operand.is_none() {
                a.first_operand = Some(idx);
            }
            a.operands.push(w);
            if stop_at_operand {
                *only = true;
            }
        };
        if only_operands {
            operand(&mut a, &mut only_operands);
            continue;
        }
        let Some(v) = w.value.as_deref() else {
            if could_be_option(w) {
                a.maybe_opts = true;
            }
            operand(&mut a, &mut only_operands);
            continue;
        };
        if v == "--" {
            only_operands = true;
            continue;
        }
        if let Some(l) = v.strip_prefix("--") {
            if let Some((k, val)) = l.split_once('=') {
                a.long.push((k.to_string(), Some(Word::literal(val))));
            } else if long_with_arg.contains(&l) {
                let val = args.get(i).cloned();
                i += 1;
                a.long.push((l.to_string(), val));
            } else {
                a.long.push((l.to_string(), None));
            }
            continue;
        }
        if let Some(body) = v.strip_prefix('-')
            && !body.is_empty()
        {
            for (k, c) in body.char_indices() {
                if with_arg.contains(c) {
                    let rest = body.get(k + c.len_utf8()..).unwrap_or("");
                    let val = if rest.is_empty() {
                        let val = args.get(i).cloned();
                        i += 1;
                        val
                    } else {
                        Some(Word::literal(rest))
                    };
                    a.short.push((c, val));
                    break;
                }
                a.short.push((c, None));
            }
            continue;
        }
        operand(&mut a, &mut only_operands);
    }
    a
}

/// What a shell invocation runs.
pub(super) struct ShellArgs<'w> {
    pub(super) code: Option<&'w Word>,
    pub(super) script: Option<&'w Word>,
    pub(super) reads_stdin: bool,
}

pub(super) fn shell_args(args: &[Word]) -> ShellArgs<'_> {
    let mut i = 0;
    let mut has_c = false;
    let mut has_s = false;
    while let Some(w) = args.get(i) {
        let Some(v) = w.value.as_deref() else { break };
        if v == "--" || v == "-" {
            i += 1;
            break;
        }
        if v.starts_with("--") {
            i += if v == "--rcfile" || v == "--init-file" {
                2
            } else {
                1
            };
            continue;
        }
        if (v.starts_with('-') || v.starts_with('+')) && v.len() > 1 {
            let letters = v.get(1..).unwrap_or("");
            if v.starts_with('-') {
                has_c |= letters.contains('c');
                has_s |= letters.contains('s');
            }
            i += if letters.ends_with('o') || letters.ends_with('O') {
                2
            } else {
                1
            };
            continue;
        }
        break;
    }
    let operand = args.get(i);
    if has_c {
        ShellArgs {
            code: operand,
            script: None,
            reads_stdin: false,
        }
    } else if has_s || operand.is_none() {
        ShellArgs {
            code: None,
            script: None,
            reads_stdin: true,
        }
    } else {
        ShellArgs {
            code: None,
            script: operand,
            reads_stdin: false,
        }
    }
}

/// Interpreter family of a program name (`python3.11` → `python`).
pub(super) fn interp_family(name: &str) -> Option<&'static str> {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match base {
        "python" | "pypy" => "python",
        "perl" => "perl",
        "ruby" | "jruby" => "ruby",
        "node" | "nodejs" => "node",
        "php" => "php",
        "lua" | "luajit" => "lua",
        "tclsh" | "wish" => "tcl",
        _ => return None,
    })
}

/// What an interpreter invocation runs.
pub(super) struct InterpArgs<'w> {
    pub(super) code: Option<Word>,
    pub(super) script: Option<&'w Word>,
    /// Runs a module or otherwise not stdin code (`python -m`).
    pub(super) module: bool,
    pub(super) reads_stdin: bool,
    pub(super) in_place: bool,
}

pub(super) fn interp_args<'w>(family: &str, args: &'w [Word]) -> InterpArgs<'w> {
    let (with_arg, inline, longs): (&str, &[char], &[&str]) = match family {
        "python" => ("cmWXQ", &['c'], &[]),
        "perl" => ("eE", &['e', 'E'], &[]),
        "ruby" => ("eIr", &['e'], &[]),
        "node" => ("epr", &['e', 'p'], &["eval", "print", "require"]),
        "php" => ("rcdfzBRFE", &['r', 'B', 'R', 'F', 'E'], &[]),
        "lua" => ("el", &['e'], &[]),
        _ => ("", &[], &[]),
    };
    let a = parse_args(args, with_arg, longs, true);
    let mut code: Option<Word> = None;
    for (c, v) in &a.short {
        if inline.contains(c) {
            code = Some(v.clone().unwrap_or_default());
        }
    }
    for (l, v) in &a.long {
        if l == "eval" || l == "print" {
            code = Some(v.clone().unwrap_or_default());
        }
    }
    let module = (family == "python" && a.has('m')) || (family == "php" && a.has('f'));
    let script = a.operands.first().copied();
    let reads_stdin = code.is_none() && !module && script.is_none();
    InterpArgs {
        in_place: family == "perl" && a.has('i'),
        code,
        script,
        module,
        reads_stdin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::shell;

    fn words(line: &str) -> Vec<Word> {
        shell::parse(line)
            .ok()
            .and_then(|s| s.commands.into_iter().next())
            .map(|c| c.words)
            .unwrap_or_default()
    }

    fn texts(ws: &[&Word]) -> Vec<String> {
        ws.iter().map(|w| w.text().to_string()).collect()
    }

    #[test]
    fn short_clusters_long_options_and_values() {
        let ws = words("-sSLo /tmp/out --max-time=5 --retry 3 http://x");
        let a = parse_args(&ws, "o", &["retry"], false);
        assert!(a.has('s') && a.has('S') && a.has('L'));
        assert_eq!(texts(&a.values('o', "output")), ["/tmp/out"]);
        assert!(a.has_long("max-time") && a.has_long_prefix("max"));
        assert_eq!(texts(&a.values('\0', "retry")), ["3"]);
        assert_eq!(texts(&a.operands), ["http://x"]);
        // A value glued to its letter.
        let ws = words("-ofile");
        assert_eq!(
            texts(&parse_args(&ws, "o", &[], false).values('o', "")),
            ["file"]
        );
    }

    #[test]
    fn operands_after_double_dash_or_the_first_operand() {
        let ws = words("-r -- -f /");
        let a = parse_args(&ws, "", &[], false);
        assert!(a.has('r') && !a.has('f'));
        assert_eq!(texts(&a.operands), ["-f", "/"]);
        // GNU style: options may follow operands; wrapper style: they may not.
        let ws = words("/ -rf");
        assert!(parse_args(&ws, "", &[], false).has('r'));
        let a = parse_args(&ws, "", &[], true);
        assert!(!a.has('r'));
        assert_eq!(a.first_operand, Some(0));
    }

    #[test]
    fn dynamic_words_may_be_options() {
        let ws = words("$OPTS /tmp/x");
        let a = parse_args(&ws, "", &[], false);
        assert!(a.maybe_opts);
        assert_eq!(a.operands.len(), 2);
        let ws = words("/tmp/$NAME");
        assert!(!parse_args(&ws, "", &[], false).maybe_opts);
    }

    #[test]
    fn shell_invocations() {
        let ws = words("-lc 'uptime' name");
        let sa = shell_args(&ws);
        assert_eq!(sa.code.map(Word::text), Some("uptime"));
        assert!(!sa.reads_stdin);
        let ws = words("-o pipefail deploy.sh --dry-run");
        let sa = shell_args(&ws);
        assert_eq!(sa.script.map(Word::text), Some("deploy.sh"));
        assert!(sa.code.is_none() && !sa.reads_stdin);
        for stdin in ["-s -- --flag", "", "-i"] {
            let ws = words(stdin);
            assert!(shell_args(&ws).reads_stdin, "{stdin:?}");
        }
    }

    #[test]
    fn interpreter_invocations() {
        assert_eq!(interp_family("python3.11"), Some("python"));
        assert_eq!(interp_family("nodejs"), Some("node"));
        assert_eq!(interp_family("pythonista"), None);
        let ws = words("-c 'print(1)'");
        let ia = interp_args("python", &ws);
        assert_eq!(ia.code.as_ref().map(Word::text), Some("print(1)"));
        let ws = words("-m json.tool");
        let ia = interp_args("python", &ws);
        assert!(ia.module && !ia.reads_stdin && ia.code.is_none());
        let ws = words("--eval 'x()'");
        assert!(interp_args("node", &ws).code.is_some());
        let ws = words("-pi -e s/a/b/ /etc/hosts");
        let ia = interp_args("perl", &ws);
        assert!(ia.in_place && ia.code.is_some());
        let ws = words("script.py");
        let ia = interp_args("python", &ws);
        assert_eq!(ia.script.map(Word::text), Some("script.py"));
        let ws = words("");
        assert!(interp_args("ruby", &ws).reads_stdin);
    }
}
