'use strict';
// The ws adapter against a real ws server and real ws clients on loopback.

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');
const { Limiter } = require('..');
const rtws = require('../ws');
const { until, next, httpServer } = require('./helpers.js');

/** A ws echo server guarded by `limiter`; counts messages the app received. */
async function echoServer(limiter, guardOptions) {
  const h = await httpServer();
  const wss = new WebSocketServer({ server: h.server, verifyClient: rtws.verifyClient(limiter) });
  rtws.protect(wss, guardOptions);
  const app = { received: 0 };
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      app.received++;
      ws.send(data);
    });
  });
  const close = async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise((r) => wss.close(r));
    await h.close();
  };
  return { url: `ws://127.0.0.1:${h.port}`, port: h.port, app, close };
}

/** Opens a client; resolves with the socket, or with { status, headers } when refused. */
function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (req, res) => {
      resolve({ status: res.statusCode, headers: res.headers });
      req.destroy();
    });
    ws.once('error', reject);
  });
}

function closed(ws) {
  return next(ws, 'close').then(([code, reason]) => ({ code, reason: reason.toString() }));
}

test('ws: honest client untouched, spammer closed with 1008 after its budget', async (t) => {
  const limiter = new Limiter({ messagesPerWindow: 5, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });

  const honest = await open(srv.url);
  let echoes = 0;
  honest.on('message', () => echoes++);
  for (let i = 0; i < 4; i++) honest.send(`hi ${i}`);
  await until(() => echoes === 4, 'honest echoes');

  const spam = await open(srv.url);
  const spamClosed = closed(spam);
  for (let i = 0; i < 20; i++) spam.send(`spam ${i}`);
  const { code, reason } = await spamClosed;
  assert.equal(code, 1008);
  assert.equal(reason, 'rate_limit_exceeded');
  assert.equal(srv.app.received, 4 + 5, 'the app saw the honest 4 and the spammer\'s 5 allowed messages only');

  honest.send('still here');
  await until(() => echoes === 5, 'honest client still served');
  honest.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'leases released');
});

test('ws: oversize message closes with 1009 (no retry)', async (t) => {
  const limiter = new Limiter({ maxMessageSize: 100, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  const c = closed(ws);
  ws.send(Buffer.alloc(100));
  ws.send(Buffer.alloc(101));
  const { code, reason } = await c;
  assert.equal(code, 1009);
  assert.equal(reason, 'message_too_large');
  assert.equal(srv.app.received, 1);
});

test('ws: reply mode answers denials with an error message and keeps the socket', async (t) => {
  const limiter = new Limiter({ messagesPerWindow: 2, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { onDenied: 'reply' });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  const got = [];
  ws.on('message', (m) => got.push(m.toString()));
  for (let i = 0; i < 4; i++) ws.send(`m${i}`);
  await until(() => got.length === 4, 'four answers');
  assert.deepEqual(got.slice(0, 2), ['m0', 'm1']);
  for (const s of got.slice(2)) {
    const e = JSON.parse(s);
    assert.equal(e.type, 'error');
    assert.equal(e.error, 'rate_limit_exceeded');
    assert.equal(typeof e.retry_after, 'number');
    assert.ok(e.retry_after > 0);
  }
  assert.equal(ws.readyState, WebSocket.OPEN);
  ws.close();
});

test('ws: over-limit upgrades get 429 with Retry-After before the handshake; close frees the slot', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 2, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const a = await open(srv.url);
  const b = await open(srv.url);
  const refused = await open(srv.url);
  assert.equal(refused.status, 429);
  assert.equal(refused.headers['retry-after'], '0');
  assert.equal(refused.headers['x-ratelimit-reason'], 'too_many_connections');
  assert.equal(limiter.clientConnections('127.0.0.1'), 2);
  a.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 1, 'slot freed on close');
  const c = await open(srv.url);
  assert.ok(c instanceof WebSocket);
  // A client that vanishes without a close frame (TCP reset) frees its slot too.
  b._socket.destroy();
  await until(() => limiter.clientConnections('127.0.0.1') === 1, 'slot freed on reset');
  c.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'all freed');
});

test('ws: connection rate limit gives 429 with a Retry-After in seconds', async (t) => {
  const limiter = new Limiter({ connectionsPerWindow: 2, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  for (let i = 0; i < 2; i++) (await open(srv.url)).close();
  const refused = await open(srv.url);
  assert.equal(refused.status, 429);
  assert.equal(refused.headers['x-ratelimit-reason'], 'connection_rate_exceeded');
  assert.ok(Number(refused.headers['retry-after']) > 0);
});

test('ws: upgrade probes without upgrade headers take no lease (W5)', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  for (let i = 0; i < 20; i++) {
    const status = await new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: srv.port, path: '/', headers: { Connection: 'Upgrade', Upgrade: 'websocket' } });
      req.on('upgrade', (res, socket) => {
        socket.destroy();
        resolve(101);
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', reject);
    });
    assert.notEqual(status, 101);
  }
  assert.equal(limiter.stats().connectionsAllowed, 0);
  const ws = await open(srv.url);
  assert.ok(ws instanceof WebSocket, 'the one real upgrade still gets in');
  ws.close();
});
