// SharedWorker of push.js: one Session per (url, uid) for every tab of the
// origin that subscribes; each tab gets every message, gap and state change.
// Loaded by connect() with {type: 'module'}; nothing to call here directly.
import { Session } from './push.js';

const sessions = new Map(); // key url#uid → {session, ports: Set<MessagePort>}
const pending = new Map(); // token request id → {resolve, reject}
let nextID = 1;

// A tab that closes sends 'unsubscribe' from pagehide; a session without
// subscribers is closed after a short grace, so a reload reuses it.
const GRACE_MS = 2000;

// What a session has delivered is kept (the newest REPLAY messages, gaps
// and broadcasts, in order) and replayed to a tab that subscribes later,
// before its first state: a new tab shows what the shared connection
// already has, and its position starts after it.
const REPLAY = 200;

function askToken(entry) {
  const port = [...entry.refreshers][0];
  if (!port) return Promise.resolve(null); // no tab has getToken: nobody can fix the token
  const id = nextID++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      if (pending.delete(id)) reject(new Error('token request timed out'));
    }, 10000);
    const done = (f) => (v) => {
      clearTimeout(timer);
      f(v);
    };
    pending.set(id, { resolve: done(resolve), reject: done(reject) });
    port.postMessage({ type: 'token', id });
  });
}

function subscribe(port, url, opts, canRefresh) {
  const key = url + '#' + opts.uid;
  let entry = sessions.get(key);
  if (!entry) {
    entry = { ports: new Set(), refreshers: new Set(), idle: null, recent: [] };
    const getToken = () => askToken(entry);
    entry.session = new Session(url, { ...opts, getToken });
    entry.session.on('message', (v) => keep(entry, { type: 'message', v }));
    entry.session.on('gap', (v) => keep(entry, { type: 'gap', v }));
    entry.session.on('state', (v) => send(entry, { type: 'state', v }));
    sessions.set(key, entry);
  }
  clearTimeout(entry.idle);
  entry.ports.add(port);
  if (canRefresh) entry.refreshers.add(port);
  for (const m of entry.recent) port.postMessage(m);
  port.postMessage({ type: 'state', v: entry.session.state });
  entry.session.start(); // once a tab can answer its token request
  return () => {
    entry.ports.delete(port);
    entry.refreshers.delete(port);
    if (entry.ports.size === 0) {
      entry.idle = setTimeout(() => {
        if (entry.ports.size === 0) {
          entry.session.close();
          sessions.delete(key);
        }
      }, GRACE_MS);
    }
  };
}

function keep(entry, m) {
  entry.recent.push(m);
  if (entry.recent.length > REPLAY) entry.recent.shift();
  send(entry, m);
}

function send(entry, m) {
  for (const p of entry.ports) p.postMessage(m);
}

self.onconnect = (e) => {
  const port = e.ports[0];
  let leave = null;
  port.onmessage = (ev) => {
    const m = ev.data;
    if (m.type === 'subscribe' && !leave) leave = subscribe(port, m.url, m.opts, m.canRefresh);
    else if (m.type === 'unsubscribe' && leave) {
      leave();
      leave = null;
    } else if (m.type === 'token') {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.token) p.resolve(m.token);
      else p.reject(new Error(m.error || 'no token'));
    }
  };
  port.start();
};
