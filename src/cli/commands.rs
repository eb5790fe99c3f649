//! What each client subcommand asks the agent and how it shows the answer.

use base64::Engine as _;
use hyper::Method;
use serde_json::{Value, json};
use std::io::Write;

use super::args::{ExecArgs, LogsArgs, StatusArgs};
use super::client::{Client, Events, Failure};

/// `dtma exec`: the command's exit code, or the failure that kept it from running.
pub async fn exec(client: &Client, args: &ExecArgs) -> Result<u8, Failure> {
    let mut body = json!({ "command": command_line(&args.command) });
    if let Some(timeout) = args.timeout {
        body["timeout"] = timeout.into();
    }
    let mut events = client
        .events(Method::POST, "/ssh/execute?stream=true", Some(&body))
        .await?;
    while let Some(event) = events.next().await? {
        match event.name.as_str() {
            "stdout" | "stderr" => chunk(&event.name, &event.json()?)?,
            "exit" => return Ok(exit_status(&event.json()?)),
            "error" => return Err(stream_error(&event.json()?)),
            // `started`, and whatever a newer agent adds.
            _ => {}
        }
    }
    Err(Failure::Protocol(
        "the agent ended the stream before the command's exit".into(),
    ))
}

/// One argument is shell code as written; several are words, each quoted for `/bin/sh`.
pub fn command_line(words: &[String]) -> String {
    match words {
        [one] => one.clone(),
        _ => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `exit` event as an exit code: the command's own, 128+signal, or 124 for a timeout
/// (as `timeout(1)`). What the code alone cannot say goes to stderr.
fn exit_status(exit: &Value) -> u8 {
    let flag = |k: &str| exit.get(k).and_then(Value::as_bool).unwrap_or(false);
    let number = |k: &str| exit.get(k).and_then(Value::as_i64);
    if flag("truncated") {
        eprintln!("dtma: the output was cut at the agent's limit (DTMA_EXEC_MAX_OUTPUT_BYTES)");
    }
    if flag("timed_out") {
        eprintln!("dtma: the command timed out (--timeout MS sets a longer one)");
        return 124;
    }
    if flag("cancelled") {
        eprintln!("dtma: the agent cancelled the command (it is shutting down)");
    }
    match (number("exit_code"), number("signal")) {
        (Some(code), _) => u8::try_from(code.clamp(0, 255)).unwrap_or(255),
        (None, Some(signal)) => u8::try_from((128 + signal).clamp(0, 255)).unwrap_or(255),
        (None, None) => 255,
    }
}

/// An `error` event of a stream (`{code, message}`).
fn stream_error(v: &Value) -> Failure {
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    match v.get("code").and_then(Value::as_str) {
        Some("not_found") => Failure::NotFound(message),
        Some("docker_unavailable" | "shutting_down") => Failure::Unavailable(message),
        _ => Failure::Agent(message),
    }
}

/// A `stdout`/`stderr` event's `{encoding, data}`, to our stdout or stderr.
fn chunk(fd: &str, v: &Value) -> Result<(), Failure> {
    let data = v.get("data").and_then(Value::as_str).unwrap_or_default();
    let bytes = match v.get("encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| Failure::Protocol(format!("a base64 chunk does not decode: {e}")))?,
        _ => data.as_bytes().to_vec(),
    };
    write(fd, &bytes)
}

/// Written and flushed chunk by chunk, so output shows as it arrives. Blocking writes on
/// purpose: a slow reader of our stdout stops us reading the agent's answer, and the agent
/// then slows the command (its SSE window).
fn write(fd: &str, bytes: &[u8]) -> Result<(), Failure> {
    if fd == "stderr" {
        put(&mut std::io::stderr().lock(), bytes)
    } else {
        put(&mut std::io::stdout().lock(), bytes)
    }
}

fn put(w: &mut impl Write, bytes: &[u8]) -> Result<(), Failure> {
    w.write_all(bytes).map_err(Failure::Output)?;
    w.flush().map_err(Failure::Output)
}

/// `dtma status`.
pub async fn status(client: &Client, args: &StatusArgs) -> Result<u8, Failure> {
    let v = client.json(Method::GET, "/status", None).await?;
    let text = if args.json {
        pretty(&v)
    } else {
        render_status(&v)
    };
    put(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(0)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// `/status` as a readable table. Fields an older agent lacks show as `-`.
pub fn render_status(v: &Value) -> String {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| match x {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    };
    let channel = match (v.pointer("/channel/state"), v.get("channel_connected")) {
        (Some(state), _) => {
            let state = state.as_str().unwrap_or("-").replace('_', "-");
            match v.pointer("/channel/url").and_then(Value::as_str) {
                Some(url) => format!("{state}  {url}"),
                None => state,
            }
        }
        (None, Some(Value::Bool(up))) => if *up { "connected" } else { "not connected" }.into(),
        _ => "-".into(),
    };
    let sandbox = {
        let mut text = format!("{} (level {})", s("/sandbox/mode"), s("/sandbox/level"));
        if let Some(abi) = v.pointer("/sandbox/landlock_abi").and_then(Value::as_u64) {
            text.push_str(&format!(", Landlock ABI {abi}"));
        }
        let degradations: Vec<&str> = v
            .pointer("/sandbox/degradations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for d in degradations {
            text.push_str(&format!("\n           degraded: {d}"));
        }
        let refused: Vec<&str> = v
            .pointer("/sandbox/refused_profiles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !refused.is_empty() {
            text.push_str(&format!(
                "\n           refused: commands of the {} profiles",
                refused.join(" and ")
            ));
        }
        text
    };
    let docker = match v.get("docker_error").and_then(Value::as_str) {
        Some(e) => format!("unreachable: {e}"),
        None => "reachable".into(),
    };
    let rows = [
        (
            "AGENT",
            format!(
                "{}  dtma {} (commit {}, protocol {}), {}, up {}",
                s("/agent_id"),
                s("/version"),
                s("/commit"),
                s("/protocol_version"),
                s("/status"),
                v.get("uptime_s")
                    .and_then(Value::as_u64)
                    .map_or("-".into(), duration)
            ),
        ),
        ("CHANNEL", channel),
        (
            "STREAMS",
            format!(
                "{} running, {} held (channel)",
                s("/streams/running"),
                s("/streams/held")
            ),
        ),
        ("SANDBOX", sandbox),
        ("DOCKER", docker),
        ("LOCAL API", format!("port {}", s("/environment/port"))),
    ];
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{key:<10} {value}\n"));
    }
    out.push_str("\nMCP SERVERS\n");
    let servers = v
        .get("tool_instances")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if servers.is_empty() {
        out.push_str("no MCP servers\n");
        return out;
    }
    let mut table = vec![
        ["NAME", "STATE", "DOCKER", "IMAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for t in &servers {
        let f = |k: &str| match t.get(k) {
            Some(Value::String(s)) => s.clone(),
            _ => "-".into(),
        };
        table.push(vec![
            f("instance_name_on_toolbox"),
            f("server_state"),
            f("status"),
            f("image"),
        ]);
    }
    out.push_str(&render_table(&table));
    out
}

/// `3d4h`, `2h5m`, `4m10s`, `9s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Columns padded to their widest cell, two spaces apart; the first row is the heading.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `dtma logs`.
pub async fn logs(client: &Client, args: &LogsArgs) -> Result<u8, Failure> {
    let path = format!(
        "/mcp/servers/{}/logs?tail={}&timestamps={}&follow={}",
        encode_segment(&args.server),
        args.tail,
        args.timestamps,
        args.follow
    );
    if !args.follow {
        let v = client.json(Method::GET, &path, None).await?;
        for fd in ["stdout", "stderr"] {
            let text = v.get(fd).and_then(Value::as_str).unwrap_or_default();
            write(fd, text.as_bytes())?;
        }
        if v.get("truncated").and_then(Value::as_bool) == Some(true) {
            eprintln!("dtma: the tail was cut at the agent's limit; ask for fewer lines");
        }
        return Ok(0);
    }
    let mut events: Events = client.events(Method::GET, &path, None).await?;
    while let Some(event) = events.next().await? {
        match event.name.as_str() {
            "stdout" | "stderr" => chunk(&event.name, &event.json()?)?,
            "progress" => {
                let v = event.json()?;
                match v.get("step").and_then(Value::as_str) {
                    Some("waiting") => eprintln!("dtma: waiting for the container to run"),
                    Some("container_restarted") => eprintln!("dtma: the container restarted"),
                    _ => {}
                }
            }
            "end" => {
                let v = event.json()?;
                if let Some(reason) = v.get("reason").and_then(Value::as_str)
                    && reason != "ended"
                {
                    eprintln!("dtma: the log ended: {}", reason.replace('_', " "));
                }
                return Ok(0);
            }
            "error" => return Err(stream_error(&event.json()?)),
            _ => {}
        }
    }
    Err(Failure::Protocol(
        "the agent ended the log stream without saying why".into(),
    ))
}

/// A path segment, percent-encoded beyond the unreserved characters.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `dtma mcp ls`.
pub async fn mcp_ls(client: &Client, as_json: bool) -> Result<u8, Failure> {
    let v = client.json(Method::GET, "/mcp/status", None).await?;
    let text = if as_json {
        pretty(&v)
    } else {
        let status: dtma_protocol::StatusResult = serde_json::from_value(v)
            .map_err(|e| Failure::Protocol(format!("/mcp/status: {e}")))?;
        render_servers(&status)
    };
    put(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(0)
}

/// The servers of `/mcp/status`, one row each.
pub fn render_servers(status: &dtma_protocol::StatusResult) -> String {
    let mut rows = vec![
        [
            "GROUP", "NAME", "STATE", "DOCKER", "IMAGE", "PORTS", "RESTARTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for g in &status.groups {
        for s in &g.servers {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}->{}/{}",
                        p.host_ip,
                        p.host_port,
                        p.container_port,
                        wire(&p.protocol)
                    )
                })
                .collect();
            rows.push(vec![
                g.group_id.clone(),
                s.instance_name.clone(),
                wire(&s.state),
                s.docker_state.clone(),
                s.image.clone(),
                if ports.is_empty() {
                    "-".into()
                } else {
                    ports.join(",")
                },
                s.restart_count.to_string(),
            ]);
        }
    }
    if rows.len() == 1 {
        return "no MCP servers\n".into();
    }
    render_table(&rows)
}

/// An enum value by its wire name (its serde form), for tables.
fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "-".into(),
    }
}

/// `dtma mcp restart NAME`.
pub async fn mcp_restart(client: &Client, name: &str) -> Result<u8, Failure> {
    let path = format!("/mcp/servers/{}/restart", encode_segment(name));
    let v = client.json(Method::POST, &path, None).await?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let text = format!(
        "restarted {}: {} (container {})\n",
        field("instance_name"),
        field("state"),
        field("container_id").chars().take(12).collect::<String>()
    );
    put(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_and_one_line_is_kept() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&w(&["ls | wc -l"])), "ls | wc -l");
        assert_eq!(
            command_line(&w(&["sh", "-c", "echo a; exit 3"])),
            "sh -c 'echo a; exit 3'"
        );
        assert_eq!(
            command_line(&w(&["echo", "it's", "", "$HOME"])),
            r"echo 'it'\''s' '' '$HOME'"
        );
    }

    #[test]
    fn exit_events_become_exit_codes() {
        assert_eq!(exit_status(&json!({"exit_code": 3, "signal": null})), 3);
        assert_eq!(exit_status(&json!({"exit_code": null, "signal": 9})), 137);
        assert_eq!(
            exit_status(&json!({"exit_code": null, "signal": 15, "timed_out": true})),
            124
        );
        assert_eq!(exit_status(&json!({"exit_code": 0})), 0);
    }

    #[test]
    fn the_status_table_reads_an_old_and_a_new_agent() {
        let new = json!({
            "status": "healthy", "version": "0.1.0", "commit": "abc1234", "protocol_version": 1,
            "agent_id": "droplet-1", "uptime_s": 3725,
            "environment": {"port": 30000},
            "channel": {"state": "connected", "url": "wss://api.example.com/dtma/connect"},
            "streams": {"running": 2, "held": 3},
            "sandbox": {"mode": "enforce", "level": "partial", "landlock_abi": 3,
                        "degradations": ["no Landlock network rules"],
                        "refused_profiles": ["diagnostics", "operator"]},
            "tool_instances": [{"instance_name_on_toolbox": "reasoning", "server_state": "ready",
                                "status": "running", "image": "busybox"}],
            "docker_error": null,
        });
        let text = render_status(&new);
        for want in [
            "CHANNEL    connected  wss://api.example.com/dtma/connect",
            "STREAMS    2 running, 3 held (channel)",
            "SANDBOX    enforce (level partial), Landlock ABI 3",
            "degraded: no Landlock network rules",
            "refused: commands of the diagnostics and operator profiles",
            "up 1h2m",
            "MCP SERVERS\nNAME",
            "reasoning  ready  running  busybox",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let old = json!({"channel_connected": false, "tool_instances": []});
        let text = render_status(&old);
        assert!(text.contains("CHANNEL    not connected"), "{text}");
        assert!(text.ends_with("no MCP servers\n"), "{text}");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
