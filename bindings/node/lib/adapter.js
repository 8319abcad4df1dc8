'use strict';
// What the ws and socket.io adapters share.

const { byteSize } = require('../index.js');

/** Retry-After in whole seconds (rounded up); null when the request can never pass. */
function retryAfterSeconds(ms) {
  return Number.isFinite(ms) ? Math.ceil(ms / 1000) : null;
}

/** The body the adapters send with a denial (the seed's field names). */
function denialBody(d) {
  return {
    reason: d.reason,
    retry_after: retryAfterSeconds(d.retryAfterMs),
    retry_after_ms: Number.isFinite(d.retryAfterMs) ? d.retryAfterMs : null,
    limit: d.limit,
  };
}

const MAX_DEPTH = 32;

/**
 * Bytes of an application value, as sent by socket.io: strings by UTF-8
 * length, binary data by byteLength, numbers and booleans by their text,
 * arrays and objects by their parts plus their keys. An estimate of the
 * payload, not of the wire frame (no JSON punctuation, no framing).
 */
function valueSize(v, depth = 0) {
  if (v === null || v === undefined) return 4;
  switch (typeof v) {
    case 'string':
      return Buffer.byteLength(v, 'utf8');
    case 'number':
    case 'boolean':
    case 'bigint':
      return String(v).length;
    case 'function':
    case 'symbol':
      return 0;
    default:
      break;
  }
  if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return byteSize(v);
  if (depth >= MAX_DEPTH) return 0;
  let n = 0;
  if (Array.isArray(v)) {
    for (const x of v) n += valueSize(x, depth + 1);
    return n;
  }
  for (const k of Object.keys(v)) n += Buffer.byteLength(k, 'utf8') + valueSize(v[k], depth + 1);
  return n;
}

/**
 * `options[name]` when it is a function or undefined; anything else is a
 * TypeError when the adapter is set up (it would fail at every request).
 */
function functionOption(options, name, adapter) {
  const v = options[name];
  if (v !== undefined && typeof v !== 'function') {
    throw new TypeError(`ratethrottle/${adapter}: ${name} must be a function, got ${v === null ? 'null' : typeof v}`);
  }
  return v;
}

module.exports = { retryAfterSeconds, denialBody, valueSize, functionOption };
