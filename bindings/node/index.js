'use strict';
// ratethrottle for Node: the public classes over the N-API addon (src/lib.rs).
//
// This file translates: it checks argument types, turns data into byte
// counts (Buffer.byteLength semantics for strings, byteLength for binary
// data) and builds decision objects. Every decision comes from the engine.

const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const { isArrayBuffer, isSharedArrayBuffer, isUint8Array } = require('node:util').types;
const native = require('./lib/native.js');
const { clientKey } = require('./lib/client-key.js');

const REASONS = Object.freeze([...native.reasons]);
// The decision's reason lookup reads this unfrozen copy: in optimized code
// (Node 20's V8) an indexed read of a frozen array goes through the generic
// KeyedLoadIC (about 70 instructions per call, measured with callgrind),
// a plain array's is a bounds check and a load.
const REASON_NAMES = [...native.reasons];
const OPTION_NAMES = Object.freeze(Object.keys(native.presets.default));
const EXTRA_OPTIONS = ['sharedPath', 'violationPollMs'];
const DEFAULT_VIOLATION_POLL_MS = 1000;
const DRAIN_BATCH = 1024;
const MAX_TIMER_MS = 2 ** 31 - 1; // the longest interval setInterval honours
// Scratch slots the message path reads its arguments from (src/lib.rs).
const IN_LO = 8;
const IN_HI = 9;
const IN_SIZE = 10;
const IN_NOW = 11;
const kCore = Symbol('ratethrottle.core');
const kCreate = Symbol('ratethrottle.create');

// The process's open shared limiters' cores by their file ("dev:ino"),
// held weakly, so that a Connection of a closed one can still be closed
// through another one open on the same region: the engine closes a
// process's connections on a file only when its last handle there is freed.
const sharedCores = new Map();

function fileKey(path) {
  try {
    const st = fs.statSync(path, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return null; // then this limiter has no peers
  }
}

function addShared(core, path) {
  core.file = fileKey(path);
  if (core.file === null) return;
  let set = sharedCores.get(core.file);
  if (set === undefined) sharedCores.set(core.file, (set = new Set()));
  set.add(new WeakRef(core));
}

function removeShared(core) {
  const set = core.file === null ? undefined : sharedCores.get(core.file);
  if (set === undefined) return;
  for (const ref of set) {
    const c = ref.deref();
    if (c === undefined || c === core) set.delete(ref);
  }
  if (set.size === 0) sharedCores.delete(core.file);
}

/** Closes connection (lo, hi) of a closed shared limiter through an open one on the same file. */
function closeThroughPeer(file, lo, hi) {
  const set = file === null ? undefined : sharedCores.get(file);
  if (set === undefined) return false;
  for (const ref of set) {
    const c = ref.deref();
    if (c !== undefined && !c.closed) return c.h.disconnect(lo, hi);
  }
  return false;
}

function typeName(v) {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'object') return v.constructor && v.constructor.name ? `an instance of ${v.constructor.name}` : 'an object';
  if (typeof v === 'string') return `a string`;
  return `${typeof v} ${String(v)}${typeof v === 'bigint' ? 'n' : ''}`;
}

function typeError(message) {
  const e = new TypeError(message);
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

function rangeError(message) {
  const e = new RangeError(message);
  e.code = 'ERR_OUT_OF_RANGE';
  return e;
}

function closedError(what) {
  const e = new Error(`ratethrottle: the ${what} is closed`);
  e.code = 'ERR_RATETHROTTLE_CLOSED';
  return e;
}

/** A byte count or clock value: an integer from 0 to 2^53 - 1 (a non-number is a TypeError). */
function checkInteger(n, what) {
  if (typeof n !== 'number') throw typeError(`${what} must be a number; got ${typeName(n)}`);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw rangeError(`${what} must be an integer from 0 to 2^53 - 1 (Number.MAX_SAFE_INTEGER), got ${n}`);
  }
  return n;
}

/**
 * The size in bytes of a message: a byte count (number), a string (its UTF-8
 * length), or binary data (Buffer, ArrayBuffer, SharedArrayBuffer, any typed
 * array or DataView: its byteLength). A detached ArrayBuffer is refused.
 */
function byteSize(data) {
  if (typeof data === 'number') return checkInteger(data, 'message size');
  if (typeof data === 'string') return Buffer.byteLength(data, 'utf8');
  if (ArrayBuffer.isView(data)) {
    let n;
    try {
      n = data.byteLength;
    } catch {
      // V8 throws for a DataView whose buffer was detached or shrunk past it.
      throw typeError('message data is a DataView out of its ArrayBuffer (detached or shrunk)');
    }
    if (n === 0 && native.isDetached(data.buffer)) throw typeError('message data is a view of a detached ArrayBuffer');
    return n;
  }
  if (isArrayBuffer(data)) {
    const n = data.byteLength;
    if (n === 0 && native.isDetached(data)) throw typeError('message data is a detached ArrayBuffer');
    return n;
  }
  if (isSharedArrayBuffer(data)) return data.byteLength;
  throw typeError(
    'message data must be a byte count (number), a string, a Buffer, an ArrayBuffer, a typed array or a DataView; ' +
      `got ${typeName(data)}`,
  );
}

/** `violationPollMs`: a whole number of ms from 0 (no polling) to 2^31 - 1. */
function checkPollMs(ms) {
  if (typeof ms !== 'number') throw typeError(`violationPollMs must be a number; got ${typeName(ms)}`);
  if (!Number.isInteger(ms) || ms < 0 || ms > MAX_TIMER_MS) {
    throw rangeError(`violationPollMs must be an integer from 0 (no polling) to ${MAX_TIMER_MS}, got ${ms}`);
  }
}

function checkId(id, what) {
  // isUint8Array also holds for Buffers and for Uint8Arrays of other realms (vm contexts).
  if (typeof id === 'string' || isUint8Array(id)) return id;
  throw typeError(`${what} must be a string, a Buffer or a Uint8Array; got ${typeName(id)}`);
}

function checkOptions(options, allowExtra) {
  if (options === null || typeof options !== 'object') throw typeError(`options must be an object; got ${typeName(options)}`);
  for (const k of Object.keys(options)) {
    if (!OPTION_NAMES.includes(k) && !(allowExtra && EXTRA_OPTIONS.includes(k))) {
      throw typeError(`unknown option '${k}' (known: ${[...OPTION_NAMES, ...(allowExtra ? EXTRA_OPTIONS : [])].join(', ')})`);
    }
  }
}

/** The options' own properties, in an object that inherits nothing (for the native side's reads). */
function ownOptions(options) {
  return Object.assign(Object.create(null), options);
}

/** What a limiter's classes share: the native handle and the scratch. */
class Core {
  constructor(handle, emitter, pollMs) {
    this.h = handle;
    this.s = handle.scratch;
    this.file = null; // a shared region's file ("dev:ino"), see sharedCores
    this.checkMessage = handle.checkMessage;
    this.checkMessageAt = handle.checkMessageAt;
    this.emitter = emitter;
    this.closed = false;
    this.drainPending = false;
    this.timer = null;
    this.pollMs = pollMs;
    this.drain = () => {
      this.drainPending = false;
      this.drainNow();
    };
  }

  /** The decision the last native call wrote to the scratch. */
  decision() {
    const s = this.s;
    const code = s[0];
    if ((code & 255) !== 0) this.denied();
    return {
      allowed: code >= 256,
      reason: REASON_NAMES[code & 255],
      retryAfterMs: s[1],
      limit: s[2],
      remaining: s[3],
      current: s[4],
    };
  }

  /**
   * A denial (or dry-run would-be denial) was recorded: drain soon, when
   * someone listens. Unread records stay in the engine's bounded ring; when
   * it is full, new ones are dropped and counted (stats().violationsDropped).
   */
  denied() {
    if (!this.drainPending && this.emitter.listenerCount('violation') > 0) {
      this.drainPending = true;
      setImmediate(this.drain);
      this.startPolling();
    }
  }

  drainNow() {
    const all = this.take();
    this.emitAll(all);
    return all;
  }

  /** Reads every violation record waiting in the engine (none once closed). */
  take() {
    if (this.closed) return [];
    const all = [];
    for (;;) {
      const batch = this.h.drainViolations(DRAIN_BATCH);
      for (const v of batch) all.push(v);
      if (batch.length < DRAIN_BATCH) break;
    }
    return all;
  }

  /**
   * Emits each record as 'violation'. A listener that throws does not cost
   * the records after it: all are emitted, then the first error is thrown.
   */
  emitAll(records) {
    if (records.length === 0 || this.emitter.listenerCount('violation') === 0) return;
    let failed = null;
    for (const v of records) {
      try {
        this.emitter.emit('violation', v);
      } catch (err) {
        failed ??= { err };
      }
    }
    if (failed !== null) throw failed.err;
  }

  startPolling() {
    if (this.timer === null && !this.closed && this.pollMs > 0) {
      // The timer holds the core weakly: a limiter dropped without close()
      // is still collected (its engine memory freed), and the timer stops.
      const ref = new WeakRef(this);
      const timer = setInterval(() => {
        const core = ref.deref();
        if (core === undefined) clearInterval(timer);
        else if (core.emitter.listenerCount('violation') === 0) core.stopPolling();
        else core.drainNow();
      }, this.pollMs);
      timer.unref();
      this.timer = timer;
    }
  }

  stopPolling() {
    if (this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}

/**
 * One live connection of a client, returned by `limiter.connect()` when
 * allowed. Check each message with `checkMessage`; call `close()` when the
 * socket closes, however it closes.
 */
class Connection {
  #core;
  #lo;
  #hi;
  #closed = false;

  constructor(token, core, lo, hi) {
    if (token !== kCreate) throw new TypeError('Connection objects come from limiter.connect()');
    this.#core = core;
    this.#lo = lo;
    this.#hi = hi;
  }

  /** Checks one message: a byte count, a string, or binary data. */
  checkMessage(data) {
    if (this.#closed) throw closedError('connection');
    const size = typeof data === 'number' ? checkInteger(data, 'message size') : byteSize(data);
    const core = this.#core;
    const s = core.s;
    s[IN_LO] = this.#lo;
    s[IN_HI] = this.#hi;
    s[IN_SIZE] = size;
    core.checkMessage();
    return core.decision();
  }

  /** `checkMessage` with the caller's clock (ms; for tests and custom clocks). */
  checkMessageAt(data, nowMs) {
    if (this.#closed) throw closedError('connection');
    const size = byteSize(data);
    checkInteger(nowMs, 'nowMs');
    const core = this.#core;
    const s = core.s;
    s[IN_LO] = this.#lo;
    s[IN_HI] = this.#hi;
    s[IN_SIZE] = size;
    s[IN_NOW] = nowMs;
    core.checkMessageAt();
    return core.decision();
  }

  /** Frees the connection's concurrency slot. Idempotent; true when this call freed it. */
  close() {
    if (this.#closed) return false;
    this.#closed = true;
    const core = this.#core;
    // Its limiter closed: on a shared region another limiter of this
    // process still has open, the connection is still counted there.
    if (core.closed) return closeThroughPeer(core.file, this.#lo, this.#hi);
    return core.h.disconnect(this.#lo, this.#hi);
  }

  get closed() {
    return this.#closed;
  }

  /** The engine's handle as a decimal string (as in violation records' connectionId). */
  get id() {
    return ((BigInt(this.#hi) << 32n) | BigInt(this.#lo)).toString();
  }

  /** What the engine knows of this connection; null once closed. */
  info() {
    if (this.#closed) return null;
    return this.#core.h.connectionInfo(this.#lo, this.#hi);
  }

  [kCore]() {
    return this.#core;
  }
}

/**
 * A rate limiter: the engine's limits for connections, messages and keys.
 * Emits 'violation' for every denial (and dry-run would-be denial), read
 * from the engine's violation ring after the call that denied (batched with
 * setImmediate) and, while a listener is attached, every violationPollMs.
 */
class Limiter extends EventEmitter {
  #core;

  constructor(options = {}) {
    super();
    checkOptions(options, true);
    // Own properties only (as checkOptions checked them); the native side
    // would read inherited ones too, so the copy inherits from nothing (not
    // even Object.prototype).
    const own = ownOptions(options);
    const { sharedPath, violationPollMs = DEFAULT_VIOLATION_POLL_MS } = own;
    if (sharedPath !== undefined && typeof sharedPath !== 'string') {
      throw typeError(`sharedPath must be a string; got ${typeName(sharedPath)}`);
    }
    checkPollMs(violationPollMs);
    const core = new Core(native.create(own, sharedPath), this, violationPollMs);
    if (sharedPath !== undefined) addShared(core, sharedPath);
    this.#core = core;
    this.on('newListener', (event) => {
      if (event === 'violation') core.startPolling();
    });
    this.on('removeListener', (event) => {
      if (event === 'violation' && this.listenerCount('violation') === 0) core.stopPolling();
    });
  }

  /** Creates, or attaches to, a region in the file at `path` shared by processes. */
  static shared(path, options = {}) {
    return new Limiter({ ...options, sharedPath: path });
  }

  /** True when this limiter attached to a region another process created. */
  get attached() {
    return this.#core.h.attached;
  }

  get closed() {
    return this.#core.closed;
  }

  #handle() {
    const core = this.#core;
    if (core.closed) throw closedError('limiter');
    return core;
  }

  #connected(core) {
    const d = core.decision();
    const s = core.s;
    d.connection = s[5] !== 0 || s[6] !== 0 ? new Connection(kCreate, core, s[5], s[6]) : null;
    return d;
  }

  /** Decides and registers a connection of `clientId` in one atomic step. */
  connect(clientId) {
    const core = this.#handle();
    core.h.connect(checkId(clientId, 'clientId'));
    return this.#connected(core);
  }

  /** `connect` with the caller's clock (ms). */
  connectAt(clientId, nowMs) {
    const core = this.#handle();
    core.h.connect(checkId(clientId, 'clientId'), checkInteger(nowMs, 'nowMs'));
    return this.#connected(core);
  }

  /** Checks one message against a key's (room's, user's) aggregate limits. */
  checkKey(key, data) {
    const core = this.#handle();
    core.h.checkKey(checkId(key, 'key'), byteSize(data));
    return core.decision();
  }

  /** `checkKey` with the caller's clock (ms). */
  checkKeyAt(key, data, nowMs) {
    const core = this.#handle();
    core.h.checkKey(checkId(key, 'key'), byteSize(data), checkInteger(nowMs, 'nowMs'));
    return core.decision();
  }

  /** Live connections of a client. */
  clientConnections(clientId) {
    return this.#handle().h.clientConnections(checkId(clientId, 'clientId'));
  }

  /** What the engine knows of a live connection of this limiter; null when closed. */
  connectionInfo(connection) {
    const core = this.#handle();
    if (!(connection instanceof Connection) || connection[kCore]() !== core) {
      throw typeError('connectionInfo expects a Connection of this limiter');
    }
    return connection.info();
  }

  /** Statistics (scans every slot: do not call per request). */
  stats() {
    return this.#handle().h.stats();
  }

  /** The statistics in the Prometheus text format. */
  prometheus() {
    return this.#handle().h.prometheus();
  }

  /** The limits in force (in shared mode: the region's). */
  limits() {
    return this.#handle().h.limits();
  }

  /** Changes the given limits at run time (not capacities), in every process sharing the region. */
  updateLimits(options) {
    checkOptions(options, false);
    this.#handle().h.updateLimits(ownOptions(options));
  }

  /** Frees connections of processes that died; returns how many. */
  reapDead() {
    return this.#handle().h.reapDead();
  }

  /** Reads the violation records waiting now (also emitting them as 'violation'). */
  drainViolations() {
    return this.#handle().drainNow();
  }

  /** Frees the limiter (unmaps shared memory). Idempotent; later calls throw. */
  close() {
    const core = this.#core;
    if (core.closed) return;
    // Closed first, the records read before: a listener that throws while
    // they are emitted cannot leave the limiter open or lose a record.
    const last = core.take();
    core.stopPolling();
    core.closed = true;
    removeShared(core);
    core.h.close();
    core.emitAll(last);
  }

  destroy() {
    this.close();
  }
}

const presets = Object.freeze({
  default: Object.freeze({ ...native.presets.default }),
  strict: Object.freeze({ ...native.presets.strict }),
  moderate: Object.freeze({ ...native.presets.moderate }),
  generous: Object.freeze({ ...native.presets.generous }),
});

// Every value below is a plain identifier: Node finds the named exports of
// a CommonJS module for ESM `import { x }` by scanning this literal, and the
// scan stops at the first value that is not one (such as `presets.default`).
const defaults = presets.default;
const version = native.version;
const atomicsLockFree = native.atomicsLockFree;
const clockResolutionMs = native.clockResolutionMs;
/** The empty N-API call, for benchmarks (does nothing). */
const nativeNoop = native.noop;

module.exports = {
  Limiter,
  Connection,
  presets,
  defaults,
  REASONS,
  version,
  atomicsLockFree,
  clockResolutionMs,
  byteSize,
  clientKey,
  nativeNoop,
};
