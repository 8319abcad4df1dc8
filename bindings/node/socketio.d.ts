import type { Socket } from 'socket.io';
import type { Connection, Limiter, ClientId, Reason } from './index';

/** The data of a connect_error and of a 'rate_limited' event. */
export interface DenialData {
  reason: Reason;
  /** Seconds, rounded up; null when the request can never pass. */
  retry_after: number | null;
  retry_after_ms: number | null;
  limit: number;
}

export interface RateLimitedEvent extends DenialData {
  /** The dropped packet's event name. */
  event: string;
}

export interface MiddlewareOptions {
  /** The client id of a socket (default: clientKey(socket.handshake.address), IPv6 by its /64). */
  clientId?: (socket: Socket) => ClientId;
  /** Prefix length of the default client id for IPv6 peers, 0..128 (default 64; ignored with clientId). */
  ipv6PrefixLength?: number;
  /** Install the packet middleware (default true). */
  packets?: boolean;
  /** Bytes of a packet (default: event name plus the arguments' estimated size). */
  packetSize?: (event: string, args: unknown[]) => number;
  /** Event sent to the client for a dropped packet (default 'rate_limited'). */
  event?: string;
}

export type ConnectionMiddleware = (socket: Socket, next: (err?: Error) => void) => void;
export type PacketMiddleware = (packet: [string, ...unknown[]], next: (err?: Error) => void) => void;

export declare function middleware(limiter: Limiter, options?: MiddlewareOptions): ConnectionMiddleware;
export declare function packets(socket: Socket, conn: Connection, options?: MiddlewareOptions): PacketMiddleware;
export declare function packetSize(args: unknown[]): number;
export declare function connectionOf(socket: Socket): Connection | undefined;
