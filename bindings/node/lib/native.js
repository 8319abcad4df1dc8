'use strict';
// Loads the platform's build of the N-API addon from native/
// (ratethrottle.<platform>-<arch>[-<libc>].node, written by `npm run build`).

const fs = require('node:fs');
const path = require('node:path');

const dir = path.join(__dirname, '..', 'native');

function libc() {
  if (process.platform !== 'linux') return '';
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null;
  return report && report.header && report.header.glibcVersionRuntime ? '-gnu' : '-musl';
}

function load() {
  const prefix = `ratethrottle.${process.platform}-${process.arch}`;
  const wanted = `${prefix}${libc()}.node`;
  let files = [];
  try {
    files = fs.readdirSync(dir).filter((f) => f.startsWith(prefix) && f.endsWith('.node'));
  } catch {
    // no native/ yet: reported below
  }
  const file = files.includes(wanted) ? wanted : files[0];
  if (!file) {
    throw new Error(
      `ratethrottle: the native addon is not built for ${process.platform}-${process.arch} ` +
        `(looked for ${wanted} in ${dir}). Run \`npm run build\` in ${path.dirname(dir)} (needs Rust and cargo).`,
    );
  }
  return require(path.join(dir, file));
}

module.exports = load();
