'use strict';
// The default client id of the adapters: the peer's address, with IPv6
// aggregated to its /64 (one host usually owns a whole /64, so keying by
// the full address lets it rotate addresses past every per-client limit).
// Same rules and text as the Go binding's RemoteIPKey (bindings/go):
//   203.0.113.7                 -> 203.0.113.7
//   ::ffff:198.51.100.1         -> 198.51.100.1       (IPv4-mapped is IPv4)
//   2001:db8:1:2:3:4:5:6        -> 2001:db8:1:2::/64
//   fe80::1%eth0                -> fe80::/64          (zone dropped)
//   anything else               -> returned unchanged (never throws)

const { isIPv4, isIPv6 } = require('node:net');

/** 16 bytes of an IPv6 address that net.isIPv6 accepted (zone removed), or null. */
function parseIPv6(s) {
  let v4 = null;
  const lastColon = s.lastIndexOf(':');
  if (s.indexOf('.', lastColon) !== -1) {
    v4 = s.slice(lastColon + 1);
    if (!isIPv4(v4)) return null;
    s = `${s.slice(0, lastColon + 1)}0:0`; // two placeholder groups
  }
  const halves = s.split('::');
  if (halves.length > 2) return null;
  const groups = (h) => (h === '' ? [] : h.split(':'));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const words = [...head, ...new Array(halves.length === 2 ? fill : 0).fill('0'), ...tail];
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(words[i])) return null;
    const w = parseInt(words[i], 16);
    bytes[2 * i] = w >> 8;
    bytes[2 * i + 1] = w & 0xff;
  }
  if (v4 !== null) {
    const parts = v4.split('.');
    for (let i = 0; i < 4; i++) bytes[12 + i] = Number(parts[i]);
  }
  return bytes;
}

/** RFC 5952 text of 16 bytes (lower case, the first longest run of 2+ zero groups as ::), as Go's netip prints it. */
function formatIPv6(bytes) {
  const w = [];
  for (let i = 0; i < 8; i++) w.push((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a) => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(w);
  return `${hex(w.slice(0, bestStart))}::${hex(w.slice(bestStart + bestLen))}`;
}

function checkPrefix(n) {
  if (!Number.isInteger(n) || n < 0 || n > 128) {
    const e = new RangeError(`ipv6PrefixLength must be an integer from 0 to 128, got ${String(n)}`);
    e.code = 'ERR_OUT_OF_RANGE';
    throw e;
  }
  return n;
}

/**
 * The client id for a peer address: IPv4 as is, IPv4-mapped IPv6 as its
 * IPv4 address, other IPv6 as its network `<addr>/<ipv6PrefixLength>`
 * (default 64), zone dropped. Anything that is not an IP address (a Unix
 * socket path, '', undefined) is returned unchanged. Throws only for a bad
 * `ipv6PrefixLength` (a RangeError), never for a bad address.
 */
function clientKey(address, { ipv6PrefixLength = 64 } = {}) {
  const bits = checkPrefix(ipv6PrefixLength);
  if (typeof address !== 'string' || address.length === 0 || address.length > 100) return address;
  if (isIPv4(address)) return address;
  let s = address;
  const pct = s.indexOf('%');
  if (pct !== -1) {
    if (pct === s.length - 1) return address; // an empty zone is malformed (as in Go)
    s = s.slice(0, pct);
  }
  if (!isIPv6(s)) return address;
  const bytes = parseIPv6(s);
  if (bytes === null) return address;
  let mapped = bytes[10] === 0xff && bytes[11] === 0xff;
  for (let i = 0; i < 10 && mapped; i++) mapped = bytes[i] === 0;
  if (mapped) return `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    bytes[i] &= (0xff00 >> keep) & 0xff;
  }
  return `${formatIPv6(bytes)}/${bits}`;
}

module.exports = { clientKey };
