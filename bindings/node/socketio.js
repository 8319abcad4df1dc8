'use strict';
// ratethrottle for socket.io (v4).
//
//   const rt = require('ratethrottle/socketio');
//   io.use(authMiddleware);          // first: a connection it rejects takes no lease
//   io.use(rt.middleware(limiter));  // last
//
// The connection middleware decides each connection (denied: the client gets
// connect_error with err.data = { reason, retry_after, retry_after_ms, limit })
// and checks each event packet before socket.io hands it to anything: a
// denied packet is dropped and the client gets a 'rate_limited' event with
// the same fields plus `event`.

const { clientKey } = require('./index.js');
const { denialBody, valueSize, functionOption } = require('./lib/adapter.js');

const kConnection = Symbol('ratethrottle.connection');
// rate_limited events that may wait unsent on one socket (see packetCheck).
const MAX_UNSENT_NOTICES = 64;

/** The default client id: the handshake address, IPv6 by its /64 (see clientKey). */
function defaultClientId(ipv6PrefixLength = 64) {
  clientKey('', { ipv6PrefixLength }); // a bad prefix length throws here, not per connection
  return (socket) => clientKey(socket.handshake.address || '', { ipv6PrefixLength });
}

/** Bytes of a packet's arguments (see lib/adapter.js valueSize; acks count 0). */
function packetSize(args) {
  let n = 0;
  for (const a of args) n += valueSize(a);
  return n;
}

/**
 * Checks one event packet (`[event, ...args]`) against `conn`: true when it
 * may pass; a denied one is answered with the `rate_limited` event (or
 * `options.event`). Throws when the connection or limiter is closed.
 */
function packetCheck(socket, conn, options) {
  const size = options.packetSize || ((event, args) => Buffer.byteLength(String(event), 'utf8') + packetSize(args));
  // A flooder that never reads would make every denial queue an event for
  // it: at most MAX_UNSENT_NOTICES wait until the transport takes them
  // (engine.io's 'drain'); past that, denials go unanswered (still denied).
  let unsent = 0;
  const transport = socket.conn;
  if (transport !== undefined && typeof transport.on === 'function') {
    const drained = () => {
      unsent = 0;
    };
    transport.on('drain', drained);
    socket.once('disconnect', () => transport.off('drain', drained));
  }
  return (packet) => {
    const [event, ...args] = packet;
    const d = conn.checkMessage(size(event, args));
    if (d.allowed) return true;
    if (unsent < MAX_UNSENT_NOTICES) {
      unsent++;
      socket.emit(options.event || 'rate_limited', { ...denialBody(d), event: String(event) });
    }
    return false;
  };
}

/**
 * A `socket.use` middleware checking each packet against `conn`. socket.io
 * runs `onAny` listeners (and attaches the ack) before `socket.use`
 * middlewares, so these see denied packets too; `middleware` checks earlier.
 */
function packets(socket, conn, options = {}) {
  const check = packetCheck(socket, conn, options);
  return (packet, next) => {
    let allowed;
    try {
      allowed = check(packet);
    } catch (err) {
      next(err);
      return;
    }
    if (allowed) next();
  };
}

/**
 * Checks each event packet of `socket` as socket.io receives it, before it
 * reaches anything: `onAny` listeners, the ack, `socket.use` middlewares and
 * listeners (socket.io v3/v4 hand every event packet to `socket.onevent`).
 * Without an `onevent` (another socket.io), a `socket.use` middleware instead.
 */
function checkPackets(socket, conn, options) {
  const onevent = socket.onevent;
  if (typeof onevent !== 'function') {
    socket.use(packets(socket, conn, options));
    return;
  }
  const check = packetCheck(socket, conn, options);
  socket.onevent = function oneventChecked(packet) {
    let allowed;
    try {
      allowed = check(packet.data || []);
    } catch (err) {
      // The connection or the limiter is closed: nothing to check against.
      process.emitWarning(`ratethrottle/socketio: ${err.message}`);
      return;
    }
    if (allowed) onevent.call(this, packet);
  };
}

/**
 * An `io.use` connection middleware. Options: clientId(socket) (default the
 * handshake address with IPv6 keyed by its /64; ipv6PrefixLength changes
 * the prefix), packets: false to skip the packet check,
 * packetSize(event, args), event (default 'rate_limited').
 * The lease is released on 'disconnect' or when the transport closes. A
 * socket whose transport closed while earlier middlewares ran is refused
 * without a lease. With `failOpen` and the table full, the engine allows
 * the connection untracked: it is accepted and its packets are not checked.
 * A socket that socket.io connects without running middlewares (a session
 * recovered with connectionStateRecovery's skipMiddlewares) is decided when
 * its namespace emits 'connect': denied, it gets the `event` with the denial
 * (`event: 'connect'`) and is disconnected.
 */
function middleware(limiter, options = {}) {
  const clientId = functionOption(options, 'clientId', 'socketio') || defaultClientId(options.ipv6PrefixLength);
  functionOption(options, 'packetSize', 'socketio');
  const decided = new WeakSet(); // sockets this middleware has seen
  const hooked = new WeakSet(); // namespaces watched for sockets that skip it

  /** Decides `socket`; on success takes the lease and checks its packets. Returns the refusal, or null. */
  const admit = (socket) => {
    decided.add(socket);
    if (socket.conn.readyState === 'closing' || socket.conn.readyState === 'closed') {
      // Its 'close' has fired or is under way: a lease taken now could never be released.
      return new Error('transport closed');
    }
    let d;
    try {
      d = limiter.connect(clientId(socket));
    } catch (err) {
      return err;
    }
    if (!d.allowed) {
      const err = new Error(d.reason);
      err.data = denialBody(d);
      return err;
    }
    const conn = d.connection;
    if (conn === null) return null;
    socket[kConnection] = conn;
    // The transport outlives the socket when namespaces share it (a
    // Manager's sockets): leaving one must not leave this listener behind.
    const release = () => {
      socket.off('disconnect', release);
      socket.conn.off('close', release);
      conn.close();
    };
    socket.once('disconnect', release);
    socket.conn.once('close', release);
    if (options.packets !== false) checkPackets(socket, conn, options);
    return null;
  };

  /** A socket connected without this middleware (a recovered session): decided now. */
  const skipped = (socket) => {
    if (decided.has(socket)) return;
    const err = admit(socket);
    if (err === null) return;
    if (err.data === undefined) process.emitWarning(`ratethrottle/socketio: ${err.message}`);
    else socket.emit(options.event || 'rate_limited', { ...err.data, event: 'connect' });
    socket.disconnect();
  };

  return (socket, next) => {
    const nsp = socket.nsp;
    if (nsp !== undefined && typeof nsp.prependListener === 'function' && !hooked.has(nsp)) {
      // First, before the application's 'connect' / 'connection' listeners.
      hooked.add(nsp);
      nsp.prependListener('connect', skipped);
    }
    const err = admit(socket);
    if (err === null) next();
    else next(err);
  };
}

/** The engine connection of a socket admitted by the middleware (undefined when untracked or not admitted). */
function connectionOf(socket) {
  return socket[kConnection];
}

module.exports = { middleware, packets, packetSize, connectionOf };
