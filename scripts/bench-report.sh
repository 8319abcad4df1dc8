#!/usr/bin/env bash
# Runs the engine benchmarks once and prints, from that run's criterion
# estimates (<target>/criterion/<group>/<bench>/new/estimates.json), the
# median of every benchmark and the ratios DESIGN.md sets as targets.
#
#   scripts/bench-report.sh                 # full run (about 4 minutes)
#   scripts/bench-report.sh --report-only   # ratios of the last run, no run
#   scripts/bench-report.sh -- ARGS         # ARGS go to the bench (e.g. a filter)
#
# Honours CARGO_TARGET_DIR. The raw criterion output goes to
# <target>/bench-report.log. An estimate older than this run (a benchmark
# filtered out, or one that failed) is reported as "not in this run",
# never reused.
set -euo pipefail

cd "$(dirname "$0")/.."

run=1
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --report-only) run=0 ;;
        --) shift; bench_args=("$@"); break ;;
        *) echo "usage: $0 [--report-only] [-- BENCH_ARGS...]" >&2; exit 2 ;;
    esac
    shift
done

target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
crit_dir="${CRITERION_HOME:-$target_dir/criterion}"
log="$target_dir/bench-report.log"
stamp="$target_dir/bench-report.start"

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(rustc --version)"
if [ "$run" = 1 ]; then
    mkdir -p "$target_dir"
    touch "$stamp"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "command: cargo bench --bench engine ${bench_args:+-- ${bench_args[*]}}"
    cargo bench --bench engine ${bench_args:+-- "${bench_args[@]}"} 2>&1 | tee "$log"
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
elif [ ! -f "$stamp" ]; then
    echo "no run recorded under $target_dir (run without --report-only first)" >&2
    exit 1
fi

python3 - "$crit_dir" "$stamp" "$log" <<'EOF'
import json, os, re, sys

crit, stamp, log = sys.argv[1], sys.argv[2], sys.argv[3]
since = os.path.getmtime(stamp)

def load(name):
    """(median ns per iteration, elements per iteration) of this run, or None."""
    d = os.path.join(crit, name, "new")
    est = os.path.join(d, "estimates.json")
    if not os.path.exists(est) or os.path.getmtime(est) < since:
        return None
    with open(est) as f:
        median = json.load(f)["median"]["point_estimate"]
    with open(os.path.join(d, "benchmark.json")) as f:
        elements = (json.load(f).get("throughput") or {}).get("Elements", 1)
    return median, elements

groups = [
    ("message", ["F0", "F1_load_cas128", "check_message_at", "check_message"]),
    ("keys_100k", ["ratethrottle_check_key_at", "ratethrottle_check_key", "governor_keyed_check_key", "governor_direct_check",
                   "K0_table_layout", "K0_dense_index", "ratethrottle_connect_at_disconnect"]),
    ("connect", ["ratethrottle_connect_at_disconnect", "governor_keyed_check_key_one_key", "C0"]),
    ("threads_distinct", ["ratethrottle_1_thread", "ratethrottle_2_threads", "governor_keyed_1_thread", "governor_keyed_2_threads"]),
    ("threads_one_key", ["ratethrottle_1_thread", "ratethrottle_2_threads", "governor_keyed_1_thread", "governor_keyed_2_threads"]),
    ("clients_1m", ["ratethrottle_check_key_at", "governor_keyed_check_key"]),
]

r = {}
print()
print("| benchmark | median time / iteration | elements / iteration | throughput |")
print("|---|---:|---:|---:|")
for g, names in groups:
    for n in names:
        key = f"{g}/{n}"
        v = load(key)
        r[key] = v
        if v is None:
            print(f"| {key} | not in this run | | |")
        else:
            ns, el = v
            print(f"| {key} | {ns:.2f} ns | {el} | {el / ns * 1e3:.2f} Melem/s |")

def t(key):
    return r[key][0] if r.get(key) else None

def thrpt(key):
    return r[key][1] / r[key][0] if r.get(key) else None

def ratio(num, den):
    return None if num is None or den is None else num / den

checks = [
    # (what, value, target text, pass predicate or None for information)
    ("check_message_at / F0", ratio(t("message/check_message_at"), t("message/F0")), "<= 2", lambda x: x <= 2),
    ("check_message / F0", ratio(t("message/check_message"), t("message/F0")), "<= 3", lambda x: x <= 3),
    ("check_message_at / F1 (128-bit load+CAS)", ratio(t("message/check_message_at"), t("message/F1_load_cas128")), "information", None),
    ("check_key_at / governor keyed check_key, 100k keys",
     ratio(t("keys_100k/ratethrottle_check_key_at"), t("keys_100k/governor_keyed_check_key")), "<= 0.5", lambda x: x <= 0.5),
    ("check_key / governor keyed check_key, 100k keys",
     ratio(t("keys_100k/ratethrottle_check_key"), t("keys_100k/governor_keyed_check_key")), "information", None),
    ("check_key_at / governor direct check",
     ratio(t("keys_100k/ratethrottle_check_key_at"), t("keys_100k/governor_direct_check")), "information", None),
    ("floor K0, engine's table layout / governor keyed check_key, 100k keys",
     ratio(t("keys_100k/K0_table_layout"), t("keys_100k/governor_keyed_check_key")), "information (> 0.5: not with this layout)", None),
    ("floor K0, dense layout / governor keyed check_key, 100k keys",
     ratio(t("keys_100k/K0_dense_index"), t("keys_100k/governor_keyed_check_key")), "information (> 0.5: not with these words)", None),
    ("check_key_at / floor K0 in its table layout",
     ratio(t("keys_100k/ratethrottle_check_key_at"), t("keys_100k/K0_table_layout")), "information", None),
    ("connect_at+disconnect, a known client / governor keyed check_key, 100k keys (DESIGN.md's wording)",
     ratio(t("connect/ratethrottle_connect_at_disconnect"), t("keys_100k/governor_keyed_check_key")), "<= 1", lambda x: x <= 1),
    ("connect_at+disconnect, a known client / governor keyed check_key, one key (the stricter reading)",
     ratio(t("connect/ratethrottle_connect_at_disconnect"), t("connect/governor_keyed_check_key_one_key")), "<= 1", lambda x: x <= 1),
    ("connect_at+disconnect over the 100k ids / governor keyed check_key, 100k keys",
     ratio(t("keys_100k/ratethrottle_connect_at_disconnect"), t("keys_100k/governor_keyed_check_key")), "information", None),
    ("floor C0 / governor keyed check_key (one key)",
     ratio(t("connect/C0"), t("connect/governor_keyed_check_key_one_key")), "information (> 1: not with these guarantees)", None),
    ("connect_at+disconnect / floor C0",
     ratio(t("connect/ratethrottle_connect_at_disconnect"), t("connect/C0")), "information", None),
    ("ratethrottle throughput 2 threads / 1 thread, distinct clients",
     ratio(thrpt("threads_distinct/ratethrottle_2_threads"), thrpt("threads_distinct/ratethrottle_1_thread")), ">= 1.8", lambda x: x >= 1.8),
    ("governor keyed throughput 2 threads / 1 thread, distinct keys",
     ratio(thrpt("threads_distinct/governor_keyed_2_threads"), thrpt("threads_distinct/governor_keyed_1_thread")), "information", None),
    ("ratethrottle throughput 2 threads / 1 thread, one key",
     ratio(thrpt("threads_one_key/ratethrottle_2_threads"), thrpt("threads_one_key/ratethrottle_1_thread")), "information", None),
    ("governor keyed throughput 2 threads / 1 thread, one key",
     ratio(thrpt("threads_one_key/governor_keyed_2_threads"), thrpt("threads_one_key/governor_keyed_1_thread")), "information", None),
    ("check_key_at / governor keyed check_key, 1M clients at random",
     ratio(t("clients_1m/ratethrottle_check_key_at"), t("clients_1m/governor_keyed_check_key")), "information", None),
    ("check_key_at 1M random / check_key_at 100k cycled",
     ratio(t("clients_1m/ratethrottle_check_key_at"), t("keys_100k/ratethrottle_check_key_at")), "information", None),
]

def table(title, checks):
    print()
    print(f"| {title} | value | target | verdict |")
    print("|---|---:|---|---|")
    for what, v, target, ok in checks:
        if v is None:
            print(f"| {what} | n/a | {target} | not in this run |")
        else:
            verdict = "" if ok is None else ("PASS" if ok(v) else "MISS")
            print(f"| {what} | {v:.2f} | {target} | {verdict} |")

table("ratio of criterion medians (wall time, this run)", checks)

# The bench also prints, per benchmark, the CPU time its measured loops used
# per operation and CPU time / wall time: on a shared machine the wall time
# includes waiting for a CPU, the CPU time does not.
cpu, util = {}, {}
if os.path.exists(log) and os.path.getmtime(log) >= since:
    with open(log) as f:
        for line in f:
            m = re.match(r"cpu (\S+): ([0-9.]+) ns CPU time per operation; ([0-9.]+) of (\d+)", line)
            if m:
                cpu[m.group(1)] = float(m.group(2))
                util[m.group(1)] = (float(m.group(3)), int(m.group(4)))
if cpu:
    print()
    print("| benchmark | CPU time / operation | threads on a CPU (CPU time / wall time) |")
    print("|---|---:|---:|")
    for g, names in groups:
        for n in names:
            k = f"{g}/{n}"
            if k in cpu:
                print(f"| {k} | {cpu[k]:.2f} ns | {util[k][0]:.2f} of {util[k][1]} |")

    def c(k):
        return cpu.get(k)

    def u(k):
        return util[k][0] if k in util else None

    table("ratio of CPU time per operation (this run)", [
        ("check_message_at / F0", ratio(c("message/check_message_at"), c("message/F0")), "<= 2", lambda x: x <= 2),
        ("check_message / F0", ratio(c("message/check_message"), c("message/F0")), "<= 3", lambda x: x <= 3),
        ("check_key_at / governor keyed check_key, 100k keys",
         ratio(c("keys_100k/ratethrottle_check_key_at"), c("keys_100k/governor_keyed_check_key")), "<= 0.5", lambda x: x <= 0.5),
        ("connect_at+disconnect, a known client / governor keyed check_key, 100k keys (DESIGN.md's wording)",
         ratio(c("connect/ratethrottle_connect_at_disconnect"), c("keys_100k/governor_keyed_check_key")), "<= 1", lambda x: x <= 1),
        ("connect_at+disconnect, a known client / governor keyed check_key, one key (the stricter reading)",
         ratio(c("connect/ratethrottle_connect_at_disconnect"), c("connect/governor_keyed_check_key_one_key")), "<= 1", lambda x: x <= 1),
        ("ratethrottle CPU time per op, 2 threads / 1 thread, distinct clients (1.0 = no contention)",
         ratio(c("threads_distinct/ratethrottle_2_threads"), c("threads_distinct/ratethrottle_1_thread")), "information", None),
        ("threads on a CPU during ratethrottle_2_threads (2.0 = both ran throughout)",
         u("threads_distinct/ratethrottle_2_threads"), "information", None),
        ("governor CPU time per op, 2 threads / 1 thread, distinct keys",
         ratio(c("threads_distinct/governor_keyed_2_threads"), c("threads_distinct/governor_keyed_1_thread")), "information", None),
        ("ratethrottle CPU time per op, 2 threads / 1 thread, one key",
         ratio(c("threads_one_key/ratethrottle_2_threads"), c("threads_one_key/ratethrottle_1_thread")), "information", None),
        ("governor CPU time per op, 2 threads / 1 thread, one key",
         ratio(c("threads_one_key/governor_keyed_2_threads"), c("threads_one_key/governor_keyed_1_thread")), "information", None),
    ])
EOF
