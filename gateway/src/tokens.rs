//! The agent token file: the [`TokenStore`] the operator configures.
//!
//! One `agent_id token` pair per line, separated by white space; blank lines and lines starting
//! with `#` are skipped. An agent id may have several tokens (rotation); a token belongs to one
//! agent id, and an agent presenting it must say that id in `hello`. Tokens are kept as SHA-256
//! digests, so a lookup's timing says nothing about the stored tokens.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use dtma_control_plane::auth::BoxFuture;
use dtma_control_plane::{AgentGrant, TokenStore, TokenStoreError};
use sha2::{Digest, Sha256};

/// SHA-256 of a token.
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The agent tokens of one file, read at start.
pub struct FileTokenStore {
    path: PathBuf,
    by_digest: HashMap<TokenDigest, String>,
}

impl std::fmt::Debug for FileTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTokenStore")
            .field("path", &self.path)
            .field("tokens", &self.by_digest.len())
            .finish()
    }
}

impl FileTokenStore {
    pub fn load(path: &Path) -> Result<FileTokenStore, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        FileTokenStore::parse(path, &text)
    }

    /// Parse the file's text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<FileTokenStore, Error> {
        let mut by_digest = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &'static str| Error::Line {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(agent_id), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `agent_id token`"));
            };
            if token.len() < 16 {
                return Err(bad("the token is shorter than 16 characters"));
            }
            if by_digest
                .insert(digest(token), agent_id.to_owned())
                .is_some()
            {
                return Err(bad("this token is already given to an agent"));
            }
        }
        Ok(FileTokenStore {
            path: path.to_owned(),
            by_digest,
        })
    }

    /// Whether `token` is one of this file's tokens (start-up refuses operator tokens that are).
    pub fn contains(&self, token: &str) -> bool {
        self.by_digest.contains_key(&digest(token))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Whether some token of the file belongs to `agent_id`.
    pub fn has_agent(&self, agent_id: &str) -> bool {
        self.by_digest.values().any(|id| id == agent_id)
    }
}

/// The token file, re-read on demand (`Running::reload_tokens`, SIGHUP): a rotation or a
/// revocation needs no restart. A file that does not parse, or that now holds an operator
/// token, is refused and the tokens in force stay.
pub struct ReloadableTokens {
    path: PathBuf,
    operator: HashSet<TokenDigest>,
    current: RwLock<Arc<FileTokenStore>>,
}

impl std::fmt::Debug for ReloadableTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTokens")
            .field("path", &self.path)
            .finish()
    }
}

impl ReloadableTokens {
    /// Read `path`; refuse a file that holds one of the `operator` tokens.
    pub fn load(path: &Path, operator: HashSet<TokenDigest>) -> Result<ReloadableTokens, Error> {
        let store = ReloadableTokens::read(path, &operator)?;
        Ok(ReloadableTokens {
            path: path.to_owned(),
            operator,
            current: RwLock::new(Arc::new(store)),
        })
    }

    fn read(path: &Path, operator: &HashSet<TokenDigest>) -> Result<FileTokenStore, Error> {
        let store = FileTokenStore::load(path)?;
        if store.by_digest.keys().any(|d| operator.contains(d)) {
            return Err(Error::SharedToken(path.to_owned()));
        }
        Ok(store)
    }

    /// Read the file again. On success the new tokens are in force (for new connections) and
    /// the previous store is returned, so the caller can end sessions of agents that lost
    /// every token.
    pub fn reload(&self) -> Result<Arc<FileTokenStore>, Error> {
        let store = Arc::new(ReloadableTokens::read(&self.path, &self.operator)?);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        Ok(std::mem::replace(&mut *current, store))
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<FileTokenStore> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl TokenStore for ReloadableTokens {
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>> {
        let grant = self
            .current()
            .by_digest
            .get(&digest(token))
            .map(|id| AgentGrant {
                agent_id: Some(id.clone()),
            });
        Box::pin(std::future::ready(Ok(grant)))
    }
}

impl TokenStore for FileTokenStore {
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>> {
        let grant = self.by_digest.get(&digest(token)).map(|id| AgentGrant {
            agent_id: Some(id.clone()),
        });
        Box::pin(std::future::ready(Ok(grant)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the agent token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("{0} holds an operator token: operator and agent tokens must differ")]
    SharedToken(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(store: &FileTokenStore, token: &str) -> Option<AgentGrant> {
        futures_util::FutureExt::now_or_never(store.lookup(token))
            .expect("a file store answers at once")
            .expect("a file store does not fail")
    }

    #[test]
    fn tokens_map_to_their_agent() {
        let text = "# comment\n\nweb-1 aaaaaaaaaaaaaaaa-1\nweb-1  aaaaaaaaaaaaaaaa-2\n  db-1\tbbbbbbbbbbbbbbbb\n";
        let store = FileTokenStore::parse(Path::new("t"), text).expect("parses");
        assert_eq!(store.len(), 3);
        let id = |t| lookup(&store, t).and_then(|g| g.agent_id);
        assert_eq!(id("aaaaaaaaaaaaaaaa-1").as_deref(), Some("web-1"));
        assert_eq!(id("aaaaaaaaaaaaaaaa-2").as_deref(), Some("web-1"));
        assert_eq!(id("bbbbbbbbbbbbbbbb").as_deref(), Some("db-1"));
        assert_eq!(lookup(&store, "web-1"), None);
        assert!(!format!("{store:?}").contains("aaaa"));
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line) in [
            ("ok-1 cccccccccccccccc\nlonely\n", 2),
            ("a b c\n", 1),
            ("a short\n", 1),
            ("a dddddddddddddddd\nb dddddddddddddddd\n", 2),
        ] {
            match FileTokenStore::parse(Path::new("f"), text) {
                Err(Error::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
