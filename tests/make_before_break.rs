//! Make-before-break moves (protocol/README.md, Make-before-break): on `reconnect` the real agent
//! welcomes its new link before it closes the old one, on one control plane and across two, and
//! stays on its old link while the new one cannot be dialled.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dtma_control_plane::{ControlPlane, DirectoryEvent, Options, output_bytes};
use dtma_protocol::{AgentMessage, Exec, RequestBody};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::sync::watch;

/// Every directory event received so far, without waiting.
fn drain_events(rx: &mut broadcast::Receiver<DirectoryEvent>) -> Vec<DirectoryEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("directory events: {e}"),
        }
    }
}

fn disconnected(events: &[DirectoryEvent], agent: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, DirectoryEvent::Disconnected(r) if r.agent_id == agent))
}

fn connected(events: &[DirectoryEvent], agent: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, DirectoryEvent::Connected(r) if r.agent_id == agent))
}

/// Wait for the next `Connected` of `agent` (another session than `old`, when given).
async fn next_connected(
    rx: &mut broadcast::Receiver<DirectoryEvent>,
    agent: &str,
    old: Option<&str>,
    seen: &mut Vec<DirectoryEvent>,
) {
    loop {
        let e = rx.recv().await.expect("directory events");
        let done = matches!(&e, DirectoryEvent::Connected(r)
            if r.agent_id == agent && Some(r.session_id.as_str()) != old);
        seen.push(e);
        if done {
            return;
        }
    }
}

async fn echo(cp: &ControlPlane, agent: &str, word: &str) {
    let s = cp.request(agent, exec(&format!("echo {word}"))).unwrap();
    let c = within(30, "exec after the move", collect(s)).await;
    assert_eq!(c.stdout, format!("{word}\n").as_bytes());
}

#[tokio::test]
async fn the_agent_announces_make_before_break() {
    let cp = Cp::start(Options::default()).await;
    let _agent = InProc::start(agent_config("mbb-cap", cp.url())).await;
    let session = within(10, "connect", cp.cp.wait_for_agent("mbb-cap")).await;
    assert!(
        session
            .hello
            .capabilities
            .iter()
            .any(|c| c == "make_before_break"),
        "{:?}",
        session.hello.capabilities
    );
}

/// A move on one node while a command streams: the new session is up before the old socket
/// closes (no `Disconnected`, ever), the output arrives complete, each byte once, in order, and
/// the next request works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_on_one_node_loses_nothing_and_never_disconnects() {
    let cp = Cp::start(Options::default()).await;
    let agent = InProc::start(agent_config("mbb-1", cp.url())).await;
    let first = within(10, "connect", cp.cp.wait_for_agent("mbb-1")).await;

    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("release");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Prints, blocks on the FIFO until the test releases it, prints again.
    let cmd = format!(
        "seq 1 2000; cat {} >/dev/null; seq 2001 4000",
        fifo.display()
    );
    let mut stream = cp
        .cp
        .request(
            "mbb-1",
            RequestBody::Exec(Exec {
                command: cmd,
                timeout_ms: Some(120_000),
                ..Exec::default()
            }),
        )
        .unwrap();
    let (lines_tx, mut lines_rx) = watch::channel(0usize);
    let consumer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut exit = None;
        let mut expected_seq = 0;
        while let Some(m) = stream.recv().await {
            assert_eq!(seq_of(&m), Some(expected_seq), "{m:?}");
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
    within(30, "the first half", lines_rx.wait_for(|n| *n >= 2000))
        .await
        .unwrap();

    let mut events = cp.cp.directory_events();
    let mut changed = cp.cp.sessions_changed();
    let before = *changed.borrow_and_update();
    cp.cp.redirect("mbb-1", 0, None).unwrap();
    let mut seen = Vec::new();
    within(
        30,
        "the new session",
        next_connected(&mut events, "mbb-1", Some(&first.session_id), &mut seen),
    )
    .await;
    // Two changes: the new session, then the end of the old one (closed by the agent).
    within(
        30,
        "the old session to end",
        changed.wait_for(|v| *v >= before + 2),
    )
    .await
    .unwrap();
    seen.extend(drain_events(&mut events));
    assert!(!disconnected(&seen, "mbb-1"), "{seen:?}");
    let second = cp.cp.session("mbb-1").expect("connected");
    assert_ne!(second.session_id, first.session_id);
    assert!(agent.agent().link_up());

    // Release the command: its second half comes over the new link.
    let writer = tokio::task::spawn_blocking(move || std::fs::write(&fifo, b"go\n"));
    within(30, "FIFO release", writer).await.unwrap().unwrap();
    let (bytes, exit) = within(60, "command end", consumer).await.unwrap();
    assert_eq!(exit.expect("exit").exit_code, Some(0));
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, (i + 1).to_string(), "line {i}");
    }
    assert_eq!(cp.cp.stats().gaps.load(Ordering::Relaxed), 0);

    echo(&cp.cp, "mbb-1", "after-move").await;
    assert!(!disconnected(&drain_events(&mut events), "mbb-1"));
}

/// `drain` moves every agent of a node to another one: each is connected to the second before
/// the first sees it leave, and requests through the second work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_agents_to_another_before_letting_go() {
    let cp1 = Cp::start(Options::default()).await;
    let cp2 = Cp::start(Options::default()).await;
    let ids = ["mbb-x1", "mbb-x2"];
    let mut agents = Vec::new();
    for id in ids {
        agents.push(InProc::start(agent_config(id, cp1.url())).await);
        within(10, "connect", cp1.cp.wait_for_agent(id)).await;
    }
    let mut events1 = cp1.cp.directory_events();
    let mut events2 = cp2.cp.directory_events();
    let mut seen2 = Vec::new();

    let told = cp1.cp.drain(Duration::from_millis(200), Some(cp2.url()));
    assert_eq!(told, ids.len());

    // Whenever the first node sees an agent leave, the second has already welcomed it: its
    // `Connected` is sent before its `welcome` goes out, and the agent closes the old link
    // only after that `welcome`.
    let mut left = Vec::new();
    while left.len() < ids.len() {
        let e = within(30, "an agent leaving the first node", events1.recv())
            .await
            .unwrap();
        if let DirectoryEvent::Disconnected(r) = e {
            seen2.extend(drain_events(&mut events2));
            assert!(
                connected(&seen2, &r.agent_id),
                "{} left the first node before the second welcomed it: {seen2:?}",
                r.agent_id
            );
            left.push(r.agent_id);
        }
    }
    for id in ids {
        echo(&cp2.cp, id, "moved").await;
        assert!(cp1.cp.session(id).is_none());
    }
}

/// A move whose new link cannot be dialled leaves the agent on its old link (requests work)
/// while it retries; once the target answers, the move completes. If the old link closes
/// while the target is still unreachable, the agent falls back to its ordinary reconnect loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_cannot_dial_stays_on_the_old_link_and_retries() {
    let cp = Cp::start(Options::default()).await;
    let via = Proxy::start(cp.addr).await;
    let target = Proxy::start(cp.addr).await;
    target.refuse(true);
    let agent = InProc::start(agent_config("mbb-f", via.url())).await;
    let first = within(10, "connect", cp.cp.wait_for_agent("mbb-f")).await;
    let mut events = cp.cp.directory_events();

    cp.cp.redirect("mbb-f", 0, Some(target.url())).unwrap();
    within(30, "three move attempts", target.wait_accepted(3)).await;
    echo(&cp.cp, "mbb-f", "still-here").await;
    let current = cp.cp.session("mbb-f").expect("still connected");
    assert_eq!(current.session_id, first.session_id);
    assert!(agent.agent().link_up());
    let dials = target.accepted.load(Ordering::SeqCst);
    within(30, "more move attempts", target.wait_accepted(dials + 2)).await;
    assert!(!disconnected(&drain_events(&mut events), "mbb-f"));

    // The old link goes away while the target still refuses: the ordinary loop brings the
    // agent back (through the target once, then its configured URL).
    via.cut();
    let second = within(
        30,
        "reconnect after the old link closed",
        cp.cp.wait_for_new_session("mbb-f", &first.session_id),
    )
    .await;
    echo(&cp.cp, "mbb-f", "back").await;

    // A move to a target that answers completes.
    target.refuse(false);
    cp.cp.redirect("mbb-f", 0, Some(target.url())).unwrap();
    within(
        30,
        "the move once the target answers",
        cp.cp.wait_for_new_session("mbb-f", &second.session_id),
    )
    .await;
    echo(&cp.cp, "mbb-f", "moved").await;
}
