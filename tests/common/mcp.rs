//! What the MCP tests share: unique names (tests share one daemon and run in parallel), a guard
//! that removes a group's containers however a test ends, and the agent's settings for a daemon
//! without bridge networking.

use super::docker::docker;
use super::fast_channel;

/// `<prefix>-<pid>-<random>`: a group id, instance name or agent id no parallel test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0xffffff)
    )
}

/// Removes every container of a group (by label), whatever the test's end.
pub struct GroupGuard(pub String);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=ai.agentopia.dtma.group_id={}", self.0),
        ]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}

/// An agent on 127.0.0.1:0 with its own id (its start-up clean-up touches only its own
/// containers), MCP servers on the host network (no bridge may exist here), and the channel
/// when `url` is given.
pub fn mcp_config(url: Option<String>) -> dtma::Config {
    let mut c = super::local_agent_config();
    c.channel = url.map(fast_channel);
    c.mcp_network = Some("host".into());
    c.agent_id = unique("agent");
    c
}
