"""Reads the two JSON lines of bench/workload.py (binding, then seed) and
prints the per-call times and ratios as a Markdown table."""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]


def best(package):
    runs = [r for r in rows if r["package"] == package]
    assert runs, package
    return {k: (min(r[k] for r in runs) if k.endswith("_ns") else runs[0][k]) for k in runs[0]}


ours, seed = best("binding"), best("seed-1.4.0")
rounds = sum(r["package"] == "binding" for r in rows)

print(
    f"python {ours['python']}; best of {rounds} alternating rounds; calls per timed run: "
    f"binding {ours['n']}, seed {seed['n']}"
)
print()
print("| operation (awaited, per call) | seed 1.4.0 | this binding | speed-up | target |")
print("|---|---:|---:|---:|---|")
for key, name in [
    ("check_message_ns", "`check_message(conn_id, 100)`"),
    ("check_connection_ns", "`check_connection(client_id)`"),
    (
        "connection_lifecycle_ns",
        "`check_connection` + `register_connection` + `unregister_connection`",
    ),
]:
    ratio = seed[key] / ours[key]
    if key == "connection_lifecycle_ns":
        verdict = "(not an issue target)"
    else:
        verdict = ">= 20x: " + ("met" if ratio >= 20 else "MISSED")
    print(f"| {name} | {seed[key]:.0f} ns | {ours[key]:.0f} ns | {ratio:.1f}x | {verdict} |")
print()
print("Cost of the binding itself (same run):")
print()
print("| call | ns |")
print("|---|---:|")
for key, name in [
    ("python_empty_function_ns", "empty Python function call"),
    ("native_empty_function_ns", "empty native (PyO3) function call"),
    ("native_empty_method_ns", "empty native method on the engine object"),
    ("native_check_message_ns", "engine `check_message` through PyO3, sync, no dict"),
    ("empty_async_call_ns", "empty `async def` awaited (the API is async)"),
]:
    print(f"| {name} | {ours[key]:.0f} |")
