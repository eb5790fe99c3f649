//! The desired state of a group (normalised from the wire body) and the names a deploy uses
//! while it runs.
//!
//! A deploy never creates a container under its final name: new containers start as
//! `<name>-dtma-new-<deploy>` and replaced ones are renamed `<name>-dtma-old-<deploy>`; only
//! when every server of the group is ready are the new ones renamed to their final names and the
//! old ones removed. So an agent (or a daemon) that dies mid-deploy leaves containers whose names
//! say what they are: `-dtma-new-` ones were never committed (removed), `-dtma-old-` ones are put
//! back under their final name unless that name is taken by a committed container.

use dtma_protocol::{McpGroup, McpTransport};

use crate::docker::spec::{self, ServerSpec, SpecError};
pub use crate::docker::spec::{is_aside, leftover, new_name, old_name};

/// A group's desired state.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub group_id: String,
    pub servers: Vec<ServerSpec>,
    pub shared_networking: bool,
    pub max_concurrent: usize,
}

impl GroupSpec {
    /// Check every field of the body; the first problem names its field.
    pub fn from_wire(g: &McpGroup) -> Result<GroupSpec, SpecError> {
        g.validate().map_err(|e| SpecError {
            field: e.field.clone(),
            message: e.problem.clone(),
        })?;
        let mut servers = Vec::with_capacity(g.servers.len());
        for (i, s) in g.servers.iter().enumerate() {
            let transport = s.mcp_transport_type.map(|t| match t {
                McpTransport::Http => "http",
                McpTransport::Sse => "sse",
                McpTransport::Stdio => "stdio",
            });
            let server = ServerSpec::from_input(
                &format!("servers[{i}]"),
                &spec::ServerInput {
                    account_tool_instance_id: &s.account_tool_instance_id,
                    docker_image_url: &s.docker_image_url,
                    instance_name_on_toolbox: &s.instance_name_on_toolbox,
                    mcp_endpoint_path: s.mcp_endpoint_path.as_deref(),
                    mcp_transport_type: transport,
                    port_bindings: s.port_bindings.as_ref(),
                    environment_variables: s.environment_variables.as_ref(),
                    resource_limits: s.resource_limits.as_ref(),
                    cap_add: s.cap_add.as_deref(),
                    readiness_timeout_ms: s.readiness_timeout_ms.map(u64::from),
                },
            )?;
            let probed = matches!(
                server.transport,
                spec::Transport::Http | spec::Transport::Sse
            );
            if probed
                && !server
                    .ports
                    .iter()
                    .any(|p| p.protocol == spec::Protocol::Tcp)
            {
                return Err(SpecError {
                    field: format!("servers[{i}].portBindings"),
                    message: "an http or sse server needs a TCP port: the agent checks its MCP \
                              endpoint through it"
                        .into(),
                });
            }
            servers.push(server);
        }
        Ok(GroupSpec {
            group_id: g.group_id.clone(),
            servers,
            shared_networking: g.shared_networking(),
            max_concurrent: g.max_concurrent_deployments().max(1) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_names_say_what_they_are() {
        let n = new_name("dtma-mcp-a", "d1");
        let o = old_name("dtma-mcp-a", "d1");
        assert!(is_aside(&n) && is_aside(&o) && !is_aside("dtma-mcp-a"));
        assert_eq!(leftover(&n), Some(("dtma-mcp-a", true)));
        assert_eq!(leftover(&o), Some(("dtma-mcp-a", false)));
        assert_eq!(leftover("dtma-mcp-a"), None);
    }
}
