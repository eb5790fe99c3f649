//! The HTTP client of the local API: one hyper HTTP/1.1 connection per request, the token as
//! `Authorization: Bearer`, the agent's JSON errors as a typed [`Failure`] with a stable exit
//! code, and server-sent events read as they arrive.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Secret;

/// A local connection is made at once or not at all; this bounds a black-holed `--url`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JSON answer read (the agent caps its own at a few MiB).
const MAX_JSON: usize = 64 << 20;

/// Why a client command failed, each with its exit code (listed in `--help`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("the agent rejected the request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("cannot reach the agent at {url}: {reason} (is it running? `systemctl status dtma`)")]
    Unreachable { url: String, reason: String },
    #[error("the agent is unavailable: {0}")]
    Unavailable(String),
    #[error("the agent failed: {0}")]
    Agent(String),
    #[error("the agent is busy: {0}")]
    Busy(String),
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
    #[error("denied by the policy (rule `{rule}`): {message}")]
    Denied { rule: String, message: String },
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Our own stdout or stderr went away (`dtma logs x | head`).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl Failure {
    /// Sysexits-style codes, so that `exec` can tell them from most commands' own.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 64,
            Failure::BadRequest(_) => 65,
            Failure::NotFound(_) => 66,
            Failure::Auth(_) => 67,
            Failure::Unreachable { .. } | Failure::Unavailable(_) => 69,
            Failure::Agent(_) => 70,
            Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 141,
            Failure::Output(_) => 74,
            Failure::Busy(_) => 75,
            Failure::Protocol(_) => 76,
            Failure::Denied { .. } | Failure::Forbidden(_) => 77,
        }
    }

    /// The agent's error body (`{success: false, error, code, ...}`) with its status.
    fn from_answer(status: StatusCode, body: &[u8]) -> Failure {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
        let message = text("error").unwrap_or_else(|| {
            let raw = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            format!("HTTP {status}: {}", raw.trim())
        });
        match status.as_u16() {
            400 | 411 | 413 => Failure::BadRequest(message),
            401 => Failure::Auth(format!(
                "{message}: the agent does not accept this token (is it the agent's \
                 DTMA_BEARER_TOKEN?)"
            )),
            403 if text("code").as_deref() == Some("denied") => Failure::Denied {
                rule: text("rule").unwrap_or_default(),
                message,
            },
            403 => Failure::Forbidden(message),
            404 => Failure::NotFound(message),
            429 => Failure::Busy(message),
            503 => Failure::Unavailable(message),
            _ => Failure::Agent(message),
        }
    }
}

/// The agent's local API at one URL, with one token.
pub struct Client {
    /// `host:port`, as dialled and as the `Host` header.
    authority: String,
    /// The URL's path, without a trailing `/` (usually empty).
    base: String,
    url: String,
    token: Secret,
}

impl Client {
    /// `url`: `http://host[:port][/base]`; the local API speaks plain HTTP only.
    pub fn new(url: &str, token: Secret) -> Result<Client, Failure> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            Failure::Usage(format!(
                "--url must start with http:// (the local API is plain HTTP), got `{url}`"
            ))
        })?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || base.contains(['?', '#']) {
            return Err(Failure::Usage(format!(
                "--url must be http://HOST[:PORT][/PATH], got `{url}`"
            )));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            authority,
            base: base.to_owned(),
            url: url.to_owned(),
            token,
        })
    }

    /// One request; a non-2xx answer becomes its [`Failure`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response<Incoming>, Failure> {
        let unreachable = |reason: String| Failure::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection's driver; it ends with the response body.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| Failure::Auth("the token holds characters a header cannot".into()))?;
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/json, text/event-stream");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(payload))
            .map_err(|e| Failure::Usage(format!("cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Protocol(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = read_limited(response.into_body(), MAX_JSON).await?;
        Err(Failure::from_answer(status, &body))
    }

    /// A request answered with JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, Failure> {
        let response = self.send(method, path, body).await?;
        let bytes = read_limited(response.into_body(), MAX_JSON).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Protocol(format!("the answer is not JSON: {e}")))
    }

    /// A request answered with server-sent events.
    pub async fn events(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Events, Failure> {
        let response = self.send(method, path, body).await?;
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(Failure::Protocol(
                "expected server-sent events (text/event-stream)".into(),
            ));
        }
        Ok(Events {
            body: response.into_body(),
            parser: SseParser::default(),
        })
    }
}

async fn read_limited(mut body: Incoming, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Protocol(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(Failure::Protocol(format!(
                    "the answer is larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:`; `message` when the event names none (as browsers do).
    pub name: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Result<serde_json::Value, Failure> {
        serde_json::from_str(&self.data).map_err(|e| {
            Failure::Protocol(format!("the `{}` event's data is not JSON: {e}", self.name))
        })
    }
}

/// Events as they arrive on a response body.
pub struct Events {
    body: Incoming,
    parser: SseParser,
}

impl Events {
    /// The next event; `None` when the agent ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, Failure> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.parser.push(data)?;
                    }
                }
                Some(Err(e)) => return Err(Failure::Protocol(e.to_string())),
                None => return Ok(None),
            }
        }
    }
}

/// An event bigger than this is not the agent's (its chunks are at most 256 KiB, base64'd).
const MAX_EVENT: usize = 4 << 20;

/// The `text/event-stream` format, fed with bytes as they arrive: events end at a blank line
/// (`\n`, `\r\n` or `\r` line ends), `:` starts a comment, `data:` lines are joined.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, data: &[u8]) -> Result<(), Failure> {
        if self.buf.len() + data.len() > MAX_EVENT + 2 {
            return Err(Failure::Protocol(format!(
                "an event larger than {MAX_EVENT} bytes"
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete event, if the buffer holds one. Blocks of comments only are skipped.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let (end, next) = block_end(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..next).take(end).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut name, mut data, mut any) = (None, Vec::new(), false);
            for line in text.split(['\n', '\r']) {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => {
                        name = Some(value.to_owned());
                        any = true;
                    }
                    "data" => {
                        data.push(value.to_owned());
                        any = true;
                    }
                    _ => {}
                }
            }
            if any {
                return Some(Event {
                    name: name.unwrap_or_else(|| "message".into()),
                    data: data.join("\n"),
                });
            }
        }
    }
}

/// Where the first block ends (the index of its blank line) and where the next begins.
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some((i, i + sep.len()));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c).unwrap();
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b"event:started\ndata:{\"pid\":1}\n\n: keep-alive\n\nevent: stdout\ndata: {\"data\":\"a\"}\n\n";
        let whole = events(&[stream]);
        assert_eq!(
            whole,
            [
                Event {
                    name: "started".into(),
                    data: "{\"pid\":1}".into()
                },
                Event {
                    name: "stdout".into(),
                    data: "{\"data\":\"a\"}".into()
                },
            ]
        );
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(events(&[a, b]), whole, "cut at {cut}");
        }
        // CRLF line ends, several data lines, an event without a name.
        let crlf = events(&[b"data: x\r\ndata: y\r\n\r\n"]);
        assert_eq!(crlf[0].name, "message");
        assert_eq!(crlf[0].data, "x\ny");
    }

    #[test]
    fn an_incomplete_event_waits_and_a_huge_one_is_refused() {
        let mut p = SseParser::default();
        p.push(b"event: exit\ndata: {}\n").unwrap();
        assert_eq!(p.next_event(), None);
        p.push(b"\n").unwrap();
        assert_eq!(p.next_event().unwrap().name, "exit");
        assert!(p.push(&vec![b'x'; MAX_EVENT + 10]).is_err());
    }

    #[test]
    fn urls_and_error_answers() {
        let t = || Secret::new("t");
        let c = Client::new("http://127.0.0.1:30000", t()).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.base.as_str()),
            ("127.0.0.1:30000", "")
        );
        let c = Client::new("http://localhost/agent/", t()).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.base.as_str()),
            ("localhost:80", "/agent")
        );
        let c = Client::new("http://[::1]:8/", t()).unwrap();
        assert_eq!(c.authority, "[::1]:8");
        for bad in [
            "https://x",
            "x:1",
            "http://",
            "http://u:p@h:1",
            "http://h:1/?q",
        ] {
            let e = Client::new(bad, t()).err().unwrap();
            assert_eq!(e.exit_code(), 64, "{bad}");
        }
        let denied = Failure::from_answer(
            StatusCode::FORBIDDEN,
            br#"{"success":false,"error":"powers off","code":"denied","rule":"power"}"#,
        );
        assert!(matches!(&denied, Failure::Denied { rule, .. } if rule == "power"));
        assert_eq!(denied.exit_code(), 77);
        assert_eq!(
            Failure::from_answer(StatusCode::UNAUTHORIZED, b"{}").exit_code(),
            67
        );
        assert_eq!(
            Failure::from_answer(StatusCode::NOT_FOUND, b"not json").exit_code(),
            66
        );
        let codes: std::collections::BTreeSet<u8> = [
            Failure::Usage(String::new()),
            Failure::BadRequest(String::new()),
            Failure::NotFound(String::new()),
            Failure::Auth(String::new()),
            Failure::Unavailable(String::new()),
            Failure::Agent(String::new()),
            Failure::Busy(String::new()),
            Failure::Protocol(String::new()),
            Failure::Forbidden(String::new()),
        ]
        .iter()
        .map(Failure::exit_code)
        .collect();
        assert_eq!(codes.len(), 9, "{codes:?}");
    }
}
