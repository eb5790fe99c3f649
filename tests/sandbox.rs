//! The kernel sandbox (`dtma sandbox-exec`, src/exec/sandbox.rs) with real processes: denied
//! syscalls, writes outside scratch, reads of protected files, the user switch, each wrapped in
//! shell trickery, and `DTMA_SANDBOX=enforce` end to end through the local API.
//!
//! Needs root and a kernel with Landlock (this machine, CI). The unprivileged user is created
//! here with `useradd --system` when missing; the package will create it later. Nothing
//! dangerous runs unconfined: the only syscall tried outside the sandbox is `reboot(2)` with a
//! wrong magic number, which the kernel refuses with EINVAL.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::http::request;
use common::*;
use dtma::config::Config;

/// `reboot(2)` with a wrong magic number: EINVAL where allowed (root), EPERM under the filter.
const REBOOT_WRONG_MAGIC: &str = "import ctypes, os, platform\n\
    nr = {'x86_64': 169, 'aarch64': 142}[platform.machine()]\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    r = libc.syscall(nr, 0, 0, 0, 0)\n\
    print('errno', os.strerror(ctypes.get_errno()) if r != 0 else 'none')";

/// The diagnostics user, created once per machine.
fn diagnostics_user() -> u32 {
    system_user("dtma-diagnostics").uid.as_raw()
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
    // The agent's binary: readable and runnable, never writable (read-only mount).
    let binary = std::fs::canonicalize(DTMA).unwrap();
    let out = sandboxed(
        "admin",
        &[],
        // `touch -c`, not a write: writing to a binary that another test runs at that moment
        // fails with "Text file busy" before the mount is consulted. Plain `touch` opens the
        // file for writing first, so it can fail that way too (seen in CI, with the package
        // tests running the binary); `-c` only sets the time stamp (utimensat), which the
        // read-only mount refuses whatever else runs.
        &format!(
            "test -r {0} && echo readable; touch -c {0}",
            binary.display()
        ),
    );
    assert!(text(&out).starts_with("readable\n"), "{}", text(&out));
    assert!(
        text(&out).contains("Read-only file system"),
        "{}",
        text(&out)
    );
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
            assert!(t.contains("Permission denied"), "{profile}: {script}: {t}");
        }
        // Nor changed, moved or removed, even by admin (root).
        for script in [
            format!("echo overwritten > {f}"),
            format!("mv {f} {f}.moved"),
            format!("rm -f {f}"),
            format!("truncate -s 0 {f}"),
        ] {
            let out = sandboxed(profile, &[&secret], &script);
            assert!(!out.status.success(), "{profile}: {script}: {out:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "planted-secret-value\n"
        );
        // Masks, not carve-outs: the directory around it stays listable and usable.
        let out = sandboxed(
            profile,
            &[&secret],
            &format!("cat {}; ls {}", sibling.display(), dir.path().display()),
        );
        assert_eq!(text(&out), "readable\nplanted\nsibling\n", "{profile}");
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

/// A loopback HTTP server that answers one `GET` with `200 ok` and returns the request line.
fn serve_once() -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
        let head = String::from_utf8_lossy(&head).into_owned();
        head.lines().next().unwrap_or_default().to_owned()
    });
    (port, server)
}

/// Whether `tool` is on this machine (the test's own PATH, as `command -v` sees it).
fn installed(tool: &str) -> bool {
    Command::new("/bin/sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap()
        .status
        .success()
}

/// The ordinary troubleshooting commands must all succeed under each profile that applies. A
/// tool missing from the machine is skipped and named in the assertion message, never silently.
#[test]
fn legitimate_corpus_passes_in_each_profile() {
    diagnostics_user();
    system_user("dtma-operator");
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // (tool that must be installed, script); every script exits 0 when it works.
    let corpus: Vec<(&str, String)> = vec![
        ("ps", "ps aux > /dev/null".into()),
        ("ss", "ss -tln > /dev/null".into()),
        ("df", "df -h > /dev/null".into()),
        ("uptime", "uptime > /dev/null".into()),
        ("cat", "cat /proc/loadavg | grep -Eq '^[0-9.]+ '".into()),
        (
            "journalctl",
            "journalctl -n 5 --no-pager > /dev/null 2>&1 || true".into(),
        ),
        (
            "awk",
            "grep -v '^#' /etc/passwd | awk -F: '$3 == 0 || /nologin|false/ { print $1 }' \
             | sed 's/^/user: /' | grep -q '^user: root$'"
                .into(),
        ),
        ("timeout", "timeout 1 sleep 5; test $? -eq 124".into()),
        ("env", "env | grep -q PATH".into()),
    ];
    // The loopback GET: the first client this machine has.
    let http = [
        ("curl", "curl -fsS http://127.0.0.1:{port}/health"),
        ("wget", "wget -qO- http://127.0.0.1:{port}/health"),
        (
            "python3",
            "python3 -c \"import urllib.request; \
             print(urllib.request.urlopen('http://127.0.0.1:{port}/health').read().decode(), end='')\"",
        ),
    ]
    .into_iter()
    .find(|(tool, _)| installed(tool));
    let (mut ran, mut skipped, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (tool, _) in &corpus {
        match installed(tool) {
            true => ran.push(*tool),
            false => skipped.push(format!("{tool}: not installed on this machine")),
        }
    }
    match http {
        Some((tool, _)) => ran.push(tool),
        None => skipped.push("loopback GET: none of curl, wget, python3 installed".into()),
    }
    for profile in ["diagnostics", "operator", "admin"] {
        let tmp = scratch.path().join(format!("{profile}-file"));
        let write = format!(
            "echo written > {0} && grep -q written {0} && rm {0} && test ! -e {0}",
            tmp.display()
        );
        for (tool, script) in corpus
            .iter()
            .filter(|(tool, _)| ran.contains(tool))
            .map(|(t, s)| (*t, s.clone()))
            .chain([("tmp", write)])
        {
            let out = sandboxed(profile, &[], &script);
            if !out.status.success() {
                failed.push(format!("{profile}: {tool}: `{script}`: {out:?}"));
            }
        }
        assert!(!tmp.exists(), "{profile}: {}", tmp.display());
        if let Some((tool, script)) = http {
            let (port, server) = serve_once();
            let script = script.replace("{port}", &port.to_string());
            let out = sandboxed(profile, &[], &script);
            if !out.status.success() || out.stdout != b"ok" {
                failed.push(format!("{profile}: {tool}: `{script}`: {out:?}"));
            }
            assert_eq!(server.join().unwrap(), "GET /health HTTP/1.1", "{profile}");
        }
    }
    assert!(
        failed.is_empty(),
        "failed: {failed:#?}\nran: {ran:?}\nskipped: {skipped:?}"
    );
    // The coreutils part of the corpus cannot be skipped: it is what every host has.
    for tool in ["df", "uptime", "cat", "awk", "timeout", "env"] {
        assert!(
            ran.contains(&tool),
            "{tool}: ran {ran:?}, skipped {skipped:?}"
        );
    }
}

/// A `sleep 300` started by the test, outside any sandbox; killed when dropped.
struct Target(std::process::Child);

impl Target {
    fn start(user: Option<&nix::unistd::User>, canary: &str) -> Target {
        let mut cmd = Command::new("sleep");
        cmd.arg("300").env("DTMA_TEST_CANARY", canary);
        if let Some(u) = user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        Target(cmd.spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Signals from diagnostics reach only its own processes: a target owned by root is out of
/// reach by its uid alone, one owned by the diagnostics user itself only by Landlock's signal
/// scoping (ABI 6). Admin is root and its profile sets no scoping: it can signal any process
/// (not asserted; the code promises nothing for admin here).
#[test]
fn diagnostics_cannot_signal_a_process_outside_the_sandbox() {
    let user = system_user("dtma-diagnostics");
    let abi = dtma::exec::sandbox::detected_abi().unwrap_or(0);
    let mut by_root = Target::start(None, "none");
    let mut by_user = Target::start(Some(&user), "none");
    let mut targets: Vec<&mut Target> = vec![&mut by_root];
    match abi >= 6 {
        true => targets.push(&mut by_user),
        false => eprintln!(
            "Landlock ABI {abi} < 6: signal scoping not available, same-user target not tried"
        ),
    }
    for target in targets {
        let pid = target.pid();
        for script in tricks(&format!("kill -0 {pid}"))
            .into_iter()
            .chain(tricks(&format!("kill -TERM {pid}")))
            .chain([format!("set -- -TERM {pid}; kill \"$@\"")])
        {
            let out = sandboxed("diagnostics", &[], &script);
            assert!(!out.status.success(), "{pid}: {script}: {out:?}");
            assert!(
                text(&out).contains("Operation not permitted"),
                "{pid}: {script}: {}",
                text(&out)
            );
            assert!(target.alive(), "{pid} died from: {script}");
        }
    }
    // The control: without the sandbox, the user could signal its own process.
    let out = Command::new("kill")
        .args(["-0", &by_user.pid().to_string()])
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(by_user.alive() && by_root.alive());
}

/// The environment of a process outside the sandbox stays unreadable under diagnostics: by uid
/// for a root process, by Landlock's ptrace restriction for one of the diagnostics user itself.
/// Admin is not asserted: on this kernel (6.18) an admin command reads `/proc/<pid>/environ`
/// (and `maps`, `auxv`, `fd/`) of a root process outside its domain, while `stack` and `exe`
/// are denied; the module's claim for admin does not hold for `environ` (open finding).
#[test]
fn proc_environ_of_a_process_outside_the_sandbox_is_unreadable() {
    let user = system_user("dtma-diagnostics");
    let canary = format!(
        "canary-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let by_root = Target::start(None, &canary);
    let by_user = Target::start(Some(&user), &canary);
    // The control: unconfined, the target's own user reads it.
    let own = format!("/proc/{}/environ", by_user.pid());
    let out = Command::new("cat")
        .arg(&own)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&canary));
    for (profile, target) in [("diagnostics", &by_root), ("diagnostics", &by_user)] {
        let environ = format!("/proc/{}/environ", target.pid());
        let glob = format!("/proc/{}/enviro?", target.pid());
        for script in tricks(&format!("cat {environ}"))
            .into_iter()
            .chain(tricks(&format!(
                "python3 -c \"print(open('{environ}', 'rb').read())\""
            )))
            .chain([
                format!("tr '\\0' '\\n' < {environ} | grep CANARY"),
                format!("cat {glob}"),
                format!("set -- {environ}; cat \"$@\""),
            ])
        {
            let out = sandboxed(profile, &[], &script);
            let t = text(&out);
            assert!(!t.contains(&canary), "{profile}: {script}");
            assert!(t.contains("Permission denied"), "{profile}: {script}: {t}");
        }
    }
}

/// A setuid-root copy of `id` planted by the test: unconfined it runs as root (the control),
/// under diagnostics `no_new_privs` keeps the sandbox user's uid.
#[test]
fn a_planted_setuid_binary_does_not_raise_privileges() {
    let user = system_user("dtma-diagnostics");
    let uid = user.uid.as_raw();
    let dir = tempfile::Builder::new()
        .prefix("dtma-sandbox-test-suid-")
        .tempdir_in("/srv")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = dir.path().join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = Command::new(&id)
        .arg("-u")
        .uid(uid)
        .gid(user.gid.as_raw())
        .output()
        .unwrap();
    assert_eq!(
        text(&out),
        "0\n",
        "the planted binary is not setuid-root here"
    );
    let i = id.display();
    for script in tricks(&format!("{i} -u"))
        .into_iter()
        .chain([format!("X=; ${{X:-{i}}} -u"), format!("{i} -u </dev/null")])
    {
        let out = sandboxed("diagnostics", &[], &script);
        assert_eq!(text(&out), format!("{uid}\n"), "{script}");
        assert!(out.status.success(), "{script}: {out:?}");
    }
    std::fs::remove_file(&id).unwrap();
    assert!(!id.exists());
}

/// An admin command (root, in the admin profile) cannot take the agent's secrets from its
/// process: the token and the key given by environment are not in `/proc/<agent>/environ` (the
/// agent re-execs itself and keeps them in memory only), and `mem`, `fd/`, `root` and `cwd` are
/// denied (Landlock's ptrace rule), while both secrets still authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cannot_read_the_agents_secrets_from_its_proc_entries() {
    use tokio::io::AsyncBufReadExt;
    const ENV_TOKEN: &str = "canary-token-from-env-0123456789";
    const ENV_KEY: &str = "canary-key-from-env-too-0123456789";
    let port = common::docker::free_port();
    let mut child = tokio::process::Command::new(DTMA)
        .env_clear()
        .env("BACKEND_TO_DTMA_API_KEY", ENV_KEY)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DTMA_BEARER_TOKEN", ENV_TOKEN)
        .env("DTMA_LISTEN", format!("127.0.0.1:{port}"))
        .env("DTMA_AUDIT_LOG", "-")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (listening_tx, listening) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let (mut log, mut tx) = (String::new(), Some(listening_tx));
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Local API listening")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    within(20, "the agent's start", listening).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The reads run from a script file: the shell policy's guard rails would stop them on the
    // command line, and this test is about what the kernel allows.
    let scripts = tempfile::tempdir().unwrap();
    let exec = async |secret: &str, script: String| {
        let file = scripts.path().join(format!("s{}.sh", script.len()));
        std::fs::write(&file, &script).unwrap();
        let command = format!("sh {}", file.display());
        let body = serde_json::json!({ "command": command }).to_string();
        let auth = format!("Bearer {secret}");
        let r = request(
            addr,
            "POST",
            "/ssh/execute",
            Some(&auth),
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    let p = format!("/proc/{pid}");
    let read = exec(
        ENV_TOKEN,
        format!("tr '\\0' '\\n' < {p}/environ; tr '\\0' ' ' < {p}/cmdline; echo"),
    )
    .await;
    let out = read["stdout"].as_str().unwrap();
    // The reads worked (so the test would see a secret if it were there) ...
    assert!(
        out.contains(&format!("DTMA_LISTEN=127.0.0.1:{port}")),
        "{read}"
    );
    assert!(
        out.contains("--backend-api-key") || out.contains("dtma"),
        "{read}"
    );
    // ... and found neither secret.
    assert!(!out.contains(ENV_TOKEN) && !out.contains(ENV_KEY), "{read}");
    let denied = exec(
        ENV_KEY,
        format!(
            "head -c 16 {p}/mem; readlink {p}/root {p}/cwd {p}/fd/0; cat {p}/fd/* ; \
             grep -a -c canary {p}/fd/* ; echo done"
        ),
    )
    .await;
    let all = format!("{}{}", denied["stdout"], denied["stderr"]);
    assert!(
        denied["stdout"].as_str().unwrap().ends_with("done\n"),
        "{denied}"
    );
    assert!(
        !all.contains(ENV_TOKEN) && !all.contains(ENV_KEY),
        "{denied}"
    );
    assert!(
        all.contains(&format!("{p}/mem' for reading: Permission denied")),
        "{denied}"
    );
    assert!(
        !denied["stdout"].as_str().unwrap().contains('/'),
        "no link was read: {denied}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait().await;
    let log = reader.await.unwrap();
    assert!(!log.contains(ENV_TOKEN) && !log.contains(ENV_KEY));
    assert!(
        !log.contains("stay readable in /proc"),
        "the hand-off worked: {log}"
    );
}

/// A profile's extra writable paths (`DTMA_SANDBOX_*_WRITABLE`) open exactly those paths, and a
/// hidden path (`DTMA_SANDBOX_HIDE`) is closed to admin too.
#[test]
fn configured_writable_and_hidden_paths_apply() {
    diagnostics_user();
    let data = tempfile::Builder::new()
        .prefix("dtma-sandbox-writable-")
        .tempdir_in("/srv")
        .unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = data.path().display();
    let write = format!("echo ok > {d}/note && cat {d}/note");
    let mut cmd = Command::new(DTMA);
    cmd.args(["sandbox-exec", "--profile", "diagnostics", "--writable"])
        .arg(data.path())
        .args(["--", "/bin/sh", "-c", &write]);
    let out = cmd.output().unwrap();
    assert_eq!(text(&out), "ok\n");
    std::fs::remove_file(data.path().join("note")).unwrap();
    // Without the setting the same write is refused.
    let out = sandboxed("diagnostics", &[], &write);
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    assert!(!data.path().join("note").exists());
    // Hidden from admin: the socket-like file the test planted stands for docker.sock.
    let (_dir, planted) = planted();
    let out = sandboxed("admin", &[&planted], &format!("cat {}", planted.display()));
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
}

/// No Docker socket for the unprivileged profiles (root-equivalent): connecting is refused,
/// while admin (root) reaches it — the README says why that stays open for admin.
#[test]
fn the_unprivileged_profiles_cannot_reach_the_docker_socket() {
    diagnostics_user();
    system_user("dtma-operator");
    let sock = "/var/run/docker.sock";
    assert!(
        Path::new(sock).exists(),
        "dockerd must be running for this test"
    );
    let connect = format!(
        "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{sock}'); print('connected')\""
    );
    for profile in ["diagnostics", "operator"] {
        let out = sandboxed(profile, &[], &connect);
        let t = text(&out);
        assert!(!t.contains("connected"), "{profile}: {t}");
        assert!(t.contains("PermissionError"), "{profile}: {t}");
    }
    assert_eq!(text(&sandboxed("admin", &[], &connect)), "connected\n");
}

/// The small launcher (`dtma-sandbox`, which an installed agent uses when it sits beside it)
/// takes the same arguments as `dtma sandbox-exec` and applies the same profile.
#[test]
fn the_small_launcher_is_the_same_launcher() {
    let uid = diagnostics_user();
    let script = "id -u; echo x > /etc/dtma-small-launcher-test";
    for lead in [&[][..], &["sandbox-exec"][..]] {
        let out = Command::new(DTMA_SANDBOX)
            .args(lead)
            .args(["--profile", "diagnostics", "--", "/bin/sh", "-c", script])
            .output()
            .unwrap();
        let t = text(&out);
        assert!(t.starts_with(&format!("{uid}\n")), "{lead:?}: {t}");
        assert!(t.contains("Permission denied"), "{lead:?}: {t}");
    }
    assert!(!Path::new("/etc/dtma-small-launcher-test").exists());
    let out = Command::new(DTMA_SANDBOX)
        .args(["--profile", "root", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
