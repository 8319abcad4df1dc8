"""client_key (IPv6 peers keyed by their /64, as the Go binding's
RemoteIPKey) and the adapters' client ids, with fake WebSockets, environs
and scopes carrying IPv6 addresses (no IPv6 loopback needed)."""

import pytest

from ratethrottle import (
    ChannelsRateLimiter,
    FastAPIWebSocketLimiter,
    SocketIOLimiter,
    WebSocketLimits,
    client_key,
)

# The Go binding's test cases (bindings/go/middleware_test.go) and more.
KEYS = [
    ("203.0.113.7", "203.0.113.7"),
    ("0.0.0.0", "0.0.0.0"),
    ("::ffff:198.51.100.1", "198.51.100.1"),
    ("::FFFF:c633:6401", "198.51.100.1"),  # mapped in hex is still IPv4
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:0DB8:0001:0002:ffff:0000:0000:0001", "2001:db8:1:2::/64"),  # full form, upper case
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8:0:1::", "2001:db8:0:1::/64"),  # a single zero group is not compressed
    ("1:0:0:1::", "1:0:0:1::/64"),  # the longest zero run is compressed
    ("2001:db8::1.2.3.4", "2001:db8::/64"),  # embedded IPv4, not mapped
    ("::1", "::/64"),
    ("::", "::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("fe80::1:2:3:4%25", "fe80::/64"),
]


@pytest.mark.parametrize("host,want", KEYS)
def test_client_key(host, want):
    assert client_key(host) == want


def test_one_64_one_key_other_64s_differ():
    a = client_key("2001:db8:aaaa:1::1")
    assert client_key("2001:db8:aaaa:1:ffff:ffff:ffff:ffff") == a
    assert client_key("2001:db8:aaaa:1:dead:beef::%wlan0") == a
    assert client_key("2001:db8:aaaa:2::1") != a
    assert client_key("2001:db8:aaab:1::1") != a
    assert client_key("203.0.113.7") != client_key("203.0.113.8")


def test_prefix_length():
    assert client_key("2001:db8:abcd:12ff::1", 56) == "2001:db8:abcd:1200::/56"
    assert client_key("2001:db8:abcd:1234::1", ipv6_prefix=48) == "2001:db8:abcd::/48"
    assert client_key("2001:db8::1", 128) == "2001:db8::1/128"
    assert client_key("2001:db8::1", 0) == "::/0"
    assert client_key("203.0.113.7", 48) == "203.0.113.7"
    for bad in (-1, 129):
        with pytest.raises(ValueError):
            client_key("::1", bad)
    for bad in (64.0, "64", None, True):
        with pytest.raises(TypeError):
            client_key("::1", bad)


ODD = [
    "", "garbage", "unknown", "1.2.3", "010.1.1.1", "256.1.1.1", "1.2.3.4:80", "[::1]",
    "[::1]:80", "::ffff:1.2.3", "2001:db8::1::2", "1:2:3:4:5:6:7:8:9", "fe80::1%", "%eth0",
    " 1.2.3.4", "12345::", "x" * 10_000, "/run/app.sock", "2001:db8::1/64",
]  # fmt: skip


@pytest.mark.parametrize("host", ODD)
def test_garbage_and_empty_unchanged(host):
    assert client_key(host) == host


@pytest.mark.parametrize("value", [None, b"::1", 42, ("::1", 80)])
def test_non_strings_unchanged(value):
    assert client_key(value) is value


class FakeClient:
    def __init__(self, host):
        self.host = host
        self.port = 40000


class FakeWebSocket:
    """What FastAPIWebSocketLimiter uses of a Starlette WebSocket."""

    def __init__(self, host):
        self.client = FakeClient(host) if host is not None else None
        self.accepted = False
        self.closed = None

    async def accept(self):
        self.accepted = True

    async def close(self, code=1000, reason=None):
        self.closed = code


LIMITS = WebSocketLimits(max_concurrent_connections=2, max_clients=64, max_connections=64)


async def test_fastapi_two_addresses_of_one_64_are_one_client():
    fa = FastAPIWebSocketLimiter(LIMITS)
    hosts = ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b", "2001:db8:1:2::c")
    a, b, c = (FakeWebSocket(h) for h in hosts)
    assert await fa.connect(a) and a.accepted
    assert await fa.connect(b) and b.accepted
    assert fa.limiter.get_client_connections("2001:db8:1:2::/64") == 2
    assert not await fa.connect(c), "a third address of the same /64 is the same client"
    assert c.closed == 1008 and not c.accepted
    other = FakeWebSocket("2001:db8:1:3::c")
    assert await fa.connect(other), "the next /64 is another client"
    mapped = FakeWebSocket("::ffff:203.0.113.7")
    assert await fa.connect(mapped)
    assert fa.limiter.get_client_connections("203.0.113.7") == 1
    await fa.disconnect(a)
    assert fa.limiter.get_client_connections("2001:db8:1:2::/64") == 1
    d = FakeWebSocket("2001:db8:1:2::d")
    assert await fa.connect(d)
    nobody = FakeWebSocket(None)
    assert await fa.connect(nobody)
    assert fa.limiter.get_client_connections("unknown") == 1


async def test_fastapi_prefix_and_own_get_client_id():
    fa = FastAPIWebSocketLimiter(LIMITS, ipv6_prefix=128)
    # Kept referenced: the adapter frees a WebSocket's slot when it is freed.
    sockets = [FakeWebSocket(h) for h in ("2001:db8::1", "2001:db8::2", "2001:db8::3")]
    for ws in sockets:
        assert await fa.connect(ws)
    assert fa.limiter.get_client_connections("2001:db8::1/128") == 1
    raw = FastAPIWebSocketLimiter(LIMITS, get_client_id=lambda ws: ws.client.host)
    sockets.append(FakeWebSocket("2001:db8::1"))
    assert await raw.connect(sockets[-1])
    assert raw.limiter.get_client_connections("2001:db8::1") == 1, "own get_client_id: as it is"
    with pytest.raises(ValueError):
        FastAPIWebSocketLimiter(LIMITS, ipv6_prefix=200)


async def test_socketio_and_channels_client_ids():
    sio = SocketIOLimiter(LIMITS)
    for sid, host in (("s1", "2001:db8:5:6::1"), ("s2", "2001:db8:5:6:aaaa:bbbb:cccc:dddd")):
        assert await sio.on_connect(sid, SocketIOLimiter.client_id({"REMOTE_ADDR": host}))
    assert not await sio.on_connect("s3", sio.client_id({"REMOTE_ADDR": "2001:db8:5:6::3"}))
    assert await sio.on_connect("s4", sio.client_id({"REMOTE_ADDR": "2001:db8:5:7::1"}))
    assert sio.limiter.get_client_connections("2001:db8:5:6::/64") == 2
    assert SocketIOLimiter.client_id({}) == "unknown"
    assert SocketIOLimiter.client_id({"REMOTE_ADDR": "2001:db8:5::1"}, 48) == "2001:db8:5::/48"

    ch = ChannelsRateLimiter(LIMITS)
    for name, host in (("c1", "2001:db8:9:9::1"), ("c2", "2001:db8:9:9::2")):
        assert await ch.connect(name, ChannelsRateLimiter.client_id({"client": [host, 40000]}))
    assert not await ch.connect("c3", ch.client_id({"client": ("2001:db8:9:9::3", 1)}))
    assert ch.limiter.get_client_connections("2001:db8:9:9::/64") == 2
    assert ChannelsRateLimiter.client_id({"client": None}) == "unknown"
    assert ChannelsRateLimiter.client_id({"client": ("::ffff:10.0.0.1", 1)}) == "10.0.0.1"
