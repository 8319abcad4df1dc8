#!/usr/bin/env bash
# Tests of the nginx module (make test-nginx): installs nginx, nginx-dev and
# the build dependencies when missing, builds the module against Debian's
# nginx, and runs a real nginx (2 workers) with it on 127.0.0.1, proxying to
# a real WebSocket echo backend, with real clients.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
VENV="$TARGET/nginx-venv"
cd "$HERE"

step() { echo "== nginx: $*"; }

step "building the module"
SO="$(bash "$HERE/build.sh")"
echo "module: $SO ($(du -h "$SO" | cut -f1))"

step "python venv for the clients and the backend ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt

step "lint: python -m compileall, go vet + gofmt (bench tool), module loads (nginx -t)"
"$VENV/bin/python" -m compileall -q tests >/dev/null
if command -v go >/dev/null; then
    (cd bench && go vet ./... && test -z "$(gofmt -l .)")
else
    echo "go not found: bench tool not vetted (it is only used by bench.sh)"
fi
tmp="$(mktemp -d "/tmp/rt-nginx-t-$$-XXXX")"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/t.conf" <<CONF
load_module $SO;
pid $tmp/t.pid;
error_log $tmp/t.log;
events {}
http {
    ratethrottle_zone \$binary_remote_addr zone=t:1m;
    server { listen 127.0.0.1:1; location / { ratethrottle zone=t; } }
}
CONF
nginx -p "$tmp/" -c "$tmp/t.conf" -e "$tmp/t.log" -t

step "end-to-end tests"
timeout 600 "$VENV/bin/python" tests/test_nginx.py --module "$SO"

step "the Autobahn testsuite through the module (W10)"
bash tests/autobahn.sh "$SO" "$VENV/bin/python"

# The same tests with nginx (master and workers) under valgrind memcheck,
# which also checks the engine inside the module. The reload test is left
# out here only: under valgrind the workers' titles ("is shutting down")
# are not visible, which that test needs; it ran above.
step "end-to-end tests under valgrind memcheck"
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
timeout 900 "$VENV/bin/python" tests/test_nginx.py --module "$SO" --valgrind --skip reload

echo "nginx module: all tests passed (plain and under valgrind)"
