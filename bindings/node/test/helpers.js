'use strict';
// Loopback servers and clients for the integration tests: ephemeral ports,
// bounded waits (generous: the machine is shared), everything closed at the end.

const http = require('node:http');

/** Resolves when `cond()` holds; rejects after `ms` (a bound, not a timing assertion). */
async function until(cond, what, ms = 10_000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A promise for `emitter`'s next `event`, rejected after `ms`. */
function next(emitter, event, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for '${event}'`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
}

/** An HTTP server on 127.0.0.1 and an ephemeral port. */
async function httpServer(handler) {
  const server = http.createServer(handler || ((req, res) => res.end('ok')));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const close = () =>
    new Promise((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return { server, port: server.address().port, close };
}

module.exports = { until, next, httpServer };
