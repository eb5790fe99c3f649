//! The generated JSON Schemas say exactly what the code does:
//! * agent → backend: every field the serializer always writes is `required`, nullable only where
//!   `null` is written; a field the serializer omits is neither required nor nullable;
//! * backend → agent: every frame `decode_backend` refuses (and every `exec` the agent's
//!   configuration-free field checks refuse) is refused by the schema, and every frame the agent
//!   accepts validates. The few differences no JSON Schema can express are pinned here and listed
//!   in protocol/README.md. The MCP deploy's free-form values (`portBindings`,
//!   `environmentVariables`, `resourceLimits`) are the agent's to normalise: their accepted and
//!   refused forms are pinned here against the schema, for the agent's normaliser to match;
//! * results: every typed `result.data` / `error.details` payload's schema requires exactly what
//!   its serializer always writes, and the result examples validate against their payload.

use std::collections::{BTreeMap, BTreeSet};

use dtma_protocol::{
    AgentMessage, CancelResult, ContainerHealth, DeployFailure, DeployOutcome, DeployResult,
    DiskStatus, Encoding, ErrorCode, ErrorEvent, EventsEnd, EventsEndReason, Exit, Fd, GroupStatus,
    Hello, LINUX_CAPABILITIES, LogsEnd, LogsEndReason, McpEvent, McpEventKind, MemoryStatus,
    Output, PortMapping, PortProtocol, Progress, ProgressBytes, ProgressStep, RemoveResult,
    RestartResult, ResultEvent, Sandbox, SandboxLevel, SandboxMode, SandboxProfile, ServerAction,
    ServerOutcome, ServerState, ServerStatus, Started, StateEvent, Status, StatusResult,
    StreamPhase, StreamResume, ToolStatus, decode_backend, schema,
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
        sandbox: None,
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
        sandbox: None,
    };
    let error = |id: Option<&str>, seq, details| ErrorEvent {
        id: id.map(str::to_owned),
        seq,
        code: ErrorCode::Internal,
        message: "m".into(),
        details,
    };
    let progress = |full: bool| Progress {
        id: "r".into(),
        seq: 1,
        step: ProgressStep::Pulling,
        server: full.then(|| "s".into()),
        message: full.then(|| "m".into()),
        bytes: full.then_some(ProgressBytes {
            current: 1,
            total: None,
        }),
    };
    let mcp_event = |full: bool| McpEvent {
        id: "r".into(),
        seq: 2,
        at: "2025-01-20T10:30:00.000Z".into(),
        kind: McpEventKind::Die,
        group_id: "g".into(),
        server: "s".into(),
        account_tool_instance_id: "t".into(),
        container_id: "c".into(),
        state: ServerState::Failed,
        exit_code: full.then_some(1),
        health: full.then_some(ContainerHealth::Unhealthy),
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
    let sandbox = Sandbox {
        mode: SandboxMode::Enforce,
        landlock_abi: Some(4),
        level: SandboxLevel::Partial,
        degradations: vec!["d".into()],
        refused_profiles: vec![SandboxProfile::Operator],
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
            AgentMessage::Hello(Hello {
                sandbox: Some(sandbox.clone()),
                ..hello(held)
            }),
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
            AgentMessage::Progress(progress(false)),
            AgentMessage::Progress(progress(true)),
        ),
        (
            AgentMessage::McpEvent(mcp_event(false)),
            AgentMessage::McpEvent(mcp_event(true)),
        ),
        (
            AgentMessage::Error(error(None, None, None)),
            AgentMessage::Error(error(Some("r"), Some(0), Some(json!({"group_id": "g"})))),
        ),
        (
            AgentMessage::State(state.clone()),
            AgentMessage::State(state),
        ),
        (
            AgentMessage::Status(status(None, Vec::new())),
            AgentMessage::Status(Status {
                sandbox: Some(sandbox),
                ..status(Some(disk), vec![tool])
            }),
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
    let mut error = json!({"type":"error","id":"r","seq":0,"code":"deploy_failed","message":"m",
        "details":{"group_id":"g","servers":[]}});
    assert!(v.is_valid(&error));
    error["details"] = json!("text");
    assert!(!v.is_valid(&error), "details is an object when present");
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
        r#"{"type":"mcp_events","id":"\u0001"}"#,
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
    frames.extend(mcp_refused_by_the_decoder());
    frames
}

// ---- MCP frames ----

/// A server with the required fields only.
fn server() -> Value {
    json!({
        "accountToolInstanceId": "8c5d7a6e-1f2b-4c3d-9e8f-0a1b2c3d4e5f",
        "dockerImageUrl": "ghcr.io/org/some-mcp:1.2.0",
        "instanceNameOnToolbox": "s1",
    })
}

fn deploy(group: Value) -> String {
    json!({"type": "mcp_deploy", "id": "a", "group": group}).to_string()
}

/// A deploy of one server whose `field` is `value`.
fn deploy_server(field: &str, value: Value) -> String {
    let mut s = server();
    s[field] = value;
    deploy(json!({"groupId": "g", "servers": [s]}))
}

/// A deploy of one server in a group whose `field` is `value`.
fn deploy_group(field: &str, value: Value) -> String {
    let mut g = json!({"groupId": "g", "servers": [server()]});
    g[field] = value;
    deploy(g)
}

/// Frames of the new request types that `decode_backend` refuses (serde or `validate()`).
fn mcp_refused_by_the_decoder() -> Vec<String> {
    let named = |n: usize| {
        (0..n)
            .map(|i| {
                let mut s = server();
                s["instanceNameOnToolbox"] = json!(format!("s{i}"));
                s
            })
            .collect::<Vec<_>>()
    };
    let mut frames: Vec<String> = [
        // Unknown fields at every level of mcp_deploy, and in the other requests.
        r#"{"type":"mcp_deploy","id":"a","group":{"groupId":"g","servers":[]},"anything":null}"#,
        r#"{"type":"mcp_remove","id":"a","group_id":"g","force":true}"#,
        r#"{"type":"mcp_status","id":"a","verbose":true}"#,
        r#"{"type":"mcp_restart","id":"a","instance_name":"s","signal":"HUP"}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","grep":"x"}"#,
        r#"{"type":"diagnostics","id":"a","scope":"docker","all":true}"#,
        r#"{"type":"mcp_events","id":"a","since":"2025-01-20T10:00:00Z"}"#,
        // Missing and mistyped fields.
        r#"{"type":"mcp_deploy","id":"a"}"#,
        r#"{"type":"mcp_deploy","id":"a","group":null}"#,
        r#"{"type":"mcp_deploy","id":"a","group":[]}"#,
        r#"{"type":"mcp_deploy","id":"a","group":{"servers":[]}}"#,
        r#"{"type":"mcp_deploy","id":"a","group":{"groupId":"g"}}"#,
        r#"{"type":"mcp_remove","id":"a"}"#,
        r#"{"type":"mcp_remove","id":"a","group_id":null}"#,
        r#"{"type":"mcp_restart","id":"a"}"#,
        r#"{"type":"logs_follow","id":"a"}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","follow":"yes"}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","tail":-1}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","since":5}"#,
        r#"{"type":"diagnostics","id":"a"}"#,
        r#"{"type":"diagnostics","id":"a","scope":"network"}"#,
        r#"{"type":"diagnostics","id":"a","scope":null}"#,
        // Plain field checks.
        r#"{"type":"mcp_remove","id":"a","group_id":""}"#,
        r#"{"type":"mcp_remove","id":"a","group_id":"-g"}"#,
        r#"{"type":"mcp_status","id":"a","group_id":"g/h"}"#,
        r#"{"type":"mcp_restart","id":"a","instance_name":"Reasoning"}"#,
        r#"{"type":"mcp_restart","id":"a","instance_name":"_s"}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","tail":10001}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"S"}"#,
        r#"{"type":"diagnostics","id":"a","scope":"logs","lines":0}"#,
        r#"{"type":"diagnostics","id":"a","scope":"logs","lines":10001}"#,
        r#"{"type":"diagnostics","id":"a","scope":"system","lines":5}"#,
        r#"{"type":"diagnostics","id":"a","scope":"docker","lines":100}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    frames.extend([
        deploy_group("bogus", json!(1)),
        deploy_group("options", json!({"parallel": 2})),
        deploy_group("options", json!({"sharedNetworking": "yes"})),
        deploy_group("options", json!({"maxConcurrentDeployments": 0})),
        deploy_group("options", json!({"maxConcurrentDeployments": 17})),
        deploy_group("options", json!({"maxConcurrentDeployments": -1})),
        deploy_group("groupId", json!("")),
        deploy_group("groupId", json!(".g")),
        deploy_group("groupId", json!("a b")),
        deploy_group("groupId", json!("gé")),
        deploy_group("groupId", json!("g".repeat(65))),
        deploy_group("groupId", json!(7)),
        deploy_group("servers", json!([])),
        deploy_group("servers", json!(named(51))),
        deploy_group("servers", json!({})),
        deploy_server("bogus", json!(1)),
        deploy_server("instance_name_on_toolbox", json!("s1")),
        deploy_server("accountToolInstanceId", json!("")),
        deploy_server("accountToolInstanceId", json!("t".repeat(129))),
        deploy_server("accountToolInstanceId", json!("t\n1")),
        deploy_server("accountToolInstanceId", json!(42)),
        deploy_server("dockerImageUrl", json!("")),
        deploy_server("dockerImageUrl", json!("some image")),
        deploy_server("instanceNameOnToolbox", json!("")),
        deploy_server("instanceNameOnToolbox", json!("Reasoning-Server")),
        deploy_server("instanceNameOnToolbox", json!("-s")),
        deploy_server("instanceNameOnToolbox", json!("s/1")),
        deploy_server("instanceNameOnToolbox", json!("s".repeat(64))),
        deploy_server("mcpEndpointPath", json!("mcp")),
        deploy_server("mcpEndpointPath", json!("")),
        deploy_server("mcpEndpointPath", json!("/m cp")),
        deploy_server("mcpTransportType", json!("grpc")),
        deploy_server("mcpTransportType", json!("HTTP")),
        deploy_server("capAdd", json!(["ALL"])),
        deploy_server("capAdd", json!(["CAP_NET_ADMIN"])),
        deploy_server("capAdd", json!(["net_admin"])),
        deploy_server("capAdd", json!("NET_ADMIN")),
        deploy_server("readinessTimeoutMs", json!(999)),
        deploy_server("readinessTimeoutMs", json!(600_001)),
        deploy_server("readinessTimeoutMs", json!("60s")),
    ]);
    frames
}

/// Deploys the decoder accepts whose free-form values the agent's normaliser refuses
/// (`invalid_request` naming the field): the schema refuses them too.
fn refused_by_the_mcp_normaliser() -> Vec<String> {
    let ports = [
        json!({"8080/sctp": 8080}),
        json!({"8080/TCP": 8080}),
        json!({"0": 8080}),
        json!({"65536": 1}),
        json!({"08080": 8080}),
        json!({"http": 8080}),
        json!({"8080": 65536}),
        json!({"8080": -1}),
        json!({"8080": 1.5}),
        json!({"8080": "08080"}),
        json!({"8080": " 8080"}),
        json!({"8080": "abc"}),
        json!({"8080": null}),
        json!({"8080": true}),
        json!({"8080": []}),
        json!({"8080": [{"HostIp": "127.0.0.1"}]}),
        json!({"8080": [{"HostPort": "8080", "HostIP": "127.0.0.1"}]}),
        json!({"8080": [{"HostPort": "70000"}]}),
        json!({"8080": [{"HostPort": "8080", "HostIp": 127}]}),
        json!([8080]),
        json!("8080:8080"),
    ];
    let env = [
        json!({"1A": "x"}),
        json!({"A-B": "x"}),
        json!({"": "x"}),
        json!({"A": null}),
        json!({"A": {"b": 1}}),
        json!({"A": ["x"]}),
        json!({"A": "x\u{0}y"}),
        json!(["A"]),
        json!(["=x"]),
        json!(["A-B=x"]),
        json!(["A=x\u{0}"]),
        json!([1]),
        json!("A=1"),
    ];
    let limits = [
        json!({"memory": 0}),
        json!({"memory": -1}),
        json!({"memory": 1.5}),
        json!({"memory": "0"}),
        json!({"memory": "0512m"}),
        json!({"memory": "1.5g"}),
        json!({"memory": "1t"}),
        json!({"memory": "512 m"}),
        json!({"memory": "m"}),
        json!({"memory": "512mi"}),
        json!({"memory": true}),
        json!({"memory": 9_223_372_036_854_775_808u64}),
        json!({"cpu": 0}),
        json!({"cpu": 0.009}),
        json!({"cpu": 64.5}),
        json!({"cpu": "0"}),
        json!({"cpu": "0.009"}),
        json!({"cpu": ".5"}),
        json!({"cpu": "1."}),
        json!({"cpu": "01"}),
        json!({"cpu": "1e1"}),
        json!({"cpu": "64.01"}),
        json!({"cpu": "65"}),
        json!({"cpu": "-1"}),
        json!({"pids": 0}),
        json!({"pids": 32769}),
        json!({"pids": "100"}),
        json!({"pids": 1.5}),
        json!({"swap": 1}),
        json!([]),
        json!("512m"),
    ];
    ports
        .into_iter()
        .map(|v| deploy_server("portBindings", v))
        .chain(
            env.into_iter()
                .map(|v| deploy_server("environmentVariables", v)),
        )
        .chain(
            limits
                .into_iter()
                .map(|v| deploy_server("resourceLimits", v)),
        )
        .collect()
}

/// Edge cases of the new request types that the agent accepts (decoder and normaliser).
fn mcp_accepted() -> Vec<String> {
    let mut frames: Vec<String> = [
        r#"{"type":"mcp_status","id":"a","group_id":null}"#,
        r#"{"type":"mcp_status","id":"a","group_id":"G.9_-"}"#,
        r#"{"type":"mcp_remove","id":"a","group_id":"0"}"#,
        r#"{"type":"mcp_restart","id":"a","instance_name":"0.a_b-c"}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","tail":0,"since":null,"timestamps":null,"follow":false,"credit":0}"#,
        r#"{"type":"logs_follow","id":"a","instance_name":"s","tail":10000}"#,
        r#"{"type":"diagnostics","id":"a","scope":"logs","lines":1}"#,
        r#"{"type":"diagnostics","id":"a","scope":"logs","lines":10000}"#,
        r#"{"type":"diagnostics","id":"a","scope":"docker","lines":null}"#,
        r#"{"type":"diagnostics","id":"a","scope":"system","expires_at":null}"#,
        r#"{"type":"mcp_events","id":"a","expires_at":"2025-01-20T10:31:00Z"}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let fifty = (0..50)
        .map(|i| {
            let mut s = server();
            s["instanceNameOnToolbox"] = json!(format!("s{i}"));
            s
        })
        .collect::<Vec<_>>();
    frames.extend([
        deploy_group("servers", json!(fifty)),
        deploy_group("groupId", json!("g".repeat(64))),
        deploy_group("groupId", json!("A.b_c-9")),
        deploy_group("options", json!({})),
        deploy_group("options", json!(null)),
        deploy_group(
            "options",
            json!({"sharedNetworking": null, "maxConcurrentDeployments": 16}),
        ),
        deploy_group("options", json!({"maxConcurrentDeployments": 1})),
        deploy_server("accountToolInstanceId", json!("é".repeat(128))),
        deploy_server("accountToolInstanceId", json!("t")),
        deploy_server("instanceNameOnToolbox", json!("s".repeat(63))),
        deploy_server("instanceNameOnToolbox", json!("0")),
        deploy_server("mcpEndpointPath", json!("/")),
        deploy_server("mcpEndpointPath", json!("/v1/mcp?x=1")),
        deploy_server("mcpEndpointPath", json!(null)),
        deploy_server("mcpTransportType", json!("stdio")),
        deploy_server("capAdd", json!([])),
        deploy_server("capAdd", json!(LINUX_CAPABILITIES.to_vec())),
        deploy_server("readinessTimeoutMs", json!(1000)),
        deploy_server("readinessTimeoutMs", json!(600_000)),
    ]);
    let ports = [
        json!({}),
        json!(null),
        json!({"8080": 8080}),
        json!({"8080/tcp": "8080"}),
        json!({"8080": ""}),
        json!({"8080": "0"}),
        json!({"8080": 0}),
        json!({"1": 65535, "65535/udp": "1"}),
        json!({"53/udp": [{"HostPort": "5353", "HostIp": "0.0.0.0"}]}),
        json!({"8080/tcp": [{"HostPort": 8080}, {"HostPort": "", "HostIp": "::1"}]}),
        json!({"8080": [{"HostPort": "8080"}], "9090": 9090}),
    ];
    let env = [
        json!(null),
        json!({}),
        json!([]),
        json!({"A": "1", "_b": 2, "C_3": true, "D": -1.5, "E": ""}),
        json!(["A=1", "B=", "C==x", "_d=x y"]),
    ];
    let limits = [
        json!(null),
        json!({}),
        json!({"memory": null, "cpu": null, "pids": null}),
        json!({"memory": 1}),
        json!({"memory": 9_223_372_036_854_775_807u64}),
        json!({"memory": "512m", "cpu": "0.5"}),
        json!({"memory": "1G"}),
        json!({"memory": "256k"}),
        json!({"memory": "1073741824"}),
        json!({"memory": "100b"}),
        json!({"memory": "512MiB"}),
        json!({"memory": "512mb"}),
        json!({"memory": "2gB"}),
        json!({"cpu": 0.01}),
        json!({"cpu": 64}),
        json!({"cpu": 1}),
        json!({"cpu": "0.01"}),
        json!({"cpu": "0.0100"}),
        json!({"cpu": "0.5"}),
        json!({"cpu": "2"}),
        json!({"cpu": "63.999"}),
        json!({"cpu": "64"}),
        json!({"cpu": "64.000"}),
        json!({"pids": 1}),
        json!({"pids": 32768}),
    ];
    frames.extend(ports.into_iter().map(|v| deploy_server("portBindings", v)));
    frames.extend(
        env.into_iter()
            .map(|v| deploy_server("environmentVariables", v)),
    );
    frames.extend(
        limits
            .into_iter()
            .map(|v| deploy_server("resourceLimits", v)),
    );
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
    frames.extend(mcp_accepted());
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
fn backend_schema_refuses_what_the_mcp_normaliser_refuses() {
    let v = validator("backend-message.schema.json");
    for frame in refused_by_the_mcp_normaliser() {
        assert!(
            decode_backend(&frame).is_ok(),
            "the decoder itself refuses {frame}: move it to the decoder's list"
        );
        let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
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
        // Instance names are unique within a group: no JSON Schema compares items' fields.
        deploy_group("servers", json!([server(), server()])),
    ];
    for frame in gaps {
        assert!(
            decode_backend(&frame).is_err(),
            "the decoder accepts {frame}"
        );
        let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert!(v.is_valid(&value), "the schema now refuses {frame}");
    }
    // Refused by the agent's normaliser, accepted by the decoder and (beyond JSON Schema) by the
    // schema: a unit that overflows, a key or port given twice, a HostIp that is no address
    // (`format` is an annotation).
    let normaliser_gaps = [
        deploy_server("resourceLimits", json!({"memory": "9007199254740993g"})),
        deploy_server("environmentVariables", json!(["A=1", "A=2"])),
        deploy_server("portBindings", json!({"8080": 8080, "8080/tcp": 8081})),
        deploy_server(
            "portBindings",
            json!({"8080": [{"HostPort": "1", "HostIp": "localhost"}]}),
        ),
    ];
    for frame in normaliser_gaps {
        assert!(
            decode_backend(&frame).is_ok(),
            "the decoder refuses {frame}"
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

/// The quoted literals of a TypeScript type, expanding `export type X = "a" | "b";` aliases,
/// also as members of a union (`X | null`).
fn ts_literals(ts: &str, ty: &str) -> BTreeSet<String> {
    let alias_body = |name: &str| {
        let alias = format!("export type {name} =");
        ts.find(&alias).map(|at| {
            let rest = &ts[at + alias.len()..];
            &rest[..rest.find(';').expect("a type alias ends with `;`")]
        })
    };
    let quoted = |text: &str| -> BTreeSet<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    if let Some(body) = alias_body(ty.trim()) {
        return quoted(body);
    }
    ty.split('|')
        .flat_map(|part| match alias_body(part.trim()) {
            Some(body) => quoted(body),
            None => quoted(part),
        })
        .collect()
}

/// The agent message types and the README's TypeScript interface for each.
const TS_INTERFACES: [(&str, &str); 10] = [
    ("hello", "Hello"),
    ("started", "Started"),
    ("output", "Output"),
    ("exit", "Exit"),
    ("progress", "Progress"),
    ("mcp_event", "McpEvent"),
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
    check_ts(&ts, &root, &root["$defs"]["ProgressBytes"], "ProgressBytes");
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

// ---------------------------------------------------------------------------------------------
// Results: each payload's schema requires exactly what its serializer always writes
// ---------------------------------------------------------------------------------------------

fn value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or_else(|e| panic!("does not serialise: {e}"))
}

/// Every payload type of `results.schema.json`, twice: with each optional value absent (`None`,
/// empty) and with each present.
fn payload_variants() -> Vec<(&'static str, Value, Value)> {
    let port = PortMapping {
        container_port: 8080,
        protocol: PortProtocol::Tcp,
        host_ip: "127.0.0.1".into(),
        host_port: 8080,
    };
    let outcome = |full: bool| ServerOutcome {
        instance_name: "s".into(),
        account_tool_instance_id: "t".into(),
        action: if full {
            ServerAction::Created
        } else {
            ServerAction::NotStarted
        },
        state: full.then_some(ServerState::Ready),
        container_id: full.then(|| "c".into()),
        container_name: "dtma-mcp-s".into(),
        ports: if full { vec![port.clone()] } else { Vec::new() },
        endpoint: full.then(|| "http://127.0.0.1:8080/mcp".into()),
        message: full.then(|| "m".into()),
    };
    let server = |full: bool| ServerStatus {
        instance_name: "s".into(),
        account_tool_instance_id: "t".into(),
        container_id: "c".into(),
        image: "i".into(),
        state: ServerState::Stopped,
        docker_state: "exited".into(),
        health: full.then_some(ContainerHealth::Starting),
        ports: if full { vec![port.clone()] } else { Vec::new() },
        created: "2025-01-20T10:30:00.000Z".into(),
        started_at: full.then(|| "2025-01-20T10:30:01.000Z".into()),
        restart_count: 0,
        exit_code: full.then_some(0),
        oom_killed: false,
    };
    let group = |full: bool| GroupStatus {
        group_id: "g".into(),
        servers: if full { vec![server(true)] } else { Vec::new() },
    };
    let deploy = |full: bool| DeployResult {
        group_id: "g".into(),
        outcome: DeployOutcome::Unchanged,
        servers: vec![outcome(full)],
    };
    let failure = |full: bool| DeployFailure {
        group_id: "g".into(),
        servers: vec![outcome(full)],
    };
    let status = |full: bool| StatusResult {
        groups: if full { vec![group(true)] } else { Vec::new() },
        mcp_servers: String::new(),
    };
    let remove = RemoveResult {
        group_id: "g".into(),
        removed: Vec::new(),
    };
    let restart = RestartResult {
        instance_name: "s".into(),
        container_id: "c".into(),
        state: ServerState::Starting,
    };
    let logs = LogsEnd {
        reason: LogsEndReason::Removed,
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    let events = EventsEnd {
        reason: EventsEndReason::Cancelled,
    };
    let cancel = |full: bool| CancelResult {
        target: "r".into(),
        cancelled: false,
        phase: full.then_some(StreamPhase::Closed),
    };
    vec![
        ("PortMapping", value(&port), value(&port)),
        (
            "ServerOutcome",
            value(&outcome(false)),
            value(&outcome(true)),
        ),
        ("DeployResult", value(&deploy(false)), value(&deploy(true))),
        (
            "DeployFailure",
            value(&failure(false)),
            value(&failure(true)),
        ),
        ("ServerStatus", value(&server(false)), value(&server(true))),
        ("GroupStatus", value(&group(false)), value(&group(true))),
        ("StatusResult", value(&status(false)), value(&status(true))),
        ("RemoveResult", value(&remove), value(&remove)),
        ("RestartResult", value(&restart), value(&restart)),
        ("LogsEnd", value(&logs), value(&logs)),
        ("EventsEnd", value(&events), value(&events)),
        ("CancelResult", value(&cancel(false)), value(&cancel(true))),
    ]
}

/// A validator for one `$defs` entry of `results.schema.json`.
fn payload_validator(root: &Value, name: &str) -> jsonschema::Validator {
    let schema = json!({
        "$schema": root["$schema"],
        "$defs": root["$defs"],
        "$ref": format!("#/$defs/{name}"),
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: not a valid schema: {e}"))
}

#[test]
fn results_schema_requires_exactly_what_the_serializer_always_writes() {
    let root = generated("results.schema.json");
    let mut seen = BTreeSet::new();
    for (name, sparse, full) in payload_variants() {
        seen.insert(name.to_owned());
        let def = &root["$defs"][name];
        let v = payload_validator(&root, name);
        let keys = |x: &Value| -> BTreeSet<String> {
            x.as_object()
                .unwrap_or_else(|| panic!("{name} is not an object"))
                .keys()
                .cloned()
                .collect()
        };
        let required = string_set(&def["required"]);
        assert_eq!(
            required,
            keys(&sparse),
            "`{name}`: `required` vs the keys always written"
        );
        let properties: BTreeSet<String> = def["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            properties,
            keys(&full),
            "`{name}`: `properties` vs every key written"
        );
        for instance in [&sparse, &full] {
            let errs = errors(&v, instance);
            assert!(errs.is_empty(), "`{name}` {instance}: {errs:?}");
        }
        for field in &properties {
            let mut changed = full.clone();
            let map = changed.as_object_mut().expect("an object");
            if required.contains(field) {
                map.remove(field);
            } else {
                map.insert(field.clone(), Value::Null);
            }
            assert!(
                !v.is_valid(&changed),
                "`{name}`: the schema accepts {changed}"
            );
        }
    }
    let objects: BTreeSet<String> = root["$defs"]
        .as_object()
        .expect("$defs")
        .iter()
        .filter(|(_, d)| d.get("properties").is_some())
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        seen, objects,
        "payload_variants() must build every payload of results.schema.json"
    );
}

/// The payload each result example's `data` (or error example's `details`) must match.
fn payload_of_example(name: &str) -> Option<&'static str> {
    let stem = name.rsplit('/').next()?.strip_suffix(".json")?;
    Some(match stem {
        "agent-result-cancel" => "CancelResult",
        "agent-result-mcp_deploy" => "DeployResult",
        "agent-result-mcp_remove" => "RemoveResult",
        "agent-result-mcp_status" => "StatusResult",
        "agent-result-mcp_restart" => "RestartResult",
        "agent-result-logs_follow" => "LogsEnd",
        "agent-result-mcp_events" => "EventsEnd",
        "agent-error-deploy_failed" => "DeployFailure",
        _ => return None,
    })
}

#[test]
fn result_examples_validate_against_their_payload() {
    let root = generated("results.schema.json");
    let mut checked = BTreeSet::new();
    for (name, text) in examples("agent-") {
        let Some(payload) = payload_of_example(&name) else {
            continue;
        };
        let m: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let inner = if m["type"] == "error" {
            &m["details"]
        } else {
            &m["data"]
        };
        let errs = errors(&payload_validator(&root, payload), inner);
        assert!(errs.is_empty(), "{name}: {errs:?}");
        checked.insert(payload);
    }
    assert_eq!(
        checked.len(),
        8,
        "an example for each typed payload: {checked:?}"
    );
}

/// Each payload's TypeScript interface in the README says what its schema says.
#[test]
fn readme_typescript_agrees_with_the_results_schema() {
    let readme = readme();
    let ts = ts_types(&readme);
    let root = generated("results.schema.json");
    for (name, _, _) in payload_variants() {
        check_ts(&ts, &root, &root["$defs"][name], name);
    }
}
