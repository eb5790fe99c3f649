#!/usr/bin/env bash
# The Docker image that the MCP tests and the MCP benchmark deploy: the test MCP server
# (tests/support/mcp_server.rs, built by cargo as `dtma-test-mcp`) with Debian's busybox-static
# and the shared libraries both need, imported from local files (no registry is needed).
# Prints its reference, `dtma-test-mcp:<12 hex>`, on stdout; progress goes to stderr.
#
#   bash deploy/test-image.sh target/debug/dtma-test-mcp     # what the tests do
#   bash deploy/test-image.sh target/release/dtma-test-mcp   # what deploy/bench-mcp.sh does
#
# - The tag is a hash of every file in the image (path and content) and of the layout, so a
#   rebuilt server, busybox or libc gives a new tag, and an unchanged one reuses the image.
# - Concurrent callers serialise on a lock file; the second finds the first one's image.
# - Images of other builds are removed when no container uses them and none was built or asked
#   for in the last hour (a marker per tag records the last request), so parallel test runs of
#   different builds (other worktrees) do not delete each other's image between two tests.
#
# Needs: a reachable Docker daemon (.ci/test.sh starts dockerd), /bin/busybox (busybox-static),
# ldd, tar, sha256sum, flock.
set -euo pipefail
umask 022

repository=dtma-test-mcp
in_image=/usr/local/bin/dtma-test-mcp
busybox=/bin/busybox
applets=(sh sleep cat echo head env)
# Hours an image of another build is kept after its last request.
keep_hours=1

die() {
  echo "test-image.sh: $*" >&2
  exit 1
}

[ $# -eq 1 ] || die "usage: test-image.sh MCP_SERVER_BINARY"
server=$1
[ -f "$server" ] || die "$server is missing: build it with cargo build --bin dtma-test-mcp"
[ -f "$busybox" ] || die "$busybox is missing: install Debian's busybox-static (.ci/test.sh does)"
for tool in docker ldd tar sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
if ! err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
  die "the Docker daemon is not reachable: $err (.ci/test.sh starts dockerd)"
fi

# `libraries BINARY`: the shared libraries a binary needs, as image lines.
# shellcheck source=deploy/rootfs-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/rootfs-lib.sh"
files=$(
  {
    printf '%s\t%s\n' "$server" "$in_image"
    printf '%s\t%s\n' "$busybox" "$busybox"
    libraries "$server"
    libraries "$busybox"
  } | sort -t $'\t' -k2,2 -u
)

# The layout is part of the content: a change to it must give a new tag.
hash=$(
  {
    echo "layout 2 applets=${applets[*]} entrypoint=$in_image"
    while IFS=$'\t' read -r src dest; do
      sum=$(sha256sum <"$src") || die "cannot read $src"
      echo "$dest ${sum%% *}"
    done <<<"$files"
  } | sha256sum
)
tag="$repository:${hash:0:12}"

exists() { docker image inspect --format '{{.Id}}' "$1" >/dev/null 2>&1; }

state=${TMPDIR:-/tmp}/dtma-test-mcp-images
mkdir -p "$state"
exec 9>"$state/lock"
flock 9
touch "$state/${hash:0:12}"

if ! exists "$tag"; then
  echo "test-image.sh: building $tag" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  mkdir -m 755 "$root"
  mkdir -m 1777 "$root/tmp"
  while IFS=$'\t' read -r src dest; do
    mkdir -p "$root$(dirname "$dest")"
    # Follows symlinks: the image gets the library itself at the path ldd printed.
    cp -L "$src" "$root$dest"
    chmod 755 "$root$dest"
  done <<<"$files"
  for applet in "${applets[@]}"; do
    ln -s busybox "$root/bin/$applet"
  done
  tar --owner=0 --group=0 --numeric-owner -C "$root" -c . |
    docker import --change "ENTRYPOINT [\"$in_image\"]" - "$tag" >/dev/null
fi

# Other builds' images, unless built or asked for within the last hour (a caller without a
# marker, such as an older copy of this script, is covered by the build time). `docker rmi`
# without -f refuses an image a container uses, as wanted.
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
# Markers of images that are gone (removed by hand or by another caller).
find "$state" -maxdepth 1 -type f -name '[0-9a-f]*' -mmin +$((keep_hours * 60)) | while IFS= read -r marker; do
  exists "$repository:${marker##*/}" || rm -f "$marker"
done

echo "$tag"
