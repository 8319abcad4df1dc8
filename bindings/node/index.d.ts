// Types of the ratethrottle package (hand-written; checked by `npm run typecheck`).
/// <reference types="node" />
import { EventEmitter } from 'node:events';

/** The engine's reason strings, in `rt_reason` order. */
export type Reason =
  | 'ok'
  | 'connection_rate_exceeded'
  | 'too_many_connections'
  | 'message_too_large'
  | 'rate_limit_exceeded'
  | 'bandwidth_exceeded'
  | 'client_rate_limit_exceeded'
  | 'client_bandwidth_exceeded'
  | 'table_full'
  | 'connection_not_found'
  | 'invalid_argument';

/** The seed's violation type names. */
export type ViolationType =
  | 'connection_rate'
  | 'concurrent_connections'
  | 'message_size'
  | 'message_rate'
  | 'bandwidth'
  | 'client_message_rate'
  | 'client_bandwidth'
  | 'table_full'
  | 'unknown_connection'
  | 'invalid_argument';

/** The engine's limits (camelCase `rt_limits`); 0 means "no limit" for every numeric limit. */
export interface Limits {
  /** Window length in ms, 1..2^32-1 (default 60000). */
  windowMs: number;
  /** New connections per client per window (default 60). */
  connectionsPerWindow: number;
  /** Live connections per client (default 10). */
  maxConcurrentConnections: number;
  /** Messages per connection per window (default 1000, at most 262143). */
  messagesPerWindow: number;
  /** Bytes per connection per window (default 0 = off, at most 2^26-1). */
  bytesPerWindow: number;
  /** Largest message in bytes (default 65536). */
  maxMessageSize: number;
  /** Messages per client (over all its connections) or per key, per window (default 0). */
  clientMessagesPerWindow: number;
  /** Bytes per client or key per window (default 0). */
  clientBytesPerWindow: number;
  /** Client table capacity (default 65536). Fixed at creation. */
  maxClients: number;
  /** Connection capacity (default 65536). Fixed at creation. */
  maxConnections: number;
  /** Table full: allow untracked instead of denying with 'table_full' (default false). */
  failOpen: boolean;
  /** Decide and report, but allow (default false). */
  dryRun: boolean;
}

export interface LimiterOptions extends Partial<Limits> {
  /** Create or attach a region in this file (e.g. under /dev/shm), shared by processes. */
  sharedPath?: string;
  /** While a 'violation' listener is attached, also read the ring every this many ms (default 1000; 0 = never). */
  violationPollMs?: number;
}

/** Message data: a byte count, a string (UTF-8 length) or binary data (byteLength). */
export type MessageData = number | string | ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/** A client id or key: a string (its UTF-8 bytes) or any bytes. */
export type ClientId = string | Uint8Array;

export interface Decision {
  /** Whether the request may proceed (always true in dry-run mode). */
  allowed: boolean;
  /** 'ok', or the first limit that failed (in dry-run mode: would have failed). */
  reason: Reason;
  /** 0 when allowed; ms until the same request passes; Infinity when it never can. */
  retryAfterMs: number;
  /** The limit that decided (0 when none). */
  limit: number;
  /** Budget left under that limit after this call. */
  remaining: number;
  /** The estimate that decided (a count, bytes, or live connections). */
  current: number;
}

export interface ConnectDecision extends Decision {
  /** The new connection when allowed, else null. */
  connection: Connection | null;
}

export interface ConnectionInfo {
  /** The first 40 bytes of the client id. */
  clientId: Buffer;
  clientIdLength: number;
  connectedAtMs: number;
  lastMessageAtMs: number;
  messageCount: number;
  byteCount: number;
}

export interface Stats {
  activeConnections: number;
  uniqueClients: number;
  totalMessages: number;
  totalBytes: number;
  connectionsAllowed: number;
  messagesAllowed: number;
  /** Denials by reason. */
  denied: Record<Exclude<Reason, 'ok'>, number>;
  trackedClients: number;
  maxClients: number;
  maxConnections: number;
  violationsDropped: number;
  dryRunDenied: number;
  untrackedAllowed: number;
  limits: Limits;
}

export interface Violation {
  type: ViolationType;
  reason: Reason;
  /** The first 40 bytes of the client id or key. */
  clientId: Buffer;
  clientIdLength: number;
  /** The connection's id (as `Connection.id`), null for connect and key checks. */
  connectionId: string | null;
  limit: number;
  current: number;
  size: number;
  retryAfterMs: number;
  atMs: number;
}

export declare class Connection {
  private constructor();
  /** Checks one message. Throws TypeError/RangeError for bad data, Error after close(). */
  checkMessage(data: MessageData): Decision;
  /** checkMessage with the caller's clock (ms). */
  checkMessageAt(data: MessageData, nowMs: number): Decision;
  /** Frees the concurrency slot; idempotent; true when this call freed it. */
  close(): boolean;
  readonly closed: boolean;
  /** The engine's handle as a decimal string. */
  readonly id: string;
  info(): ConnectionInfo | null;
}

export interface LimiterEvents {
  violation: [violation: Violation];
}

export declare class Limiter extends EventEmitter {
  constructor(options?: LimiterOptions);
  static shared(path: string, options?: Omit<LimiterOptions, 'sharedPath'>): Limiter;
  /** True when this limiter attached to a region another process created. */
  readonly attached: boolean;
  readonly closed: boolean;
  connect(clientId: ClientId): ConnectDecision;
  connectAt(clientId: ClientId, nowMs: number): ConnectDecision;
  checkKey(key: ClientId, data: MessageData): Decision;
  checkKeyAt(key: ClientId, data: MessageData, nowMs: number): Decision;
  clientConnections(clientId: ClientId): number;
  connectionInfo(connection: Connection): ConnectionInfo | null;
  stats(): Stats;
  prometheus(): string;
  limits(): Limits;
  /** Changes limits at run time; the capacities (maxClients, maxConnections) cannot change. */
  updateLimits(options: Partial<Omit<Limits, 'maxClients' | 'maxConnections'>>): void;
  reapDead(): number;
  drainViolations(): Violation[];
  close(): void;
  destroy(): void;

  on(event: 'violation', listener: (violation: Violation) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'violation', listener: (violation: Violation) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  off(event: 'violation', listener: (violation: Violation) => void): this;
  off(event: string | symbol, listener: (...args: any[]) => void): this;
  emit(event: 'violation', violation: Violation): boolean;
  emit(event: string | symbol, ...args: any[]): boolean;
}

export declare const presets: Readonly<{
  default: Readonly<Limits>;
  strict: Readonly<Limits>;
  moderate: Readonly<Limits>;
  generous: Readonly<Limits>;
}>;
export declare const defaults: Readonly<Limits>;
export declare const REASONS: readonly Reason[];
export declare const version: string;
export declare const atomicsLockFree: boolean;
export declare const clockResolutionMs: number;
/** The byte count checkMessage uses for `data`. */
export declare function byteSize(data: MessageData): number;
export interface ClientKeyOptions {
  /** Prefix length IPv6 addresses are aggregated to, 0..128 (default 64). */
  ipv6PrefixLength?: number;
}
/**
 * The client id for a peer address, as the ws and socket.io adapters derive
 * it by default: IPv4 as is ('203.0.113.7'); IPv4-mapped IPv6 as its IPv4
 * address; other IPv6 as its network ('2001:db8:1:2::/64'), zone dropped.
 * A value that is not an IP address is returned unchanged (never throws for
 * an address; a bad ipv6PrefixLength is a RangeError).
 */
export declare function clientKey(address: string, options?: ClientKeyOptions): string;
export declare function clientKey<T>(address: T, options?: ClientKeyOptions): T;
/** The empty N-API call (for benchmarks). */
export declare function nativeNoop(): void;
