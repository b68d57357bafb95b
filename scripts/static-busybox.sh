# shellcheck shell=bash
# Sourced by the image scripts: `xene_static_busybox WHO` makes sure /bin/busybox is Debian's
# statically linked busybox (one binary, no libraries), installing busybox-static with apt-get
# when it is not (Debian's plain `busybox` package also installs /bin/busybox, but linked
# dynamically); it returns non-zero with a message on stderr, naming WHO, when it cannot.

is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }

xene_static_busybox() {
  local who="$1" busybox=/bin/busybox sudo=""
  is_static "$busybox" && return 0
  echo "$who: installing busybox-static with apt-get" >&2
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq busybox-static >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq busybox-static >/dev/null
  fi
  is_static "$busybox" || { echo "$who: $busybox is not statically linked" >&2; return 1; }
}
