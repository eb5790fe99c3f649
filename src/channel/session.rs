//! One connection's life: handshake, then reading requests and writing events concurrently,
//! with keepalive pings, dead-link detection and the status heartbeat.
//!
//! The loop is generic over any `Sink + Stream` of WebSocket messages, so tests can run it over
//! an in-memory pipe with paused time. It never decides about reconnecting: it returns a
//! [`SessionEnd`] and the caller's state machine does the rest.

use std::sync::Arc;
use std::time::Duration;

use dtma_protocol::{
    AgentMessage, BackendMessage, Control, ErrorCode, ErrorEvent, Hello, PROTOCOL_VERSION,
    close_code, decode_backend,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Channel;
use crate::agent::LinkState;
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

/// Run one session over `ws` (a link to `host`) until it ends.
pub async fn run<S>(
    ws: S,
    channel: &Arc<Channel>,
    stop: &CancellationToken,
    host: &str,
) -> SessionEnd
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let chan = channel.config();
    let registry = channel.registry();
    let progress = channel.agent().progress();
    let mut ticker = progress.ticker();

    // Handshake: hello, then nothing but welcome.
    let hello = AgentMessage::Hello(Hello {
        agent_id: channel.agent().config().agent_id.clone(),
        agent_version: crate::VERSION.to_owned(),
        boot_id: crate::boot_id().to_owned(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: crate::CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        streams: registry.hello_streams(),
        max_frame_bytes: chan.max_frame_bytes as u64,
        sandbox: Some(channel.agent().enforcement().clone()),
    });
    // The whole handshake (hello out, welcome in) runs under the connect timeout.
    let handshake = async {
        tx.send(text(&hello))
            .await
            .map_err(|e| SessionEnd::Failed(format!("sending hello: {e}")))?;
        read_welcome(&mut rx).await
    };
    let answer = {
        let handshake = tokio::time::timeout(chan.connect_timeout, handshake);
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
        Ok(Ok(w)) => w,
        Ok(Err(end)) => {
            if matches!(end, SessionEnd::Failed(_)) {
                say_goodbye(&mut tx, close_code::PROTOCOL_ERROR, "expected `welcome`").await;
            }
            return end;
        }
        Err(_) => return SessionEnd::Failed("no welcome within the connect timeout".into()),
    };
    if welcome.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "the backend speaks protocol {}, this agent {}",
            welcome.protocol_version, PROTOCOL_VERSION
        );
        say_goodbye(&mut tx, close_code::UNSUPPORTED_VERSION, &reason).await;
        return SessionEnd::Incompatible(reason);
    }
    info!(session_id = %welcome.session_id, resumed = welcome.resume.len(), "Channel connected.");
    channel.agent().set_link_state(LinkState::Connected {
        host: host.to_owned(),
    });
    registry.connected(&welcome.resume, welcome.initial_credit);
    let heartbeat = welcome
        .heartbeat_interval_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(chan.heartbeat_interval);

    // Unsequenced messages (errors, state, status, pings) go through this queue to the writer.
    // The writer is its own task so that a reader waiting for queue space never blocks it.
    let (ctl_tx, ctl_rx) = mpsc::channel::<Message>(256);
    let mut last_rx = Instant::now();
    let writer_stop = CancellationToken::new();
    let mut writer = tokio::spawn(write_loop(
        tx,
        ctl_rx,
        registry.clone(),
        writer_stop.clone(),
    ));
    let mut writer_done = None;

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
        tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Shutdown,
            _ = ticker.tick() => {}
            _ = progress.wedge_requested() => progress.hold(channel.agent().systemd()).await,
            r = &mut writer => {
                let end = match &r {
                    Ok((_, Err(e))) => SessionEnd::Failed(format!("write failed: {e}")),
                    Ok((_, Ok(()))) => SessionEnd::Failed("writer stopped".into()),
                    Err(e) => SessionEnd::Failed(format!("writer task failed: {e}")),
                };
                writer_done = Some(r);
                break end;
            }
            _ = ping.tick() => {
                if last_rx.elapsed() >= chan.ping_interval * 2 {
                    break SessionEnd::Dead;
                }
                let _ = ctl_tx.try_send(Message::Ping(Default::default()));
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
            }
            frame = rx.next() => {
                last_rx = Instant::now();
                match frame {
                    None => break SessionEnd::Failed("the connection closed without a close frame".into()),
                    Some(Err(e)) => break SessionEnd::Failed(format!("read failed: {e}")),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        break SessionEnd::Closed { code, reason };
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Some(end) = handle_text(channel, t.as_str(), &ctl_tx).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        send_error(&ctl_tx, None, ErrorCode::UnsupportedFrame,
                            "binary frames are not part of the protocol; send JSON text frames".into()).await;
                    }
                    Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                }
            }
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
    writer_stop.cancel();
    let joined = match writer_done {
        Some(r) => Some(r),
        // A writer stuck on a blocked socket is abandoned (its frames are resent next time).
        None => match tokio::time::timeout(Duration::from_secs(2), &mut writer).await {
            Ok(r) => Some(r),
            Err(_) => {
                writer.abort();
                None
            }
        },
    };
    if let (Some((code, reason)), Some(Ok((mut tx, _)))) = (goodbye, joined) {
        say_goodbye(&mut tx, code, reason).await;
    }
    end
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
) -> (W, Result<(), tungstenite::Error>)
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
    (tx, result)
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

/// Handle one text frame. Returns `Some` when it ends the session.
async fn handle_text(
    channel: &Arc<Channel>,
    text: &str,
    ctl: &mpsc::Sender<Message>,
) -> Option<SessionEnd> {
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
            Control::Reconnect(r) => {
                info!(after_ms = r.after_ms, url = ?r.url, reason = ?r.reason, "Backend asked to reconnect.");
                return Some(SessionEnd::Redirect {
                    after: Duration::from_millis(r.after_ms),
                    url: r.url,
                });
            }
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
