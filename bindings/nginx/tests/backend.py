"""A WebSocket echo backend for the nginx module's tests and benchmarks.

Listens on 127.0.0.1 (port 0 unless --port), prints "PORT <n>" on stdout.
  ws://.../anything       echoes every message back
  ws://.../drop           echoes, but on the message "drop" aborts the TCP
                          connection (an upstream that dies mid-session)
  ws://.../reject         refuses the upgrade with 403 (auth failing upstream)
  plain GET (no upgrade)  200 "ok\n" (for the connection-rate tests)
"""

import argparse
import asyncio
import http
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    path = ws.request.path
    try:
        async for msg in ws:
            if path.endswith("/drop") and msg == "drop":
                ws.transport.abort()
                return
            await ws.send(msg)
    except Exception:  # noqa: BLE001 - a client vanishing is normal here
        pass


def plain(connection, request):
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    if request.path.endswith("/reject"):
        return connection.respond(http.HTTPStatus.FORBIDDEN, "no\n")
    return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        process_request=plain,
        compression=None,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
