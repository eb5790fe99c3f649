#!/usr/bin/env bash
# Quick start: build the agent and the reference control plane, connect them on loopback, and
# stream a command's output from the agent back through the control plane to curl.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release --bin dtma --bin dtma-sandbox --example control_plane
port=${CP_PORT:-18080}
token=quickstart-$RANDOM$RANDOM
log=$(mktemp -d)
cleanup() { kill "${agent_pid:-}" "${cp_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
CP_TOKENS=$token target/release/examples/control_plane --listen 127.0.0.1:$port 2>"$log/cp.log" &
cp_pid=$!
for _ in $(seq 100); do curl -s "127.0.0.1:$port/agents" >/dev/null && break; sleep 0.1; done
DTMA_BEARER_TOKEN=$token DTMA_AGENT_ID=quickstart DTMA_WS_URL=ws://127.0.0.1:$port/dtma/connect \
  DTMA_AUDIT_LOG=$log/audit.jsonl \
  DTMA_LISTEN=127.0.0.1:0 target/release/dtma 2>"$log/agent.log" &
agent_pid=$!
for _ in $(seq 100); do curl -s "127.0.0.1:$port/agents" | grep -q quickstart && break; sleep 0.1; done
echo "== agents connected to the control plane:"
curl -s "127.0.0.1:$port/agents"; echo
cmd=${1:-'for i in 1 2 3; do echo "tick $i from $(hostname) at $(date +%T)"; sleep 1; done; uname -sr'}
echo "== streaming: $cmd"
curl -sN -X POST "127.0.0.1:$port/agents/quickstart/exec" \
  -d "$(printf '{"command": %s}' "$(printf '%s' "$cmd" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')")"
echo "== agent log: $log/agent.log, audit log: $log/audit.jsonl, control plane log: $log/cp.log"
