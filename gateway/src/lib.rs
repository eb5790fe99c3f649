//! dtma-gateway: holds DTMA agents' WebSocket connections and gives operators (the backend, a
//! console) an HTTP API to them. See gateway/README.md.
//!
//! # Layout
//! - `config`: [`Config`], built once from flags, environment and a TOML file.
//! - `tokens`: the agent token file, a [`dtma_control_plane::TokenStore`].
//! - `streams`: each operator request's events, buffered (bounded) for attach and resume.
//! - `http`: the operator API (routes, auth, SSE/NDJSON/buffered bodies, errors).
//! - `webhooks`: directory changes POSTed to the backend (signed, retried, in order).
//! - this file: wiring. The agent side is the `dtma-control-plane` engine on its own listener.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod hook;
pub mod http;
pub mod metrics;
pub mod streams;
pub mod tokens;
pub mod view;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use dtma_control_plane::{ControlPlane, Options};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
use streams::Streams;
use tokens::{FileTokenStore, ReloadableTokens};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Tokens(#[from] tokens::Error),
    #[error(transparent)]
    Webhooks(#[from] webhooks::Error),
    #[error("operator token #{0} is also an agent token: operator and agent tokens must differ")]
    SharedToken(usize),
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    #[error(transparent)]
    Hook(#[from] hook::Error),
    #[error("TLS for the agent listener: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct Running {
    agent_addr: SocketAddr,
    operator_addr: SocketAddr,
    tokens: Option<Arc<ReloadableTokens>>,
    cluster: Option<cluster::Cluster>,
    cp: ControlPlane,
    streams: Streams,
    webhooks: Option<webhooks::Webhooks>,
    stop: CancellationToken,
    hard: CancellationToken,
    tasks: TaskTracker,
    agent_server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Where agents connect (`ws://ADDR/dtma/connect`).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// Where the operator API listens.
    pub fn operator_addr(&self) -> SocketAddr {
        self.operator_addr
    }

    /// Read the agent token file again (SIGHUP does this): new tokens work at once; sessions
    /// of agent ids left without any token are closed (4003 "token revoked"), and they cannot
    /// connect again. On a bad file, the tokens in force stay and the error is returned.
    /// Returns how many tokens are in force.
    pub fn reload_tokens(&self) -> Result<usize, tokens::Error> {
        self.token_reloader().reload()
    }

    /// A handle that reloads the token file (for a signal handler).
    pub fn token_reloader(&self) -> TokenReloader {
        TokenReloader {
            tokens: self.tokens.clone(),
            cp: self.cp.clone(),
        }
    }

    /// This node's cluster handle, when it runs in one.
    pub fn cluster(&self) -> Option<&cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The agent-side engine (its directory, sessions, counters).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The webhook service, when a URL is configured.
    pub fn webhooks(&self) -> Option<&webhooks::Webhooks> {
        self.webhooks.as_ref()
    }

    /// Wait until `shutdown` (given to [`start`]) is cancelled and everything has stopped.
    pub async fn join(self) {
        self.stop.cancelled().await;
        // The drain ends with `hard`; its own timeout bounds it.
        self.hard.cancelled().await;
        self.tasks.close();
        // Every task ends at the stop; a bound all the same, so that a task stuck on the network
        // cannot keep a stopping node alive (systemd would have to kill it).
        if tokio::time::timeout(JOIN_LIMIT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.tasks.len(),
                "Tasks still running {JOIN_LIMIT:?} after the drain; stopping without them."
            );
        }
        let _ = self.agent_server.await;
        info!("Gateway stopped.");
    }
}

/// Reloads the agent token file: see [`Running::reload_tokens`].
#[derive(Clone)]
pub struct TokenReloader {
    tokens: Option<Arc<ReloadableTokens>>,
    cp: ControlPlane,
}

impl TokenReloader {
    pub fn reload(&self) -> Result<usize, tokens::Error> {
        let Some(tokens) = &self.tokens else {
            // Only the hook: nothing to read again (its cache expires by itself).
            return Ok(0);
        };
        tokens.reload()?;
        let now = tokens.current();
        for rec in self.cp.agents() {
            if rec.connected && !now.has_agent(&rec.agent_id) {
                info!(agent_id = %rec.agent_id, "Agent token revoked: closing its session.");
                let _ = self.cp.disconnect(
                    &rec.agent_id,
                    dtma_protocol::close_code::PROTOCOL_ERROR,
                    "token revoked",
                );
            }
        }
        Ok(now.len())
    }
}

/// How long [`Running::join`] waits for tasks after the drain has ended (the drain itself has
/// its own timeout before that).
const JOIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bind both listeners and start serving. Everything stops when `shutdown` is cancelled: the
/// listeners, agent sessions, operator streams (their bodies end) and retention timers.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.validate()?;
    let mut agent_tokens = 0;
    let tokens = match &config.agent_tokens {
        None => None,
        Some(path) => {
            let store = FileTokenStore::load(path)?;
            if let Some(i) = config
                .operator_tokens
                .iter()
                .position(|t| store.contains(t.expose()))
            {
                return Err(StartError::SharedToken(i + 1));
            }
            agent_tokens = store.len();
            Some(Arc::new(ReloadableTokens::load(
                path,
                config
                    .operator_tokens
                    .iter()
                    .map(|t| tokens::digest(t.expose()))
                    .collect(),
            )?))
        }
    };
    let hook = config
        .agent_auth_hook
        .as_ref()
        .map(hook::HookTokens::new)
        .transpose()?;
    let store = Arc::new(hook::Chain {
        file: tokens.clone(),
        hook,
    });
    let tls = config
        .tls
        .as_ref()
        .map(|(c, k)| tls_config(c, k))
        .transpose()?;
    let tasks = TaskTracker::new();
    // `shutdown` starts the drain; `hard` ends everything once the drain is over.
    let hard = CancellationToken::new();
    let cluster = match config.cluster.clone() {
        Some(c) => Some(cluster::Cluster::join(c, hard.child_token(), tasks.clone()).await?),
        None => None,
    };
    let cp = ControlPlane::new(Options {
        session_prefix: cluster
            .as_ref()
            .map(|c| format!("{}-", c.node()))
            .unwrap_or_default(),
        resume_hook: cluster
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn dtma_control_plane::ResumeHook>),
        token_store: Some(store),
        operator_http: false,
        initial_credit: config.streams.initial_credit,
        heartbeat_interval_ms: config
            .heartbeat_interval
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ..Options::default()
    });
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let agent_listener = bind(config.agent_listen).await?;
    let operator_listener = bind(config.operator_listen).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, source })
    };
    let agent_addr = local(&agent_listener, config.agent_listen)?;
    let operator_addr = local(&operator_listener, config.operator_listen)?;

    // Subscribed before the agent listener serves, so no connection goes unreported.
    let webhooks = config
        .webhooks
        .clone()
        .map(|w| webhooks::start(&cp, cluster.clone(), w, hard.child_token(), &tasks))
        .transpose()?;
    if let Some(c) = &cluster {
        c.attach(cp.clone());
    }
    let agent_server = cp.serve_until(
        agent_listener,
        tls,
        shutdown.child_token(),
        hard.child_token(),
    );
    let streams = Streams::new(
        cp.clone(),
        cluster.clone(),
        config.streams.clone(),
        hard.child_token(),
        tasks.clone(),
    );
    let api = http::Api::new(
        cp.clone(),
        streams.clone(),
        config
            .operator_tokens
            .iter()
            .map(|t| tokens::digest(t.expose()))
            .collect(),
        config.streams.wait_output_bytes,
        shutdown.child_token(),
        hard.child_token(),
    )
    .with_cluster(cluster.clone())
    .with_webhooks(webhooks.clone());
    http::serve(Arc::new(api), operator_listener, tasks.clone());
    tasks.spawn(drain(
        cp.clone(),
        cluster.is_some(),
        streams.clone(),
        webhooks.as_ref().map(|w| w.stats()),
        config.drain.clone(),
        shutdown.clone(),
        hard.clone(),
    ));
    info!(
        %agent_addr,
        %operator_addr,
        agent_tokens,
        operator_tokens = config.operator_tokens.len(),
        "Gateway listening: agents on ws://{agent_addr}/dtma/connect, operators on http://{operator_addr}/v1/."
    );
    Ok(Running {
        agent_addr,
        operator_addr,
        tokens,
        cluster,
        cp,
        streams,
        webhooks,
        stop: shutdown,
        hard,
        tasks,
        agent_server,
    })
}

/// When `shutdown` is cancelled: stop taking agents and operator connections, tell the agents
/// to move (in a cluster: to the other nodes, make-before-break, spread over `drain.spread`),
/// wait until they have gone and the operator streams served here have ended (or
/// `drain.timeout`), then end everything.
async fn drain(
    cp: ControlPlane,
    clustered: bool,
    streams: Streams,
    mut webhook_stats: Option<tokio::sync::watch::Receiver<webhooks::Stats>>,
    settings: config::DrainSettings,
    shutdown: CancellationToken,
    hard: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = hard.cancelled() => return,
    }
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let mut sessions = cp.sessions_changed();
    let mut ended = streams.changed();
    if clustered {
        let told = cp.drain(settings.spread, None);
        info!(
            agents = told,
            "Draining: agents told to move to other nodes."
        );
    }
    loop {
        let agents_left = clustered && cp.agents().iter().any(|a| a.connected);
        let running = streams.running();
        // Disconnects the webhooks hold until the cluster shows where the agent went.
        let held = webhook_stats
            .as_ref()
            .map_or(0, |w| w.borrow().held_disconnects);
        if !agents_left && running == 0 && held == 0 {
            info!("Drained.");
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                warn!(running, agents_left, "Drain timed out; stopping anyway.");
                break;
            }
            _ = hard.cancelled() => return,
            _ = sessions.changed() => {}
            _ = ended.changed() => {}
            _ = async {
                match webhook_stats.as_mut() {
                    Some(w) => {
                        if w.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    hard.cancel();
}

/// The agent listener's TLS from PEM files (ring, TLS 1.2 and 1.3).
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |what: &str, path: &std::path::Path, err: String| {
        StartError::Tls(format!("{what} {}: {err}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|x| e("cannot read the certificate", cert, x.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|x| e("bad certificate in", cert, x.to_string()))?;
    if certs.is_empty() {
        return Err(e("no certificate in", cert, "empty".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|x| e("cannot read the private key", key, x.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|x| StartError::Tls(x.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|x| StartError::Tls(format!("certificate and key do not fit: {x}")))?;
    Ok(Arc::new(config))
}

/// [`start`], then [`Running::join`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    start(config, shutdown).await?.join().await;
    Ok(())
}
