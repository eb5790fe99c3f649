#!/usr/bin/env bash
# Benchmark: following an MCP server's container log through the dtma agent (over its channel,
# through the reference control plane, and over its local API's server-sent events) next to
# `docker logs -f`: latency, throughput, and memory with many follows. Prints a table and
# writes it into BENCHMARKS.md. About 7 minutes after the build on a 2-core machine.
#
#   bash deploy/bench-logs.sh                     # full run, updates BENCHMARKS.md
#   BENCH_NO_WRITE=1 bash deploy/bench-logs.sh    # print only
#   BENCH_PARTS=latency BENCH_NO_WRITE=1 bash deploy/bench-logs.sh   # one part
#
# Needs a running Docker daemon (.ci/test.sh starts one: dockerd --bridge=none). Installs
# Debian's busybox-static with apt when it is missing (the test image needs it). Every
# container uses the host's network; no Docker network is created. Everything the bench starts
# (the agent, containers, docker logs processes) is removed at the end, also on failure and
# Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /bin/busybox ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  else
    echo "bench-logs.sh: missing busybox-static and cannot install it here (needs root and apt)" >&2
    exit 1
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "bench-logs.sh: the Docker daemon is not reachable; start it first (.ci/test.sh shows how:" >&2
  echo "  dockerd --bridge=none --iptables=false --ip6tables=false)" >&2
  exit 1
fi

cargo build --release --bin dtma --bin dtma-sandbox --bin dtma-test-mcp --example bench_logs

args=()
[ -n "${BENCH_NO_WRITE:-}" ] || args=(--write BENCHMARKS.md)
# The bench removes everything it started itself, also on SIGINT/SIGTERM.
exec target/release/examples/bench_logs "${args[@]}"
