//! Deny rules and role allow-lists, applied to every simple command and redirection of a parsed command line.
//!
//! Programs are resolved by basename through wrappers (`sudo`, `env`, `timeout`, `xargs`, `find -exec`, …); nested
//! shell code (`sh -c`, `su -c`, `watch`, `trap`, …) is parsed and judged recursively. What cannot be judged
//! statically is denied.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

use super::Role;
use super::shell::{self, RedirOp, Redirect, Script, SimpleCommand, Word};

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

// ============================================================================ tables

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "rbash", "yash", "posh", "fish",
    "csh", "tcsh",
];

const DOWNLOADERS: &[&str] = &[
    "curl",
    "wget",
    "fetch",
    "aria2c",
    "axel",
    "lwp-download",
    "lwp-request",
    "GET",
    "http",
    "https",
    "httpie",
    "ftp",
    "tftp",
];

const NET_TOOLS: &[&str] = &[
    "nc",
    "ncat",
    "netcat",
    "nc.openbsd",
    "nc.traditional",
    "socat",
    "telnet",
    "cryptcat",
    "pwncat",
];

const PROTECTED_PROCS: &[&str] = &[
    "init",
    "systemd",
    "dockerd",
    "docker",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "sshd",
    "dtma",
];

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

const SECRET_NAMES: &[&str] = &[
    "DTMA_BEARER_TOKEN",
    "BACKEND_TO_DTMA_API_KEY",
    "CREDENTIALS_DIRECTORY",
];

/// Paths whose recursive deletion or ownership/mode change breaks the machine.
const PRIMARY_SYSTEM: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/opt",
    "/proc",
    "/root",
    "/sbin",
    "/srv",
    "/sys",
    "/usr",
    "/var",
    "/run",
    "/var/lib/docker",
];

/// Further paths protected from recursive deletion (exact match).
const EXTENDED_SYSTEM: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local",
    "/usr/share",
    "/usr/include",
    "/usr/lib/modules",
    "/var/lib",
    "/var/log",
    "/var/spool",
    "/var/lib/containerd",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/etc/ssh",
    "/etc/systemd",
    "/etc/default",
    "/etc/apt",
    "/etc/docker",
    "/lib/modules",
    "/boot/efi",
];

/// Directories whose contents must not be recursively re-owned/re-moded.
const OS_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/boot", "/dev", "/proc", "/sys",
];

// ============================================================================ path helpers

/// Basename of a program path (`/sbin/shutdown` → `shutdown`).
fn program_name(v: &str) -> &str {
    v.rsplit('/').next().unwrap_or(v)
}

/// Normalise a path: expand a leading `~`, make it absolute against `cwd`, resolve `.`, `..` and `//`.
fn normalize(p: &str, cwd: &str) -> String {
    let full = if p == "~" {
        "/root".to_string()
    } else if let Some(rest) = p.strip_prefix("~/") {
        format!("/root/{rest}")
    } else if let Some(rest) = p.strip_prefix('~') {
        format!("/home/{rest}")
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{cwd}/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_lib_dir(p: &str) -> bool {
    p.strip_prefix("/lib").is_some_and(|r| !r.contains('/'))
}

fn is_primary(p: &str) -> bool {
    PRIMARY_SYSTEM.contains(&p) || is_lib_dir(p)
}

fn is_home_dir(p: &str) -> bool {
    p.strip_prefix("/home/")
        .is_some_and(|r| !r.is_empty() && !r.contains('/'))
}

fn is_system_path(p: &str) -> bool {
    p == "/" || is_primary(p) || EXTENDED_SYSTEM.contains(&p) || is_home_dir(p)
}

fn under(p: &str, dir: &str) -> bool {
    p == dir || p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

fn under_os_dir(p: &str) -> bool {
    OS_DIRS.iter().any(|d| under(p, d))
        || p.split('/')
            .nth(1)
            .is_some_and(|top| top.starts_with("lib"))
}

/// For a path with glob characters, the directory the glob expands in (`/var/*` → `/var`).
fn glob_dir(p: &str) -> Option<String> {
    let i = p.find(['*', '?', '['])?;
    let prefix = p.get(..i)?;
    let dir = match prefix.rfind('/') {
        Some(j) => prefix.get(..j).unwrap_or(""),
        None => "",
    };
    Some(normalize(if dir.is_empty() { "/" } else { dir }, "/"))
}

/// Whether deleting `p` recursively destroys a system path.
fn deletion_protected(p: &str) -> bool {
    is_system_path(p) || glob_dir(p).is_some_and(|d| is_system_path(&d))
}

fn is_block_device(p: &str) -> bool {
    const EXACT: &[&str] = &["/dev/mem", "/dev/kmem", "/dev/port", "/dev/root"];
    const PREFIX: &[&str] = &[
        "/dev/sd",
        "/dev/vd",
        "/dev/xvd",
        "/dev/nvme",
        "/dev/mmcblk",
        "/dev/hd",
        "/dev/dm-",
        "/dev/mapper/",
        "/dev/disk/",
        "/dev/md",
        "/dev/loop",
        "/dev/nbd",
        "/dev/rbd",
        "/dev/block/",
    ];
    EXACT.contains(&p) || PREFIX.iter().any(|x| p.starts_with(x))
}

fn is_account_file(p: &str) -> bool {
    const FILES: &[&str] = &[
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/sudoers",
    ];
    FILES
        .iter()
        .any(|f| p == *f || p.strip_prefix(f).is_some_and(|r| r == "-"))
        || under(p, "/etc/sudoers.d")
        || under(p, "/root/.ssh")
        || p.contains("/.ssh/authorized_keys")
}

/// Files holding password hashes, sudo rules or SSH keys.
fn is_credential_file(p: &str) -> bool {
    matches!(
        p,
        "/etc/shadow" | "/etc/gshadow" | "/etc/shadow-" | "/etc/gshadow-" | "/etc/sudoers"
    ) || under(p, "/etc/sudoers.d")
        || under(p, "/root/.ssh")
        || p.contains("/.ssh/id_")
        || (under(p, "/etc/ssh") && p.contains("_key"))
}

/// `/proc/<pid>/environ`, `/proc/<pid>/mem` and their `task/<tid>` forms.
fn is_proc_secret(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    match parts.as_slice() {
        ["proc", _, leaf] | ["proc", _, "task", _, leaf] => *leaf == "environ" || *leaf == "mem",
        _ => false,
    }
}

fn is_stdin_path(v: &str) -> bool {
    v == "-"
        || v == "/dev/stdin"
        || v.starts_with("/dev/fd/")
        || v.starts_with("/proc/self/fd/")
        || v.starts_with("/proc/thread-self/fd/")
}

fn is_safe_sink(w: &Word) -> bool {
    matches!(
        w.value.as_deref(),
        Some("/dev/null" | "/dev/stdout" | "/dev/stderr")
    )
}

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

// ============================================================================ option parsing

/// getopt-style parse of a program's arguments.
#[derive(Default)]
struct Args<'w> {
    short: Vec<(char, Option<Word>)>,
    long: Vec<(String, Option<Word>)>,
    operands: Vec<&'w Word>,
    /// Index (in the parsed slice) of the first operand.
    first_operand: Option<usize>,
    /// A dynamic word that could expand to options was seen.
    maybe_opts: bool,
}

impl Args<'_> {
    fn has(&self, c: char) -> bool {
        self.short.iter().any(|(s, _)| *s == c)
    }

    fn has_long(&self, name: &str) -> bool {
        self.long.iter().any(|(l, _)| l == name)
    }

    fn has_long_prefix(&self, prefix: &str) -> bool {
        self.long.iter().any(|(l, _)| l.starts_with(prefix))
    }

    /// Values of `-c VALUE` and `--long VALUE`.
    fn values(&self, c: char, long: &str) -> Vec<&Word> {
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
fn parse_args<'w>(
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
struct ShellArgs<'w> {
    code: Option<&'w Word>,
    script: Option<&'w Word>,
    reads_stdin: bool,
}

fn shell_args(args: &[Word]) -> ShellArgs<'_> {
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
fn interp_family(name: &str) -> Option<&'static str> {
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
struct InterpArgs<'w> {
    code: Option<Word>,
    script: Option<&'w Word>,
    /// Runs a module or otherwise not stdin code (`python -m`).
    module: bool,
    reads_stdin: bool,
    in_place: bool,
}

fn interp_args<'w>(family: &str, args: &'w [Word]) -> InterpArgs<'w> {
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

// ============================================================================ invocations

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
                role_redirect(role, &g.redirect)?;
            }
            for cmd in &script.commands {
                self.role_rules(role, cmd, &ctx, depth)?;
            }
        }
        Ok(())
    }

    /// Record files written by downloaders/decoders (or by commands fed from them through a pipe).
    fn taint(&self, ctx: &mut Ctx) {
        let cmds = &ctx.script.commands;
        let mut ranks: Vec<(u8, String)> = Vec::with_capacity(cmds.len());
        let mut by_rank: [Vec<usize>; 4] = Default::default();
        for (i, cmd) in cmds.iter().enumerate() {
            let mut chain = Chain::default();
            let _ = self.resolve(&cmd.words, ctx, &mut chain, 0, true);
            let mut best = (0u8, String::new());
            for inv in &chain.invs {
                let r = source_rank(inv);
                if r > best.0 {
                    best = (r, inv.name.clone());
                }
            }
            if let Some(list) = by_rank.get_mut(usize::from(best.0)) {
                list.push(i);
            }
            ranks.push(best);
        }
        let mut tainted = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let mut chain = Chain::default();
            let _ = self.resolve(&cmd.words, ctx, &mut chain, 0, true);
            let mut writes: Vec<Word> = cmd
                .redirects
                .iter()
                .filter(|r| r.writes_file())
                .map(|r| r.target.clone())
                .collect();
            for inv in &chain.invs {
                writes.extend(written_paths(inv));
                writes.extend(wget_default_outputs(inv));
            }
            if writes.is_empty() {
                continue;
            }
            let mut best = ranks.get(i).cloned().unwrap_or_default();
            if let Some(up) = &cmd.upstream {
                for r in (1..=3u8).rev() {
                    if r <= best.0 {
                        break;
                    }
                    let list = by_rank.get(usize::from(r)).map_or(&[][..], Vec::as_slice);
                    let k = list.partition_point(|&h| h < up.start);
                    if let Some(&h) = list.get(k)
                        && h < up.end
                    {
                        best = ranks.get(h).cloned().unwrap_or_default();
                        break;
                    }
                }
            }
            if best.0 == 0 {
                continue;
            }
            let rule = if best.0 == 1 { ENCODED } else { DOWNLOAD };
            for w in &writes {
                for p in ctx.paths(w) {
                    tainted.push((p, rule, best.1.clone()));
                }
            }
        }
        ctx.tainted = tainted;
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
        for s in SECRET_NAMES {
            if w.raw.contains(s) || w.approx.contains(s) {
                return Err(deny(
                    SECRETS,
                    format!("`{}` refers to the agent's secret `{s}`", shorten(&w.raw)),
                ));
            }
        }
        if w.approx.contains("/dev/tcp/") || w.approx.contains("/dev/udp/") {
            return Err(deny(
                NET_SHELL,
                format!(
                    "`{}` opens a network connection through /dev/tcp or /dev/udp",
                    shorten(&w.raw)
                ),
            ));
        }
        let mut paths = ctx.paths(w);
        // Paths embedded in larger text (awk programs, inline code, `if=/proc/…`).
        for piece in w
            .approx
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | '<' | '(' | ','))
        {
            if piece.starts_with('/') {
                paths.push(normalize(piece, "/"));
            }
        }
        for p in paths {
            if is_proc_secret(&p) {
                return Err(deny(
                    SECRETS,
                    format!("`{p}` exposes another process's environment or memory"),
                ));
            }
            if p.starts_with("/etc/dtma") || under(&p, "/run/credentials") {
                return Err(deny(
                    SECRETS,
                    format!("`{p}` holds the agent's credentials"),
                ));
            }
        }
        Ok(())
    }

    fn redirect_rules(&self, r: &Redirect, ctx: &Ctx) -> Verdict {
        if r.writes_file() {
            check_written(&r.target, &format!("redirection `{}`", r.op.as_str()), ctx)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ resolution

    /// Resolve the programs a command runs, looking through wrappers. With `probe`, no denial is computed for
    /// dynamic words beyond a plain "unjudgeable" (used when classifying other commands).
    fn resolve(
        &self,
        words: &[Word],
        ctx: &Ctx,
        chain: &mut Chain,
        level: usize,
        probe: bool,
    ) -> Verdict {
        if level > 4 {
            return Err(deny(
                UNJUDGEABLE,
                "too many nested command wrappers".to_string(),
            ));
        }
        let mut i = 0usize;
        for _ in 0..MAX_HOPS {
            let Some(w) = words.get(i) else {
                return Ok(());
            };
            let Some(v) = w.value.as_deref() else {
                return Err(self.dynamic_denial(w, ctx, "the command word", probe));
            };
            let name = program_name(v).to_string();
            let rest = words.get(i..).unwrap_or(&[]);
            let args = words.get(i + 1..).unwrap_or(&[]);
            let base = i + 1;
            let push = |chain: &mut Chain, name: &str, transparent: bool| {
                chain.invs.push(Inv {
                    name: name.to_string(),
                    words: rest.to_vec(),
                    transparent,
                });
            };
            let shell_marker = |chain: &mut Chain| {
                chain.invs.push(Inv {
                    name: "sh".to_string(),
                    words: vec![w.clone()],
                    transparent: false,
                });
            };
            let next: Option<usize> = match name.as_str() {
                "sudo" | "doas" | "pkexec" => {
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
                        let mut ws = vec![w.clone()];
                        ws.extend(a.operands.iter().map(|o| (*o).clone()));
                        chain.invs.push(Inv {
                            name: "sudoedit".to_string(),
                            words: ws,
                            transparent: false,
                        });
                        None
                    } else {
                        push(chain, &name, false);
                        let shell = a.has('s') || a.has('i') || a.has_long("shell");
                        if a.has('l') || a.has_long("list") {
                            None
                        } else if let Some(k) = a.first_operand {
                            if shell {
                                let code_words = args.get(k..).unwrap_or(&[]);
                                match static_join(code_words) {
                                    Some(code) => chain.nested.push((code, format!("{name} -s"))),
                                    None => {
                                        return Err(deny(
                                            UNJUDGEABLE,
                                            format!("`{name} -s` runs non-static shell code"),
                                        ));
                                    }
                                }
                                None
                            } else {
                                Some(base + k)
                            }
                        } else {
                            if shell {
                                shell_marker(chain);
                            }
                            None
                        }
                    }
                }
                "env" => {
                    push(chain, &name, true);
                    let mut j = 0;
                    let mut split: Option<Word> = None;
                    while let Some(x) = args.get(j) {
                        let Some(xv) = x.value.as_deref() else { break };
                        match xv {
                            "-"
                            | "-i"
                            | "--ignore-environment"
                            | "-0"
                            | "--null"
                            | "-v"
                            | "--debug" => j += 1,
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
                            return Err(self.dynamic_denial(&sw, ctx, "`env -S` code", probe));
                        };
                        let tail = static_join(args.get(j..).unwrap_or(&[])).unwrap_or_default();
                        chain
                            .nested
                            .push((format!("{head} {tail}"), "env -S".to_string()));
                        None
                    } else if j < args.len() {
                        Some(base + j)
                    } else {
                        None
                    }
                }
                "nice" | "nohup" | "time" | "stdbuf" | "exec" | "setsid" | "strace" => {
                    let (with_arg, longs): (&str, &[&str]) = match name.as_str() {
                        "nice" => ("n", &["adjustment"]),
                        "time" => ("fo", &["format", "output"]),
                        "stdbuf" => ("ioe", &["input", "output", "error"]),
                        "exec" => ("a", &[]),
                        "strace" => ("abeEIopPsSuUX", &["output", "signal", "trace"]),
                        _ => ("", &[]),
                    };
                    let a = parse_args(args, with_arg, longs, true);
                    push(chain, &name, name != "setsid");
                    if name == "strace" && a.has('p') {
                        None
                    } else {
                        a.first_operand.map(|k| base + k)
                    }
                }
                "timeout" => {
                    let a = parse_args(args, "sk", &["signal", "kill-after"], true);
                    push(chain, &name, true);
                    a.first_operand
                        .map(|k| base + k + 1)
                        .filter(|n| *n < words.len())
                }
                "command" => {
                    let a = parse_args(args, "", &[], true);
                    if a.has('v') || a.has('V') {
                        push(chain, &name, false);
                        None
                    } else {
                        push(chain, &name, true);
                        a.first_operand.map(|k| base + k)
                    }
                }
                "builtin" => {
                    push(chain, &name, true);
                    Some(base)
                }
                "busybox" => match args.first().and_then(|a| a.value.as_deref()) {
                    Some(applet) if !applet.starts_with('-') => {
                        push(chain, &name, true);
                        Some(base)
                    }
                    _ => {
                        push(chain, &name, false);
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
                    push(chain, &name, true);
                    if a.has('p') || a.has('P') || a.has('u') {
                        None
                    } else {
                        a.first_operand.map(|k| base + k)
                    }
                }
                "chroot" | "nsenter" | "unshare" => {
                    let (with_arg, longs): (&str, &[&str]) = match name.as_str() {
                        "chroot" => ("", &["userspec", "groups"]),
                        "nsenter" => ("tSG", &["target", "setuid", "setgid"]),
                        _ => ("", &["propagation", "setgroups", "map-user", "map-group"]),
                    };
                    let a = parse_args(args, with_arg, longs, true);
                    push(chain, &name, false);
                    let cmd_at = if name == "chroot" {
                        a.first_operand.map(|k| base + k + 1)
                    } else {
                        a.first_operand.map(|k| base + k)
                    };
                    match cmd_at.filter(|n| *n < words.len()) {
                        Some(n) => Some(n),
                        None => {
                            shell_marker(chain);
                            None
                        }
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
                    push(chain, &name, false);
                    a.first_operand.map(|k| base + k)
                }
                "xargs" => {
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
                    push(chain, &name, true);
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
                    self.resolve(&inner, ctx, chain, level + 1, probe)?;
                    None
                }
                "watch" => {
                    let a = parse_args(args, "nq", &["interval"], true);
                    push(chain, &name, false);
                    if a.has('x') || a.has_long("exec") {
                        a.first_operand.map(|k| base + k)
                    } else {
                        if let Some(k) = a.first_operand {
                            let code_words = args.get(k..).unwrap_or(&[]);
                            match static_join(code_words) {
                                Some(code) => chain.nested.push((code, "watch".to_string())),
                                None => {
                                    return Err(deny(
                                        UNJUDGEABLE,
                                        "`watch` runs non-static shell code".to_string(),
                                    ));
                                }
                            }
                        }
                        None
                    }
                }
                "flock" => {
                    let a = parse_args(
                        args,
                        "wEc",
                        &["timeout", "conflict-exit-code", "command"],
                        true,
                    );
                    push(chain, &name, false);
                    let codes = a.values('c', "command");
                    if !codes.is_empty() {
                        for c in codes {
                            match c.value.as_deref() {
                                Some(code) => chain
                                    .nested
                                    .push((code.to_string(), "flock -c".to_string())),
                                None => {
                                    return Err(self.dynamic_denial(
                                        c,
                                        ctx,
                                        "`flock -c` code",
                                        probe,
                                    ));
                                }
                            }
                        }
                        None
                    } else {
                        a.first_operand
                            .map(|k| base + k + 1)
                            .filter(|n| *n < words.len())
                    }
                }
                "su" | "runuser" => {
                    let a = parse_args(
                        args,
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
                    push(chain, &name, false);
                    let mut codes = a.values('c', "command");
                    codes.extend(a.values('\0', "session-command"));
                    if !codes.is_empty() {
                        for c in codes {
                            match c.value.as_deref() {
                                Some(code) => {
                                    chain.nested.push((code.to_string(), format!("{name} -c")))
                                }
                                None => {
                                    return Err(self.dynamic_denial(
                                        c,
                                        ctx,
                                        &format!("`{name} -c` code"),
                                        probe,
                                    ));
                                }
                            }
                        }
                        None
                    } else if name == "runuser" && (a.has('u') || a.has_long("user")) {
                        a.first_operand.map(|k| base + k)
                    } else {
                        shell_marker(chain);
                        None
                    }
                }
                "find" => {
                    push(chain, &name, false);
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
                        self.resolve(&seg, ctx, chain, level + 1, probe)?;
                    }
                    None
                }
                n if SHELLS.contains(&n) => {
                    let sa = shell_args(args);
                    push(chain, &name, sa.code.is_some());
                    if let Some(code) = sa.code {
                        match code.value.as_deref() {
                            Some(c) => chain.nested.push((c.to_string(), format!("{name} -c"))),
                            None => {
                                return Err(self.dynamic_denial(
                                    code,
                                    ctx,
                                    &format!("`{name} -c` code"),
                                    probe,
                                ));
                            }
                        }
                    }
                    None
                }
                _ => {
                    push(chain, &name, false);
                    None
                }
            };
            match next {
                Some(n) => i = n,
                None => return Ok(()),
            }
        }
        Err(deny(
            UNJUDGEABLE,
            "too many nested command wrappers".to_string(),
        ))
    }

    /// The denial for a dynamic word in a place where its value decides what runs.
    fn dynamic_denial(&self, w: &Word, ctx: &Ctx, what: &str, probe: bool) -> Deny {
        if !probe {
            let (rule, culprit) = self.classify_feeder(ctx, w.substitutions.clone());
            if let Some(prog) = culprit {
                let rule = if rule == ENCODED { ENCODED } else { DOWNLOAD };
                return deny(
                    rule,
                    format!("{what} `{}` comes from `{prog}` output", shorten(&w.raw)),
                );
            }
        }
        deny(
            UNJUDGEABLE,
            format!(
                "{what} `{}` is not static and cannot be judged",
                shorten(&w.raw)
            ),
        )
    }

    fn probe_invs(&self, ctx: &Ctx, range: std::ops::Range<usize>) -> Vec<Inv> {
        let mut out = Vec::new();
        for idx in range {
            if let Some(cmd) = ctx.script.commands.get(idx) {
                let mut chain = Chain::default();
                let _ = self.resolve(&cmd.words, ctx, &mut chain, 0, true);
                out.extend(chain.invs);
            }
        }
        out
    }

    fn downloader_in(&self, ctx: &Ctx, range: std::ops::Range<usize>) -> Option<String> {
        self.probe_invs(ctx, range)
            .into_iter()
            .find(is_downloader)
            .map(|inv| inv.name)
    }

    /// Rule and culprit for code fed to a shell through a pipe from `range`.
    fn classify_feeder(
        &self,
        ctx: &Ctx,
        range: std::ops::Range<usize>,
    ) -> (&'static str, Option<String>) {
        let mut best: (u8, &'static str, Option<String>) = (0, UNJUDGEABLE, None);
        for inv in self.probe_invs(ctx, range) {
            let rank = source_rank(&inv);
            let rule = match rank {
                3 => NET_SHELL,
                2 => DOWNLOAD,
                1 => ENCODED,
                _ => continue,
            };
            if rank > best.0 {
                best = (rank, rule, Some(inv.name.clone()));
            }
        }
        (best.1, best.2)
    }

    // ------------------------------------------------------------------ per invocation

    fn inv_rules(
        &self,
        inv: &Inv,
        idx: usize,
        cmd: &SimpleCommand,
        ctx: &Ctx,
        nested: &mut Vec<(String, String)>,
    ) -> Verdict {
        let name = inv.name.as_str();
        let args = inv.args();
        if inv.prog().contains('/')
            && let Some(w) = inv.words.first()
            && let Some((p, rule, culprit)) = ctx.tainted_file(w)
        {
            return Err(deny(
                rule,
                format!("`{p}` is run after being written from `{culprit}` output"),
            ));
        }
        match name {
            "eval" if !args.is_empty() => {
                return Err(deny(
                    UNJUDGEABLE,
                    "`eval` runs its arguments as shell code, which cannot be judged".to_string(),
                ));
            }
            "alias" if args.iter().any(|a| a.text().contains('=')) => {
                return Err(deny(
                    UNJUDGEABLE,
                    "`alias` definitions change what later words run, which cannot be judged"
                        .to_string(),
                ));
            }
            "trap" => {
                let a = parse_args(args, "", &[], true);
                if let Some(action) = a.operands.first()
                    && a.operands.len() > 1
                {
                    match action.value.as_deref() {
                        Some(code) => nested.push((code.to_string(), "trap".to_string())),
                        None => {
                            return Err(deny(
                                UNJUDGEABLE,
                                format!("`trap` action `{}` is not static", shorten(&action.raw)),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
        power_rules(inv)?;
        fs_tool_rules(inv, ctx)?;
        kill_rules(inv)?;
        self.deletion_rules(inv, ctx)?;
        permission_rules(inv, ctx)?;
        account_rules(inv)?;
        for w in written_paths(inv) {
            check_written(&w, &format!("`{}`", inv.name), ctx)?;
        }
        network_rules(inv)?;
        ps_rules(inv)?;
        service_rules(inv)?;
        firewall_rules(inv)?;
        self.code_reader_rules(inv, idx, cmd, ctx)?;
        awk_sed_rules(inv, ctx)?;
        embedded_commands(inv, nested)?;
        Ok(())
    }

    fn deletion_rules(&self, inv: &Inv, ctx: &Ctx) -> Verdict {
        let name = inv.name.as_str();
        let args = inv.args();
        match name {
            "rm" => {
                let a = parse_args(args, "", &[], false);
                if a.has_long("no-preserve-root") {
                    return Err(deny(
                        MASS,
                        "`rm --no-preserve-root` disables the protection of `/`".to_string(),
                    ));
                }
                let recursive = a.has('r') || a.has('R') || a.has_long("recursive");
                for t in &a.operands {
                    if !(recursive || a.maybe_opts) {
                        continue;
                    }
                    if !t.is_static() {
                        let why = if recursive {
                            "recursive `rm` of"
                        } else {
                            "`rm` with possible options from"
                        };
                        return Err(deny(
                            MASS,
                            format!("{why} non-static `{}` cannot be judged", shorten(&t.raw)),
                        ));
                    }
                    if ctx.relative_unknown(t) {
                        return Err(deny(
                            MASS,
                            format!(
                                "recursive `rm` of relative `{}` after a non-static `cd` cannot be judged",
                                shorten(&t.raw)
                            ),
                        ));
                    }
                    for p in ctx.paths(t) {
                        if deletion_protected(&p) {
                            return Err(deny(
                                MASS,
                                format!("`rm -r` of `{p}` would delete a system path"),
                            ));
                        }
                    }
                }
            }
            "find" => {
                let mut i = 0;
                while let Some(v) = args.get(i).and_then(|w| w.value.as_deref()) {
                    match v {
                        "-H" | "-L" | "-P" => i += 1,
                        "-D" => i += 2,
                        _ if v.starts_with("-O") => i += 1,
                        _ => break,
                    }
                }
                let mut starts: Vec<&Word> = Vec::new();
                while let Some(w) = args.get(i) {
                    match w.value.as_deref() {
                        Some(v) if v.starts_with('-') || v == "(" || v == "!" || v == "," => break,
                        _ => {
                            starts.push(w);
                            i += 1;
                        }
                    }
                }
                let expr = args.get(i..).unwrap_or(&[]);
                let mut deleting = false;
                for (k, w) in expr.iter().enumerate() {
                    match w.value.as_deref() {
                        Some("-delete") => deleting = true,
                        Some("-exec" | "-execdir" | "-ok" | "-okdir") => {
                            let prog = expr.get(k + 1).map(|p| program_name(p.text()).to_string());
                            if matches!(
                                prog.as_deref(),
                                Some("rm" | "unlink" | "shred" | "rmdir" | "srm" | "mv")
                            ) {
                                deleting = true;
                            }
                        }
                        _ => {}
                    }
                }
                if !deleting {
                    return Ok(());
                }
                let dot = Word::literal(".");
                if starts.is_empty() {
                    starts.push(&dot);
                }
                for s in starts {
                    if !s.is_static() || ctx.relative_unknown(s) {
                        return Err(deny(
                            MASS,
                            format!(
                                "`find … -delete` under non-static `{}` cannot be judged",
                                shorten(&s.raw)
                            ),
                        ));
                    }
                    for p in ctx.paths(s) {
                        if p == "/"
                            || is_primary(&p)
                            || glob_dir(&p).is_some_and(|d| is_system_path(&d))
                        {
                            return Err(deny(
                                MASS,
                                format!(
                                    "`find {p}` deleting files would delete under a system path"
                                ),
                            ));
                        }
                    }
                }
            }
            "mv" => {
                let a = parse_args(args, "tS", &["target-directory", "suffix"], false);
                let sources: &[&Word] = if a.has('t') || a.has_long("target-directory") {
                    &a.operands
                } else {
                    a.operands.split_last().map(|(_, s)| s).unwrap_or(&[])
                };
                for s in sources {
                    for p in ctx.paths(s) {
                        if deletion_protected(&p) {
                            return Err(deny(
                                MASS,
                                format!("`mv` of `{p}` would remove a system path"),
                            ));
                        }
                    }
                }
            }
            "rsync" => {
                let a = parse_args(
                    args,
                    "e",
                    &["rsh", "rsync-path", "exclude", "include", "filter"],
                    false,
                );
                if (a.has_long_prefix("delete") || a.has_long("del"))
                    && let Some(dest) = a.operands.last()
                {
                    for p in ctx.paths(dest) {
                        if p == "/" || is_primary(&p) {
                            return Err(deny(
                                MASS,
                                format!("`rsync --delete` into `{p}` would delete a system path"),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Shells, interpreters and `source` reading code from stdin, a pipe, a here-document or a process substitution.
    fn code_reader_rules(&self, inv: &Inv, idx: usize, cmd: &SimpleCommand, ctx: &Ctx) -> Verdict {
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

    // ------------------------------------------------------------------ roles

    fn role_rules(&self, role: Role, cmd: &SimpleCommand, ctx: &Ctx, depth: usize) -> Verdict {
        for r in &cmd.redirects {
            role_redirect(role, r)?;
        }
        let (rule, label) = match role {
            Role::Diagnostics => (ROLE_DIAG, "diagnostics"),
            _ => (ROLE_OPERATOR, "operator"),
        };
        for w in cmd
            .words
            .iter()
            .chain(cmd.redirects.iter().map(|r| &r.target))
        {
            for p in ctx.paths(w) {
                if is_credential_file(&p) {
                    return Err(deny(
                        rule,
                        format!(
                            "access to credential file `{p}` is not allowed for the {label} role"
                        ),
                    ));
                }
            }
        }
        if cmd.words.is_empty() {
            return Ok(());
        }
        let mut chain = Chain::default();
        self.resolve(&cmd.words, ctx, &mut chain, 0, false)?;
        for inv in &chain.invs {
            if inv.transparent {
                continue;
            }
            if role == Role::Operator
                && (inv.name == "docker" || self.operator_allow.contains(&inv.name))
            {
                continue;
            }
            if let Err(why) = diagnostics_allows(inv) {
                return Err(deny(rule, format!("{why} for the {label} role")));
            }
        }
        for (code, via) in &chain.nested {
            self.nested(role, code, via, depth)?;
        }
        Ok(())
    }
}

fn role_redirect(role: Role, r: &Redirect) -> Verdict {
    if role == Role::Diagnostics && r.writes_file() && !is_safe_sink(&r.target) {
        return Err(deny(
            ROLE_DIAG,
            format!(
                "output redirection `{}` to `{}` is not allowed for the diagnostics role",
                r.op.as_str(),
                shorten(&r.target.raw)
            ),
        ));
    }
    Ok(())
}

// ============================================================================ classification helpers

/// 3: network tool, 2: downloader, 1: decoder, 0: none.
fn source_rank(inv: &Inv) -> u8 {
    if is_network_tool(inv) {
        3
    } else if is_downloader(inv) {
        2
    } else if is_decoder(inv) {
        1
    } else {
        0
    }
}

/// Files `wget URL` writes without `-O`: the URL's last path component (or `index.html`).
fn wget_default_outputs(inv: &Inv) -> Vec<Word> {
    if inv.name != "wget" {
        return Vec::new();
    }
    let args = inv.args();
    if args.iter().any(|a| {
        let t = a.text();
        t.starts_with("-O")
            || t.starts_with("--output-document")
            || t.starts_with("-P")
            || t.starts_with("--directory-prefix")
    }) {
        return Vec::new();
    }
    args.iter()
        .filter_map(|a| a.value.as_deref())
        .filter(|v| v.contains("://"))
        .map(|v| {
            let path = v.split(['?', '#']).next().unwrap_or(v);
            let after_host = path.split_once("://").map_or(path, |(_, r)| r);
            let file = match after_host.split_once('/') {
                Some((_, p)) => p.rsplit('/').next().unwrap_or(""),
                None => "",
            };
            Word::literal(if file.is_empty() { "index.html" } else { file })
        })
        .collect()
}

fn is_downloader(inv: &Inv) -> bool {
    if DOWNLOADERS.contains(&inv.name.as_str()) {
        return true;
    }
    if let Some(fam) = interp_family(&inv.name)
        && let Some(code) = interp_args(fam, inv.args()).code
    {
        let c = code.text();
        return [
            "urlopen", "urllib", "requests", "http", "LWP", "socket", "fetch(",
        ]
        .iter()
        .any(|k| c.contains(k));
    }
    false
}

fn is_network_tool(inv: &Inv) -> bool {
    NET_TOOLS.contains(&inv.name.as_str())
        || (inv.name == "openssl" && inv.args().first().is_some_and(|a| a.text() == "s_client"))
}

fn is_decoder(inv: &Inv) -> bool {
    let args = inv.args();
    let has = |f: &[&str]| args.iter().any(|a| f.contains(&a.text()));
    let cluster_has = |c: char| {
        args.iter().any(|a| {
            a.text()
                .strip_prefix('-')
                .is_some_and(|b| !b.starts_with('-') && b.contains(c))
        })
    };
    match inv.name.as_str() {
        "base64" | "base32" | "basenc" => {
            cluster_has('d') || cluster_has('D') || has(&["--decode"])
        }
        "xxd" => cluster_has('r') || has(&["-revert"]),
        "openssl" => has(&["-d", "base64", "-base64", "enc"]),
        "gzip" | "bzip2" | "xz" | "zstd" | "lz4" => cluster_has('d') || has(&["--decompress"]),
        "uudecode" | "rev" | "tr" | "zcat" | "gunzip" | "bunzip2" | "xzcat" | "unxz"
        | "zstdcat" | "uncompress" | "unzip" => true,
        "printf" => args.iter().any(|a| {
            let t = a.text();
            t.contains("\\x") || t.contains("\\0") || t.contains("\\u")
        }),
        "echo" => {
            cluster_has('e')
                || args
                    .iter()
                    .any(|a| a.text().contains("\\x") || a.text().contains("\\0"))
        }
        _ => false,
    }
}

/// A dangerous name in inline interpreter code, if any.
fn dangerous_code(code: &str) -> Option<String> {
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

// ============================================================================ rules by program

fn check_written(w: &Word, via: &str, ctx: &Ctx) -> Verdict {
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
fn written_paths(inv: &Inv) -> Vec<Word> {
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

fn power_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let power = |what: String| {
        Err(deny(
            POWER,
            format!("`{what}` changes the machine's power state"),
        ))
    };
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
        "systemctl" | "loginctl" => {
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
            if name == "systemctl" && !is_readonly_systemctl(v) {
                for u in a.operands.iter().skip(1) {
                    let unit = u.text();
                    let base = unit.rsplit_once('.').map_or(unit, |(b, _)| b);
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
                    if TARGETS.contains(&base)
                        || [
                            "systemd-poweroff",
                            "systemd-reboot",
                            "systemd-halt",
                            "systemd-kexec",
                            "systemd-suspend",
                            "systemd-hibernate",
                        ]
                        .iter()
                        .any(|p| base.starts_with(p))
                    {
                        return power(format!("systemctl {v} {unit}"));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

const SYSTEMCTL_LONG: &[&str] = &[
    "type",
    "property",
    "host",
    "machine",
    "lines",
    "output",
    "signal",
    "kill-whom",
    "kill-value",
    "root",
    "state",
    "job-mode",
    "what",
    "reboot-argument",
    "message",
    "when",
    "image",
    "preset-mode",
    "timestamp",
    "drop-in",
    "check-inhibitors",
];

fn is_readonly_systemctl(verb: &str) -> bool {
    matches!(
        verb,
        "status"
            | "show"
            | "cat"
            | "help"
            | "is-active"
            | "is-enabled"
            | "is-failed"
            | "is-system-running"
            | "list-units"
            | "list-unit-files"
            | "list-timers"
            | "list-sockets"
            | "list-dependencies"
            | "list-jobs"
            | "list-machines"
            | "show-environment"
            | "get-default"
    )
}

fn fs_tool_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let tool = |what: &str| {
        Err(deny(
            FS_TOOLS,
            format!("`{what}` can destroy disks, partitions or filesystems"),
        ))
    };
    let has = |f: &[&str]| args.iter().any(|a| f.contains(&a.text()));
    if name.starts_with("mkfs")
        || matches!(
            name,
            "mke2fs"
                | "mkswap"
                | "mkdosfs"
                | "mkntfs"
                | "wipefs"
                | "blkdiscard"
                | "shred"
                | "cryptsetup"
                | "lvremove"
                | "vgremove"
                | "pvremove"
                | "lvreduce"
                | "cfdisk"
        )
    {
        return tool(name);
    }
    match name {
        "fdisk" | "sfdisk" | "gdisk" | "sgdisk" | "parted" => {
            let listing = !args.is_empty()
                && args.iter().all(|a| {
                    matches!(
                        a.text(),
                        "-l" | "--list" | "-p" | "--print" | "-s" | "--show-size"
                    ) || a.text().starts_with("/dev/")
                });
            if listing && !args.iter().all(|a| a.text().starts_with("/dev/")) {
                Ok(())
            } else {
                tool(name)
            }
        }
        "dd" => {
            for a in args {
                let Some(t) = a.text().strip_prefix("of=") else {
                    continue;
                };
                if !a.is_static() {
                    return Err(deny(
                        FS_TOOLS,
                        format!(
                            "`dd` output `{}` is not static and cannot be judged",
                            shorten(&a.raw)
                        ),
                    ));
                }
                let p = normalize(t, ctx.cwds.first().map_or("/", String::as_str));
                if p.starts_with("/dev/")
                    && !matches!(p.as_str(), "/dev/null" | "/dev/stdout" | "/dev/stderr")
                    && !p.starts_with("/dev/fd/")
                {
                    return Err(deny(FS_TOOLS, format!("`dd of={p}` overwrites a device")));
                }
            }
            Ok(())
        }
        "swapoff" if has(&["-a", "--all"]) => tool("swapoff -a"),
        "umount" | "mount" => {
            let a = parse_args(
                args,
                "otOLUNT",
                &["options", "types", "test-opts", "label", "uuid"],
                false,
            );
            let remount = a
                .values('o', "options")
                .iter()
                .any(|o| o.text().contains("remount") || o.text().contains("bind"))
                || a.has_long("bind")
                || a.has_long("rbind")
                || a.has_long("move");
            if name == "umount" && (a.has('a') || a.has_long("all")) {
                return tool("umount -a");
            }
            if name == "umount" || remount {
                for t in &a.operands {
                    for p in ctx.paths(t) {
                        if p == "/" || is_primary(&p) {
                            return tool(&format!("{name} {p}"));
                        }
                    }
                }
            }
            Ok(())
        }
        "nvme" if has(&["format", "sanitize"]) => tool("nvme format"),
        "zpool" if has(&["destroy", "labelclear"]) => tool("zpool destroy"),
        "zfs" if has(&["destroy"]) => tool("zfs destroy"),
        "mdadm" if has(&["--zero-superblock"]) => tool("mdadm --zero-superblock"),
        "hdparm"
            if args.iter().any(|a| {
                a.text().starts_with("--security-erase") || a.text().starts_with("--trim-sector")
            }) =>
        {
            tool("hdparm --security-erase")
        }
        _ => Ok(()),
    }
}

fn kill_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let hit = |what: String| {
        Err(deny(
            KILL,
            format!("`{what}` would kill init, every process or a critical daemon"),
        ))
    };
    let mentions_protected = |w: &Word| {
        let t = w.raw.to_ascii_lowercase();
        PROTECTED_PROCS.iter().any(|p| t.contains(p))
    };
    match name {
        "killall5" => hit(name.to_string()),
        "kill" => {
            let mut targets: Vec<&Word> = Vec::new();
            let mut i = 0;
            let mut first = true;
            while let Some(a) = args.get(i) {
                i += 1;
                let v = a.value.as_deref();
                if first {
                    first = false;
                    match v {
                        Some("--") => {
                            targets.extend(args.get(i..).unwrap_or(&[]));
                            break;
                        }
                        Some("-l" | "-L" | "--list" | "--table") => return Ok(()),
                        Some("-s" | "-n" | "--signal") => i += 1,
                        // `kill -1` alone: pid -1 (or a missing pid); treat as all processes.
                        Some(s) if s.starts_with('-') && s.len() > 1 => {
                            if args.len() == 1 {
                                targets.push(a);
                            }
                        }
                        _ => targets.push(a),
                    }
                    continue;
                }
                // After the signal, `-N` is a negative pid (process group); `--` is skipped.
                if v != Some("--") {
                    targets.push(a);
                }
            }
            for t in targets {
                match t.value.as_deref() {
                    Some(v @ ("1" | "-1")) => return hit(format!("kill {v}")),
                    None if mentions_protected(t) => {
                        return hit(format!("kill {}", shorten(&t.raw)));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        "pkill" | "killall" => {
            let mut rest = args;
            if let Some(first) = args.first().and_then(|a| a.value.as_deref())
                && is_signal_spec(first)
            {
                rest = args.get(1..).unwrap_or(&[]);
            }
            let with_arg = if name == "pkill" {
                "uUgGPstFr"
            } else {
                "uoysZn"
            };
            let a = parse_args(
                rest,
                with_arg,
                &[
                    "signal",
                    "euid",
                    "uid",
                    "group",
                    "pgroup",
                    "parent",
                    "session",
                    "terminal",
                    "pidfile",
                    "ns",
                    "nslist",
                    "runstates",
                    "user",
                    "older-than",
                    "younger-than",
                    "context",
                ],
                false,
            );
            for p in a.values('P', "parent") {
                if p.text() == "1" || p.text() == "0" {
                    return hit(format!("{name} -P {}", p.text()));
                }
            }
            for u in a
                .values('u', "user")
                .into_iter()
                .chain(a.values('U', "uid"))
            {
                if a.operands.is_empty() && matches!(u.text(), "root" | "0") {
                    return hit(format!("{name} -u {}", u.text()));
                }
            }
            let regex_mode = name == "pkill" || a.has('r') || a.has_long("regexp");
            for pat in &a.operands {
                let Some(v) = pat.value.as_deref() else {
                    if mentions_protected(pat) {
                        return hit(format!("{name} {}", shorten(&pat.raw)));
                    }
                    continue;
                };
                if regex_mode {
                    let re = RegexBuilder::new(v).size_limit(1 << 16).build();
                    match re {
                        Ok(re) => {
                            if let Some(p) = PROTECTED_PROCS.iter().find(|p| re.is_match(p)) {
                                return Err(deny(
                                    KILL,
                                    format!("`{name} {v}` matches critical process `{p}`"),
                                ));
                            }
                        }
                        Err(_) => {
                            return Err(deny(
                                KILL,
                                format!("`{name}` pattern `{}` cannot be judged", shorten(v)),
                            ));
                        }
                    }
                } else if PROTECTED_PROCS.contains(&program_name(v)) {
                    return hit(format!("{name} {v}"));
                }
            }
            Ok(())
        }
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            if a.operands.first().map(|w| w.text()) == Some("kill") {
                for u in a.operands.iter().skip(1) {
                    if protected_unit(u.text()) {
                        return hit(format!("systemctl kill {}", u.text()));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn is_signal_spec(v: &str) -> bool {
    let Some(s) = v.strip_prefix('-') else {
        return false;
    };
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        || (s.len() >= 2
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'))
}

fn permission_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
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

fn account_rules(inv: &Inv) -> Verdict {
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

fn network_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    if matches!(
        name,
        "nc" | "ncat" | "netcat" | "nc.openbsd" | "nc.traditional" | "cryptcat"
    ) {
        for a in args {
            let t = a.text();
            let exec = matches!(t, "--exec" | "--sh-exec" | "--lua-exec")
                || t.starts_with("--exec=")
                || t.starts_with("--sh-exec=")
                || t.strip_prefix('-')
                    .is_some_and(|b| !b.starts_with('-') && (b.contains('e') || b.contains('c')));
            if exec {
                return Err(deny(
                    NET_SHELL,
                    format!("`{name} {t}` connects a program to the network (reverse/bind shell)"),
                ));
            }
        }
    }
    if name == "socat" {
        for a in args {
            let t = a.text().to_ascii_lowercase();
            if t.contains("exec:") || t.contains("system:") {
                return Err(deny(
                    NET_SHELL,
                    format!(
                        "`socat {}` connects a program to the network",
                        shorten(a.text())
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn ps_rules(inv: &Inv) -> Verdict {
    if inv.name != "ps" {
        return Ok(());
    }
    let args = inv.args();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        i += 1;
        let t = a.text();
        if let Some(l) = t.strip_prefix("--") {
            if !l.contains('=')
                && matches!(
                    l,
                    "sort"
                        | "format"
                        | "pid"
                        | "ppid"
                        | "user"
                        | "group"
                        | "cols"
                        | "columns"
                        | "lines"
                        | "rows"
                        | "width"
                        | "tty"
                        | "sid"
                        | "Group"
                        | "User"
                        | "quick-pid"
                )
            {
                i += 1;
            }
            continue;
        }
        if let Some(body) = t.strip_prefix('-') {
            if let Some(k) = body.find(|ch: char| "oOpuUgGtCqs".contains(ch))
                && k + 1 == body.len()
            {
                i += 1;
            }
            continue;
        }
        // BSD-style cluster.
        for (k, c) in t.char_indices() {
            if c == 'e' {
                return Err(deny(
                    SECRETS,
                    format!("`ps {t}` prints other processes' environments"),
                ));
            }
            if "oOpUtk".contains(c) {
                if k + 1 == t.len() {
                    i += 1;
                }
                break;
            }
        }
    }
    Ok(())
}

fn protected_unit(unit: &str) -> bool {
    let base = unit
        .strip_suffix(".service")
        .or_else(|| unit.strip_suffix(".socket"))
        .unwrap_or(unit);
    if base.contains(['*', '?', '[']) {
        let re: String = base
            .chars()
            .map(|c| match c {
                '*' => ".*".to_string(),
                '?' => ".".to_string(),
                c => regex::escape(&c.to_string()),
            })
            .collect();
        return match Regex::new(&format!("^{re}$")) {
            Ok(re) => [
                "docker",
                "containerd",
                "sshd",
                "ssh",
                "dtma",
                "systemd-journald",
            ]
            .iter()
            .any(|n| re.is_match(n)),
            Err(_) => true,
        };
    }
    matches!(base, "docker" | "containerd" | "sshd" | "ssh")
        || base.starts_with("dtma")
        || base.starts_with("systemd-")
}

fn service_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let stop = |svc: &str, how: &str| {
        Err(deny(
            SERVICE,
            format!("`{how}` stops or disables critical service `{svc}`"),
        ))
    };
    match name {
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            let Some(verb) = a.operands.first().map(|w| w.text()) else {
                return Ok(());
            };
            if matches!(verb, "stop" | "disable" | "mask" | "kill" | "freeze") {
                for u in a.operands.iter().skip(1) {
                    if !u.is_static() {
                        return Err(deny(
                            SERVICE,
                            format!(
                                "`systemctl {verb}` of non-static unit `{}` cannot be judged",
                                shorten(&u.raw)
                            ),
                        ));
                    }
                    if protected_unit(u.text()) {
                        return stop(u.text(), &format!("systemctl {verb}"));
                    }
                }
            }
            Ok(())
        }
        "service" | "invoke-rc.d" | "update-rc.d" => {
            let ops: Vec<&str> = args.iter().map(Word::text).collect();
            if let [svc, action, ..] = ops.as_slice()
                && matches!(
                    *action,
                    "stop" | "force-stop" | "disable" | "remove" | "kill"
                )
                && protected_unit(svc)
            {
                return stop(svc, &format!("{name} {svc} {action}"));
            }
            Ok(())
        }
        _ if inv.prog().starts_with("/etc/init.d/") => {
            if let Some(action) = args.first().map(|w| w.text())
                && matches!(action, "stop" | "force-stop")
                && protected_unit(name)
            {
                return stop(name, &format!("{} {action}", inv.prog()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn firewall_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    let lock = |what: String| {
        Err(deny(
            FIREWALL,
            format!("`{what}` can cut the machine off the network"),
        ))
    };
    if name.starts_with("iptables") || name.starts_with("ip6tables") {
        for (k, t) in texts.iter().enumerate() {
            if *t == "--flush"
                || t.strip_prefix('-')
                    .is_some_and(|b| !b.starts_with('-') && b.contains('F'))
            {
                return lock(format!("{name} {t}"));
            }
            if (*t == "-P" || *t == "--policy")
                && texts
                    .get(k + 2)
                    .is_some_and(|p| matches!(*p, "DROP" | "REJECT"))
            {
                return lock(format!("{name} -P … DROP"));
            }
        }
        let unqualified = !texts.iter().any(|t| {
            matches!(
                *t,
                "-s" | "--source"
                    | "-p"
                    | "--protocol"
                    | "--dport"
                    | "--sport"
                    | "-i"
                    | "--in-interface"
                    | "-m"
                    | "--match"
                    | "-d"
                    | "--destination"
            )
        });
        let drops = texts
            .windows(2)
            .any(|w| matches!(w, ["-j" | "--jump", "DROP" | "REJECT"]));
        let input = texts.windows(2).any(|w| {
            matches!(
                w,
                ["-A" | "-I" | "--append" | "--insert", "INPUT" | "OUTPUT"]
            )
        });
        if unqualified && drops && input {
            return lock(format!("{name} {}", texts.join(" ")));
        }
        return Ok(());
    }
    match name {
        "nft" => {
            if texts.contains(&"flush") && texts.contains(&"ruleset") {
                return lock("nft flush ruleset".to_string());
            }
            Ok(())
        }
        "ip" => {
            let mut ops = texts.iter().filter(|t| !t.starts_with('-'));
            let obj = ops.next().copied().unwrap_or("");
            let act = ops.next().copied().unwrap_or("");
            let abbrev = |full: &str, x: &str| !x.is_empty() && full.starts_with(x);
            if abbrev("link", obj) && abbrev("set", act) && texts.contains(&"down") {
                return lock(format!("ip link set … down ({})", texts.join(" ")));
            }
            if (abbrev("address", obj) || abbrev("route", obj)) && abbrev("flush", act) {
                return lock(format!("ip {obj} flush"));
            }
            if abbrev("route", obj)
                && (abbrev("delete", act) || act == "del")
                && texts.contains(&"default")
            {
                return lock("ip route del default".to_string());
            }
            Ok(())
        }
        "ifdown" => lock("ifdown".to_string()),
        "ifconfig" if texts.contains(&"down") => lock("ifconfig … down".to_string()),
        "nmcli" => {
            let joined = texts.join(" ");
            if joined.contains("networking off")
                || (joined.contains("dev") && joined.contains("disconnect"))
                || (joined.contains("con") && joined.contains("down"))
            {
                return lock(format!("nmcli {joined}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// awk's options (those of gawk, mawk and busybox awk that take a value).
fn awk_args(args: &[Word]) -> Args<'_> {
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
fn awk_sed_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
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

fn awk_runs_commands(p: &str) -> Option<&'static str> {
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

fn sed_scripts(args: &[Word]) -> Vec<String> {
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

struct SedInfo {
    exec: bool,
    writes: Vec<String>,
}

/// Minimal GNU sed script scanner: finds `e` commands, `s///e` flags and `w` file targets.
fn scan_sed(s: &str) -> SedInfo {
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

/// Options of common programs that take a shell command of their own.
fn embedded_commands(inv: &Inv, nested: &mut Vec<(String, String)>) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let mut push = |code: &Word, via: &str| -> Verdict {
        match code.value.as_deref() {
            Some(c) => {
                nested.push((c.to_string(), via.to_string()));
                Ok(())
            }
            None => Err(deny(
                UNJUDGEABLE,
                format!("`{via}` command `{}` is not static", shorten(&code.raw)),
            )),
        }
    };
    match name {
        "tar" => {
            for (k, a) in args.iter().enumerate() {
                let t = a.text();
                for opt in [
                    "--to-command=",
                    "--checkpoint-action=exec=",
                    "--use-compress-program=",
                    "--rsh-command=",
                    "--info-script=",
                    "--new-volume-script=",
                ] {
                    if let Some(v) = t.strip_prefix(opt) {
                        push(
                            &Word {
                                value: a.value.as_ref().map(|_| v.to_string()),
                                ..a.clone()
                            },
                            &format!("tar {opt}"),
                        )?;
                    }
                }
                if matches!(
                    t,
                    "-I" | "--to-command" | "--use-compress-program" | "-F" | "--info-script"
                ) && let Some(v) = args.get(k + 1)
                {
                    push(v, &format!("tar {t}"))?;
                }
            }
        }
        "rsync" => {
            let a = parse_args(args, "e", &["rsh"], false);
            for v in a.values('e', "rsh") {
                push(v, "rsync -e")?;
            }
        }
        "ssh" | "scp" | "sftp" => {
            let a = parse_args(args, "oFiJlLpRSDEbcmOQWw", &[], true);
            for v in a.values('o', "") {
                let t = v.text();
                let (key, val) = match t.split_once(['=', ' ']) {
                    Some((k, val)) => (k.trim().to_ascii_lowercase(), val.trim()),
                    None => (t.to_ascii_lowercase(), ""),
                };
                if matches!(
                    key.as_str(),
                    "proxycommand" | "localcommand" | "knownhostscommand"
                ) {
                    push(
                        &Word {
                            value: v.value.as_ref().map(|_| val.to_string()),
                            ..v.clone()
                        },
                        &format!("{name} -o {key}"),
                    )?;
                }
            }
        }
        "git" => {
            for (k, a) in args.iter().enumerate() {
                if a.text() != "-c" {
                    continue;
                }
                let Some(kv) = args.get(k + 1) else { continue };
                let t = kv.text();
                let (key, val) = t.split_once('=').unwrap_or((t, ""));
                let key = key.to_ascii_lowercase();
                let runs = matches!(
                    key.as_str(),
                    "core.sshcommand"
                        | "core.pager"
                        | "core.editor"
                        | "core.fsmonitor"
                        | "core.askpass"
                        | "diff.external"
                        | "sequence.editor"
                        | "gpg.program"
                        | "credential.helper"
                ) || key.starts_with("pager.")
                    || (key.starts_with("alias.") && val.starts_with('!'));
                if runs {
                    let code = val.trim_start_matches('!').to_string();
                    push(
                        &Word {
                            value: kv.value.as_ref().map(|_| code.clone()),
                            ..kv.clone()
                        },
                        &format!("git -c {key}"),
                    )?;
                }
            }
        }
        "script" => {
            let a = parse_args(
                args,
                "cEIOTBm",
                &[
                    "command",
                    "echo",
                    "log-in",
                    "log-out",
                    "log-timing",
                    "log-io",
                    "logging-format",
                ],
                false,
            );
            for v in a.values('c', "command") {
                push(v, "script -c")?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ============================================================================ diagnostics allow-list

/// Whether a program (with its arguments) is in the read-only diagnostics set; `Err` says why not.
fn diagnostics_allows(inv: &Inv) -> Result<(), String> {
    let name = inv.name.as_str();
    let args = inv.args();
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    let no = |why: String| Err(why);
    let short_has = |c: char| {
        texts.iter().any(|t| {
            t.strip_prefix('-')
                .is_some_and(|b| !b.starts_with('-') && b.contains(c))
        })
    };
    match name {
        "df" | "free" | "uptime" | "cat" | "head" | "tail" | "grep" | "egrep" | "fgrep"
        | "zgrep" | "wc" | "ls" | "stat" | "du" | "ss" | "netstat" | "lsblk" | "lscpu" | "lsof"
        | "nproc" | "uname" | "id" | "whoami" | "printenv" | "env" | "echo" | "printf" | "true"
        | "false" | "cut" | "which" | "test" | "[" | "[[" | "ps" | "pwd" | "sleep" | "seq"
        | "basename" | "dirname" | "tr" | "tac" | "nl" | "md5sum" | "sha256sum" | "realpath"
        | "readlink" | "vmstat" | "iostat" | "w" | "who" | "pgrep" | "pidof" | "lsmod"
        | "lspci" | ":" | "cd" | "exit" | "type" | "command" => Ok(()),
        "uniq" => {
            let a = parse_args(
                args,
                "fsw",
                &["skip-fields", "skip-chars", "check-chars"],
                false,
            );
            if a.operands.len() > 1 {
                no("`uniq` with an output file is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "sort" => {
            let a = parse_args(
                args,
                "oktST",
                &[
                    "output",
                    "key",
                    "field-separator",
                    "buffer-size",
                    "temporary-directory",
                ],
                false,
            );
            if a.has('o') || a.has_long("output") {
                no("`sort -o` writes a file, which is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "top" => {
            if short_has('b') && (short_has('n') || texts.iter().any(|t| t.starts_with("-n"))) {
                Ok(())
            } else {
                no("`top` is only allowed as `top -b -n 1`".to_string())
            }
        }
        "journalctl" => {
            let bad = texts.iter().any(|t| {
                t.starts_with("--vacuum")
                    || matches!(
                        *t,
                        "--rotate"
                            | "--flush"
                            | "--sync"
                            | "--relinquish-var"
                            | "--smart-relinquish-var"
                            | "--setup-keys"
                            | "--update-catalog"
                    )
                    || t.starts_with("--cursor-file")
            });
            if bad {
                no("`journalctl` maintenance options are not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "dmesg" => {
            let bad = texts.iter().any(|t| {
                matches!(
                    *t,
                    "--clear"
                        | "--read-clear"
                        | "--console-off"
                        | "--console-on"
                        | "--console-level"
                ) || t
                    .strip_prefix('-')
                    .is_some_and(|b| !b.starts_with('-') && b.chars().any(|c| "CcDEn".contains(c)))
            });
            if bad {
                no(
                    "`dmesg` options that clear or change the kernel log are not allowed"
                        .to_string(),
                )
            } else {
                Ok(())
            }
        }
        "systemctl" => {
            let a = parse_args(args, "tpHMnos", SYSTEMCTL_LONG, false);
            match a.operands.first().map(|w| w.text()) {
                Some(v) if is_readonly_systemctl(v) => Ok(()),
                None => Ok(()),
                Some(v) => no(format!("`systemctl {v}` is not allowed")),
            }
        }
        "ip" => {
            let mut ops = texts.iter().filter(|t| !t.starts_with('-'));
            if texts
                .iter()
                .any(|t| matches!(*t, "-b" | "-batch" | "-n" | "-netns" | "-force"))
            {
                return no("`ip` batch/netns options are not allowed".to_string());
            }
            let obj = ops.next().copied().unwrap_or("");
            let act = ops.next().copied().unwrap_or("show");
            let abbrev = |full: &str, x: &str| !x.is_empty() && full.starts_with(x);
            let obj_ok = [
                "address",
                "route",
                "link",
                "neighbour",
                "rule",
                "maddress",
                "netconf",
            ]
            .iter()
            .any(|f| abbrev(f, obj))
                || obj == "neighbor";
            let act_ok = ["show", "list", "lst"].iter().any(|f| abbrev(f, act))
                || (abbrev("route", obj) && act == "get")
                || act.starts_with("dev")
                || act == "dev";
            if obj_ok && act_ok {
                Ok(())
            } else {
                no(format!("`ip {obj} {act}` is not allowed"))
            }
        }
        "hostname" => {
            let ok = texts.iter().all(|t| {
                matches!(
                    *t,
                    "-I" | "-i"
                        | "-f"
                        | "-s"
                        | "-d"
                        | "-A"
                        | "-a"
                        | "--fqdn"
                        | "--short"
                        | "--domain"
                        | "--ip-address"
                        | "--all-ip-addresses"
                        | "--all-fqdns"
                        | "--long"
                )
            });
            if ok {
                Ok(())
            } else {
                no("`hostname` that sets the host name is not allowed".to_string())
            }
        }
        "date" => {
            let bad = texts.iter().any(|t| {
                *t == "--set"
                    || t.starts_with("--set=")
                    || t.strip_prefix('-')
                        .is_some_and(|b| !b.starts_with('-') && b.contains('s'))
                    || !(t.starts_with('-') || t.starts_with('+'))
            });
            if bad {
                no("`date` that sets the clock is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "awk" | "gawk" | "mawk" | "nawk" => {
            let a = awk_args(args);
            if a.has('f') || a.has('E') || a.has('o') || a.has_long("file") || a.has_long("exec") {
                return no(format!("`{name}` with program files is not allowed"));
            }
            let p = a.operands.first().map(|w| w.text()).unwrap_or("");
            let writes = p.contains(">>")
                || p.match_indices('>').any(|(k, _)| {
                    p.get(k + 1..)
                        .map(str::trim_start)
                        .is_some_and(|r| r.starts_with('"'))
                });
            if awk_runs_commands(p).is_some() || writes {
                no(format!(
                    "`{name}` program that runs commands or writes files is not allowed"
                ))
            } else {
                Ok(())
            }
        }
        "sed" => {
            let a = parse_args(args, "efl", &["expression", "file", "line-length"], false);
            if a.has('i') || a.has_long_prefix("in-place") {
                return no("`sed -i` edits files, which is not allowed".to_string());
            }
            if sed_scripts(args).iter().any(|s| {
                let info = scan_sed(s);
                info.exec || !info.writes.is_empty()
            }) {
                return no(
                    "`sed` scripts that write files or run commands are not allowed".to_string(),
                );
            }
            Ok(())
        }
        "find" => {
            let bad = texts.iter().any(|t| {
                matches!(
                    *t,
                    "-delete" | "-exec" | "-execdir" | "-ok" | "-okdir" | "-fls"
                ) || t.starts_with("-fprint")
            });
            if bad {
                no("`find` with `-delete`/`-exec`/`-fprint` is not allowed".to_string())
            } else {
                Ok(())
            }
        }
        "docker" => docker_readonly(args),
        _ => no(format!("`{name}` is not allowed")),
    }
}

fn docker_readonly(args: &[Word]) -> Result<(), String> {
    let a = parse_args(
        args,
        "Hcl",
        &[
            "host",
            "context",
            "config",
            "log-level",
            "tlscacert",
            "tlscert",
            "tlskey",
        ],
        true,
    );
    let Some(k) = a.first_operand else {
        return Ok(());
    };
    let sub = args.get(k).map(Word::text).unwrap_or("");
    let rest = args.get(k + 1..).unwrap_or(&[]);
    let next = parse_args(rest, "", &[], true)
        .operands
        .first()
        .map(|w| w.text().to_string())
        .unwrap_or_default();
    let no_stream = rest.iter().any(|w| w.text() == "--no-stream");
    let ok = match sub {
        "ps" | "logs" | "inspect" | "images" | "info" | "version" | "top" | "port" => true,
        "stats" => no_stream,
        "container" => {
            matches!(
                next.as_str(),
                "ls" | "ps" | "list" | "inspect" | "logs" | "top" | "port"
            ) || (next == "stats" && no_stream)
        }
        "image" => matches!(next.as_str(), "ls" | "list" | "inspect" | "history"),
        "compose" => matches!(next.as_str(), "ps" | "logs" | "ls" | "images" | "top"),
        "system" => matches!(next.as_str(), "df" | "info"),
        "network" | "volume" => matches!(next.as_str(), "ls" | "list" | "inspect"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`docker {sub}` is not allowed"))
    }
}
