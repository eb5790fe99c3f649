//! The web console in a real headless browser: Debian's chromium driven through chromedriver
//! (WebDriver, with fantoccini) against the real gateway and the real agent. The page streams
//! a command's lines as they arrive (the first is on screen while the command is still
//! blocked on a FIFO), styles stderr apart, and shows the exit code; a screenshot is kept in
//! target/test-artifacts/console.png. Selecting another agent cancels the running command on
//! the first. Also: the static files need no token, the API does.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::BodyExt;

/// How long the page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a port it picked itself (`--port=0`, read back from its first lines), killed
/// when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// chromedriver with `--port=0` picks a port for IPv6 and then exits when that port is
    /// taken on IPv4 ("IPv4 port not available"), about one start in thirty here: so pick a
    /// free port ourselves and try again (a few times) when it exits instead of starting.
    fn start() -> Driver {
        for _ in 0..5 {
            if let Some(d) = Driver::try_start() {
                return d;
            }
        }
        panic!("chromedriver did not start in 5 tries");
    }

    fn try_start() -> Option<Driver> {
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install chromium and chromium-driver (.ci/test.sh does)")
            });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // "ChromeDriver was started successfully on port 43173." The read ends with
        // chromedriver's stdout if it exits instead.
        let started = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("started successfully on port"));
        if !started {
            let _ = child.wait();
            return None;
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(Driver { child, port })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1200,900",
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("a JSON object literal")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    within(
        60,
        "a chromium session",
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port)),
    )
    .await
    .unwrap_or_else(|e| panic!("chromium session: {e}"))
}

/// The test's artifact directory: target/test-artifacts (or under `CARGO_TARGET_DIR`).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The element `xpath` names, once the page has it (bounded: fails after [`PAGE_WAIT`]).
async fn appears(client: &Client, what: &str, xpath: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("{what} did not appear ({xpath}): {e}"))
}

/// Run `checks` against a fresh chromium session, in a task of its own so that the session is
/// closed even when a check fails; the failure is raised after.
async fn in_browser<F, Fut>(checks: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let driver = Driver::start();
    let client = browser(&driver).await;
    let outcome = tokio::spawn(checks(client.clone())).await;
    let _ = client.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

async fn type_into(client: &Client, id: &str, text: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("typing into #{id}: {e}"));
}

/// Open the console, give it the operator token, and select `agent` once it is listed as
/// connected.
async fn open_console(client: &Client, api: std::net::SocketAddr, agent: &str) {
    client.goto(&format!("http://{api}/console")).await.unwrap();
    type_into(client, "token", OPERATOR).await;
    click(client, "token-save").await;
    select_agent(client, agent).await;
}

async fn select_agent(client: &Client, agent: &str) {
    let button = appears(
        client,
        &format!("agent {agent}, connected"),
        &format!(
            "//ul[@id='agents']//button[@data-agent='{agent}'][.//span[contains(@class,'connected') and not(contains(@class,'disconnected'))]]"
        ),
    )
    .await;
    button.click().await.unwrap();
    appears(
        client,
        "the agent's view",
        &format!("//h2[@id='agent-title'][contains(., '{agent}')]"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_streams_a_command_live_in_a_headless_browser() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate = fifo(tmp.path(), "gate");
    let api = gw.api();
    in_browser(move |client| drive(client, api, gate)).await;
}

async fn drive(client: Client, api: std::net::SocketAddr, gate: PathBuf) {
    open_console(&client, api, "a1").await;
    appears(&client, "the MCP tools table", "//tbody[@id='tools']/tr").await;

    let command = format!(
        "echo 'line 1'; read x < {}; echo 'line 2'; echo 'a warning' >&2; exit 0",
        gate.display()
    );
    type_into(&client, "command", &command).await;
    click(&client, "run").await;

    // The first line is on screen while the command is blocked on the FIFO.
    appears(
        &client,
        "line 1",
        "//pre[@id='output']/span[contains(@class,'stdout')][contains(., 'line 1')]",
    )
    .await;
    let exit = client.find(Locator::Id("exit-code")).await.unwrap();
    assert_eq!(exit.text().await.unwrap(), "", "no exit code yet");
    assert_eq!(
        exit.attr("data-done").await.unwrap().as_deref(),
        Some("false")
    );
    let output = client.find(Locator::Id("output")).await.unwrap();
    assert!(
        !output.text().await.unwrap().contains("line 2"),
        "line 2 before the FIFO was released"
    );

    release(gate).await;
    appears(
        &client,
        "line 2",
        "//pre[@id='output']/span[contains(@class,'stdout')][contains(., 'line 2')]",
    )
    .await;
    appears(
        &client,
        "stderr, styled apart",
        "//pre[@id='output']/span[@class='stderr'][contains(., 'a warning')]",
    )
    .await;
    let exit = appears(
        &client,
        "the exit code",
        "//span[@id='exit-code'][@data-done='true']",
    )
    .await;
    assert_eq!(exit.text().await.unwrap(), "0");
    let text = output.text().await.unwrap();
    let (one, two) = (text.find("line 1").unwrap(), text.find("line 2").unwrap());
    assert!(one < two, "in order: {text:?}");
    assert_eq!(text.matches("line 1").count(), 1, "once: {text:?}");

    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = artifacts().join("console.png");
    std::fs::write(&path, &png).unwrap();
    let written = std::fs::metadata(&path).unwrap().len();
    assert!(written > 1000, "{} is {written} bytes", path.display());
}

/// Selecting another agent while a command runs cancels it on its agent (a `cancel`, not just a
/// closed connection: the gateway would keep the stream for a resume and the command would
/// run on), and the page stops showing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selecting_another_agent_cancels_the_running_command() {
    let gw = Gw::start().await;
    let _a1 = Agent::start("a1", &gw).await;
    let _a2 = Agent::start("a2", &gw).await;
    connected(&gw, "a1").await;
    connected(&gw, "a2").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate = fifo(tmp.path(), "gate");
    let api = gw.api();

    in_browser(move |client| async move {
        open_console(&client, api, "a1").await;
        let command = format!(
            "echo 'started'; read x < {}; echo 'released'",
            gate.display()
        );
        type_into(&client, "command", &command).await;
        click(&client, "run").await;
        appears(
            &client,
            "the command's first line",
            "//pre[@id='output']/span[contains(., 'started')]",
        )
        .await;
        let rid = client
            .find(Locator::Id("output"))
            .await
            .unwrap()
            .attr("data-request-id")
            .await
            .unwrap()
            .expect("the running command's request id on #output");

        select_agent(&client, "a2").await;

        // The command's stream, read through the API: it ends with a cancelled exit.
        let path = format!("/v1/agents/a1/requests/{rid}/events");
        let resp = send(
            api,
            "GET",
            &path,
            Some(OPERATOR),
            &[("accept", "application/x-ndjson")],
            None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let body = within(
            30,
            "the cancelled command's end",
            resp.into_body().collect(),
        )
        .await
        .unwrap()
        .to_bytes();
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = events.last().expect("events");
        assert_eq!(last["type"], "exit", "{events:?}");
        assert_eq!(last["cancelled"], true, "{events:?}");
        assert!(
            !String::from_utf8_lossy(&body).contains("released"),
            "the command ran on: {events:?}"
        );

        // The page shows a2, without a1's output, and can run a command again.
        let output = client.find(Locator::Id("output")).await.unwrap();
        assert_eq!(output.text().await.unwrap(), "");
        assert_eq!(output.attr("data-request-id").await.unwrap(), None);
        let run = client.find(Locator::Id("run")).await.unwrap();
        assert!(run.is_enabled().await.unwrap(), "Run stays disabled");
        drop(tmp);
    })
    .await;
}

#[tokio::test]
async fn console_files_need_no_token_and_the_api_still_does() {
    let gw = Gw::start().await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let resp = send(gw.api(), "GET", path, None, &[], None).await;
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty(), "{path}");
    }
    // The page never writes data with innerHTML (escaping is textContent's job).
    let js = include_str!("../console/app.js");
    assert!(!js.contains("innerHTML"), "app.js uses innerHTML");
    assert!(!js.contains("insertAdjacentHTML"));
    assert!(!js.contains("outerHTML"));

    let resp = send(gw.api(), "GET", "/console/nope.js", None, &[], None).await;
    assert_eq!(resp.status(), 404);
    let resp = send(gw.api(), "POST", "/console", None, &[], None).await;
    assert_eq!(resp.status(), 405);
    let (status, v) = json_of(send(gw.api(), "GET", "/v1/agents", None, &[], None).await).await;
    assert_eq!(status, 401, "{v}");
}
