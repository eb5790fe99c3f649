//! Deny rules and role allow-lists, applied to every simple command and redirection of a parsed command line.
//!
//! Programs are resolved by basename through wrappers (`sudo`, `env`, `timeout`, `xargs`, `find -exec`, …); nested
//! shell code (`sh -c`, `su -c`, `watch`, `trap`, …) is parsed and judged recursively. What cannot be judged
//! statically is denied.
//!
//! This module holds the engine (the order in which rules apply), the per-script context and the shared vocabulary
//! (rule names, [`Inv`], [`Deny`]). Each rule family lives in its own module:
//! - [`resolve`]: looking through wrappers to the programs a command runs, collecting nested shell code (plain
//!   option-skipping wrappers such as `sudo`, `nice`, `chroot` in `resolve::wrappers`);
//! - [`args`]: getopt-style option parsing, shell and interpreter invocations;
//! - [`paths`]: path normalisation and the tables of system, account and credential paths;
//! - [`writes`]: files written by redirections or programs (block devices, account files, `/proc/sysrq-trigger`);
//! - [`deletion`]: recursive deletion of system paths (`rm`, `find -delete`, `mv`, `rsync --delete`) and disk tools;
//! - [`power`]: shutdown, reboot and the like (`power_state`);
//! - [`processes`]: killing init, every process or a critical daemon (`kill_init`);
//! - [`secrets`]: the agent's secrets and other processes' environments (`process_secrets`);
//! - [`services`]: stopping critical systemd units and init scripts (`critical_service`);
//! - [`firewall`]: rules and link changes that cut the machine off the network (`firewall_lockout`);
//! - [`network`]: network shells, downloaders and decoders, and what their output feeds (`network_shell`,
//!   `download_exec`, `encoded_payload`);
//! - [`permissions`]: mode and ownership changes of system paths, account tools;
//! - [`code`]: shells and interpreters reading code from stdin, pipes or inline arguments;
//! - [`awk_sed`]: awk programs and sed scripts that run commands or write files;
//! - [`embedded`]: other programs' options that run commands (`trap`, `tar --to-command`, `ssh -o ProxyCommand`, …);
//! - [`containers`]: the read-only `docker` subcommands;
//! - [`roles`]: the diagnostics and operator allow-lists.

mod args;
mod awk_sed;
mod code;
mod containers;
mod deletion;
mod embedded;
mod firewall;
mod network;
mod paths;
mod permissions;
mod power;
mod processes;
mod resolve;
mod roles;
mod secrets;
mod services;
mod writes;

use std::borrow::Cow;

use regex::Regex;

use super::Role;
use super::shell::{self, Redirect, Script, SimpleCommand, Word};

use args::parse_args;
use paths::normalize;

pub(crate) const ALLOWED: &str = "allowed";
const UNPARSABLE: &str = "unparsable";
const UNJUDGEABLE: &str = "unjudgeable";
const POWER: &str = "power_state";
const FS_TOOLS: &str = "filesystem_tools";
const BLOCK_WRITE: &str = "block_device_write";
const ACCOUNT: &str = "account_change";
const MASS: &str = "mass_deletion";
const PERMS: &str = "permission_change";
const NET_SHELL: &str = "network_shell";
const DOWNLOAD: &str = "download_exec";
const ENCODED: &str = "encoded_payload";
const KILL: &str = "kill_init";
const SECRETS: &str = "process_secrets";
const SERVICE: &str = "critical_service";
const FIREWALL: &str = "firewall_lockout";
const FORK_BOMB: &str = "fork_bomb";
const ROLE_DIAG: &str = "role_diagnostics";
const ROLE_OPERATOR: &str = "role_operator";

/// Maximum number of wrapper hops (`sudo env nice …`) in one command.
const MAX_HOPS: usize = 16;
/// Maximum number of candidate working directories tracked from `cd`.
const MAX_CWDS: usize = 16;

/// A denial: rule name and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deny {
    pub(crate) rule: Cow<'static, str>,
    pub(crate) reason: String,
}

fn deny(rule: &'static str, reason: String) -> Deny {
    Deny {
        rule: Cow::Borrowed(rule),
        reason,
    }
}

type Verdict = Result<(), Deny>;

// ============================================================================ shared helpers

/// Whether a word could expand to an option (it is, or may start with, `-`).
fn could_be_option(w: &Word) -> bool {
    match &w.value {
        Some(v) => v.starts_with('-'),
        None => matches!(w.approx.chars().next(), Some('$' | '`' | '-')),
    }
}

fn join_words(ws: &[Word]) -> String {
    ws.iter()
        .map(|w| w.value.as_deref().unwrap_or(&w.raw))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Join static words with spaces; `None` if any is dynamic.
fn static_join(ws: &[Word]) -> Option<String> {
    let mut out = Vec::with_capacity(ws.len());
    for w in ws {
        out.push(w.value.as_deref()?);
    }
    Some(out.join(" "))
}

fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

fn tokens(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
}

// ============================================================================ invocations and context

/// One program run by a simple command (a wrapper, or the program it wraps).
#[derive(Debug, Clone)]
struct Inv {
    name: String,
    /// Program word followed by its arguments.
    words: Vec<Word>,
    /// A wrapper whose own effect is harmless; role allow-lists skip it and judge the wrapped program.
    transparent: bool,
}

impl Inv {
    fn args(&self) -> &[Word] {
        self.words.get(1..).unwrap_or(&[])
    }

    fn prog(&self) -> &str {
        self.words.first().map(Word::text).unwrap_or("")
    }
}

/// Everything a simple command runs: invocations and nested shell code.
#[derive(Default)]
struct Chain {
    invs: Vec<Inv>,
    /// (code, what runs it)
    nested: Vec<(String, String)>,
}

/// Per-script context.
struct Ctx<'s> {
    script: &'s Script,
    cwds: Vec<String>,
    dynamic_cwd: bool,
    /// Files written from downloaded or decoded data: (path, rule, culprit program).
    tainted: Vec<(String, &'static str, String)>,
}

impl<'s> Ctx<'s> {
    fn new(script: &'s Script) -> Ctx<'s> {
        let mut cwds = vec!["/".to_string()];
        let mut dynamic_cwd = false;
        for cmd in &script.commands {
            let Some(first) = cmd.words.first().and_then(|w| w.value.as_deref()) else {
                continue;
            };
            if first != "cd" && first != "pushd" {
                continue;
            }
            let a = parse_args(cmd.words.get(1..).unwrap_or(&[]), "", &[], true);
            match a.operands.first() {
                None => {
                    if !cwds.iter().any(|c| c == "/root") {
                        cwds.push("/root".to_string());
                    }
                }
                Some(w) => match w.value.as_deref() {
                    Some("-") | None => dynamic_cwd = true,
                    Some(v) => {
                        let new: Vec<String> = cwds.iter().map(|c| normalize(v, c)).collect();
                        for n in new {
                            if !cwds.contains(&n) {
                                cwds.push(n);
                            }
                        }
                    }
                },
            }
            if cwds.len() > MAX_CWDS {
                dynamic_cwd = true;
                cwds.truncate(MAX_CWDS);
            }
        }
        Ctx {
            script,
            cwds,
            dynamic_cwd,
            tainted: Vec::new(),
        }
    }

    /// The taint entry for a file a word names, if it was written from downloaded or decoded data.
    fn tainted_file(&self, w: &Word) -> Option<&(String, &'static str, String)> {
        if self.tainted.is_empty() {
            return None;
        }
        let paths = self.paths(w);
        self.tainted.iter().find(|t| paths.contains(&t.0))
    }

    /// Candidate absolute paths a word may name (empty when unknown).
    fn paths(&self, w: &Word) -> Vec<String> {
        match w.value.as_deref() {
            Some("") => Vec::new(),
            Some(v) if v.starts_with('/') || v.starts_with('~') => vec![normalize(v, "/")],
            Some(v) => self.cwds.iter().map(|c| normalize(v, c)).collect(),
            None if w.approx.starts_with('/') || w.approx.starts_with('~') => {
                vec![normalize(&w.approx, "/")]
            }
            None => Vec::new(),
        }
    }

    /// A static relative path whose meaning depends on an unknown working directory.
    fn relative_unknown(&self, w: &Word) -> bool {
        self.dynamic_cwd
            && w.value
                .as_deref()
                .is_some_and(|v| !v.starts_with('/') && !v.starts_with('~'))
    }
}

// ============================================================================ engine

/// Applies the rules with the configured extras.
pub(crate) struct Engine<'a> {
    pub(crate) extra_deny: &'a [(String, Regex)],
    pub(crate) operator_allow: &'a [String],
}

impl Engine<'_> {
    /// Judge a command line (nested `depth` levels deep) for a role.
    ///
    /// Deny rules run first and do not depend on the role; the role's allow-list runs last, so a command the deny
    /// rules refuse gets the same decision for every role.
    pub(crate) fn check(&self, role: Role, src: &str, depth: usize) -> Verdict {
        let script = shell::parse_at_depth(src, depth)
            .map_err(|e| deny(UNPARSABLE, format!("the command cannot be parsed: {e}")))?;
        let mut ctx = Ctx::new(&script);
        self.taint(&mut ctx);
        self.fork_bombs(&ctx)?;
        for g in &script.group_redirects {
            self.word_rules(&g.redirect.target, &ctx)?;
            self.redirect_rules(&g.redirect, &ctx)?;
        }
        for (idx, cmd) in script.commands.iter().enumerate() {
            self.command_rules(idx, cmd, &ctx, depth)?;
        }
        if role != Role::Admin {
            for g in &script.group_redirects {
                roles::role_redirect(role, &g.redirect)?;
            }
            for cmd in &script.commands {
                self.role_rules(role, cmd, &ctx, depth)?;
            }
        }
        Ok(())
    }

    fn nested(&self, role: Role, code: &str, via: &str, depth: usize) -> Verdict {
        self.check(role, code, depth + 1).map_err(|d| Deny {
            rule: d.rule,
            reason: format!("{} (in code run by `{via}`)", d.reason),
        })
    }

    fn fork_bombs(&self, ctx: &Ctx) -> Verdict {
        for f in &ctx.script.functions {
            for idx in f.body.clone() {
                let Some(cmd) = ctx.script.commands.get(idx) else {
                    continue;
                };
                let mut chain = Chain::default();
                let _ = self.resolve(&cmd.words, ctx, &mut chain, 0, true);
                if chain.invs.iter().any(|inv| inv.name == f.name) {
                    return Err(deny(
                        FORK_BOMB,
                        format!("function `{}` calls itself (fork bomb)", shorten(&f.name)),
                    ));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ per command

    fn command_rules(&self, idx: usize, cmd: &SimpleCommand, ctx: &Ctx, depth: usize) -> Verdict {
        for w in cmd.assignments.iter().chain(&cmd.words) {
            self.word_rules(w, ctx)?;
        }
        for r in &cmd.redirects {
            self.word_rules(&r.target, ctx)?;
            self.redirect_rules(r, ctx)?;
        }
        if cmd.words.is_empty() {
            return Ok(());
        }
        self.extra_rules(&cmd.words)?;
        let mut chain = Chain::default();
        self.resolve(&cmd.words, ctx, &mut chain, 0, false)?;
        for inv in &chain.invs {
            self.extra_rules(&inv.words)?;
            self.inv_rules(inv, idx, cmd, ctx, &mut chain.nested)?;
        }
        for (code, via) in &chain.nested {
            self.nested(Role::Admin, code, via, depth)?;
        }
        Ok(())
    }

    fn extra_rules(&self, words: &[Word]) -> Verdict {
        if self.extra_deny.is_empty() {
            return Ok(());
        }
        let joined = join_words(words);
        for (name, re) in self.extra_deny {
            if re.is_match(&joined) {
                return Err(Deny {
                    rule: Cow::Owned(name.clone()),
                    reason: format!(
                        "`{}` matches the configured rule `{name}`",
                        shorten(&joined)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks on any word anywhere: secrets, reverse-shell devices, other processes' environment.
    fn word_rules(&self, w: &Word, ctx: &Ctx) -> Verdict {
        secrets::secret_names(w)?;
        network::dev_tcp(w)?;
        secrets::secret_paths(w, ctx)
    }

    fn redirect_rules(&self, r: &Redirect, ctx: &Ctx) -> Verdict {
        if r.writes_file() {
            writes::check_written(&r.target, &format!("redirection `{}`", r.op.as_str()), ctx)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ per invocation

    /// Every deny rule for one invocation, in a fixed order (the first that denies names the rule).
    fn inv_rules(
        &self,
        inv: &Inv,
        idx: usize,
        cmd: &SimpleCommand,
        ctx: &Ctx,
        nested: &mut Vec<(String, String)>,
    ) -> Verdict {
        network::tainted_program(inv, ctx)?;
        embedded::shell_builtin_rules(inv, nested)?;
        power::power_rules(inv)?;
        deletion::fs_tool_rules(inv, ctx)?;
        processes::kill_rules(inv)?;
        deletion::deletion_rules(inv, ctx)?;
        permissions::permission_rules(inv, ctx)?;
        permissions::account_rules(inv)?;
        for w in writes::written_paths(inv) {
            writes::check_written(&w, &format!("`{}`", inv.name), ctx)?;
        }
        network::network_rules(inv)?;
        secrets::ps_rules(inv)?;
        services::service_rules(inv)?;
        firewall::firewall_rules(inv)?;
        self.code_reader_rules(inv, idx, cmd, ctx)?;
        awk_sed::awk_sed_rules(inv, ctx)?;
        embedded::embedded_commands(inv, nested)?;
        Ok(())
    }
}

// ============================================================================ test helpers

#[cfg(test)]
mod testing {
    //! Helpers shared by the family modules' unit tests.

    use super::*;

    /// The rule name of a verdict: [`ALLOWED`] when it passes.
    pub(super) fn rule_of(v: Verdict) -> String {
        match v {
            Ok(()) => ALLOWED.to_string(),
            Err(d) => d.rule.into_owned(),
        }
    }

    /// Judge a whole command line for a role with no configured extras; returns the deciding rule's name.
    pub(super) fn check(role: Role, cmd: &str) -> String {
        let engine = Engine {
            extra_deny: &[],
            operator_allow: &[],
        };
        rule_of(engine.check(role, cmd, 0))
    }

    /// Judge a whole command line as `Admin`; returns the deciding rule's name.
    pub(super) fn admin(cmd: &str) -> String {
        check(Role::Admin, cmd)
    }

    /// An invocation of a command's program as written (no wrapper resolution), e.g. `inv("shutdown -h now")`.
    pub(super) fn inv(cmd: &str) -> Inv {
        let words = shell::parse(cmd)
            .ok()
            .and_then(|s| s.commands.last().map(|c| c.words.clone()))
            .unwrap_or_default();
        let name = words
            .first()
            .map(|w| paths::program_name(w.text()).to_string())
            .unwrap_or_default();
        Inv {
            name,
            words,
            transparent: false,
        }
    }

    /// Apply a per-invocation rule to the last simple command of `cmd`, with the context of the whole line (so a
    /// `cd` earlier in the line counts); returns the deciding rule's name.
    pub(super) fn judge(cmd: &str, rule: impl FnOnce(&Inv, &Ctx) -> Verdict) -> String {
        let Ok(script) = shell::parse(cmd) else {
            return UNPARSABLE.to_string();
        };
        let ctx = Ctx::new(&script);
        rule_of(rule(&inv(cmd), &ctx))
    }

    #[test]
    fn helpers_see_the_last_command_and_the_whole_context() {
        let i = inv("cd /etc; /bin/rm -rf ./");
        assert_eq!(i.name, "rm");
        assert_eq!(i.args().len(), 2);
        assert_eq!(
            judge("cd /etc; rm -rf ./", |_, ctx| {
                if ctx.cwds.iter().any(|c| c == "/etc") {
                    Err(deny(MASS, String::new()))
                } else {
                    Ok(())
                }
            }),
            MASS
        );
        assert_eq!(judge("echo 'x", |_, _| Ok(())), UNPARSABLE);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{admin, check};
    use super::*;

    #[test]
    fn deny_rules_decide_before_the_role() {
        // The same deny for every role: `reboot` is refused as power_state, not as "not on the allow-list".
        for role in [Role::Admin, Role::Operator, Role::Diagnostics] {
            assert_eq!(check(role, "ls; reboot"), POWER, "{role:?}");
        }
        assert_eq!(check(Role::Diagnostics, "ls; uptime"), ALLOWED);
    }

    #[test]
    fn fork_bombs() {
        assert_eq!(admin("f() { f | f & }; f"), FORK_BOMB);
        assert_eq!(admin("f() { sudo f; }; f"), FORK_BOMB);
        assert_eq!(admin("f() { g; }; g() { echo hi; }; f"), ALLOWED);
    }

    #[test]
    fn nested_code_is_judged_with_its_wrapper_named() {
        let engine = Engine {
            extra_deny: &[],
            operator_allow: &[],
        };
        let d = engine.check(Role::Admin, "sh -c 'shutdown now'", 0).err();
        assert_eq!(d.as_ref().map(|d| d.rule.as_ref()), Some(POWER));
        assert!(
            d.is_some_and(|d| d.reason.ends_with("(in code run by `sh -c`)")),
            "nested denials name the wrapper"
        );
        assert_eq!(admin("sh -c 'uptime'"), ALLOWED);
    }

    #[test]
    fn extra_deny_patterns_apply_to_each_invocation() {
        let extra = [(
            "no_prune".to_string(),
            Regex::new("^docker system prune").expect("the pattern is valid"),
        )];
        let engine = Engine {
            extra_deny: &extra,
            operator_allow: &[],
        };
        let rule = |cmd: &str| testing::rule_of(engine.check(Role::Admin, cmd, 0));
        // Matched after `sudo` is looked through.
        assert_eq!(rule("sudo docker system prune -af"), "no_prune");
        assert_eq!(rule("docker system df"), ALLOWED);
    }

    #[test]
    fn unparsable_input_is_denied() {
        assert_eq!(admin("echo $(ls"), UNPARSABLE);
        assert_eq!(admin("echo ok"), ALLOWED);
    }

    #[test]
    fn cd_targets_are_tracked() {
        let script = shell::parse("cd /srv && cd app; cd $X").expect("the line parses");
        let ctx = Ctx::new(&script);
        assert_eq!(ctx.cwds, ["/", "/srv", "/app", "/srv/app"]);
        assert!(ctx.dynamic_cwd);
        assert!(ctx.relative_unknown(&Word::literal("data")));
        assert!(!ctx.relative_unknown(&Word::literal("/data")));
    }

    #[test]
    fn shared_helpers() {
        assert_eq!(shorten(&"a".repeat(70)).chars().count(), 61);
        assert_eq!(
            static_join(&[Word::literal("a"), Word::literal("b")]).as_deref(),
            Some("a b")
        );
        assert_eq!(static_join(&[Word::literal("a").to_dynamic()]), None);
        assert!(could_be_option(&Word::literal("-rf")));
        assert!(!could_be_option(&Word::literal("x")));
        assert_eq!(
            tokens("os.system(x)").collect::<Vec<_>>(),
            ["os", "system", "x"]
        );
    }
}
