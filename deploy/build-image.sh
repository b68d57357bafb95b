#!/usr/bin/env bash
# Builds the image `xene/xene:latest` from files on this machine only (nothing is pulled): the
# three binaries, the shared libraries they load (found with ldd), Debian's busybox-static for
# a shell and the usual tools, and the CA certificates when present, imported as a root
# filesystem with `docker import`. It matches what deploy/Dockerfile builds for users with a
# registry: binaries in /usr/local/bin, data in /var/lib/xene, listeners on 0.0.0.0:7400 (gRPC)
# and 0.0.0.0:7401 (REST), and deploy/docker-entrypoint.sh as the entrypoint.
#
# Idempotent: the image carries a fingerprint of its inputs (binaries' size and time, busybox,
# certificates, this script and the entrypoint) and is left alone when nothing changed.
# Debug binaries are copied without their debug information (strip --strip-debug), which
# makes them several times smaller; symbols stay, so backtraces keep function names.
#
# Usage: deploy/build-image.sh [BIN_DIR]
#   BIN_DIR   where xene-server, xene-agent and xenectl are
#             (default: $XENE_BIN_DIR, else /var/cache/xene/target/debug)
#   XENE_IMAGE=NAME:TAG   the image to build (default: xene/xene:latest)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin_dir="${1:-${XENE_BIN_DIR:-/var/cache/xene/target/debug}}"
image="${XENE_IMAGE:-xene/xene:latest}"
binaries=(xene-server xene-agent xenectl)
entrypoint="$here/docker-entrypoint.sh"
certs=/etc/ssl/certs/ca-certificates.crt

die() {
  echo "build-image: $*" >&2
  exit 1
}

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed; install docker.io (or docker-ce)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running, and may $(id -un) use its socket?)"
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: build the binaries (cargo build --workspace --bins) or pass their directory"
done
[ -f "$entrypoint" ] || die "$entrypoint is missing"

# shellcheck source=../scripts/static-busybox.sh
. "$here/../scripts/static-busybox.sh"
xene_static_busybox build-image || exit 1
busybox=/bin/busybox

fingerprint() {
  {
    for b in "${binaries[@]}"; do stat -L -c '%n %s %Y' "$bin_dir/$b"; done
    stat -L -c '%n %s %Y' "$busybox"
    [ -f "$certs" ] && stat -L -c '%n %s %Y' "$certs"
    cat "$here/build-image.sh" "$entrypoint"
  } | sha256sum | cut -c1-16
}
current_fingerprint() {
  docker image inspect -f '{{ index .Config.Labels "dev.xene.fingerprint" }}' "$image" 2>/dev/null || true
}

want="$(fingerprint)"
if [ "$(current_fingerprint)" = "$want" ]; then
  echo "build-image: $image is up to date ($want)" >&2
  exit 0
fi
# Tests started at once may all find the image stale: build it once.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/xene-build-image.lock"
  flock 9
  if [ "$(current_fingerprint)" = "$want" ]; then
    exit 0
  fi
fi

start=$(date +%s)
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/ssl/certs,root,tmp,var/lib/xene,proc,sys,dev}
chmod 1777 "$rootfs/tmp"

for b in "${binaries[@]}"; do
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
  else
    cp "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  fi
done
cp "$entrypoint" "$rootfs/usr/local/bin/docker-entrypoint.sh"
chmod 0755 "$rootfs/usr/local/bin/"*

# Every shared library the binaries load, and the dynamic loader, at the paths ldd gives.
libs=$(for b in "${binaries[@]}"; do ldd "$bin_dir/$b"; done | awk '
  /not found/ { print "MISSING " $1; next }
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }' | sort -u)
if grep -q '^MISSING' <<<"$libs"; then
  die "libraries not found on this machine: $(grep '^MISSING' <<<"$libs" | cut -d' ' -f2 | tr '\n' ' ')"
fi
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cp "$busybox" "$rootfs/bin/busybox"
# `busybox --list-full` gives each applet with its usual directory (bin/sh, usr/bin/wget...).
"$busybox" --list-full | while read -r applet; do
  [ -e "$rootfs/$applet" ] || ln -s /bin/busybox "$rootfs/$applet"
done
[ -f "$certs" ] && cp -L "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"

tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV XENE_DATA_DIR=/var/lib/xene' \
  --change 'ENV XENE_GRPC_ADDR=0.0.0.0:7400' \
  --change 'ENV XENE_HTTP_ADDR=0.0.0.0:7401' \
  --change 'EXPOSE 7400 7401' \
  --change "LABEL dev.xene.fingerprint=$want" \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["xene-server"]' \
  - "$image" >/dev/null
size=$(docker image inspect -f '{{ .Size }}' "$image")
echo "build-image: built $image ($want, $((size / 1024 / 1024)) MiB) in $(($(date +%s) - start)) s" >&2
