#!/usr/bin/env bash
# Benchmarks of the Node binding (make bench-node): the empty N-API call,
# checkMessage through N-API and rate-limiter-flexible's RateLimiterMemory
# in the same run. BENCH_N and BENCH_ROUNDS tune the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
repo=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/node}"
if [ ! -d node_modules ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
else
  npm run build
fi
node bench/bench.js
