//! The locally built test image against the real Docker daemon: the test MCP server in it
//! speaks each mode's protocol over real HTTP, so the deploy tests can rely on it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::docker::{Container, MCP_BINARY, docker, docker_ok, free_port, image_for, test_image};
use serde_json::{Value, json};

/// Bounded polling for the container's port (a 50 ms pause between attempts).
const LISTEN_ATTEMPTS: u32 = 400;
const ACCEPT: &str = "application/json, text/event-stream";

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 exchange over a fresh connection (the server closes it after answering).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the MCP server");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .expect("send the request head");
    tcp.write_all(body).expect("send the request body");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        assert_eq!(body.len(), len, "body length differs from Content-Length");
        body.truncate(len);
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// POST one JSON-RPC message to `path` the way an MCP client does.
fn post(port: u16, path: &str, session: Option<&str>, message: &Value) -> Reply {
    let mut headers = vec![("Content-Type", "application/json"), ("Accept", ACCEPT)];
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
    }
    http(port, "POST", path, &headers, message.to_string().as_bytes())
}

/// A container of the test image in `mode`, on the host network, listening on a free port.
fn start(mode: &str, extra_env: &[&str]) -> (Container, u16) {
    let image = test_image();
    let port = free_port();
    let port_env = format!("MCP_PORT={port}");
    let mode_env = format!("MCP_MODE={mode}");
    let mut args = vec!["--network", "host", "-e", &port_env, "-e", &mode_env];
    for e in extra_env {
        args.extend(["-e", e]);
    }
    args.push(&image);
    let c = Container::run(&args);
    c.wait_listening(port, LISTEN_ATTEMPTS);
    (c, port)
}

fn assert_json_reply(r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
}

#[test]
fn image_is_reused_and_names_its_content() {
    let image = test_image();
    let tag = image
        .strip_prefix("dtma-test-mcp:")
        .unwrap_or_else(|| panic!("unexpected image reference {image}"));
    assert_eq!(tag.len(), 12, "{image}");
    assert!(tag.chars().all(|c| c.is_ascii_hexdigit()), "{image}");
    assert_eq!(test_image(), image);
    let entrypoint = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        &image,
    ]);
    assert_eq!(entrypoint, r#"["/usr/local/bin/dtma-test-mcp"]"#);
}

/// `deploy/test-image.sh` itself (no in-process cache): the same server gives the same image,
/// not a fresh import of it; a changed server gives a new tag.
#[test]
fn the_image_script_reuses_by_content() {
    let image = test_image();
    let id = |tag: &str| docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag]);
    let before = id(&image);
    assert_eq!(image_for(Path::new(MCP_BINARY)), image);
    assert_eq!(id(&image), before, "the image was imported again");

    // One byte appended to the server: still a valid program, other content, other tag.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let changed = dir.path().join("dtma-test-mcp");
    let mut bytes = std::fs::read(MCP_BINARY).expect("read the test server");
    bytes.push(0);
    std::fs::write(&changed, bytes).expect("write the changed copy");
    let other = image_for(&changed);
    assert_ne!(other, image);
    let _ = docker(&["rmi", &other]);
}

#[test]
fn busybox_applets_run_in_the_image() {
    let image = test_image();
    let c = Container::run(&[
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        "echo one two | cat; env | head -n 1 >/dev/null; sleep 0; echo done",
    ]);
    assert_eq!(docker_ok(&["wait", &c.name]), "0", "{}", c.logs());
    assert_eq!(c.logs(), "one two\ndone\n");
}

#[test]
fn legacy_mode_speaks_the_initialize_handshake() {
    let (c, port) = start("legacy", &[]);

    let init = post(
        port,
        "/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "dtma-test", "version": "0"},
        }}),
    );
    assert_json_reply(&init);
    let session = init
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id: {init:?}"))
        .to_owned();
    assert!(
        !session.is_empty() && session.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "session id must be visible ASCII: {session:?}"
    );
    let v = init.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    assert!(v["result"]["capabilities"].is_object(), "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "dtma-test-mcp");
    assert!(v["result"]["serverInfo"]["version"].is_string(), "{v}");

    let initialized = post(
        port,
        "/mcp",
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(initialized.status, 202, "{initialized:?}");
    assert!(initialized.body.is_empty(), "{initialized:?}");

    let ping = post(
        port,
        "/mcp",
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": "p", "method": "ping"}),
    );
    assert_json_reply(&ping);
    assert_eq!(
        ping.json(),
        json!({"jsonrpc": "2.0", "id": "p", "result": {}})
    );

    // A 2026-07-28 client probes first and must learn to fall back.
    let discover = post(
        port,
        "/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 7, "method": "server/discover", "params": {}}),
    );
    assert_json_reply(&discover);
    assert_eq!(discover.json()["error"]["code"], -32601, "{discover:?}");
    assert_eq!(discover.json()["id"], 7);

    let no_session = post(
        port,
        "/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    );
    assert_eq!(no_session.status, 400, "{no_session:?}");

    let delete = http(port, "DELETE", "/mcp", &[("Mcp-Session-Id", &session)], b"");
    assert!(
        (200..300).contains(&delete.status),
        "DELETE of the session: {delete:?}"
    );
    let ended = post(
        port,
        "/mcp",
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    );
    assert_eq!(ended.status, 404, "an ended session is unknown: {ended:?}");

    assert!(c.is_running(), "{}", c.logs());
}

#[test]
fn discover_mode_answers_server_discover_on_its_path() {
    let (c, port) = start("discover", &["MCP_PATH=/custom/mcp"]);

    let discover = post(
        port,
        "/custom/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": "d-1", "method": "server/discover", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
        }}),
    );
    assert_json_reply(&discover);
    assert!(discover.header("mcp-session-id").is_none(), "{discover:?}");
    let v = discover.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "d-1");
    assert_eq!(v["result"]["supportedVersions"], json!(["2026-07-28"]));
    assert!(v["result"]["capabilities"].is_object(), "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "dtma-test-mcp");

    let ping = post(
        port,
        "/custom/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
    );
    assert_json_reply(&ping);
    assert_eq!(
        ping.json(),
        json!({"jsonrpc": "2.0", "id": 5, "result": {}})
    );

    let init = post(
        port,
        "/custom/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": {}}),
    );
    assert_eq!(init.json()["error"]["code"], -32601, "{init:?}");

    let elsewhere = post(
        port,
        "/mcp",
        None,
        &json!({"jsonrpc": "2.0", "id": 8, "method": "server/discover"}),
    );
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");

    assert!(c.is_running(), "{}", c.logs());
}

#[test]
fn http_only_mode_answers_200_without_json_rpc() {
    let (_c, port) = start("http-only", &[]);
    for message in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover"}),
    ] {
        let r = post(port, "/mcp", None, &message);
        assert_eq!(r.status, 200, "{r:?}");
        // JSON, but no JSON-RPC response: a check that only looks for "any JSON" is caught too.
        let v = r.json();
        assert!(v.get("jsonrpc").is_none(), "{v}");
        assert!(v.get("result").is_none() && v.get("error").is_none(), "{v}");
    }
    let get = http(port, "GET", "/", &[], b"");
    assert_eq!(get.status, 200, "{get:?}");
}

#[test]
fn exit_mode_exits_with_the_given_code() {
    let image = test_image();
    let c = Container::run(&[
        "--network",
        "none",
        "-e",
        "MCP_MODE=exit",
        "-e",
        "MCP_EXIT_CODE=3",
        &image,
    ]);
    assert_eq!(docker_ok(&["wait", &c.name]), "3", "{}", c.logs());
    let logs = c.logs();
    assert!(logs.contains("exit mode"), "{logs}");
    assert!(logs.contains("exiting with status 3"), "{logs}");
}

/// `docker logs` of `c` (stdout, stderr), polled (bounded, 50 ms apart) until `enough` holds.
fn logs_until(c: &Container, what: &str, enough: impl Fn(&str) -> bool) -> (String, String) {
    for _ in 0..LISTEN_ATTEMPTS {
        let out = docker(&["logs", &c.name]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if enough(&stdout) {
            return (stdout, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{}: the log never had {what}:\n{}", c.name, c.logs());
}

fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn stamp_mode_lines_carry_the_writers_realtime_clock() {
    let before = realtime_ns();
    let (c, _port) = start(
        "discover",
        &[
            "MCP_LOG_EVERY_MS=5",
            "MCP_LOG_MODE=stamp",
            "MCP_LOG_PREFIX=st",
        ],
    );
    let stamped = |out: &str| -> Vec<(u64, u128)> {
        out.lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("st ")?.split(' ');
                let n = w.next()?.parse().ok()?;
                let ns = w.next()?.parse().ok()?;
                w.next().is_none().then_some((n, ns))
            })
            .collect()
    };
    let (out, err) = logs_until(&c, "20 stamped lines", |o| stamped(o).len() >= 20);
    let after = realtime_ns();
    let lines = stamped(&out);
    let numbers: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert!(numbers.iter().copied().eq(1..=lines.len() as u64), "{out}");
    for (n, ns) in &lines {
        assert!(
            (before..=after).contains(ns),
            "line {n}: {ns} is not between {before} and {after}"
        );
    }
    assert!(
        lines.windows(2).all(|w| w[1].1 >= w[0].1 + 4_000_000),
        "5 ms apart at least: {out}"
    );
    assert!(!err.contains("st "), "stamp lines go to stdout only: {err}");
}

#[test]
fn a_sigusr1_burst_writes_exactly_the_bytes_asked_then_a_done_line() {
    let (c, _port) = start(
        "discover",
        &[
            "MCP_LOG_BYTES=100000",
            "MCP_LOG_LINE_BYTES=64",
            "MCP_LOG_PREFIX=b",
        ],
    );
    // Nothing before the signal.
    assert!(!c.logs().contains("b 1."), "{}", c.logs());
    for k in 1..=2u64 {
        let before = realtime_ns();
        docker_ok(&["kill", "-s", "USR1", &c.name]);
        let done = format!("b done {k} 100000 ");
        let (out, _) = logs_until(&c, &done, |o| o.contains(&done));
        let head = format!("b {k}.");
        let lines: Vec<&str> = out
            .split_inclusive('\n')
            .filter(|l| l.starts_with(&head))
            .collect();
        let total: usize = lines.iter().map(|l| l.len()).sum();
        assert_eq!(total, 100_000, "burst {k}");
        assert_eq!(lines.len(), 100_000_usize.div_ceil(64), "burst {k}");
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
        for (i, l) in lines.iter().enumerate() {
            assert!(l.starts_with(&format!("b {k}.{} x", i + 1)), "{l:?}");
        }
        let stamp = |head: &str| -> u128 {
            out.lines()
                .find_map(|l| l.strip_prefix(head))
                .and_then(|ns| ns.parse().ok())
                .unwrap_or_else(|| panic!("no `{head}<ns>` line: {out}"))
        };
        let start = format!("b start {k} ");
        let (began, ended) = (stamp(&start), stamp(&done));
        assert!(before <= began && began <= ended && ended <= realtime_ns());
        // start, the burst, done: in that order.
        let (first, last) = (
            out.find(lines[0]).unwrap(),
            out.find(lines[lines.len() - 1]).unwrap(),
        );
        assert!(out.find(&start).unwrap() < first && out.find(&done).unwrap() > last);
    }
    assert!(c.is_running(), "SIGUSR1 must not end the server");
}
