//! Who may connect as an agent: the [`TokenStore`] seam. The reference backend checks a fixed
//! list ([`StaticTokens`]); the gateway plugs in its configured store (a file today, a command
//! or HTTP hook later: the lookup is async and may fail, so a store that cannot answer makes
//! the agent retry instead of being refused).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that [`TokenStore`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a known token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentGrant {
    /// The only `hello.agent_id` this token may present; `None` lets it present any (the
    /// reference backend's shared tokens).
    pub agent_id: Option<String>,
}

/// The store could not answer (a hook unreachable, a file unreadable): not a verdict on the
/// token. The agent is answered 503 and dials again after its backoff.
#[derive(Debug, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct TokenStoreError(pub String);

/// Looks up agent bearer tokens.
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// `Ok(Some(grant))` for a known token, `Ok(None)` for an unknown one.
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>>;
}

/// A fixed list of tokens, each valid for any agent id.
pub struct StaticTokens(Vec<String>);

impl StaticTokens {
    pub fn new(tokens: Vec<String>) -> StaticTokens {
        StaticTokens(tokens)
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens themselves.
        write!(f, "StaticTokens({} tokens)", self.0.len())
    }
}

impl TokenStore for StaticTokens {
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>> {
        let known = self.0.iter().any(|t| t == token);
        Box::pin(std::future::ready(Ok(
            known.then_some(AgentGrant { agent_id: None })
        )))
    }
}
