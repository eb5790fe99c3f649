//! The web console in a real headless browser: Debian's chromium driven through chromedriver
//! (WebDriver, with fantoccini) against the real gateway and the real agent. The page streams
//! a command's lines as they arrive (the first is on screen while the command is still
//! blocked on a FIFO), styles stderr apart, and shows the exit code; a screenshot is kept in
//! target/test-artifacts/console.png. Also: the static files need no token, the API does.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_streams_a_command_live_in_a_headless_browser() {
    let gw = Gw::start().await;
    let _agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let tmp = tempfile::tempdir().unwrap();
    let gate = fifo(tmp.path(), "gate");

    let driver = Driver::start();
    let client = browser(&driver).await;
    // The checks run in their own task so that the browser session is closed even when one
    // fails; the failure is raised after.
    let run = tokio::spawn(drive(client.clone(), gw.api(), gate));
    let outcome = run.await;
    let _ = client.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn drive(client: Client, api: std::net::SocketAddr, gate: PathBuf) {
    client.goto(&format!("http://{api}/console")).await.unwrap();
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(OPERATOR)
        .await
        .unwrap();
    client
        .find(Locator::Id("token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The agents list (polled with the token) shows a1 connected; select it.
    let agent = appears(
        &client,
        "agent a1, connected",
        "//ul[@id='agents']//button[@data-agent='a1'][.//span[contains(@class,'connected') and not(contains(@class,'disconnected'))]]",
    )
    .await;
    agent.click().await.unwrap();
    appears(
        &client,
        "the agent's view",
        "//h2[@id='agent-title'][contains(., 'a1')]",
    )
    .await;
    appears(&client, "the MCP tools table", "//tbody[@id='tools']/tr").await;

    let command = format!(
        "echo 'line 1'; read x < {}; echo 'line 2'; echo 'a warning' >&2; exit 0",
        gate.display()
    );
    client
        .find(Locator::Id("command"))
        .await
        .unwrap()
        .send_keys(&command)
        .await
        .unwrap();
    client
        .find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

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
