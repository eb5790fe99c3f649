//! Delivery across dropped links, flow control with a slow backend, redirects and refusals.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dtma_control_plane::{Options, output_bytes};
use dtma_protocol::{AgentMessage, Cancel, Exec, RequestBody};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;

/// 50 forced cuts (some of them black holes) while a command prints a numbered sequence: the
/// backend receives every line exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_in_order_across_50_cuts() {
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    let _agent = InProc::start(agent_config("r1", proxy.url())).await;
    let mut session = within(10, "agent connect", cp.cp.wait_for_agent("r1")).await;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stop_file = dir.join("stop");
    let _ = std::fs::remove_file(&stop_file);
    let cmd = format!(
        "i=0; while [ ! -e {} ]; do i=$((i+1)); echo $i; sleep 0.002; done; echo end",
        stop_file.display()
    );
    let mut stream = cp
        .cp
        .request(
            "r1",
            RequestBody::Exec(Exec {
                command: cmd,
                timeout_ms: Some(300_000),
                ..Exec::default()
            }),
        )
        .unwrap();

    // The consumer: checks seq order and counts complete lines as they arrive.
    let (lines_tx, mut lines_rx) = watch::channel(0usize);
    let consumer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut expected_seq = 0;
        let mut exit = None;
        while let Some(m) = stream.recv().await {
            assert_eq!(common::seq_of(&m), Some(expected_seq), "{m:?}");
            expected_seq += 1;
            match m {
                AgentMessage::Output(o) => {
                    bytes.extend(output_bytes(&o));
                    lines_tx.send_replace(bytes.iter().filter(|b| **b == b'\n').count());
                }
                AgentMessage::Exit(e) => exit = Some(e),
                _ => {}
            }
        }
        (bytes, exit)
    });

    for cut in 0..50 {
        let seen = *lines_rx.borrow();
        within(30, "more lines", lines_rx.wait_for(|n| *n >= seen + 5))
            .await
            .unwrap();
        if cut % 10 == 9 {
            proxy.blackhole();
        } else {
            proxy.cut();
        }
        let old = session.session_id.clone();
        session = within(30, "reconnect", cp.cp.wait_for_new_session("r1", &old)).await;
    }
    std::fs::write(&stop_file, b"").unwrap();
    let (bytes, exit) = within(60, "command end", consumer).await.unwrap();

    assert_eq!(exit.expect("exit").exit_code, Some(0));
    let text = String::from_utf8(bytes).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("end"));
    assert!(lines.len() > 250, "only {} lines", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, (i + 1).to_string(), "line {i}");
    }
    let stats = cp.cp.stats();
    assert_eq!(stats.gaps.load(Ordering::Relaxed), 0);
    assert!(stats.sessions.load(Ordering::Relaxed) >= 51);
}

/// A stream without credit stalls its child (memory stays bounded) while another stream on
/// the same socket keeps flowing; credit resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_stalls_alone_and_memory_stays_bounded() {
    let cp = Cp::start(Options {
        initial_credit: 64 << 10,
        ..Options::default()
    })
    .await;
    let mut config = agent_config("r2", cp.url());
    config.streams.buffer_bytes = 256 << 10;
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent("r2")).await;

    // 200 MB of output with only 64 KiB of credit: the child must block.
    let mut slow = cp
        .cp
        .request(
            "r2",
            RequestBody::Exec(Exec {
                command: "head -c 200000000 /dev/zero | tr '\\0' a".into(),
                timeout_ms: Some(120_000),
                max_output_bytes: Some(1 << 30),
                ..Exec::default()
            }),
        )
        .unwrap()
        .manual_credit();
    let mut slow_bytes = 0u64;
    while slow_bytes < 64 << 10 {
        match within(
            10,
            &format!("slow stream output (have {slow_bytes})"),
            slow.recv(),
        )
        .await
        {
            Some(AgentMessage::Output(o)) => slow_bytes += output_bytes(&o).len() as u64,
            Some(AgentMessage::Started(_)) => {}
            other => panic!(
                "unexpected {:?}",
                other.map(|m| format!("{m:?}").chars().take(300).collect::<String>())
            ),
        }
    }
    assert_eq!(slow_bytes, 64 << 10, "more output than credit");

    // Meanwhile another stream on the same socket runs to completion.
    let fast = cp.cp.request("r2", exec("seq 1 50000")).unwrap();
    let c = within(30, "fast stream", collect(fast)).await;
    assert_eq!(c.exit.unwrap().exit_code, Some(0));
    let expected: String = (1..=50000).map(|i| format!("{i}\n")).collect();
    assert_eq!(c.stdout, expected.as_bytes());

    // The slow stream is still running and holds no more than its buffer.
    let a = agent.channel();
    assert_eq!(
        a.registry().counts().0,
        1,
        "the slow command should still be running"
    );
    assert!(a.registry().buffered_bytes() <= 256 << 10);

    // Credit resumes it.
    slow.grant(1 << 20);
    let mut more = 0u64;
    while more < 1 << 20 {
        match within(10, "resumed output", slow.recv()).await {
            Some(AgentMessage::Output(o)) => more += output_bytes(&o).len() as u64,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(more, 1 << 20);
    let id = slow.id().to_owned();
    let mut cancel = cp
        .cp
        .request("r2", RequestBody::Cancel(Cancel { target: id }))
        .unwrap();
    within(10, "cancel", cancel.recv()).await;
    loop {
        match within(10, "slow exit", slow.recv()).await {
            Some(AgentMessage::Exit(e)) => {
                assert!(e.cancelled);
                break;
            }
            Some(AgentMessage::Output(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `reconnect` with a URL moves the agent to another backend.
#[tokio::test]
async fn the_backend_can_redirect_the_agent() {
    let cp1 = Cp::start(Options::default()).await;
    let cp2 = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("r3", cp1.url())).await;
    within(10, "first connect", cp1.cp.wait_for_agent("r3")).await;
    cp1.cp.redirect("r3", 10, Some(cp2.url())).unwrap();
    within(10, "connect elsewhere", cp2.cp.wait_for_agent("r3")).await;
    let s = cp2.cp.request("r3", exec("echo moved")).unwrap();
    assert_eq!(within(10, "exec", collect(s)).await.stdout, b"moved\n");
}

/// A newer session for the same agent id replaces the old one.
#[tokio::test]
async fn a_newer_session_replaces_a_stale_one() {
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    let _agent = InProc::start(agent_config("r4", proxy.url())).await;
    let first = within(10, "connect", cp.cp.wait_for_agent("r4")).await;
    // The old link goes silent (NAT dropped it); the agent redials and the backend replaces.
    proxy.blackhole();
    let second = within(
        10,
        "replacement",
        cp.cp.wait_for_new_session("r4", &first.session_id),
    )
    .await;
    assert_ne!(first.session_id, second.session_id);
    let s = cp.cp.request("r4", exec("echo fresh")).unwrap();
    assert_eq!(within(10, "exec", collect(s)).await.stdout, b"fresh\n");
}

/// A wrong token is refused at the upgrade, and the agent keeps trying (with backoff).
#[tokio::test]
async fn a_refused_agent_keeps_retrying() {
    let cp = Cp::start(Options {
        tokens: vec!["another-token".into()],
        ..Options::default()
    })
    .await;
    let proxy = Proxy::start(cp.addr).await;
    let agent = InProc::start(agent_config("r5", proxy.url())).await;
    within(10, "three dial attempts", proxy.wait_accepted(3)).await;
    assert_eq!(cp.cp.stats().sessions.load(Ordering::Relaxed), 0);
    assert!(!agent.agent().link_up());
}

/// A backend that speaks another protocol version gets close code 4001.
#[tokio::test]
async fn an_unsupported_version_is_closed_with_4001() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/dtma/connect", listener.local_addr().unwrap());
    let _agent = InProc::start(agent_config("r6", url)).await;
    let (tcp, _) = within(10, "dial", listener.accept()).await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let hello = within(10, "hello", ws.next()).await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains(r#""type":"hello""#));
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"welcome","protocol_version":99,"session_id":"x"}"#,
    ))
    .await
    .unwrap();
    match within(10, "close", ws.next()).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(
                u16::from(f.code),
                dtma_protocol::close_code::UNSUPPORTED_VERSION
            );
            assert!(f.reason.contains("99"));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// wss:// with a private CA given by file; without the CA the agent does not connect.
#[tokio::test]
async fn wss_with_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
    let cp = dtma_control_plane::ControlPlane::new(Options {
        tokens: vec![TOKEN.into()],
        ..Options::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    cp.serve_tls(
        listener,
        Some(std::sync::Arc::new(server_config)),
        stop.clone(),
    );
    let url = format!("wss://localhost:{port}/dtma/connect");

    // Without the CA: the handshake fails and the agent keeps retrying.
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let untrusting = InProc::start(agent_config(
        "t0",
        format!("wss://localhost:{}/dtma/connect", proxy.addr.port()),
    ))
    .await;
    within(10, "two TLS attempts", proxy.wait_accepted(2)).await;
    assert_eq!(cp.stats().sessions.load(Ordering::Relaxed), 0);
    drop(untrusting);

    let mut config = agent_config("t1", url);
    config.channel.as_mut().unwrap().ca_file = Some(ca);
    let _agent = InProc::start(config).await;
    within(10, "TLS connect", cp.wait_for_agent("t1")).await;
    let s = cp.request("t1", exec("echo secure")).unwrap();
    assert_eq!(
        within(10, "exec over TLS", collect(s)).await.stdout,
        b"secure\n"
    );
    stop.cancel();
    let _ = Duration::ZERO;
}

/// A command outlives a short outage; past the orphan grace it is cancelled, and its final
/// events still reach the backend once the link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_an_outage_until_the_orphan_grace() {
    let cp = Cp::start(Options::default()).await;
    let proxy = Proxy::start(cp.addr).await;
    let mut config = agent_config("r7", proxy.url());
    config.channel.as_mut().unwrap().orphan_grace = Duration::from_millis(800);
    let agent = InProc::start(config).await;
    let first = within(10, "connect", cp.cp.wait_for_agent("r7")).await;
    let mut s = cp
        .cp
        .request("r7", exec("echo before; while :; do sleep 0.05; done"))
        .unwrap();
    loop {
        if let Some(AgentMessage::Output(_)) = within(10, "first output", s.recv()).await {
            break;
        }
    }
    proxy.refuse(true);
    proxy.cut();
    let dials = proxy.accepted.load(Ordering::SeqCst);
    // Still running after a few failed redials...
    within(10, "redials", proxy.wait_accepted(dials + 3)).await;
    // ...and cancelled once the grace is over (the agent keeps redialling meanwhile).
    within(10, "orphan cancel", async {
        while agent.channel().registry().counts().0 > 0 {
            proxy
                .wait_accepted(proxy.accepted.load(Ordering::SeqCst) + 1)
                .await;
        }
    })
    .await;
    proxy.refuse(false);
    within(
        10,
        "reconnect",
        cp.cp.wait_for_new_session("r7", &first.session_id),
    )
    .await;
    match within(10, "exit after reconnect", s.recv()).await {
        Some(AgentMessage::Exit(e)) => assert!(e.cancelled, "{e:?}"),
        other => panic!("expected exit, got {other:?}"),
    }
}

/// The status heartbeat arrives on the channel at the backend's interval.
#[tokio::test]
async fn status_heartbeat_reports_the_machine() {
    let cp = Cp::start(Options {
        heartbeat_interval_ms: Some(100),
        ..Options::default()
    })
    .await;
    let mut notices = cp.cp.notices();
    let _agent = InProc::start(agent_config("r8", cp.url())).await;
    let status = within(10, "status", async {
        loop {
            if let Ok((_, AgentMessage::Status(s))) = notices.recv().await {
                return s;
            }
        }
    })
    .await;
    assert_eq!(status.agent_version, dtma::VERSION);
    assert!(status.memory.total_bytes > 0);
    assert!(status.disk.is_some());
    // A second one follows (the interval is the backend's 100 ms, not the 30 s default).
    within(10, "second status", async {
        loop {
            if let Ok((_, AgentMessage::Status(_))) = notices.recv().await {
                return;
            }
        }
    })
    .await;
}
