//! The MCP readiness probe (`dtma::docker::ready`) against real servers on 127.0.0.1: the test
//! MCP server (`dtma-test-mcp`) as a child process in each mode, and scripted TCP servers for
//! what it does not do (SSE answers, refused DELETE, broken answers, silence).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtma::docker::ready::{self, Handshake, Method, NotReady, Step};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: a probe's timeout is not what these tests measure (except the silent server's).
const TIMEOUT: Duration = Duration::from_secs(20);
/// Ports picked then handed to the child can be taken in between: a few fresh tries.
const START_ATTEMPTS: u32 = 5;
/// The server prints its `listening on` line among its first few lines.
const MAX_START_LINES: usize = 20;

/// `dtma-test-mcp` as a child process, killed when dropped.
struct McpChild {
    child: Child,
    addr: SocketAddr,
    /// Held so the child's stdout stays open (a closed pipe would fail its prints).
    _stdout: BufReader<ChildStdout>,
}

impl McpChild {
    fn start(mode: &str) -> McpChild {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match McpChild::try_start(mode) {
                Ok(c) => return c,
                Err(e) => failures.push(e),
            }
        }
        panic!("dtma-test-mcp did not start in {mode} mode: {failures:#?}");
    }

    /// Start on a free port and wait for the `listening on` line: once it is printed the
    /// socket is bound, so no polling is needed.
    fn try_start(mode: &str) -> Result<McpChild, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dtma-test-mcp"))
            .env("MCP_PORT", port.to_string())
            .env("MCP_MODE", mode)
            .env_remove("MCP_PATH")
            .env_remove("MCP_DELAY_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout pipe")?);
        let mut line = String::new();
        for _ in 0..MAX_START_LINES {
            line.clear();
            let n = stdout.read_line(&mut line).map_err(|e| e.to_string())?;
            if n == 0 {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!("exited before listening ({status})"));
            }
            if line.contains("listening on") {
                return Ok(McpChild {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    _stdout: stdout,
                });
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("no `listening on` line in {MAX_START_LINES} lines"))
    }

    /// The legacy session counts the server keeps (`GET /_dtma/sessions`).
    fn sessions(&self) -> Value {
        let mut tcp = TcpStream::connect(self.addr).expect("connect for the session counts");
        write!(
            tcp,
            "GET /_dtma/sessions HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("send");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).expect("read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head");
        serde_json::from_slice(&raw[split + 4..]).expect("JSON counts")
    }
}

impl Drop for McpChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_discover_server_is_ready_with_server_discover() {
    let server = McpChild::start("discover");
    let handshake = ready::probe(server.addr, "/mcp", TIMEOUT)
        .await
        .expect("ready");
    assert_eq!(
        handshake,
        Handshake {
            method: Method::Discover,
            revision: "2026-07-28".to_owned(),
            server_name: Some("dtma-test-mcp".to_owned()),
        }
    );
    ready::ping(server.addr, "/mcp", Method::Discover, TIMEOUT)
        .await
        .expect("alive");
}

#[tokio::test]
async fn a_legacy_server_is_ready_with_initialize_and_its_session_is_deleted() {
    let server = McpChild::start("legacy");
    let handshake = ready::probe(server.addr, "/mcp", TIMEOUT)
        .await
        .expect("ready");
    assert_eq!(handshake.method, Method::Initialize);
    assert_eq!(handshake.revision, "2025-11-25");
    assert_eq!(handshake.server_name.as_deref(), Some("dtma-test-mcp"));
    assert_eq!(
        server.sessions(),
        json!({"opened": 1, "initialized": 1, "ended": 1, "open": 0})
    );

    // The liveness check opens, uses and ends a session of its own (the ping needs one: the
    // test server refuses it without a session).
    ready::ping(server.addr, "/mcp", Method::Initialize, TIMEOUT)
        .await
        .expect("alive");
    assert_eq!(
        server.sessions(),
        json!({"opened": 2, "initialized": 2, "ended": 2, "open": 0})
    );

    // The era is not probed again: a legacy server checked as a modern one is not alive.
    let err = ready::ping(server.addr, "/mcp", Method::Discover, TIMEOUT)
        .await
        .expect_err("server/discover is unknown to a legacy server");
    assert!(
        matches!(
            err,
            NotReady::Rpc {
                step: Step::Discover,
                code: -32601,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_http_server_that_speaks_no_json_rpc_is_not_ready() {
    let server = McpChild::start("http-only");
    let err = ready::probe(server.addr, "/mcp", TIMEOUT)
        .await
        .expect_err("not an MCP server");
    assert!(
        matches!(
            err,
            NotReady::NotJsonRpc {
                step: Step::Discover,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("not a JSON-RPC response"), "{text}");
    assert!(text.contains(r#""status":"ok""#), "the excerpt: {text}");
}

#[tokio::test]
async fn a_wrong_path_on_a_legacy_server_fails_both_handshakes() {
    let server = McpChild::start("legacy");
    let err = ready::probe(server.addr, "/other", TIMEOUT)
        .await
        .expect_err("nothing on /other");
    let NotReady::Legacy {
        discover,
        initialize,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(matches!(**discover, NotReady::Status { status: 404, .. }));
    assert!(matches!(
        **initialize,
        NotReady::Status {
            step: Step::Initialize,
            status: 404,
            ..
        }
    ));
    assert!(err.to_string().contains("no such path"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_connection_refused() {
    // A bound socket that never listens: connecting to it is refused, and no other process
    // can take the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let err = ready::probe(addr, "/mcp", TIMEOUT)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, NotReady::Refused { addr: a } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains("connection refused"), "{err}");
    let err = ready::ping(addr, "/mcp", Method::Initialize, TIMEOUT)
        .await
        .expect_err("refused");
    assert!(matches!(err, NotReady::Refused { .. }), "{err:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads and holds every connection, never writes.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            held.push(sock);
        }
    });
    let after = Duration::from_millis(300);
    let err = ready::probe(addr, "/mcp", after).await.expect_err("silent");
    assert!(
        matches!(
            err,
            NotReady::Timeout {
                step: Step::Discover,
                after: a,
                ..
            } if a == after
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scripted servers
// ---------------------------------------------------------------------------------------------

/// One request as a scripted server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The JSON-RPC method of a POST, `DELETE` for a DELETE.
    fn rpc(&self) -> &str {
        if self.method == "POST" {
            self.body["method"].as_str().unwrap_or("?")
        } else {
            &self.method
        }
    }
}

/// A canned answer; `keep_open` holds the connection after it (no end of body).
struct Canned {
    bytes: Vec<u8>,
    keep_open: bool,
}

fn json_answer(status: u16, extra_headers: &str, body: &Value) -> Canned {
    let body = body.to_string();
    Canned {
        bytes: format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra_headers}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        keep_open: false,
    }
}

fn text_answer(status: u16, body: &str) -> Canned {
    Canned {
        bytes: format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nX-Secret-Header: hunter2\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        keep_open: false,
    }
}

/// An event stream that is never ended by the server: the probe must stop at the response.
fn sse_answer(extra_headers: &str, stream: &str) -> Canned {
    Canned {
        bytes: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{extra_headers}\
             Cache-Control: no-cache\r\n\r\n{stream}"
        )
        .into_bytes(),
        keep_open: true,
    }
}

type Script = Arc<dyn Fn(&Seen) -> Canned + Send + Sync>;

/// A TCP server on 127.0.0.1:0 answering each request from `script`; records what it saw.
async fn scripted(script: Script) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let script = script.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                log.lock().unwrap().push(req.clone());
                let answer = script(&req);
                let _ = sock.write_all(&answer.bytes).await;
                let _ = sock.flush().await;
                if answer.keep_open {
                    // Until the client goes away.
                    let mut buf = [0u8; 1024];
                    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, seen)
}

/// A request head and its Content-Length body (test code: the client is ours).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let method = lines.next()?.split_whitespace().next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Seen {
        method,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[tokio::test]
async fn a_discover_answer_in_an_open_event_stream_is_read() {
    let (addr, seen) = scripted(Arc::new(|req: &Seen| {
        let id = &req.body["id"];
        let answer = result(
            id,
            json!({"resultType": "complete", "supportedVersions": ["2026-07-28"],
                   "capabilities": {}, "serverInfo": {"name": "sse-server"}}),
        );
        sse_answer(
            "",
            &format!(
                ": keep-alive\r\n\r\n\
                 data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{}}}}\r\n\r\n\
                 event: message\r\ndata: {answer}\r\n\r\n"
            ),
        )
    }))
    .await;
    let handshake = ready::probe(addr, "/mcp", TIMEOUT).await.expect("ready");
    assert_eq!(handshake.method, Method::Discover);
    assert_eq!(handshake.server_name.as_deref(), Some("sse-server"));

    // The request follows the 2026-07-28 transport: version in header and `_meta`, method in
    // `Mcp-Method`, both content types accepted.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.header("mcp-protocol-version"), Some("2026-07-28"));
    assert_eq!(req.header("mcp-method"), Some("server/discover"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.header("accept"),
        Some("application/json, text/event-stream")
    );
    assert_eq!(
        req.body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
    assert_eq!(req.body["id"], 1);
}

/// A legacy server that answers `server/discover` with a bare 404, `initialize` in an event
/// stream, and refuses DELETE: ready all the same.
#[tokio::test]
async fn a_legacy_server_that_refuses_delete_is_ready() {
    let (addr, seen) = scripted(Arc::new(|req: &Seen| match req.rpc() {
        "server/discover" => text_answer(404, "Not Found"),
        "initialize" => {
            let answer = result(
                &req.body["id"],
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "serverInfo": {"name": "old"}}),
            );
            sse_answer("Mcp-Session-Id: s-123\r\n", &format!("data: {answer}\n\n"))
        }
        "notifications/initialized" => Canned {
            bytes: b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
            keep_open: false,
        },
        _ => text_answer(405, "Method Not Allowed"),
    }))
    .await;
    let handshake = ready::probe(addr, "/mcp", TIMEOUT).await.expect("ready");
    assert_eq!(handshake.method, Method::Initialize);
    assert_eq!(handshake.revision, "2025-06-18");

    let seen = seen.lock().unwrap().clone();
    let steps: Vec<&str> = seen.iter().map(Seen::rpc).collect();
    assert_eq!(
        steps,
        [
            "server/discover",
            "initialize",
            "notifications/initialized",
            "DELETE"
        ]
    );
    // `initialize` carries the version in its body only; later messages carry the one the
    // server chose, and the session.
    assert_eq!(seen[1].header("mcp-protocol-version"), None);
    assert_eq!(seen[1].body["params"]["protocolVersion"], "2025-11-25");
    assert_eq!(seen[1].body["params"]["clientInfo"]["name"], "dtma");
    for later in &seen[2..] {
        assert_eq!(later.header("mcp-session-id"), Some("s-123"));
        assert_eq!(later.header("mcp-protocol-version"), Some("2025-06-18"));
    }
}

#[tokio::test]
async fn json_rpc_errors_on_both_methods_are_reported_together() {
    let (addr, _) = scripted(Arc::new(|req: &Seen| match req.rpc() {
        "server/discover" => json_answer(200, "", &error(&req.body["id"], -32601, "no discover")),
        _ => json_answer(200, "", &error(&req.body["id"], -32603, "database down")),
    }))
    .await;
    let err = ready::probe(addr, "/mcp", TIMEOUT)
        .await
        .expect_err("errors");
    let NotReady::Legacy {
        discover,
        initialize,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(matches!(**discover, NotReady::Rpc { code: -32601, .. }));
    assert!(matches!(
        **initialize,
        NotReady::Rpc {
            step: Step::Initialize,
            code: -32603,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("-32601") && text.contains("no discover") && text.contains("database down"),
        "{text}"
    );
}

#[tokio::test]
async fn a_modern_refusal_does_not_fall_back() {
    let (addr, seen) = scripted(Arc::new(|req: &Seen| {
        json_answer(
            400,
            "",
            &json!({"jsonrpc": "2.0", "id": req.body["id"], "error": {
                "code": -32022, "message": "Unsupported protocol version",
                "data": {"supported": ["2027-01-01"], "requested": "2026-07-28"}}}),
        )
    }))
    .await;
    let err = ready::probe(addr, "/mcp", TIMEOUT)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, NotReady::Modern { code: -32022, .. }),
        "{err:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "no initialize was sent");
}

#[tokio::test]
async fn an_answer_for_another_id_is_not_ready() {
    let (addr, _) = scripted(Arc::new(|_: &Seen| {
        json_answer(
            200,
            "",
            &result(&json!(7), json!({"supportedVersions": ["2026-07-28"]})),
        )
    }))
    .await;
    let err = ready::probe(addr, "/mcp", TIMEOUT)
        .await
        .expect_err("wrong id");
    assert!(
        matches!(&err, NotReady::WrongId { expected: 1, got, .. } if got == "7"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_server_error_is_reported_with_a_short_body_excerpt_and_no_headers() {
    let (addr, _) = scripted(Arc::new(|_: &Seen| {
        text_answer(503, &format!("starting up {}", "x".repeat(1000)))
    }))
    .await;
    let err = ready::probe(addr, "/mcp", TIMEOUT).await.expect_err("503");
    let NotReady::Status {
        status: 503,
        excerpt,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(excerpt.starts_with("starting up x"), "{excerpt}");
    assert!(excerpt.chars().count() <= 200, "{}", excerpt.len());
    let text = err.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("Secret"),
        "{text}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_not_ready() {
    let (addr, _) = scripted(Arc::new(|_: &Seen| text_answer(200, "<html>hello</html>"))).await;
    let err = ready::probe(addr, "/mcp", TIMEOUT).await.expect_err("html");
    assert!(
        matches!(&err, NotReady::NotJson { status: 200, excerpt, .. } if excerpt == "<html>hello</html>"),
        "{err:?}"
    );
}
