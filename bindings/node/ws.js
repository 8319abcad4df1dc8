'use strict';
// ratethrottle for the `ws` package.
//
//   const rt = require('ratethrottle/ws');
//   const wss = new WebSocketServer({ server, verifyClient: rt.verifyClient(limiter) });
//   rt.protect(wss, { onDenied: 'close' });
//
// verifyClient decides each upgrade before the handshake completes (429 with
// Retry-After when denied); protect checks every message, pings idle peers and
// ends a peer that stays silent for idleTimeoutMs, and releases the
// connection when the socket closes.

const { byteSize, clientKey } = require('./index.js');
const { retryAfterSeconds, denialBody, functionOption } = require('./lib/adapter.js');

const kConnection = Symbol('ratethrottle.connection');
// Set on a request admitted without a connection to track (failOpen with
// the table full): its messages go unchecked.
const kUntracked = Symbol('ratethrottle.untracked');
// The release verifyClient hangs on the TCP socket's 'close' (see guard).
const kRelease = Symbol('ratethrottle.release');
// Set on a WebSocket guard has taken: the connection it checks against.
const kGuarded = Symbol('ratethrottle.guarded');

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
 * completed (once guard has the WebSocket: when the WebSocket closes). A socket already gone when it runs (a client that reset while
 * an earlier async step ran) is refused without a lease. With `failOpen`
 * and the table full, the engine allows the upgrade untracked: it is
 * accepted and its messages are not checked.
 */
function verifyClient(limiter, options = {}) {
  const clientId = functionOption(options, 'clientId', 'ws') || defaultClientId(options.ipv6PrefixLength);
  return (info, cb) => {
    const req = info.req;
    if (req.socket.destroyed) {
      // Its 'close' may have fired already: a lease taken now could never
      // be released. Nobody reads this answer.
      cb(false, 400, 'Bad Request');
      return;
    }
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
    if (conn === null) {
      req[kUntracked] = true;
    } else {
      req[kConnection] = conn;
      // Released when the TCP socket closes, handshake completed or not;
      // guard moves the release to the WebSocket's 'close'.
      const release = () => conn.close();
      req[kRelease] = release;
      req.socket.once('close', release);
    }
    cb(true);
  };
}

/**
 * The size of a message as ws delivers it, for each `binaryType`: Buffer
 * ('nodebuffer', and text), ArrayBuffer, Buffer[] ('fragments') or Blob
 * ('blob', ws >= 8.18).
 */
function messageSize(data) {
  if (Array.isArray(data)) {
    let n = 0;
    for (const b of data) n += b.length;
    return n;
  }
  if (typeof Blob === 'function' && data instanceof Blob) return data.size;
  return byteSize(data);
}

// Unsent bytes past which 'reply' mode stops answering denials (see deny).
const REPLY_BACKLOG_BYTES = 64 * 1024;

function deny(ws, d, opts) {
  const mode = opts.onDenied;
  if (typeof mode === 'function') {
    mode(ws, d);
  } else if (mode === 'reply') {
    // A flooder that never reads would make every denial queue a reply (a
    // 6-byte frame in, about 120 bytes held): no reply while the socket
    // already holds REPLY_BACKLOG_BYTES unsent. The denial stands either way.
    if (ws.bufferedAmount <= REPLY_BACKLOG_BYTES) {
      ws.send(JSON.stringify({ type: 'error', error: d.reason, ...denialBody(d) }));
    }
  } else if (d.reason === 'message_too_large') {
    ws.close(opts.tooLargeCode, d.reason);
  } else {
    ws.close(opts.policyCode, d.reason);
  }
}

/** A close code ws can send (RFC 6455 7.4: 1000..1014 but 1004..1006, or 3000..4999). */
function closeCodeOf(options, name, dflt) {
  const v = options[name];
  if (v === undefined) return dflt;
  if (typeof v !== 'number') {
    throw new TypeError(`ratethrottle/ws: ${name} must be a close code (a number), got ${typeof v}`);
  }
  const sendable = (v >= 1000 && v <= 1014 && v !== 1004 && v !== 1005 && v !== 1006) || (v >= 3000 && v <= 4999);
  if (!Number.isInteger(v) || !sendable) {
    throw new RangeError(`ratethrottle/ws: ${name} must be a close code ws can send (1000..1014 but 1004..1006, or 3000..4999), got ${v}`);
  }
  return v;
}

/**
 * The options of guard / protect, checked when the adapter is set up (a bad
 * close code would otherwise throw inside ws at the first denial).
 */
function guardOptionsOf(options) {
  const onDenied = options.onDenied === undefined ? 'close' : options.onDenied;
  if (onDenied !== 'close' && onDenied !== 'reply' && typeof onDenied !== 'function') {
    throw new TypeError(`ratethrottle/ws: onDenied must be 'close', 'reply' or a function, got ${typeof onDenied === 'string' ? `'${onDenied}'` : String(onDenied)}`);
  }
  return {
    onDenied,
    tooLargeCode: closeCodeOf(options, 'tooLargeCode', 1009),
    policyCode: closeCodeOf(options, 'policyCode', 1008),
    idleMs: idleTimeoutOf(options),
    countControl: options.countControlFrames === true,
  };
}

const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
const MAX_TIMER_MS = 2 ** 31 - 1; // the largest delay setTimeout honours

/** `options.idleTimeoutMs` checked: a number of ms in 0..2^31-1 (0 = off), default 60000. */
function idleTimeoutOf(options) {
  const v = options.idleTimeoutMs;
  if (v === undefined) return DEFAULT_IDLE_TIMEOUT_MS;
  if (typeof v !== 'number') {
    throw new TypeError(`ratethrottle/ws: idleTimeoutMs must be a number of milliseconds, got ${typeof v}`);
  }
  if (!Number.isFinite(v) || v < 0 || v > MAX_TIMER_MS) {
    throw new RangeError(`ratethrottle/ws: idleTimeoutMs must be 0 (off) or up to ${MAX_TIMER_MS} ms, got ${v}`);
  }
  return v;
}

/**
 * The liveness rule of one socket (a transport rule, not a limit): a ping
 * every idleMs/2; any frame from the peer (message, ping, pong; call
 * `seen()`) restarts the idle clock; after idleMs with nothing at all,
 * ws.terminate() (no close handshake), whose 'close' releases the engine
 * connection. The timer is unref'd and cleared on 'close'.
 */
function keepAlive(ws, idleMs) {
  const pingMs = idleMs / 2;
  let last = performance.now();
  let nextPing = last + pingMs;
  let timer = null;
  let stopped = false;
  let unanswered = 0; // our pings not yet answered by a pong
  const arm = (now) => {
    timer = setTimeout(tick, Math.max(1, Math.min(nextPing, last + idleMs) - now));
    timer.unref();
  };
  // Expiry is decided after the poll phase (setImmediate), so that frames
  // already waiting in the socket when a stalled event loop wakes up are read
  // (and restart the clock) before the peer is judged silent. The immediate
  // stays ref'd: an unref'd one would not wake a loop blocked in poll.
  const expire = () => {
    if (stopped) return;
    const now = performance.now();
    if (now - last >= idleMs) {
      stopped = true;
      ws.terminate();
    } else {
      arm(now);
    }
  };
  function tick() {
    timer = null;
    if (stopped) return;
    const now = performance.now();
    if (now - last >= idleMs) {
      setImmediate(expire);
      return;
    }
    if (now >= nextPing) {
      if (ws.readyState === ws.OPEN) {
        ws.ping();
        unanswered++;
      }
      nextPing = now + pingMs;
    }
    arm(now);
  }
  ws.once('close', () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
  });
  arm(last);
  return {
    seen() {
      last = performance.now();
    },
    /** For a pong: whether it answers one of our pings (then it is not the peer's own traffic). */
    answers() {
      if (unanswered === 0) return false;
      unanswered--;
      return true;
    },
  };
}

/**
 * Checks every message of a WebSocket accepted through `verifyClient`.
 * A denied message never reaches the 'message' listeners; then, by
 * `options.onDenied`: 'close' (default) closes with 1009 for
 * message_too_large and 1008 otherwise (`tooLargeCode` / `policyCode`),
 * 'reply' sends `{"type":"error","error":reason,"reason",...,"retry_after"}`
 * (none while more than 64 KiB wait to be sent on the socket) and keeps
 * the socket, a function `(ws, decision)` does what it wants.
 * `options.idleTimeoutMs` (default 60000, 0 = off): the server pings every
 * idleTimeoutMs/2 and terminates a peer from which nothing at all (message,
 * ping or pong) arrived for idleTimeoutMs, so a vanished client does not keep
 * its concurrency slot. `options.countControlFrames` (default false): each
 * ping and pong from the peer is checked like a message, and a denied one
 * closes with `policyCode` (1008), so a ping flood is stopped like a message
 * flood (a pong answering the idle timer's own ping is not counted). Returns the engine connection, or null for a connection admitted
 * untracked (failOpen with the table full), whose messages are not checked.
 * A socket whose request did not pass verifyClient(limiter) is closed with
 * 1011 and a warning. A socket already guarded is not guarded again (the
 * first guard's options stay): guard then only returns its connection.
 */
function guard(ws, req, options = {}) {
  const opts = guardOptionsOf(options);
  // Guarded already (protect, and the application's own guard call): once.
  if (ws[kGuarded] !== undefined) return ws[kGuarded];
  const idleMs = opts.idleMs;
  const conn = req[kConnection] ?? null; // null: admitted untracked, nothing to check against
  if (conn === null && req[kUntracked] !== true) {
    process.emitWarning('ratethrottle/ws: a connection not admitted by verifyClient(limiter) was closed');
    ws.close(1011, 'rate limiter not configured');
    return null;
  }
  ws[kGuarded] = conn;
  if (conn !== null) {
    // Released on the WebSocket's 'close', not the TCP socket's: ws still
    // delivers messages after the socket closed (those it was inflating,
    // with perMessageDeflate, and those left in a paused socket), and each
    // must be checked against an open connection. ws emits 'close' after
    // the last of them.
    if (req[kRelease] !== undefined) req.socket.removeListener('close', req[kRelease]);
    ws.once('close', () => conn.close());
  }
  const alive = idleMs > 0 ? keepAlive(ws, idleMs) : null;
  const countControl = opts.countControl;
  let closing = false; // closed for a denial: later frames are dropped unchecked
  const emit = ws.emit;
  ws.emit = function emitChecked(event, ...args) {
    const control = event === 'ping' || event === 'pong';
    if (alive !== null && (event === 'message' || control)) alive.seen();
    // A pong answering our keep-alive ping is our traffic, not the peer's.
    const solicited = event === 'pong' && alive !== null && alive.answers();
    const checked = conn !== null && (event === 'message' || (control && countControl && !solicited));
    // Closed for a denial, or the connection closed by someone else: no
    // budget to check against, so nothing more is delivered.
    if (checked && (closing || conn.closed)) return false;
    if (checked) {
      let d;
      try {
        d = conn.checkMessage(messageSize(args[0]));
      } catch (err) {
        process.emitWarning(`ratethrottle/ws: ${err.message}`);
        ws.close(1011, 'rate limiter unavailable');
        return false;
      }
      if (!d.allowed) {
        // A control frame is never answered with a message: close.
        if (control) ws.close(opts.policyCode, d.reason);
        else deny(ws, d, opts);
        closing = ws.readyState !== ws.OPEN;
        return false;
      }
    }
    return emit.call(this, event, ...args);
  };
  return conn;
}

/**
 * Guards every connection of `wss` (see guard). Bad options (TypeError /
 * RangeError), and a server created without a verifyClient, throw here.
 */
function protect(wss, options = {}) {
  guardOptionsOf(options);
  if (typeof wss?.options?.verifyClient !== 'function') {
    throw new TypeError('ratethrottle/ws: protect(wss) needs a WebSocketServer created with verifyClient: verifyClient(limiter)');
  }
  wss.on('connection', (ws, req) => guard(ws, req, options));
  return wss;
}

/** The engine connection of an admitted upgrade request (undefined when untracked or not admitted). */
function connectionOf(req) {
  return req[kConnection];
}

module.exports = { verifyClient, guard, protect, connectionOf, messageSize };
