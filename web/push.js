// Browser client of the push cluster (docs/protocol.md). One ES module, no
// build step, no dependencies. See push.d.ts and README.md for the API.
//
// Layers, innermost first:
//   transports  WebSocket, Server-Sent Events and long-polling, each turned
//               into the same small interface (open → messages → close code);
//   Cursor      the stream position (epoch, seq): dedupe, gaps, resume;
//   Session     one logical connection: state machine, backoff with full
//               jitter, dedupe by (epoch, seq), resume with last_seq and
//               epoch, fallback between
//               transports, heartbeat watchdog, token refresh (ahead of
//               expiry over the open WebSocket). Pure: every
//               browser API and clock comes in through `env`, so Node tests
//               drive it with fakes;
//   connect()   shares one Session per user between the tabs of an origin:
//               in a SharedWorker (push-worker.js) when there is one, else in
//               a leader tab elected with Web Locks that relays over
//               BroadcastChannel, else in the page itself.

/** Close codes of docs/protocol.md. */
export const Close = Object.freeze({
  normal: 1000,
  goingAway: 1001,
  unauthorized: 4001,
  replaced: 4002,
  moved: 4003,
  kicked: 4004,
});

const DEFAULTS = {
  transports: ['websocket', 'sse', 'poll'],
  minDelay: 500, // first backoff cap, ms; doubles per failed attempt
  maxDelay: 30000,
  movedJitter: 1000, // reconnect spread after 4003 / 1001, ms
  heartbeatTimeout: 75000, // no frame for this long: the socket is dead
  fallbackAfter: 2, // failures before open, in a row, before the next transport
  pollTimeout: 35000, // the server holds a poll up to 25 s
  refreshAhead: 60000, // renew the token over the WebSocket this long (at most half its life) before exp
  refreshRetry: 5000, // a failed renewal is tried again after this long while the token lasts
};

/**
 * Full-jitter exponential backoff (AWS architecture blog): a uniformly random
 * delay in [0, min(max, min·2^attempt)).
 */
export function backoffDelay(attempt, { minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay } = {}, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * Checks what a browser can check of a JWT without the key: shape, `sub`
 * equal to uid, `exp` in the future. Returns null when it may be valid, or
 * the reason it certainly is not. A bad signature only the server sees.
 */
export function tokenProblem(token, uid, nowMs = Date.now()) {
  if (typeof token !== 'string' || token === '') return 'no token';
  const claims = claimsOf(token);
  if (!claims) return 'malformed token';
  if (claims.sub !== uid) return 'token is for another user';
  if (typeof claims.exp !== 'number') return 'token without exp';
  if (claims.exp * 1000 <= nowMs) return 'token expired';
  return null;
}

// The JWT's claims object, or null when it is not a readable JWT.
function claimsOf(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return claims !== null && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** A JWT's `exp` in milliseconds since 1970, or undefined when it has none readable. */
export function tokenExpiry(token) {
  const claims = typeof token === 'string' ? claimsOf(token) : null;
  return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
}

/**
 * Adds uid, token, last_seq and epoch to an endpoint URL, swapping the path.
 * With an epoch, last_seq is the last seq seen in that epoch and is sent even
 * when 0 (nothing of that epoch seen yet); without one, last_seq alone keeps
 * its old meaning. It is left out only on a first connection that has seen
 * nothing (resume false): the edge then sends only what no connection has
 * taken. A reconnect always says where it is, last_seq=0 included, so a
 * message written to a connection that died before it arrived is replayed.
 */
export function endpoint(url, path, uid, token, lastSeq, epoch, resume) {
  const u = new URL(url);
  if (path) {
    u.pathname = u.pathname.replace(/\/ws$/, '') + path;
    if (path !== '/ws') u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  }
  u.searchParams.set('uid', uid);
  u.searchParams.set('token', token);
  if (epoch) {
    u.searchParams.set('last_seq', String(lastSeq > 0 ? lastSeq : 0));
    u.searchParams.set('epoch', epoch);
  } else if (lastSeq > 0 || resume) {
    u.searchParams.set('last_seq', String(lastSeq > 0 ? lastSeq : 0));
  }
  return u.toString();
}

/**
 * Parses an SSE event id: `<epoch>:<seq>` (the epoch may itself contain
 * colons: the seq follows the last one) or a bare `<seq>`. Returns
 * {epoch, seq} (epoch undefined for a bare seq) or null when it is neither.
 */
export function parseEventId(id) {
  if (typeof id !== 'string' || id === '') return null;
  const i = id.lastIndexOf(':');
  const num = i < 0 ? id : id.slice(i + 1);
  if (!/^[0-9]+$/.test(num)) return null;
  const seq = Number(num);
  if (!Number.isSafeInteger(seq)) return null;
  if (i < 0) return { epoch: undefined, seq };
  const epoch = id.slice(0, i);
  return epoch === '' ? null : { epoch, seq };
}

// An envelope's epoch as a string, or undefined when it names none (an older
// edge, a heartbeat, a broadcast).
function epochOf(v) {
  return v.epoch === undefined || v.epoch === null || v.epoch === '' ? undefined : String(v.epoch);
}

const validSeq = (n) => Number.isSafeInteger(n) && n > 0; // 1 .. 2^53−1

/**
 * Where a client is in its user's stream: the current epoch (undefined until
 * one is named), the last seq seen in it, and the start of an open-ended gap
 * already reported in it. Pure. message() and gap() take envelopes in
 * arrival order and say what to deliver and which gap to report:
 *
 * - within an epoch a message at or below seq is a duplicate; one above
 *   seq+1 is delivered after a gap for the seqs skipped (unless a gap notice
 *   already covered them);
 * - a message of another epoch starts a new stream whatever its seq, with no
 *   gap for the change itself (the edge sends a notice when something is
 *   missing across epochs);
 * - an envelope without an epoch (an older edge) belongs to the current one;
 *   while no epoch is known the first epoch named is adopted and the seq kept
 *   (last_seq alone keeps its old meaning: the edge numbers after it);
 * - a gap notice {"gap":true,"epoch":E,"from":A,"to":B} moves seq to B; one
 *   without "to" (everything after A−1 may be lost) marks A.. as reported; a
 *   notice already covered (repeated on a resume) is not reported again.
 */
export class Cursor {
  constructor(epoch, seq, openFrom) {
    this.epoch = typeof epoch === 'string' && epoch !== '' ? epoch : undefined;
    this.seq = validSeq(seq) ? seq : 0;
    this.openFrom = validSeq(openFrom) && this.epoch !== undefined ? openFrom : undefined;
  }

  #switch(epoch) {
    if (this.epoch === undefined) {
      this.epoch = epoch; // adopt: the edge numbered after our last_seq
      return;
    }
    this.epoch = epoch;
    this.seq = 0;
    this.openFrom = undefined;
  }

  /**
   * A numbered message (not a broadcast, not a heartbeat). Returns
   * {deliver, gap} (gap undefined when nothing was skipped).
   */
  message(v) {
    if (!validSeq(v.seq)) return { deliver: false };
    const ep = epochOf(v);
    if (ep !== undefined && ep !== this.epoch) {
      const adopt = this.epoch === undefined;
      this.#switch(ep);
      if (!adopt) {
        this.seq = v.seq;
        return { deliver: true };
      }
    }
    if (v.seq <= this.seq) return { deliver: false };
    let gap;
    if (this.seq > 0 && v.seq > this.seq + 1) {
      const from = this.seq + 1;
      const to = this.openFrom !== undefined ? Math.min(v.seq - 1, this.openFrom - 1) : v.seq - 1;
      if (from <= to) gap = this.#gap(from, to);
    }
    this.seq = v.seq;
    return { deliver: true, gap };
  }

  /** A gap notice; returns the gap to report, or null when it says nothing new. */
  gap(v) {
    if (!validSeq(v.from)) return null;
    const bounded = v.to !== undefined && v.to !== null;
    if (bounded && !(validSeq(v.to) && v.to >= v.from)) return null;
    const ep = epochOf(v);
    if (ep !== undefined && ep !== this.epoch) this.#switch(ep);
    if (this.openFrom !== undefined && v.from >= this.openFrom) return null; // reported already
    if (bounded) {
      if (v.to <= this.seq) return null; // behind us: reported, or never missing
      this.seq = v.to;
      return this.#gap(v.from, v.to);
    }
    this.openFrom = v.from;
    return this.#gap(v.from);
  }

  #gap(from, to) {
    const g = {};
    if (this.epoch !== undefined) g.epoch = this.epoch;
    g.from = from;
    if (to !== undefined) g.to = to;
    return g;
  }
}

// ---------------------------------------------------------------------------
// Transports. open(p, h) starts one attempt; p = {url, uid, token, lastSeq,
// epoch, position()}: position() is the Session's (epoch, seq) now, for a
// transport that makes more than one request; h = {open(link), frame(envelope),
// close({code, reason, opened})}. close is called at most once, and never
// after the returned stop() was called. link is {send(text)} on a transport
// that can talk back (the WebSocket: token refresh), else undefined.

function parse(text) {
  try {
    const v = JSON.parse(text);
    return v !== null && typeof v === 'object' ? v : null;
  } catch {
    return null;
  }
}

const transports = {
  websocket(env, p, h) {
    const ws = new env.WebSocket(endpoint(p.url, '/ws', p.uid, p.token, p.lastSeq, p.epoch, p.resume));
    let opened = false;
    let done = false;
    ws.onopen = () => {
      opened = true;
      h.open({ send: (text) => ws.send(text) });
    };
    ws.onmessage = (e) => {
      const v = typeof e.data === 'string' ? parse(e.data) : null;
      if (v) h.frame(v);
    };
    ws.onclose = (e) => {
      if (done) return;
      done = true;
      h.close({ code: e.code, reason: e.reason, opened });
    };
    ws.onerror = () => {}; // a close event always follows
    return () => {
      done = true;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(Close.normal);
      } catch {}
    };
  },

  // SSE: `id: <epoch>:<seq>` (or `id: <seq>`) and `data: <envelope>` per
  // message; a `close` event with data {"close":4003,"reason":"moved"}
  // carries the WebSocket close codes.
  sse(env, p, h) {
    const es = new env.EventSource(endpoint(p.url, '/sse', p.uid, p.token, p.lastSeq, p.epoch, p.resume));
    let opened = false;
    let done = false;
    const finish = (c) => {
      if (done) return;
      done = true;
      es.close();
      h.close(c);
    };
    es.onopen = () => {
      opened = true;
      h.open();
    };
    es.onmessage = (e) => {
      let v = parse(e.data);
      if (!v) return;
      // The envelope names its epoch; should it not, the id `E:N` does.
      if (epochOf(v) === undefined && validSeq(v.seq)) {
        const id = parseEventId(e.lastEventId);
        if (id && id.epoch !== undefined && id.seq === v.seq) v = { ...v, epoch: id.epoch };
      }
      h.frame(v);
    };
    es.addEventListener('close', (e) => {
      const v = parse(e.data) || {};
      finish({ code: v.close || v.code || Close.goingAway, reason: v.reason || '', opened });
    });
    // EventSource would reconnect by itself with Last-Event-ID; the Session
    // reconnects instead, with its own last_seq, epoch and backoff. readyState
    // CLOSED means the server answered with an error status (e.g. 401).
    es.onerror = () => finish({ code: es.readyState === 2 ? 'http-error' : 1006, reason: '', opened });
    return () => {
      done = true;
      es.close();
    };
  },

  // Long-polling: GET returns a JSON array of envelopes (held up to 25 s
  // while empty); the next poll goes out at once with the new last_seq and
  // epoch (the Session's position after the envelopes it was given).
  // Status codes stand for close codes: 401 → 4001, 409 → 4002 replaced,
  // 410 → 4004 kicked, 503 → 1001 (draining or moved: poll again at once).
  poll(env, p, h) {
    let done = false;
    let opened = false;
    let ctl = null;
    let timer = null;
    const finish = (c) => {
      if (done) return;
      done = true;
      h.close(c);
    };
    const once = async () => {
      ctl = new env.AbortController();
      timer = env.setTimeout(() => ctl.abort(), p.pollTimeout);
      let res;
      let body;
      try {
        const at = p.position();
        res = await env.fetch(endpoint(p.url, '/poll', p.uid, p.token, at.lastSeq, at.epoch, at.resume), {
          signal: ctl.signal, cache: 'no-store', credentials: 'omit',
        });
        // The edge answers the head as soon as it accepts the poll: connected.
        if (res.status === 200 && !opened && !done) {
          opened = true;
          h.open();
        }
        body = res.status === 200 ? await res.json() : null;
      } catch {
        env.clearTimeout(timer);
        return finish({ code: 1006, reason: 'poll failed', opened });
      }
      env.clearTimeout(timer);
      if (done) return;
      const code = { 401: Close.unauthorized, 409: Close.replaced, 410: Close.kicked, 503: Close.goingAway }[res.status];
      if (code) return finish({ code, reason: 'HTTP ' + res.status, opened });
      if (res.status !== 200 || !Array.isArray(body)) return finish({ code: 'http-error', reason: 'HTTP ' + res.status, opened });
      if (!opened) {
        opened = true;
        h.open();
      }
      for (const v of body) {
        if (done) return;
        // The edge ends a held poll for a move, a kick... with
        // {"close":<WebSocket close code>,"reason":"..."}.
        if (v && typeof v.close === 'number') return finish({ code: v.close, reason: v.reason || '', opened });
        if (v && typeof v === 'object') h.frame(v);
      }
      if (!done) once();
    };
    once();
    return () => {
      done = true;
      env.clearTimeout(timer);
      if (ctl) ctl.abort();
    };
  },
};

// ---------------------------------------------------------------------------
// Session

/** A tiny event emitter: on() returns the function that removes the handler. */
class Emitter {
  #h = new Map();
  on(ev, fn) {
    if (!this.#h.has(ev)) this.#h.set(ev, new Set());
    this.#h.get(ev).add(fn);
    return () => this.off(ev, fn);
  }
  off(ev, fn) {
    this.#h.get(ev)?.delete(fn);
  }
  emit(ev, v) {
    for (const fn of [...(this.#h.get(ev) || [])]) {
      try {
        fn(v);
      } catch (e) {
        setTimeout(() => { throw e; }); // a handler's bug must not stop delivery
      }
    }
  }
}

function defaultEnv() {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket, EventSource: g.EventSource, AbortController: g.AbortController,
    fetch: g.fetch && g.fetch.bind(g),
    setTimeout: g.setTimeout.bind(g), clearTimeout: g.clearTimeout.bind(g),
    random: Math.random, now: Date.now,
  };
}

/**
 * One logical connection for one user, without tab sharing. States:
 *   connecting   an attempt is under way (transport named)
 *   open         messages flow
 *   reconnecting waiting `delay` ms before the next attempt
 *   stopped      no more attempts: reason 'closed' | 'replaced' | 'kicked' | 'unauthorized'
 */
export class Session extends Emitter {
  constructor(url, opts = {}) {
    super();
    this.url = url;
    this.uid = opts.uid;
    this.token = opts.token;
    this.getToken = opts.getToken;
    this.o = { ...DEFAULTS, ...opts };
    this.env = { ...defaultEnv(), ...(opts.env || {}) };
    this.cursor = new Cursor(opts.epoch, opts.lastSeq, opts.openGapFrom);
    // A session that starts from a known position (a takeover) resumes.
    this.opened = opts.epoch !== undefined || opts.lastSeq > 0;
    this.#state = { state: 'idle', transport: null, attempt: 0 };
    this.transports = this.o.transports.filter((t) => this.#available(t));
    this.ti = 0; // index of the current transport
    this.failures = 0; // failures before open, in a row, on the current transport
    this.attempt = 0; // backoff attempt
    this.refreshed = false; // asked getToken once since the last open
    this.link = null; // {send} of the open WebSocket, for token renewal
    this.renewal = null; // timer of the next renewal ahead of expiry
    this.offered = null; // token sent for renewal, waiting for the edge's answer
    this.stop = null; // stops the current transport attempt
    this.timer = null; // backoff or jitter timer
    this.watchdog = null;
    this.ended = false;
  }

  #state;

  /** The latest state, with the position (lastSeq, epoch) as it is now. */
  get state() {
    return { ...this.#state, lastSeq: this.lastSeq, epoch: this.epoch };
  }

  /** Last seq seen in the current epoch. */
  get lastSeq() {
    return this.cursor.seq;
  }

  /** The current epoch, undefined until the edge named one. */
  get epoch() {
    return this.cursor.epoch;
  }

  #available(t) {
    const e = this.env;
    return t === 'websocket' ? !!e.WebSocket : t === 'sse' ? !!e.EventSource : t === 'poll' ? !!(e.fetch && e.AbortController) : false;
  }

  #set(state, extra = {}) {
    this.#state = { state, transport: this.transports[this.ti] || null, attempt: this.attempt, ...extra };
    this.emit('state', this.state);
  }

  /** Starts connecting; returns this. */
  start() {
    if (!this.started) {
      this.started = true;
      this.#connect();
    }
    return this;
  }

  /** Stops for good (state stopped, reason 'closed'). */
  close() {
    this.#end('closed');
  }

  #end(reason, { code, reason: text, detail } = {}) {
    if (this.ended) return;
    this.ended = true;
    this.#teardown();
    const extra = {};
    if (code !== undefined) extra.code = code;
    if (detail || text) extra.detail = detail || text;
    this.#set('stopped', { reason, ...extra });
  }

  #teardown() {
    if (this.stop) this.stop();
    this.stop = null;
    this.env.clearTimeout(this.timer);
    this.env.clearTimeout(this.watchdog);
    this.timer = this.watchdog = null;
    this.#unlink();
  }

  #unlink() {
    this.env.clearTimeout(this.renewal);
    this.renewal = this.link = this.offered = null;
  }

  // Renewal ahead of expiry (docs/protocol.md, "Token lifetime"): on an
  // open WebSocket, refreshAhead before exp (at most half the token's
  // remaining life) the Session asks getToken and sends
  // {"type":"token","token":...}; the edge answers {"seq":0,"token":true,
  // "exp":...} and the new token is the Session's from then on. Without
  // getToken, or on SSE and long-poll, the edge ends the connection with
  // 4001 at expiry and the Session gets a token and resumes.
  #planRenewal() {
    this.env.clearTimeout(this.renewal);
    this.renewal = null;
    if (!this.getToken || !this.link) return;
    const exp = tokenExpiry(this.token);
    if (exp === undefined) return;
    const left = exp - this.env.now();
    const ahead = Math.min(this.o.refreshAhead, Math.max(0, left / 2));
    this.renewal = this.env.setTimeout(() => this.#renew(), Math.max(0, left - ahead));
  }

  async #renew() {
    this.renewal = null;
    const link = this.link;
    if (!link || this.ended) return;
    let t = null;
    try {
      t = await this.getToken();
    } catch {}
    if (this.ended || this.link !== link) return; // the connection changed meanwhile
    if (!t || tokenProblem(t, this.uid, this.env.now())) {
      // Try again while the current token lasts; past it the edge closes
      // with 4001 and the Session reconnects with whatever getToken gives.
      const left = (tokenExpiry(this.token) ?? 0) - this.env.now();
      if (left > 0) this.renewal = this.env.setTimeout(() => this.#renew(), Math.min(this.o.refreshRetry, left / 2));
      return;
    }
    this.offered = t;
    try {
      link.send(JSON.stringify({ type: 'token', token: t }));
    } catch {}
  }

  async #refreshToken(why) {
    if (!this.getToken || this.refreshed) {
      this.#end('unauthorized', { detail: why });
      return false;
    }
    this.refreshed = true;
    try {
      this.token = await this.getToken();
    } catch (e) {
      // Most likely the token service is unreachable for a moment: that
      // says nothing about the user's rights, so retry later.
      this.refreshed = false;
      this.#later(backoffDelay(this.attempt++, this.o, this.env.random), { code: 'token-error', reason: String((e && e.message) || e) });
      return false;
    }
    if (!this.token) {
      this.#end('unauthorized', { detail: why + '; getToken gave no token' });
      return false;
    }
    return !this.ended;
  }

  async #connect() {
    if (this.ended) return;
    if (this.transports.length === 0) return this.#end('unsupported', { detail: 'no transport available' });
    let bad = tokenProblem(this.token, this.uid, this.env.now());
    if (bad) {
      if (!(await this.#refreshToken(bad))) return;
      if ((bad = tokenProblem(this.token, this.uid, this.env.now()))) return this.#end('unauthorized', { detail: bad });
    }
    const name = this.transports[this.ti];
    this.#set('connecting');
    const p = {
      url: this.url, uid: this.uid, token: this.token, lastSeq: this.lastSeq, epoch: this.epoch, resume: this.opened,
      position: () => ({ lastSeq: this.lastSeq, epoch: this.epoch, resume: this.opened }), pollTimeout: this.o.pollTimeout,
    };
    this.stop = transports[name](this.env, p, {
      open: (link) => {
        this.opened = true; // from now on every connection is a resume
        this.failures = 0;
        this.attempt = 0;
        this.refreshed = false;
        this.link = link || null;
        this.#set('open');
        this.#arm();
        this.#planRenewal();
      },
      frame: (v) => {
        this.#arm();
        this.#frame(v);
      },
      close: (c) => this.#closed(c),
    });
  }

  #arm() {
    this.env.clearTimeout(this.watchdog);
    if (this.o.heartbeatTimeout > 0 && this.transports[this.ti] !== 'poll') {
      this.watchdog = this.env.setTimeout(() => {
        // Browsers hide WebSocket pings: silence is all a page can see.
        this.#teardown();
        this.#closed({ code: 'heartbeat', reason: 'no frame for ' + this.o.heartbeatTimeout + ' ms', opened: true });
      }, this.o.heartbeatTimeout);
    }
  }

  #frame(v) {
    if (v.gap === true) {
      const g = this.cursor.gap(v);
      if (g) this.emit('gap', g);
      return;
    }
    if (v.broadcast === true) {
      this.emit('message', v); // not stored, not resumable, not numbered
      return;
    }
    if (v.hb === true) return; // heartbeat: only re-arms the watchdog
    if (v.token === true && !validSeq(v.seq)) {
      // The edge took the renewed token: it is the one to reconnect with.
      if (this.offered) this.token = this.offered;
      this.offered = null;
      this.#planRenewal();
      return;
    }
    const r = this.cursor.message(v); // drops duplicates after a resume
    if (r.gap) this.emit('gap', r.gap);
    if (r.deliver) this.emit('message', v);
  }

  #closed({ code, reason, opened }) {
    this.stop = null;
    this.env.clearTimeout(this.watchdog);
    this.#unlink();
    if (this.ended) return;
    const info = { code, reason };
    switch (code) {
      case Close.replaced:
        return this.#end('replaced', info);
      case Close.kicked:
        return this.#end('kicked', info);
      case Close.unauthorized:
        return this.#refreshToken('server said 4001').then((ok) => ok && this.#later(0, info));
      case Close.moved:
      case Close.goingAway:
        // The user has a new owner, or this edge is leaving: resume at once,
        // spread a little so a drained edge's users do not arrive together.
        this.attempt = 0;
        return this.#later(Math.floor(this.env.random() * this.o.movedJitter), info);
    }
    let cycled = false;
    if (!opened && ++this.failures >= this.o.fallbackAfter) {
      this.failures = 0;
      this.ti = (this.ti + 1) % this.transports.length;
      // Next transport at once, except after the whole list failed.
      if (this.ti !== 0) return this.#later(0, info);
      cycled = true;
    }
    const delay = backoffDelay(this.attempt++, this.o, this.env.random);
    this.#later(delay, info);
    // A browser cannot see a WebSocket's HTTP 401: when nothing opens at
    // all, a fresh token is worth one try (a rotated secret, a clock skew).
    if (cycled && this.getToken && !this.refreshed) {
      this.refreshed = true;
      Promise.resolve().then(() => this.getToken()).then((t) => { if (t) this.token = t; }, () => {});
    }
  }

  #later(delay, info) {
    if (this.ended) return;
    this.#set('reconnecting', { delay, ...info });
    this.timer = this.env.setTimeout(() => {
      this.timer = null;
      this.#connect();
    }, delay);
  }
}

// ---------------------------------------------------------------------------
// Sharing between tabs

const lockName = (url, uid) => 'push:' + url + '#' + uid;

/** The object connect() returns; every mode looks the same from outside. */
class Client extends Emitter {
  constructor(url, opts) {
    super();
    this.url = url;
    this.uid = opts.uid;
    this.cursor = new Cursor(opts.epoch, opts.lastSeq);
    this.state = { state: 'idle', transport: null, attempt: 0, lastSeq: this.lastSeq, epoch: this.epoch };
    this.mode = 'none';
    this.closers = [];
  }

  get lastSeq() {
    return this.cursor.seq;
  }

  get epoch() {
    return this.cursor.epoch;
  }

  /** What a Session taking over from this tab resumes from. */
  _position() {
    return { lastSeq: this.cursor.seq, epoch: this.cursor.epoch, openGapFrom: this.cursor.openFrom };
  }

  // Every mode delivers through here: the page's own dedupe makes relays
  // idempotent and keeps (epoch, lastSeq) for a takeover. Gaps are the
  // Session's to find; here they only move the position, and one this tab
  // already reported (an open-ended notice repeated to a new leader) is not
  // reported twice.
  _message(v) {
    if (v.broadcast !== true && !this.cursor.message(v).deliver) return;
    this.emit('message', v);
  }

  _gap(g) {
    const r = this.cursor.gap({ gap: true, ...g });
    if (r) this.emit('gap', g);
  }

  _state(s) {
    // A tab that has seen nothing yet (it just opened and follows a running
    // connection) starts from the connection's position, so that a takeover
    // by this tab resumes from there.
    if (this.cursor.epoch === undefined && this.cursor.seq === 0 && (s.epoch || s.lastSeq > 0)) {
      this.cursor = new Cursor(s.epoch, s.lastSeq);
    }
    this.state = { ...s, shared: this.mode };
    this.emit('state', this.state);
  }

  close() {
    for (const f of this.closers.splice(0)) f();
    if (this.state.state !== 'stopped') this._state({ ...this.state, state: 'stopped', reason: 'closed' });
  }
}

function tokenSource(opts) {
  if (opts.getToken) return opts.getToken;
  return null;
}

function runLocal(c, url, opts) {
  const s = new Session(url, { ...opts, ...c._position() });
  s.on('message', (v) => c._message(v));
  s.on('gap', (g) => c._gap(g));
  s.on('state', (st) => c._state(st));
  c.closers.push(() => s.close());
  s.start();
  return s;
}

function viaWorker(c, url, opts) {
  const workerURL = opts.workerUrl || new URL('./push-worker.js', import.meta.url);
  const w = new SharedWorker(workerURL, { type: 'module', name: 'push' });
  const port = w.port;
  let heard = false;
  // A worker that cannot start (no module workers, a blocked script): lead
  // or follow from this tab instead.
  w.onerror = () => {
    if (heard || c.state.state === 'stopped') return;
    for (const f of c.closers.splice(0)) f();
    if (globalThis.navigator?.locks && typeof BroadcastChannel === 'function') viaLeader(c, url, opts);
    else {
      c.mode = 'none';
      runLocal(c, url, opts);
    }
  };
  const getToken = tokenSource(opts);
  port.onmessage = async (e) => {
    const m = e.data;
    heard = true;
    if (m.type === 'message') c._message(m.v);
    else if (m.type === 'gap') c._gap(m.v);
    else if (m.type === 'state') c._state(m.v);
    else if (m.type === 'token') {
      let token = null;
      let error = null;
      try {
        if (!getToken) throw new Error('no getToken');
        token = await getToken();
      } catch (err) {
        error = String((err && err.message) || err);
      }
      port.postMessage({ type: 'token', id: m.id, token, error });
    }
  };
  port.start();
  const { env, getToken: _g, workerUrl: _w, share: _s, ...plain } = opts;
  port.postMessage({ type: 'subscribe', url, opts: { ...plain, ...c._position() }, canRefresh: !!getToken });
  const bye = () => port.postMessage({ type: 'unsubscribe' });
  addEventListener('pagehide', bye);
  c.closers.push(() => {
    removeEventListener('pagehide', bye);
    bye();
    port.close();
  });
}

function viaLeader(c, url, opts) {
  const name = lockName(url, opts.uid);
  const bc = new BroadcastChannel(name);
  let session = null;
  let closed = false;
  const release = [];
  bc.onmessage = (e) => {
    const m = e.data;
    if (session) {
      if (m.type === 'hello') bc.postMessage({ type: 'state', v: session.state });
      return;
    }
    if (m.type === 'message') c._message(m.v);
    else if (m.type === 'gap') c._gap(m.v);
    else if (m.type === 'state') c._state(m.v);
  };
  c.mode = 'follower';
  c._state({ ...c.state, state: 'connecting' });
  bc.postMessage({ type: 'hello' });
  // The lock is held for the tab's life (or until close()); the browser
  // releases it when the tab goes away and the next waiting tab leads.
  navigator.locks.request(name, () => {
    if (closed) return;
    c.mode = 'leader';
    session = runLocal(c, url, opts);
    session.on('message', (v) => bc.postMessage({ type: 'message', v }));
    session.on('gap', (v) => bc.postMessage({ type: 'gap', v }));
    session.on('state', (v) => bc.postMessage({ type: 'state', v }));
    return new Promise((resolve) => release.push(resolve));
  });
  c.closers.push(() => {
    closed = true;
    if (session) session.close();
    for (const r of release) r();
    bc.close();
  });
}

/**
 * Connects to the push cluster at `url` (the router's ws:// or wss:// URL
 * ending in /ws). See push.d.ts.
 */
export function connect(url, opts = {}) {
  if (!opts.uid) throw new TypeError('push: connect needs a uid');
  if (!opts.token && !opts.getToken) throw new TypeError('push: connect needs a token or getToken');
  const c = new Client(url, opts);
  let share = opts.share || 'auto';
  const g = globalThis;
  if (share === 'auto') {
    share = typeof g.SharedWorker === 'function' ? 'worker'
      : g.navigator && g.navigator.locks && typeof g.BroadcastChannel === 'function' ? 'leader' : 'none';
  }
  const start = () => {
    if (share === 'none') {
      c.mode = 'none';
      runLocal(c, url, opts);
    } else if (share === 'worker') {
      c.mode = 'worker';
      viaWorker(c, url, opts);
    } else if (share === 'leader') {
      viaLeader(c, url, opts);
    } else {
      throw new TypeError('push: share must be auto, worker, leader or none');
    }
  };
  // Started after the caller attached its handlers: the first states
  // (or an immediate auth error) are not lost.
  queueMicrotask(start);
  return c;
}
