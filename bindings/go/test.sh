#!/usr/bin/env bash
# Tests of the Go binding (make test-go): builds the engine's static library,
# then gofmt, go vet, go test -race over every package (unit tests through
# cgo, httptest servers with real gorilla and coder clients on 127.0.0.1,
# two processes sharing a region), a cgocheck2 pass over the cgo package,
# both again with -tags ratethrottle_cgocall (calls.go), and the chat demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
HERE="$(pwd)"
ROOT="$(cd ../.. && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '\n== go binding: %s\n' "$*"; }

# --- tools --------------------------------------------------------------
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
apt_install() {
  [ "$(id -u)" = 0 ] || { echo "need $* (not root: install it)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
command -v go >/dev/null 2>&1 || apt_install golang-go   # go.mod's toolchain line then selects Go 1.26
command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
go version

# --- the engine's static library ----------------------------------------
say "cargo build --release --lib (CARGO_TARGET_DIR=$TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release --lib)
test -f "$TARGET/release/libratethrottle.a"
# The package's #cgo LDFLAGS search ../../target/release; flags from
# CGO_LDFLAGS come first, so this directory wins when CARGO_TARGET_DIR is set.
export CGO_ENABLED=1
export CGO_LDFLAGS="-L$TARGET/release ${CGO_LDFLAGS:-}"

say "go mod download / verify"
go mod download
go mod verify

say "gofmt"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi

say "go vet ./... (and with -tags ratethrottle_cgocall)"
go vet ./...
go vet -tags ratethrottle_cgocall ./...

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
status=0

run_tests() { # name, then the command; output kept in $LOG, failures shown in full
  local name="$1"; shift
  say "$name"
  if "$@" >"$LOG" 2>&1; then
    grep -E '^(ok|---|PASS|FAIL)' "$LOG" | grep -vE '^\s+--- PASS' || true
  else
    cat "$LOG"
    status=1
  fi
  passed=$((passed + $(grep -cE '^\s*--- PASS' "$LOG" || true)))
  failed=$((failed + $(grep -cE '^\s*--- FAIL' "$LOG" || true)))
}
passed=0
failed=0

run_tests "go test -race ./..." go test -race -count=1 -timeout 300s -v ./...
# The cgo pointer checks of GOEXPERIMENT=cgocheck2 (no Go pointer kept by C)
# over the package that makes every cgo call (the adapters only call it).
run_tests "GOEXPERIMENT=cgocheck2 go test ." env GOEXPERIMENT=cgocheck2 go test -count=1 -timeout 300s -v .
# The hot calls run through asmcgocall by default (calls.go); the same unit
# tests again with every hot call a plain cgo call, under the race detector
# and cgocheck2.
run_tests "go test -race -tags ratethrottle_cgocall ." go test -race -tags ratethrottle_cgocall -count=1 -timeout 300s -v .
run_tests "GOEXPERIMENT=cgocheck2 go test -tags ratethrottle_cgocall ." env GOEXPERIMENT=cgocheck2 go test -tags ratethrottle_cgocall -count=1 -timeout 300s -v .

say "go run ./examples/chat -demo"
if ! go run ./examples/chat -demo; then
  status=1
fi

if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo
echo "go: $passed passed, $failed failed"
exit "$status"
