//! Path helpers: normalisation against the candidate working directories, and the tables of system, account and
//! credential paths the rules protect.

use crate::policy::shell::Word;

/// Paths whose recursive deletion or ownership/mode change breaks the machine.
pub(super) const PRIMARY_SYSTEM: &[&str] = &[
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

/// Basename of a program path (`/sbin/shutdown` → `shutdown`).
pub(super) fn program_name(v: &str) -> &str {
    v.rsplit('/').next().unwrap_or(v)
}

/// Normalise a path: expand a leading `~`, make it absolute against `cwd`, resolve `.`, `..` and `//`.
pub(super) fn normalize(p: &str, cwd: &str) -> String {
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

/// `/lib`, `/lib64`, `/libx32`, … (not paths below them).
fn is_lib_dir(p: &str) -> bool {
    p.strip_prefix("/lib").is_some_and(|r| !r.contains('/'))
}

/// A top-level system directory (exact match).
pub(super) fn is_primary(p: &str) -> bool {
    PRIMARY_SYSTEM.contains(&p) || is_lib_dir(p)
}

/// A user's home directory itself (`/home/alice`).
fn is_home_dir(p: &str) -> bool {
    p.strip_prefix("/home/")
        .is_some_and(|r| !r.is_empty() && !r.contains('/'))
}

/// `/`, a system directory or a home directory (exact match).
pub(super) fn is_system_path(p: &str) -> bool {
    p == "/" || is_primary(p) || EXTENDED_SYSTEM.contains(&p) || is_home_dir(p)
}

/// Whether `p` is `dir` or below it (both normalised).
pub(super) fn under(p: &str, dir: &str) -> bool {
    p == dir || p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// Whether `p` is below a directory holding the operating system (`/etc`, `/usr`, `/lib*`, …).
pub(super) fn under_os_dir(p: &str) -> bool {
    OS_DIRS.iter().any(|d| under(p, d))
        || p.split('/')
            .nth(1)
            .is_some_and(|top| top.starts_with("lib"))
}

/// For a path with glob characters, the directory the glob expands in (`/var/*` → `/var`).
pub(super) fn glob_dir(p: &str) -> Option<String> {
    let i = p.find(['*', '?', '['])?;
    let prefix = p.get(..i)?;
    let dir = match prefix.rfind('/') {
        Some(j) => prefix.get(..j).unwrap_or(""),
        None => "",
    };
    Some(normalize(if dir.is_empty() { "/" } else { dir }, "/"))
}

/// Whether deleting `p` recursively destroys a system path.
pub(super) fn deletion_protected(p: &str) -> bool {
    is_system_path(p) || glob_dir(p).is_some_and(|d| is_system_path(&d))
}

/// Disks, partitions, device-mapper nodes and raw memory.
pub(super) fn is_block_device(p: &str) -> bool {
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

/// Files defining accounts, groups, sudo rules or SSH logins (and their `-` backups).
pub(super) fn is_account_file(p: &str) -> bool {
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
pub(super) fn is_credential_file(p: &str) -> bool {
    matches!(
        p,
        "/etc/shadow" | "/etc/gshadow" | "/etc/shadow-" | "/etc/gshadow-" | "/etc/sudoers"
    ) || under(p, "/etc/sudoers.d")
        || under(p, "/root/.ssh")
        || p.contains("/.ssh/id_")
        || (under(p, "/etc/ssh") && p.contains("_key"))
}

/// `/proc/<pid>/environ`, `/proc/<pid>/mem` and their `task/<tid>` forms.
pub(super) fn is_proc_secret(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    match parts.as_slice() {
        ["proc", _, leaf] | ["proc", _, "task", _, leaf] => *leaf == "environ" || *leaf == "mem",
        _ => false,
    }
}

/// Paths that name standard input (`-`, `/dev/stdin`, `/dev/fd/N`, …).
pub(super) fn is_stdin_path(v: &str) -> bool {
    v == "-"
        || v == "/dev/stdin"
        || v.starts_with("/dev/fd/")
        || v.starts_with("/proc/self/fd/")
        || v.starts_with("/proc/thread-self/fd/")
}

/// Output targets that keep nothing: `/dev/null`, stdout, stderr.
pub(super) fn is_safe_sink(w: &Word) -> bool {
    matches!(
        w.value.as_deref(),
        Some("/dev/null" | "/dev/stdout" | "/dev/stderr")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize("/usr/../etc/", "/"), "/etc");
        assert_eq!(normalize("//var/./lib/docker/", "/"), "/var/lib/docker");
        assert_eq!(normalize("./", "/etc"), "/etc");
        assert_eq!(normalize("../..", "/a/b/c"), "/a");
        assert_eq!(normalize("/..", "/"), "/");
        assert_eq!(normalize("~", "/"), "/root");
        assert_eq!(normalize("~/cache", "/tmp"), "/root/cache");
        assert_eq!(normalize("~alice", "/"), "/home/alice");
        assert_eq!(program_name("/sbin/shutdown"), "shutdown");
        assert_eq!(program_name("rm"), "rm");
    }

    #[test]
    fn system_paths_are_exact_or_globbed() {
        for p in [
            "/",
            "/etc",
            "/usr/bin",
            "/lib64",
            "/home/alice",
            "/var/lib/docker",
        ] {
            assert!(is_system_path(p), "{p}");
            assert!(deletion_protected(p), "{p}");
        }
        // Below a system directory is not the directory itself.
        for p in [
            "/var/log/nginx/old",
            "/tmp/build-cache",
            "/home/alice/cache",
            "/lib64/x",
        ] {
            assert!(!deletion_protected(p), "{p}");
        }
        assert_eq!(glob_dir("/var/*").as_deref(), Some("/var"));
        assert_eq!(glob_dir("/e*").as_deref(), Some("/"));
        assert_eq!(glob_dir("/tmp/x"), None);
        assert!(deletion_protected("/var/*"));
        assert!(!deletion_protected("/tmp/*"));
    }

    #[test]
    fn os_directories() {
        assert!(under("/etc/ssh/sshd_config", "/etc"));
        assert!(!under("/etcetera", "/etc"));
        assert!(under_os_dir("/usr/local/bin/x"));
        assert!(under_os_dir("/lib/x86_64-linux-gnu"));
        assert!(!under_os_dir("/srv/app"));
    }

    #[test]
    fn devices_accounts_and_credentials() {
        assert!(is_block_device("/dev/sda1"));
        assert!(is_block_device("/dev/mapper/root"));
        assert!(is_block_device("/dev/mem"));
        assert!(!is_block_device("/dev/null"));
        assert!(!is_block_device("/dev/tty"));
        assert!(is_account_file("/etc/passwd"));
        assert!(is_account_file("/etc/shadow-"));
        assert!(is_account_file("/etc/sudoers.d/evil"));
        assert!(is_account_file("/home/alice/.ssh/authorized_keys"));
        assert!(!is_account_file("/etc/passwd.bak"));
        assert!(!is_account_file("/etc/hosts"));
        assert!(is_credential_file("/etc/shadow"));
        assert!(is_credential_file("/etc/ssh/ssh_host_ed25519_key"));
        assert!(is_credential_file("/home/alice/.ssh/id_rsa"));
        // Readable account data and public SSH configuration are not credentials.
        assert!(!is_credential_file("/etc/passwd"));
        assert!(!is_credential_file("/etc/ssh/sshd_config"));
    }

    #[test]
    fn process_secrets_and_streams() {
        assert!(is_proc_secret("/proc/1/environ"));
        assert!(is_proc_secret("/proc/self/task/7/mem"));
        assert!(!is_proc_secret("/proc/1/status"));
        assert!(!is_proc_secret("/proc/meminfo"));
        assert!(is_stdin_path("/dev/stdin") && is_stdin_path("-") && is_stdin_path("/dev/fd/0"));
        assert!(!is_stdin_path("/tmp/x.sh"));
        assert!(is_safe_sink(&Word::literal("/dev/null")));
        assert!(!is_safe_sink(&Word::literal("/tmp/note")));
        assert!(!is_safe_sink(&Word::literal("/dev/null").to_dynamic()));
    }
}
