#!/usr/bin/env bash
# The nightly-only jobs: Miri over the engine and ABI tests (tests/miri),
# ThreadSanitizer over the engine's unit and behaviour tests (the std built
# with it, -Zbuild-std), and a time-bounded cargo-fuzz run of every fuzz
# target (fuzz/).
#
# Usage: scripts/nightly.sh [all|miri|tsan|fuzz]   (default: all)
#
# Environment:
#   NIGHTLY        the nightly toolchain to use (default: nightly)
#   FUZZ_SECONDS   libFuzzer time per target, in seconds (default: 30)
#
# The nightly toolchain (and Miri, rust-src, cargo-fuzz) is installed when
# missing. If an install is refused or times out, the jobs that need it are
# skipped with the reason, and the script exits 0: the stable jobs carry the
# verdict (TEST-PLAN.md, "Nightly on these machines"). A Miri or TSan failure, or a
# fuzzer finding (crash, invariant violation, leak, timeout) exits non-zero;
# a finding's input is kept under fuzz/artifacts/<target>/ and the command
# that replays it is printed.
#
# The committed seed corpus (fuzz/corpus/<target>/) is copied to a temporary
# directory before each run, so the fuzzer never grows it. Builds go to
# target/miri, target/tsan and target/fuzz, apart from the main build cache.
set -euo pipefail

usage() {
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

JOB="${1:-all}"
case "$JOB" in
    all | miri | tsan | fuzz) ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NIGHTLY="${NIGHTLY:-nightly}"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
FUZZ_TARGETS=(abi_sequence region_attach limits_validate)
# Per-input limit: a well-behaved input takes milliseconds; a hang is a finding.
FUZZ_INPUT_TIMEOUT=20

SUMMARY=()
FAILED=0
START=$SECONDS

note() { SUMMARY+=("$1"); }

summary() {
    echo
    echo "== nightly jobs: summary (toolchain $NIGHTLY, $((SECONDS - START)) s) =="
    local line
    for line in "${SUMMARY[@]}"; do
        echo "  $line"
    done
}

# Skips every nightly job, with the reason, and exits 0.
skip_all() {
    echo "SKIPPED: nightly jobs (miri, tsan, fuzz): $1"
    note "miri: SKIPPED ($1)"
    note "tsan: SKIPPED ($1)"
    note "fuzz: SKIPPED ($1)"
    summary
    exit 0
}

# ---- the toolchain ----------------------------------------------------------

# Runs an install step under a timeout, showing its output; on failure sets
# WHY to "'<command>' <what happened>: <its last line>" and returns 1.
WHY=""
install_step() {
    local secs="$1" out rc=0
    shift
    out="$(mktemp "${TMPDIR:-/tmp}/rt-install.XXXXXX")"
    timeout "$secs" "$@" 2>&1 | tee "$out" || rc=$?
    if ((rc != 0)); then
        local last
        # Its first error line, else its last line.
        last="$( (grep -i -m 1 '^error' "$out" || grep -v '^[[:space:]]*$' "$out" | tail -n 1) | cut -c1-200)"
        if ((rc == 124)); then
            WHY="'$*' timed out after $secs s"
        else
            WHY="'$*' failed (exit $rc)${last:+: $last}"
        fi
    fi
    rm -f "$out"
    return "$rc"
}

command -v rustup >/dev/null 2>&1 || skip_all "rustup not found"
HOST="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"

have_toolchain() {
    rustup toolchain list 2>/dev/null | awk '{print $1}' | grep -qx -e "$NIGHTLY" -e "$NIGHTLY-$HOST"
}

if ! have_toolchain; then
    echo "Installing toolchain $NIGHTLY (minimal profile) ..."
    install_step 600 rustup toolchain install "$NIGHTLY" --profile minimal || skip_all "$WHY"
fi

if [[ "$JOB" != fuzz ]]; then
    missing=()
    installed="$(rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null || true)"
    grep -q '^miri' <<<"$installed" || missing+=(miri)
    grep -q '^rust-src' <<<"$installed" || missing+=(rust-src)
    if ((${#missing[@]})); then
        echo "Adding ${missing[*]} to $NIGHTLY ..."
        install_step 300 rustup component add --toolchain "$NIGHTLY" "${missing[@]}" || skip_all "$WHY"
    fi
    cargo "+$NIGHTLY" miri --version >/dev/null 2>&1 || skip_all "'cargo +$NIGHTLY miri' does not run"
fi
echo "Toolchain: $(rustc "+$NIGHTLY" --version)"

# ---- miri -------------------------------------------------------------------

run_miri() {
    echo
    echo "== miri: tests/engine.rs and tests/ffi.rs (tests/miri) =="
    local t0=$SECONDS rc=0
    (
        cd tests/miri
        MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-strict-provenance -Zmiri-symbolic-alignment-check" \
            CARGO_TARGET_DIR="$ROOT/target/miri" \
            cargo "+$NIGHTLY" miri test -- -Zunstable-options --report-time
    ) || rc=$?
    if ((rc == 0)); then
        note "miri: PASSED ($((SECONDS - t0)) s)"
    else
        note "miri: FAILED (exit $rc, $((SECONDS - t0)) s; see the test output above)"
        FAILED=1
    fi
}

# ---- tsan -------------------------------------------------------------------

run_tsan() {
    echo
    echo "== tsan: the lib's unit tests and tests/engine.rs under ThreadSanitizer =="
    local t0=$SECONDS rc=0
    # A report makes the test process exit non-zero (TSan's exitcode 66).
    RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR="$ROOT/target/tsan" \
        cargo "+$NIGHTLY" test -Zbuild-std --target "$HOST" --lib --test engine || rc=$?
    if ((rc == 0)); then
        note "tsan: PASSED ($((SECONDS - t0)) s)"
    else
        note "tsan: FAILED (exit $rc, $((SECONDS - t0)) s; see the reports above)"
        FAILED=1
    fi
}

# ---- fuzz -------------------------------------------------------------------

run_fuzz() {
    echo
    echo "== fuzz: ${FUZZ_TARGETS[*]}, $FUZZ_SECONDS s each =="
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "Installing cargo-fuzz (crates.io) ..."
        if ! install_step 900 cargo install cargo-fuzz --locked; then
            echo "SKIPPED: fuzz: $WHY"
            note "fuzz: SKIPPED ($WHY)"
            return
        fi
    fi
    export CARGO_TARGET_DIR="$ROOT/target/fuzz"
    # -a: debug assertions and overflow checks on (cargo-fuzz turns them off
    # in its default release build); AddressSanitizer is cargo-fuzz's default.
    local build=(cargo "+$NIGHTLY" fuzz build --fuzz-dir fuzz -a)
    local t0=$SECONDS
    if ! "${build[@]}"; then
        note "fuzz: FAILED (the fuzz targets do not build)"
        FAILED=1
        return
    fi
    echo "Built the fuzz targets in $((SECONDS - t0)) s"
    local target
    for target in "${FUZZ_TARGETS[@]}"; do
        fuzz_one "$target"
    done
}

fuzz_one() {
    local target="$1" t0=$SECONDS rc=0
    local corpus artifacts="$ROOT/fuzz/artifacts/$target" log
    corpus="$(mktemp -d "${TMPDIR:-/tmp}/rt-corpus-$target.XXXXXX")"
    log="$(mktemp "${TMPDIR:-/tmp}/rt-fuzz-$target.XXXXXX.log")"
    if [[ -d "fuzz/corpus/$target" ]]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    mkdir -p "$artifacts"
    local marker="$corpus/.started"
    touch "$marker"
    echo
    echo "-- fuzz $target ($FUZZ_SECONDS s, seed corpus fuzz/corpus/$target copied to $corpus)"
    cargo "+$NIGHTLY" fuzz run --fuzz-dir fuzz -a "$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout="$FUZZ_INPUT_TIMEOUT" \
        -print_final_stats=1 >"$log" 2>&1 || rc=$?
    # The progress lines are many; show the start, the end and any report.
    grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$log" | tail -n 60
    local runs
    runs="$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)"
    if ((rc == 0)); then
        note "fuzz $target: PASSED ($((SECONDS - t0)) s, ${runs:-?} runs)"
        rm -f "$log"
    else
        local found
        found="$(find "$artifacts" -type f -newer "$marker" 2>/dev/null | sort | tr '\n' ' ')"
        note "fuzz $target: FAILED (exit $rc) artifact: ${found:-none written (see the log)}"
        if [[ -n "$found" ]]; then
            local a
            for a in $found; do
                echo "FINDING in $target: $a"
                echo "  replay: cargo +$NIGHTLY fuzz run --fuzz-dir fuzz -a $target $a"
            done
        fi
        echo "  full log: $log"
        FAILED=1
    fi
    rm -rf "$corpus"
}

case "$JOB" in
    all)
        run_miri
        run_tsan
        run_fuzz
        ;;
    miri) run_miri ;;
    tsan) run_tsan ;;
    fuzz) run_fuzz ;;
esac

summary
exit "$FAILED"
