//! Container and network names, the labels of managed containers, and the identifiers they
//! carry (group id, instance name, account tool instance id).

use super::{ServerSpec, SpecError, quoted};

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

/// A deploy's temporary names say what a container is: see `services::mcp::plan`.
const NEW_MARK: &str = "-dtma-new-";
const OLD_MARK: &str = "-dtma-old-";

/// The name a new container has until its deploy commits.
pub fn new_name(final_name: &str, deploy_id: &str) -> String {
    format!("{final_name}{NEW_MARK}{deploy_id}")
}

/// The name a replaced container has until its deploy commits or rolls back.
pub fn old_name(final_name: &str, deploy_id: &str) -> String {
    format!("{final_name}{OLD_MARK}{deploy_id}")
}

/// Whether `name` is a container set aside by a deploy (not a server in its own right).
pub fn is_aside(name: &str) -> bool {
    name.contains(NEW_MARK) || name.contains(OLD_MARK)
}

/// What a leftover of an interrupted deploy is: `(final name, is_new)`.
pub fn leftover(name: &str) -> Option<(&str, bool)> {
    if let Some(i) = name.find(NEW_MARK) {
        return Some((&name[..i], true));
    }
    name.find(OLD_MARK).map(|i| (&name[..i], false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::fails;
    use std::collections::BTreeSet;

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
}
