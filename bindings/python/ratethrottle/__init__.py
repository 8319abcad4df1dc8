"""ratethrottle: the WebSocket rate-limiting API of the original ``ratethrottle``
package, decided by the lock-free ratethrottle engine (Rust).

    from ratethrottle import WebSocketRateLimiter, WebSocketLimits

See README.md for the API, the deliberate differences from the original
package, and bad-input behaviour.
"""

from . import _engine
from .addresses import client_key
from .websocket import (
    ChannelsRateLimiter,
    ConnectionInfo,
    FastAPIWebSocketLimiter,
    InMemoryStorage,
    RedisStorage,
    SharedMemoryStorage,
    SocketIOLimiter,
    WebSocketLimits,
    WebSocketRateLimiter,
)

__version__ = "0.1.0"
ENGINE_VERSION = _engine.VERSION

__all__ = [
    "WebSocketLimits",
    "WebSocketRateLimiter",
    "ConnectionInfo",
    "FastAPIWebSocketLimiter",
    "SocketIOLimiter",
    "ChannelsRateLimiter",
    "RedisStorage",
    "InMemoryStorage",
    "SharedMemoryStorage",
    "ENGINE_VERSION",
    "client_key",
]
