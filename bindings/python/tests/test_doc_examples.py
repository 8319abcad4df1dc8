"""Every Python example of docs/seed-websocket.rst, run as written against the
engine. Only the names a block leaves undefined get small stand-ins
(process_message, broadcast_message, log_violation, websocket...). FastAPI
blocks run under a real uvicorn server with a real websockets client,
Socket.IO blocks with a real python-socketio server and client, the
Channels consumer through channels.testing with a real ASGI application.
"""

import ast
import asyncio
import contextlib
import json
import logging

import pytest
from conftest import doc_block, doc_blocks, run_block, serve
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

import ratethrottle
from ratethrottle import WebSocketLimits, WebSocketRateLimiter

SECTIONS = [
    "Simple Rate Limiter",
    "1. FastAPI WebSocket",
    "2. Socket.IO",
    "3. Django Channels",
    "Custom Client ID Extraction",
    "Per-Room/Channel Limits",
    "Violation Callbacks",
    "Statistics and Monitoring",
    "Example 1: Real-Time Chat",
    "Example 2: Live Dashboard",
    "Strict Limits (API)",
    "Moderate Limits (Chat)",
    "Generous Limits (Internal Tools)",
    "1. Choose Appropriate Limits",
    "2. Handle Rate Limit Gracefully",
    "3. Monitor and Alert",
    "4. Use Redis for Distributed Systems",
]


def test_every_python_block_is_covered_here():
    assert [title for title, _ in doc_blocks()] == SECTIONS


async def recv(ws, timeout=30):
    return await asyncio.wait_for(ws.recv(), timeout)


async def eventually(pred, timeout=30.0):
    for _ in range(int(timeout / 0.02)):  # bounded
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


def url(port, path):
    return f"ws://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------- basic


async def test_simple_rate_limiter():
    ns = await run_block(doc_block("Simple Rate Limiter"), {"data": "hello"})
    assert ns["result"] == {"allowed": True, "reason": "ok"}
    assert ns["limiter"].get_client_connections("client_id") == 1
    big = await run_block(doc_block("Simple Rate Limiter"), {"data": "x" * 65537})
    assert big["result"] == {"allowed": False, "reason": "message_too_large", "max_size": 65536}


# ---------------------------------------------------------------- FastAPI


def fastapi_namespace():
    broadcasts = []

    async def broadcast_message(message):
        broadcasts.append(message)

    return {
        "process_message": lambda data: f"echo:{data}",
        "broadcast_message": broadcast_message,
        "broadcasts": broadcasts,
    }


async def test_fastapi_endpoint_floods_oversize_and_honest_clients():
    ns = await run_block(doc_block("1. FastAPI WebSocket"), fastapi_namespace())
    lim = ns["limiter"].limiter
    async with serve(ns["app"]) as port:
        async with ws_connect(url(port, "/ws/alice")) as ws:
            await ws.send("hi")
            assert await recv(ws) == "echo:hi"
            for i in range(109):  # 110 in all; 100 per minute per connection
                await ws.send(f"m{i}")
            replies = [await recv(ws) for _ in range(109)]
            assert sum(r.startswith("echo:") for r in replies) == 99
            assert replies[-10:] == ['{"error": "Rate limit exceeded. Please slow down."}'] * 10
        async with ws_connect(url(port, "/ws/bob"), max_size=None) as ws:
            await ws.send("x" * 10240)
            assert (await recv(ws)).startswith("echo:x")
            await ws.send("x" * 10241)
            assert "Rate limit exceeded" in await recv(ws)
            await ws.send("é" * 5121)  # 5121 characters, 10242 UTF-8 bytes
            assert "Rate limit exceeded" in await recv(ws)
        # connection flood: 10 per minute for one client id
        accepted = rejected = 0
        for _ in range(12):
            try:
                async with ws_connect(url(port, "/ws/carol")) as ws:
                    await ws.send("ping")
                    await recv(ws)
                    accepted += 1
            except InvalidStatus as e:
                assert e.response.status_code == 403
                rejected += 1
        assert (accepted, rejected) == (10, 2)
        async with ws_connect(url(port, "/ws/dave")) as ws:  # honest client untouched
            await ws.send("hello")
            assert await recv(ws) == "echo:hello"
        assert await eventually(lambda: lim.get_statistics()["active_connections"] == 0)
    assert lim.get_statistics()["denied"]["connection_rate_exceeded"] == 2


async def test_fastapi_chat_endpoint_json():
    ns = await run_block(doc_block("1. FastAPI WebSocket"), fastapi_namespace())
    async with serve(ns["app"]) as port:
        async with ws_connect(url(port, "/chat")) as ws:
            await ws.send(json.dumps({"text": "hi"}))
            assert await eventually(lambda: ns["broadcasts"] == [{"text": "hi"}])
            for i in range(100):
                await ws.send(json.dumps({"n": i}))
            # the 100th message of the minute passed; the 101st did not
            assert json.loads(await recv(ws)) == {"error": "Too many messages. Wait a moment."}
            assert len(ns["broadcasts"]) == 100
            await ws.send(json.dumps({"big": "x" * 20000}))  # over 10 KB too
            assert "error" in json.loads(await recv(ws))


async def test_custom_client_id_extraction():
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    ns = await run_block(doc_block("Custom Client ID Extraction"), {})
    limiter = ns["limiter"]
    app = FastAPI()

    @app.websocket("/u")
    async def endpoint(websocket: WebSocket):
        if not await limiter.connect(websocket):
            return
        try:
            while True:
                await websocket.receive_text()
                await websocket.send_text(limiter.websocket_map[websocket])
        except WebSocketDisconnect:
            await limiter.disconnect(websocket)

    lim = limiter.limiter
    async with serve(app) as port:
        async with (
            ws_connect(url(port, "/u?user_id=u1")) as a,
            ws_connect(url(port, "/u"), additional_headers={"X-User-ID": "u2"}) as b,
            ws_connect(url(port, "/u")) as c,
        ):
            for ws in (a, b, c):
                await ws.send("x")
                await recv(ws)
            assert lim.get_client_connections("u1") == 1
            assert lim.get_client_connections("u2") == 1
            assert lim.get_client_connections("127.0.0.1") == 1
        assert await eventually(lambda: lim.get_client_connections("u1") == 0)


async def test_real_time_chat_example():
    ns = await run_block(doc_block("Example 1: Real-Time Chat"), {})
    async with serve(ns["app"]) as port:
        async with ws_connect(url(port, "/chat")) as a, ws_connect(url(port, "/chat")) as b:
            await a.send("hello all")
            assert await recv(a) == "hello all" and await recv(b) == "hello all"
            await a.send("x" * 1025)  # over max_message_size=1024
            assert await recv(a) == "⚠️  Slow down! Rate limit exceeded."
            for i in range(31):  # 30 per minute per connection
                await b.send(f"b{i}")
            got = [await recv(b) for _ in range(31)]  # 30 broadcasts + 1 denial
            assert got[-1] == "⚠️  Slow down! Rate limit exceeded."
            assert got.count("⚠️  Slow down! Rate limit exceeded.") == 1
        # connections: 5 per minute from one IP; two used above
        results = []
        for _ in range(4):
            try:
                async with ws_connect(url(port, "/chat")) as ws:
                    await ws.send("x")
                    await recv(ws)
                    results.append(True)
            except InvalidStatus:
                results.append(False)
        assert results == [True, True, True, False]
        assert await eventually(lambda: ns["active_connections"] == [])


async def test_live_dashboard_example():
    ns = await run_block(doc_block("Example 2: Live Dashboard"), {})
    lim = ns["limiter"].limiter
    async with serve(ns["app"]) as port:
        async with ws_connect(url(port, "/dashboard")) as ws:
            first = json.loads(await recv(ws))
            second = json.loads(await recv(ws))
            assert first["active_connections"] == 1
            assert second["total_messages"] >= 1
            assert second["limits"]["messages_per_minute"] == 1000
        assert await eventually(lambda: lim.get_statistics()["active_connections"] == 0)


# ---------------------------------------------------------------- per room


ONE_LINE_BEFORE = "result = await limiter.check_message(connection_id, len(message))"
ONE_LINE_AFTER = "result = await limiter.check_key(room_name, len(message))"


def room_namespace():
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    from ratethrottle import FastAPIWebSocketLimiter

    rooms = []

    async def broadcast_to_room(room_name, data):
        rooms.append((room_name, data))

    return {
        "app": FastAPI(),
        "limiter": FastAPIWebSocketLimiter(),
        "WebSocket": WebSocket,
        "WebSocketDisconnect": WebSocketDisconnect,
        "broadcast_to_room": broadcast_to_room,
        "rooms": rooms,
    }


async def test_per_room_example_as_written_rejects_every_room_message():
    # The document's bug, kept visible: the room limiter checks a connection
    # id it never registered, so the answer is connection_not_found.
    ns = await run_block(doc_block("Per-Room/Channel Limits"), room_namespace())
    async with serve(ns["app"]) as port:
        async with ws_connect(url(port, "/room/lobby")) as ws:
            await ws.send("hi")
            assert await recv(ws) == "Room rate limit exceeded"
    assert ns["rooms"] == []
    room = ns["room_limiter"].get_room_limiter("lobby")
    assert room.get_statistics()["denied"]["connection_not_found"] == 1


async def test_per_room_example_with_the_one_line_change_holds_room_limits():
    code = doc_block("Per-Room/Channel Limits")
    assert code.count(ONE_LINE_BEFORE) == 1
    ns = await run_block(code.replace(ONE_LINE_BEFORE, ONE_LINE_AFTER), room_namespace())
    async with serve(ns["app"]) as port:
        async with (
            ws_connect(url(port, "/room/lobby")) as a,
            ws_connect(url(port, "/room/lobby")) as b,
            ws_connect(url(port, "/room/kitchen")) as k,
        ):
            for i in range(255):  # 510 in the lobby from two connections; 500 per minute
                await a.send(f"a{i}")
                await b.send(f"b{i}")
            denials = []

            async def drain(ws):
                with contextlib.suppress(asyncio.TimeoutError):
                    while True:
                        denials.append(await recv(ws, timeout=0.2))

            for _ in range(300):  # bounded: every message answered or broadcast
                await drain(a)
                await drain(b)
                if len(denials) + len(ns["rooms"]) >= 510:
                    break
            await drain(a)  # nothing more may arrive
            await drain(b)
            assert denials == ["Room rate limit exceeded"] * 10
            assert len(ns["rooms"]) == 500
            await k.send("kitchen is open")  # another room is untouched
            assert await eventually(lambda: ("kitchen", "kitchen is open") in ns["rooms"])
    assert all(room == "lobby" for room, _ in ns["rooms"][:500])


# ---------------------------------------------------------------- Socket.IO


def socketio_namespace():
    return {"process_message": lambda data: {"echo": data}}


@contextlib.asynccontextmanager
async def sio_client(port):
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    events = {"response": [], "error": [], "joined": [], "message": []}
    for name, got in events.items():
        client.on(name, got.append)
    await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=30)
    try:
        yield client, events
    finally:
        await client.disconnect()


async def test_socketio_messages_flood_and_rooms():
    import socketio

    ns = await run_block(doc_block("2. Socket.IO"), socketio_namespace())
    lim = ns["limiter"].limiter
    async with serve(socketio.ASGIApp(ns["sio"])) as port:
        async with sio_client(port) as (client, ev), sio_client(port) as (honest, hev):
            await client.emit("message", "hello")
            assert await eventually(lambda: ev["response"] == [{"echo": "hello"}])
            for i in range(229):  # 230 in all; 200 per minute per connection
                await client.emit("message", {"n": i})
            assert await eventually(lambda: len(ev["response"]) + len(ev["error"]) == 230)
            assert len(ev["response"]) == 200 and len(ev["error"]) == 30
            assert ev["error"][0] == {"message": "Rate limit exceeded", "retry_after": 10}
            await honest.emit("message", "still fine")  # untouched by the flood
            assert await eventually(lambda: hev["response"] == [{"echo": "still fine"}])
            await honest.emit("join_room", {"room": "r1"})
            assert await eventually(lambda: hev["joined"] == [{"room": "r1"}])
            assert lim.get_statistics()["active_connections"] == 2
            assert lim.get_client_connections("127.0.0.1") == 2
        assert await eventually(lambda: lim.get_statistics()["active_connections"] == 0)


async def test_socketio_connection_rate():
    import socketio

    ns = await run_block(doc_block("2. Socket.IO"), socketio_namespace())
    async with serve(socketio.ASGIApp(ns["sio"])) as port:
        outcomes = []
        for _ in range(22):  # 20 connections per minute from one IP
            try:
                async with sio_client(port):
                    outcomes.append(True)
            except socketio.exceptions.ConnectionError:
                outcomes.append(False)
        assert outcomes == [True] * 20 + [False] * 2
    stats = ns["limiter"].limiter.get_statistics()
    assert stats["denied"]["connection_rate_exceeded"] == 2


# ---------------------------------------------------------------- Channels


def channels_app(consumer, client_ip):
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["channels"],
            CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        )
        django.setup()
    from channels.routing import URLRouter
    from django.urls import path

    router = URLRouter([path("ws/chat/<str:room_name>/", consumer.as_asgi())])

    async def app(scope, receive, send):  # the server's part: the peer address
        scope = dict(scope, client=(client_ip, 40000))
        return await router(scope, receive, send)

    return app


@pytest.fixture
def channels_code():
    import django  # noqa: F401  (skip nothing: django is a test dependency)

    return doc_block("3. Django Channels")


async def test_channels_consumer(channels_code):
    from channels.testing import WebsocketCommunicator

    ns = await run_block(channels_code, {})
    consumer, limiter = ns["ChatConsumer"], ns["limiter"]
    app = channels_app(consumer, "10.1.1.1")
    a = WebsocketCommunicator(app, "/ws/chat/lobby/")
    b = WebsocketCommunicator(app, "/ws/chat/lobby/")
    assert (await a.connect())[0] and (await b.connect())[0]
    try:
        await a.send_to(text_data=json.dumps({"message": "hi"}))
        for c in (a, b):
            assert json.loads(await c.receive_from(30)) == {"type": "message", "message": "hi"}
        for i in range(150):  # 151 in all: 150 per minute per connection
            await a.send_to(text_data=json.dumps({"message": i}))
        kinds = []
        for _ in range(150):
            kinds.append(json.loads(await a.receive_from(30))["type"])
        assert kinds.count("message") == 149 and kinds.count("error") == 1
        assert limiter.limiter.get_client_connections("10.1.1.1") == 2
        relayed = [json.loads(await b.receive_from(30)) for _ in range(149)]
        assert relayed == [{"type": "message", "message": i} for i in range(149)]
        await b.send_to(text_data=json.dumps({"message": "b ok"}))  # b untouched by a's flood
        assert json.loads(await b.receive_from(30)) == {"type": "message", "message": "b ok"}
    finally:
        await a.disconnect()
        await b.disconnect()
    assert limiter.limiter.get_client_connections("10.1.1.1") == 0


async def test_channels_connection_rate(channels_code):
    from channels.testing import WebsocketCommunicator

    ns = await run_block(channels_code, {})
    app = channels_app(ns["ChatConsumer"], "10.2.2.2")
    outcomes = []
    for _ in range(17):  # 15 connections per minute
        c = WebsocketCommunicator(app, "/ws/chat/room/")
        connected, code = await c.connect()
        outcomes.append((connected, code))
        if connected:
            await c.disconnect()
        else:
            # The document's disconnect() reads self.room_name, which a
            # rejected consumer never set; stop the consumer without it.
            c.future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await c.future
    assert outcomes == [(True, None)] * 15 + [(False, 1008)] * 2


# ---------------------------------------------------------------- callbacks, stats


async def test_violation_callbacks_example():
    log, alerts, banned = [], [], []
    ns = await run_block(
        doc_block("Violation Callbacks"),
        {
            "WebSocketRateLimiter": WebSocketRateLimiter,
            "log_violation": log.append,
            "send_alert": alerts.append,
            "get_violation_count": lambda cid: sum(v["client_id"] == cid for v in log),
            "ban_client": banned.append,
        },
    )
    lim = ns["limiter"]
    await lim.connect("c1", "203.0.113.9")
    results = [await lim.check_message("c1", 10) for _ in range(1012)]  # 1000 per minute
    assert sum(r["allowed"] for r in results) == 1000
    assert [v["type"] for v in log] == ["message_rate"] * 12
    assert alerts == ["High message rate from 203.0.113.9"] * 12
    assert banned == ["203.0.113.9"] * 2  # the 11th and 12th violations ban
    assert (await lim.check_message("c1", 70000))["reason"] == "message_too_large"
    assert log[-1]["type"] == "message_size"


async def test_monitor_and_alert_example():
    admin = []
    counts = {}

    def get_violation_count(cid):
        counts[cid] = counts.get(cid, 0) + 1
        return counts[cid]

    ns = await run_block(
        doc_block("3. Monitor and Alert"),
        {
            "logger": logging.getLogger("doc"),
            "get_violation_count": get_violation_count,
            "send_admin_alert": admin.append,
        },
    )
    lim = WebSocketRateLimiter(
        WebSocketLimits(messages_per_minute=2), on_violation=ns["on_violation"]
    )
    await lim.connect("c", "198.51.100.7")
    for _ in range(14):
        await lim.check_message("c")
    assert admin == ["Client 198.51.100.7 exceeding limits"] * 2


async def test_statistics_example(capsys):
    import time

    lim = WebSocketRateLimiter(WebSocketLimits(connections_per_minute=10, messages_per_minute=100))
    await lim.register_connection("conn_123", "192.168.1.1")
    for n in (100, 200):
        await lim.check_message("conn_123", n)
    await run_block(doc_block("Statistics and Monitoring"), {"limiter": lim, "time": time})
    out = capsys.readouterr().out
    assert "'active_connections': 1" in out and "'total_bytes_sent': 300" in out
    assert "Messages: 2\nBytes: 300\nConnected: " in out
    assert "Client has 1 active connections" in out


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "section, preset",
    [
        ("Strict Limits (API)", "strict"),
        ("Moderate Limits (Chat)", "moderate"),
        ("Generous Limits (Internal Tools)", "generous"),
    ],
)
async def test_configuration_presets(section, preset):
    limits = eval(doc_block(section), {"WebSocketLimits": WebSocketLimits})
    lim = WebSocketRateLimiter(limits)
    assert lim._engine.limits() == ratethrottle._engine.preset(preset)
    await lim.connect("c", "ip")
    size = limits.max_message_size
    assert (await lim.check_message("c", size))["allowed"]
    assert (await lim.check_message("c", size + 1))["reason"] == "message_too_large"
    for i in range(limits.max_concurrent_connections - 1):
        assert (await lim.connect(f"more{i}", "ip"))["allowed"]
    assert (await lim.connect("one-too-many", "ip"))["reason"] == "too_many_connections"


async def test_choose_appropriate_limits():
    code = doc_block("1. Choose Appropriate Limits")
    exprs = [node for node in ast.parse(code).body if isinstance(node, ast.Expr)]
    assert len(exprs) == 3
    for node, (conns, msgs) in zip(exprs, [(2, 10), (10, 60), (20, 120)]):
        expr = compile(ast.Expression(node.value), "<doc>", "eval")
        limits = eval(expr, {"WebSocketLimits": WebSocketLimits})
        lim = WebSocketRateLimiter(limits)
        await lim.connect("kept", "ip")
        opened = []
        for i in range(conns):  # open and close: the rate, not the concurrency, decides
            opened.append((await lim.connect(f"c{i}", "ip"))["allowed"])
            await lim.unregister_connection(f"c{i}")
        assert opened == [True] * (conns - 1) + [False]
        sent = [(await lim.check_message("kept", 1))["allowed"] for _ in range(msgs + 1)]
        assert sent == [True] * msgs + [False]


async def test_handle_rate_limit_gracefully():
    class RecordingWebSocket:  # stand-in for the block's undefined `websocket`
        def __init__(self):
            self.sent = []

        async def send_json(self, data):
            self.sent.append(data)

    lim = WebSocketRateLimiter(WebSocketLimits(messages_per_minute=1, max_message_size=1024))
    await lim.connect("c", "ip")
    outcomes = [
        await lim.check_message("c", 10),  # allowed
        await lim.check_message("c", 2000),  # message_too_large
        await lim.check_message("c", 10),  # rate_limit_exceeded
    ]
    sent = []
    for result in outcomes:
        ws = RecordingWebSocket()
        code = doc_block("2. Handle Rate Limit Gracefully")
        await run_block(code, {"result": result, "websocket": ws})
        sent.append(ws.sent)
    assert sent[0] == []
    assert sent[1] == [{"error": "Message too large. Max: 1024 bytes"}]
    (msg,) = sent[2]
    assert msg["error"] == "Too many messages" and 0 < msg["retry_after"] <= 120.0


async def test_redis_example_raises_a_clear_error():
    with pytest.raises(NotImplementedError, match="later release"):
        await run_block(
            doc_block("4. Use Redis for Distributed Systems"),
            {"WebSocketRateLimiter": WebSocketRateLimiter},
        )
