"""The WebSocketRateLimiter API on the engine: dict shapes, exact waits,
the original package's bugs not copied, bad input, statistics, violations.

Time-dependent checks use a fake clock (WebSocketRateLimiter(clock=...)),
never sleeps or timed asserts.
"""

import asyncio
import math
from pathlib import Path

import pytest

import ratethrottle
from ratethrottle import (
    ChannelsRateLimiter,
    InMemoryStorage,
    RedisStorage,
    WebSocketLimits,
    WebSocketRateLimiter,
)

W = 60_000  # ms
T0 = 100 * W  # the start of a window: results below are exact


def limiter(clock, **kw):
    return WebSocketRateLimiter(WebSocketLimits(**kw), clock=clock)


async def test_dict_shapes_of_every_outcome(fake_clock):
    fake_clock.now = T0
    lim = limiter(fake_clock, messages_per_minute=2, max_message_size=100, bytes_per_minute=150)
    assert await lim.connect("c1", "10.0.0.1") == {"allowed": True, "reason": "ok"}
    assert await lim.check_message("c1", 60) == {"allowed": True, "reason": "ok"}
    assert await lim.check_message("c1", 101) == {
        "allowed": False,
        "reason": "message_too_large",
        "max_size": 100,
    }
    r = await lim.check_message("c1", 100)
    assert r["allowed"] is False and r["reason"] == "bandwidth_exceeded"
    assert r["remaining_bytes"] == 90 and r["limit"] == 150
    assert isinstance(r["retry_after"], float) and r["retry_after"] > 0
    assert await lim.check_message("c1", 90) == {"allowed": True, "reason": "ok"}
    r = await lim.check_message("c1", 1)
    # Two messages at the window's start: a third fits half-way into the next
    # window (2 * (1 - x) + 1 <= 2), 90 s from now; the engine's exact ms.
    assert r == {"allowed": False, "reason": "rate_limit_exceeded", "retry_after": 90.0, "limit": 2}
    assert await lim.check_message("nobody", 1) == {
        "allowed": False,
        "reason": "connection_not_found",
    }


async def test_retry_after_is_exact_and_never_understated(fake_clock):
    fake_clock.now = T0 + 12_345
    lim = limiter(fake_clock, messages_per_minute=3)
    await lim.connect("c", "client")
    for _ in range(3):
        assert (await lim.check_message("c"))["allowed"]
    denied = await lim.check_message("c")
    wait_ms = round(denied["retry_after"] * 1000)
    assert denied["retry_after"] == wait_ms / 1000.0 and wait_ms > 0
    fake_clock.now += wait_ms - 1
    assert (await lim.check_message("c"))["reason"] == "rate_limit_exceeded"
    fake_clock.now += 1
    assert (await lim.check_message("c"))["allowed"]


async def test_message_limit_is_per_connection_not_per_client(fake_clock):
    lim = limiter(fake_clock, messages_per_minute=5)
    await lim.connect("a", "same-ip")
    await lim.connect("b", "same-ip")
    a = [(await lim.check_message("a", 1))["allowed"] for _ in range(7)]
    b = [(await lim.check_message("b", 1))["allowed"] for _ in range(7)]
    assert a == b == [True] * 5 + [False] * 2


async def test_bandwidth_counts_bytes_not_checks(fake_clock):
    fake_clock.now = T0
    lim = limiter(fake_clock, bytes_per_minute=1000, max_message_size=0)
    await lim.connect("c", "client")
    assert (await lim.check_message("c", 600))["allowed"]
    r = await lim.check_message("c", 600)
    assert r["reason"] == "bandwidth_exceeded" and r["remaining_bytes"] == 400
    assert (await lim.check_message("c", 400))["allowed"]
    assert (await lim.check_message("c", 1))["reason"] == "bandwidth_exceeded"
    # A message larger than the whole budget can never pass: an infinite wait.
    r = await lim.check_message("c", 1001)
    assert r["reason"] == "bandwidth_exceeded" and r["retry_after"] == math.inf


async def test_rejected_messages_are_not_charged(fake_clock):
    fake_clock.now = T0
    lim = limiter(fake_clock, messages_per_minute=2)
    await lim.connect("c", "client")
    assert (await lim.check_message("c"))["allowed"]
    assert (await lim.check_message("c"))["allowed"]
    first = await lim.check_message("c")
    for _ in range(500):  # a flood of denied messages
        assert (await lim.check_message("c"))["retry_after"] == first["retry_after"]
    fake_clock.now += round(first["retry_after"] * 1000)
    assert (await lim.check_message("c"))["allowed"]
    stats = lim.get_statistics()
    assert stats["total_messages"] == 3
    assert stats["denied"]["rate_limit_exceeded"] == 501


async def test_connect_is_atomic_under_concurrent_coroutines():
    lim = WebSocketRateLimiter(WebSocketLimits(max_concurrent_connections=3))

    async def one(i):
        await asyncio.sleep(0)
        return (await lim.connect(f"c{i}", "10.9.9.9"))["allowed"]

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results.count(True) == 3
    assert lim.get_client_connections("10.9.9.9") == 3
    denied = await lim.connect("late", "10.9.9.9")
    assert denied == {
        "allowed": False,
        "reason": "too_many_connections",
        "max_concurrent": 3,
        "current": 3,
    }
    await lim.unregister_connection("c0")
    assert (await lim.connect("again", "10.9.9.9"))["allowed"]


async def test_check_connection_and_register_count_rate_and_concurrency(fake_clock):
    fake_clock.now = T0
    lim = limiter(fake_clock, connections_per_minute=2, max_concurrent_connections=5)
    for i in range(2):
        assert await lim.check_connection("ip")
        await lim.register_connection(f"c{i}", "ip", metadata={"n": i})
    assert not await lim.check_connection("ip")  # connection rate
    assert lim.get_client_connections("ip") == 2
    await lim.unregister_connection("c0")
    await lim.unregister_connection("c0")  # idempotent
    await lim.unregister_connection("never-registered")
    assert lim.get_client_connections("ip") == 1
    r = await lim.connect("c9", "ip")
    assert r["reason"] == "connection_rate_exceeded" and r["retry_after"] == 90.0


async def test_honest_client_untouched_by_a_flood(fake_clock):
    lim = limiter(fake_clock, messages_per_minute=50, connections_per_minute=5)
    await lim.connect("attacker", "6.6.6.6")
    await lim.connect("honest", "1.2.3.4")
    flood = [await lim.check_message("attacker", 10) for _ in range(2000)]
    assert sum(r["allowed"] for r in flood) == 50
    conn_flood = [(await lim.connect(f"a{i}", "6.6.6.6"))["allowed"] for i in range(100)]
    assert conn_flood.count(True) == 4  # 5 per minute, one used above
    honest = [await lim.check_message("honest", 10) for _ in range(50)]
    assert all(r["allowed"] for r in honest)
    assert (await lim.connect("honest2", "1.2.3.4"))["allowed"]


@pytest.mark.parametrize(
    "size, exc",
    [
        (-1, ValueError),
        (-(2**70), ValueError),
        (2**64, OverflowError),
        (2**100, OverflowError),
        (True, TypeError),
        (False, TypeError),
        (1.5, TypeError),
        (float("nan"), TypeError),
        (None, TypeError),
        ("5", TypeError),
        (b"5", TypeError),
    ],
)
async def test_bad_message_sizes_raise_and_lose_nothing(size, exc):
    lim = WebSocketRateLimiter(WebSocketLimits(messages_per_minute=3))
    await lim.connect("c", "client")
    assert (await lim.check_message("c", 1))["allowed"]
    with pytest.raises(exc, match="message_size"):
        await lim.check_message("c", size)
    with pytest.raises(exc):  # also for an unknown connection
        await lim.check_message("unknown", size)
    # Nothing was charged or lost: two more pass, then the limit.
    assert (await lim.check_message("c", 1))["allowed"]
    assert (await lim.check_message("c", 1))["allowed"]
    assert not (await lim.check_message("c", 1))["allowed"]
    assert lim.get_statistics()["total_messages"] == 3


async def test_largest_size_is_a_decision_not_an_error():
    lim = WebSocketRateLimiter(WebSocketLimits(max_message_size=1024))
    await lim.connect("c", "client")
    r = await lim.check_message("c", 2**64 - 1)
    assert r == {"allowed": False, "reason": "message_too_large", "max_size": 1024}


async def test_bad_ids():
    lim = WebSocketRateLimiter()
    for bad in (1, None, 1.0, ["x"], object()):
        with pytest.raises(TypeError, match="client_id"):
            await lim.connect("c", bad)
        with pytest.raises(TypeError, match="client_id"):
            await lim.check_connection(bad)
    for bad in (1, b"conn", None):
        with pytest.raises(TypeError, match="connection_id"):
            await lim.connect(bad, "client")
        with pytest.raises(TypeError, match="connection_id"):
            await lim.check_message(bad, 1)
    with pytest.raises(TypeError):
        await lim.check_message(["unhashable"], 1)
    with pytest.raises(ValueError, match="UTF-8"):
        await lim.connect("c", "bad\udcff")
    assert lim.get_statistics()["active_connections"] == 0


async def test_client_ids_are_bytes_exactly():
    lim = WebSocketRateLimiter(WebSocketLimits(max_concurrent_connections=1))
    # Distinct byte strings are distinct clients: NUL inside, non-UTF-8, empty.
    for i, cid in enumerate(["a", "a\x00b", b"a\x00", b"\xff\xfe", "", "é"]):
        assert (await lim.connect(f"c{i}", cid))["allowed"], cid
    # A str is its UTF-8 bytes, so "a" and b"a" are the same client (documented).
    assert (await lim.connect("dup", b"a"))["reason"] == "too_many_connections"
    assert (await lim.connect("dup2", "é".encode()))["reason"] == "too_many_connections"
    assert lim.get_client_connections(b"\xff\xfe") == 1


async def test_limits_are_validated_with_the_seed_field_names():
    with pytest.raises(ValueError, match="messages_per_minute"):
        WebSocketRateLimiter(WebSocketLimits(messages_per_minute=-1))
    with pytest.raises(ValueError, match=r"WebSocketLimits.messages_per_minute: .*0..=262143"):
        WebSocketRateLimiter(WebSocketLimits(messages_per_minute=1 << 20))
    with pytest.raises(ValueError, match="bytes_per_minute"):
        WebSocketRateLimiter(WebSocketLimits(bytes_per_minute=1 << 30))
    with pytest.raises(ValueError):
        WebSocketRateLimiter(WebSocketLimits(connections_per_minute=2**40))
    with pytest.raises(TypeError, match="connections_per_minute"):
        WebSocketRateLimiter(WebSocketLimits(connections_per_minute="10"))
    with pytest.raises(TypeError, match="max_message_size"):
        WebSocketRateLimiter(WebSocketLimits(max_message_size=True))
    with pytest.raises(TypeError, match="limits"):
        WebSocketRateLimiter({"messages_per_minute": 5})


def test_field_mapping_onto_the_engine():
    lim = WebSocketRateLimiter(
        WebSocketLimits(
            connections_per_minute=7,
            messages_per_minute=11,
            bytes_per_minute=None,
            max_concurrent_connections=3,
            max_message_size=999,
        )
    )
    eng = lim._engine.limits()
    assert eng["window_ms"] == 60_000
    assert eng["connections_per_window"] == 7
    assert eng["messages_per_window"] == 11
    assert eng["bytes_per_window"] == 0  # None: no limit
    assert eng["max_concurrent_connections"] == 3
    assert eng["max_message_size"] == 999
    defaults = WebSocketRateLimiter()._engine.limits()
    assert defaults == ratethrottle._engine.preset("default")


def test_storage_other_than_memory_is_refused_clearly():
    WebSocketRateLimiter(storage=None)
    WebSocketRateLimiter(storage=InMemoryStorage())
    with pytest.raises(NotImplementedError, match="RedisStorage.*later release"):
        WebSocketRateLimiter(storage=object())
    with pytest.raises(NotImplementedError, match="later release"):
        RedisStorage("redis://localhost:6379/0")


async def test_statistics_and_connection_info(fake_clock):
    import time

    lim = limiter(fake_clock, max_message_size=100)
    await lim.register_connection("conn_123", "192.168.1.1", metadata={"user": "u1"})
    await lim.connect("conn_2", "192.168.1.1")
    await lim.connect("conn_3", "10.0.0.2")
    for n in (10, 20, 30):
        await lim.check_message("conn_123", n)
    await lim.check_message("conn_2", 5)
    await lim.check_message("conn_2", 500)  # denied, not counted
    s = lim.get_statistics()
    assert s["active_connections"] == 3
    assert s["unique_clients"] == 2
    assert s["total_messages"] == 4
    assert s["total_bytes_sent"] == 65
    assert s["limits"]["max_message_size"] == 100
    assert s["limits"]["max_concurrent"] == 10
    assert s["denied"]["message_too_large"] == 1
    info = lim.get_connection_info("conn_123")
    assert (info.client_id, info.message_count, info.bytes_sent) == ("192.168.1.1", 3, 60)
    assert info.metadata == {"user": "u1"}
    assert 0 <= time.time() - info.connected_at < 3600
    assert lim.get_client_connections("192.168.1.1") == 2
    assert lim.get_client_connections("nobody") == 0
    assert lim.get_connection_info("nope") is None
    await lim.unregister_connection("conn_123")
    assert lim.get_connection_info("conn_123") is None
    assert lim.get_client_connections("192.168.1.1") == 1
    assert "ratethrottle" in lim.prometheus()


async def test_connected_at_is_the_registration_time_in_every_snapshot(fake_clock):
    """The seed's connected_at is time.time() at registration. Converted
    from the engine's coarse clock at each call it moved by up to a clock
    tick from one snapshot to the next."""
    import time

    real = WebSocketRateLimiter()
    before = time.time()
    await real.connect("c", "ip")
    after = time.time()
    snapshots = []
    for _ in range(20):
        snapshots.append(real.get_connection_info("c").connected_at)
        time.sleep(0.0005)
    assert len(set(snapshots)) == 1
    assert before <= snapshots[0] <= after

    fake_clock.now = T0
    lim = limiter(fake_clock)
    await lim.connect("c", "ip")
    first = lim.get_connection_info("c")
    assert first.last_message_time == first.connected_at
    fake_clock.now += 5_000
    assert (await lim.check_message("c", 1))["allowed"]
    fake_clock.now += 60_000
    info = lim.get_connection_info("c")
    assert info.connected_at == first.connected_at
    assert info.last_message_time - info.connected_at == pytest.approx(5.0, abs=1e-6)


async def test_a_full_engine_is_a_table_full_denial_or_a_runtime_error():
    """README: connect() answers table_full; the seed's pair (check, then
    register) raises RuntimeError on register and registers nothing."""
    lim = WebSocketRateLimiter(WebSocketLimits(max_connections=1, max_clients=64))
    assert (await lim.connect("a", "x"))["allowed"]
    assert await lim.connect("b", "y") == {"allowed": False, "reason": "table_full"}
    assert await lim.check_connection("y")  # capacities are not checked here
    with pytest.raises(RuntimeError, match="table full"):
        await lim.register_connection("b", "y")
    assert lim.get_connection_info("b") is None
    assert lim.get_statistics()["active_connections"] == 1


async def test_register_twice_replaces_the_connection():
    lim = WebSocketRateLimiter()
    await lim.register_connection("c", "ip")
    await lim.register_connection("c", "ip")
    assert lim.get_client_connections("ip") == 1


async def test_violation_dicts_have_the_seed_type_names(fake_clock):
    fake_clock.now = T0
    seen = []
    lim = WebSocketRateLimiter(
        WebSocketLimits(
            connections_per_minute=1,
            max_concurrent_connections=1,
            messages_per_minute=1,
            bytes_per_minute=50,
            max_message_size=40,
            client_messages_per_minute=None,
        ),
        on_violation=seen.append,
        clock=fake_clock,
    )
    await lim.connect("c1", "1.1.1.1")
    await lim.connect("c2", "1.1.1.1")  # concurrent_connections
    await lim.unregister_connection("c1")
    await lim.connect("c3", "1.1.1.1")  # connection_rate
    assert not await lim.check_connection("1.1.1.1")  # connection_rate again
    await lim.register_connection("m", "2.2.2.2")
    await lim.check_message("m", 41)  # message_size
    await lim.check_message("m", 30)
    await lim.check_message("m", 30)  # message_rate: checked before bandwidth
    await lim.check_key("room:1", 1)
    await lim.check_key("room:1", 1)  # message_rate of the key
    types = [v["type"] for v in seen]
    assert types == [
        "concurrent_connections",
        "connection_rate",
        "connection_rate",
        "message_size",
        "message_rate",
        "client_message_rate",
    ]
    conc, rate, _, size, mrate, key = seen
    assert conc["client_id"] == "1.1.1.1" and conc["limit"] == 1 and conc["current"] == 1
    assert "retry_after" not in conc
    # One connect at the window's start with a limit of 1: the next fits
    # when the previous window has fully decayed, 120 s from now.
    assert rate["retry_after"] == 120.0
    assert size["connection_id"] == "m" and size["client_id"] == "2.2.2.2"
    assert size["size"] == 41 and size["limit"] == 40
    assert mrate["connection_id"] == "m" and mrate["retry_after"] == 120.0
    assert key["client_id"] == "room:1"

    bw = []
    lim2 = WebSocketRateLimiter(
        WebSocketLimits(bytes_per_minute=50), on_violation=bw.append, clock=fake_clock
    )
    await lim2.connect("x", "3.3.3.3")
    await lim2.check_message("x", 30)
    await lim2.check_message("x", 30)
    assert [v["type"] for v in bw] == ["bandwidth"]
    assert bw[0]["message_size"] == 30 and bw[0]["remaining"] == 20
    assert bw[0]["connection_id"] == "x"


async def test_async_violation_callback_is_scheduled_and_errors_do_not_break_checks(caplog):
    got = asyncio.Event()
    received = []

    async def on_violation(info):
        received.append(info["type"])
        got.set()

    lim = WebSocketRateLimiter(WebSocketLimits(max_message_size=1), on_violation=on_violation)
    await lim.connect("c", "ip")
    assert (await lim.check_message("c", 2))["reason"] == "message_too_large"
    await asyncio.wait_for(got.wait(), 5)
    assert received == ["message_size"]

    def broken(info):
        raise RuntimeError("boom")

    lim2 = WebSocketRateLimiter(WebSocketLimits(max_message_size=1), on_violation=broken)
    await lim2.connect("c", "ip")
    assert (await lim2.check_message("c", 2))["reason"] == "message_too_large"
    assert "on_violation raised" in caplog.text


async def test_on_violation_set_after_construction_is_called(caplog):
    """The seed reads ``limiter.on_violation`` at each violation, and its
    adapters take no on_violation argument: ``adapter.limiter.on_violation =
    f`` is how they get one. Setting it later (also after check_key made the
    key engine) must take effect, and None must stop it cleanly."""
    from ratethrottle import FastAPIWebSocketLimiter

    seen = []
    lim = WebSocketRateLimiter(WebSocketLimits(max_message_size=1, messages_per_minute=1))
    await lim.connect("c", "ip")
    await lim.check_key("room", 1)  # the key engine exists before the callback
    lim.on_violation = seen.append
    assert lim.on_violation == seen.append
    await lim.check_message("c", 5)
    await lim.check_key("room", 1)
    assert [v["type"] for v in seen] == ["message_size", "client_message_rate"]
    lim.on_violation = None
    await lim.check_message("c", 5)
    await lim.check_key("room", 1)
    assert len(seen) == 2 and "on_violation raised" not in caplog.text
    with pytest.raises(TypeError, match="on_violation"):
        lim.on_violation = "not callable"

    adapter = FastAPIWebSocketLimiter(WebSocketLimits(max_concurrent_connections=1))
    adapter.limiter.on_violation = seen.append
    await adapter.limiter.connect("a", "1.2.3.4")
    await adapter.limiter.connect("b", "1.2.3.4")
    assert seen[-1]["type"] == "concurrent_connections"


async def test_violations_wait_in_the_engine_ring():
    lim = WebSocketRateLimiter(WebSocketLimits(max_message_size=1))
    await lim.connect("c", "ip")
    await lim.check_message("c", 5)
    (v,) = lim.drain_violations()
    assert v[0] == "message_size" and v[1] == b"ip" and v[6] == 5


async def test_room_limits_hold_through_check_key(fake_clock):
    fake_clock.now = T0
    room = limiter(fake_clock, messages_per_minute=5, bytes_per_minute=100)
    results = [await room.check_key("lobby", 10) for _ in range(8)]
    assert [r["allowed"] for r in results] == [True] * 5 + [False] * 3
    assert results[5]["reason"] == "client_rate_limit_exceeded"
    assert results[5]["retry_after"] > 0
    assert (await room.check_key("kitchen", 10))["allowed"]  # rooms are independent
    r = await room.check_key("kitchen", 95)
    assert r["reason"] == "client_bandwidth_exceeded" and r["remaining_bytes"] == 90
    fake_clock.now += round(results[5]["retry_after"] * 1000)
    assert (await room.check_key("lobby", 10))["allowed"]
    with pytest.raises(TypeError):
        await room.check_key(5, 1)
    with pytest.raises(ValueError):
        await room.check_key("lobby", -1)


async def test_channels_limiter_sizes_and_atomic_connect():
    lim = ChannelsRateLimiter(WebSocketLimits(max_message_size=4, max_concurrent_connections=1))
    assert await lim.connect("chan.1", "ip")
    assert not await lim.connect("chan.2", "ip")
    assert await lim.check_message("chan.1", "abcd")
    assert not await lim.check_message("chan.1", "abcde")
    assert not await lim.check_message("chan.1", "éé€")  # 7 UTF-8 bytes, 3 characters
    assert await lim.check_message("chan.1", b"1234")
    assert not await lim.check_message("chan.1", {"a": 1})  # {"a":1} is 7 bytes
    with pytest.raises(TypeError, match="JSON"):
        await lim.check_message("chan.1", object())
    await lim.unregister_connection("chan.1")
    assert not await lim.check_message("chan.1", "a")


def test_one_engine_shared_by_threads_loses_nothing():
    import threading

    eng = ratethrottle._engine.Engine(messages_per_window=1000, connections_per_window=0)
    handle = eng.connect(b"10.0.0.1")[6]
    allowed = [0] * 4

    def work(i):
        allowed[i] = sum(eng.check_message(handle, 1) is None for _ in range(600))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(allowed) == 1000
    assert eng.stats()["total_messages"] == 1000
    assert eng.stats()["denied"]["rate_limit_exceeded"] == 1400


def test_threads_racing_to_the_first_check_key_share_one_key_engine(monkeypatch):
    """The key engine is made on the first check_key. Threads that raced to
    it each made one, and the key's counts were split between them: more
    than messages_per_minute passed. The engine is slowed down here so the
    threads always meet."""
    import threading
    import time

    import ratethrottle.websocket as ws

    made = []
    original = ws._new_engine

    def slow_new_engine(*args):
        time.sleep(0.05)
        made.append(1)
        return original(*args)

    monkeypatch.setattr(ws, "_new_engine", slow_new_engine)
    lim = WebSocketRateLimiter(WebSocketLimits(messages_per_minute=5, max_clients=64))
    made.clear()
    barrier = threading.Barrier(4)
    allowed = []

    def work():
        barrier.wait()
        allowed.extend(asyncio.run(lim.check_key("room", 1))["allowed"] for _ in range(3))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(made) == 1
    assert allowed.count(True) == 5 and len(allowed) == 12


def test_fork_after_init_gives_the_child_its_own_working_copy():
    """TEST-PLAN M9/P3: a limiter made before os.fork() works in the child
    (its own copy-on-write copy of the region, its own process token), and
    nothing the child does reaches the parent."""
    import os

    eng = ratethrottle._engine.Engine(messages_per_window=3, connections_per_window=0)
    handle = eng.connect(b"10.0.0.1")[6]
    assert eng.check_message(handle, 1) is None
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit status
        code = 1
        try:
            ok = [eng.check_message(handle, 1) is None for _ in range(3)]
            other = eng.connect(b"10.0.0.2")[6]
            live = eng.stats()["active_connections"]
            code = 0 if ok == [True, True, False] and other and live == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # The parent's counts are its own: two messages still fit.
    assert eng.stats()["total_messages"] == 1
    assert eng.stats()["active_connections"] == 1
    assert [eng.check_message(handle, 1) is None for _ in range(3)] == [True, True, False]


def test_engine_entry_points_pin_error_types():
    eng = ratethrottle._engine.Engine()
    h = eng.connect("ip")[6]
    for call in (
        lambda s: eng.check_message(h, s),
        lambda s: eng.check_key("k", s),
        lambda s: eng.check_message_at(h, s, 0),
    ):
        with pytest.raises(ValueError):
            call(-1)
        with pytest.raises(OverflowError):
            call(2**64)
        with pytest.raises(TypeError):
            call(True)
        with pytest.raises(TypeError):
            call(1.0)
    assert eng.disconnect(h) is True
    assert eng.disconnect(h) is False  # idempotent, stale handle ignored
    assert eng.disconnect(0) is False
    assert eng.check_message(h, 1)[1] == ratethrottle._engine.REASONS.index("connection_not_found")
    with pytest.raises(ValueError, match="window_ms"):
        ratethrottle._engine.Engine(window_ms=0)


def test_readme_python_examples_run(capsys):
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "{'allowed': True, 'reason': 'ok'}" in out
    assert "2001:db8:1:2::/64\n198.51.100.1\n2001:db8:1:200::/56\n2001:db8::/64\n" in out


async def test_a_limiter_with_a_violation_callback_is_freed():
    import gc
    import weakref

    lim = WebSocketRateLimiter(WebSocketLimits(max_message_size=1), on_violation=print)
    await lim.connect("c", "ip")
    await lim.check_key("room", 1)
    ref = weakref.ref(lim)
    del lim
    gc.collect()
    assert ref() is None


class FakeWebSocket:
    """What FastAPIWebSocketLimiter uses of a Starlette WebSocket."""

    def __init__(self, host="10.1.1.1"):
        self.client = type("Address", (), {"host": host})()

    async def accept(self):
        pass

    async def close(self, code=1000, reason=None):
        pass

    async def receive_text(self):
        await asyncio.Event().wait()  # never: the client stays silent


async def test_fastapi_slot_is_freed_when_the_handler_ends_without_disconnect():
    """A handler that ends with an exception other than WebSocketDisconnect,
    or whose task is cancelled, never reaches the seed's ``except
    WebSocketDisconnect: await limiter.disconnect(websocket)``; the slot
    must not stay taken for good (nor the map grow): it is freed when the
    WebSocket is."""
    import gc

    from ratethrottle import FastAPIWebSocketLimiter

    limiter = FastAPIWebSocketLimiter(WebSocketLimits(max_concurrent_connections=1))
    lim = limiter.limiter

    async def seed_handler(websocket):
        if not await limiter.connect(websocket):
            return "refused"
        try:
            while True:
                data = await websocket.receive_text()
                raise RuntimeError(f"a bug handling {data}")
        except ConnectionError:  # stands for WebSocketDisconnect
            await limiter.disconnect(websocket)

    # 1. cancelled mid-handler (server shutdown, client task cancelled)
    task = asyncio.ensure_future(seed_handler(FakeWebSocket()))
    for _ in range(100):
        await asyncio.sleep(0)
        if lim.get_client_connections("10.1.1.1"):
            break
    assert lim.get_client_connections("10.1.1.1") == 1
    assert await seed_handler(FakeWebSocket()) == "refused"  # one slot, taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del task
    for _ in range(3):  # the loop drops its last handles on the finished task
        await asyncio.sleep(0)
    gc.collect()
    assert lim.get_client_connections("10.1.1.1") == 0
    assert len(limiter.websocket_map) == 0 and lim.get_statistics()["active_connections"] == 0

    # 2. an exception other than WebSocketDisconnect
    ws = FakeWebSocket()
    assert await limiter.connect(ws)
    assert lim.get_client_connections("10.1.1.1") == 1
    del ws  # what the server does once the handler has raised
    gc.collect()
    assert lim.get_client_connections("10.1.1.1") == 0

    # 3. disconnect() releases once; the later finalizer does nothing more
    ws = FakeWebSocket()
    assert await limiter.connect(ws)
    assert await limiter.check_message(ws, "hello")
    await limiter.disconnect(ws)
    await limiter.disconnect(ws)
    assert not await limiter.check_message(ws, "hello")
    other = FakeWebSocket()
    assert await limiter.connect(other)
    del ws
    gc.collect()
    assert lim.get_client_connections("10.1.1.1") == 1  # other's slot kept
    await limiter.disconnect(other)
    assert lim.get_client_connections("10.1.1.1") == 0 and not limiter._finalizers


async def test_every_call_taking_a_connection_id_refuses_a_non_str():
    # The README's bad-input table: "connection_id not a str: TypeError".
    # unregister_connection and get_connection_info ignored such ids
    # (None, bytes, int) silently, hiding the caller's bug.
    lim = WebSocketRateLimiter(WebSocketLimits(max_clients=64, max_connections=64))
    await lim.connect("c", "ip")
    chan = ChannelsRateLimiter(WebSocketLimits(max_clients=64, max_connections=64))
    for bad in (None, b"c", 1):
        with pytest.raises(TypeError, match="connection_id"):
            await lim.unregister_connection(bad)
        with pytest.raises(TypeError, match="connection_id"):
            lim.get_connection_info(bad)
        with pytest.raises(TypeError, match="connection_id"):
            await chan.unregister_connection(bad)
    assert lim.get_client_connections("ip") == 1
    assert lim.get_connection_info("c") is not None
    await lim.unregister_connection("c")
    assert lim.get_connection_info("c") is None


async def test_async_violation_callback_failures_are_logged_by_the_package(caplog):
    # A coroutine callback that raises is logged on the package's logger
    # with the violation, as a plain callback's exception is (it was left
    # to asyncio's "Task exception was never retrieved" at collection).
    done = asyncio.Event()

    async def broken(info):
        done.set()
        raise RuntimeError("async boom")

    lim = WebSocketRateLimiter(
        WebSocketLimits(max_message_size=1, max_clients=64, max_connections=64),
        on_violation=broken,
    )
    await lim.connect("c", "ip")
    assert (await lim.check_message("c", 2))["reason"] == "message_too_large"
    await asyncio.wait_for(done.wait(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    recs = [r for r in caplog.records if r.name == "ratethrottle.websocket"]
    assert recs and "on_violation raised" in recs[0].getMessage()
    assert "message_too_large" in recs[0].getMessage()
    assert "async boom" in caplog.text


def test_async_violation_callback_cut_short_by_its_loop_ending_is_reported(caplog):
    # async_to_sync without an outer loop (a sync view, a script) and
    # asyncio.run end their loop when the check returns, cancelling the
    # callback's task at its first await: that loss was silent.
    from asgiref.sync import async_to_sync

    started = []

    async def slow(info):
        started.append(info["reason"])
        await asyncio.sleep(1)

    lim = WebSocketRateLimiter(
        WebSocketLimits(max_message_size=1, max_clients=64, max_connections=64),
        on_violation=slow,
    )
    async_to_sync(lim.connect)("c", "ip")
    r = async_to_sync(lim.check_message)("c", 2)
    assert r["reason"] == "message_too_large"
    assert started == ["message_too_large"]
    assert "on_violation coroutine was cancelled" in caplog.text


def test_capacities_are_the_fields_where_zero_is_not_no_limit():
    # The README said "0 (or None) means no limit" for every field; the
    # engine's capacities refuse 0 (a region needs room), naming the field.
    for name in ("max_clients", "max_connections"):
        with pytest.raises(ValueError, match=f"WebSocketLimits.{name}"):
            WebSocketRateLimiter(WebSocketLimits(**{name: 0}))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "for every field but the capacities" in readme


async def test_a_message_nested_too_deep_for_json_is_a_type_error():
    # json.dumps raises RecursionError past the interpreter's limit; the
    # adapters' check_message answers bad data with TypeError.
    from ratethrottle.websocket import ChannelsRateLimiter

    adapter = ChannelsRateLimiter()
    assert await adapter.connect("chan", "ip")
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        await adapter.check_message("chan", deep)
    assert await adapter.check_message("chan", [[1]])
