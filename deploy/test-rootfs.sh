#!/usr/bin/env bash
# A clean Debian bookworm image for tests/deb.rs, made locally (no registry is reachable):
# `debootstrap --variant=minbase` plus systemd (for `systemctl is-enabled`; nothing runs it),
# imported into Docker. Prints its reference, `dtma-test-debian:bookworm-<YYYYMM>`, on stdout;
# progress goes to stderr.
#
# - The rootfs tarball is cached in $DTMA_TEST_CACHE (default /var/cache/dtma-test), one per
#   month: reruns import it (seconds) instead of bootstrapping again (about 2 minutes); older
#   tarballs and images are removed.
# - Concurrent callers serialise on a lock file; the second finds the first one's image.
#
# Needs: root, debootstrap (.ci/test.sh installs it), a reachable Docker daemon, Debian's mirror
# ($DTMA_DEBIAN_MIRROR, default http://deb.debian.org/debian) when nothing is cached.
set -euo pipefail
umask 022

suite=bookworm
key=$suite-$(date +%Y%m)
repository=dtma-test-debian
image=$repository:$key
cache=${DTMA_TEST_CACHE:-/var/cache/dtma-test}
mirror=${DTMA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/$suite-minbase-systemd-${key#"$suite"-}.tar.gz

die() {
  echo "test-rootfs.sh: $*" >&2
  exit 1
}

command -v docker >/dev/null || die "docker is missing"
if ! err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
  die "the Docker daemon is not reachable: $err (.ci/test.sh starts dockerd)"
fi
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9

exists() { docker image inspect --format '{{.Id}}' "$1" >/dev/null 2>&1; }

if ! exists "$image"; then
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "test-rootfs.sh: bootstrapping $suite from $mirror" >&2
    if ! debootstrap --variant=minbase --include=systemd "$suite" "$work/root" "$mirror" >"$work/log" 2>&1; then
      tail -n 20 "$work/log" >&2
      die "debootstrap failed"
    fi
    # No package lists or downloaded .debs: the tests install local packages only.
    rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$work/root" -czf "$tarball.part" .
    mv "$tarball.part" "$tarball"
  fi
  echo "test-rootfs.sh: importing $tarball as $image" >&2
  docker import "$tarball" "$image" >/dev/null
fi

# Other months' tarballs and images (an image a container still uses is kept).
find "$cache" -maxdepth 1 -name "$suite-minbase-systemd-*.tar.gz" ! -path "$tarball" -delete
docker image ls "$repository" --format '{{.Tag}}' | while IFS= read -r tag; do
  if [ -z "$tag" ] || [ "$tag" = "$key" ]; then continue; fi
  docker rmi "$repository:$tag" >/dev/null 2>&1 || true
done

echo "$image"
