'use strict';
// clientKey (IPv6 peers keyed by their /64, as the Go binding's RemoteIPKey)
// and the ws / socket.io adapters' default client id, with fake requests
// and sockets carrying IPv6 addresses (no IPv6 loopback needed).

const test = require('node:test');
const assert = require('node:assert/strict');
const { EventEmitter } = require('node:events');
const { Limiter, clientKey } = require('..');
const rtws = require('../ws');
const rtio = require('../socketio');

test('clientKey: IPv4, mapped, full and compressed IPv6 (the Go binding\'s keys)', () => {
  const cases = [
    ['203.0.113.7', '203.0.113.7'],
    ['0.0.0.0', '0.0.0.0'],
    ['::ffff:198.51.100.1', '198.51.100.1'],
    ['::FFFF:c633:6401', '198.51.100.1'], // mapped in hex is still IPv4
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:0DB8:0001:0002:ffff:0000:0000:0001', '2001:db8:1:2::/64'], // full form, upper case
    ['2001:db8:1:2:ffff::1', '2001:db8:1:2::/64'],
    ['2001:db8::1', '2001:db8::/64'],
    ['2001:db8:0:1::', '2001:db8:0:1::/64'], // a single zero group is not compressed
    ['1:0:0:1::', '1:0:0:1::/64'], // the longest zero run is compressed
    ['2001:db8::1.2.3.4', '2001:db8::/64'], // embedded IPv4 in a non-mapped address
    ['::1', '::/64'],
    ['::', '::/64'],
    ['fe80::1%eth0', 'fe80::/64'],
    ['fe80::1:2:3:4%25', 'fe80::/64'],
  ];
  for (const [address, want] of cases) assert.equal(clientKey(address), want, address);
});

test('clientKey: one /64 gives one key, different /64s differ', () => {
  const a = clientKey('2001:db8:aaaa:1::1');
  assert.equal(clientKey('2001:db8:aaaa:1:ffff:ffff:ffff:ffff'), a);
  assert.equal(clientKey('2001:db8:aaaa:1:dead:beef::%wlan0'), a);
  assert.notEqual(clientKey('2001:db8:aaaa:2::1'), a);
  assert.notEqual(clientKey('2001:db8:aaab:1::1'), a);
  assert.notEqual(clientKey('203.0.113.7'), clientKey('203.0.113.8'));
});

test('clientKey: ipv6PrefixLength, and a bad one is a RangeError', () => {
  assert.equal(clientKey('2001:db8:abcd:12ff::1', { ipv6PrefixLength: 56 }), '2001:db8:abcd:1200::/56');
  assert.equal(clientKey('2001:db8:abcd:1234::1', { ipv6PrefixLength: 48 }), '2001:db8:abcd::/48');
  assert.equal(clientKey('2001:db8::1', { ipv6PrefixLength: 128 }), '2001:db8::1/128');
  assert.equal(clientKey('2001:db8::1', { ipv6PrefixLength: 0 }), '::/0');
  assert.equal(clientKey('203.0.113.7', { ipv6PrefixLength: 48 }), '203.0.113.7');
  for (const bad of [-1, 129, 64.5, NaN, '64', null]) {
    assert.throws(() => clientKey('::1', { ipv6PrefixLength: bad }), RangeError, String(bad));
  }
});

test('clientKey: garbage, empty and non-strings come back unchanged, never throw', () => {
  const odd = ['', 'garbage', 'unknown', '1.2.3', '010.1.1.1', '256.1.1.1', '1.2.3.4:80', '[::1]', '[::1]:80',
    '::ffff:1.2.3', '2001:db8::1::2', '1:2:3:4:5:6:7:8:9', 'fe80::1%', '%eth0', ' 1.2.3.4', '12345::', 'x'.repeat(10_000),
    '/run/app.sock', '2001:db8::1/64'];
  for (const s of odd) assert.equal(clientKey(s), s, s);
  for (const v of [undefined, null, 42, {}]) assert.equal(clientKey(v), v);
});

/** A fake upgrade request from `address` through ws's verifyClient. */
function wsUpgrade(verify, address) {
  const socket = new EventEmitter();
  socket.remoteAddress = address;
  const req = { socket, headers: {} };
  let answer;
  verify({ origin: '', secure: false, req }, (ok, code, message, headers) => {
    answer = { ok, code, headers };
  });
  return { req, socket, answer };
}

test('ws adapter: two addresses of one /64 count against one client; another /64 is another client', (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 2, maxClients: 64, maxConnections: 64 });
  t.after(() => limiter.close());
  const verify = rtws.verifyClient(limiter);
  const a = wsUpgrade(verify, '2001:db8:1:2::a');
  const b = wsUpgrade(verify, '2001:db8:1:2:ffff::b');
  assert.equal(a.answer.ok, true);
  assert.equal(b.answer.ok, true);
  assert.equal(limiter.clientConnections('2001:db8:1:2::/64'), 2);
  assert.equal(rtws.connectionOf(a.req).info().clientId.toString(), '2001:db8:1:2::/64');
  const c = wsUpgrade(verify, '2001:db8:1:2::c');
  assert.equal(c.answer.ok, false, 'a third address of the same /64 is the same client');
  assert.equal(c.answer.code, 429);
  assert.equal(c.answer.headers['X-RateLimit-Reason'], 'too_many_connections');
  assert.equal(wsUpgrade(verify, '2001:db8:1:3::c').answer.ok, true, 'the next /64 is another client');
  assert.equal(wsUpgrade(verify, '::ffff:203.0.113.7').answer.ok, true);
  assert.equal(limiter.clientConnections('203.0.113.7'), 1, 'mapped IPv4 is keyed as IPv4');
  a.socket.emit('close');
  assert.equal(limiter.clientConnections('2001:db8:1:2::/64'), 1);
  assert.equal(wsUpgrade(verify, '2001:db8:1:2::d').answer.ok, true);
});

test('ws adapter: ipv6PrefixLength and a custom clientId', (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  t.after(() => limiter.close());
  const per128 = rtws.verifyClient(limiter, { ipv6PrefixLength: 128 });
  assert.equal(wsUpgrade(per128, '2001:db8::1').answer.ok, true);
  assert.equal(wsUpgrade(per128, '2001:db8::2').answer.ok, true);
  assert.equal(limiter.clientConnections('2001:db8::1/128'), 1);
  const raw = rtws.verifyClient(limiter, { clientId: (req) => req.socket.remoteAddress });
  assert.equal(wsUpgrade(raw, '2001:db8::3').answer.ok, true);
  assert.equal(limiter.clientConnections('2001:db8::3'), 1, 'a custom clientId is used as it is');
  assert.throws(() => rtws.verifyClient(limiter, { ipv6PrefixLength: 200 }), RangeError);
});

/** A fake socket.io socket from `address` through the connection middleware. */
function ioConnect(mw, address) {
  const socket = new EventEmitter();
  socket.handshake = { address };
  socket.conn = new EventEmitter();
  socket.use = () => {};
  let error = null;
  mw(socket, (err) => {
    error = err || null;
  });
  return { socket, error };
}

test('socket.io adapter: two addresses of one /64 count against one client; another /64 is another client', (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 2, maxClients: 64, maxConnections: 64 });
  t.after(() => limiter.close());
  const mw = rtio.middleware(limiter);
  const a = ioConnect(mw, '2001:db8:5:6::1');
  assert.equal(a.error, null);
  assert.equal(ioConnect(mw, '2001:db8:5:6:aaaa:bbbb:cccc:dddd').error, null);
  assert.equal(limiter.clientConnections('2001:db8:5:6::/64'), 2);
  assert.equal(rtio.connectionOf(a.socket).info().clientId.toString(), '2001:db8:5:6::/64');
  const third = ioConnect(mw, '2001:db8:5:6::3');
  assert.equal(third.error.message, 'too_many_connections');
  assert.equal(ioConnect(mw, '2001:db8:5:7::1').error, null, 'the next /64 is another client');
  a.socket.emit('disconnect');
  assert.equal(limiter.clientConnections('2001:db8:5:6::/64'), 1);
  const wide = rtio.middleware(limiter, { ipv6PrefixLength: 48 });
  assert.equal(ioConnect(wide, '2001:db8:5:8::1').error, null);
  assert.equal(limiter.clientConnections('2001:db8:5::/48'), 1);
});
