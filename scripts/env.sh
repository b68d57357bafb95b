# Sourced by every script: installs what a build needs on a fresh Debian machine and points
# cargo at build caches outside the clone, so later runs on the same machine are warm.
# Measured (shared/BUILD.md): a cold build is about 20 minutes, most of it RocksDB's C++;
# with ccache warm, RocksDB rebuilds in under a minute.

xene_need_packages() {
  local missing=()
  command -v ccache >/dev/null 2>&1 || missing+=(ccache)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  # bindgen (RocksDB's build script) needs libclang.
  # (libclang-cpp, which other packages bring, is not it: bindgen loads libclang.so itself.)
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' \
    >/dev/null || missing+=(libclang-dev)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  # etcd-client (the benchmarks' etcd peer) compiles etcd's protos with the system protoc.
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  # The compose test runs a cluster of containers with Docker's Compose tool.
  if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
    && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "xene: installing ${missing[*]} with apt-get" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

xene_need_packages

export XENE_CACHE_DIR="${XENE_CACHE_DIR:-/var/cache/xene}"
mkdir -p "$XENE_CACHE_DIR" 2>/dev/null || XENE_CACHE_DIR="$HOME/.cache/xene"
mkdir -p "$XENE_CACHE_DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$XENE_CACHE_DIR/target}"
export CCACHE_DIR="${CCACHE_DIR:-$XENE_CACHE_DIR/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# RocksDB's sources live in cargo's registry, the same path from any clone; let ccache hit
# across clones anyway.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-/}"
export CCACHE_NOHASHDIR=1
export XENE_BIN_DIR="$CARGO_TARGET_DIR/debug"
