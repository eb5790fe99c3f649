#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs format,
# lint and every test. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in curl python3; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
# The Docker tests build their images from local files (no registry is reachable here), with
# /bin/busybox from busybox-static (deploy/test-image.sh, deploy/local-image.sh for the
# agent's own image in tests/container.rs, and the log writer of gateway/tests/console.rs);
# docker-compose runs the benchmark's stack.
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
# tests/systemd.rs checks deploy/dtma.service with `systemd-analyze verify`.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# tests/deb.rs: a Debian rootfs made with debootstrap (cached under /var/cache/dtma-test), the
# scripts checked with shellcheck, cloud-init.yaml parsed with PyYAML, the package's Depends
# computed by dpkg-shlibdeps (dpkg-dev).
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)
# gateway/tests/console.rs drives the web console in headless chromium through chromedriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# gateway/tests/cluster.rs runs a real nats-server (JetStream) and three gateway nodes.
command -v nats-server >/dev/null || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# deploy/deb.sh (tests/deb.rs builds the package with it).
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb

# A real Docker daemon for the Docker tests. No bridge network may exist on these machines:
# containers in tests use --network host or none.
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  nohup dockerd --bridge=none --iptables=false --ip6tables=false >/tmp/dtma-dockerd.log 2>&1 &
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /tmp/dtma-dockerd.log; exit 1; }
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked
