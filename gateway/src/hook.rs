//! The agent token hook: a [`TokenStore`] the backend implements over HTTP, for a backend that
//! keeps agent tokens itself (a database) instead of handing the gateway a file.
//!
//! For a token the gateway does not know (not in the file, not cached), it POSTs
//! `{"token_sha256": "<hex>"}` to the hook URL: the token's SHA-256, never the token itself,
//! so a backend that stores digests can answer and the secret does not travel again. The
//! backend answers `200 {"agent_id": "..."}` for a known token, `404` (or `401`/`403`) for an
//! unknown one; anything else (5xx, a timeout, a bad body) means "cannot say": the agent gets
//! `503` and dials again after its backoff. Known tokens are cached for `cache` (a reconnect
//! wave costs one call per agent at most once per period), which is also how long a revoked
//! token keeps working for new connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtma_control_plane::auth::BoxFuture;
use dtma_control_plane::{AgentGrant, TokenStore, TokenStoreError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{HookSettings, Secret};
use crate::tokens::{TokenDigest, digest};
use crate::webhooks::Target;

/// Why the hook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid agent token hook URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::webhooks::Error),
}

/// The hook, with its cache of known tokens.
pub struct HookTokens {
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    bearer: Option<Secret>,
    timeout: Duration,
    cache_for: Duration,
    cache: Mutex<HashMap<TokenDigest, (String, Instant)>>,
}

impl std::fmt::Debug for HookTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookTokens")
            .field("host", &self.target.host)
            .finish()
    }
}

impl HookTokens {
    pub fn new(settings: &HookSettings) -> Result<HookTokens, Error> {
        let target = Target::parse(&settings.url).map_err(|reason| Error::Url {
            url: settings.url.clone(),
            reason,
        })?;
        let tls = if target.https {
            Some(crate::webhooks::tls_config(settings.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(HookTokens {
            target,
            tls,
            bearer: settings.bearer.clone(),
            timeout: settings.timeout,
            cache_for: settings.cache,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn ask(&self, d: &TokenDigest) -> Result<Option<String>, String> {
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        let body = Bytes::from(serde_json::json!({ "token_sha256": hex }).to_string());
        let t = &self.target;
        let mut req = hyper::Request::post(t.path_and_query.as_str())
            .header(header::HOST, t.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("dtma-gateway/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(b) = &self.bearer {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", b.expose()))
                .map_err(|e| e.to_string())?;
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let call = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => exchange(TokioIo::new(tcp), req).await,
                Some(config) => {
                    let name = rustls_pki_types::ServerName::try_from(t.host.clone())
                        .map_err(|e| e.to_string())?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    exchange(TokioIo::new(tls), req).await
                }
            }
        };
        let (status, body) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        match status {
            StatusCode::OK => {
                #[derive(serde::Deserialize)]
                struct Known {
                    agent_id: String,
                }
                let known: Known =
                    serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
                if known.agent_id.is_empty() {
                    return Err("bad answer: empty agent_id".into());
                }
                Ok(Some(known.agent_id))
            }
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            other => Err(format!("the hook answered {other}")),
        }
    }
}

/// One request on a fresh HTTP/1.1 connection: the status and the body (at most 64 KiB).
async fn exchange<IO>(
    io: IO,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

impl TokenStore for HookTokens {
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>> {
        Box::pin(async move {
            let d = digest(token);
            if let Some((agent, at)) = lock(&self.cache).get(&d).cloned()
                && at.elapsed() < self.cache_for
            {
                return Ok(Some(AgentGrant {
                    agent_id: Some(agent),
                }));
            }
            match self.ask(&d).await {
                Ok(Some(agent)) => {
                    lock(&self.cache).insert(d, (agent.clone(), Instant::now()));
                    Ok(Some(AgentGrant {
                        agent_id: Some(agent),
                    }))
                }
                Ok(None) => {
                    lock(&self.cache).remove(&d);
                    Ok(None)
                }
                Err(e) => Err(TokenStoreError(format!("agent token hook: {e}"))),
            }
        })
    }
}

/// The file's tokens first, then the hook's.
#[derive(Debug)]
pub struct Chain {
    pub file: Option<Arc<crate::tokens::ReloadableTokens>>,
    pub hook: Option<HookTokens>,
}

impl TokenStore for Chain {
    fn lookup<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentGrant>, TokenStoreError>> {
        Box::pin(async move {
            if let Some(f) = &self.file
                && let Some(g) = f.lookup(token).await?
            {
                return Ok(Some(g));
            }
            match &self.hook {
                Some(h) => h.lookup(token).await,
                None => Ok(None),
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
