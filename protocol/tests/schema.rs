//! The generated JSON Schemas say exactly what the code does:
//! * agent → backend: every field the serializer always writes is `required`, nullable only where
//!   `null` is written; a field the serializer omits is neither required nor nullable;
//! * backend → agent: every frame `decode_backend` refuses (and every `exec` the agent's
//!   configuration-free field checks refuse) is refused by the schema, and every frame the agent
//!   accepts validates. The few differences no JSON Schema can express are pinned here and listed
//!   in protocol/README.md.

use std::collections::{BTreeMap, BTreeSet};

use dtma_protocol::{
    AgentMessage, DiskStatus, Encoding, ErrorCode, ErrorEvent, Exit, Fd, Hello, MemoryStatus,
    Output, ResultEvent, Started, StateEvent, Status, StreamPhase, StreamResume, ToolStatus,
    decode_backend, schema,
};
use serde_json::{Value, json};

fn generated(file: &str) -> Value {
    let (_, text) = schema::generate()
        .into_iter()
        .find(|(name, _)| *name == file)
        .unwrap_or_else(|| panic!("schema::generate() has no {file}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"))
}

fn validator(file: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&generated(file))
        .unwrap_or_else(|e| panic!("{file} is not a valid schema: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| e.to_string()).collect()
}

fn examples(prefix: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {prefix}*.json examples");
    out
}

// ---------------------------------------------------------------------------------------------
// Agent -> backend: the schema's `required` lists are what the serializer writes
// ---------------------------------------------------------------------------------------------

/// Every variant twice: with each optional value absent (`None`, empty), and with each present.
fn agent_variants() -> Vec<(AgentMessage, AgentMessage)> {
    let memory = MemoryStatus {
        total_bytes: 4,
        used_bytes: 3,
        free_bytes: 1,
        available_bytes: 1,
    };
    let status = |disk: Option<DiskStatus>, tool_statuses: Vec<ToolStatus>| Status {
        agent_version: "0.1.0".into(),
        uptime_s: 5,
        at: "2025-01-20T10:30:00.000Z".into(),
        load_average: [0.1, 0.2, 0.3],
        cpu_load_percent: 1.5,
        memory: memory.clone(),
        disk,
        streams_running: 0,
        streams_held: 0,
        tool_statuses,
    };
    let exit = |exit_code, signal, killed_with: Option<&str>| Exit {
        id: "r".into(),
        seq: 2,
        exit_code,
        signal,
        timed_out: false,
        cancelled: false,
        killed_with: killed_with.map(str::to_owned),
        duration_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
        truncated: false,
    };
    let hello = |streams| Hello {
        agent_id: "a".into(),
        agent_version: "0.1.0".into(),
        boot_id: "b".into(),
        protocol_version: 1,
        capabilities: vec!["exec".into()],
        streams,
        max_frame_bytes: 1 << 20,
    };
    let error = |id: Option<&str>, seq| ErrorEvent {
        id: id.map(str::to_owned),
        seq,
        code: ErrorCode::Internal,
        message: "m".into(),
    };
    let started = Started {
        id: "r".into(),
        seq: 0,
        pid: 7,
        at: "2025-01-20T10:30:00.125Z".into(),
    };
    let output = Output {
        id: "r".into(),
        seq: 1,
        fd: Fd::Stderr,
        encoding: Encoding::Base64,
        data: "/w==".into(),
    };
    let result = ResultEvent {
        id: "r".into(),
        seq: 0,
        data: json!({"pong": true}),
    };
    let state = StateEvent {
        id: "r".into(),
        phase: StreamPhase::Closed,
        next_seq: 0,
    };
    let held = vec![StreamResume {
        id: "r".into(),
        phase: StreamPhase::Finished,
        first_seq: 1,
        next_seq: 3,
    }];
    let tool = ToolStatus {
        account_tool_instance_id: String::new(),
        instance_name_on_toolbox: "t".into(),
        status_on_toolbox: "running".into(),
        runtime_details: json!({}),
    };
    let disk = DiskStatus {
        mount: "/".into(),
        total_bytes: 2,
        used_bytes: 1,
        free_bytes: 1,
    };
    vec![
        (
            AgentMessage::Hello(hello(Vec::new())),
            AgentMessage::Hello(hello(held)),
        ),
        (
            AgentMessage::Started(started.clone()),
            AgentMessage::Started(started),
        ),
        (
            AgentMessage::Output(output.clone()),
            AgentMessage::Output(output),
        ),
        (
            AgentMessage::Exit(exit(None, None, None)),
            AgentMessage::Exit(exit(Some(0), Some(9), Some("SIGKILL"))),
        ),
        (
            AgentMessage::Result(result.clone()),
            AgentMessage::Result(result),
        ),
        (
            AgentMessage::Error(error(None, None)),
            AgentMessage::Error(error(Some("r"), Some(0))),
        ),
        (
            AgentMessage::State(state.clone()),
            AgentMessage::State(state),
        ),
        (
            AgentMessage::Status(status(None, Vec::new())),
            AgentMessage::Status(status(Some(disk), vec![tool])),
        ),
    ]
}

fn to_object(m: &AgentMessage) -> serde_json::Map<String, Value> {
    match serde_json::to_value(m) {
        Ok(Value::Object(map)) => map,
        other => panic!("{m:?} does not serialise to an object: {other:?}"),
    }
}

/// The `$defs` entry behind each `type` of the agent schema's top-level `oneOf`.
fn agent_defs(schema: &Value) -> BTreeMap<String, Value> {
    let variants = schema["oneOf"].as_array().expect("a top-level oneOf");
    variants
        .iter()
        .map(|v| {
            let kind = v["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_else(|| panic!("variant without a `type` const: {v}"));
            let name = v["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .unwrap_or_else(|| panic!("variant `{kind}` has no $ref"));
            (kind.to_owned(), schema["$defs"][name].clone())
        })
        .collect()
}

fn string_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn agent_schema_requires_exactly_what_the_serializer_always_writes() {
    let schema = generated("agent-message.schema.json");
    let v = validator("agent-message.schema.json");
    let defs = agent_defs(&schema);
    let mut seen = BTreeSet::new();
    for (sparse, full) in agent_variants() {
        let sparse = to_object(&sparse);
        let full = to_object(&full);
        let kind = sparse["type"].as_str().expect("a type").to_owned();
        seen.insert(kind.clone());
        let def = &defs[&kind];
        let required = string_set(&def["required"]);
        let properties: BTreeSet<String> = def["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();

        // Written even when empty or `null` <=> required.
        let always: BTreeSet<String> = sparse.keys().filter(|k| *k != "type").cloned().collect();
        assert_eq!(
            required, always,
            "`{kind}`: `required` vs the keys always written"
        );
        let written: BTreeSet<String> = full.keys().filter(|k| *k != "type").cloned().collect();
        assert_eq!(
            properties, written,
            "`{kind}`: `properties` vs every key written"
        );

        for instance in [&sparse, &full] {
            let instance = Value::Object(instance.clone());
            let errs = errors(&v, &instance);
            assert!(errs.is_empty(), "`{kind}` {instance}: {errs:?}");
        }
        // A field the serializer omits is never `null`; a required one cannot be dropped.
        for field in &properties {
            let mut changed = full.clone();
            if required.contains(field) {
                changed.remove(field);
            } else {
                changed.insert(field.clone(), Value::Null);
            }
            assert!(
                !v.is_valid(&Value::Object(changed.clone())),
                "`{kind}`: the schema accepts {changed:?}"
            );
        }
    }
    let all: BTreeSet<String> = defs.keys().cloned().collect();
    assert_eq!(
        seen, all,
        "agent_variants() must build every agent message type"
    );
}

#[test]
fn agent_examples_validate() {
    let v = validator("agent-message.schema.json");
    for (name, text) in examples("agent-") {
        let m: AgentMessage = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let value = serde_json::to_value(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errs = errors(&v, &value);
        assert!(errs.is_empty(), "{name}: {errs:?}");
    }
}

#[test]
fn agent_schema_narrows_what_the_agent_never_sends() {
    let v = validator("agent-message.schema.json");
    let mut hello = json!({"type":"hello","agent_id":"a","agent_version":"0.1.0","boot_id":"b",
        "protocol_version":1,"capabilities":[],"max_frame_bytes":1,
        "streams":[{"id":"r","phase":"running","first_seq":0,"next_seq":0}]});
    assert!(v.is_valid(&hello));
    // A held stream is never `closed`: the TypeScript type says `"running" | "finished"` too.
    hello["streams"][0]["phase"] = json!("closed");
    assert!(!v.is_valid(&hello));
    let exit = json!({"type":"exit","id":"r","seq":1,"exit_code":null,"signal":15,
        "timed_out":false,"cancelled":true,"killed_with":"SIGINT","duration_ms":1,
        "stdout_bytes":0,"stderr_bytes":0,"truncated":false});
    assert!(
        !v.is_valid(&exit),
        "killed_with is SIGTERM, SIGKILL or null"
    );
}

// ---------------------------------------------------------------------------------------------
// Backend -> agent: the schema refuses what the agent refuses
// ---------------------------------------------------------------------------------------------

/// Frames `decode_backend` refuses.
fn refused_by_the_decoder() -> Vec<String> {
    let long_id = "x".repeat(dtma_protocol::MAX_ID_LEN + 1);
    let mut frames: Vec<String> = [
        // Not an object, no type, unknown type.
        "[1,2]",
        "\"ping\"",
        "null",
        r#"{"id":"a"}"#,
        r#"{"type":5,"id":"a"}"#,
        r#"{"type":"launch","id":"a"}"#,
        // Unknown fields in closed request types.
        r#"{"type":"exec","id":"a","command":"x","bogus":1}"#,
        r#"{"type":"ping","id":"a","extra":true}"#,
        r#"{"type":"cancel","id":"a","target":"b","x":null}"#,
        // Request ids.
        r#"{"type":"exec","id":"","command":"x"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"ping","id":7}"#,
        r#"{"type":"ping","id":null}"#,
        r#"{"type":"ping","id":"a\nb"}"#,
        r#"{"type":"ping","id":"a\u0000"}"#,
        r#"{"type":"ping","id":"\u007f"}"#,
        r#"{"type":"ping","id":"x\u0085"}"#,
        r#"{"type":"mcp_deploy","id":"","anything":1}"#,
        r#"{"type":"diagnostics"}"#,
        // Missing, mistyped and out-of-range fields.
        r#"{"type":"exec","id":"a"}"#,
        r#"{"type":"exec","id":"a","command":7}"#,
        r#"{"type":"exec","id":"a","command":"x","timeout_ms":-1}"#,
        r#"{"type":"exec","id":"a","command":"x","timeout_ms":"10s"}"#,
        r#"{"type":"exec","id":"a","command":"x","timeout_ms":1.5}"#,
        r#"{"type":"exec","id":"a","command":"x","env":null}"#,
        r#"{"type":"exec","id":"a","command":"x","env":{"A":1}}"#,
        r#"{"type":"exec","id":"a","command":"x","stdin":5}"#,
        r#"{"type":"exec","id":"a","command":"x","expires_at":5}"#,
        r#"{"type":"exec","id":"a","command":"x","credit":18446744073709551616}"#,
        r#"{"type":"cancel","id":"a"}"#,
        r#"{"type":"cancel","id":"a","target":1}"#,
        r#"{"type":"ack","id":"a","seq":-1}"#,
        r#"{"type":"ack","id":"a"}"#,
        r#"{"type":"ack","seq":1}"#,
        r#"{"type":"credit","id":"a","limit":18446744073709551616}"#,
        r#"{"type":"credit","id":"a","limit":"5"}"#,
        r#"{"type":"welcome","protocol_version":1}"#,
        r#"{"type":"welcome","session_id":"s"}"#,
        r#"{"type":"welcome","protocol_version":4294967296,"session_id":"s"}"#,
        r#"{"type":"welcome","protocol_version":1,"session_id":"s","resume":null}"#,
        r#"{"type":"welcome","protocol_version":1,"session_id":"s","resume":[{"ack":1}]}"#,
        r#"{"type":"welcome","protocol_version":1,"session_id":"s","resume":[{"id":"a","ack":-1}]}"#,
        r#"{"type":"reconnect","after_ms":null}"#,
        r#"{"type":"reconnect","url":5}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    frames.push(json!({"type": "ping", "id": long_id}).to_string());
    frames
}

/// Frames the decoder accepts but the agent refuses with `invalid_request` before opening a
/// stream, on checks that do not depend on its configuration (`ExecSpec` in the agent).
const REFUSED_BY_THE_EXEC_CHECKS: [&str; 8] = [
    r#"{"type":"exec","id":"a","command":"x","timeout_ms":0}"#,
    r#"{"type":"exec","id":"a","command":""}"#,
    r#"{"type":"exec","id":"a","command":" \t\n\u3000\u0085"}"#,
    r#"{"type":"exec","id":"a","command":"ls\u0000"}"#,
    r#"{"type":"exec","id":"a","command":"x","cwd":"/tmp\u0000"}"#,
    r#"{"type":"exec","id":"a","command":"x","env":{"A-B":"1"}}"#,
    r#"{"type":"exec","id":"a","command":"x","env":{"":"1"}}"#,
    r#"{"type":"exec","id":"a","command":"x","env":{"A":"1\u0000"}}"#,
];

/// Edge cases the agent accepts: the schema must not be stricter than the decoder.
fn accepted() -> Vec<String> {
    let mut frames: Vec<String> = [
        r#"{"type":"ping","id":"é"}"#,
        r#"{"type":"ping","id":"a","expires_at":null}"#,
        r#"{"type":"ping","id":"a","expires_at":"2025-01-20T10:31:00Z"}"#,
        r#"{"type":"exec","id":"a","command":"  x  ","timeout_ms":1,"env":{},"cwd":null,"stdin":"\u0000"}"#,
        r#"{"type":"exec","id":"a","command":"x","credit":0,"max_output_bytes":18446744073709551615}"#,
        r#"{"type":"cancel","id":"a","target":""}"#,
        r#"{"type":"mcp_deploy","id":"a","group":{"servers":[]},"anything":null}"#,
        r#"{"type":"ack","id":"","seq":0}"#,
        r#"{"type":"ack","id":"a","seq":3,"note":"unknown fields are ignored here"}"#,
        r#"{"type":"credit","id":"a\n","limit":0,"extra":1}"#,
        r#"{"type":"welcome","protocol_version":2,"session_id":"","extra":{}}"#,
        r#"{"type":"welcome","protocol_version":1,"session_id":"s","heartbeat_interval_ms":null,"resume":[{"id":"a"},{"id":"b","ack":null,"credit_limit":null}]}"#,
        r#"{"type":"reconnect"}"#,
        r#"{"type":"reconnect","after_ms":0,"url":"https://not-a-websocket.example","reason":null}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    frames.push(json!({"type": "ping", "id": "x".repeat(dtma_protocol::MAX_ID_LEN)}).to_string());
    frames
}

#[test]
fn backend_schema_refuses_what_the_decoder_refuses() {
    let v = validator("backend-message.schema.json");
    for frame in refused_by_the_decoder() {
        assert!(
            decode_backend(&frame).is_err(),
            "the decoder accepts {frame}: move it to another list"
        );
        let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert!(!v.is_valid(&value), "the schema accepts {frame}");
    }
}

#[test]
fn backend_schema_refuses_what_the_exec_checks_refuse() {
    let v = validator("backend-message.schema.json");
    for frame in REFUSED_BY_THE_EXEC_CHECKS {
        assert!(
            decode_backend(frame).is_ok(),
            "the decoder itself refuses {frame}: move it to the decoder's list"
        );
        let value: Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert!(!v.is_valid(&value), "the schema accepts {frame}");
    }
}

#[test]
fn backend_schema_accepts_what_the_agent_accepts() {
    let v = validator("backend-message.schema.json");
    let frames = examples("backend-")
        .into_iter()
        .map(|(_, text)| text)
        .chain(accepted());
    for frame in frames {
        assert!(
            decode_backend(&frame).is_ok(),
            "the decoder refuses {frame}"
        );
        let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        let errs = errors(&v, &value);
        assert!(errs.is_empty(), "{frame}: {errs:?}");
    }
}

/// What JSON Schema cannot express (listed in protocol/README.md next to the schemas): if one of
/// these starts failing, the schema got stricter and the README list must shrink with it.
#[test]
fn known_schema_gaps_are_as_documented() {
    let v = validator("backend-message.schema.json");
    let gaps = [
        // An integer written with a fraction or exponent: a JSON Schema "integer" is a value,
        // serde reads the token.
        r#"{"type":"ack","id":"a","seq":1.0}"#.to_owned(),
        r#"{"type":"credit","id":"a","limit":1e3}"#.to_owned(),
        // `maxLength` counts characters; the id limit is in UTF-8 bytes (65 × 2 bytes > 128).
        json!({"type": "ping", "id": "é".repeat(65)}).to_string(),
    ];
    for frame in gaps {
        assert!(
            decode_backend(&frame).is_err(),
            "the decoder accepts {frame}"
        );
        let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert!(v.is_valid(&value), "the schema now refuses {frame}");
    }
}

// ---------------------------------------------------------------------------------------------
// The README's tables and TypeScript types say what the agent schema says
// ---------------------------------------------------------------------------------------------

fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Follow a `$ref` into `$defs`.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => resolve(&root["$defs"][name], root),
        None => schema,
    }
}

/// Whether a property schema admits `null`.
fn nullable(prop: &Value, root: &Value) -> bool {
    let prop = resolve(prop, root);
    let in_type = match &prop["type"] {
        Value::String(t) => t == "null",
        Value::Array(ts) => ts.iter().any(|t| t == "null"),
        _ => false,
    };
    let in_enum = prop["enum"]
        .as_array()
        .is_some_and(|e| e.iter().any(Value::is_null));
    let in_union = ["anyOf", "oneOf"].iter().any(|k| {
        prop[*k]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| nullable(v, root)))
    });
    in_type || in_enum || in_union
}

/// The string literals a property schema allows, when it is a closed set.
fn schema_literals(prop: &Value, root: &Value) -> BTreeSet<String> {
    let prop = resolve(prop, root);
    let mut out = string_set(&prop["enum"]);
    if let Some(c) = prop["const"].as_str() {
        out.insert(c.to_owned());
    }
    for k in ["anyOf", "oneOf"] {
        for v in prop[k].as_array().into_iter().flatten() {
            out.extend(schema_literals(v, root));
        }
    }
    out
}

/// The TypeScript block of the README's "Types" section.
fn ts_types(readme: &str) -> String {
    let start = readme
        .find("### Types\n\n```ts\n")
        .expect("README has a `### Types` section with a ts block");
    let body = &readme[start + "### Types\n\n```ts\n".len()..];
    body[..body.find("```").expect("the ts block ends")].to_owned()
}

/// `(name, optional, type)` of each member of `export interface <name> { ... }`.
fn ts_interface(ts: &str, name: &str) -> Vec<(String, bool, String)> {
    let head = format!("export interface {name} {{");
    let start = ts
        .find(&head)
        .unwrap_or_else(|| panic!("README: no `{head}`"))
        + head.len();
    let mut members = Vec::new();
    let (mut depth, mut member) = (0i32, String::new());
    for c in ts[start..].chars() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' if depth > 0 => depth -= 1,
            '}' => break,
            ';' if depth == 0 => {
                members.push(std::mem::take(&mut member));
                continue;
            }
            _ => {}
        }
        member.push(c);
    }
    members.push(member);
    members
        .iter()
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (field, ty) = m
                .split_once(':')
                .unwrap_or_else(|| panic!("README: `{name}` member without a type: {m}"));
            let optional = field.ends_with('?');
            (
                field.trim_end_matches('?').trim().to_owned(),
                optional,
                ty.trim().to_owned(),
            )
        })
        .collect()
}

/// The quoted literals of a TypeScript type, expanding `export type X = "a" | "b";` aliases.
fn ts_literals(ts: &str, ty: &str) -> BTreeSet<String> {
    let alias = format!("export type {ty} =");
    let ty = match ts.find(&alias) {
        Some(at) => {
            let rest = &ts[at + alias.len()..];
            &rest[..rest.find(';').expect("a type alias ends with `;`")]
        }
        None => ty,
    };
    ty.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The agent message types and the README's TypeScript interface for each.
const TS_INTERFACES: [(&str, &str); 8] = [
    ("hello", "Hello"),
    ("started", "Started"),
    ("output", "Output"),
    ("exit", "Exit"),
    ("result", "Result"),
    ("error", "AgentError"),
    ("state", "State"),
    ("status", "Status"),
];

/// Each TypeScript member: present iff in the schema, `?` iff not required, `| null` iff
/// nullable, and the same string literals where the set is closed.
fn check_ts(ts: &str, root: &Value, def: &Value, interface: &str) {
    let required = string_set(&def["required"]);
    let properties = def["properties"].as_object().expect("properties");
    let members = ts_interface(ts, interface);
    let names: BTreeSet<String> = members
        .iter()
        .map(|(n, _, _)| n.clone())
        .filter(|n| n != "type")
        .collect();
    let in_schema: BTreeSet<String> = properties.keys().cloned().collect();
    assert_eq!(
        names, in_schema,
        "README `{interface}` members vs the schema"
    );
    for (field, optional, ty) in members.iter().filter(|(n, _, _)| n != "type") {
        let prop = &properties[field];
        assert_eq!(
            *optional,
            !required.contains(field),
            "README `{interface}.{field}`: `?` vs the schema's `required`"
        );
        assert_eq!(
            ty.split('|').any(|t| t.trim() == "null"),
            nullable(prop, root),
            "README `{interface}.{field}: {ty}`: `| null` vs the schema"
        );
        let want = schema_literals(prop, root);
        if !want.is_empty() {
            assert_eq!(
                ts_literals(ts, ty),
                want,
                "README `{interface}.{field}: {ty}` vs the schema's values"
            );
        }
    }
}

#[test]
fn readme_typescript_agrees_with_the_agent_schema() {
    let readme = readme();
    let ts = ts_types(&readme);
    let root = generated("agent-message.schema.json");
    let defs = agent_defs(&root);
    for (kind, interface) in TS_INTERFACES {
        check_ts(&ts, &root, &defs[kind], interface);
    }
    check_ts(&ts, &root, &root["$defs"]["StreamResume"], "StreamResume");
    let listed: BTreeSet<String> = TS_INTERFACES.iter().map(|(k, _)| k.to_string()).collect();
    let all: BTreeSet<String> = defs.keys().cloned().collect();
    assert_eq!(
        listed, all,
        "TS_INTERFACES must name every agent message type"
    );
}

/// In each agent message's section, every field has a table row whose type cell says `null`
/// iff the schema allows it, and whose text says "omitted" iff the field is not required.
#[test]
fn readme_tables_agree_with_the_agent_schema() {
    let readme = readme();
    let root = generated("agent-message.schema.json");
    for (kind, def) in agent_defs(&root) {
        let heading = format!("### `{kind}` (agent → backend)\n");
        let start = readme
            .find(&heading)
            .unwrap_or_else(|| panic!("README: no heading {heading:?}"));
        let section = &readme[start + heading.len()..];
        let section = &section[..section.find("\n#").unwrap_or(section.len())];
        let required = string_set(&def["required"]);
        for (field, prop) in def["properties"].as_object().expect("properties") {
            let needle = format!("`{field}`");
            let row = section
                .lines()
                .find(|l| {
                    // The first cell lists field names only: "| `a` |" or "| `a`, `b` |".
                    let names = l
                        .split(" | ")
                        .next()
                        .and_then(|c| c.strip_prefix("| "))
                        .map(|c| c.split(", ").collect::<Vec<_>>())
                        .unwrap_or_default();
                    names.iter().all(|n| n.starts_with('`') && !n.contains(' '))
                        && names.contains(&needle.as_str())
                })
                .unwrap_or_else(|| panic!("README `{kind}`: no table row for {needle}"));
            let type_cell = row.split(" | ").nth(1).unwrap_or_default();
            assert_eq!(
                type_cell.contains("\\| null"),
                nullable(prop, &root),
                "README `{kind}.{field}`: type cell `{type_cell}` vs the schema"
            );
            assert_eq!(
                row.contains("omitted"),
                !required.contains(field),
                "README `{kind}.{field}`: \"omitted\" vs the schema's `required`"
            );
        }
    }
}
