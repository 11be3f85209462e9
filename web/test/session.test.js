import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, backoffDelay, tokenProblem, endpoint, Close } from '../push.js';
import { fakeEnv, token, flush } from '../testing/fakes.js';

const URL_WS = 'ws://push.example:8080/ws';

function session(env, opts = {}) {
  const s = new Session(URL_WS, { uid: 'alice', token: token('alice'), env, ...opts });
  const got = { messages: [], states: [], gaps: [] };
  s.on('message', (m) => got.messages.push(m));
  s.on('state', (st) => got.states.push(st));
  s.on('gap', (g) => got.gaps.push(g));
  s.start();
  return { s, got, last: () => got.states[got.states.length - 1] };
}

test('backoff: full jitter under a doubling cap, bounded by maxDelay', () => {
  const o = { minDelay: 500, maxDelay: 30000 };
  assert.equal(backoffDelay(0, o, () => 0), 0);
  assert.equal(backoffDelay(0, o, () => 0.999999), 499);
  assert.equal(backoffDelay(1, o, () => 0.999999), 999);
  assert.equal(backoffDelay(3, o, () => 0.5), 2000);
  assert.equal(backoffDelay(10, o, () => 0.999999), 29999);
  assert.equal(backoffDelay(1000, o, () => 0.999999), 29999);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(4, o);
    assert.ok(d >= 0 && d < 8000, String(d));
  }
});

test('tokenProblem: what a browser can see of a JWT', () => {
  const now = Date.now();
  assert.equal(tokenProblem(token('alice'), 'alice', now), null);
  assert.equal(tokenProblem(token('bob'), 'alice', now), 'token is for another user');
  assert.equal(tokenProblem(token('alice', -10, now), 'alice', now), 'token expired');
  assert.equal(tokenProblem('abc', 'alice', now), 'malformed token');
  assert.equal(tokenProblem('a.%%%.c', 'alice', now), 'malformed token');
  assert.equal(tokenProblem('', 'alice', now), 'no token');
});

test('endpoint: query and path for each transport', () => {
  assert.equal(endpoint('wss://h/ws', '/ws', 'a', 't', 0), 'wss://h/ws?uid=a&token=t');
  assert.equal(endpoint('wss://h/ws', '/sse', 'a', 't', 7), 'https://h/sse?uid=a&token=t&last_seq=7');
  assert.equal(endpoint('ws://h:1/push/ws', '/poll', 'a', 't', 3), 'http://h:1/push/poll?uid=a&token=t&last_seq=3');
});

test('delivers in order once: duplicates dropped, broadcasts passed, gaps reported', () => {
  const env = fakeEnv();
  const { got, last } = session(env);
  const ws = env.sockets[0];
  assert.equal(ws.url.pathname, '/ws');
  assert.equal(ws.url.searchParams.get('uid'), 'alice');
  assert.equal(ws.url.searchParams.get('last_seq'), null);
  assert.equal(last().state, 'connecting');
  ws.open();
  assert.equal(last().state, 'open');
  assert.equal(last().transport, 'websocket');
  ws.send({ seq: 1, data: 'a' });
  ws.send({ seq: 2, data: 'b' });
  ws.send({ seq: 2, data: 'b' });
  ws.send({ seq: 1, data: 'a' });
  ws.send({ seq: 0, broadcast: true, data: 'all' });
  ws.send({ gap: true, from: 3, to: 5 });
  ws.send({ seq: 6, data: 'c' });
  ws.receive('not json');
  assert.deepEqual(got.messages.map((m) => m.data), ['a', 'b', 'all', 'c']);
  assert.deepEqual(got.gaps, [{ from: 3, to: 5 }]);
});

for (const code of [Close.moved, Close.goingAway]) {
  test(`${code}: reconnects at once (within the jitter) and resumes with last_seq`, async () => {
    const env = fakeEnv({ random: () => 0.3 });
    const { s, got, last } = session(env, { movedJitter: 1000 });
    env.sockets[0].open();
    env.sockets[0].send({ seq: 41, data: 1 });
    env.sockets[0].send({ seq: 42, data: 2 });
    env.sockets[0].drop(code, 'moved');
    assert.equal(last().state, 'reconnecting');
    assert.equal(last().delay, 300);
    assert.equal(last().code, code);
    await env.advance(299);
    assert.equal(env.sockets.length, 1);
    await env.advance(1);
    assert.equal(env.sockets.length, 2);
    assert.equal(env.sockets[1].url.searchParams.get('last_seq'), '42');
    env.sockets[1].open();
    env.sockets[1].send({ seq: 42, data: 2 }); // replayed twice: dropped
    env.sockets[1].send({ seq: 43, data: 3 });
    assert.deepEqual(got.messages.map((m) => m.seq), [41, 42, 43]);
    assert.equal(s.lastSeq, 43);
  });
}

for (const [code, reason] of [[Close.replaced, 'replaced'], [Close.kicked, 'kicked']]) {
  test(`${code}: stops with reason ${reason} and never reconnects`, async () => {
    const env = fakeEnv();
    const { last } = session(env);
    env.sockets[0].open();
    env.sockets[0].drop(code);
    assert.equal(last().state, 'stopped');
    assert.equal(last().reason, reason);
    await env.advance(10 * 60 * 1000);
    assert.equal(env.sockets.length, 1);
    assert.equal(env.timers.length, 0);
  });
}

test('4001: asks getToken once, reconnects with the new token, then gives up', async () => {
  const env = fakeEnv();
  let calls = 0;
  const { last } = session(env, { getToken: async () => { calls++; return token('alice') + 'x'; } });
  env.sockets[0].open();
  env.sockets[0].drop(Close.unauthorized);
  await flush();
  await env.advance(0);
  assert.equal(calls, 1);
  assert.equal(env.sockets.length, 2);
  assert.ok(env.sockets[1].url.searchParams.get('token').endsWith('x'));
  env.sockets[1].drop(Close.unauthorized); // before open: the new token is no better
  await flush();
  assert.equal(calls, 1);
  assert.equal(last().state, 'stopped');
  assert.equal(last().reason, 'unauthorized');
  await env.advance(60000);
  assert.equal(env.sockets.length, 2);
});

test('a token for another user: auth error at once, no socket, no retry loop', async () => {
  const env = fakeEnv();
  const { last } = session(env, { token: token('bob') });
  await flush();
  assert.equal(env.sockets.length, 0);
  assert.equal(last().state, 'stopped');
  assert.equal(last().reason, 'unauthorized');
  assert.match(last().detail, /another user/);
});

test('an expired token is replaced through getToken before connecting', async () => {
  const env = fakeEnv();
  const { last } = session(env, { token: token('alice', -5), getToken: async () => token('alice') });
  await flush();
  assert.equal(env.sockets.length, 1);
  assert.equal(last().state, 'connecting');
});

test('no token at all: getToken supplies the first one', async () => {
  const env = fakeEnv();
  const s = new Session(URL_WS, { uid: 'alice', env, getToken: async () => token('alice') });
  s.start();
  await flush();
  assert.equal(env.sockets.length, 1);
});

test('abnormal closes back off with growing, capped, jittered delays; an open resets them', async () => {
  const env = fakeEnv({ random: () => 0.999 });
  const { last } = session(env, { minDelay: 100, maxDelay: 1000, transports: ['websocket'] });
  const delays = [];
  for (let i = 0; i < 6; i++) {
    env.sockets[i].drop(1006);
    delays.push(last().delay);
    await env.advance(last().delay);
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  env.sockets[6].open();
  env.sockets[6].drop(1006);
  assert.equal(last().delay, 99);
});

test('heartbeat watchdog: a silent socket is dropped and replaced, resuming', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { got } = session(env, { heartbeatTimeout: 1000 });
  const ws = env.sockets[0];
  ws.open();
  await env.advance(900);
  ws.send({ seq: 5, data: 'x' }); // any frame re-arms
  await env.advance(900);
  assert.equal(ws.closedWith, null);
  await env.advance(100);
  assert.equal(ws.closedWith, 1000);
  assert.ok(got.states.some((st) => st.state === 'reconnecting' && st.code === 'heartbeat'));
  await env.advance(0);
  assert.equal(env.sockets.length, 2);
  assert.equal(env.sockets[1].url.searchParams.get('last_seq'), '5');
});

test('close(): stops, closes the socket, cancels timers', async () => {
  const env = fakeEnv();
  const { s, last } = session(env);
  env.sockets[0].open();
  s.close();
  assert.equal(env.sockets[0].closedWith, 1000);
  assert.equal(last().state, 'stopped');
  assert.equal(last().reason, 'closed');
  env.sockets[0].drop(1006); // late event from the old socket: ignored
  await env.advance(60000);
  assert.equal(env.sockets.length, 1);
});

test('getToken failing (service down) retries with backoff instead of an auth error', async () => {
  const env = fakeEnv({ random: () => 0.5 });
  let calls = 0;
  const s = new Session('ws://h/ws', { uid: 'alice', env, minDelay: 1000, getToken: async () => {
    if (++calls === 1) throw new Error('fetch failed');
    return token('alice');
  } });
  const states = [];
  s.on('state', (st) => states.push(st));
  s.start();
  s.start(); // twice: still one attempt
  await flush();
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).code, 'token-error');
  await env.advance(500);
  await flush();
  assert.equal(calls, 2);
  assert.equal(env.sockets.length, 1);
});
