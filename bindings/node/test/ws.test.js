'use strict';
// The ws adapter against a real ws server and real ws clients on loopback.

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const { spawnSync } = require('node:child_process');
const { WebSocketServer, WebSocket } = require('ws');
const { Limiter } = require('..');
const rtws = require('../ws');
const { until, next, httpServer, childClient } = require('./helpers.js');

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
  return { url: `ws://127.0.0.1:${h.port}`, port: h.port, wss, app, close };
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

test('ws W3: a ping flood is closed with 1008 past the budget only with countControlFrames', async (t) => {
  for (const count of [true, false]) {
    const limiter = new Limiter({ messagesPerWindow: 5, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
    const srv = await echoServer(limiter, { countControlFrames: count, idleTimeoutMs: 0 });
    t.after(async () => {
      await srv.close();
      limiter.close();
    });
    const ws = await open(srv.url);
    let pongs = 0;
    ws.on('pong', () => pongs++);
    const c = closed(ws);
    for (let i = 0; i < 10; i++) ws.ping(Buffer.from('ping'));
    if (count) {
      const { code, reason } = await c;
      assert.equal(code, 1008);
      assert.equal(reason, 'rate_limit_exceeded');
      assert.equal(limiter.stats().denied.rate_limit_exceeded, 1);
    } else {
      await until(() => pongs === 10, 'all 10 pings answered');
      let echoed = false;
      ws.once('message', () => (echoed = true));
      ws.send('after');
      await until(() => echoed, 'a message still passes');
      assert.equal(srv.app.received, 1);
      ws.close();
    }
  }
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

// ---- W7: half-open connections, idle timeout with server pings ----

/**
 * A raw TCP client that completes the WebSocket handshake by hand and then
 * goes silent: it sends nothing more and never reads (so it never answers a
 * ping or a close), and keeps the TCP connection open. Resolves with the
 * socket once the 101 is read.
 */
function halfOpen(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let head = '';
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error('timed out waiting for the 101'));
    }, 10_000);
    sock.on('error', reject);
    sock.once('connect', () => {
      sock.write(
        'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    const onData = (chunk) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      clearTimeout(t);
      sock.off('data', onData);
      sock.pause(); // never read again
      if (!head.startsWith('HTTP/1.1 101')) {
        sock.destroy();
        reject(new Error(`no upgrade: ${head.split('\r\n')[0]}`));
        return;
      }
      resolve(sock);
    };
    sock.on('data', onData);
  });
}

/** A masked client text frame (payload < 126 bytes), as a client must send it. */
function textFrame(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('ws W7: a client that goes silent after the handshake is terminated by the idle timeout; its slot is freed', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 1000 });
  const accepted = next(srv.wss, 'connection');
  const raw = await halfOpen(srv.port);
  t.after(async () => {
    raw.destroy();
    await srv.close();
    limiter.close();
  });
  const [serverWs] = await accepted;
  // The lease is taken before the 101 is sent, so it is held now.
  assert.equal(limiter.clientConnections('127.0.0.1'), 1);
  // Waiting on the event (no polling timer that would wake the event loop):
  // the server must end the silent client by itself.
  const [code] = await next(serverWs, 'close');
  assert.equal(code, 1006, 'terminated, no close handshake');
  assert.equal(limiter.clientConnections('127.0.0.1'), 0, 'the silent client\'s slot freed by the idle timeout');
  assert.equal(raw.destroyed, false, 'the client never closed anything: the server ended it');
  const ws = await open(srv.url);
  assert.ok(ws instanceof WebSocket, 'a new connection of the same client is admitted (max concurrency 1)');
  ws.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'released');
});

test('ws W7: an idle but honest client (ws answers pings) stays connected past several idle timeouts', async (t) => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 600 });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  let pings = 0;
  ws.on('ping', () => pings++);
  let closedEarly = null;
  ws.once('close', (code) => (closedEarly = code));
  await sleep(3000); // five idle timeouts, sending nothing
  assert.equal(closedEarly, null, 'still connected');
  assert.equal(ws.readyState, WebSocket.OPEN);
  assert.ok(pings >= 2, `the server pinged the idle client (${pings} pings)`);
  assert.equal(limiter.clientConnections('127.0.0.1'), 1);
  let echoed = false;
  ws.once('message', () => (echoed = true));
  ws.send('still here');
  await until(() => echoed, 'echo after the idle period');
  ws.close();
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'released');
});

test('ws W7: a frozen client process (SIGSTOP: connected, answering nothing) loses its slot to the idle timeout', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 1000 });
  const c = await childClient('ws', srv.url);
  t.after(async () => {
    c.kill();
    await srv.close();
    limiter.close();
  });
  await until(() => limiter.clientConnections('127.0.0.1') === 1, 'the child is connected');
  c.child.kill('SIGSTOP');
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'the frozen client\'s slot freed by the idle timeout');
  assert.equal(c.child.exitCode, null, 'the client process is still there, frozen');
  const ws = await open(srv.url);
  assert.ok(ws instanceof WebSocket, 'the same client gets in again');
  ws.close();
});

test('ws W7: a killed client process (SIGKILL) frees its slot', async (t) => {
  const limiter = new Limiter({ maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter); // default idle timeout (60 s): the kernel's FIN/RST frees it
  const c = await childClient('ws', srv.url);
  t.after(async () => {
    c.kill();
    await srv.close();
    limiter.close();
  });
  await until(() => limiter.clientConnections('127.0.0.1') === 1, 'the child is connected');
  c.child.kill('SIGKILL');
  assert.equal((await c.exited).signal, 'SIGKILL');
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'the killed client\'s slot freed');
  const ws = await open(srv.url);
  assert.ok(ws instanceof WebSocket);
  ws.close();
});

test('ws W7: a slow close handshake (the peer never answers our close frame) ends at the idle timeout', async (t) => {
  // ws itself would wait 30 s for the close frame; the bounded wait below is 10 s.
  const limiter = new Limiter({ maxMessageSize: 4, maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 1000 });
  const raw = await halfOpen(srv.port);
  t.after(async () => {
    raw.destroy();
    await srv.close();
    limiter.close();
  });
  raw.write(textFrame('too large')); // denied: the server sends close 1009 and waits for the answer
  await until(() => limiter.stats().denied.message_too_large === 1, 'the oversize message denied');
  assert.equal(srv.app.received, 0);
  await until(() => limiter.clientConnections('127.0.0.1') === 0, 'slot freed although the close handshake never completed');
  const ws = await open(srv.url);
  assert.ok(ws instanceof WebSocket);
  ws.close();
});

test('ws W7: idleTimeoutMs 0 disables pings and the timeout', async (t) => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 0 });
  const raw = await halfOpen(srv.port);
  const ws = await open(srv.url);
  t.after(async () => {
    raw.destroy();
    await srv.close();
    limiter.close();
  });
  let pings = 0;
  ws.on('ping', () => pings++);
  await sleep(1500);
  assert.equal(pings, 0, 'no ping sent');
  assert.equal(limiter.clientConnections('127.0.0.1'), 2, 'the silent client is kept');
  ws.close();
});

test('ws W7: the idle timeout alone ends a half-open client (a process with no other timer)', () => {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'ws-half-open.js')], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.error, undefined, 'the process finished within the bound');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'connected 1\nclosed 1006 0\n');
});

test('ws W7: the idle timer does not keep the process alive', () => {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'ws-unref.js')], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.error, undefined, 'the process exited by itself (a ref\'d idle timer would keep it running)');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'connected 1\nexit 0\n');
});

test('ws W7: bad idleTimeoutMs values throw when the adapter is set up', () => {
  const wss = new WebSocketServer({ noServer: true, verifyClient: (info, cb) => cb(true) });
  for (const v of ['1000', null, 10n, true]) {
    assert.throws(() => rtws.protect(wss, { idleTimeoutMs: v }), TypeError, String(v));
  }
  for (const v of [-1, NaN, Infinity, 2 ** 31]) {
    assert.throws(() => rtws.protect(wss, { idleTimeoutMs: v }), RangeError, String(v));
  }
  assert.equal(wss.listenerCount('connection'), 0, 'nothing was installed');
  rtws.protect(wss, { idleTimeoutMs: 2 ** 31 - 1 });
  rtws.protect(wss, { idleTimeoutMs: 0 });
  assert.equal(wss.listenerCount('connection'), 2);
  wss.close();
});

test('ws: failOpen with the table full admits an untracked connection; its messages pass unchecked, its close is harmless', async (t) => {
  const limiter = new Limiter({ maxConnections: 1, maxClients: 64, failOpen: true, messagesPerWindow: 2, windowMs: 3_600_000 });
  const srv = await echoServer(limiter);
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const tracked = await open(srv.url);
  const untracked = await open(srv.url);
  assert.ok(untracked instanceof WebSocket, 'admitted although the connection table is full');
  assert.equal(limiter.stats().untrackedAllowed, 1);
  assert.equal(limiter.stats().activeConnections, 1);
  let echoes = 0;
  untracked.on('message', () => echoes++);
  for (let i = 0; i < 5; i++) untracked.send(`m${i}`);
  await until(() => echoes === 5, 'every message of the untracked connection echoed (nothing to check it against)');
  const done = closed(untracked);
  untracked.close();
  assert.equal((await done).code, 1005);
  tracked.close();
  await until(() => limiter.stats().activeConnections === 0, 'the tracked lease released');
});

test('ws: an upgrade whose socket is gone before verifyClient runs takes no lease', async (t) => {
  const limiter = new Limiter({ maxClients: 64, maxConnections: 64 });
  const h = await httpServer();
  const wss = new WebSocketServer({ noServer: true, verifyClient: rtws.verifyClient(limiter) });
  rtws.protect(wss);
  let verified = 0;
  // An app that does async work (auth) before handing the upgrade to ws;
  // here it waits until the client has reset.
  h.server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {}); // the client's reset
    socket.once('close', () => {
      wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
      verified++;
    });
  });
  t.after(async () => {
    await new Promise((r) => wss.close(r));
    await h.close();
    limiter.close();
  });
  for (let i = 0; i < 3; i++) {
    const s = net.connect(h.port, '127.0.0.1');
    await next(s, 'connect');
    s.write(
      'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    await new Promise((r) => setTimeout(r, 20));
    s.resetAndDestroy();
  }
  await until(() => verified === 3, 'the three upgrades handed to ws');
  await new Promise(setImmediate);
  assert.equal(limiter.stats().activeConnections, 0, 'no lease left behind');
  assert.equal(limiter.stats().connectionsAllowed, 0);
});

test('ws: protect() refuses a server without verifyClient; guard closes an unadmitted socket with 1011', async (t) => {
  assert.throws(() => rtws.protect(new WebSocketServer({ noServer: true })), { name: 'TypeError', message: /needs a WebSocketServer created with verifyClient/ });
  const h = await httpServer();
  const wss = new WebSocketServer({ server: h.server });
  const warnings = [];
  const onWarning = (w) => warnings.push(w.message);
  process.on('warning', onWarning);
  wss.on('connection', (ws, req) => rtws.guard(ws, req));
  t.after(async () => {
    process.off('warning', onWarning);
    await new Promise((r) => wss.close(r));
    await h.close();
  });
  const ws = await open(`ws://127.0.0.1:${h.port}`);
  const { code } = await closed(ws);
  assert.equal(code, 1011);
  await until(() => warnings.some((m) => /not admitted by verifyClient/.test(m)), 'the warning');
});

/** A masked client text frame of any length; `deflate`: compressed (RSV1, permessage-deflate). */
function clientFrame(text, deflate) {
  let payload = Buffer.from(text);
  if (deflate) {
    const c = zlib.deflateRawSync(payload, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    payload = c.subarray(0, c.length - 4); // RFC 7692: without the trailing 00 00 ff ff
  }
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0, 0x80 | len]) : Buffer.from([0, 0x80 | 126, len >> 8, len & 255]);
  head[0] = 0x81 | (deflate ? 0x40 : 0);
  const mask = crypto.randomBytes(4);
  return Buffer.concat([head, mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
}

test('ws: with perMessageDeflate, a burst of compressed messages ended by a FIN is still limited', async (t) => {
  // ws inflates messages asynchronously, so some are delivered after the TCP
  // socket closed: the engine connection must still be open to check them.
  const limiter = new Limiter({ messagesPerWindow: 5, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const h = await httpServer();
  const wss = new WebSocketServer({ server: h.server, perMessageDeflate: true, verifyClient: rtws.verifyClient(limiter) });
  rtws.protect(wss, { idleTimeoutMs: 0 });
  let received = 0;
  let serverClosed = 0;
  wss.on('connection', (ws) => {
    ws.on('message', () => received++);
    ws.on('close', () => serverClosed++);
  });
  t.after(async () => {
    await new Promise((r) => wss.close(r));
    await h.close();
    limiter.close();
  });
  const sock = net.connect(h.port, '127.0.0.1');
  sock.on('error', () => {});
  await next(sock, 'connect');
  sock.write(
    'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
      'Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n',
  );
  const [reply] = await next(sock, 'data');
  assert.match(reply.toString('latin1'), /^HTTP\/1\.1 101[^]*permessage-deflate/);
  sock.resume();
  const frames = [];
  for (let i = 0; i < 100; i++) frames.push(clientFrame(`${'x'.repeat(1000)} ${i}`, true));
  sock.end(Buffer.concat(frames)); // everything at once, then FIN
  await until(() => serverClosed === 1, 'the server side closed');
  assert.equal(received, 5, 'the app saw the 5 allowed messages only');
  assert.equal(limiter.stats().denied.rate_limit_exceeded, 1);
  assert.equal(limiter.clientConnections('127.0.0.1'), 0, 'the lease is released');
});

test('ws: bad onDenied, tooLargeCode and policyCode values throw when the adapter is set up, not at the first denial', async (t) => {
  // A close code ws refuses used to throw inside ws's 'message' emit at the
  // first denial: an uncaught exception that ended the server process.
  const wss = new WebSocketServer({ noServer: true, verifyClient: (info, cb) => cb(true) });
  const req = { socket: {} };
  for (const name of ['tooLargeCode', 'policyCode']) {
    for (const v of ['1008', null, 1008n]) {
      assert.throws(() => rtws.protect(wss, { [name]: v }), TypeError, `${name} ${String(v)}`);
      assert.throws(() => rtws.guard(null, req, { [name]: v }), TypeError, `guard ${name} ${String(v)}`);
    }
    for (const v of [999, 1004, 1005, 1006, 1015, 2999, 5000, 1008.5, NaN]) {
      assert.throws(() => rtws.protect(wss, { [name]: v }), RangeError, `${name} ${v}`);
    }
  }
  for (const v of ['drop', 'CLOSE', 1, null]) {
    assert.throws(() => rtws.protect(wss, { onDenied: v }), TypeError, `onDenied ${String(v)}`);
  }
  assert.equal(wss.listenerCount('connection'), 0, 'nothing was installed');
  const lim = new Limiter({ maxClients: 64, maxConnections: 64 });
  for (const v of ['x', 5, null, {}]) {
    assert.throws(() => rtws.verifyClient(lim, { clientId: v }), /clientId must be a function/, `clientId ${String(v)}`);
  }
  lim.close();
  for (const o of [{ policyCode: 4000, tooLargeCode: 1000 }, { policyCode: 1014 }, { onDenied: 'reply' }, { onDenied: () => {} }]) {
    rtws.protect(wss, o);
  }
  wss.close();

  // A valid custom code is what the client gets.
  const limiter = new Limiter({ messagesPerWindow: 1, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { policyCode: 4008, idleTimeoutMs: 0 });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  const c = closed(ws);
  ws.send('a');
  ws.send('b');
  assert.deepEqual(await c, { code: 4008, reason: 'rate_limit_exceeded' });
});

test('ws W3: with countControlFrames, the pongs answering the idle timer\'s own pings are not counted', async (t) => {
  // An honest, silent client answers each keep-alive ping; counting those
  // answers closed it with 1008 after messagesPerWindow pings.
  const limiter = new Limiter({ messagesPerWindow: 2, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { countControlFrames: true, idleTimeoutMs: 100 });
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  let pings = 0;
  ws.on('ping', () => pings++);
  let closedWith = null;
  ws.once('close', (code) => (closedWith = code));
  await until(() => pings >= 8 || closedWith !== null, 'eight keep-alive pings answered');
  assert.equal(closedWith, null, 'still connected');
  assert.equal(limiter.stats().denied.rate_limit_exceeded, 0);
  // Unsolicited pongs still count: the third is past the budget.
  const c = closed(ws);
  for (let i = 0; i < 3; i++) ws.pong();
  assert.deepEqual(await c, { code: 1008, reason: 'rate_limit_exceeded' });
});

test('ws: reply mode queues no unbounded replies for a flooder that never reads', async (t) => {
  // Each 6-byte empty frame denied used to queue a ~120-byte error reply:
  // 600 KB in, about 10 MB held in the server's memory.
  const limiter = new Limiter({ messagesPerWindow: 5, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { onDenied: 'reply', idleTimeoutMs: 0 });
  let server = null;
  srv.wss.on('connection', (ws) => (server = ws));
  const raw = await halfOpen(srv.port); // reads nothing
  t.after(async () => {
    raw.destroy();
    await srv.close();
    limiter.close();
  });
  const n = 100_000;
  raw.write(Buffer.concat(Array(n).fill(textFrame(''))));
  await until(() => limiter.stats().denied.rate_limit_exceeded === n - 5, 'every flood message denied', 30_000);
  assert.equal(srv.app.received, 5);
  assert.ok(server.bufferedAmount <= 64 * 1024 + 1024, `at most about 64 KiB queued (${server.bufferedAmount} bytes)`);
  assert.equal(server.readyState, WebSocket.OPEN, 'reply mode keeps the socket');
});

test('ws: every binaryType ws delivers is sized: nodebuffer, arraybuffer, fragments, blob', async (t) => {
  // A Blob (binaryType 'blob', ws >= 8.18) used to be refused as message
  // data: each binary message closed the socket with 1011.
  const limiter = new Limiter({ bytesPerWindow: 100, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const h = await httpServer();
  const wss = new WebSocketServer({ server: h.server, verifyClient: rtws.verifyClient(limiter) });
  rtws.protect(wss, { idleTimeoutMs: 0 });
  const types = ['nodebuffer', 'arraybuffer', 'fragments', 'blob'];
  let n = 0;
  const got = [];
  wss.on('connection', (ws) => {
    ws.binaryType = types[n++];
    ws.on('message', (data) => got.push(ws.binaryType));
  });
  t.after(async () => {
    await new Promise((r) => wss.close(r));
    await h.close();
    limiter.close();
  });
  for (const type of types) {
    const ws = await open(`ws://127.0.0.1:${h.port}`);
    const c = closed(ws);
    ws.send(Buffer.alloc(60));
    ws.send(Buffer.alloc(60)); // 120 bytes: past the budget of 100
    assert.deepEqual(await c, { code: 1008, reason: 'bandwidth_exceeded' }, type);
  }
  assert.deepEqual(got, types, 'the first message of each passed');
  assert.equal(limiter.stats().totalBytes, 4 * 60);
  assert.equal(rtws.messageSize(new Blob(['abc'])), 3);
});

test('ws: guard on a socket protect already guards checks each message once', async (t) => {
  // guard returns the engine connection, so an application under protect may
  // call it too: each message used to be checked (and counted) twice.
  const limiter = new Limiter({ messagesPerWindow: 4, windowMs: 3_600_000, maxClients: 64, maxConnections: 64 });
  const srv = await echoServer(limiter, { idleTimeoutMs: 0 });
  const conns = [];
  srv.wss.on('connection', (ws, req) => conns.push(rtws.guard(ws, req), rtws.connectionOf(req)));
  t.after(async () => {
    await srv.close();
    limiter.close();
  });
  const ws = await open(srv.url);
  let echoes = 0;
  ws.on('message', () => echoes++);
  for (let i = 0; i < 4; i++) ws.send(`m${i}`);
  await until(() => echoes === 4, 'the four messages of the budget echoed');
  assert.equal(limiter.stats().totalMessages, 4);
  assert.ok(conns[0] !== null && conns[0] === conns[1], 'guard returns the connection');
  const c = closed(ws);
  ws.send('m4');
  assert.equal((await c).code, 1008);
});
