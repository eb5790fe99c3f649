//! Docker for tests: an image holding the test MCP server (`tests/support/mcp_server.rs`),
//! built here from local files because no registry can be reached; container names that do
//! not clash between parallel tests; a guard that removes a container however the test ends.
//!
//! Tests drive the `docker` CLI; the agent itself talks to the daemon through bollard. A
//! missing CLI or daemon fails the test with a message: Docker tests never skip.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The test MCP server, built by cargo alongside the integration tests.
pub const MCP_BINARY: &str = env!("CARGO_BIN_EXE_dtma-test-mcp");
/// Where the image keeps it (and its entrypoint).
pub const MCP_IN_IMAGE: &str = "/usr/local/bin/dtma-test-mcp";
/// From Debian's `busybox-static` (.ci/test.sh installs it).
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "head", "env"];
const REPOSITORY: &str = "dtma-test-mcp";

/// Run `docker ARGS`. Panics when the CLI cannot be started.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run the docker CLI ({e}): Docker tests need Docker; .ci/test.sh installs and starts it")
    })
}

/// Run `docker ARGS`, panic on failure with its stderr, return its stdout trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The test image's reference, `dtma-test-mcp:<12 hex>`: a hash of every file in it, so a
/// rebuilt server (or a changed busybox or libc) gets a new image. Built once per machine and
/// reused; concurrent test processes serialise on a lock file.
pub fn test_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(build_image).clone()
}

fn build_image() -> String {
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        version.status.success(),
        "the Docker daemon is not reachable: {} (.ci/test.sh starts dockerd)",
        String::from_utf8_lossy(&version.stderr).trim()
    );
    let files = image_files();
    let tag = format!("{REPOSITORY}:{}", content_hash(&files));
    if image_exists(&tag) {
        return tag;
    }
    // Importing the same content under the same tag twice would be harmless (the tag moves
    // to an identical image), but the lock spares the work and the dangling copies.
    let lock_path = std::env::temp_dir().join("dtma-test-mcp-image.lock");
    let lock = fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if !image_exists(&tag) {
        import(&files, &tag);
        remove_other_tags(&tag);
    }
    tag
}

/// (source on this machine, path in the image), sorted by path in the image: the two
/// programs and every shared library `ldd` lists for them, at the same paths (the dynamic
/// loader included, since the binaries name it by absolute path).
fn image_files() -> Vec<(PathBuf, String)> {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (.ci/test.sh does)"
    );
    let mut files = vec![
        (PathBuf::from(MCP_BINARY), MCP_IN_IMAGE.to_owned()),
        (PathBuf::from(BUSYBOX), BUSYBOX.to_owned()),
    ];
    for program in [MCP_BINARY, BUSYBOX] {
        for lib in shared_libraries(program) {
            if !files.iter().any(|(_, p)| *p == lib) {
                files.push((PathBuf::from(&lib), lib));
            }
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    files
}

fn shared_libraries(program: &str) -> Vec<String> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Vec::new();
    }
    assert!(out.status.success(), "ldd {program} failed: {text}");
    let mut libs = Vec::new();
    for line in text.lines() {
        assert!(!line.contains("not found"), "ldd {program}: {line}");
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
        // (0x...)", or "linux-vdso.so.1 (0x...)" (in the kernel, no file).
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(path.to_owned());
        }
    }
    libs
}

/// FNV-1a over every file's path and content: stable across toolchains (unlike std's
/// hasher), and collisions do not matter for a cache key of a few local images.
fn content_hash(files: &[(PathBuf, String)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    // The layout is part of the content: a change here must give a new tag.
    eat(format!("layout 1 {APPLETS:?} {MCP_IN_IMAGE}").as_bytes());
    for (src, dest) in files {
        let content =
            fs::read(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
        eat(dest.as_bytes());
        eat(&(content.len() as u64).to_le_bytes());
        eat(&content);
    }
    format!("{h:016x}")[..12].to_owned()
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", tag])
        .status
        .success()
}

fn import(files: &[(PathBuf, String)], tag: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("root");
    let mkdir = |p: &Path, mode: u32| {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    };
    mkdir(&root, 0o755);
    mkdir(&root.join("tmp"), 0o1777);
    for (src, dest) in files {
        let to = root.join(dest.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            mkdir(parent, 0o755);
        }
        // Follows symlinks: the image gets the library itself at the path ldd printed.
        fs::copy(src, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), to.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
    }
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    }

    let mut tar = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    let archive = tar.stdout.take().expect("tar's stdout is piped");
    let entrypoint = format!(r#"ENTRYPOINT ["{MCP_IN_IMAGE}"]"#);
    let import = Command::new("docker")
        .args(["import", "--change", &entrypoint, "-", tag])
        .stdin(Stdio::from(archive))
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker import: {e}"));
    let tar_status = tar.wait().expect("wait for tar");
    assert!(tar_status.success(), "tar failed: {tar_status}");
    assert!(
        import.status.success(),
        "docker import failed ({}): {}",
        import.status,
        String::from_utf8_lossy(&import.stderr).trim()
    );
}

/// Images of earlier builds of the server pile up (one per change); drop those no container
/// uses. `docker rmi` without `-f` refuses an image in use, which is what is wanted here.
fn remove_other_tags(keep: &str) {
    let listed = docker(&[
        "image",
        "ls",
        REPOSITORY,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    for image in String::from_utf8_lossy(&listed.stdout).lines() {
        if image != keep && image.starts_with(REPOSITORY) {
            let _ = docker(&["rmi", image]);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1. Binding and dropping leaves a window in
/// which another process could take it; for a port that a container binds (not this test
/// process, so no listener can be handed over) that is the best there is, and a clash shows
/// as a loud bind failure in the container's log, not a wrong result.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address").port()
}

/// A container name no other test (or test process) uses at the same time.
pub fn container_name() -> String {
    format!("dtma-test-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A test container, removed (`docker rm -f`) when dropped: after a pass, a failed
/// assertion or a panic alike.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique> ARGS...` (ARGS end with the image and its arguments).
    pub fn run(args: &[&str]) -> Container {
        // The guard exists before the container does: a half-created one is removed too.
        let c = Container {
            name: container_name(),
        };
        let mut full = vec!["run", "-d", "--name", &c.name];
        full.extend_from_slice(args);
        docker_ok(&full);
        c
    }

    /// Everything the container printed so far, stdout then stderr.
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn is_running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.name]).stdout == b"true\n"
    }

    /// Poll until something accepts TCP connections on 127.0.0.1:`port`, at most `attempts`
    /// times with a short pause between; fail with the container's log when it exits first or
    /// never listens.
    pub fn wait_listening(&self, port: u16, attempts: u32) {
        for attempt in 0..attempts {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            if attempt % 10 == 9 && !self.is_running() {
                panic!(
                    "container {} exited before listening on {port}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "container {} not listening on {port} after {attempts} attempts:\n{}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Never panic in drop (it may run during a panic); say what was left behind.
        let out = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
        let failure = match &out {
            Ok(o) if o.status.success() => return,
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "could not remove container {}: {failure}",
            self.name
        );
    }
}
