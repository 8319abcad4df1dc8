"""WebSocket rate limiting: the seed's API on the ratethrottle engine.

Every decision (sizes, rates, bandwidth, concurrency) is the engine's
(``ratethrottle._engine``, Rust). This module only maps string connection
ids to engine handles, converts units (seconds here, milliseconds in the
engine), validates argument types and builds the seed's dicts.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

from . import _engine
from .addresses import client_key

logger = logging.getLogger(__name__)

__all__ = [
    "WebSocketLimits",
    "ConnectionInfo",
    "WebSocketRateLimiter",
    "FastAPIWebSocketLimiter",
    "SocketIOLimiter",
    "ChannelsRateLimiter",
    "RedisStorage",
    "InMemoryStorage",
    "SharedMemoryStorage",
]

_REASONS = _engine.REASONS
_RETRY_NEVER = _engine.RETRY_NEVER
_OK, _CONNECTION_RATE, _CONCURRENT, _TOO_LARGE, _MESSAGE_RATE, _BANDWIDTH = range(6)
_CLIENT_MESSAGE_RATE, _CLIENT_BANDWIDTH, _TABLE_FULL, _UNKNOWN = range(6, 10)
_WINDOW_MS = 60_000  # every *_per_minute limit is per 60 s window


@dataclass
class WebSocketLimits:
    """Limits of a WebSocket limiter (the seed's fields and defaults).

    connections_per_minute: new connections per client per minute
    messages_per_minute: messages per connection per minute
    bytes_per_minute: bytes per connection per minute (None or 0: no limit)
    max_concurrent_connections: live connections per client
    max_message_size: largest message in bytes

    Additions (all off by default):
    client_messages_per_minute / client_bytes_per_minute: per client over
    all its connections, and per key for ``check_key`` (rooms, channels);
    max_clients / max_connections: the engine's fixed capacities.

    0 means "no limit" for every field (the engine's rule) but the two
    capacities, max_clients and max_connections (1 to 8388608).
    """

    connections_per_minute: int = 60
    messages_per_minute: int = 1000
    bytes_per_minute: Optional[int] = None
    max_concurrent_connections: int = 10
    max_message_size: int = 65536  # 64KB
    client_messages_per_minute: Optional[int] = None
    client_bytes_per_minute: Optional[int] = None
    max_clients: int = 65536
    max_connections: int = 65536

    def _engine_limits(self) -> Dict[str, int]:
        """The engine's Limits for these fields (ValueError/TypeError if bad)."""

        def count(name: str, optional: bool = False) -> int:
            v = getattr(self, name)
            if v is None and optional:
                return 0
            if type(v) is not int:
                raise TypeError(
                    f"WebSocketLimits.{name} must be an int"
                    f"{' or None' if optional else ''}, not {type(v).__name__}"
                )
            if v < 0:
                raise ValueError(f"WebSocketLimits.{name} must be >= 0 (0 = no limit), got {v}")
            return v

        return {
            "window_ms": _WINDOW_MS,
            "connections_per_window": count("connections_per_minute"),
            "max_concurrent_connections": count("max_concurrent_connections"),
            "messages_per_window": count("messages_per_minute"),
            "bytes_per_window": count("bytes_per_minute", True),
            "max_message_size": count("max_message_size"),
            "client_messages_per_window": count("client_messages_per_minute", True),
            "client_bytes_per_window": count("client_bytes_per_minute", True),
            "max_clients": count("max_clients"),
            "max_connections": count("max_connections"),
        }


_ENGINE_TO_SEED = {
    "connections_per_window": "connections_per_minute",
    "max_concurrent_connections": "max_concurrent_connections",
    "messages_per_window": "messages_per_minute",
    "bytes_per_window": "bytes_per_minute",
    "max_message_size": "max_message_size",
    "client_messages_per_window": "client_messages_per_minute",
    "client_bytes_per_window": "client_bytes_per_minute",
    "max_clients": "max_clients",
    "max_connections": "max_connections",
}


def _new_engine(limits: Dict[str, int], path: Any = None) -> "_engine.Engine":
    """An engine on the heap, or (``path``) over a shared file."""
    try:
        return _engine.Engine(**limits, path=path)
    except OverflowError as e:  # a value above the engine field's integer type
        raise ValueError(f"WebSocketLimits: a limit is too large for the engine: {e}") from None
    except ValueError as e:
        msg = str(e)
        for eng, seed in _ENGINE_TO_SEED.items():
            if msg.startswith(f"invalid {eng}:"):
                msg = f"WebSocketLimits.{seed}: {msg[len('invalid ' + eng) + 2 :]}"
                break
        raise ValueError(msg) from None


class InMemoryStorage:
    """The default storage: the engine's in-process region. Accepted as
    ``storage=InMemoryStorage()`` for compatibility; it holds nothing."""


class SharedMemoryStorage:
    """Limits shared by every process of this host that uses the same path.

    ``path`` (``str``, ``bytes`` or ``os.PathLike``) names a file, best on
    tmpfs (``/dev/shm/myapp-ws-limits``). The first limiter to open it
    creates it (mode 0600) and formats it with its limits; every later one,
    in this or another process, attaches, and then the FILE's limits apply
    (``limiter.limits`` shows them, ``limiter.opened`` says which happened).
    One client's connections, windows and counters are then counted once for
    all processes: ``uvicorn --workers N``, gunicorn with uvicorn workers,
    several Daphne processes behind a process manager.

    ``check_key`` uses a second file, ``keys_path`` (``path + ".keys"``),
    created or attached the first time a limiter on this storage checks a
    key. The storage object only names the files; the limiter opens them.
    The files stay when the processes exit: ``unlink()`` removes both.
    """

    def __init__(self, path: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]) -> None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(
                f"SharedMemoryStorage path must be str, bytes or os.PathLike, "
                f"not {type(path).__name__}"
            )
        path = os.fspath(path)
        if not path:
            raise ValueError("SharedMemoryStorage path must not be empty")
        self.path: Union[str, bytes] = path

    @property
    def keys_path(self) -> Union[str, bytes]:
        """The file of ``check_key``'s per-key region: ``path + ".keys"``."""
        return self.path + (b".keys" if isinstance(self.path, bytes) else ".keys")

    def unlink(self) -> None:
        """Removes both files (missing ones are ignored). Processes that
        still have them open keep their (now private) mapping: call it when
        no process uses the limits any more."""
        for p in (self.path, self.keys_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"SharedMemoryStorage({self.path!r})"


class RedisStorage:
    """Limits shared across servers through Redis are not in this release.

    The name exists so ``from ratethrottle import RedisStorage`` works;
    creating one raises NotImplementedError.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "RedisStorage (limits shared across servers) comes with a later release of "
            "ratethrottle; this release limits in memory, per process, or per host "
            "with SharedMemoryStorage(path). Use WebSocketRateLimiter(storage=None)."
        )


@dataclass
class ConnectionInfo:
    """What is known of a connection: a snapshot taken from the engine."""

    client_id: str
    connected_at: float
    message_count: int = 0
    bytes_sent: int = 0
    last_message_time: float = 0.0
    metadata: Dict[str, Any] = field(default_factory=dict)


def _seconds(ms: int) -> float:
    """Engine ms to the API's seconds; a request that can never pass waits forever."""
    return math.inf if ms == _RETRY_NEVER else ms / 1000.0


def _id_text(prefix: bytes) -> Union[str, bytes]:
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError:
        return prefix


class WebSocketRateLimiter:
    """WebSocket rate limiting on the engine.

    ``limits``: WebSocketLimits (default: the seed's defaults).
    ``storage``: None or InMemoryStorage (this process only), or
    SharedMemoryStorage(path) (every process of the host using that path;
    on attach the file's limits replace ``limits``); anything else raises
    (RedisStorage comes with a later release).
    ``opened``: None in memory, else ``"created"`` or ``"attached"``.
    ``on_violation``: called with a dict for every denial, synchronously
    inside the check that denied; a coroutine function is scheduled as a
    task on the running loop.
    """

    def __init__(
        self,
        limits: Optional[WebSocketLimits] = None,
        storage: Any = None,
        on_violation: Optional[Callable[[Dict[str, Any]], Any]] = None,
        *,
        clock: Optional[Callable[[], int]] = None,
    ) -> None:
        if limits is None:
            limits = WebSocketLimits()
        if not isinstance(limits, WebSocketLimits):
            raise TypeError(f"limits must be a WebSocketLimits, not {type(limits).__name__}")
        if storage is not None and not isinstance(storage, (InMemoryStorage, SharedMemoryStorage)):
            raise NotImplementedError(
                f"storage={type(storage).__name__}: this release supports the in-memory "
                "default and SharedMemoryStorage(path) (limits shared by the processes of "
                "one host); RedisStorage (limits shared across servers) comes with a "
                "later release. Pass storage=None."
            )
        if on_violation is not None and not callable(on_violation):
            raise TypeError("on_violation must be callable or None")
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning milliseconds, or None")
        self.storage = storage
        self._on_violation: Optional[Callable[[Dict[str, Any]], Any]] = None
        self._engine_limits = limits._engine_limits()
        self._shared = storage if isinstance(storage, SharedMemoryStorage) else None
        path = None if self._shared is None else self._shared.path
        self._engine = _new_engine(self._engine_limits, path)
        if self._engine.opened == "attached":
            # The file's limits apply; show them, and derive the key
            # region's limits from them, as every attached process does.
            limits, self._engine_limits = _file_limits(self._engine, path)
        self.limits = limits
        #: None (in memory), "created" or "attached" (SharedMemoryStorage).
        self.opened: Optional[str] = self._engine.opened
        self._key_engine: Optional[_engine.Engine] = None
        self._key_engine_lock = threading.Lock()
        self._clock = clock
        # The hot calls, bound once (with a fake clock, through it).
        eng = self._engine
        if clock is None:
            self._check_message = eng.check_message
            self._allows_connection = eng.allows_connection
        else:
            cm_at, ac_at = eng.check_message_at, eng.allows_connection_at
            self._check_message = lambda handle, size: cm_at(handle, size, clock())
            self._allows_connection = lambda client: ac_at(client, clock())
        # connection id -> engine handle; handle -> (connection id, client id,
        # metadata, pid of the process that registered it, time.time() then)
        self._handles: Dict[str, int] = {}
        self._conns: Dict[int, tuple] = {}
        self._tasks: set = set()
        if self._shared is not None:
            # A region file outlives this limiter, and may stay open in this
            # process through another limiter on the same path: close the
            # connections this limiter registered and did not unregister,
            # or they would hold their clients' slots until the process ends.
            weakref.finalize(self, _close_connections, self._engine, self._conns)
        self.on_violation = on_violation

    @property
    def on_violation(self) -> Optional[Callable[[Dict[str, Any]], Any]]:
        """The violation callback, or None. It may be set (or removed with
        None) at any time, also through an adapter's ``.limiter``, which is
        how the seed's adapters (no ``on_violation`` argument) get one."""
        return self._on_violation

    @on_violation.setter
    def on_violation(self, callback: Optional[Callable[[Dict[str, Any]], Any]]) -> None:
        if callback is not None and not callable(callback):
            raise TypeError("on_violation must be callable or None")
        hook = None if callback is None else self._violation_hook()
        with self._key_engine_lock:  # a key engine made meanwhile gets it too
            self._on_violation = callback
            for eng in (self._engine, self._key_engine):
                if eng is not None:
                    eng.set_violation_callback(hook)

    # ---- connections -------------------------------------------------

    async def check_connection(self, client_id: Union[str, bytes]) -> bool:
        """Whether a new connection of ``client_id`` is allowed now.

        Racy by design, as in the seed: another connection may take the last
        slot before ``register_connection``. ``connect`` decides and registers
        in one step (the adapters use it).
        """
        return self._allows_connection(client_id)

    async def register_connection(
        self,
        connection_id: str,
        client_id: Union[str, bytes],
        metadata: Optional[Dict] = None,
    ) -> None:
        """Counts a connection of ``client_id`` (after ``check_connection``).

        Registering an id that is already registered replaces it (the old
        connection is closed in the engine first).
        """
        if type(connection_id) is not str:
            _check_connection_id(connection_id)
        if self._clock is None:
            handle = self._engine.register_connection(client_id)
        else:
            handle = self._engine.register_connection_at(client_id, self._clock())
        self._bind(connection_id, client_id, metadata, handle)

    async def connect(
        self,
        connection_id: str,
        client_id: Union[str, bytes],
        metadata: Optional[Dict] = None,
    ) -> Dict[str, Any]:
        """Decides and registers a connection in one atomic engine step
        (two racing connects never both take the last slot).

        Returns ``{'allowed': True, 'reason': 'ok'}`` or a denial dict with
        ``reason`` and ``retry_after`` (seconds) or ``max_concurrent``.
        """
        _check_connection_id(connection_id)
        if self._clock is None:
            d = self._engine.connect(client_id)
        else:
            d = self._engine.connect_at(client_id, self._clock())
        handle = d[6]
        if handle:
            self._bind(connection_id, client_id, metadata, handle)
        return _connect_result(d)

    async def unregister_connection(self, connection_id: str) -> None:
        """Closes a connection; unknown ids are ignored (a non-str id raises
        TypeError)."""
        if type(connection_id) is not str:
            _check_connection_id(connection_id)
        self._release(connection_id)

    def _release(self, connection_id: Any) -> None:
        """``unregister_connection`` without the coroutine (for finalizers)."""
        handle = self._handles.pop(connection_id, None)
        if handle is not None:
            self._conns.pop(handle, None)
            self._engine.disconnect(handle)

    def _bind(self, connection_id: str, client_id: Any, metadata: Optional[Dict], handle: int):
        old = self._handles.get(connection_id)
        if old is not None:
            del self._conns[old]
            self._engine.disconnect(old)
        self._handles[connection_id] = handle
        self._conns[handle] = (connection_id, client_id, metadata, os.getpid(), time.time())

    # ---- messages ----------------------------------------------------

    async def check_message(self, connection_id: str, message_size: int = 0) -> Dict[str, Any]:
        """Checks one message of ``message_size`` bytes on a connection.

        Returns the seed's dicts: ``{'allowed': True, 'reason': 'ok'}``, or
        ``allowed: False`` with ``reason`` and, by reason, ``max_size``
        (message_too_large), ``retry_after`` in seconds (rate and bandwidth),
        ``remaining_bytes`` (bandwidth). An unknown connection id gives
        ``{'allowed': False, 'reason': 'connection_not_found'}``.
        Raises TypeError (size not an int, or a bool), ValueError (negative)
        or OverflowError (above 2**64-1).
        """
        handle = self._handles.get(connection_id, 0)
        if not handle and type(connection_id) is not str:
            _check_connection_id(connection_id)
        d = self._check_message(handle, message_size)
        if d is None:
            return {"allowed": True, "reason": "ok"}
        return _message_result(d)

    async def check_key(self, key: Union[str, bytes], message_size: int = 0) -> Dict[str, Any]:
        """Checks one message for a key (a room, a channel, a user) against
        this limiter's message limits applied to the key as a whole:
        ``messages_per_minute`` and ``bytes_per_minute`` shared by everyone
        who sends under that key (the engine's per-key limits). Same dicts
        as ``check_message`` (reasons ``client_rate_limit_exceeded``,
        ``client_bandwidth_exceeded``).
        """
        eng = self._key_engine
        if eng is None:
            eng = self._open_key_engine()
        if self._clock is None:
            d = eng.check_key(key, message_size)
        else:
            d = eng.check_key_at(key, message_size, self._clock())
        if d is None:
            return {"allowed": True, "reason": "ok"}
        return _message_result(d)

    def _open_key_engine(self) -> "_engine.Engine":
        """The key engine, made on first use; once, also when threads race
        to it (two would split a key's counts between them)."""
        with self._key_engine_lock:
            eng = self._key_engine
            if eng is None:
                eng = _new_engine(
                    dict(
                        self._engine_limits,
                        client_messages_per_window=self._engine_limits["messages_per_window"],
                        client_bytes_per_window=self._engine_limits["bytes_per_window"],
                        max_connections=1,  # keys have no connections
                    ),
                    None if self._shared is None else self._shared.keys_path,
                )
                if self._on_violation is not None:
                    eng.set_violation_callback(self._violation_hook())
                self._key_engine = eng
            return eng

    # ---- observation -------------------------------------------------

    def get_connection_info(self, connection_id: str) -> Optional[ConnectionInfo]:
        """A snapshot of a live connection, or None. ``connected_at`` is the
        ``time.time()`` of the registration, as in the seed (the same in
        every snapshot); ``last_message_time`` adds the engine's monotonic
        time from the connect to the last allowed message."""
        if type(connection_id) is not str:
            _check_connection_id(connection_id)
        handle = self._handles.get(connection_id)
        if handle is None:
            return None
        info = self._engine.connection_info(handle)
        if info is None:
            return None
        _, client_id, metadata, _pid, connected_at = self._conns[handle]
        if metadata is None:
            metadata = {}
        _prefix, _len, connected_ms, last_ms, messages, nbytes = info
        return ConnectionInfo(
            client_id=client_id,
            connected_at=connected_at,
            message_count=messages,
            bytes_sent=nbytes,
            last_message_time=connected_at + max(last_ms - connected_ms, 0) / 1000.0,
            metadata=metadata,
        )

    def get_client_connections(self, client_id: Union[str, bytes]) -> int:
        """Live connections of a client (from the engine)."""
        return self._engine.client_connections(client_id)

    def get_statistics(self) -> Dict[str, Any]:
        """The seed's statistics dict, from the engine, plus ``denied`` (by
        reason), ``connections_allowed``, ``messages_allowed`` and ``engine``
        (every engine statistic)."""
        s = self._engine.stats()
        lim = self.limits
        return {
            "active_connections": s["active_connections"],
            "unique_clients": s["unique_clients"],
            "total_messages": s["total_messages"],
            "total_bytes_sent": s["total_bytes"],
            "limits": {
                "connections_per_minute": lim.connections_per_minute,
                "messages_per_minute": lim.messages_per_minute,
                "bytes_per_minute": lim.bytes_per_minute,
                "max_concurrent": lim.max_concurrent_connections,
                "max_message_size": lim.max_message_size,
                "client_messages_per_minute": lim.client_messages_per_minute,
                "client_bytes_per_minute": lim.client_bytes_per_minute,
            },
            "connections_allowed": s["connections_allowed"],
            "messages_allowed": s["messages_allowed"],
            "denied": s["denied"],
            "engine": s,
        }

    def prometheus(self) -> str:
        """The engine's statistics in Prometheus text format."""
        return self._engine.prometheus()

    # ---- violations --------------------------------------------------

    def _violation_hook(self) -> Callable[[tuple], None]:
        # The engine holds the hook; a weak reference back to the limiter
        # keeps that from forming a cycle the garbage collector cannot see.
        ref = weakref.ref(self)

        def hook(v: tuple) -> None:
            lim = ref()
            if lim is not None:
                lim._dispatch_violation(v)

        return hook

    def _dispatch_violation(self, v: tuple) -> None:
        vtype, prefix, id_len, conn, limit, current, size, retry_ms, _at_ms, reason = v
        info: Dict[str, Any] = {"type": vtype}
        bound = self._conns.get(conn) if conn else None
        if bound is not None:
            info["connection_id"] = bound[0]
            info["client_id"] = bound[1]
        else:
            info["client_id"] = _id_text(prefix)
            if id_len > len(prefix):
                info["client_id_truncated"] = True
        info["limit"] = limit
        info["current"] = current
        if reason in (_TOO_LARGE, _BANDWIDTH, _CLIENT_BANDWIDTH):
            info["size"] = size
            info["message_size"] = size
        if reason in (_BANDWIDTH, _CLIENT_BANDWIDTH):
            info["remaining"] = max(limit - current, 0)
        if reason != _CONCURRENT:
            info["retry_after"] = _seconds(retry_ms)
        info["reason"] = _REASONS[reason]
        callback = self._on_violation
        if callback is None:  # removed while a check was deciding
            return
        try:
            r = callback(info)
            if inspect.isawaitable(r):
                task = asyncio.ensure_future(r)
                self._tasks.add(task)
                task.add_done_callback(functools.partial(_violation_task_done, self._tasks, info))
        except Exception:  # a broken callback must not break the check
            logger.exception("on_violation raised for %r", info)

    def drain_violations(self, max: int = 1024) -> list:
        """Violations waiting in the engine's ring, as raw tuples
        ``(type, client_id_prefix, client_id_len, conn, limit, current, size,
        retry_after_ms, at_ms, reason_code)``."""
        return self._engine.drain_violations(max)

    def __repr__(self) -> str:
        shared = "" if self._shared is None else f", storage={self._shared!r}"
        return (
            f"WebSocketRateLimiter(connections={len(self._handles)}, limits={self.limits}{shared})"
        )


def _violation_task_done(tasks: set, info: Dict[str, Any], task: "asyncio.Future") -> None:
    """A coroutine callback's end: its exception is logged (and so
    retrieved) like a plain callback's (the task is not
    kept holding the limiter); a cancellation, such as its loop
    ending first (``asyncio.run``, ``async_to_sync`` without an outer
    loop), is logged too, rather than lost silently."""
    tasks.discard(task)
    if task.cancelled():
        logger.warning(
            "on_violation coroutine was cancelled before it finished (its event loop "
            "ended or it was cancelled) for %r",
            info,
        )
        return
    exc = task.exception()
    if exc is not None:
        logger.error("on_violation raised for %r", info, exc_info=exc)


def _close_connections(engine: "_engine.Engine", conns: Dict[int, tuple]) -> None:
    """The finalizer of a limiter over a region file: closes the connections
    it still holds that this process registered (a forked child's copy of
    its parent's connections is not its own to close)."""
    pid = os.getpid()
    for handle, bound in list(conns.items()):
        if bound[3] == pid:
            engine.disconnect(handle)


def _peer_key(host: Any, ipv6_prefix: int) -> Any:
    """The adapters' client id for a peer host: ``client_key`` (IPv6 by its
    prefix), or ``"unknown"`` when the server gave no peer address."""
    return client_key(host if host else "unknown", ipv6_prefix)


def _file_limits(eng: "_engine.Engine", path: Any) -> tuple:
    """The WebSocketLimits and engine limits of an attached file's region."""
    d = eng.limits()
    if d["window_ms"] != _WINDOW_MS:
        raise ValueError(
            f"{os.fsdecode(path)}: its region counts over a {d['window_ms']} ms window; "
            "WebSocketLimits are per minute (60000 ms). Use another path, or "
            "ratethrottle._engine.Engine(..., path=...) for other windows."
        )
    engine_limits = {k: d[k] for k in _ENGINE_TO_SEED}
    engine_limits["window_ms"] = _WINDOW_MS
    optional = ("bytes_per_minute", "client_messages_per_minute", "client_bytes_per_minute")
    seed = {s: (d[e] or None) if s in optional else d[e] for e, s in _ENGINE_TO_SEED.items()}
    return WebSocketLimits(**seed), engine_limits


def _check_connection_id(connection_id: Any) -> None:
    if type(connection_id) is not str:
        raise TypeError(f"connection_id must be a str, not {type(connection_id).__name__}")


def _connect_result(d: tuple) -> Dict[str, Any]:
    reason = d[1]
    if reason == _OK:
        return {"allowed": True, "reason": "ok"}
    r: Dict[str, Any] = {"allowed": d[0], "reason": _REASONS[reason]}
    if reason == _CONCURRENT:
        r["max_concurrent"] = d[3]
        r["current"] = d[5]
    elif reason == _CONNECTION_RATE:
        r["retry_after"] = _seconds(d[2])
        r["limit"] = d[3]
    return r


def _message_result(d: tuple) -> Dict[str, Any]:
    allowed, reason, retry_ms, limit, remaining, current = d
    r: Dict[str, Any] = {"allowed": allowed, "reason": _REASONS[reason]}
    if reason == _TOO_LARGE:
        r["max_size"] = limit
    elif reason in (_MESSAGE_RATE, _CLIENT_MESSAGE_RATE):
        r["retry_after"] = _seconds(retry_ms)
        r["limit"] = limit
    elif reason in (_BANDWIDTH, _CLIENT_BANDWIDTH):
        r["retry_after"] = _seconds(retry_ms)
        r["remaining_bytes"] = remaining
        r["limit"] = limit
    return r


# ============================================
# Message sizes for the adapters
# ============================================


def _text_size(message: Any) -> int:
    """Bytes a message weighs: UTF-8 bytes of a str, length of bytes-like
    data, UTF-8 bytes of the compact JSON of anything else."""
    if type(message) is str:
        return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))
    if isinstance(message, (bytes, bytearray)):
        return len(message)
    if isinstance(message, memoryview):
        return message.nbytes
    if isinstance(message, str):
        return len(message.encode("utf-8", "surrogatepass"))
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as e:
        # RecursionError: data nested deeper than the interpreter's limit.
        raise TypeError(
            "message must be str, bytes or JSON-serialisable data, "
            f"not {type(message).__name__}: {e}"
        ) from None
    return len(text.encode("utf-8", "surrogatepass"))


# ============================================
# FastAPI / Starlette
# ============================================


class FastAPIWebSocketLimiter:
    """FastAPI (Starlette) WebSocket integration: ``connect``,
    ``check_message``, ``disconnect``; the limiter is ``.limiter``."""

    def __init__(
        self,
        limits: Optional[WebSocketLimits] = None,
        get_client_id: Optional[Callable[[Any], Union[str, bytes]]] = None,
        storage: Any = None,
        *,
        ipv6_prefix: int = 64,
    ) -> None:
        client_key("", ipv6_prefix)  # a bad prefix raises here, not per connection
        self.limiter = WebSocketRateLimiter(limits, storage)
        self.ipv6_prefix = ipv6_prefix
        self.get_client_id = get_client_id or self._default_get_client_id
        # websocket -> connection id. Weak: when a handler ends without
        # disconnect() (an exception other than WebSocketDisconnect, a
        # cancelled task), the WebSocket is freed and its finalizer frees
        # the connection's slot. A websocket that cannot be weakly
        # referenced is kept in _pinned and needs disconnect().
        self.websocket_map: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        self._pinned: Dict[Any, str] = {}
        self._finalizers: Dict[str, Any] = {}

    def _default_get_client_id(self, websocket: Any) -> str:
        """The peer's host through ``client_key`` (IPv6 by its /64);
        ``"unknown"`` when the server gives no peer address."""
        client = websocket.client
        host = client.host if client else None
        return _peer_key(host, self.ipv6_prefix)

    async def connect(self, websocket: Any, client_id: Optional[Union[str, bytes]] = None) -> bool:
        """Decides and registers the connection atomically; accepts the
        WebSocket when allowed, closes it with 1008 when denied."""
        if client_id is None:
            client_id = self.get_client_id(websocket)
        connection_id = f"ws_{id(websocket)}"
        result = await self.limiter.connect(connection_id, client_id)
        if not result["allowed"]:
            await websocket.close(code=1008, reason="Rate limit exceeded")
            return False
        try:
            await websocket.accept()
        except BaseException:
            await self.limiter.unregister_connection(connection_id)
            raise
        try:
            self.websocket_map[websocket] = connection_id
        except TypeError:  # not weakly referenceable
            self._pinned[websocket] = connection_id
        else:
            if connection_id not in self._finalizers:
                self._finalizers[connection_id] = weakref.finalize(
                    websocket, self._released, connection_id
                )
        return True

    def _connection_id(self, websocket: Any) -> Optional[str]:
        try:
            return self.websocket_map.get(websocket)
        except TypeError:
            return self._pinned.get(websocket)

    def _released(self, connection_id: str) -> None:
        """The finalizer of a WebSocket freed while still connected."""
        self._finalizers.pop(connection_id, None)
        self.limiter._release(connection_id)

    async def check_message(self, websocket: Any, message: Any) -> bool:
        """Whether a message (str, bytes or JSON-able data) may pass."""
        connection_id = self._connection_id(websocket) or ""
        result = await self.limiter.check_message(connection_id, _text_size(message))
        return result["allowed"]

    async def disconnect(self, websocket: Any) -> None:
        """Frees the connection's slot. A WebSocket freed without it (its
        handler ended with another exception, or was cancelled) is
        released when it is garbage-collected."""
        try:
            connection_id = self.websocket_map.pop(websocket, None)
        except TypeError:
            connection_id = self._pinned.pop(websocket, None)
        if connection_id:
            fin = self._finalizers.pop(connection_id, None)
            if fin is not None:
                fin.detach()
            await self.limiter.unregister_connection(connection_id)


# ============================================
# Socket.IO
# ============================================


class SocketIOLimiter:
    """python-socketio integration: ``on_connect``, ``check_message``,
    ``on_disconnect``; the limiter is ``.limiter``."""

    def __init__(self, limits: Optional[WebSocketLimits] = None, storage: Any = None) -> None:
        self.limiter = WebSocketRateLimiter(limits, storage)
        self.sid_to_client: Dict[str, Any] = {}

    @staticmethod
    def client_id(environ: Dict[str, Any], ipv6_prefix: int = 64) -> Any:
        """The client id of a connect handler's ``environ`` for ``on_connect``:
        ``client_key(environ["REMOTE_ADDR"])`` (IPv6 by its /64), or
        ``"unknown"`` when the server gives no peer address."""
        host = environ.get("REMOTE_ADDR")
        return _peer_key(host, ipv6_prefix)

    async def on_connect(self, sid: str, client_id: Union[str, bytes]) -> bool:
        """Decides and registers the connection atomically."""
        result = await self.limiter.connect(sid, client_id)
        if not result["allowed"]:
            return False
        self.sid_to_client[sid] = client_id
        return True

    async def check_message(self, sid: str, data: Any) -> bool:
        """Whether an event's data may pass; it weighs its compact JSON's
        UTF-8 bytes (bytes: their length; data JSON cannot encode, such as
        binary attachments inside a dict: the UTF-8 bytes of ``str(data)``)."""
        try:
            size = _text_size(data)
        except TypeError:
            size = len(str(data).encode("utf-8", "surrogatepass"))
        result = await self.limiter.check_message(sid, size)
        return result["allowed"]

    async def on_disconnect(self, sid: str) -> None:
        await self.limiter.unregister_connection(sid)
        self.sid_to_client.pop(sid, None)


# ============================================
# Django Channels
# ============================================


class ChannelsRateLimiter:
    """Django Channels integration with the calls the seed's consumer uses."""

    def __init__(self, limits: Optional[WebSocketLimits] = None, storage: Any = None) -> None:
        self.limiter = WebSocketRateLimiter(limits, storage)

    @staticmethod
    def client_id(scope: Dict[str, Any], ipv6_prefix: int = 64) -> Any:
        """The client id of a consumer's ``scope`` for ``connect`` /
        ``check_connection``: ``client_key(scope["client"][0])`` (IPv6 by its
        /64), or ``"unknown"`` when the server gives no peer address."""
        client = scope.get("client")
        host = client[0] if client else None
        return _peer_key(host, ipv6_prefix)

    async def check_connection(self, client_id: Union[str, bytes]) -> bool:
        return await self.limiter.check_connection(client_id)

    async def register_connection(
        self, channel_name: str, client_id: Union[str, bytes], metadata: Optional[Dict] = None
    ) -> None:
        await self.limiter.register_connection(channel_name, client_id, metadata)

    async def connect(
        self, channel_name: str, client_id: Union[str, bytes], metadata: Optional[Dict] = None
    ) -> bool:
        """check_connection + register_connection in one atomic step."""
        return (await self.limiter.connect(channel_name, client_id, metadata))["allowed"]

    async def unregister_connection(self, channel_name: str) -> None:
        await self.limiter.unregister_connection(channel_name)

    async def check_message(self, channel_name: str, message: Any) -> bool:
        """Whether a message (str, bytes or JSON-able data) may pass."""
        result = await self.limiter.check_message(channel_name, _text_size(message))
        return result["allowed"]
