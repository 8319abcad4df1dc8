"""Limits shared by the processes of one host (SharedMemoryStorage, over the
engine's Limiter::open_file): real processes (multiprocessing 'spawn'), one
process creating then attaching, bad input, and a real `uvicorn --workers 2`
server. Every file is named with this pid and removed, also on failure."""

import asyncio
import contextlib
import json
import multiprocessing
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from ratethrottle._engine import Engine

from ratethrottle import (
    FastAPIWebSocketLimiter,
    SharedMemoryStorage,
    SocketIOLimiter,
    WebSocketLimits,
    WebSocketRateLimiter,
)

SHM = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
SMALL = {"max_clients": 1024, "max_connections": 1024}


@pytest.fixture
def storage(request):
    """A SharedMemoryStorage on a path unique to this process and test;
    both of its files are removed afterwards."""
    s = SharedMemoryStorage(f"{SHM}/ratethrottle-py-test-{os.getpid()}-{request.node.name}")
    s.unlink()
    yield s
    s.unlink()


# ---- (1) several real processes ---------------------------------------------


def _worker(path, start, release, out):
    """One 'worker process': a limiter on the shared path, 3 connects of one
    client and 5 messages into one room, at a fixed fake clock (so no window
    can turn over while the test runs); holds its connections until released."""

    async def main():
        lim = WebSocketRateLimiter(
            WebSocketLimits(
                max_concurrent_connections=3,
                connections_per_minute=0,
                messages_per_minute=7,
                **SMALL,
            ),
            storage=SharedMemoryStorage(path),
            clock=lambda: 1_000_000,
        )
        if not start.wait(60):
            raise RuntimeError("no start signal")
        admitted = 0
        for i in range(3):
            r = await lim.connect(f"conn-{os.getpid()}-{i}", "10.0.0.1")
            admitted += r["allowed"]
        room = [(await lim.check_key("room:lobby", 10))["allowed"] for _ in range(5)]
        out.put((os.getpid(), lim.opened, admitted, sum(room)))
        release.wait(60)

    asyncio.run(main())


def test_processes_share_one_concurrency_limit_exactly(storage):
    """TEST-PLAN M5/M12 from Python: 3 spawned processes race to create the
    file and take a client's 3 connection slots: exactly one creates, and
    together they get exactly 3 connections and exactly 7 room messages. After
    they exit, an attach frees their connections (M2)."""
    ctx = multiprocessing.get_context("spawn")
    start, release, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(storage.path, start, release, out)) for _ in range(3)
    ]
    try:
        for p in procs:
            p.start()
        start.set()
        results = [out.get(timeout=60) for _ in procs]
        assert sorted(r[1] for r in results) == ["attached", "attached", "created"], results
        assert sum(r[2] for r in results) == 3, results
        assert sum(r[3] for r in results) == 7, results
        # While they hold them, this process sees their 3 connections.
        watcher = WebSocketRateLimiter(WebSocketLimits(**SMALL), storage=storage)
        assert watcher.opened == "attached"
        assert watcher.limits.max_concurrent_connections == 3  # the file's
        assert watcher.get_client_connections("10.0.0.1") == 3
        assert watcher.get_statistics()["active_connections"] == 3
        assert watcher.get_statistics()["denied"]["too_many_connections"] == 6
    finally:
        release.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(10)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # The workers died holding their connections: a new attach reaps them.
    later = WebSocketRateLimiter(WebSocketLimits(**SMALL), storage=storage)
    assert later.opened == "attached"
    assert later.get_client_connections("10.0.0.1") == 0
    assert watcher.get_client_connections("10.0.0.1") == 0


# ---- (2) create then attach in one process ----------------------------------


async def test_create_then_attach_shares_connections_and_keeps_the_file_limits(storage):
    first = WebSocketRateLimiter(
        WebSocketLimits(max_concurrent_connections=2, messages_per_minute=9, **SMALL),
        storage=storage,
    )
    assert first.opened == "created"
    assert pathlib.Path(storage.path).stat().st_mode & 0o777 == 0o600
    # Asks for other limits: the file's apply, and .limits shows them.
    second = WebSocketRateLimiter(
        WebSocketLimits(max_concurrent_connections=5, messages_per_minute=100, **SMALL),
        storage=storage,
    )
    assert second.opened == "attached"
    assert second.limits == first.limits
    assert second.limits.max_concurrent_connections == 2
    assert second.get_statistics()["limits"]["messages_per_minute"] == 9

    assert (await first.connect("a1", "10.0.0.9"))["allowed"]
    assert (await first.connect("a2", "10.0.0.9"))["allowed"]
    assert second.get_client_connections("10.0.0.9") == 2
    denied = await second.connect("b1", "10.0.0.9")
    assert denied == {
        "allowed": False,
        "reason": "too_many_connections",
        "max_concurrent": 2,
        "current": 2,
    }
    # Connection ids are per limiter (per process): the second one does not
    # know "a1", but the engine's counts are one.
    assert second.get_connection_info("a1") is None
    assert (await second.check_message("a1", 1))["reason"] == "connection_not_found"
    await first.unregister_connection("a1")
    assert (await second.connect("b1", "10.0.0.9"))["allowed"]
    assert first.get_statistics()["active_connections"] == 2

    # Message windows are the file's too: 9 per connection.
    ok = [(await second.check_message("b1", 1))["allowed"] for _ in range(10)]
    assert ok == [True] * 9 + [False]

    # Keys: a second file, shared the same way (messages_per_minute per key).
    assert not os.path.exists(storage.keys_path)
    room = [(await first.check_key("room", 1))["allowed"] for _ in range(5)]
    room += [(await second.check_key("room", 1))["allowed"] for _ in range(5)]
    assert room == [True] * 9 + [False]
    assert os.path.exists(storage.keys_path)

    # The adapters take the same storage.
    for adapter in (FastAPIWebSocketLimiter(storage=storage), SocketIOLimiter(storage=storage)):
        assert adapter.limiter.opened == "attached"
        assert adapter.limiter.get_client_connections("10.0.0.9") == 2

    # The engine level: attach_only, the file's limits, the path as given.
    eng = Engine(path=pathlib.Path(storage.path), attach_only=True)
    assert (eng.opened, eng.path) == ("attached", storage.path)
    assert eng.limits()["max_concurrent_connections"] == 2
    assert Engine().opened is None and Engine().path is None


async def test_a_freed_limiter_closes_its_connections_in_the_file(storage):
    """A limiter over a file that is freed (garbage-collected) while it holds
    connections: nothing can unregister them any more. When another limiter
    of this process keeps the file open, the engine does not close them
    either (it does so only for the process's last one), so they held their
    client's slots until the process ended. A forked child that frees its
    copy of the limiter must not close its parent's connections."""
    import gc

    limits = WebSocketLimits(max_concurrent_connections=1, connections_per_minute=0, **SMALL)
    keeper = WebSocketRateLimiter(limits, storage=storage)  # e.g. another adapter
    gone = WebSocketRateLimiter(limits, storage=storage)
    assert (await gone.connect("c", "10.7.7.7"))["allowed"]
    await gone.check_key("room", 1)
    del gone
    gc.collect()
    assert keeper.get_client_connections("10.7.7.7") == 0
    assert (await keeper.connect("k", "10.7.7.7"))["allowed"]

    parent = WebSocketRateLimiter(limits, storage=storage)
    assert (await parent.connect("p", "10.8.8.8"))["allowed"]
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit status
        code = 1
        try:
            del parent
            gc.collect()
            code = 0 if keeper.get_client_connections("10.8.8.8") == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert keeper.get_client_connections("10.8.8.8") == 1
    await parent.unregister_connection("p")
    assert keeper.get_client_connections("10.8.8.8") == 0


# ---- (3) bad input ----------------------------------------------------------


def test_bad_paths_and_files_are_refused_clearly(storage, tmp_path):
    for bad in (123, None, 1.5, ["/dev/shm/x"]):
        with pytest.raises(TypeError, match="str, bytes or os.PathLike"):
            SharedMemoryStorage(bad)
        if bad is not None:  # Engine(path=None) is the heap engine
            with pytest.raises(TypeError, match="str, bytes or os.PathLike"):
                Engine(path=bad)
    with pytest.raises(ValueError, match="attach_only=True needs a path"):
        Engine(attach_only=True)
    with pytest.raises(ValueError, match="empty"):
        SharedMemoryStorage("")
    assert SharedMemoryStorage(pathlib.Path("/dev/shm/p")).path == "/dev/shm/p"
    assert SharedMemoryStorage(b"/dev/shm/p").keys_path == b"/dev/shm/p.keys"

    # A directory: IsADirectoryError (an OSError with errno), naming it.
    with pytest.raises(IsADirectoryError) as e:
        WebSocketRateLimiter(storage=SharedMemoryStorage(tmp_path))
    assert e.value.errno == 21 and e.value.filename == str(tmp_path)
    assert str(tmp_path) in str(e.value)
    # A missing folder, and attach_only on a missing file: FileNotFoundError.
    missing = tmp_path / "no-such-dir" / "limits"
    with pytest.raises(FileNotFoundError) as e:
        WebSocketRateLimiter(storage=SharedMemoryStorage(missing))
    assert e.value.filename == str(missing)
    with pytest.raises(FileNotFoundError):
        Engine(path=storage.path, attach_only=True)
    assert not os.path.exists(storage.path)
    with pytest.raises(ValueError, match="NUL"):
        Engine(path="/dev/shm/a\0b")

    # Files that hold no region: refused, naming the file, left untouched.
    garbage = tmp_path / "garbage"
    for content in (os.urandom(1 << 16), b"not a region", b""):
        garbage.write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(str(garbage))):
            if content:
                WebSocketRateLimiter(storage=SharedMemoryStorage(garbage))
            else:  # an empty file is created in, unless attach_only
                Engine(path=garbage, attach_only=True)
        assert garbage.read_bytes() == content

    # Invalid limits: refused with the field's name; no file is created.
    for limits in (
        WebSocketLimits(messages_per_minute=10**7),
        WebSocketLimits(max_clients=0),
        WebSocketLimits(max_concurrent_connections=-1),
    ):
        with pytest.raises(ValueError, match="WebSocketLimits"):
            WebSocketRateLimiter(limits, storage=storage)
        assert not os.path.exists(storage.path)
    with pytest.raises(ValueError, match="window_ms"):
        Engine(path=storage.path, window_ms=0)
    assert not os.path.exists(storage.path)

    # A region with another window than a minute cannot be read as per-minute.
    Engine(path=storage.path, window_ms=1000, **SMALL)
    with pytest.raises(ValueError, match="1000 ms window"):
        WebSocketRateLimiter(storage=storage)
    with pytest.raises(NotImplementedError, match="SharedMemoryStorage"):
        WebSocketRateLimiter(storage=object())


# ---- a real multi-worker server ----------------------------------------------

APP = """
import os
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from ratethrottle import (
    FastAPIWebSocketLimiter, SharedMemoryStorage, WebSocketLimits, WebSocketRateLimiter,
)

limits = WebSocketLimits(
    max_concurrent_connections=3, connections_per_minute=0, max_clients=1024, max_connections=1024
)
storage = SharedMemoryStorage(os.environ["RT_TEST_SHM"])
limiter = WebSocketRateLimiter(limits, storage=storage)
adapter = FastAPIWebSocketLimiter(limits, storage=storage)
app = FastAPI()


@app.get("/pid")
async def pid():
    return {"pid": os.getpid(), "live": limiter.get_client_connections("127.0.0.1")}


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    # Accepts first, so that a denied client learns which worker denied it.
    await websocket.accept()
    cid = f"ws_{id(websocket)}"
    result = await limiter.connect(cid, websocket.client.host)
    await websocket.send_json({"pid": os.getpid(), "allowed": result["allowed"]})
    if not result["allowed"]:
        await websocket.close(code=1008)
        return
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        await limiter.unregister_connection(cid)


@app.websocket("/adapter")
async def via_adapter(websocket: WebSocket):
    if not await adapter.connect(websocket):
        return
    try:
        await websocket.send_json({"pid": os.getpid()})
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        await adapter.disconnect(websocket)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


async def test_uvicorn_two_workers_admit_exactly_the_limit(storage, tmp_path):
    """`uvicorn --workers 2` (two spawned worker processes, one listening
    socket): connections from one IP beyond max_concurrent_connections=3 are
    refused whichever worker takes them, and a worker refuses while holding
    fewer than 3 itself (so the count it used is the other worker's too)."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus

    (tmp_path / "rt_shared_app.py").write_text(APP)
    port = _free_port()
    env = dict(os.environ, RT_TEST_SHM=storage.path)
    cmd = [sys.executable, "-m", "uvicorn", "rt_shared_app:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True)
    held = []
    try:
        # Both workers up: bounded polling until two pids have answered.
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            assert server.poll() is None, "uvicorn exited"
            try:
                pids.add((await asyncio.to_thread(_get, port, "/pid"))["pid"])
            except OSError:
                await asyncio.sleep(0.1)
        assert len(pids) == 2, f"only workers {pids} answered within 60 s"

        admitted = {}  # worker pid -> connections it admitted
        proof = None
        for attempt in range(300):
            ws = await ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if reply["allowed"]:
                held.append(ws)
                admitted[reply["pid"]] = admitted.get(reply["pid"], 0) + 1
            else:
                await ws.close()
                if admitted.get(reply["pid"], 0) < 3:
                    proof = (reply["pid"], dict(admitted))
            assert sum(admitted.values()) <= 3, admitted
            if proof and attempt >= 12:
                break
        assert sum(admitted.values()) == 3, admitted
        assert proof, f"every denial came from the worker holding all 3: {admitted}"
        assert set(admitted) <= pids

        # The adapter in both workers sees the same 3: every attempt refused.
        for _ in range(6):
            with pytest.raises(InvalidStatus):
                async with ws_connect(f"ws://127.0.0.1:{port}/adapter", open_timeout=10):
                    pass
        for ws in held:
            await ws.close()
        held.clear()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (await asyncio.to_thread(_get, port, "/pid"))["live"] == 0:
                break
            await asyncio.sleep(0.05)
        # Freed in the file: through the adapter, again exactly 3 of 8.
        ok = 0
        for _ in range(8):
            try:
                ws = await ws_connect(f"ws://127.0.0.1:{port}/adapter", open_timeout=10)
            except InvalidStatus:
                continue
            await asyncio.wait_for(ws.recv(), 10)
            held.append(ws)
            ok += 1
        assert ok == 3
    finally:
        for ws in held:
            with contextlib.suppress(Exception):
                await ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
