//! The desired spec of one MCP server, normalised from the deploy body (`POST /mcp/groups` and
//! `mcp_deploy`'s `group`): image references, port bindings, environment, resource limits,
//! capabilities, transport, plus the container name, the labels and the spec hash a deploy compares
//! with a running container's label. Pure: no I/O, no async.
//!
//! Every error names the field as the backend wrote it, in serde_path_to_error's notation (`.key`,
//! `[index]`, e.g. `servers[1].resourceLimits.memory`), and says what is accepted.
//!
//! **Invariant:** environment values are secrets. No [`SpecError`] message and no `Debug` output
//! contains one; invalid environment keys are not echoed either, since a misplaced value may sit
//! where a key should be. The spec hash does cover the values (a changed secret must redeploy).

mod env;
mod image;
mod limits;
mod names;
mod ports;
mod runtime;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use env::parse_env;
pub use image::{ImageRef, parse_image};
pub use limits::{Limits, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, parse_limits};
pub use names::{
    CONTAINER_PREFIX, LABEL_ACCOUNT_TOOL_INSTANCE_ID, LABEL_AGENT_ID, LABEL_DEPLOY_ID,
    LABEL_ENDPOINT_PATH, LABEL_GROUP_ID, LABEL_HOST_PORTS, LABEL_INSTANCE_NAME, LABEL_MANAGED,
    LABEL_PREFIX, LABEL_SPEC_HASH, LABEL_TRANSPORT, container_name, group_network, is_aside,
    is_managed, labels, leftover, managed_filter, new_name, old_name,
    parse_account_tool_instance_id, parse_group_id, parse_instance_name,
};
pub use ports::{DEFAULT_HOST_IP, PortSpec, Protocol, parse_ports};
pub use runtime::{
    LINUX_CAPABILITIES, Transport, parse_cap_add, parse_endpoint_path, parse_readiness_timeout,
    parse_transport,
};

/// A field of the deploy body that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    /// The path as the backend wrote it, e.g. `servers[1].resourceLimits.memory`.
    pub field: String,
    /// What is wrong and what is accepted. Never contains an environment value.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server spec and its hash

/// One server of the deploy body, as plain borrowed values (the typed request struct maps onto it
/// field by field). Names follow the body's camelCase fields.
#[derive(Clone, Copy, Default)]
pub struct ServerInput<'a> {
    pub account_tool_instance_id: &'a str,
    pub docker_image_url: &'a str,
    pub instance_name_on_toolbox: &'a str,
    pub mcp_endpoint_path: Option<&'a str>,
    pub mcp_transport_type: Option<&'a str>,
    pub port_bindings: Option<&'a Value>,
    pub environment_variables: Option<&'a Value>,
    pub resource_limits: Option<&'a Value>,
    pub cap_add: Option<&'a [String]>,
    pub readiness_timeout_ms: Option<u64>,
}

/// The normalised desired state of one MCP server. `Debug` redacts environment values.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub instance_name: String,
    /// [`container_name`] of the instance name.
    pub container_name: String,
    pub account_tool_instance_id: String,
    pub image: ImageRef,
    /// Secret values: never log, label or echo them.
    pub env: Vec<(String, String)>,
    /// Sorted.
    pub ports: Vec<PortSpec>,
    pub limits: Limits,
    /// Without `CAP_`, sorted, unique.
    pub cap_add: Vec<String>,
    pub transport: Transport,
    pub endpoint_path: String,
    pub readiness_timeout: Duration,
}

impl ServerSpec {
    /// Normalise one server. `field` is its path in the body (`servers[1]`); errors name the
    /// member below it (`servers[1].resourceLimits.memory`).
    pub fn from_input(field: &str, input: &ServerInput<'_>) -> Result<ServerSpec, SpecError> {
        let at = |name: &str| key_path(field, name);
        let instance_name =
            parse_instance_name(&at("instanceNameOnToolbox"), input.instance_name_on_toolbox)?;
        Ok(ServerSpec {
            container_name: container_name(&instance_name),
            instance_name,
            account_tool_instance_id: parse_account_tool_instance_id(
                &at("accountToolInstanceId"),
                input.account_tool_instance_id,
            )?,
            image: parse_image(&at("dockerImageUrl"), input.docker_image_url)?,
            env: parse_env(&at("environmentVariables"), input.environment_variables)?,
            ports: parse_ports(&at("portBindings"), input.port_bindings)?,
            limits: parse_limits(&at("resourceLimits"), input.resource_limits)?,
            cap_add: parse_cap_add(&at("capAdd"), input.cap_add)?,
            transport: parse_transport(&at("mcpTransportType"), input.mcp_transport_type)?,
            endpoint_path: parse_endpoint_path(&at("mcpEndpointPath"), input.mcp_endpoint_path)?,
            readiness_timeout: parse_readiness_timeout(
                &at("readinessTimeoutMs"),
                input.readiness_timeout_ms,
            )?,
        })
    }

    /// [`spec_hash`] of this spec in `group_id`.
    pub fn hash(&self, group_id: &str) -> String {
        spec_hash(self, group_id)
    }
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted<'a>(&'a [(String, String)]);
        impl fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, _)| (k, "[redacted]")))
                    .finish()
            }
        }
        f.debug_struct("ServerSpec")
            .field("instance_name", &self.instance_name)
            .field("container_name", &self.container_name)
            .field("account_tool_instance_id", &self.account_tool_instance_id)
            .field("image", &self.image)
            .field("env", &Redacted(&self.env))
            .field("ports", &self.ports)
            .field("limits", &self.limits)
            .field("cap_add", &self.cap_add)
            .field("transport", &self.transport)
            .field("endpoint_path", &self.endpoint_path)
            .field("readiness_timeout", &self.readiness_timeout)
            .finish()
    }
}

/// SHA-256, lower-case hex, of the canonical serialisation of what the container is made of: the
/// group id, account tool instance id, instance name (hence container name), canonical image
/// reference, transport, endpoint path, limits, capabilities, env sorted by key (values included:
/// a changed secret must redeploy; the hash is stored, the values never are), and ports sorted.
/// Each item is written `name=<byte length>:<bytes>\n` after a version line, so no two specs
/// serialise alike. The readiness timeout is left out on purpose: it governs the deploy's wait,
/// not the container, and changing it must not replace a running server.
///
/// **Invariant:** the serialisation never changes silently: a test pins a known hash, since a
/// change would make every running server look outdated and be replaced on the next deploy.
pub fn spec_hash(spec: &ServerSpec, group_id: &str) -> String {
    fn put(h: &mut Sha256, name: &str, value: &str) {
        h.update(name.as_bytes());
        h.update(format!("={}:", value.len()).as_bytes());
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    let mut h = Sha256::new();
    h.update(b"dtma-mcp-spec/1\n");
    put(&mut h, "group_id", group_id);
    put(
        &mut h,
        "account_tool_instance_id",
        &spec.account_tool_instance_id,
    );
    put(&mut h, "instance_name", &spec.instance_name);
    put(&mut h, "container_name", &spec.container_name);
    put(&mut h, "image", &spec.image.canonical());
    put(&mut h, "transport", spec.transport.as_str());
    put(&mut h, "endpoint_path", &spec.endpoint_path);
    put(
        &mut h,
        "memory_bytes",
        &spec.limits.memory_bytes.to_string(),
    );
    put(&mut h, "nano_cpus", &spec.limits.nano_cpus.to_string());
    put(&mut h, "pids", &spec.limits.pids.to_string());
    let caps: BTreeSet<&str> = spec.cap_add.iter().map(String::as_str).collect();
    put(&mut h, "cap_add.count", &caps.len().to_string());
    for cap in caps {
        put(&mut h, "cap", cap);
    }
    let mut env: Vec<&(String, String)> = spec.env.iter().collect();
    env.sort();
    put(&mut h, "env.count", &env.len().to_string());
    for (key, value) in env {
        put(&mut h, "env.key", key);
        put(&mut h, "env.value", value);
    }
    let mut ports: Vec<&PortSpec> = spec.ports.iter().collect();
    ports.sort();
    put(&mut h, "ports.count", &ports.len().to_string());
    for p in ports {
        let host_port = p
            .host_port
            .map_or_else(|| "auto".to_owned(), |n| n.to_string());
        put(
            &mut h,
            "port",
            &format!(
                "{}/{} {} {host_port}",
                p.container_port,
                p.protocol.as_str(),
                p.host_ip
            ),
        );
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `parent.key`, with the key escaped and shortened for display.
fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        shown(key)
    } else {
        format!("{parent}.{}", shown(key))
    }
}

fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// At most 64 characters, control characters escaped: input echoed in a message stays one
/// readable line.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", shown(s))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::limits::MIB;
    use super::*;
    use Protocol::{Tcp, Udp};
    use serde_json::json;

    // --- helpers shared by the modules' tests ---------------------------------------------

    pub(super) const DIGEST: &str =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The error of `r`, asserting that it names `field`.
    #[track_caller]
    pub(super) fn fails<T: fmt::Debug>(r: Result<T, SpecError>, field: &str) -> String {
        match r {
            Ok(v) => panic!("expected an error at `{field}`, got {v:?}"),
            Err(e) => {
                assert_eq!(e.field, field, "{e}");
                e.message
            }
        }
    }

    pub(super) fn port(
        container_port: u16,
        protocol: Protocol,
        ip: &str,
        host: Option<u16>,
    ) -> PortSpec {
        PortSpec {
            container_port,
            protocol,
            host_ip: ip.parse().unwrap(),
            host_port: host,
        }
    }

    pub(super) fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // --- the server spec and its hash -----------------------------------------------------

    /// The contract's example server, with every optional member given.
    fn body() -> Value {
        json!({
            "accountToolInstanceId": "3f1c2a9e-0b7d-4c8e-9a61-5d2e7f4b8c10",
            "dockerImageUrl": "ghcr.io/org/some-mcp:1.2.0",
            "instanceNameOnToolbox": "reasoning-server",
            "mcpEndpointPath": "/mcp",
            "mcpTransportType": "http",
            "portBindings": {"8080/tcp": [{"HostPort": "8080"}]},
            "environmentVariables": {"API_KEY": "s3cr3t-value", "MODE": "fast"},
            "resourceLimits": {"memory": "512m", "cpu": "0.5"},
            "capAdd": ["NET_BIND_SERVICE"],
            "readinessTimeoutMs": 30000,
        })
    }

    /// What the typed request struct will do: map the body's members onto `ServerInput`.
    fn spec_of(v: &Value) -> Result<ServerSpec, SpecError> {
        let caps: Option<Vec<String>> = v.get("capAdd").map(|c| {
            c.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        });
        let input = ServerInput {
            account_tool_instance_id: v["accountToolInstanceId"].as_str().unwrap(),
            docker_image_url: v["dockerImageUrl"].as_str().unwrap(),
            instance_name_on_toolbox: v["instanceNameOnToolbox"].as_str().unwrap(),
            mcp_endpoint_path: v.get("mcpEndpointPath").and_then(Value::as_str),
            mcp_transport_type: v.get("mcpTransportType").and_then(Value::as_str),
            port_bindings: v.get("portBindings"),
            environment_variables: v.get("environmentVariables"),
            resource_limits: v.get("resourceLimits"),
            cap_add: caps.as_deref(),
            readiness_timeout_ms: v.get("readinessTimeoutMs").and_then(Value::as_u64),
        };
        ServerSpec::from_input("servers[1]", &input)
    }

    fn spec() -> ServerSpec {
        spec_of(&body()).unwrap()
    }

    #[test]
    fn a_server_spec_from_the_contract_example() {
        let s = spec();
        assert_eq!(s.instance_name, "reasoning-server");
        assert_eq!(s.container_name, "dtma-mcp-reasoning-server");
        assert_eq!(
            s.account_tool_instance_id,
            "3f1c2a9e-0b7d-4c8e-9a61-5d2e7f4b8c10"
        );
        assert_eq!(s.image.reference(), "ghcr.io/org/some-mcp:1.2.0");
        let mut env = s.env.clone();
        env.sort();
        assert_eq!(env, pairs(&[("API_KEY", "s3cr3t-value"), ("MODE", "fast")]));
        assert_eq!(s.ports, [port(8080, Tcp, "127.0.0.1", Some(8080))]);
        assert_eq!(
            s.limits,
            Limits {
                memory_bytes: 512 * MIB,
                nano_cpus: 500_000_000,
                pids: 256
            }
        );
        assert_eq!(s.cap_add, ["NET_BIND_SERVICE"]);
        assert_eq!(s.transport, Transport::Http);
        assert_eq!(s.endpoint_path, "/mcp");
        assert_eq!(s.readiness_timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_minimal_server_gets_the_defaults() {
        let s = spec_of(&json!({
            "accountToolInstanceId": "id",
            "dockerImageUrl": "x",
            "instanceNameOnToolbox": "x",
        }))
        .unwrap();
        assert!(s.env.is_empty() && s.ports.is_empty() && s.cap_add.is_empty());
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.transport, Transport::Http);
        assert_eq!(s.endpoint_path, "/mcp");
        assert_eq!(s.readiness_timeout, Duration::from_secs(60));
    }

    #[test]
    fn server_errors_name_the_member() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "instanceNameOnToolbox",
                json!("Bad"),
                "servers[1].instanceNameOnToolbox",
            ),
            (
                "accountToolInstanceId",
                json!(""),
                "servers[1].accountToolInstanceId",
            ),
            ("dockerImageUrl", json!("Bad"), "servers[1].dockerImageUrl"),
            (
                "environmentVariables",
                json!(["A"]),
                "servers[1].environmentVariables[0]",
            ),
            (
                "portBindings",
                json!({"80": "x"}),
                "servers[1].portBindings.80",
            ),
            (
                "resourceLimits",
                json!({"memory": "1k"}),
                "servers[1].resourceLimits.memory",
            ),
            ("capAdd", json!(["ALL"]), "servers[1].capAdd[0]"),
            (
                "mcpTransportType",
                json!("ws"),
                "servers[1].mcpTransportType",
            ),
            (
                "mcpEndpointPath",
                json!("mcp"),
                "servers[1].mcpEndpointPath",
            ),
            (
                "readinessTimeoutMs",
                json!(1),
                "servers[1].readinessTimeoutMs",
            ),
        ];
        for (member, value, field) in cases {
            let mut b = body();
            b[member] = value;
            let e = fails(spec_of(&b), field);
            assert!(!e.contains("s3cr3t-value"), "{e}");
        }
    }

    #[test]
    fn debug_redacts_env_values() {
        let s = spec();
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(
            shown.contains("API_KEY") && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(
            shown.contains("reasoning-server") && shown.contains("8080"),
            "{shown}"
        );
        let pretty = format!("{s:#?}");
        assert!(!pretty.contains("s3cr3t-value"), "{pretty}");
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing the serialisation makes every running server look outdated: if this fails,
        // the format changed; bump the version line in spec_hash on purpose, never by accident.
        // The value was checked against an independent implementation of the documented format
        // (the version line, then `name=<len>:<bytes>\n` per item).
        let h = spec().hash("agent-42-mcp");
        assert_eq!(h.len(), 64);
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(h, spec_hash(&spec(), "agent-42-mcp"));
        assert_eq!(
            h,
            "42335d6ab99531f5a77e08b2ded6ff9e645c76919a0af81215561f8b29070f17"
        );
    }

    #[test]
    fn the_hash_ignores_spellings_and_env_order() {
        let base = spec().hash("g");
        let mut b = body();
        b["environmentVariables"] = json!(["MODE=fast", "API_KEY=s3cr3t-value"]);
        assert_eq!(spec_of(&b).unwrap().hash("g"), base, "env order");
        b["environmentVariables"] = json!(["API_KEY=s3cr3t-value", "MODE=fast"]);
        assert_eq!(spec_of(&b).unwrap().hash("g"), base, "env as a list");
        b["portBindings"] = json!({"8080": 8080});
        b["resourceLimits"] = json!({"memory": 536870912, "cpu": 0.5, "pids": 256});
        b["capAdd"] = json!(["CAP_NET_BIND_SERVICE"]);
        assert_eq!(spec_of(&b).unwrap().hash("g"), base, "other spellings");
        // The readiness timeout is the deploy's wait, not the container.
        b["readinessTimeoutMs"] = json!(5000);
        assert_eq!(spec_of(&b).unwrap().hash("g"), base, "readiness timeout");

        let short = spec_of(&json!({
            "accountToolInstanceId": "id", "dockerImageUrl": "x", "instanceNameOnToolbox": "x",
        }))
        .unwrap();
        let long = spec_of(&json!({
            "accountToolInstanceId": "id", "dockerImageUrl": "docker.io/library/x:latest",
            "instanceNameOnToolbox": "x", "mcpEndpointPath": "/mcp", "mcpTransportType": "http",
        }))
        .unwrap();
        assert_eq!(short.hash("g"), long.hash("g"));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = spec();
        let mut seen = BTreeSet::from([base.hash("g")]);
        let mut variants: Vec<(&str, ServerSpec)> = Vec::new();
        let mut with = |what: &'static str, f: &dyn Fn(&mut ServerSpec)| {
            let mut s = base.clone();
            f(&mut s);
            variants.push((what, s));
        };
        with("instance name", &|s| {
            s.instance_name = "other".into();
            s.container_name = container_name("other");
        });
        with("container name", &|s| s.container_name = "other".into());
        with("account tool instance id", &|s| {
            s.account_tool_instance_id = "other".into()
        });
        with("image tag", &|s| s.image.tag = Some("1.2.1".into()));
        with("image digest", &|s| s.image.digest = Some(DIGEST.into()));
        with("image registry", &|s| s.image.registry = None);
        with("image repository", &|s| {
            s.image.repository = "org/other".into()
        });
        with("env value", &|s| s.env[0].1.push('!'));
        with("env key", &|s| s.env[0].0.push('X'));
        with("env added", &|s| s.env.push(("NEW".into(), String::new())));
        with("env removed", &|s| {
            s.env.pop();
        });
        with("env boundary", &|s| {
            s.env = pairs(&[("API_KEYs", "3cr3t-value"), ("MODE", "fast")])
        });
        with("host port", &|s| s.ports[0].host_port = Some(8081));
        with("agent-picked port", &|s| s.ports[0].host_port = None);
        with("host ip", &|s| {
            s.ports[0].host_ip = "0.0.0.0".parse().unwrap()
        });
        with("protocol", &|s| s.ports[0].protocol = Udp);
        with("container port", &|s| s.ports[0].container_port = 8081);
        with("port added", &|s| {
            s.ports.push(port(9000, Tcp, "127.0.0.1", None))
        });
        with("ports removed", &|s| s.ports.clear());
        with("memory", &|s| s.limits.memory_bytes += 1);
        with("cpu", &|s| s.limits.nano_cpus += 1);
        with("pids", &|s| s.limits.pids += 1);
        with("cap added", &|s| s.cap_add.push("CHOWN".into()));
        with("caps removed", &|s| s.cap_add.clear());
        with("transport", &|s| s.transport = Transport::Sse);
        with("endpoint path", &|s| s.endpoint_path = "/mcp/".into());
        for (what, s) in &variants {
            assert!(seen.insert(s.hash("g")), "{what} did not change the hash");
        }
        assert!(
            seen.insert(base.hash("h")),
            "group id did not change the hash"
        );
    }
}
