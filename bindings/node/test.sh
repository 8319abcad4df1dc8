#!/usr/bin/env bash
# Tests of the Node binding (make test-node). Installs what it needs when
# missing (node/npm from apt, the npm packages with `npm ci`, rustfmt and
# clippy with rustup), builds the addon (release) and runs: node --check on
# every JS file, tsc on the typings, cargo fmt --check and clippy -D warnings
# on the addon crate, and every `node --test` file. Exits non-zero on any
# failure. The addon builds into $CARGO_TARGET_DIR, default <repo>/target/node.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
repo=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/node}"
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

declare -a summary=()
step() {
  local name=$1
  shift
  echo "==> $name"
  local t0=$SECONDS
  if "$@"; then
    summary+=("ok      $name ($((SECONDS - t0)) s)")
  else
    summary+=("FAILED  $name ($((SECONDS - t0)) s)")
    print_summary
    exit 1
  fi
}
print_summary() {
  echo
  echo "node binding summary:"
  printf '  %s\n' "${summary[@]}"
}

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found: installing from apt"
    apt-get update -qq && apt-get install -y -qq nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 18 ]; then
    echo "node $(node --version) is too old: the binding needs Node 18 or later" >&2
    return 1
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; return 1; }
  echo "node $(node --version), npm $(npm --version), $(cargo --version)"
}

install_and_build() {
  # npm ci runs the package's install script, which builds the addon.
  if [ -f package-lock.json ]; then npm ci; else npm install; fi
  ls native/*.node
}

check_js() {
  local f
  for f in index.js ws.js socketio.js lib/*.js scripts/*.js examples/*.js bench/*.js test/*.js test/fixtures/*.js; do
    node --check "$f"
  done
}

rust_lint() {
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  cargo fmt -- --check
  cargo clippy --release --locked -- -D warnings
}

step "toolchain (node, npm, cargo)" need_node
step "npm ci + build the addon (release)" install_and_build
step "node --check on every JS file" check_js
step "tsc --noEmit on index.d.ts, ws.d.ts, socketio.d.ts (test/types)" npx tsc -p test/types/tsconfig.json
step "cargo fmt --check + clippy -D warnings (addon crate)" rust_lint
step "node --test (unit, ws, socket.io, cluster, examples)" node --test --test-concurrency=1 test/*.test.js
print_summary
