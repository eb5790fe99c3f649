#!/usr/bin/env bash
# Benchmark: the dtma agent next to OpenSSH on loopback (exec round trip, 1 GiB streamed over
# ws:// and wss://, RSS idle and with 1,000 streams). Prints a table and writes it into
# BENCHMARKS.md. Takes a few minutes on a 2-core machine.
#
#   bash deploy/bench.sh                 # full run, updates BENCHMARKS.md
#   BENCH_NO_WRITE=1 bash deploy/bench.sh  # print only
#   BENCH_BYTES=67108864 BENCH_STREAMS=100 bash deploy/bench.sh   # smaller, quicker run
#
# Everything it starts (agent, sshd, ssh master, node, commands) is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenSSH server and client for the side-by-side rows (the bench prints n/a if sshd is missing).
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Install without starting the system's sshd service (the bench starts its own).
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    { apt-get update -qq && apt-get install -y -qq openssh-server openssh-client >/dev/null; } ||
      echo "bench.sh: could not install openssh; its rows will be n/a" >&2
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  else
    echo "bench.sh: openssh-server is missing and cannot be installed here; its rows will be n/a" >&2
  fi
fi

cargo build --release --bin dtma --bin dtma-sandbox --example bench

args=()
[ -n "${BENCH_NO_WRITE:-}" ] || args=(--write BENCHMARKS.md)
# The bench stops everything it started itself, also on SIGINT/SIGTERM.
exec target/release/examples/bench "${args[@]}"
