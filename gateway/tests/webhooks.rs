//! Webhooks end to end: the real gateway, the real agent in-process, and a real HTTP receiver
//! (hyper on 127.0.0.1:0) that answers what each test scripts. Every body received is checked
//! against the `WebhookEvent` schema of openapi.json and its signature against the secret.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use dtma_gateway::config::{Secret, WebhookSettings};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const SECRET: &str = "whsec-test-secret-0123456789";

/// What the receiver answers to one POST.
enum Answer {
    Status(u16),
    /// Hold the answer until the test sends the status.
    Held(oneshot::Receiver<u16>),
}

/// One POST as received.
#[derive(Debug)]
struct Hit {
    headers: hyper::HeaderMap,
    body: Bytes,
    json: Value,
}

impl Hit {
    fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap()
    }
    fn id(&self) -> &str {
        self.json["id"].as_str().unwrap()
    }
}

/// A webhook endpoint: answers from its script (200 once the script is used up).
struct Receiver {
    addr: SocketAddr,
    hits: mpsc::UnboundedReceiver<Hit>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Receiver {
        Receiver::start_with(script, None).await
    }

    /// With `tls`, the receiver speaks https.
    async fn start_with(script: Vec<Answer>, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, hits) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let s = script.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (tx, script, acceptor) = (tx.clone(), s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(TokioIo::new(tcp), tx, script).await,
                        // A client that does not trust the certificate ends the handshake.
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve(TokioIo::new(tls), tx, script).await
                            }
                        }
                    }
                });
            }
        });
        Receiver { addr, hits, script }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/dtma", self.addr)
    }

    /// The next POST, checked against the schema and the signature.
    async fn next(&mut self) -> Hit {
        let hit = within(20, "a webhook", self.hits.recv())
            .await
            .expect("receiver running");
        check(&hit);
        hit
    }

    /// Nothing else arrived (after the gateway has stopped).
    fn assert_empty(&mut self) {
        if let Ok(hit) = self.hits.try_recv() {
            panic!("unexpected webhook: {}", hit.json);
        }
    }
}

/// One connection of the receiver: record each POST, answer from the script.
async fn serve<IO>(io: IO, tx: mpsc::UnboundedSender<Hit>, script: Arc<Mutex<VecDeque<Answer>>>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let tx = tx.clone();
        let script = script.clone();
        async move {
            let (parts, body) = req.into_parts();
            assert_eq!(parts.method, "POST");
            assert_eq!(parts.uri.path(), "/hooks/dtma");
            let body = body.collect().await.unwrap().to_bytes();
            let json = serde_json::from_slice(&body).unwrap();
            let answer = script.lock().unwrap().pop_front();
            let _ = tx.send(Hit {
                headers: parts.headers,
                body,
                json,
            });
            let status = match answer {
                None => 200,
                Some(Answer::Status(s)) => s,
                Some(Answer::Held(rx)) => rx.await.unwrap_or(200),
            };
            let mut resp = hyper::Response::new(Full::new(Bytes::from("{}")));
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// Webhooks to `url` with millisecond backoff.
fn settings(url: String) -> WebhookSettings {
    let mut w = WebhookSettings::new(url, Secret::new(SECRET));
    w.backoff_base = Duration::from_millis(5);
    w.backoff_cap = Duration::from_millis(20);
    w.timeout = Duration::from_secs(5);
    w
}

/// The agent of these tests, without Docker (no MCP tools, so heartbeats change nothing).
async fn agent(id: &str, gw: &Gw) -> Agent {
    let mut c = agent_config(id, token_of(id), gw.url());
    c.docker_socket = "unix:///nonexistent/dtma-test/docker.sock".into();
    Agent::start_with(c).await
}

async fn gateway(w: WebhookSettings) -> Gw {
    Gw::start_with(move |c| c.webhooks = Some(w)).await
}

fn hmac_hex(secret: &str, signed: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Does `Dtma-Signature` verify with `secret`?
fn verifies(hit: &Hit, secret: &str) -> bool {
    let header = hit.headers["dtma-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&hit.body);
    hmac_hex(secret, &signed) == v1
}

fn schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut s = serde_json::json!({"$ref": "#/components/schemas/WebhookEvent"});
    s["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&s).unwrap()
}

fn check(hit: &Hit) {
    assert_eq!(hit.headers["content-type"], "application/json");
    assert!(verifies(hit, SECRET), "signature of {}", hit.json);
    let errors: Vec<String> = schema()
        .iter_errors(&hit.json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{}", hit.json);
}

#[tokio::test]
async fn connect_and_disconnect_are_posted_signed() {
    let mut rx = Receiver::start(vec![]).await;
    let gw = gateway(settings(rx.url())).await;
    let a = agent("a1", &gw).await;

    let up = rx.next().await;
    assert_eq!(up.kind(), "agent.connected");
    assert_eq!(up.json["agent_id"], "a1");
    assert!(up.id().starts_with("evt_"));
    let session = gw.r().control_plane().agent("a1").unwrap().session_id;
    assert_eq!(up.json["data"]["session_id"], session.as_str());
    assert_eq!(up.json["data"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        up.json["data"]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&"exec".into())
    );
    // The signature is over these exact bytes with this secret; another secret fails.
    assert!(verifies(&up, SECRET));
    assert!(!verifies(&up, "whsec-another-secret-0123456789"));
    let t: u64 = up.headers["dtma-signature"].to_str().unwrap()[2..12]
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(t <= now && now - t < 600, "t is the time of signing: {t}");

    a.shutdown().await;
    let down = rx.next().await;
    assert_eq!(down.kind(), "agent.disconnected");
    assert_eq!(down.json["agent_id"], "a1");
    assert_eq!(down.json["data"]["session_id"], session.as_str());
    assert_eq!(down.json["data"]["connected_at"], up.json["at"]);
    assert_ne!(down.id(), up.id());

    let mut stats = gw.r().webhooks().unwrap().stats();
    let s = *within(10, "delivered 2", stats.wait_for(|s| s.delivered == 2))
        .await
        .unwrap();
    assert_eq!((s.enqueued, s.attempts, s.failed, s.dropped), (2, 2, 0, 0));
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_id_and_order_is_kept() {
    // The first attempt is held until the agent has left, so the disconnect is queued behind
    // the connect while the connect is still being retried.
    let (release, held) = oneshot::channel();
    let mut rx = Receiver::start(vec![Answer::Held(held), Answer::Status(500)]).await;
    let gw = gateway(settings(rx.url())).await;
    let a = agent("a1", &gw).await;

    let first = rx.next().await;
    assert_eq!(first.kind(), "agent.connected");
    a.shutdown().await;
    let mut stats = gw.r().webhooks().unwrap().stats();
    within(
        10,
        "the disconnect queued",
        stats.wait_for(|s| s.enqueued == 2),
    )
    .await
    .unwrap();
    release.send(503).unwrap();

    let second = rx.next().await;
    let third = rx.next().await;
    for again in [&second, &third] {
        assert_eq!(again.kind(), "agent.connected");
        assert_eq!(again.id(), first.id(), "a retry is the same event");
        assert_eq!(again.body, first.body, "and the same bytes");
    }
    let next = rx.next().await;
    assert_eq!(
        next.kind(),
        "agent.disconnected",
        "the next event comes after"
    );
    let s = *within(10, "delivered 2", stats.wait_for(|s| s.delivered == 2))
        .await
        .unwrap();
    assert_eq!((s.attempts, s.failed), (4, 0));
    assert!(rx.script.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_429_is() {
    let mut rx = Receiver::start(vec![Answer::Status(400)]).await;
    let gw = gateway(settings(rx.url())).await;
    let a = agent("a1", &gw).await;
    let refused = rx.next().await;
    assert_eq!(refused.kind(), "agent.connected");
    let mut stats = gw.r().webhooks().unwrap().stats();
    within(10, "given up", stats.wait_for(|s| s.failed == 1))
        .await
        .unwrap();

    rx.script.lock().unwrap().push_back(Answer::Status(429));
    a.shutdown().await;
    let limited = rx.next().await;
    assert_eq!(
        limited.kind(),
        "agent.disconnected",
        "the 400 was not retried"
    );
    let again = rx.next().await;
    assert_eq!(again.id(), limited.id(), "429 is retried");
    let s = *within(10, "delivered", stats.wait_for(|s| s.delivered == 1))
        .await
        .unwrap();
    assert_eq!((s.attempts, s.failed), (3, 1));
}

#[tokio::test]
async fn attempts_are_capped() {
    let mut rx = Receiver::start(vec![
        Answer::Status(500),
        Answer::Status(502),
        Answer::Status(503),
    ])
    .await;
    let mut w = settings(rx.url());
    w.max_attempts = 2;
    let gw = gateway(w).await;
    let a = agent("a1", &gw).await;
    let first = rx.next().await;
    let second = rx.next().await;
    assert_eq!(first.id(), second.id());
    a.shutdown().await;
    // The third answer (503) goes to the next event: the connect had its two attempts.
    let next = rx.next().await;
    assert_eq!(next.kind(), "agent.disconnected");
    let mut stats = gw.r().webhooks().unwrap().stats();
    let s = *within(10, "delivered", stats.wait_for(|s| s.delivered == 1))
        .await
        .unwrap();
    assert_eq!((s.failed, s.attempts), (1, 4));
}

/// An endpoint that accepts connections and never answers: the agent side does not notice,
/// and the gateway still stops (after `shutdown_grace`).
#[tokio::test]
async fn a_dead_endpoint_blocks_neither_agents_nor_shutdown() {
    let (_release, held) = oneshot::channel::<u16>();
    let mut rx = Receiver::start(vec![Answer::Held(held)]).await;
    let mut w = settings(rx.url());
    w.timeout = Duration::from_secs(3600);
    w.queue = 2;
    w.shutdown_grace = Duration::from_millis(50);
    let mut gw = gateway(w).await;
    let a = agent("a1", &gw).await;
    assert_eq!(rx.next().await.kind(), "agent.connected");

    // Agents come and go while the first event hangs: the directory follows, the queue keeps
    // the newest two events.
    let stats = gw.r().webhooks().unwrap().stats();
    let queued = |n: u64| {
        let mut stats = stats.clone();
        async move {
            *within(20, "events queued", stats.wait_for(|s| s.enqueued == n))
                .await
                .unwrap()
        }
    };
    a.shutdown().await;
    queued(2).await;
    for i in 0..2 {
        let a = agent("a2", &gw).await;
        queued(3 + 2 * i).await;
        a.shutdown().await;
        queued(4 + 2 * i).await;
    }
    let s = queued(6).await;
    assert_eq!(s.dropped, 3);
    assert_eq!(gw.r().webhooks().unwrap().queued(), 2);
    assert!(!gw.r().control_plane().agent("a1").unwrap().connected);

    gw.stop.cancel();
    let running = gw.running.take().unwrap();
    within(20, "gateway stopped", running.join()).await;
    assert_eq!(stats.borrow().delivered, 0);
    rx.assert_empty();
}

/// An agent driven by hand over a real WebSocket: `hello`, then `status` heartbeats with the
/// tool statuses a test chooses (the real agent's come from Docker).
struct WireAgent {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

impl WireAgent {
    async fn connect(gw: &Gw, id: &str) -> WireAgent {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let addr = gw.r().agent_addr();
        let mut req = gw.url().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token_of(id)).parse().unwrap(),
        );
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let hello = dtma_protocol::AgentMessage::Hello(dtma_protocol::Hello {
            agent_id: id.into(),
            agent_version: "9.9.9-wire".into(),
            boot_id: "boot-wire".into(),
            protocol_version: dtma_protocol::PROTOCOL_VERSION,
            capabilities: vec!["exec".into()],
            streams: Vec::new(),
            max_frame_bytes: 1 << 20,
            sandbox: None,
        });
        ws.send(serde_json::to_string(&hello).unwrap().into())
            .await
            .unwrap();
        let welcome = within(10, "welcome", ws.next()).await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("\"welcome\""));
        WireAgent { ws }
    }

    async fn status(&mut self, tools: Value) {
        use futures_util::SinkExt;
        let status = serde_json::json!({
            "type": "status", "agent_version": "9.9.9-wire", "uptime_s": 1,
            "at": "2025-01-01T00:00:00Z", "load_average": [0.0, 0.0, 0.0],
            "cpu_load_percent": 0.0,
            "memory": {"total_bytes": 1, "used_bytes": 1, "free_bytes": 0, "available_bytes": 0},
            "disk": null, "streams_running": 0, "streams_held": 0, "tool_statuses": tools,
        });
        self.ws.send(status.to_string().into()).await.unwrap();
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn tool(name: &str, on_toolbox: &str, state: &str, server: &str, text: &str) -> Value {
    serde_json::json!({
        "account_tool_instance_id": format!("ati-{name}"),
        "instance_name_on_toolbox": name,
        "status_on_toolbox": on_toolbox,
        "runtime_details": {"container_id": format!("c-{name}"), "image": "mcp:1",
            "state": state, "status": text, "server_state": server},
    })
}

/// Heartbeats through the real engine: a tool appearing and changing health each give one
/// event; heartbeats whose only difference is Docker's status text give none (the events that
/// follow them come next, in order).
#[tokio::test]
async fn mcp_changes_from_heartbeats_are_posted_once_each() {
    let mut rx = Receiver::start(vec![]).await;
    let gw = gateway(settings(rx.url())).await;
    let mut agent = WireAgent::connect(&gw, "a3").await;
    let up = rx.next().await;
    assert_eq!(
        (up.kind(), up.json["data"]["agent_version"].as_str()),
        ("agent.connected", Some("9.9.9-wire"))
    );

    agent.status(serde_json::json!([])).await;
    agent
        .status(serde_json::json!([tool(
            "mcp-a",
            "running",
            "running",
            "starting",
            "Up 1 second"
        )]))
        .await;
    agent
        .status(serde_json::json!([tool(
            "mcp-a",
            "running",
            "running",
            "starting",
            "Up 2 seconds"
        )]))
        .await;
    agent
        .status(serde_json::json!([
            tool("mcp-a", "running", "running", "ready", "Up 3 seconds"),
            tool("mcp-b", "starting", "created", "starting", "Created"),
        ]))
        .await;
    agent
        .status(serde_json::json!([tool(
            "mcp-b", "starting", "created", "starting", "Created"
        )]))
        .await;

    let added = rx.next().await;
    assert_eq!(added.kind(), "agent.mcp_status_changed");
    let c = &added.json["data"]["changes"];
    assert_eq!(c.as_array().unwrap().len(), 1);
    assert_eq!(
        (
            c[0]["change"].as_str(),
            c[0]["instance_name_on_toolbox"].as_str()
        ),
        (Some("added"), Some("mcp-a"))
    );
    assert!(c[0]["before"].is_null());

    let ready = rx.next().await;
    let c = &ready.json["data"]["changes"];
    assert_eq!(c.as_array().unwrap().len(), 2, "{}", ready.json);
    assert_eq!(c[0]["change"], "changed");
    assert_eq!(
        c[0]["before"]["runtime_details"]["server_state"],
        "starting"
    );
    assert_eq!(c[0]["after"]["runtime_details"]["server_state"], "ready");
    assert_eq!(
        (
            c[1]["change"].as_str(),
            c[1]["instance_name_on_toolbox"].as_str()
        ),
        (Some("added"), Some("mcp-b"))
    );
    assert_eq!(ready.json["data"]["tools"].as_array().unwrap().len(), 2);

    let removed = rx.next().await;
    let c = &removed.json["data"]["changes"];
    assert_eq!(
        (
            c[0]["change"].as_str(),
            c[0]["instance_name_on_toolbox"].as_str()
        ),
        (Some("removed"), Some("mcp-a"))
    );
    assert!(c[0]["after"].is_null());

    agent.close().await;
    assert_eq!(rx.next().await.kind(), "agent.disconnected");
    let ids: std::collections::HashSet<String> = [&up, &added, &ready, &removed]
        .iter()
        .map(|h| h.id().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
}

/// An https URL: the receiver's self-signed certificate is trusted through `ca_file`, and a
/// gateway without it refuses the endpoint (nothing is delivered).
#[tokio::test]
async fn https_endpoints_are_verified() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
    let mut rx = Receiver::start_with(vec![], Some(Arc::new(server))).await;
    let url = format!("https://localhost:{}/hooks/dtma", rx.addr.port());

    // Not trusted: every attempt fails in the handshake, nothing reaches the receiver.
    let mut untrusted = settings(url.clone());
    untrusted.max_attempts = 2;
    let gw = gateway(untrusted).await;
    let a = agent("a1", &gw).await;
    let mut stats = gw.r().webhooks().unwrap().stats();
    let s = *within(10, "given up", stats.wait_for(|s| s.failed == 1))
        .await
        .unwrap();
    assert_eq!((s.attempts, s.delivered), (2, 0));
    a.shutdown().await;
    drop(gw);
    rx.assert_empty();

    let mut trusted = settings(url);
    trusted.ca_file = Some(ca);
    let gw = gateway(trusted).await;
    let _a = agent("a2", &gw).await;
    let hit = rx.next().await;
    assert_eq!(
        (hit.kind(), hit.json["agent_id"].as_str()),
        ("agent.connected", Some("a2"))
    );
}
