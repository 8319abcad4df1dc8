'use strict';
// Loopback servers and clients for the integration tests: ephemeral ports,
// bounded waits (generous: the machine is shared), everything closed at the end.

const http = require('node:http');
const path = require('node:path');
const { spawn } = require('node:child_process');

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

/**
 * Starts test/fixtures/idle-client.js (a real `kind` client, 'ws' or 'socketio',
 * in its own process); resolves once it is connected. Killed by the returned kill().
 */
async function childClient(kind, url) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'idle-client.js'), kind, url], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', kill); // even if the test runner dies mid-test
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${kind} client: no "open" in time`)), 20_000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('open\n')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`${kind} client exited (${code}) before connecting`));
    });
  }).catch((err) => {
    kill();
    throw err;
  });
  return { child, exited, kill };
}

module.exports = { until, next, httpServer, childClient };
