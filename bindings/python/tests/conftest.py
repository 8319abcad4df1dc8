"""Shared helpers: the document's code blocks, and real servers on loopback."""

import ast
import asyncio
import contextlib
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "seed-websocket.rst"


def doc_blocks():
    """Every ``.. code-block:: python`` of the document, as (section, code),
    in order. ``section`` is the title line just above the block."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    blocks = []
    title = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"[~\-=]{3,}", lines[i + 1]) and line.strip():
            title = line.strip()
        if line.strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i][4:] if lines[i].startswith("    ") else "")
                i += 1
            blocks.append((title, "\n".join(body).strip("\n") + "\n"))
            continue
        i += 1
    return blocks


def doc_block(section):
    """The one block under ``section`` (fails when there is not exactly one)."""
    found = [code for title, code in doc_blocks() if title == section]
    assert len(found) == 1, f"{section!r}: {len(found)} blocks"
    return found[0]


async def run_block(code, namespace, name="<doc>"):
    """Runs a block as written; top-level ``await`` is allowed, as the
    document uses it at top level."""
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        await result
    return namespace


@contextlib.asynccontextmanager
async def serve(app, **options):
    """A real uvicorn server for ``app`` on 127.0.0.1 with an ephemeral
    port, in this event loop; yields the port; always stopped. ``options``
    go to ``uvicorn.Config`` (``ws=``, ``ws_ping_interval=``, ...)."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        for _ in range(1500):  # bounded: 30 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start within 30 s"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@pytest.fixture
def fake_clock():
    """A settable millisecond clock for WebSocketRateLimiter(clock=...)."""

    class Clock:
        now = 1_000_000

        def __call__(self):
            return self.now

    return Clock()
