#!/usr/bin/env bash
# TEST-PLAN W10: the Autobahn testsuite through the module (autobahn.py).
#
#   bash tests/autobahn.sh MODULE.so PYTHON3
#
# PYTHON3 has websockets (test.sh's venv). autobahntestsuite is Python 2
# code: it runs with pyenv's Python 2.7 when the machine has one, installed
# once into ${CARGO_TARGET_DIR:-<repo>/target}/autobahn; without one the
# step is skipped with the reason (exit 0), as it is when that install is
# refused.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
SO="$1"
PY3="$2"
PY2=2.7.18
AB="$TARGET/autobahn"

if ! command -v pyenv >/dev/null \
    || ! PYENV_VERSION=$PY2 python -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
    echo "autobahn: skipped: no Python 2.7 (pyenv $PY2) for autobahntestsuite, which is Python 2 code"
    exit 0
fi

if [ ! -x "$AB/wstest" ]; then
    echo "autobahn: installing autobahntestsuite for Python $PY2 into $AB"
    for pkgs in "setuptools<45 wheel<0.38" "autobahntestsuite==25.10.1"; do
        # shellcheck disable=SC2086
        if ! PYENV_VERSION=$PY2 PYTHONPATH="$AB/lib/python2.7/site-packages" python -W ignore -m pip install -q \
            --disable-pip-version-check --no-warn-script-location --prefix "$AB" $pkgs; then
            echo "autobahn: skipped: pip could not install $pkgs for Python $PY2 (see above)"
            exit 0
        fi
    done
    cat > "$AB/wstest.tmp" <<WSTEST
#!/bin/sh
PYENV_VERSION=$PY2 exec python -c "import site, sys; site.addsitedir('$AB/lib/python2.7/site-packages'); sys.argv = ['wstest'] + sys.argv[1:]; from autobahntestsuite.wstest import run; run()" "\$@"
WSTEST
    chmod +x "$AB/wstest.tmp"
    "$AB/wstest.tmp" --autobahnversion >/dev/null
    mv "$AB/wstest.tmp" "$AB/wstest"
fi

cd "$HERE"
timeout 900 "$PY3" autobahn.py --module "$SO" --wstest "$AB/wstest"
