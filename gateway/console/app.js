// The dtma-gateway console: plain JS, no build step, served by the gateway's operator listener.
// Every API call carries the operator token (kept in sessionStorage) as a bearer header, so
// streams are read with fetch + ReadableStream (EventSource cannot set headers), as NDJSON.
// All data reaches the page through textContent and attributes: no HTML is ever parsed from data.
"use strict";

const TOKEN_KEY = "dtma-operator-token";
const POLL_MS = 2000;
// A dropped stream is re-attached from its last seq (Last-Event-ID) this many times.
const MAX_RESUMES = 5;
// Events (output chunks) kept on screen per view; older ones are dropped from the page only.
const MAX_SHOWN = 20000;

const $ = (id) => document.getElementById(id);

const state = {
  agents: [],
  selected: null,
  command: null, // {id, abort} of the running command stream
  logs: null, // {id, abort, paused, wake} of the log follow
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  return Object.assign({ Authorization: "Bearer " + token() }, extra || {});
}

function setStatus(text) {
  $("api-status").textContent = text;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function newId(prefix) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return prefix + "-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ---- The agents list, polled ----

async function pollAgents() {
  if (!token()) {
    setStatus("enter an operator token");
    return;
  }
  try {
    const r = await fetch("/v1/agents", { headers: headers(), cache: "no-store" });
    if (r.status === 401) {
      setStatus("token refused");
      return;
    }
    if (!r.ok) {
      setStatus("agents: HTTP " + r.status);
      return;
    }
    const body = await r.json();
    state.agents = Array.isArray(body.agents) ? body.agents : [];
    setStatus(state.agents.length + " agent(s)");
    renderAgents();
    renderSelected();
  } catch (e) {
    setStatus("gateway unreachable");
  }
}

// Updated in place (one button per agent, kept while the agent is listed), so that a poll never
// replaces the element under the operator's pointer.
function renderAgents() {
  const list = $("agents");
  const seen = new Set();
  for (const a of state.agents) {
    seen.add(a.agent_id);
    let b = Array.from(list.querySelectorAll("button")).find((x) => x.dataset.agent === a.agent_id);
    if (!b) {
      const li = el("li");
      b = el("button");
      b.type = "button";
      b.dataset.agent = a.agent_id;
      b.appendChild(el("span", a.agent_id + " "));
      b.appendChild(el("span", "", "state"));
      b.addEventListener("click", () => select(a.agent_id));
      li.appendChild(b);
      list.appendChild(li);
    }
    b.classList.toggle("selected", a.agent_id === state.selected);
    const st = b.lastChild;
    st.textContent = a.state;
    st.className = "state " + (a.state === "connected" ? "connected" : "disconnected");
  }
  for (const b of Array.from(list.querySelectorAll("button"))) {
    if (!seen.has(b.dataset.agent)) b.parentNode.remove();
  }
}

// Another agent: what runs on the previous one is cancelled there (a `cancel` request, not only
// a closed connection: the gateway keeps a dropped stream for a resume, and the agent would
// run the command to its end), and the page stops reading it.
function select(agentId) {
  if (state.selected !== agentId) {
    stopCommand(true);
    stopLogs();
    $("output").replaceChildren();
    delete $("output").dataset.requestId;
    $("exit-code").textContent = "";
    $("log-output").replaceChildren();
    delete $("log-output").dataset.requestId;
    $("log-status").textContent = "";
  }
  state.selected = agentId;
  renderAgents();
  renderSelected();
}

function renderSelected() {
  const a = state.agents.find((x) => x.agent_id === state.selected);
  $("no-agent").classList.toggle("hidden", !!a);
  $("agent-view").classList.toggle("hidden", !a);
  if (!a) return;
  $("agent-title").textContent = a.agent_id + " (" + a.state + ")";
  const parts = ["version " + (a.agent_version || "?")];
  if (a.last_heartbeat_at) parts.push("last heartbeat " + a.last_heartbeat_at);
  if (a.sandbox && a.sandbox.mode) parts.push("sandbox " + a.sandbox.mode);
  $("agent-info").textContent = parts.join(" · ");
  const rows = (a.tool_statuses || []).map((t) => {
    const tr = el("tr");
    const d = t.runtime_details || {};
    tr.appendChild(el("td", t.instance_name_on_toolbox));
    tr.appendChild(el("td", t.status_on_toolbox));
    tr.appendChild(el("td", d.server_state ? JSON.stringify(d.server_state) : ""));
    tr.appendChild(el("td", d.image || ""));
    return tr;
  });
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "no MCP tool containers");
    td.colSpan = 4;
    tr.appendChild(td);
    rows.push(tr);
  }
  $("tools").replaceChildren(...rows);
}

// ---- Streams: POST a request, read NDJSON as it arrives ----

// Decodes `output` events per fd (base64 chunks may split a UTF-8 character).
function outputDecoder() {
  const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  return (m) => {
    const d = decoders[m.fd] || decoders.stdout;
    if (m.encoding === "base64") {
      const raw = atob(m.data);
      const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
      return d.decode(bytes, { stream: true });
    }
    return m.data;
  };
}

function isTerminal(m) {
  return ["exit", "result", "error", "state", "gateway_error"].includes(m.type);
}

// Reads one request's events, calling `onEvent` per message. `gate()` is awaited before each
// read: while it is pending nothing is read, so the browser's buffer fills, TCP stops, the
// gateway's stream buffer fills, its pump stops, credit stops and the agent pauses.
async function runStream(agentId, request, signal, onEvent, gate) {
  let lastSeq = null;
  let ended = false;
  let url = "/v1/agents/" + encodeURIComponent(agentId) + "/requests";
  let init = {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "application/x-ndjson" }),
    body: JSON.stringify(request),
    signal,
  };
  for (let attempt = 0; !ended && attempt <= MAX_RESUMES; attempt++) {
    let r;
    try {
      r = await fetch(url, init);
    } catch (e) {
      if (signal.aborted) return;
      continue;
    }
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try {
        const j = await r.json();
        if (j.error) msg = j.error.code + ": " + j.error.message;
      } catch (_) {
        // Not JSON: the status says enough.
      }
      onEvent({ type: "gateway_error", code: String(r.status), message: msg });
      return;
    }
    const reader = r.body.getReader();
    const text = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        if (gate) await gate();
        const { value, done } = await reader.read();
        if (done) break;
        buf += text.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.trim()) continue;
          const m = JSON.parse(line);
          if (typeof m.seq === "number") lastSeq = m.seq;
          onEvent(m);
          if (isTerminal(m)) ended = true;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (ended) return;
    // The body ended or broke before the terminal event: attach again from the last seq.
    url = "/v1/agents/" + encodeURIComponent(agentId) + "/requests/" +
      encodeURIComponent(request.id) + "/events";
    const h = headers({ Accept: "application/x-ndjson" });
    if (lastSeq !== null) h["Last-Event-ID"] = String(lastSeq);
    init = { method: "GET", headers: h, signal };
  }
  if (!ended) onEvent({ type: "gateway_error", code: "disconnected", message: "the stream broke" });
}

function sendCancel(agentId, target) {
  fetch("/v1/agents/" + encodeURIComponent(agentId) + "/requests?wait=true", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ type: "cancel", id: newId("cancel"), target }),
  }).catch(() => {});
}

// Appends, and keeps the view at the bottom if it was there. Layout is read once per frame
// (before the frame's first append, and when it is drawn): reading it after every append would
// force a layout per event, and a fast log (thousands of lines a second) would freeze the page.
const pinned = new Map(); // pre -> was at the bottom before this frame's appends
function appendTo(pre, text, cls) {
  if (!pinned.has(pre)) {
    pinned.set(pre, pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4);
    requestAnimationFrame(() => {
      if (pinned.get(pre)) pre.scrollTop = pre.scrollHeight;
      pinned.delete(pre);
    });
  }
  pre.appendChild(el("span", text, cls));
  // A follow left open for hours must not grow the page without end: keep the newest events.
  while (pre.childElementCount > MAX_SHOWN) {
    pre.firstElementChild.remove();
  }
}

function describeEnd(m) {
  switch (m.type) {
    case "exit":
      if (m.exit_code !== null && m.exit_code !== undefined) return String(m.exit_code);
      return "signal " + m.signal + (m.timed_out ? " (timed out)" : "") + (m.cancelled ? " (cancelled)" : "");
    case "error":
    case "gateway_error":
      return "error " + m.code + ": " + m.message;
    case "state":
      return "already seen: " + JSON.stringify(m);
    default:
      return JSON.stringify(m.data !== undefined ? m.data : m);
  }
}

// ---- The command box ----

async function runCommand(ev) {
  ev.preventDefault();
  const agentId = state.selected;
  const command = $("command").value;
  if (!agentId || !command.trim() || state.command) return;
  const out = $("output");
  const exitEl = $("exit-code");
  out.replaceChildren();
  exitEl.textContent = "";
  exitEl.dataset.done = "false";
  const id = newId("console");
  const abort = new AbortController();
  state.command = { id, agentId, abort };
  out.dataset.requestId = id;
  $("run").disabled = true;
  $("cancel").disabled = false;
  const decode = outputDecoder();
  await runStream(agentId, { type: "exec", id, command }, abort.signal, (m) => {
    if (m.type === "output") {
      appendTo(out, decode(m), m.fd === "stderr" ? "stderr" : "stdout");
    } else if (isTerminal(m)) {
      exitEl.textContent = describeEnd(m);
      exitEl.dataset.done = "true";
    }
  });
  if (state.command && state.command.id === id) state.command = null;
  $("run").disabled = false;
  $("cancel").disabled = true;
}

// Stops reading the running command; with `cancel`, also cancels it on its agent.
function stopCommand(cancel) {
  if (!state.command) return;
  if (cancel) sendCancel(state.command.agentId, state.command.id);
  state.command.abort.abort();
  state.command = null;
  $("run").disabled = false;
  $("cancel").disabled = true;
}

// ---- Log follow with pause/resume ----

async function startLogs(ev) {
  ev.preventDefault();
  const agentId = state.selected;
  const instance = $("log-instance").value.trim();
  if (!agentId || !instance || state.logs) return;
  const out = $("log-output");
  out.replaceChildren();
  const id = newId("logs");
  out.dataset.requestId = id;
  const logs = { id, agentId, abort: new AbortController(), paused: false, wake: null };
  state.logs = logs;
  $("log-start").disabled = true;
  $("log-pause").disabled = false;
  $("log-pause").textContent = "Pause";
  $("log-stop").disabled = false;
  $("log-status").textContent = "following";
  const gate = () =>
    logs.paused ? new Promise((resolve) => { logs.wake = resolve; }) : Promise.resolve();
  const decode = outputDecoder();
  const request = { type: "logs_follow", id, instance_name: instance, tail: 100, follow: true };
  await runStream(agentId, request, logs.abort.signal, (m) => {
    if (m.type === "output") {
      appendTo(out, decode(m), m.fd === "stderr" ? "stderr" : "stdout");
    } else if (m.type === "progress") {
      appendTo(out, "[" + m.step + "]\n", "note");
    } else if (isTerminal(m)) {
      $("log-status").textContent = "ended: " + describeEnd(m);
    }
  }, gate);
  if (state.logs === logs) endLogsUi();
}

// Pause is the gateway's: a browser's fetch keeps draining a body the page does not read, so
// not reading alone would not hold the agent back. The gateway stops reading the agent's
// events for this stream (no credit: the agent holds the output); the page also stops reading.
function setPaused(agentId, id, paused) {
  return fetch(
    "/v1/agents/" + encodeURIComponent(agentId) + "/requests/" + encodeURIComponent(id) +
      (paused ? "/pause" : "/resume"),
    { method: "POST", headers: headers({}) },
  ).catch(() => {});
}

async function togglePause() {
  const logs = state.logs;
  if (!logs) return;
  logs.paused = !logs.paused;
  await setPaused(logs.agentId, logs.id, logs.paused);
  $("log-pause").textContent = logs.paused ? "Resume" : "Pause";
  $("log-status").textContent = logs.paused ? "paused (not reading: the agent is held back)" : "following";
  if (!logs.paused && logs.wake) {
    const wake = logs.wake;
    logs.wake = null;
    wake();
  }
}

function stopLogs() {
  const logs = state.logs;
  if (!logs) return;
  sendCancel(logs.agentId, logs.id);
  logs.abort.abort();
  if (logs.wake) logs.wake();
  endLogsUi();
}

function endLogsUi() {
  state.logs = null;
  $("log-start").disabled = false;
  $("log-pause").disabled = true;
  $("log-pause").textContent = "Pause";
  $("log-stop").disabled = true;
}

// ---- Wiring ----

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  pollAgents();
});
$("command-form").addEventListener("submit", runCommand);
$("cancel").addEventListener("click", () => {
  if (state.command) sendCancel(state.command.agentId, state.command.id);
});
$("logs-form").addEventListener("submit", startLogs);
$("log-pause").addEventListener("click", togglePause);
$("log-stop").addEventListener("click", stopLogs);

pollAgents();
setInterval(pollAgents, POLL_MS);
