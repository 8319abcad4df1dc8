'use strict';
// `npm install` / `npm ci` in this folder builds the addon (release).
// With @napi-rs/cli present (a devDependency) it runs `napi build`; without
// it (installed as a dependency of another package) it runs cargo itself and
// copies the library to native/. CARGO_TARGET_DIR is honoured; when unset,
// inside the ratethrottle repository the build goes to <repo>/target/node,
// elsewhere to ./target.

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = path.join(__dirname, '..');
const repoRoot = path.join(here, '..', '..');

function targetDir() {
  if (process.env.CARGO_TARGET_DIR) return path.resolve(process.env.CARGO_TARGET_DIR);
  const inRepo = fs.existsSync(path.join(repoRoot, 'Cargo.toml')) && fs.existsSync(path.join(repoRoot, 'src', 'lib.rs'));
  return inRepo ? path.join(repoRoot, 'target', 'node') : path.join(here, 'target');
}

function run(cmd, args, env) {
  console.log(`ratethrottle: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: here, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.error) {
    console.error(`ratethrottle: cannot run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

if (process.env.RATETHROTTLE_SKIP_BUILD === '1') {
  console.log('ratethrottle: RATETHROTTLE_SKIP_BUILD=1, not building the addon');
  process.exit(0);
}

const target = targetDir();
let cli = null;
try {
  cli = require.resolve('@napi-rs/cli/package.json', { paths: [here] });
} catch {
  cli = null;
}

if (cli) {
  run(process.execPath, [path.join(here, 'node_modules', '.bin', 'napi'), 'build', '--platform', '--release', '--no-js', '--output-dir', 'native'], {
    CARGO_TARGET_DIR: target,
  });
} else {
  run('cargo', ['build', '--release', '--lib'], { CARGO_TARGET_DIR: target });
  const triple = `${process.platform}-${process.arch}${process.platform === 'linux' ? '-gnu' : ''}`;
  const lib = process.platform === 'darwin' ? 'libratethrottle_node.dylib' : 'libratethrottle_node.so';
  fs.mkdirSync(path.join(here, 'native'), { recursive: true });
  fs.copyFileSync(path.join(target, 'release', lib), path.join(here, 'native', `ratethrottle.${triple}.node`));
}
