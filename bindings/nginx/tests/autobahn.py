"""TEST-PLAN W10: the Autobahn testsuite through the module.

The Autobahn fuzzing client (wstest -m fuzzingclient) runs every case
except 9.* (performance: up to 16 MB messages), 12.* and 13.* (compression:
the backend has none) twice: against the echo backend (backend.py) directly,
and through a real nginx (2 workers) whose location has the module on with
limits far above what the cases send (and ratethrottle_control_frames on,
so that pings and pongs go through the engine too). The module must not
make any case fail: the verdict and the close verdict of each
case through nginx pass (OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED)
wherever the backend's own pass. A case that fails only through the module
is printed with its description and the exit status is 1; verdicts that
differ but still pass are printed too.

    python autobahn.py --module path/to/ngx_http_ratethrottle_module.so \
                       --wstest path/to/wstest

wstest is the testsuite's command (autobahntestsuite, Python 2 code: run it
with a Python 2.7). Every wait is bounded; nginx and the backend are stopped
at the end, also on failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from test_nginx import Env

CONF = """
worker_processes 2;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
load_module {module};

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    # limits far above what any case sends: only conformance is tested
    ratethrottle_zone $binary_remote_addr zone=ab:1m connections=1000000
                      concurrent=1000 messages=262143 bytes=63m
                      max_message_size=64m;

    server {{
        listen 127.0.0.1:{port} reuseport;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 60s;

        location / {{
            ratethrottle zone=ab;
            ratethrottle_control_frames on;
            proxy_pass http://127.0.0.1:{bport};
        }}
    }}
}}
"""

EXCLUDED = ["9.*", "12.*", "13.*"]
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}


class AutobahnEnv(Env):
    """test_nginx's nginx and backend, with this file's nginx.conf."""

    def write_conf(self, text=None, name="nginx.conf", **_):
        return super().write_conf(text=CONF.format(
            tmp=self.tmp, module=self.module, port=self.port,
            bport=self.bport), name=name)


def run_wstest(wstest, tmp, servers):
    spec = {
        "outdir": os.path.join(tmp, "reports"),
        "servers": servers,
        "cases": ["*"],
        "exclude-cases": EXCLUDED,
        "exclude-agent-cases": {},
    }
    path = os.path.join(tmp, "fuzzingclient.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    with open(os.path.join(tmp, "wstest.log"), "w") as log:
        subprocess.run([wstest, "-m", "fuzzingclient", "-s", path],
                       cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=900, check=True)
    with open(os.path.join(tmp, "reports", "index.json")) as f:
        return json.load(f)


def description(tmp, entry):
    try:
        with open(os.path.join(tmp, "reports", entry["reportfile"])) as f:
            r = json.load(f)
        return f'{r.get("description", "")} (expected {r.get("expected")}, ' \
               f'got {r.get("received")})'
    except (OSError, KeyError, ValueError):
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--wstest", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rt-autobahn-")
    env = AutobahnEnv(os.path.abspath(args.module), tmp)
    try:
        env.start_backend()
        env.start_nginx()
        index = run_wstest(args.wstest, tmp, [
            {"agent": "backend", "url": f"ws://127.0.0.1:{env.bport}/echo"},
            {"agent": "nginx", "url": f"ws://127.0.0.1:{env.port}/echo"},
        ])
    finally:
        env.stop()

    direct, proxied = index["backend"], index["nginx"]
    worse, other = [], []
    for case in sorted(direct, key=lambda c: [int(x) for x in c.split(".")]):
        d, p = direct[case], proxied.get(case)
        if p is None:
            worse.append(f"{case}: not run through nginx")
            continue
        got = (p["behavior"], p["behaviorClose"])
        own = (d["behavior"], d["behaviorClose"])
        if got == own:
            continue
        line = (f"{case}: backend {own[0]}/{own[1]}, through the module "
                f"{got[0]}/{got[1]}: " + description(tmp, p))
        # The module made a case fail that the backend alone passes.
        if any(g not in ACCEPTED and o in ACCEPTED for g, o in zip(got, own)):
            worse.append(line)
        else:
            other.append(line)
    counts = {}
    for p in proxied.values():
        counts[p["behavior"]] = counts.get(p["behavior"], 0) + 1
    print(f"autobahn: {len(proxied)} cases through the module: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    failed_direct = [c for c, d in direct.items()
                     if d["behavior"] not in ACCEPTED]
    if failed_direct:
        print("autobahn: the backend alone fails "
              + ", ".join(sorted(failed_direct)) + " (not the module's)")
    # Accepted verdicts that differ from the backend's (README: "Autobahn").
    for line in other:
        print("differs, still passes: " + line)
    for line in worse:
        print("FAILS " + line)
    if worse:
        print(f"autobahn: {len(worse)} cases fail only through the module; "
              f"reports in {tmp}/reports")
        sys.exit(1)
    print("autobahn: no case fails through the module that passes without it")


if __name__ == "__main__":
    main()
