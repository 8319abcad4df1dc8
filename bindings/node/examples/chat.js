'use strict';
// A chat server with ratethrottle guarding both a `ws` endpoint (/ws) and
// socket.io, on one HTTP server.
//
//   node examples/chat.js             serve on PORT (default 8080) until Ctrl-C
//   node examples/chat.js --selftest  serve on an ephemeral port, run an
//                                     honest client and flooders against it,
//                                     print what happened, exit
//
// Limits (per connection): 20 messages per 10 s, 1 KiB messages; 3 live
// connections per client.

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');
const { Server } = require('socket.io');
const { Limiter } = require('ratethrottle');
const rtws = require('ratethrottle/ws');
const rtio = require('ratethrottle/socketio');

function startChat(port = 0, limits = {}) {
  const limiter = new Limiter({
    windowMs: 10_000,
    messagesPerWindow: 20,
    maxMessageSize: 1024,
    maxConcurrentConnections: 3,
    ...limits,
  });
  limiter.on('violation', (v) => {
    if (process.env.CHAT_LOG_VIOLATIONS) console.log(`violation: ${v.type} from ${v.clientId.toString()}`);
  });

  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ratethrottle chat: WebSocket at /ws, socket.io at /socket.io\n');
  });

  // ws: the limiter decides the upgrade, then every message.
  // (noServer, routed by path below, so that socket.io keeps its own upgrades)
  // maxPayload: ws refuses (1009) a frame past 64 KiB before buffering it;
  // anything up to that reaches the limiter, which denies past maxMessageSize.
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024, verifyClient: rtws.verifyClient(limiter) });
  server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url, 'http://x').pathname !== '/ws') return;
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  rtws.protect(wss, { onDenied: 'reply' });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      for (const peer of wss.clients) if (peer.readyState === WebSocket.OPEN) peer.send(data, { binary: isBinary });
    });
  });

  // socket.io: the same limiter (a client's connections count across both).
  const io = new Server(server);
  io.use(rtio.middleware(limiter));
  io.on('connection', (socket) => {
    socket.on('chat', (text) => io.emit('chat', text));
  });

  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      const close = () =>
        new Promise((done) => {
          io.close();
          for (const c of wss.clients) c.terminate();
          wss.close();
          server.close(() => {
            limiter.close();
            done();
          });
          server.closeAllConnections?.();
        });
      resolve({ port: server.address().port, limiter, server, close });
    });
  });
}

/** Runs clients against the server; resolves with what they saw. */
async function selftest() {
  const { io: ioClient } = require('socket.io-client');
  const chat = await startChat(0);
  const url = `ws://127.0.0.1:${chat.port}/ws`;
  const seen = { honestEchoes: 0, floodAllowed: 0, floodDenied: 0, oversizeReply: null, extraUpgrade: null, ioRateLimited: 0 };
  const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms).unref());
  const open = (u) =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(u);
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
      ws.once('unexpected-response', (req, res) => resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'] }));
    });
  try {
    // An honest client: 5 messages, all echoed.
    const honest = await open(url);
    const echoes = new Promise((resolve) => {
      honest.on('message', (m) => {
        if (m.toString().startsWith('hello')) seen.honestEchoes++;
        if (seen.honestEchoes === 5) resolve();
      });
    });
    for (let i = 0; i < 5; i++) honest.send(`hello ${i}`);
    await Promise.race([echoes, timeout(10_000, 'honest echoes')]);

    // A flooder on its own connection: 30 messages; 20 pass, 10 get an error reply.
    const flood = await open(url);
    const replies = new Promise((resolve) => {
      flood.on('message', (m) => {
        const s = m.toString();
        if (s.startsWith('{')) {
          const e = JSON.parse(s);
          if (e.error === 'rate_limit_exceeded') seen.floodDenied++;
          if (e.error === 'message_too_large') seen.oversizeReply = e;
        } else if (s.startsWith('spam')) {
          seen.floodAllowed++;
        }
        if (seen.floodDenied + seen.floodAllowed >= 30) resolve();
      });
    });
    for (let i = 0; i < 30; i++) flood.send(`spam ${i}`);
    await Promise.race([replies, timeout(10_000, 'flood replies')]);

    // Oversize on a third connection (the flooder's budget is spent).
    const big = await open(url);
    const bigReply = new Promise((resolve) => big.once('message', (m) => resolve(JSON.parse(m.toString()))));
    big.send('x'.repeat(2000));
    seen.oversizeReply = await Promise.race([bigReply, timeout(10_000, 'oversize reply')]);

    // A fourth live connection of this client is refused before the handshake.
    seen.extraUpgrade = await open(url);

    // socket.io: connection limit already taken by the three sockets above.
    const refused = ioClient(`http://127.0.0.1:${chat.port}`, { transports: ['websocket'], reconnection: false });
    seen.ioConnectError = await Promise.race([
      new Promise((resolve) => refused.once('connect_error', (e) => resolve({ message: e.message, data: e.data }))),
      timeout(10_000, 'socket.io connect_error'),
    ]);
    refused.close();

    // Free the three ws connections; then socket.io gets in and floods.
    for (const ws of [honest, flood, big]) ws.close();
    const bounded = Date.now() + 10_000;
    while (chat.limiter.clientConnections('127.0.0.1') !== 0 && Date.now() < bounded) await new Promise((r) => setTimeout(r, 20));
    const sock = ioClient(`http://127.0.0.1:${chat.port}`, { transports: ['websocket'], reconnection: false });
    await Promise.race([new Promise((r, j) => { sock.once('connect', r); sock.once('connect_error', (e) => j(new Error('socket.io connect_error: ' + e.message + ' ' + JSON.stringify(e.data)))); }), timeout(10_000, 'socket.io connect')]);
    const limited = new Promise((resolve) => {
      sock.on('rate_limited', (e) => {
        seen.ioRateLimited++;
        seen.ioLast = e;
        if (seen.ioRateLimited === 5) resolve();
      });
    });
    for (let i = 0; i < 25; i++) sock.emit('chat', `io spam ${i}`);
    await Promise.race([limited, timeout(10_000, 'socket.io rate_limited')]);
    sock.close();
    seen.stats = chat.limiter.stats();
    return seen;
  } finally {
    await chat.close();
  }
}

if (require.main === module) {
  if (process.argv.includes('--selftest')) {
    selftest().then(
      (seen) => {
        const { stats, ...rest } = seen;
        console.log(JSON.stringify(rest, null, 2));
        console.log(`denied by reason: ${JSON.stringify(stats.denied)}`);
        const ok =
          seen.honestEchoes === 5 &&
          seen.floodAllowed === 20 &&
          seen.floodDenied === 10 &&
          seen.oversizeReply?.error === 'message_too_large' &&
          seen.extraUpgrade?.status === 429 &&
          seen.ioConnectError?.data?.reason === 'too_many_connections' &&
          seen.ioRateLimited >= 5;
        console.log(ok ? 'selftest: ok' : 'selftest: FAILED');
        process.exit(ok ? 0 : 1);
      },
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  } else {
    startChat(Number(process.env.PORT || 8080)).then(({ port }) => {
      console.log(`chat on http://127.0.0.1:${port} (ws: /ws, socket.io: /socket.io)`);
    });
  }
}

module.exports = { startChat, selftest };
