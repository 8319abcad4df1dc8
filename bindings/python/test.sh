#!/usr/bin/env bash
# Tests of the Python binding: builds the package (PyO3 + maturin) into a
# venv under the build area, lints it, and runs every test (pytest).
# Env: CARGO_TARGET_DIR (default <repo>/target), RT_PYTHON_VENV (default
# $CARGO_TARGET_DIR/python-venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
root=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
venv="${RT_PYTHON_VENV:-$CARGO_TARGET_DIR/python-venv}"
python="${PYTHON:-python3}"

step() { printf '\n== python: %s\n' "$*"; }

step "tools"
if ! command -v "$python" >/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip
fi
if ! command -v cargo >/dev/null; then
  echo "cargo (Rust stable) is required to build the extension" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip
    rm -rf "$venv"
    apt-get update -qq && apt-get install -y -qq python3-venv
    "$python" -m venv "$venv"
  fi
fi
"$venv/bin/python" --version

step "install the package (maturin builds the PyO3 extension) and test tools"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
"$venv/bin/pip" install -q --disable-pip-version-check "ruff==0.17.6" "$here[test]"
(cd /tmp && "$venv/bin/python" -c 'import ratethrottle, ratethrottle._engine as e; print("ratethrottle", ratethrottle.__version__, "engine", e.VERSION, "from", ratethrottle.__file__)')

step "lint: ruff check, ruff format --check, cargo fmt --check"
"$venv/bin/ruff" check ratethrottle tests bench
"$venv/bin/ruff" format --check ratethrottle tests bench
cargo fmt --check --manifest-path Cargo.toml

step "pytest (API, bad input, fake-clock exactness, every example of docs/seed-websocket.rst on real servers, limits shared by real processes and a uvicorn --workers 2 server, half-open clients freed by the servers' pings: uvicorn, engine.io, daphne)"
# Run from tests/ so the installed package, not the source folder, is imported.
cd tests
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -q -rfEs
rc=$?
set -e
if [ "$rc" -eq 0 ]; then
  echo "python binding: all tests passed"
else
  echo "python binding: tests FAILED (pytest exit $rc)"
fi
exit "$rc"
