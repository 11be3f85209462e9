// Epochs: a user's stream position is (epoch, seq). Dedupe within an epoch,
// a new epoch accepted whatever its seq, gap notices (bounded, open-ended,
// without epoch from older edges), resume URLs, SSE ids `E:N`, tab takeover.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, Cursor, connect, endpoint, parseEventId, Close } from '../push.js';
import { fakeEnv, token, flush } from '../testing/fakes.js';

const URL_WS = 'ws://push.example:8080/ws';

function session(env, opts = {}) {
  const s = new Session(URL_WS, { uid: 'alice', token: token('alice'), env, ...opts });
  const got = { messages: [], states: [], gaps: [], events: [] };
  s.on('message', (m) => { got.messages.push(m); got.events.push(['message', m.epoch, m.seq]); });
  s.on('state', (st) => got.states.push(st));
  s.on('gap', (g) => { got.gaps.push(g); got.events.push(['gap', g.epoch, g.from, g.to]); });
  s.start();
  return { s, got, last: () => got.states[got.states.length - 1] };
}

const q = (u, k) => u.searchParams.get(k);

test('endpoint: last_seq with epoch; 0 is sent when an epoch is known, left out without one', () => {
  assert.equal(endpoint('wss://h/ws', '/ws', 'a', 't', 57, 'E1'), 'wss://h/ws?uid=a&token=t&last_seq=57&epoch=E1');
  assert.equal(endpoint('wss://h/ws', '/sse', 'a', 't', 0, 'E2'), 'https://h/sse?uid=a&token=t&last_seq=0&epoch=E2');
  assert.equal(endpoint('wss://h/ws', '/poll', 'a', 't', 7, undefined), 'https://h/poll?uid=a&token=t&last_seq=7');
  assert.equal(endpoint('wss://h/ws', '/ws', 'a', 't', 0, undefined), 'wss://h/ws?uid=a&token=t');
  // Any string is an epoch; it is percent-encoded like the rest.
  assert.equal(q(new URL(endpoint('wss://h/ws', '/ws', 'a', 't', 3, '7:a b&c')), 'epoch'), '7:a b&c');
});

test('resume: the reconnect URL carries last_seq and epoch of the current epoch; the state shows them', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, last } = session(env);
  assert.equal(q(env.sockets[0].url, 'epoch'), null, 'no epoch known yet: none sent');
  env.sockets[0].open();
  env.sockets[0].send({ seq: 56, epoch: 'E1', data: 'a' });
  env.sockets[0].send({ seq: 57, epoch: 'E1', data: 'b' });
  assert.equal(s.epoch, 'E1');
  assert.equal(s.lastSeq, 57);
  env.sockets[0].drop(Close.moved);
  assert.equal(last().epoch, 'E1');
  assert.equal(last().lastSeq, 57);
  await env.advance(0);
  assert.equal(q(env.sockets[1].url, 'last_seq'), '57');
  assert.equal(q(env.sockets[1].url, 'epoch'), 'E1');
});

test('a reconnect that has seen nothing says last_seq=0, so what went to the dead connection is replayed', async () => {
  const env = fakeEnv({ random: () => 0 });
  session(env);
  assert.equal(q(env.sockets[0].url, 'last_seq'), null, 'first connection, nothing seen: fresh');
  env.sockets[0].open();
  env.sockets[0].drop(1006); // a router died with a message in its buffers
  await env.advance(0);
  assert.equal(q(env.sockets[1].url, 'last_seq'), '0');
  assert.equal(q(env.sockets[1].url, 'epoch'), null);
  assert.equal(endpoint('wss://h/ws', '/ws', 'a', 't', 0, undefined, true), 'wss://h/ws?uid=a&token=t&last_seq=0');
});

test('dedupe within an epoch: at or below the last seq is dropped, no gap', () => {
  const env = fakeEnv();
  const { got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  for (const n of [1, 2, 2, 1, 3, 3]) ws.send({ seq: n, epoch: 'E1', data: n });
  assert.deepEqual(got.messages.map((m) => [m.epoch, m.seq]), [['E1', 1], ['E1', 2], ['E1', 3]]);
  assert.deepEqual(got.gaps, []);
});

test('a new epoch at seq 1 after seq 57 of the old one is accepted, with no gap; its own duplicates are dropped', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, got } = session(env, { lastSeq: 55, epoch: 'E1' });
  const ws = env.sockets[0];
  assert.equal(q(ws.url, 'last_seq'), '55');
  assert.equal(q(ws.url, 'epoch'), 'E1');
  ws.open();
  ws.send({ seq: 56, epoch: 'E1', data: 'a' });
  ws.send({ seq: 57, epoch: 'E1', data: 'b' });
  ws.send({ seq: 1, epoch: 'E2', data: 'c' });
  ws.send({ seq: 1, epoch: 'E2', data: 'c' });
  ws.send({ seq: 2, epoch: 'E2', data: 'd' });
  assert.deepEqual(got.messages.map((m) => m.data), ['a', 'b', 'c', 'd']);
  assert.deepEqual(got.gaps, []);
  assert.equal(s.epoch, 'E2');
  assert.equal(s.lastSeq, 2);
  ws.drop(1006);
  await env.advance(0);
  assert.equal(q(env.sockets[1].url, 'last_seq'), '2');
  assert.equal(q(env.sockets[1].url, 'epoch'), 'E2');
  // The new epoch's replay after the resume shows nothing twice.
  env.sockets[1].open();
  env.sockets[1].send({ seq: 2, epoch: 'E2', data: 'd' });
  env.sockets[1].send({ seq: 3, epoch: 'E2', data: 'e' });
  assert.deepEqual(got.messages.map((m) => m.data), ['a', 'b', 'c', 'd', 'e']);
});

test('an open-ended gap notice is reported once: not again on a resume, not for the epoch change, not for skipped seqs', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 57, epoch: 'E1', data: 'a' });
  ws.send({ gap: true, epoch: 'E1', from: 58 });
  assert.deepEqual(got.gaps, [{ epoch: 'E1', from: 58 }]);
  assert.equal(got.gaps[0].to, undefined);
  assert.equal(s.lastSeq, 57, 'nothing after 57 is known: resume from 57');
  ws.drop(1006);
  await env.advance(0);
  const ws2 = env.sockets[1];
  assert.equal(q(ws2.url, 'last_seq'), '57');
  assert.equal(q(ws2.url, 'epoch'), 'E1');
  ws2.open();
  ws2.send({ gap: true, epoch: 'E1', from: 58 }); // the edge says it again
  ws2.send({ seq: 1, epoch: 'E2', data: 'b' });
  ws2.send({ seq: 2, epoch: 'E2', data: 'c' });
  assert.deepEqual(got.events, [
    ['message', 'E1', 57], ['gap', 'E1', 58, undefined], ['message', 'E2', 1], ['message', 'E2', 2],
  ]);
  assert.equal(s.epoch, 'E2');
});

test('open-ended gap, then a later seq of the same epoch: delivered, the skipped seqs already reported', () => {
  const env = fakeEnv();
  const { got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 10, epoch: 'E1', data: 'a' });
  ws.send({ gap: true, epoch: 'E1', from: 11 });
  ws.send({ seq: 14, epoch: 'E1', data: 'b' });
  assert.deepEqual(got.events, [['message', 'E1', 10], ['gap', 'E1', 11, undefined], ['message', 'E1', 14]]);
});

test('a jump within an epoch without a notice is reported as a gap; a bounded notice moves the position', () => {
  const env = fakeEnv();
  const { s, got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 3, epoch: 'E1', data: 'a' }); // first message: no baseline, no gap
  ws.send({ seq: 6, epoch: 'E1', data: 'b' });
  ws.send({ gap: true, epoch: 'E1', from: 7, to: 9 });
  ws.send({ gap: true, epoch: 'E1', from: 7, to: 9 }); // repeated: already behind us
  ws.send({ seq: 10, epoch: 'E1', data: 'c' });
  assert.deepEqual(got.events, [
    ['message', 'E1', 3], ['gap', 'E1', 4, 5], ['message', 'E1', 6], ['gap', 'E1', 7, 9], ['message', 'E1', 10],
  ]);
  assert.equal(s.lastSeq, 10);
});

test('a gap notice naming a new epoch starts it; what follows in it is not a jump', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 57, epoch: 'E1', data: 'a' });
  ws.send({ gap: true, epoch: 'E2', from: 1, to: 3 });
  ws.send({ seq: 4, epoch: 'E2', data: 'b' });
  assert.deepEqual(got.events, [['message', 'E1', 57], ['gap', 'E2', 1, 3], ['message', 'E2', 4]]);
  assert.equal(s.epoch, 'E2');
  // An open-ended notice of a new epoch before any of its messages: resume
  // in that epoch from 0.
  ws.send({ gap: true, epoch: 'E3', from: 1 });
  assert.equal(s.epoch, 'E3');
  assert.equal(s.lastSeq, 0);
  ws.drop(1006);
  await env.advance(0);
  assert.equal(q(env.sockets[1].url, 'last_seq'), '0');
  assert.equal(q(env.sockets[1].url, 'epoch'), 'E3');
});

test('older edges: envelopes and gap notices without epoch belong to the current epoch', () => {
  const env = fakeEnv();
  const { s, got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 9, epoch: 'E1', data: 'a' });
  ws.send({ seq: 10, data: 'b' });
  ws.send({ seq: 10, data: 'b' });
  ws.send({ gap: true, from: 11, to: 12 });
  ws.send({ seq: 13, data: 'c' });
  assert.deepEqual(got.events, [['message', 'E1', 9], ['message', undefined, 10], ['gap', 'E1', 11, 12], ['message', undefined, 13]]);
  assert.equal(s.epoch, 'E1');
  assert.equal(s.lastSeq, 13);
});

test('last_seq alone (no epoch known): the first epoch named is adopted and the seq kept', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, got } = session(env, { lastSeq: 10 });
  const ws = env.sockets[0];
  assert.equal(q(ws.url, 'last_seq'), '10');
  assert.equal(q(ws.url, 'epoch'), null);
  ws.open();
  ws.send({ seq: 10, epoch: 'E1', data: 'old' });
  ws.send({ seq: 11, epoch: 'E1', data: 'new' });
  assert.deepEqual(got.messages.map((m) => m.data), ['new']);
  assert.equal(s.epoch, 'E1');
  ws.drop(1006);
  await env.advance(0);
  assert.equal(q(env.sockets[1].url, 'last_seq'), '11');
  assert.equal(q(env.sockets[1].url, 'epoch'), 'E1');
});

test('heartbeats and broadcasts: never deduped, never move the position, across an epoch change', () => {
  const env = fakeEnv();
  const { s, got } = session(env);
  const ws = env.sockets[0];
  ws.open();
  ws.send({ seq: 5, epoch: 'E1', data: 'a' });
  ws.send({ seq: 0, hb: true });
  ws.send({ seq: 0, broadcast: true, data: 'all' });
  ws.send({ seq: 0, broadcast: true, data: 'all' });
  ws.send({ seq: 0, hb: true });
  assert.equal(s.epoch, 'E1');
  assert.equal(s.lastSeq, 5);
  ws.send({ seq: 1, epoch: 'E2', data: 'b' });
  ws.send({ seq: 0, broadcast: true, data: 'all' });
  ws.send({ seq: 0, hb: true });
  assert.deepEqual(got.messages.map((m) => m.data), ['a', 'all', 'all', 'b', 'all']);
  assert.deepEqual(got.gaps, []);
  assert.equal(s.epoch, 'E2');
  assert.equal(s.lastSeq, 1);
});

test('parseEventId: E:N, a bare N, colons inside the epoch, and junk', () => {
  assert.deepEqual(parseEventId('E1:42'), { epoch: 'E1', seq: 42 });
  assert.deepEqual(parseEventId('42'), { epoch: undefined, seq: 42 });
  assert.deepEqual(parseEventId('7:1732972800:3'), { epoch: '7:1732972800', seq: 3 });
  assert.deepEqual(parseEventId('E:9007199254740991'), { epoch: 'E', seq: 2 ** 53 - 1 });
  for (const bad of ['', ':5', 'E:', 'E:x', 'E:-1', 'E:1.5', 'E:9007199254740992', undefined]) {
    assert.equal(parseEventId(bad), null, String(bad));
  }
});

test('SSE: ids E:N; an envelope without epoch takes it from its id; the reconnect carries it', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { s, got } = session(env, { transports: ['sse'] });
  const es = env.sources[0];
  es.open();
  es.send({ seq: 4, epoch: 'E1', data: 'a' }, 'E1:4');
  es.send({ seq: 5, data: 'b' }, 'E1:5');
  es.send({ seq: 1, data: 'c' }, 'E2:1'); // the id's epoch is new: a new stream
  es.send({ seq: 2, data: 'd' }, 'E2:7'); // id and envelope disagree: the envelope wins, no epoch from the id
  es.send({ seq: 0, broadcast: true, data: 'all' });
  assert.deepEqual(got.messages.map((m) => [m.data, m.epoch]), [['a', 'E1'], ['b', 'E1'], ['c', 'E2'], ['d', undefined], ['all', undefined]]);
  assert.equal(s.epoch, 'E2');
  es.event('close', { close: Close.moved, reason: 'moved' });
  await env.advance(0);
  const next = env.sources[1].url;
  assert.equal(next.pathname, '/sse');
  assert.equal(q(next, 'last_seq'), '2');
  assert.equal(q(next, 'epoch'), 'E2');
});

test('poll: each poll carries the position after the last answer, epoch included', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { got } = session(env, { transports: ['poll'] });
  assert.equal(q(env.polls[0].url, 'epoch'), null);
  env.polls[0].reply(200, [{ seq: 56, epoch: 'E1', data: 'a' }, { seq: 57, epoch: 'E1', data: 'b' }]);
  await flush();
  assert.equal(q(env.polls[1].url, 'last_seq'), '57');
  assert.equal(q(env.polls[1].url, 'epoch'), 'E1');
  env.polls[1].reply(200, [{ gap: true, epoch: 'E1', from: 58 }, { seq: 1, epoch: 'E2', data: 'c' }]);
  await flush();
  assert.equal(q(env.polls[2].url, 'last_seq'), '1');
  assert.equal(q(env.polls[2].url, 'epoch'), 'E2');
  env.polls[2].reply(200, [{ seq: 1, epoch: 'E2', data: 'c' }, { seq: 2, epoch: 'E2', data: 'd' }]);
  await flush();
  assert.deepEqual(got.events, [
    ['message', 'E1', 56], ['message', 'E1', 57], ['gap', 'E1', 58, undefined], ['message', 'E2', 1], ['message', 'E2', 2],
  ]);
  assert.equal(q(env.polls[3].url, 'last_seq'), '2');
});

test('Cursor: seq bounds (1 .. 2^53−1) and malformed notices', () => {
  const c = new Cursor('E', 2 ** 53 - 2);
  assert.equal(c.message({ seq: 2 ** 53 - 1, epoch: 'E' }).deliver, true);
  assert.equal(c.message({ seq: 2 ** 53, epoch: 'E' }).deliver, false);
  assert.equal(c.message({ seq: '5', epoch: 'E' }).deliver, false);
  assert.equal(c.gap({ gap: true, epoch: 'E', from: 'x' }), null);
  assert.equal(c.gap({ gap: true, epoch: 'E', from: 9, to: 3 }), null);
  assert.equal(c.epoch, 'E');
  assert.equal(new Cursor(undefined, -3).seq, 0);
});

// ---------------------------------------------------------------------------
// Tab sharing: the leader tab's position (epoch and seq) goes to the tab that
// takes over. Web Locks are faked (Node has none); BroadcastChannel is Node's.

function fakeLocks() {
  const queues = new Map();
  return {
    request(name, cb) {
      return new Promise((resolve, reject) => {
        const q = queues.get(name) || [];
        queues.set(name, q);
        const run = () => Promise.resolve().then(() => cb({ name })).then((v) => {
          resolve(v);
          q.shift();
          if (q.length) q[0]();
        }, reject);
        q.push(run);
        if (q.length === 1) run();
      });
    },
  };
}

const tick = () => new Promise((r) => setTimeout(r, 5));
async function until(what, fn) {
  for (let i = 0; i < 200; i++) {
    if (fn()) return;
    await tick();
  }
  throw new Error('timed out waiting for ' + what);
}

test('leader takeover resumes with the epoch and seq the follower saw; a repeated open-ended gap is not reported again; a new tab starts at the leader\'s position', async () => {
  const had = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  Object.defineProperty(globalThis, 'navigator', { value: { locks: fakeLocks() }, configurable: true, writable: true });
  const env = fakeEnv({ random: () => 0 });
  const opts = { uid: 'lead', token: token('lead'), share: 'leader', env };
  const a = connect(URL_WS, opts);
  const b = connect(URL_WS, opts);
  let c = null;
  const seen = [];
  b.on('message', (m) => seen.push(['message', m.epoch, m.seq]));
  b.on('gap', (g) => seen.push(['gap', g.epoch, g.from, g.to]));
  try {
    await until('a leads', () => a.state.shared === 'leader' && env.sockets.length === 1);
    await until('b follows', () => b.state.shared === 'follower');
    const ws = env.sockets[0];
    ws.open();
    ws.send({ seq: 56, epoch: 'E1', data: 1 });
    ws.send({ seq: 57, epoch: 'E1', data: 2 });
    ws.send({ gap: true, epoch: 'E1', from: 58 });
    await until('b got the gap', () => seen.length === 3);
    assert.equal(b.epoch, 'E1');
    assert.equal(b.lastSeq, 57);
    // A tab opened now has seen nothing: it starts from the leader's position.
    c = connect(URL_WS, opts);
    await until('c follows at E1:57', () => c.state.shared === 'follower' && c.epoch === 'E1');
    assert.equal(c.lastSeq, 57);
    a.close();
    await until('b leads', () => b.state.shared === 'leader' && env.sockets.length === 2);
    const ws2 = env.sockets[1];
    assert.equal(q(ws2.url, 'last_seq'), '57');
    assert.equal(q(ws2.url, 'epoch'), 'E1');
    ws2.open();
    assert.deepEqual([b.state.state, b.state.epoch, b.state.lastSeq], ['open', 'E1', 57]);
    ws2.send({ gap: true, epoch: 'E1', from: 58 }); // the new owner says it again
    ws2.send({ seq: 1, epoch: 'E2', data: 3 });
    assert.deepEqual(seen, [
      ['message', 'E1', 56], ['message', 'E1', 57], ['gap', 'E1', 58, undefined], ['message', 'E2', 1],
    ]);
    assert.equal(b.epoch, 'E2');
  } finally {
    a.close();
    b.close();
    if (c) c.close();
    if (had) Object.defineProperty(globalThis, 'navigator', had);
    else delete globalThis.navigator;
  }
});
