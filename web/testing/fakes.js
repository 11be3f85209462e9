// Fakes of the browser APIs a Session uses: WebSocket, EventSource, fetch
// and timers, driven by hand so the tests are deterministic and instant.

export function token(sub, expInSec = 3600, now = Date.now()) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ sub, exp: Math.floor(now / 1000) + expInSec }) + '.sig';
}

export const flush = () => new Promise((r) => setImmediate(r));

export function fakeEnv({ random = () => 0.5 } = {}) {
  const env = { sockets: [], sources: [], polls: [], timers: [], clock: 0, wall: Date.now() };
  let ids = 0;
  env.setTimeout = (fn, ms) => {
    const t = { id: ++ids, at: env.clock + ms, fn };
    env.timers.push(t);
    return t.id;
  };
  env.clearTimeout = (id) => {
    env.timers = env.timers.filter((t) => t.id !== id);
  };
  // advance runs the timers due within ms, in order.
  env.advance = async (ms) => {
    const end = env.clock + ms;
    for (;;) {
      env.timers.sort((a, b) => a.at - b.at);
      const t = env.timers[0];
      if (!t || t.at > end) break;
      env.timers.shift();
      env.clock = t.at;
      t.fn();
      await flush();
    }
    env.clock = end;
  };
  env.pending = () => env.timers.map((t) => t.at - env.clock).sort((a, b) => a - b);
  env.random = random;
  env.now = () => env.wall + env.clock;

  // A WebSocket's server frames come from the test: receive(v) (an object
  // is sent as JSON, a string as is), or send(v) with an object. What the
  // client sends (always a string, as ws.send(text)) is kept in sent.
  env.WebSocket = class {
    constructor(url) {
      this.url = new URL(url);
      this.closedWith = null;
      this.sent = [];
      env.sockets.push(this);
    }
    close(code) { this.closedWith = code; }
    open() { this.onopen && this.onopen(); }
    send(v) {
      if (typeof v === 'string') this.sent.push(v);
      else this.receive(v);
    }
    receive(v) { this.onmessage && this.onmessage({ data: typeof v === 'string' ? v : JSON.stringify(v) }); }
    drop(code, reason = '') { this.onclose && this.onclose({ code, reason }); }
  };
  env.EventSource = class {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 0;
      this.closed = false;
      this.listeners = {};
      env.sources.push(this);
    }
    addEventListener(ev, fn) { this.listeners[ev] = fn; }
    close() { this.closed = true; this.readyState = 2; }
    open() { this.readyState = 1; this.onopen && this.onopen(); }
    send(v, id) { this.onmessage && this.onmessage({ data: JSON.stringify(v), lastEventId: String(id || '') }); }
    event(name, v) { this.listeners[name] && this.listeners[name]({ data: JSON.stringify(v) }); }
    fail(closed) { this.readyState = closed ? 2 : 0; this.onerror && this.onerror({}); }
  };
  env.AbortController = AbortController;
  // fetch: each call waits until the test answers it with reply(status, body)
  // or fails it with error().
  env.fetch = (url, init) => new Promise((resolve, reject) => {
    const p = { url: new URL(url), init, aborted: false };
    p.reply = (status, body) => resolve({ status, ok: status >= 200 && status < 300, json: async () => body });
    p.error = () => reject(new TypeError('network error'));
    init.signal.addEventListener('abort', () => {
      p.aborted = true;
      reject(new DOMException('aborted', 'AbortError'));
    });
    env.polls.push(p);
  });
  return env;
}
