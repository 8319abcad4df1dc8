/// <reference types="node" />
import type { IncomingMessage } from 'node:http';
import type { WebSocket, WebSocketServer } from 'ws';
import type { Connection, Decision, Limiter, ClientId } from './index';

export interface VerifyClientOptions {
  /** The client id of an upgrade request (default: clientKey(req.socket.remoteAddress), IPv6 by its /64). */
  clientId?: (req: IncomingMessage) => ClientId;
  /** Prefix length of the default client id for IPv6 peers, 0..128 (default 64; ignored with clientId). */
  ipv6PrefixLength?: number;
}

export interface GuardOptions {
  /** What to do with a denied message (default 'close'). */
  onDenied?: 'close' | 'reply' | ((ws: WebSocket, decision: Decision) => void);
  /** Close code for message_too_large in 'close' mode (default 1009): 1000..1014 but 1004..1006, or 3000..4999. */
  tooLargeCode?: number;
  /** Close code for other denials in 'close' mode and for denied control frames (default 1008); same range. */
  policyCode?: number;
  /**
   * Liveness of the peer, in ms (default 60000; 0 disables): the server pings
   * every idleTimeoutMs/2, any frame from the peer (message, ping, pong)
   * restarts the clock, and a peer silent for idleTimeoutMs is terminated
   * (its connection, and concurrency slot, released). 0..2^31-1.
   */
  idleTimeoutMs?: number;
  /**
   * Check each ping and pong the peer sends like a message (one message
   * against the message rate, its payload against the byte budget); past
   * the budget the socket is closed with policyCode (1008). A pong answering
   * the idle timer's own ping is not counted. Default false.
   */
  countControlFrames?: boolean;
}

export type VerifyClientCallback = (
  info: { origin: string; secure: boolean; req: IncomingMessage },
  cb: (result: boolean, code?: number, message?: string, headers?: Record<string, string>) => void,
) => void;

export declare function verifyClient(limiter: Limiter, options?: VerifyClientOptions): VerifyClientCallback;
/** The engine connection, or null when admitted untracked (failOpen, table full) or not admitted by verifyClient. */
export declare function guard(ws: WebSocket, req: IncomingMessage, options?: GuardOptions): Connection | null;
export declare function protect<T extends WebSocketServer>(wss: T, options?: GuardOptions): T;
export declare function connectionOf(req: IncomingMessage): Connection | undefined;
export declare function messageSize(data: Buffer | ArrayBuffer | Buffer[] | ArrayBufferView | Blob): number;
