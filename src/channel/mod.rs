//! The channel adapter: the outbound WebSocket to the backend.
//!
//! [`Channel`] holds what outlives a connection (the stream registry, the channel settings) and
//! runs the reconnect state machine
//! `Disconnected{backoff} -> Connecting -> Connected(session) -> Disconnected ...`, forever,
//! with one log line per transition. Each connection is one [`session`]; requests decoded there
//! go to [`handlers`], which call the services and turn their outcomes into stream events.
//!
//! - [`session`]: one connection: handshake, reader, writer, keepalive, heartbeat.
//! - [`handlers`]: one handler per request type, behind `dispatch` (decode → service → encode).
//! - [`events`]: the `mcp_events` stream (resync, live events, coalescing when full).
//! - [`streams`]: per-request event streams: sequencing, unacked buffer, credit, resend.
//! - [`tls`]: dialling (TCP, rustls, WebSocket upgrade with the bearer token).
//!
//! **Invariant:** one session at a time; the registry outlives sessions. A session that moves
//! (make-before-break) holds two links for a moment, but only one of them writes at a time.

pub mod events;
pub mod handlers;
pub mod session;
pub mod streams;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::close_code;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::{Agent, LinkState};
use crate::backoff::Backoff;
use crate::config::{ChannelConfig, Secret};
use crate::metrics::{ChannelState, ReconnectCause};
use crate::services::Services;
use session::SessionEnd;
use streams::Registry;

/// The channel's lasting state.
pub struct Channel {
    services: Arc<Services>,
    registry: Arc<Registry>,
    config: ChannelConfig,
}

impl Channel {
    pub fn new(services: Arc<Services>, config: ChannelConfig) -> Arc<Channel> {
        Arc::new(Channel {
            registry: Registry::with_counters(
                services.agent().config().streams.clone(),
                services.agent().metrics().streams(),
            ),
            services,
            config,
        })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }
    pub fn agent(&self) -> &Arc<Agent> {
        self.services.agent()
    }
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Keep the channel up until `stop` is cancelled, dialling with TLS.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tls = match tls::client_config(self.config.ca_file.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                // Config validation checked the file exists; a bad PEM is an operator error.
                tracing::error!(error = %e, "TLS set-up failed; the channel stays down.");
                self.agent().set_link_state(LinkState::Failed {
                    cause: format!("TLS set-up failed: {e}"),
                });
                return;
            }
        };
        let dialer = TlsDialer {
            token: self.agent().config().bearer_token.clone(),
            chan: self.config.clone(),
            tls,
        };
        self.run_with(stop, dialer).await
    }

    /// The reconnect state machine over any [`Dialer`].
    pub async fn run_with<D: Dialer>(self: Arc<Self>, stop: CancellationToken, dialer: D) {
        let agent = self.agent().clone();
        self.reconnect_loop(stop, dialer).await;
        agent.metrics().channel_state(ChannelState::Stopped);
    }

    async fn reconnect_loop<D: Dialer>(self: Arc<Self>, stop: CancellationToken, dialer: D) {
        let chan = &self.config;
        let metrics = self.agent().metrics();
        // One backoff for every redial: after a lost link, and for a move's new link.
        let mut backoff = match chan.jitter_seed {
            Some(seed) => Backoff::with_rng(
                chan.backoff_base,
                chan.backoff_cap,
                fastrand::Rng::with_seed(seed),
            ),
            None => Backoff::new(chan.backoff_base, chan.backoff_cap),
        };
        let mut url = chan.url.clone();
        // tokio's clock, so tests can run the state machine on paused time.
        let mut down_since = tokio::time::Instant::now();
        let mut orphans_cancelled = false;
        let mut wait = Duration::ZERO;
        // Why the link is down, for systemd's `STATUS=` line while backing off.
        let mut cause = String::new();
        let progress = self.agent().progress();
        let mut ticker = progress.ticker();
        loop {
            progress.tick();
            if !wait.is_zero() {
                info!(
                    delay_ms = wait.as_millis() as u64,
                    "Channel disconnected; waiting before redial."
                );
                self.agent().set_link_state(LinkState::BackingOff {
                    delay: wait,
                    cause: cause.clone(),
                });
            }
            // Wait out the delay in full; the orphan grace may expire during it (then running
            // commands are cancelled and the wait goes on).
            let redial_at = tokio::time::Instant::now() + wait;
            loop {
                let grace_left = chan.orphan_grace.saturating_sub(down_since.elapsed());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(redial_at) => break,
                    _ = ticker.tick() => progress.tick(),
                    _ = tokio::time::sleep(grace_left), if !orphans_cancelled => {
                        let (running, _) = self.registry.counts();
                        if running > 0 {
                            warn!(
                                running,
                                grace_s = chan.orphan_grace.as_secs(),
                                "Link down past the grace period; cancelling running commands."
                            );
                        }
                        self.registry.cancel_all();
                        orphans_cancelled = true;
                    }
                }
            }
            info!(%url, "Channel connecting.");
            self.agent().set_link_state(LinkState::Connecting {
                host: host_of(&url).to_owned(),
            });
            // The dial is bounded by the connect timeout; the loop still turns meanwhile.
            let ws = {
                let dial = dialer.dial(&url);
                tokio::pin!(dial);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = ticker.tick() => progress.tick(),
                        ws = &mut dial => break ws,
                    }
                }
            };
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    warn!(error = %e, "Channel connect failed.");
                    metrics.reconnect(ReconnectCause::ConnectFailed);
                    cause = format!("connect failed: {e}");
                    if url != chan.url {
                        info!(configured = %chan.url, "Redirect target unreachable; returning to the configured URL.");
                        url = chan.url.clone();
                    }
                    wait = backoff.next_delay();
                    continue;
                }
            };
            let up_at = tokio::time::Instant::now();
            // The session reports `Connected` once welcomed; whatever follows it (backing off,
            // or dialling at once) is set at the top of this loop before any await.
            // The session may move to a new link (make-before-break); `url` follows it.
            let end =
                session::run_link(ws, Some(&dialer), &self, &stop, &mut url, &mut backoff).await;
            if let Some(cause) = end.cause() {
                metrics.reconnect(cause);
            }
            down_since = tokio::time::Instant::now();
            orphans_cancelled = false;
            if up_at.elapsed() >= chan.healthy_after {
                backoff.reset();
            }
            wait = backoff.next_delay();
            match end {
                SessionEnd::Shutdown => {
                    info!("Channel closed for shutdown.");
                    return;
                }
                SessionEnd::Redirect { after, url: to } => {
                    match to {
                        Some(to) if to.starts_with("ws://") || to.starts_with("wss://") => url = to,
                        Some(to) => {
                            warn!(url = %to, "Ignoring a redirect to a URL that is not ws:// or wss://.")
                        }
                        None => {}
                    }
                    wait = after;
                    cause = "the backend asked to reconnect".into();
                }
                SessionEnd::Incompatible(ref why) => {
                    warn!(reason = %why, "Backend protocol version unsupported; retrying slowly.");
                    wait = chan.backoff_cap;
                    cause = format!("incompatible backend: {why}");
                }
                SessionEnd::Closed { code, ref reason } => {
                    warn!(?code, %reason, "Channel closed by the backend.");
                    if code == Some(close_code::REPLACED)
                        || code == Some(close_code::UNSUPPORTED_VERSION)
                    {
                        // Another agent holds our id, or the backend cannot talk to us: come
                        // back slowly rather than fight over the session.
                        wait = chan.backoff_cap;
                    }
                    cause = match code {
                        Some(code) => format!("closed by the backend ({code}) {reason}"),
                        None => format!("closed by the backend {reason}"),
                    }
                    .trim_end()
                    .to_owned();
                }
                SessionEnd::Dead => {
                    warn!("Channel declared dead: no frame for two ping intervals.");
                    cause = "link dead: no frame for two ping intervals".into();
                }
                SessionEnd::Failed(ref why) => {
                    warn!(reason = %why, "Channel session failed.");
                    cause = format!("session failed: {why}");
                }
            }
        }
    }

    /// After shutdown's drain: give the link a moment (at most `within`) to deliver the final
    /// events before it closes.
    pub async fn flush(&self, within: Duration) {
        if !self.agent().link_up() {
            return;
        }
        let _ = tokio::time::timeout(within, self.registry.wait_all_acked()).await;
    }
}

/// How the channel reaches the backend. Production dials TCP + TLS + WebSocket
/// ([`TlsDialer`]); tests can hand the state machine in-memory links.
pub trait Dialer: Send + Sync {
    type Link: futures_util::Sink<Message, Error = tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin
        + Send
        + 'static;
    fn dial(&self, url: &str) -> impl Future<Output = Result<Self::Link, tls::Error>> + Send;
}

/// The real dialer: TCP, rustls, WebSocket upgrade with the bearer token.
pub struct TlsDialer {
    token: Secret,
    chan: ChannelConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl Dialer for TlsDialer {
    type Link = tls::Ws;
    async fn dial(&self, url: &str) -> Result<Self::Link, tls::Error> {
        tls::dial(url, &self.token, &self.chan, self.tls.clone()).await
    }
}

/// The host (and port) of a `ws://` or `wss://` URL, for status lines: no scheme, no path.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_a_url_has_neither_scheme_nor_path_nor_user() {
        assert_eq!(
            host_of("wss://api.example.com/dtma/connect"),
            "api.example.com"
        );
        assert_eq!(host_of("ws://127.0.0.1:8080/x?y=1"), "127.0.0.1:8080");
        assert_eq!(host_of("ws://user:pw@h:1"), "h:1");
        assert_eq!(host_of("wss://[::1]:9/"), "[::1]:9");
        assert_eq!(host_of("nonsense"), "nonsense");
    }
}
