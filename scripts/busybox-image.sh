#!/usr/bin/env bash
# Builds the local image `xene/busybox:latest` that the container executor's tests (and the
# quick start, when no registry is reachable) run tasks in. Nothing is pulled: the root
# filesystem is Debian's statically linked busybox plus one symlink per applet, imported with
# `docker import`. Idempotent: does nothing when the image already exists.
#
# Usage: scripts/busybox-image.sh [IMAGE]   (default xene/busybox:latest)
set -euo pipefail

image="${1:-xene/busybox:latest}"

if ! command -v docker >/dev/null 2>&1; then
  echo "busybox-image: the docker CLI is not installed; install docker.io (or docker-ce)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "busybox-image: cannot reach the Docker engine (is dockerd running, and may $(id -un) use its socket?)" >&2
  exit 1
fi
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
# Test processes run at once may all find the image missing: build it once.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/xene-busybox-image.lock"
  flock 9
  if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
  fi
fi

# Debian's busybox-static is one statically linked binary, so the image needs no libraries.
# shellcheck source=static-busybox.sh
. "$(dirname "$0")/static-busybox.sh"
xene_static_busybox busybox-image || exit 1
busybox=/bin/busybox

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,workspace,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
# `busybox --list-full` gives each applet with its usual directory (bin/sh, usr/bin/seq, ...).
"$busybox" --list-full | while read -r applet; do
  [ -e "$rootfs/$applet" ] || ln -s /bin/busybox "$rootfs/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"

tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'WORKDIR /workspace' \
  --change 'CMD ["/bin/sh"]' \
  - "$image" >/dev/null
echo "busybox-image: built $image" >&2
