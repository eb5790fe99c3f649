//! Mass deletion (`rm -r`, `find -delete`, `mv`, `rsync --delete` of system paths) and tools that destroy disks,
//! partitions or filesystems (`mkfs`, `fdisk`, `dd of=/dev/…`, `umount /`, …).

use super::args::parse_args;
use super::paths::{
    deletion_protected, glob_dir, is_primary, is_system_path, normalize, program_name,
};
use super::{Ctx, FS_TOOLS, Inv, MASS, Verdict, deny, shorten};
use crate::policy::shell::Word;

/// Recursive deletion of system paths, or of paths that cannot be judged.
pub(super) fn deletion_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
    let args = inv.args();
    match inv.name.as_str() {
        "rm" => rm_rules(args, ctx),
        "find" => find_delete_rules(args, ctx),
        "mv" => mv_rules(args, ctx),
        "rsync" => rsync_delete_rules(args, ctx),
        _ => Ok(()),
    }
}

/// `rm -r` of a system path, or of a non-static or unknown-relative path; `rm --no-preserve-root`.
fn rm_rules(args: &[Word], ctx: &Ctx) -> Verdict {
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
    Ok(())
}

/// `find START… -delete` (or `-exec rm`) starting at `/` or a top-level system directory.
fn find_delete_rules(args: &[Word], ctx: &Ctx) -> Verdict {
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
            if p == "/" || is_primary(&p) || glob_dir(&p).is_some_and(|d| is_system_path(&d)) {
                return Err(deny(
                    MASS,
                    format!("`find {p}` deleting files would delete under a system path"),
                ));
            }
        }
    }
    Ok(())
}

/// `mv` of a system path away from its place.
fn mv_rules(args: &[Word], ctx: &Ctx) -> Verdict {
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
    Ok(())
}

/// `rsync --delete` into `/` or a top-level system directory.
fn rsync_delete_rules(args: &[Word], ctx: &Ctx) -> Verdict {
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
    Ok(())
}

/// Tools that destroy disks, partitions or filesystems, and unmounting or remounting system paths.
pub(super) fn fs_tool_rules(inv: &Inv, ctx: &Ctx) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::{admin, judge};
    use super::*;

    fn deletion(cmd: &str) -> String {
        judge(cmd, deletion_rules)
    }

    fn fs_tools(cmd: &str) -> String {
        judge(cmd, fs_tool_rules)
    }

    #[test]
    fn rm() {
        assert_eq!(deletion("rm -rf /etc"), MASS);
        assert_eq!(deletion("rm -r -f /usr/../var/"), MASS);
        assert_eq!(deletion("rm -rf /home/alice"), MASS);
        assert_eq!(deletion("rm -rf /etc/nginx/conf.d.bak"), ALLOWED);
        assert_eq!(deletion("rm -rf /home/alice/cache"), ALLOWED);
        // Without -r, rm cannot delete a directory tree.
        assert_eq!(deletion("rm -f /etc"), ALLOWED);
        assert_eq!(deletion("rm --no-preserve-root -rf /tmp/x"), MASS);
    }

    #[test]
    fn rm_of_what_cannot_be_judged() {
        assert_eq!(deletion("rm -r \"$DIR\""), MASS);
        assert_eq!(deletion("rm $OPTS /tmp/x"), MASS);
        // A dynamic operand may expand to `-r`.
        assert_eq!(deletion("rm -f \"$FILE\""), MASS);
        assert_eq!(deletion("rm -f \"/tmp/$FILE\""), ALLOWED);
        assert_eq!(deletion("cd \"$D\"; rm -rf build"), MASS);
        assert_eq!(deletion("cd /tmp; rm -rf build"), ALLOWED);
        assert_eq!(deletion("cd /; rm -rf usr"), MASS);
    }

    #[test]
    fn find_delete() {
        assert_eq!(deletion("find / -name x -delete"), MASS);
        assert_eq!(deletion("find -L /etc -exec rm {} +"), MASS);
        assert_eq!(deletion("cd /; find -delete"), MASS);
        assert_eq!(deletion("find \"$D\" -delete"), MASS);
        assert_eq!(deletion("find /var/log -name '*.gz' -delete"), ALLOWED);
        assert_eq!(deletion("find /etc -name '*.conf' -print"), ALLOWED);
        assert_eq!(deletion("find /etc -exec grep -l x {} +"), ALLOWED);
    }

    #[test]
    fn mv_and_rsync() {
        assert_eq!(deletion("mv /etc /etc.old"), MASS);
        assert_eq!(deletion("mv -t /tmp /usr/bin"), MASS);
        assert_eq!(deletion("mv /etc/hosts /etc/hosts.bak"), ALLOWED);
        assert_eq!(deletion("rsync -a --delete /tmp/e/ /usr"), MASS);
        assert_eq!(deletion("rsync -a --delete-after /tmp/e/ /"), MASS);
        assert_eq!(deletion("rsync -a --delete /tmp/e/ /srv/app"), ALLOWED);
        assert_eq!(deletion("rsync -a /tmp/e/ /usr"), ALLOWED);
    }

    #[test]
    fn disk_tools() {
        assert_eq!(fs_tools("mkfs.ext4 /dev/vdb"), FS_TOOLS);
        assert_eq!(fs_tools("wipefs -a /dev/sdb"), FS_TOOLS);
        assert_eq!(fs_tools("fdisk /dev/sda"), FS_TOOLS);
        assert_eq!(fs_tools("fdisk -l"), ALLOWED);
        assert_eq!(fs_tools("parted -l /dev/sda"), ALLOWED);
        assert_eq!(fs_tools("dd if=/dev/zero of=/dev/sda"), FS_TOOLS);
        assert_eq!(
            fs_tools("dd if=/dev/sda of=/tmp/mbr bs=512 count=1"),
            ALLOWED
        );
        assert_eq!(fs_tools("dd if=/dev/zero of=/dev/null count=1"), ALLOWED);
        assert_eq!(fs_tools("dd of=$OUT"), FS_TOOLS);
        assert_eq!(fs_tools("swapoff -a"), FS_TOOLS);
        assert_eq!(fs_tools("swapoff /swapfile"), ALLOWED);
        assert_eq!(fs_tools("zfs destroy tank/x"), FS_TOOLS);
        assert_eq!(fs_tools("zfs list"), ALLOWED);
    }

    #[test]
    fn mounts() {
        assert_eq!(fs_tools("umount /usr"), FS_TOOLS);
        assert_eq!(fs_tools("umount -a"), FS_TOOLS);
        assert_eq!(fs_tools("umount /mnt/usb"), ALLOWED);
        assert_eq!(fs_tools("mount -o remount,ro /"), FS_TOOLS);
        assert_eq!(fs_tools("mount --bind /tmp/x /etc"), FS_TOOLS);
        assert_eq!(fs_tools("mount -o ro /dev/sdb1 /mnt"), ALLOWED);
    }

    #[test]
    fn through_the_engine_wrappers_count() {
        assert_eq!(admin("sudo find / -delete"), MASS);
        assert_eq!(admin("rm -rf /tmp/build-cache"), ALLOWED);
        // A deletion's path built from a substitution is dynamic.
        assert_eq!(admin("rm -rf $(cat /tmp/list)"), MASS);
        assert_eq!(admin("rm -f /tmp/$(cat /tmp/name)"), ALLOWED);
    }
}
