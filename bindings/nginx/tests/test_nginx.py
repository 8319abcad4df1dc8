"""End-to-end tests of ngx_http_ratethrottle_module.

A real nginx (Debian's, 2 workers, master process) loads the module, listens
on 127.0.0.1 and proxies to a real WebSocket echo backend (backend.py); the
clients are Python `websockets` and a raw-socket client for hand-made frames.

    python test_nginx.py --module path/to/ngx_http_ratethrottle_module.so

Every wait is bounded; nginx and the backend are stopped at the end, also on
failure. Exit status 0 only when every test passed.
"""

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

HERE = os.path.dirname(os.path.abspath(__file__))

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
    log_format rt '$uri $status "$ratethrottle_reason" '
                  '"$ratethrottle_retry_after" $http_x_client';
    access_log {tmp}/access.log rt;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    # one zone per scenario; the key is a request header, so that each
    # scenario's client ids are its own
    ratethrottle_zone $http_x_client zone=spam:1m connections=5 window=60s;
    ratethrottle_zone $http_x_client zone=conc:1m concurrent=10
                      connections=100000;
    ratethrottle_zone $http_x_client zone=msg:1m messages=20
                      max_message_size=1k connections=100000 concurrent=1000;
    ratethrottle_zone $http_x_client zone=bw:1m bytes=4k messages=1000
                      connections=100000 concurrent=1000;
    ratethrottle_zone $http_x_client zone=dry:1m connections=2 messages=5
                      max_message_size=1k concurrent=1000;
    ratethrottle_zone {rl_key} zone=rl:1m connections={rl_conns} window=1h
                      concurrent=1000;
    ratethrottle_zone $http_x_client zone=kill:1m concurrent=2
                      connections=100000;
    ratethrottle_zone $http_x_client zone=zdry:1m connections=1 dry_run;
    ratethrottle_zone $http_x_client zone=agg:1m client_messages=5
                      messages=1000 clients=100 max_connections=200;
    ratethrottle_zone $http_x_client zone=idle:1m concurrent=1
                      connections=100000;
    ratethrottle_zone $http_x_client zone=tunnel:1m messages=2
                      max_message_size=16 connections=100000;
    ratethrottle_zone $http_x_client zone=inh:1m connections=1
                      concurrent=1000;

    upstream backend {{
        server 127.0.0.1:{bport};
    }}

    server {{
        listen 127.0.0.1:{port} reuseport;

        add_header X-Worker $pid always;
        add_header X-RT-Reason $ratethrottle_reason always;
        add_header X-RT-Retry-After $ratethrottle_retry_after always;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 120s;

        location /spam {{ ratethrottle zone=spam; proxy_pass http://backend; }}
        location /conc {{ ratethrottle zone=conc; proxy_pass http://backend; }}
        location /msg  {{ ratethrottle zone=msg;  proxy_pass http://backend; }}
        location /ping {{
            ratethrottle zone=msg;
            ratethrottle_control_frames on;
            proxy_pass http://backend;
        }}
        location /bw   {{ ratethrottle zone=bw;   proxy_pass http://backend; }}
        location /rl   {{ ratethrottle zone=rl;   proxy_pass http://backend; }}
        location /kill {{ ratethrottle zone=kill; proxy_pass http://backend; }}
        location /zdry {{ ratethrottle zone=zdry; proxy_pass http://backend; }}
        location /agg  {{ ratethrottle zone=agg;  proxy_pass http://backend; }}
        # half-open clients (W7): nginx's own timeouts end a tunnel in which
        # neither side sends; /idlelong keeps the server's 120 s
        location /idle {{
            ratethrottle zone=idle;
            proxy_read_timeout {idle};
            proxy_send_timeout {idle};
            proxy_pass http://backend;
        }}
        location /idlelong {{ ratethrottle zone=idle; proxy_pass http://backend; }}
        location /dry {{
            ratethrottle zone=dry;
            ratethrottle_dry_run on;
            proxy_pass http://backend;
        }}
        location /code {{
            ratethrottle zone=spam;
            ratethrottle_status_code 503;
            ratethrottle_log_level warn;
            proxy_pass http://backend;
        }}
        location /codep {{
            ratethrottle zone=spam status=418;
            proxy_pass http://backend;
        }}
        location /off {{
            ratethrottle off;
            proxy_pass http://backend;
        }}
        # an upgrade to another protocol than WebSocket (a raw TCP tunnel)
        location /tunnel {{
            ratethrottle zone=tunnel;
            proxy_pass http://127.0.0.1:{tport};
        }}
        # a WebSocket upstream that records the bytes it gets
        location /rec {{
            ratethrottle zone=tunnel;
            proxy_pass http://127.0.0.1:{tport};
        }}

        # the status= and dry_run parameters of an outer "ratethrottle"
        # do not reach a level with its own "ratethrottle zone=..."
        location /inh {{
            ratethrottle zone=spam status=418 dry_run;
            proxy_pass http://backend;
            location /inh/own {{
                ratethrottle zone=inh;
                proxy_pass http://backend;
            }}
        }}

        location = /rt-status/conc {{ ratethrottle_status zone=conc; }}
        location = /rt-status/spam {{ ratethrottle_status zone=spam; }}
        location = /rt-status/msg  {{ ratethrottle_status zone=msg; }}
        location = /rt-status/bw   {{ ratethrottle_status zone=bw; }}
        location = /rt-status/dry  {{ ratethrottle_status zone=dry; }}
        location = /rt-status/rl   {{ ratethrottle_status zone=rl; }}
        location = /rt-status/kill {{ ratethrottle_status zone=kill; }}
        location = /rt-status/zdry {{ ratethrottle_status zone=zdry; }}
        location = /rt-status/agg  {{ ratethrottle_status zone=agg; }}
        location = /rt-status/idle {{ ratethrottle_status zone=idle; }}
        location = /rt-status/tunnel {{ ratethrottle_status zone=tunnel; }}
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """The nginx master and the backend, started and stopped by the tests."""

    def __init__(self, module, tmp):
        self.module = module
        self.tmp = tmp
        self.port = free_port()
        self.master = None
        self.backend = None
        self.bport = None
        self.opened = []
        self.raw = []
        self.valgrind = False
        self.idle = "1s"
        self.skipped = []
        self.tunnel = None
        self.tport = None

    # --- processes -------------------------------------------------------

    def start_backend(self):
        self.backend = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "backend.py")],
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.tmp, "backend.log"), "w"),
            text=True,
        )
        line = self.backend.stdout.readline()
        m = re.match(r"PORT (\d+)", line or "")
        if not m:
            raise RuntimeError(f"backend did not start: {line!r}")
        self.bport = int(m.group(1))

    def start_tunnel(self):
        """A raw upstream in a thread: it answers every request with a 101
        naming the protocol the client asked for, then echoes a raw TCP
        tunnel ("Upgrade: tcp", as Docker's attach API does) or, for a
        WebSocket, records the bytes it gets (self.tunnel_got[X-Client])."""
        self.tunnel = socket.create_server(("127.0.0.1", 0))
        self.tport = self.tunnel.getsockname()[1]
        self.tunnel_got = {}

        def serve(c):
            with c:
                c.settimeout(60)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        return
                    buf += d
                head, got = buf.split(b"\r\n\r\n", 1)
                hdrs = dict(line.split(b":", 1) for line in
                            head.split(b"\r\n")[1:] if b":" in line)
                hdrs = {k.strip().lower(): v.strip() for k, v in hdrs.items()}
                proto = hdrs.get(b"upgrade", b"tcp")
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
                          + proto + b"\r\nConnection: Upgrade\r\n\r\n")
                echo = proto.lower() != b"websocket"
                if echo and got:
                    c.sendall(got)
                while True:
                    try:
                        d = c.recv(65536)
                    except OSError:
                        d = b""
                    if not d:
                        break
                    if echo:
                        c.sendall(d)
                    else:
                        got += d
                self.tunnel_got[hdrs.get(b"x-client", b"").decode()] = got

        def accept():
            while True:
                try:
                    c, _ = self.tunnel.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(c,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def write_conf(self, text=None, name="nginx.conf", rl_conns=3,
                   rl_key="$http_x_client"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text if text is not None else CONF.format(
                tmp=self.tmp, module=self.module, port=self.port,
                bport=self.bport, rl_conns=rl_conns, rl_key=rl_key,
                idle=self.idle, tport=self.tport))
        return path

    def access_log(self):
        try:
            with open(os.path.join(self.tmp, "access.log"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def nginx_args(self, conf, valgrind=False):
        pre = []
        if valgrind:
            pre = ["valgrind", "--quiet", "--error-limit=no",
                   "--log-file=" + os.path.join(self.tmp, "vg.%p.log")]
        return pre + ["nginx", "-p", self.tmp + "/", "-c", conf,
                      "-e", os.path.join(self.tmp, "error.log")]

    def start_nginx(self):
        conf = self.write_conf()
        t = subprocess.run(self.nginx_args(conf) + ["-t"], capture_output=True,
                           text=True, timeout=60)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + t.stderr)
        self.master = subprocess.Popen(self.nginx_args(conf, self.valgrind),
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        deadline = time.time() + (120 if self.valgrind else 20)
        while time.time() < deadline:
            if self.master.poll() is not None:
                raise RuntimeError("nginx exited at start:\n" + self.log())
            if len(self.workers()) == 2:
                try:
                    with socket.create_connection(("127.0.0.1", self.port),
                                                  timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("nginx did not start in 20 s")

    def stop(self):
        if self.master is not None and self.master.poll() is None:
            self.master.send_signal(signal.SIGTERM)
            try:
                self.master.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait(timeout=5)
        if self.tunnel is not None:
            self.tunnel.close()
        if self.backend is not None and self.backend.poll() is None:
            self.backend.terminate()
            try:
                self.backend.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.backend.kill()
                self.backend.wait(timeout=5)

    def children(self):
        """(pid, cmdline) of the master's children."""
        out = []
        mp = self.master.pid
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rfind(")") + 2:].split()[1])
                if ppid != mp:
                    continue
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode().strip()
                state = st[st.rfind(")") + 2:].split()[0]
                if state != "Z":
                    out.append((int(d), cmd))
            except (OSError, ValueError, IndexError):
                continue
        return out

    def workers(self):
        return sorted(p for p, cmd in self.children()
                      if cmd.endswith("worker process")
                      or (self.valgrind and "shutting" not in cmd))

    def log(self):
        try:
            with open(os.path.join(self.tmp, "error.log"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # --- clients ---------------------------------------------------------

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def get(self, path, client=None):
        """(status, headers, body) of a plain GET."""
        req = urllib.request.Request(self.url(path))
        if client is not None:
            req.add_header("X-Client", client)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def status(self, zone):
        code, _, body = self.get(f"/rt-status/{zone}")
        if code != 200:
            raise AssertionError(f"status of {zone}: HTTP {code}")
        return json.loads(body)

    async def ws(self, path, client, **kw):
        ws = await connect(self.ws_url(path),
                           additional_headers={"X-Client": client},
                           compression=None, open_timeout=10, close_timeout=5,
                           ping_interval=None, max_size=None, **kw)
        self.opened.append(ws)
        return ws


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


async def wait_for(pred, what, timeout=20.0, step=0.1):
    """Polls an async or plain predicate until true (bounded)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def try_ws(env, path, client):
    """Opens a WebSocket; returns (ws, None) or (None, InvalidStatus)."""
    try:
        ws = await env.ws(path, client)
        return ws, None
    except InvalidStatus as e:
        return None, e


async def close_all(conns):
    for ws in conns:
        try:
            await ws.close()
        except Exception:  # noqa: BLE001
            pass


async def expect_close(ws, code, timeout=10.0):
    """Reads until the server closes; asserts the close code it sent."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as e:
        rcvd = e.rcvd.code if e.rcvd is not None else None
        check(rcvd == code, f"expected close code {code}, got {rcvd} ({e})")
        return
    raise AssertionError("connection not closed")


# --- raw frames ----------------------------------------------------------

def frame(opcode, payload, fin=True, mask=True, length_override=None):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


class RawWS:
    """A raw WebSocket client: exact bytes out, frames in."""

    def __init__(self, env, path, client, preload=b""):
        self.sock = socket.create_connection(("127.0.0.1", env.port),
                                             timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"X-Client: {client}\r\n\r\n").encode()
        # preload: frames sent in the same write as the request, before the
        # 101 can arrive (they wait in nginx's header buffer)
        self.sock.sendall(req + preload)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise AssertionError("no handshake response")
            self.buf += d
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ")[1])

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                return False
            self.buf += d
        return True

    def read_frame(self):
        """(opcode, payload) or None at EOF."""
        if not self._need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            if not self._need(4):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            if not self._need(10):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        if not self._need(off + n):
            return None
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def read_close(self):
        """The close code the server sent, skipping other frames."""
        while True:
            f = self.read_frame()
            if f is None:
                return None
            if f[0] == 8:
                return struct.unpack("!H", f[1][:2])[0] if len(f[1]) >= 2 \
                    else 1005

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- the tests -----------------------------------------------------------

async def t_config_errors(env):
    """Bad directives are refused at config test with a clear message."""
    cases = [
        ("ratethrottle_zone $remote_addr zone=a:1m messages=abc;",
         'invalid parameter "messages=abc"'),
        ("ratethrottle_zone $remote_addr zone=a:1m messages=99999999;",
         "messages_per_window"),
        ("ratethrottle_zone $remote_addr zone=a:1m window=0;",
         'invalid parameter "window=0"'),
        ("ratethrottle_zone $remote_addr zone=a;", "invalid zone size"),
        ("ratethrottle_zone $remote_addr connections=1;",
         'must have "zone" parameter'),
        ("ratethrottle_zone $remote_addr zone=a:1m clients=10;",
         "must be given together"),
        ("ratethrottle_zone $remote_addr zone=a:16k clients=100000 "
         "max_connections=100000;", "too small"),
    ]
    base = ("load_module {m};\nerror_log {t}/cfg.log;\npid {t}/cfg.pid;\n"
            "events {{}}\nhttp {{\n{z}\nserver {{ listen 127.0.0.1:{p}; "
            "location / {{ ratethrottle zone=a; return 204; }} }}\n}}\n")
    for zone_line, expect in cases:
        conf = env.write_conf(base.format(m=env.module, t=env.tmp,
                                          z=zone_line, p=free_port()),
                              name="check.conf")
        r = subprocess.run(env.nginx_args(conf) + ["-t"], capture_output=True,
                           text=True, timeout=60)
        check(r.returncode != 0, f"nginx -t accepted: {zone_line}")
        check(expect in r.stderr,
              f"{zone_line}: expected {expect!r} in:\n{r.stderr}")
    # and a correct one passes
    conf = env.write_conf(base.format(
        m=env.module, t=env.tmp, p=free_port(),
        z="ratethrottle_zone $remote_addr zone=a:1m messages=10 bytes=1m "
          "max_message_size=64k window=10s client_messages=100 "
          "client_bytes=10m fail_open;"), name="check.conf")
    r = subprocess.run(env.nginx_args(conf) + ["-t"], capture_output=True,
                       text=True, timeout=60)
    check(r.returncode == 0, "nginx -t refused a valid config:\n" + r.stderr)


async def t_connection_spam(env):
    """Connection spam gets 429 with Retry-After; other clients pass."""
    for i in range(5):
        code, h, _ = env.get("/spam/x", client="spammer")
        check(code == 200, f"request {i + 1} of 5 got {code}")
    code, h, _ = env.get("/spam/x", client="spammer")
    check(code == 429, f"6th request got {code}, want 429")
    ra = h.get("Retry-After")
    # sliding window: at most the rest of this window plus W/L of the next
    # (the previous window's 5 must decay to 4): 60 + 12 s
    check(ra is not None and ra.isdigit() and 1 <= int(ra) <= 72,
          f"Retry-After {ra!r}")
    check(h.get("X-RT-Reason") == "connection_rate_exceeded",
          f"$ratethrottle_reason = {h.get('X-RT-Reason')!r}")
    check(h.get("X-RT-Retry-After") == ra,
          f"$ratethrottle_retry_after = {h.get('X-RT-Retry-After')!r}")
    # WebSocket upgrades are refused the same way
    ws, err = await try_ws(env, "/spam/ws", "spammer")
    check(ws is None and err.response.status_code == 429,
          "upgrade of a spamming client was not refused with 429")
    check(err.response.headers.get("Retry-After", "").isdigit(),
          "no Retry-After on the refused upgrade")
    # another client is not affected; status code and no-key rules
    code, _, _ = env.get("/spam/x", client="honest")
    check(code == 200, f"another client got {code}")
    code, _, _ = env.get("/spam/x")  # no X-Client: empty key, not limited
    check(code == 200, f"empty key got {code}")
    for _ in range(6):
        code, h, _ = env.get("/code/x", client="code-client")
    check(code == 503, f"ratethrottle_status_code 503: got {code}")
    for _ in range(6):
        code, h, _ = env.get("/codep/x", client="codep-client")
    check(code == 418, f"ratethrottle zone=spam status=418: got {code}")
    check(re.search(r"\[warn\].*ratethrottle: connection denied.*/code/x",
                    env.log()) is not None,
          "ratethrottle_log_level warn not used")
    code, _, _ = env.get("/off/x", client="spammer")
    check(code == 200, f"ratethrottle off: got {code}")
    st = env.status("spam")
    check(st["denied"]["connection_rate_exceeded"] >= 3,
          f"status denied counts: {st['denied']}")
    # plain requests hold a slot only while they run
    await wait_for(lambda: env.status("spam")["active_connections"] == 0,
                   "plain requests to release their slots")


async def t_concurrency_across_workers(env):
    """concurrent=10 holds over both workers; slots free on client close and
    on upstream drop."""
    for attempt in range(3):
        conns = []
        for _ in range(10):
            ws, err = await try_ws(env, "/conc/ws", "conc")
            check(ws is not None, f"connection refused early: {err}")
            conns.append(ws)
        workers = {ws.response.headers["X-Worker"] for ws in conns}
        if len(workers) >= 2:
            break
        await close_all(conns)
        await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                       "slots to free")
    check(len(workers) >= 2,
          f"all 10 connections landed on one worker 3 times: {workers}")
    print(f"    10 connections over workers {sorted(workers)}")
    ws, err = await try_ws(env, "/conc/ws", "conc")
    check(ws is None and err.response.status_code == 429,
          "11th concurrent connection was not refused")
    check(err.response.headers.get("X-RT-Reason") == "too_many_connections",
          f"reason {err.response.headers.get('X-RT-Reason')!r}")
    check(env.status("conc")["active_connections"] == 10, "status count")
    # echo works on every connection
    for ws in conns:
        await ws.send("ping")
    for ws in conns:
        check(await asyncio.wait_for(ws.recv(), 10) == "ping", "echo")

    # client disconnect frees a slot
    await conns.pop().close()

    async def can_connect():
        ws, _ = await try_ws(env, "/conc/ws", "conc")
        return ws

    ws = await wait_for(can_connect, "a slot after a client close")
    conns.append(ws)
    ws, err = await try_ws(env, "/conc/ws", "conc")
    check(ws is None, "limit not restored after reconnect")

    # upstream drop frees a slot: the backend aborts /drop connections
    await conns.pop(0).close()

    async def drop_conn():
        ws, _ = await try_ws(env, "/conc/drop", "conc")
        return ws

    dropper = await wait_for(drop_conn, "a slot for the drop connection")
    ws, err = await try_ws(env, "/conc/ws", "conc")
    check(ws is None, "limit not full before the drop")
    await dropper.send("drop")
    try:
        async with asyncio.timeout(10):
            while True:
                await dropper.recv()
    except ConnectionClosed:
        pass
    ws = await wait_for(can_connect, "a slot after an upstream drop")
    conns.append(ws)
    await close_all(conns)
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "all slots free after closing everything")


async def t_slot_lifecycle(env):
    """Slots are taken per request and released exactly once, however the
    request ends: plain probes, an upgrade the upstream refuses, a client
    that vanishes without a Close frame."""
    before = env.status("conc")["connections_allowed"]
    for _ in range(20):
        code, _, _ = env.get("/conc/x", client="probe")
        check(code == 200, f"probe got {code}")
    ws, err = await try_ws(env, "/conc/reject", "probe")
    check(ws is None and err.response.status_code == 403,
          "the upstream's 403 was not passed through")
    raws = [RawWS(env, "/conc/ws", "vanish") for _ in range(10)]
    check(all(r.status == 101 for r in raws), "raw upgrades")
    check(env.status("conc")["active_connections"] == 10, "10 raw slots")
    ws, err = await try_ws(env, "/conc/ws", "vanish")
    check(ws is None, "limit of 10 not enforced for raw clients")
    for r in raws:
        r.close()  # no Close frame: the TCP connection just goes away
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "slots of vanished clients and probes to be freed")
    st = env.status("conc")
    check(st["connections_allowed"] - before == 31,
          f"connections_allowed grew by {st['connections_allowed'] - before}")
    ws, err = await try_ws(env, "/conc/ws", "vanish")
    check(ws is not None, f"vanish client locked out: {err}")
    await ws.close()


KILLED_CLIENT = r"""
import base64, os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {sys.argv[2]} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"X-Client: {sys.argv[3]}\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        break
    buf += d
print(buf.split(b" ")[1].decode() if buf else "EOF", flush=True)
time.sleep(600)
"""


async def t_half_open(env):
    """W7: a client that completes the upgrade and then goes silent without
    closing holds its slot only until nginx's proxy_read_timeout ends the
    tunnel (the module adds no timer of its own); a client whose socket is
    reset, or whose process is killed, frees its slot at once."""
    slow = 90 if env.valgrind else 30  # bounded deadlines, not assertions

    async def admitted(path, client):
        """Opens a connection that must be admitted, and closes it."""
        ws, err = await try_ws(env, path, client)
        check(ws is not None, f"{client} still locked out on {path}: {err}")
        await ws.close()
        await wait_for(lambda: env.status("idle")["active_connections"] == 0,
                       "the admitted probe to free its slot", timeout=slow)

    async def refused(path, client):
        """True when a second connection of client is refused (429,
        too_many_connections); False when it was admitted (then closed)."""
        ws, err = await try_ws(env, path, client)
        if ws is None:
            check(err.response.status_code == 429, f"refusal status {err}")
            reason = err.response.headers.get("X-RT-Reason")
            check(reason == "too_many_connections", f"reason {reason!r}")
            return True
        await ws.close()
        return False

    # 1. silent: the upgrade completes through nginx, then the raw socket is
    # kept open and never read or written; the backend sends nothing either.
    # The refusal proves the slot is held; it is only meaningful before the
    # timeout ran, so a machine slow enough to lose that race retries.
    silent = None
    for _ in range(5):
        silent = RawWS(env, "/idle/ws", "silent")
        env.raw.append(silent)
        check(silent.status == 101, f"silent client upgrade: {silent.status}")
        if await refused("/idle/ws", "silent"):
            break
        silent.close()
        await wait_for(lambda: env.status("idle")["active_connections"] == 0,
                       "slots to free before a retry", timeout=slow)
        silent = None
    check(silent is not None, "concurrent=1 never refused a second "
                              "connection while the silent one was open")
    # released by nginx's proxy_read_timeout: the count drops to 0 and the
    # same client is admitted again, while the silent socket is still open
    await wait_for(lambda: env.status("idle")["active_connections"] == 0,
                   "the silent client's slot to be released", timeout=slow)
    await admitted("/idle/ws", "silent")
    check(re.search(r"upstream timed out .* while proxying upgraded "
                    r"connection.*/idle/ws", env.log()) is not None,
          "no 'upstream timed out ... upgraded connection' line: the slot "
          "was not released by proxy_read_timeout")
    # nginx ended the tunnel: the silent socket sees EOF (or a reset)
    silent.sock.settimeout(10)
    try:
        rest = silent.sock.recv(65536)
    except ConnectionResetError:
        rest = b""
    check(rest == b"", f"silent socket still open, got {rest!r}")

    # 2. reset (SO_LINGER 0): on /idlelong, whose 120 s timeout cannot be
    # what frees it within the deadline
    rst = RawWS(env, "/idlelong/ws", "reset")
    env.raw.append(rst)
    check(rst.status == 101, f"reset client upgrade: {rst.status}")
    check(await refused("/idlelong/ws", "reset"),
          "second connection admitted while the reset client held its slot")
    rst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    rst.close()  # RST, no FIN, no Close frame
    await wait_for(lambda: env.status("idle")["active_connections"] == 0,
                   "the reset client's slot to be released", timeout=slow)
    await admitted("/idlelong/ws", "reset")

    # 3. the client process is killed (SIGKILL) while upgraded
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT,
                             str(env.port), "/idlelong/ws", "killed"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        check(line == "101", f"killed client upgrade: {line!r}")
        check(await refused("/idlelong/ws", "killed"),
              "second connection admitted while the client process lived")
        proc.kill()
        proc.wait(timeout=10)
        await wait_for(lambda: env.status("idle")["active_connections"] == 0,
                       "the killed client's slot to be released",
                       timeout=slow)
        await admitted("/idlelong/ws", "killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


async def t_message_limits(env):
    """Flood -> 1008, oversize and fragmented oversize -> 1009, while an
    honest client's echo works."""
    honest = await env.ws("/msg/ws", "honest-msg")
    for i in range(5):
        await honest.send(f"hello {i}")
        check(await asyncio.wait_for(honest.recv(), 10) == f"hello {i}",
              "honest echo")

    # a burst over the message rate (20 per window), from the library's
    # client and from a raw client writing every frame in one go
    # (the client keeps writing after the Close: nginx waits for its Close
    # and discards the rest, so the Close frame is not lost to a reset)
    flood = await env.ws("/msg/ws", "flooder")
    for i in range(200):
        try:
            await flood.send(f"flood {i}")
        except ConnectionClosed:
            break
    await expect_close(flood, 1008)
    raw = RawWS(env, "/msg/ws", "raw-flooder")
    raw.send(b"".join(frame(0x1, b"f%d" % i) for i in range(100)))
    code = raw.read_close()
    check(code == 1008, f"raw flood: close {code}")
    raw.close()

    big = await env.ws("/msg/ws", "big")
    await big.send("x" * 2000)
    await expect_close(big, 1009)

    frag = await env.ws("/msg/ws", "frag")
    try:
        await frag.send(["a" * 400, "b" * 400, "c" * 400])
    except ConnectionClosed:
        pass
    await expect_close(frag, 1009)

    # a message whose FIN never comes (W2): its fragments are counted as they
    # arrive, so the size limit fires mid-stream, on a non-final fragment
    raw = RawWS(env, "/msg/ws", "raw-endless")
    check(raw.status == 101, f"raw handshake {raw.status}")
    raw.send(frame(0x1, b"e" * 400, fin=False)
             + b"".join(frame(0x0, b"e" * 400, fin=False) for _ in range(9)))
    code = raw.read_close()
    check(code == 1009, f"endless fragments: close {code}")
    raw.close()

    # pings are not messages by default: 60 of them (20 messages per
    # window) pass, and a text message after them is still echoed
    raw = RawWS(env, "/msg/ws", "raw-pings")
    check(raw.status == 101, f"raw handshake {raw.status}")
    raw.send(b"".join(frame(0x9, b"p%d" % i) for i in range(60))
             + frame(0x1, b"after the pings"))
    got = None
    for _ in range(100):
        f = raw.read_frame()
        if f is None or f[0] != 0xA:
            got = f
            break
    check(got is not None and got[0] == 0x1 and got[1] == b"after the pings",
          f"pings counted as messages by default: {got!r:.80}")
    raw.close()

    # with "ratethrottle_control_frames on" a ping flood is closed with 1008
    # like a message flood (W3)
    raw = RawWS(env, "/ping/ws", "raw-ping-flood")
    check(raw.status == 101, f"raw handshake {raw.status}")
    raw.send(b"".join(frame(0x9, b"p%d" % i) for i in range(60)))
    code = raw.read_close()
    check(code == 1008, f"ping flood with control_frames on: close {code}")
    raw.close()

    # a fragmented message under the limit, with a ping between fragments
    raw = RawWS(env, "/msg/ws", "raw-ok")
    check(raw.status == 101, f"raw handshake {raw.status}")
    raw.send(frame(0x1, b"p" * 300, fin=False) + frame(0x9, b"hi")
             + frame(0x0, b"q" * 300, fin=True))
    got = {}
    for _ in range(2):
        f = raw.read_frame()
        check(f is not None, "raw connection closed early")
        got[f[0]] = f[1]
    check(got.get(0xA) == b"hi", "no pong for the interleaved ping")
    check(got.get(0x1) == b"p" * 300 + b"q" * 300, "fragmented echo")
    raw.close()

    # a message in 30 fragments is one message of the rate (20 per window):
    # continuations go through rt_check_continuation, not rt_check_message
    raw = RawWS(env, "/msg/ws", "raw-many-fragments")
    check(raw.status == 101, f"raw handshake {raw.status}")
    raw.send(frame(0x1, b"m", fin=False)
             + b"".join(frame(0x0, b"m", fin=False) for _ in range(28))
             + frame(0x0, b"m", fin=True))
    f = raw.read_frame()
    check(f is not None and f[0] == 0x1 and f[1] == b"m" * 30,
          f"30 fragments counted as 30 messages: {f!r:.80}")
    raw.close()

    # frames sent with the upgrade request, before the 101
    raw = RawWS(env, "/msg/ws", "preload",
                preload=frame(0x1, b"ok") + frame(0x2, b"z" * 3000))
    check(raw.status == 101, f"preload handshake {raw.status}")
    # the allowed "ok" frame is forwarded; its echo may or may not beat
    # the Close, which follows at once
    code = raw.read_close()
    check(code == 1009, f"preloaded oversize: close {code}")
    raw.close()

    # the close handshake: a client that answers our Close is closed at
    # once; one that stays silent is closed after the wait (5 s)
    raw = RawWS(env, "/msg/ws", "polite")
    raw.send(frame(0x2, b"z" * 3000))
    check(raw.read_close() == 1009, "polite: close code")
    raw.send(frame(0x8, struct.pack("!H", 1009)))
    raw.sock.settimeout(30)
    check(raw.read_frame() is None, "no EOF after the client's Close")
    raw.close()
    raw = RawWS(env, "/msg/ws", "silent")
    raw.send(frame(0x2, b"z" * 3000))
    check(raw.read_close() == 1009, "silent: close code")
    raw.sock.settimeout(30)
    check(raw.read_frame() is None, "no EOF after the close wait")
    raw.close()
    check("no Close frame from the client in 5000 ms" in env.log(),
          "the close wait was not logged")

    # a header declaring 2^63+ bytes and an unmasked frame: protocol errors
    raw = RawWS(env, "/msg/ws", "proto1")
    raw.send(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 63) + os.urandom(4))
    check(raw.read_close() == 1002, "64-bit length with the MSB set")
    raw.close()
    raw = RawWS(env, "/msg/ws", "proto2")
    raw.send(frame(0x1, b"plain", mask=False))
    check(raw.read_close() == 1002, "unmasked client frame")
    raw.close()
    raw = RawWS(env, "/msg/ws", "proto3")
    raw.send(frame(0x9, b"p" * 126))
    check(raw.read_close() == 1002, "oversized ping")
    raw.close()
    raw = RawWS(env, "/msg/ws", "huge")
    raw.send(frame(0x2, b"", length_override=(1 << 62)))
    check(raw.read_close() == 1009, "a 2^62-byte frame header")
    raw.close()

    # the honest client still works
    await honest.send("still here")
    check(await asyncio.wait_for(honest.recv(), 10) == "still here",
          "honest echo after the others were closed")
    await honest.close()

    log = env.access_log()
    check(re.search(r'/msg/ws 101 "rate_limit_exceeded" "\d+" raw-flooder',
                    log) is not None,
          "$ratethrottle_reason/$ratethrottle_retry_after of a message "
          "denial not in the access log")
    check(re.search(r'/msg/ws 101 "message_too_large" "-1" big', log)
          is not None, "retry_after of an oversize message")
    st = env.status("msg")
    d = st["denied"]
    check(d["rate_limit_exceeded"] >= 1, f"message rate denials: {d}")
    check(d["message_too_large"] >= 3, f"size denials: {d}")
    await wait_for(lambda: env.status("msg")["active_connections"] == 0,
                   "msg zone to drain")

    # the client's aggregate over its connections: 5 messages per window
    a1 = await env.ws("/agg/ws", "agg")
    a2 = await env.ws("/agg/ws", "agg")
    for ws in (a1, a2, a1, a2, a1):
        await ws.send("m")
        check(await asyncio.wait_for(ws.recv(), 10) == "m", "agg echo")
    await a2.send("sixth")
    await expect_close(a2, 1008)
    st = env.status("agg")
    check(st["denied"]["client_rate_limit_exceeded"] == 1,
          f"client aggregate denial: {st['denied']}")
    check(st["max_clients"] == 100 and st["max_connections"] == 200,
          f"explicit capacities: {st['max_clients']} {st['max_connections']}")

    # bandwidth: 4 KB per window
    bw = await env.ws("/bw/ws", "bw")
    for _ in range(5):
        try:
            await bw.send("y" * 1000)
        except ConnectionClosed:
            break
    await expect_close(bw, 1008)
    check(env.status("bw")["denied"]["bandwidth_exceeded"] == 1,
          "bandwidth denial count")


async def t_other_upgrade(env):
    """An upgrade to another protocol than WebSocket (the upstream's 101
    says "Upgrade: tcp") is a tunnel the module does not parse as frames:
    its bytes pass unchanged, it holds its connection slot, and frees it."""
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    env.raw.append(s)
    s.sendall(b"GET /tunnel/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Upgrade: tcp\r\nConnection: Upgrade\r\n"
              b"X-Client: tunnel\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        check(d, f"no upgrade response: {buf!r}")
        buf += d
    head, buf = buf.split(b"\r\n\r\n", 1)
    check(head.startswith(b"HTTP/1.1 101"), f"tunnel upgrade: {head!r:.80}")
    check(env.status("tunnel")["active_connections"] == 1,
          "the tunnel holds no connection slot")
    # unmasked, reserved opcodes, "frames" over the zone's size and rate
    # (max_message_size=16, messages=2): none of it is WebSocket
    sent = b""
    for i in range(10):
        chunk = b"GET line %d of a raw tunnel, not a WebSocket frame\n" % i
        chunk += bytes([0x82, 0x7e, 0xff, 0xff]) + b"x" * 40
        s.sendall(chunk)
        sent += chunk
        while len(buf) < len(sent):
            d = s.recv(65536)
            check(d, f"tunnel closed after {len(buf)} of {len(sent)} bytes: "
                     f"{buf[-40:]!r}")
            buf += d
    check(buf == sent, f"tunnel bytes changed: {buf[:40]!r}")
    s.close()
    await wait_for(lambda: env.status("tunnel")["active_connections"] == 0,
                   "the tunnel's slot to be freed")
    check("ratethrottle: " not in "".join(
              line for line in env.log().splitlines() if "/tunnel/" in line),
          "the module judged the tunnel's bytes")


async def t_split_headers(env):
    """Frame headers split across reads: nothing of a frame, not even the
    length in its header, reaches the upstream before the frame is decided;
    allowed frames trickled one byte per read arrive whole and in order."""
    async def recorded(client):
        return await wait_for(lambda: env.tunnel_got.get(client),
                              f"the upstream's record of {client}")

    ok = frame(0x1, b"ok")
    # 17 bytes: over max_message_size=16; its header is 2 + 4 (mask) bytes
    big = frame(0x2, b"z" * 17)
    raw = RawWS(env, "/rec/ws", "split-refused")
    env.raw.append(raw)
    check(raw.status == 101, f"handshake {raw.status}")
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # the header in three reads: its first byte; its length and half its
    # mask key; the rest
    for part in (ok + big[:1], big[1:4], big[4:]):
        raw.send(part)
        await asyncio.sleep(0.2)
    check(raw.read_close() == 1009, "split oversize header: close code")
    raw.close()
    got = await recorded("split-refused")
    check(got == ok, f"the upstream got {got.hex()}, want only the allowed "
                     f"frame {ok.hex()}")

    # the same with the header's start among the bytes sent before the 101
    raw = RawWS(env, "/rec/ws", "split-preload", preload=ok + big[:3])
    env.raw.append(raw)
    check(raw.status == 101, f"preload handshake {raw.status}")
    await asyncio.sleep(0.2)
    raw.send(big[3:])
    check(raw.read_close() == 1009, "split preloaded header: close code")
    raw.close()
    got = await recorded("split-preload")
    check(got == ok, f"preload: the upstream got {got.hex()}")

    # allowed frames, one byte per write: a held header is never lost or
    # sent twice
    stream = (frame(0x1, b"a" * 5, fin=False) + frame(0x9, b"p")
              + frame(0x0, b"b" * 3) + frame(0x2, b""))
    raw = RawWS(env, "/rec/ws", "trickle")
    env.raw.append(raw)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(stream)):
        raw.send(stream[i:i + 1])
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    raw.close()
    got = await recorded("trickle")
    check(got == stream, f"trickled frames: the upstream got {got.hex()}, "
                         f"want {stream.hex()}")
    await wait_for(lambda: env.status("tunnel")["active_connections"] == 0,
                   "the recording connections' slots to be freed")


async def t_dry_run(env):
    """ratethrottle_dry_run on: nothing denied, every would-be denial logged;
    the zone's dry_run flag: allowed, counted in dry_run_denied."""
    for i in range(5):
        code, _, _ = env.get("/dry/x", client="dry")
        check(code == 200, f"dry run request {i + 1} got {code}")
    check("dry run, connection denied" in env.log(),
          "no dry-run log line for connections")
    # over the message rate and the size on a dry-run location: still echoed
    ws = await env.ws("/dry/ws", "dry-ws")
    for i in range(12):
        await ws.send(f"m{i}")
        check(await asyncio.wait_for(ws.recv(), 10) == f"m{i}", "dry echo")
    await ws.send("s" * 2000)
    check(len(await asyncio.wait_for(ws.recv(), 10)) == 2000, "dry big echo")
    await ws.close()
    log = env.log()
    check("dry run, message denied" in log,
          "no dry-run log line for messages")

    for i in range(3):
        code, _, _ = env.get("/zdry/x", client="zdry")
        check(code == 200, f"zone dry_run request {i + 1} got {code}")
    st = env.status("zdry")
    check(st["dry_run_denied"] >= 2 and st["limits"]["dry_run"] is True,
          f"zone dry run stats: {st}")
    check("allowed with reason \"connection_rate_exceeded\"" in env.log(),
          "no log line for zone dry run")


async def t_status(env):
    """The status location serves JSON and Prometheus text."""
    before = env.status("conc")["connections_allowed"]
    for _ in range(2):
        check(env.get("/conc/x", client="status")[0] == 200, "plain GET")
    st = env.status("conc")
    for k in ("active_connections", "unique_clients", "connections_allowed",
              "denied", "max_clients", "max_connections", "limits"):
        check(k in st, f"status JSON lacks {k}")
    check(st["zone"] == "conc", "zone name")
    check(st["limits"]["max_concurrent_connections"] == 10, "limits")
    check(st["connections_allowed"] == before + 2, f"allowed {st}")
    check(st["max_clients"] > 1000, f"capacity from zone size {st}")
    code, h, body = env.get("/rt-status/msg?format=prometheus")
    check(code == 200 and h.get("Content-Type", "").startswith("text/plain"),
          f"prometheus status {code} {h.get('Content-Type')}")
    text = body.decode()
    check(re.search(r'ratethrottle_denied_total\{reason="[a-z_]+"\} \d+',
                    text) is not None, "prometheus denied counter")
    req = urllib.request.Request(env.url("/rt-status/msg"), headers={
        "Accept": "application/openmetrics-text; version=1.0.0,"
                  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    with urllib.request.urlopen(req, timeout=10) as r:
        check(r.headers.get("Content-Type", "").startswith("text/plain"),
              "a scraper's Accept header did not get Prometheus text")
    req = urllib.request.Request(env.url("/rt-status/msg?format=json"),
                                 headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        check(json.loads(r.read())["zone"] == "msg", "format=json wins")
    code, _, _ = env.get("/rt-status/msg?format=xml")
    check(code == 400, f"unknown format: {code}")


async def t_status_accept_json(env):
    """A client whose Accept names application/json as well as text/plain
    (the default of axios and many other HTTP libraries) gets JSON; only a
    scraper's Accept (text/plain or OpenMetrics, no JSON) gets Prometheus."""
    for accept in ("application/json, text/plain, */*",
                   "text/plain, application/json;q=0.9"):
        req = urllib.request.Request(env.url("/rt-status/msg"),
                                     headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as r:
            ctype = r.headers.get("Content-Type", "")
            body = r.read()
        check(ctype.startswith("application/json"),
              f"Accept {accept!r} got {ctype}")
        check(json.loads(body)["zone"] == "msg", "JSON body")


async def t_param_inheritance(env):
    """`ratethrottle zone=spam status=418 dry_run` in /inh: its parameters
    belong to it; the nested location with its own `ratethrottle zone=inh`
    (connections=1) denies with 429, not in dry run and not with 418."""
    code, _, _ = env.get("/inh/own/x", client="inh")
    check(code == 200, f"first request got {code}")
    code, h, _ = env.get("/inh/own/x", client="inh")
    check(code == 429, f"second request to /inh/own got {code}: the outer "
                       "level's dry_run/status= applied to the inner zone")
    check(h.get("Retry-After") is not None, "no Retry-After")
    # the outer level keeps its own parameters: spam allows 5, dry run
    for i in range(7):
        code, _, _ = env.get("/inh/x", client="inh-outer")
        check(code == 200, f"outer dry run: request {i + 1} got {code}")


async def reloaded(env, old):
    """Waits until the workers are two new ones (the old ones shut down or
    renamed themselves "worker process is shutting down")."""
    await wait_for(lambda: len(env.workers()) == 2
                   and not set(env.workers()) & old,
                   "two new workers after reload")


async def t_reload(env):
    """nginx -s reload with the same zones keeps counters and live slots."""
    for i in range(3):
        code, _, _ = env.get("/rl/x", client="reload")
        check(code == 200, f"before reload: request {i + 1} got {code}")
    held = await env.ws("/conc/ws", "held")
    check(env.status("conc")["active_connections"] == 1, "held connection")
    old = set(env.workers())
    env.master.send_signal(signal.SIGHUP)
    await reloaded(env, old)
    code, h, _ = env.get("/rl/x", client="reload")
    check(code == 429, f"after reload the 4th request got {code}: "
                       "the counters were lost")
    check(env.status("conc")["active_connections"] == 1,
          "live connection lost across reload")
    await held.send("after reload")
    check(await asyncio.wait_for(held.recv(), 10) == "after reload",
          "held connection echo")
    await held.close()
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "the old worker to free its slot")

    # an old worker killed while finishing a WebSocket after a reload is not
    # respawned: the periodic reap (every 10 s in one worker) frees its slot
    held = await env.ws("/conc/ws", "held-old")
    old_pid = int(held.response.headers["X-Worker"])
    old = set(env.workers())
    env.master.send_signal(signal.SIGHUP)
    await reloaded(env, old)
    check(any(p == old_pid for p, _ in env.children()),
          "the old worker did not wait for its WebSocket")
    os.kill(old_pid, signal.SIGKILL)
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "the periodic reap of the killed old worker's slot",
                   timeout=40)

    # new rates on reload apply to the kept counters: 3 used of 5
    env.write_conf(rl_conns=5)
    old = set(env.workers())
    env.master.send_signal(signal.SIGHUP)
    await reloaded(env, old)
    codes = [env.get("/rl/x", client="reload")[0] for _ in range(3)]
    check(codes == [200, 200, 429], f"connections=5 after reload: {codes}")
    check(env.status("rl")["limits"]["connections_per_window"] == 5,
          "new limit not in force")

    # a changed key is refused, and the running config stays
    env.write_conf(rl_conns=5, rl_key="$http_x_other")
    old = set(env.workers())
    env.master.send_signal(signal.SIGHUP)
    await wait_for(lambda: 'uses the "$http_x_other" key' in env.log(),
                   "the refusal of a changed key")
    check(set(env.workers()) == old, "workers replaced despite the refusal")
    check(env.get("/rl/x", client="reload")[0] == 429,
          "the old config stopped limiting")
    env.write_conf(rl_conns=5)


async def t_reload_many(env):
    """TEST-PLAN W8/M11: 200 WebSockets (20 clients x concurrent=10, over
    both workers) stay open across a reload. The new workers see every
    client's count (an 11th connection is refused), a close in an old
    worker frees its slot for a new worker's connection, every echo still
    works, and when they all close the zone drains to 0 from the old
    workers: no slot leaks, no count goes negative."""
    clients = [f"many-{i}" for i in range(20)]
    conns = {c: [] for c in clients}
    try:
        for c in clients:
            for _ in range(10):
                ws, err = await try_ws(env, "/conc/ws", c)
                check(ws is not None, f"{c}: connection refused early: {err}")
                conns[c].append(ws)
        check(env.status("conc")["active_connections"] == 200,
              "200 connections before the reload")
        old = set(env.workers())
        held_by = {int(ws.response.headers["X-Worker"])
                   for cs in conns.values() for ws in cs}
        check(held_by <= old, "connections on the old workers")
        env.master.send_signal(signal.SIGHUP)
        await reloaded(env, old)
        check({p for p, _ in env.children()} & held_by,
              "the old workers did not wait for their WebSockets")
        check(env.status("conc")["active_connections"] == 200,
              "the count after the reload")
        ws, err = await try_ws(env, "/conc/ws", clients[0])
        check(ws is None and err.response.status_code == 429,
              "an 11th connection after the reload was not refused")
        # a close in an old worker frees a slot for the new workers
        await conns[clients[0]].pop().close()
        await wait_for(lambda: env.status("conc")["active_connections"]
                       == 199, "the old worker to free one slot")
        ws, err = await try_ws(env, "/conc/ws", clients[0])
        check(ws is not None, f"the freed slot was not reusable: {err}")
        check(int(ws.response.headers["X-Worker"]) not in held_by,
              "the new connection is not on a new worker")
        conns[clients[0]].append(ws)
        for c in clients:
            ws = conns[c][len(c) % 10]
            await ws.send("still " + c)
            check(await asyncio.wait_for(ws.recv(), 10) == "still " + c,
                  f"{c}: echo after the reload")
    finally:
        for cs in conns.values():
            await close_all(cs)
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "the zone to drain to 0 after closing all 200")
    await wait_for(lambda: not {p for p, _ in env.children()} & held_by,
                   "the old workers to exit")
    st = env.status("conc")
    check(st["active_connections"] == 0 and st["unique_clients"] == 0,
          f"after the drain: {st['active_connections']} active, "
          f"{st['unique_clients']} clients")
    again = []
    try:
        for _ in range(10):
            ws, err = await try_ws(env, "/conc/ws", clients[1])
            check(ws is not None, f"reconnect after the drain: {err}")
            again.append(ws)
    finally:
        await close_all(again)
    await wait_for(lambda: env.status("conc")["active_connections"] == 0,
                   "the zone to drain again")


async def t_sigkill_worker(env):
    """A worker killed with SIGKILL while holding connections does not lock
    its clients out: the respawned worker reaps them."""
    conns = []
    for _ in range(2):
        ws, err = await try_ws(env, "/kill/ws", "victim")
        check(ws is not None, f"kill zone connect: {err}")
        conns.append(ws)
    ws, err = await try_ws(env, "/kill/ws", "victim")
    check(ws is None and err.response.status_code == 429, "limit 2")
    pids = {int(ws.response.headers["X-Worker"]) for ws in conns}
    before = set(env.workers())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: len(set(env.workers()) - before) >= len(pids),
                   "the master to respawn the killed workers")
    for ws in conns:
        try:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        except (ConnectionClosed, TimeoutError):
            pass
    await wait_for(lambda: env.status("kill")["active_connections"] == 0,
                   "the dead worker's connections to be reaped")
    ws, err = await try_ws(env, "/kill/ws", "victim")
    check(ws is not None, f"client still locked out after the kill: {err}")
    await ws.close()
    check("reaped" in env.log(), "no reap line in the error log")


TESTS = [
    ("config errors", t_config_errors),
    ("connection spam: 429 + Retry-After", t_connection_spam),
    ("concurrency across workers, freed on close and upstream drop",
     t_concurrency_across_workers),
    ("slot lifecycle: probes, upstream refusal, vanished clients",
     t_slot_lifecycle),
    ("half-open clients: silent (proxy_read_timeout), reset, killed",
     t_half_open),
    ("message limits: flood 1008, oversize/fragmented 1009, honest echo",
     t_message_limits),
    ("other upgrades: a raw TCP tunnel is not parsed as WebSocket",
     t_other_upgrade),
    ("split frame headers: held back until decided", t_split_headers),
    ("dry run", t_dry_run),
    ("status location", t_status),
    ("status: an Accept naming application/json gets JSON",
     t_status_accept_json),
    ("parameters of an outer ratethrottle are not inherited with a zone",
     t_param_inheritance),
    ("reload keeps state", t_reload),
    ("reload keeps state with 200 WebSockets open (W8)", t_reload_many),
    ("SIGKILL a worker: reaped", t_sigkill_worker),
]


async def run(env, only, skip):
    results = []
    for name, fn in TESTS:
        if only and only not in name:
            continue
        if skip and skip in name:
            print(f"SKIP  {name} (--skip {skip})", flush=True)
            env.skipped.append(name)
            continue
        t0 = time.time()
        try:
            await fn(env)
            results.append((name, True, ""))
            print(f"PASS  {name} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure
            results.append((name, False, f"{type(e).__name__}: {e}"))
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
        # whatever a test left open is closed before the next one
        await close_all(env.opened)
        env.opened = []
        for raw in env.raw:
            raw.close()
        env.raw = []
    return results


def valgrind_result(tmp):
    """Every valgrind log (master and workers) must report no error."""
    logs = [f for f in os.listdir(tmp) if f.startswith("vg.")]
    bad = []
    for name in logs:
        with open(os.path.join(tmp, name), errors="replace") as f:
            text = f.read()
        if "Invalid " in text or "uninitialised" in text \
                or "definitely lost" in text:
            bad.append(name)
            print(f"---- {name} ----\n{text[:3000]}")
    ok = bool(logs) and not bad
    return ("valgrind memcheck: no invalid access or uninitialised use",
            ok, f"{len(logs)} logs, errors in {bad}" if not ok else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--only", default="", help="run tests whose name has this")
    ap.add_argument("--skip", default="", help="skip tests whose name has this")
    ap.add_argument("--valgrind", action="store_true",
                    help="run nginx under valgrind memcheck and fail on any "
                         "error it reports")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs) afterwards")
    args = ap.parse_args()

    # a timeout's SIGTERM still runs the finally below, which stops nginx
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    tmp = tempfile.mkdtemp(prefix=f"rt-nginx-{os.getpid()}-")
    os.chmod(tmp, 0o755)
    env = Env(os.path.abspath(args.module), tmp)
    env.valgrind = args.valgrind
    if args.valgrind:
        env.idle = "2s"  # requests are slower under valgrind
    results = []
    try:
        env.start_backend()
        env.start_tunnel()
        env.start_nginx()
        print(f"nginx master {env.master.pid} workers {env.workers()} "
              f"on 127.0.0.1:{env.port}, backend :{env.bport}", flush=True)
        results = asyncio.run(run(env, args.only, args.skip))
    except Exception as e:  # noqa: BLE001
        results.append(("setup", False, f"{type(e).__name__}: {e}"))
        traceback.print_exc()
    finally:
        env.stop()
        if args.valgrind:
            results.append(valgrind_result(tmp))
        failed = [r for r in results if not r[1]]
        if failed or args.keep:
            print("---- error.log (tail) ----")
            print("\n".join(env.log().splitlines()[-40:]))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    passed = sum(1 for r in results if r[1])
    print(f"\nnginx module tests{' under valgrind' if args.valgrind else ''}: "
          f"{passed} passed, {len(results) - passed} failed, "
          f"{len(env.skipped)} skipped {env.skipped or ''}")
    for name, ok, err in results:
        if not ok:
            print(f"  FAILED {name}: {err}")
    sys.exit(0 if results and passed == len(results) else 1)


if __name__ == "__main__":
    main()
