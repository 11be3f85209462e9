import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, Close } from '../push.js';
import { fakeEnv, token, flush } from '../testing/fakes.js';

function session(env, opts = {}) {
  const s = new Session('wss://push.example/ws', { uid: 'alice', token: token('alice'), env, ...opts });
  const got = { messages: [], states: [] };
  s.on('message', (m) => got.messages.push(m));
  s.on('state', (st) => got.states.push(st));
  s.start();
  return { s, got, last: () => got.states[got.states.length - 1] };
}

test('WebSocket failing before open falls back to SSE, which resumes by last_seq', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { got, last } = session(env);
  env.sockets[0].open();
  env.sockets[0].send({ seq: 9, data: 'ws' });
  env.sockets[0].drop(1006); // opened once: not a reason to fall back
  await env.advance(0);
  env.sockets[1].drop(1006);
  await env.advance(0);
  env.sockets[2].drop(1006);
  await env.advance(0);
  assert.equal(env.sockets.length, 3);
  assert.equal(env.sources.length, 1);
  const es = env.sources[0];
  assert.equal(es.url.protocol, 'https:');
  assert.equal(es.url.pathname, '/sse');
  assert.equal(es.url.searchParams.get('last_seq'), '9');
  es.open();
  assert.equal(last().transport, 'sse');
  assert.equal(last().state, 'open');
  es.send({ seq: 9, data: 'dup' }, 9);
  es.send({ seq: 10, data: 'sse' }, 10);
  assert.deepEqual(got.messages.map((m) => m.data), ['ws', 'sse']);
  // The server's close event carries WebSocket close codes.
  es.event('close', { code: Close.moved, reason: 'moved' });
  assert.ok(es.closed);
  assert.equal(last().code, Close.moved);
  await env.advance(0);
  assert.equal(env.sources.length, 2, 'an SSE that once opened stays the transport');
  assert.equal(env.sources[1].url.searchParams.get('last_seq'), '10');
});

test('SSE error with EventSource reconnecting: the Session reconnects itself', async () => {
  const env = fakeEnv({ random: () => 0 });
  session(env, { transports: ['sse'] });
  env.sources[0].open();
  env.sources[0].fail(false);
  assert.ok(env.sources[0].closed, 'EventSource is closed so it cannot reconnect on its own');
  await env.advance(0);
  assert.equal(env.sources.length, 2);
});

test('SSE failing too falls back to long-polling; polls chain with last_seq', async () => {
  const env = fakeEnv({ random: () => 0 });
  const { got, last } = session(env, { transports: ['sse', 'poll'] });
  env.sources[0].fail(true);
  await env.advance(0);
  env.sources[1].fail(true);
  await env.advance(0);
  assert.equal(env.polls.length, 1);
  const p0 = env.polls[0];
  assert.equal(p0.url.pathname, '/poll');
  assert.equal(p0.url.protocol, 'https:');
  assert.equal(p0.url.searchParams.get('last_seq'), null);
  p0.reply(200, [{ seq: 1, data: 'a' }, { seq: 2, data: 'b' }]);
  await flush();
  assert.equal(last().state, 'open');
  assert.equal(last().transport, 'poll');
  assert.equal(env.polls.length, 2);
  assert.equal(env.polls[1].url.searchParams.get('last_seq'), '2');
  env.polls[1].reply(200, []); // held 25 s and empty
  await flush();
  env.polls[2].reply(200, [{ seq: 2, data: 'b' }, { gap: true, from: 3, to: 4 }, { seq: 5, data: 'c' }]);
  await flush();
  assert.deepEqual(got.messages.map((m) => m.data), ['a', 'b', 'c']);
  assert.equal(env.polls[3].url.searchParams.get('last_seq'), '5');
});

test('poll: a hung request is aborted by its timeout and retried', async () => {
  const env = fakeEnv({ random: () => 0 });
  session(env, { transports: ['poll'], pollTimeout: 35000 });
  env.polls[0].reply(200, []);
  await flush();
  await env.advance(35000);
  assert.ok(env.polls[1].aborted);
  await env.advance(0);
  assert.equal(env.polls.length, 3);
});

test('poll: 401 asks getToken once, then stops as unauthorized (no loop)', async () => {
  const env = fakeEnv({ random: () => 0 });
  let calls = 0;
  const { last } = session(env, { transports: ['poll'], getToken: async () => { calls++; return token('alice'); } });
  env.polls[0].reply(401, null);
  await flush();
  await env.advance(0);
  assert.equal(calls, 1);
  env.polls[1].reply(401, null);
  await flush();
  await env.advance(60000);
  assert.equal(last().state, 'stopped');
  assert.equal(last().reason, 'unauthorized');
  assert.equal(env.polls.length, 2);
});

test('poll: 409 replaced and 410 kicked stop; 503 resumes at once', async () => {
  for (const [status, reason] of [[409, 'replaced'], [410, 'kicked']]) {
    const env = fakeEnv({ random: () => 0 });
    const { last } = session(env, { transports: ['poll'] });
    env.polls[0].reply(status, null);
    await flush();
    assert.equal(last().reason, reason);
  }
  const env = fakeEnv({ random: () => 0 });
  const { last } = session(env, { transports: ['poll'] });
  env.polls[0].reply(200, [{ seq: 3, data: 1 }]);
  await flush();
  env.polls[1].reply(503, null);
  await flush();
  assert.equal(last().code, Close.goingAway);
  await env.advance(0);
  assert.equal(env.polls[2].url.searchParams.get('last_seq'), '3');
});

test('after every transport failed, back to WebSocket with backoff', async () => {
  const env = fakeEnv({ random: () => 0.5 });
  const { last } = session(env, { fallbackAfter: 1, minDelay: 1000 });
  env.sockets[0].drop(1006);
  await env.advance(0);
  env.sources[0].fail(true);
  await env.advance(0);
  env.polls[0].error();
  await flush();
  assert.equal(last().state, 'reconnecting');
  assert.equal(last().delay, 500);
  await env.advance(500);
  assert.equal(env.sockets.length, 2);
});

test('nothing opens on any transport: one fresh token from getToken, then backoff goes on', async () => {
  const env = fakeEnv({ random: () => 0 });
  let calls = 0;
  session(env, { transports: ['websocket'], fallbackAfter: 1, getToken: async () => { calls++; return token('alice') + 'new'; } });
  env.sockets[0].drop(1006);
  await flush();
  await env.advance(0);
  assert.equal(calls, 1);
  assert.ok(env.sockets[1].url.searchParams.get('token').endsWith('new'));
  env.sockets[1].drop(1006);
  await flush();
  await env.advance(0);
  assert.equal(calls, 1, 'once until something opens');
  assert.equal(env.sockets.length, 3);
});
