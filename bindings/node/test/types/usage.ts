// Type-checks index.d.ts, ws.d.ts and socketio.d.ts against real usage
// (compiled with `tsc --noEmit`, never run).
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { Server } from 'socket.io';
import { Limiter, Connection, Decision, ConnectDecision, Stats, Violation, presets, REASONS, byteSize, nativeNoop, clientKey } from 'ratethrottle';
import * as rtws from 'ratethrottle/ws';
import * as rtio from 'ratethrottle/socketio';

const limiter: Limiter = new Limiter({ ...presets.moderate, messagesPerWindow: 100, dryRun: false });
const shared: Limiter = Limiter.shared('/dev/shm/x', { maxClients: 1024 });
const d: ConnectDecision = limiter.connect('203.0.113.7');
if (d.allowed && d.connection) {
  const c: Connection = d.connection;
  const m: Decision = c.checkMessage('hello');
  const r: number = m.retryAfterMs + m.limit + m.remaining + m.current;
  c.checkMessage(Buffer.alloc(3));
  c.checkMessage(new ArrayBuffer(3));
  c.checkMessage(new DataView(new ArrayBuffer(3)));
  c.checkMessageAt(12, 0);
  const closed: boolean = c.close();
  const id: string = c.id;
  void [r, closed, id, c.info()?.byteCount];
}
limiter.connect(new Uint8Array([1, 2]));
limiter.checkKey('room:lobby', 512);
const s: Stats = limiter.stats();
const denied: number = s.denied.rate_limit_exceeded + s.limits.windowMs;
limiter.on('violation', (v: Violation) => {
  const t: string = v.type + v.reason + v.clientId.toString() + String(v.connectionId);
  void t;
});
limiter.updateLimits({ messagesPerWindow: 10 });
const text: string = limiter.prometheus();
const n: number = byteSize('x') + limiter.reapDead() + limiter.clientConnections('x');
nativeNoop();
void [denied, text, n, REASONS[0], shared.attached];

const server = http.createServer();
const wss = new WebSocketServer({ server, verifyClient: rtws.verifyClient(limiter, { clientId: (req) => req.socket.remoteAddress ?? '' }) });
rtws.protect(wss, { onDenied: 'reply' });
rtws.protect(wss, { idleTimeoutMs: 30_000 });
rtws.protect(wss, { idleTimeoutMs: 0 });
rtws.protect(wss, { countControlFrames: true, idleTimeoutMs: 0 });
rtws.protect(wss, { onDenied: (ws, dec) => ws.close(4000, dec.reason), tooLargeCode: 1009 });
const io = new Server(server);
io.use(rtio.middleware(limiter, { clientId: (socket) => socket.handshake.address, packets: true }));
io.use(rtio.middleware(limiter, { ipv6PrefixLength: 56 }));
rtws.verifyClient(limiter, { ipv6PrefixLength: 48 });
rtws.verifyClient(limiter, { clientId: (req) => clientKey(req.socket.remoteAddress ?? '', { ipv6PrefixLength: 56 }) });
const key: string = clientKey('2001:db8::1') + clientKey('::1', { ipv6PrefixLength: 128 });
const unchanged: undefined = clientKey(undefined);
void [key, unchanged];
io.on('connection', (socket) => {
  const conn: Connection | undefined = rtio.connectionOf(socket);
  void conn;
});

// Wrong uses must not type-check.
// @ts-expect-error a bigint is not message data
limiter.checkKey('k', 5n);
// @ts-expect-error unknown option
new Limiter({ messagesPerMinute: 5 });
// @ts-expect-error ids are strings or bytes
limiter.connect(42);
// @ts-expect-error the idle timeout is a number of ms
rtws.protect(wss, { idleTimeoutMs: '60s' });
// @ts-expect-error the prefix length is a number
clientKey('::1', { ipv6PrefixLength: '64' });
