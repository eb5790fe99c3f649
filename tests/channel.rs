//! The real agent against the reference control plane over real WebSockets on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use dtma_control_plane::Options;
use dtma_protocol::{
    AgentMessage, Cancel, Encoding, ErrorCode, Exec, Ping, RequestBody, StreamPhase,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn exec_streams_started_output_and_exit() {
    let cp = Cp::start(Options::default()).await;
    let agent = InProc::start(agent_config("a1", cp.url())).await;
    let session = within(10, "agent connect", cp.cp.wait_for_agent("a1")).await;
    assert_eq!(
        session.hello.protocol_version,
        dtma_protocol::PROTOCOL_VERSION
    );
    assert!(session.hello.capabilities.iter().any(|c| c == "exec"));
    let sandbox = session
        .hello
        .sandbox
        .as_ref()
        .expect("hello names the sandbox");
    // Enforced by default; exactly what the agent assessed at start.
    assert_eq!(sandbox.mode, dtma_protocol::SandboxMode::Enforce);
    assert_eq!(sandbox, agent.agent().enforcement());

    let s = cp
        .cp
        .request("a1", exec("echo hello; echo oops >&2; exit 3"))
        .unwrap();
    let c = within(10, "exec", collect(s)).await;
    assert!(matches!(c.events[0], AgentMessage::Started(_)));
    assert_eq!(c.stdout, b"hello\n");
    assert_eq!(c.stderr, b"oops\n");
    let exit = c.exit.unwrap();
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!((exit.stdout_bytes, exit.stderr_bytes), (6, 5));
    assert!(!exit.timed_out && !exit.cancelled && !exit.truncated);
}

#[tokio::test]
async fn ping_and_cancel_answer_results() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a2", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a2")).await;

    let mut p = cp.cp.request("a2", RequestBody::Ping(Ping {})).unwrap();
    match within(10, "pong", p.recv()).await {
        Some(AgentMessage::Result(r)) => assert_eq!(r.data["pong"], true),
        other => panic!("expected a pong result, got {other:?}"),
    }

    let mut long = cp
        .cp
        .request(
            "a2",
            exec("trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done"),
        )
        .unwrap();
    // Wait until the command runs (its first output), then cancel it.
    loop {
        match within(10, "long running output", long.recv()).await {
            Some(AgentMessage::Output(_)) => break,
            Some(_) => continue,
            None => panic!("stream ended early"),
        }
    }
    let target = long.id().to_owned();
    let mut c = cp
        .cp
        .request(
            "a2",
            RequestBody::Cancel(Cancel {
                target: target.clone(),
            }),
        )
        .unwrap();
    match within(10, "cancel result", c.recv()).await {
        Some(AgentMessage::Result(r)) => {
            assert_eq!(r.data["cancelled"], true);
            assert_eq!(r.data["target"], target.as_str());
        }
        other => panic!("expected a cancel result, got {other:?}"),
    }
    let rest = within(10, "cancelled exit", collect_rest(long)).await;
    let exit = rest.exit.expect("exit event");
    assert!(exit.cancelled);
    assert_eq!(exit.killed_with.as_deref(), Some("SIGTERM"));
    assert!(String::from_utf8_lossy(&rest.stdout).contains("bye"));
}

/// Like `collect`, for a stream whose first events were already read.
async fn collect_rest(mut s: dtma_control_plane::StreamRx) -> Collected {
    let mut c = Collected::default();
    while let Some(m) = s.recv().await {
        match &m {
            AgentMessage::Output(o) => c.stdout.extend(dtma_control_plane::output_bytes(o)),
            AgentMessage::Exit(e) => c.exit = Some(e.clone()),
            _ => {}
        }
        c.events.push(m);
    }
    c
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_link_stays_up() {
    let cp = Cp::start(Options::default()).await;
    let mut config = agent_config("a3", cp.url());
    config.channel.as_mut().unwrap().max_frame_bytes = 64 << 10;
    let _agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a3")).await;
    let mut notices = cp.cp.notices();

    let cases: Vec<(Message, ErrorCode, Option<&str>, &str)> = vec![
        (
            Message::text("{nope"),
            ErrorCode::MalformedJson,
            None,
            "malformed",
        ),
        (
            Message::text("[1,2]"),
            ErrorCode::MalformedJson,
            None,
            "object",
        ),
        (
            Message::text(r#"{"id":"x1"}"#),
            ErrorCode::UnknownType,
            Some("x1"),
            "type",
        ),
        (
            Message::text(r#"{"type":"launch","id":"x2"}"#),
            ErrorCode::UnknownType,
            Some("x2"),
            "launch",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x3"}"#),
            ErrorCode::InvalidRequest,
            Some("x3"),
            "command",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x4","command":5}"#),
            ErrorCode::InvalidRequest,
            Some("x4"),
            "string",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x5","command":"  "}"#),
            ErrorCode::InvalidRequest,
            Some("x5"),
            "empty",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x6","command":"true","timeout_ms":0}"#),
            ErrorCode::InvalidRequest,
            Some("x6"),
            "timeout",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x7","command":"true","timeout_ms":-5}"#),
            ErrorCode::InvalidRequest,
            Some("x7"),
            "timeout_ms",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x8","command":"true","env":{"A=B":"c"}}"#),
            ErrorCode::InvalidRequest,
            Some("x8"),
            "A=B",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x9","command":"true","expires_at":"soon"}"#),
            ErrorCode::InvalidRequest,
            Some("x9"),
            "expires_at",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x11","command":"echo a\u0000b"}"#),
            ErrorCode::InvalidRequest,
            Some("x11"),
            "NUL",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x12","command":"true","cwd":"/tmp\u0000x"}"#),
            ErrorCode::InvalidRequest,
            Some("x12"),
            "cwd",
        ),
        (
            Message::text(r#"{"type":"exec","id":"x13","command":"true","env":{"A":"b\u0000"}}"#),
            ErrorCode::InvalidRequest,
            Some("x13"),
            "env",
        ),
        (
            Message::text(r#"{"type":"ack","id":"x10","seq":"one"}"#),
            ErrorCode::InvalidRequest,
            Some("x10"),
            "seq",
        ),
        (
            Message::text(r#"{"type":"welcome","protocol_version":1,"session_id":"again"}"#),
            ErrorCode::ProtocolError,
            None,
            "welcome",
        ),
        (
            Message::text(format!(
                r#"{{"type":"exec","id":"big","command":"{}"}}"#,
                "x".repeat(100_000)
            )),
            ErrorCode::FrameTooLarge,
            None,
            "limit",
        ),
        (
            Message::binary(vec![1u8, 2, 3]),
            ErrorCode::UnsupportedFrame,
            None,
            "binary",
        ),
        (
            Message::text(r#"{"type":"exec","id":"","command":"true"}"#),
            ErrorCode::InvalidRequest,
            Some(""),
            "empty",
        ),
        (
            Message::text(format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(200))),
            ErrorCode::InvalidRequest,
            None,
            "longer",
        ),
    ];
    for (frame, code, id, needle) in cases {
        let shown = format!("{frame:?}").chars().take(80).collect::<String>();
        cp.cp.send_frame("a3", frame).unwrap();
        match within(10, "error reply", next_notice(&mut notices)).await {
            AgentMessage::Error(e) => {
                assert_eq!(e.code, code, "{shown}: {e:?}");
                assert_eq!(e.seq, None, "{shown}");
                if let Some(id) = id {
                    assert_eq!(e.id.as_deref(), Some(id), "{shown}");
                }
                assert!(
                    e.message.contains(needle),
                    "{shown}: message `{}` lacks `{needle}`",
                    e.message
                );
            }
            other => panic!("{shown}: expected an error, got {other:?}"),
        }
    }
    // The link survived all of it: a request still works, on the same session.
    let mut p = cp.cp.request("a3", RequestBody::Ping(Ping {})).unwrap();
    assert!(matches!(
        within(10, "pong", p.recv()).await,
        Some(AgentMessage::Result(_))
    ));
    assert_eq!(
        cp.cp
            .stats()
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_request_id_is_never_run_twice() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a4", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a4")).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join("runs");
    let cmd = format!("echo run >> {}", file.display());
    let mut notices = cp.cp.notices();

    let s = cp
        .cp
        .request_with_id("a4", "dup-1".into(), None, exec(&cmd))
        .unwrap();
    let c = within(10, "first run", collect(s)).await;
    assert_eq!(c.exit.unwrap().exit_code, Some(0));
    // Resent after it finished and was acknowledged: answered with state, not run.
    let _again = cp
        .cp
        .request_with_id("a4", "dup-1".into(), None, exec(&cmd))
        .unwrap();
    match within(10, "state", next_notice(&mut notices)).await {
        AgentMessage::State(s) => {
            assert_eq!(s.id, "dup-1");
            assert_eq!(s.phase, StreamPhase::Closed);
        }
        other => panic!("expected state, got {other:?}"),
    }
    // Resent while running: state `running`, and the running one is not disturbed.
    let mut running = cp
        .cp
        .request_with_id(
            "a4",
            "dup-2".into(),
            None,
            exec("echo go; sleep 0.3; echo done"),
        )
        .unwrap();
    assert!(matches!(
        within(10, "started", running.recv()).await,
        Some(AgentMessage::Started(_))
    ));
    cp.cp
        .send_raw(
            "a4",
            r#"{"type":"exec","id":"dup-2","command":"echo intruder"}"#,
        )
        .unwrap();
    match within(10, "state", next_notice(&mut notices)).await {
        AgentMessage::State(s) => {
            assert_eq!((s.id.as_str(), s.phase), ("dup-2", StreamPhase::Running))
        }
        other => panic!("expected state, got {other:?}"),
    }
    let rest = within(10, "dup-2 end", collect_rest(running)).await;
    assert_eq!(rest.stdout, b"go\ndone\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "run\n");
}

#[tokio::test]
async fn an_expired_request_is_refused_not_run() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a5", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a5")).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join("ran");
    let mut s = cp
        .cp
        .request_with_id(
            "a5",
            "late".into(),
            Some("2020-01-01T00:00:00Z".into()),
            exec(&format!("touch {}", file.display())),
        )
        .unwrap();
    match within(10, "expired error", s.recv()).await {
        Some(AgentMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Expired);
            assert_eq!(e.seq, Some(0));
        }
        other => panic!("expected expired, got {other:?}"),
    }
    // A request with a future deadline runs.
    let ok = cp
        .cp
        .request_with_id(
            "a5",
            "on-time".into(),
            Some("2999-01-01T00:00:00Z".into()),
            exec("echo ok"),
        )
        .unwrap();
    assert_eq!(within(10, "on time", collect(ok)).await.stdout, b"ok\n");
    assert!(!file.exists(), "the expired command ran");
}

#[tokio::test]
async fn output_that_is_not_utf8_arrives_unchanged() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a6", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a6")).await;

    let s = cp
        .cp
        .request("a6", exec(r"printf '\377\376abc\000\n'"))
        .unwrap();
    let c = within(10, "binary output", collect(s)).await;
    assert_eq!(c.stdout, b"\xff\xfeabc\x00\n");
    assert!(
        c.events
            .iter()
            .any(|m| matches!(m, AgentMessage::Output(o) if o.encoding == Encoding::Base64))
    );

    // A character split across two writes still arrives as text, never cut.
    let s = cp
        .cp
        .request("a6", exec(r"printf '\303'; sleep 0.2; printf '\251\n'"))
        .unwrap();
    let c = within(10, "split char", collect(s)).await;
    assert_eq!(c.stdout, "é\n".as_bytes());
    for m in &c.events {
        if let AgentMessage::Output(o) = m {
            assert_eq!(o.encoding, Encoding::Utf8, "{o:?}");
        }
    }
}

#[tokio::test]
async fn output_cap_and_timeout_are_reported() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a8", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a8")).await;
    let s = cp
        .cp
        .request(
            "a8",
            RequestBody::Exec(Exec {
                command: "head -c 300000 /dev/zero".into(),
                max_output_bytes: Some(1000),
                ..Exec::default()
            }),
        )
        .unwrap();
    let c = within(10, "capped", collect(s)).await;
    let exit = c.exit.unwrap();
    assert!(exit.truncated);
    assert_eq!(c.stdout.len(), 1000);
    assert_eq!(exit.stdout_bytes, 300_000);

    let s = cp
        .cp
        .request(
            "a8",
            RequestBody::Exec(Exec {
                command: "sleep 30".into(),
                timeout_ms: Some(200),
                ..Exec::default()
            }),
        )
        .unwrap();
    let exit = within(10, "timed out", collect(s)).await.exit.unwrap();
    assert!(exit.timed_out);
    assert_eq!(exit.signal, Some(15));
    assert_eq!(exit.killed_with.as_deref(), Some("SIGTERM"));
}

#[allow(dead_code)]
fn _unused(_: Duration) {}

#[tokio::test]
async fn exec_takes_stdin_cwd_and_env() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("a9", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("a9")).await;
    let s = cp
        .cp
        .request(
            "a9",
            RequestBody::Exec(Exec {
                command: "cat; pwd; echo $GREETING".into(),
                stdin: Some("from stdin\n".into()),
                cwd: Some("/tmp".into()),
                env: [("GREETING".to_string(), "hi".to_string())].into(),
                ..Exec::default()
            }),
        )
        .unwrap();
    let c = within(10, "exec", collect(s)).await;
    assert_eq!(c.stdout, b"from stdin\n/tmp\nhi\n");

    // A working directory that does not exist: the stream ends with spawn_failed.
    let mut s = cp
        .cp
        .request(
            "a9",
            RequestBody::Exec(Exec {
                command: "true".into(),
                cwd: Some("/nonexistent/dir".into()),
                ..Exec::default()
            }),
        )
        .unwrap();
    match within(10, "spawn failure", s.recv()).await {
        Some(AgentMessage::Error(e)) => assert_eq!(e.code, ErrorCode::SpawnFailed),
        other => panic!("expected spawn_failed, got {other:?}"),
    }
}

/// A backend that grants exactly what it wants (or starts a stream paused) still sees the
/// command end: the end of output and the child's exit are noticed without credit.
#[tokio::test]
async fn output_that_uses_up_its_credit_exactly_still_ends() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("credit", cp.url())).await;
    within(10, "agent connect", cp.cp.wait_for_agent("credit")).await;
    for (command, credit, stdout) in [("printf abc", 3, &b"abc"[..]), ("true", 0, &b""[..])] {
        let s = cp
            .cp
            .request(
                "credit",
                RequestBody::Exec(Exec {
                    command: command.into(),
                    timeout_ms: Some(30_000),
                    credit: Some(credit),
                    ..Exec::default()
                }),
            )
            .unwrap()
            .manual_credit();
        let c = within(60, command, collect(s)).await;
        assert_eq!(c.stdout, stdout, "{command}");
        let exit = c.exit.unwrap();
        assert_eq!(exit.exit_code, Some(0), "{command}: {exit:?}");
        assert!(
            !exit.timed_out && exit.killed_with.is_none(),
            "{command}: {exit:?}"
        );
    }
}

/// Audit records are written by their own thread: an audit log that blocks (here a FIFO that
/// nobody reads yet, as a hung disk would) stalls neither the channel nor the commands, and
/// every record arrives once the log moves again.
#[tokio::test]
async fn a_blocked_audit_log_stalls_nothing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let cp = Cp::start(Options::default()).await;
    let mut config = agent_config("audit", cp.url());
    config.audit.path = Some(fifo.clone());
    let agent = InProc::start(config).await;
    within(10, "agent connect", cp.cp.wait_for_agent("audit")).await;

    // Opening the FIFO for writing blocks until a reader comes: the writer thread is stuck.
    for i in 0..3 {
        let s = cp
            .cp
            .request("audit", exec(&format!("echo run-{i}")))
            .unwrap();
        let c = within(30, "exec while the audit log is blocked", collect(s)).await;
        assert_eq!(c.stdout, format!("run-{i}\n").as_bytes());
    }
    let s = cp.cp.request("audit", exec("reboot")).unwrap();
    let c = within(30, "a denial while the audit log is blocked", collect(s)).await;
    assert!(matches!(
        c.events.last(),
        Some(AgentMessage::Error(e)) if e.code == ErrorCode::Denied
    ));

    // Now read the FIFO; shutting down flushes whatever is still queued.
    let reader = tokio::task::spawn_blocking(move || std::fs::read_to_string(&fifo).unwrap());
    agent.shutdown().await;
    let text = within(30, "audit records", reader).await.unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |decision: &str| records.iter().filter(|r| r["decision"] == decision).count();
    assert_eq!(
        (count("allowed"), count("finished"), count("denied")),
        (3, 3, 1),
        "{text}"
    );
}
