#!/usr/bin/env bash
# Benchmark: a group of MCP servers deployed by the dtma agent (over its local API) next to the
# same servers deployed by docker-compose (up -d, up -d again, down). Prints a table and writes
# it into BENCHMARKS.md. About 2.5 minutes after the build on a 2-core machine.
#
#   bash deploy/bench-mcp.sh                    # full run, updates BENCHMARKS.md
#   BENCH_NO_WRITE=1 bash deploy/bench-mcp.sh   # print only
#   BENCH_ROUNDS=2 BENCH_SERIAL_ROUNDS=0 bash deploy/bench-mcp.sh   # quicker
#
# Needs a running Docker daemon (.ci/test.sh starts one: dockerd --bridge=none). Installs
# Debian's docker-compose (1.29) and busybox-static with apt when they are missing. Every
# container uses the host's network; no Docker network is created. Everything the bench starts
# (the agent, containers, docker-compose) is removed at the end, also on failure and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bench-mcp.sh: missing ${need_apt[*]} and cannot install it here (needs root and apt)" >&2
    exit 1
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "bench-mcp.sh: the Docker daemon is not reachable; start it first (.ci/test.sh shows how:" >&2
  echo "  dockerd --bridge=none --iptables=false --ip6tables=false)" >&2
  exit 1
fi

cargo build --release --bin dtma --bin dtma-sandbox --bin dtma-test-mcp --example bench_mcp

args=()
[ -n "${BENCH_NO_WRITE:-}" ] || args=(--write BENCHMARKS.md)
# The bench removes everything it started itself, also on SIGINT/SIGTERM.
exec target/release/examples/bench_mcp "${args[@]}"
