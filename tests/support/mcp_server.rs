//! `dtma-test-mcp`: a tiny MCP server that the Docker tests put in a locally built image
//! (`tests/common/docker.rs`). It is not part of the agent. Plain std: one thread per
//! connection, one JSON-RPC message per HTTP POST (the MCP "streamable HTTP" transport
//! answered with `application/json`, never SSE), `Connection: close`.
//!
//! Configured by environment variables:
//! - `MCP_PORT`: listen on 127.0.0.1:PORT (containers run with `--network host`); required
//!   except in `exit` mode.
//! - `MCP_PATH`: the endpoint path, default `/mcp`.
//! - `MCP_MODE` (default `legacy`):
//!   - `discover`: the 2026-07-28 revision: `server/discover` and `ping`, no session;
//!   - `legacy`: the 2025-11-25 revision: `initialize` opens a session (`Mcp-Session-Id`),
//!     `notifications/initialized` gets 202, `DELETE` ends the session, `ping` needs a session,
//!     `server/discover` gets -32601 (method not found);
//!   - `http-only`: every request gets 200 with a JSON body that is not JSON-RPC (a readiness
//!     check that accepts "any HTTP answer", or "any JSON", must fail on it);
//!   - `exit`: prints a few lines to stdout and stderr, then exits with `MCP_EXIT_CODE`
//!     (default 1).
//! - `MCP_DELAY_MS`: sleep this long before listening (or, in `exit` mode, before exiting).
//! - `MCP_LOG_EVERY_MS` (+ `MCP_LOG_PREFIX`, default `log`): a thread prints a line to stdout
//!   every interval, n = 1, 2, ...; what the line holds depends on `MCP_LOG_MODE`:
//!   - `count` (the default): `<prefix> <n>`; every 10th line also to stderr;
//!   - `stamp`: `<prefix> <n> <ns>`, stdout only, where `<ns>` is `CLOCK_REALTIME` in Unix
//!     nanoseconds read just before the write (a reader on the same host measures the delay).
//! - `MCP_LOG_BYTES=N` (+ `MCP_LOG_LINE_BYTES`, default 100): on each SIGUSR1 (`docker kill -s
//!   USR1`), a burst k = 1, 2, ... to stdout: a line `<prefix> start <k> <ns>`, then exactly N
//!   bytes of lines `<prefix> <k>.<n> xxx...` (each `MCP_LOG_LINE_BYTES` long with its newline,
//!   the last one shorter if needed) as fast as the pipe takes them, then a line `<prefix> done
//!   <k> <N> <ns>` (`<ns>` as above: before the first byte, after the last), and idle. A burst
//!   starts on a signal, not at start, so that a reader can attach first (a follow from the
//!   start of a long log is not always possible: the agent's `tail` is capped). The ticker of
//!   `MCP_LOG_EVERY_MS` waits while a burst writes (both hold stdout's lock).
//! - `MCP_ALLOC_MB`: allocate and touch this many MiB at start and hold them (OOM tests).
//!
//! `GET /_dtma/sessions` (not in `http-only` mode) answers the `legacy` session counts as
//! `{"opened", "initialized", "ended", "open"}`, so a test can see that a client sent
//! `notifications/initialized` in its session and ended it with `DELETE`.
//!
//! SIGTERM and SIGINT end the process at once with status 0, so `docker stop` does not wait
//! for its kill timeout (as PID 1 in a container, a process without a handler ignores them);
//! SIGUSR1 starts a burst (above), or is ignored.
//! Bad settings exit with status 64 and a message on stderr.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

const NAME: &str = "dtma-test-mcp";
const VERSION: &str = "1";
/// The revision `legacy` mode speaks (initialize handshake, sessions).
const LEGACY_VERSION: &str = "2025-11-25";
/// The revision `discover` mode speaks (stateless, `server/discover`).
const DISCOVER_VERSION: &str = "2026-07-28";

/// Where the session counts are served.
const SESSIONS_PATH: &str = "/_dtma/sessions";

/// Longest `MCP_LOG_LINE_BYTES`; bursts are written in chunks of about this many bytes.
const MAX_LINE: usize = 1 << 20;
const BURST_CHUNK: usize = 64 << 10;

const MAX_HEAD: u64 = 64 << 10;
const MAX_BODY: usize = 1 << 20;
/// A client that stops sending mid-request must not hold a thread forever.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Discover,
    Legacy,
    HttpOnly,
    Exit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Discover => "discover",
            Mode::Legacy => "legacy",
            Mode::HttpOnly => "http-only",
            Mode::Exit => "exit",
        }
    }
}

/// What the `MCP_LOG_EVERY_MS` lines hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogMode {
    Count,
    Stamp,
}

#[derive(Debug)]
struct Settings {
    port: Option<u16>,
    path: String,
    mode: Mode,
    exit_code: i32,
    delay: Duration,
    log_every: Option<Duration>,
    log_prefix: String,
    log_mode: LogMode,
    burst_bytes: Option<u64>,
    line_bytes: usize,
    alloc_mb: usize,
}

fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not UTF-8")),
    }
}

fn number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match var(name)? {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a valid number")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let mode = match var("MCP_MODE")?.as_deref() {
            None | Some("legacy") => Mode::Legacy,
            Some("discover") => Mode::Discover,
            Some("http-only") => Mode::HttpOnly,
            Some("exit") => Mode::Exit,
            Some(other) => {
                return Err(format!(
                    "MCP_MODE={other:?}: expected discover, legacy, http-only or exit"
                ));
            }
        };
        let port = number::<u16>("MCP_PORT")?;
        if mode != Mode::Exit && port.is_none_or(|p| p == 0) {
            return Err("MCP_PORT (1..=65535) is required".to_owned());
        }
        let path = var("MCP_PATH")?.unwrap_or_else(|| "/mcp".to_owned());
        if !path.starts_with('/') {
            return Err(format!("MCP_PATH={path:?} must start with '/'"));
        }
        let log_every = number::<u64>("MCP_LOG_EVERY_MS")?;
        if log_every == Some(0) {
            return Err("MCP_LOG_EVERY_MS must be at least 1".to_owned());
        }
        let log_mode = match var("MCP_LOG_MODE")?.as_deref() {
            None | Some("count") => LogMode::Count,
            Some("stamp") => LogMode::Stamp,
            Some(other) => {
                return Err(format!("MCP_LOG_MODE={other:?}: expected count or stamp"));
            }
        };
        let line_bytes = number::<usize>("MCP_LOG_LINE_BYTES")?.unwrap_or(100);
        if !(1..=MAX_LINE).contains(&line_bytes) {
            return Err(format!("MCP_LOG_LINE_BYTES must be 1..={MAX_LINE}"));
        }
        Ok(Settings {
            port,
            path,
            mode,
            exit_code: number("MCP_EXIT_CODE")?.unwrap_or(1),
            delay: Duration::from_millis(number("MCP_DELAY_MS")?.unwrap_or(0)),
            log_every: log_every.map(Duration::from_millis),
            log_prefix: var("MCP_LOG_PREFIX")?.unwrap_or_else(|| "log".to_owned()),
            log_mode,
            burst_bytes: number("MCP_LOG_BYTES")?,
            line_bytes,
            alloc_mb: number("MCP_ALLOC_MB")?.unwrap_or(0),
        })
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(64);
        }
    };
    // Bursts are asked for by SIGUSR1 (see `take_signals`).
    let (burst_tx, burst_rx) = std::sync::mpsc::channel::<()>();
    let bursts = settings.burst_bytes.map(|_| burst_tx);
    if let Err(e) = take_signals(bursts) {
        eprintln!("{NAME}: cannot wait for signals: {e}");
        return ExitCode::from(70);
    }
    println!("{NAME}: starting in {} mode", settings.mode.name());

    // Held until the process ends: the memory stays charged to the container.
    let ballast = match allocate(settings.alloc_mb) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(71);
        }
    };
    if let Some(every) = settings.log_every {
        let (prefix, mode) = (settings.log_prefix.clone(), settings.log_mode);
        std::thread::spawn(move || log_forever(&prefix, mode, every));
    }
    if let Some(bytes) = settings.burst_bytes {
        let (prefix, line) = (settings.log_prefix.clone(), settings.line_bytes);
        std::thread::spawn(move || {
            for k in 1u64.. {
                if burst_rx.recv().is_err() {
                    return;
                }
                burst(&prefix, k, bytes, line);
            }
        });
    }
    std::thread::sleep(settings.delay);

    if settings.mode == Mode::Exit {
        println!("{NAME}: exit mode");
        println!("{NAME}: doing nothing");
        eprintln!("{NAME}: exiting with status {}", settings.exit_code);
        let _ = std::io::stdout().flush();
        std::process::exit(settings.exit_code);
    }
    let port = settings.port.unwrap_or_default();
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{NAME}: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::from(69);
        }
    };
    println!(
        "{NAME}: listening on http://127.0.0.1:{port}{}",
        settings.path
    );
    let server = Arc::new(Server {
        mode: settings.mode,
        path: settings.path,
        sessions: Mutex::default(),
        counts: Mutex::default(),
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let server = server.clone();
        std::thread::spawn(move || server.serve(conn));
    }
    std::hint::black_box(&ballast);
    ExitCode::SUCCESS
}

/// Block SIGTERM, SIGINT and SIGUSR1 in every thread and take them in one thread with
/// `sigwait` (which needs no signal handler, so no unsafe code): the first two end the
/// process, SIGUSR1 asks `bursts` for a burst (ignored without `MCP_LOG_BYTES`). Call before
/// spawning threads.
fn take_signals(bursts: Option<std::sync::mpsc::Sender<()>>) -> nix::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGUSR1);
    set.thread_block()?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if sig == Signal::SIGUSR1 {
                match &bursts {
                    Some(tx) => {
                        let _ = tx.send(());
                    }
                    None => eprintln!("{NAME}: SIGUSR1 ignored (no MCP_LOG_BYTES)"),
                }
                continue;
            }
            println!("{NAME}: {sig}, exiting");
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
    });
    Ok(())
}

fn allocate(mb: usize) -> Result<Vec<u8>, String> {
    if mb == 0 {
        return Ok(Vec::new());
    }
    let bytes = mb
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("MCP_ALLOC_MB={mb} is too large"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(bytes)
        .map_err(|e| format!("cannot allocate {mb} MiB: {e}"))?;
    // Writing every byte touches every page, so the memory is really charged.
    v.resize(bytes, 0xa5);
    std::hint::black_box(&v);
    println!("{NAME}: allocated {mb} MiB");
    Ok(v)
}

/// `CLOCK_REALTIME` in Unix nanoseconds (0 before 1970).
fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn log_forever(prefix: &str, mode: LogMode, every: Duration) {
    for n in 1u64.. {
        {
            let mut out = std::io::stdout().lock();
            let _ = match mode {
                LogMode::Count => writeln!(out, "{prefix} {n}"),
                LogMode::Stamp => writeln!(out, "{prefix} {n} {}", realtime_ns()),
            };
            let _ = out.flush();
        }
        if mode == LogMode::Count && n % 10 == 0 {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{prefix} {n}");
            let _ = err.flush();
        }
        std::thread::sleep(every);
    }
}

/// Burst `k`: the `start` line, exactly `bytes` bytes of `line`-byte lines written in chunks of
/// whole lines (one `write` each: stdout's line buffering passes a chunk ending in a newline
/// straight through), then the `done` line.
fn burst(prefix: &str, k: u64, bytes: u64, line: usize) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{prefix} start {k} {}", realtime_ns()).is_err() {
        return;
    }
    let mut chunk = Vec::with_capacity(BURST_CHUNK + line);
    let (mut left, mut n) = (bytes, 0u64);
    while left > 0 {
        n += 1;
        let len = usize::try_from(left).map_or(line, |l| l.min(line));
        let head = format!("{prefix} {k}.{n} ");
        let text = head.as_bytes();
        let keep = text.len().min(len - 1);
        chunk.extend_from_slice(&text[..keep]);
        chunk.resize(chunk.len() + (len - 1 - keep), b'x');
        chunk.push(b'\n');
        left -= len as u64;
        if chunk.len() >= BURST_CHUNK || left == 0 {
            if out.write_all(&chunk).is_err() {
                return;
            }
            chunk.clear();
        }
    }
    let _ = writeln!(out, "{prefix} done {k} {bytes} {}", realtime_ns());
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    /// Without the query string.
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// `None`: no body and no Content-Type.
    body: Option<(&'static str, Vec<u8>)>,
}

impl Response {
    fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Some(("text/plain", format!("{text}\n").into_bytes())),
        }
    }
    fn json(status: u16, value: &Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Some(("application/json", value.to_string().into_bytes())),
        }
    }
    fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        _ => "Unknown",
    }
}

/// Read one request: request line, headers, and a `Content-Length` body.
fn read_request(conn: &TcpStream) -> Result<Request, Response> {
    let bad = |what: &str| Response::text(400, what);
    // The cap bounds what a client can make us buffer, however it splits its lines.
    let mut reader = BufReader::new(conn.take(MAX_HEAD + MAX_BODY as u64));
    let mut head_len = 0;
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> Result<(), Response> {
        line.clear();
        let n = reader
            .read_line(line)
            .map_err(|_| bad("unreadable request head"))?;
        head_len += n as u64;
        if n == 0 || !line.ends_with('\n') {
            return Err(bad("request head ended early"));
        }
        if head_len > MAX_HEAD {
            return Err(Response::text(413, "request head too large"));
        }
        Ok(())
    };
    next_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    let method = method.to_owned();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        next_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (k, v) = trimmed.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(Response::text(411, "send a Content-Length body"));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(Response::text(413, "body too large"));
    }
    req.body = vec![0; len];
    reader
        .read_exact(&mut req.body)
        .map_err(|_| bad("body shorter than Content-Length"))?;
    Ok(req)
}

fn write_response(mut conn: &TcpStream, resp: &Response) {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((ctype, body)) = &resp.body {
        out.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if resp.status != 204 {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if let Some((_, body)) = &resp.body {
        bytes.extend_from_slice(body);
    }
    let _ = conn.write_all(&bytes);
    let _ = conn.flush();
}

// ---------------------------------------------------------------------------------------------
// MCP
// ---------------------------------------------------------------------------------------------

struct Server {
    mode: Mode,
    path: String,
    /// Open `legacy` sessions (their `Mcp-Session-Id`s).
    sessions: Mutex<HashSet<String>>,
    counts: Mutex<Counts>,
}

/// What `GET /_dtma/sessions` reports.
#[derive(Default)]
struct Counts {
    opened: u64,
    /// `notifications/initialized` received in an open session.
    initialized: u64,
    ended: u64,
}

/// JSON-RPC error codes used here.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;

fn rpc_result(id: &Value, result: Value) -> Response {
    Response::json(200, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn rpc_error(status: u16, id: &Value, code: i64, message: &str) -> Response {
    Response::json(
        status,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
}

/// One decoded JSON-RPC message.
enum Message {
    Request {
        id: Value,
        method: String,
    },
    Notification,
    /// A response to a server request (never sent by this server): accepted and dropped.
    Response,
}

fn decode(body: &[u8]) -> Result<Message, Response> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| rpc_error(400, &Value::Null, PARSE_ERROR, &format!("parse error: {e}")))?;
    let Value::Object(obj) = value else {
        // Batches were removed in 2025-06-18; a bare value is no message either.
        return Err(rpc_error(
            400,
            &Value::Null,
            INVALID_REQUEST,
            "expected one JSON-RPC object",
        ));
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let id = id.unwrap_or(Value::Null);
        return Err(rpc_error(
            400,
            &id,
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    match (obj.get("method").and_then(Value::as_str), id) {
        (Some(method), Some(id)) => Ok(Message::Request {
            id,
            method: method.to_owned(),
        }),
        (Some(_), None) => Ok(Message::Notification),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Message::Response)
        }
        (None, id) => Err(rpc_error(
            400,
            &id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "method missing",
        )),
    }
}

fn server_info() -> Value {
    json!({"name": NAME, "version": VERSION})
}

impl Server {
    fn serve(&self, conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let resp = match read_request(&conn) {
            Ok(req) => self.handle(&req),
            Err(resp) => resp,
        };
        write_response(&conn, &resp);
    }

    fn handle(&self, req: &Request) -> Response {
        if self.mode == Mode::HttpOnly {
            // Any path, any method: an HTTP server that is up, but no MCP server.
            return Response::json(200, &json!({"status": "ok", "service": NAME}));
        }
        if req.method == "GET" && req.path == SESSIONS_PATH {
            let open = self.lock_sessions().len();
            let c = self.lock_counts();
            return Response::json(
                200,
                &json!({"opened": c.opened, "initialized": c.initialized, "ended": c.ended, "open": open}),
            );
        }
        if req.path != self.path {
            return Response::text(404, "no such path");
        }
        match (req.method.as_str(), self.mode) {
            ("POST", _) => {}
            ("DELETE", Mode::Legacy) => return self.end_session(req),
            (_, Mode::Legacy) => {
                // No server-initiated SSE stream is offered (the spec allows 405 for GET).
                return Response::text(405, "POST or DELETE")
                    .with_header("Allow", "POST, DELETE".to_owned());
            }
            _ => return Response::text(405, "POST only").with_header("Allow", "POST".to_owned()),
        }
        let msg = match decode(&req.body) {
            Ok(m) => m,
            Err(resp) => return resp,
        };
        match self.mode {
            Mode::Legacy => self.legacy(req, msg),
            _ => discover(msg),
        }
    }

    /// 2025-11-25: `initialize` opens a session; everything else but unknown methods needs it.
    fn legacy(&self, req: &Request, msg: Message) -> Response {
        let (id, method) = match msg {
            Message::Request { id, method } => (id, method),
            msg @ (Message::Notification | Message::Response) => {
                return match self.check_session(req, &Value::Null) {
                    Ok(()) => {
                        if matches!(msg, Message::Notification) {
                            self.lock_counts().initialized += 1;
                        }
                        Response::empty(202)
                    }
                    Err(resp) => resp,
                };
            }
        };
        match method.as_str() {
            "initialize" => {
                // The only revision this mode speaks: whatever the client asked for, the
                // answer names it and the client decides (lifecycle, version negotiation).
                let session = format!("{:032x}", fastrand::u128(..));
                self.lock_sessions().insert(session.clone());
                self.lock_counts().opened += 1;
                rpc_result(
                    &id,
                    json!({
                        "protocolVersion": LEGACY_VERSION,
                        "capabilities": {},
                        "serverInfo": server_info(),
                        "instructions": "A test server of the DTMA project: it only answers ping.",
                    }),
                )
                .with_header("Mcp-Session-Id", session)
            }
            "ping" => match self.check_session(req, &id) {
                Ok(()) => rpc_result(&id, json!({})),
                Err(resp) => resp,
            },
            // Includes `server/discover`: a 2026-07-28 client falls back to `initialize` on
            // this error, so it must come before any session check.
            _ => rpc_error(200, &id, METHOD_NOT_FOUND, "method not found"),
        }
    }

    /// Streamable HTTP session rules: no header is 400, an unknown (or ended) session is 404.
    fn check_session(&self, req: &Request, id: &Value) -> Result<(), Response> {
        let Some(session) = req.header("mcp-session-id") else {
            return Err(rpc_error(
                400,
                id,
                INVALID_REQUEST,
                "Mcp-Session-Id header required",
            ));
        };
        if self.lock_sessions().contains(session) {
            Ok(())
        } else {
            Err(rpc_error(404, id, INVALID_REQUEST, "session not found"))
        }
    }

    fn end_session(&self, req: &Request) -> Response {
        if let Err(resp) = self.check_session(req, &Value::Null) {
            return resp;
        }
        if let Some(session) = req.header("mcp-session-id")
            && self.lock_sessions().remove(session)
        {
            self.lock_counts().ended += 1;
        }
        Response::empty(204)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A poisoned set is still a set: a panicking thread never leaves it half-changed.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters: a poisoned lock holds valid numbers.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// 2026-07-28: stateless; `server/discover` and `ping`, nothing else.
fn discover(msg: Message) -> Response {
    let (id, method) = match msg {
        Message::Request { id, method } => (id, method),
        Message::Notification | Message::Response => return Response::empty(202),
    };
    match method.as_str() {
        // The shape of the draft revision's discover page: `supportedVersions`,
        // `capabilities` and `serverInfo` are required; `resultType: "complete"` is shown in
        // its example (how the revision marks a final result) and is harmless to a client
        // that does not know it.
        "server/discover" => rpc_result(
            &id,
            json!({
                "resultType": "complete",
                "supportedVersions": [DISCOVER_VERSION],
                "capabilities": {},
                "serverInfo": server_info(),
            }),
        ),
        "ping" => rpc_result(&id, json!({})),
        _ => rpc_error(200, &id, METHOD_NOT_FOUND, "method not found"),
    }
}
