//! awk programs and sed scripts: awk's `system()`, command pipes and `/inet/` files, and GNU sed's `e` command and
//! `s///e` flag run shell commands that cannot be judged; sed's `w` writes files (checked like any other write).

use super::args::{Args, parse_args};
use super::writes::check_written;
use super::{Ctx, Inv, UNJUDGEABLE, Verdict, deny, shorten, tokens};
use crate::policy::shell::Word;

/// awk's options (those of gawk, mawk and busybox awk that take a value).
pub(super) fn awk_args(args: &[Word]) -> Args<'_> {
    parse_args(
        args,
        "FvfWoEil",
        &[
            "file",
            "assign",
            "field-separator",
            "include",
            "load",
            "exec",
        ],
        true,
    )
}

/// awk programs with `system()`/pipes and GNU sed's `e` command run shell commands.
pub(super) fn awk_sed_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    if matches!(name, "awk" | "gawk" | "mawk" | "nawk") {
        let a = awk_args(args);
        if a.has('f') || a.has('E') || a.has_long("file") || a.has_long("exec") {
            return Ok(());
        }
        let Some(prog) = a.operands.first() else {
            return Ok(());
        };
        let Some(p) = prog.value.as_deref() else {
            return Err(deny(
                UNJUDGEABLE,
                format!("`{name}` program `{}` is not static", shorten(&prog.raw)),
            ));
        };
        if let Some(why) = awk_runs_commands(p) {
            return Err(deny(
                UNJUDGEABLE,
                format!("`{name}` program uses {why}, which runs commands that cannot be judged"),
            ));
        }
        return Ok(());
    }
    if name == "sed" {
        for script in sed_scripts(args) {
            let info = scan_sed(&script);
            if info.exec {
                return Err(deny(
                    UNJUDGEABLE,
                    "`sed` script runs shell commands (`e`), which cannot be judged".to_string(),
                ));
            }
            for w in info.writes {
                check_written(&Word::literal(&w), "`sed w`", ctx)?;
            }
        }
    }
    Ok(())
}

/// What in an awk program runs commands, if anything.
pub(super) fn awk_runs_commands(p: &str) -> Option<&'static str> {
    if tokens(p).any(|t| t == "system") {
        return Some("`system()`");
    }
    if p.replace("||", "").contains('|') {
        return Some("a command pipe `|`");
    }
    if p.contains("/inet/") {
        return Some("network special files `/inet/`");
    }
    None
}

/// The sed scripts given on the command line (`-e` values, or the first operand).
pub(super) fn sed_scripts(args: &[Word]) -> Vec<String> {
    let a = parse_args(args, "efl", &["expression", "file", "line-length"], false);
    let mut out: Vec<String> = a
        .values('e', "expression")
        .iter()
        .map(|w| w.text().to_string())
        .collect();
    if out.is_empty()
        && a.values('f', "file").is_empty()
        && let Some(first) = a.operands.first()
    {
        out.push(first.text().to_string());
    }
    out
}

/// What a sed script does besides editing the stream.
pub(super) struct SedInfo {
    /// Runs shell commands (`e`, `s///e`), or could not be scanned.
    pub(super) exec: bool,
    /// Files written by `w`/`W` and `s///w`.
    pub(super) writes: Vec<String>,
}

/// Minimal GNU sed script scanner: finds `e` commands, `s///e` flags and `w` file targets.
pub(super) fn scan_sed(s: &str) -> SedInfo {
    let c: Vec<char> = s.chars().collect();
    let mut info = SedInfo {
        exec: false,
        writes: Vec::new(),
    };
    let at = |i: usize| c.get(i).copied();
    let mut i = 0usize;
    let skip_delimited = |i: &mut usize, d: char| {
        while let Some(ch) = at(*i) {
            *i += 1;
            if ch == '\\' {
                *i += 1;
            } else if ch == d {
                return;
            }
        }
    };
    let rest_of_line = |i: &mut usize| -> String {
        let mut out = String::new();
        while let Some(ch) = at(*i) {
            if ch == '\n' {
                break;
            }
            out.push(ch);
            *i += 1;
        }
        out.trim().to_string()
    };
    let mut guard = 0usize;
    while i < c.len() {
        guard += 1;
        if guard > c.len() + 8 {
            info.exec = true;
            break;
        }
        while matches!(at(i), Some(' ' | '\t' | '\n' | ';')) {
            i += 1;
        }
        // Addresses.
        for _ in 0..2 {
            match at(i) {
                Some(d) if d.is_ascii_digit() => {
                    while at(i).is_some_and(|d| d.is_ascii_digit() || d == '~') {
                        i += 1;
                    }
                }
                Some('$') => i += 1,
                Some('/') => {
                    i += 1;
                    skip_delimited(&mut i, '/');
                    while matches!(at(i), Some('I' | 'M')) {
                        i += 1;
                    }
                }
                Some('\\') => {
                    i += 1;
                    if let Some(d) = at(i) {
                        i += 1;
                        skip_delimited(&mut i, d);
                    }
                }
                Some('+' | '~') => {
                    i += 1;
                    while at(i).is_some_and(|d| d.is_ascii_digit()) {
                        i += 1;
                    }
                }
                _ => {}
            }
            if at(i) == Some(',') {
                i += 1;
            } else {
                break;
            }
        }
        while matches!(at(i), Some(' ' | '\t' | '!')) {
            i += 1;
        }
        let Some(cmd) = at(i) else { break };
        i += 1;
        match cmd {
            '{' | '}' | ';' | '\n' => {}
            '#' | ':' | 'a' | 'i' | 'c' | 'r' | 'R' | 'b' | 't' | 'T' | 'v' => {
                // GNU: labels end at `;` too; text commands run to end of line (with `\` continuation).
                while let Some(ch) = at(i) {
                    if ch == '\n'
                        || ((cmd == 'b' || cmd == 't' || cmd == 'T' || cmd == ':') && ch == ';')
                    {
                        break;
                    }
                    i += if ch == '\\' { 2 } else { 1 };
                }
            }
            'w' | 'W' => info.writes.push(rest_of_line(&mut i)),
            'e' => {
                info.exec = true;
                let _ = rest_of_line(&mut i);
            }
            's' | 'y' => {
                let Some(d) = at(i) else {
                    break;
                };
                i += 1;
                skip_delimited(&mut i, d);
                skip_delimited(&mut i, d);
                if cmd == 's' {
                    while let Some(f) = at(i) {
                        if f == 'e' {
                            info.exec = true;
                        }
                        if f == 'w' {
                            i += 1;
                            info.writes.push(rest_of_line(&mut i));
                            break;
                        }
                        if f.is_ascii_alphanumeric() {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            'q' | 'Q' | 'l' | 'L' => {
                while matches!(at(i), Some(' ')) || at(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
            }
            'd' | 'D' | 'g' | 'G' | 'h' | 'H' | 'n' | 'N' | 'p' | 'P' | 'x' | 'z' | 'F' | '=' => {}
            _ => {
                // Unknown command: sed would reject it; be conservative.
                info.exec = true;
                break;
            }
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, judge};
    use super::super::{ACCOUNT, ALLOWED};
    use super::*;

    fn rule(cmd: &str) -> String {
        judge(cmd, awk_sed_rules)
    }

    #[test]
    fn awk_programs() {
        assert_eq!(rule("awk 'BEGIN{system(\"id\")}'"), UNJUDGEABLE);
        assert_eq!(rule("gawk '{ print | \"sh\" }' /tmp/x"), UNJUDGEABLE);
        assert_eq!(rule("awk '{ \"date\" | getline d }'"), UNJUDGEABLE);
        assert_eq!(
            rule("gawk 'BEGIN { s = \"/inet/tcp/0/h/80\" }'"),
            UNJUDGEABLE
        );
        assert_eq!(rule("awk \"$PROG\" /tmp/x"), UNJUDGEABLE);
        assert_eq!(rule("awk '{print $1}' /etc/hosts"), ALLOWED);
        assert_eq!(
            rule("awk -F: '$3 >= 1000 || $1 == \"root\" {print $1}' /etc/passwd"),
            ALLOWED
        );
        assert_eq!(rule("awk -v s=system '{print s}'"), ALLOWED);
        // A program file is not inline code.
        assert_eq!(rule("awk -f /opt/report.awk /tmp/x"), ALLOWED);
    }

    #[test]
    fn sed_scripts_that_run_commands() {
        assert_eq!(rule("sed -n '1e id' /etc/hosts"), UNJUDGEABLE);
        assert_eq!(rule("sed 's/a/b/e' /tmp/x"), UNJUDGEABLE);
        assert_eq!(rule("sed -e p -e 'e date' /tmp/x"), UNJUDGEABLE);
        assert_eq!(rule("sed -n '/shutdown/p' /var/log/syslog"), ALLOWED);
        assert_eq!(rule("sed -e 's/a/b/g' -e '1d' /tmp/x"), ALLOWED);
        assert_eq!(rule("sed '1!G;h;$!d' /tmp/x"), ALLOWED);
    }

    #[test]
    fn sed_writes() {
        assert_eq!(rule("sed -n 's/x/y/w /etc/passwd' /tmp/x"), ACCOUNT);
        assert_eq!(rule("sed -n '/root/w /etc/shadow' /tmp/x"), ACCOUNT);
        assert_eq!(rule("sed -n 's/x/y/w /tmp/out' /tmp/x"), ALLOWED);
    }

    #[test]
    fn sed_scanner() {
        let scan = |s: &str| {
            let i = scan_sed(s);
            (i.exec, i.writes)
        };
        assert_eq!(scan("s/a/b/g"), (false, vec![]));
        assert_eq!(scan("s|a|b|e"), (true, vec![]));
        assert_eq!(scan("y/abc/xyz/"), (false, vec![]));
        assert_eq!(scan("/x/w /tmp/o\np"), (false, vec!["/tmp/o".to_string()]));
        assert_eq!(scan("s/a/b/gw /tmp/o"), (false, vec!["/tmp/o".to_string()]));
        // `e` inside the text of `a` or a label is not the command.
        assert_eq!(scan("a hello e"), (false, vec![]));
        assert_eq!(scan(":e;b e"), (false, vec![]));
        assert_eq!(scan("$!N;e"), (true, vec![]));
        // Unknown commands are treated as running commands.
        assert_eq!(scan("K"), (true, vec![]));
    }

    #[test]
    fn through_the_engine() {
        assert_eq!(admin("sudo awk 'BEGIN{system(\"reboot\")}'"), UNJUDGEABLE);
        assert_eq!(
            admin("awk '{print $1}' /etc/hosts | sort | uniq -c"),
            ALLOWED
        );
        assert_eq!(awk_runs_commands("{ system(\"x\") }"), Some("`system()`"));
        assert_eq!(awk_runs_commands("$1 || $2"), None);
    }
}
