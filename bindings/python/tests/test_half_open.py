"""TEST-PLAN W7: half-open connections free their slot (README "Half-open
connections").

The servers own liveness: uvicorn's WebSocket pings (ws_ping_interval /
ws_ping_timeout), engine.io's (ping_interval / ping_timeout) and daphne's
(--ping-interval / --ping-timeout). The package adds no timer. These tests
run real servers on 127.0.0.1 with small ping settings (daphne as a real
process, whose counts the test reads through a SharedMemoryStorage). Each
one uses a client that completes the WebSocket handshake by hand and then
goes silent without closing, or a client process that is killed, or a
socket that is reset. Each test waits, with a generous bounded
deadline, until the engine's count for that client returns to 0 by itself.
It then checks that a new connection of the same client is admitted with
max_concurrent_connections=1.
"""

import asyncio
import base64
import contextlib
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys

import pytest
from conftest import doc_block, run_block, serve
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ratethrottle import (
    FastAPIWebSocketLimiter,
    SharedMemoryStorage,
    SocketIOLimiter,
    WebSocketLimits,
    WebSocketRateLimiter,
)

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
PINGS = {"ws_ping_interval": 0.2, "ws_ping_timeout": 0.2}
NO_PINGS = {"ws_ping_interval": None, "ws_ping_timeout": None}
WS_IMPLS = ["websockets-sansio", "websockets", "wsproto"]  # uvicorn's three
DEADLINE = 15.0  # seconds; generous, bounded; the tests never assert a duration
# uvicorn's deprecated "websockets" (legacy) implementation, after a missed
# ping, sends a close frame and waits its close timeout (10 s, fixed) for the
# peer before it ends the connection, so the slot is freed 10 s later there.
DEADLINE_AFTER_PING = {"websockets": DEADLINE + 25.0}


def one_slot():
    return WebSocketLimits(max_concurrent_connections=1, connections_per_minute=0)


async def eventually(pred, timeout=DEADLINE):
    for _ in range(int(timeout / 0.02)):  # bounded
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


def readme_endpoint_block():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if '@app.websocket("/ws")' in b]
    assert len(found) == 1
    return found[0]


def upgrade_request(port, path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_text_frame(text):
    """A client's (masked) WebSocket text frame, shorter than 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def read_server_text_frame(reader):
    """One unmasked, unfragmented server text frame (engine.io packets)."""
    head = await asyncio.wait_for(reader.readexactly(2), 30)
    assert head[0] == 0x81, head
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return (await asyncio.wait_for(reader.readexactly(n), 30)).decode()


@contextlib.asynccontextmanager
async def silent_client(port, path):
    """Completes the WebSocket handshake by hand (the 101 is read), then
    the caller keeps it silent: it never answers a ping and never closes.
    Yields (reader, writer); the socket is closed at the end, also on
    failure."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    try:
        writer.write(upgrade_request(port, path))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 101"), head
        yield reader, writer
    finally:
        writer.transport.abort()


def reset(writer):
    """Ends a socket with a TCP RST instead of a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


KILLED_CLIENT = r"""
import base64, os, socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print(head.split(b"\r\n", 1)[0].decode(), flush=True)
time.sleep(600)  # silent until killed
"""


async def admitted(port, path):
    """A real client of the same client id is admitted and served."""
    async with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=30) as ws:
        await ws.send("after")
        return await asyncio.wait_for(ws.recv(), 30) == "after"


async def refused(port, path):
    try:
        async with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=30):
            return False
    except InvalidStatus as e:
        return e.response.status_code == 403


# ---------------------------------------------------------------- FastAPI apps


async def readme_app():
    """The README's endpoint (try / finally), one slot per client id; the
    client id is the peer address, 127.0.0.1."""
    ns = await run_block(readme_endpoint_block(), {})
    ns["limiter"] = FastAPIWebSocketLimiter(one_slot())  # read at call time
    return ns["app"], ns["limiter"].limiter, "/ws", "127.0.0.1"


async def seed_app():
    """The seed document's endpoint as written (``except
    WebSocketDisconnect``), one slot per client id; the id is the path's."""
    ns = await run_block(
        doc_block("1. FastAPI WebSocket"),
        {"process_message": lambda d: d, "broadcast_message": None},
    )
    ns["limiter"] = FastAPIWebSocketLimiter(one_slot())
    return ns["app"], ns["limiter"].limiter, "/ws/ghost", "ghost"


APPS = {"readme": readme_app, "seed": seed_app}


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
@pytest.mark.parametrize("pattern", ["readme", "seed"])
async def test_fastapi_silent_client_is_dropped_by_uvicorn_pings(pattern, ws_impl):
    app, lim, path, client = await APPS[pattern]()
    async with serve(app, ws=ws_impl, **PINGS) as port:
        async with silent_client(port, path):
            assert await eventually(lambda: lim.get_client_connections(client) == 1)
            # The count comes back to 0 by itself: uvicorn's ping went
            # unanswered, the handler got WebSocketDisconnect and released.
            deadline = DEADLINE_AFTER_PING.get(ws_impl, DEADLINE)
            assert await eventually(lambda: lim.get_client_connections(client) == 0, deadline)
            assert await admitted(port, path)  # the slot of max 1 is free again
        assert await eventually(lambda: lim.get_client_connections(client) == 0)
    stats = lim.get_statistics()
    assert stats["active_connections"] == 0 and stats["connections_allowed"] == 2


async def test_fastapi_silent_client_keeps_its_slot_without_pings():
    """The control: with uvicorn's pings off, nothing frees the slot of a
    silent client (the server setting is what does it); the next
    connection is refused until the silent socket really closes."""
    app, lim, path, client = await readme_app()
    async with serve(app, **NO_PINGS) as port:
        async with silent_client(port, path) as (_reader, writer):
            assert await eventually(lambda: lim.get_client_connections(client) == 1)
            await asyncio.sleep(1.5)  # many times what the pinged test needs
            assert lim.get_client_connections(client) == 1
            assert await refused(port, path)
            writer.close()
            assert await eventually(lambda: lim.get_client_connections(client) == 0)
            assert await admitted(port, path)


async def test_fastapi_honest_idle_client_stays_connected():
    """A real client that sends nothing but whose library answers pings
    stays connected over many ping intervals and keeps being served."""
    app, lim, path, client = await readme_app()
    async with serve(app, **PINGS) as port:
        async with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=30) as ws:
            assert await eventually(lambda: lim.get_client_connections(client) == 1)
            await asyncio.sleep(2.0)  # ten ping intervals of silence
            assert lim.get_client_connections(client) == 1
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 30) == "still here"
        assert await eventually(lambda: lim.get_client_connections(client) == 0)


@pytest.mark.parametrize("pattern", ["readme", "seed"])
async def test_fastapi_killed_client_process_frees_its_slot(pattern):
    """Pings off: only the killed process's socket, closed by its kernel,
    can free the slot."""
    app, lim, path, client = await APPS[pattern]()
    async with serve(app, **NO_PINGS) as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLED_CLIENT, str(port), path, stdout=asyncio.subprocess.PIPE
        )
        try:
            status = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert status.startswith(b"HTTP/1.1 101"), status
            assert await eventually(lambda: lim.get_client_connections(client) == 1)
            assert await refused(port, path)
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 30)
            assert await eventually(lambda: lim.get_client_connections(client) == 0)
            assert await admitted(port, path)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_fastapi_reset_socket_frees_its_slot(ws_impl):
    app, lim, path, client = await readme_app()
    async with serve(app, ws=ws_impl, **NO_PINGS) as port:
        async with silent_client(port, path) as (_reader, writer):
            assert await eventually(lambda: lim.get_client_connections(client) == 1)
            reset(writer)
            assert await eventually(lambda: lim.get_client_connections(client) == 0)
            assert await admitted(port, path)


@pytest.mark.parametrize("pattern", ["readme", "seed"])
async def test_fastapi_handler_error_and_the_release(pattern):
    """A handler that ends with an exception other than WebSocketDisconnect:
    the README's ``finally`` frees the slot at once; the seed document's
    ``except WebSocketDisconnect`` never calls disconnect(), and the
    adapter frees the slot when the server drops the WebSocket (README,
    "Notes on the document's examples"). The error here is a bug in the
    application's message handler."""

    def process_message(data):
        if data == "boom":
            raise RuntimeError("a bug in the application")
        return data

    if pattern == "readme":
        code = readme_endpoint_block().replace(
            "await websocket.send_text(data)", "await websocket.send_text(process_message(data))"
        )
        assert "process_message(data)" in code
        path, client = "/ws", "127.0.0.1"
    else:
        code, path, client = doc_block("1. FastAPI WebSocket"), "/ws/buggy", "buggy"
    ns = await run_block(code, {"process_message": process_message, "broadcast_message": None})
    ns["limiter"] = FastAPIWebSocketLimiter(one_slot())
    lim = ns["limiter"].limiter
    async with serve(ns["app"], **PINGS) as port:
        async with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=30) as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosed):  # uvicorn closes it after the error
                await asyncio.wait_for(ws.recv(), 30)
        assert await eventually(lambda: lim.get_client_connections(client) == 0)
        assert await admitted(port, path)
        assert len(ns["limiter"].websocket_map) == 0


# ---------------------------------------------------------------- Socket.IO


async def socketio_app():
    """The seed document's Socket.IO block as written (release in its
    ``disconnect`` handler), one slot per client, engine.io pings of 1 s
    (whole seconds: python-engineio announces int(ping_interval) * 1000 ms
    to clients, so 0.2 would be announced as 0)."""
    ns = await run_block(doc_block("2. Socket.IO"), {"process_message": lambda d: d})
    ns["limiter"] = SocketIOLimiter(one_slot())  # read at call time
    eio = ns["sio"].eio
    eio.ping_interval, eio.ping_timeout = 1, 1
    import socketio

    return socketio.ASGIApp(ns["sio"]), ns["limiter"].limiter, eio


@contextlib.asynccontextmanager
async def silent_socketio_client(port):
    """Engine.io over a hand-made WebSocket: reads the OPEN packet, sends
    the Socket.IO CONNECT ("40") so the connect handler runs, then stays
    silent (no PONG, no WebSocket pong, no close)."""
    async with silent_client(port, "/socket.io/?EIO=4&transport=websocket") as (reader, writer):
        opened = await read_server_text_frame(reader)
        assert opened.startswith("0{") and '"pingInterval":' in opened, opened
        writer.write(masked_text_frame("40"))
        await writer.drain()
        yield opened, writer


async def socketio_admitted(port):
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    got = []
    client.on("response", got.append)
    await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=30)
    try:
        await client.emit("message", "after")
        return await eventually(lambda: got == ["after"])
    finally:
        await client.disconnect()


async def socketio_refused(port):
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=30)
    except socketio.exceptions.ConnectionError:
        return True
    await client.disconnect()
    return False


async def test_socketio_silent_client_is_dropped_by_engineio_pings():
    app, lim, _eio = await socketio_app()
    async with serve(app, **NO_PINGS) as port:  # engine.io's pings alone
        async with silent_socketio_client(port) as (opened, _writer):
            assert '"pingTimeout":1000,"pingInterval":1000' in opened
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 1)
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 0)
            assert await socketio_admitted(port)
        assert await eventually(lambda: lim.get_statistics()["active_connections"] == 0)


async def test_socketio_reset_socket_frees_its_slot():
    app, lim, eio = await socketio_app()
    eio.ping_interval, eio.ping_timeout = 25, 20  # the defaults: pings cannot do it in time
    async with serve(app, **NO_PINGS) as port:
        async with silent_socketio_client(port) as (_opened, writer):
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 1)
            assert await socketio_refused(port)
            reset(writer)
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 0)
            assert await socketio_admitted(port)


# ---------------------------------------------------------------- daphne (Channels)
#
# A real daphne process serves the seed document's Channels consumer as
# written (check_connection + accept + register_connection in connect,
# unregister_connection in disconnect). Its limiter is replaced by one with
# one slot per client on a SharedMemoryStorage, which this test process
# attaches too, so it reads the server process's counts. daphne's pings
# (--ping-interval / --ping-timeout, whole seconds) are checked every 2 s by
# its timeout checker: a ping goes out once the socket has been idle for the
# interval, and autobahn drops the TCP connection (abort) when no pong
# arrives within the timeout. The client id is the peer address, 127.0.0.1.
# A refused consumer's disconnect raises AttributeError (no room_name: the
# document's bug, README "Notes on the document's examples"); daphne logs it
# and serves on. Refused consumers hold no slot.

SHM = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
CHANNELS_LIMITS = WebSocketLimits(
    max_concurrent_connections=1, connections_per_minute=0, max_clients=1024, max_connections=1024
)
CHANNELS_PATH = "/ws/chat/lobby/"
DAPHNE_APP_HEAD = """
import os

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
)
django.setup()

# ---- the seed document's block, as written:
"""
DAPHNE_APP_TAIL = """
# ---- the test's part: one slot per client, in the file the test attaches.
from channels.routing import URLRouter
from django.urls import path
from ratethrottle import SharedMemoryStorage

limiter = ChannelsRateLimiter(  # read by the consumer at call time
    WebSocketLimits(
        max_concurrent_connections=1,
        connections_per_minute=0,
        max_clients=1024,
        max_connections=1024,
    ),
    storage=SharedMemoryStorage(os.environ["RT_TEST_SHM"]),
)
application = URLRouter([path("ws/chat/<str:room_name>/", ChatConsumer.as_asgi())])
"""


@pytest.fixture
def channels_shm(request):
    """A limiter of this test process on a shared file unique to this pid
    and test (created here, attached by daphne); both files removed after."""
    storage = SharedMemoryStorage(f"{SHM}/ratethrottle-py-daphne-{os.getpid()}-{request.node.name}")
    storage.unlink()
    try:
        lim = WebSocketRateLimiter(CHANNELS_LIMITS, storage=storage)
        assert lim.opened == "created"
        yield storage.path, lim
    finally:
        storage.unlink()


def stop_process_group(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.asynccontextmanager
async def daphne(tmp_path, shm_path, ping_interval, ping_timeout):
    """`daphne -b 127.0.0.1 -p 0` (an ephemeral port, read back from its
    log) serving the seed's consumer; yields the port; always stopped."""
    app = DAPHNE_APP_HEAD + doc_block("3. Django Channels") + DAPHNE_APP_TAIL
    (tmp_path / "rt_daphne_app.py").write_text(app, encoding="utf-8")
    log = tmp_path / "daphne.log"
    cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0"]
    cmd += ["--ping-interval", str(ping_interval), "--ping-timeout", str(ping_timeout)]
    cmd += ["rt_daphne_app:application"]
    with open(log, "wb") as out:  # `python -m` puts the cwd on sys.path
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=dict(os.environ, RT_TEST_SHM=shm_path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        port = None
        for _ in range(3000):  # bounded: 60 s (Django and Twisted imports)
            found = re.search(rb"Listening on TCP address 127\.0\.0\.1:(\d+)", log.read_bytes())
            if found:
                port = int(found.group(1))
                break
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        assert port, "daphne did not start:\n" + log.read_text(errors="replace")
        yield port
    finally:
        stop_process_group(proc)
        print(log.read_text(errors="replace"))  # shown by pytest on failure only


async def channels_admitted_and_served(port, idle=0.0):
    """A real client (the websockets library, which answers pings by
    itself) is admitted, stays idle for ``idle`` seconds, then is served
    by the consumer (its message comes back through the room)."""
    async with ws_connect(f"ws://127.0.0.1:{port}{CHANNELS_PATH}", open_timeout=30) as ws:
        await asyncio.sleep(idle)
        await ws.send('{"message": "after"}')
        return await asyncio.wait_for(ws.recv(), 30) == '{"type": "message", "message": "after"}'


async def test_daphne_silent_client_is_dropped_by_daphne_pings(tmp_path, channels_shm):
    shm_path, lim = channels_shm
    async with daphne(tmp_path, shm_path, ping_interval=1, ping_timeout=1) as port:
        async with silent_client(port, CHANNELS_PATH):
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 1)
            assert await refused(port, CHANNELS_PATH)  # one slot, and it is taken
            # Back to 0 by itself: daphne's ping went unanswered, autobahn
            # dropped the connection, the consumer's disconnect released it.
            assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 0, 30)
            # A new real client of 127.0.0.1 is admitted. It stays idle for
            # several ping rounds (checker every 2 s, interval 1 s, timeout
            # 1 s): it answers the pings, so it keeps its slot and is served.
            assert await channels_admitted_and_served(port, idle=6.0)
        assert await eventually(lambda: lim.get_client_connections("127.0.0.1") == 0)
    stats = lim.get_statistics()
    assert stats["active_connections"] == 0 and stats["connections_allowed"] == 2
    assert stats["denied"]["too_many_connections"] == 1


async def test_daphne_without_pings_silent_client_keeps_its_slot_until_reset_or_killed(
    tmp_path, channels_shm
):
    """The control: with daphne's pings an hour apart, a silent client keeps
    its slot long past what the pinged test needs, and a second connection
    is refused. Then the silent socket is reset (RST), and later a client
    process is killed: each frees the slot at once, keepalive or not."""
    shm_path, lim = channels_shm

    def live():
        return lim.get_client_connections("127.0.0.1")

    async with daphne(tmp_path, shm_path, ping_interval=3600, ping_timeout=3600) as port:
        async with silent_client(port, CHANNELS_PATH) as (_reader, writer):
            assert await eventually(lambda: live() == 1)
            await asyncio.sleep(8.0)  # twice a pinged drop: 2 s tick + 1 s + 1 s
            assert live() == 1
            assert await refused(port, CHANNELS_PATH)
            reset(writer)
            assert await eventually(lambda: live() == 0)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            KILLED_CLIENT,
            str(port),
            CHANNELS_PATH,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            status = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert status.startswith(b"HTTP/1.1 101"), status
            assert await eventually(lambda: live() == 1)
            assert await refused(port, CHANNELS_PATH)
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 30)
            assert await eventually(lambda: live() == 0)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert await channels_admitted_and_served(port)
        assert await eventually(lambda: live() == 0)
    stats = lim.get_statistics()  # the server process's counts, read from the file
    assert stats["active_connections"] == 0 and stats["connections_allowed"] == 3
    assert stats["denied"]["too_many_connections"] == 2
