#!/usr/bin/env bash
# Benchmarks of the Python binding against the original package (PyPI
# ratethrottle 1.4.0, same package name, so in a separate venv): the same
# workload script runs in both venvs in this one run; ratios are printed.
# Env: CARGO_TARGET_DIR, RT_PYTHON_VENV (as test.sh), RT_PYTHON_SEED_VENV,
# BENCH_N (calls per timed run, default 50000; the seed: BENCH_SEED_N, default
# 5000), BENCH_REPEATS (timed runs per process, default 7), BENCH_ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
root=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
venv="${RT_PYTHON_VENV:-$CARGO_TARGET_DIR/python-venv}"
seed_venv="${RT_PYTHON_SEED_VENV:-$CARGO_TARGET_DIR/python-seed-venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
[ -x "$seed_venv/bin/python" ] || "$python" -m venv "$seed_venv"
echo "== installing this binding (release build) into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$here"
echo "== installing the original package, ratethrottle==1.4.0, into $seed_venv"
# 1.4.0 imports pyyaml, graphql-core and grpcio at import time without
# declaring them; install them so that `import ratethrottle` works.
"$seed_venv/bin/pip" install -q --disable-pip-version-check "ratethrottle==1.4.0" pyyaml graphql-core grpcio

out=$(mktemp)
trap 'rm -f "$out"' EXIT
cd /tmp  # import the installed packages, never a source folder
rounds="${BENCH_ROUNDS:-3}"
echo "== workload: bench/workload.py in both venvs, alternating, $rounds rounds (same run)"
# The machine is shared and noisy: the rounds alternate between the two
# packages and each operation keeps its best round. The seed runs fewer calls
# per timed run (its calls are ~30x slower) so both time runs of similar length.
for _ in $(seq "$rounds"); do
  "$venv/bin/python" "$here/bench/workload.py" | tee -a "$out"
  BENCH_N="${BENCH_SEED_N:-5000}" "$seed_venv/bin/python" "$here/bench/workload.py" | tee -a "$out"
done
echo
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), command: make bench-python (bash bindings/python/bench.sh)"
"$venv/bin/python" "$here/bench/compare.py" "$out"
