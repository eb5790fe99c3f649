//! The package and the droplet install path, through the real artefacts:
//! - the .deb (`deploy/deb.sh`, release build) installed, upgraded, removed and purged in a
//!   clean Debian bookworm container made locally (`deploy/test-rootfs.sh`: debootstrap, cached
//!   by month), with `--network none`: files and modes, users and group, the unit enabled and
//!   not started, a local edit of the config kept across an upgrade, what a purge removes;
//! - `deploy/install.sh` run in such a container with the local .deb (no Docker, no start): the
//!   token's mode, the settings written into `/etc/dtma/dtma.env`, a bad setting refused;
//! - `deploy/cloud-init.yaml` parses and embeds `deploy/install.sh` verbatim
//!   (`UPDATE_CLOUD_INIT=1` rewrites the copy); the scripts pass `bash -n` and shellcheck;
//! - the config templates name real settings (`dtma check-config` accepts them uncommented).
//!
//! The host's own dpkg database is never touched: every dpkg and apt command runs in a container.
//! Cold (no cached rootfs, no release build) this takes a few minutes; warm, about a minute.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::docker::Container;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOKEN: &str = "deb-test-token-0123456789abcdef";

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run a command to its end; panic when it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command; panic with its output unless it succeeds; its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The package, built by `deploy/deb.sh` into `dir` with this Debian version.
fn build_deb(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("dtma_{version}.deb"));
    run_ok(
        Command::new("bash")
            .arg(root().join("deploy/deb.sh"))
            .args(["--fast", "--deb-version", version, "--output"])
            .arg(&path),
    );
    assert!(path.is_file(), "deploy/deb.sh made no {}", path.display());
    path
}

/// The clean Debian image (`deploy/test-rootfs.sh` prints its reference).
fn debian_image() -> String {
    let image = run_ok(Command::new("bash").arg(root().join("deploy/test-rootfs.sh")));
    let image = image.trim().to_owned();
    assert!(
        image.starts_with("dtma-test-debian:"),
        "deploy/test-rootfs.sh printed `{image}`"
    );
    image
}

/// A Debian container without a network, `pkgs` mounted read-only at /pkg and `deploy/` at
/// /src; removed when dropped.
fn debian(image: &str, pkgs: &Path) -> Container {
    let pkg = format!("{}:/pkg:ro", pkgs.display());
    let src = format!("{}:/src:ro", root().join("deploy").display());
    Container::run(&[
        "--network",
        "none",
        "-v",
        &pkg,
        "-v",
        &src,
        image,
        "sleep",
        "infinity",
    ])
}

/// `sh -c SCRIPT` in the container, with `env`.
fn sh_in(c: &Container, env: &[(&str, &str)], script: &str) -> Output {
    let mut cmd = Command::new("docker");
    cmd.arg("exec");
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.args([c.name.as_str(), "sh", "-c", script]);
    run(&mut cmd)
}

/// `sh -c SCRIPT` in the container; panics with its output unless it exits 0; stdout + stderr.
fn sh(c: &Container, script: &str) -> String {
    let out = sh_in(c, &[], script);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{all}",
        out.status
    );
    all
}

/// `stat` of each path: "MODE USER GROUP PATH" lines.
fn modes(c: &Container, paths: &[&str]) -> Vec<String> {
    sh(c, &format!("stat -c '%a %U %G %n' {}", paths.join(" ")))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn exists(c: &Container, path: &str) -> bool {
    sh_in(c, &[], &format!("test -e {path} || test -L {path}"))
        .status
        .success()
}

#[test]
fn the_package_installs_upgrades_and_purges_in_a_clean_debian() {
    let pkgs = tempfile::tempdir().unwrap();
    let v1 = build_deb(pkgs.path(), "0.1.0-1");
    let v2 = build_deb(pkgs.path(), "0.1.0-2");
    let v1 = format!("/pkg/{}", v1.file_name().unwrap().to_string_lossy());
    let v2 = format!("/pkg/{}", v2.file_name().unwrap().to_string_lossy());
    let c = debian(&debian_image(), pkgs.path());

    // Dependencies: libc6 (from the binary) and the helper the maintainer scripts use.
    let info = sh(&c, &format!("dpkg-deb --field {v1} Depends"));
    let depends: Vec<&str> = info.trim().split(", ").collect();
    assert!(
        depends.iter().any(|d| d.starts_with("libc6")),
        "Depends: {info}"
    );
    assert!(depends.contains(&"init-system-helpers"), "Depends: {info}");
    assert_eq!(depends.len(), 2, "Depends is minimal: {info}");

    // No systemd runs in the container: postinst must neither need it nor try to start the unit.
    assert!(!exists(&c, "/run/systemd/system"));
    let install = sh(&c, &format!("apt-get install -y -q {v1}"));
    assert!(install.contains("enabled, not started"), "{install}");

    let expected = [
        "755 root root /usr/bin/dtma",
        "644 root root /usr/lib/systemd/system/dtma.service",
        "750 root dtma /etc/dtma",
        "640 root dtma /etc/dtma/config.toml",
        "640 root dtma /etc/dtma/dtma.env",
        "750 root root /var/log/dtma",
        "644 root root /usr/share/bash-completion/completions/dtma",
        "644 root root /usr/share/zsh/vendor-completions/_dtma",
        "644 root root /usr/share/fish/vendor_completions.d/dtma.fish",
    ];
    let paths: Vec<&str> = expected
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(modes(&c, &paths), expected);
    let conffiles = sh(&c, "dpkg-query -W -f='${Conffiles}' dtma");
    for f in ["/etc/dtma/config.toml", "/etc/dtma/dtma.env"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    // The packaged unit is deploy/dtma.service, byte for byte, and runs /usr/bin/dtma.
    let unit = sh(&c, "cat /usr/lib/systemd/system/dtma.service");
    assert_eq!(
        unit,
        std::fs::read_to_string(root().join("deploy/dtma.service")).unwrap()
    );
    assert!(unit.lines().any(|l| l == "ExecStart=/usr/bin/dtma"));

    // The sandbox users: system accounts without a shell or a home; the group; no `dtma` user.
    for user in ["dtma-diagnostics", "dtma-operator"] {
        let entry = sh(&c, &format!("getent passwd {user}"));
        let fields: Vec<&str> = entry.trim().split(':').collect();
        assert_eq!(fields[0], user);
        let uid: u32 = fields[2].parse().unwrap();
        assert!(uid < 1000, "{user} is not a system user: {entry}");
        assert_eq!(fields[5], "/nonexistent", "{entry}");
        assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    }
    assert!(!exists(&c, "/nonexistent"));
    let group = sh(&c, "getent group dtma");
    let gid: u32 = group.split(':').nth(2).unwrap().parse().unwrap();
    assert!(gid < 1000, "dtma is not a system group: {group}");
    assert!(!sh_in(&c, &[], "getent passwd dtma").status.success());

    // Enabled, not running.
    assert_eq!(
        sh(&c, "systemctl is-enabled dtma.service").trim(),
        "enabled"
    );
    let running = sh(
        &c,
        "for p in /proc/[0-9]*; do readlink $p/exe; done | grep -c /usr/bin/dtma || true",
    );
    assert_eq!(running.trim(), "0", "postinst started the agent");

    let version = sh(&c, "dtma --version");
    assert!(version.starts_with("dtma 0.1.0"), "{version}");
    assert!(sh(&c, "cat /usr/share/bash-completion/completions/dtma").contains("dtma"));
    assert!(sh(&c, "cat /usr/share/zsh/vendor-completions/_dtma").starts_with("#compdef dtma"));
    assert!(
        sh(&c, "cat /usr/share/fish/vendor_completions.d/dtma.fish").contains("complete -c dtma")
    );

    // The token is readable by the group: a member's `dtma status` finds it and only fails to
    // reach the (stopped) agent (69); a non-member finds no token (67).
    sh(
        &c,
        &format!(
            "useradd -m alice && usermod -aG dtma alice && useradd -m bob && \
             (umask 027; printf '%s\\n' {TOKEN} > /etc/dtma/bearer_token) && \
             chgrp dtma /etc/dtma/bearer_token"
        ),
    );
    let member = sh_in(
        &c,
        &[],
        "setpriv --reuid=alice --regid=alice --init-groups dtma status",
    );
    let err = text(&member.stderr);
    assert_eq!(member.status.code(), Some(69), "{err}");
    let outsider = sh_in(
        &c,
        &[],
        "setpriv --reuid=bob --regid=bob --init-groups dtma status",
    );
    let err = text(&outsider.stderr);
    assert_eq!(outsider.status.code(), Some(67), "{err}");
    assert!(
        err.contains("cannot read `/etc/dtma/bearer_token`: Permission denied"),
        "{err}"
    );

    // An upgrade keeps a local edit of the config (and the modes), and the unit enabled.
    sh(
        &c,
        "printf '\\n# edited on the droplet\\nmax_streams = 500\\n' >> /etc/dtma/config.toml",
    );
    sh(&c, &format!("apt-get install -y -q {v2}"));
    assert_eq!(sh(&c, "dpkg-query -W -f='${Version}' dtma"), "0.1.0-2");
    let config = sh(&c, "cat /etc/dtma/config.toml");
    assert!(config.contains("max_streams = 500"), "{config}");
    assert_eq!(modes(&c, &paths), expected);
    assert_eq!(
        sh(&c, "systemctl is-enabled dtma.service").trim(),
        "enabled"
    );

    // Remove: the binary goes, the configuration and the token stay.
    sh(&c, "dpkg --remove dtma");
    assert!(!exists(&c, "/usr/bin/dtma"));
    assert!(!exists(&c, "/usr/lib/systemd/system/dtma.service"));
    assert!(exists(&c, "/etc/dtma/config.toml"));
    assert!(exists(&c, "/etc/dtma/bearer_token"));

    // Purge: configuration, secrets, logs, the unit's state and the mode overrides go; the
    // system accounts stay (deploy/debian/postrm says why).
    sh(&c, "dpkg --purge dtma");
    for gone in [
        "/etc/dtma",
        "/var/log/dtma",
        "/etc/systemd/system/dtma.service",
        "/etc/systemd/system/multi-user.target.wants/dtma.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/dtma.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/dtma.service",
    ] {
        assert!(!exists(&c, gone), "{gone} is left after the purge");
    }
    assert_eq!(
        sh(&c, "dpkg-statoverride --list | grep -c dtma || true").trim(),
        "0"
    );
    sh(
        &c,
        "getent passwd dtma-diagnostics dtma-operator && getent group dtma",
    );
    assert!(!sh_in(&c, &[], "dpkg -s dtma").status.success());

    // A reinstall after the purge is a first install again.
    sh(&c, &format!("apt-get install -y -q {v2}"));
    assert_eq!(
        sh(&c, "systemctl is-enabled dtma.service").trim(),
        "enabled"
    );
    assert_eq!(modes(&c, &paths), expected);
}

#[test]
fn install_sh_installs_the_package_and_writes_the_token_and_the_settings() {
    let pkgs = tempfile::tempdir().unwrap();
    let deb = build_deb(pkgs.path(), "0.1.0-1");
    let deb = format!("/pkg/{}", deb.file_name().unwrap().to_string_lossy());
    let c = debian(&debian_image(), pkgs.path());

    let key = "backend-key-0123456789abcdef";
    let script = format!(
        "bash /src/install.sh --deb {deb} --skip-docker --no-start \
         --api-base-url https://api.example.test --agent-id droplet-7 \
         --set DTMA_MCP_NETWORK=host"
    );
    let out = sh_in(
        &c,
        &[
            ("DTMA_BEARER_TOKEN", TOKEN),
            ("BACKEND_TO_DTMA_API_KEY", key),
        ],
        &script,
    );
    let log = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "install.sh failed:\n{log}");
    assert!(log.contains("configured, not started"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains(key),
        "a secret in the output:\n{log}"
    );

    assert_eq!(
        modes(&c, &["/etc/dtma/bearer_token", "/etc/dtma/backend_api_key"]),
        [
            "640 root dtma /etc/dtma/bearer_token",
            "640 root dtma /etc/dtma/backend_api_key"
        ]
    );
    assert_eq!(sh(&c, "cat /etc/dtma/bearer_token"), format!("{TOKEN}\n"));
    assert_eq!(sh(&c, "cat /etc/dtma/backend_api_key"), format!("{key}\n"));
    let active = |env: &str| -> Vec<String> {
        env.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let env = sh(&c, "cat /etc/dtma/dtma.env");
    assert_eq!(
        active(&env),
        [
            "DTMA_CONFIG=/etc/dtma/config.toml",
            "AGENTOPIA_API_BASE_URL=https://api.example.test",
            "DTMA_AGENT_ID=droplet-7",
            "BACKEND_TO_DTMA_API_KEY_FILE=/etc/dtma/backend_api_key",
            "DTMA_MCP_NETWORK=host",
        ],
        "{env}"
    );
    assert!(env.contains("# The backend. Unset"), "comments kept: {env}");
    assert_eq!(
        modes(&c, &["/etc/dtma/dtma.env"]),
        ["640 root dtma /etc/dtma/dtma.env"]
    );
    assert_eq!(
        sh(&c, "systemctl is-enabled dtma.service").trim(),
        "enabled"
    );

    // A rerun replaces a value in place (the package is installed: no --deb needed) and keeps
    // the token when none is given.
    sh(
        &c,
        "bash /src/install.sh --skip-docker --no-start --api-base-url https://other.example.test",
    );
    let env = active(&sh(&c, "cat /etc/dtma/dtma.env"));
    assert_eq!(
        env.iter()
            .filter(|l| l.starts_with("AGENTOPIA_API_BASE_URL="))
            .collect::<Vec<_>>(),
        ["AGENTOPIA_API_BASE_URL=https://other.example.test"]
    );
    assert_eq!(sh(&c, "cat /etc/dtma/bearer_token"), format!("{TOKEN}\n"));

    // A setting the agent would refuse stops the script before anything starts, says why, and
    // leaves dtma.env as it was.
    let before = sh(&c, "cat /etc/dtma/dtma.env");
    let bad = sh_in(
        &c,
        &[],
        "bash /src/install.sh --skip-docker --no-start --set DTMA_MAX_STREAMS=0",
    );
    let err = text(&bad.stderr);
    assert!(!bad.status.success(), "a bad setting was accepted");
    assert!(err.contains("DTMA_MAX_STREAMS"), "{err}");
    assert_eq!(sh(&c, "cat /etc/dtma/dtma.env"), before);
}

/// The copy of deploy/install.sh inside deploy/cloud-init.yaml: the literal block under
/// `path: /usr/local/sbin/dtma-install.sh`, indented by six spaces.
fn with_embedded_script(yaml: &str, script: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let path = lines
        .iter()
        .position(|l| l.trim() == "- path: /usr/local/sbin/dtma-install.sh")
        .expect("cloud-init.yaml writes /usr/local/sbin/dtma-install.sh");
    let content = path
        + lines[path..]
            .iter()
            .position(|l| l.trim() == "content: |")
            .expect("its content is a literal block");
    let end = content
        + 1
        + lines[content + 1..]
            .iter()
            .position(|l| !l.is_empty() && !l.starts_with("      "))
            .unwrap_or(lines.len() - content - 1);
    let mut out: Vec<String> = lines[..=content].iter().map(|l| l.to_string()).collect();
    out.extend(script.lines().map(|l| {
        if l.is_empty() {
            String::new()
        } else {
            format!("      {l}")
        }
    }));
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

#[test]
fn cloud_init_parses_and_embeds_install_sh_verbatim() {
    let yaml_path = root().join("deploy/cloud-init.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let script = std::fs::read_to_string(root().join("deploy/install.sh")).unwrap();
    let expected = with_embedded_script(&yaml, &script);
    if std::env::var("UPDATE_CLOUD_INIT").is_ok_and(|v| v == "1") {
        std::fs::write(&yaml_path, &expected).unwrap();
    } else {
        assert!(
            yaml == expected,
            "deploy/cloud-init.yaml's copy of deploy/install.sh is out of date; rewrite it with \
             `UPDATE_CLOUD_INIT=1 cargo test --test deb cloud_init`"
        );
    }
    assert!(yaml.starts_with("#cloud-config\n"));
    // What cloud-init itself will read (PyYAML, as cloud-init uses): the script as written,
    // with its mode, and a run command that calls it.
    let parsed = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
         d = yaml.safe_load(open(sys.argv[1]))\n\
         files = {f['path']: f for f in d['write_files']}\n\
         print(json.dumps({'script': files['/usr/local/sbin/dtma-install.sh']['content'],\n\
           'mode': files['/usr/local/sbin/dtma-install.sh']['permissions'],\n\
           'env_mode': files['/etc/dtma-install.env']['permissions'],\n\
           'runcmd': d['runcmd']}))",
            )
            .arg(&yaml_path),
    );
    let parsed: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    assert_eq!(parsed["script"], script.as_str());
    assert_eq!(parsed["mode"], "0755");
    assert_eq!(parsed["env_mode"], "0600");
    assert!(
        parsed["runcmd"]
            .to_string()
            .contains("/usr/local/sbin/dtma-install.sh"),
        "{}",
        parsed["runcmd"]
    );
}

#[test]
fn the_shell_scripts_pass_bash_n_and_shellcheck() {
    let scripts = [
        "deploy/install.sh",
        "deploy/deb.sh",
        "deploy/test-rootfs.sh",
        "deploy/debian/postinst",
        "deploy/debian/prerm",
        "deploy/debian/postrm",
    ];
    for s in scripts {
        let path = root().join(s);
        let shell = if s.starts_with("deploy/debian/") {
            "sh"
        } else {
            "bash"
        };
        run_ok(Command::new(shell).arg("-n").arg(&path));
    }
    let out = Command::new("shellcheck")
        .args(scripts)
        .current_dir(root())
        .output()
        .expect("shellcheck (Debian package `shellcheck`; .ci/test.sh installs it)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        text(&out.stdout) + &text(&out.stderr)
    );
}

/// Every setting the templates show, uncommented, is one the agent accepts: the config file's
/// keys and tables, and the environment file's variables.
#[test]
fn the_config_templates_name_real_settings() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("/etc/dtma/backend-ca.pem", {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            cert.cert.pem()
        }),
        (
            "/etc/dtma/backend_api_key",
            "backend-key-0123456789".to_owned(),
        ),
        (
            "/etc/dtma/oncall.token",
            "oncall-token-0123456789".to_owned(),
        ),
    ];
    let local = |path: &str| dir.path().join(path.rsplit('/').next().unwrap());
    for (path, content) in &files {
        std::fs::write(local(path), content).unwrap();
    }
    let relocate = |line: &str| {
        files.iter().fold(line.to_owned(), |l, (path, _)| {
            l.replace(path, &local(path).display().to_string())
        })
    };

    let config = std::fs::read_to_string(root().join("deploy/config.toml")).unwrap();
    let setting = regex::Regex::new(r"^# (\[|[a-z_]+ = )").unwrap();
    let mut uncommented = 0;
    let config: Vec<String> = config
        .lines()
        .map(|l| {
            if setting.is_match(l) {
                uncommented += 1;
                relocate(&l[2..])
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(uncommented > 20, "only {uncommented} settings found");
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config.join("\n")).unwrap();

    let env = std::fs::read_to_string(root().join("deploy/dtma.env")).unwrap();
    let variable = regex::Regex::new(r"^#?([A-Z_]+)=(.*)$").unwrap();
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| variable.captures(l))
        .map(|c| (c[1].to_owned(), relocate(&c[2])))
        .map(|(k, v)| match k.as_str() {
            "DTMA_CONFIG" => (k, config_path.display().to_string()),
            _ => (k, v),
        })
        .collect();
    assert!(vars.len() >= 7, "{vars:?}");

    let out = run(Command::new(env!("CARGO_BIN_EXE_dtma"))
        .arg("check-config")
        .env_clear()
        .env("DTMA_BEARER_TOKEN", TOKEN)
        .envs(vars.iter().map(|(k, v)| (k, v))));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refused the templates:\n{}",
        text(&out.stderr)
    );
    // Both files were read: a value only the config file sets, and one from the environment.
    assert!(stdout.contains("\"oncall\""), "{stdout}");
    assert!(stdout.contains("api.example.com"), "{stdout}");
}
