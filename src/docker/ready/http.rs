//! The HTTP side of a probe: one POST (or DELETE) per fresh hyper HTTP/1.1 connection, under a
//! deadline, and the answer read as JSON or handed to the event-stream reader.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::sse::read_event_stream;
use super::{MODERN_REVISION, NotReady, Step, excerpt};

/// A handshake answer is a few hundred bytes; this bounds what a broken server makes us buffer.
pub(super) const MAX_BODY: usize = 1 << 20;

pub(super) const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub(super) const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// One probe's connection settings and deadline.
pub(super) struct Client {
    pub(super) addr: SocketAddr,
    pub(super) path: String,
    pub(super) timeout: Duration,
    deadline: Instant,
}

impl Client {
    pub(super) fn new(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Client, NotReady> {
        let valid = path.starts_with('/') && path.parse::<hyper::Uri>().is_ok();
        if !valid {
            return Err(NotReady::InvalidPath {
                path: path.to_owned(),
            });
        }
        Ok(Client {
            addr,
            path: path.to_owned(),
            timeout,
            deadline: Instant::now() + timeout,
        })
    }

    /// POST one JSON-RPC message under the probe's deadline.
    pub(super) async fn post(
        &self,
        step: Step,
        message: &Value,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, NotReady> {
        let mut builder = Request::post(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, ACCEPT_BOTH);
        if step == Step::Discover {
            builder = builder
                .header(MCP_PROTOCOL_VERSION, MODERN_REVISION)
                .header(MCP_METHOD, "server/discover");
        }
        for (name, value) in extra {
            builder = builder.header(name, value.clone());
        }
        let request = builder
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|_| NotReady::InvalidPath {
                path: self.path.clone(),
            })?;
        self.send(step, request, self.deadline).await
    }

    pub(super) async fn send(
        &self,
        step: Step,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Answer, NotReady> {
        timeout_at(deadline, self.exchange(step, request))
            .await
            .map_err(|_| NotReady::Timeout {
                addr: self.addr,
                step,
                after: self.timeout,
            })?
    }

    /// One request on a fresh connection. The connection is driven in the same future as the
    /// request, so a timeout drops both and nothing is left running.
    async fn exchange(
        &self,
        step: Step,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, NotReady> {
        let addr = self.addr;
        let broken = |reason: String| NotReady::Connection { addr, step, reason };
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                NotReady::Refused { addr }
            } else {
                broken(e.to_string())
            }
        })?;
        // Only a latency hint; the exchange works without it.
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| broken(e.to_string()))?;
        let driver = async move {
            // Its errors also reach the request or body below, which reports them.
            if let Err(e) = connection.await {
                debug!(%addr, error = %e, "MCP probe connection ended.");
            }
            // The body may still hold data after the connection closed: keep waiting for it.
            std::future::pending::<Infallible>().await
        };
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| broken(e.to_string()))?;
            read_answer(step, response).await.map_err(|e| match e {
                ReadError::Http(reason) => broken(reason),
                ReadError::NotReady(e) => e,
            })
        };
        tokio::select! {
            answer = exchange => answer,
            never = driver => match never {},
        }
    }
}

/// What came back for one POST.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) session: Option<HeaderValue>,
    pub(super) payload: Payload,
}

#[derive(Debug)]
pub(super) enum Payload {
    /// A JSON body, or the JSON-RPC response an event stream carried.
    Json(Value),
    /// A body that is not JSON (its excerpt; empty bodies included).
    NotJson(String),
    /// An event stream that ended before any JSON-RPC response.
    NoResponse,
}

pub(super) enum ReadError {
    Http(String),
    NotReady(NotReady),
}

async fn read_answer(step: Step, response: Response<Incoming>) -> Result<Answer, ReadError> {
    let status = response.status();
    let session = response.headers().get(MCP_SESSION_ID).cloned();
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"));
    let mut body = response.into_body();
    let payload = if sse {
        read_event_stream(step, &mut body).await?
    } else {
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() + data.len() > MAX_BODY {
                    return Err(ReadError::NotReady(NotReady::TooLarge {
                        step,
                        limit: MAX_BODY,
                    }));
                }
                bytes.extend_from_slice(data);
            }
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Payload::Json(v),
            Err(_) => Payload::NotJson(excerpt(&bytes)),
        }
    };
    Ok(Answer {
        status,
        session,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_path_is_refused_before_any_connection() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for path in ["mcp", "", "/a b"] {
            assert!(matches!(
                Client::new(addr, path, Duration::from_secs(1)),
                Err(NotReady::InvalidPath { .. })
            ));
        }
    }
}
