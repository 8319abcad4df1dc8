'use strict';
// node:cluster workers sharing one region in /dev/shm enforce one limit.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { Limiter } = require('..');

const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
const shmPath = (tag) => path.join(dir, `ratethrottle-node-test-${process.pid}-${tag}`);

test('cluster: 2 workers attach one region and enforce one limit; dead workers are reaped', () => {
  const p = shmPath('cluster');
  try {
    const r = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'cluster.js'), p], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `stdout: ${r.stdout}\nstderr: ${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop());
    assert.equal(out.createdByPrimary, true);
    assert.equal(out.connects, 5, 'concurrency limit 5 held across both workers');
    assert.equal(out.keys, 100, 'key limit 100 held across both workers');
    assert.equal(out.liveAfterReap, 0);
  } finally {
    fs.rmSync(p, { force: true });
  }
});

test('shared: attach sees the creator\'s state and limits; a mismatched size is refused', () => {
  const p = shmPath('attach');
  try {
    const a = Limiter.shared(p, { maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
    assert.equal(a.attached, false);
    const b = new Limiter({ sharedPath: p, maxConcurrentConnections: 9, maxClients: 64, maxConnections: 64 });
    assert.equal(b.attached, true);
    assert.equal(b.limits().maxConcurrentConnections, 1, "the region's limits apply");
    const c = a.connect('x').connection;
    assert.equal(b.connect('x').reason, 'too_many_connections');
    assert.equal(b.clientConnections('x'), 1);
    c.close();
    assert.equal(b.connect('x').allowed, true);
    b.updateLimits({ maxConcurrentConnections: 3 });
    assert.equal(a.limits().maxConcurrentConnections, 3, 'limit updates reach every attached limiter');
    assert.throws(() => Limiter.shared(p, { maxClients: 128, maxConnections: 64 }), /holds a region of \d+ bytes but these options need/);
    a.close();
    b.close();
    fs.writeFileSync(p, Buffer.alloc(fs.statSync(p).size)); // same size, not a region
    assert.throws(() => Limiter.shared(p, { maxClients: 64, maxConnections: 64 }), /cannot use the region/);
    assert.throws(() => Limiter.shared('/nonexistent-dir/x', {}), /cannot open/);
  } finally {
    fs.rmSync(p, { force: true });
  }
});

test('shared: a connection of a closed limiter is closed through another limiter of the process on the same file', () => {
  const p = shmPath('peerclose');
  try {
    const a = Limiter.shared(p, { maxConcurrentConnections: 1, maxClients: 64, maxConnections: 64 });
    const b = Limiter.shared(p, { maxClients: 64, maxConnections: 64 });
    const c = a.connect('z').connection;
    a.close();
    assert.equal(b.clientConnections('z'), 1, 'with a handle left, the engine keeps the connection');
    assert.equal(c.close(), true, 'closed through b');
    assert.equal(b.clientConnections('z'), 0);
    assert.equal(b.connect('z').allowed, true);
    assert.equal(c.close(), false, 'idempotent');
    assert.equal(b.clientConnections('z'), 1);
    b.close();
  } finally {
    fs.rmSync(p, { force: true });
  }
});

test("shared: a 'violation' listener sees denials made through another attached limiter (ring + poll)", async () => {
  const p = shmPath('violations');
  try {
    const a = Limiter.shared(p, { maxMessageSize: 10, maxClients: 64, maxConnections: 64, violationPollMs: 20 });
    const b = Limiter.shared(p, { maxMessageSize: 10, maxClients: 64, maxConnections: 64 });
    const seen = [];
    a.on('violation', (v) => seen.push(v));
    const c = b.connect('from-b').connection;
    assert.equal(c.checkMessage(11).reason, 'message_too_large');
    const end = Date.now() + 10_000;
    while (seen.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.equal(seen.length, 1);
    assert.equal(seen[0].clientId.toString(), 'from-b');
    assert.equal(seen[0].type, 'message_size');
    a.close();
    b.close();
  } finally {
    fs.rmSync(p, { force: true });
  }
});

test('shared: bad files and paths give errors naming the file, and are left as they were', () => {
  const created = [];
  const file = (tag, content) => {
    const p = shmPath(tag);
    created.push(p);
    if (content !== undefined) fs.writeFileSync(p, content);
    return p;
  };
  try {
    // A file that cannot be opened: the path, the failed step and the OS error.
    const missing = path.join(dir, `ratethrottle-node-test-${process.pid}-no-such-dir`, 'limits');
    assert.throws(
      () => Limiter.shared(missing, {}),
      (e) => e instanceof Error && e.message.includes(missing) && /cannot open/.test(e.message) && /No such file or directory/.test(e.message),
    );
    // Garbage, long and shorter than a region header: refused, not rewritten.
    for (const junk of [Buffer.from('not a region '.repeat(1000)), Buffer.from('short')]) {
      const p = file(`garbage-${junk.length}`, junk);
      assert.throws(
        () => Limiter.shared(p, { maxClients: 64, maxConnections: 64 }),
        (e) => e.message.includes(p) && /cannot use the region/.test(e.message) && /remove the file/.test(e.message),
      );
      assert.deepEqual(fs.readFileSync(p), junk, 'a refused file is left untouched');
    }
    // A NUL byte would cut the path short in C: refused, nothing created.
    const cut = file('nul');
    assert.throws(() => Limiter.shared(`${cut}\0tail`, {}), /NUL byte/);
    assert.equal(fs.existsSync(cut), false);
    // Invalid options are refused before the file is created.
    const bad = file('bad-options');
    assert.throws(() => Limiter.shared(bad, { windowMs: 0 }), RangeError);
    assert.equal(fs.existsSync(bad), false);
  } finally {
    for (const p of created) fs.rmSync(p, { force: true });
  }
});
