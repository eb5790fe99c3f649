//! How the API shows an agent (schema `Agent` in openapi.json): one function for the local
//! engine's records and for the cluster directory, which stores this view.

use std::time::SystemTime;

use dtma_control_plane::AgentRecord;

/// One agent as the API shows it (schema `Agent` in openapi.json).
pub fn agent_view(r: &AgentRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "agent_id": r.agent_id,
        "state": if r.connected { "connected" } else { "disconnected" },
        "session_id": r.session_id,
        "agent_version": r.hello.agent_version,
        "boot_id": r.hello.boot_id,
        "capabilities": r.hello.capabilities,
        "connected_at": rfc3339(r.connected_at),
        "tool_statuses": r.status.as_ref().map(|s| s.tool_statuses.clone()).unwrap_or_default(),
    });
    let sandbox = r
        .status
        .as_ref()
        .and_then(|s| s.sandbox.clone())
        .or_else(|| r.hello.sandbox.clone());
    if let Some(obj) = v.as_object_mut() {
        if let Some(s) = sandbox {
            obj.insert(
                "sandbox".into(),
                serde_json::to_value(s).unwrap_or_default(),
            );
        }
        if let Some(t) = r.disconnected_at {
            obj.insert("disconnected_at".into(), rfc3339(t).into());
        }
        if let Some(t) = r.last_heartbeat {
            obj.insert("last_heartbeat_at".into(), rfc3339(t).into());
        }
    }
    v
}

/// RFC 3339 UTC.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
