"""The same workload for both packages named ``ratethrottle``: this
binding and the original one (PyPI 1.4.0). Run it with each venv's python.

Each operation is awaited the same way, N times in a loop, inside one
running event loop; the best of REPEATS runs is kept. Prints one JSON line.
"""

import asyncio
import json
import os
import sys
import time

import ratethrottle
from ratethrottle import WebSocketLimits, WebSocketRateLimiter

N = int(os.environ.get("BENCH_N", "50000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
# High enough that nothing is denied in either package: each timed run uses
# its own connection and client (N messages each, within the engine's
# 262143 per window), and connects stay far below 16_000_000 per minute.
BIG_CONNECTIONS = 16_000_000
BIG_MESSAGES = 262_143


async def timed(coro_fn):
    best = float("inf")
    for r in range(REPEATS):
        t0 = time.perf_counter()
        await coro_fn(r)
        best = min(best, time.perf_counter() - t0)
    return best / N * 1e9


async def main():
    limits = WebSocketLimits(
        connections_per_minute=BIG_CONNECTIONS,
        messages_per_minute=BIG_MESSAGES,
        max_concurrent_connections=BIG_CONNECTIONS,
        max_message_size=65536,
    )
    lim = WebSocketRateLimiter(limits)
    await lim.register_connection("conn_1", "10.0.0.1")
    r = await lim.check_message("conn_1", 100)
    assert r["allowed"], r

    for r in range(REPEATS):
        await lim.register_connection(f"conn_{r}", f"10.0.1.{r}")

    async def msgs(r):
        cm, conn = lim.check_message, f"conn_{r}"
        for _ in range(N):
            await cm(conn, 100)
        last = await cm(conn, 100)
        assert last["allowed"], last

    async def conns(_r):
        cc = lim.check_connection
        for _ in range(N):
            await cc("10.0.0.2")

    async def lifecycle(_r):
        cc, reg, unreg = lim.check_connection, lim.register_connection, lim.unregister_connection
        for _ in range(N):
            if await cc("10.0.0.3"):
                await reg("conn_x", "10.0.0.3")
                await unreg("conn_x")
            else:
                raise AssertionError("a connection was denied; raise the limits")

    async def empty_await(_r):
        async def nothing(a, b):
            return None

        for _ in range(N):
            await nothing("conn_1", 100)

    out = {
        "package": "binding" if hasattr(ratethrottle, "_engine") else "seed-1.4.0",
        "python": sys.version.split()[0],
        "n": N,
        "check_message_ns": await timed(msgs),
        "check_connection_ns": await timed(conns),
        "connection_lifecycle_ns": await timed(lifecycle),
        "empty_async_call_ns": await timed(empty_await),
    }
    if hasattr(ratethrottle, "_engine"):
        eng = ratethrottle._engine
        e = lim._engine

        def sync_loop(f):
            best = float("inf")
            for r in range(REPEATS):
                t0 = time.perf_counter()
                f(r)
                best = min(best, time.perf_counter() - t0)
            return best / N * 1e9

        def native_noop(_r):
            f = eng.noop
            for _ in range(N):
                f()

        def native_method_noop(_r):
            f = e.noop
            for _ in range(N):
                f()

        handles = [e.register_connection(f"10.0.2.{r}") for r in range(REPEATS)]

        def native_check_message(r):
            f, handle = e.check_message, handles[r]
            for _ in range(N):
                f(handle, 100)
            assert f(handle, 100) is None  # still allowed: no denial was timed

        def python_noop(_r):
            def f():
                return None

            for _ in range(N):
                f()

        out["native_empty_function_ns"] = sync_loop(native_noop)
        out["native_empty_method_ns"] = sync_loop(native_method_noop)
        out["native_check_message_ns"] = sync_loop(native_check_message)
        out["python_empty_function_ns"] = sync_loop(python_noop)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
