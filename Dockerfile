# The agent's container image, for a machine that can pull from a registry:
#
#   docker build --build-arg DTMA_GIT_COMMIT="$(git rev-parse --short HEAD)" -t dtma .
#   docker run -d --name dtma --restart unless-stopped --stop-timeout 30 -p 30000:30000 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -e DTMA_BEARER_TOKEN -e AGENTOPIA_API_BASE_URL -e BACKEND_TO_DTMA_API_KEY dtma
#
# Without a registry (these test machines), deploy/local-image.sh builds the same layout from a
# built binary and busybox-static; tests/container.rs runs that one. Keep the two in step: the
# binary at /usr/local/bin/dtma as the entrypoint, running as root; the sandbox users
# dtma-diagnostics (990) and dtma-operator (991) with their groups; /etc/dtma and /var/log/dtma
# (0700), /tmp and /var/tmp (1777); ENV DTMA_LISTEN=0.0.0.0:30000 and PATH; EXPOSE 30000.

FROM rust:1.95-bookworm AS build
# build.rs records the commit for `dtma --version`; .git is not in the build context.
ARG DTMA_GIT_COMMIT=unknown
ENV DTMA_GIT_COMMIT=${DTMA_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin dtma --bin dtma-sandbox \
 && strip target/release/dtma target/release/dtma-sandbox

# debian:bookworm-slim, not distroless: commands run through /bin/sh with the tools an operator
# expects (grep, sed, awk from the base; ps and ss added), and useradd makes the sandbox's users.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends procps iproute2 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 990 dtma-diagnostics \
 && useradd --system --uid 990 --gid 990 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "dtma sandbox (diagnostics)" dtma-diagnostics \
 && groupadd --system --gid 991 dtma-operator \
 && useradd --system --uid 991 --gid 991 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "dtma sandbox (operator)" dtma-operator \
 && install -d -m 0700 /etc/dtma /var/log/dtma
COPY --from=build /src/target/release/dtma /src/target/release/dtma-sandbox /usr/local/bin/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DTMA_LISTEN=0.0.0.0:30000
EXPOSE 30000
# Root, on purpose. Admin commands are the backend's root shell on the droplet, and the
# sandbox's unprivileged profiles need root to switch to their users; a non-root agent refuses
# them (src/exec/sandbox.rs, `assess`). The mounted Docker socket is root-equivalent anyway.
# As PID 1 the agent runs itself as a child and reaps orphaned processes (src/init.rs), so no
# --init or tini is needed; `docker stop` (SIGTERM) drains it and it exits 0 (give the drain
# time: --stop-timeout 30, above DTMA_SHUTDOWN_GRACE_MS).
USER root
WORKDIR /
ENTRYPOINT ["/usr/local/bin/dtma"]
