'use strict';
// The README's quick start (run by the tests; its output is checked).
const { Limiter } = require('ratethrottle');

const limiter = new Limiter({ windowMs: 1000, messagesPerWindow: 2 });

// On an upgrade request: decide and register in one step.
const { allowed, reason, connection } = limiter.connectAt('203.0.113.7', 0);
console.log(`connect: ${allowed ? 'allowed' : reason}`);

// On every message: a byte count, a string or binary data. (The *At forms
// take a clock in ms, here fixed for a reproducible output; use
// connect / checkMessage in a server.)
for (let i = 1; i <= 3; i++) {
  const d = connection.checkMessageAt(Buffer.alloc(100), 10);
  console.log(`message ${i}: ${d.allowed ? 'allowed' : `${d.reason}, retry after ${d.retryAfterMs} ms`}`);
}

// When the socket closes, however it closes.
connection.close();
console.log(`live connections: ${limiter.stats().activeConnections}`);
limiter.close();
