// TypeScript declarations of push.js, the browser client of the push
// cluster. The wire contract is docs/protocol.md.

/** A message as the edge sends it: `{"seq":N,"epoch":"E","data":...}`. */
export interface PushMessage<T = unknown> {
  /**
   * Sequence number within `epoch`: increases by one per message and starts
   * again at 1 in a new epoch; 0 for broadcasts.
   */
  seq: number;
  /**
   * The stream `seq` counts in. A message of another epoch than the last one
   * starts a new stream (its seq may be lower). Undefined on broadcasts and
   * from edges that predate epochs.
   */
  epoch?: string;
  /** The published payload (JSON as published, or a string). */
  data: T;
  /** Present and true on broadcasts: not stored, not resumable. */
  broadcast?: true;
}

/**
 * Messages `from`..`to` (inclusive) of `epoch` are lost: the edge could no
 * longer replay them (its gap notice), or seqs were skipped within an epoch.
 * Without `to` the gap is open-ended: everything after `from − 1` in `epoch`
 * may be lost (the edge holding that stream crashed); reported once, and
 * messages of a new epoch usually follow. The change of epoch itself is
 * never reported as a gap.
 */
export interface PushGap {
  /** The epoch the gap is in; undefined while none is known (older edges). */
  epoch?: string;
  from: number;
  to?: number;
}

export type TransportName = 'websocket' | 'sse' | 'poll';

/**
 * - `connecting`: an attempt is under way on `transport`.
 * - `open`: messages flow.
 * - `reconnecting`: the next attempt starts in `delay` ms (after `code`).
 * - `stopped`: no more attempts; `reason` says why.
 */
export type PushStateName = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'stopped';

export type StopReason =
  /** close() was called. */
  | 'closed'
  /** 4002: a newer connection of the same user took over. */
  | 'replaced'
  /** 4004: a backend kicked the user. */
  | 'kicked'
  /** The token is wrong (checked locally, or 4001 / HTTP 401) and getToken did not fix it. */
  | 'unauthorized'
  /** No transport exists in this environment. */
  | 'unsupported';

export interface PushState {
  state: PushStateName;
  transport: TransportName | null;
  /** Backoff attempt number (0 after a successful open). */
  attempt: number;
  /** Last seq seen in the current epoch. */
  lastSeq: number;
  /** The current epoch; undefined until the edge named one. */
  epoch?: string;
  /** reconnecting: ms until the next attempt. */
  delay?: number;
  /** Close code that caused a reconnect or stop, or 'heartbeat', 'http-error' (an SSE or poll error status), 'token-error' (getToken threw: retried with backoff). */
  code?: number | string;
  reason?: StopReason | string;
  /** stopped: human-readable detail, e.g. "token is for another user". */
  detail?: string;
  /**
   * How this tab reaches the connection: through the SharedWorker, as the
   * leader tab holding it, as a follower of the leader, or on its own.
   */
  shared?: 'worker' | 'leader' | 'follower' | 'none';
}

export interface ConnectOptions {
  /** The user id (1–128 of A–Z a–z 0–9 - . _ ~ : @). */
  uid: string;
  /** A JWT whose `sub` is uid. Either token or getToken is required. */
  token?: string;
  /**
   * Returns a fresh token. Called when there is no token, when the token is
   * visibly wrong (malformed, expired, for another user) and once after a
   * 4001 or HTTP 401, before giving up with `stopped`/`unauthorized`. Resolving to
   * an empty value gives up at once; throwing (token service unreachable)
   * is retried with backoff. On an open WebSocket it is also called
   * `refreshAhead` before the token's `exp`, and the new token is sent over
   * the socket (`{"type":"token","token":...}`), so the connection outlives
   * the first token; SSE and long-poll renew by reconnecting at expiry.
   */
  getToken?: () => Promise<string>;
  /**
   * How long before the token's `exp` (ms) an open WebSocket renews it
   * through getToken (default 60000; at most half the token's remaining life).
   */
  refreshAhead?: number;
  /** A renewal that failed is tried again after this long (ms, default 5000) while the token lasts. */
  refreshRetry?: number;
  /**
   * Tab sharing: 'worker' (SharedWorker), 'leader' (Web Locks +
   * BroadcastChannel), 'none'. Default 'auto': the first available.
   */
  share?: 'auto' | 'worker' | 'leader' | 'none';
  /** URL of push-worker.js; default: next to push.js. */
  workerUrl?: string | URL;
  /** Transports in fallback order; default ['websocket', 'sse', 'poll']. */
  transports?: TransportName[];
  /** First backoff cap in ms (default 500); doubles per failed attempt. */
  minDelay?: number;
  /** Largest backoff cap in ms (default 30000). */
  maxDelay?: number;
  /** Reconnects after 4003/1001 are spread over [0, movedJitter) ms (default 1000). */
  movedJitter?: number;
  /**
   * With no frame for this long (ms) the connection is taken for dead and
   * replaced (default 75000; 0 turns the watchdog off). Browsers do not show
   * WebSocket pings to scripts, so an idle connection is recycled (resuming
   * with last_seq, nothing lost) at this period.
   */
  heartbeatTimeout?: number;
  /** Failures before open, in a row, before trying the next transport (default 2). */
  fallbackAfter?: number;
  /**
   * Resume after this seq (default 0: only what the server stored). With
   * `epoch`, the last seq seen in that epoch; without, `last_seq` alone keeps
   * its old meaning and the first epoch the edge names is taken as this seq's.
   */
  lastSeq?: number;
  /** Resume in this epoch (sent as `epoch=` beside `last_seq=`). */
  epoch?: string;
}

export interface PushClient {
  on(event: 'message', fn: (m: PushMessage) => void): () => void;
  on(event: 'state', fn: (s: PushState) => void): () => void;
  on(event: 'gap', fn: (g: PushGap) => void): () => void;
  off(event: 'message' | 'state' | 'gap', fn: (v: any) => void): void;
  /** Leaves the connection (the last tab to leave closes it); state becomes stopped/closed. */
  close(): void;
  /** The latest state. */
  readonly state: PushState;
  /** Last seq this tab delivered in the current epoch. */
  readonly lastSeq: number;
  /** The epoch of the last message this tab delivered (or of a gap notice). */
  readonly epoch: string | undefined;
  readonly uid: string;
}

/**
 * Connects to the cluster at `url`, the router's WebSocket URL ending in
 * `/ws` (e.g. `wss://push.example.com/ws`); `/sse` and `/poll` are derived
 * from it for the fallbacks. Messages are delivered once each, in seq order,
 * across reconnects, transports and leader changes.
 */
export function connect(url: string, opts: ConnectOptions): PushClient;

/** Full-jitter backoff: a random delay in [0, min(maxDelay, minDelay·2^attempt)). */
export function backoffDelay(
  attempt: number,
  opts?: { minDelay?: number; maxDelay?: number },
  random?: () => number,
): number;

/**
 * Parses an SSE event id: `<epoch>:<seq>` (the seq follows the last colon)
 * or a bare `<seq>`; null when it is neither.
 */
export function parseEventId(id: string): { epoch: string | undefined; seq: number } | null;

/** Why a token certainly fails (shape, sub ≠ uid, expired), or null. */
export function tokenProblem(token: string, uid: string, nowMs?: number): string | null;

/** A JWT's `exp` in ms since 1970, or undefined when it has none readable. */
export function tokenExpiry(token: string): number | undefined;

/** Close codes of docs/protocol.md. */
export const Close: {
  readonly normal: 1000;
  readonly goingAway: 1001;
  readonly unauthorized: 4001;
  readonly replaced: 4002;
  readonly moved: 4003;
  readonly kicked: 4004;
};

/** Environment a Session uses; tests pass fakes. */
export interface SessionEnv {
  WebSocket?: any;
  EventSource?: any;
  AbortController?: any;
  fetch?: typeof fetch;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (t: any) => void;
  random?: () => number;
  now?: () => number;
}

/** One connection without tab sharing (what a worker or leader tab runs). */
export class Session {
  constructor(url: string, opts: ConnectOptions & { env?: SessionEnv });
  start(): this;
  close(): void;
  on(event: 'message' | 'state' | 'gap', fn: (v: any) => void): () => void;
  readonly state: PushState;
  readonly lastSeq: number;
  readonly epoch: string | undefined;
}
