//! The contract documents stay in step with the types:
//! * every file in `protocol/examples/` decodes and re-encodes to the same JSON;
//! * every message type of both directions has an example;
//! * the committed JSON Schemas equal the generated ones (`UPDATE_SCHEMA=1` rewrites them);
//! * `protocol/README.md` has a section for every message type and documents every error code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dtma_protocol::{
    AgentMessage, BackendMessage, CancelResult, Control, DeployFailure, DeployResult, ErrorCode,
    EventsEnd, LogsEnd, RemoveResult, RequestBody, RestartResult, StatusResult, decode_backend,
    schema,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every `type` an agent message can have. The match is exhaustive on purpose: a new variant does
/// not compile until it is named here, and then the example and README checks demand it.
fn agent_type(m: &AgentMessage) -> &'static str {
    match m {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Started(_) => "started",
        AgentMessage::Output(_) => "output",
        AgentMessage::Exit(_) => "exit",
        AgentMessage::Progress(_) => "progress",
        AgentMessage::McpEvent(_) => "mcp_event",
        AgentMessage::Result(_) => "result",
        AgentMessage::Error(_) => "error",
        AgentMessage::State(_) => "state",
        AgentMessage::Status(_) => "status",
    }
}
const AGENT_TYPES: [&str; 10] = [
    "hello",
    "started",
    "output",
    "exit",
    "progress",
    "mcp_event",
    "result",
    "error",
    "state",
    "status",
];

/// Every `type` a backend message can have (control messages and requests).
fn backend_type(m: &BackendMessage) -> &'static str {
    match m {
        BackendMessage::Control(c) => match c {
            Control::Welcome(_) => "welcome",
            Control::Ack(_) => "ack",
            Control::Credit(_) => "credit",
            Control::Reconnect(_) => "reconnect",
        },
        BackendMessage::Request(r) => match &r.body {
            RequestBody::Exec(_) => "exec",
            RequestBody::Cancel(_) => "cancel",
            RequestBody::Ping(_) => "ping",
            RequestBody::McpDeploy(_) => "mcp_deploy",
            RequestBody::McpRemove(_) => "mcp_remove",
            RequestBody::McpStatus(_) => "mcp_status",
            RequestBody::McpRestart(_) => "mcp_restart",
            RequestBody::LogsFollow(_) => "logs_follow",
            RequestBody::Diagnostics(_) => "diagnostics",
            RequestBody::McpEvents(_) => "mcp_events",
        },
    }
}
const BACKEND_TYPES: [&str; 14] = [
    "welcome",
    "ack",
    "credit",
    "reconnect",
    "exec",
    "cancel",
    "ping",
    "mcp_deploy",
    "mcp_remove",
    "mcp_status",
    "mcp_restart",
    "logs_follow",
    "diagnostics",
    "mcp_events",
];

/// Every error code. `type_lists_match_the_types` checks it against the schema, so a new code
/// fails the tests until it is listed here (and then documented in the README).
const ERROR_CODES: [ErrorCode; 17] = [
    ErrorCode::MalformedJson,
    ErrorCode::FrameTooLarge,
    ErrorCode::UnsupportedFrame,
    ErrorCode::UnknownType,
    ErrorCode::InvalidRequest,
    ErrorCode::Expired,
    ErrorCode::NotImplemented,
    ErrorCode::Denied,
    ErrorCode::SpawnFailed,
    ErrorCode::TooManyStreams,
    ErrorCode::ShuttingDown,
    ErrorCode::ProtocolError,
    ErrorCode::Internal,
    ErrorCode::DockerUnavailable,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::DeployFailed,
];

fn wire_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("{code:?} does not serialise to a string: {other:?}"),
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(file name, contents)` of every example, sorted by name.
fn examples() -> Vec<(String, String)> {
    let dir = crate_dir().join("examples");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<(String, String)> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_else(|| panic!("{}: not a UTF-8 file name", p.display()))
                .to_owned();
            (name, read(&p))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no example files",
        dir.display()
    );
    files
}

fn parse_value(name: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"))
}

/// Decode every example with the direction's decoder, check it re-encodes to the same JSON value,
/// and return the `type`s seen per direction.
fn check_examples() -> (BTreeSet<&'static str>, BTreeSet<&'static str>) {
    let mut agent = BTreeSet::new();
    let mut backend = BTreeSet::new();
    for (name, text) in examples() {
        assert!(
            name.ends_with(".json"),
            "{name}: examples must be .json files"
        );
        let original = parse_value(&name, &text);
        let (kind, again) = if name.starts_with("agent-") {
            let m: AgentMessage = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: not an AgentMessage: {e}"));
            let kind = agent_type(&m);
            agent.insert(kind);
            (kind, serde_json::to_value(&m))
        } else if name.starts_with("backend-") {
            let m = decode_backend(&text)
                .unwrap_or_else(|e| panic!("{name}: decode_backend refused it: {e}"));
            let kind = backend_type(&m);
            backend.insert(kind);
            (kind, serde_json::to_value(&m))
        } else {
            panic!("{name}: example names start with `agent-` or `backend-`");
        };
        let again = again.unwrap_or_else(|e| panic!("{name}: does not serialise: {e}"));
        assert_eq!(
            again, original,
            "{name}: re-serialising changes it (left: as the code writes it, right: the file)"
        );
        assert_eq!(
            original.get("type").and_then(|t| t.as_str()),
            Some(kind),
            "{name}: `type` field"
        );
        let stem = name.trim_end_matches(".json");
        let direction = if name.starts_with("agent-") {
            "agent"
        } else {
            "backend"
        };
        let expected = format!("{direction}-{kind}");
        assert!(
            stem == expected || stem.starts_with(&format!("{expected}-")),
            "{name}: a `{kind}` example must be named `{expected}.json` or `{expected}-<variant>.json`"
        );
    }
    (agent, backend)
}

#[test]
fn examples_round_trip() {
    check_examples();
}

#[test]
fn every_message_type_has_an_example() {
    let (agent, backend) = check_examples();
    let want: BTreeSet<&str> = AGENT_TYPES.into_iter().collect();
    let missing: Vec<_> = want.difference(&agent).collect();
    assert!(
        missing.is_empty(),
        "agent types without an example: {missing:?}"
    );
    let want: BTreeSet<&str> = BACKEND_TYPES.into_iter().collect();
    let missing: Vec<_> = want.difference(&backend).collect();
    assert!(
        missing.is_empty(),
        "backend types without an example: {missing:?}"
    );
}

/// Every `const` of a `type` property anywhere in a schema.
fn schema_types(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(c) = map
                .get("properties")
                .and_then(|p| p.get("type"))
                .and_then(|t| t.get("const"))
                .and_then(|c| c.as_str())
            {
                out.insert(c.to_owned());
            }
            map.values().for_each(|v| schema_types(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| schema_types(v, out)),
        _ => {}
    }
}

#[test]
fn type_lists_match_the_types() {
    for (file, list) in [
        ("agent-message.schema.json", &AGENT_TYPES[..]),
        ("backend-message.schema.json", &BACKEND_TYPES[..]),
    ] {
        let (_, text) = schema::generate()
            .into_iter()
            .find(|(name, _)| *name == file)
            .unwrap_or_else(|| panic!("schema::generate() has no {file}"));
        let mut found = BTreeSet::new();
        schema_types(&parse_value(file, &text), &mut found);
        let listed: BTreeSet<String> = list.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            found, listed,
            "{file}: `type` values vs the list in this test"
        );
    }
    let codes: BTreeSet<String> = ERROR_CODES.into_iter().map(wire_name).collect();
    let (_, text) = schema::generate()
        .into_iter()
        .find(|(name, _)| *name == "agent-message.schema.json")
        .expect("agent schema");
    let schema = parse_value("agent-message.schema.json", &text);
    let defs = &schema["$defs"]["ErrorCode"];
    let mut in_schema = BTreeSet::new();
    collect_strings(defs, &mut in_schema);
    assert_eq!(
        codes, in_schema,
        "error codes: this test's list vs the schema"
    );
}

/// Every `const` and `enum` string under `v`.
fn collect_strings(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("const", serde_json::Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    ("enum", serde_json::Value::Array(items)) => {
                        out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)));
                    }
                    _ => collect_strings(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[test]
fn committed_schemas_are_current() {
    let dir = crate_dir().join("schema");
    let update = std::env::var("UPDATE_SCHEMA").is_ok_and(|v| v == "1");
    if update {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    for (name, text) in schema::generate() {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with `UPDATE_SCHEMA=1 cargo test -p dtma-protocol`",
                path.display()
            )
        });
        assert!(
            committed == text,
            "{} is out of date; regenerate with `UPDATE_SCHEMA=1 cargo test -p dtma-protocol`",
            path.display()
        );
    }
}

#[test]
fn readme_documents_every_message_and_code() {
    let readme = read(&crate_dir().join("README.md"));
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with('#')).collect();
    for kind in AGENT_TYPES.iter().chain(BACKEND_TYPES.iter()) {
        let needle = format!("`{kind}`");
        assert!(
            headings.iter().any(|h| h.contains(&needle)),
            "protocol/README.md has no section heading naming {needle}"
        );
    }
    let table_rows: Vec<&str> = readme.lines().filter(|l| l.starts_with('|')).collect();
    for code in ERROR_CODES.into_iter().map(wire_name) {
        let needle = format!("| `{code}` |");
        assert!(
            table_rows.iter().any(|row| row.starts_with(&needle)),
            "protocol/README.md: the error code table has no row for `{code}`"
        );
    }
}

/// `value` decodes as `T` and re-encodes to the same JSON (no field dropped or added).
fn typed_round_trip<T: DeserializeOwned + Serialize>(name: &str, value: &serde_json::Value) {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{name}: not a {}: {e}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        &again, value,
        "{name}: the typed payload re-serialises differently"
    );
}

#[test]
fn result_examples_carry_their_typed_payload() {
    let mut seen = BTreeSet::new();
    for (name, text) in examples() {
        let v = parse_value(&name, &text);
        let (data, details) = (&v["data"], &v["details"]);
        match name.trim_end_matches(".json") {
            "agent-result-cancel" => typed_round_trip::<CancelResult>(&name, data),
            "agent-result-mcp_deploy" => typed_round_trip::<DeployResult>(&name, data),
            "agent-result-mcp_remove" => typed_round_trip::<RemoveResult>(&name, data),
            "agent-result-mcp_status" => typed_round_trip::<StatusResult>(&name, data),
            "agent-result-mcp_restart" => typed_round_trip::<RestartResult>(&name, data),
            "agent-result-logs_follow" => typed_round_trip::<LogsEnd>(&name, data),
            "agent-result-mcp_events" => typed_round_trip::<EventsEnd>(&name, data),
            "agent-error-deploy_failed" => typed_round_trip::<DeployFailure>(&name, details),
            _ => continue,
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 8, "one example per typed payload: {seen:?}");
}
