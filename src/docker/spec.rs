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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

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
// Names and labels

/// The prefix of every label the agent puts on the containers it manages.
pub const LABEL_PREFIX: &str = "ai.agentopia.dtma.";

macro_rules! label {
    ($name:literal) => {
        concat!("ai.agentopia.dtma.", $name)
    };
}

/// `"true"` on every container this agent manages; nothing else is ever touched.
pub const LABEL_MANAGED: &str = label!("managed");
pub const LABEL_AGENT_ID: &str = label!("agent_id");
pub const LABEL_GROUP_ID: &str = label!("group_id");
pub const LABEL_ACCOUNT_TOOL_INSTANCE_ID: &str = label!("account_tool_instance_id");
pub const LABEL_INSTANCE_NAME: &str = label!("instance_name");
pub const LABEL_TRANSPORT: &str = label!("transport");
pub const LABEL_ENDPOINT_PATH: &str = label!("endpoint_path");
/// [`ServerSpec::hash`]: equal hashes mean the running container already is the desired one.
pub const LABEL_SPEC_HASH: &str = label!("spec_hash");
/// The deploy that created the container.
pub const LABEL_DEPLOY_ID: &str = label!("deploy_id");
/// The host ports the agent picked (`8080/tcp=18080,...`), kept so that a redeploy picks the
/// same ones and so that they are known under host networking (which publishes nothing).
pub const LABEL_HOST_PORTS: &str = label!("host_ports");

/// Every MCP server's container name starts with this.
pub const CONTAINER_PREFIX: &str = "dtma-mcp-";

/// The Docker container name of an MCP server: `dtma-mcp-<instanceNameOnToolbox>`.
pub fn container_name(instance_name: &str) -> String {
    format!("{CONTAINER_PREFIX}{instance_name}")
}

/// The user-defined network of a group deployed with `sharedNetworking: true`.
pub fn group_network(group_id: &str) -> String {
    format!("{CONTAINER_PREFIX}{group_id}")
}

/// The label filter that finds every container this agent manages.
pub fn managed_filter() -> String {
    format!("{LABEL_MANAGED}=true")
}

/// Whether a container's labels say the agent manages it.
pub fn is_managed(labels: &std::collections::HashMap<String, String>) -> bool {
    labels.get(LABEL_MANAGED).is_some_and(|v| v == "true")
}

/// The labels of a server's container. No label carries an environment value (the spec hash
/// covers them, and `docker inspect` shows the environment itself to whoever can read labels).
pub fn labels(
    s: &ServerSpec,
    group_id: &str,
    agent_id: &str,
    deploy_id: &str,
    host_ports: &[(String, u16)],
) -> std::collections::HashMap<String, String> {
    // `8080/tcp=18080,...`: container port and the host port it was given.
    let ports: Vec<String> = host_ports.iter().map(|(k, p)| format!("{k}={p}")).collect();
    [
        (LABEL_MANAGED, "true".to_owned()),
        (LABEL_AGENT_ID, agent_id.to_owned()),
        (LABEL_GROUP_ID, group_id.to_owned()),
        (
            LABEL_ACCOUNT_TOOL_INSTANCE_ID,
            s.account_tool_instance_id.clone(),
        ),
        (LABEL_INSTANCE_NAME, s.instance_name.clone()),
        (LABEL_TRANSPORT, s.transport.as_str().to_owned()),
        (LABEL_ENDPOINT_PATH, s.endpoint_path.clone()),
        (LABEL_SPEC_HASH, s.hash(group_id)),
        (LABEL_DEPLOY_ID, deploy_id.to_owned()),
        (LABEL_HOST_PORTS, ports.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `groupId`: 1..=64 characters of `[A-Za-z0-9_.-]`, the first alphanumeric.
pub fn parse_group_id(field: &str, group_id: &str) -> Result<String, SpecError> {
    let ok_chars = group_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let first_ok = group_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if group_id.is_empty() || group_id.chars().count() > 64 || !ok_chars || !first_ok {
        return Err(SpecError::new(
            field,
            format!(
                "{} is not a group id: 1 to 64 characters of letters, digits, '_', '.', '-', \
                 starting with a letter or digit",
                quoted(group_id)
            ),
        ));
    }
    Ok(group_id.to_owned())
}

/// `instanceNameOnToolbox`: 1..=63 characters, `[a-z0-9][a-z0-9_.-]*`. Upper case is refused, not
/// lowered: the name becomes a container name and a label, and two spellings must not meet.
pub fn parse_instance_name(field: &str, name: &str) -> Result<String, SpecError> {
    const RULE: &str = "1 to 63 characters of a-z, 0-9, '_', '.', '-', starting with a-z or 0-9";
    if name.is_empty() || name.chars().count() > 63 {
        return Err(SpecError::new(
            field,
            format!("{} has the wrong length: {RULE}", quoted(name)),
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(SpecError::new(
            field,
            format!(
                "{} contains upper-case letters; instance names are lower-case ({RULE})",
                quoted(name)
            ),
        ));
    }
    let body_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !body_ok || !first_ok {
        return Err(SpecError::new(
            field,
            format!("{} is not an instance name: {RULE}", quoted(name)),
        ));
    }
    Ok(name.to_owned())
}

/// `accountToolInstanceId`: 1..=128 characters, no control characters (it becomes a label).
pub fn parse_account_tool_instance_id(field: &str, id: &str) -> Result<String, SpecError> {
    if id.is_empty() || id.chars().count() > 128 {
        return Err(SpecError::new(field, "must be 1 to 128 characters"));
    }
    if id.chars().any(char::is_control) {
        return Err(SpecError::new(field, "must not contain control characters"));
    }
    Ok(id.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Image references

/// A parsed image reference: `[registry/]repository[:tag][@digest]`, as Docker's reference
/// grammar (distribution/reference) defines it. Fields are kept as written; [`ImageRef::canonical`]
/// is the fully qualified form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `ghcr.io`, `localhost:5000`, `[::1]:5000`; `None` means Docker Hub.
    pub registry: Option<String>,
    /// Slash-separated lower-case path components: `org/some-mcp`, `x`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` (or `sha512:<128 hex>`).
    pub digest: Option<String>,
}

impl ImageRef {
    /// The name without tag or digest: what Docker's create-image (`POST /images/create`) gets as
    /// `fromImage`.
    pub fn pull_name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// What create-image gets as `tag`: the digest when there is one (it pins the content, the
    /// tag beside it is informative only), else the tag, else `latest`.
    pub fn pull_tag(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".to_owned())
    }

    /// The reference to create containers with: `name@digest` when pinned (that is what was
    /// pulled), else `name:tag` with `latest` made explicit.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.pull_name()),
            None => format!(
                "{}:{}",
                self.pull_name(),
                self.tag.as_deref().unwrap_or("latest")
            ),
        }
    }

    /// The fully qualified form, equal for every spelling of one image: Docker Hub made explicit
    /// (`x` -> `docker.io/library/x`), `latest` made explicit when there is no digest, the tag kept
    /// beside a digest. Used for the spec hash.
    pub fn canonical(&self) -> String {
        let registry = match self.registry.as_deref() {
            None | Some("docker.io") | Some("index.docker.io") => "docker.io",
            Some(r) => r,
        };
        let mut out = String::from(registry);
        out.push('/');
        if registry == "docker.io" && !self.repository.contains('/') {
            out.push_str("library/");
        }
        out.push_str(&self.repository);
        match (&self.tag, &self.digest) {
            (Some(t), _) => {
                out.push(':');
                out.push_str(t);
            }
            (None, None) => out.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }
}

impl fmt::Display for ImageRef {
    /// As written: `[registry/]repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

const IMAGE_EXAMPLE: &str =
    "a reference like ghcr.io/org/name:1.2.0, org/name, name@sha256:<64 hex>";

/// Parse `dockerImageUrl`. Accepts `ghcr.io/org/x:1.2.0`, `org/x`, `x`, `localhost:5000/x:tag`
/// (a port in the registry is not a tag), `x@sha256:<64 hex>`, `x:tag@sha256:<64 hex>`. The first
/// path component is a registry when it contains `.` or `:`, is `localhost`, or is a bracketed
/// IPv6 address. Refuses empty input, whitespace, URLs (`https://...`), upper-case repositories,
/// malformed tags, registries and digests.
pub fn parse_image(field: &str, image: &str) -> Result<ImageRef, SpecError> {
    let err = |msg: String| SpecError::new(field, msg);
    if image.is_empty() {
        return Err(err(format!("is empty; give {IMAGE_EXAMPLE}")));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(format!(
            "contains whitespace or control characters; give {IMAGE_EXAMPLE}"
        )));
    }
    if image.contains("://") {
        // Not echoed: a URL may carry credentials (`https://user:token@host/...`).
        return Err(err(format!(
            "is a URL; give an image reference without a scheme: {IMAGE_EXAMPLE}"
        )));
    }

    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => {
            if !valid_digest(digest) {
                return Err(err(format!(
                    "the digest {} is not valid: expected sha256: followed by 64 lower-case hex \
                     digits (or sha512: and 128)",
                    quoted(digest)
                )));
            }
            (rest, Some(digest.to_owned()))
        }
        None => (image, None),
    };

    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|s| colon > s) => {
            let tag = &rest[colon + 1..];
            if !valid_tag(tag) {
                return Err(err(format!(
                    "the tag {} is not valid: 1 to 128 characters of letters, digits, '_', '.', \
                     '-', not starting with '.' or '-'",
                    quoted(tag)
                )));
            }
            (&rest[..colon], Some(tag.to_owned()))
        }
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err(err(format!("has no image name; give {IMAGE_EXAMPLE}")));
    }
    if name.len() > 255 {
        return Err(err(
            "the image name is longer than 255 characters".to_owned()
        ));
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            if !valid_registry(first) {
                return Err(err(format!(
                    "the registry {} is not a host name or address with an optional port \
                     (e.g. ghcr.io, localhost:5000, [::1]:5000)",
                    quoted(first)
                )));
            }
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(err(format!(
            "the repository {} contains upper-case letters; repository names are lower-case",
            quoted(repository)
        )));
    }
    if !repository.split('/').all(valid_path_component) {
        return Err(err(format!(
            "the repository {} is not valid: '/'-separated components of a-z and 0-9, joined \
             inside a component by '.', '_', '__' or dashes",
            quoted(repository)
        )));
    }
    Ok(ImageRef {
        registry,
        repository: repository.to_owned(),
        tag,
        digest,
    })
}

fn valid_digest(d: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match d.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match t.as_bytes() {
        [first, rest @ ..] => {
            word(*first)
                && t.len() <= 128
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is dot-separated DNS labels or a bracketed IPv6 address.
fn valid_registry(r: &str) -> bool {
    let (host_ok, port) = if let Some(inner) = r.strip_prefix('[') {
        match inner.split_once(']') {
            Some((addr, after)) => {
                let port = match after {
                    "" => None,
                    p => match p.strip_prefix(':') {
                        Some(p) => Some(p),
                        None => return false,
                    },
                };
                (addr.parse::<Ipv6Addr>().is_ok(), port)
            }
            None => return false,
        }
    } else {
        let (host, port) = match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        };
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(la)) => {
                    f.is_ascii_alphanumeric()
                        && la.is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                }
                _ => false,
            }
        };
        (host.split('.').all(label_ok), port)
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    host_ok && port_ok
}

// ---------------------------------------------------------------------------------------------
// Port bindings

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port. Ordered by container port, protocol, host address, host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub container_port: u16,
    pub protocol: Protocol,
    /// 127.0.0.1 unless the body names another address.
    pub host_ip: IpAddr,
    /// `None`: the agent picks one and keeps it stable across redeploys.
    pub host_port: Option<u16>,
}

/// The host address a binding gets when the body names none: loopback, so nothing is exposed by
/// default. (Docker itself would use every interface.)
pub const DEFAULT_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const PORTS_EXPECTED: &str = "an object mapping container ports to host ports, like \
     {\"8080/tcp\": [{\"HostPort\": \"8080\", \"HostIp\": \"127.0.0.1\"}]} or {\"8080\": 8080}";

/// Parse `portBindings`. Keys are container ports: `N`, `N/tcp` or `N/udp` (tcp by default). A
/// value is either Docker's list of bindings `[{"HostPort": "8080", "HostIp": "0.0.0.0"}]` (several
/// entries give several bindings; `HostPort` absent, null, `""` or `"0"` lets the agent pick;
/// `HostIp` absent, null or `""` means 127.0.0.1 — unlike Docker, where it means every interface)
/// or a host port directly (a number or numeric string; `null`, `0`, `""` let the agent pick).
/// Absent or null: no ports. Refuses ports outside 1..=65535, protocols other than tcp/udp,
/// non-numeric strings, empty lists, unknown keys in a binding, and two bindings of one host
/// port and protocol on the same address (or on an address and the unspecified address of its
/// family, which overlap when bound). The result is sorted.
pub fn parse_ports(field: &str, value: Option<&Value>) -> Result<Vec<PortSpec>, SpecError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(SpecError::new(
                field,
                format!("expected {PORTS_EXPECTED}; got {}", kind(other)),
            ));
        }
    };
    // (spec, path) pairs, so that a conflict names both sides.
    let mut out: Vec<(PortSpec, String)> = Vec::new();
    for (key, value) in map {
        let path = key_path(field, key);
        let (container_port, protocol) = parse_container_port(&path, key)?;
        let mut push = |host_ip: IpAddr, host_port: Option<u16>, at: String| {
            out.push((
                PortSpec {
                    container_port,
                    protocol,
                    host_ip,
                    host_port,
                },
                at,
            ));
        };
        match value {
            Value::Array(bindings) => {
                if bindings.is_empty() {
                    return Err(SpecError::new(
                        path,
                        "an empty list binds nothing; give [{}] or null to let the agent pick \
                         a host port, or leave the port out",
                    ));
                }
                for (i, binding) in bindings.iter().enumerate() {
                    let at = index_path(&path, i);
                    let (host_ip, host_port) = parse_docker_binding(&at, binding)?;
                    push(host_ip, host_port, at);
                }
            }
            Value::Object(_) => {
                return Err(SpecError::new(
                    path,
                    "a binding object goes in a list: [{\"HostPort\": \"8080\"}]",
                ));
            }
            other => {
                let host_port = parse_host_port(&path, other)?;
                push(DEFAULT_HOST_IP, host_port, path);
            }
        }
    }
    check_port_conflicts(&out)?;
    let mut ports: Vec<PortSpec> = out.into_iter().map(|(p, _)| p).collect();
    ports.sort();
    Ok(ports)
}

fn parse_container_port(path: &str, key: &str) -> Result<(u16, Protocol), SpecError> {
    let (number, protocol) = match key.split_once('/') {
        Some((n, p)) if p.eq_ignore_ascii_case("tcp") => (n, Protocol::Tcp),
        Some((n, p)) if p.eq_ignore_ascii_case("udp") => (n, Protocol::Udp),
        Some((_, p)) => {
            return Err(SpecError::new(
                path,
                format!(
                    "the protocol {} is not supported: use tcp or udp (\"8080\", \"8080/tcp\", \
                     \"8080/udp\")",
                    quoted(p)
                ),
            ));
        }
        None => (key, Protocol::Tcp),
    };
    match port_number(number) {
        Some(n) if n >= 1 => Ok((n, protocol)),
        _ => Err(SpecError::new(
            path,
            "a container port is a number 1..=65535, optionally followed by /tcp or /udp",
        )),
    }
}

/// A port written as decimal digits: `Some(0..=65535)`, else `None`.
fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok()
}

const HOST_PORT_RULE: &str = "a host port is 1..=65535 (a number or numeric string), or 0, \"\" or null to let the agent pick";

/// A host port value: `Ok(None)` lets the agent pick.
fn parse_host_port(path: &str, value: &Value) -> Result<Option<u16>, SpecError> {
    let n = match value {
        Value::Null => return Ok(None),
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => match port_number(s) {
            Some(n) => n,
            None => {
                return Err(SpecError::new(
                    path,
                    format!("{} is not a port: {HOST_PORT_RULE}", quoted(s)),
                ));
            }
        },
        Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(n) => n,
            None => {
                return Err(SpecError::new(
                    path,
                    format!("{n} is not a port: {HOST_PORT_RULE}"),
                ));
            }
        },
        other => {
            return Err(SpecError::new(
                path,
                format!("got {}; {HOST_PORT_RULE}", kind(other)),
            ));
        }
    };
    Ok((n != 0).then_some(n))
}

/// One entry of Docker's binding list: `{"HostPort"?: ..., "HostIp"?: ...}`.
fn parse_docker_binding(path: &str, value: &Value) -> Result<(IpAddr, Option<u16>), SpecError> {
    let Value::Object(obj) = value else {
        return Err(SpecError::new(
            path,
            format!(
                "expected a binding like {{\"HostPort\": \"8080\", \"HostIp\": \"127.0.0.1\"}}; \
                 got {}",
                kind(value)
            ),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "HostPort" && *k != "HostIp") {
        return Err(SpecError::new(
            key_path(path, unknown),
            "unknown key; a binding has HostPort and HostIp",
        ));
    }
    let host_port = match obj.get("HostPort") {
        None => None,
        Some(v) => parse_host_port(&key_path(path, "HostPort"), v)?,
    };
    let ip_path = || key_path(path, "HostIp");
    let host_ip = match obj.get("HostIp") {
        None | Some(Value::Null) => DEFAULT_HOST_IP,
        Some(Value::String(s)) if s.is_empty() => DEFAULT_HOST_IP,
        Some(Value::String(s)) => s.parse::<IpAddr>().map_err(|_| {
            SpecError::new(
                ip_path(),
                format!(
                    "{} is not an IP address; give one like 127.0.0.1, 0.0.0.0 or ::1",
                    quoted(s)
                ),
            )
        })?,
        Some(other) => {
            return Err(SpecError::new(
                ip_path(),
                format!(
                    "got {}; give an IP address as a string, like \"127.0.0.1\"",
                    kind(other)
                ),
            ));
        }
    };
    Ok((host_ip, host_port))
}

/// Two fixed bindings of one host port and protocol conflict when their addresses are equal, or
/// when one is the unspecified address (0.0.0.0, ::) of the other's family. `0.0.0.0` and `::`
/// together are fine: that is what Docker itself publishes by default.
fn check_port_conflicts(bindings: &[(PortSpec, String)]) -> Result<(), SpecError> {
    #[derive(Default)]
    struct Slot<'a> {
        exact: BTreeMap<IpAddr, &'a str>,
        unspecified: Option<&'a str>,
    }
    let mut slots: BTreeMap<(Protocol, u16, bool), Slot<'_>> = BTreeMap::new();
    for (spec, path) in bindings {
        let Some(port) = spec.host_port else { continue };
        let slot = slots
            .entry((spec.protocol, port, spec.host_ip.is_ipv4()))
            .or_default();
        let clash = slot.exact.get(&spec.host_ip).copied().or_else(|| {
            if spec.host_ip.is_unspecified() {
                slot.exact.values().next().copied()
            } else {
                slot.unspecified
            }
        });
        if let Some(other) = clash {
            return Err(SpecError::new(
                path.as_str(),
                format!(
                    "host port {port}/{} on {} is also bound by `{other}`",
                    spec.protocol.as_str(),
                    spec.host_ip
                ),
            ));
        }
        slot.exact.insert(spec.host_ip, path);
        if spec.host_ip.is_unspecified() {
            slot.unspecified = Some(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Environment

const ENV_EXPECTED: &str = "an object {\"KEY\": \"value\"} or a list [\"KEY=value\"]";
const ENV_KEY_RULE: &str = "keys match [A-Za-z_][A-Za-z0-9_]*";

/// Parse `environmentVariables`: an object (string values; numbers and booleans are stringified;
/// null, lists and objects refused) or a list of `KEY=VALUE` strings (split at the first `=`; the
/// value may be empty). Keys match `[A-Za-z_][A-Za-z0-9_]*` and are unique; NUL bytes are refused.
/// Absent or null: no variables.
///
/// Order: the list form keeps input order; the object form comes in the iteration order of
/// `serde_json::Map` (sorted by key in this build, which does not enable `preserve_order`). The
/// spec hash sorts either way.
///
/// Values are secrets: no error message contains one, and invalid keys are not echoed (they may be
/// a value put in the wrong place). Duplicate keys can only be reported for the list form: a JSON
/// object with a repeated key has already kept the last one when it reaches here.
pub fn parse_env(field: &str, value: Option<&Value>) -> Result<Vec<(String, String)>, SpecError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => {
            let mut out = Vec::with_capacity(map.len());
            for (key, value) in map {
                if !valid_env_key(key) {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "a key is not a variable name ({ENV_KEY_RULE}); it is not repeated \
                             here since it may hold a secret"
                        ),
                    ));
                }
                let path = key_path(field, key);
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => {
                        return Err(SpecError::new(
                            path,
                            "the value is null; give a string (\"\" for an empty value)",
                        ));
                    }
                    other => {
                        return Err(SpecError::new(
                            path,
                            format!(
                                "the value is {}; give a string, a number or a boolean",
                                kind(other)
                            ),
                        ));
                    }
                };
                if value.contains('\0') {
                    return Err(SpecError::new(path, "the value contains a NUL byte"));
                }
                out.push((key.clone(), value));
            }
            Ok(out)
        }
        Some(Value::Array(list)) => {
            let mut out: Vec<(String, String)> = Vec::with_capacity(list.len());
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, entry) in list.iter().enumerate() {
                let path = index_path(field, i);
                let Value::String(entry) = entry else {
                    return Err(SpecError::new(
                        path,
                        format!("expected a \"KEY=value\" string; got {}", kind(entry)),
                    ));
                };
                let Some((key, value)) = entry.split_once('=') else {
                    return Err(SpecError::new(
                        path,
                        "expected \"KEY=value\" but there is no '='; the entry is not repeated \
                         here since it may hold a secret",
                    ));
                };
                if !valid_env_key(key) {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "the part before '=' is not a variable name ({ENV_KEY_RULE}); it is \
                             not repeated here since it may hold a secret"
                        ),
                    ));
                }
                if value.contains('\0') {
                    return Err(SpecError::new(
                        path,
                        format!("the value of {key} contains a NUL byte"),
                    ));
                }
                if let Some(first) = seen.insert(key, i) {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "duplicate key {key} (first at `{}`)",
                            index_path(field, first)
                        ),
                    ));
                }
                out.push((key.to_owned(), value.to_owned()));
            }
            Ok(out)
        }
        Some(other) => Err(SpecError::new(
            field,
            format!("expected {ENV_EXPECTED}; got {}", kind(other)),
        )),
    }
}

fn valid_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Resource limits

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Docker refuses a memory limit below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * MIB;
pub const MAX_MEMORY_BYTES: u64 = TIB;

/// The container's resource limits, in Docker's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `HostConfig.Memory`. Default 512 MiB.
    pub memory_bytes: u64,
    /// `HostConfig.NanoCpus`: 10^9 per core. Default 1 core.
    pub nano_cpus: i64,
    /// `HostConfig.PidsLimit`. Default 256.
    pub pids: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 512 * MIB,
            nano_cpus: 1_000_000_000,
            pids: 256,
        }
    }
}

const MEMORY_RULE: &str = "give bytes as an integer or a size like \"512m\", \"1g\", \"1.5g\", \
     \"512MiB\", \"512MB\" (k, m, g, t are powers of 1024, with or without b/ib; case-insensitive)";

/// Parse `resourceLimits`: `{memory?, cpu?, pids?}`; absent, null or a null member means the
/// default (512 MiB, 1.0 CPU, 256 pids). Unknown keys are refused.
/// - `memory`: an integer number of bytes, or a string: a decimal number (`1073741824`, `1.5`)
///   with an optional unit `k`, `m`, `g`, `t`, each optionally followed by `b` or `ib`, or `b`
///   alone, case-insensitive, one optional space before the unit. **Every unit is a power of 1024**
///   (`512MB` is 512 MiB, as Docker's CLI reads it); fractions round down to whole bytes.
///   6 MiB (Docker's minimum) ..= 1 TiB.
/// - `cpu`: cores as a number or a numeric string (`0.5`, `"2"`), 0.01..=64.
/// - `pids`: an integer (or a string of digits), 1..=32768.
pub fn parse_limits(field: &str, value: Option<&Value>) -> Result<Limits, SpecError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Limits::default()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(SpecError::new(
                field,
                format!(
                    "expected an object {{\"memory\"?, \"cpu\"?, \"pids\"?}}; got {}",
                    kind(other)
                ),
            ));
        }
    };
    let mut limits = Limits::default();
    for (key, value) in map {
        let path = key_path(field, key);
        if value.is_null() && matches!(key.as_str(), "memory" | "cpu" | "pids") {
            continue;
        }
        match key.as_str() {
            "memory" => limits.memory_bytes = parse_memory(&path, value)?,
            "cpu" => limits.nano_cpus = parse_cpu(&path, value)?,
            "pids" => limits.pids = parse_pids(&path, value)?,
            _ => {
                return Err(SpecError::new(
                    path,
                    "unknown key; resource limits are memory, cpu and pids",
                ));
            }
        }
    }
    Ok(limits)
}

fn parse_memory(path: &str, value: &Value) -> Result<u64, SpecError> {
    let bytes = match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            SpecError::new(
                path,
                format!("{n} is not a whole, positive number of bytes; {MEMORY_RULE}"),
            )
        })?,
        Value::String(s) => parse_size(s).ok_or_else(|| {
            SpecError::new(path, format!("{} is not a size; {MEMORY_RULE}", quoted(s)))
        })?,
        other => {
            return Err(SpecError::new(
                path,
                format!("got {}; {MEMORY_RULE}", kind(other)),
            ));
        }
    };
    if bytes < MIN_MEMORY_BYTES {
        return Err(SpecError::new(
            path,
            format!("{bytes} bytes is below Docker's minimum of 6 MiB (6291456 bytes)"),
        ));
    }
    if bytes > MAX_MEMORY_BYTES {
        return Err(SpecError::new(
            path,
            format!("{bytes} bytes is above the maximum of 1 TiB (1099511627776 bytes)"),
        ));
    }
    Ok(bytes)
}

/// `"1.5g"` -> 1610612736. `None` when it does not parse (or overflows u64); the caller checks the
/// range.
fn parse_size(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return None,
    };
    let (whole, fraction) = split_decimal(number)?;
    // u128 so that neither product overflows before the range check.
    let whole: u128 = whole.parse::<u128>().ok()?;
    let mut bytes = whole.checked_mul(u128::from(multiplier))?;
    if !fraction.is_empty() {
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let digits: u128 = fraction.parse().ok()?;
        bytes = bytes.checked_add(digits.checked_mul(u128::from(multiplier))? / scale)?;
    }
    u64::try_from(bytes).ok()
}

/// `"12.5"` -> `("12", "5")`; digits required on both sides of a '.'; at most 9 decimals and 20
/// whole digits (more cannot be a sensible limit and would overflow).
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => {
            if f.is_empty() || f.len() > 9 {
                return None;
            }
            (w, f)
        }
        None => (s, ""),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    (!whole.is_empty() && whole.len() <= 20 && digits(whole) && digits(fraction))
        .then_some((whole, fraction))
}

const CPU_RULE: &str = "give cores as a number or numeric string, 0.01 to 64 (e.g. 0.5, \"2\")";

fn parse_cpu(path: &str, value: &Value) -> Result<i64, SpecError> {
    let cores = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => split_decimal(s).and_then(|_| s.parse::<f64>().ok()),
        _ => None,
    };
    let shown = match value {
        Value::String(s) => quoted(s),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_owned(),
    };
    match cores {
        Some(c) if c.is_finite() && (0.01..=64.0).contains(&c) => {
            // At most 64e9: fits an i64, and rounding keeps "0.3" at 300_000_000.
            Ok((c * 1e9).round() as i64)
        }
        Some(_) => Err(SpecError::new(
            path,
            format!("{shown} is out of range; {CPU_RULE}"),
        )),
        None => Err(SpecError::new(
            path,
            format!("{shown} is not a number of cores; {CPU_RULE}"),
        )),
    }
}

const PIDS_RULE: &str = "give an integer 1..=32768";

fn parse_pids(path: &str, value: &Value) -> Result<i64, SpecError> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<i64>().ok()
        }
        _ => None,
    };
    match n {
        Some(n) if (1..=32768).contains(&n) => Ok(n),
        Some(n) => Err(SpecError::new(
            path,
            format!("{n} is out of range; {PIDS_RULE}"),
        )),
        None => Err(SpecError::new(path, format!("not an integer; {PIDS_RULE}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Capabilities, transport, endpoint, readiness

/// The Linux capability names (capabilities(7), through CAP_CHECKPOINT_RESTORE, Linux 5.9),
/// without the `CAP_` prefix.
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Parse `capAdd`: upper-case Linux capability names, with or without `CAP_`. The result has no
/// prefix, no duplicates, and is sorted. `ALL` is refused: every capability must be named.
pub fn parse_cap_add(field: &str, caps: Option<&[String]>) -> Result<Vec<String>, SpecError> {
    let mut out = BTreeSet::new();
    for (i, cap) in caps.unwrap_or_default().iter().enumerate() {
        let path = index_path(field, i);
        let upper = cap.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL" {
            return Err(SpecError::new(
                path,
                "ALL is refused; name each capability the server needs",
            ));
        }
        if !LINUX_CAPABILITIES.contains(&bare) {
            return Err(SpecError::new(
                path,
                format!(
                    "{} is not a Linux capability name (see capabilities(7)), e.g. \
                     NET_BIND_SERVICE",
                    quoted(cap)
                ),
            ));
        }
        if *cap != upper {
            return Err(SpecError::new(
                path,
                format!("capability names are upper-case: write {bare}"),
            ));
        }
        out.insert(bare.to_owned());
    }
    Ok(out.into_iter().collect())
}

/// `mcpTransportType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Http,
    Sse,
    Stdio,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Sse => "sse",
            Transport::Stdio => "stdio",
        }
    }
}

/// `mcpTransportType`: `http` (default), `sse` or `stdio`, lower-case.
pub fn parse_transport(field: &str, value: Option<&str>) -> Result<Transport, SpecError> {
    match value {
        None | Some("http") => Ok(Transport::Http),
        Some("sse") => Ok(Transport::Sse),
        Some("stdio") => Ok(Transport::Stdio),
        Some(other) => Err(SpecError::new(
            field,
            format!("{} is not a transport: http, sse or stdio", quoted(other)),
        )),
    }
}

/// `mcpEndpointPath`: default `/mcp`; starts with `/`, has no whitespace or control characters,
/// at most 1024 bytes (it becomes a label and part of a URL).
pub fn parse_endpoint_path(field: &str, value: Option<&str>) -> Result<String, SpecError> {
    let path = value.unwrap_or("/mcp");
    if !path.starts_with('/') {
        return Err(SpecError::new(
            field,
            format!("{} must start with '/', like \"/mcp\"", quoted(path)),
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    if path.len() > 1024 {
        return Err(SpecError::new(field, "is longer than 1024 bytes"));
    }
    Ok(path.to_owned())
}

/// `readinessTimeoutMs`: 1000..=600000, default 60000.
pub fn parse_readiness_timeout(field: &str, value: Option<u64>) -> Result<Duration, SpecError> {
    match value {
        None => Ok(Duration::from_secs(60)),
        Some(ms) if (1000..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(SpecError::new(
            field,
            format!("{ms} is out of range: 1000..=600000 milliseconds"),
        )),
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
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The error of `r`, asserting that it names `field`.
    #[track_caller]
    fn fails<T: fmt::Debug>(r: Result<T, SpecError>, field: &str) -> String {
        match r {
            Ok(v) => panic!("expected an error at `{field}`, got {v:?}"),
            Err(e) => {
                assert_eq!(e.field, field, "{e}");
                e.message
            }
        }
    }

    // --- images ---------------------------------------------------------------------------

    fn image(s: &str) -> ImageRef {
        parse_image("dockerImageUrl", s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn image_with_registry_and_tag() {
        let i = image("ghcr.io/org/x:1.2.0");
        assert_eq!(i.registry.as_deref(), Some("ghcr.io"));
        assert_eq!(i.repository, "org/x");
        assert_eq!(i.tag.as_deref(), Some("1.2.0"));
        assert_eq!(i.digest, None);
        assert_eq!(i.pull_name(), "ghcr.io/org/x");
        assert_eq!(i.pull_tag(), "1.2.0");
        assert_eq!(i.reference(), "ghcr.io/org/x:1.2.0");
        assert_eq!(i.canonical(), "ghcr.io/org/x:1.2.0");
        assert_eq!(i.to_string(), "ghcr.io/org/x:1.2.0");
    }

    #[test]
    fn image_on_docker_hub() {
        let i = image("org/x");
        assert_eq!(
            (i.registry.as_deref(), i.repository.as_str()),
            (None, "org/x")
        );
        assert_eq!(i.pull_name(), "org/x");
        assert_eq!(i.pull_tag(), "latest");
        assert_eq!(i.reference(), "org/x:latest");
        assert_eq!(i.canonical(), "docker.io/org/x:latest");

        let i = image("x");
        assert_eq!((i.registry.as_deref(), i.repository.as_str()), (None, "x"));
        assert_eq!(i.tag, None);
        assert_eq!(i.reference(), "x:latest");
        assert_eq!(i.canonical(), "docker.io/library/x:latest");
        assert_eq!(
            image("docker.io/library/x:latest").canonical(),
            i.canonical()
        );
        assert_eq!(image("index.docker.io/x").canonical(), i.canonical());
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let i = image("localhost:5000/x:tag");
        assert_eq!(i.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(i.repository, "x");
        assert_eq!(i.tag.as_deref(), Some("tag"));
        assert_eq!(i.pull_name(), "localhost:5000/x");

        let i = image("localhost:5000/x");
        assert_eq!(i.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(i.tag, None);
        assert_eq!(i.reference(), "localhost:5000/x:latest");

        let i = image("localhost/x");
        assert_eq!(i.registry.as_deref(), Some("localhost"));

        let i = image("[::1]:5000/team/x:v1");
        assert_eq!(i.registry.as_deref(), Some("[::1]:5000"));
        assert_eq!(i.repository, "team/x");
        assert_eq!(i.tag.as_deref(), Some("v1"));

        let i = image("registry.example.com:443/a/b/c");
        assert_eq!(i.registry.as_deref(), Some("registry.example.com:443"));
        assert_eq!(i.repository, "a/b/c");
    }

    #[test]
    fn image_with_digest() {
        let i = image(&format!("x@{DIGEST}"));
        assert_eq!(i.tag, None);
        assert_eq!(i.digest.as_deref(), Some(DIGEST));
        assert_eq!(i.pull_name(), "x");
        assert_eq!(i.pull_tag(), DIGEST);
        assert_eq!(i.reference(), format!("x@{DIGEST}"));
        assert_eq!(i.canonical(), format!("docker.io/library/x@{DIGEST}"));

        let i = image(&format!("ghcr.io/org/x:1.0@{DIGEST}"));
        assert_eq!(i.tag.as_deref(), Some("1.0"));
        assert_eq!(i.digest.as_deref(), Some(DIGEST));
        assert_eq!(i.pull_tag(), DIGEST, "the digest pins the pull");
        assert_eq!(i.reference(), format!("ghcr.io/org/x@{DIGEST}"));
        assert_eq!(i.to_string(), format!("ghcr.io/org/x:1.0@{DIGEST}"));
        assert_eq!(i.canonical(), format!("ghcr.io/org/x:1.0@{DIGEST}"));

        let sha512 = format!("x@sha512:{}", "ab".repeat(64));
        assert!(image(&sha512).digest.is_some());
    }

    #[test]
    fn image_path_components_follow_docker() {
        let i = image("a/b__c/d-e--f.g_h:V1_x.y-z");
        assert_eq!(i.repository, "a/b__c/d-e--f.g_h");
        assert_eq!(i.tag.as_deref(), Some("V1_x.y-z"));
        assert!(parse_image("f", &format!("x:{}", "t".repeat(128))).is_ok());
    }

    #[test]
    fn bad_images_are_refused_naming_the_field() {
        let field = "servers[2].dockerImageUrl";
        let bad = [
            String::new(),
            " ".into(),
            " x".into(),
            "x ".into(),
            "x :1".into(),
            "x\n".into(),
            "ghcr.io/org/x\t".into(),
            "https://ghcr.io/org/x".into(),
            "X".into(),
            "Org/x".into(),
            "ghcr.io/Org/x:1".into(),
            "x@sha256:0123".into(),
            format!("x@sha256:{}", "A".repeat(64)),
            format!("x@sha256:{}", "g".repeat(64)),
            format!("x@md5:{}", "a".repeat(32)),
            "x@".into(),
            format!("x@{DIGEST}@{DIGEST}"),
            format!("@{DIGEST}"),
            "x:".into(),
            ":tag".into(),
            "x:-bad".into(),
            "x:.bad".into(),
            "x:a/b".into(),
            format!("x:{}", "t".repeat(129)),
            "ghcr.io:abc/x".into(),
            "ghcr.io:0/x".into(),
            "ghcr.io:70000/x".into(),
            "ghcr..io/x".into(),
            "-ghcr.io/x".into(),
            "[::1/x".into(),
            "[zz]:5000/x".into(),
            "-x".into(),
            "x-".into(),
            "x..y".into(),
            "x___y".into(),
            "a//b".into(),
            "x/".into(),
            "/x".into(),
            "ghcr.io/".into(),
            "ghcr.io/x/".into(),
            "ünïcode".into(),
            format!("{}/x", "a".repeat(300)),
        ];
        for b in bad {
            let r = parse_image(field, &b);
            assert!(r.is_err(), "{b:?} was accepted: {r:?}");
            fails(r, field);
        }
    }

    #[test]
    fn image_errors_say_what_is_wrong() {
        let m = fails(parse_image("f", "ghcr.io/Org/x"), "f");
        assert!(m.contains("upper-case"), "{m}");
        let m = fails(parse_image("f", "x@sha256:abc"), "f");
        assert!(m.contains("64 lower-case hex"), "{m}");
        let m = fails(parse_image("f", ""), "f");
        assert!(m.contains("ghcr.io/org/name:1.2.0"), "{m}");
        // A URL may carry credentials: it is described, not echoed.
        let m = fails(parse_image("f", "https://user:tok3n@ghcr.io/x"), "f");
        assert!(m.contains("URL") && !m.contains("tok3n"), "{m}");
    }

    // --- ports ----------------------------------------------------------------------------

    fn ports(v: Value) -> Vec<PortSpec> {
        parse_ports("portBindings", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn port(container_port: u16, protocol: Protocol, ip: &str, host: Option<u16>) -> PortSpec {
        PortSpec {
            container_port,
            protocol,
            host_ip: ip.parse().unwrap(),
            host_port: host,
        }
    }

    use Protocol::{Tcp, Udp};

    #[test]
    fn docker_port_bindings() {
        assert_eq!(
            ports(json!({"8080/tcp": [{"HostPort": "8080"}]})),
            [port(8080, Tcp, "127.0.0.1", Some(8080))]
        );
        assert_eq!(
            ports(json!({"8080/tcp": [
                {"HostPort": "8080", "HostIp": "0.0.0.0"},
                {"HostPort": "", "HostIp": "::1"},
                {},
                {"HostPort": null, "HostIp": ""},
                {"HostPort": "0", "HostIp": null},
                {"HostPort": 9090},
            ]})),
            [
                port(8080, Tcp, "0.0.0.0", Some(8080)),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", Some(9090)),
                port(8080, Tcp, "::1", None),
            ]
        );
        assert_eq!(
            ports(json!({"53/udp": [{"HostPort": "5353", "HostIp": "10.0.0.2"}]})),
            [port(53, Udp, "10.0.0.2", Some(5353))]
        );
    }

    #[test]
    fn simple_port_maps() {
        assert_eq!(
            ports(json!({"8080": 8080})),
            [port(8080, Tcp, "127.0.0.1", Some(8080))]
        );
        assert_eq!(
            ports(json!({"8080/tcp": "8081"})),
            [port(8080, Tcp, "127.0.0.1", Some(8081))]
        );
        assert_eq!(
            ports(json!({"8080/TCP": 1, "53/udp": "65535"})),
            [
                port(53, Udp, "127.0.0.1", Some(65535)),
                port(8080, Tcp, "127.0.0.1", Some(1)),
            ]
        );
        for picked in [json!(null), json!(0), json!(""), json!("0")] {
            assert_eq!(
                ports(json!({"8080": picked})),
                [port(8080, Tcp, "127.0.0.1", None)],
                "{picked}"
            );
        }
        // Mixed forms in one map; output sorted.
        assert_eq!(
            ports(json!({"9000": 9000, "8000/udp": [{"HostPort": "8000"}], "1": null})),
            [
                port(1, Tcp, "127.0.0.1", None),
                port(8000, Udp, "127.0.0.1", Some(8000)),
                port(9000, Tcp, "127.0.0.1", Some(9000)),
            ]
        );
    }

    #[test]
    fn no_ports() {
        assert_eq!(parse_ports("p", None), Ok(vec![]));
        assert_eq!(parse_ports("p", Some(&Value::Null)), Ok(vec![]));
        assert_eq!(ports(json!({})), vec![]);
    }

    #[test]
    fn ports_that_do_not_clash() {
        // Another protocol, another specific address, the two unspecified addresses (Docker's
        // own default), and any number of agent-picked ports.
        let p = ports(json!({
            "80/tcp": [{"HostPort": "8080", "HostIp": "0.0.0.0"}, {"HostPort": "8080", "HostIp": "::"}],
            "80/udp": [{"HostPort": "8080", "HostIp": "0.0.0.0"}],
            "81": [{"HostPort": "9000", "HostIp": "127.0.0.1"}, {"HostPort": "9000", "HostIp": "10.1.1.1"}],
            "82": null,
            "83": 0,
        }));
        assert_eq!(p.len(), 7);
    }

    #[test]
    fn bad_ports_are_refused_naming_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([8080]), "portBindings"),
            (json!("8080:8080"), "portBindings"),
            (json!(8080), "portBindings"),
            (json!(true), "portBindings"),
            (json!({"0": 80}), "portBindings.0"),
            (json!({"65536": 80}), "portBindings.65536"),
            (json!({"abc": 80}), "portBindings.abc"),
            (json!({"": 80}), "portBindings."),
            (json!({"-1": 80}), "portBindings.-1"),
            (json!({"80 ": 80}), "portBindings.80 "),
            (json!({"8080/sctp": 80}), "portBindings.8080/sctp"),
            (json!({"8080/": 80}), "portBindings.8080/"),
            (json!({"/tcp": 80}), "portBindings./tcp"),
            (json!({"8080-8090/tcp": 80}), "portBindings.8080-8090/tcp"),
            (json!({"80": 65536}), "portBindings.80"),
            (json!({"80": -1}), "portBindings.80"),
            (json!({"80": 1.5}), "portBindings.80"),
            (json!({"80": "abc"}), "portBindings.80"),
            (json!({"80": " 80"}), "portBindings.80"),
            (json!({"80": "80a"}), "portBindings.80"),
            (json!({"80": "+80"}), "portBindings.80"),
            (json!({"80": "8000-8010"}), "portBindings.80"),
            (json!({"80": "99999"}), "portBindings.80"),
            (json!({"80": true}), "portBindings.80"),
            (json!({"80": {"HostPort": "80"}}), "portBindings.80"),
            (json!({"80": []}), "portBindings.80"),
            (json!({"80": [null]}), "portBindings.80[0]"),
            (json!({"80": [{}, 8080]}), "portBindings.80[1]"),
            (
                json!({"80": [{"HostPort": "80", "hostport": "81"}]}),
                "portBindings.80[0].hostport",
            ),
            (
                json!({"80": [{"HostPort": "x"}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostPort": "70000"}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostPort": false}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostIp": "localhost"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": "[::1]"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": " 127.0.0.1"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": 127}]}),
                "portBindings.80[0].HostIp",
            ),
        ];
        for (v, field) in cases {
            fails(parse_ports("portBindings", Some(&v)), field);
        }
    }

    #[test]
    fn port_errors_say_what_is_accepted() {
        let m = fails(parse_ports("p", Some(&json!({"80/sctp": 1}))), "p.80/sctp");
        assert!(m.contains("tcp or udp"), "{m}");
        let m = fails(parse_ports("p", Some(&json!({"80": "abc"}))), "p.80");
        assert!(m.contains("1..=65535"), "{m}");
        let m = fails(parse_ports("p", Some(&json!(["80:80"]))), "p");
        assert!(m.contains("HostPort") && m.contains("a list"), "{m}");
    }

    #[test]
    fn duplicate_host_ports_are_refused() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"8080": 9000, "8081": 9000}), "p.8081"),
            (json!({"8080": 9000, "8081/tcp": "9000"}), "p.8081/tcp"),
            (
                json!({"8080": [{"HostPort": "9000"}, {"HostPort": "9000"}]}),
                "p.8080[1]",
            ),
            (
                json!({"53/udp": [{"HostPort": "53", "HostIp": "::1"}], "54/udp": [{"HostPort": "53", "HostIp": "::1"}]}),
                "p.54/udp[0]",
            ),
            // The unspecified address overlaps every address of its family, either way round.
            (
                json!({"80": [{"HostPort": "80", "HostIp": "0.0.0.0"}, {"HostPort": "80"}]}),
                "p.80[1]",
            ),
            (
                json!({"80": [{"HostPort": "80", "HostIp": "10.0.0.1"}, {"HostPort": "80", "HostIp": "0.0.0.0"}]}),
                "p.80[1]",
            ),
            (
                json!({"80": [{"HostPort": "80", "HostIp": "::"}, {"HostPort": "80", "HostIp": "::1"}]}),
                "p.80[1]",
            ),
        ];
        for (v, field) in cases {
            let m = fails(parse_ports("p", Some(&v)), field);
            assert!(m.contains("also bound by `p."), "{m}");
        }
    }

    // --- environment ----------------------------------------------------------------------

    fn env(v: Value) -> Vec<(String, String)> {
        parse_env("environmentVariables", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_as_an_object() {
        let mut got = env(json!({
            "API_KEY": "secret",
            "PORT": 8080,
            "RATIO": 0.5,
            "DEBUG": true,
            "EMPTY": "",
            "_x1": "a=b",
        }));
        // The object's order is serde_json::Map's: compare as a set.
        got.sort();
        assert_eq!(
            got,
            pairs(&[
                ("API_KEY", "secret"),
                ("DEBUG", "true"),
                ("EMPTY", ""),
                ("PORT", "8080"),
                ("RATIO", "0.5"),
                ("_x1", "a=b"),
            ])
        );
    }

    #[test]
    fn env_as_a_list_keeps_its_order() {
        assert_eq!(
            env(json!(["ZED=1", "A=x=y", "EMPTY=", "_=ü"])),
            pairs(&[("ZED", "1"), ("A", "x=y"), ("EMPTY", ""), ("_", "ü")])
        );
    }

    #[test]
    fn no_env() {
        assert_eq!(parse_env("e", None), Ok(vec![]));
        assert_eq!(parse_env("e", Some(&Value::Null)), Ok(vec![]));
        assert_eq!(env(json!({})), vec![]);
        assert_eq!(env(json!([])), vec![]);
    }

    #[test]
    fn bad_env_is_refused_naming_the_field() {
        let f = "servers[0].environmentVariables";
        let cases: Vec<(Value, String)> = vec![
            (json!("A=1"), f.into()),
            (json!(1), f.into()),
            (json!(true), f.into()),
            (json!({"1A": "x"}), f.into()),
            (json!({"A-B": "x"}), f.into()),
            (json!({"": "x"}), f.into()),
            (json!({"A B": "x"}), f.into()),
            (json!({"A\u{0}": "x"}), f.into()),
            (json!({"A": null}), format!("{f}.A")),
            (json!({"A": ["x"]}), format!("{f}.A")),
            (json!({"A": {"x": "y"}}), format!("{f}.A")),
            (json!({"A": "x\u{0}y"}), format!("{f}.A")),
            (json!(["A=1", 2]), format!("{f}[1]")),
            (json!([null]), format!("{f}[0]")),
            (json!([["A=1"]]), format!("{f}[0]")),
            (json!([{"A": "1"}]), format!("{f}[0]")),
            (json!(["A"]), format!("{f}[0]")),
            (json!(["=x"]), format!("{f}[0]")),
            (json!(["1A=x"]), format!("{f}[0]")),
            (json!(["A B=x"]), format!("{f}[0]")),
            (json!(["A=x\u{0}"]), format!("{f}[0]")),
            (json!(["A=1", "B=2", "A=3"]), format!("{f}[2]")),
        ];
        for (v, field) in cases {
            fails(parse_env(f, Some(&v)), &field);
        }
        let m = fails(parse_env("e", Some(&json!(["A=1", "A=2"]))), "e[1]");
        assert!(m.contains("duplicate key A") && m.contains("`e[0]`"), "{m}");
        let m = fails(parse_env("e", Some(&json!({"1A": "x"}))), "e");
        assert!(m.contains("[A-Za-z_][A-Za-z0-9_]*"), "{m}");
    }

    /// Every bad shape a secret can arrive in: the message (and the error's Debug) never
    /// contains it, nor does it contain it as an invalid key.
    #[test]
    fn env_errors_never_contain_a_value() {
        const S: &str = "s3cr3t-value";
        const T: &str = "s3cr3tvalue"; // also a valid key, so it might be echoed as one
        let cases: Vec<Value> = vec![
            json!(S),
            json!(format!("KEY={S}")),
            json!({"KEY": {"nested": S}}),
            json!({"KEY": [S]}),
            json!({"KEY": format!("{S}\u{0}")}),
            json!({"KEY": format!("{T}\u{0}")}),
            json!({S: "x"}),
            json!({format!("{S}=x"): "y"}),
            json!({format!("K {T}"): "y"}),
            json!([S]),
            json!([T]),
            json!([format!("{S}=x")]),
            json!([format!("BAD-KEY={S}")]),
            json!([format!("KEY={S}\u{0}")]),
            json!([format!("KEY={T}\u{0}")]),
            json!([format!("1KEY={T}")]),
            json!([format!(" KEY={T}")]),
            json!([format!("KEY={S}"), format!("KEY={S}")]),
            json!([format!("KEY={T}"), format!("KEY={T}")]),
            json!([{"KEY": S}]),
            json!([[S]]),
            json!([123456789]),
            json!({"KEY": null, "OTHER": S}),
        ];
        for v in cases {
            let e = match parse_env("environmentVariables", Some(&v)) {
                Ok(_) => panic!("accepted {v}"),
                Err(e) => e,
            };
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !shown.contains(S) && !shown.contains(T) && !shown.contains("123456789"),
                    "leaks a value: {shown}"
                );
            }
        }
    }

    // --- limits ---------------------------------------------------------------------------

    fn limits(v: Value) -> Limits {
        parse_limits("resourceLimits", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn memory(v: Value) -> u64 {
        limits(json!({ "memory": v })).memory_bytes
    }

    #[test]
    fn limit_defaults() {
        let d = Limits {
            memory_bytes: 512 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 256,
        };
        assert_eq!(Limits::default(), d);
        assert_eq!(parse_limits("l", None), Ok(d));
        assert_eq!(parse_limits("l", Some(&Value::Null)), Ok(d));
        assert_eq!(limits(json!({})), d);
        assert_eq!(
            limits(json!({"memory": null, "cpu": null, "pids": null})),
            d
        );
    }

    #[test]
    fn memory_forms() {
        let cases: Vec<(Value, u64)> = vec![
            (json!(536870912), 512 * MIB),
            (json!("1073741824"), GIB),
            (json!("512m"), 512 * MIB),
            (json!("512M"), 512 * MIB),
            (json!("512mb"), 512 * MIB),
            (json!("512MB"), 512 * MIB),
            (json!("512MiB"), 512 * MIB),
            (json!("512 MiB"), 512 * MIB),
            (json!("1g"), GIB),
            (json!("1G"), GIB),
            (json!("1gib"), GIB),
            (json!("1.5g"), GIB + GIB / 2),
            (json!("0.5g"), 512 * MIB),
            (json!("6144k"), 6 * MIB),
            (json!("6291456b"), 6 * MIB),
            (json!(6291456), MIN_MEMORY_BYTES),
            (json!("1t"), TIB),
            (json!("1TiB"), MAX_MEMORY_BYTES),
        ];
        for (v, want) in cases {
            assert_eq!(memory(v.clone()), want, "{v}");
        }
        assert_eq!(parse_size("256k"), Some(256 * KIB));
        assert_eq!(parse_size("0.1k"), Some(102), "fractions round down");
        assert_eq!(parse_size("1.000000001g"), Some(GIB + 1));
    }

    #[test]
    fn cpu_and_pids_forms() {
        assert_eq!(limits(json!({"cpu": 0.5})).nano_cpus, 500_000_000);
        assert_eq!(limits(json!({"cpu": "0.5"})).nano_cpus, 500_000_000);
        assert_eq!(limits(json!({"cpu": "0.3"})).nano_cpus, 300_000_000);
        assert_eq!(limits(json!({"cpu": 2})).nano_cpus, 2_000_000_000);
        assert_eq!(limits(json!({"cpu": "64"})).nano_cpus, 64_000_000_000);
        assert_eq!(limits(json!({"cpu": 0.01})).nano_cpus, 10_000_000);
        assert_eq!(limits(json!({"pids": 1})).pids, 1);
        assert_eq!(limits(json!({"pids": 32768})).pids, 32768);
        assert_eq!(limits(json!({"pids": "100"})).pids, 100);
        assert_eq!(
            limits(json!({"memory": "1g", "cpu": "0.5", "pids": 64})),
            Limits {
                memory_bytes: GIB,
                nano_cpus: 500_000_000,
                pids: 64
            }
        );
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        let f = "servers[1].resourceLimits";
        let mem = format!("{f}.memory");
        let cpu = format!("{f}.cpu");
        let pids = format!("{f}.pids");
        let cases: Vec<(Value, &str)> = vec![
            (json!("512m"), f),
            (json!([1]), f),
            (json!(1), f),
            (
                json!({"memory": "512m", "swap": 1}),
                "servers[1].resourceLimits.swap",
            ),
            (
                json!({"Memory": "512m"}),
                "servers[1].resourceLimits.Memory",
            ),
            (json!({"cpus": 1}), "servers[1].resourceLimits.cpus"),
            (json!({"memory": ""}), &mem),
            (json!({"memory": "g"}), &mem),
            (json!({"memory": "512x"}), &mem),
            (json!({"memory": "512 x"}), &mem),
            (json!({"memory": "1.5.5g"}), &mem),
            (json!({"memory": ".5g"}), &mem),
            (json!({"memory": "5.g"}), &mem),
            (json!({"memory": "-1g"}), &mem),
            (json!({"memory": "+1g"}), &mem),
            (json!({"memory": "1e9"}), &mem),
            (json!({"memory": "0x1000000"}), &mem),
            (json!({"memory": " 512m"}), &mem),
            (json!({"memory": "512m "}), &mem),
            (json!({"memory": "512  m"}), &mem),
            (json!({"memory": "512mibb"}), &mem),
            (json!({"memory": "1.0000000001g"}), &mem),
            (json!({"memory": "99999999999999999999999g"}), &mem),
            (json!({"memory": "20000000000t"}), &mem),
            (json!({"memory": 536870912.5}), &mem),
            (json!({"memory": -536870912}), &mem),
            (json!({"memory": true}), &mem),
            (json!({"memory": [512]}), &mem),
            (json!({"memory": "256k"}), &mem),
            (json!({"memory": 6291455}), &mem),
            (json!({"memory": 0}), &mem),
            (json!({"memory": "2t"}), &mem),
            (json!({"memory": 1099511627777u64}), &mem),
            (json!({"cpu": 0}), &cpu),
            (json!({"cpu": 0.001}), &cpu),
            (json!({"cpu": 64.5}), &cpu),
            (json!({"cpu": -1}), &cpu),
            (json!({"cpu": "abc"}), &cpu),
            (json!({"cpu": ""}), &cpu),
            (json!({"cpu": "NaN"}), &cpu),
            (json!({"cpu": "inf"}), &cpu),
            (json!({"cpu": "1e1"}), &cpu),
            (json!({"cpu": "-1"}), &cpu),
            (json!({"cpu": " 1"}), &cpu),
            (json!({"cpu": "500m"}), &cpu),
            (json!({"cpu": true}), &cpu),
            (json!({"cpu": [1]}), &cpu),
            (json!({"pids": 0}), &pids),
            (json!({"pids": 32769}), &pids),
            (json!({"pids": -1}), &pids),
            (json!({"pids": 1.5}), &pids),
            (json!({"pids": "abc"}), &pids),
            (json!({"pids": "1000000"}), &pids),
            (json!({"pids": true}), &pids),
        ];
        for (v, field) in cases {
            fails(parse_limits(f, Some(&v)), field);
        }
    }

    #[test]
    fn limit_errors_say_what_is_accepted() {
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "256k"}))),
            "l.memory",
        );
        assert!(m.contains("6 MiB"), "{m}");
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "2t"}))),
            "l.memory",
        );
        assert!(m.contains("1 TiB"), "{m}");
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "lots"}))),
            "l.memory",
        );
        assert!(
            m.contains("powers of 1024") && m.contains("\"lots\""),
            "{m}"
        );
        let m = fails(parse_limits("l", Some(&json!({"cpu": 65}))), "l.cpu");
        assert!(m.contains("0.01 to 64"), "{m}");
        let m = fails(parse_limits("l", Some(&json!({"pids": 0}))), "l.pids");
        assert!(m.contains("1..=32768"), "{m}");
        let m = fails(parse_limits("l", Some(&json!({"swap": 1}))), "l.swap");
        assert!(m.contains("memory, cpu and pids"), "{m}");
    }

    // --- capabilities, transport, endpoint, readiness, names ------------------------------

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capabilities() {
        assert_eq!(parse_cap_add("c", None), Ok(vec![]));
        assert_eq!(
            parse_cap_add(
                "c",
                Some(&strings(&[
                    "NET_BIND_SERVICE",
                    "CAP_NET_ADMIN",
                    "NET_ADMIN"
                ]))
            ),
            Ok(strings(&["NET_ADMIN", "NET_BIND_SERVICE"]))
        );
        for cap in LINUX_CAPABILITIES {
            assert_eq!(
                parse_cap_add("c", Some(&[format!("CAP_{cap}")])),
                Ok(vec![cap.to_owned()])
            );
        }
        let f = "servers[0].capAdd";
        let m = fails(
            parse_cap_add(f, Some(&strings(&["net_admin"]))),
            "servers[0].capAdd[0]",
        );
        assert!(m.contains("upper-case") && m.contains("NET_ADMIN"), "{m}");
        for bad in [
            "ALL",
            "CAP_ALL",
            "all",
            "FOO",
            "",
            "CAP_",
            "NET ADMIN",
            "cap_NET_ADMIN",
        ] {
            fails(
                parse_cap_add(f, Some(&strings(&["CHOWN", bad]))),
                "servers[0].capAdd[1]",
            );
        }
    }

    #[test]
    fn transport_endpoint_and_readiness() {
        let f = "t";
        assert_eq!(parse_transport(f, None), Ok(Transport::Http));
        assert_eq!(parse_transport(f, Some("http")), Ok(Transport::Http));
        assert_eq!(parse_transport(f, Some("sse")), Ok(Transport::Sse));
        assert_eq!(parse_transport(f, Some("stdio")), Ok(Transport::Stdio));
        for bad in ["HTTP", "ws", "", "http "] {
            fails(parse_transport(f, Some(bad)), f);
        }

        assert_eq!(parse_endpoint_path(f, None).as_deref(), Ok("/mcp"));
        assert_eq!(parse_endpoint_path(f, Some("/")).as_deref(), Ok("/"));
        assert_eq!(
            parse_endpoint_path(f, Some("/v1/mcp")).as_deref(),
            Ok("/v1/mcp")
        );
        let long = format!("/{}", "a".repeat(1024));
        for bad in [
            "mcp",
            "",
            " /mcp",
            "/m cp",
            "/mcp\n",
            "/mcp\t",
            long.as_str(),
        ] {
            fails(parse_endpoint_path(f, Some(bad)), f);
        }

        assert_eq!(
            parse_readiness_timeout(f, None),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            parse_readiness_timeout(f, Some(1000)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            parse_readiness_timeout(f, Some(600_000)),
            Ok(Duration::from_secs(600))
        );
        for bad in [0, 999, 600_001] {
            fails(parse_readiness_timeout(f, Some(bad)), f);
        }
    }

    #[test]
    fn names() {
        let f = "servers[3].instanceNameOnToolbox";
        for ok in ["reasoning-server", "a", "0.x_y-z", &"a".repeat(63)] {
            assert_eq!(parse_instance_name(f, ok).as_deref(), Ok(ok));
        }
        let m = fails(parse_instance_name(f, "Reasoning"), f);
        assert!(m.contains("upper-case"), "{m}");
        for bad in ["", &"a".repeat(64), "-a", "_a", ".a", "a b", "a/b", "ä"] {
            fails(parse_instance_name(f, bad), f);
        }

        for ok in ["agent-123-mcp", "A.b_c", "0", &"a".repeat(64)] {
            assert_eq!(parse_group_id("groupId", ok).as_deref(), Ok(ok));
        }
        for bad in ["", "-a", ".a", &"a".repeat(65), "a b", "a/b", "a:b"] {
            fails(parse_group_id("groupId", bad), "groupId");
        }

        let id = "3f1c2a9e-0b7d-4c8e-9a61-5d2e7f4b8c10";
        assert_eq!(parse_account_tool_instance_id("a", id).as_deref(), Ok(id));
        for bad in ["", &"a".repeat(129), "a\nb"] {
            fails(parse_account_tool_instance_id("a", bad), "a");
        }

        assert_eq!(
            container_name("reasoning-server"),
            "dtma-mcp-reasoning-server"
        );
    }

    #[test]
    fn labels_share_the_prefix_and_differ() {
        let labels = [
            LABEL_MANAGED,
            LABEL_AGENT_ID,
            LABEL_GROUP_ID,
            LABEL_ACCOUNT_TOOL_INSTANCE_ID,
            LABEL_INSTANCE_NAME,
            LABEL_TRANSPORT,
            LABEL_ENDPOINT_PATH,
            LABEL_SPEC_HASH,
            LABEL_DEPLOY_ID,
            LABEL_HOST_PORTS,
        ];
        for l in labels {
            assert!(
                l.starts_with(LABEL_PREFIX) && l.len() > LABEL_PREFIX.len(),
                "{l}"
            );
        }
        assert_eq!(labels.iter().collect::<BTreeSet<_>>().len(), labels.len());
        assert_eq!(LABEL_MANAGED, "ai.agentopia.dtma.managed");
        assert_eq!(LABEL_SPEC_HASH, "ai.agentopia.dtma.spec_hash");
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
