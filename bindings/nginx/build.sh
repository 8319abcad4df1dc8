#!/usr/bin/env bash
# Builds ngx_http_ratethrottle_module.so against the machine's nginx
# (Debian's nginx + nginx-dev), linking the engine's static library.
#
#   bash bindings/nginx/build.sh      -> prints the path of the .so
#
# Output: ${CARGO_TARGET_DIR:-<repo>/target}/nginx-build/objs/ngx_http_ratethrottle_module.so
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
BUILD="$TARGET/nginx-build"
LIB="$TARGET/release/libratethrottle.a"

log() { echo "[nginx-build] $*" >&2; }

need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
[ -d /usr/share/nginx/src ] || need_pkgs+=(nginx-dev)
for p in libpcre2-dev zlib1g-dev libssl-dev gcc make; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # policy-rc.d keeps the package from starting the system nginx service
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q "${need_pkgs[@]}" >&2
fi

if [ ! -f "$LIB" ]; then
    log "building the engine's static library ($LIB)"
    (cd "$REPO" && cargo build --release --lib >&2)
fi

# shellcheck disable=SC1091
. /usr/share/nginx/src/conf_flags

mkdir -p "$BUILD"
stamp="$BUILD/.configured"
want="$(nginx -v 2>&1) $(sha256sum "$HERE/config" | cut -c1-16) $LIB"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -f "$BUILD/src/objs/Makefile" ]; then
    log "configuring against $(nginx -v 2>&1)"
    rm -rf "$BUILD/src"
    cp -a /usr/share/nginx/src/. "$BUILD/src/"
    (cd "$BUILD/src" && RATETHROTTLE_LIB="$LIB" ./configure "${NGX_CONF_FLAGS[@]}" \
        --add-dynamic-module="$HERE" >"$BUILD/configure.log" 2>&1) \
        || { tail -30 "$BUILD/configure.log" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

SO="$BUILD/src/objs/ngx_http_ratethrottle_module.so"
# the static library is not a make dependency of the module: relink by hand
if [ -f "$SO" ] && [ "$LIB" -nt "$SO" ]; then
    rm -f "$SO"
fi

log "compiling the module"
(cd "$BUILD/src" && make -f objs/Makefile modules >"$BUILD/make.log" 2>&1) \
    || { tail -40 "$BUILD/make.log" >&2; exit 1; }

[ -f "$SO" ] || { log "no module built"; exit 1; }
echo "$SO"
