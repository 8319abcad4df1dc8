'use strict';
// Unit tests of the Limiter and Connection classes: every reason, bad input,
// ids of any bytes, observation, violations, lifetimes. Time-dependent
// checks use the *_At calls with a fake clock (ms).

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { Limiter, Connection, presets, defaults, REASONS, byteSize, version, atomicsLockFree } = require('..');
const native = require('../lib/native.js');

const small = { maxClients: 1024, maxConnections: 1024 };
const lim = (o = {}) => new Limiter({ ...small, ...o });

test('defaults are the seed defaults and presets come from the engine', () => {
  assert.equal(defaults.windowMs, 60000);
  assert.equal(defaults.connectionsPerWindow, 60);
  assert.equal(defaults.maxConcurrentConnections, 10);
  assert.equal(defaults.messagesPerWindow, 1000);
  assert.equal(defaults.bytesPerWindow, 0);
  assert.equal(defaults.maxMessageSize, 65536);
  assert.equal(presets.strict.messagesPerWindow, 50);
  assert.equal(presets.moderate.maxMessageSize, 10240);
  assert.equal(presets.generous.maxConcurrentConnections, 20);
  assert.ok(Object.isFrozen(presets.strict));
  assert.match(version, /^\d+\.\d+\.\d+/);
  assert.equal(atomicsLockFree, true);
  const l = new Limiter();
  assert.deepEqual(l.limits(), defaults);
  l.close();
});

test('connect: allowed decision shape with a Connection', () => {
  const l = lim({ maxConcurrentConnections: 3 });
  const d = l.connectAt('10.0.0.1', 0);
  assert.equal(d.allowed, true);
  assert.equal(d.reason, 'ok');
  assert.equal(d.retryAfterMs, 0);
  assert.ok(d.connection instanceof Connection);
  assert.equal(typeof d.limit, 'number');
  assert.equal(typeof d.remaining, 'number');
  assert.equal(l.clientConnections('10.0.0.1'), 1);
  assert.equal(d.connection.close(), true);
  assert.equal(d.connection.close(), false, 'close is idempotent');
  assert.equal(l.clientConnections('10.0.0.1'), 0);
  l.close();
});

test('reason connection_rate_exceeded with an exact retry_after', () => {
  const l = lim({ connectionsPerWindow: 2, windowMs: 1000 });
  for (const t of [0, 10]) assert.equal(l.connectAt('c', t).connection.close(), true);
  const d = l.connectAt('c', 20);
  assert.equal(d.allowed, false);
  assert.equal(d.reason, 'connection_rate_exceeded');
  assert.equal(d.retryAfterMs, 1480); // as in the engine's docs
  assert.equal(d.connection, null);
  assert.equal(l.connectAt('c', 1500).allowed, true);
  l.close();
});

test('reason too_many_connections; the slot is freed on close', () => {
  const l = lim({ maxConcurrentConnections: 2, connectionsPerWindow: 0 });
  const a = l.connect('ip').connection;
  const b = l.connect('ip').connection;
  const d = l.connect('ip');
  assert.equal(d.reason, 'too_many_connections');
  assert.equal(d.retryAfterMs, 0);
  assert.equal(d.limit, 2);
  assert.equal(l.connect('other').allowed, true, 'other clients are untouched');
  a.close();
  assert.equal(l.connect('ip').allowed, true);
  b.close();
  l.close();
});

test('reason message_too_large never passes (retryAfterMs Infinity)', () => {
  const l = lim({ maxMessageSize: 10 });
  const c = l.connect('x').connection;
  assert.equal(c.checkMessage(10).allowed, true);
  const d = c.checkMessage('x'.repeat(11));
  assert.equal(d.allowed, false);
  assert.equal(d.reason, 'message_too_large');
  assert.equal(d.retryAfterMs, Infinity);
  assert.equal(d.limit, 10);
  l.close();
});

test('reason rate_limit_exceeded; denied messages are not counted', () => {
  const l = lim({ messagesPerWindow: 2, windowMs: 1000 });
  const c = l.connectAt('x', 0).connection;
  assert.equal(c.checkMessageAt(100, 10).remaining, 1);
  assert.equal(c.checkMessageAt(100, 10).remaining, 0);
  for (let i = 0; i < 5; i++) {
    const d = c.checkMessageAt(100, 10);
    assert.equal(d.reason, 'rate_limit_exceeded');
    assert.equal(d.retryAfterMs, 1490);
  }
  assert.equal(c.checkMessageAt(100, 1500).allowed, true, 'recovers as the engine says');
  l.close();
});

test('reason bandwidth_exceeded counts bytes', () => {
  const l = lim({ bytesPerWindow: 100, windowMs: 1000 });
  const c = l.connectAt('x', 0).connection;
  assert.equal(c.checkMessageAt(Buffer.alloc(60), 0).allowed, true);
  const d = c.checkMessageAt(new Uint8Array(60), 0);
  assert.equal(d.reason, 'bandwidth_exceeded');
  assert.equal(d.limit, 100);
  assert.equal(c.checkMessageAt(new ArrayBuffer(40), 0).allowed, true);
  l.close();
});

test('client_rate_limit_exceeded and client_bandwidth_exceeded span connections and keys', () => {
  const l = lim({ clientMessagesPerWindow: 3, clientBytesPerWindow: 1000 });
  const a = l.connectAt('u', 0).connection;
  const b = l.connectAt('u', 0).connection;
  assert.equal(a.checkMessageAt(1, 0).allowed, true);
  assert.equal(b.checkMessageAt(1, 0).allowed, true);
  assert.equal(a.checkMessageAt(1, 0).allowed, true);
  assert.equal(b.checkMessageAt(1, 0).reason, 'client_rate_limit_exceeded');
  const d = l.checkKeyAt('room:lobby', 999, 0);
  assert.equal(d.allowed, true);
  assert.equal(l.checkKeyAt('room:lobby', 2, 0).reason, 'client_bandwidth_exceeded');
  assert.equal(l.checkKeyAt('room:other', 2, 0).allowed, true);
  for (let i = 0; i < 2; i++) l.checkKeyAt('room:x', 1, 0);
  l.checkKeyAt('room:x', 1, 0);
  assert.equal(l.checkKeyAt('room:x', 1, 0).reason, 'client_rate_limit_exceeded');
  l.close();
});

test('reason table_full when the table is full, and failOpen allows untracked', () => {
  for (const failOpen of [false, true]) {
    const l = new Limiter({ maxClients: 1, maxConnections: 64, failOpen });
    const seen = new Set();
    const held = [];
    for (let i = 0; i < 16; i++) {
      const d = l.connect(`client-${i}`);
      seen.add(d.reason);
      if (d.connection) held.push(d.connection);
    }
    if (failOpen) {
      assert.ok(l.stats().untrackedAllowed > 0);
      assert.equal(held.length, 16, 'fail-open allows every connect');
    } else {
      assert.ok(seen.has('table_full'), `saw ${[...seen]}`);
      assert.ok(l.stats().denied.table_full > 0);
    }
    for (const c of held) c.close();
    l.close();
  }
});

test('reason connection_not_found for a stale or forged handle (native layer)', () => {
  // The JS API cannot produce one (a closed Connection throws), so the
  // translation is checked at the native boundary with forged handles.
  const h = native.create({ ...small });
  const check = (lo, hi, size) => {
    h.scratch[8] = lo;
    h.scratch[9] = hi;
    h.scratch[10] = size;
    h.checkMessage();
  };
  for (const [lo, hi] of [[0, 0], [12345, 0], [1, 77], [-1, 2 ** 40]]) {
    check(lo, hi, 1);
    assert.equal(REASONS[h.scratch[0] & 255], 'connection_not_found');
    assert.equal(h.scratch[0] & 256, 0, 'denied');
  }
  h.connect('a');
  const [lo, hi] = [h.scratch[5], h.scratch[6]];
  assert.equal(h.disconnect(lo, hi), true);
  check(lo, hi, 1);
  assert.equal(REASONS[h.scratch[0] & 255], 'connection_not_found', 'a closed handle is stale');
  assert.equal(h.disconnect(lo, hi), false);
  // The boundary checks sizes again, whatever index.js let through.
  for (const bad of [-1, 0.5, NaN, 2 ** 53]) assert.throws(() => check(1, 0, bad), RangeError);
  h.close();
});

test('every engine reason string is known to the typings', () => {
  assert.deepEqual(REASONS, [
    'ok',
    'connection_rate_exceeded',
    'too_many_connections',
    'message_too_large',
    'rate_limit_exceeded',
    'bandwidth_exceeded',
    'client_rate_limit_exceeded',
    'client_bandwidth_exceeded',
    'table_full',
    'connection_not_found',
    'invalid_argument',
  ]);
});

test('dry run: allowed, with the would-be reason, counted', () => {
  const l = lim({ messagesPerWindow: 1, dryRun: true });
  const c = l.connect('x').connection;
  assert.equal(c.checkMessage(1).allowed, true);
  const d = c.checkMessage(1);
  assert.equal(d.allowed, true);
  assert.equal(d.reason, 'rate_limit_exceeded');
  assert.equal(l.stats().dryRunDenied, 1);
  l.close();
});

test('message sizes: numbers, strings (UTF-8), binary data of every kind', () => {
  assert.equal(byteSize(0), 0);
  assert.equal(byteSize(2 ** 53 - 1), 2 ** 53 - 1);
  assert.equal(byteSize(''), 0);
  assert.equal(byteSize('héllo'), 6);
  assert.equal(byteSize('€'), 3);
  assert.equal(byteSize('😀'), 4);
  assert.equal(byteSize('\uD800'), 3, 'a lone surrogate is sent as U+FFFD');
  assert.equal(byteSize('5'), 1, 'a string is text, never parsed as a number');
  assert.equal(byteSize(Buffer.alloc(7)), 7);
  assert.equal(byteSize(new ArrayBuffer(9)), 9);
  assert.equal(byteSize(new SharedArrayBuffer(3)), 3);
  assert.equal(byteSize(new Float64Array(3)), 24);
  assert.equal(byteSize(new Uint16Array(new ArrayBuffer(16), 4, 2)), 4);
  assert.equal(byteSize(new DataView(new ArrayBuffer(10), 2)), 8);
  assert.equal(byteSize(new Uint8Array(0)), 0);
  // The engine sees the same sizes.
  const l = lim({ bytesPerWindow: 10, windowMs: 1000 });
  const c = l.connectAt('x', 0).connection;
  assert.equal(c.checkMessageAt('€€€', 0).allowed, true);
  assert.equal(c.checkMessageAt('ab', 0).reason, 'bandwidth_exceeded', '9 + 2 > 10');
  assert.equal(c.checkMessageAt('a', 0).allowed, true);
  l.close();
});

test('bad sizes: RangeError for out-of-range numbers, TypeError for wrong types', () => {
  const l = lim();
  const c = l.connect('x').connection;
  for (const bad of [-1, -0.5, NaN, Infinity, -Infinity, 1.5, 2 ** 53, 2 ** 64]) {
    assert.throws(() => c.checkMessage(bad), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, String(bad));
    assert.throws(() => c.checkMessageAt(bad, 0), RangeError);
    assert.throws(() => l.checkKey('k', bad), RangeError);
  }
  for (const bad of [5n, true, null, undefined, {}, [], Symbol('s'), () => 1, new Date()]) {
    assert.throws(() => c.checkMessage(bad), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, String(bad?.toString?.()));
    assert.throws(() => l.checkKey('k', bad), TypeError);
  }
  for (const bad of [-1, 1.5, NaN]) assert.throws(() => c.checkMessageAt(1, bad), RangeError);
  // Nothing was counted by the refused calls.
  assert.equal(c.info().messageCount, 0);
  assert.equal(l.stats().messagesAllowed, 0);
  l.close();
});

test('a detached ArrayBuffer is a TypeError; an empty one is 0 bytes', () => {
  const l = lim();
  const c = l.connect('x').connection;
  const ab = new ArrayBuffer(8);
  const view = new Uint8Array(ab);
  structuredClone(ab, { transfer: [ab] });
  assert.throws(() => c.checkMessage(ab), TypeError);
  assert.throws(() => c.checkMessage(view), TypeError);
  assert.throws(() => l.connect(view), TypeError);
  assert.equal(c.checkMessage(new ArrayBuffer(0)).allowed, true);
  l.close();
});

test('client ids: any bytes, any length, never truncated', () => {
  const l = lim({ maxConcurrentConnections: 1, connectionsPerWindow: 0 });
  const ids = [
    '',
    'a\0b',
    'a\0c',
    'x'.repeat(10_000) + '1',
    'x'.repeat(10_000) + '2',
    Buffer.from([0xff, 0xfe]),
    Buffer.from([0xff, 0xfd]),
    Buffer.from('y'.repeat(300) + 'A'),
    new Uint8Array([1, 2, 3]),
  ];
  const held = ids.map((id) => {
    const d = l.connect(id);
    assert.equal(d.allowed, true, `first connect of ${String(id).slice(0, 20)}`);
    return d.connection;
  });
  // Each id is its own client: a second connect of each is over its limit of 1.
  for (const id of ids) assert.equal(l.connect(id).reason, 'too_many_connections');
  // The same bytes as a string or a Buffer are the same client.
  assert.equal(l.connect(Buffer.from('a\0b')).reason, 'too_many_connections');
  assert.equal(l.connect('y'.repeat(300) + 'A').reason, 'too_many_connections');
  assert.equal(l.connect(new Uint8Array(0)).reason, 'too_many_connections', 'empty Uint8Array = empty string');
  assert.equal(held[3].info().clientIdLength, 10_001);
  assert.equal(held[3].info().clientId.length, 40, 'the engine keeps the first 40 bytes for reports');
  for (const c of held) c.close();
  for (const bad of [1, null, undefined, {}, 5n, new Uint16Array(2), new ArrayBuffer(2)]) {
    assert.throws(() => l.connect(bad), TypeError);
    assert.throws(() => l.checkKey(bad, 1), TypeError);
    assert.throws(() => l.clientConnections(bad), TypeError);
  }
  l.close();
});

test('a lone surrogate collides with U+FFFD (documented: ids are UTF-8)', () => {
  const l = lim({ maxConcurrentConnections: 1 });
  assert.equal(l.connect('\uD800').allowed, true);
  assert.equal(l.connect('\uFFFD').reason, 'too_many_connections');
  assert.equal(l.connect(Buffer.from([0xed, 0xa0, 0x80])).allowed, true, 'raw bytes keep them apart');
  l.close();
});

test('options: unknown names, wrong types and engine ranges are refused clearly', () => {
  assert.throws(() => new Limiter({ messagesPerMinute: 5 }), { name: 'TypeError', message: /unknown option 'messagesPerMinute'/ });
  assert.throws(() => new Limiter({ windowMs: '1000' }), { name: 'TypeError', message: /windowMs must be a number/ });
  assert.throws(() => new Limiter({ dryRun: 1 }), { name: 'TypeError', message: /dryRun must be a boolean/ });
  assert.throws(() => new Limiter({ windowMs: -1 }), { name: 'RangeError', message: /windowMs/ });
  assert.throws(() => new Limiter({ windowMs: 1.5 }), RangeError);
  assert.throws(() => new Limiter({ windowMs: 0 }), { name: 'RangeError', message: /option windowMs: 0 is out of range 1\.\./ });
  assert.throws(() => new Limiter({ messagesPerWindow: 2 ** 20 }), { name: 'RangeError', message: /messagesPerWindow.*262143/ });
  assert.throws(() => new Limiter({ bytesPerWindow: 2 ** 40 }), { name: 'RangeError', message: /bytesPerWindow/ });
  assert.throws(() => new Limiter(null), TypeError);
  assert.throws(() => new Limiter({ sharedPath: 5 }), TypeError);
  assert.throws(() => new Limiter({ violationPollMs: -1 }), RangeError);
});

test('updateLimits changes the given limits only', () => {
  const l = lim({ messagesPerWindow: 1 });
  const c = l.connect('x').connection;
  assert.equal(c.checkMessage(1).allowed, true);
  assert.equal(c.checkMessage(1).allowed, false);
  l.updateLimits({ messagesPerWindow: 0 });
  assert.equal(c.checkMessage(1).allowed, true);
  assert.equal(l.limits().maxClients, 1024);
  assert.throws(() => l.updateLimits({ messagesPerWindow: -1 }), RangeError);
  assert.throws(() => l.updateLimits({ sharedPath: 'x' }), TypeError);
  l.close();
});

test('stats, connectionInfo, clientConnections and prometheus', () => {
  const l = lim({ messagesPerWindow: 2 });
  const c = l.connectAt('10.1.2.3', 5).connection;
  c.checkMessageAt('hello', 7);
  c.checkMessageAt(Buffer.alloc(10), 8);
  c.checkMessageAt(1, 9);
  const s = l.stats();
  assert.equal(s.activeConnections, 1);
  assert.equal(s.uniqueClients, 1);
  assert.equal(s.totalMessages, 2);
  assert.equal(s.totalBytes, 15);
  assert.equal(s.denied.rate_limit_exceeded, 1);
  assert.equal(s.limits.messagesPerWindow, 2);
  const info = l.connectionInfo(c);
  assert.equal(info.clientId.toString(), '10.1.2.3');
  assert.equal(info.connectedAtMs, 5);
  assert.equal(info.messageCount, 2);
  assert.equal(info.byteCount, 15);
  assert.equal(l.clientConnections('10.1.2.3'), 1);
  assert.equal(l.clientConnections('nobody'), 0);
  assert.match(l.prometheus(), /ratethrottle_denied_total\{reason="rate_limit_exceeded"\} 1/);
  assert.match(c.id, /^\d+$/);
  c.close();
  assert.equal(c.info(), null);
  const other = lim();
  const oc = other.connect('a').connection;
  assert.throws(() => l.connectionInfo(oc), TypeError);
  assert.throws(() => l.connectionInfo({}), TypeError);
  other.close();
  l.close();
});

test("'violation' events carry the engine's record", async () => {
  const l = lim({ maxMessageSize: 10 });
  const events = [];
  l.on('violation', (v) => events.push(v));
  const c = l.connect(Buffer.from('10.9.8.7')).connection;
  c.checkMessage(100);
  l.connect('x'.repeat(50));
  assert.equal(events.length, 0, 'emitted after the call, not inside it');
  await new Promise(setImmediate);
  assert.equal(events.length, 1);
  const v = events[0];
  assert.equal(v.type, 'message_size');
  assert.equal(v.reason, 'message_too_large');
  assert.equal(v.clientId.toString(), '10.9.8.7');
  assert.equal(v.size, 100);
  assert.equal(v.limit, 10);
  assert.equal(v.retryAfterMs, Infinity);
  assert.equal(v.connectionId, c.id);
  l.close();
});

test('use after close: Error with code ERR_RATETHROTTLE_CLOSED; close is idempotent', () => {
  const l = lim();
  const c = l.connect('x').connection;
  const c2 = l.connect('x').connection;
  c.close();
  assert.throws(() => c.checkMessage(1), { code: 'ERR_RATETHROTTLE_CLOSED', message: /connection is closed/ });
  assert.throws(() => c.checkMessageAt(1, 0), { code: 'ERR_RATETHROTTLE_CLOSED' });
  l.close();
  l.close();
  l.destroy();
  assert.equal(l.closed, true);
  for (const f of [() => l.connect('x'), () => l.stats(), () => l.checkKey('k', 1), () => l.prometheus(), () => l.clientConnections('x'), () => l.limits()]) {
    assert.throws(f, { code: 'ERR_RATETHROTTLE_CLOSED', message: /limiter is closed/ });
  }
  assert.throws(() => c2.checkMessage(1), { code: 'ERR_RATETHROTTLE_CLOSED' }, 'a live connection of a closed limiter');
  assert.equal(c2.close(), false, 'closing it is a harmless no-op');
  assert.throws(() => new Connection(), TypeError);
});

function child(file, args = [], extra = []) {
  return spawnSync(process.execPath, [...extra, path.join(__dirname, 'fixtures', file), ...args], {
    encoding: 'utf8',
    timeout: 60_000,
  });
}

test('worker_threads, GC finalizers and process exit with live handles (N5)', () => {
  const r = child('lifetimes.js', [], ['--expose-gc']);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /lifetimes: ok/);
});

test('bad clock and poll values: TypeError for non-numbers, RangeError out of range; messages print JS numbers', () => {
  const l = lim();
  const c = l.connect('x').connection;
  for (const f of [(v) => l.connectAt('x', v), (v) => l.checkKeyAt('k', 1, v), (v) => c.checkMessageAt(1, v)]) {
    assert.throws(() => f('5'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: /nowMs must be a number; got a string/ });
    assert.throws(() => f(-1), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
  }
  for (const v of ['5', null, 5n]) {
    assert.throws(() => lim({ violationPollMs: v }), { name: 'TypeError', message: /violationPollMs must be a number/ }, String(v));
  }
  for (const v of [-1, 1.5, NaN, 2 ** 31, 2 ** 53 - 1]) {
    assert.throws(() => lim({ violationPollMs: v }), { name: 'RangeError', message: /violationPollMs must be an integer from 0/ }, String(v));
  }
  lim({ violationPollMs: 2 ** 31 - 1 }).close();
  lim({ violationPollMs: 0 }).close();
  assert.throws(() => lim({ windowMs: Infinity }), { name: 'RangeError', message: /got Infinity$/ });
  assert.throws(() => lim({ windowMs: NaN }), { name: 'RangeError', message: /got NaN$/ });
  assert.throws(() => l.connect(), { name: 'TypeError', message: /clientId must be .*; got undefined$/ });
  l.close();
});

test('options: only own properties count (an inherited windowMs is not an option)', () => {
  const l = new Limiter(Object.assign(Object.create({ windowMs: 5 }), small));
  assert.equal(l.limits().windowMs, 60000);
  l.updateLimits(Object.assign(Object.create({ messagesPerWindow: 1 }), { windowMs: 1000 }));
  assert.equal(l.limits().windowMs, 1000);
  assert.equal(l.limits().messagesPerWindow, 1000);
  l.close();
  // Not even from a polluted Object.prototype (the copy handed to the
  // native side used to inherit from it).
  Object.prototype.messagesPerWindow = 1;
  try {
    const p = new Limiter(small);
    assert.equal(p.limits().messagesPerWindow, 1000);
    p.updateLimits({ windowMs: 1000 });
    assert.equal(p.limits().messagesPerWindow, 1000);
    p.close();
  } finally {
    delete Object.prototype.messagesPerWindow;
  }
});

test('updateLimits: capacities cannot change (RangeError naming the JS options); the same values pass', () => {
  const l = lim();
  for (const o of [{ maxConnections: 10 }, { maxClients: 2048 }]) {
    assert.throws(() => l.updateLimits(o), { name: 'RangeError', message: /maxClients and maxConnections .*cannot change at run time/ });
  }
  l.updateLimits({ maxClients: 1024, maxConnections: 1024, messagesPerWindow: 7 });
  assert.equal(l.limits().messagesPerWindow, 7);
  l.close();
});

test('ids and data from another realm (vm) and DataViews out of their buffer', () => {
  const vm = require('node:vm');
  const l = lim({ maxConcurrentConnections: 1 });
  const foreign = vm.runInNewContext('new Uint8Array([1, 2, 0, 3])');
  assert.equal(l.connect(foreign).allowed, true);
  assert.equal(l.connect(Buffer.from([1, 2, 0, 3])).reason, 'too_many_connections', 'the same bytes, the same client');
  const c = l.connect('dv').connection;
  const ab = new ArrayBuffer(8);
  const dv = new DataView(ab, 2, 4);
  assert.equal(c.checkMessage(dv).allowed, true);
  structuredClone(ab, { transfer: [ab] }); // detaches ab
  assert.throws(() => c.checkMessage(dv), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: /DataView out of its ArrayBuffer/ });
  const rab = new ArrayBuffer(8, { maxByteLength: 16 });
  const rdv = new DataView(rab, 4, 4);
  rab.resize(2);
  assert.throws(() => c.checkMessage(rdv), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  l.close();
});

test('close(): a throwing violation listener neither keeps the limiter open nor costs the other records', () => {
  const l = lim({ maxMessageSize: 10 });
  const seen = [];
  l.on('violation', (v) => {
    seen.push(v.size);
    throw new Error('listener boom');
  });
  const c = l.connect('x').connection;
  c.checkMessage(100);
  c.checkMessage(200);
  assert.throws(() => l.close(), /listener boom/);
  assert.equal(l.closed, true);
  assert.deepEqual(seen, [100, 200], 'both records reached the listener');
  assert.throws(() => l.stats(), { code: 'ERR_RATETHROTTLE_CLOSED' });
});

test('every export is also an ESM named export (import { x } from "ratethrottle")', async () => {
  for (const file of ['..', '../ws', '../socketio']) {
    const cjs = require(file);
    const esm = await import(require.resolve(file));
    for (const k of Object.keys(cjs)) assert.equal(esm[k], cjs[k], `${file}: ${k}`);
  }
});
