#!/usr/bin/env bash
# Builds the static library and runs the C ABI tests (tests/c/test_*.c)
# twice: (a) compiled with gcc -fsanitize=address,undefined, (b) compiled
# without sanitizers and run under valgrind memcheck. test_panic.c links a
# second build of the library with the test-only feature `panic_inject`
# (in $CARGO_TARGET_DIR/panic) and runs with RT_PANIC_INJECT=1.
#
# Works from any directory; honours CARGO_TARGET_DIR (default: target/) and
# CC (default: gcc). Installs valgrind with apt-get when it is missing.
# expect_use_after_free.c is a deliberate misuse: valgrind must report it;
# under ASan (the library is not instrumented) the poisoned magic must refuse it. Each program prints "N passed, N failed"; the script ends with one
# summary line per stage and exits non-zero when anything failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
PANIC_TARGET="$TARGET/panic"
BUILD="$ROOT/tests/c/build"
CC="${CC:-gcc}"
CFLAGS=(-Wall -Wextra -Werror -std=c11 -g -I"$ROOT/include" -I"$ROOT/tests/c")
LIBS=(-lpthread -ldl -lm)
PROGRAMS=(test_basics test_decisions test_memory test_violations test_threads)

echo "== building the static library (cargo build --lib, target dir $TARGET)"
CARGO_TARGET_DIR="$TARGET" cargo build --lib
echo "== building the panic-injection library (features panic_inject, target dir $PANIC_TARGET)"
CARGO_TARGET_DIR="$PANIC_TARGET" cargo build --lib --features panic_inject
LIB="$TARGET/debug/libratethrottle.a"
PANIC_LIB="$PANIC_TARGET/debug/libratethrottle.a"

if ! command -v valgrind >/dev/null 2>&1; then
  echo "== installing valgrind"
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
fi

mkdir -p "$BUILD/asan" "$BUILD/plain"
declare -A RESULT
FAILED=0

# run STAGE NAME COMMAND...: runs one test program and records the outcome.
run() {
  local stage=$1 name=$2
  shift 2
  if "$@"; then
    RESULT[$stage]+="$name:ok "
  else
    RESULT[$stage]+="$name:FAILED "
    FAILED=1
  fi
}

# expect_caught STAGE NAME PATTERN COMMAND...: a deliberate misuse; the
# command must fail and its output must contain PATTERN (the tool's report).
expect_caught() {
  local stage=$1 name=$2 pattern=$3 log="$BUILD/$1-$2.log"
  shift 3
  if "$@" >"$log" 2>&1; then
    echo "$name: not caught (exit status 0); see $log"
    RESULT[$stage]+="$name:FAILED "
    FAILED=1
  elif grep -q "$pattern" "$log"; then
    echo "$name: caught as expected ($pattern)"
    RESULT[$stage]+="$name:ok "
  else
    echo "$name: failed without the expected report \"$pattern\"; see $log"
    RESULT[$stage]+="$name:FAILED "
    FAILED=1
  fi
}

# expect_output STAGE NAME PATTERN COMMAND...: the command must succeed and
# its output contain PATTERN.
expect_output() {
  local stage=$1 name=$2 pattern=$3 log="$BUILD/$1-$2.log"
  shift 3
  if "$@" >"$log" 2>&1 && grep -q "$pattern" "$log"; then
    echo "$name: refused as expected ($pattern)"
    RESULT[$stage]+="$name:ok "
  else
    echo "$name: unexpected outcome; see $log"
    RESULT[$stage]+="$name:FAILED "
    FAILED=1
  fi
}

# build STAGE_DIR EXTRA_FLAGS... : compiles every program into STAGE_DIR.
build() {
  local dir=$1
  shift
  for p in "${PROGRAMS[@]}"; do
    "$CC" "${CFLAGS[@]}" "$@" "$ROOT/tests/c/$p.c" "$LIB" "${LIBS[@]}" -o "$dir/$p"
  done
  "$CC" "${CFLAGS[@]}" "$@" "$ROOT/tests/c/test_panic.c" "$PANIC_LIB" "${LIBS[@]}" -o "$dir/test_panic"
  "$CC" "${CFLAGS[@]}" "$@" "$ROOT/tests/c/expect_use_after_free.c" "$LIB" "${LIBS[@]}" -o "$dir/expect_use_after_free"
}

echo "== stage a: gcc -fsanitize=address,undefined"
build "$BUILD/asan" -fsanitize=address,undefined -fno-omit-frame-pointer
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for p in "${PROGRAMS[@]}"; do
  run asan "$p" "$BUILD/asan/$p"
done
run asan test_panic env RT_PANIC_INJECT=1 RUST_BACKTRACE=0 "$BUILD/asan/test_panic"
# The Rust library is not instrumented, so ASan cannot see its read of the
# freed handle; what shows here is the poisoned magic refusing the call
# (freed memory sits in ASan's quarantine, untouched). valgrind reports the
# read itself in stage b.
expect_output asan expect_use_after_free "reason=invalid_argument" "$BUILD/asan/expect_use_after_free"
unset ASAN_OPTIONS UBSAN_OPTIONS

echo "== stage b: valgrind memcheck"
build "$BUILD/plain"
VALGRIND=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite)
for p in "${PROGRAMS[@]}"; do
  run valgrind "$p" "${VALGRIND[@]}" "$BUILD/plain/$p"
done
run valgrind test_panic env RT_PANIC_INJECT=1 RUST_BACKTRACE=0 "${VALGRIND[@]}" "$BUILD/plain/test_panic"
expect_caught valgrind expect_use_after_free "Invalid read" "${VALGRIND[@]}" "$BUILD/plain/expect_use_after_free"

echo "== the README's C quick start (examples/quickstart.c), built as a user would"
QS="$BUILD/quickstart"
"$CC" -Wall -Wextra -Werror -std=c11 -I"$ROOT/include" "$ROOT/examples/quickstart.c" "$LIB" "${LIBS[@]}" -o "$QS"
if diff <("${VALGRIND[@]}" "$QS") "$ROOT/examples/quickstart.expected"; then
  echo "quickstart: output as the README says"
  RESULT[valgrind]+=" quickstart:ok"
else
  echo "quickstart: output differs from examples/quickstart.expected"
  RESULT[valgrind]+=" quickstart:FAILED"
  FAILED=1
fi

summary() {
  local stage=$1 title=$2 ok=0 total=0 failed=""
  for r in ${RESULT[$stage]}; do
    total=$((total + 1))
    case "$r" in *:ok) ok=$((ok + 1)) ;; *) failed+=" ${r%:FAILED}" ;; esac
  done
  if [ "$ok" = "$total" ]; then
    echo "$title: $ok/$total programs passed"
  else
    echo "$title: $ok/$total programs passed; FAILED:$failed"
  fi
}
echo "== summary"
summary asan "stage a (gcc ASan+UBSan)"
summary valgrind "stage b (valgrind memcheck)"
exit "$FAILED"
