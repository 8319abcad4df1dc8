'use strict';
// The README's examples run and print what the README says.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const run = (file, args = []) =>
  spawnSync(process.execPath, [path.join(__dirname, '..', 'examples', file), ...args], {
    encoding: 'utf8',
    timeout: 90_000,
  });

test('examples/quickstart.js prints the documented output', () => {
  const r = run('quickstart.js');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(
    r.stdout,
    [
      'connect: allowed',
      'message 1: allowed',
      'message 2: allowed',
      'message 3: rate_limit_exceeded, retry after 1490 ms',
      'live connections: 0',
      '',
    ].join('\n'),
  );
});

test('examples/chat.js --selftest: honest, flood, oversize, 429 and socket.io denials', () => {
  const r = run('chat.js', ['--selftest']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /selftest: ok/);
});
