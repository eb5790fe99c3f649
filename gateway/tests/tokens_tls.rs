//! The agent listener's TLS, and reloading the agent token file while running.

mod common;

use common::*;
use dtma::agent::LinkState;

/// Wait until the agent's link state satisfies `f`.
async fn link_until(agent: &Agent, what: &str, f: impl Fn(&LinkState) -> bool) {
    let mut link = agent.link();
    within(20, what, link.wait_for(|s| f(s))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_dial_wss_when_the_agent_listener_has_a_certificate() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, private) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&private, key.signing_key.serialize_pem()).unwrap();
    let gw = Gw::start_with(|c| c.tls = Some((cert.clone(), private.clone()))).await;
    let url = format!(
        "wss://localhost:{}/dtma/connect",
        gw.r().agent_addr().port()
    );
    let mut config = agent_config("a1", token_of("a1"), url);
    if let Some(ch) = config.channel.as_mut() {
        ch.ca_file = Some(cert.clone());
    }
    let _agent = Agent::start_with(config).await;
    connected(&gw, "a1").await;
    let (status, answer) = json_of(
        send(
            gw.api(),
            "POST",
            "/v1/agents/a1/requests?wait=true",
            Some(OPERATOR),
            &[],
            Some(r#"{"type":"exec","command":"echo over-tls"}"#.into()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stdout"], "over-tls\n");

    // Plain WebSocket to the TLS port does not get a session.
    let plain = Agent::start_with(agent_config(
        "a2",
        token_of("a2"),
        format!("ws://127.0.0.1:{}/dtma/connect", gw.r().agent_addr().port()),
    ))
    .await;
    link_until(&plain, "a failed plain dial", |s| {
        matches!(s, LinkState::BackingOff { .. })
    })
    .await;
    assert!(gw.r().control_plane().session("a2").is_none());
}

#[tokio::test]
async fn a_certificate_that_does_not_parse_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let tokens = dir.path().join("agents");
    std::fs::write(&tokens, "a1 agent-a1-token-0123456789\n").unwrap();
    let mut config =
        dtma_gateway::Config::new(&tokens, vec![dtma_gateway::config::Secret::new(OPERATOR)]);
    config.agent_listen = "127.0.0.1:0".parse().unwrap();
    config.operator_listen = "127.0.0.1:0".parse().unwrap();
    config.tls = Some((cert, key));
    match dtma_gateway::start(config, tokio_util::sync::CancellationToken::new()).await {
        Err(dtma_gateway::StartError::Tls(msg)) => assert!(msg.contains("cert.pem"), "{msg}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started with a bad certificate"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reloading_the_token_file_admits_new_tokens_and_revokes_removed_ones() {
    let mut file = None;
    let gw = Gw::start_with(|c| file = c.agent_tokens.clone()).await;
    let file = file.unwrap();
    let a1 = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    // A new agent whose token is not in the file yet is refused.
    let newcomer_token = "agent-a4-token-0123456789";
    let a4 = Agent::start_with(agent_config("a4", newcomer_token, gw.url())).await;
    link_until(
        &a4,
        "a4 refused",
        |s| matches!(s, LinkState::BackingOff { cause, .. } if cause.contains("401")),
    )
    .await;

    // A file that does not parse is refused; the tokens in force stay.
    std::fs::write(&file, "a1 short\n").unwrap();
    assert!(gw.r().reload_tokens().is_err());
    assert!(gw.r().control_plane().session("a1").is_some());

    // a1 loses its token, a4 gets one.
    std::fs::write(
        &file,
        format!(
            "a2 {}\na3 {}\na4 {newcomer_token}\n",
            token_of("a2"),
            token_of("a3")
        ),
    )
    .unwrap();
    assert_eq!(gw.r().reload_tokens().unwrap(), 3);
    connected(&gw, "a4").await;
    // a1's session is closed, and its next dial is refused.
    link_until(
        &a1,
        "a1 revoked",
        |s| matches!(s, LinkState::BackingOff { cause, .. } if cause.contains("401")),
    )
    .await;
    assert!(gw.r().control_plane().session("a1").is_none());

    // An operator token in the agent file is refused on reload too.
    std::fs::write(&file, format!("a2 {OPERATOR}\n")).unwrap();
    assert!(matches!(
        gw.r().reload_tokens(),
        Err(dtma_gateway::tokens::Error::SharedToken(_))
    ));
}

/// A token hook on 127.0.0.1: knows one digest, records every body, answers 500 on demand.
struct Hook {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn hook(known_digest: String, agent: &'static str) -> Hook {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent-token", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, f) = (bodies.clone(), failing.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (b, f, known) = (b.clone(), f.clone(), known_digest.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (b, f, known) = (b.clone(), f.clone(), known.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let text = String::from_utf8_lossy(&body).into_owned();
                            b.lock().unwrap().push(text.clone());
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            let (status, out) = if f.load(Ordering::Relaxed) {
                                (500, String::new())
                            } else if v["token_sha256"] == known.as_str() {
                                (200, format!(r#"{{"agent_id":"{agent}"}}"#))
                            } else {
                                (404, String::new())
                            };
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(out),
                            ));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Hook {
        url,
        bodies,
        failing,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_hook_admits_agents_by_digest_and_a_failing_hook_means_try_again() {
    use std::sync::atomic::Ordering;
    let token = "agent-a4-token-from-the-backend";
    let hex: String = dtma_gateway::tokens::digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let h = hook(hex.clone(), "a4").await;
    let url = h.url.clone();
    let gw = Gw::start_with(|c| {
        c.agent_auth_hook = Some(dtma_gateway::config::HookSettings {
            url,
            ca_file: None,
            bearer: None,
            timeout: std::time::Duration::from_secs(5),
            cache: std::time::Duration::from_secs(60),
        })
    })
    .await;
    // A file token still works without asking the hook.
    let _a1 = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    assert!(h.bodies.lock().unwrap().is_empty(), "the file answered a1");
    // The hook's token: admitted, and the hook saw the digest, never the token.
    let a4 = Agent::start_with(agent_config("a4", token, gw.url())).await;
    connected(&gw, "a4").await;
    {
        let bodies = h.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        assert!(
            bodies[0].contains(&hex) && !bodies[0].contains(token),
            "{bodies:?}"
        );
    }
    // Cached: a reconnect does not ask again.
    let first = gw
        .r()
        .control_plane()
        .session("a4")
        .unwrap()
        .session_id
        .clone();
    gw.r()
        .control_plane()
        .disconnect("a4", 4003, "test")
        .unwrap();
    within(
        20,
        "a4 back",
        gw.r().control_plane().wait_for_new_session("a4", &first),
    )
    .await;
    assert_eq!(h.bodies.lock().unwrap().len(), 1);
    drop(a4);
    // Unknown to the hook: 401.
    let stranger =
        Agent::start_with(agent_config("a5", "agent-a5-token-unknown-12345", gw.url())).await;
    let mut link = stranger.link();
    within(
        20,
        "a5 refused",
        link.wait_for(
            |s| matches!(s, LinkState::BackingOff { cause, .. } if cause.contains("401")),
        ),
    )
    .await
    .unwrap();
    drop(stranger);
    // A failing hook: 503, the agent tries again (not a refusal).
    h.failing.store(true, Ordering::Relaxed);
    let other =
        Agent::start_with(agent_config("a6", "agent-a6-token-unknown-12345", gw.url())).await;
    let mut link = other.link();
    within(
        20,
        "a6 told to try again",
        link.wait_for(
            |s| matches!(s, LinkState::BackingOff { cause, .. } if cause.contains("503")),
        ),
    )
    .await
    .unwrap();
}
