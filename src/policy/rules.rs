//! The rule families: what counts as a classic slip, program by program.

use super::rails::{
    Ctx, Inv, Verdict, after_prefix, could_be, deny, has_expansion, shorten, unjudgeable,
};
use super::shell::{self, ANY, Dialect, Redirect, Word, escape};
use super::{
    ACCOUNT, BLOCK_WRITE, CRONTAB, DOCKER_HOST, DOCKER_REMOVE_ALL, DOCKER_VOLUMES, DOWNLOAD,
    FS_TOOLS, MASS, POWER,
};

/// Every program name a rule or a wrapper reads: an expansion or pattern in a program word is judged as each of these
/// it could be.
pub(crate) const PROGRAMS: &[&str] = &[
    "sudo",
    "doas",
    "env",
    "nice",
    "ionice",
    "timeout",
    "nohup",
    "xargs",
    "time",
    "stdbuf",
    "command",
    "exec",
    "sh",
    "dash",
    "ash",
    "bash",
    "zsh",
    "ksh",
    "mksh",
    "eval",
    ".",
    "source",
    "python",
    "python3",
    "perl",
    "ruby",
    "node",
    "php",
    "rm",
    "find",
    "mkfs",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.vfat",
    "mke2fs",
    "mkswap",
    "dd",
    "shred",
    "wipefs",
    "blkdiscard",
    "tee",
    "fdisk",
    "sfdisk",
    "parted",
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init",
    "telinit",
    "systemctl",
    "kexec",
    "passwd",
    "usermod",
    "userdel",
    "deluser",
    "crontab",
    "docker",
];

/// Paths whose recursive deletion (or of everything in them) breaks the machine.
const SYSTEM_PATHS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/usr",
    "/usr/bin",
    "/usr/include",
    "/usr/lib",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/usr/src",
    "/var",
    "/var/lib",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/log",
    "/var/spool",
];

/// Sample disk device paths: a pattern that matches one could name a disk.
const DISKS: &[&str] = &[
    "/dev/sda",
    "/dev/sda1",
    "/dev/vda",
    "/dev/vdb1",
    "/dev/xvda",
    "/dev/hda",
    "/dev/nvme0n1",
    "/dev/nvme0n1p1",
    "/dev/mmcblk0",
    "/dev/mmcblk0p1",
    "/dev/dm-0",
    "/dev/md0",
    "/dev/mapper/root",
    "/dev/disk/by-id/x",
];

// ============================================================================ paths

/// Lexical normalisation of an absolute path or pattern: `.`, `..` and repeated `/` removed.
pub(crate) fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_disk(path: &str) -> bool {
    let Some(dev) = normalize(path).strip_prefix("/dev/").map(str::to_string) else {
        return false;
    };
    let numbered = |prefix: &str| {
        dev.strip_prefix(prefix)
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
    };
    ["sd", "vd", "xvd", "hd", "nvme", "mmcblk", "dm-", "md"]
        .iter()
        .any(|p| numbered(p))
        || (dev.starts_with("mapper/") && dev != "mapper/control")
        || dev.starts_with("disk/")
}

/// How a path word stands against a list of dangerous paths.
enum Path {
    Safe,
    /// It is (or a pattern of it matches) this dangerous path.
    Is(String),
    /// It holds an expansion that could be this dangerous path.
    Could(String),
}

/// Judge a path operand against the system paths, also as "everything in" one (`/etc/*`).
fn system_path(w: &Word, cwd: Option<&str>) -> Path {
    let mut pat = w.pattern.clone();
    if !pat.starts_with('/') && !pat.starts_with(ANY) {
        pat = match cwd {
            Some(d) => format!("{}/{pat}", escape(d)),
            None => format!("{ANY}/{pat}"),
        };
    }
    let pat = normalize(&pat);
    let (dir, last) = pat.rsplit_once('/').unwrap_or(("", &pat));
    let everything = !last.is_empty() && last.chars().all(|c| matches!(c, '*' | '?' | ANY));
    let dir = if dir.is_empty() { "/" } else { dir };
    for p in SYSTEM_PATHS {
        let hit = shell::matches(&pat, p) || (everything && shell::matches(dir, p));
        if hit {
            let shown = if shell::matches(&pat, p) {
                (*p).to_string()
            } else {
                format!("everything in {p}")
            };
            return if pat.contains(ANY) {
                Path::Could(shown)
            } else {
                Path::Is(shown)
            };
        }
    }
    Path::Safe
}

/// Whether a word names a disk: `Ok(Some(path))` when it does, `Err` when an expansion or pattern could.
fn disk(w: &Word, need_dev_prefix: bool) -> Result<Option<String>, Deny> {
    if let Some(v) = w.exact() {
        return Ok(is_disk(v).then(|| v.to_string()));
    }
    if need_dev_prefix && !w.pattern.starts_with("/dev/") {
        return Ok(None);
    }
    match DISKS.iter().find(|d| shell::matches(&w.pattern, d)) {
        Some(d) if has_expansion(w) || !w.glob => Err(unjudgeable(w, "device", d)),
        Some(d) => Ok(Some((*d).to_string())),
        None => Ok(None),
    }
}

use super::rails::Deny;

// ============================================================================ options

/// Options and operands of a getopt-style command line.
struct Args<'a> {
    /// Option words (`-rf`, `--force`, `-u`), each with its value if it takes one.
    opts: Vec<(&'a Word, Option<&'a Word>)>,
    operands: Vec<&'a Word>,
}

impl Args<'_> {
    /// Whether a short option letter or a long option (or an unambiguous prefix of it, at least `min` letters) is set.
    fn has(&self, short: char, long: &str) -> bool {
        self.opts.iter().any(|(o, _)| {
            let v = o.text();
            match v.strip_prefix("--") {
                Some(l) => {
                    let l = l.split('=').next().unwrap_or(l);
                    !l.is_empty()
                        && long.trim_start_matches("--").starts_with(l)
                        && !long.is_empty()
                }
                None => short != '\0' && v.chars().skip(1).any(|c| c == short),
            }
        })
    }

    fn value(&self, short: char, long: &str) -> Option<&Word> {
        self.opts.iter().find_map(|(o, v)| {
            let t = o.text();
            (t == long || (t.len() == 2 && t.ends_with(short))).then_some(*v)?
        })
    }
}

/// Split arguments into options and operands (GNU style: options anywhere until `--`). `values` lists the short
/// letters and long options that take a value.
fn args<'a>(ws: &'a [Word], short_values: &str, long_values: &[&str], permute: bool) -> Args<'a> {
    let mut out = Args {
        opts: Vec::new(),
        operands: Vec::new(),
    };
    let mut i = 0;
    let mut only_operands = false;
    while let Some(w) = ws.get(i) {
        i += 1;
        let v = w.text();
        if only_operands || !v.starts_with('-') || v == "-" {
            out.operands.push(w);
            if !permute {
                only_operands = true;
            }
            continue;
        }
        if v == "--" {
            only_operands = true;
            continue;
        }
        let takes = if v.starts_with("--") {
            !v.contains('=') && long_values.contains(&v)
        } else {
            let cluster: Vec<char> = v.chars().skip(1).collect();
            cluster
                .iter()
                .position(|c| short_values.contains(*c))
                .is_some_and(|p| p + 1 == cluster.len())
        };
        let value = if takes {
            i += 1;
            ws.get(i - 1)
        } else {
            None
        };
        out.opts.push((w, value));
    }
    out
}

// ============================================================================ the rules

/// A redirection writing to a disk.
pub(crate) fn redirect(r: &Redirect) -> Verdict {
    if !r.writes_file() {
        return Ok(());
    }
    match disk(&r.target, true)? {
        Some(d) => Err(deny(
            BLOCK_WRITE,
            format!("the redirection writes to the disk device `{d}`"),
        )),
        None => Ok(()),
    }
}

/// Every rule that reads a program's arguments.
pub(crate) fn program(inv: &Inv, ctx: &Ctx) -> Verdict {
    let a = inv.args();
    match inv.name.as_str() {
        "rm" => rm(a, ctx),
        "find" => find(a),
        n if n == "mke2fs" || n == "mkfs" || n.starts_with("mkfs.") => {
            if a.iter()
                .any(|w| matches!(w.text(), "-V" | "--version" | "-h" | "--help"))
            {
                return Ok(());
            }
            Err(deny(FS_TOOLS, format!("`{n}` creates a filesystem")))
        }
        "mkswap" => device_operands(inv, &args(a, "LUpe", &[], true).operands, FS_TOOLS, false),
        "dd" => {
            for w in a {
                if let Some(of) = after_prefix(w, "of=")
                    && let Some(d) = disk(&of, false)?
                {
                    return Err(deny(
                        BLOCK_WRITE,
                        format!("`dd` writes to the disk device `{d}`"),
                    ));
                }
            }
            Ok(())
        }
        "shred" | "blkdiscard" | "tee" => {
            let p = args(a, "nsopl", &[], true);
            device_operands(inv, &p.operands, BLOCK_WRITE, inv.name == "tee")
        }
        "wipefs" => {
            let p = args(a, "otOp", &[], true);
            if p.has('a', "--all") || p.has('o', "--offset") {
                device_operands(inv, &p.operands, BLOCK_WRITE, false)
            } else {
                Ok(())
            }
        }
        "fdisk" | "sfdisk" | "parted" => partitions(inv, ctx),
        "shutdown" | "reboot" | "halt" | "poweroff" => {
            let harmless = if inv.name == "shutdown" {
                &["-c", "--help", "--show"][..]
            } else {
                &["--help", "--version"][..]
            };
            if a.iter().any(|w| harmless.contains(&w.text())) {
                return Ok(());
            }
            Err(deny(
                POWER,
                format!("`{}` changes the machine's power state", inv.name),
            ))
        }
        "init" | "telinit" => match a.first() {
            Some(w) => match could_be(w, &["0", "1", "6", "s", "S", "single"]) {
                Some(l) if w.exact().is_some() => Err(deny(
                    POWER,
                    format!("`{} {l}` halts, reboots or drops to single user", inv.name),
                )),
                Some(l) => Err(unjudgeable(w, "runlevel", l)),
                None => Ok(()),
            },
            None => Ok(()),
        },
        "systemctl" => systemctl(a),
        "kexec" => {
            let p = args(a, "", &[], true);
            if p.has('e', "--exec") || p.has('f', "--force") {
                return Err(deny(POWER, "`kexec` boots another kernel".to_string()));
            }
            Ok(())
        }
        "passwd" | "usermod" | "userdel" | "deluser" => account(inv),
        "crontab" => {
            if args(a, "u", &[], true).has('r', "--remove") {
                return Err(deny(
                    CRONTAB,
                    "`crontab -r` deletes the whole crontab (without asking; `-e` is next to `-r`)"
                        .into(),
                ));
            }
            Ok(())
        }
        "docker" => docker(inv, ctx),
        _ => Ok(()),
    }
}

fn device_operands(inv: &Inv, ops: &[&Word], rule: &'static str, need_dev: bool) -> Verdict {
    for w in ops {
        if let Some(d) = disk(w, need_dev)? {
            return Err(deny(
                rule,
                format!("`{}` writes to the disk device `{d}`", inv.name),
            ));
        }
    }
    Ok(())
}

fn rm(a: &[Word], ctx: &Ctx) -> Verdict {
    let p = args(a, "", &[], true);
    if !(p.has('r', "--recursive") || p.has('R', "")) {
        return Ok(());
    }
    for w in p.operands {
        match system_path(w, ctx.cwd.as_deref()) {
            Path::Safe => {}
            Path::Is(s) => {
                return Err(deny(MASS, format!("`rm` recursively deletes {s}")));
            }
            Path::Could(s) => return Err(unjudgeable(w, "path to delete recursively", &s)),
        }
    }
    Ok(())
}

fn find(a: &[Word]) -> Verdict {
    let starts: Vec<&Word> = a
        .iter()
        .skip_while(|w| matches!(w.text(), "-H" | "-L" | "-P") || w.text().starts_with("-O"))
        .take_while(|w| !w.text().starts_with('-') && !matches!(w.text(), "(" | "!"))
        .collect();
    let expr = a
        .iter()
        .skip_while(|w| !w.text().starts_with('-') || matches!(w.text(), "-H" | "-L" | "-P"));
    let mut delete = false;
    let mut filtered = false;
    for w in expr {
        match w.text() {
            "-delete" => delete = true,
            "-depth"
            | "-xdev"
            | "-mount"
            | "-maxdepth"
            | "-mindepth"
            | "-print"
            | "-noleaf"
            | "-daystart"
            | "-follow"
            | "-ignore_readdir_race" => {}
            t if t.starts_with('-') => filtered = true,
            _ => {}
        }
    }
    if !delete || filtered {
        return Ok(());
    }
    for w in starts {
        match system_path(w, Some("/")) {
            Path::Safe => {}
            Path::Is(s) => return Err(deny(MASS, format!("`find -delete` deletes {s}"))),
            Path::Could(s) => return Err(unjudgeable(w, "path to delete recursively", &s)),
        }
    }
    Ok(())
}

fn partitions(inv: &Inv, _ctx: &Ctx) -> Verdict {
    let a = inv.args();
    let (read_only, p) = match inv.name.as_str() {
        "fdisk" => {
            let p = args(a, "bcLoSuUHs", &["--sector-size", "--output"], true);
            (
                p.has('l', "--list")
                    || p.has('V', "--version")
                    || p.has('h', "--help")
                    || p.has('x', "--list-details"),
                p,
            )
        }
        "sfdisk" => {
            let p = args(a, "oN", &["--label", "--output"], true);
            let ro = [
                ('d', "--dump"),
                ('l', "--list"),
                ('s', "--show-size"),
                ('J', "--json"),
                ('V', "--verify"),
                ('g', "--show-geometry"),
                ('F', "--list-free"),
                ('T', "--list-types"),
                ('h', "--help"),
                ('v', "--version"),
            ]
            .iter()
            .any(|(s, l)| p.has(*s, l));
            (ro, p)
        }
        _ => {
            let p = args(a, "a", &["--align"], false);
            if p.has('l', "--list") || p.has('v', "--version") || p.has('h', "--help") {
                return Ok(());
            }
            // parted DEVICE [COMMAND…]: only read-only commands pass.
            const WRITES: &[&str] = &[
                "mklabel",
                "mktable",
                "mkpart",
                "mkpartfs",
                "rm",
                "resizepart",
                "resize",
                "move",
                "cp",
                "name",
                "set",
                "toggle",
                "rescue",
                "disk_set",
                "disk_toggle",
                "type",
            ];
            let writes = p
                .operands
                .iter()
                .skip(1)
                .find_map(|w| could_be(w, WRITES).map(|c| (w, c)));
            let interactive = p.operands.len() <= 1;
            return match (p.operands.first(), writes) {
                (Some(dev), Some((w, c))) => match disk(dev, false)? {
                    Some(d) if w.exact().is_some() => Err(deny(
                        BLOCK_WRITE,
                        format!("`parted {c}` rewrites the partition table of `{d}`"),
                    )),
                    Some(_) => Err(unjudgeable(w, "parted command", c)),
                    None => Ok(()),
                },
                (Some(dev), None) if interactive => match disk(dev, false)? {
                    Some(d) => Err(deny(
                        BLOCK_WRITE,
                        format!(
                            "interactive `parted` on `{d}` can rewrite it; pass read-only commands such as `print`"
                        ),
                    )),
                    None => Ok(()),
                },
                _ => Ok(()),
            };
        }
    };
    if read_only {
        return Ok(());
    }
    for w in &p.operands {
        if let Some(d) = disk(w, false)? {
            return Err(deny(
                BLOCK_WRITE,
                format!(
                    "`{}` can rewrite the partition table of `{d}` (`-l` lists)",
                    inv.name
                ),
            ));
        }
    }
    Ok(())
}

fn systemctl(a: &[Word]) -> Verdict {
    const VERBS: &[&str] = &[
        "reboot",
        "poweroff",
        "halt",
        "kexec",
        "soft-reboot",
        "suspend",
        "hibernate",
        "hybrid-sleep",
        "suspend-then-hibernate",
        "rescue",
        "emergency",
    ];
    const TARGETS: &[&str] = &[
        "reboot.target",
        "poweroff.target",
        "halt.target",
        "kexec.target",
        "rescue.target",
        "emergency.target",
        "runlevel0.target",
        "runlevel1.target",
        "runlevel6.target",
    ];
    let p = args(
        a,
        "HMtpPsnoTj",
        &[
            "--host",
            "--machine",
            "--type",
            "--property",
            "--signal",
            "--lines",
            "--output",
            "--root",
            "--state",
            "--kill-whom",
            "--job-mode",
            "--what",
            "--reboot-argument",
            "--boot-loader-entry",
            "--when",
        ],
        true,
    );
    let Some(verb) = p.operands.first() else {
        return Ok(());
    };
    if let Some(v) = could_be(verb, VERBS) {
        return match verb.exact() {
            Some(_) => Err(deny(
                POWER,
                format!("`systemctl {v}` changes the machine's power state"),
            )),
            None => Err(unjudgeable(verb, "systemctl verb", v)),
        };
    }
    if matches!(
        verb.text(),
        "isolate" | "start" | "restart" | "reload-or-restart" | "try-restart"
    ) {
        for u in p.operands.iter().skip(1) {
            if let Some(t) = could_be(u, TARGETS) {
                return match u.exact() {
                    Some(_) => Err(deny(
                        POWER,
                        format!(
                            "`systemctl {} {t}` changes the machine's power state",
                            verb.text()
                        ),
                    )),
                    None => Err(unjudgeable(u, "unit", t)),
                };
            }
        }
    }
    Ok(())
}

fn account(inv: &Inv) -> Verdict {
    let a = inv.args();
    let (p, target) = match inv.name.as_str() {
        "passwd" => {
            let p = args(
                a,
                "nxwirRP",
                &[
                    "--mindays",
                    "--maxdays",
                    "--warndays",
                    "--inactive",
                    "--repository",
                    "--root",
                    "--prefix",
                ],
                true,
            );
            if p.has('S', "--status") || p.has('h', "--help") {
                return Ok(());
            }
            // Without a user, passwd changes the caller's: root's, for the admin role.
            let t = p.operands.last().copied();
            (p, t)
        }
        "usermod" => {
            let p = args(
                a,
                "cdefgGlpsuRPZvVwW",
                &[
                    "--comment",
                    "--home",
                    "--expiredate",
                    "--inactive",
                    "--gid",
                    "--groups",
                    "--login",
                    "--password",
                    "--shell",
                    "--uid",
                    "--root",
                    "--prefix",
                    "--selinux-user",
                    "--add-subuids",
                    "--del-subuids",
                    "--add-subgids",
                    "--del-subgids",
                ],
                true,
            );
            // Adding root to groups (`usermod -aG docker root`) does not break it.
            let breaks = p.opts.iter().any(|(o, _)| {
                !matches!(
                    o.text(),
                    "-a" | "-G" | "-aG" | "-Ga" | "--append" | "--groups" | "-c" | "--comment"
                )
            });
            if !breaks {
                return Ok(());
            }
            let t = p.operands.last().copied();
            (p, t)
        }
        _ => {
            let p = args(a, "R", &["--root", "--prefix"], true);
            let t = p.operands.first().copied();
            (p, t)
        }
    };
    let _ = p;
    match target {
        None if inv.name == "passwd" => Err(deny(
            ACCOUNT,
            "`passwd` without a user changes root's password here".into(),
        )),
        None => Ok(()),
        Some(w) => match (w.exact(), could_be(w, &["root"])) {
            (Some(_), Some(_)) => Err(deny(
                ACCOUNT,
                format!("`{}` changes the root account", inv.name),
            )),
            (None, Some(_)) => Err(unjudgeable(w, "user", "root")),
            _ => Ok(()),
        },
    }
}

// ============================================================================ docker

fn docker(inv: &Inv, ctx: &Ctx) -> Verdict {
    let a = inv.args();
    // Global options before the subcommand.
    let mut i = 0;
    while let Some(w) = a.get(i) {
        let t = w.text();
        if !t.starts_with('-') {
            break;
        }
        i += if matches!(
            t,
            "-H" | "--host"
                | "-c"
                | "--context"
                | "-l"
                | "--log-level"
                | "--config"
                | "--tlscacert"
                | "--tlscert"
                | "--tlskey"
        ) {
            2
        } else {
            1
        };
    }
    let rest = a.get(i..).unwrap_or(&[]);
    let word = |k: usize| rest.get(k).map(Word::text).unwrap_or("");
    let (sub, args_from) = match (word(0), word(1)) {
        ("container", s) => (format!("container {s}"), 2),
        ("system" | "volume" | "image", s) => (format!("{} {s}", word(0)), 2),
        (s, _) => (s.to_string(), 1),
    };
    let tail = rest.get(args_from..).unwrap_or(&[]);
    match sub.as_str() {
        "system prune" => {
            if tail
                .iter()
                .any(|w| w.text() == "--volumes" || w.text() == "--volumes=true")
            {
                return Err(deny(DOCKER_VOLUMES, "`docker system prune --volumes` deletes the data of every volume no running container uses".into()));
            }
            Ok(())
        }
        "volume prune" => {
            if args(tail, "", &["--filter"], true).has('a', "--all") {
                return Err(deny(
                    DOCKER_VOLUMES,
                    "`docker volume prune --all` deletes every volume no running container uses"
                        .into(),
                ));
            }
            Ok(())
        }
        "rm" | "container rm" | "container remove" | "volume rm" | "volume remove" => {
            let listing: &[&str] = if sub.starts_with("volume") {
                &["volume ls", "volume list"]
            } else {
                &["ps", "container ls", "container list", "container ps"]
            };
            let what = if sub.starts_with("volume") {
                "volume"
            } else {
                "container"
            };
            let from_list = |range: std::ops::Range<usize>| {
                let progs = ctx.programs(range);
                progs.len() == 1
                    && progs.iter().all(|(_, invs)| {
                        invs.last()
                            .is_some_and(|i| i.name == "docker" && unfiltered_listing(i, listing))
                    })
            };
            let all = tail
                .iter()
                .any(|w| !w.substitutions.is_empty() && from_list(w.substitutions.clone()))
                || (inv.via_xargs && ctx.cmd.upstream.clone().is_some_and(from_list));
            if all {
                return Err(deny(
                    DOCKER_REMOVE_ALL,
                    format!(
                        "this removes every {what} (`docker {sub}` of an unfiltered `docker {}`)",
                        listing[0]
                    ),
                ));
            }
            Ok(())
        }
        "run" | "create" | "container run" | "container create" => docker_run(tail),
        _ => Ok(()),
    }
}

/// Whether a docker invocation lists containers (or volumes) without a filter.
fn unfiltered_listing(inv: &Inv, listing: &[&str]) -> bool {
    let words: Vec<&str> = inv
        .args()
        .iter()
        .map(Word::text)
        .filter(|t| !t.starts_with('-'))
        .collect();
    let sub = words.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    let sub1 = words.first().copied().unwrap_or("");
    (listing.contains(&sub.as_str()) || listing.contains(&sub1))
        && !inv.args().iter().any(|w| {
            let t = w.text();
            t == "-f"
                || t.starts_with("--filter")
                || (t.starts_with('-') && !t.starts_with("--") && t.contains('f'))
        })
}

fn docker_run(a: &[Word]) -> Verdict {
    const BOOL_SHORT: &str = "ditPq";
    const BOOL_LONG: &[&str] = &[
        "--rm",
        "--init",
        "--read-only",
        "--detach",
        "--interactive",
        "--tty",
        "--publish-all",
        "--no-healthcheck",
        "--oom-kill-disable",
        "--help",
        "--quiet",
        "--disable-content-trust",
        "--use-api-socket",
    ];
    let host_root = |spec: &Word, key_values: bool| -> Verdict {
        let source = if key_values {
            // type=bind,source=/,target=/x
            let text = spec.pattern.clone();
            let mut src = None;
            let mut bind = false;
            for kv in text.split(',') {
                match kv.split_once('=') {
                    Some(("type", t)) => bind = t == "bind" || t.contains(ANY),
                    Some(("source" | "src", s)) => src = Some(s.to_string()),
                    _ => {}
                }
            }
            if !bind {
                return Ok(());
            }
            src
        } else {
            spec.pattern.split(':').next().map(str::to_string)
        };
        let Some(src) = source else { return Ok(()) };
        if src.contains(ANY) || src.contains(['*', '?', '[']) {
            if shell::matches(&src, "/") {
                return Err(unjudgeable(spec, "bind-mount source", "/"));
            }
        } else if src.starts_with('/') && normalize(&src) == "/" {
            return Err(deny(
                DOCKER_HOST,
                format!(
                    "`{}` mounts the host's root filesystem into the container",
                    shorten(&spec.raw)
                ),
            ));
        }
        Ok(())
    };
    let mut i = 0;
    while let Some(w) = a.get(i) {
        i += 1;
        let t = w.text();
        if !t.starts_with('-') || t == "-" {
            break;
        }
        if t == "--privileged" || t == "--privileged=true" {
            return Err(deny(
                DOCKER_HOST,
                "`--privileged` gives the container the whole host".into(),
            ));
        }
        if let Some(long) = t.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let value = if inline {
                after_prefix(w, &format!("--{name}="))
            } else if BOOL_LONG.contains(&t) {
                None
            } else {
                i += 1;
                a.get(i - 1).cloned()
            };
            if let Some(v) = value {
                match name {
                    "volume" => host_root(&v, false)?,
                    "mount" => host_root(&v, true)?,
                    _ => {}
                }
            }
            continue;
        }
        let cluster: Vec<char> = t.chars().skip(1).collect();
        if let Some(k) = cluster.iter().position(|c| !BOOL_SHORT.contains(*c)) {
            let value = if k + 1 < cluster.len() {
                let prefix: String = std::iter::once('-')
                    .chain(cluster.iter().take(k + 1).copied())
                    .collect();
                after_prefix(w, &prefix)
            } else {
                i += 1;
                a.get(i - 1).cloned()
            };
            if cluster.get(k) == Some(&'v')
                && let Some(v) = value
            {
                host_root(&v, false)?;
            }
        }
    }
    Ok(())
}

// ============================================================================ nested code and downloads

fn shell_dialect(name: &str) -> Option<Dialect> {
    match name {
        "sh" | "dash" | "ash" => Some(Dialect::Dash),
        "bash" | "zsh" | "ksh" | "mksh" => Some(Dialect::Bash),
        _ => None,
    }
}

fn is_interpreter(name: &str) -> bool {
    ["python", "perl", "ruby", "node", "nodejs", "php"]
        .iter()
        .any(|p| {
            name.starts_with(p)
                && name[p.len()..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.')
        })
}

fn download(inv: &Inv, via: &str, from: &str) -> Deny {
    deny(
        DOWNLOAD,
        format!(
            "`{}` runs code downloaded by `{from}` ({via}); download it to a file, read it, then run it",
            inv.name
        ),
    )
}

/// Shell code a program runs that can be read statically (`sh -c CODE`, `eval …`, a here-document into a shell), and
/// the download-into-a-shell rule.
pub(crate) fn nested_code(inv: &Inv, ctx: &Ctx) -> Result<Vec<(String, Dialect)>, Deny> {
    let a = inv.args();
    let procsub = |ws: &[Word]| -> Result<(), Deny> {
        for w in ws.iter().filter(|w| w.process_substitution) {
            if let Some(d) = ctx.downloader(w.substitutions.clone()) {
                return Err(download(inv, "a process substitution", &d));
            }
        }
        Ok(())
    };
    let piped = |reads_stdin: bool| -> Result<(), Deny> {
        if reads_stdin && let Some(d) = ctx.cmd.upstream.clone().and_then(|r| ctx.downloader(r)) {
            return Err(download(inv, "a pipe", &d));
        }
        Ok(())
    };
    let substituted = |w: &Word| -> Result<(), Deny> {
        match ctx.downloader(w.substitutions.clone()) {
            Some(d) => Err(download(inv, "a command substitution", &d)),
            None => Ok(()),
        }
    };
    let name = inv.name.as_str();
    if let Some(dialect) = shell_dialect(name) {
        let mut code_flag = false;
        let mut i = 0;
        while let Some(w) = a.get(i) {
            let t = w.text();
            if t == "--" || !(t.starts_with('-') || t.starts_with('+')) || t == "-" {
                if t == "--" {
                    i += 1;
                }
                break;
            }
            code_flag |= !t.starts_with("--") && t.contains('c');
            i += if matches!(t, "-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file") {
                2
            } else {
                1
            };
        }
        let operand = a.get(i);
        if code_flag {
            let Some(code) = operand else {
                return Ok(Vec::new());
            };
            substituted(code)?;
            return Ok(vec![(code.approx.clone(), dialect)]);
        }
        procsub(a)?;
        let stdin = operand.is_none_or(|w| matches!(w.text(), "-" | "/dev/stdin"))
            || a.iter().take(i).any(|w| {
                w.text().starts_with('-') && !w.text().starts_with("--") && w.text().contains('s')
            });
        piped(stdin)?;
        if stdin && let Some(text) = super::rails::stdin_text(ctx.script, ctx.cmd) {
            return Ok(vec![(text, dialect)]);
        }
        return Ok(Vec::new());
    }
    match name {
        "eval" => {
            for w in a {
                substituted(w)?;
            }
            let code = a
                .iter()
                .map(|w| w.approx.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Ok(vec![(code, Dialect::Dash)])
        }
        "." | "source" => {
            procsub(a)?;
            piped(a.first().is_some_and(|w| w.text() == "/dev/stdin"))?;
            Ok(Vec::new())
        }
        "env" => {
            // `env -S 'STRING'`: the string is split into a command line.
            let p = args(a, "uCS", &["--unset", "--chdir", "--split-string"], false);
            Ok(p.value('S', "--split-string")
                .map(|w| (w.approx.clone(), Dialect::Dash))
                .into_iter()
                .collect())
        }
        n if is_interpreter(n) => {
            procsub(a)?;
            let code_opt = a
                .iter()
                .take_while(|w| w.text().starts_with('-') && w.text() != "-")
                .any(|w| {
                    let t = w.text();
                    !t.starts_with("--") && t.contains(['c', 'e', 'm', 'E', 'r'])
                });
            let first_operand = a
                .iter()
                .find(|w| !w.text().starts_with('-') || w.text() == "-");
            piped(!code_opt && first_operand.is_none_or(|w| w.text() == "-"))?;
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normalize("//usr/../etc/./"), "/etc");
        assert!(is_disk("/dev/nvme0n1") && is_disk("/dev/sda1") && is_disk("/dev/mapper/root"));
        assert!(!is_disk("/dev/null") && !is_disk("/dev/sd") && !is_disk("/dev/mapper/control"));
        let p = |s: &str| {
            let w =
                shell::parse(&format!("x {s}")).unwrap_or_default().commands[0].words[1].clone();
            match system_path(&w, Some("/")) {
                Path::Safe => "safe".to_string(),
                Path::Is(s) => format!("is {s}"),
                Path::Could(s) => format!("could {s}"),
            }
        };
        assert_eq!(p("/"), "is /");
        assert_eq!(p("/*"), "is /");
        assert_eq!(p("/etc/*"), "is everything in /etc");
        assert_eq!(p("/e*"), "is /etc");
        assert_eq!(p("*"), "is /");
        assert_eq!(p("/tmp/build-*"), "safe");
        assert_eq!(p("/var/log/*.gz"), "safe");
        for could in ["/$X", "/usr/$X", "\"$D\"/*", "$X"] {
            assert!(p(could).starts_with("could "), "{could}");
        }
        assert_eq!(p("~/cache"), "safe");
        assert_eq!(p("'/etc/*'"), "safe");
    }

    #[test]
    fn getopt_style_args() {
        let s = shell::parse("rm / -rf -- -x").unwrap_or_default();
        let p = args(&s.commands[0].words[1..], "", &[], true);
        assert!(p.has('r', "--recursive"));
        assert_eq!(
            p.operands.iter().map(|w| w.text()).collect::<Vec<_>>(),
            ["/", "-x"]
        );
        let s = shell::parse("rm --rec x").unwrap_or_default();
        assert!(args(&s.commands[0].words[1..], "", &[], true).has('r', "--recursive"));
    }
}
