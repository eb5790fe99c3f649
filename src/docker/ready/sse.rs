//! Event-stream answers: reading SSE events until the one that carries the JSON-RPC response.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::http::{MAX_BODY, Payload, ReadError};
use super::{NotReady, Step, excerpt};

/// Read SSE events until one carries a JSON-RPC response; notifications and server requests
/// before it are skipped. Reading stops there: the stream may stay open.
pub(super) async fn read_event_stream(
    step: Step,
    body: &mut Incoming,
) -> Result<Payload, ReadError> {
    let mut decoder = SseDecoder::default();
    let mut seen = 0usize;
    let mut ended = false;
    while !ended {
        let chunk = match body.frame().await {
            None => {
                ended = true;
                decoder.finish()
            }
            Some(frame) => {
                let frame = frame.map_err(|e| ReadError::Http(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                seen += data.len();
                if seen > MAX_BODY {
                    return Err(ReadError::NotReady(NotReady::TooLarge {
                        step,
                        limit: MAX_BODY,
                    }));
                }
                decoder.push(&data)
            }
        };
        for event in chunk {
            if let Some(payload) = event_payload(&event) {
                return Ok(payload);
            }
        }
    }
    Ok(Payload::NoResponse)
}

/// `Some` when the event ends the wait: a JSON-RPC response, or data that is not a JSON-RPC
/// message at all. `None` for events to skip (other event types, notifications, requests).
fn event_payload(event: &SseEvent) -> Option<Payload> {
    if !(event.kind.is_empty() || event.kind == "message") {
        return None;
    }
    let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
        return Some(Payload::NotJson(excerpt(event.data.as_bytes())));
    };
    match value.as_object() {
        Some(obj) if obj.contains_key("method") => None,
        _ => Some(Payload::Json(value)),
    }
}

/// One dispatched SSE event: its type (empty for the default) and its data lines joined.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    kind: String,
    data: String,
}

/// The event-stream format of the HTML standard, for what a JSON-RPC stream uses: `data:` and
/// `event:` fields, comments, and CRLF, LF or CR line ends (split anywhere across chunks).
/// `id:` and `retry:` are ignored (MCP streams are not resumed here).
#[derive(Default)]
struct SseDecoder {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF that starts the next one is the same line end.
    after_cr: bool,
    kind: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// At the end of the stream. The standard drops an event without its closing blank line;
    /// a server that closes right after its last `data:` line still gave its answer, so a
    /// complete pending line and event are dispatched.
    fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            events.extend(self.line_done(&line));
        }
        events.extend(self.line_done(b""));
        events
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let kind = std::mem::take(&mut self.kind);
            let data = std::mem::take(&mut self.data);
            return std::mem::take(&mut self.has_data).then_some(SseEvent { kind, data });
        }
        if line.starts_with(b":") {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.kind = value.to_owned(),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(d.push(c));
        }
        out.extend(d.finish());
        out
    }

    fn ev(kind: &str, data: &str) -> SseEvent {
        SseEvent {
            kind: kind.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn sse_events_split_anywhere_with_any_line_end() {
        let stream: &[u8] = b": keep-alive\r\nevent: message\r\ndata: {\"a\":\r\ndata:1}\r\n\r\nid: 7\ndata: x\n\ndata: y\r\rretry: 5\n\n";
        let whole = events(&[stream]);
        assert_eq!(
            whole,
            vec![ev("message", "{\"a\":\n1}"), ev("", "x"), ev("", "y")]
        );
        // Byte by byte: a CR at the end of one chunk and LF at the start of the next are one
        // line end, not an empty line.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }

    #[test]
    fn sse_event_without_blank_line_at_eof_is_kept() {
        assert_eq!(events(&[b"data: {}\n"]), vec![ev("", "{}")]);
        assert_eq!(events(&[b"data: {}"]), vec![ev("", "{}")]);
        assert_eq!(events(&[b"event: x\n\n: only a comment\n"]), vec![]);
    }

    #[test]
    fn notifications_in_a_stream_are_skipped() {
        let note = ev("", r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#);
        assert!(event_payload(&note).is_none());
        assert!(event_payload(&ev("endpoint", "/messages?x=1")).is_none());
        assert!(matches!(
            event_payload(&ev("", r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
            Some(Payload::Json(_))
        ));
        assert!(matches!(
            event_payload(&ev("message", "not json")),
            Some(Payload::NotJson(_))
        ));
    }
}
