//! The web console in a real headless browser: Debian's chromium driven through chromedriver
//! (WebDriver, with fantoccini) against the real gateway and the real agent. The page streams
//! a command's lines as they arrive (the first is on screen while the command is still
//! blocked on a FIFO), styles stderr apart, and shows the exit code; a screenshot is kept in
//! target/test-artifacts/console.png. Log follow of a real container: Pause holds the agent
//! back (its stream stops at its credit while the container keeps writing) and Resume brings
//! every line written meanwhile, once and in order. Selecting another agent cancels the
//! running command on the first. Also: the static files need no token, the API does.

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

/// The log follow's lines on the page: how many, the first and last number, and where the
/// numbers are not consecutive (a line lost, repeated or out of order).
const PAGE_LINES: &str = r#"
const text = document.getElementById("log-output").textContent;
const nums = [];
for (const l of text.split("\n")) {
  const m = /^line (\d+) /.exec(l);
  if (m) nums.push(Number(m[1]));
}
const breaks = [];
for (let i = 1; i < nums.length; i++) {
  if (nums[i] !== nums[i - 1] + 1 && breaks.length < 10) breaks.push([nums[i - 1], nums[i]]);
}
return { count: nums.length, first: nums.length ? nums[0] : 0,
         last: nums.length ? nums[nums.length - 1] : 0, breaks };
"#;

/// The number of the last line on the page (0 before the first): cheap enough to poll.
const PAGE_LAST: &str = r#"
for (let n = document.getElementById("log-output").lastChild; n; n = n.previousSibling) {
  const found = [...n.textContent.matchAll(/^line (\d+) /gm)];
  if (found.length) return Number(found[found.length - 1][1]);
}
return 0;
"#;

async fn page_last(client: &Client) -> u64 {
    let v = client.execute(PAGE_LAST, vec![]).await.unwrap();
    v.as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[derive(Debug, serde::Deserialize)]
struct PageLines {
    count: u64,
    first: u64,
    last: u64,
    breaks: Vec<(u64, u64)>,
}

async fn page_lines(client: &Client) -> PageLines {
    let v = client.execute(PAGE_LINES, vec![]).await.unwrap();
    serde_json::from_value(v).unwrap()
}

/// Lines per burst of the writer in the container, and their padding: about 3 KB per burst,
/// a burst every 20 ms or so (some 150 KB/s). Fast enough to fill every buffer between the agent and the page
/// in seconds, slow enough to keep the container's log small.
const BURST: u32 = 20;
const PAD: usize = 150;

/// A container (removed when dropped) that the agent takes for a managed MCP server (its name
/// and label): it writes numbered lines steadily, `line <n> xxx...`, whoever reads them.
struct Writer {
    name: String,
}

impl Writer {
    fn start(instance: &str) -> Writer {
        let image = busybox_image();
        let w = Writer {
            name: format!("dtma-mcp-{instance}"),
        };
        let script = format!(
            "i=0; while :; do j=0; while [ $j -lt {BURST} ]; do i=$((i+1)); j=$((j+1)); \
             echo \"line $i {}\"; done; usleep 20000; done",
            "x".repeat(PAD)
        );
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &w.name,
            "--network",
            "none",
            "--log-driver",
            "json-file",
            "--label",
            "ai.agentopia.dtma.managed=true",
            &image,
            "sh",
            "-c",
            &script,
        ]);
        w
    }

    /// The number of the last line the container has written (0 before the first).
    async fn last_line(&self) -> u64 {
        let name = self.name.clone();
        let out = tokio::task::spawn_blocking(move || docker_ok(&["logs", "--tail", "1", &name]))
            .await
            .unwrap();
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Wait (bounded) until the container has written line `n`.
    async fn wait_for_line(&self, n: u64) {
        within(60, &format!("the container's line {n}"), async {
            while self.last_line().await < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the docker CLI ({e}): this test needs Docker (.ci/test.sh starts it)"
            )
        });
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An image of Debian's static busybox alone (no registry is reachable here), imported once
/// per busybox build: `dtma-gateway-test-busybox:<12 hex of its SHA-256>`.
fn busybox_image() -> String {
    use sha2::Digest;
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("/bin/busybox ({e}): install busybox-static (.ci/test.sh does)")
    });
    let hash: String = sha2::Sha256::digest(&busybox)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("dtma-gateway-test-busybox:{hash}");
    let known = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()
        .is_ok_and(|o| o.status.success());
    if known {
        return tag;
    }
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "[", "usleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(root.path())
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let import = Command::new("docker")
        .args(["import", "--change", "ENV PATH=/bin", "-", &tag])
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .output()
        .expect("docker import");
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(
        import.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    tag
}

/// Pause really holds the agent back. A container writes lines steadily; the console follows
/// its log; after Pause the page reads nothing, so the buffers between it and the gateway fill,
/// the gateway's stream buffer (`buffer_bytes`) fills with unsent events, its pump stops, no
/// more credit is granted and the agent stops sending: its count of bytes sent stays put while
/// the container writes far more than a credit window. Resume brings every line written
/// meanwhile (the agent resumes the follow from its own position), once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_agent_back_and_resume_loses_nothing() {
    let gw = Gw::start_with(|c| {
        c.streams.buffer_bytes = 64 << 10;
        c.streams.initial_credit = 16 << 10;
    })
    .await;
    let agent = Agent::start("a1", &gw).await;
    connected(&gw, "a1").await;
    let counters = agent
        .running
        .as_ref()
        .expect("running")
        .agent()
        .metrics()
        .streams();
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).unwrap();
    let instance = format!(
        "gw-console-{}-{:02x}{:02x}{:02x}{:02x}",
        std::process::id(),
        suffix[0],
        suffix[1],
        suffix[2],
        suffix[3]
    );
    let writer = Writer::start(&instance);
    writer.wait_for_line(1).await;
    let api = gw.api();

    // Lines the container writes in a test step: about ten credit windows (16 KiB is some 100
    // lines), one second of writing.
    const WINDOW: u64 = 1000;
    in_browser(move |client| async move {
        open_console(&client, api, "a1").await;
        type_into(&client, "log-instance", &instance).await;
        click(&client, "log-start").await;
        appears(
            &client,
            "the followed log",
            "//pre[@id='log-output']/span[contains(., 'line ')]",
        )
        .await;

        // Live before the pause: lines written after the follow began keep arriving.
        let live = writer.last_line().await + 2 * WINDOW;
        within(60, "the follow to keep up with the container", async {
            while page_last(&client).await < live {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;

        click(&client, "log-pause").await;
        appears(
            &client,
            "the Resume button",
            "//button[@id='log-pause'][.='Resume']",
        )
        .await;
        let stalls_at_pause = counters.credit_stalls.get();

        // Held: the agent sent nothing while the container wrote `WINDOW` lines, far more
        // than a credit window. Until the buffers on the way fill, the agent still sends: try
        // again from the new count.
        let (held_sent, held_line) = within(60, "the agent to stop sending", async {
            loop {
                let sent = counters.sent_bytes.get();
                let line = writer.last_line().await;
                writer.wait_for_line(line + WINDOW).await;
                if counters.sent_bytes.get() == sent {
                    return (sent, writer.last_line().await);
                }
            }
        })
        .await;
        assert!(
            counters.credit_stalls.get() > stalls_at_pause,
            "the agent never waited for credit"
        );
        let paused = page_lines(&client).await;
        assert!(
            paused.last + WINDOW <= held_line,
            "the page shows line {} while the container wrote {held_line}",
            paused.last
        );
        // Still held after another window of lines: the agent is at its credit limit, not
        // merely slow.
        writer.wait_for_line(held_line + WINDOW).await;
        assert_eq!(counters.sent_bytes.get(), held_sent, "sent while paused");
        assert_eq!(page_last(&client).await, paused.last, "read while paused");

        // Resume: every line the container wrote during the pause arrives, once, in order.
        let at_resume = writer.last_line().await;
        click(&client, "log-pause").await;
        appears(
            &client,
            "the Pause button",
            "//button[@id='log-pause'][.='Pause']",
        )
        .await;
        within(60, "the lines written during the pause", async {
            while page_last(&client).await < at_resume {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let resumed = page_lines(&client).await;
        assert!(
            counters.sent_bytes.get() > held_sent,
            "nothing sent after Resume"
        );
        assert!(
            resumed.breaks.is_empty(),
            "lines lost or repeated: {resumed:?}"
        );
        assert_eq!(
            resumed.count,
            resumed.last - resumed.first + 1,
            "{resumed:?}"
        );
        assert!(resumed.first <= paused.last, "{resumed:?}");

        let png = client.screenshot().await.unwrap();
        std::fs::write(artifacts().join("console-logs.png"), &png).unwrap();

        // Stop cancels the follow on the agent: its stream ends.
        click(&client, "log-stop").await;
        within(30, "the follow to end on the agent", async {
            while counters.running.get() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        drop(writer);
    })
    .await;
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
