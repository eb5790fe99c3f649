#!/usr/bin/env bash
# Benchmarks, each printed as a table and written into BENCHMARKS.md:
# 1. the dtma agent next to OpenSSH on loopback (exec round trip, 1 GiB streamed over ws:// and
#    wss://, RSS idle and with 1,000 streams); a few minutes on a 2-core machine;
# 2. dtma-gateway with 10,000 simulated agents next to nats-server with as many idle clients
#    (memory per connection, heartbeat CPU, exec fan-out to 1,000 agents), then three gateway
#    nodes on nats-server -js (cross-node request overhead; failover of 1,000 agents after a
#    node is killed); about 2 minutes.
#
#   bash deploy/bench.sh                       # both, updates BENCHMARKS.md
#   BENCH_NO_WRITE=1 bash deploy/bench.sh      # print only
#   BENCH_SKIP_GATEWAY=1 bash deploy/bench.sh  # only the agent's benchmark
#   BENCH_ONLY_GATEWAY=1 bash deploy/bench.sh  # only the gateway's benchmark
#   BENCH_BYTES=67108864 BENCH_STREAMS=100 bash deploy/bench.sh   # smaller, quicker run
#   BENCH_GW_AGENTS=2000 BENCH_GW_FANOUT=200 BENCH_GW_WINDOW_SECS=5 ...  # smaller gateway run
#   BENCH_ONLY_GATEWAY=1 BENCH_GW_CLUSTER_ONLY=1 bash deploy/bench.sh      # only the cluster rows
#
# Everything it starts (agent, sshd, ssh master, node, commands, gateway, nats-server) is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Install Debian packages without starting their services (the benches start their own).
apt_install() {
  local what="$1"
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; } ||
      echo "bench.sh: could not install $what; its rows will be n/a" >&2
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  else
    echo "bench.sh: $what is missing and cannot be installed here; its rows will be n/a" >&2
  fi
}

write_args=()
[ -n "${BENCH_NO_WRITE:-}" ] || write_args=(--write BENCHMARKS.md)

if [ -z "${BENCH_ONLY_GATEWAY:-}" ]; then
  # OpenSSH server and client for the side-by-side rows (the bench prints n/a if sshd is missing).
  if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    apt_install openssh openssh-server openssh-client
  fi

  cargo build --release --bin dtma --bin dtma-sandbox --example bench
  # The bench stops everything it started itself, also on SIGINT/SIGTERM.
  target/release/examples/bench "${write_args[@]}"
fi

if [ -z "${BENCH_SKIP_GATEWAY:-}" ]; then
  # The peer of the gateway's rows, and the cluster rows' NATS (n/a when missing).
  command -v nats-server >/dev/null || apt_install nats-server nats-server
  cargo build --release -p dtma-gateway --bin dtma-gateway --example gateway_bench
  target/release/examples/gateway_bench "${write_args[@]}"
fi
