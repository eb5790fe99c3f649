//! The kernel sandbox (`dtma sandbox-exec`, src/exec/sandbox.rs) with real processes: denied
//! syscalls, writes outside scratch, reads of protected files, the user switch, each wrapped in
//! shell trickery, and `DTMA_SANDBOX=enforce` end to end through the local API.
//!
//! Needs root and a kernel with Landlock (this machine, CI). The unprivileged user is created
//! here with `useradd --system` when missing; the package will create it later. Nothing
//! dangerous runs unconfined: the only syscall tried outside the sandbox is `reboot(2)` with a
//! wrong magic number, which the kernel refuses with EINVAL.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::http::request;
use common::*;
use dtma::config::Config;

const DTMA: &str = env!("CARGO_BIN_EXE_dtma");

/// `reboot(2)` with a wrong magic number: EINVAL where allowed (root), EPERM under the filter.
const REBOOT_WRONG_MAGIC: &str = "import ctypes, os, platform\n\
    nr = {'x86_64': 169, 'aarch64': 142}[platform.machine()]\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    r = libc.syscall(nr, 0, 0, 0, 0)\n\
    print('errno', os.strerror(ctypes.get_errno()) if r != 0 else 'none')";

/// The diagnostics user, created once per machine; a lock file serialises concurrent tests.
fn diagnostics_user() -> u32 {
    let lock = std::fs::File::create("/tmp/dtma-sandbox-test-useradd.lock").unwrap();
    lock.lock().unwrap();
    if let Ok(Some(u)) = nix::unistd::User::from_name("dtma-diagnostics") {
        return u.uid.as_raw();
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg("dtma-diagnostics")
        .output()
        .unwrap();
    assert!(out.status.success(), "useradd: {out:?}");
    nix::unistd::User::from_name("dtma-diagnostics")
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

fn sandboxed(profile: &str, protect: &[&Path], script: &str) -> Output {
    let mut cmd = Command::new(DTMA);
    cmd.args(["sandbox-exec", "--profile", profile]);
    for p in protect {
        cmd.arg("--protect").arg(p);
    }
    cmd.args(["--", "/bin/sh", "-c", script]).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory outside scratch that everyone may write by its permissions, so only the
/// sandbox can stop a write there.
fn planted() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("dtma-sandbox-test-")
        .tempdir_in("/srv")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = dir.path().join("planted");
    std::fs::write(&file, "planted-secret-value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    (dir, file)
}

/// The same attempt written as a tester would try to slip it past a text filter.
fn tricks(plain: &str) -> Vec<String> {
    let held = format!("C=$(cat <<'EOF'\n{plain}\nEOF\n)\n");
    vec![
        plain.to_owned(),
        format!("{held}eval \"$C\""),
        format!("f() {{ {plain}; }}; f"),
        format!("{held}sh -c \"$C\""),
        format!("{held}X=; ${{X:-sh}} -c \"$C\""),
    ]
}

#[test]
fn reboot_is_einval_unconfined_and_eperm_in_every_profile() {
    diagnostics_user();
    let out = Command::new("python3")
        .args(["-c", REBOOT_WRONG_MAGIC])
        .output()
        .unwrap();
    assert_eq!(text(&out).trim(), "errno Invalid argument");
    for profile in ["diagnostics", "admin"] {
        for script in tricks(&format!("python3 -c \"{REBOOT_WRONG_MAGIC}\""))
            .into_iter()
            .chain([format!("/usr/bin/python[3] -c \"{REBOOT_WRONG_MAGIC}\"")])
        {
            let out = sandboxed(profile, &[], &script);
            assert_eq!(
                text(&out).trim(),
                "errno Operation not permitted",
                "{profile}: {script}"
            );
        }
    }
}

#[test]
fn diagnostics_writes_only_to_scratch() {
    diagnostics_user();
    let (_dir, file) = planted();
    let f = file.display();
    for script in tricks(&format!("echo overwritten > {f}"))
        .into_iter()
        .chain(tricks(&format!("python3 -c \"open('{f}', 'w')\"")))
        .chain([format!("/bin/r[m] -f {f}"), format!("touch {f}.new")])
    {
        let out = sandboxed("diagnostics", &[], &script);
        assert!(!out.status.success(), "{script}: {out:?}");
        assert!(
            text(&out).contains("Permission denied"),
            "{script}: {}",
            text(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "planted-secret-value\n"
    );
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = scratch.path().join("ok");
    let out = sandboxed(
        "diagnostics",
        &[],
        &format!(
            "echo hi > {0} && cat {0} && rm {0} && echo gone",
            s.display()
        ),
    );
    assert_eq!(text(&out), "hi\ngone\n");
    assert!(out.status.success());
}

#[test]
fn protected_files_are_unreadable_however_the_read_is_written() {
    diagnostics_user();
    let (dir, secret) = planted();
    let sibling = dir.path().join("sibling");
    std::fs::write(&sibling, "readable\n").unwrap();
    let f = secret.display();
    let glob = f.to_string().replace("planted", "plant[e]d");
    for profile in ["diagnostics", "admin"] {
        for script in tricks(&format!("cat {f}"))
            .into_iter()
            .chain(tricks(&format!("python3 -c \"print(open('{f}').read())\"")))
            .chain([format!("cat {glob}"), format!("set -- {f}; cat \"$@\"")])
        {
            let out = sandboxed(profile, &[&secret], &script);
            let t = text(&out);
            assert!(!out.status.success(), "{profile}: {script}: {t}");
            assert!(!t.contains("planted-secret-value"), "{profile}: {script}");
            // A glob cannot even list the protected file's directory: it stays unexpanded.
            let expected = match script.contains("[e]") {
                true => "No such file",
                false => "Permission denied",
            };
            assert!(t.contains(expected), "{profile}: {script}: {t}");
        }
        let out = sandboxed(profile, &[&secret], &format!("cat {}", sibling.display()));
        assert_eq!(text(&out), "readable\n", "{profile}");
    }
    // The machine's own secret stores, for the unprivileged profile.
    let out = sandboxed("diagnostics", &[], "cat /etc/shadow; ls /root");
    assert!(!text(&out).contains("root:"), "{}", text(&out));
    assert_eq!(text(&out).matches("Permission denied").count(), 2);
}

#[test]
fn diagnostics_runs_as_its_user_without_capabilities() {
    let uid = diagnostics_user();
    let out = sandboxed(
        "diagnostics",
        &[],
        "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; unshare -U true",
    );
    let t = text(&out);
    assert!(t.starts_with(&format!("{uid}\n")), "{t}");
    assert_eq!(t.matches("0000000000000000").count(), 3, "{t}");
    assert!(t.contains("unshare failed: Operation not permitted"), "{t}");
    let out = sandboxed("admin", &[], "id -u");
    assert_eq!(text(&out), "0\n");
}

#[test]
fn a_profile_whose_user_is_missing_is_refused() {
    let out = Command::new(DTMA)
        .args(["sandbox-exec", "--profile", "operator", "--user"])
        .arg("dtma-no-such-user")
        .args(["--", "/bin/sh", "-c", "id -u"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(67));
    assert!(out.stdout.is_empty());
    assert!(text(&out).contains("no user named `dtma-no-such-user`"));
}

#[tokio::test]
async fn enforce_runs_commands_through_the_local_api_under_the_sandbox() {
    let (_dir, secret) = planted();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let mut config = Config::for_channel(TOKEN, None);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.audit.path = Some(audit.clone());
    config.exec.sandbox.enforce = true;
    config.exec.sandbox.launcher = DTMA.into();
    config.exec.sandbox.protect = vec![secret.clone()];
    let agent = InProc::start(config).await;
    let addr = agent.running.as_ref().unwrap().http_addr;
    let exec = async |command: String| {
        let body = serde_json::json!({ "command": command }).to_string();
        let auth = format!("Bearer {TOKEN}");
        request(
            addr,
            "POST",
            "/ssh/execute",
            Some(&auth),
            Some(body.as_bytes()),
        )
        .await
        .json()
    };
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    let ok = exec(format!(
        "echo $$ > {0}/pid && cat {0}/pid",
        scratch.path().display()
    ))
    .await;
    assert_eq!(ok["exit_code"], 0, "{ok}");
    let pid: u32 = ok["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(pid > 0);
    let j = exec(format!("cat {}", secret.display())).await;
    assert_ne!(j["exit_code"], 0, "{j}");
    assert!(
        j["stderr"].as_str().unwrap().contains("Permission denied"),
        "{j}"
    );
    // `/status` reports what is enforced; this kernel has Landlock, so no refusal at start.
    let auth = format!("Bearer {TOKEN}");
    let status = request(addr, "GET", "/status", Some(&auth), None)
        .await
        .json();
    let sandbox = &status["sandbox"];
    assert_eq!(sandbox["mode"], "enforce", "{status}");
    assert!(sandbox["landlock_abi"].as_u64().unwrap() >= 1, "{status}");
    let level = sandbox["level"].as_str().unwrap().to_owned();
    assert!(level == "full" || level == "partial", "{status}");
    assert_eq!(
        level == "full",
        sandbox["degradations"].as_array().unwrap().is_empty(),
        "{status}"
    );
    agent.shutdown().await;
    // Every record of a sandboxed command names its profile and the level that applied.
    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{text}");
    for r in &records {
        assert_eq!(r["profile"], "admin", "{r}");
        assert_eq!(r["enforcement"], level.as_str(), "{r}");
    }
}
