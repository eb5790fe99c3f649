//! One connection's life: handshake, then reading requests and writing events concurrently,
//! with keepalive pings, dead-link detection and the status heartbeat.
//!
//! The loop is generic over any `Sink + Stream` of WebSocket messages, so tests can run it over
//! an in-memory pipe with paused time. It never decides about reconnecting after its link is
//! lost: it returns a [`SessionEnd`] and the caller's state machine does the rest. What it does
//! decide is a **move** (make-before-break, on `reconnect`): the session dials and welcomes a
//! new link while the current one keeps serving, then switches every frame to the new link
//! and closes the old one with 1000 `moved`, reading it until it closes.
//!
//! **Invariant:** one writer at a time takes frames from the registry; the old link's writer
//! has stopped before the new link's resume points are applied and its writer starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::{
    AgentMessage, BackendMessage, Control, ErrorCode, ErrorEvent, Hello, PROTOCOL_VERSION,
    Reconnect, close_code, decode_backend,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Channel, Dialer, host_of};
use crate::agent::LinkState;
use crate::backoff::Backoff;
use crate::config::ChannelConfig;

/// Frames handed to the socket per write batch.
const BATCH: usize = 64;

/// Why a session ended.
#[derive(Debug, PartialEq)]
pub enum SessionEnd {
    /// The agent is shutting down.
    Shutdown,
    /// The backend asked us to come back later or elsewhere.
    Redirect {
        after: Duration,
        url: Option<String>,
    },
    /// The backend closed the link (code and reason as sent).
    Closed { code: Option<u16>, reason: String },
    /// No frame for two ping intervals.
    Dead,
    /// The backend speaks another protocol version.
    Incompatible(String),
    /// The handshake failed or a transport error occurred.
    Failed(String),
}

impl SessionEnd {
    /// Why the channel dials again after this end; `None` for shutdown.
    pub fn cause(&self) -> Option<crate::metrics::ReconnectCause> {
        use crate::metrics::ReconnectCause;
        match self {
            SessionEnd::Shutdown => None,
            SessionEnd::Redirect { .. } => Some(ReconnectCause::Redirect),
            SessionEnd::Closed { .. } => Some(ReconnectCause::Closed),
            SessionEnd::Dead => Some(ReconnectCause::Dead),
            SessionEnd::Incompatible(_) => Some(ReconnectCause::Incompatible),
            SessionEnd::Failed(_) => Some(ReconnectCause::Failed),
        }
    }
}

/// What a session runs over: a WebSocket as tungstenite's client stream or an in-memory pipe.
pub trait Link:
    Sink<Message, Error = tungstenite::Error>
    + Stream<Item = Result<Message, tungstenite::Error>>
    + Unpin
    + Send
    + 'static
{
}
impl<T> Link for T where
    T: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin
        + Send
        + 'static
{
}

type Tx<L> = SplitSink<L, Message>;
type Rx<L> = SplitStream<L>;
/// What the writer task hands back when it stops: its half of the socket, the queue of
/// unsequenced messages (the next link's writer carries on with it), and how it ended.
type WriterOut<L> = (
    Tx<L>,
    mpsc::Receiver<Message>,
    Result<(), tungstenite::Error>,
);

/// Run one session over `ws` (a link to `host`) until it ends. This session cannot move: a
/// `reconnect` ends it (the caller dials again). The channel's state machine uses
/// [`run_link`], whose sessions move make-before-break.
pub async fn run<S: Link>(
    ws: S,
    channel: &Arc<Channel>,
    stop: &CancellationToken,
    host: &str,
) -> SessionEnd {
    let mut url = host.to_owned();
    let chan = channel.config();
    let mut backoff = Backoff::new(chan.backoff_base, chan.backoff_cap);
    run_link(
        ws,
        None::<&Unmovable<S>>,
        channel,
        stop,
        &mut url,
        &mut backoff,
    )
    .await
}

/// Run one session over `ws` (dialled to `url`) until it ends. With a `dialer`, a `reconnect`
/// moves the session make-before-break (protocol/README.md, Make-before-break): the new link
/// is dialled and welcomed while this one keeps serving, then the session switches to it and
/// `url` becomes the new link's URL. A failed move is retried after `backoff` delays while the
/// current link lives; a successful one advances `backoff` as any redial does.
pub async fn run_link<D: Dialer>(
    ws: D::Link,
    dialer: Option<&D>,
    channel: &Arc<Channel>,
    stop: &CancellationToken,
    url: &mut String,
    backoff: &mut Backoff,
) -> SessionEnd {
    let (mut tx, mut rx) = ws.split();
    let chan = channel.config();
    let registry = channel.registry();
    let progress = channel.agent().progress();
    let mut ticker = progress.ticker();

    let answer = {
        let handshake = handshake(&mut tx, &mut rx, channel);
        tokio::pin!(handshake);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return SessionEnd::Shutdown,
                _ = ticker.tick() => progress.tick(),
                w = &mut handshake => break w,
            }
        }
    };
    let welcome = match answer {
        Ok(w) => w,
        Err(end) => return end,
    };
    let heartbeat = welcomed(channel, &welcome, host_of(url));

    // Unsequenced messages (errors, state, status, pings) go through this queue to the writer.
    // The writer is its own task so that a reader waiting for queue space never blocks it.
    let (mut ctl_tx, ctl_rx) = mpsc::channel::<Message>(256);
    let mut last_rx = Instant::now();
    let mut writer_stop = CancellationToken::new();
    let mut writer = Some(tokio::spawn(write_loop(
        tx,
        ctl_rx,
        registry.clone(),
        writer_stop.clone(),
    )));
    // The writer's output once it has ended on its own (a write error).
    let mut writer_done: Option<Result<WriterOut<D::Link>, tokio::task::JoinError>> = None;
    // The current link's reader; `None` once the link is lost while a move finishes.
    let mut rx = Some(rx);
    // The link a move left, read until it closes (requests already on their way are served).
    let mut draining: Option<(Rx<D::Link>, Instant)> = None;
    let mut moving: Option<Move<'_, D::Link>> = None;
    // The unsequenced queue of a writer stopped because its link was lost during a move.
    let mut parked_ctl: Option<mpsc::Receiver<Message>> = None;
    // When the current link was welcomed (a healthy link resets the backoff before a move).
    let mut up_at = Instant::now();

    let mut ping =
        tokio::time::interval_at(Instant::now() + chan.ping_interval, chan.ping_interval);
    let mut beat = tokio::time::interval_at(Instant::now(), heartbeat);
    // After a stall, carry on at the normal pace rather than firing the missed ticks at once.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every turn of this loop ticks the control loop's progress (the watchdog's food); a turn
    // that never ends (an await that hangs) starves the watchdog, and systemd restarts us.
    let end = loop {
        progress.tick();
        // Each arm either continues the loop or says how the current link ended.
        let lost = tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Shutdown,
            _ = ticker.tick() => continue,
            // Holding never returns: the watchdog is meant to fire.
            _ = progress.wedge_requested() => progress.hold(channel.agent().systemd()).await,
            r = join_writer(&mut writer) => {
                writer = None;
                let end = match &r {
                    Ok((_, _, Err(e))) => SessionEnd::Failed(format!("write failed: {e}")),
                    Ok((_, _, Ok(()))) => SessionEnd::Failed("writer stopped".into()),
                    Err(e) => SessionEnd::Failed(format!("writer task failed: {e}")),
                };
                writer_done = Some(r);
                end
            }
            _ = ping.tick(), if rx.is_some() => {
                if last_rx.elapsed() >= chan.ping_interval * 2 {
                    SessionEnd::Dead
                } else {
                    let _ = ctl_tx.try_send(Message::Ping(Default::default()));
                    continue;
                }
            }
            _ = beat.tick() => {
                let channel = channel.clone();
                let ctl = ctl_tx.clone();
                tokio::spawn(async move {
                    let streams = channel.registry().counts();
                    if let Some(status) = channel.services().diagnostics.heartbeat(streams).await {
                        let _ = ctl.try_send(text(&AgentMessage::Status(status)));
                    }
                });
                continue;
            }
            frame = next_frame(&mut rx) => {
                last_rx = Instant::now();
                match frame {
                    None => SessionEnd::Failed("the connection closed without a close frame".into()),
                    Some(Err(e)) => SessionEnd::Failed(format!("read failed: {e}")),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        SessionEnd::Closed { code, reason }
                    }
                    Some(Ok(Message::Text(t))) => {
                        match handle_text(channel, t.as_str(), &ctl_tx).await {
                            None => continue,
                            Some(r) if dialer.is_some() => {
                                if up_at.elapsed() >= chan.healthy_after {
                                    backoff.reset();
                                }
                                moving = Some(Move::directed(r, url));
                                continue;
                            }
                            Some(r) => {
                                info!(after_ms = r.after_ms, url = ?r.url, reason = ?r.reason,
                                    "Backend asked to reconnect.");
                                SessionEnd::Redirect {
                                    after: Duration::from_millis(r.after_ms),
                                    url: r.url,
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        send_error(&ctl_tx, None, ErrorCode::UnsupportedFrame,
                            "binary frames are not part of the protocol; send JSON text frames".into()).await;
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                }
            }
            frame = next_draining(&mut draining) => {
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        if handle_text(channel, t.as_str(), &ctl_tx).await.is_some() {
                            debug!("Ignored a `reconnect` on the link the agent has moved from.");
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        debug!(code = ?f.map(|f| u16::from(f.code)), "The link moved from is closed.");
                        draining = None;
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => draining = None,
                }
                continue;
            }
            step = drive_move(&mut moving) => {
                let Some(m) = moving.as_mut() else { continue };
                match step {
                    MoveStep::Due => {
                        // `Due` only comes from a move while a dialer exists.
                        if let Some(d) = dialer {
                            info!(url = %m.url, "Channel moving: dialling the new link.");
                            m.phase = MovePhase::Trying(attempt(d, channel, m.url.clone()));
                        }
                        continue;
                    }
                    MoveStep::Failed(why) if rx.is_some() => {
                        let delay = backoff.next_delay();
                        warn!(url = %m.url, reason = %why, delay_ms = delay.as_millis() as u64,
                            "Channel move failed; staying on the current link and retrying.");
                        m.phase = MovePhase::Waiting(Instant::now() + delay);
                        continue;
                    }
                    MoveStep::Failed(why) => {
                        // The current link is gone too: back to the ordinary reconnect loop.
                        warn!(url = %m.url, reason = %why, "Channel move failed after the old link closed.");
                        let to = m.url.clone();
                        break SessionEnd::Redirect { after: backoff.next_delay(), url: Some(to) };
                    }
                    MoveStep::Welcomed(new) => {
                        let to = m.url.clone();
                        moving = None;
                        // Break: the old link stops writing, says goodbye and is read until it
                        // closes. Make: the new link resumes the streams and takes every frame.
                        let old = stop_writer(&mut writer, &writer_stop, &mut writer_done).await;
                        let ctl_rx = match old {
                            Some((old_tx, ctl_rx, _)) => {
                                if let Some(old_rx) = rx.take() {
                                    tokio::spawn(async move {
                                        let mut old_tx = old_tx;
                                        say_goodbye(&mut old_tx, 1000, "moved").await;
                                    });
                                    draining = Some((old_rx, Instant::now() + chan.connect_timeout));
                                }
                                ctl_rx
                            }
                            None => match parked_ctl.take() {
                                Some(r) => r,
                                None => {
                                    // The old writer was stuck: its queue is lost with it.
                                    let (t, r) = mpsc::channel::<Message>(256);
                                    ctl_tx = t;
                                    r
                                }
                            },
                        };
                        let heartbeat = welcomed(channel, &new.welcome, host_of(&to));
                        channel.agent().metrics().reconnect(crate::metrics::ReconnectCause::Redirect);
                        backoff.next_delay();
                        info!(url = %to, "Channel moved.");
                        *url = to;
                        writer_stop = CancellationToken::new();
                        writer = Some(tokio::spawn(write_loop(
                            new.tx,
                            ctl_rx,
                            registry.clone(),
                            writer_stop.clone(),
                        )));
                        rx = Some(new.rx);
                        up_at = Instant::now();
                        last_rx = Instant::now();
                        ping.reset();
                        beat = tokio::time::interval_at(Instant::now(), heartbeat);
                        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        continue;
                    }
                }
            }
        };
        // The current link ended. A move whose handshake is under way finishes first (on one
        // node, its `welcome` comes with a 4002 on the old link: expected, not an error); a
        // move still waiting to dial becomes an ordinary redirect.
        match moving.as_ref().map(|m| &m.phase) {
            Some(MovePhase::Trying(_)) => {
                if matches!(
                    lost,
                    SessionEnd::Closed {
                        code: Some(close_code::REPLACED),
                        ..
                    }
                ) {
                    debug!("The old link was replaced by the move's new one.");
                } else {
                    info!(reason = ?lost, "The old link ended during a move; finishing the move.");
                }
                parked_ctl = stop_writer(&mut writer, &writer_stop, &mut writer_done)
                    .await
                    .map(|(_, ctl_rx, _)| ctl_rx);
                rx = None;
            }
            Some(MovePhase::Waiting(at)) => {
                let after = at.saturating_duration_since(Instant::now());
                let to = moving.map(|m| m.url);
                // The old link is gone: no goodbye on it.
                rx = None;
                break SessionEnd::Redirect { after, url: to };
            }
            None => break lost,
        }
    };
    registry.disconnected();
    // Say goodbye where the link still works; a dead link gets no close frame.
    let goodbye = match &end {
        SessionEnd::Shutdown => Some((close_code::SHUTDOWN, "agent shutting down")),
        SessionEnd::Dead => None,
        SessionEnd::Redirect { .. } => Some((1000, "reconnecting as directed")),
        _ => None,
    };
    let joined = match writer_done {
        Some(r) => Some(r),
        None => {
            writer_stop.cancel();
            match writer.as_mut() {
                // A writer stuck on a blocked socket is abandoned (its frames are resent next
                // time).
                Some(w) => match tokio::time::timeout(Duration::from_secs(2), &mut *w).await {
                    Ok(r) => Some(r),
                    Err(_) => {
                        w.abort();
                        None
                    }
                },
                None => None,
            }
        }
    };
    if rx.is_some()
        && let (Some((code, reason)), Some(Ok((mut tx, _, _)))) = (goodbye, joined)
    {
        say_goodbye(&mut tx, code, reason).await;
    }
    end
}

/// The dialer of a session that cannot move ([`run`]); never called.
struct Unmovable<S>(std::marker::PhantomData<fn() -> S>);

impl<S: Link> Dialer for Unmovable<S> {
    type Link = S;
    async fn dial(&self, url: &str) -> Result<S, super::tls::Error> {
        Err(super::tls::Error::Url {
            url: url.to_owned(),
            reason: "this session has no dialer".into(),
        })
    }
}

/// A make-before-break move in progress.
struct Move<'a, L> {
    /// Where the new link goes.
    url: String,
    phase: MovePhase<'a, L>,
}

type Attempt<'a, L> = Pin<Box<dyn Future<Output = Result<Welcomed<L>, String>> + Send + 'a>>;

enum MovePhase<'a, L> {
    /// Waiting to dial: `after_ms`, or the backoff after a failed attempt.
    Waiting(Instant),
    /// Dialling the new link and shaking hands on it.
    Trying(Attempt<'a, L>),
}

/// A new link whose handshake is done.
struct Welcomed<L> {
    tx: Tx<L>,
    rx: Rx<L>,
    welcome: dtma_protocol::Welcome,
}

enum MoveStep<L> {
    /// Time to dial.
    Due,
    Failed(String),
    Welcomed(Welcomed<L>),
}

impl<L> Move<'_, L> {
    /// The move a `reconnect` asks for, from a link dialled to `current`. It replaces any
    /// move in progress (the backend's latest word wins).
    fn directed(r: Reconnect, current: &str) -> Self {
        let url = match r.url {
            Some(to) if to.starts_with("ws://") || to.starts_with("wss://") => to,
            Some(to) => {
                warn!(url = %to, "Ignoring a redirect to a URL that is not ws:// or wss://.");
                current.to_owned()
            }
            None => current.to_owned(),
        };
        info!(after_ms = r.after_ms, %url, reason = ?r.reason,
            "Backend asked to reconnect; moving make-before-break.");
        Move {
            url,
            phase: MovePhase::Waiting(Instant::now() + Duration::from_millis(r.after_ms)),
        }
    }
}

/// Drive the move, if any: its wait, or its attempt.
async fn drive_move<L>(moving: &mut Option<Move<'_, L>>) -> MoveStep<L> {
    match moving.as_mut().map(|m| &mut m.phase) {
        None => std::future::pending().await,
        Some(MovePhase::Waiting(at)) => {
            tokio::time::sleep_until(*at).await;
            MoveStep::Due
        }
        Some(MovePhase::Trying(attempt)) => match attempt.await {
            Ok(w) => MoveStep::Welcomed(w),
            Err(why) => MoveStep::Failed(why),
        },
    }
}

/// Dial `url` and shake hands on the new link.
fn attempt<'a, D: Dialer>(
    dialer: &'a D,
    channel: &'a Arc<Channel>,
    url: String,
) -> Attempt<'a, D::Link> {
    Box::pin(async move {
        let ws = dialer
            .dial(&url)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let (mut tx, mut rx) = ws.split();
        match handshake(&mut tx, &mut rx, channel).await {
            Ok(welcome) => Ok(Welcomed { tx, rx, welcome }),
            Err(end) => Err(format!("handshake: {end:?}")),
        }
    })
}

/// Send `hello` and wait for `welcome`, together under the connect timeout; check the
/// version. A failed handshake has had the close frame the protocol asks for.
async fn handshake<L: Link>(
    tx: &mut Tx<L>,
    rx: &mut Rx<L>,
    channel: &Arc<Channel>,
) -> Result<dtma_protocol::Welcome, SessionEnd> {
    let hello = AgentMessage::Hello(Hello {
        agent_id: channel.agent().config().agent_id.clone(),
        agent_version: crate::VERSION.to_owned(),
        boot_id: crate::boot_id().to_owned(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: crate::CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        streams: channel.registry().hello_streams(),
        max_frame_bytes: channel.config().max_frame_bytes as u64,
        sandbox: Some(channel.agent().enforcement().clone()),
    });
    let exchange = async {
        tx.send(text(&hello))
            .await
            .map_err(|e| SessionEnd::Failed(format!("sending hello: {e}")))?;
        read_welcome(rx).await
    };
    let answer = tokio::time::timeout(channel.config().connect_timeout, exchange).await;
    let welcome = match answer {
        Ok(Ok(w)) => w,
        Ok(Err(end)) => {
            if matches!(end, SessionEnd::Failed(_)) {
                say_goodbye(tx, close_code::PROTOCOL_ERROR, "expected `welcome`").await;
            }
            return Err(end);
        }
        Err(_) => {
            return Err(SessionEnd::Failed(
                "no welcome within the connect timeout".into(),
            ));
        }
    };
    if welcome.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "the backend speaks protocol {}, this agent {}",
            welcome.protocol_version, PROTOCOL_VERSION
        );
        say_goodbye(tx, close_code::UNSUPPORTED_VERSION, &reason).await;
        return Err(SessionEnd::Incompatible(reason));
    }
    Ok(welcome)
}

/// A link to `host` is welcomed: say so, resume the streams. Returns the heartbeat interval.
fn welcomed(channel: &Arc<Channel>, welcome: &dtma_protocol::Welcome, host: &str) -> Duration {
    info!(session_id = %welcome.session_id, resumed = welcome.resume.len(), "Channel connected.");
    channel.agent().set_link_state(LinkState::Connected {
        host: host.to_owned(),
    });
    channel
        .registry()
        .connected(&welcome.resume, welcome.initial_credit);
    welcome
        .heartbeat_interval_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(channel.config().heartbeat_interval)
}

/// Stop the writer and take back what it holds; `None` when it was stuck (then aborted) or
/// had failed as a task.
async fn stop_writer<L: Link>(
    writer: &mut Option<tokio::task::JoinHandle<WriterOut<L>>>,
    stop: &CancellationToken,
    done: &mut Option<Result<WriterOut<L>, tokio::task::JoinError>>,
) -> Option<WriterOut<L>> {
    stop.cancel();
    let joined = match (done.take(), writer.take()) {
        (Some(r), _) => r,
        (None, Some(mut w)) => match tokio::time::timeout(Duration::from_secs(2), &mut w).await {
            Ok(r) => r,
            Err(_) => {
                w.abort();
                return None;
            }
        },
        (None, None) => return None,
    };
    joined.ok()
}

async fn join_writer<T>(
    writer: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match writer {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

async fn next_frame<R: Stream + Unpin>(rx: &mut Option<R>) -> Option<R::Item> {
    match rx {
        Some(rx) => rx.next().await,
        None => std::future::pending().await,
    }
}

/// The next frame of the link being left; `None` once it ended or its time is up.
async fn next_draining<R: Stream + Unpin>(d: &mut Option<(R, Instant)>) -> Option<R::Item> {
    match d {
        Some((rx, until)) => tokio::time::timeout_at(*until, rx.next())
            .await
            .ok()
            .flatten(),
        None => std::future::pending().await,
    }
}

/// Send a close frame, but never wait long for a peer that does not read.
async fn say_goodbye<W>(tx: &mut W, code: u16, reason: &str)
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(close(code, reason))).await;
}

/// Write unsequenced messages first, then stream events in fair batches, until stopped.
async fn write_loop<W>(
    mut tx: W,
    mut ctl_rx: mpsc::Receiver<Message>,
    registry: Arc<super::streams::Registry>,
    stop: CancellationToken,
) -> (W, mpsc::Receiver<Message>, Result<(), tungstenite::Error>)
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let result = async {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = ctl_rx.recv() => match m {
                    Some(m) => tx.send(m).await?,
                    None => return Ok(()),
                },
                batch = registry.next_batch(BATCH) => {
                    for frame in batch {
                        tx.feed(Message::Text(frame)).await?;
                    }
                    tx.flush().await?;
                }
            }
        }
    }
    .await;
    (tx, ctl_rx, result)
}

async fn read_welcome<R>(rx: &mut R) -> Result<dtma_protocol::Welcome, SessionEnd>
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            None => return Err(SessionEnd::Failed("closed during the handshake".into())),
            Some(Err(e)) => return Err(SessionEnd::Failed(format!("handshake: {e}"))),
            Some(Ok(Message::Close(f))) => {
                let (code, reason) = f
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                return Err(SessionEnd::Closed { code, reason });
            }
            Some(Ok(Message::Text(t))) => match decode_backend(t.as_str()) {
                Ok(BackendMessage::Control(Control::Welcome(w))) => return Ok(w),
                Ok(_) => {
                    return Err(SessionEnd::Failed(
                        "the backend sent a message before `welcome`".into(),
                    ));
                }
                Err(e) => return Err(SessionEnd::Failed(format!("bad welcome: {e}"))),
            },
            Some(Ok(_)) => {}
        }
    }
}

/// Handle one text frame. Returns the `reconnect` it carried, for the session to follow.
async fn handle_text(
    channel: &Arc<Channel>,
    text: &str,
    ctl: &mpsc::Sender<Message>,
) -> Option<Reconnect> {
    let chan: &ChannelConfig = channel.config();
    if text.len() > chan.max_frame_bytes {
        send_error(
            ctl,
            None,
            ErrorCode::FrameTooLarge,
            format!(
                "the frame has {} bytes; the limit is {}",
                text.len(),
                chan.max_frame_bytes
            ),
        )
        .await;
        return None;
    }
    match decode_backend(text) {
        Err(e) => {
            debug!(error = %e, "Undecodable frame.");
            let _ = ctl
                .send(self::text(&AgentMessage::Error(e.to_event())))
                .await;
        }
        Ok(BackendMessage::Control(c)) => match c {
            Control::Ack(a) => channel.registry().ack(&a.id, a.seq),
            Control::Credit(c) => channel.registry().credit(&c.id, c.limit),
            Control::Reconnect(r) => return Some(r),
            Control::Welcome(_) => {
                send_error(
                    ctl,
                    None,
                    ErrorCode::ProtocolError,
                    "`welcome` is only valid once, as the answer to `hello`".into(),
                )
                .await;
            }
        },
        Ok(BackendMessage::Request(r)) => {
            if let Some(reply) = super::handlers::dispatch(channel, r).await {
                let _ = ctl.send(self::text(&reply)).await;
            }
        }
    }
    None
}

async fn send_error(
    ctl: &mpsc::Sender<Message>,
    id: Option<String>,
    code: ErrorCode,
    message: String,
) {
    warn!(?code, %message, "Refused a frame.");
    let e = AgentMessage::Error(ErrorEvent {
        id,
        seq: None,
        code,
        message,
        details: None,
    });
    let _ = ctl.send(text(&e)).await;
}

fn text(m: &AgentMessage) -> Message {
    // Our own message types always serialise; an empty object would be a visible bug.
    Message::text(serde_json::to_string(m).unwrap_or_else(|_| "{}".into()))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}
