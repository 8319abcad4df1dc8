'use strict';
// The socket.io adapter against a real socket.io server and clients on loopback.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Server } = require('socket.io');
const { WebSocket } = require('ws');
const { io: connectClient, Manager } = require('socket.io-client');
const { Limiter } = require('..');
const rtio = require('../socketio');
const { until, next, httpServer, childClient } = require('./helpers.js');

async function chatServer(limiter, { before, serverOptions } = {}) {
  const h = await httpServer();
  const io = new Server(h.server, serverOptions);
  if (before) io.use(before);
  io.use(rtio.middleware(limiter));
  const app = { received: [] };
  io.on('connection', (socket) => {
    socket.on('chat', (msg) => {
      app.received.push(msg);
      socket.emit('chat', msg);
    });
  });
  const clients = [];
  const client = () => {
    const c = connectClient(`http://127.0.0.1:${h.port}`, { transports: ['websocket'], reconnection: false, forceNew: true });
    clients.push(c);
    return c;
  };
  const close = async () => {
    for (const c of clients) c.close();
    await new Promise((r) => io.close(() => r()));
    await h.close();
  };
  return { io, app, client, close, url: `http://127.0.0.1:${h.port}` };
}

test('socket.io: over-limit connections get connect_error with reason and retry_after; disconnect frees the slot', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const a = srv.client();
  await next(a, 'connect');
  const b = srv.client();
  const [err] = await next(b, 'connect_error');
  assert.equal(err.message, 'too_many_connections');
  assert.deepEqual(err.data, { reason: 'too_many_connections', retry_after: 0, retry_after_ms: 0, limit: 1 });
  assert.equal(limiter.clientConnections('127.0.0.1'), 1);
  a.disconnect();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'slot freed on disconnect');
  const c = srv.client();
  await next(c, 'connect');
  assert.equal(limiter.clientConnections('127.0.0.1'), 1);
});

test('socket.io: flood packets are dropped and the client gets rate_limited; honest client untouched', async (t) => {
  const limiter = new Limiter({ messagesPerWindow: 3, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const honest = srv.client();
  const flood = srv.client();
  await Promise.all([next(honest, 'connect'), next(flood, 'connect')]);
  const limited = [];
  flood.on('rate_limited', (e) => limited.push(e));
  const honestEchoes = [];
  honest.on('chat', (m) => honestEchoes.push(m));
  for (let i = 0; i < 10; i++) flood.emit('chat', `spam ${i}`);
  honest.emit('chat', 'hello');
  await until(() => limited.length === 7 && honestEchoes.length === 1, 'seven rate_limited events and the honest echo');
  for (const e of limited) {
    assert.equal(e.reason, 'rate_limit_exceeded');
    assert.equal(e.event, 'chat');
    assert.ok(e.retry_after > 0);
    assert.equal(e.limit, 3);
  }
  assert.deepEqual(srv.app.received.filter((m) => m.startsWith('spam')), ['spam 0', 'spam 1', 'spam 2']);
  assert.ok(srv.app.received.includes('hello'));
});

test('socket.io: oversize packets are dropped with message_too_large', async (t) => {
  const limiter = new Limiter({ maxMessageSize: 64, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const c = srv.client();
  await next(c, 'connect');
  c.emit('chat', 'x'.repeat(100));
  const [e] = await next(c, 'rate_limited');
  assert.equal(e.reason, 'message_too_large');
  assert.equal(e.retry_after, null, 'never passes');
  c.emit('chat', 'small');
  await next(c, 'chat');
  assert.deepEqual(srv.app.received, ['small']);
});

test('socket.io: a connection rejected by an earlier middleware takes no lease (W6)', async (t) => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter, {
    before: (socket, nextFn) => (socket.handshake.auth.token === 'ok' ? nextFn() : nextFn(new Error('unauthorized'))),
  });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  for (let i = 0; i < 5; i++) {
    const c = srv.client();
    const [err] = await next(c, 'connect_error');
    assert.equal(err.message, 'unauthorized');
    c.close();
  }
  assert.equal(limiter.stats().connectionsAllowed, 0);
  assert.equal(limiter.clientConnections('127.0.0.1'), 0);
});

test('socket.io: packet sizes count strings, binary and nested values', () => {
  assert.equal(rtio.packetSize(['héllo']), 6);
  assert.equal(rtio.packetSize([Buffer.alloc(10), new Uint8Array(5)]), 15);
  assert.equal(rtio.packetSize([{ ab: 'cd', n: 12 }]), 2 + 2 + 1 + 2);
  assert.equal(rtio.packetSize([[1, 2], null, () => {}]), 1 + 1 + 4 + 0);
});

// ---- W7: a vanished client. engine.io's own heartbeat (the server pings every
// pingInterval; no pong within pingTimeout closes the transport) frees the
// slot through the middleware's 'disconnect' release: no second mechanism. ----

// Small heartbeat for the tests (defaults: pingInterval 25 s, pingTimeout 20 s).
const heartbeat = { pingInterval: 300, pingTimeout: 600 };

for (const [how, signal] of [
  ['frozen (SIGSTOP: connected, answering no ping) frees its slot after the server\'s ping timeout', 'SIGSTOP'],
  ['killed (SIGKILL) frees its slot when its transport closes', 'SIGKILL'],
]) {
  test(`socket.io W7: a client process ${how}`, async (t) => {
    const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
    const srv = await chatServer(limiter, { serverOptions: heartbeat });
    const c = await childClient('socketio', srv.url);
    t.after(async () => {
      c.kill();
      await srv.close();
      limiter.close();
    });
    await until(() => limiter.clientConnections('127.0.0.1') === 1, 'the child is connected');
    const [server] = srv.io.sockets.sockets.values();
    const disconnected = next(server, 'disconnect');
    c.child.kill(signal);
    const [reason] = await disconnected;
    if (signal === 'SIGSTOP') {
      assert.equal(reason, 'ping timeout', 'engine.io\'s heartbeat ended it');
      assert.equal(c.child.exitCode, null, 'the client process is still there, frozen');
    } else {
      assert.equal(reason, 'transport close');
      assert.equal((await c.exited).signal, 'SIGKILL');
    }
    await until(() => limiter.clientConnections('127.0.0.1') === 0, 'the vanished client\'s slot freed');
    const again = srv.client();
    await next(again, 'connect');
    assert.equal(limiter.clientConnections('127.0.0.1'), 1, 'the same client gets in again (max concurrency 1)');
  });
}

test('socket.io: failOpen with the table full admits an untracked socket; its packets pass unchecked', async (t) => {
  const limiter = new Limiter({ maxConnections: 1, maxClients: 64, failOpen: true, messagesPerWindow: 2, windowMs: 3_600_000 });
  const srv = await chatServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const tracked = srv.client();
  await next(tracked, 'connect');
  const untracked = srv.client();
  await next(untracked, 'connect');
  assert.equal(limiter.stats().untrackedAllowed, 1);
  let echoes = 0;
  untracked.on('chat', () => echoes++);
  for (let i = 0; i < 5; i++) untracked.emit('chat', `m${i}`);
  await until(() => echoes === 5, 'every packet of the untracked socket echoed');
  untracked.disconnect();
  tracked.disconnect();
  await until(() => limiter.stats().activeConnections === 0, 'the tracked lease released');
});

test('socket.io: a socket whose transport closed during earlier middlewares takes no lease', () => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  const mw = rtio.middleware(limiter);
  for (const readyState of ['closing', 'closed']) {
    const socket = { conn: { readyState }, handshake: { address: '127.0.0.1' } };
    let err;
    mw(socket, (e) => (err = e));
    assert.match(err.message, /transport closed/);
  }
  assert.equal(limiter.stats().connectionsAllowed, 0);
  limiter.close();
});

test('socket.io: a namespace joined and left again and again on one transport leaves no listener behind', async (t) => {
  // One engine.io connection multiplexes the namespaces of a Manager: each
  // join of '/b' runs the middleware again on the same transport.
  const limiter = new Limiter({ maxConcurrentConnections: 2, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  srv.io.of('/b').use(rtio.middleware(limiter));
  const manager = new Manager(srv.url, { transports: ['websocket'], reconnection: false });
  const warnings = [];
  const onWarning = (w) => warnings.push(w.name);
  process.on('warning', onWarning);
  t.after(async () => {
    process.off('warning', onWarning);
    manager.engine?.close();
    await srv.close();
    limiter.close();
  });
  const a = manager.socket('/');
  await next(a, 'connect');
  const [server] = srv.io.of('/').sockets.values();
  const transport = server.conn;
  const baseline = [transport.listenerCount('close'), transport.listenerCount('drain')];
  const b = manager.socket('/b');
  for (let i = 0; i < 15; i++) {
    if (i > 0) b.connect();
    await next(b, 'connect');
    assert.equal(limiter.clientConnections('127.0.0.1'), 2);
    b.disconnect();
    await until(() => limiter.clientConnections('127.0.0.1') === 1, '/b released');
  }
  assert.deepEqual(
    [transport.listenerCount('close'), transport.listenerCount('drain')],
    baseline,
    'no listener of a left namespace stays on the transport',
  );
  assert.deepEqual(warnings.filter((w) => w === 'MaxListenersExceededWarning'), []);
  assert.equal(limiter.clientConnections('127.0.0.1'), 1, "'/' still holds its lease");
});

test('socket.io: a denied packet reaches no onAny listener and no ack', async (t) => {
  // socket.io runs onAny listeners (and attaches the ack) before socket.use
  // middlewares: the check must come before them.
  const limiter = new Limiter({ messagesPerWindow: 3, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  const seen = [];
  srv.io.on('connection', (socket) => {
    socket.onAny((event, msg, ack) => {
      seen.push(msg);
      if (typeof ack === 'function') ack(`any ${msg}`);
    });
  });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const c = srv.client();
  await next(c, 'connect');
  const limited = [];
  c.on('rate_limited', (e) => limited.push(e));
  const acked = [];
  for (let i = 0; i < 6; i++) c.emit('route', `m${i}`, (reply) => acked.push(reply));
  await until(() => limited.length === 3 && acked.length === 3, 'three packets allowed and acked, three denied');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(seen, ['m0', 'm1', 'm2'], 'onAny saw the allowed packets only');
  assert.deepEqual(acked, ['any m0', 'any m1', 'any m2']);
  assert.deepEqual(limited.map((e) => [e.reason, e.event]), Array(3).fill(['rate_limit_exceeded', 'route']));
});

test('socket.io: no unbounded rate_limited events queue for a flooder that never reads', async (t) => {
  // Each denied packet queued a rate_limited packet for a client that reads
  // nothing: 100000 tiny packets in, tens of thousands of packets held.
  const limiter = new Limiter({ messagesPerWindow: 5, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter);
  t.after(async () => {
    raw.terminate();
    await srv.close();
    limiter.close();
  });
  // A raw engine.io v4 client over ws: open, join '/', then stop reading.
  const raw = new WebSocket(`${srv.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  await next(raw, 'message'); // engine.io open
  raw.send('40');
  await next(raw, 'message'); // socket.io connect
  raw._socket.pause();
  const n = 100_000;
  for (let i = 0; i < n; i++) raw.send('42["chat","x"]');
  await until(() => limiter.stats().denied.rate_limit_exceeded === n - 5, 'every flood packet denied', 30_000);
  const [server] = srv.io.of('/').sockets.values();
  assert.equal(srv.app.received.length, 5);
  assert.ok(server.conn.writeBuffer.length <= 64, `at most 64 packets wait (${server.conn.writeBuffer.length})`);
  assert.ok(server.connected, 'the socket stays');
});

test('socket.io: with connectionStateRecovery, a recovered socket (which skips middlewares) is still limited', async (t) => {
  // socket.io's skipMiddlewares (the default with connectionStateRecovery)
  // connects a recovered socket without running io.use middlewares: it used
  // to come back with no lease (past maxConcurrentConnections) and no packet check.
  const limiter = new Limiter({ messagesPerWindow: 3, windowMs: 3_600_000, maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await chatServer(limiter, { serverOptions: { connectionStateRecovery: {} } });
  const c = connectClient(srv.url, { transports: ['websocket'], reconnectionDelay: 20, reconnectionDelayMax: 20, forceNew: true });
  t.after(async () => {
    c.close();
    await srv.close();
    limiter.close();
  });
  await next(c, 'connect');
  assert.equal(limiter.clientConnections('127.0.0.1'), 1);
  c.emit('chat', 'hello');
  await next(c, 'chat'); // the echo gives the client an offset to recover from
  const [first] = srv.io.of('/').sockets.values();
  first.conn.close(); // a transport drop: the client reconnects and recovers its session
  await next(c, 'connect');
  assert.equal(c.recovered, true, 'the session was recovered');
  assert.equal(limiter.clientConnections('127.0.0.1'), 1, 'the recovered socket holds a lease');
  const limited = [];
  c.on('rate_limited', (e) => limited.push(e));
  for (let i = 0; i < 6; i++) c.emit('chat', `m${i}`);
  await until(() => limited.length === 3, 'three packets of the recovered socket denied');
  assert.deepEqual(srv.app.received, ['hello', 'm0', 'm1', 'm2'], 'a new connection, with its own budget of 3');

  // A recovered socket past the client's concurrency limit is refused: it
  // gets rate_limited (event 'connect') and is disconnected, taking no lease.
  c.io.reconnectionDelay(1000).reconnectionDelayMax(1000);
  const [second] = srv.io.of('/').sockets.values();
  second.conn.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'the dropped socket released');
  const other = srv.client(); // takes the only slot while the client is away
  await next(other, 'connect');
  const refused = next(c, 'rate_limited');
  const [reason] = await next(c, 'disconnect', 20_000);
  assert.equal(reason, 'io server disconnect');
  const [e] = await refused;
  assert.equal(e.reason, 'too_many_connections');
  assert.equal(e.event, 'connect');
  assert.equal(limiter.clientConnections('127.0.0.1'), 1, 'only the other socket holds a lease');
  other.disconnect();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'every lease released');
});

test('socket.io: a clientId or packetSize that is not a function throws when the middleware is made', () => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  for (const name of ['clientId', 'packetSize']) {
    for (const v of ['x', 5, null, {}]) {
      assert.throws(() => rtio.middleware(limiter, { [name]: v }), TypeError, `${name} ${String(v)}`);
    }
  }
  rtio.middleware(limiter, { clientId: () => 'a', packetSize: () => 1 });
  limiter.close();
});
