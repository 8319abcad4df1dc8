"""Client ids from peer addresses: IPv6 peers are keyed by their /64.

An IPv6 host usually controls a whole /64 (2**64 addresses), so keying by
the full address would let one client rotate addresses and escape every
per-client limit. The rules and the text are the Go binding's
(``RemoteIPKey`` in bindings/go), so every binding keys a peer the same way.
"""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

__all__ = ["client_key"]

T = TypeVar("T")


def _check_prefix(ipv6_prefix: Any) -> int:
    if type(ipv6_prefix) is not int:
        raise TypeError(f"ipv6_prefix must be an int, not {type(ipv6_prefix).__name__}")
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be from 0 to 128, got {ipv6_prefix}")
    return ipv6_prefix


def client_key(host: T, ipv6_prefix: int = 64) -> T:
    """The client id for a peer address (``host``, without a port):

    - IPv4 as is: ``"203.0.113.7"``
    - IPv4-mapped IPv6 as its IPv4 address: ``"::ffff:198.51.100.1"`` -> ``"198.51.100.1"``
    - other IPv6 as its network, canonical text (RFC 5952) and prefix:
      ``"2001:db8:1:2:3:4:5:6"`` -> ``"2001:db8:1:2::/64"``; a zone
      (``"fe80::1%eth0"``) is dropped
    - anything else (``""``, ``"unknown"``, a Unix socket path, ``None``,
      bytes) is returned unchanged: it never raises for an address.

    ``ipv6_prefix`` (0..128, default 64) is the prefix IPv6 peers are
    aggregated to; a bad one raises ``TypeError`` / ``ValueError``.
    """
    bits = _check_prefix(ipv6_prefix)
    if type(host) is not str or not host or len(host) > 100:
        return host
    text = host
    if "%" in text:
        text, _, zone = text.partition("%")
        if not zone:
            return host  # an empty zone is malformed (as in Go)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return host
    if ip.version == 4:
        # ipaddress accepts only dotted quads for str input; keep the text
        # as parsed (canonical) so equal addresses give equal keys
        return str(ip)
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((int(ip), bits), strict=False))
