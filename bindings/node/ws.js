'use strict';
// ratethrottle for the `ws` package.
//
//   const rt = require('ratethrottle/ws');
//   const wss = new WebSocketServer({ server, verifyClient: rt.verifyClient(limiter) });
//   rt.protect(wss, { onDenied: 'close' });
//
// verifyClient decides each upgrade before the handshake completes (429 with
// Retry-After when denied); protect checks every message and releases the
// connection when the socket closes.

const { byteSize, clientKey } = require('./index.js');
const { retryAfterSeconds, denialBody } = require('./lib/adapter.js');

const kConnection = Symbol('ratethrottle.connection');

/** The default client id: the remote address, IPv6 by its /64 (see clientKey). */
function defaultClientId(ipv6PrefixLength = 64) {
  clientKey('', { ipv6PrefixLength }); // a bad prefix length throws here, not per request
  return (req) => clientKey(req.socket.remoteAddress || '', { ipv6PrefixLength });
}

/**
 * A `verifyClient` for `new WebSocketServer({ verifyClient })`: connects the
 * client in the limiter (client id: `options.clientId(req)`, default the
 * remote address with IPv6 keyed by its /64, `options.ipv6PrefixLength`); a denial answers the upgrade with 429 Too Many
 * Requests, `Retry-After` (seconds, rounded up; absent when it can never
 * pass) and `X-RateLimit-Reason`, and no WebSocket is created. The lease is
 * released when the TCP socket closes, whether or not the handshake
 * completed.
 */
function verifyClient(limiter, options = {}) {
  const clientId = options.clientId || defaultClientId(options.ipv6PrefixLength);
  return (info, cb) => {
    const req = info.req;
    let d;
    try {
      d = limiter.connect(clientId(req));
    } catch (err) {
      // A bad id from the clientId function, or a closed limiter.
      process.emitWarning(`ratethrottle/ws: ${err.message}`);
      cb(false, 500, 'Internal Server Error');
      return;
    }
    if (!d.allowed) {
      const headers = { 'X-RateLimit-Reason': d.reason };
      const s = retryAfterSeconds(d.retryAfterMs);
      if (s !== null) headers['Retry-After'] = String(s);
      cb(false, 429, 'Too Many Requests', headers);
      return;
    }
    const conn = d.connection;
    req[kConnection] = conn;
    req.socket.once('close', () => conn.close());
    cb(true);
  };
}

/** The size of a message as ws delivers it (Buffer, ArrayBuffer or Buffer[] fragments). */
function messageSize(data) {
  if (Array.isArray(data)) {
    let n = 0;
    for (const b of data) n += b.length;
    return n;
  }
  return byteSize(data);
}

function deny(ws, d, options) {
  const mode = options.onDenied || 'close';
  if (typeof mode === 'function') {
    mode(ws, d);
  } else if (mode === 'reply') {
    ws.send(JSON.stringify({ type: 'error', error: d.reason, ...denialBody(d) }));
  } else if (d.reason === 'message_too_large') {
    ws.close(options.tooLargeCode ?? 1009, d.reason);
  } else {
    ws.close(options.policyCode ?? 1008, d.reason);
  }
}

/**
 * Checks every message of a WebSocket accepted through `verifyClient`.
 * A denied message never reaches the 'message' listeners; then, by
 * `options.onDenied`: 'close' (default) closes with 1009 for
 * message_too_large and 1008 otherwise (`tooLargeCode` / `policyCode`),
 * 'reply' sends `{"type":"error","error":reason,"reason",...,"retry_after"}`
 * and keeps the socket, a function `(ws, decision)` does what it wants.
 * Returns the engine connection.
 */
function guard(ws, req, options = {}) {
  const conn = req[kConnection];
  if (!conn) {
    throw new Error('ratethrottle/ws: this request was not admitted by verifyClient(limiter)');
  }
  ws.once('close', () => conn.close());
  const emit = ws.emit;
  ws.emit = function emitChecked(event, ...args) {
    if (event === 'message' && !conn.closed) {
      let d;
      try {
        d = conn.checkMessage(messageSize(args[0]));
      } catch (err) {
        process.emitWarning(`ratethrottle/ws: ${err.message}`);
        ws.close(1011, 'rate limiter unavailable');
        return false;
      }
      if (!d.allowed) {
        deny(ws, d, options);
        return false;
      }
    }
    return emit.call(this, event, ...args);
  };
  return conn;
}

/** Guards every connection of `wss` (see guard). */
function protect(wss, options = {}) {
  wss.on('connection', (ws, req) => guard(ws, req, options));
  return wss;
}

/** The engine connection of an admitted upgrade request (or undefined). */
function connectionOf(req) {
  return req[kConnection];
}

module.exports = { verifyClient, guard, protect, connectionOf, messageSize };
