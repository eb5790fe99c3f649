//! The kernel sandbox of a command: the launcher that `dtma sandbox-exec` runs before the shell.
//!
//! The agent spawns `/proc/self/exe sandbox-exec --profile P [--user U] [--protect PATH]... --
//! /bin/sh -c CMD`; [`exec`] then, in this process and in this order: sets `no_new_privs`,
//! empties the capability bounding set (while it still may), switches to the profile's user and
//! groups (which leaves no capabilities for the unprivileged profiles; checked), applies a
//! Landlock ruleset and a seccomp filter, and `exec`s the shell. The pid stays the same, so the
//! engine's process group, timeouts and cancel are those of the shell.
//!
//! The agent's own files are masked, not carved out of the Landlock rules: before it drops its
//! privileges the launcher enters a private mount namespace (no propagation back to the host)
//! and mounts over each protected path: an empty read-only tmpfs over a directory, `/dev/null`
//! on a read-only `nodev` bind over a file (opening it fails with EACCES). "Hidden" paths (the
//! credentials, token files, config file, audit log directory; for the unprivileged profiles also
//! `/etc/shadow`, `/etc/gshadow`, `/root`, `/run/credentials`) can be neither read nor written;
//! "read-only" paths (the agent's binary and its systemd unit, which are not secret) can be read
//! and run but not changed, moved or deleted (EROFS/EBUSY). A Landlock domain may not mount or
//! unmount, so a command cannot lift a mask; the rest of the filesystem is untouched, so `ls /etc`
//! and `sed -i /etc/hosts` work. The agent's `/proc/<pid>/mem`, `fd/`, `root` and `cwd` are
//! behind the kernel's ptrace check, which Landlock denies towards processes outside the domain,
//! whatever the capabilities; `environ` is not, so the agent keeps no secret there
//! (`config::handoff`). Masking needs root: an agent that is not root protects nothing from
//! admin commands and cannot run the other profiles (listed by [`assess`]).
//!
//! **Invariant:** nothing here imports an adapter or a service; a profile whose user does not
//! exist is refused, never run as root.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The subcommand's name (`dtma sandbox-exec ...`).
pub const SUBCOMMAND: &str = "sandbox-exec";

use crate::config::{
    DEFAULT_DIAGNOSTICS_USER as DIAGNOSTICS_USER, DEFAULT_OPERATOR_USER as OPERATOR_USER,
};

/// Paths the unprivileged profiles may neither read nor write, whatever the configuration.
const ALWAYS_HIDDEN: &[&str] = &["/etc/shadow", "/etc/gshadow", "/root", "/run/credentials"];
/// The agent's systemd unit where the package or an operator installs it: read-only to commands.
const UNITS: &[&str] = &[
    "/etc/systemd/system/dtma.service",
    "/etc/systemd/system/dtma.service.d",
    "/usr/lib/systemd/system/dtma.service",
    "/lib/systemd/system/dtma.service",
];
/// Scratch: the only places the unprivileged profiles may write.
const SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];
/// Character devices every shell writes to (`2>/dev/null`).
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];
/// The Landlock ABI whose rights the rulesets handle: V5 (truncate, device ioctls); signal and
/// abstract-socket scoping (V6) are added where the kernel has them.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Exit codes of the launcher when it refuses to run the command (sysexits.h).
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_NO_USER: u8 = 67;
pub const EXIT_SANDBOX: u8 = 71;

/// One profile per role (the wire's names: `diagnostics`, `operator`, `admin`).
pub use dtma_protocol::SandboxProfile as Profile;

/// The profile named `s`.
pub fn parse_profile(s: &str) -> Option<Profile> {
    [Profile::Diagnostics, Profile::Operator, Profile::Admin]
        .into_iter()
        .find(|p| p.name() == s)
}

/// The profiles that switch to an unprivileged user (all but `admin`).
fn unprivileged(profile: Profile) -> bool {
    profile != Profile::Admin
}

/// Why the launcher refused to run the command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "usage: dtma sandbox-exec --profile <diagnostics|operator|admin> [--user USER] [--protect PATH]... [--writable PATH]... [--accept-no-landlock] -- PROGRAM [ARG]...: {0}"
    )]
    Usage(String),
    #[error(
        "profile `{profile}`: no user named `{user}` (the package creates it; never run as root instead)"
    )]
    NoUser { profile: &'static str, user: String },
    #[error(
        "profile `{profile}` needs Landlock, which this kernel lacks ({status}); set DTMA_SANDBOX_ACCEPT_NO_LANDLOCK=true to accept the weaker sandbox"
    )]
    NoLandlock {
        profile: &'static str,
        status: String,
    },
    #[error("sandbox setup failed at {step}: {reason}")]
    Setup { step: &'static str, reason: String },
    #[error("cannot exec the command: {0}")]
    Exec(std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::NoUser { .. } => EXIT_NO_USER,
            Error::NoLandlock { .. } | Error::Setup { .. } => EXIT_SANDBOX,
            // As a shell does for a program it cannot run.
            Error::Exec(_) => 126,
        }
    }
}

fn setup(step: &'static str) -> impl FnOnce(String) -> Error {
    move |reason| Error::Setup { step, reason }
}

/// The launcher's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub profile: Profile,
    /// The profile's user (ignored by `admin`); `None`: the default user of the profile.
    pub user: Option<String>,
    /// Paths beyond [`ALWAYS_HIDDEN`] that the command may neither read nor write.
    pub protect: Vec<PathBuf>,
    /// Paths an unprivileged profile may write besides [`SCRATCH`] (ignored by `admin`).
    pub writable: Vec<PathBuf>,
    pub accept_no_landlock: bool,
    pub program: Vec<OsString>,
}

impl Launch {
    /// Parse the arguments after `sandbox-exec`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Launch, Error> {
        let mut args = args.into_iter();
        let (mut profile, mut user, mut accept) = (None, None, false);
        let (mut protect, mut writable) = (Vec::new(), Vec::new());
        let value = |args: &mut dyn Iterator<Item = OsString>, flag: &str| {
            args.next()
                .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
        };
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--") => break,
                Some("--profile") => {
                    let v = value(&mut args, "--profile")?;
                    profile = Some(
                        v.to_str()
                            .and_then(parse_profile)
                            .ok_or_else(|| Error::Usage(format!("unknown profile {v:?}")))?,
                    );
                }
                Some("--user") => {
                    let v = value(&mut args, "--user")?;
                    let v = v
                        .into_string()
                        .map_err(|v| Error::Usage(format!("user {v:?} is not UTF-8")))?;
                    user = Some(v);
                }
                Some("--protect") => protect.push(PathBuf::from(value(&mut args, "--protect")?)),
                Some("--writable") => {
                    writable.push(PathBuf::from(value(&mut args, "--writable")?));
                }
                Some("--accept-no-landlock") => accept = true,
                _ => return Err(Error::Usage(format!("unexpected argument {arg:?}"))),
            }
        }
        let program: Vec<OsString> = args.collect();
        let profile = profile.ok_or_else(|| Error::Usage("--profile is required".into()))?;
        if program.is_empty() {
            return Err(Error::Usage("no program after `--`".into()));
        }
        Ok(Launch {
            profile,
            user,
            protect,
            writable,
            accept_no_landlock: accept,
            program,
        })
    }

    /// The arguments that [`Launch::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![SUBCOMMAND.into(), "--profile".into()];
        a.push(self.profile.name().into());
        if let Some(u) = &self.user {
            a.extend(["--user".into(), u.into()]);
        }
        for p in &self.protect {
            a.extend(["--protect".into(), p.clone().into_os_string()]);
        }
        for p in &self.writable {
            a.extend(["--writable".into(), p.clone().into_os_string()]);
        }
        if self.accept_no_landlock {
            a.push("--accept-no-landlock".into());
        }
        a.push("--".into());
        a.extend(self.program.iter().cloned());
        a
    }
}

/// Apply the profile to this process and exec the program; returns only on failure.
pub fn exec(launch: &Launch) -> Error {
    match confine(launch) {
        Ok(()) => {
            let mut cmd = std::process::Command::new(&launch.program[0]);
            cmd.args(&launch.program[1..]);
            Error::Exec(cmd.exec())
        }
        Err(e) => e,
    }
}

fn confine(launch: &Launch) -> Result<(), Error> {
    let profile = launch.profile;
    // Resolve everything that needs the user database or the filesystem before the switch.
    let user = if unprivileged(profile) {
        let name = launch.user.clone().unwrap_or_else(|| {
            match profile {
                Profile::Operator => OPERATOR_USER,
                _ => DIAGNOSTICS_USER,
            }
            .to_owned()
        });
        match nix::unistd::User::from_name(&name) {
            Ok(Some(u)) if u.uid.is_root() => {
                return Err(Error::Usage(format!("user `{name}` is root")));
            }
            Ok(Some(u)) => Some(u),
            _ => {
                return Err(Error::NoUser {
                    profile: profile.name(),
                    user: name,
                });
            }
        }
    } else {
        None
    };
    // admin keeps the machine's secret stores (it administers them) and is denied only the
    // agent's own files.
    let mut hidden: Vec<PathBuf> = match unprivileged(profile) {
        true => ALWAYS_HIDDEN.iter().map(PathBuf::from).collect(),
        false => Vec::new(),
    };
    hidden.extend(launch.protect.iter().cloned());
    // The agent's binaries: this launcher, and the agent and launcher beside it.
    let mut read_only: Vec<PathBuf> = UNITS.iter().map(PathBuf::from).collect();
    if let Ok(me) = std::env::current_exe() {
        read_only.extend(["dtma", "dtma-sandbox"].map(|name| me.with_file_name(name)));
        read_only.push(me);
    }
    let hidden = canonical(&hidden);
    let read_only: Vec<PathBuf> = canonical(&read_only)
        .into_iter()
        .filter(|p| !hidden.iter().any(|h| p.starts_with(h)))
        .collect();
    // Needs CAP_SYS_ADMIN: before the user switch, and before Landlock forbids mounts. Without
    // it (a container with Docker's default capabilities) the files keep only their
    // permissions, as the agent said at start (`assess`).
    if can_mask() {
        mask(&hidden, &read_only)?;
    }

    nix::sys::prctl::set_no_new_privs().map_err(|e| setup("no_new_privs")(e.to_string()))?;
    if let Some(user) = &user {
        // Emptying the bounding set needs CAP_SETPCAP: before the user switch.
        caps::clear(None, caps::CapSet::Bounding)
            .map_err(|e| setup("capability bounding set")(e.to_string()))?;
        let cname = std::ffi::CString::new(user.name.as_bytes())
            .map_err(|e| setup("user switch")(e.to_string()))?;
        nix::unistd::initgroups(&cname, user.gid)
            .map_err(|e| setup("supplementary groups")(e.to_string()))?;
        nix::unistd::setresgid(user.gid, user.gid, user.gid)
            .map_err(|e| setup("group switch")(e.to_string()))?;
        nix::unistd::setresuid(user.uid, user.uid, user.uid)
            .map_err(|e| setup("user switch")(e.to_string()))?;
        for set in [
            caps::CapSet::Ambient,
            caps::CapSet::Inheritable,
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
        ] {
            caps::clear(None, set).map_err(|e| setup("capabilities")(e.to_string()))?;
        }
        if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
            return Err(setup("user switch")("still root".into()));
        }
    }

    let status = landlock(profile, &launch.writable)?;
    if status == RulesetStatus::NotEnforced && unprivileged(profile) && !launch.accept_no_landlock {
        return Err(Error::NoLandlock {
            profile: profile.name(),
            status: describe(landlock_status()),
        });
    }

    for program in seccomp_filters(profile)? {
        seccompiler::apply_filter(&program).map_err(|e| setup("seccomp")(e.to_string()))?;
    }
    Ok(())
}

/// Protected paths as the kernel resolves them; paths that do not exist protect nothing.
fn canonical(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p != Path::new("/"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Enter a private mount namespace and mask `hidden` (unreadable, unwritable) and `read_only`
/// paths (see the module doc). Paths are canonical and exist.
fn mask(hidden: &[PathBuf], read_only: &[PathBuf]) -> Result<(), Error> {
    use nix::mount::{MsFlags, mount};
    let none: Option<&str> = None;
    let err = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |e: nix::errno::Errno| setup("mount namespace")(format!("{what}: {e}"))
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| setup("mount namespace")(format!("unshare: {e}")))?;
    // Nothing mounted here propagates back to the host's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(err("make private", Path::new("/")))?;
    let locked = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for path in hidden {
        if path.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                locked,
                Some("size=4k,mode=000"),
            )
            .map_err(err("hide", path))?;
        } else {
            mount(Some("/dev/null"), path, none, MsFlags::MS_BIND, none)
                .map_err(err("hide", path))?;
            mount(
                none,
                path,
                none,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | locked,
                none,
            )
            .map_err(err("lock", path))?;
        }
    }
    for path in read_only {
        mount(
            Some(path),
            path,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(err("bind", path))?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(none, path, none, flags, none).map_err(err("make read-only", path))?;
    }
    Ok(())
}

fn landlock(profile: Profile, writable: &[PathBuf]) -> Result<RulesetStatus, Error> {
    let e = |e: landlock::RulesetError| setup("landlock")(e.to_string());
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let mut ruleset = Ruleset::default().handle_access(all).map_err(e)?;
    if unprivileged(profile) {
        // Scoping is best effort: a kernel before ABI 6 keeps signals and abstract sockets open.
        ruleset = ruleset
            .set_compatibility(CompatLevel::BestEffort)
            .scope(Scope::from_all(LANDLOCK_ABI))
            .map_err(e)?;
    }
    let mut created: RulesetCreated = ruleset.create().map_err(e)?;
    let read = AccessFs::from_read(LANDLOCK_ABI) | AccessFs::IoctlDev;
    let mut rules: Vec<(&Path, landlock::BitFlags<AccessFs>)> = Vec::new();
    if unprivileged(profile) {
        rules.push((Path::new("/"), read));
        rules.extend(SCRATCH.iter().map(|p| (Path::new(p), all)));
        rules.extend(writable.iter().map(|p| (p.as_path(), all)));
        let file = AccessFs::from_file(LANDLOCK_ABI);
        rules.extend(DEVICES.iter().map(|p| (Path::new(p), file)));
    } else {
        // Everything: admin's limits are the masks, the ptrace rule of the domain, and seccomp.
        rules.push((Path::new("/"), all));
    }
    for (path, access) in rules {
        // A path this machine lacks (a scratch directory, a configured one) grants nothing.
        let Ok(fd) = PathFd::new(path) else { continue };
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(LANDLOCK_ABI)
        };
        created = created.add_rule(PathBeneath::new(fd, access)).map_err(e)?;
    }
    let status = created.restrict_self().map_err(e)?;
    Ok(status.ruleset)
}

/// Denied syscalls: (filter's errno, syscalls; an empty rule list denies unconditionally).
fn seccomp_filters(profile: Profile) -> Result<Vec<BpfProgram>, Error> {
    use nix::libc;
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| setup("seccomp")(format!("{e:?}")))?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_reboot,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    let mut programs = Vec::new();
    let compile = |rules, errno: i32| -> Result<BpfProgram, Error> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| setup("seccomp")(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| setup("seccomp")(e.to_string()))
    };
    if unprivileged(profile) {
        deny.extend(
            [
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_swapon,
                libc::SYS_swapoff,
                libc::SYS_ptrace,
                libc::SYS_bpf,
                libc::SYS_perf_event_open,
                libc::SYS_keyctl,
                libc::SYS_add_key,
                libc::SYS_request_key,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_pivot_root,
                libc::SYS_open_tree,
                libc::SYS_move_mount,
                libc::SYS_fsopen,
                libc::SYS_fsmount,
            ]
            .into_iter()
            .map(|n| (n, Vec::new())),
        );
        // clone(2) with any namespace flag. clone3's flags sit in a struct that seccomp cannot
        // read: clone3 answers ENOSYS (below) and the C libraries fall back to clone(2).
        let namespaces: u64 = (libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET) as u64;
        let mut clone = Vec::new();
        for bit in (0..64).map(|b| 1u64 << b).filter(|b| namespaces & b != 0) {
            let cond =
                SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(bit), bit)
                    .map_err(|e| setup("seccomp")(e.to_string()))?;
            clone.push(SeccompRule::new(vec![cond]).map_err(|e| setup("seccomp")(e.to_string()))?);
        }
        deny.insert(libc::SYS_clone, clone);
        programs.push(compile(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            libc::ENOSYS,
        )?);
    }
    programs.push(compile(deny, libc::EPERM)?);
    Ok(programs)
}

/// What this kernel offers, for the agent's start-up log: the Landlock ABI, or why there is none.
pub fn landlock_status() -> LandlockStatus {
    // Restricting a throw-away thread is the crate's only way to report the kernel's ABI; the
    // ruleset handles one right and the thread ends right after, so the agent is not confined.
    let probe = std::thread::spawn(|| {
        Ruleset::default()
            .handle_access(AccessFs::Execute)
            .and_then(|r| r.create())
            .and_then(|r| r.restrict_self())
            .map(|s| s.landlock)
    });
    match probe.join() {
        Ok(Ok(status)) => status,
        _ => LandlockStatus::NotImplemented,
    }
}

/// What is enforced on this host: the wire shape (`hello`, `status`, `GET /status`).
pub use dtma_protocol::{Sandbox as Enforcement, SandboxLevel as Level, SandboxMode as Mode};

/// The oldest Landlock ABI the unprivileged profiles take as a sandbox at all. Below it (or
/// without Landlock) the agent refuses diagnostics and operator commands unless
/// `DTMA_SANDBOX_ACCEPT_NO_LANDLOCK=true`. Newer rights missing from an older ABI are listed as
/// degradations (see [`assess`]).
pub const REQUIRED_LANDLOCK_ABI: u8 = 1;

/// The kernel's Landlock ABI (`None`: no Landlock, or not enabled). One probe; call it once.
pub fn detected_abi() -> Option<u8> {
    match landlock_status() {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => u8::try_from(kernel_abi.unwrap_or(effective_abi as i32)).ok(),
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => None,
    }
}

/// What the profiles enforce with `config` on a kernel with Landlock ABI `abi` (from
/// [`detected_abi`]; a parameter so tests can feed any kernel), in an agent with `host`'s
/// privileges ([`Privileges::of_this_process`]). Pure: no I/O.
///
/// Fails closed per profile, not for the agent: the unprivileged profiles are refused
/// (`refused_profiles`) when the sandbox is off, or when the kernel has no usable Landlock and
/// the configuration does not accept the weaker sandbox; `admin` always runs (it is root either
/// way), with what the kernel offers, and each protection that does not hold is listed.
pub fn assess(
    config: &crate::config::SandboxConfig,
    abi: Option<u8>,
    host: Privileges,
) -> Enforcement {
    let unprivileged = vec![Profile::Diagnostics, Profile::Operator];
    if !config.enforce {
        return Enforcement {
            mode: Mode::Off,
            landlock_abi: abi,
            level: Level::None,
            degradations: vec![
                "DTMA_SANDBOX=off: admin commands run unconfined, as the agent's user (only the shell policy's guard rails apply); diagnostics and operator commands are refused".into(),
            ],
            refused_profiles: unprivileged,
        };
    }
    let mut degradations = Vec::new();
    let mut refused_profiles = Vec::new();
    match abi.filter(|a| *a >= REQUIRED_LANDLOCK_ABI) {
        None => {
            let problem = match abi {
                None => "the kernel has no Landlock (or it is not enabled)".to_owned(),
                Some(a) => format!(
                    "the kernel's Landlock ABI {a} is older than the {REQUIRED_LANDLOCK_ABI} the profiles need"
                ),
            };
            if config.accept_no_landlock {
                degradations.push(format!(
                    "{problem} (accepted by DTMA_SANDBOX_ACCEPT_NO_LANDLOCK): no filesystem rules; diagnostics and operator commands can write wherever their user may"
                ));
            } else {
                degradations.push(format!(
                    "{problem}: diagnostics and operator commands are refused (DTMA_SANDBOX_ACCEPT_NO_LANDLOCK=true runs them with their user, masks and seccomp only)"
                ));
                refused_profiles = unprivileged;
            }
            degradations.push(
                "without Landlock an admin command can lift the masks over the agent's files (mount is not denied to admin) and trace processes outside its sandbox".to_owned(),
            );
        }
        Some(a) => {
            // What each ABI added to the rights these rulesets handle (best effort below it).
            for (since, lost) in [
                (3, "truncating files is not restricted (Landlock ABI 3)"),
                (5, "ioctl on devices is not restricted (Landlock ABI 5)"),
                (
                    6,
                    "signals and abstract unix sockets are not scoped to the sandbox (Landlock ABI 6)",
                ),
            ] {
                if a < since {
                    degradations.push(lost.to_owned());
                }
            }
        }
    }
    if host.root && !host.can_mask {
        degradations.push(
            "the agent lacks CAP_SYS_ADMIN (in a container?): it cannot mask its own files, which only their permissions protect; admin commands can read and write them".to_owned(),
        );
    }
    if !host.root {
        degradations.push(
            "the agent is not root: it cannot switch users or mask its own files, so diagnostics and operator commands are refused and admin commands can read and write the agent's files".to_owned(),
        );
        refused_profiles = vec![Profile::Diagnostics, Profile::Operator];
    }
    Enforcement {
        mode: Mode::Enforce,
        landlock_abi: abi,
        level: if degradations.is_empty() {
            Level::Full
        } else {
            Level::Partial
        },
        degradations,
        refused_profiles,
    }
}

/// What the agent's process may do that the sandbox relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// Root: may switch users (the unprivileged profiles need it).
    pub root: bool,
    /// Has CAP_SYS_ADMIN: may mask the agent's files in a mount namespace. A container started
    /// with Docker's default capabilities lacks it.
    pub can_mask: bool,
}

impl Privileges {
    /// This process's (and so the launcher's: it inherits them).
    pub fn of_this_process() -> Privileges {
        Privileges {
            root: nix::unistd::geteuid().is_root(),
            can_mask: can_mask(),
        }
    }
}

/// Whether this process may enter a mount namespace and mount (CAP_SYS_ADMIN).
fn can_mask() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

/// Whether commands of `profile` are refused on this host (see [`assess`]).
pub fn refuses(e: &Enforcement, profile: Profile) -> bool {
    e.refused_profiles.contains(&profile)
}

/// The enforcement level an audit record names: `off` when commands are not sandboxed.
pub fn audit_level(e: &Enforcement) -> &'static str {
    match (e.mode, e.level) {
        (Mode::Off, _) | (_, Level::None) => "off",
        (Mode::Enforce, level) => level.name(),
    }
}

/// A one-line description of a [`LandlockStatus`].
pub fn describe(status: LandlockStatus) -> String {
    match status {
        LandlockStatus::NotEnabled => {
            "Landlock is built in but not enabled (boot with lsm=...,landlock)".into()
        }
        LandlockStatus::NotImplemented => "the kernel has no Landlock".into(),
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => match kernel_abi {
            Some(k) => format!("Landlock ABI {k} (used as ABI {})", effective_abi as i32),
            None => format!("Landlock ABI {}", effective_abi as i32),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Privileges = Privileges {
        root: true,
        can_mask: true,
    };

    fn enforcing(accept_no_landlock: bool) -> crate::config::SandboxConfig {
        crate::config::SandboxConfig {
            enforce: true,
            accept_no_landlock,
            ..Default::default()
        }
    }

    #[test]
    fn enforce_without_landlock_refuses_the_unprivileged_profiles_unless_accepted() {
        let e = assess(&enforcing(false), None, FULL);
        assert_eq!((e.mode, e.level), (Mode::Enforce, Level::Partial));
        assert!(refuses(&e, Profile::Diagnostics) && refuses(&e, Profile::Operator));
        assert!(!refuses(&e, Profile::Admin));
        assert!(e.degradations[0].contains("no Landlock"), "{e:?}");
        assert!(
            e.degradations[0].contains("DTMA_SANDBOX_ACCEPT_NO_LANDLOCK"),
            "{e:?}"
        );
        let weak = assess(&enforcing(true), None, FULL);
        assert_eq!((weak.mode, weak.level), (Mode::Enforce, Level::Partial));
        assert!(weak.refused_profiles.is_empty(), "{weak:?}");
        assert!(
            weak.degradations[0].contains("no filesystem rules"),
            "{weak:?}"
        );
        assert_eq!(audit_level(&weak), "partial");
    }

    #[test]
    fn older_abis_are_partial_with_each_missing_right_listed() {
        let full = assess(&enforcing(false), Some(6), FULL);
        assert_eq!(full.level, Level::Full);
        assert!(full.degradations.is_empty() && full.refused_profiles.is_empty());
        assert_eq!(audit_level(&full), "full");
        let abi1 = assess(&enforcing(false), Some(1), FULL);
        assert_eq!(abi1.level, Level::Partial);
        assert_eq!(abi1.degradations.len(), 3, "{abi1:?}");
        assert!(abi1.refused_profiles.is_empty());
        let abi5 = assess(&enforcing(false), Some(5), FULL);
        assert_eq!(abi5.degradations.len(), 1, "{abi5:?}");
        assert!(abi5.degradations[0].contains("signals"));
    }

    #[test]
    fn off_is_level_none_refuses_the_unprivileged_profiles_and_says_so() {
        let off = assess(
            &crate::config::SandboxConfig {
                enforce: false,
                ..Default::default()
            },
            Some(6),
            FULL,
        );
        assert_eq!((off.mode, off.level), (Mode::Off, Level::None));
        assert!(off.degradations[0].contains("unconfined"));
        assert!(refuses(&off, Profile::Operator) && !refuses(&off, Profile::Admin));
        assert_eq!(audit_level(&off), "off");
    }

    #[test]
    fn an_agent_that_is_not_root_refuses_the_unprivileged_profiles() {
        let e = assess(
            &enforcing(false),
            Some(6),
            Privileges {
                root: false,
                can_mask: false,
            },
        );
        assert_eq!(e.level, Level::Partial);
        assert!(refuses(&e, Profile::Diagnostics) && !refuses(&e, Profile::Admin));
        assert!(e.degradations[0].contains("not root"), "{e:?}");
    }

    #[test]
    fn a_root_agent_that_cannot_mask_says_so_and_runs_every_profile() {
        let host = Privileges {
            root: true,
            can_mask: false,
        };
        let e = assess(&enforcing(false), Some(6), host);
        assert_eq!(e.level, Level::Partial);
        assert!(e.refused_profiles.is_empty(), "{e:?}");
        assert!(e.degradations[0].contains("CAP_SYS_ADMIN"), "{e:?}");
    }

    #[test]
    fn enforce_is_the_default() {
        assert!(crate::config::SandboxConfig::default().enforce);
    }

    #[test]
    fn launch_args_round_trip() {
        let l = Launch {
            profile: Profile::Operator,
            user: Some("op".into()),
            protect: vec!["/etc/dtma".into(), "/var/log/dtma".into()],
            writable: vec!["/srv/mcp".into()],
            accept_no_landlock: true,
            program: vec!["/bin/sh".into(), "-c".into(), "--profile admin".into()],
        };
        let args = l.to_args();
        assert_eq!(args[0], SUBCOMMAND);
        assert_eq!(Launch::parse(args.into_iter().skip(1)).unwrap(), l);
    }

    #[test]
    fn bad_launch_args_are_usage_errors() {
        for args in [
            vec!["--", "/bin/true"],
            vec!["--profile", "root", "--", "/bin/true"],
            vec!["--profile", "admin", "--"],
            vec!["--profile", "admin", "--nope", "--", "/bin/true"],
            vec!["--profile"],
        ] {
            let e = Launch::parse(args.iter().map(OsString::from)).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE, "{args:?}");
        }
    }
}
