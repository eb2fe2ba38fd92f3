// Type declarations of officerouter-client.js. Frame types come from frames.d.ts,
// generated from the server's message catalog (`officerouter schema --typescript`).
import type { ConnectedPayload, ServerFrame } from "./frames.js";

export type { ServerFrame, ClientFrame, PresenceStateFrame, PresenceDiffFrame } from "./frames.js";

/** A position as sent and relayed: `x`, `y` and, optionally, the room. */
export interface Position {
  x: number;
  y: number;
  roomId?: string;
}

/** One online user, as kept in the presence map. */
export interface PresenceUser {
  readonly userId: string;
  readonly role: string;
  /** Live connections; 0 while the user is within the server's grace period, or
   * missing from a reconnect's snapshot (the client's own grace). null with
   * `presence: "diff"`, whose frames carry no counts (ask GET /internal/presence). */
  readonly connections: number | null;
  /** The latest position, or null until the user moves. */
  readonly position: Position | null;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** What comes with each state change. */
export interface StateInfo extends Partial<ConnectedPayload> {
  /** The close code that caused a reconnect or the close (1006: lost, or refused). */
  code?: number;
  reason?: string;
  /** Reconnects since the last stable connection. */
  attempt?: number;
  /** Milliseconds until the next attempt (state "reconnecting"). */
  delay?: number;
  /** State "closed": true when the application called close(). */
  byClient?: boolean;
}

/** A problem reported on the "error" event; the client carries on unless it closed. */
export interface ClientError {
  /** A server error code (`refresh_refused`, `rate_limited`, `invalid_message`...)
   * or one of the client's: `token_unavailable`, `connect_failed`, `bad_frame`,
   * `listener_failed`. */
  code: string;
  message: string;
  error?: unknown;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  random(): number;
}

export interface EventSource {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

export interface OfficeClientOptions {
  /** The WebSocket URL (`/websocket` of the router); relative URLs resolve against
   * the page; several URLs are tried in turn, one more at each reconnect; a function
   * is asked at each attempt. */
  url: string | string[] | ((context: { attempt: number }) => string | Promise<string>);
  /** A fresh token from your backend, for every connection and every refresh. */
  getToken: (context: { reason: "connect" | "refresh" }) => string | Promise<string>;
  /** "plain" (default): one position_update per move; "batched": one positions frame per tick. */
  positions?: "plain" | "batched";
  /** "events" (default): presence, user_joined, user_left, user_role_changed frames;
   * "diff": `?presence=diff`, presence_state then one presence_diff per tick (for big
   * orgs). The same map and the same presence, join and leave events either way. */
  presence?: "events" | "diff";
  /** position_update frames per second at most (default 10; the server allows --rate, 20). */
  positionRate?: number;
  /** Start connecting at once (default true). */
  autoConnect?: boolean;
  /** First backoff window in ms (default 1000). */
  backoffBase?: number;
  /** Largest backoff window in ms (default 30000). */
  backoffMax?: number;
  /** After 1001, the reconnect waits a random time below this, in ms (default 1000). */
  goingAwayJitter?: number;
  /** A connection open this long (ms) resets the backoff (default 30000). */
  stableAfter?: number;
  /** Refresh the token when this fraction of its lifetime has passed (default 0.8). */
  refreshAt?: number;
  /** After getToken failed during a refresh, try again after this many ms (default 5000). */
  refreshRetry?: number;
  /** Send the last position again on every new connection (default true). */
  resendPosition?: boolean;
  /** A user missing from a reconnect's snapshot stays this many ms before leaving
   * (default 5000, the server's --presence-grace). */
  presenceGrace?: number;
  /** The WebSocket class (default: the global one; Node 20 has none). */
  WebSocket?: new (url: string, protocols: string[]) => WebSocket;
  /** Time and randomness (tests). */
  clock?: Partial<Clock>;
  /** Where `online`/`offline` come from (default: window), `visibilitychange` (default: document). */
  window?: EventSource | null;
  document?: (EventSource & { visibilityState?: string }) | null;
  navigator?: { onLine?: boolean } | null;
}

export interface OfficeClientEvents {
  state: (state: ClientState, info: StateInfo) => void;
  /** Every backend message (and other application frame), once, in seq order. */
  message: (frame: ServerFrame | { type: string; seq?: number; from?: string; payload: unknown }) => void;
  /** Who is online (everyone but this user) after every change of who or of a role. */
  presence: (users: Map<string, PresenceUser>) => void;
  join: (user: PresenceUser) => void;
  leave: (userId: string) => void;
  /** Every position relayed or batched (this user's own too, when batched). */
  position: (userId: string, position: Position) => void;
  /** Continuity was lost (recovered: false): refetch your state. */
  resync: (connected: ConnectedPayload) => void;
  /** The token was refreshed on the open connection. */
  token: (payload: { expiresAt: number }) => void;
  error: (error: ClientError) => void;
  /** Every frame as received, before the client handles it. */
  frame: (frame: ServerFrame) => void;
}

export declare const DEFAULTS: Readonly<Required<Pick<OfficeClientOptions,
  "positions" | "presence" | "positionRate" | "backoffBase" | "backoffMax" | "goingAwayJitter" |
  "stableAfter" | "refreshAt" | "refreshRetry" | "resendPosition" | "presenceGrace">>>;
export declare const STOP_CODES: ReadonlySet<number>;
export declare const CLOSE_TOKEN_EXPIRED: 4001;
export declare const CLOSE_GOING_AWAY: 1001;
export declare function closeAction(code: number): "stop" | "token" | "soon" | "backoff";
export declare function backoffWindow(attempt: number, base?: number, max?: number): number;
export declare function readClaims(token: string): Record<string, unknown> | null;

export declare class OfficeClient {
  constructor(options: OfficeClientOptions);
  readonly state: ClientState;
  /** A copy of the presence map. */
  readonly presence: Map<string, PresenceUser>;
  /** The current connection's `connected` payload, or null. */
  readonly connection: ConnectedPayload | null;
  /** `<epoch>.<seq>` the next connection recovers from, or null. */
  readonly since: string | null;
  on<E extends keyof OfficeClientEvents>(event: E, listener: OfficeClientEvents[E]): () => void;
  connect(): void;
  close(): void;
  sendPosition(position: Position): void;
  send(type: string, payload: object): boolean;
}
