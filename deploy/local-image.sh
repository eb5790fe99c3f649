#!/usr/bin/env bash
# The agent's container image built from local files, for machines that cannot reach a registry
# (these test machines): the same layout as the top-level Dockerfile, with Debian's
# busybox-static for /bin/sh and the tools instead of debian:bookworm-slim. tests/container.rs
# runs it; a person can too. Prints its reference, `dtma-local:<12 hex>`, on stdout; progress
# goes to stderr.
#
#   bash deploy/local-image.sh target/debug/dtma      # what tests/container.rs does
#   bash deploy/local-image.sh target/release/dtma
#   docker run -d --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     -e DTMA_BEARER_TOKEN -e AGENTOPIA_API_BASE_URL -e BACKEND_TO_DTMA_API_KEY "$(bash deploy/local-image.sh target/release/dtma)"
#
# Keep in step with the Dockerfile (a change to one is a change to the other): the binary at
# /usr/local/bin/dtma as the entrypoint, running as root; the sandbox users dtma-diagnostics
# (990) and dtma-operator (991) with their groups; /etc/dtma and /var/log/dtma (0700), /tmp and
# /var/tmp (1777); ENV DTMA_LISTEN=0.0.0.0:30000 and the PATH below; EXPOSE 30000.
#
# - The tag is a hash of every file in the image (path and content) and of the layout, so a
#   rebuilt agent, busybox or libc gives a new tag, and an unchanged one reuses the image.
# - Concurrent callers serialise on a lock file; the second finds the first one's image.
# - Images of other builds are removed when no container uses them and none was built or asked
#   for in the last hour (a marker per tag records the last request).
#
# Needs: a reachable Docker daemon, /bin/busybox (busybox-static), ldd, tar, sha256sum, flock.
set -euo pipefail
umask 022

repository=dtma-local
in_image=/usr/local/bin/dtma
busybox=/bin/busybox
path_env=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
keep_hours=1

die() {
  echo "local-image.sh: $*" >&2
  exit 1
}

[ $# -eq 1 ] || die "usage: local-image.sh DTMA_BINARY"
agent=$1
[ -f "$agent" ] || die "$agent is missing: build it with cargo build --release --bin dtma"
[ -f "$busybox" ] || die "$busybox is missing: install Debian's busybox-static (.ci/test.sh does)"
for tool in docker ldd tar sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
if ! err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
  die "the Docker daemon is not reachable: $err (.ci/test.sh starts dockerd)"
fi

# Every applet this busybox has, linked in /bin (the image's shell and tools).
mapfile -t applets < <("$busybox" --list | grep -vx busybox | sort)
[ ${#applets[@]} -gt 0 ] || die "$busybox --list printed nothing"

# The user database: root and the sandbox's users, with the Dockerfile's ids.
passwd='root:x:0:0:root:/root:/bin/sh
dtma-diagnostics:x:990:990:dtma sandbox (diagnostics):/nonexistent:/usr/sbin/nologin
dtma-operator:x:991:991:dtma sandbox (operator):/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin'
group='root:x:0:
dtma-diagnostics:x:990:
dtma-operator:x:991:
nogroup:x:65534:'

# `libraries BINARY`: the shared libraries a binary needs, as image lines.
# shellcheck source=deploy/rootfs-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/rootfs-lib.sh"
# The small sandbox launcher beside the agent (src/bin/dtma-sandbox.rs), when it was built; the
# agent falls back to `dtma sandbox-exec` without it.
launcher=$(dirname "$agent")/dtma-sandbox
files=$(
  {
    printf '%s\t%s\n' "$agent" "$in_image"
    if [ -f "$launcher" ]; then
      printf '%s\t%s\n' "$launcher" "$(dirname "$in_image")/dtma-sandbox"
      libraries "$launcher"
    fi
    printf '%s\t%s\n' "$busybox" "$busybox"
    libraries "$agent"
    libraries "$busybox"
  } | sort -t $'\t' -k2,2 -u
)

# The layout is part of the content: a change to it must give a new tag.
layout="layout 1 entrypoint=$in_image path=$path_env applets=${applets[*]}
$passwd
$group"
hash=$(
  {
    echo "$layout"
    while IFS=$'\t' read -r src dest; do
      sum=$(sha256sum <"$src") || die "cannot read $src"
      echo "$dest ${sum%% *}"
    done <<<"$files"
  } | sha256sum
)
tag="$repository:${hash:0:12}"

exists() { docker image inspect --format '{{.Id}}' "$1" >/dev/null 2>&1; }

state=${TMPDIR:-/tmp}/dtma-local-images
mkdir -p "$state"
exec 9>"$state/lock"
flock 9
touch "$state/${hash:0:12}"

if ! exists "$tag"; then
  echo "local-image.sh: building $tag" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  mkdir -m 755 "$root"
  mkdir -p -m 755 "$root/bin" "$root/etc" "$root/usr/local/bin" "$root/usr/sbin" "$root/var"
  mkdir -m 1777 "$root/tmp" "$root/var/tmp"
  mkdir -m 700 "$root/root" "$root/etc/dtma"
  mkdir -p -m 755 "$root/var/log"
  mkdir -m 700 "$root/var/log/dtma"
  while IFS=$'\t' read -r src dest; do
    mkdir -p "$root$(dirname "$dest")"
    # Follows symlinks: the image gets the library itself at the path ldd printed.
    cp -L "$src" "$root$dest"
    chmod 755 "$root$dest"
  done <<<"$files"
  for applet in "${applets[@]}"; do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  ln -s /bin/busybox "$root/usr/sbin/nologin"
  printf '%s\n' "$passwd" >"$root/etc/passwd"
  printf '%s\n' "$group" >"$root/etc/group"
  chmod 644 "$root/etc/passwd" "$root/etc/group"
  tar --owner=0 --group=0 --numeric-owner -C "$root" -c . |
    docker import \
      --change "ENV PATH=$path_env" \
      --change "ENV DTMA_LISTEN=0.0.0.0:30000" \
      --change "EXPOSE 30000" \
      --change "WORKDIR /" \
      --change "USER root" \
      --change "ENTRYPOINT [\"$in_image\"]" \
      - "$tag" >/dev/null
fi

# Other builds' images, unless built or asked for within the last hour. `docker rmi` without -f
# refuses an image a container uses, as wanted.
cutoff=$(($(date +%s) - keep_hours * 3600))
docker image ls "$repository" --format '{{.Tag}}' | while IFS= read -r other; do
  [ -n "$other" ] && [ "$other" != "${hash:0:12}" ] || continue
  if [ -n "$(find "$state" -maxdepth 1 -name "$other" -mmin -$((keep_hours * 60)))" ]; then
    continue
  fi
  created=$(docker image inspect --format '{{.Created}}' "$repository:$other" 2>/dev/null) || continue
  created=$(date -d "$created" +%s 2>/dev/null) || continue
  [ "$created" -lt "$cutoff" ] || continue
  if docker rmi "$repository:$other" >/dev/null 2>&1; then
    rm -f "$state/$other"
  fi
done
find "$state" -maxdepth 1 -type f -name '[0-9a-f]*' -mmin +$((keep_hours * 60)) | while IFS= read -r marker; do
  exists "$repository:${marker##*/}" || rm -f "$marker"
done

echo "$tag"
