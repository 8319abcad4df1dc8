#!/usr/bin/env bash
# Benchmarks of the Go binding (make bench-go): the cgo paths beside an empty
# cgo call and beside golang.org/x/time/rate, in ONE go test run. The numbers
# recorded in BENCHMARKS.md come from this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd ../.. && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release --lib)
export CGO_ENABLED=1
export CGO_LDFLAGS="-L$TARGET/release ${CGO_LDFLAGS:-}"
go version
uptime
# -cpu 2: GOMAXPROCS=2, so the parallel benchmarks run one goroutine per P
# (2 goroutines); the others are single-goroutine loops.
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
# BENCH_TAGS=ratethrottle_cgocall: the hot calls as plain cgo calls
# (calls.go); by default they run through asmcgocall.
if [ -n "${BENCH_TAGS:-}" ]; then echo "go test -tags $BENCH_TAGS"; else echo "hot calls: asmcgocall (the default)"; fi
go test -tags "${BENCH_TAGS:-}" -run '^$' -bench . -benchmem -cpu 2 -count "${BENCH_COUNT:-3}" -benchtime "${BENCH_TIME:-1s}" . | tee "$OUT"
uptime

# Medians over the -count repetitions of this run, and the issue's targets.
awk '
  /^Benchmark/ {
    name = $1; sub(/-[0-9]+$/, "", name)
    for (i = 3; i < NF; i++) {
      if ($(i+1) == "ns/op") wall[name] = wall[name] " " $i
      if ($(i+1) == "cpu-ns/op") cpu[name] = cpu[name] " " $i
    }
  }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "\n%-58s %12s %12s\n", "benchmark (median of the run)", "wall ns/op", "cpu ns/op"
    for (n in wall) names[++k] = n
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (names[j] < names[i]) { t = names[i]; names[i] = names[j]; names[j] = t }
    for (i = 1; i <= k; i++) { n = names[i]; W[n] = median(wall[n]); C[n] = median(cpu[n]); printf "%-58s %12.1f %12.1f\n", n, W[n], C[n] }
    e = "BenchmarkEmptyCgo"; m = "BenchmarkCheckMessage"
    printf "\ntarget: CheckMessage <= empty cgo + 30 ns\n"
    printf "  wall: %.1f - %.1f = %.1f ns -> %s\n", W[m], W[e], W[m] - W[e], (W[m] - W[e] <= 30 ? "MET" : "MISSED")
    printf "  cpu:  %.1f - %.1f = %.1f ns -> %s\n", C[m], C[e], C[m] - C[e], (C[m] - C[e] <= 30 ? "MET" : "MISSED")
    h = "BenchmarkEmptyHotCall"; r = "BenchmarkCheckMessageAtRaw"; c = "BenchmarkCheckMessageAtInC"
    printf "\nwhere a raw CheckMessageAt goes (cpu): empty hot call %.1f + engine in C %.1f + the rest %.1f ns\n", C[h], C[c], C[r] - C[h] - C[c]
    printf "  (the rest: what one check per call into C costs beyond those two; near 0 = none)\n"
    printf "  the public CheckMessageAt adds %.1f ns to the raw call (in-flight guard, checks, Decision)\n", C["BenchmarkCheckMessageAt"] - C[r]
    p = "BenchmarkKeyedParallel/mutex-map-x-time-rate"
    split("ratethrottle-connect-close ratethrottle-check-key", kinds, " ")
    printf "\ntarget: keyed checks with 2 goroutines beat the mutex-guarded map (ratio < 1; keys in a shuffled order)\n"
    for (i = 1; i <= 2; i++) {
      r = "BenchmarkKeyedParallel/" kinds[i]
      printf "  %-28s wall %.2fx  cpu %.2fx -> %s\n", kinds[i], W[r] / W[p], C[r] / C[p], (W[r] < W[p] ? "MET" : "MISSED")
    }
    q = "BenchmarkKeyedParallel/mutex-map-conn-slots"; r = "BenchmarkKeyedParallel/ratethrottle-connect-close"
    printf "\ninformation: Connect+Close against the map doing the same work (rate, live count, release on close)\n"
    printf "  %-28s wall %.2fx  cpu %.2fx\n", "ratethrottle-connect-close", W[r] / W[q], C[r] / C[q]
    split("ratethrottle-connect-close ratethrottle-check-key mutex-map-x-time-rate mutex-map-conn-slots", all, " ")
    printf "\nscaling: throughput with 2 goroutines / 1 goroutine (wall)\n"
    for (i = 1; i <= 4; i++) printf "  %-28s %.2fx\n", all[i], W["BenchmarkKeyedSerial/" all[i]] / W["BenchmarkKeyedParallel/" all[i]]
    p = "BenchmarkKeyedParallelInOrder/mutex-map-x-time-rate"
    printf "\ninformation: the same, walking the keys in the order the map inserted them (its limiters then sit in memory in walk order)\n"
    for (i = 1; i <= 2; i++) {
      r = "BenchmarkKeyedParallelInOrder/" kinds[i]
      printf "  %-28s wall %.2fx  cpu %.2fx (2 goroutines / the map)\n", kinds[i], W[r] / W[p], C[r] / C[p]
    }
    for (i = 1; i <= 4; i++) printf "  %-28s 1 goroutine %.1f ns, 2 goroutines %.1f ns (shuffled: %.1f, %.1f)\n", all[i], W["BenchmarkKeyedSerialInOrder/" all[i]], W["BenchmarkKeyedParallelInOrder/" all[i]], W["BenchmarkKeyedSerial/" all[i]], W["BenchmarkKeyedParallel/" all[i]]
  }' "$OUT"
